"""Binding rules to a model's channels, as plan and run both do (no torch, no weights).

The planner checks a rule with the same functions the runtime selects with, so whatever
``actc plan`` accepts, ``actc run`` accepts, counted in the same units.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from actlang.arch.adapters import ChannelSpace
from actlang.arch.registry import BUDGET_MODES
from actlang.arch.selection import Budget
from actlang.compile import ops as O
from actlang.compile.bind import candidate_entries, runtime_budget, unit_groups
from actlang.compile.cache import Cache
from actlang.compile.plan import PlanError, make_plan
from actlang.lang.checker import check_file

from .conftest import TINY_LLAMA, write_config


@pytest.fixture
def spec_for(tmp_path: Path):
    """spec_for(rule_body) -> a checked program with one transfer rule on a config-only
    Llama (2 layers, 4 heads of 8, 2 KV heads, 64 MLP neurons)."""
    model = write_config(tmp_path / "model", TINY_LLAMA)

    def make(body: str):
        spec = tmp_path / "s.act"
        spec.write_text(textwrap.dedent(f"""
            model base = local("{model}")
            model tuned = local("{model}")
            corpus probe = lines(["one two", "three four"])
            ability a {{ probe = probe }}
            surgery s -> "out" {{
              target = tuned
              transfer a from base {{ {body} }}
            }}
        """))
        return check_file(spec)
    return make


def _rule(program):
    (surgery,) = program.surgeries
    (rule,) = surgery.transfers
    return rule


def test_a_count_budget_is_checked_in_units_of_the_granularity(spec_for, tmp_path) -> None:
    """4 q heads per layer, 2 layers: 8 head units (64 channels). A budget of 20 fits the
    channels but not the units; the plan refuses it before any forward pass (it used to
    count channels, pass, and fail in the run after the statistics)."""
    program = spec_for("channels = attn.q  granularity = head  budget = 20")
    with pytest.raises(PlanError, match="20 units but the selector matches 8") as error:
        make_plan(program, Cache(tmp_path / "cache"))
    assert error.value.span is not None and error.value.span.line == 8
    plan = make_plan(spec_for("channels = attn.q  granularity = head  budget = 8"),
                     Cache(tmp_path / "cache"))
    (selectable,) = plan.selectable.values()
    assert (selectable.units, selectable.channels) == (8, 64)


@pytest.mark.parametrize("granularity, units", [
    ("channel", 2 * (32 + 16 + 16 + 32 + 64 + 64 + 32)),
    ("neuron", 2 * (64 + 32 + 16 + 16 + 32 + 32)),  # neurons; q, k, v, o, down channels
    ("head", 2 * (4 + 2 + 32 + 64 + 64 + 32)),  # q heads, kv heads; o and mlp channels
    ("module", 2 * 7),
    ("layer", 2),
])
def test_units_per_granularity(spec_for, granularity: str, units: int) -> None:
    rule = _rule(spec_for(f"granularity = {granularity}  budget = 1"))
    space = ChannelSpace.from_config(TINY_LLAMA)
    assert sum(g.n_units for g in unit_groups(space, rule)) == units
    assert sum(g.n_channels for g in unit_groups(space, rule)) == 2 * 256


@pytest.mark.parametrize("mode", BUDGET_MODES, ids=lambda m: m.name)
def test_every_budget_mode_is_a_language_budget(spec_for, mode) -> None:
    """A mode's language spelling checks, and binds to that mode with the value the runtime
    reads from the same text: language and runtime share the registry's modes."""
    budget = _rule(spec_for(f"budget = {mode.written}")).budget
    assert (budget.kind, budget.scope) == (mode.kind, mode.scope)
    assert runtime_budget(budget) == Budget.parse(mode.written)
    assert runtime_budget(budget).mode == mode.name


def test_residual_channels_warn_from_a_spec(spec_for, tmp_path) -> None:
    """LANGUAGE.md promises a warning when a rule moves residual channels; the plan carries
    it, located at the rule."""
    quiet = make_plan(spec_for("budget = 1%"), Cache(tmp_path / "cache"))
    assert quiet.warnings == []
    plan = make_plan(spec_for("channels = [attn.*, norm.input]  include_global = true  "
                              "budget = 1%"), Cache(tmp_path / "cache"))
    (warning,) = plan.warnings
    assert "norm.input" in warning.message and warning.span.line == 8
    assert plan.to_json()["warnings"] == [warning.message]


def test_residual_channels_named_without_include_global_are_an_error(spec_for, tmp_path):
    with pytest.raises(PlanError, match="residual dimensions"):
        make_plan(spec_for("channels = norm.input  budget = 1%"), Cache(tmp_path / "cache"))


def test_wildcards_skip_residual_and_excluded_kinds(spec_for) -> None:
    space = ChannelSpace.from_config(TINY_LLAMA)
    kinds = {e.kind for e in candidate_entries(space, _rule(spec_for("budget = 1%")))}
    assert kinds == {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"}
    named = candidate_entries(space, _rule(spec_for("channels = [mlp.up, lm_head]  budget = 1")))
    assert {e.kind for e in named} == {"mlp.up", "lm_head"}


def test_layers_past_the_model_are_an_error(spec_for, tmp_path) -> None:
    with pytest.raises(PlanError, match="past the model's 2 layers"):
        make_plan(spec_for("layers = 1..3  budget = 1%"), Cache(tmp_path / "cache"))


def test_plan_shows_units_for_coarse_granularities(spec_for, tmp_path) -> None:
    from actlang.compile.render import render_plan

    text = render_plan(make_plan(spec_for("granularity = neuron  budget = 10%"),
                                 Cache(tmp_path / "cache")))
    select = next(line for line in text.splitlines() if "select" in line)
    assert "neuron units" in select and "38 of 384" in select


def test_every_select_in_the_plan_is_bound(spec_for, tmp_path) -> None:
    plan = make_plan(spec_for("budget = sweep(1%, 2%)"), Cache(tmp_path / "cache"))
    selects = [op for op in plan.order if isinstance(op, O.Select)]
    assert len(selects) == 2 and set(plan.selectable) == set(selects)
