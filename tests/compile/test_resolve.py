"""Where a spec's models live and what identifies their weights: local directories, hub
snapshots in the local Hugging Face cache, zoo models (built on demand by an injected
builder), and content identities that follow the bytes."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from actlang.arch.errors import RuntimeUserError
from actlang.compile.cache import Cache
from actlang.compile.resolve import (
    ZooRef,
    ensure_zoos,
    hub_snapshot,
    model_directory,
    model_identity,
    zoo_directory,
    zoo_refs,
)
from actlang.lang.checker import check_source

from .conftest import TINY_LLAMA, write_config, write_weights

COMMIT = "0123456789abcdef0123456789abcdef01234567"

ZOO_SPEC = """
model base = zoo("base")
model tuned = zoo("tuned", seed = 1)
model small = zoo("base", profile = small)
model here = local("here")
ability a {
  probe = zoo_data(arithmetic, split = probe, zoo_seed = 2)
  eval = exact_match(zoo_data(arithmetic, split = eval, profile = tiny))
}
surgery s -> "out" { target = tuned  transfer a from base { budget = 1%  truth = zoo_truth(seed = 3) } }
surgery t -> "out2" { target = here  transfer a from small { budget = 1% } }
"""


def models_of(spec: str, tmp_path: Path) -> dict:
    """The checked program's models by name."""
    program = check_source(textwrap.dedent(spec), str(tmp_path / "s.act"))
    return {m.name: m for s in program.surgeries
            for m in (s.target, *(rule.donor for rule in s.transfers))}


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch) -> Path:
    """``$HF_HUB_CACHE`` holding ``org/name`` at ``COMMIT``, which the ref ``main`` names."""
    root = tmp_path / "hub"
    repo = root / "models--org--name"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT + "\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root


def test_a_local_model_is_its_directory(tmp_path: Path) -> None:
    (spec,) = models_of('model m = local("models/m")\nability a { probe = lines(["x"]) }\n'
                        'surgery s -> "o" { target = m  transfer a from m { budget = 1% } }\n',
                        tmp_path).values()
    assert model_directory(spec, Cache(tmp_path / "cache")) == tmp_path / "models" / "m"


def test_a_hub_revision_is_found_by_commit_or_through_its_ref(hub_cache: Path) -> None:
    snapshot = hub_cache / "models--org--name" / "snapshots" / COMMIT
    assert hub_snapshot("org/name", COMMIT) == snapshot
    assert hub_snapshot("org/name", "main") == snapshot


def test_hf_home_is_the_fallback_hub_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snapshot = tmp_path / "hf" / "hub" / "models--org--name" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    assert hub_snapshot("org/name", COMMIT) == snapshot


@pytest.mark.parametrize("revision", ["v2", "fedcba9876543210fedcba9876543210fedcba98"])
def test_a_missing_hub_snapshot_says_how_to_download_it(hub_cache: Path, revision: str) -> None:
    with pytest.raises(RuntimeUserError, match="not in the local Hugging Face cache") as error:
        hub_snapshot("org/name", revision)
    assert str(hub_cache) in str(error.value)
    assert error.value.hint == f"download it first: huggingface-cli download org/name --revision {revision}"


def test_a_hub_model_resolves_to_its_snapshot_and_is_identified_by_the_commit(
        hub_cache: Path, tmp_path: Path) -> None:
    models = models_of('model m = hub("org/name", revision = "main")\n'
                       'ability a { probe = lines(["x"]) }\n'
                       'surgery s -> "o" { target = m  transfer a from m { budget = 1% } }\n',
                       tmp_path)
    cache = Cache(tmp_path / "cache")
    directory = model_directory(models["m"], cache)
    assert directory == hub_cache / "models--org--name" / "snapshots" / COMMIT
    identity = model_identity(models["m"], directory, cache, compute=False)
    other = directory.with_name("f" * 40)
    assert identity is not None and identity != model_identity(models["m"], other, cache,
                                                               compute=False)


def test_zoo_refs_finds_every_zoo_a_program_names(tmp_path: Path) -> None:
    program = check_source(ZOO_SPEC, str(tmp_path / "s.act"))
    assert set(zoo_refs(program)) == {
        ZooRef("default", 0),  # base
        ZooRef("default", 1),  # tuned
        ZooRef("small", 0),  # small
        ZooRef("default", 2),  # the probe corpus
        ZooRef("tiny", 0),  # the eval corpus
        ZooRef("default", 3),  # the ground truth
    }


def test_the_zoo_profile_environment_variable_replaces_every_profile(tmp_path: Path,
                                                                     monkeypatch) -> None:
    monkeypatch.setenv("ACTLANG_ZOO_PROFILE", "tiny")
    refs = zoo_refs(check_source(ZOO_SPEC, str(tmp_path / "s.act")))
    assert {ref.profile for ref in refs} == {"tiny"} and {ref.seed for ref in refs} == {0, 1, 2, 3}


def test_unbuilt_zoos_without_a_builder_say_how_to_build_them(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUserError, match="the tiny zoo \\(seed 4\\) is not built") as error:
        ensure_zoos([ZooRef("tiny", 4)], Cache(tmp_path / "cache"), None)
    assert "`actc zoo build --profile tiny --seed 4`" in error.value.hint


def write_zoo(ref: ZooRef, cache: Cache) -> Path:
    """A built zoo as far as resolving is concerned: a ``zoo.json`` naming one model."""
    directory = zoo_directory(ref, cache)
    directory.mkdir(parents=True)
    (directory / "zoo.json").write_text(json.dumps({
        "seed": ref.seed, "profile": ref.profile, "models": {"base": {"path": "models/base"}}}))
    return directory


def test_the_builder_builds_each_unbuilt_zoo_once(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    write_zoo(ZooRef("tiny", 0), cache)
    calls = []

    def builder(root: Path, seed: int, profile: str):
        calls.append((root, seed, profile))
        write_zoo(ZooRef(profile, seed), cache)

    refs = [ZooRef("tiny", 0), ZooRef("tiny", 1), ZooRef("small", 1)]
    ensure_zoos(refs, cache, builder)
    assert calls == [(cache.root / "zoo", 1, "tiny"), (cache.root / "zoo", 1, "small")]
    ensure_zoos(refs, cache, builder)
    assert len(calls) == 2  # all built now


def test_a_zoo_model_is_none_until_its_zoo_is_built(tmp_path: Path) -> None:
    models = models_of(ZOO_SPEC, tmp_path)
    cache = Cache(tmp_path / "cache")
    assert model_directory(models["base"], cache) is None
    assert model_identity(models["base"], None, cache, compute=True) is None
    directory = write_zoo(ZooRef("default", 0), cache)
    assert model_directory(models["base"], cache) == directory / "models" / "base"
    write_zoo(ZooRef("default", 1), cache)  # a zoo.json without tuned
    with pytest.raises(RuntimeUserError, match="no model 'tuned'"):
        model_directory(models["tuned"], cache)


def test_model_identity_follows_the_weights_bytes(tmp_path: Path) -> None:
    (spec,) = models_of('model m = local("m")\nability a { probe = lines(["x"]) }\n'
                        'surgery s -> "o" { target = m  transfer a from m { budget = 1% } }\n',
                        tmp_path).values()
    directory = write_config(tmp_path / "m", TINY_LLAMA)
    write_weights(directory, TINY_LLAMA, seed=0)
    cache = Cache(tmp_path / "cache")
    assert model_identity(spec, directory, cache, compute=False) is None  # never hashed
    identity = model_identity(spec, directory, cache, compute=True)
    assert identity is not None
    assert model_identity(spec, directory, cache, compute=False) == identity  # memoized
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit of one weight
    mtime = weights.stat().st_mtime_ns
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(mtime + 1_000_000_000, mtime + 1_000_000_000))
    assert model_identity(spec, directory, cache, compute=False) is None  # not hashed yet
    changed = model_identity(spec, directory, cache, compute=True)
    assert changed is not None and changed != identity
    (directory / "model.safetensors").unlink()
    (directory / "config.json").unlink()
    assert model_identity(spec, directory, cache, compute=True) is None  # no config
