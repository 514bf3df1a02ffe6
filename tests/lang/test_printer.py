"""The canonical printer: golden layouts per construct, comments, blank lines, line breaking,
parentheses, and idempotence."""

from __future__ import annotations

import math
from textwrap import dedent

import pytest

from actlang.lang import ast
from actlang.lang.parser import parse
from actlang.lang.printer import WIDTH, format_expr, format_module


def fmt(text: str) -> str:
    """Format ``text``, checking on the way that the result keeps the tree and the comments
    and is a fixed point of formatting."""
    module = parse(text)
    out = format_module(module)
    again = parse(out)
    assert again == module
    assert [c.text for c in again.comments] == [c.text for c in module.comments]
    assert format_module(again) == out, "formatting is not idempotent"
    return out


def src(text: str) -> str:
    return dedent(text).lstrip("\n")


def expr(text: str) -> str:
    """The canonical spelling of an expression, through a `let`."""
    out = fmt(f"let x = {text}\n")
    assert out.startswith("let x = ") and out.endswith("\n")
    return out[len("let x = "):-1]


# ---- constructs ------------------------------------------------------------------------------


def test_uses():
    assert fmt('use   std.selectors\nuse std.zoo   as zoo\nuse "./a.act" as a\nuse "b.act"') == src('''
        use std.selectors
        use std.zoo as zoo
        use "./a.act" as a
        use "b.act"
    ''')


def test_declarations():
    text = 'let  n=3\nmodel base=local( "zoo/base" )\ncorpus c=jsonl("d.jsonl",text="{q}",limit=256)'
    assert fmt(text) == src('''
        let n = 3
        model base = local("zoo/base")
        corpus c = jsonl("d.jsonl", text = "{q}", limit = 256)
    ''')


def test_ability_block_and_empty_block():
    assert fmt("ability math { probe = p eval = e }\nability none {   }") == src('''
        ability math {
          probe = p
          eval = e
        }

        ability none {}
    ''')


def test_surgery_with_every_statement():
    text = '''
    surgery s -> "out/s" { target = tuned
    transfer math from base { channels = rows(attn.* + mlp.down) budget = 3% global
    layers = 4..28 min = 2% per module }
    merge ties from [a, b]
    merge dare from [a, b] {}
    merge linear from [a, b] { weights = [0.5, 0.5] }
    finetune { steps = 100 lr = 1e-5 }
    finetune {}
    expect eval(math)>=0.9*eval(math,on=base)
    }
    '''
    assert fmt(text) == src('''
        surgery s -> "out/s" {
          target = tuned
          transfer math from base {
            channels = rows(attn.* + mlp.down)
            budget = 3% global
            layers = 4..28
            min = 2% per module
          }
          merge ties from [a, b]
          merge dare from [a, b] {}
          merge linear from [a, b] {
            weights = [0.5, 0.5]
          }
          finetune {
            steps = 100
            lr = 1e-5
          }
          finetune {}
          expect eval(math) >= 0.9 * eval(math, on = base)
        }
    ''')


def test_merge_without_block_and_with_an_empty_block_stay_distinct():
    module = parse(fmt("surgery s -> \"o\" {\n  merge a from x\n  merge b from y {}\n}\n"))
    merges = module.items[0].body
    assert merges[0].body is None
    assert merges[1].body == ()


def test_surgery_application_and_sweep():
    assert fmt('surgery fix->"out/fixed"=recipes.recover(target=zoo.tuned,budget=[1%,2%])') == (
        'surgery fix -> "out/fixed" = recipes.recover(target = zoo.tuned, budget = [1%, 2%])\n')


def test_recipe_with_parameters_and_defaults():
    assert fmt("recipe r(a,b=2%,c=defaults.score,) { target = a }\nrecipe empty() {}") == src('''
        recipe r(a, b = 2%, c = defaults.score) {
          target = a
        }

        recipe empty() {}
    ''')


@pytest.mark.parametrize("text, expected", [
    ('"plain"', '"plain"'),
    (r'"quote \" backslash \\ newline \n tab \t"', r'"quote \" backslash \\ newline \n tab \t"'),
    (r'"\u00e9t\u00e9 ✓"', '"été ✓"'),
    (r'"\/"', '"/"'),
    ("0", "0"),
    ("42", "42"),
    ("1.0", "1.0"),
    ("100.0", "100.0"),
    ("0.5", "0.5"),
    ("1e-5", "1e-5"),
    ("1e-05", "1e-5"),
    ("0.001", "1e-3"),
    ("2.5e-4", "2.5e-4"),
    ("0.01", "0.01"),
    ("1e16", "1e16"),
    ("1E3", "1000.0"),
    ("1e999", "1e999"),
    ("3%", "3%"),
    ("3.0%", "3%"),
    ("2.5%", "2.5%"),
    ("1e-3%", "1e-3%"),
    ("2GB", "2GB"),
    ("1.5MiB", "1.5MiB"),
    ("2.0KB", "2KB"),
    ("0.00001TB", "0.00001TB"),
    ("4..28", "4..28"),
    ("4 .. 28", "4..28"),
    ("true", "true"),
    ("false", "false"),
    ("attn.*", "attn.*"),
    ("*.q", "*.q"),
    ("zoo . base", "zoo.base"),
    ("[ ]", "[]"),
    ("[1,2,3,]", "[1, 2, 3]"),
    ("f( )", "f()"),
    ("f(a,k=1)", "f(a, k = 1)"),
    ("std.mix(a, [b, c], weights = [1, 2])", "std.mix(a, [b, c], weights = [1, 2])"),
])
def test_literals_and_atoms(text, expected):
    assert expr(text) == expected


def test_float_and_int_stay_distinct():
    module = parse(fmt("let a = 1.0\nlet b = 1\nlet c = 1e3\n"))
    assert [type(i.value) for i in module.items] == [ast.Float, ast.Int, ast.Float]


@pytest.mark.parametrize("text, expected", [
    ("a - (b - c)", "a - (b - c)"),
    ("(a - b) - c", "a - b - c"),
    ("a + (b + c)", "a + (b + c)"),
    ("a - b + c", "a - b + c"),
    ("(a * b) + c", "a * b + c"),
    ("a * (b + c)", "a * (b + c)"),
    ("(a + b) * c", "(a + b) * c"),
    ("a / (b * c)", "a / (b * c)"),
    ("a / b * c", "a / b * c"),
    ("-(a + b)", "-(a + b)"),
    ("-(a * b)", "-(a * b)"),
    ("(-a) * b", "-a * b"),
    ("-(a)", "-a"),
    ("-(-a)", "--a"),
    ("a - -b", "a - -b"),
    ("2 * -x", "2 * -x"),
    ("((a))", "a"),
    ("-4..28", "-4..28"),
    ("* * *", "* * *"),
])
def test_minimal_parentheses(text, expected):
    assert expr(text) == expected


def test_scoped_values_and_comparisons():
    text = "ability a {\n b = a + b per layer\n c = 1 global\n expect x+1 != (y) }"
    assert fmt(text) == src('''
        ability a {
          b = a + b per layer
          c = 1 global
          expect x + 1 != y
        }
    ''')


def test_format_expr():
    e = ast.BinOp("-", ast.Path(("a",)), ast.BinOp("-", ast.Int(1), ast.Percent(2.5)))
    assert format_expr(e) == "a - (1 - 2.5%)"
    assert format_expr(ast.Scoped(ast.Percent(3.0), "module")) == "3% per module"
    assert format_expr(ast.Compare(">=", ast.Float(0.9), ast.Neg(ast.Size(2.0, "GiB")))) == \
        "0.9 >= -2GiB"
    assert format_expr(ast.Call(ast.Path(("f",)), kwargs=(ast.KwArg("k", ast.Bool(True)),))) \
        == "f(k = true)"
    assert format_expr(ast.KwArg("on", ast.Path(("base",)))) == "on = base"
    assert format_expr(ast.Float(math.inf)) == "1e999"
    with pytest.raises(ValueError):
        format_expr(ast.Float(math.nan))


def test_tree_without_spans_gets_only_forced_blank_lines():
    module = ast.Module((
        ast.Use(("std", "zoo"), None, "zoo"),
        ast.Let("a", ast.Int(1)),
        ast.AbilityDecl("m", (ast.Field("probe", ast.Path(("p",))),)),
        ast.Surgery("s", "out", apply=ast.Call(ast.Path(("r",)))),
        ast.Let("b", ast.Str("x")),
    ))
    out = format_module(module)
    assert out == src('''
        use std.zoo as zoo
        let a = 1

        ability m {
          probe = p
        }

        surgery s -> "out" = r()

        let b = "x"
    ''')
    assert parse(out) == module


def test_empty_and_comment_only_files():
    assert format_module(parse("")) == ""
    assert fmt("\n\n  \n") == ""
    assert fmt("\n\n# only a comment   \n\n") == "# only a comment\n"


def test_invalid_trees_are_value_errors():
    with pytest.raises(ValueError):
        format_module(ast.Module((ast.Use(None, None),)))
    with pytest.raises(ValueError):
        format_module(ast.Module((ast.Surgery("s", "o"),)))


# ---- comments --------------------------------------------------------------------------------


def test_comment_placement():
    text = '''
    # file header
    let a = 1    # trailing after code
         # own line, badly indented
    ability m {    # header comment
    # first in block
      probe = p  # trailing in block
        # before the closing brace
    }   # after the block
    # end of file
    '''
    assert fmt(src(text)) == src('''
        # file header
        let a = 1  # trailing after code

        # own line, badly indented
        ability m {  # header comment
          # first in block
          probe = p  # trailing in block
          # before the closing brace
        }  # after the block
        # end of file
    ''')


def test_comment_inside_a_multi_line_expression_moves_before_the_statement():
    text = '''
    ability m {
      eval = exact_match(jsonl("e.jsonl",  # which file
                               prompt = "q"),   # the prompt
                         answer = "a")  # stays at the end
    }
    '''
    assert fmt(src(text)) == src('''
        ability m {
          # which file
          # the prompt
          eval = exact_match(jsonl("e.jsonl", prompt = "q"), answer = "a")  # stays at the end
        }
    ''')


def test_comment_inside_a_block_header_moves_before_the_block():
    text = '''
    surgery s -> "o" {
      transfer m from pick(a,  # donor
                           b) {  # header
        budget = 1%
      }
    }
    '''
    assert fmt(src(text)) == src('''
        surgery s -> "o" {
          # donor
          transfer m from pick(a, b) {  # header
            budget = 1%
          }
        }
    ''')


def test_one_line_blocks_and_their_comments():
    assert fmt("surgery s -> \"o\" { finetune { steps = 1 }  # c\n}") == src('''
        surgery s -> "o" {
          finetune {
            steps = 1
          }  # c
        }
    ''')
    assert fmt("ability a { x = 1 y = 2  # after y\n}") == src('''
        ability a {
          x = 1
          y = 2  # after y
        }
    ''')


def test_comments_in_empty_blocks():
    assert fmt("ability a {  # header\n}") == "ability a {  # header\n}\n"
    assert fmt("ability a {\n# inside\n}") == "ability a {\n  # inside\n}\n"
    assert fmt("ability a {} # after") == "ability a {}  # after\n"
    assert fmt("surgery s -> \"o\" {\n  merge a from x { # h\n }\n}") == src('''
        surgery s -> "o" {
          merge a from x {  # h
          }
        }
    ''')


def test_header_comment_of_a_broken_recipe_header_stays_on_the_brace_line():
    params = ", ".join(f"parameter_{i} = {i}" for i in range(8))
    out = fmt(f"recipe r({params}) {{  # header\n  # body comment\n  x = 1\n}}\n")
    assert out == src('''
        recipe r(
          parameter_0 = 0,
          parameter_1 = 1,
          parameter_2 = 2,
          parameter_3 = 3,
          parameter_4 = 4,
          parameter_5 = 5,
          parameter_6 = 6,
          parameter_7 = 7,
        ) {  # header
          # body comment
          x = 1
        }
    ''')


def test_header_comment_of_a_broken_transfer_header():
    donors = ", ".join(f"donor_model_{i}" for i in range(9))
    out = fmt(f'surgery s -> "o" {{\n  transfer m from pick({donors}) {{  # h\n  }}\n}}\n')
    assert out == src('''
        surgery s -> "o" {
          transfer m from pick(
            donor_model_0,
            donor_model_1,
            donor_model_2,
            donor_model_3,
            donor_model_4,
            donor_model_5,
            donor_model_6,
            donor_model_7,
            donor_model_8,
          ) {  # h
          }
        }
    ''')


def test_comment_text_is_kept_verbatim_but_trailing_space():
    assert fmt("let a = 1 #no space   \n#   spaced # twice\n") == \
        "let a = 1  #no space\n#   spaced # twice\n"


# ---- blank lines -----------------------------------------------------------------------------


def test_blank_lines_collapse_and_vanish_at_edges():
    text = "\n\n\nlet a = 1\n\n\n\nlet b = 2\nlet c = 3\nability m {\n\n\n  x = 1\n\n\n  y = 2\n\n}\n\n\n"
    assert fmt(text) == src('''
        let a = 1

        let b = 2
        let c = 3

        ability m {
          x = 1

          y = 2
        }
    ''')


def test_forced_blank_line_goes_before_the_comments_of_a_block():
    text = '''
    let a = 1
    # about m
    ability m {}
    # after m
    let b = 2
    surgery s -> "o" = r()
    recipe r() {}
    '''
    assert fmt(src(text)) == src('''
        let a = 1

        # about m
        ability m {}

        # after m
        let b = 2

        surgery s -> "o" = r()

        recipe r() {}
    ''')


def test_user_blank_lines_around_comments_are_kept():
    text = '''
    let a = 1

    # section


    let b = 2
    # about c

    let c = 3
    '''
    assert fmt(src(text)) == src('''
        let a = 1

        # section

        let b = 2
        # about c

        let c = 3
    ''')


def test_blank_lines_inside_a_multi_line_statement_do_not_count():
    assert fmt("let a = f(1,\n\n\n 2)\nlet b = 3\n") == "let a = f(1, 2)\nlet b = 3\n"


# ---- long lines ------------------------------------------------------------------------------


def test_long_call_breaks_one_item_per_line_with_trailing_comma():
    text = ('corpus c = jsonl("data/a_rather_long_file_name.jsonl", text = "{question} {answer}", '
            'score = "answer", limit = 256, seed = 0)')
    assert fmt(text) == src('''
        corpus c = jsonl(
          "data/a_rather_long_file_name.jsonl",
          text = "{question} {answer}",
          score = "answer",
          limit = 256,
          seed = 0,
        )
    ''')


def test_nested_breaking_keeps_inner_calls_flat_when_they_fit():
    inner = "jsonl(\"data/math_eval_with_a_long_name.jsonl\", prompt = \"q\", answer = \"a\")"
    text = f"ability m {{\n  eval = exact_match({inner}, normalize = true, extra = [1, 2, 3])\n}}"
    assert fmt(text) == src(f'''
        ability m {{
          eval = exact_match(
            {inner},
            normalize = true,
            extra = [1, 2, 3],
          )
        }}
    ''')


def test_long_list_breaks_and_short_one_joins_again():
    items = ", ".join(f'"item number {i}"' for i in range(8))
    broken = fmt(f"let xs = [{items}]")
    assert broken.splitlines()[0] == "let xs = ["
    assert broken.splitlines()[1] == '  "item number 0",'
    assert broken.splitlines()[-2] == '  "item number 7",'
    assert broken.splitlines()[-1] == "]"
    assert fmt("let xs = [\n  1,\n  2,\n]\n") == "let xs = [1, 2]\n"


def test_width_limit_is_exactly_100_columns():
    def line(n: int) -> str:
        # `let x = f("...")` with a string sized so that the line is n columns long.
        fill = "a" * (n - len('let x = f("")'))
        return f'let x = f("{fill}")'

    assert len(line(WIDTH)) == WIDTH
    assert fmt(line(WIDTH)) == line(WIDTH) + "\n"
    assert fmt(line(WIDTH + 1)).splitlines()[0] == "let x = f("


def test_width_counts_the_block_brace_and_the_indent():
    args = ", ".join(["abcdefgh"] * 8)
    flat = f"  transfer m from g({args}) {{"
    assert len(flat) == WIDTH + 1  # 99 columns without the brace
    out = fmt(f"surgery s -> \"o\" {{\n{flat}\n  }}\n}}\n")
    assert out.splitlines()[1] == "  transfer m from g("
    assert out.splitlines()[2] == "    abcdefgh,"
