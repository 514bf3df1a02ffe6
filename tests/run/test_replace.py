"""Replacing an output (``--force``): the earlier output or the new one is in place at every
instant, never neither — one atomic exchange, not two renames with a gap a kill can hit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actlang.run import output
from actlang.run.output import _exchange, atomic_output_dir


class Killed(Exception):
    """Stands for a SIGKILL at that instant: nothing after it runs."""


def _write(directory: Path, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "weights.txt").write_text(text)


def _exchange_works(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    _write(probe / "a", "a")
    _write(probe / "b", "b")
    return _exchange(probe / "a", probe / "b")


def test_exchange_swaps_two_directories_in_one_step(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "new")
    _write(b, "old")
    if not _exchange(a, b):
        pytest.skip("this system or filesystem has no atomic exchange (renameat2)")
    assert (b / "weights.txt").read_text() == "new"
    assert (a / "weights.txt").read_text() == "old"


def test_an_output_being_replaced_is_never_missing(tmp_path: Path, monkeypatch) -> None:
    """A crash at any rename of the output leaves the earlier output in its place."""
    if not _exchange_works(tmp_path / "probe"):
        pytest.skip("this system or filesystem has no atomic exchange (renameat2)")
    out = tmp_path / "out"
    _write(out, "old")
    real_replace = os.replace

    def crash_at_the_output(src, dst, *args, **kwargs):
        if Path(src) == out or Path(dst) == out:
            raise Killed("killed while renaming the output")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(output.os, "replace", crash_at_the_output)
    with atomic_output_dir(out, overwrite=True) as staging:
        (staging / "weights.txt").write_text("new")
    assert (out / "weights.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "probe"]  # old removed


def test_without_exchange_the_output_is_still_replaced(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    _write(out, "old")
    monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    with atomic_output_dir(out, overwrite=True) as staging:
        (staging / "weights.txt").write_text("new")
    assert (out / "weights.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_retitling_a_card_never_writes_through_a_hard_link(tmp_path):
    # save links a stage's files into the output; the output's card gets its own title
    from actlang.run.output import retitle_model_card

    stage = tmp_path / "stage.md"
    stage.write_text("# finetune-5e6d67ea02\n\nbody\n")
    card = tmp_path / "README.md"
    os.link(stage, card)
    retitle_model_card(card, "recover")
    assert card.read_text() == "# recover\n\nbody\n"
    assert stage.read_text() == "# finetune-5e6d67ea02\n\nbody\n"
    assert not list(tmp_path.glob("*.retitled"))
