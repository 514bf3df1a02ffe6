"""Inputs for fuzzing the front end, and the invariants it must keep on every one of them.

``tests/lang/test_fuzz.py`` runs a few hundred of these; ``bench/bench_fuzz.py`` tens of
thousands. Every input is the bytes of a spec ``main.act``, of three kinds:

- :data:`well_formed_specs`: random syntax trees (``tests/lang/strategies.py``) printed by
  ``fmt``, alone or after a prelude declaring the names they use most, so that the checker,
  not only the parser, sees them;
- :func:`mutated_specs`: real specs (``examples/``, ``stdlib/std``, the golden bad specs)
  with bytes flipped; tokens or lines deleted, duplicated, swapped or spliced in from another
  spec; characters inserted (NUL, invalid UTF-8, line separators, a BOM, bidirectional
  controls, any character at all); NUL, bad escapes and half surrogate pairs inside
  strings; very long tokens; deep nesting; imports of every kind of file an import should
  refuse; a cut;
- :data:`raw_specs`: random bytes, random text, and soups of the language's tokens.

:func:`front_end` checks one from a fresh temporary directory, where an import can reach a
good library, a broken one, a cycle, a directory, a FIFO, a symlink loop, a file that is not
UTF-8 and one that is not a spec, then parses its text directly (the checker reads files with
universal newlines; the parser also gets the raw ``\\r``). :func:`assert_reported` states
what every result must satisfy.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from hypothesis import strategies as st

from actlang.lang import checker
from actlang.lang.diagnostics import (
    Diagnostic,
    DiagnosticError,
    SourceCache,
    render_all,
    to_json,
)
from actlang.lang.parser import KEYWORDS, parse
from actlang.lang.printer import format_module
from actlang.lang.program import Program
from tests.lang import strategies as S

ROOT = Path(__file__).resolve().parents[2]
SEED_FILES = sorted([*ROOT.glob("examples/**/*.act"), *ROOT.glob("stdlib/std/*.act"),
                     *ROOT.glob("tests/lang/golden/**/*.act")])
SEEDS: list[bytes] = [p.read_bytes() for p in SEED_FILES]

# ---- the directory a spec is checked in -----------------------------------------------------

#: Files next to ``main.act``, one for each way an import can go wrong (and one that works).
NEIGHBOURS: dict[str, bytes] = {
    "lib.act": b'let x = 1\nmodel m = local("m")\nability a { probe = lines(["a"]) }\n',
    "bad.act": b"let = (\n",
    "cycle.act": b'use "./main.act"\n',
    "latin1.act": b'let x = "caf\xe9"\n',
    "notes.txt": b"not a spec\n",
}

#: ``use`` lines the mutator inserts: every neighbour, and paths no import may read.
USE_LINES: list[bytes] = [
    *(f'use "./{name}" as lib'.encode() for name in NEIGHBOURS),
    b'use "./dir.act"', b'use "./fifo.act"', b'use "./loop.act"', b'use "./missing.act"',
    b'use "./main.act"', b'use "/dev/zero"', b'use "/proc/self/environ"', b'use "/"', b'use ""',
    b'use "."', b'use "./lib.act\\u0000.act"', b'use "./lib\x00.act"', b'use "../main.act"',
    b"use std.zoo", b"use std.recipes", b"use std.nothing", b"use zoo", b"use std.zoo as lib",
]


def _populate(directory: Path) -> None:
    for name, data in NEIGHBOURS.items():
        (directory / name).write_bytes(data)
    (directory / "dir.act").mkdir()
    os.mkfifo(directory / "fifo.act")  # a reader that opened it blindly would wait forever
    os.symlink("loop.act", directory / "loop.act")


# ---- invariants -----------------------------------------------------------------------------

#: Error codes that may come without a span, and why. A spec named on the command line that
#: cannot be read (not UTF-8, not a regular file, too large) has no line to point at; an
#: unreadable *import* is located at its ``use``.
UNLOCATED = {"E005"}
UNREAD_MAIN = "E405"  # the main file past the size limit: refused before it is read


def assert_reported(program: Program | None, diagnostics: Sequence[Diagnostic],
                    sources: SourceCache) -> None:
    """What every front-end result must satisfy: a program exactly when there is no error;
    every error located (but :data:`UNLOCATED`) at a line and column of a file the front end
    read; every diagnostic renderable as text (showing that location) and as JSON."""
    errors = [d for d in diagnostics if d.severity == "error"]
    assert (program is None) == bool(errors), (program, diagnostics)
    for d in errors:
        if d.span is None:
            assert d.code in UNLOCATED or \
                (d.code == UNREAD_MAIN and d.message.startswith("cannot read")), \
                f"unlocated {d.code}: {d.message}"
            continue
        span = d.span
        assert sources.line(span.file, span.line) is not None, f"{d.code} in an unread file {span.file}"
        assert 1 <= span.line <= span.end_line and span.column >= 1, (d.code, span)
    text = render_all(diagnostics, sources)
    for d in errors:
        if d.span is not None:
            assert f"{d.span.file}:{d.span.line}:{d.span.column}" in text
    to_json(diagnostics)


def front_end(main: bytes) -> list[Diagnostic]:
    """Check ``main`` as ``main.act`` in a fresh directory, then parse its text; assert
    :func:`assert_reported` of both. Any exception but the documented ``DiagnosticError``
    of :func:`parse` escapes. Returns the checker's diagnostics."""
    with tempfile.TemporaryDirectory(prefix="actlang-fuzz-") as tmp:
        directory = Path(tmp)
        _populate(directory)
        (directory / "main.act").write_bytes(main)
        program, diagnostics, sources = checker.check(directory / "main.act")
        assert_reported(program, diagnostics, sources)
    try:
        text = main.decode("utf-8")
    except UnicodeDecodeError:
        return diagnostics
    try:
        parse(text, "main.act")
    except DiagnosticError as error:
        parsed = SourceCache()
        parsed.add("main.act", text)
        assert_reported(None, error.diagnostics, parsed)
    return diagnostics


# ---- (a) well-formed specs ------------------------------------------------------------------

#: Declarations of names the random trees use most (``base``, ``tuned``, ``math``, ``zoo``), so
#: that their references resolve and the checker goes on to types, fields and recipes.
PRELUDE = '''use std.zoo as zoo
model base = local("base")
model tuned = local("tuned")
corpus text = lines(["an example"])
ability math { probe = text }
'''

well_formed_specs = st.tuples(st.sampled_from(["", PRELUDE]), S.modules).map(
    lambda pair: (pair[0] + format_module(pair[1])).encode())


# ---- (b) mutated real specs -----------------------------------------------------------------

#: Pieces of text inserted anywhere: the language's punctuation and keywords, and characters a
#: reader must survive (NUL, bytes that are not UTF-8 or cut a character in half, CR, form
#: feed, U+2028, a BOM, a right-to-left override, a combining mark, an emoji, a homoglyph).
INSERTS: list[bytes] = [
    b"{", b"}", b"(", b")", b"[", b"]", b'"', b"'", b"#", b"\\", b",", b".", b"..", b"=", b"==",
    b"->", b"%", b"*", b"-", b"+", b"/", b"\n", b"\t", b" ", b"1e999", b"0x1", b"1.", b".5",
    b"\x00", b"\xff", b"\xc3", b"\xe2\x80", b"\r", b"\x0c", b"\x0b", b"\x1c", b"\xc2\x85",
    b"\xe2\x80\xa8", b"\xef\xbb\xbf", b"\xe2\x80\xae", b"\xcc\x81", b"\xf0\x9f\x98\x80",
    b"\xd0\xb0",  # Cyrillic a
    *(k.encode() + b" " for k in KEYWORDS),
]

#: Token-ish pieces of a spec: strings, comments, names, numbers, runs of space, one byte.
_TOKEN = re.compile(rb'"(?:\\.|[^"\\\n])*"|#[^\n]*|[A-Za-z_]\w*|[0-9][0-9A-Za-z.%]*|\s+|.', re.S)

#: Openings that nest: expressions (parentheses, lists, calls, negation, a chain of sums)
#: and blocks.
_NESTERS = [(b"(", b")"), (b"[", b"]"), (b"f(", b")"), (b"-", b""), (b"a + ", b""),
            (b"finetune {", b"}"), (b"transfer a from b {", b"}")]

Mutation = Callable[[Callable, bytes], bytes]


def _position(draw, data: bytes) -> int:
    return draw(st.integers(0, len(data)))


def _flip(draw, data: bytes) -> bytes:
    if not data:
        return data
    i = draw(st.integers(0, len(data) - 1))
    return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]


def _set_byte(draw, data: bytes) -> bytes:
    if not data:
        return data
    i = draw(st.integers(0, len(data) - 1))
    return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]


def _insert(draw, data: bytes) -> bytes:
    piece = draw(st.one_of(st.sampled_from(INSERTS), st.characters().map(str.encode)))
    i = _position(draw, data)
    return data[:i] + piece + data[i:]


def _token_edit(draw, data: bytes) -> bytes:
    """Delete, duplicate or swap tokens."""
    tokens = _TOKEN.findall(data)
    if not tokens:
        return data
    i, j = (draw(st.integers(0, len(tokens) - 1)) for _ in range(2))
    edit = draw(st.sampled_from(["delete", "duplicate", "swap"]))
    if edit == "delete":
        del tokens[i]
    elif edit == "duplicate":
        tokens.insert(i, tokens[i])
    else:
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return b"".join(tokens)


def _line_edit(draw, data: bytes) -> bytes:
    """Delete, duplicate or swap lines, or splice in a line of another spec."""
    lines = data.split(b"\n")
    i, j = (draw(st.integers(0, len(lines) - 1)) for _ in range(2))
    edit = draw(st.sampled_from(["delete", "duplicate", "swap", "splice"]))
    if edit == "delete":
        del lines[i]
    elif edit == "duplicate":
        lines.insert(i, lines[i])
    elif edit == "swap":
        lines[i], lines[j] = lines[j], lines[i]
    else:
        other = draw(st.sampled_from(SEEDS)).split(b"\n")
        lines.insert(i, other[draw(st.integers(0, len(other) - 1))])
    return b"\n".join(lines)


#: What a string literal may hold that no path, name or template should: a NUL (raw or as an
#: escape), half a surrogate pair, a bad escape, a trailing backslash, parent and absolute
#: paths, a line separator, template braces.
STRING_PIECES: list[bytes] = [b"\x00", b"\\u0000", b"\\q", b"\\", b"../", b"/", b"\xe2\x80\xa8",
                              b"{", b"}", b"{q", b"*", b"\\ud800", b"\\n", b"\t", b"."]


def _in_string(draw, data: bytes) -> bytes:
    """A piece of :data:`STRING_PIECES` right after the opening quote of a string literal."""
    quotes = [m.start() + 1 for m in re.finditer(rb'"(?:\\.|[^"\\\n])*"', data)]
    if not quotes:
        return data
    i = draw(st.sampled_from(quotes))
    return data[:i] + draw(st.sampled_from(STRING_PIECES)) + data[i:]


def _long_token(draw, data: bytes) -> bytes:
    """A name, number, string, comment or run of spaces of up to 100,000 characters."""
    n = draw(st.sampled_from([1000, 4301, 10_000, 100_000]))  # 4301: past int()'s digit limit
    piece = draw(st.sampled_from([b"a" * n, b"9" * n, b"9" * n + b"%", b"1." + b"9" * n,
                                  b"9" * n + b"..1", b'"' + b"x" * n + b'"', b"#" + b"x" * n,
                                  b" " * n, b"\xc3\xa9" * n]))
    i = _position(draw, data)
    return data[:i] + piece + data[i:]


def _nest(draw, data: bytes) -> bytes:
    """Nesting around the limit (``parser.MAX_DEPTH``) and far beyond, after an ``=`` when
    there is one, closed or not. (Not much further: four nestings of 2,000 levels that parse
    to the end take seconds on a busy machine, past the tests' deadline; test_fuzz.py nests
    10,000 deep once per construct.)"""
    opening, closing = draw(st.sampled_from(_NESTERS))
    n = draw(st.sampled_from([10, 45, 49, 50, 98, 99, 100, 101, 200, 500]))
    inner = draw(st.sampled_from([b"1", b"", b"x", b'"s"']))
    nested = opening * n + inner + (closing * n if draw(st.booleans()) else b"")
    equals = [m.end() for m in re.finditer(rb"= ", data)]
    i = draw(st.sampled_from(equals)) if equals and draw(st.booleans()) else _position(draw, data)
    return data[:i] + nested + data[i:]


def _import(draw, data: bytes) -> bytes:
    lines = data.split(b"\n")
    lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(USE_LINES)))
    return b"\n".join(lines)


def _cut(draw, data: bytes) -> bytes:
    return data[:_position(draw, data)]


MUTATIONS: dict[str, Mutation] = {
    "flip": _flip, "byte": _set_byte, "insert": _insert, "string": _in_string,
    "token": _token_edit, "line": _line_edit, "long": _long_token, "nest": _nest,
    "import": _import, "cut": _cut,
}


@st.composite
def mutated_specs(draw, seeds: Sequence[bytes] = SEEDS) -> bytes:
    """A seed with one to four mutations of :data:`MUTATIONS`."""
    data = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 4))):
        data = MUTATIONS[draw(st.sampled_from(sorted(MUTATIONS)))](draw, data)
    return data


# ---- (c) raw text and bytes -----------------------------------------------------------------

_SOUP = [*INSERTS, b"x", b"1", b"2%", b"3GB", b"4..8", b'"s"', b"attn.*", b"local", b"lines",
         b"budget", b"target", b"std.zoo"]

raw_specs = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=2000).map(str.encode),
    st.lists(st.sampled_from(_SOUP), max_size=200).map(b" ".join),
)
"""Random bytes, random text, and soups of tokens (which the lexer accepts more often)."""
