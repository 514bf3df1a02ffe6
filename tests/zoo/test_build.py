"""Fast checks of the build pipeline on the ``tiny`` profile (seconds; models learn nothing)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from actlang.arch.zoo import MODELS, cache_root, load_zoo, zoo_config, zoo_key
from actlang.zoo import build as build_module
from actlang.zoo.build import build_zoo
from actlang.zoo.data import ABILITIES


def _digests(zoo) -> dict[str, str]:
    return {
        m: hashlib.sha256((zoo.model_path(m) / "model.safetensors").read_bytes()).hexdigest()
        for m in MODELS
    }


def test_manifest(tiny_zoo):
    z = tiny_zoo
    assert z.profile == "tiny" and z.seed == 0
    assert set(z.models) == set(MODELS)
    assert z.root.name.startswith("tiny-s0-")
    assert z.root.parent == cache_root()
    for m in MODELS:
        d = z.model_path(m)
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (d / f).is_file(), (m, f)
        assert set(z.accuracy[m]) == set(ABILITIES)
        assert all(0.0 <= v <= 1.0 for v in z.accuracy[m].values())
        assert set(z.data["perplexity"][m]) == {"lang_a", "lang_b"}
    for ab, splits in z.data["corpora"].items():
        for split in splits:
            assert z.corpus_path(ab, split).is_file()
    assert z.build_seconds > 0
    assert z.data["scenarios"]["recover"] == {"donor": "base", "target": "tuned",
                                              "lost": "arithmetic", "gained": "lang_b"}
    json.loads((z.root / "zoo.json").read_text())


def test_models_load_with_transformers(tiny_zoo):
    d = tiny_zoo.model_path("tuned")
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    assert model.config.vocab_size == len(tok)
    out = model(**tok(["the cat"], return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)


def test_a_built_zoo_is_returned_without_building(tiny_zoo, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a built zoo was built again")

    monkeypatch.setattr(build_module, "_build_into", no_build)
    again = build_zoo(seed=0, profile="tiny")
    assert again.root == tiny_zoo.root and again.data == tiny_zoo.data
    with pytest.raises(AssertionError, match="built again"):  # force: it does build
        build_zoo(seed=0, profile="tiny", force=True)
    assert load_zoo(tiny_zoo.root).data == tiny_zoo.data  # a failed rebuild keeps the zoo


def test_key_depends_on_config_and_seed():
    cfg = zoo_config("tiny")
    assert zoo_key(cfg, 0) == zoo_key(cfg, 0)
    assert zoo_key(cfg, 0) != zoo_key(cfg, 1)
    assert zoo_key(cfg, 0) != zoo_key(zoo_config("small"), 0)


def test_deterministic_bytes(tiny_zoo, tmp_path):
    other = build_zoo(tmp_path, seed=0, profile="tiny")
    assert other.root != tiny_zoo.root
    assert _digests(other) == _digests(tiny_zoo)
    assert other.accuracy == tiny_zoo.accuracy


def test_different_seed_differs(tiny_zoo, tmp_path):
    other = build_zoo(tmp_path, seed=1, profile="tiny")
    assert _digests(other)["base"] != _digests(tiny_zoo)["base"]


def _changed_rows(a: dict, b: dict) -> dict[str, set[int]]:
    out = {}
    for name in a:
        diff = a[name] != b[name]
        if diff.any():
            rows = diff.reshape(diff.shape[0], -1).any(dim=1) if diff.ndim > 1 else diff
            out[name] = set(torch.nonzero(rows).flatten().tolist())
    return out


def test_planted_changes_only_ground_truth_rows(tiny_zoo):
    gt = tiny_zoo.ground_truth()
    total = gt["total_rows"]
    assert gt["n_damage"] == round(gt["fraction"] * total)
    damage = {k: set(v) for k, v in gt["damage"].items()}
    decoy = {k: set(v) for k, v in gt["decoy"].items()}
    assert not any(damage.get(k, set()) & rows for k, rows in decoy.items())
    base = load_file(tiny_zoo.model_path("base") / "model.safetensors")
    planted = load_file(tiny_zoo.model_path("planted") / "model.safetensors")
    changed = _changed_rows(base, planted)
    assert changed  # the fine-tune did change something
    for name, rows in changed.items():
        assert rows <= damage.get(name, set()), name
    both = load_file(tiny_zoo.model_path("planted_decoy") / "model.safetensors")
    for name, rows in _changed_rows(base, both).items():
        assert rows <= damage.get(name, set()) | decoy.get(name, set()), name
    # in the language-B specialist every parameter drifted first, so rows outside the
    # ground truth differ too; its own, wider decoy set (10 % of the rows, disjoint from
    # the damage) and the damage tensors are among the changed ones
    decoy_b = {k: set(v) for k, v in gt["decoy_b"].items()}
    assert gt["n_decoy_b"] == sum(map(len, decoy_b.values())) > 2 * gt["n_damage"]
    assert not any(damage.get(k, set()) & rows for k, rows in decoy_b.items())
    specialist = load_file(tiny_zoo.model_path("lang_b") / "model.safetensors")
    broken = load_file(tiny_zoo.model_path("lang_b_planted") / "model.safetensors")
    assert set(_changed_rows(specialist, broken)) >= set(damage) | set(decoy_b)
    delta = gt["mean_row_delta_l2"]["lang_b_planted"]
    assert delta["damage"] > 0 and delta["decoy"] > 0


def test_sparse_specialists_change_only_their_own_disjoint_neurons(tiny_zoo):
    """Each sparse specialist differs from the parent only in its ground-truth MLP neurons
    (gate and up rows, down column), the two sets are disjoint, and layers below
    ``first_layer`` have none."""
    truth = json.loads((tiny_zoo.root / "ground_truth" / "sparse.json").read_text())
    neurons = {name: {int(layer): set(n) for layer, n in by_layer.items()}
               for name, by_layer in truth["neurons"].items()}
    assert set(neurons) == {"facts_sparse", "translate_sparse"}
    for layer, chosen in neurons["facts_sparse"].items():
        assert not chosen & neurons["translate_sparse"][layer]
        assert bool(chosen) == (layer >= truth["first_layer"])
    parent = load_file(tiny_zoo.model_path("parent") / "model.safetensors")
    for name, by_layer in neurons.items():
        specialist = load_file(tiny_zoo.model_path(name) / "model.safetensors")
        changed = {k for k in parent if not torch.equal(parent[k], specialist[k])}
        assert changed and all(".mlp." in k for k in changed), name
        for k in changed:
            layer = int(k.split(".")[2])
            axis = 0 if "down_proj" in k else 1
            moved = (parent[k] != specialist[k]).any(dim=axis)
            assert set(torch.nonzero(moved).flatten().tolist()) <= by_layer[layer], (name, k)


def test_interrupted_build_leaves_nothing(tmp_path):
    calls = []

    def log(msg):
        calls.append(msg)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_zoo(tmp_path, seed=5, profile="tiny", log=log)
    assert list(tmp_path.iterdir()) == []
    z = build_zoo(tmp_path, seed=5, profile="tiny")
    assert [p.name for p in tmp_path.iterdir()] == [z.root.name]
    assert load_zoo(z.root).data == z.data


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTLANG_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path / "zoo"
    monkeypatch.delenv("ACTLANG_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "actlang" / "zoo"


def test_zoo_model_path_builds_on_first_use(tmp_path):
    from actlang.zoo.build import zoo_model_path

    path = zoo_model_path("planted", seed=2, profile="tiny", root=tmp_path)
    assert (path / "model.safetensors").is_file()
    assert zoo_model_path("planted", seed=2, profile="tiny", root=tmp_path) == path
    with pytest.raises(KeyError):
        zoo_model_path("nope", profile="tiny", root=tmp_path)


def test_progress_counts_every_training_step_of_the_build(tmp_path):
    seen: list[tuple[str, int, int]] = []
    build_zoo(tmp_path, seed=3, profile="tiny", progress=lambda *step: seen.append(step))
    config = zoo_config("tiny")
    total = sum(c.steps for c in (config.base, config.tuned, config.lang_b, config.facts,
                                  config.planted, config.decoy, config.planted,
                                  config.parent_words, config.parent,
                                  config.facts_sparse, config.translate_sparse,
                                  config.b_drift, config.decoy, config.planted))
    assert [done for _, done, _ in seen] == list(range(1, total + 1))
    assert {t for _, _, t in seen} == {total}
    assert [name for name, _, _ in seen][0] == "base" and seen[-1][0] == "lang_b_planted"


def test_actc_run_says_it_builds_the_zoo_only_when_it_does(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    spec = tmp_path / "spec.act"
    spec.write_text('use std.zoo\nsurgery s -> "out" { target = zoo.tuned\n'
                    '  transfer zoo.arithmetic from zoo.base { budget = 5% }\n  eval = [] }\n')
    actc = shutil.which("actc", path=str(Path(sys.executable).parent))
    env = {**os.environ, "ACTLANG_CACHE_DIR": str(tmp_path / "cache"),
           "ACTLANG_ZOO_PROFILE": "tiny"}
    first, again = (subprocess.run([actc, "run", str(spec), *extra], cwd=tmp_path, env=env,
                                   capture_output=True, text=True, timeout=600)
                    for extra in ([], ["--force"]))
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert "building the tiny zoo (seed 0)" in first.stderr and "zoo built in" in first.stderr
    assert "zoo: tuned" in first.stderr  # a line per model trained
    assert "building" not in again.stderr and "zoo built" not in again.stderr  # built: silent
