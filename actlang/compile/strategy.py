"""How each capture runs: with its models in memory, or streamed a decoder layer at a time.

A paired capture holds every model of its passes whole; a pair of 70B models in bf16 is
280 GB. When that is over the memory limit (``--max-memory``; by default the machine's
memory) and every pass pairs models (a lone model has no lock-step partner to stream
with), the capture is streamed (:mod:`actlang.run.streamed`): its peak is about one layer
and the embeddings of each model, plus the corpus's hidden states, whatever the model's
size. Both give the same statistics, so they share cache entries. The plan says which it
chose and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from actlang.arch.errors import RuntimeUserError
from actlang.arch.sizes import human_bytes
from actlang.compile import ops as O

__all__ = ["CaptureStrategy", "choose", "host_memory"]

#: Hidden states, like statistics, are kept in float32 whatever the weights' dtype.
_HIDDEN_BYTES = 4


@dataclass(frozen=True)
class CaptureStrategy:
    """One capture's strategy, why, and the peak memory it needs (``None``: unknown)."""

    streamed: bool
    reason: str
    peak_bytes: int | None


def host_memory() -> int | None:
    """This machine's physical memory in bytes, if the platform says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _streamed_bytes(info, tokens: int | None) -> int | None:
    """One model's share of a streamed capture: its embeddings, its largest decoder layer
    (the weights outside the embeddings, over the layers) and its hidden states."""
    dims = info.space.dims if info.space is not None else {}
    layers, hidden, vocab = dims.get("layers"), dims.get("hidden"), dims.get("vocab")
    if not (info.parameters and layers and hidden and vocab):
        return None
    per_parameter = info.compute_bytes / info.parameters  # layers load in the compute dtype
    embeddings = vocab * hidden * per_parameter * (1 if info.space.tied else 2)
    layer = max(info.compute_bytes - embeddings, 0) / layers
    return int(embeddings + layer + (tokens or 0) * hidden * _HIDDEN_BYTES)


def choose(capture: O.Capture, models: Mapping[str, object], tokens: int | None,
           limit: int | None) -> CaptureStrategy:
    """The strategy of ``capture``: streamed when its models do not fit ``limit`` together
    and streaming can run it (every pass pairs models whose sizes are known).

    Args:
        capture: the capture op.
        models: model name -> :class:`actlang.compile.plan.ModelInfo`.
        tokens: the corpus's tokens (``None``: unknown).
        limit: the memory limit in bytes (``None``: no limit).
    """
    infos = [models[m.name] for m in capture.models]
    sizes = [info.compute_bytes for info in infos]
    whole = sum(sizes) if all(s is not None for s in sizes) else None
    if limit is None or whole is None or whole <= limit:
        return CaptureStrategy(False, "the models fit in memory together" if whole else
                               "model sizes unknown", whole)
    lone = [p[0].name for p in capture.passes() if len(p) == 1]
    streamed = [_streamed_bytes(info, tokens) for info in infos]
    if lone or None in streamed:
        why = f"{lone[0]} runs alone (nothing to stream it with)" if lone else \
            "a model's layer sizes are unknown"
        return CaptureStrategy(False, f"in memory although the models ({human_bytes(whole)}) "
                               f"exceed the {human_bytes(limit)} limit: {why}", whole)
    peak = sum(streamed)  # type: ignore[arg-type]
    if peak > limit:
        raise RuntimeUserError(
            f"the memory limit {human_bytes(limit)} is below what this capture needs even a "
            f"decoder layer at a time ({human_bytes(peak)}: a layer and the embeddings of each "
            f"model, and the corpus's hidden states; {human_bytes(whole)} in memory)",
            hint="raise --max-memory, or give the corpus fewer documents (limit = N)")
    return CaptureStrategy(True, f"the models need {human_bytes(whole)} together, over the "
                           f"{human_bytes(limit)} limit; a layer at a time needs "
                           f"{human_bytes(peak)}", peak)
