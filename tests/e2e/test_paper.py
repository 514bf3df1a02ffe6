"""The paper in miniature, end to end: a small zoo, `actc run` in subprocesses, numbers checked.

Must hold (issue 5): forgetting is real; a 100 % copy restores the donor; a 0 % budget changes
nothing; a masked fine-tune changes only masked channels; transfer + masked fine-tune beats the
masked fine-tune alone on the same rows and steps; runs are bit-for-bit deterministic.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from actlang.run.mask import ChannelMask

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runner(small_zoo, zoo_cache_dir):
    """`actc` using the session's cache, which holds the small zoo (built once a session)."""
    env = {**os.environ, "ACTLANG_CACHE_DIR": str(zoo_cache_dir), "ACTLANG_ZOO_PROFILE": "small"}
    executable = shutil.which("actc", path=str(Path(sys.executable).parent))
    assert executable

    def run(*args: str, cwd: Path) -> dict:
        result = subprocess.run([executable, "run", "--json", *args], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=1800)
        assert result.returncode in (0, 3), result.stderr[-4000:]
        return json.loads(result.stdout)
    return run


def surgery(report: dict, name: str, **sweep: str) -> dict:
    return next(s for s in report["surgeries"] if s["name"] == name and
                all(s["sweep"].get(k) == v for k, v in sweep.items()))


def tensors(directory: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(directory) / "model.safetensors")


def test_recover_example(runner, tmp_path) -> None:
    # A copy: a run writes the spec's lock file beside it, and tests never write into the
    # repository (the example imports only the stdlib, so it runs the same from anywhere).
    shutil.copy(ROOT / "examples" / "recover.act", tmp_path / "recover.act")
    report = runner("recover.act", "--output", "first", cwd=tmp_path)
    recover = surgery(report, "recover")
    evals = recover["evals"]["zoo.arithmetic"]
    target, donor = evals["target (zoo.lang_b_planted)"], evals["donor (zoo.lang_b_specialist)"]
    assert donor >= 0.5, f"the specialist should know most of the sums: {evals}"
    assert target <= 0.5 * donor, f"forgetting is not real: {evals}"
    assert evals["after finetune"] >= 0.5 * donor, evals
    language_b = recover["evals"]["zoo.language_b"]
    assert language_b["target (zoo.lang_b_planted)"] >= 0.3, f"the target knows B: {language_b}"
    assert language_b["after finetune"] >= 0.9 * language_b["target (zoo.lang_b_planted)"]
    gates = recover["gates"]
    assert len(gates) == 3 and all(g["passed"] for g in gates), gates
    again = runner("recover.act", "--output", "second", cwd=tmp_path)
    assert again["counters"]["forward_passes"] == 0  # statistics cached
    assert (tmp_path / "first/model.safetensors").read_bytes() == \
        (tmp_path / "second/model.safetensors").read_bytes()


def test_localized_forgetting_needs_the_activation_guided_channels(runner, tmp_path) -> None:
    """Where the largest weight changes are not the damage (lang_b_planted), the channels
    whose own change moves their output on the arithmetic probe find more of the damaged
    rows and restore more arithmetic than weight-delta or random channels of the same
    budget, and the transfer adds to the same short masked fine-tune alone."""
    shutil.copy(Path(__file__).with_name("localized_forgetting.act"), tmp_path / "spec.act")
    report = runner("spec.act", cwd=tmp_path)

    def point(score: str, lam: str) -> tuple[dict, float]:
        found = surgery(report, "channels", score=score, **{"lambda": lam})
        truth = json.loads((Path(found["output"]) / "report.json").read_text())["truth"]
        return found["evals"]["zoo.arithmetic"], next(iter(truth.values()))["precision"]

    local, local_precision = point("local_absdiff", "1.0")
    alone, _ = point("local_absdiff", "0.0")  # the same channels, nothing copied
    delta, delta_precision = point("weight_delta", "1.0")
    rand, rand_precision = point("random(seed=0)", "1.0")
    assert local_precision > delta_precision > rand_precision
    assert local["after transfer"] >= delta["after transfer"] + 0.1, (local, delta)
    assert local["after transfer"] >= rand["after transfer"] + 0.1, (local, rand)
    assert local["after finetune"] >= alone["after finetune"] + 0.2, (local, alone)


def test_merge_example(runner, small_zoo, tmp_path) -> None:
    """Two sparse specialists merged by channels keep at least 80 % of each ability (the
    example's gates), more than a linear merge of the same two models keeps; the merged
    model differs from the parent only in MLP neurons of the layers the specialists trained."""
    shutil.copy(ROOT / "examples" / "merge.act", tmp_path / "merge.act")
    report = runner("merge.act", cwd=tmp_path)
    merged, linear = surgery(report, "merged"), surgery(report, "linear_baseline")
    gates = merged["gates"]
    assert len(gates) == 2 and all(g["passed"] for g in gates), gates
    for ability in ("zoo.facts", "zoo.translate"):
        evals = merged["evals"][ability]
        assert evals["target (zoo.parent)"] <= 0.2, evals  # the parent did not know it
        assert evals["after transfer"] > linear["evals"][ability]["after merge"], (
            evals, linear["evals"][ability])
    parent = tensors(small_zoo.model_path("parent"))
    out = tensors(tmp_path / "out/merge")
    first = json.loads((small_zoo.root / "ground_truth/sparse.json").read_text())["first_layer"]
    for name in parent:
        if not torch.equal(parent[name], out[name]):
            assert ".mlp." in name and int(name.split(".")[2]) >= first, name


def test_must_hold(runner, tmp_path) -> None:
    shutil.copy(Path(__file__).with_name("must_hold.act"), tmp_path / "spec.act")
    report = runner("spec.act", cwd=tmp_path)

    copy_all = surgery(report, "copy_all")["evals"]["zoo.arithmetic"]
    assert copy_all["after transfer"] == copy_all["donor (zoo.base)"]
    zoo_dir = Path(json.loads((tmp_path / "spec.act.lock").read_text())
                   ["models"]["zoo.base"]["resolved"])
    base, tuned = tensors(zoo_dir), tensors(zoo_dir.parent / "tuned")
    copied = tensors(tmp_path / "out/copy_all")
    assert all(torch.equal(copied[k], base[k]) for k in copied)

    nothing = tensors(tmp_path / "out/nothing")
    assert all(torch.equal(nothing[k], tuned[k]) for k in nothing)

    alone = tensors(tmp_path / "out/act/lambda=0.0")
    mask = ChannelMask.load(tmp_path / "out/act/lambda=0.0/masks/donor-0.safetensors")
    changed_inside = changed_outside = 0
    for name, value in alone.items():
        allowed = mask.element_mask(name, tuple(value.shape))
        if allowed is None:
            allowed = torch.zeros_like(value, dtype=torch.bool)
        changed = value != tuned[name]
        changed_outside += int((changed & ~allowed).sum())
        changed_inside += int((changed & allowed).sum())
    assert changed_outside == 0 and changed_inside > 0

    with_transfer = surgery(report, "act", **{"lambda": "1.0"})["evals"]["zoo.arithmetic"]
    without = surgery(report, "act", **{"lambda": "0.0"})["evals"]["zoo.arithmetic"]
    assert with_transfer["after finetune"] > without["after finetune"], (with_transfer, without)
