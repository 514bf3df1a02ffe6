"""GPU readiness (issue 13, part 4): statistics, selection, transfer and fine-tune on CUDA
agree with the CPU, in float32 and bfloat16. Skipped without CUDA; ``bench/device_check.sh``
runs them on a GPU machine and prints one line per check.

Agreement, not identity: a GPU reduces in another order (and bf16 rounds every
activation), so statistics are compared with tolerances and selections by overlap; transfer
is elementwise arithmetic and must agree exactly in float32.
"""

from __future__ import annotations

import copy

import pytest
import torch

from actlang.arch.adapters import ChannelSpace
from actlang.arch.corpus import inline
from actlang.run.finetune import finetune
from actlang.run.scores import compute_scores, random_scores
from actlang.run.select import select_channels
from actlang.run.stats import collect_paired_stats
from actlang.run.transfer import Donor, apply_masks_

from .conftest import SENTENCES, make_model, make_tokenizer, perturbed

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

#: CUDA matmuls in float32 without TF32, so float32 comparisons measure only summation order.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def pair():
    target = make_model("llama", seed=11)
    return target, perturbed(target, seed=12, scale=0.05)


@pytest.fixture(scope="module")
def data():
    return inline(SENTENCES * 4).tokenize(make_tokenizer())


def on(model, device: torch.device, dtype: torch.dtype = torch.float32):
    return copy.deepcopy(model).to(device=device, dtype=dtype).eval()


def paired(pair, data, device, dtype=torch.float32):
    target, donor = pair
    space = ChannelSpace.from_config(target.config.to_dict())
    return space, collect_paired_stats(on(target, device, dtype), on(donor, device, dtype),
                                       space, data, batch_size=4)


def top_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float) -> float:
    """The share of ``a``'s top ``fraction`` channels that are in ``b``'s too."""
    k = max(1, int(fraction * a.numel()))
    top_a = set(a.topk(k).indices.tolist())
    return len(top_a & set(b.topk(k).indices.tolist())) / k


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 0.1)])
def test_paired_statistics_agree_with_the_cpu(pair, data, dtype, rtol) -> None:
    space, cpu = paired(pair, data, torch.device("cpu"))
    _, gpu = paired(pair, data, CUDA, dtype)
    assert gpu.paired.n_scored == cpu.paired.n_scored
    for key in cpu.paired.keys():
        expected, found = cpu.paired.mean_absdiff(key), gpu.paired.mean_absdiff(key).cpu()
        assert found.dtype == torch.float64, "statistics are reduced in float64 on any device"
        if dtype == torch.float32:
            torch.testing.assert_close(found, expected, rtol=rtol, atol=1e-7)
        else:  # bf16 activations: the ranking is what selection reads
            assert top_overlap(expected, found, 0.1) >= 0.8, key


def test_selection_from_gpu_statistics_matches_the_cpu(pair, data) -> None:
    space, cpu = paired(pair, data, torch.device("cpu"))
    _, gpu = paired(pair, data, CUDA)
    masks = [select_channels(compute_scores("paired_absdiff", paired=stats.paired), space, 0.05)
             for stats in (cpu, gpu)]
    chosen = [{(key, int(i)) for key, selected in m.channels.items()
               for i in selected.nonzero().flatten()} for m in masks]
    assert len(chosen[0]) == len(chosen[1])
    assert len(chosen[0] & chosen[1]) / len(chosen[0]) >= 0.99


def test_transfer_on_gpu_equals_the_cpu_exactly_in_float32(pair) -> None:
    target, donor = pair
    space = ChannelSpace.from_config(target.config.to_dict())
    mask = select_channels(random_scores(space, 3), space, 0.1)
    results = []
    for device in (torch.device("cpu"), CUDA):
        model = on(target, device)
        apply_masks_(model, [Donor(on(donor, device), mask, lam=0.7)])
        results.append({k: v.cpu() for k, v in model.state_dict().items()})
    for name, tensor in results[0].items():
        assert torch.equal(tensor, results[1][name]), name


def test_masked_finetune_on_gpu_keeps_unselected_weights_and_tracks_the_cpu(pair,
                                                                             data) -> None:
    target, _ = pair
    space = ChannelSpace.from_config(target.config.to_dict())
    mask = select_channels(random_scores(space, 4), space, 0.1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    finals, losses = [], []
    for device in (torch.device("cpu"), CUDA):
        model = on(target, device)
        report = finetune(model, None, data, steps=3, lr=1e-3, batch_size=4, seed=0,
                          scope="transferred", masks=[mask])
        finals.append({k: v.cpu() for k, v in model.state_dict().items()})
        losses.append(report.losses)
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-3,
                               atol=1e-4)
    for name, start in before.items():
        moves = mask.element_mask(name, tuple(start.shape))
        kept = torch.ones_like(start, dtype=torch.bool) if moves is None else ~moves
        for final in finals:
            assert torch.equal(final[name][kept], start[kept]), name


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_model_spread_over_two_gpus_gives_the_statistics_of_one(pair, data) -> None:
    """accelerate's device_map puts half the layers on each GPU: hooks on either device
    reduce into the same float64 sums."""
    from accelerate import dispatch_model

    target, donor = pair
    space = ChannelSpace.from_config(target.config.to_dict())
    layers = target.config.num_hidden_layers
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": 1,
                  "lm_head": 1, **{f"model.layers.{i}": int(i >= layers // 2)
                                   for i in range(layers)}}
    spread = [dispatch_model(on(m, torch.device("cpu")), device_map=device_map)
              for m in (target, donor)]
    whole = collect_paired_stats(on(target, CUDA), on(donor, CUDA), space, data, batch_size=4)
    split = collect_paired_stats(*spread, space, data, batch_size=4)
    assert split.paired.allclose(whole.paired, rtol=1e-5, atol=1e-6)
