"""ERRORS.md and ``actc explain``: every user error, read from the source that raises it.

A user error is written in one of three ways: ``Diagnostic("E205", message, ...)``, the
checker's ``self.error("E205", message, ...)`` (or ``self.warning``), or
``RuntimeUserError(message, hint)`` for the inputs' problems, which the CLI shows as E501
when planning finds them and E502 when a run does. This module walks the package's syntax
trees for those calls, so the catalogue cannot miss an error or keep one that is gone::

    python -m actlang.lang.catalogue ERRORS.md     # rewrite it
    actc explain E205                              # one code, in the terminal

Messages are shown as written, with each interpolated value as ``{the expression}``.
"""

from __future__ import annotations

import ast as pyast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from actlang.lang.diagnostics import CODES

__all__ = ["Message", "explain", "messages", "render"]

_PACKAGE = Path(__file__).resolve().parent.parent
_CODE = re.compile(r"[EW]\d{3}")
_INPUT_CODES = ("E501", "E502")  # a RuntimeUserError is one of these, by when it is found


@dataclass(frozen=True)
class Message:
    """One message a user can see: its code(s), text, fix and where it is raised."""

    codes: tuple[str, ...]
    text: str
    hint: str | None
    module: str  # e.g. "arch/safetensors.py"
    function: str
    area: str  # the first line of the module's docstring: what part of actc it is


def _template(node: pyast.expr | None) -> str | None:
    """A message expression as its text, with interpolations shown as ``{expression}``."""
    if node is None:
        return None
    if isinstance(node, pyast.Constant):
        return None if node.value is None else str(node.value)
    if isinstance(node, pyast.JoinedStr):
        return "".join(
            str(part.value) if isinstance(part, pyast.Constant)
            else "{" + pyast.unparse(part.value) + "}"  # type: ignore[attr-defined]
            for part in node.values)
    if isinstance(node, pyast.BinOp) and isinstance(node.op, pyast.Add):
        return f"{_template(node.left) or ''}{_template(node.right) or ''}"
    if isinstance(node, pyast.IfExp):
        return f"{_template(node.body)} / {_template(node.orelse)}"
    return "{" + pyast.unparse(node) + "}"


def _codes(node: pyast.expr) -> tuple[str, ...]:
    """The code(s) a diagnostic's first argument can be: ``"E205"``, or either of
    ``"E405" if ... else "E005"``; none when it is not a code."""
    if isinstance(node, pyast.IfExp):
        return _codes(node.body) + _codes(node.orelse)
    if isinstance(node, pyast.Constant) and isinstance(node.value, str) and \
            _CODE.fullmatch(node.value):
        return (node.value,)
    return ()


def _hint(call: pyast.Call, position: int | None = None) -> str | None:
    """The call's ``hint=``, or its argument at ``position`` (``RuntimeUserError(msg, hint)``)."""
    for keyword in call.keywords:
        if keyword.arg == "hint":
            return _template(keyword.value)
    if position is not None and len(call.args) > position:
        return _template(call.args[position])
    return None


class _Finder(pyast.NodeVisitor):
    def __init__(self, module: str, area: str):
        self.module = module
        self.area = area
        self.functions: list[str] = ["<module>"]
        self.found: list[Message] = []

    def visit_FunctionDef(self, node: pyast.FunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Call(self, node: pyast.Call) -> None:
        name = node.func.id if isinstance(node.func, pyast.Name) else \
            node.func.attr if isinstance(node.func, pyast.Attribute) else None
        codes = _codes(node.args[0]) if node.args else ()
        if name in ("Diagnostic", "error", "warning") and codes and len(node.args) > 1:
            self._add(codes, node.args[1], _hint(node))
        elif name == "RuntimeUserError" and node.args:
            self._add(_INPUT_CODES, node.args[0], _hint(node, 1))
        elif name is not None and name.endswith("ChannelWarning") and node.args:
            self._add(("W501",), node.args[0], None)  # a SelectionWarning, shown as W501
        elif name == "warn" and len(node.args) > 1 and isinstance(node.args[1], pyast.Name) \
                and node.args[1].id.endswith("Warning"):
            self._add(("W501",), node.args[0], None)  # warnings.warn(message, category)
        self.generic_visit(node)

    def _add(self, codes: tuple[str, ...], message: pyast.expr, hint: str | None) -> None:
        text = _template(message)
        if text is None or text.startswith("{") and text.endswith("}") and text.count("{") == 1:
            return  # a message passed through (re-raised or converted): found where it is made
        self.found.append(Message(codes, text, hint, self.module, self.functions[-1],
                                  self.area))


def messages(package: Path = _PACKAGE) -> list[Message]:
    """Every user-facing message raised in ``package``, in file and line order."""
    found: list[Message] = []
    for file in sorted(package.rglob("*.py")):
        tree = pyast.parse(file.read_text(encoding="utf-8"))
        area = " ".join((pyast.get_docstring(tree) or "").split("\n\n")[0].split())
        finder = _Finder(file.relative_to(package).as_posix(), area)
        finder.visit(tree)
        found += finder.found
    return found


def _cell(text: str | None) -> str:
    if not text:
        return ""
    return "`" + text.replace("|", "\\|").replace("\n", " ").replace("`", "'") + "`"


def _section(code: str, found: list[Message]) -> list[str]:
    meaning = CODES[code]
    lines = [f"## {code}: {meaning.title}", "", meaning.meaning, "", f"**Fix:** {meaning.fix}",
             ""]
    if not found:
        return lines
    lines += ["| message | help | raised in |", "|---|---|---|"]
    lines += [f"| {_cell(m.text)} | {_cell(m.hint)} | `{m.module}` `{m.function}` |"
              for m in found]
    return [*lines, ""]


def render(found: list[Message] | None = None) -> str:
    """The text of ERRORS.md."""
    found = messages() if found is None else found
    by_code = {code: [m for m in found if code in m.codes and m.codes != _INPUT_CODES]
               for code in CODES}
    inputs = [m for m in found if m.codes == _INPUT_CODES]
    lines = [
        "# actc errors",
        "",
        "<!-- generated by `python -m actlang.lang.catalogue ERRORS.md` from the source: "
        "do not edit -->",
        "",
        "Every mistake in a spec or its inputs stops `actc` with exit status 1, a message "
        "`error[CODE]: ...` located at the file, line and column it concerns, and a `help:` "
        "line when a fix is known; no input is changed and no partial output or cache entry "
        "is left. `actc explain CODE` prints a code's entry. Interpolated values are shown as "
        "`{expression}`.",
        "",
        "| code | meaning | messages |",
        "|---|---|---|",
    ]
    counts = {code: len(by_code[code]) + (len(inputs) if code in _INPUT_CODES else 0)
              for code in CODES}
    lines += [f"| [`{code}`](#{code.lower()}) | {CODES[code].title} | {counts[code]} |"
              for code in CODES]
    lines.append("")
    for code in CODES:
        if code == _INPUT_CODES[0]:
            lines += _inputs_section(inputs)
        if code not in _INPUT_CODES:
            lines += _section(code, by_code[code])
    return "\n".join(lines).rstrip() + "\n"


def _inputs_section(inputs: list[Message]) -> list[str]:
    """E501 and E502 share their messages: an input's problem is E501 when planning finds
    it (located at the declaration or rule that names the input) and E502 when a run does."""
    lines = []
    for code in _INPUT_CODES:
        lines += _section(code, [])
    lines += ["### Messages of E501 and E502, by the part of actc that raises them", ""]
    areas = dict(sorted({m.module: m.area for m in inputs}.items()))
    for module, area in areas.items():
        lines += [f"#### `{module}`" + (f": {area}" if area else ""), "",
                  "| message | help | raised in |", "|---|---|---|"]
        lines += [f"| {_cell(m.text)} | {_cell(m.hint)} | `{m.function}` |"
                  for m in inputs if m.module == module]
        lines.append("")
    return lines


def explain(code: str) -> str | None:
    """A code's entry as plain text for the terminal, or None for an unknown code."""
    code = code.upper()
    if code not in CODES:
        return None
    meaning = CODES[code]
    found = [m for m in messages() if code in m.codes]
    lines = [f"{code}: {meaning.title}", "", meaning.meaning, "", f"Fix: {meaning.fix}"]
    if found:
        lines += ["", f"Messages ({len(found)}):"]
        lines += [f"  - {m.text}" + (f"\n      help: {m.hint}" if m.hint else "")
                  for m in found]
    return "\n".join(lines)


if __name__ == "__main__":
    Path(sys.argv[1] if len(sys.argv) > 1 else "ERRORS.md").write_text(render())
