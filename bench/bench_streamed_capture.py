"""Benchmark: layer-streamed paired capture of a pair larger than its memory limit
(issue 13, part 1).

    python bench/bench_streamed_capture.py [--write] [--workdir DIR]

Two Llama-shaped fp32 checkpoints of about 2.6 GB each (``bench_transfer_memory``'s, with 48
layers) and a memory limit of a third of their total (1.7 GB: well above what the Python
process with torch and transformers takes before it reads any weight, about 0.4 GB). Each method runs in a fresh subprocess over the same
random-token batches and saves its statistics:

* ``streamed``: :func:`actlang.run.streamed.collect_lockstep_stats_streamed` — one decoder
  layer of each model in memory at a time;
* ``in memory``: both models loaded whole, :func:`actlang.run.stats.collect_lockstep_stats`.

Prints each one's peak RSS (``VmHWM``: the whole process, interpreter and libraries
included) against the limit, and whether the two methods' statistics are equal.
Target: the streamed peak under the limit; statistics equal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYERS = 48

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
from actlang.arch.adapters import ChannelSpace
from actlang.run.corpus import Batch
method, target, donor, out = sys.argv[1:5]
space = ChannelSpace.from_pretrained(target)
entries = [e for e in space if e.hook is not None and not e.kind.startswith("lm_head")]
g = torch.Generator().manual_seed(0)
batches = []
for _ in range(8):
    ids = torch.randint(0, 32000, (4, 256), generator=g)
    mask = torch.ones_like(ids)
    batches.append(Batch(ids, mask, mask.bool()))
t = time.perf_counter()
if method == "streamed":
    from actlang.run.streamed import collect_lockstep_stats_streamed
    (result,) = collect_lockstep_stats_streamed([target, donor], space, batches, entries=entries)
else:
    from transformers import AutoModelForCausalLM
    from actlang.run.stats import collect_lockstep_stats
    a, b = (AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32) for d in (target, donor))
    (result,) = collect_lockstep_stats(a, [b], space, batches, entries=entries)
seconds = time.perf_counter() - t
result.paired.save(out)
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
            if line.startswith("VmHWM:"))
print(json.dumps({"peak": peak, "seconds": seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--write", action="store_true", help="record it in BENCHMARKS.md")
    args = parser.parse_args()
    from bench._common import machine, write_section
    from bench.bench_transfer_memory import make_models

    root = args.workdir or Path(tempfile.mkdtemp(prefix="actlang-bench-"))
    try:
        target, donor, nbytes, _ = make_models(root, layers=LAYERS)
        limit = 2 * nbytes / 3
        results = {}
        for method in ("streamed", "in memory"):
            out = root / f"{method.replace(' ', '-')}.safetensors"
            proc = subprocess.run([sys.executable, "-c", CHILD, method, str(target), str(donor),
                                   str(out)], capture_output=True, text=True,
                                  cwd=Path(__file__).resolve().parent.parent)
            if proc.returncode:
                raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
            results[method] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "file": out}
        from actlang.run.stats import ChannelStats

        streamed, whole = (ChannelStats.load(results[m]["file"]) for m in results)
        equal = streamed.allclose(whole, rtol=0.0)
        lines = [f"pair: 2 x {nbytes / 1e9:.2f} GB (Llama config, hidden 1024, {LAYERS} layers, vocab "
                 f"32000, fp32) = {2 * nbytes / 1e9:.2f} GB; limit {limit / 1e9:.2f} GB (a third)",
                 "data: 8 batches x 4 x 256 tokens; every hooked module but the output head"]
        for method, r in results.items():
            lines.append(f"{method:10s} peak RSS {r['peak'] / 1e9:5.2f} GB = "
                         f"{r['peak'] / limit:4.2f} x the limit   ({r['seconds']:.1f} s)")
        lines.append(f"statistics equal (bit for bit): {equal}")
        print("\n".join(lines))
        if args.write:
            under = results["streamed"]["peak"] < limit
            write_section("streamed-capture", (
                "## Layer-streamed capture (`bench/bench_streamed_capture.py`)\n\n"
                f"Machine: {machine()}. Each method in a fresh process; peak RSS is the whole "
                "process's (VmHWM).\n\n```\n" + "\n".join(lines) + "\n```\n\n"
                f"Result: the streamed capture of a pair three times its memory limit peaks at "
                f"**{results['streamed']['peak'] / 1e9:.2f} GB** "
                f"({'under' if under else 'over'} the {limit / 1e9:.2f} GB limit); loading "
                f"the pair needs {results['in memory']['peak'] / 1e9:.2f} GB; the statistics "
                f"are {'identical' if equal else 'NOT identical'}."))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
