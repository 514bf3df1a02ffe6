"""Benchmark: statistics capture with forward hooks vs the same forward passes without hooks.

    python bench/bench_stats.py [--write] [--repeats N] [--shapes 1b-width,tiny]
                                [--device cuda --dtype bfloat16]

Llama-shaped models are built from configs (random weights, fp32); the same batches run
(a) plainly, (b) with unpaired statistics (all five fields) hooked on every default module,
and (c) in lock-step with a second model for paired statistics (against two plain passes).
Each variant runs over the whole corpus, as ``actc run`` collects once per corpus; the
variants alternate ``--repeats`` times and the fastest run of each counts (the VM's timing
varies by +-5 % from run to run); the median ratio of adjacent runs is printed too.

Two shapes: ``1b-width`` has the layer widths of a 1B-class model (hidden 2048, MLP 8192,
as Llama 3.2 1B) on 2 layers; ``tiny`` (hidden 512) is the worst case — the hooks' work
grows with the width, the forward's with its square. Target: unpaired capture <= 1.15x the
plain forward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import machine, write_section  # noqa: E402

TARGET = 1.15


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    batch: int
    seq: int = 256
    batches: int = 4


SHAPES = {
    "1b-width": Shape(hidden=2048, intermediate=8192, layers=2, heads=16, kv_heads=8, batch=4),
    "tiny": Shape(hidden=512, intermediate=1408, layers=6, heads=8, kv_heads=4, batch=8),
}


def measure(name: str, shape: Shape, repeats: int, device: torch.device = torch.device("cpu"),
            dtype: torch.dtype = torch.float32) -> tuple[list[str], float]:
    """Run the variants on one shape; return report lines and the unpaired wall ratio."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from actlang.arch.adapters import ChannelSpace
    from actlang.run.corpus import Batch
    from actlang.run.stats import (
        collect_paired_stats,
        collect_stats,
        default_stat_entries,
    )

    cfg = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                      num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                      num_key_value_heads=shape.kv_heads, vocab_size=8000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        m1 = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
        torch.manual_seed(1)
        m2 = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    space = ChannelSpace.from_config(cfg)
    entries = default_stat_entries(space)
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(shape.batches):
        ids = torch.randint(0, cfg.vocab_size, (shape.batch, shape.seq), generator=g)
        att = torch.ones_like(ids)
        att[: shape.batch // 2, -shape.seq // 8 :] = 0  # some padding, as real corpora have
        batches.append(Batch(ids, att, att.bool()).to(device))
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
    runs["plain"]()  # warm-up
    runs["unpaired"]()
    best = {k: float("inf") for k in runs}
    cpu = {k: float("inf") for k in runs}
    pair_ratios: dict[str, list[float]] = {"unpaired": [], "paired": []}
    for _ in range(repeats):
        took = {}
        for k, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            if device.type == "cuda":  # kernels run asynchronously: time their end
                torch.cuda.synchronize()
            took[k] = time.perf_counter() - t
            best[k] = min(best[k], took[k])
            cpu[k] = min(cpu[k], time.process_time() - c)
        pair_ratios["unpaired"].append(took["unpaired"] / took["plain"])
        pair_ratios["paired"].append(took["paired"] / took["plain x2"])
    r_unpaired = best["unpaired"] / best["plain"]
    r_paired = best["paired"] / best["plain x2"]
    n_params = sum(p.numel() for p in m1.model.layers.parameters())
    lines = [
        f"[{name}] Llama config, hidden {shape.hidden}, MLP {shape.intermediate}, {shape.layers} layers "
        f"({n_params / 1e6:.0f}M parameters in layers), {str(dtype)[6:]} on {device}; "
        f"{len(entries)} hooked modules "
        f"({space.n_channels(entries)} channels)",
        f"data: {shape.batches} batches x {shape.batch} x {shape.seq} tokens ({tokens} scored, padding excluded)",
        "                     wall (best)          process CPU time (best)",
        f"plain forward        {best['plain']:7.3f} s            {cpu['plain']:7.3f} s",
        f"unpaired statistics  {best['unpaired']:7.3f} s  {r_unpaired:.3f}x   {cpu['unpaired']:7.3f} s  "
        f"{cpu['unpaired'] / cpu['plain']:.3f}x   (target <= {TARGET}x)",
        f"2 plain forwards     {best['plain x2']:7.3f} s            {cpu['plain x2']:7.3f} s",
        f"paired + 2 unpaired  {best['paired']:7.3f} s  {r_paired:.3f}x   {cpu['paired']:7.3f} s  "
        f"{cpu['paired'] / cpu['plain x2']:.3f}x",
        f"median ratio of adjacent runs: unpaired {statistics.median(pair_ratios['unpaired']):.3f}x, "
        f"paired {statistics.median(pair_ratios['paired']):.3f}x ({repeats} pairs)",
    ]
    return lines, r_unpaired


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of: {', '.join(SHAPES)}")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--write", action="store_true", help="record the result in BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    blocks, ratios = [], {}
    for name in args.shapes.split(","):
        lines, ratios[name] = measure(name, SHAPES[name], args.repeats, torch.device(args.device),
                                      getattr(torch, args.dtype))
        print("\n".join(lines) + "\n", flush=True)
        blocks.append("\n".join(lines))
    if args.write:
        verdict = "; ".join(f"{name}: **{r:.2f}x** ({'meets' if r <= TARGET else 'misses'} the {TARGET}x target)"
                            for name, r in ratios.items())
        body = ("## Statistics capture vs plain forward (`bench/bench_stats.py`)\n\n"
                f"Machine: {machine()}. Each variant over the whole corpus, the fastest of {args.repeats} "
                "alternating runs.\n\n```\n" + "\n\n".join(blocks) + "\n```\n\n"
                f"Result, unpaired capture against the plain forward in wall time: {verdict}. The paired "
                "lock-step pass, which also yields both models' unpaired statistics, is compared with two "
                "plain forwards.")
        write_section("stats", body)


if __name__ == "__main__":
    main()
