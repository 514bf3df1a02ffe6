"""`actc plan` latency on a 70B-parameter config (issue 4; target < 1 s).

Two config-only model directories (Llama-3-70B shapes, no weights) and a spec that selects
1 % of their attention and MLP channels. Prints the in-process planning time (check + plan,
median of several runs, after imports) and the whole `actc plan` command's wall time (which
adds interpreter start-up and imports), so the two can be compared in the same run.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record it in BENCHMARKS.md")
    args = parser.parse_args()
    from transformers import LlamaConfig

    from actlang.compile.cache import Cache
    from actlang.compile.plan import make_plan
    from actlang.lang.checker import check_file

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                             num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                             dtype="bfloat16")
        for name in ("base", "tuned"):
            config.save_pretrained(root / name)
        spec = root / "spec.act"
        spec.write_text('model base = local("base")\nmodel tuned = local("tuned")\n'
                        'ability a { probe = lines(["an example"]) }\n'
                        'surgery s -> "out" { target = tuned transfer a from base '
                        '{ channels = attn + mlp budget = 1% } }\n')
        cache = Cache(root / "cache")
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            plan = make_plan(check_file(spec), cache)
            timings.append(time.perf_counter() - start)
        actc = shutil.which("actc", path=str(Path(sys.executable).parent))
        start = time.perf_counter()
        subprocess.run([actc, "plan", str(spec)], check=True, capture_output=True,
                       env={**os.environ, "ACTLANG_CACHE_DIR": str(root / "cache")})
        command = time.perf_counter() - start
        median = statistics.median(timings)
        print(json.dumps({
            "parameters": plan.models["base"].parameters,
            "plan_seconds_median": round(median, 4),
            "plan_seconds_first": round(timings[0], 4),
            "actc_plan_command_seconds": round(command, 2),
            "target": "plan < 1 s"}, indent=2))
    if args.write:
        write_section("plan", f"""## `actc plan` latency on a 70B config (`bench/bench_plan.py`)

Machine: {machine()}. Two directories holding only a Llama-3-70B `config.json`
({plan.models["base"].parameters:,} parameters, no weights); 1 % of attention + MLP channels.

```
make_plan, in-process (median of 5)   {median:7.3f} s   (first call {timings[0]:.3f} s)
actc plan, whole command              {command:7.3f} s   (interpreter start-up and imports included)
```

Result: planning takes **{median * 1000:.0f} ms** in-process and {command:.2f} s as a command
(target < 1 s). The planner imports neither torch nor transformers for a config-only model.
""")


if __name__ == "__main__":
    main()
