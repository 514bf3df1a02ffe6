"""Distributed statistics: ranks collect on their shard of a corpus and all-reduce once.

Two real processes, a real ``torch.distributed`` gloo group; the all-reduced statistics must
equal one process's statistics of the whole corpus.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from actlang.run.corpus import Batch
from actlang.run.stats import ChannelStats, collect_paired_stats, collect_stats

pytestmark = pytest.mark.slow

WORLD = 2


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
    for i in range(4):
        ids = torch.randint(0, 50, (3, 12), generator=g)
        attention = torch.ones_like(ids)
        attention[i % 3, -(i + 2):] = 0  # padding differs per batch
        out.append(Batch(ids, attention, attention.bool()))
    return out


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        a, b, space = tiny_models()
        shard = corpus_batches()[rank::WORLD]
        unpaired = collect_stats(a, space, shard).all_reduce()
        paired = collect_paired_stats(a, b, space, shard).paired.all_reduce()
        if rank == 0:
            unpaired.save(Path(out_dir) / "unpaired.safetensors")
            paired.save(Path(out_dir) / "paired.safetensors")
    finally:
        dist.destroy_process_group()


def test_all_reduced_shards_equal_the_whole_corpus(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)
    a, b, space = tiny_models()
    whole = corpus_batches()
    want_unpaired = collect_stats(a, space, whole)
    want_paired = collect_paired_stats(a, b, space, whole).paired
    got_unpaired = ChannelStats.load(tmp_path / "unpaired.safetensors")
    got_paired = ChannelStats.load(tmp_path / "paired.safetensors")
    assert got_unpaired.n_scored == want_unpaired.n_scored == sum(x.n_scored for x in whole)
    assert got_unpaired.allclose(want_unpaired, rtol=1e-9, atol=1e-9)
    assert got_paired.allclose(want_paired, rtol=1e-9, atol=1e-9)
    # each shard alone is not the whole: the reduction really summed both ranks
    half = collect_stats(a, space, whole[0::WORLD])
    assert not half.allclose(want_unpaired, rtol=1e-3)


def test_all_reduce_without_a_process_group_is_a_no_op():
    a, _, space = tiny_models()
    stats = collect_stats(a, space, corpus_batches()[:1])
    before = {k: {f: t.clone() for f, t in d.items()} for k, d in stats.data.items()}
    assert stats.all_reduce() is stats
    assert all(torch.equal(stats.data[k][f], before[k][f]) for k in before for f in before[k])
