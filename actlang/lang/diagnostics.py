"""Diagnostics: what a user sees when a spec is wrong.

Every user mistake becomes a :class:`Diagnostic` with a code, a message, a span and, where a fix
is known, a ``help:`` hint. They are rendered like rustc does::

    error[E101]: unknown name `tuend`
     --> spec.act:12:12
       |
    12 |   target = tuend
       |            ^^^^^ not defined in this file or its imports
       |
       = help: did you mean `tuned`?

:class:`DiagnosticError` carries one or more diagnostics out of the front end; the CLI prints
them and exits with status 1. ``--json`` gives :func:`to_json` instead.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from actlang.lang.ast import Span

# Code → one-line title. LANGUAGE.md carries the same table (a test keeps them in sync).
CODES: dict[str, str] = {
    "E001": "syntax error: unexpected token",
    "E002": "syntax error: unexpected character",
    "E003": "syntax error: unexpected end of file",
    "E004": "invalid literal",
    "E005": "file cannot be read",
    "E006": "nesting too deep",
    "E007": "positional argument after a keyword argument",
    "E101": "unknown name",
    "E102": "duplicate definition",
    "E103": "unknown import",
    "E104": "import cycle",
    "E105": "unknown member of an imported module",
    "E106": "name shadows a builtin",
    "E201": "unknown field",
    "E202": "missing required field",
    "E203": "duplicate field",
    "E204": "wrong type",
    "E205": "value out of range",
    "E206": "unknown option",
    "E207": "scope not allowed here",
    "E208": "statement not allowed here",
    "E301": "unknown function",
    "E302": "wrong number of arguments",
    "E303": "unknown keyword argument",
    "E304": "missing argument",
    "E305": "duplicate keyword argument",
    "E401": "wrong kind of declaration",
    "E402": "recipe application error",
    "E403": "duplicate output path",
    "E404": "invalid sweep",
    "E405": "limit exceeded",
    "E501": "model, corpus or selection problem found while planning",
    "E502": "problem found while running",
    "W001": "setting with side effects",
    "W501": "a selection the spec may not mean, found while planning",
}


@dataclass(frozen=True)
class Diagnostic:
    """One finding. ``severity`` is "error" or "warning"; ``label`` is written under the caret."""

    code: str
    message: str
    span: Span | None
    severity: str = "error"
    label: str | None = None
    hint: str | None = None
    notes: tuple[tuple[str, Span | None], ...] = field(default=())

    def __post_init__(self) -> None:
        assert self.code in CODES, f"diagnostic code {self.code} is not registered in CODES"
        assert self.severity in ("error", "warning")


class DiagnosticError(Exception):
    """Raised by the front end when a spec has errors; carries every diagnostic found."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        assert diagnostics, "a DiagnosticError needs at least one diagnostic"
        self.diagnostics = list(diagnostics)
        super().__init__(self.diagnostics[0].message)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A ``did you mean `x`?`` hint for the closest candidate, or None if nothing is close."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{matches[0]}`?" if matches else None


class SourceCache:
    """The text of every file the front end read, so diagnostics can quote their lines."""

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}

    def add(self, file: str, text: str) -> None:
        self._texts[file] = text

    def update(self, other: "SourceCache") -> None:
        self._texts.update(other._texts)

    def line(self, file: str, line: int) -> str | None:
        text = self._texts.get(file)
        if text is None:
            return None
        lines = text.splitlines()
        return lines[line - 1] if 1 <= line <= len(lines) else ""


_OUTPUT = re.compile(r'->\s*("(?:\\.|[^"\\\n])*")')


def output_span(span: Span, line: str | None) -> Span:
    """The span of the ``"path"`` in a surgery's header ``surgery NAME -> "path"``, given the
    surgery's ``span`` and the text of its first line; the first line alone (one column)
    when the string is not on it."""
    match = _OUTPUT.search(line, span.column - 1) if line is not None else None
    if match is not None:
        start, end = match.start(1), match.end(1)
        offset = span.start_pos - (span.column - 1)  # of the line's first character
        return Span(span.file, span.line, start + 1, span.line, end + 1, offset + start,
                    offset + end)
    if span.end_line == span.line:
        return span
    return replace(span, end_line=span.line, end_column=span.column + 1,
                   end_pos=span.start_pos + 1)


def render(diagnostic: Diagnostic, sources: SourceCache) -> str:
    """Render one diagnostic as text: header, location, quoted line, caret, hint."""
    out = [f"{diagnostic.severity}[{diagnostic.code}]: {diagnostic.message}"]
    span = diagnostic.span
    if span is not None:
        out.extend(_quote(span, sources, diagnostic.label, arrow="-->"))
    for note, note_span in diagnostic.notes:
        if note_span is not None:
            out.extend(_quote(note_span, sources, note, arrow=":::"))
        else:
            out.append(f"   = note: {note}")
    if diagnostic.hint:
        out.append(f"   = help: {diagnostic.hint}")
    return "\n".join(out)


def _quote(span: Span, sources: SourceCache, label: str | None, arrow: str) -> list[str]:
    source_line = sources.line(span.file, span.line)
    gutter = len(str(span.line))
    lines = [f"{' ' * gutter}{arrow} {span.file}:{span.line}:{span.column}"]
    if source_line is None:
        return lines
    source_line = source_line.expandtabs(1)
    end_column = span.end_column if span.end_line == span.line else len(source_line) + 1
    width = max(1, end_column - span.column)
    caret = " " * (span.column - 1) + "^" * width + (f" {label}" if label else "")
    lines += [f"{' ' * gutter} |", f"{span.line} | {source_line}", f"{' ' * gutter} | {caret}"]
    return lines


def render_all(diagnostics: Sequence[Diagnostic], sources: SourceCache) -> str:
    """Render diagnostics, separated by blank lines, with a closing count."""
    blocks = [render(d, sources) for d in diagnostics]
    errors = sum(d.severity == "error" for d in diagnostics)
    warnings = len(diagnostics) - errors
    summary = []
    if errors:
        summary.append(f"{errors} error{'s' if errors != 1 else ''}")
    if warnings:
        summary.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return "\n\n".join(blocks) + ("\n\n" + ", ".join(summary) + " found" if summary else "")


def to_json(diagnostics: Sequence[Diagnostic]) -> str:
    """A machine-readable list: severity, code, message, file, start/end line and column."""
    records = []
    for d in diagnostics:
        s = d.span
        records.append({
            "severity": d.severity,
            "code": d.code,
            "message": d.message,
            "hint": d.hint,
            "file": s.file if s else None,
            "start": {"line": s.line, "column": s.column} if s else None,
            "end": {"line": s.end_line, "column": s.end_column} if s else None,
        })
    return json.dumps(records, indent=2)
