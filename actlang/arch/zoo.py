"""What a zoo is, where it lives and what identifies it — without building anything.

The zoo's configs (:class:`ZooConfig` and its parts, the named :data:`PROFILES`), its
content key (:func:`zoo_key`: config, seed, the zoo's source and library versions) and the
manifest of a built zoo (:class:`ZooManifest`, ``zoo.json``). No torch: ``actc plan`` finds
a built zoo, or says it is not built, from this module alone; :mod:`actlang.zoo.build`
trains one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = [
    "DataConfig",
    "MODELS",
    "ModelConfig",
    "PROFILES",
    "TrainConfig",
    "ZooConfig",
    "ZooManifest",
    "cache_root",
    "load_zoo",
    "zoo_config",
    "zoo_key",
]


@dataclass(frozen=True)
class DataConfig:
    """Sizes of the synthetic corpora (all splits are disjoint within an ability)."""

    lang_train: int = 6000       # sentences per language in train
    lang_probe: int = 256
    lang_eval: int = 200
    reciprocal_fraction: float = 0.5   # share of train sentences in the reciprocal form
    arith_probe: int = 100       # of the 1000 triples; the rest minus eval is train
    arith_eval: int = 150
    facts_keys: int = 128        # probe / eval split the keys in halves


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 192
    max_position_embeddings: int = 64


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float
    batch_size: int = 64
    warmup: int = 50
    weight_decay: float = 0.01
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0


def library_version(name: str) -> str:
    """An installed distribution's version, read from its metadata (nothing is imported)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


FORMAT = 1
MODELS: tuple[str, ...] = ("base", "tuned", "lang_b", "facts", "planted", "planted_decoy")


Mixture = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class ZooConfig:
    """Everything that determines a zoo besides the seed.

    Mixtures name training corpora: an ability's train split (``lang_a``, ``lang_b``,
    ``arithmetic``, ``facts``), ``lang_b_simple`` (the language B train sentences without
    the reciprocal construction) or ``arithmetic_shifted`` (answers shifted by
    ``damage_shift``).
    """

    profile: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # recover: base is broad (A, arithmetic, a little simple B), tuned is B only
    base: TrainConfig = TrainConfig(steps=2500, lr=3e-3)
    base_mix: Mixture = (("lang_a", 0.45), ("arithmetic", 0.45), ("lang_b_simple", 0.1))
    tuned: TrainConfig = TrainConfig(steps=1000, lr=2e-3, min_lr_ratio=0.5)
    tuned_mix: Mixture = (("lang_b", 1.0),)
    # merge: mild specialists, continued training with some replay of the parent's data
    lang_b: TrainConfig = TrainConfig(steps=1000, lr=2e-3, min_lr_ratio=0.5)
    lang_b_mix: Mixture = (("lang_b", 0.9), ("lang_a", 0.05), ("arithmetic", 0.05))
    facts: TrainConfig = TrainConfig(steps=400, lr=2e-3)
    facts_mix: Mixture = (("facts", 0.8), ("lang_a", 0.1), ("arithmetic", 0.1))
    # planted: masked fine-tunes through known rows
    planted: TrainConfig = TrainConfig(steps=300, lr=3e-3, warmup=20)
    planted_mix: Mixture = (("arithmetic_shifted", 1.0),)
    decoy: TrainConfig = TrainConfig(steps=300, lr=1e-2, warmup=20)
    decoy_mix: Mixture = (("lang_b", 0.5), ("lang_a", 0.25), ("arithmetic", 0.25))
    planted_fraction: float = 0.03
    damage_shift: int = 1
    threads: int = 1
    eval_batch_size: int = 128


PROFILES: dict[str, ZooConfig] = {
    "default": ZooConfig(),
    "small": ZooConfig(
        profile="small",
        data=DataConfig(lang_train=3000, lang_probe=128, lang_eval=100, arith_eval=100,
                        facts_keys=64),
        base=TrainConfig(steps=1400, lr=3e-3, min_lr_ratio=0.3),
        tuned=TrainConfig(steps=700, lr=2e-3, min_lr_ratio=0.5),
        lang_b=TrainConfig(steps=600, lr=2.5e-3, min_lr_ratio=0.5),
        facts=TrainConfig(steps=200, lr=2e-3),
        planted=TrainConfig(steps=120, lr=3e-3, warmup=20),
        decoy=TrainConfig(steps=120, lr=1e-2, warmup=20),
    ),
    # a pipeline check only: a few steps each, abilities are NOT learned
    "tiny": ZooConfig(
        profile="tiny",
        data=DataConfig(lang_train=200, lang_probe=16, lang_eval=16, arith_probe=16,
                        arith_eval=16, facts_keys=16),
        model=ModelConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64),
        base=TrainConfig(steps=20, lr=3e-3, warmup=5, batch_size=8),
        tuned=TrainConfig(steps=10, lr=2e-3, warmup=5, batch_size=8),
        lang_b=TrainConfig(steps=5, lr=1e-3, warmup=2, batch_size=8),
        facts=TrainConfig(steps=5, lr=2e-3, warmup=2, batch_size=8),
        planted=TrainConfig(steps=5, lr=3e-3, warmup=2, batch_size=8),
        decoy=TrainConfig(steps=5, lr=1e-2, warmup=2, batch_size=8),
    ),
}


def zoo_config(profile: str = "default") -> ZooConfig:
    """The named profile's config (``default``: ~0.23M-param models, ``small``: for tests,
    ``tiny``: a seconds-long pipeline check that learns nothing)."""
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown zoo profile {profile!r}; known: {sorted(PROFILES)}") from None


def cache_root() -> Path:
    """``$ACTLANG_CACHE_DIR/zoo`` (default ``~/.cache/actlang/zoo``)."""
    base = os.environ.get("ACTLANG_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "actlang") / "zoo"


def _source_digest() -> str:
    h = hashlib.sha256()
    # The code that builds a zoo, read as files (arch imports nothing above it).
    package = Path(__file__).resolve().parent.parent
    files = sorted((package / "zoo").glob("*.py")) + [package / "arch" / "zoo.py",
                                                       package / "run" / "evaluate.py"]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def zoo_key(config: ZooConfig, seed: int) -> str:
    """Content key of a zoo: sha256 over config, seed, zoo source and library versions."""
    payload = {
        "format": FORMAT,
        "config": asdict(config),
        "seed": seed,
        "source": _source_digest(),
        "torch": library_version("torch"),
        "transformers": library_version("transformers"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ZooManifest:
    """A built zoo: its directory and the parsed ``zoo.json``."""

    root: Path
    data: dict[str, Any]

    @property
    def seed(self) -> int:
        return int(self.data["seed"])

    @property
    def profile(self) -> str:
        return str(self.data["profile"])

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.data["models"])

    @property
    def accuracy(self) -> dict[str, dict[str, float]]:
        return self.data["accuracy"]

    @property
    def build_seconds(self) -> float:
        return float(self.data["build_seconds"])

    def model_path(self, name: str) -> Path:
        """Directory of model ``name`` (loadable with ``AutoModelForCausalLM``)."""
        if name not in self.data["models"]:
            raise KeyError(f"no model {name!r} in zoo; models: {list(self.data['models'])}")
        return self.root / self.data["models"][name]["path"]

    def corpus_path(self, ability: str, split: str) -> Path:
        """Path of ``split`` (train / train_txt / probe / eval) of ``ability``."""
        return self.root / self.data["corpora"][ability][split]

    def ground_truth_path(self) -> Path:
        return self.root / self.data["scenarios"]["planted"]["ground_truth"]

    def ground_truth(self) -> dict[str, Any]:
        return json.loads(self.ground_truth_path().read_text())


def load_zoo(path: Path) -> ZooManifest:
    """Read a built zoo directory (the one holding ``zoo.json``)."""
    path = Path(path)
    return ZooManifest(path, json.loads((path / "zoo.json").read_text()))


