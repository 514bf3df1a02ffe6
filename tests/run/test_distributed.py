"""Distributed statistics: each rank collects on its share of a corpus's batches (in memory
or a layer at a time) and rank 0 adds the shares along the fixed batch tree.

Two and three real processes, a real ``torch.distributed`` gloo group; rank 0's statistics
must be the very bits one process computes over the whole corpus.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from actlang.run.corpus import Batch
from actlang.run.ranks import Ranks
from actlang.run.stats import ChannelStats, collect_paired_stats, collect_stats
from actlang.run.streamed import collect_lockstep_stats_streamed

pytestmark = pytest.mark.slow


def tiny_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    from actlang.arch.adapters import ChannelSpace

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        a = LlamaForCausalLM(cfg).eval()
        torch.manual_seed(1)
        b = LlamaForCausalLM(cfg).eval()
    return a, b, ChannelSpace.from_config(cfg)


def corpus_batches() -> list[Batch]:
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(5):  # 5 batches: shares of 2 and 3 ranks are uneven
        ids = torch.randint(0, 50, (3, 12), generator=g)
        attention = torch.ones_like(ids)
        attention[i % 3, -(i + 2):] = 0  # padding differs per batch
        out.append(Batch(ids, attention, attention.bool()))
    return out


def _rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        a, b, space = tiny_models()
        ranks = Ranks(rank, world)
        unpaired = collect_stats(a, space, corpus_batches(), ranks=ranks)
        paired = collect_paired_stats(a, b, space, corpus_batches(), ranks=ranks).paired
        streamed = collect_lockstep_stats_streamed(
            [Path(out_dir) / "a", Path(out_dir) / "b"], space, corpus_batches(), ranks=ranks)
        if rank == 0:
            unpaired.save(Path(out_dir) / "unpaired.safetensors")
            paired.save(Path(out_dir) / "paired.safetensors")
            streamed[0].paired.save(Path(out_dir) / "streamed.safetensors")
    finally:
        dist.destroy_process_group()


def bits_equal(x: ChannelStats, y: ChannelStats) -> bool:
    return set(x.data) == set(y.data) and all(
        torch.equal(x.data[k][f], y.data[k][f]) for k in x.data for f in x.fields)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_give_the_bits_of_one_process(tmp_path, world):
    torch.set_num_threads(1)  # as each rank: kernels' bits may depend on the thread count
    for name, model in zip("ab", tiny_models()):  # for the layer-streamed capture
        model.save_pretrained(tmp_path / name)
    mp.spawn(_rank, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world,
             join=True)
    a, b, space = tiny_models()
    whole = corpus_batches()
    want_unpaired = collect_stats(a, space, whole)
    want_paired = collect_paired_stats(a, b, space, whole).paired
    got_unpaired = ChannelStats.load(tmp_path / "unpaired.safetensors")
    got_paired = ChannelStats.load(tmp_path / "paired.safetensors")
    assert got_unpaired.n_scored == want_unpaired.n_scored == sum(x.n_scored for x in whole)
    assert bits_equal(got_unpaired, want_unpaired)
    assert bits_equal(got_paired, want_paired)
    # the layer-streamed capture splits the same way, with the same bits
    assert bits_equal(ChannelStats.load(tmp_path / "streamed.safetensors"), want_paired)
    # rank 0's share alone is not the whole: the reduction really added the other ranks'
    mine = collect_stats(a, space, whole[:Ranks(0, world).batches(len(whole)).stop])
    assert not mine.allclose(want_unpaired, rtol=1e-3)


def test_shares_are_contiguous_cover_every_batch_and_differ_by_at_most_one():
    for world in range(1, 9):
        for count in range(0, 20):
            shares = [Ranks(rank, world).batches(count) for rank in range(world)]
            assert [i for share in shares for i in share] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
