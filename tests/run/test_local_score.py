"""local_absdiff: a module's own change on real inputs, blind to upstream propagation."""

from __future__ import annotations

import copy

import pytest
import torch

from actlang.arch.adapters import ChannelSpace
from actlang.arch.corpus import inline
from actlang.arch.errors import RuntimeUserError
from actlang.run.local import local_delta
from actlang.run.scores import compute_scores
from actlang.run.select import select_channels
from actlang.run.stats import collect_paired_stats, collect_stats

from .conftest import SENTENCES, make_model

# family -> an early entry whose channels we change (its module is a Linear or a Conv1D)
FAMILIES = {
    "llama": "layers.0.mlp.up",
    "qwen3": "layers.0.attn.q",
    "phi3": "layers.0.attn.k",   # a slice of the fused qkv_proj
    "gpt2": "layers.0.mlp.up",   # Conv1D: a channel is a column of [in, out]
}
ROWS = [1, 4]


def _damaged(model, space: ChannelSpace, key: str):
    """A copy of ``model`` with channels ``ROWS`` of ``key`` changed a lot (and nothing else)."""
    other = copy.deepcopy(model)
    (part, *_) = space[key].parts
    weight = dict(other.named_parameters())[part.name]
    with torch.no_grad():
        index = torch.tensor([part.offset + r for r in ROWS])
        rows = weight.index_select(part.axis, index)
        weight.index_copy_(part.axis, index, rows + torch.randn(rows.shape) * 2.0)
    return other.eval()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_local_scores_are_zero_exactly_where_weights_did_not_change(family, tokenizer):
    key = FAMILIES[family]
    target = make_model(family, seed=3)
    space = ChannelSpace.from_config(target.config.to_dict())
    donor = _damaged(target, space, key)
    data = inline(SENTENCES).tokenize(tokenizer)
    result = collect_paired_stats(target, donor, space, data, local=True)
    local = compute_scores("local_absdiff", paired=result.paired)
    paired = compute_scores("paired_absdiff", paired=result.paired)
    changed = {(key, r) for r in ROWS}
    for entry_key, values in local.items():
        for r in torch.nonzero(values).flatten().tolist():
            assert (entry_key, r) in changed, f"{entry_key}[{r}] scored without a change"
    assert all(local[key][r] > 0 for r in ROWS)
    # the output difference spreads downstream: later layers differ although unchanged
    downstream = [k for k in paired.keys() if k.startswith("layers.1.")]
    assert any(bool((paired[k] > 0).any()) for k in downstream)
    mask = select_channels(local, space, len(ROWS), entries=[space[k] for k in local.keys()])
    assert mask.selected(key).nonzero().flatten().tolist() == ROWS


def test_local_delta_matches_the_output_change_of_one_linear():
    torch.manual_seed(0)
    a = torch.nn.Linear(6, 4)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.weight.add_(torch.randn(4, 6))
        b.bias.add_(torch.randn(4))
    x = torch.randn(10, 6)
    torch.testing.assert_close(local_delta(a, b, x), b(x) - a(x))
    assert local_delta(torch.nn.LayerNorm(4), torch.nn.LayerNorm(4), x[:, :4]) is None


def test_local_statistics_cost_nothing_unless_asked(tokenizer):
    target = make_model("llama", seed=3)
    space = ChannelSpace.from_config(target.config.to_dict())
    donor = copy.deepcopy(target)
    data = inline(SENTENCES).tokenize(tokenizer)
    result = collect_paired_stats(target, donor, space, data)
    assert "sum_local" not in result.paired.fields
    with pytest.raises(RuntimeUserError, match="sum_local"):
        compute_scores("local_absdiff", paired=result.paired)
    assert collect_stats(target, space, data).kind == "unpaired"


def test_norm_channels_have_no_local_score(tokenizer):
    target = make_model("llama", seed=3)
    space = ChannelSpace.from_config(target.config.to_dict())
    donor = copy.deepcopy(target)
    data = inline(SENTENCES).tokenize(tokenizer)
    entries = [e for e in space if e.hook is not None]
    result = collect_paired_stats(target, donor, space, data, local=True, entries=entries)
    local = compute_scores("local_absdiff", paired=result.paired)
    assert torch.isnan(local["layers.0.norm.input"]).all()
    assert (local["layers.0.mlp.up"] == 0).all()
