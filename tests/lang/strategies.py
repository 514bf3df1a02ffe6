"""Hypothesis strategies for random well-formed .act syntax trees.

Every tree drawn here is one the grammar can express, so ``parse(format_module(m)) == m``
must hold for it: names avoid the keywords, numbers are finite or +inf and non-negative
(a negative number is ``Neg``), ``Compare`` appears only as an ``expect`` condition and
``Scoped`` only as a field value. Trees carry no spans.
"""

from __future__ import annotations

from hypothesis import strategies as st

from actlang.lang import ast
from actlang.lang.parser import KEYWORDS

_COMMON_NAMES = ("target", "donor", "budget", "channels", "score", "lambda_", "attn", "mlp",
                 "q", "down", "zoo", "base", "tuned", "math", "rows", "mix", "jsonl", "local",
                 "module", "layer", "_", "x1", "GB", "e5", "per_", "true_", "from_")

names = st.one_of(
    st.sampled_from(_COMMON_NAMES),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True),
).filter(lambda n: n not in KEYWORDS)
"""Identifiers that are not keywords."""

texts = st.text(max_size=12)
"""String contents: any text (quotes, backslashes, newlines, non-ASCII); no lone surrogates."""

_numbers = st.floats(min_value=0.0, allow_nan=False, allow_infinity=True).map(lambda x: x + 0.0)
_small_numbers = st.sampled_from([0.0, 0.5, 1.0, 2.5, 3.0, 100.0, 1e-3, 1e-5, 1e16, 0.1])

strings = st.builds(ast.Str, texts)
ints = st.builds(ast.Int, st.integers(min_value=0, max_value=10**20))
floats = st.builds(ast.Float, st.one_of(_small_numbers, _numbers))
percents = st.builds(ast.Percent, st.one_of(_small_numbers, _numbers))
sizes = st.builds(ast.Size, st.one_of(_small_numbers, _numbers),
                  st.sampled_from(sorted(ast.Size.UNITS)))
bools = st.builds(ast.Bool, st.booleans())
ranges = st.builds(ast.Range, st.integers(0, 10**6), st.integers(0, 10**6))

dotted = st.lists(names, min_size=1, max_size=3).map(tuple)
"""A dotted name without globs: a reference or a function name."""

paths = st.one_of(
    st.builds(ast.Path, dotted),
    st.builds(ast.Path, st.lists(st.one_of(names, st.just("*")), min_size=1, max_size=4)
              .map(tuple)),
)
"""References, module kinds and globs (``attn.*``, ``*.q``, ``*``)."""

leaves = st.one_of(strings, ints, floats, percents, sizes, bools, ranges, paths)


def _extend(children: st.SearchStrategy[ast.Expr]) -> st.SearchStrategy[ast.Expr]:
    kwargs = st.lists(st.builds(ast.KwArg, names, children), max_size=3).map(tuple)
    return st.one_of(
        st.builds(ast.Call, st.builds(ast.Path, dotted),
                  st.lists(children, max_size=3).map(tuple), kwargs),
        st.builds(ast.ListExpr, st.lists(children, max_size=4).map(tuple)),
        st.builds(ast.BinOp, st.sampled_from(ast.BINARY_OPS), children, children),
        st.builds(ast.Neg, children),
    )


exprs = st.recursive(leaves, _extend, max_leaves=10)
"""Any expression but ``Compare`` and ``Scoped``."""

calls = st.builds(
    ast.Call, st.builds(ast.Path, dotted), st.lists(exprs, max_size=3).map(tuple),
    st.lists(st.builds(ast.KwArg, names, exprs), max_size=4).map(tuple))

scoped = st.builds(ast.Scoped, exprs, st.one_of(st.just("global"), names))
compares = st.builds(ast.Compare, st.sampled_from(ast.COMPARE_OPS), exprs, exprs)

simple_statements = st.one_of(
    st.builds(ast.Field, names, st.one_of(exprs, scoped)),
    st.builds(ast.Expect, st.one_of(compares, exprs)),
    st.builds(ast.Merge, names, exprs, st.none()),
)


def _blocks(children: st.SearchStrategy[ast.Stmt]) -> st.SearchStrategy[ast.Stmt]:
    body = st.lists(children, max_size=3).map(tuple)
    return st.one_of(
        st.builds(ast.Transfer, exprs, exprs, body),
        st.builds(ast.Merge, names, exprs, st.one_of(st.none(), body)),
        st.builds(ast.Finetune, body),
    )


statements = st.recursive(simple_statements, _blocks, max_leaves=6)
"""Any statement of a block: fields, ``transfer``, ``merge`` (with and without a block),
``finetune``, ``expect``."""

bodies = st.lists(statements, max_size=4).map(tuple)

params = st.builds(ast.Param, names, st.one_of(st.none(), exprs))

items = st.one_of(
    st.builds(ast.Use, dotted, st.none(), st.one_of(st.none(), names)),
    st.builds(ast.Use, st.none(), texts, st.one_of(st.none(), names)),
    st.builds(ast.Let, names, exprs),
    st.builds(ast.ModelDecl, names, exprs),
    st.builds(ast.CorpusDecl, names, exprs),
    st.builds(ast.AbilityDecl, names, bodies),
    st.builds(ast.Surgery, names, texts, bodies, st.none()),
    st.builds(ast.Surgery, names, texts, st.none(), calls),
    st.builds(ast.Recipe, names, st.lists(params, max_size=4).map(tuple), bodies),
)
"""Any top-level item."""

modules = st.builds(ast.Module, st.lists(items, max_size=5).map(tuple))
"""Whole files (without comments)."""
