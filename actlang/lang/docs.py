"""Reference tables for LANGUAGE.md, generated from the schema and the registry of the
method's options, so docs, checker and runtime agree.

``python -m actlang.lang.docs LANGUAGE.md`` rewrites the generated sections (between
``<!-- generated:NAME -->`` and ``<!-- end:NAME -->``); a test fails when they are stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from actlang.arch import registry as R
from actlang.arch.registry import FieldSpec, Option, Registry
from actlang.lang import schema
from actlang.lang.diagnostics import CODES


def _type(spec: FieldSpec) -> str:
    if spec.type == "enum":
        return " \\| ".join(f"`{c}`" for c in spec.choices)
    if spec.type == "model|enum":
        return "a model, or " + " \\| ".join(f"`{c}`" for c in spec.choices)
    text = spec.type
    if spec.low is not None or spec.high is not None:
        low = "" if spec.low is None else f"{'>' if spec.low_open else '≥'} {spec.low:g}"
        high = "" if spec.high is None else f"≤ {spec.high:g}"
        text += " (" + ", ".join(b for b in (low, high) if b) + ")"
    if spec.scopes:
        text += "; scopes: " + ", ".join(map(R.scope_words, spec.scopes))
    return text


def fields_table(fields: dict[str, FieldSpec]) -> str:
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for spec in fields.values():
        default = "**required**" if spec.required else (
            f"`{spec.default}`" if spec.default else spec.default_doc or "—")
        rows.append(f"| `{spec.name}` | {_type(spec)} | {default} | {spec.doc} |")
    return "\n".join(rows)


def functions_table() -> str:
    rows = ["| function | gives | parameters (positional order) | meaning |", "|---|---|---|---|"]
    for f in schema.FUNCTIONS.values():
        params = ", ".join(f"`{p.name}`" + ("" if p.required else "?") for p in f.params)
        if f.variadic:
            params = f"{f.variadic}..." + (", " + params if params else "")
        rows.append(f"| `{f.name}` | {f.result} | {params} | {f.doc} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    """Table-cell text: a ``|`` (even in a code span) would split the cell."""
    return text.replace("|", "\\|")


def options_table(registry: Registry[Option]) -> str:
    """One row per option of a concept (a score, a granularity, ...)."""
    rows = [f"| {registry.concept} | meaning |", "|---|---|"]
    rows += [f"| `{o.name}` | {_cell(o.doc)} |" for o in registry]
    return "\n".join(rows)


def scores_table() -> str:
    reads = {"paired": "paired statistics", "unpaired": "each model's statistics",
             "weights": "the weights", "none": "nothing"}
    rows = ["| score | reads | meaning |", "|---|---|---|"]
    rows += [f"| `{m.name}` | {reads[m.inputs]} | {_cell(m.doc)} |" for m in R.SCORES]
    return "\n".join(rows)


def budget_modes_table() -> str:
    rows = ["| budget mode | written | value | meaning |", "|---|---|---|---|"]
    rows += [f"| `{m.name}` | `{m.written}` | {m.value_doc} | {_cell(m.doc)} |"
             for m in R.BUDGET_MODES]
    return "\n".join(rows)


def limits_table() -> str:
    rows = ["| limit | at most | of |", "|---|---|---|"]
    rows += [f"| `{limit.name}` | {limit.value:,} | {_cell(limit.doc)} |"
             for limit in schema.LIMITS.values()]
    return "\n".join(rows)


def codes_table() -> str:
    rows = ["| code | meaning |", "|---|---|"]
    rows += [f"| `{code}` | {code_.title} |" for code, code_ in CODES.items()]
    return "\n".join(rows)


SECTIONS = {
    "ability-fields": lambda: fields_table(schema.ABILITY_FIELDS),
    "surgery-fields": lambda: fields_table(schema.SURGERY_FIELDS),
    "transfer-fields": lambda: fields_table(schema.TRANSFER_FIELDS),
    "finetune-fields": lambda: fields_table(schema.FINETUNE_FIELDS),
    "merge-fields": lambda: fields_table(schema.MERGE_FIELDS) + "\n\n" + "\n".join(
        f"- `{m.name}`: {m.doc}; reads " + ", ".join(f"`{f}`" for f in m.fields)
        for m in R.MERGE_METHODS),
    "scores": scores_table,
    "normalizations": lambda: options_table(R.NORMALIZATIONS),
    "budget-modes": budget_modes_table,
    "granularities": lambda: options_table(R.GRANULARITIES),
    "ties": lambda: options_table(R.TIES),
    "overlap-policies": lambda: options_table(R.OVERLAP_POLICIES),
    "finetune-scopes": lambda: options_table(R.FINETUNE_SCOPES),
    "functions": functions_table,
    "module-kinds": lambda: ", ".join(f"`{k}`" for k in schema.MODULE_KINDS),
    "codes": codes_table,
    "limits": limits_table,
}


def render(text: str) -> str:
    """``text`` with every generated section brought up to date."""
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- end:{name} -->)", re.S)
        assert pattern.search(text), f"LANGUAGE.md has no generated section `{name}`"
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "LANGUAGE.md")
    path.write_text(render(path.read_text()))
