"""The zoo: tiny models that really have — and really lose — abilities, built on CPU.

* :mod:`actlang.zoo.data` — four synthetic abilities (``lang_a``, ``lang_b``, ``arithmetic``,
  ``facts``) with disjoint train / probe / eval splits, deterministic from a seed.
* :mod:`actlang.zoo.tokenizer` — a word-level ``PreTrainedTokenizerFast`` built locally.
* :mod:`actlang.zoo.train` — tiny Llama models (GQA) and a deterministic, optionally
  row-masked, training loop.
* :mod:`actlang.zoo.build` — ``build_zoo(root=None, seed=0, profile="default") ->
  ZooManifest``: the recover, merge and planted scenarios as HF model directories plus
  corpora and a ``zoo.json`` manifest, cached under ``$ACTLANG_CACHE_DIR/zoo``.
* :mod:`actlang.zoo.real` — the ``real`` profile (``build_zoo(profile="real")``): planted
  damage, drift and decoys in a real 135M model (SmolLM2, from a GGUF file), with English
  and capital-city abilities, ground truth and oracle.

Evaluation (greedy exact match, perplexity) lives in :mod:`actlang.run.evaluate`.

The zoo's configs, key and manifest (no torch) are :mod:`actlang.arch.zoo`.
"""

from actlang.arch.zoo import (
           MODELS,
           PROFILES,
           REAL_MODELS,
           RealZooConfig,
           ZooConfig,
           ZooManifest,
           cache_root,
           load_zoo,
)
from actlang.zoo.build import build_zoo, load_zoo_model

__all__ = ["MODELS", "PROFILES", "REAL_MODELS", "RealZooConfig", "ZooConfig", "ZooManifest",
           "build_zoo", "cache_root", "load_zoo", "load_zoo_model"]
