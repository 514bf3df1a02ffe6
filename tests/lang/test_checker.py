"""What checked specs mean: defaults, units, references, recipes and sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from actlang.arch import registry as R
from actlang.lang import program as P
from actlang.lang.checker import check, check_source
from actlang.lang.diagnostics import DiagnosticError

PRELUDE = '''
model base = local("models/base")
model tuned = local("models/tuned")
corpus probe = jsonl("data/probe.jsonl", text = "{q} {a}", score = "a", limit = 64)
corpus other = text("data/other.txt")
ability math {
  probe = probe
  control = other
  eval = exact_match(jsonl("data/eval.jsonl", prompt = "q", answer = "a"))
}
'''


def surgeries(body: str, tmp_path: Path) -> tuple[P.SurgerySpec, ...]:
    return check_source(PRELUDE + body, str(tmp_path / "spec.act")).surgeries


def one_rule(rule_body: str, tmp_path: Path) -> P.TransferRule:
    (surgery,) = surgeries(f'surgery s -> "out" {{ target = tuned  transfer math from base '
                           f'{{ {rule_body} }} }}', tmp_path)
    return surgery.transfers[0]


def test_defaults_follow_the_paper(tmp_path: Path) -> None:
    rule = one_rule("budget = 3%", tmp_path)
    assert rule.budget == P.Budget("fraction", 0.03, "global")
    assert rule.score == P.ScoreSpec("paired_absdiff")
    assert (rule.lambda_, rule.granularity, rule.tie, rule.normalize) == \
        (1.0, "channel", "none", "none")
    assert rule.channels == P.Selector(((1, P.KindPattern("*")),))
    assert rule.include_global is False


@pytest.mark.parametrize("text, budget", [
    ("2% per module", P.Budget("fraction", 0.02, "module")),
    ("2.5% per layer", P.Budget("fraction", 0.025, "layer")),
    ("500", P.Budget("count", 500, "global")),
    ("threshold(0.25)", P.Budget("threshold", 0.25, "global")),
])
def test_budgets(text: str, budget: P.Budget, tmp_path: Path) -> None:
    assert one_rule(f"budget = {text}", tmp_path).budget == budget


@pytest.mark.parametrize("text, kind", [("3%", "fraction"), ("500", "count"),
                                        ("threshold(0.1)", "threshold")])
@pytest.mark.parametrize("scope", R.BUDGET_SCOPES)
def test_a_budget_takes_the_scopes_of_its_modes(text: str, kind: str, scope: str,
                                                tmp_path: Path) -> None:
    """Every value and scope the grammar can pair is a budget exactly when the registry
    declares a mode of that kind and scope (so a count per module is refused, located)."""
    program, diagnostics, _ = check(tmp_path / "s.act", PRELUDE + 'surgery s -> "o" { '
                                    'target = tuned  transfer math from base { budget = '
                                    f'{text} {R.scope_words(scope)} }} }}')
    if R.budget_mode(kind, scope) is not None:
        assert program is not None and program.surgeries[0].transfers[0].budget.scope == scope
        return
    assert program is None
    assert [(d.code, d.message) for d in diagnostics] == [
        ("E207", f"a {kind} budget is global; it takes no `{R.scope_words(scope)}`")]


def test_an_unknown_budget_scope_lists_the_scopes(tmp_path: Path) -> None:
    _, diagnostics, _ = check(tmp_path / "s.act", PRELUDE + 'surgery s -> "o" { target = tuned '
                              'transfer math from base { budget = 3% per head } }')
    assert [(d.code, d.message, d.hint) for d in diagnostics] == [
        ("E207", "unknown scope `per head`", "scopes: global, per module, per layer")]


def test_selector_algebra_and_layers(tmp_path: Path) -> None:
    rule = one_rule('budget = 1% channels = attn + mlp.down - attn.o '
                    'exclude = [module("lm_head.weight", axis = 1)] layers = 2..6', tmp_path)
    assert rule.channels.terms == ((1, P.KindPattern("attn.*")), (1, P.KindPattern("mlp.down")),
                                   (-1, P.KindPattern("attn.o")))
    assert rule.exclude.terms == ((1, P.RawModule("lm_head.weight", 1)),)
    assert rule.layers == (2, 6)


def test_controls_and_contrast(tmp_path: Path) -> None:
    rule = one_rule("budget = 1% score = random(seed = 3) contrast = 0.5 tie = kv_group",
                    tmp_path)
    assert rule.score == P.ScoreSpec("random", seed=3)
    assert rule.contrast == 0.5 and rule.tie == "kv_group"


def test_paths_resolve_against_the_spec_file(tmp_path: Path) -> None:
    (surgery,) = surgeries('surgery s -> "out/x" { target = tuned '
                           'transfer math from base { budget = 1% } }', tmp_path)
    assert surgery.output == str(tmp_path / "out" / "x")
    assert surgery.target.location == str(tmp_path / "models" / "tuned")
    assert surgery.transfers[0].ability.probe.path == str(tmp_path / "data" / "probe.jsonl")
    assert surgery.evals == (surgery.transfers[0].ability,)  # default: the moved abilities


def test_sweeps_expand_to_one_surgery_per_point(tmp_path: Path) -> None:
    specs = surgeries('surgery s -> "out" { target = tuned transfer math from base { '
                      'budget = sweep(1%, 2%, 5%)  lambda = sweep(0.5, 1.0) } }', tmp_path)
    assert len(specs) == 6
    assert {s.sweep_group for s in specs} == {"s"}
    assert specs[0].sweep_point == (("budget", "1%"), ("lambda", "0.5"))
    assert specs[0].output == str(tmp_path / "out" / "budget=1%,lambda=0.5")
    assert sorted({s.transfers[0].budget.value for s in specs}) == [0.01, 0.02, 0.05]


def test_sweep_over_a_let_list(tmp_path: Path) -> None:
    specs = surgeries('let budgets = [1%, 2%]\nsurgery s -> "out" { target = tuned '
                      'transfer math from base { budget = sweep(budgets) } }', tmp_path)
    assert [s.transfers[0].budget.value for s in specs] == [0.01, 0.02]


def test_finetune_merge_and_expect(tmp_path: Path) -> None:
    specs = surgeries('''
      surgery s -> "a" {
        target = tuned
        transfer math from base { budget = 1% }
        finetune { data = mix(probe, other, weights = [3, 1]) steps = 5 lr = 1e-3 }
        expect eval(math) >= 0.9 * eval(math, on = base)
      }
      surgery m -> "b" {
        target = tuned
        merge ties from [base, tuned] { base = base density = 0.2 }
      }''', tmp_path)
    finetune = specs[0].finetune
    assert finetune.steps == 5 and finetune.lr == 1e-3 and finetune.scope == "transferred"
    assert finetune.data.weights == (0.75, 0.25)
    (expect,) = specs[0].expects
    assert expect.right == P.Arith("*", P.Number(0.9), P.Measure(expect.left.ability, specs[0].transfers[0].donor))
    assert expect.source == "eval(math) >= 0.9 * eval(math, on = base)"
    assert specs[1].merge.method == "ties" and specs[1].merge.density == 0.2


def test_recipe_with_defaults_from_the_stdlib(tmp_path: Path) -> None:
    spec = tmp_path / "spec.act"
    spec.write_text(PRELUDE + '''
use std.recipes
surgery fix -> "out" = recipes.recover(target = tuned, donor = base, ability = math,
                                       retain = math, budget = 2%)
''')
    (surgery,) = check_source(spec.read_text(), str(spec)).surgeries
    assert surgery.output == str(tmp_path / "out")
    assert surgery.transfers[0].budget.value == 0.02
    assert surgery.transfers[0].channels.terms[0] == (1, P.KindPattern("attn.q"))
    assert surgery.finetune.steps == 100  # defaults.finetune_steps


def test_imported_declarations_are_qualified(tmp_path: Path) -> None:
    (tmp_path / "lib.act").write_text('model base = local("m")\n')
    program = check_source('use "./lib.act" as lib\nability a { probe = lines(["x"]) }\n'
                           'surgery s -> "o" { target = lib.base '
                           'transfer a from lib.base { budget = 1% } }',
                           str(tmp_path / "main.act"))
    assert [m.name for m in program.models] == ["lib.base"]


def test_zero_budget_is_a_warning_not_an_error(tmp_path: Path) -> None:
    program, diagnostics, _ = check(tmp_path / "s.act", PRELUDE +
                                    'surgery s -> "o" { target = tuned '
                                    'transfer math from base { budget = 0% } }')
    assert program is not None
    assert [(d.severity, d.code) for d in diagnostics] == [("warning", "W001")]


@pytest.mark.parametrize("score, warned", [("weight_delta", True), ("random(seed = 1)", True),
                                           ("local_absdiff", False),
                                           ("sweep(weight_delta, paired_absdiff)", False)])
def test_contrast_on_a_score_without_activations_is_a_warning(tmp_path: Path, score: str,
                                                               warned: bool) -> None:
    program, diagnostics, _ = check(tmp_path / "s.act", PRELUDE +
                                    'surgery s -> "o" { target = tuned transfer math from base '
                                    f'{{ budget = 1%\n score = {score}\n contrast = 0.5 }} }}')
    assert program is not None, [d.message for d in diagnostics]
    warnings = [d for d in diagnostics if d.severity == "warning"]
    assert [d.code for d in warnings] == (["W001"] if warned else []), warnings
    if warned:  # at the contrast field, naming the score
        assert warnings[0].span.line == PRELUDE.count("\n") + 3
        assert "contrast has no effect with `score = " in warnings[0].message


def test_every_example_and_stdlib_file_checks() -> None:
    root = Path(__file__).parents[2]
    files = sorted([*root.glob("examples/*.act"), *root.glob("stdlib/**/*.act")])
    assert len(files) >= 7
    for file in files:
        program, diagnostics, _ = check(file)
        assert program is not None, (file, [d.message for d in diagnostics])


def test_check_source_raises_with_every_error(tmp_path: Path) -> None:
    with pytest.raises(DiagnosticError) as error:
        check_source('model m = local("m")\nlet a = 1\nlet a = 2\nlet b = 1\nlet b = 3',
                     str(tmp_path / "s.act"))
    assert [d.code for d in error.value.diagnostics] == ["E102", "E102"]


def test_language_reference_tables_are_up_to_date() -> None:
    from actlang.lang.docs import render

    path = Path(__file__).parents[2] / "LANGUAGE.md"
    text = path.read_text()
    assert render(text) == text, "run: python -m actlang.lang.docs LANGUAGE.md"


def test_a_member_of_a_model_is_an_error(tmp_path: Path) -> None:
    program, diagnostics, _ = check(tmp_path / "s.act", PRELUDE +
                                    'surgery s -> "o" { target = tuned.weights '
                                    'transfer math from base { budget = 1% } }')
    assert program is None
    assert [(d.code, d.message) for d in diagnostics] == \
        [("E204", "`tuned` has no fields")]
