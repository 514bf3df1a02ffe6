"""`actc plan` latency on a 70B-parameter config (issue 4: < 1 s; issue 11: < 3 s derived).

Two config-only model directories (70B shapes, no weights) and a spec that selects 1 % of
their attention and MLP channels, for a curated architecture (llama) and a derived one
(olmo2). Prints the in-process planning time (check + plan, median of several runs, after
imports) and the whole `actc plan` command's wall time, cold and warm, so the two can be
compared in the same run.

    .venv/bin/python bench/bench_plan.py [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import machine, write_section  # noqa: E402

SPEC = ('model base = local("base")\nmodel tuned = local("tuned")\n'
        'ability a { probe = lines(["an example"]) }\n'
        'surgery s -> "out" { target = tuned transfer a from base '
        '{ channels = attn + mlp budget = 1% } }\n')
#: Llama-3-70B shapes; OLMo 2 has no curated adapter, so its space is derived.
SHAPES = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
              num_attention_heads=64, num_key_value_heads=8, vocab_size=128256)


def measure(root: Path, model_type: str) -> dict[str, float]:
    """In-process planning (median of 5, after the first) and the `actc plan` command, with
    an empty cache (cold: a derived space is derived) and again (warm: read back)."""
    from transformers import AutoConfig

    from actlang.compile.cache import Cache
    from actlang.compile.plan import make_plan
    from actlang.lang.checker import check_file

    config = AutoConfig.for_model(model_type, **SHAPES, dtype="bfloat16")
    for name in ("base", "tuned"):
        config.save_pretrained(root / name)
    spec = root / "spec.act"
    spec.write_text(SPEC)
    actc = shutil.which("actc", path=str(Path(sys.executable).parent))
    env = {**os.environ, "ACTLANG_CACHE_DIR": str(root / "command-cache")}
    commands = []
    for _ in range(2):  # cold, then warm
        start = time.perf_counter()
        subprocess.run([actc, "plan", str(spec)], check=True, capture_output=True, env=env)
        commands.append(time.perf_counter() - start)
    cache = Cache(root / "cache")
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        plan = make_plan(check_file(spec), cache)
        timings.append(time.perf_counter() - start)
    return {"parameters": plan.models["base"].parameters,
            "plan_seconds_median": round(statistics.median(timings[1:]), 4),
            "plan_seconds_first": round(timings[0], 4),
            "actc_plan_cold_seconds": round(commands[0], 2),
            "actc_plan_warm_seconds": round(commands[1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record it in BENCHMARKS.md")
    args = parser.parse_args()
    results = {}
    for model_type in ("llama", "olmo2"):
        with tempfile.TemporaryDirectory() as tmp:
            results[model_type] = measure(Path(tmp), model_type)
    curated, derived = results["llama"], results["olmo2"]
    ratio = derived["actc_plan_warm_seconds"] / curated["actc_plan_warm_seconds"]
    print(json.dumps({**results, "derived_over_curated_warm_command": round(ratio, 2),
                      "target": "curated plan < 1 s; derived plan < 3 s"}, indent=2))
    if args.write:
        write_section("plan", f"""## `actc plan` latency on a 70B config (`bench/bench_plan.py`)

Machine: {machine()}. Two directories holding only a 70B `config.json`
({curated["parameters"]:,} parameters, Llama-3-70B shapes, no weights); 1 % of attention + MLP
channels. `llama` has a curated adapter; `olmo2` has none, so its channel space is derived
from its module tree (instantiated on the meta device) the first time, then read back from
the cache.

```
                                       llama (curated)   olmo2 (derived)
make_plan, in-process (median of 4)    {curated["plan_seconds_median"]:9.3f} s   {derived["plan_seconds_median"]:9.3f} s
make_plan, first call                  {curated["plan_seconds_first"]:9.3f} s   {derived["plan_seconds_first"]:9.3f} s
actc plan, empty cache                 {curated["actc_plan_cold_seconds"]:9.2f} s   {derived["actc_plan_cold_seconds"]:9.2f} s
actc plan, again                       {curated["actc_plan_warm_seconds"]:9.2f} s   {derived["actc_plan_warm_seconds"]:9.2f} s
```

Result: a derived architecture plans in {derived["actc_plan_warm_seconds"]:.2f} s once its space is cached
({ratio:.2f}x the curated one; target < 3 s). The first plan pays for importing torch,
transformers and the model's modelling code and for building the model on the meta device
({derived["actc_plan_cold_seconds"]:.2f} s as a command here). A curated architecture never imports torch.
""")


if __name__ == "__main__":
    main()
