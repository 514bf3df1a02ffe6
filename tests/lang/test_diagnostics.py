"""Golden diagnostics: every bad spec in golden/ renders exactly as its .expected file.

A case is ``golden/NAME.act`` or a directory ``golden/NAME/`` whose ``main.act`` is checked
(for errors inside imported files). Regenerate after an intended change with
``ACTLANG_UPDATE_GOLDEN=1 pytest tests/lang/test_diagnostics.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from actlang.lang.checker import check
from actlang.lang.diagnostics import render_all, to_json

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p for p in GOLDEN.iterdir() if p.suffix == ".act" or p.is_dir())


def _main_file(case: Path) -> Path:
    return case / "main.act" if case.is_dir() else case


@pytest.fixture(autouse=True)
def _relative_paths(monkeypatch):
    # Diagnostics show paths relative to the working directory: make them stable.
    monkeypatch.chdir(GOLDEN)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden_diagnostic(case: Path) -> None:
    program, diagnostics, sources = check(_main_file(case).relative_to(GOLDEN))
    errors = [d for d in diagnostics if d.severity == "error"]
    assert errors, f"{case.name} should have errors"
    assert program is None
    rendered = render_all(diagnostics, sources) + "\n"
    expected_file = case.with_suffix(".expected") if case.is_file() else case / "expected"
    if os.environ.get("ACTLANG_UPDATE_GOLDEN"):
        expected_file.write_text(rendered)
    assert rendered == expected_file.read_text()


def test_enough_distinct_cases() -> None:
    codes = set()
    for case in CASES:
        _, diagnostics, _ = check(_main_file(case))
        codes |= {d.code for d in diagnostics}
    assert len(CASES) >= 25
    assert len(codes) >= 20, sorted(codes)


def test_several_errors_are_all_reported() -> None:
    _, diagnostics, _ = check(GOLDEN / "several_errors.act")
    assert len([d for d in diagnostics if d.severity == "error"]) >= 5


def test_error_in_imported_file_points_into_that_file() -> None:
    _, diagnostics, _ = check(Path("import_error/main.act"))
    assert diagnostics and diagnostics[0].span.file.endswith("lib.act")


def test_json_has_positions() -> None:
    _, diagnostics, _ = check(Path("unknown_name.act"))
    records = json.loads(to_json(diagnostics))
    assert records == [{
        "severity": "error", "code": "E101", "message": "unknown name `tuend`",
        "hint": "did you mean `tuned`?", "file": "unknown_name.act",
        "start": {"line": 5, "column": 12}, "end": {"line": 5, "column": 17},
    }]
