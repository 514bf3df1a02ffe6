"""actlang runtime: the engine under ``actc run``, usable on its own from Python.

Modules (each documents its API):

* :mod:`actlang.arch.errors` — :class:`RuntimeUserError` (message + hint) for user mistakes.
* :mod:`actlang.arch.adapters` — architecture adapters (JSON data per family) and
  :class:`ChannelSpace` (every channel of a model, from ``config.json`` alone).
* :mod:`actlang.run.checkpoint` — :class:`Checkpoint`: safetensors read tensor by tensor;
  :func:`check_compatible`.
* :mod:`actlang.arch.corpus` — probe corpora, scored spans, tokenization, digests;
  :mod:`actlang.run.corpus` — padded batches.
* :mod:`actlang.run.stats` — :func:`collect_stats`, :func:`collect_paired_stats`,
  :class:`ChannelStats` (mergeable, serializable), :data:`COUNTERS`.
* :mod:`actlang.run.scores` — :func:`compute_scores`, :func:`contrastive`,
  :func:`random_scores`, :func:`weight_delta_scores`.
* :mod:`actlang.run.select` — :func:`select_channels`, :class:`Budget`.
* :mod:`actlang.run.mask` — :class:`ChannelMask` (save / load / summary / re-apply).
* :mod:`actlang.run.transfer` — :func:`transfer` (files, streaming), :func:`apply_masks_`
  (in memory), :class:`Donor`.
* :mod:`actlang.run.output` — :func:`write_model_dir`, :func:`save_state_dict` (atomic HF
  directories with a model card).

A whole recovery in a notebook::

    from actlang.run import *
    from actlang.run.transfer import transfer   # (``actlang.run.transfer`` is the module)
    space = ChannelSpace.from_pretrained("zoo/tuned")
    probe = jsonl("math.jsonl", text="{q} {a}", score="a", limit=256, seed=0).tokenize(tokenizer)
    res = collect_paired_stats(tuned, base, space, probe)
    mask = select_channels(compute_scores("paired_absdiff", paired=res.paired), space, "3%")
    transfer("zoo/tuned", [Donor("zoo/base", mask)], "out/recovered")

Names are imported lazily, so ``import actlang.run`` stays cheap for the planner.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RuntimeUserError": "arch.errors", "GlobalChannelWarning": "arch.errors",
    "ChannelSpace": "arch.adapters", "Entry": "arch.adapters", "RawSelector": "arch.adapters",
    "get_adapter": "arch.adapters", "supported_model_types": "arch.adapters",
    "Checkpoint": "checkpoint", "check_compatible": "checkpoint",
    "Batch": "corpus", "batches": "corpus",
    "Corpus": "arch.corpus", "Document": "arch.corpus", "TokenizedCorpus": "arch.corpus",
    "inline": "arch.corpus", "jsonl": "arch.corpus", "mix": "arch.corpus", "text_file": "arch.corpus",
    "COUNTERS": "stats", "ChannelStats": "stats", "PairedResult": "stats",
    "collect_paired_stats": "stats", "collect_stats": "stats",
    "Scores": "scores", "compute_scores": "scores", "contrastive": "scores", "random_scores": "scores",
    "weight_delta_scores": "scores",
    "Budget": "arch.selection", "candidate_entries": "arch.selection",
    "kind_candidates": "select", "select_channels": "select",
    "ChannelMask": "mask",
    "Donor": "transfer", "TransferReport": "transfer", "apply_masks_": "transfer",
    "save_state_dict": "output", "write_model_dir": "output",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        where = _EXPORTS[name]
        module = importlib.import_module(
            f"actlang.{where}" if where.startswith("arch.") else f"actlang.run.{where}")
        return getattr(module, name)
    raise AttributeError(f"module 'actlang.run' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
