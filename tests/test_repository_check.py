"""The session's repository check (tests/conftest.py) sees every kind of write: a file added,
one removed, one rewritten with other content, and nothing when only bytecode or the
virtual environment changed."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import repository_changes, repository_files


def test_a_rewritten_added_or_removed_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "recover.act.lock").write_text('{"models": {}}')
    (tmp_path / "README.md").write_text("# actlang\n")
    before = repository_files(tmp_path)

    (tmp_path / "examples" / "recover.act.lock").write_text('{"models": {"zoo.base": 1}}')
    (tmp_path / "README.md").unlink()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"\0")
    after = repository_files(tmp_path)

    assert repository_changes(before, after) == [
        "+ ./out", "+ out/model.safetensors", "- ./README.md",
        "~ examples/recover.act.lock"]


def test_a_rewrite_with_the_same_bytes_bytecode_and_the_venv_are_not(tmp_path: Path) -> None:
    (tmp_path / "spec.act").write_text("use std.zoo\n")
    before = repository_files(tmp_path)
    (tmp_path / "spec.act").write_text("use std.zoo\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.cpython-312.pyc").write_bytes(b"\1")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr\n")
    assert repository_changes(before, repository_files(tmp_path)) == []
