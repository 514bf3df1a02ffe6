"""ERRORS.md, generated from the source that raises each error (issue 12, part 6)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from actlang.lang.catalogue import explain, messages, render
from actlang.lang.diagnostics import CODES

ROOT = Path(__file__).parents[2]


def test_errors_md_is_up_to_date() -> None:
    text = (ROOT / "ERRORS.md").read_text()
    assert render() == text, "run: python -m actlang.lang.catalogue ERRORS.md"


def test_every_code_has_a_message_and_every_message_a_code() -> None:
    found = messages()
    used = {code for message in found for code in message.codes}
    assert used == set(CODES), f"codes without a message: {set(CODES) - used}"


def test_the_scan_reads_each_way_of_raising(tmp_path: Path) -> None:
    """A diagnostic, a checker error with a conditional code, an input error with its hint
    given positionally, a selection warning; a message passed through is not listed twice."""
    package = tmp_path / "package"
    package.mkdir()
    (package / "module.py").write_text(textwrap.dedent('''
        """Things that go wrong."""

        def read(path, big):
            Diagnostic("E005", f"cannot read `{path}`", None, hint="check it")
            self.error("E405" if big else "E005", "too large: " + str(path), span)
            raise RuntimeUserError(f"model directory not found: {path}", "check the path")
            warnings.warn(f"{count} global channels", GlobalChannelWarning)
            Diagnostic("E502", error.message, None)
    '''))
    found = messages(package)
    assert [(m.codes, m.text, m.hint, m.function) for m in found] == [
        (("E005",), "cannot read `{path}`", "check it", "read"),
        (("E405", "E005"), "too large: {str(path)}", None, "read"),
        (("E501", "E502"), "model directory not found: {path}", "check the path", "read"),
        (("W501",), "{count} global channels", None, "read"),
    ]
    assert {m.area for m in found} == {"Things that go wrong."}


def test_explain_gives_the_meaning_the_fix_and_the_messages() -> None:
    text = explain("e405")
    assert text is not None and text.startswith("E405: limit exceeded")
    assert CODES["E405"].fix in text
    assert "a sweep takes at most" in text
    assert explain("E999") is None
