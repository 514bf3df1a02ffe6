"""The syntax tree of a .act file: frozen, hashable dataclasses with source spans.

Spans never take part in equality or hashing (``compare=False``), so two trees that differ
only in layout compare equal — the property behind ``parse(print(tree)) == tree``.

Expressions are a small closed set; statements are either declarations at the top level of a
file or the statements of a block (fields, rules, ``finetune``, ``expect``). What a field
*means* is not decided here: see ``actlang.lang.schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based lines and columns, end exclusive, plus offsets."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int
    start_pos: int
    end_pos: int


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)  # type: ignore[return-value]


# ---- expressions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Str:
    value: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Int:
    value: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Float:
    value: float
    span: Span | None = _span()


@dataclass(frozen=True)
class Percent:
    """``3%`` is ``Percent(3.0)``: the number as written, not a fraction."""

    value: float
    span: Span | None = _span()


@dataclass(frozen=True)
class Size:
    """A byte size such as ``2GB`` (decimal units) or ``512MiB`` (binary units)."""

    value: float
    unit: str
    span: Span | None = _span()

    UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}

    @property
    def bytes(self) -> int:
        return int(self.value * self.UNITS[self.unit])


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span | None = _span()


@dataclass(frozen=True)
class Range:
    """``4..28``: the half-open integer range [start, stop), as in Python and Rust."""

    start: int
    stop: int
    span: Span | None = _span()


@dataclass(frozen=True)
class Path:
    """A dotted name. Parts are names or ``*``; a path with a ``*`` is a glob."""

    parts: tuple[str, ...]
    span: Span | None = _span()

    @property
    def is_glob(self) -> bool:
        return "*" in self.parts

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class KwArg:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Call:
    func: Path
    args: tuple[Expr, ...] = ()
    kwargs: tuple[KwArg, ...] = ()
    span: Span | None = _span()

    def kwarg(self, name: str) -> Expr | None:
        return next((k.value for k in self.kwargs if k.name == name), None)


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Expr, ...] = ()
    span: Span | None = _span()


@dataclass(frozen=True)
class BinOp:
    """Arithmetic (``0.9 * x``) or selector algebra (``attn.* + mlp.down``, ``all - embed``)."""

    op: str  # one of + - * /
    left: Expr
    right: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Compare:
    op: str  # one of >= <= == != > <
    left: Expr
    right: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Scoped:
    """A value with a scope: ``2% per module`` (scope "module"), ``3% global`` (scope "global")."""

    value: Expr
    scope: str
    span: Span | None = _span()


Expr = Union[Str, Int, Float, Percent, Size, Bool, Range, Path, Call, ListExpr, BinOp, Neg,
             Compare, Scoped]

BINARY_OPS = ("+", "-", "*", "/")
COMPARE_OPS = (">=", "<=", "==", "!=", ">", "<")


# ---- block statements -------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Transfer:
    """``transfer ABILITY from DONOR { ... }``."""

    ability: Expr
    donor: Expr
    body: tuple[Stmt, ...] = ()
    span: Span | None = _span()


@dataclass(frozen=True)
class Merge:
    """``merge METHOD from DONORS { ... }``: a whole-model baseline (linear, ties, ...)."""

    method: str
    donors: Expr
    body: tuple[Stmt, ...] | None = None  # None: written without a block
    span: Span | None = _span()


@dataclass(frozen=True)
class Finetune:
    body: tuple[Stmt, ...] = ()
    span: Span | None = _span()


@dataclass(frozen=True)
class Expect:
    condition: Expr
    span: Span | None = _span()


Stmt = Union[Field, Transfer, Merge, Finetune, Expect]


# ---- top-level items --------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    """``use std.selectors`` (module) or ``use "./x.act" as x`` (file)."""

    module: tuple[str, ...] | None
    file: str | None
    alias: str | None = None
    span: Span | None = _span()

    @property
    def bound_name(self) -> str:
        """The name the import binds in the importing file."""
        if self.alias is not None:
            return self.alias
        if self.module is not None:
            return self.module[-1]
        stem = self.file.rsplit("/", 1)[-1]  # type: ignore[union-attr]
        return stem[: -len(".act")] if stem.endswith(".act") else stem


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class ModelDecl:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class CorpusDecl:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class AbilityDecl:
    name: str
    body: tuple[Stmt, ...] = ()
    span: Span | None = _span()


@dataclass(frozen=True)
class Surgery:
    """``surgery NAME -> "out" { ... }`` (``body``) or ``... = recipe(...)`` (``apply``)."""

    name: str
    output: str
    body: tuple[Stmt, ...] | None = None
    apply: Call | None = None
    span: Span | None = _span()


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None = None
    span: Span | None = _span()


@dataclass(frozen=True)
class Recipe:
    """``recipe NAME(params) { surgery body }``: a parametrized surgery fragment."""

    name: str
    params: tuple[Param, ...] = ()
    body: tuple[Stmt, ...] = ()
    span: Span | None = _span()


Item = Union[Use, Let, ModelDecl, CorpusDecl, AbilityDecl, Surgery, Recipe]


@dataclass(frozen=True)
class Comment:
    text: str  # including the leading '#'
    line: int
    column: int
    pos: int


@dataclass(frozen=True)
class Module:
    """One parsed file: its items in source order, and its comments (kept for ``fmt``)."""

    items: tuple[Item, ...] = ()
    comments: tuple[Comment, ...] = field(default=(), compare=False, repr=False)
    file: str = field(default="<string>", compare=False)
