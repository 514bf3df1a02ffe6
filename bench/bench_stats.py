"""Benchmark: statistics capture with forward hooks vs the same forward passes without hooks.

    python bench/bench_stats.py [--write]

A Llama-shaped model is built from a config (random weights); the same batches run
(a) plainly, (b) with unpaired statistics hooks on every default module, and (c) in lock-step
with a second model for paired statistics (compared against two plain passes). Each variant
runs ``--repeats`` times, alternating, and the fastest run of each counts (the machine is
shared). Target: unpaired capture <= 1.15x the plain forward.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import machine, write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="record the result in BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import LlamaConfig, LlamaForCausalLM

    from actlang.run.adapters import ChannelSpace
    from actlang.run.corpus import Batch
    from actlang.run.stats import collect_paired_stats, collect_stats, default_stat_entries

    cfg = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=8,
                      num_key_value_heads=4, intermediate_size=int(args.hidden * 2.75), vocab_size=8000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        m1 = LlamaForCausalLM(cfg).eval()
        torch.manual_seed(1)
        m2 = LlamaForCausalLM(cfg).eval()
    space = ChannelSpace.from_config(cfg)
    entries = default_stat_entries(space)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g)
        att = torch.ones_like(ids)
        att[: args.batch // 2, -args.seq // 8 :] = 0  # some padding, as real corpora have
        batches.append(Batch(ids, att, att.bool()))
    tokens = sum(b.n_scored for b in batches)

    def plain(model):
        base = model.base_model  # what the collector runs when lm_head is not hooked
        with torch.inference_mode():
            for b in batches:
                base(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    runs = {
        "plain": lambda: plain(m1),
        "unpaired": lambda: collect_stats(m1, space, batches, entries=entries),
        "plain x2": lambda: (plain(m1), plain(m2)),
        "paired": lambda: collect_paired_stats(m1, m2, space, batches, entries=entries),
    }
    best = {k: float("inf") for k in runs}
    runs["plain"]()  # warm-up
    runs["unpaired"]()
    for _ in range(args.repeats):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    r_unpaired = best["unpaired"] / best["plain"]
    r_paired = best["paired"] / best["plain x2"]
    n_params = sum(p.numel() for p in m1.parameters())
    lines = [
        f"model: Llama config, hidden {args.hidden}, {args.layers} layers, {n_params / 1e6:.1f}M parameters, fp32; "
        f"{len(entries)} hooked modules ({space.n_channels(entries)} channels)",
        f"data: {args.batches} batches x {args.batch} x {args.seq} tokens ({tokens} scored, padding excluded)",
        f"plain forward        {best['plain']:.3f} s",
        f"unpaired statistics  {best['unpaired']:.3f} s   ratio {r_unpaired:.3f}x  (target <= 1.15x)",
        f"2 plain forwards     {best['plain x2']:.3f} s",
        f"paired + 2 unpaired  {best['paired']:.3f} s   ratio {r_paired:.3f}x",
    ]
    print("\n".join(lines))
    if args.write:
        body = ("## Statistics capture vs plain forward (`bench/bench_stats.py`)\n\n"
                f"Machine: {machine()}. Best of {args.repeats} alternating runs.\n\n```\n" + "\n".join(lines) + "\n```\n\n"
                f"Result: unpaired capture costs **{r_unpaired:.2f}x** the plain forward "
                f"({'meets' if r_unpaired <= 1.15 else 'misses'} the 1.15x target); the paired lock-step pass, which also "
                f"yields both models' unpaired statistics, costs {r_paired:.2f}x two plain forwards.")
        write_section("stats", body)


if __name__ == "__main__":
    main()
