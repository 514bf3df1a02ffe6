"""Expert activations recomputed from an experts module's inputs equal what it computes."""

from __future__ import annotations

import pytest
import torch

from actlang.run.experts import expert_local_deltas, expert_projections, routed_rows

from .test_derived import _model


@pytest.mark.parametrize("family", ["mixtral", "olmoe", "qwen2_moe"])
def test_recomputed_experts_sum_to_the_module_output(family):
    model = _model(family, 32)
    experts = model.model.layers[0].mlp.experts
    seen = {}
    experts.register_forward_hook(lambda m, inputs, output: seen.update(
        hidden=inputs[0], index=inputs[1], weights=inputs[2], output=output))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 32, (2, 9)))
    hidden, index, weights = seen["hidden"], seen["index"], seen["weights"]
    total = torch.zeros_like(seen["output"])
    for expert in range(experts.gate_up_proj.shape[0]):
        rows = routed_rows(index, expert, None)
        if rows.numel() == 0:
            continue
        down = expert_projections(experts, hidden[rows], expert)["down"]
        weight = (weights[rows] * (index[rows] == expert)).sum(-1, keepdim=True)
        total.index_add_(0, rows, (down * weight).to(total.dtype))
    torch.testing.assert_close(total, seen["output"])
    scored = torch.zeros(hidden.shape[0], dtype=torch.bool)
    scored[::2] = True
    assert set(routed_rows(index, 1, scored).tolist()) <= set(range(0, hidden.shape[0], 2))


def test_local_deltas_are_zero_for_equal_experts_and_linear_in_the_change():
    model = _model("mixtral", 32)
    experts = model.model.layers[0].mlp.experts
    x = torch.randn(5, 32)
    for delta in expert_local_deltas(experts, experts, x, 2).values():
        assert torch.equal(delta, torch.zeros_like(delta))
    import copy

    changed = copy.deepcopy(experts)
    with torch.no_grad():
        changed.down_proj[2, 3] += 1.0  # one output row of expert 2's down projection
    deltas = expert_local_deltas(experts, changed, x, 2)
    assert not deltas["gate"].any() and not deltas["up"].any()
    assert deltas["down"][:, 3].abs().sum() > 0
    assert not torch.cat([deltas["down"][:, :3], deltas["down"][:, 4:]], dim=1).any()


def test_expert_statistics_count_the_routed_tokens(tokenizer):
    """Each scored token reaches top_k experts: the experts' counts add up to top_k times the
    scored tokens, in both models' own routing; paired counts follow the target's."""
    import copy

    from actlang.arch.adapters import ChannelSpace
    from actlang.arch.corpus import inline
    from actlang.run.stats import LOCAL_FIELD, collect_paired_stats

    from .conftest import SENTENCES, perturbed

    target = _model("mixtral", 128)
    donor = perturbed(target, seed=3, scale=0.05)
    space = ChannelSpace.from_config(target.config.to_dict())
    data = inline(SENTENCES).tokenize(tokenizer, max_length=16)
    experts = [e for e in space if e.layer == 1 and e.kind.startswith("mlp.experts.")
               and e.kind.endswith(".up")]
    assert len(experts) == 4 and all(e.hook is not None for e in experts)
    result = collect_paired_stats(target, donor, space, data, batch_size=2, local=True)
    n = result.paired.n_scored
    for stats in (result.a, result.b):
        assert sum(int(stats[e.key]["count"][0]) for e in experts) == 2 * n  # top_k = 2
    for e in experts:
        assert torch.equal(result.paired[e.key]["count"], result.a[e.key]["count"])
        assert bool((result.paired[e.key]["sum_absdiff"] > 0).all())
        assert bool((result.paired[e.key][LOCAL_FIELD] > 0).all())
    same = collect_paired_stats(target, copy.deepcopy(target), space, data, batch_size=2,
                                local=True)
    for e in experts:  # a model against itself: no difference, and none of its own
        assert not same.paired[e.key]["sum_absdiff"].any()
        assert not same.paired[e.key][LOCAL_FIELD].any()


@pytest.mark.parametrize("granularity, tie", [("neuron", None), ("channel", "neuron")])
def test_neurons_and_their_ties_stay_inside_each_expert(granularity, tie):
    """An expert's neuron i is row i of its gate and up and column i of its down; units and
    ties never cross from one expert (or the dense MLP) into another."""
    from actlang.arch.adapters import ChannelSpace
    from actlang.arch.selection import unit_groups
    from actlang.run.scores import random_scores
    from actlang.run.select import select_channels

    space = ChannelSpace.from_config(_model("mixtral", 32).config.to_dict())
    experts = [e for e in space if e.kind.startswith("mlp.experts.")]
    names = {g.name for g in unit_groups(space, experts, "neuron") if g.kind == "neuron"}
    assert names == {f"layers.{layer}.mlp.experts.{expert}.neuron"
                     for layer in (0, 1) for expert in range(4)}
    mask = select_channels(random_scores(space, 7), space, 0.2, kinds=["mlp.experts.*"],
                           granularity=granularity, tie=tie)
    picked = 0
    for layer in (0, 1):
        for expert in range(4):
            pre = f"layers.{layer}.mlp.experts.{expert}."
            gate, up = mask.channels[pre + "gate"], mask.channels[pre + "up"]
            assert torch.equal(gate, up)
            assert torch.equal(mask.inputs[pre + "down"], gate)
            picked += int(gate.sum())
    assert picked > 0
