"""Benchmark: weight work (merges and a transfer) against mergekit 0.1.5, side by side.

    python bench/bench_merge.py [--write] [--layers 24] [--cases linear,ties,...]

Three fp32 Llama checkpoints of about 1.3 GB each (hidden 1024, 24 layers, vocab 32000,
untied): a ``base`` of random weights and two fine-tunes of it (``a``, ``b``: base plus
small noise on every tensor). Each case runs once with ``mergekit-yaml`` (installed with the
``parity`` extra) and once with ``actc run`` on the same inputs, each into a fresh output:

* ``linear``: the two fine-tunes, equal weights;
* ``task_arithmetic``: onto the base, λ 1;
* ``ties``: onto the base, density 0.5;
* ``transfer``: actc only — 10 % of the channels of ``a`` by ``weight_delta`` into ``b``;
  mergekit has no such operation, and its ``linear`` merge of the pair is the reference
  (it reads the same two models and writes one).

Each command is measured whole, as a user runs it: CPU seconds (user + system, from the
kernel's accounting of the finished process: the machine may be busy) and the peak of its
private memory (``RssAnon``, sampled every 10 ms: memory-mapped checkpoint pages are the
page cache's, not the process's). actc runs with its weight-digest memo warm (each case ran
once before, untimed): inputs are hashed once per file state, as on any machine that ran
a spec before; ``--cold`` times the first run instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CASES = ("linear", "task_arithmetic", "ties", "transfer")


def _models(root: Path, layers: int) -> dict[str, Path]:
    """base, a and b; written a tensor at a time."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from actlang.run.checkpoint import natural_key
    from actlang.run.output import OutTensor, write_safetensors

    cfg = LlamaConfig(hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
                      num_key_value_heads=4, intermediate_size=2816, vocab_size=32000,
                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    layout = [OutTensor(n, torch.float32, shapes[n]) for n in sorted(shapes, key=natural_key)]
    dirs = {}
    for index, name in enumerate(("base", "a", "b")):
        directory = root / name
        directory.mkdir(parents=True)
        cfg.save_pretrained(directory)

        def tensor(n: str, index: int = index) -> torch.Tensor:
            seed = sum(map(ord, n))
            weights = torch.randn(shapes[n], generator=torch.Generator().manual_seed(seed)) * 0.02
            if index:  # a fine-tune: the base plus a small task vector
                g = torch.Generator().manual_seed(seed * 3 + index)
                weights += torch.randn(shapes[n], generator=g) * 0.002
            return weights

        write_safetensors(directory / "model.safetensors", layout, tensor)
        dirs[name] = directory
    return dirs


def _mergekit_config(case: str, dirs: dict[str, Path]) -> str:
    if case in ("linear", "transfer"):
        return (f"merge_method: linear\nmodels:\n  - model: {dirs['a']}\n    parameters: "
                f"{{weight: 1.0}}\n  - model: {dirs['b']}\n    parameters: {{weight: 1.0}}\n"
                "dtype: float32\n")
    density = "\n    parameters: {weight: 1.0, density: 0.5}" if case == "ties" else \
        "\n    parameters: {weight: 1.0}"
    return (f"merge_method: {case}\nbase_model: {dirs['base']}\nmodels:\n"
            f"  - model: {dirs['a']}{density}\n  - model: {dirs['b']}{density}\n"
            "dtype: float32\n")


def _actc_spec(case: str, dirs: dict[str, Path]) -> str:
    models = "".join(f'model {n} = local("{d}")\n' for n, d in dirs.items())
    if case == "transfer":
        return models + ('corpus none = lines(["x"])\nability any { probe = none }\n'
                         'surgery s -> "out" { target = b\n'
                         '  transfer any from a { budget = 10%  score = weight_delta }\n'
                         '  eval = [] }\n')
    if case == "linear":
        return models + 'surgery s -> "out" { target = a  merge linear from [a, b]  eval = [] }\n'
    density = "  density = 0.5" if case == "ties" else ""
    return models + (f'surgery s -> "out" {{ target = base\n  merge {case} from [a, b] {{ '
                     f'base = base{density} }}\n  eval = [] }}\n')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--cold", action="store_true", help="time actc's first run (hashing)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = ap.parse_args()
    from bench._common import machine, measure, write_section

    mergekit = shutil.which("mergekit-yaml", path=str(Path(sys.executable).parent))
    actc = shutil.which("actc", path=str(Path(sys.executable).parent))
    if mergekit is None:
        raise SystemExit("needs mergekit: pip install -e '.[parity]' -c .ci/torch-cpu.txt")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="actlang-bench-merge-"))
    try:
        dirs = _models(root / "models", args.layers)
        nbytes = (dirs["base"] / "model.safetensors").stat().st_size
        env = {**os.environ, "ACTLANG_CACHE_DIR": str(root / "cache")}
        rows = []
        for case in args.cases.split(","):
            work = root / case
            work.mkdir()
            (work / "config.yml").write_text(_mergekit_config(case, dirs))
            (work / "spec.act").write_text(_actc_spec(case, dirs))
            reference = measure([mergekit, "config.yml", "merged", "--quiet"], env, work)
            planned = subprocess.run([actc, "plan", "spec.act", "--json"], env=env, cwd=work,
                                     capture_output=True, text=True, check=True)
            estimate = json.loads(planned.stdout)["estimates"]["peak_memory_bytes"]
            run = [actc, "run", "spec.act", "--force", "--json"]
            if not args.cold:
                measure(run, env, work)  # the digest memo warm, as after any earlier run
            ours = measure(run, env, work)
            rows.append((case, reference, ours, estimate))
            print(f"{case:16s} CPU s {reference.cpu:6.1f} / {ours.cpu:6.1f} "
                  f"({ours.cpu / reference.cpu:.2f}x)   private MB "
                  f"{reference.private / 1e6:6.0f} / {ours.private / 1e6:6.0f} "
                  f"({ours.private / reference.private:.2f}x)   plan {estimate / 1e6:6.0f} "
                  f"({estimate / ours.rss:.2f}x peak RSS {ours.rss / 1e6:.0f})", flush=True)
            shutil.rmtree(work / "merged", ignore_errors=True)
            shutil.rmtree(work / "out", ignore_errors=True)
        table = ["| case | CPU s mergekit / actc | private peak MB mergekit / actc | "
                 "actc peak RSS MB | `actc plan` peak estimate MB |", "|---|---|---|---|---|"]
        table += [f"| {case}{' (mergekit: linear)' if case == 'transfer' else ''} | "
                  f"{r.cpu:.1f} / {o.cpu:.1f} ({o.cpu / r.cpu:.2f}x) | {r.private / 1e6:,.0f} / "
                  f"{o.private / 1e6:,.0f} ({o.private / r.private:.2f}x) | {o.rss / 1e6:,.0f} | "
                  f"{e / 1e6:,.0f} ({e / o.rss:.2f}x measured) |"
                  for case, r, o, e in rows]
        print("\n".join(table))
        if args.write:
            write_section("merge", "## Weight work vs mergekit 0.1.5 (`bench/bench_merge.py`)\n\n"
                          f"Machine: {machine()}. Three fp32 Llamas of {nbytes / 1e9:.2f} GB; "
                          "each command measured whole (CPU seconds; peak private memory, "
                          "RssAnon; actc's peak resident set, VmHWM, which `actc plan` "
                          "estimates: see the plan-memory section); actc "
                          f"{'with a cold' if args.cold else 'with a warm'} digest memo.\n\n"
                          + "\n".join(table))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
