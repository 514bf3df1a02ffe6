"""Channel selection from scores: budgets and their scopes, guards, granularities, tied
groups, default exclusions — and that the planner counts the units the selection ranks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actlang.arch.adapters import ChannelSpace
from actlang.arch.errors import GlobalChannelWarning, RuntimeUserError
from actlang.arch.registry import BUDGET_MODES
from actlang.arch.selection import Budget
from actlang.run.scores import Scores, random_scores
from actlang.run.select import kind_candidates, select_channels

from .conftest import make_config


def _space(family="llama", **kw) -> ChannelSpace:
    return ChannelSpace.from_config(make_config(family, **kw).to_dict())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), frac=st.floats(0, 1), family=st.sampled_from(["llama", "phi3", "gpt2", "qwen3"]),
       granularity=st.sampled_from(["channel", "neuron", "head", "module", "layer"]))
def test_selected_count_equals_budget(seed, frac, family, granularity):
    space = _space(family)
    scores = random_scores(space, seed)
    mask = select_channels(scores, space, Budget("global", frac), granularity=granularity)
    total = mask.meta["units_total"]
    assert mask.meta["units_selected"] == math.floor(frac * total + 0.5)
    if granularity == "channel":
        assert mask.n_channels == mask.meta["units_selected"]
        # the selected channels are exactly the top ones
        flat = torch.cat([scores[e.key] for e in kind_candidates(space)])
        chosen = torch.cat([mask.selected(e.key) for e in kind_candidates(space)])
        if chosen.any() and not chosen.all():
            assert flat[chosen].min() >= flat[~chosen].max()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 200), lo=st.integers(0, 3), hi=st.integers(3, 40))
def test_count_budget_with_guards(seed, n, lo, hi):
    space = _space("llama")
    scores = random_scores(space, seed)
    n_modules = len(space.match(["mlp.*"]))
    if n < lo * n_modules or n > hi * n_modules:
        with pytest.raises(RuntimeUserError, match="min_per_module|max_per_module"):
            select_channels(scores, space, n, kinds=["mlp.*"], min_per_module=lo, max_per_module=hi)
        return
    mask = select_channels(scores, space, n, kinds=["mlp.*"], min_per_module=lo, max_per_module=hi)
    assert mask.n_channels == n
    for e in space.match(["mlp.*"]):
        c = int(mask.selected(e.key).sum())
        assert lo <= c <= hi


def test_per_module_per_layer_threshold():
    space = _space("llama")
    scores = random_scores(space, 3)
    m = select_channels(scores, space, "25% per module")
    for e in kind_candidates(space):
        assert int(m.selected(e.key).sum()) == math.floor(0.25 * e.size + 0.5)
    m = select_channels(scores, space, "10% per layer")
    for layer in range(space.n_layers):
        n = sum(e.size for e in kind_candidates(space) if e.layer == layer)
        got = sum(int(m.selected(e.key).sum()) for e in kind_candidates(space) if e.layer == layer)
        assert got == math.floor(0.1 * n + 0.5)
    m = select_channels(scores, space, "threshold 0.9")
    assert m.n_channels == sum(int((scores[e.key] >= 0.9).sum()) for e in kind_candidates(space))
    assert Budget.parse("3%") == Budget("global", 0.03)
    assert Budget.parse("5% per module") == Budget("per_module", 0.05)
    assert Budget.parse("120") == Budget("count", 120)
    assert str(Budget.parse("5% per layer")) == "5% per layer"


@pytest.mark.parametrize("mode", BUDGET_MODES, ids=lambda m: m.name)
def test_every_budget_mode_reads_prints_and_selects(mode):
    """Each mode of the registry is read as a spec writes it, printed so that it reads back,
    and selected by: a mode declared without its selection (or the reverse) fails here."""
    space = _space("llama", num_hidden_layers=4)  # more units than the count mode's 500
    scores = random_scores(space, 1)
    budget = Budget.parse(mode.written)
    assert (budget.mode, budget.kind, budget.scope) == (mode.name, mode.kind, mode.scope)
    assert Budget.parse(str(budget)) == budget
    mask = select_channels(scores, space, budget)
    assert mask.meta["budget_mode"] == mode.name and mask.n_channels > 0


def test_budget_errors():
    space = _space("llama")
    scores = random_scores(space, 0)
    with pytest.raises(RuntimeUserError, match="exceeds the .* selectable units"):
        select_channels(scores, space, 10**6)
    with pytest.raises(RuntimeUserError, match="fraction"):
        Budget("global", 1.5)
    with pytest.raises(RuntimeUserError, match="per_layer budget is a fraction .* got -0.1"):
        Budget("per_layer", -0.1)
    for count in (2.5, -1, float("nan")):
        with pytest.raises(RuntimeUserError, match="count budget is a whole number"):
            Budget("count", count)
    with pytest.raises(RuntimeUserError, match="unknown budget mode 'top_k'") as error:
        Budget("top_k", 3)
    assert error.value.hint == "modes: " + ", ".join(BUDGET_MODES.names)
    for text in ("lots", "3% per head"):
        with pytest.raises(RuntimeUserError, match="cannot read the budget"):
            Budget.parse(text)
    with pytest.raises(RuntimeUserError, match="matches no module"):
        select_channels(scores, space, "3%", kinds=["ffn.*"])
    with pytest.raises(RuntimeUserError, match="max_per_module allows"):
        select_channels(scores, space, 50, kinds=["mlp.up"], max_per_module=10)
    with pytest.raises(RuntimeUserError, match="unknown granularity"):
        select_channels(scores, space, "3%", granularity="atom")


def test_default_exclusions_and_opt_in_warning():
    space = _space("qwen3")
    kinds = {e.kind for e in kind_candidates(space)}
    assert kinds == {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ents = kind_candidates(space, kinds=["attn.*", "embed"])
    assert any(issubclass(x.category, GlobalChannelWarning) for x in w)
    assert {"attn.q_norm", "embed"} <= {e.kind for e in ents}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kind_candidates(space, kinds=["lm_head"])  # excluded by default, but not global


def _tied_ok(space, mask, tie):
    heads, kv, hd = space.heads()
    for layer in range(space.n_layers):
        p = f"layers.{layer}."
        if tie == "neuron":
            g, u = mask.selected(p + "mlp.gate"), mask.selected(p + "mlp.up")
            d = mask.inputs.get(p + "mlp.down", torch.zeros_like(u))
            assert torch.equal(g, u) and torch.equal(u, d)
        else:
            q = mask.selected(p + "attn.q").view(heads, hd)
            k = mask.selected(p + "attn.k").view(kv, hd)
            v = mask.selected(p + "attn.v").view(kv, hd)
            o = mask.inputs.get(p + "attn.o", torch.zeros(heads * hd, dtype=torch.bool)).view(heads, hd)
            assert torch.equal(q.all(1), q.any(1)) and torch.equal(k.all(1), k.any(1))
            assert torch.equal(k, v) and torch.equal(q, o)
            group = torch.arange(heads) // (heads // kv)
            assert bool((k.any(1)[group] | ~q.any(1)).all())  # a moved head brings its kv group
            if tie == "kv_group":
                assert torch.equal(q.any(1), k.any(1)[group])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), tie=st.sampled_from(["neuron", "head", "kv_group"]),
       family=st.sampled_from(["llama", "phi3", "gemma2"]))
def test_tied_groups_move_together(seed, n, tie, family):
    space = _space(family)
    mask = select_channels(random_scores(space, seed), space, n, tie=tie)
    assert mask.meta["units_selected"] == n
    _tied_ok(space, mask, tie)


def test_granularity_units():
    space = _space("llama")
    scores = random_scores(space, 1)
    m = select_channels(scores, space, 3, granularity="head", kinds=["attn.q"])
    assert int(m.selected("layers.0.attn.q").sum() + m.selected("layers.1.attn.q").sum()) == 3 * 8
    m = select_channels(scores, space, 1, granularity="layer")
    assert sorted({k.split(".")[1] for k, v in m.channels.items() if v.any()}) in (["0"], ["1"])
    m = select_channels(scores, space, 2, granularity="neuron", kinds=["mlp.gate", "mlp.up"])
    assert sum(int(v.sum()) for k, v in m.inputs.items()) == 2  # down columns of the 2 neurons


@settings(max_examples=25, deadline=None)
@given(family=st.sampled_from(["llama", "phi3", "gpt2", "qwen3"]),
       granularity=st.sampled_from(["channel", "neuron", "head", "module", "layer"]),
       kinds=st.sets(st.sampled_from(["attn.q", "attn.k", "attn.v", "attn.o", "mlp.*"]),
                     min_size=1))
def test_the_planner_counts_the_units_the_selection_ranks(family, granularity, kinds):
    """A count budget of exactly the planner's unit count selects everything; one more is
    refused by both (plan and run share one unit layout)."""
    from actlang.arch.selection import check_budget, unit_groups

    space = _space(family)
    entries = kind_candidates(space, sorted(kinds), warn=False)
    groups = unit_groups(space, entries, granularity)
    units = sum(g.n_units for g in groups)
    scores = random_scores(space, 0)
    mask = select_channels(scores, space, Budget("count", units), entries=entries,
                           granularity=granularity)
    assert mask.meta["units_total"] == mask.meta["units_selected"] == units
    assert mask.n_channels >= sum(g.n_channels for g in groups if g.kind == "channel")
    with pytest.raises(RuntimeUserError):
        check_budget(Budget("count", units + 1), groups)
    with pytest.raises(RuntimeUserError):
        select_channels(scores, space, Budget("count", units + 1), entries=entries,
                        granularity=granularity)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), keep=st.floats(0.05, 0.95),
       granularity=st.sampled_from(["channel", "neuron", "head", "module"]),
       frac=st.floats(0.01, 0.5))
def test_budgets_never_buy_channels_whose_weights_are_identical(seed, keep, granularity, frac):
    """Units whose parameters are bit-identical in donor and target are never selected,
    even when they score highest; a budget larger than what differs selects fewer units and
    says by how many."""
    space = _space("llama")
    g = torch.Generator().manual_seed(seed)
    entries = kind_candidates(space)
    differs = {e.key: torch.rand(e.size, generator=g) < keep for e in entries}
    inputs = {e.key: torch.zeros(e.inputs[0].size, dtype=torch.bool) for e in entries if e.inputs}
    # identical channels score highest: a selection that ignored `changed` would take them
    scores = Scores({k: torch.where(d, torch.rand(d.shape, generator=g, dtype=torch.float64),
                                    2.0 + torch.rand(d.shape, generator=g, dtype=torch.float64))
                     for k, d in differs.items()})
    mask = select_channels(scores, space, Budget("global", frac), entries=entries,
                           granularity=granularity, changed=(differs, inputs))
    for key, d in differs.items():
        chosen = mask.selected(key)
        if granularity == "channel":
            assert not (chosen & ~d).any()
    blind = select_channels(scores, space, Budget("global", frac), entries=entries,
                            granularity=granularity)
    assert mask.meta["units_selected"] + mask.meta["units_short"] == blind.meta["units_selected"]
    if granularity == "channel":
        moving = sum(int((mask.selected(k) & d).sum()) for k, d in differs.items())
        assert moving == mask.n_channels


def test_a_neuron_whose_only_change_is_its_down_column_can_move():
    space = _space("llama")
    entries = kind_candidates(space, ["mlp.gate", "mlp.up"])
    differs = {e.key: torch.zeros(e.size, dtype=torch.bool) for e in space}
    down = {e.key: torch.zeros(e.inputs[0].size, dtype=torch.bool) for e in space if e.inputs}
    down["layers.0.mlp.down"][5] = True
    scores = random_scores(space, 0)
    mask = select_channels(scores, space, 1, entries=entries, granularity="neuron",
                           changed=(differs, down))
    assert mask.selected("layers.0.mlp.gate").nonzero().flatten().tolist() == [5]
    assert mask.meta["units_unchanged"] == mask.meta["units_total"] - 1
