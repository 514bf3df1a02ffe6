"""Fuzzing the front end (issue 12, part 8): no input makes the parser or the checker raise
anything but a diagnostic, every error is located, and every result renders.

The inputs and the invariants are in ``tests/lang/fuzzing.py``, shared with
``bench/bench_fuzz.py``, which runs the same generators on tens of thousands of specs. Here a
few hundred run, each under a deadline: no spec may take more than a couple of seconds. The
example database is off, so nothing is written outside temporary directories.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings

from actlang.lang import ast, checker
from actlang.lang.diagnostics import Diagnostic, DiagnosticError, SourceCache
from actlang.lang.parser import MAX_DEPTH, parse

from . import fuzzing

FUZZ = settings(deadline=timedelta(seconds=2), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


@settings(FUZZ, max_examples=60)
@given(fuzzing.well_formed_specs)
def test_well_formed_specs(main: bytes) -> None:
    fuzzing.front_end(main)


@settings(FUZZ, max_examples=200)
@given(fuzzing.mutated_specs())
def test_mutated_specs(main: bytes) -> None:
    fuzzing.front_end(main)


@settings(FUZZ, max_examples=60)
@given(fuzzing.raw_specs)
def test_raw_text_and_bytes(main: bytes) -> None:
    fuzzing.front_end(main)


# ---- the harness itself ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", fuzzing.SEED_FILES,
                         ids=[str(p.relative_to(fuzzing.ROOT)) for p in fuzzing.SEED_FILES])
def test_every_seed_passes_unmutated(seed) -> None:
    """The seeds the mutator starts from keep the invariants as they are, and the shipped
    specs check (the golden bad specs fail, or import a neighbour in place of their own)."""
    diagnostics = fuzzing.front_end(seed.read_bytes())
    if "golden" not in seed.parts:
        assert not [d for d in diagnostics if d.severity == "error"]


def test_the_seeds_cover_examples_stdlib_and_golden_specs() -> None:
    top = {p.relative_to(fuzzing.ROOT).parts[0] for p in fuzzing.SEED_FILES}
    assert top == {"examples", "stdlib", "tests"}
    assert len(fuzzing.SEEDS) >= 50


def test_every_neighbour_import_is_reported_at_its_use() -> None:
    """Each bad file an inserted ``use`` can reach fails as a located diagnostic — the fifo
    and the symlink loop included — and the good library checks."""
    good = {b'use "./lib.act" as lib', b"use std.zoo", b"use std.recipes", b"use std.zoo as lib"}
    for line in fuzzing.USE_LINES:
        diagnostics = fuzzing.front_end(line + b"\n")
        errors = [d for d in diagnostics if d.severity == "error"]
        assert bool(errors) == (line not in good), line


def test_the_invariants_catch_an_unlocated_error() -> None:
    sources = SourceCache()
    with pytest.raises(AssertionError, match="unlocated E101"):
        fuzzing.assert_reported(None, [Diagnostic("E101", "unknown name", None)], sources)


def test_the_invariants_catch_a_span_in_a_file_never_read() -> None:
    span = ast.Span("elsewhere.act", 1, 1, 1, 2, 0, 1)
    with pytest.raises(AssertionError, match="unread file"):
        fuzzing.assert_reported(None, [Diagnostic("E101", "unknown name", span)], SourceCache())


def test_the_invariants_catch_a_program_despite_errors() -> None:
    sources = SourceCache()
    sources.add("main.act", "let x = 1\n")
    span = ast.Span("main.act", 1, 1, 1, 2, 0, 1)
    with pytest.raises(AssertionError):
        fuzzing.assert_reported(object(), [Diagnostic("E101", "unknown name", span)], sources)


# ---- what fuzzing found -------------------------------------------------------------------

#: The smallest spec of each crash fuzzing found: ``\ud800`` strings made UnicodeEncodeError
#: (the parser now refuses half a surrogate pair, E004); NUL in a path made ValueError from
#: ``Path.resolve`` in the checker; a name longer than the filesystem allows made OSError
#: (ENAMETOOLONG) in the loader.
FOUND = {
    "half a surrogate pair in a model path": 'model m = local("\\ud800")\n',
    "half a surrogate pair in an output path": 'surgery s -> "\\ud800" { }\n',
    "half a surrogate pair in a corpus path": 'corpus c = text("\\udc00")\n',
    "NUL in a model path": 'model m = local("\\u0000")\n',
    "NUL in a corpus path": 'corpus c = text("a\\u0000")\n',
    "a stdlib module name too long for a file name": "use std." + "a" * 300 + "\n",
    "an import too long for a file name": 'use "./' + "a" * 300 + '.act"\n',
}


@pytest.mark.parametrize("text", FOUND.values(), ids=FOUND.keys())
def test_found_by_fuzzing(text: str) -> None:
    errors = [d for d in fuzzing.front_end(text.encode()) if d.severity == "error"]
    assert errors


@pytest.mark.parametrize("separator", ["\x0c", "\x0b", "\x1c", "\x85", "\u2028", "\u2029"])
def test_the_quoted_line_is_the_line_of_the_span(tmp_path, separator: str) -> None:
    """Found: a character Python's ``str.splitlines`` breaks at but the parser does not (form
    feed, U+2028, ...) shifted the line a diagnostic quotes: only ``\\n`` ends a line."""
    spec = tmp_path / "spec.act"
    spec.write_text(f'let a = "x{separator}y"\nlet = 3\n', encoding="utf-8")
    _, diagnostics, sources = checker.check(spec)
    (error,) = diagnostics
    assert error.span.line == 2
    assert sources.line(error.span.file, 2) == "let = 3"


@pytest.mark.parametrize("text", [
    "let x = " + "-" * 10_000 + "1\n",
    "let x = " + "[" * 10_000 + "]" * 10_000 + "\n",
    "let x = 1" + " + 1" * 10_000 + "\n",
    'surgery s -> "o" {' + "finetune {" * 5_000 + "}" * 5_000 + "}\n",
], ids=["negations", "lists", "sums", "blocks"])
def test_deep_nesting_is_located_at_the_first_level_too_deep(text: str) -> None:
    """Found: E006 came without a line; the parser now stops at a fixed depth, before
    anything recurses, and points at the first node past it."""
    (error,) = [d for d in fuzzing.front_end(text.encode()) if d.severity == "error"]
    assert error.code == "E006" and error.span is not None and error.span.line == 1
    assert f"more than {MAX_DEPTH} levels" in error.label


_RULE = 'surgery s -> "out" {{ target = tuned  transfer math from base {{ {} }} }}\n'
_AT_THE_LIMIT = {
    "negations": lambda n: _RULE.format("budget = " + "-" * n + "1%"),
    "lists": lambda n: _RULE.format("channels = " + "[" * n + "attn.q" + "]" * n),
    "sums": lambda n: _RULE.format("channels = attn.q" + " + attn.q" * n),
    "calls": lambda n: _RULE.format("score = " + "f(" * n + ")" * n),
    "blocks": lambda n: 'surgery s -> "out" { target = tuned ' + "finetune { " * n + "}" * n
                        + " }\n",
}


@pytest.mark.parametrize("name", sorted(_AT_THE_LIMIT))
def test_nesting_at_the_limit_is_checked_not_refused(name: str) -> None:
    """The deepest spec the parser accepts goes through the checker, whose errors (the
    rules make little sense) are ordinary ones: the limit leaves the checker room."""
    make = _AT_THE_LIMIT[name]
    deepest = max(n for n in range(1, MAX_DEPTH + 1)
                  if "E006" not in _codes((fuzzing.PRELUDE + make(n)).encode(), parse_only=True))
    assert deepest > MAX_DEPTH // 3, deepest
    assert "E006" in _codes((fuzzing.PRELUDE + make(deepest + 1)).encode(), parse_only=True)
    assert "E006" not in _codes((fuzzing.PRELUDE + make(deepest)).encode())


def _codes(main: bytes, parse_only: bool = False) -> set[str]:
    if parse_only:
        try:
            parse(main.decode())
        except DiagnosticError as error:
            return {d.code for d in error.diagnostics}
        return set()
    return {d.code for d in fuzzing.front_end(main)}
