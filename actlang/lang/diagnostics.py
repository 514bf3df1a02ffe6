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


@dataclass(frozen=True)
class Code:
    """What a diagnostic code means and how a user gets past it (``actc explain CODE``;
    ERRORS.md lists every message of each code, generated from the source)."""

    title: str
    meaning: str
    fix: str


# Code → title, meaning and fix. LANGUAGE.md and ERRORS.md carry them (tests keep both current).
CODES: dict[str, Code] = {
    "E001": Code("syntax error: unexpected token",
                 "The parser met a token where the grammar allows none of that kind, e.g. a "
                 "missing `=` or `}` or a keyword used as a name.",
                 "Compare the line with LANGUAGE.md; the help line lists what was expected."),
    "E002": Code("syntax error: unexpected character",
                 "A character that starts no token of the language (`@`, `$`, a stray quote).",
                 "Remove it, or put it inside a string."),
    "E003": Code("syntax error: unexpected end of file",
                 "The file ends inside a block, a call or a string.",
                 "Close the bracket or string that the caret points after."),
    "E004": Code("invalid literal",
                 "A number, percentage, size or string that cannot be read: an unknown "
                 "escape, a unit that does not exist, a number out of range.",
                 "Write it as LANGUAGE.md's literal table shows (`3%`, `1e-4`, `5GB`)."),
    "E005": Code("file cannot be read",
                 "A spec or an imported spec is missing, unreadable, not UTF-8 or not a "
                 "regular file.",
                 "Check the path (imports are relative to the importing file) and the "
                 "file's permissions and encoding."),
    "E006": Code("nesting too deep",
                 "Expressions, blocks or chains of lets nest deeper than the parser or "
                 "checker follows.",
                 "Write the value flat, or name its parts with `let`."),
    "E007": Code("positional argument after a keyword argument",
                 "In a call, an argument without a name follows one with a name.",
                 "Put positional arguments first, or name every argument."),
    "E101": Code("unknown name",
                 "A reference to something no declaration, import or builtin defines.",
                 "Check the spelling (the help line suggests the closest name) or add the "
                 "declaration or `use`."),
    "E102": Code("duplicate definition",
                 "Two declarations in one file share a name.",
                 "Rename one of them."),
    "E103": Code("unknown import",
                 "`use` names a stdlib module that does not exist, or a file that is "
                 "missing, is not a `.act` spec or cannot be resolved.",
                 "Use `std.` for stdlib modules and a relative path to a `.act` file for "
                 "your own."),
    "E104": Code("import cycle",
                 "Files import each other in a circle.",
                 "Move what both need into a third file that both import."),
    "E105": Code("unknown member of an imported module",
                 "`module.name` where the module defines no `name`.",
                 "Check the spelling; the help line lists what the module defines."),
    "E106": Code("name shadows a builtin",
                 "A declaration takes the name of a module namespace (`attn`, `mlp`, ...) or "
                 "a builtin function.",
                 "Rename the declaration."),
    "E107": Code("let defined in terms of itself",
                 "A let whose value uses itself, directly (`let a = a + 1`) or through other "
                 "lets (`let a = b` and `let b = a`): it has no value.",
                 "Give one of the lets in the cycle a value that uses none of the others."),
    "E201": Code("unknown field",
                 "A block has a field its kind of block does not take.",
                 "Check the spelling; the help line lists the block's fields."),
    "E202": Code("missing required field",
                 "A block lacks a field it needs (an ability without `probe`, a surgery "
                 "without `target` or without a rule).",
                 "Add the field; the help line shows an example."),
    "E203": Code("duplicate field",
                 "A field is set twice in one block.",
                 "Keep one of them."),
    "E204": Code("wrong type",
                 "A value of one kind where another is expected: a number for a model, a "
                 "call for a budget.",
                 "Write a value of the expected kind; the help line gives an example."),
    "E205": Code("value out of range",
                 "A value of the right kind outside what the field accepts: a budget over "
                 "100%, a negative step count, an empty output path.",
                 "Use a value within the bounds LANGUAGE.md's field tables give."),
    "E206": Code("unknown option",
                 "A name where the field takes one of a fixed set (a score, a granularity, "
                 "a module kind).",
                 "Pick one of the options the help line lists."),
    "E207": Code("scope not allowed here",
                 "`per ...` or `global` on a value, or with a scope, that does not take it.",
                 "Remove the scope, or use one the field lists."),
    "E208": Code("statement not allowed here",
                 "A statement in a block that does not take it (two finetune blocks, a "
                 "merge beside transfers).",
                 "Move it into its own block or surgery, as the help line says."),
    "E301": Code("unknown function",
                 "A call to a function that is not a builtin here.",
                 "Check the spelling; the help line lists the functions of this context."),
    "E302": Code("wrong number of arguments",
                 "A call with more positional arguments than the function takes, or with "
                 "arguments that exclude each other.",
                 "Compare with the function's parameters in LANGUAGE.md."),
    "E303": Code("unknown keyword argument",
                 "A call names a parameter the function does not have.",
                 "Check the spelling; the help line lists the parameters."),
    "E304": Code("missing argument",
                 "A call lacks an argument the function needs.",
                 "Add it; the help line names it."),
    "E305": Code("duplicate keyword argument",
                 "A call names one parameter twice.",
                 "Keep one of them."),
    "E401": Code("wrong kind of declaration",
                 "A name used as a kind of declaration it is not (a corpus as a model).",
                 "Refer to a declaration of the kind the field expects."),
    "E402": Code("recipe application error",
                 "A recipe applied with wrong or missing parameters.",
                 "Compare the application with the recipe's parameter list."),
    "E403": Code("duplicate output path",
                 "Two surgeries write to the same directory.",
                 "Give each surgery its own output path."),
    "E404": Code("invalid sweep",
                 "A sweep with fewer than two values, or in a field that cannot be swept.",
                 "Sweep at least two values, in a field LANGUAGE.md marks as sweepable."),
    "E405": Code("limit exceeded",
                 "The spec asks for more work than `actc` bounds: too many sweep values or "
                 "variants, lets that expand exponentially, too many imports, a spec file "
                 "over 256 KiB or imports over 512 KiB in all (LANGUAGE.md, Limits).",
                 "Sweep a coarser grid, write expanding lets out flat, keep data in corpus "
                 "files."),
    "E501": Code("model, corpus or selection problem found while planning",
                 "An input the spec names is missing, damaged or does not fit: a model "
                 "directory, a checkpoint, a tokenizer, a corpus, an output path, or a "
                 "selection that the models' channels cannot satisfy. Located at the "
                 "declaration or rule that names it.",
                 "The message names the file or setting; the help line says what to change."),
    "E502": Code("problem found while running",
                 "Something only a run can find: a corpus with no scored tokens, weights "
                 "that are not finite, a cache or output that cannot be written. Located at "
                 "what the spec asks the failing step for: the model it loads, the ability "
                 "whose corpus it reads, the rule it applies, the surgery it saves (a cache "
                 "that cannot be opened before anything runs belongs to no line).",
                 "The message names the file or setting; the help line says what to change."),
    "W001": Code("setting with side effects",
                 "A valid setting that probably does not do what was meant (a 0% budget "
                 "moves nothing).",
                 "Change the setting, or keep it if it is what you mean."),
    "W501": Code("a selection the spec may not mean, found while planning",
                 "A rule's candidates include channels it may not mean to move (global "
                 "residual channels) or leave out some it cannot measure.",
                 "Narrow or widen the rule's `channels`, as the warning says."),
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
        self._lines: dict[str, list[str]] = {}

    def add(self, file: str, text: str) -> None:
        # Lines as the parser counts them: "\n" alone ends one (splitlines() would also
        # split at a form feed or a vertical tab, and quote the wrong line). Split once:
        # rendering thousands of diagnostics quotes thousands of lines.
        self._lines[file] = text.split("\n")

    def update(self, other: "SourceCache") -> None:
        self._lines.update(other._lines)

    def line(self, file: str, line: int) -> str | None:
        lines = self._lines.get(file)
        if lines is None:
            return None
        return lines[line - 1].rstrip("\r") if 1 <= line <= len(lines) else ""


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
