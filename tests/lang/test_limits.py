"""Bounded work (issue 12, part 5): every limit in ``schema.LIMITS`` is checked before the
work it bounds, and reported as a located E405; a spec at a limit still checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from actlang.lang import schema
from actlang.lang.checker import check

from .test_checker import PRELUDE

RULE = 'surgery s -> "out" {{ target = tuned  transfer math from base {{ {fields} }} }}\n'


def diagnostics_of(text: str, tmp_path: Path, name: str = "spec.act"):
    spec = tmp_path / name
    spec.write_text(text)
    program, diagnostics, _ = check(spec)
    return program, [d for d in diagnostics if d.severity == "error"]


def percents(count: int) -> str:
    return ", ".join(f"{(i + 1) / 100:g}%" for i in range(count))


def only_limit_error(errors) -> "object":
    (error,) = errors
    assert error.code == "E405", error
    assert error.span is not None and error.span.line >= 1, "a limit error is located"
    return error


def test_a_sweep_at_the_value_limit_checks(tmp_path: Path) -> None:
    count = schema.LIMITS["sweep_values"].value
    program, errors = diagnostics_of(
        PRELUDE + RULE.format(fields=f"budget = sweep({percents(count)})"), tmp_path)
    assert not errors
    assert len(program.surgeries) == count
    assert len({s.transfers[0].budget.value for s in program.surgeries}) == count


def test_a_sweep_past_the_value_limit_is_located_at_the_sweep(tmp_path: Path) -> None:
    count = schema.LIMITS["sweep_values"].value + 1
    text = PRELUDE + RULE.format(fields=f"budget = sweep({percents(count)})")
    _, errors = diagnostics_of(text, tmp_path)
    error = only_limit_error(errors)
    assert f"{count:,} values" in error.message
    assert text.splitlines()[error.span.line - 1][error.span.column - 1:].startswith("sweep(")


def test_a_sweep_product_past_the_variant_limit_names_the_longest_sweep(
        tmp_path: Path) -> None:
    # 40 x 30 = 1,200 variants, each sweep well under the value limit.
    fields = (f"budget = sweep({percents(40)}) "
              f"lambda = sweep({', '.join(str(i / 100) for i in range(30))})")
    text = PRELUDE + RULE.format(fields=fields)
    _, errors = diagnostics_of(text, tmp_path)
    error = only_limit_error(errors)
    assert "1,200 variants (40 x 30)" in error.message
    assert text.splitlines()[error.span.line - 1][error.span.column - 1:].startswith(
        f"sweep({percents(40)})")


def test_variants_count_across_surgeries(tmp_path: Path) -> None:
    half = schema.LIMITS["surgery_variants"].value // 2 + 1
    surgery = ('surgery s{n} -> "out{n}" {{ target = tuned  transfer math from base '
               '{{ budget = sweep({values}) }} }}\n')
    text = PRELUDE + surgery.format(n=1, values=percents(half)) + \
        surgery.format(n=2, values=percents(half))
    _, errors = diagnostics_of(text, tmp_path)
    error = only_limit_error(errors)
    assert "surgery `s2`" in error.message


def test_doubling_lets_stop_at_the_expansion_limit(tmp_path: Path) -> None:
    # Each let uses the one before twice: 2**40 references if nothing stopped it.
    lets = "let sel0 = attn.q\n" + "".join(
        f"let sel{i} = sel{i - 1} + sel{i - 1}\n" for i in range(1, 41))
    text = lets + PRELUDE + RULE.format(fields="channels = sel40  budget = 1%")
    _, errors = diagnostics_of(text, tmp_path)
    error = only_limit_error(errors)
    assert "references to lets" in error.message
    assert text.splitlines()[error.span.line - 1].startswith("let sel")


def test_a_chain_of_lets_under_the_limit_checks(tmp_path: Path) -> None:
    lets = "let sel0 = attn.q\n" + "".join(
        f"let sel{i} = sel{i - 1} + mlp.down\n" for i in range(1, 200))
    program, errors = diagnostics_of(
        lets + PRELUDE + RULE.format(fields="channels = sel199  budget = 1%"), tmp_path)
    assert not errors
    (surgery,) = program.surgeries
    assert len(surgery.transfers[0].channels.terms) == 200


def test_a_let_may_name_a_module_kind(tmp_path: Path) -> None:
    """`let x = attn.q` is a selector: the namespace is not looked up as a declaration."""
    program, errors = diagnostics_of(
        "let x = attn.q\n" + PRELUDE + RULE.format(fields="channels = x  budget = 1%"),
        tmp_path)
    assert not errors
    (term,) = program.surgeries[0].transfers[0].channels.terms
    assert term == (1, program.surgeries[0].transfers[0].channels.terms[0][1])
    assert term[1].glob == "attn.q"


def test_a_spec_file_past_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    limit = schema.LIMITS["spec_bytes"].value
    spec = tmp_path / "spec.act"
    spec.write_text("# padding\n" * (limit // 10 + 1))
    program, diagnostics, sources = check(spec)
    (error,) = diagnostics
    assert program is None and error.code == "E405"
    assert f"{limit:,}" in error.message
    assert sources.line(error.span.file if error.span else "spec.act", 1) is None


@pytest.mark.parametrize("extra", [0, 1])
def test_imports_past_the_file_limit_are_located_at_the_use(tmp_path: Path,
                                                            extra: int) -> None:
    count = schema.LIMITS["files"].value + extra  # files read, the main one included
    for i in range(1, count):
        following = f'use "./m{i + 1}.act" as m\n' if i + 1 < count else ""
        (tmp_path / f"m{i}.act").write_text(following + f"let x{i} = 1\n")
    text = 'use "./m1.act" as m\n' + PRELUDE + RULE.format(fields="budget = 1%")
    _, errors = diagnostics_of(text, tmp_path)
    if not extra:
        assert not errors
        return
    error = only_limit_error(errors)
    assert error.span.file.endswith(f"/m{count - 2}.act")  # the use of the last file


def test_imports_past_the_source_byte_limit_are_located_at_the_use(tmp_path: Path) -> None:
    """Each file under the per-file limit, together over the total: the import that crosses
    it is refused at its `use`, before it is parsed."""
    per_file = schema.LIMITS["spec_bytes"].value - 100
    count = schema.LIMITS["source_bytes"].value // per_file + 1
    for i in range(1, count + 1):
        following = f'use "./m{i + 1}.act" as m\n' if i < count else ""
        padding = "# padding\n" * ((per_file - len(following)) // 10)
        (tmp_path / f"m{i}.act").write_text(following + padding + f"let x{i} = 1\n")
    text = 'use "./m1.act" as m\n' + PRELUDE + RULE.format(fields="budget = 1%")
    total, crossing = len(text.encode()), None
    for i in range(1, count + 1):
        total += (tmp_path / f"m{i}.act").stat().st_size
        if total > schema.LIMITS["source_bytes"].value:
            crossing = i
            break
    assert crossing is not None and crossing >= 2
    _, errors = diagnostics_of(text, tmp_path)
    error = only_limit_error(errors)
    assert "bytes of spec text" in error.message
    assert error.span.file.endswith(f"/m{crossing - 1}.act")  # the use of the crossing file


@pytest.mark.parametrize("lets, budget, closing", [
    ("let a = a\n", "a", "let a = a"),                       # itself
    ("let a = b\nlet b = a\n", "a", "let b = a"),             # through another let
    ("let a = b\nlet b = a\n", "sweep(a, 2%)", "let b = a"),  # inside a sweep
    ("let a = b\nlet b = a\n", "sweep(a)", "let b = a"),      # a sweep over a let's list
])
def test_a_cycle_of_lets_is_an_error_at_the_reference_that_closes_it(
        tmp_path: Path, lets: str, budget: str, closing: str) -> None:
    """Found at once (not as running out of depth), located, and never a hang."""
    text = PRELUDE + lets + RULE.format(fields=f"budget = {budget}")
    program, errors = diagnostics_of(text, tmp_path)
    assert program is None and errors and {e.code for e in errors} == {"E107"}, errors
    error = errors[0]
    assert "defined in terms of itself" in error.message
    assert error.span.line == text.splitlines().index(closing) + 1
