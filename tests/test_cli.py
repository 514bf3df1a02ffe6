"""The installed `actc` entry point, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def actc(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    executable = shutil.which("actc", path=str(Path(sys.executable).parent))
    assert executable, "the actc console script is not installed next to this Python"
    return subprocess.run([executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_version_and_help() -> None:
    from actlang import __version__

    assert actc("--version").stdout.strip() == f"actc {__version__}"
    help_text = actc("--help").stdout
    for command in ("check", "fmt"):
        assert command in help_text


@pytest.mark.parametrize("command", ["run", "plan", "inspect", "check"])
def test_help_shows_no_type_for_flags_and_keeps_sentences_whole(command) -> None:
    import os

    executable = shutil.which("actc", path=str(Path(sys.executable).parent))
    result = subprocess.run([executable, command, "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "80", "TERM": "dumb"}, timeout=120)
    assert result.returncode == 0
    assert "<bool>" not in result.stdout and "range" not in result.stdout
    if command == "run":  # a paragraph is wrapped to the terminal, not at its source lines
        flat = " ".join(result.stdout.split())
        assert "Statistics and evaluations are cached, so re-running" in flat
        assert max(map(len, result.stdout.splitlines())) <= 80
        lines = [line.strip() for line in result.stdout.splitlines()]
        assert "Statistics" not in lines  # no line left with one word of a broken sentence


def test_explain_prints_a_codes_entry_and_refuses_an_unknown_code() -> None:
    result = actc("explain", "E205")
    assert result.returncode == 0
    assert result.stdout.startswith("E205: value out of range")
    assert "Fix:" in result.stdout and "Messages (" in result.stdout
    unknown = actc("explain", "E999")
    assert unknown.returncode == 1 and "unknown code `E999`" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_check_examples_succeeds() -> None:
    result = actc("check", *sorted(str(p) for p in (ROOT / "examples").glob("*.act")))
    assert result.returncode == 0, result.stderr
    assert "examples/recover.act: ok" in result.stdout


def test_check_error_is_a_diagnostic_not_a_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bad.act"
    spec.write_text('model base = local("b")\nsurgery s -> "o" {\n  target = bsae\n}\n')
    result = actc("check", "bad.act", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error[E101]: unknown name `bsae`" in result.stderr
    assert "--> bad.act:3:12" in result.stderr
    assert "help: did you mean `base`?" in result.stderr


def test_check_json(tmp_path: Path) -> None:
    (tmp_path / "bad.act").write_text("let x = 'a'\n")
    result = actc("check", "--json", "bad.act", cwd=tmp_path)
    assert result.returncode == 1
    (record,) = json.loads(result.stdout)
    assert record["code"] == "E002" and record["start"] == {"line": 1, "column": 9}


def test_missing_file_is_reported(tmp_path: Path) -> None:
    result = actc("check", "nope.act", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot read" in result.stderr


def test_fmt_rewrites_and_check_mode_reports(tmp_path: Path) -> None:
    spec = tmp_path / "s.act"
    spec.write_text("let   x=[1,2]   # keep me\n")
    result = actc("fmt", "--check", "s.act", cwd=tmp_path)
    assert result.returncode == 1 and "would reformat" in result.stderr
    assert spec.read_text() == "let   x=[1,2]   # keep me\n"  # --check changes nothing
    assert actc("fmt", "s.act", cwd=tmp_path).returncode == 0
    assert spec.read_text() == "let x = [1, 2]  # keep me\n"
    assert actc("fmt", "--check", "s.act", cwd=tmp_path).returncode == 0


def test_fmt_syntax_error_leaves_the_file_alone(tmp_path: Path) -> None:
    spec = tmp_path / "s.act"
    spec.write_text("let x = \n")
    result = actc("fmt", "s.act", cwd=tmp_path)
    assert result.returncode == 1 and "error[E003]" in result.stderr
    assert spec.read_text() == "let x = \n"


@pytest.mark.parametrize("directory", ["examples", "stdlib"])
def test_shipped_specs_are_formatted(directory: str) -> None:
    files = sorted(str(p) for p in (ROOT / directory).rglob("*.act"))
    result = actc("fmt", "--check", *files)
    assert result.returncode == 0, result.stderr


def test_front_end_does_not_import_torch() -> None:
    code = ("import sys, actlang.cli, actlang.lang.checker, actlang.lang.printer;"
            "from actlang.lang.checker import check;"
            f"check({str(ROOT / 'examples' / 'recover.act')!r});"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
