"""One test per construct: the tree the parser builds (spans ignored by equality)."""

from __future__ import annotations

import pytest

from actlang.lang import ast
from actlang.lang.diagnostics import DiagnosticError
from actlang.lang.parser import parse


def only_item(text: str) -> ast.Item:
    items = parse(text).items
    assert len(items) == 1
    return items[0]


def field_value(text: str) -> ast.Expr:
    """The value of `x` in `let x = <text>`."""
    item = only_item(f"let x = {text}")
    assert isinstance(item, ast.Let)
    return item.value


def P(*parts: str) -> ast.Path:
    return ast.Path(parts)


def test_use_stdlib_module_and_file_with_alias() -> None:
    assert only_item("use std.selectors") == ast.Use(("std", "selectors"), None)
    assert only_item('use "./abilities/math.act" as math') == \
        ast.Use(None, "./abilities/math.act", "math")
    assert ast.Use(("std", "zoo"), None).bound_name == "zoo"
    assert ast.Use(None, "./abilities/math.act").bound_name == "math"


@pytest.mark.parametrize("text, expected", [
    ('"a\\"b"', ast.Str('a"b')),
    ("42", ast.Int(42)),
    ("0.5", ast.Float(0.5)),
    ("1e-5", ast.Float(1e-5)),
    ("3%", ast.Percent(3.0)),
    ("2.5%", ast.Percent(2.5)),
    ("2GB", ast.Size(2.0, "GB")),
    ("512MiB", ast.Size(512.0, "MiB")),
    ("4..28", ast.Range(4, 28)),
    ("true", ast.Bool(True)),
    ("false", ast.Bool(False)),
    ("[]", ast.ListExpr(())),
    ("[1, 2,]", ast.ListExpr((ast.Int(1), ast.Int(2)))),
    ("mlp.*", P("mlp", "*")),
    ("zoo.tuned", P("zoo", "tuned")),
    ("-3", ast.Neg(ast.Int(3))),
])
def test_literals(text: str, expected: ast.Expr) -> None:
    assert field_value(text) == expected


def test_size_in_bytes() -> None:
    assert ast.Size(2.0, "GB").bytes == 2 * 10**9
    assert ast.Size(1.0, "GiB").bytes == 2**30


def test_operators_have_precedence_and_left_associativity() -> None:
    assert field_value("a + b * c") == ast.BinOp("+", P("a"), ast.BinOp("*", P("b"), P("c")))
    assert field_value("a - b - c") == ast.BinOp("-", ast.BinOp("-", P("a"), P("b")), P("c"))
    assert field_value("(a + b) * c") == ast.BinOp("*", ast.BinOp("+", P("a"), P("b")), P("c"))


def test_call_with_positional_and_keyword_arguments() -> None:
    assert field_value('jsonl("d.jsonl", text = "{q} {a}", limit = 8)') == ast.Call(
        P("jsonl"), (ast.Str("d.jsonl"),),
        (ast.KwArg("text", ast.Str("{q} {a}")), ast.KwArg("limit", ast.Int(8))))


def test_declarations() -> None:
    assert only_item('model base = local("zoo/base")') == \
        ast.ModelDecl("base", ast.Call(P("local"), (ast.Str("zoo/base"),)))
    assert only_item('corpus c = lines(["a"])') == ast.CorpusDecl(
        "c", ast.Call(P("lines"), (ast.ListExpr((ast.Str("a"),)),)))
    assert only_item("ability math { probe = c }") == \
        ast.AbilityDecl("math", (ast.Field("probe", P("c")),))


def test_surgery_block_with_every_statement() -> None:
    item = only_item('''
    surgery s -> "out" {
      target = t
      transfer math from base { budget = 2% per module  layers = 0..4 }
      merge ties from [a, b] { density = 0.5 }
      merge linear from [a, b]
      finetune { steps = 10 }
      expect eval(math) >= 0.9 * eval(math, on = base)
    }''')
    assert isinstance(item, ast.Surgery) and item.output == "out" and item.apply is None
    target, transfer, ties, linear, finetune, expect = item.body
    assert target == ast.Field("target", P("t"))
    assert transfer == ast.Transfer(P("math"), P("base"), (
        ast.Field("budget", ast.Scoped(ast.Percent(2.0), "module")),
        ast.Field("layers", ast.Range(0, 4))))
    assert ties.body == (ast.Field("density", ast.Float(0.5)),)
    assert linear == ast.Merge("linear", ast.ListExpr((P("a"), P("b"))), None)
    assert finetune == ast.Finetune((ast.Field("steps", ast.Int(10)),))
    assert isinstance(expect.condition, ast.Compare) and expect.condition.op == ">="


def test_global_scope() -> None:
    item = only_item('surgery s -> "o" { transfer a from b { budget = 3% global } }')
    assert item.body[0].body[0].value == ast.Scoped(ast.Percent(3.0), "global")


def test_surgery_applying_a_recipe_and_recipe_definition() -> None:
    item = only_item('surgery fix -> "out" = recipes.recover(target = zoo.tuned, budget = 2%)')
    assert item.apply == ast.Call(P("recipes", "recover"), (), (
        ast.KwArg("target", P("zoo", "tuned")), ast.KwArg("budget", ast.Percent(2.0))))
    recipe = only_item("recipe r(target, budget = 3%) { target = target }")
    assert recipe == ast.Recipe("r", (ast.Param("target"), ast.Param("budget", ast.Percent(3.0))),
                                (ast.Field("target", P("target")),))


def test_spans_are_one_based_and_exclusive() -> None:
    item = parse('\n  let x = 1', "f.act").items[0]
    assert (item.span.file, item.span.line, item.span.column) == ("f.act", 2, 3)
    assert item.span.end_column == 12


def test_comments_are_collected() -> None:
    module = parse("# head\nlet x = 1  # tail\n")
    assert [(c.text, c.line) for c in module.comments] == [("# head", 1), ("# tail", 2)]


def test_soft_keywords_can_name_parameters_but_reserved_ones_cannot() -> None:
    parse("recipe merge(ability, model) { target = model }")
    with pytest.raises(DiagnosticError) as error:
        parse("let per = 1")
    assert error.value.diagnostics[0].code == "E004"


@pytest.mark.parametrize("text, code", [
    ("let = 1", "E001"), ("let x = 'a'", "E002"), ("ability a {", "E003"),
    ('let x = "\\q"', "E004"), ("let x = 1" + "0" * 5000, "E004"),
])
def test_syntax_errors_are_diagnostics(text: str, code: str) -> None:
    with pytest.raises(DiagnosticError) as error:
        parse(text)
    assert error.value.diagnostics[0].code == code
