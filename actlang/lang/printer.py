"""The canonical printer behind ``actc fmt``: syntax tree → text, comments kept.

Layout rules (the canonical form):

- two-space indentation, one statement per line, ``{`` on the header line, ``{}`` for an
  empty block (a ``merge`` written without a block stays without one);
- ``name = value`` with spaces in fields, keyword arguments and recipe parameter defaults;
  binary operators with spaces around them; the fewest parentheses that keep the tree;
- a call, list or recipe parameter list whose line would pass :data:`WIDTH` columns breaks
  one item per line, with a trailing comma;
- one blank line around top-level ``ability`` / ``surgery`` / ``recipe`` declarations; other
  blank lines are kept where the source had them (runs of them collapse to one), never after
  ``{`` or before ``}``, never at the start or end of the file;
- comments are kept: an own-line comment is printed on its own line before the statement that
  follows it (or before the closing ``}`` / at the end of the file); a comment at the end of a
  statement's last line stays there (two spaces, then ``#``); a comment at the end of a block
  header line stays on the header line; a comment inside a multi-line expression or header
  moves to its own line before that statement.

The printer needs only the tree: comment placement and kept blank lines come from the spans and
from ``Module.comments``; a tree without spans (built in code) prints with the forced blank
lines only. ``parse(format_module(m)) == m`` for every tree the grammar can express, and
formatting is idempotent.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence, Union

from actlang.lang import ast

WIDTH = 100
"""Lines longer than this (comments aside) are broken where a call, list or parameter list
allows it."""

INDENT = 2


# ---- a small Wadler-style layout engine --------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """Laid out flat if it fits in the rest of the line, else with its line breaks taken."""

    doc: "Doc"


@dataclass(frozen=True)
class _Nest:
    """Indents the lines broken inside ``doc`` by :data:`INDENT` more."""

    doc: "Doc"


@dataclass(frozen=True)
class _Line:
    """A possible line break; ``flat`` is printed instead when its group stays flat."""

    flat: str


@dataclass(frozen=True)
class _IfBreak:
    """Text printed only when the enclosing group is broken (a trailing comma)."""

    text: str


Doc = Union[str, list, _Group, _Nest, _Line, _IfBreak]

_SOFTLINE = _Line("")
_LINE = _Line(" ")


def _layout(doc: Doc, indent: int, width: int = WIDTH) -> str:
    """Lay ``doc`` out starting at column ``indent`` (the caller prints the indentation)."""
    out: list[str] = []
    column = indent
    stack: list[tuple[int, bool, Doc]] = [(indent, True, doc)]
    while stack:
        level, broken, item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            column += len(item)
        elif isinstance(item, list):
            stack.extend((level, broken, part) for part in reversed(item))
        elif isinstance(item, _Nest):
            stack.append((level + INDENT, broken, item.doc))
        elif isinstance(item, _Group):
            flat = not broken or _fits(width - column, item.doc, stack)
            stack.append((level, not flat, item.doc))
        elif isinstance(item, _Line):
            if broken:
                out.append("\n" + " " * level)
                column = level
            else:
                out.append(item.flat)
                column += len(item.flat)
        elif isinstance(item, _IfBreak):
            if broken:
                out.append(item.text)
                column += len(item.text)
        else:  # pragma: no cover - a programming error
            raise TypeError(f"not a layout document: {item!r}")
    return "".join(out)


def _fits(room: int, doc: Doc, rest: Sequence[tuple[int, bool, Doc]]) -> bool:
    """Whether ``doc`` laid out flat, plus what follows it up to the next line break, fits."""
    todo: list[tuple[bool, Doc]] = [(False, doc)]
    next_rest = len(rest) - 1
    while room >= 0:
        if not todo:
            if next_rest < 0:
                return True
            _, broken, item = rest[next_rest]
            next_rest -= 1
            todo.append((broken, item))
            continue
        broken, item = todo.pop()
        if isinstance(item, str):
            room -= len(item)
        elif isinstance(item, list):
            todo.extend((broken, part) for part in reversed(item))
        elif isinstance(item, (_Nest, _Group)):
            todo.append((broken, item.doc))
        elif isinstance(item, _Line):
            if broken:
                return True
            room -= len(item.flat)
        elif isinstance(item, _IfBreak):
            room -= len(item.text) if broken else 0
    return False


def _sequence(open_: str, items: Sequence[Doc], close: str) -> Doc:
    """``open item, item close`` on one line, or one item per line with a trailing comma."""
    if not items:
        return open_ + close
    body: list[Doc] = [_SOFTLINE]
    for index, item in enumerate(items):
        if index:
            body += [",", _LINE]
        body.append(item)
    body.append(_IfBreak(","))
    return _Group([open_, _Nest(body), _SOFTLINE, close])


# ---- expressions -------------------------------------------------------------------------------

_BINARY_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_UNARY_PRECEDENCE = 3
_ATOM_PRECEDENCE = 4
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _precedence(expr: ast.Expr) -> int:
    if isinstance(expr, ast.BinOp):
        return _BINARY_PRECEDENCE[expr.op]
    if isinstance(expr, ast.Neg):
        return _UNARY_PRECEDENCE
    if isinstance(expr, ast.Compare):
        return 0
    if isinstance(expr, ast.Scoped):
        return -1
    return _ATOM_PRECEDENCE


def _operand(expr: ast.Expr, minimum: int) -> Doc:
    """``expr``, parenthesized when it binds less tightly than ``minimum``."""
    doc = _expr(expr)
    return ["(", doc, ")"] if _precedence(expr) < minimum else doc


def _string(value: str) -> str:
    """A string literal the lexer reads back as ``value`` (JSON escapes, UTF-8 kept)."""
    text = json.dumps(value, ensure_ascii=False)
    # Lone surrogates cannot be written as UTF-8: keep them as escapes.
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _float(value: float) -> str:
    """A FLOAT token: the shortest digits that read back as ``value`` (``repr``'s), always with a
    ``.`` or an exponent; below 0.01 in scientific notation (``1e-3``, ``2.5e-4``); infinity as
    ``1e999``, which overflows back to it."""
    if math.isnan(value):
        raise ValueError("NaN cannot be written in a .act file")
    if math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    text = repr(value)
    if "e" in text:  # 1e-05 -> 1e-5, 1e+16 -> 1e16
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{int(exponent)}"
    if 0 < abs(value) < 1e-2:  # 0.001 -> 1e-3, as learning rates are written
        _, digits, exponent = Decimal(text).as_tuple()
        shown = "".join(map(str, digits)).rstrip("0")
        mantissa = shown[0] + ("." + shown[1:] if len(shown) > 1 else "")
        return f"{'-' if value < 0 else ''}{mantissa}e{exponent + len(digits) - 1}"
    return text


def _percent(value: float) -> str:
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return f"{int(value)}%"
    return _float(value) + "%"


def _size(value: float, unit: str) -> str:
    """A SIZE token: digits with an optional fraction, never an exponent."""
    if math.isnan(value):
        raise ValueError("NaN cannot be written in a .act file")
    if math.isinf(value):
        number = ("-" if value < 0 else "") + "1" + "0" * 309  # overflows back to infinity
    elif value.is_integer() and abs(value) < 1e16:
        number = str(int(value))
    else:
        number = format(Decimal(repr(value)), "f")
    return number + unit


def _expr(expr: ast.Expr | ast.KwArg) -> Doc:
    if isinstance(expr, ast.Str):
        return _string(expr.value)
    if isinstance(expr, ast.Bool):
        return "true" if expr.value else "false"
    if isinstance(expr, ast.Int):
        return str(expr.value)
    if isinstance(expr, ast.Float):
        return _float(expr.value)
    if isinstance(expr, ast.Percent):
        return _percent(expr.value)
    if isinstance(expr, ast.Size):
        return _size(expr.value, expr.unit)
    if isinstance(expr, ast.Range):
        return f"{expr.start}..{expr.stop}"
    if isinstance(expr, ast.Path):
        return expr.dotted
    if isinstance(expr, ast.Call):
        args: list[Doc] = [_expr(a) for a in expr.args]
        args += [_expr(k) for k in expr.kwargs]
        return [expr.func.dotted, _sequence("(", args, ")")]
    if isinstance(expr, ast.ListExpr):
        return _sequence("[", [_expr(i) for i in expr.items], "]")
    if isinstance(expr, ast.BinOp):
        precedence = _BINARY_PRECEDENCE[expr.op]
        # Left-associative: a right operand of the same precedence keeps its parentheses.
        return [_operand(expr.left, precedence), f" {expr.op} ",
                _operand(expr.right, precedence + 1)]
    if isinstance(expr, ast.Neg):
        return ["-", _operand(expr.operand, _UNARY_PRECEDENCE)]
    if isinstance(expr, ast.Compare):
        return [_operand(expr.left, 1), f" {expr.op} ", _operand(expr.right, 1)]
    if isinstance(expr, ast.Scoped):
        scope = " global" if expr.scope == "global" else f" per {expr.scope}"
        return [_operand(expr.value, 1), scope]
    if isinstance(expr, ast.KwArg):
        return [expr.name, " = ", _expr(expr.value)]
    raise TypeError(f"not an expression: {expr!r}")


def format_expr(expr: ast.Expr | ast.KwArg) -> str:
    """Print one expression in canonical form (for ``fmt``, and for messages that quote one).

    Args:
        expr: any expression node (``Scoped`` and ``Compare`` included, as they print in a
            field value and an ``expect``), or a keyword argument (``key = value``).

    Returns:
        The text; it spans several lines only when a call or list is longer than
        :data:`WIDTH` columns.

    Raises:
        ValueError: for a NaN number, which has no spelling in the language.
    """
    return _layout(_expr(expr), 0)


# ---- statements and comments -------------------------------------------------------------------

_BLOCK_DECLARATIONS = (ast.AbilityDecl, ast.Surgery, ast.Recipe)


@dataclass
class _Element:
    """A unit of a statement list: a statement (with its comments) or an own-line comment."""

    lines: list[str]
    first: int | None  # source lines, when known
    last: int | None
    statement: bool
    spaced: bool = False  # a top-level block declaration: blank lines around it


@dataclass
class _Printer:
    comments: list[ast.Comment]
    cursor: int = 0

    # -- comments, consumed strictly in source order --

    def _peek(self) -> ast.Comment | None:
        return self.comments[self.cursor] if self.cursor < len(self.comments) else None

    def _take_before(self, pos: int) -> list[ast.Comment]:
        taken = []
        while (c := self._peek()) is not None and c.pos < pos:
            taken.append(c)
            self.cursor += 1
        return taken

    def _take_trailing(self, span: ast.Span | None, bound: int) -> ast.Comment | None:
        c = self._peek()
        if (span is not None and c is not None and span.end_pos <= c.pos < bound
                and c.line == span.end_line):
            self.cursor += 1
            return c
        return None

    # -- statement lists --

    def statements(self, stmts: Sequence[ast.Stmt | ast.Item], indent: int, end: int,
                   top: bool) -> list[str]:
        """The lines of a statement list whose enclosing block ends at source offset ``end``."""
        pad = " " * indent
        starts = [s.span.start_pos if s.span is not None else None for s in stmts]
        elements: list[_Element] = []
        for index, stmt in enumerate(stmts):
            span = stmt.span
            if span is not None:
                elements += [_Element([pad + c.text], c.line, c.line, False)
                             for c in self._take_before(span.start_pos)]
            bound = min([end] + [s for s in starts[index + 1:] if s is not None][:1])
            lines = self.statement(stmt, indent, bound)
            elements.append(_Element(lines, span.line if span else None,
                                     span.end_line if span else None, True,
                                     top and isinstance(stmt, _BLOCK_DECLARATIONS)))
        elements += [_Element([pad + c.text], c.line, c.line, False)
                     for c in self._take_before(end)]
        return _join(elements)

    def statement(self, stmt: ast.Stmt | ast.Item, indent: int, bound: int) -> list[str]:
        """The lines of one statement, with its comments; ``bound``: where its parent ends or
        its next sibling starts (a trailing comment must come before it)."""
        if isinstance(stmt, ast.Merge) and stmt.body is None:
            return self._simple(stmt, ["merge ", stmt.method, " from ", _expr(stmt.donors)],
                                indent, bound)
        if isinstance(stmt, ast.Surgery) and stmt.body is None:
            if stmt.apply is None:
                raise ValueError(f"surgery {stmt.name} has neither a body nor an application")
            return self._simple(stmt, ["surgery ", stmt.name, " -> ", _string(stmt.output),
                                       " = ", _expr(stmt.apply)], indent, bound)
        if isinstance(stmt, ast.Field):
            return self._simple(stmt, [stmt.name, " = ", _expr(stmt.value)], indent, bound)
        if isinstance(stmt, ast.Expect):
            return self._simple(stmt, ["expect ", _expr(stmt.condition)], indent, bound)
        if isinstance(stmt, ast.Let):
            return self._simple(stmt, ["let ", stmt.name, " = ", _expr(stmt.value)],
                                indent, bound)
        if isinstance(stmt, ast.ModelDecl):
            return self._simple(stmt, ["model ", stmt.name, " = ", _expr(stmt.value)],
                                indent, bound)
        if isinstance(stmt, ast.CorpusDecl):
            return self._simple(stmt, ["corpus ", stmt.name, " = ", _expr(stmt.value)],
                                indent, bound)
        if isinstance(stmt, ast.Use):
            return self._simple(stmt, _use(stmt), indent, bound)
        return self._block(stmt, indent, bound)

    def _simple(self, stmt: ast.Stmt | ast.Item, doc: Doc, indent: int,
                bound: int) -> list[str]:
        pad = " " * indent
        span = stmt.span
        moved = self._take_before(span.end_pos) if span is not None else []
        lines = [pad + c.text for c in moved]
        lines += (pad + _layout(doc, indent)).split("\n")
        trailing = self._take_trailing(span, bound)
        if trailing is not None:
            lines[-1] += "  " + trailing.text
        return lines

    def _block(self, stmt: ast.Stmt | ast.Item, indent: int, bound: int) -> list[str]:
        pad = " " * indent
        span = stmt.span
        header, header_spans, body = _block_parts(stmt)
        known = [s for s in header_spans if s is not None]

        moved: list[ast.Comment] = []
        header_comment = None
        if span is not None:
            header_end = max([span.start_pos] + [s.end_pos for s in known])
            header_line = max([span.line] + [s.end_line for s in known])
            body_start = next((s.span.start_pos for s in body if s.span is not None),
                              span.end_pos)
            moved = self._take_before(header_end)
            c = self._peek()
            if c is not None and c.pos < min(body_start, span.end_pos) and (
                    c.line == header_line
                    # A broken recipe header ends with `) {` on the line after the last
                    # parameter; a comment there, right of the brace, is the header's.
                    or (isinstance(stmt, ast.Recipe) and header_line > span.line
                        and c.line == header_line + 1 and c.column > indent + 3)):
                header_comment = c
                self.cursor += 1

        inner = self.statements(body, indent + INDENT, span.end_pos if span else -1, top=False)
        empty = not inner and header_comment is None
        lines = [pad + c.text for c in moved]
        lines += (pad + _layout([header, " {}" if empty else " {"], indent)).split("\n")
        if not empty:
            if header_comment is not None:
                lines[-1] += "  " + header_comment.text
            lines += inner
            lines.append(pad + "}")
        trailing = self._take_trailing(span, bound)
        if trailing is not None:
            lines[-1] += "  " + trailing.text
        return lines


def _use(use: ast.Use) -> Doc:
    if use.module is not None:
        target = ".".join(use.module)
    elif use.file is not None:
        target = _string(use.file)
    else:
        raise ValueError("a `use` needs a module or a file")
    return ["use ", target] + ([" as ", use.alias] if use.alias is not None else [])


def _block_parts(stmt: ast.Stmt | ast.Item
                 ) -> tuple[Doc, list[ast.Span | None], tuple[ast.Stmt, ...]]:
    """A block statement's header (without ``{``), the spans in its header, and its body."""
    if isinstance(stmt, ast.AbilityDecl):
        return ["ability ", stmt.name], [], stmt.body
    if isinstance(stmt, ast.Surgery):
        return ["surgery ", stmt.name, " -> ", _string(stmt.output)], [], stmt.body or ()
    if isinstance(stmt, ast.Recipe):
        params: list[Doc] = [p.name if p.default is None else [p.name, " = ", _expr(p.default)]
                             for p in stmt.params]
        return (["recipe ", stmt.name, _sequence("(", params, ")")],
                [p.span for p in stmt.params], stmt.body)
    if isinstance(stmt, ast.Transfer):
        return (["transfer ", _expr(stmt.ability), " from ", _expr(stmt.donor)],
                [stmt.ability.span, stmt.donor.span], stmt.body)
    if isinstance(stmt, ast.Merge):
        return (["merge ", stmt.method, " from ", _expr(stmt.donors)], [stmt.donors.span],
                stmt.body or ())
    if isinstance(stmt, ast.Finetune):
        return "finetune", [], stmt.body
    raise TypeError(f"not a statement: {stmt!r}")


def _join(elements: list[_Element]) -> list[str]:
    """Concatenate elements, with a blank line where the source had one (or more) and around
    top-level block declarations."""
    if not elements:
        return []
    blank = [False] + [
        prev.last is not None and cur.first is not None and cur.first > prev.last + 1
        for prev, cur in zip(elements, elements[1:])
    ]
    statements = [i for i, e in enumerate(elements) if e.statement]
    for a, b in zip(statements, statements[1:]):
        if (elements[a].spaced or elements[b].spaced) and not any(blank[a + 1: b + 1]):
            blank[a + 1] = True
    lines: list[str] = []
    for element, blank_before in zip(elements, blank):
        if blank_before:
            lines.append("")
        lines += element.lines
    return lines


def format_module(module: ast.Module) -> str:
    """Print a parsed file in canonical form, with its comments.

    Args:
        module: the tree, normally from :func:`actlang.lang.parser.parse` (its spans and
            ``comments`` place the comments and the blank lines the author kept); a tree
            without spans prints with no comments and only the forced blank lines.

    Returns:
        The text, ending with exactly one newline ("" for a file with nothing in it).

    Raises:
        ValueError: for a tree no text can express (a NaN number, a ``Use`` with neither a
            module nor a file, a ``Surgery`` with neither a body nor an application).
    """
    printer = _Printer(sorted(module.comments, key=lambda c: c.pos))
    lines = printer.statements(module.items, 0, sys.maxsize, top=True)
    return "\n".join(lines) + "\n" if lines else ""
