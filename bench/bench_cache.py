"""Cold run vs warm re-run with a changed budget (issue 4).

A model where capture dominates (a ~25M-parameter Llama, a probe corpus of many tokens) is
run once with an empty statistics cache, then again after changing only the budget. The warm
run must skip every forward pass; target: warm <= 10 % of cold. Both are timed in-process
(plan + execute), so interpreter start-up is not counted; the ratio is printed.

    .venv/bin/python bench/bench_cache.py [--layers 8] [--hidden 512] [--documents 512] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import machine, write_section  # noqa: E402


def build(root: Path, layers: int, hidden: int, documents: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from actlang.zoo.tokenizer import build_tokenizer

    words = [f"w{i}" for i in range(500)]
    tokenizer = build_tokenizer(words, model_max_length=256)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                         vocab_size=len(tokenizer), max_position_embeddings=256)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    tuned = LlamaForCausalLM(config)
    for name, model in (("base", base), ("tuned", tuned)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    generator = torch.Generator().manual_seed(0)
    with open(root / "probe.txt", "w") as handle:
        for _ in range(documents):
            ids = torch.randint(0, len(words), (120,), generator=generator).tolist()
            handle.write(" ".join(words[i] for i in ids) + "\n")
    spec = root / "spec.act"
    spec.write_text('''
model base = local("base")
model tuned = local("tuned")
ability a { probe = text("probe.txt") }
surgery s -> "out" { target = tuned  transfer a from base { budget = 2% } }
''')
    return spec


def timed_run(spec: Path, cache_dir: Path) -> tuple[float, int]:
    from actlang.compile.cache import Cache
    from actlang.compile.plan import make_plan
    from actlang.lang.checker import check_file
    from actlang.run.executor import Executor

    start = time.perf_counter()
    cache = Cache(cache_dir)
    plan = make_plan(check_file(spec), cache, dry_run=False)
    result = Executor(plan, cache, force=True).run()
    return time.perf_counter() - start, result.counters["forward_passes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--documents", type=int, default=512)
    parser.add_argument("--write", action="store_true", help="record it in BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = build(root, args.layers, args.hidden, args.documents)
        cold, cold_passes = timed_run(spec, root / "cache")
        spec.write_text(spec.read_text().replace("budget = 2%", "budget = 5%"))
        warm, warm_passes = timed_run(spec, root / "cache")
    result = {"cold_seconds": round(cold, 2), "warm_seconds": round(warm, 2),
              "warm_over_cold": round(warm / cold, 3), "cold_forward_passes": cold_passes,
              "warm_forward_passes": warm_passes, "target": "warm <= 0.10 x cold"}
    print(json.dumps(result, indent=2))
    if args.write:
        verdict = "meets" if warm <= 0.10 * cold else "misses"
        write_section("cache", f"""## Cold run vs warm re-run with a changed budget (`bench/bench_cache.py`)

Machine: {machine()}. In-process `make_plan` + `Executor.run` (no interpreter start-up).

```
model: Llama, hidden {args.hidden}, {args.layers} layers; probe: {args.documents} documents x 121 tokens
cold run (empty cache)          {cold:8.2f} s   {cold_passes} forward passes
warm re-run, budget 2% -> 5%    {warm:8.2f} s   {warm_passes} forward passes
warm / cold                     {warm / cold:8.3f}      (target <= 0.10)
```

Result: the warm re-run takes **{warm / cold:.1%}** of the cold run ({verdict} the 10 % target):
the statistics come from the cache, so only scoring, selection, transfer and saving run.
""")


if __name__ == "__main__":
    main()
