"""``gguf(...)`` through the installed ``actc run``: a tiny synthetic Llama GGUF is converted
once into the cache, receives channels from a perturbed copy, and the output loads; a second
run is entirely cached and converts nothing. Without the ``gguf`` package the run fails at
the model's declaration and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from actlang.run.gguf import convert_gguf
from tests.test_layers import _actc

from .conftest import run_json
from .test_gguf_convert import write_tiny_llama

pytestmark = pytest.mark.slow

SPEC = """\
model base = gguf("models/tiny.gguf")
model tuned = local("perturbed")
corpus probe = lines(["the t", "a cat and the t", "the the t t"])
ability a {
  probe = probe
  eval = perplexity(probe)
}
surgery s -> "out" {
  target = base
  transfer a from tuned { channels = [attn.*, mlp.*]  budget = 5% }
}
"""


def perturbed_copy(gguf: Path, out: Path) -> Path:
    """The GGUF model converted, with the first rows of every MLP up projection moved."""
    convert_gguf(gguf, out)
    weights = out / "model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(0)
    for name, tensor in tensors.items():
        if name.endswith("mlp.up_proj.weight"):
            tensor[:4] += torch.randn(tensor[:4].shape, generator=generator)
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    gguf = write_tiny_llama(tmp_path / "models" / "tiny.gguf", tied=True)
    perturbed_copy(gguf, tmp_path / "perturbed")
    path = tmp_path / "s.act"
    path.write_text(SPEC)
    return path


def test_actc_run_converts_once_and_transfers(actc, spec: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    first = run_json(actc, spec)
    converted = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
    stamp = (converted[0] / "model.safetensors").stat().st_mtime_ns
    assert any(op["status"] == "done" for op in first["ops"])

    out = tmp_path / "out"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama"
    base = load_file(converted[0] / "model.safetensors")
    donor = load_file(tmp_path / "perturbed" / "model.safetensors")
    moved = load_file(out / "model.safetensors")
    changed = [n for n in base if not torch.equal(base[n], moved[n])]
    assert changed and all(n.endswith("mlp.up_proj.weight") for n in changed)
    for name in changed:  # every changed row is the donor's
        rows = (base[name] != moved[name]).any(dim=1)
        assert torch.equal(moved[name][rows], donor[name][rows])
    card = (out / "README.md").read_text()
    assert str((tmp_path / "models" / "tiny.gguf").resolve()) in card
    lock = json.loads((tmp_path / "s.act.lock").read_text())["models"]["base"]
    assert lock["source"] == "gguf" and lock["resolved"] == str(converted[0])

    second = run_json(actc, spec)
    assert second["ops"] and all(op["status"] == "cached" for op in second["ops"])
    assert second["counters"]["forward_passes"] == 0
    assert list((tmp_path / "cache" / "gguf").iterdir()) == converted
    assert (converted[0] / "model.safetensors").stat().st_mtime_ns == stamp  # converted once

    plan = json.loads(actc("plan", "--json", str(spec)).stdout)
    assert plan["models"]["base"]["built"] and plan["models"]["base"]["path"] == str(converted[0])


def test_without_the_gguf_package_the_run_fails_at_the_declaration(spec: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.setenv("ACTLANG_CACHE_DIR", str(tmp_path / "cache"))
    done = _actc(["run", str(spec)], {"gguf"}, tmp_path)
    assert done.returncode == 1, done.stderr
    assert "error[E501]" in done.stderr and "needs the gguf package" in done.stderr
    assert "s.act:1:1" in done.stderr and "^^^" in done.stderr
    assert "help: pip install gguf accelerate" in done.stderr
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.act.lock").exists()
