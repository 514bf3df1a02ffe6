"""Property and fuzz tests of the front end: printer round trips, fmt idempotence, and that no
input — generated from the grammar or mutated from real specs — makes the parser raise
anything but a ``DiagnosticError`` (test_fuzz.py holds the checker to the same)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from actlang.lang import ast
from actlang.lang.diagnostics import DiagnosticError
from actlang.lang.parser import parse
from actlang.lang.printer import format_module
from actlang.resources import grammar_path

from . import fuzzing


def _load_strategies():
    # Loaded under a unique name: other test folders may have a `strategies` module too.
    path = Path(__file__).with_name("strategies.py")
    spec = importlib.util.spec_from_file_location("tests_lang_strategies", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


S = _load_strategies()

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILES = sorted([*ROOT.glob("examples/**/*.act"), *ROOT.glob("stdlib/**/*.act")])

SAMPLE = '''\
# A built-in sample spec: every construct, with comments in every place a comment can go.
use std.selectors
use std.zoo as zoo  # the synthetic zoo
use "./abilities/math.act" as math

let budgets = [1%, 2.5%, 5%]
model base = local("zoo/base")
model tuned = hub("org/name", revision = "0123abc", dtype = "bfloat16", trust_remote_code = false)
corpus probe = jsonl("data/math.jsonl", text = "{q} {a}", score = "a", limit = 256, seed = 0)
corpus both = mix(probe, zoo.text, weights = [0.7, 0.3], max_tokens = 512)

ability arithmetic {  # header comment
  probe = probe
  # own-line comment

  eval = exact_match(jsonl("data/eval.jsonl", prompt = "q", answer = "a"))
  control = zoo.text
}

surgery recover -> "out/recovered" {
  target = tuned
  transfer arithmetic from base {
    channels = rows(attn.* + mlp.down - embed, selectors.norms)  # selector algebra
    layers = 4..28
    score = paired_absdiff
    budget = 3% per module
    lambda = 1.0
    max_size = 2GB
    weight = -(0.5 - 0.25) * 2 / 1e-3
  }
  merge ties from [base, zoo.other] {
    density = 0.2
  }
  merge linear from [base, tuned]
  merge dare from [base, tuned] {}
  finetune {
    data = both
    steps = 100
    lr = 1e-5
  }
  # gates
  expect eval(arithmetic) >= 0.9 * eval(arithmetic, on = base)
  expect eval(zoo.text) > 0.5  # trailing
}

recipe fix(target, donor, ability, budget = 2%) {
  target = target
  transfer ability from donor {
    budget = budget
  }
}

surgery quick -> "out/quick" = fix(target = tuned, donor = base, ability = arithmetic,  # moved
                                   budget = budgets)  # a sweep
# the end
'''

SAMPLES = [SAMPLE] + [p.read_text(encoding="utf-8") for p in SPEC_FILES]
SAMPLE_IDS = ["builtin-sample"] + [str(p.relative_to(ROOT)) for p in SPEC_FILES]

# Sized to keep these tests well under a minute; ACTLANG_FUZZ_SCALE=20 runs 20x the examples.
SCALE = int(os.environ.get("ACTLANG_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=100 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples * SCALE)


def _comment_texts(module: ast.Module) -> list[str]:
    return [c.text for c in module.comments]


def assert_formats_stably(text: str) -> str:
    """fmt(text) re-parses to the same tree with the same comments and is a fixed point."""
    module = parse(text)
    once = format_module(module)
    again_module = parse(once)
    assert again_module == module
    assert _comment_texts(again_module) == _comment_texts(module)
    twice = format_module(again_module)
    assert twice == once
    assert once == "" or (once.endswith("\n") and not once.endswith("\n\n"))
    return once


# ---- (a) generated trees survive print -> parse ---------------------------------------------


@fuzz(120)
@given(S.modules)
def test_generated_modules_round_trip(module):
    text = format_module(module)
    assert parse(text) == module
    assert format_module(parse(text)) == text


@settings(FUZZ)
@given(S.exprs)
def test_generated_expressions_round_trip_in_a_let(expr):
    module = ast.Module((ast.Let("x", expr),))
    assert parse(format_module(module)) == module


# ---- (b) fmt is idempotent, comments included ------------------------------------------------


@fuzz(80)
@given(S.modules, st.data())
def test_fmt_idempotent_with_random_comments_and_blank_lines(module, data):
    lines = format_module(module).split("\n")
    out = []
    inserted = 0
    for line in lines:
        choice = data.draw(st.sampled_from(["keep", "keep", "trail", "own", "blank"]))
        if choice == "own":
            out.append(f"  # own {inserted}")
            inserted += 1
        elif choice == "blank":
            out.append("")
        if choice == "trail" and line.strip():
            line += f"  # trail {inserted}"
            inserted += 1
        out.append(line)
    text = "\n".join(out)
    once = assert_formats_stably(text)
    assert parse(once) == module
    assert len(parse(once).comments) == inserted


@pytest.mark.parametrize("text", SAMPLES, ids=SAMPLE_IDS)
def test_fmt_idempotent_on_specs(text):
    assert_formats_stably(text)


def test_the_fuzzers_seed_from_the_sample_and_every_shipped_spec():
    """The mutation fuzzers draw from SAMPLES: the builtin sample (every construct, ten
    comments) and each spec of examples/ and stdlib/ — an empty glob would quietly shrink them."""
    assert len(parse(SAMPLE).comments) == 10
    assert {p.relative_to(ROOT).parts[0] for p in SPEC_FILES} == {"examples", "stdlib"}
    assert ROOT / "examples" / "recover.act" in SPEC_FILES
    assert len(SAMPLES) == 1 + len(SPEC_FILES) and all(SAMPLES[1:])


# ---- (c) grammar-generated inputs ------------------------------------------------------------


def _check_parse_and_round_trip(text: str) -> None:
    try:
        module = parse(text)
    except DiagnosticError:
        return
    once = format_module(module)
    assert parse(once) == module
    assert format_module(parse(once)) == once


_grammar_lark = Lark(grammar_path().read_text(), parser="lalr")

_numbers = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
_REGEX_TERMINALS = {
    "NAME": S.names,
    "STRING": S.texts.map(lambda s: json.dumps(s, ensure_ascii=False)),
    "INT": st.integers(0, 10**9).map(str),
    "FLOAT": _numbers.map(repr).filter(lambda s: "e" in s or "." in s),
    "PERCENT": st.one_of(st.integers(0, 100).map(str), _numbers.map(repr)).map(lambda s: s + "%"),
    "SIZE": st.tuples(st.integers(0, 4096), st.sampled_from(sorted(ast.Size.UNITS)))
              .map(lambda t: f"{t[0]}{t[1]}"),
    "COMPARE_OP": st.sampled_from(ast.COMPARE_OPS),
    "WS": st.sampled_from([" ", "\n", "\n\n", "\t"]),
    "COMMENT": st.sampled_from(["# c\n", "#\n", "# ünïcode ✓\n"]),
}


def _spaced_terminals() -> dict[str, st.SearchStrategy[str]]:
    """Every terminal followed by a space, so that adjacent tokens never merge."""
    explicit = {}
    for terminal in _grammar_lark.terminals:
        if terminal.name in _REGEX_TERMINALS:
            explicit[terminal.name] = _REGEX_TERMINALS[terminal.name].map(lambda s: s + " ")
        else:
            assert terminal.pattern.type == "str", terminal
            explicit[terminal.name] = st.just(terminal.pattern.value + " ")
    return explicit


@fuzz(60)
@given(from_lark(_grammar_lark, start="start"))
def test_raw_grammar_inputs_parse_or_fail_with_diagnostics(text):
    _check_parse_and_round_trip(text)


@settings(FUZZ)
@given(from_lark(_grammar_lark, start="start", explicit=_spaced_terminals()))
def test_spaced_grammar_inputs_round_trip(text):
    _check_parse_and_round_trip(text)


def test_spaced_grammar_inputs_mostly_parse():
    """The spaced strategy is worth having only if most of what it makes is valid."""
    parsed = failed = 0

    @settings(fuzz(40), database=None)
    @given(from_lark(_grammar_lark, start="start", explicit=_spaced_terminals()))
    def count(text):
        nonlocal parsed, failed
        try:
            parse(text)
            parsed += 1
        except DiagnosticError:
            failed += 1

    count()
    assert parsed > failed


# ---- (d) mutated specs -----------------------------------------------------------------------
# The mutator of tests/lang/fuzzing.py, seeded with SAMPLES; test_fuzz.py runs the checker on
# its output (and on other seeds), here the printer must round-trip whatever still parses.


@fuzz(300)
@given(fuzzing.mutated_specs([text.encode() for text in SAMPLES])
       .map(lambda data: data.decode("utf-8", errors="replace")))
def test_mutated_specs_parse_or_fail_with_diagnostics(text):
    _check_parse_and_round_trip(text)
