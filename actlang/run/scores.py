"""Channel scores: how much each channel differs between two models on a probe.

A :class:`Scores` maps entry keys (``"layers.3.mlp.up"``) to float64 score vectors, one value
per channel. Higher means "more different / more relevant".

The scores are declared in :data:`actlang.arch.registry.SCORES` (their documentation, and
what each reads); this module computes them. Statistical scores (``a`` is the target, ``b``
the donor, means over scored tokens): ``paired_absdiff`` is ``mean_t |a_b,t - a_a,t|`` from
paired statistics (the paper's default); ``local_absdiff`` is ``mean_t |(θ_b − θ_a) x_t|``
from paired statistics collected with ``local=True`` (:mod:`actlang.run.local`); an unpaired
score compares one per-channel mean of
each model, ``|mean_b - mean_a|``, where the registry names the mean (``absmean_diff``:
``E|a|``, ``mean_diff``: ``E a``, ``m2_diff``: ``E a²``, ``freq_diff``: ``P(a > 0)``).

Normalizations (``normalize=``): ``"relative"`` divides by the channels' typical magnitude,
the mean over both models of the statistic the registry names (``E|a|``, or ``E a²`` for
``m2_diff``; nothing for ``freq_diff``, already a probability), plus eps; ``"zscore"``
standardizes within each module (``(s - mean_module) / std_module``), which makes modules
of different scales comparable before a global ranking.

:func:`contrastive` is ``s(probe) - beta * s(control)``: channels that differ on the
ability's probe *but not* on a control corpus (e.g. the specialist's own domain).
Controls at equal budget: :func:`random_scores` (seeded) and :func:`weight_delta_scores`
(L2 norm of each channel's parameter difference, read tensor by tensor from checkpoints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from actlang.arch.adapters import ChannelSpace, Entry, TensorPart
from actlang.arch.errors import RuntimeUserError
from actlang.arch.registry import NORMALIZATIONS, SCORES
from actlang.run.checkpoint import (
    Checkpoint,
    as_checkpoint,
    one_thread,
    release_freed_memory,
)
from actlang.run.stats import ChannelStats

__all__ = [
    "Scores",
    "compute_scores",
    "contrastive",
    "random_scores",
    "changed_channels",
    "weight_pass",
    "weight_delta_scores",
]

EPS = 1e-8


class Scores:
    """Per-entry score vectors (float64), with the method that produced them."""

    def __init__(self, values: Mapping[str, torch.Tensor], method: str = "custom") -> None:
        self.values = {k: v.detach().to(torch.float64).cpu() for k, v in values.items()}
        self.method = method
        #: which channels and input features differ between the two models, when the scores
        #: came from the pass over their weights that found it (:func:`weight_pass`)
        self.changed: Changed | None = None

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return self.values[key]
        except KeyError:
            raise RuntimeUserError(f"no score for {key!r}",
                                   hint="collect statistics for that module, or leave it out of the selection") from None

    def __contains__(self, key: object) -> bool:
        return key in self.values

    def keys(self) -> list[str]:
        return list(self.values)

    def items(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.values.items()

    def normalized(self, how: str | None) -> "Scores":
        """``zscore`` within each module (``relative`` needs statistics: see compute_scores)."""
        if how is None:
            return self
        if how != "zscore":
            raise RuntimeUserError(f"Scores.normalized supports 'zscore', not {how!r}")
        scores = Scores({k: _zscore(v) for k, v in self.values.items()}, f"{self.method}+zscore")
        scores.changed = self.changed
        return scores

    def flat(self) -> torch.Tensor:
        return torch.cat(list(self.values.values())) if self.values else torch.zeros(0, dtype=torch.float64)

    def concentration(self, fractions: Sequence[float] = (0.01, 0.05)) -> dict[float, float]:
        """:func:`concentration` of all the scores."""
        return concentration(self.flat(), fractions)


def concentration(values: torch.Tensor, fractions: Sequence[float]) -> dict[float, float]:
    """Share of the total non-negative score mass held by the top fraction ``p`` of channels.

    Args:
        values: channel scores, any shape (flattened); non-finite ones are dropped and negative
            ones (e.g. contrastive scores) count as 0.
        fractions: the fractions ``p``; the top ``p`` of ``n`` channels are the
            ``k = max(1, round(p * n))`` best, rounded half up as selection budgets round (the
            top 5 % are the channels a global ``5%`` channel budget takes).

    Returns:
        ``{p: share}``: ``p`` itself for uniform scores, 1.0 when the top ``k`` hold all the
        mass; NaN when there is no mass (no positive score).
    """
    s = values.detach().reshape(-1).to(torch.float64).cpu()
    s = s[torch.isfinite(s)].clamp_min(0).sort(descending=True).values
    total = float(s.sum())
    if total <= 0:
        return {p: float("nan") for p in fractions}
    return {p: float(s[: max(1, int(p * s.numel() + 0.5))].sum()) / total for p in fractions}


def _zscore(v: torch.Tensor) -> torch.Tensor:
    if v.numel() < 2:
        return torch.zeros_like(v)
    std = v.std()
    if not torch.isfinite(std) or std <= 0:
        return torch.zeros_like(v)
    return (v - v.mean()) / std


def compute_scores(
    method: str = "paired_absdiff",
    *,
    paired: ChannelStats | None = None,
    a: ChannelStats | None = None,
    b: ChannelStats | None = None,
    normalize: str | None = None,
    keys: Sequence[str] | None = None,
) -> Scores:
    """Scores of ``method`` from statistics (``a``: target model, ``b``: donor model).

    ``paired_absdiff`` needs ``paired`` (and, for ``relative``, the paired statistics' own
    ``sum_abs_a`` / ``sum_abs_b``); the others need unpaired ``a`` and ``b``.
    """
    spec = SCORES[method] if method in SCORES else None
    if spec is None or not spec.reads_activations:
        statistical = [m.name for m in SCORES if m.reads_activations]
        raise RuntimeUserError(f"unknown score {method!r} (a statistical score is needed)",
                               hint=f"scores: {', '.join(statistical)}")
    if normalize not in (None, *NORMALIZATIONS.names):
        raise RuntimeUserError(f"unknown normalization {normalize!r}", hint="use relative or zscore")
    normalize = None if normalize == "none" else normalize
    if spec.inputs == "paired":
        if paired is None or paired.kind != "paired":
            raise RuntimeUserError(f"{method} needs paired statistics (both models on the same batches)")
        src = paired
    else:
        if a is None or b is None or a.kind != "unpaired" or b.kind != "unpaired":
            raise RuntimeUserError(f"{method} needs unpaired statistics of both models")
        if set(a.keys()) != set(b.keys()):
            raise RuntimeUserError(f"{method}: the two models' statistics cover different modules")
        src = a
    out: dict[str, torch.Tensor] = {}
    for k in keys or src.keys():
        if spec.inputs == "paired":
            assert paired is not None and spec.statistic is not None
            s = paired.mean(k, spec.statistic)
            scale = 0.5 * (paired.mean(k, "sum_abs_a") + paired.mean(k, "sum_abs_b"))
        else:
            assert a is not None and b is not None and spec.statistic is not None
            xa, xb = a.mean(k, spec.statistic), b.mean(k, spec.statistic)
            s = (xb - xa).abs()
            scale = 0.5 * (a.mean(k, spec.relative_to) + b.mean(k, spec.relative_to)) \
                if spec.relative_to else torch.ones_like(xa) - EPS
        if normalize == "relative":
            s = s / (scale + EPS)
        elif normalize == "zscore":
            s = _zscore(s)
        out[k] = s
    return Scores(out, method + (f"+{normalize}" if normalize else ""))


def contrastive(probe: Scores, control: Scores, beta: float = 1.0) -> Scores:
    """``probe - beta * control`` per channel (both over the same modules)."""
    missing = [k for k in probe.keys() if k not in control]
    if missing:
        raise RuntimeUserError(f"the control scores lack {missing[0]!r}",
                               hint="score the probe and the control corpus over the same modules")
    return Scores({k: v - beta * control[k] for k, v in probe.items()},
                  f"contrast({probe.method}, {control.method}, beta={beta:g})")


def random_scores(space: ChannelSpace, seed: int = 0, entries: Iterable[Entry] | None = None) -> Scores:
    """Uniform random scores (seeded): the *random channels* control at equal budget."""
    g = torch.Generator().manual_seed(int(seed))
    ents = list(space if entries is None else entries)
    return Scores({e.key: torch.rand(e.size, generator=g, dtype=torch.float64) for e in ents}, f"random(seed={seed})")


#: What one pass over the weights of a donor and a target yields per entry: the weight-delta
#: score, and which channels and input features differ at all (see :func:`weight_pass`).
Changed = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def weight_pass(space: ChannelSpace, source: Checkpoint | str | Path,
                target: Checkpoint | str | Path, entries: Iterable[Entry] | None = None, *,
                score: bool = True) -> tuple[Scores | None, Changed]:
    """One read of each tensor pair the entries touch: :func:`weight_delta_scores` (with
    ``score``) and :func:`changed_channels` together, the same values as each on its own.

    Per tensor: the squared difference in float64, computed in place in one buffer (the
    same elementwise values as ``(a.double() - b.double()).square()``, summed over each
    channel's slice by the same reductions, so the scores keep their bits), and one mask of
    the elements whose bits differ, reduced with ``any`` per channel and per input feature.
    Runs on one thread (:func:`~actlang.run.checkpoint.one_thread`)."""
    src, trg = as_checkpoint(source), as_checkpoint(target)
    ents = list(space if entries is None else entries)
    parts: dict[str, list[tuple[Entry, TensorPart, bool]]] = {}
    for e in ents:  # tensors in the order of the entries' parts: the order sums are taken in
        for part in e.parts:
            parts.setdefault(part.name, []).append((e, part, False))
    for e in ents:
        for part in e.inputs:
            parts.setdefault(part.name, []).append((e, part, True))
    squares: dict[str, torch.Tensor] = {}
    channels: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    with one_thread():
        for name, uses in parts.items():
            a, b = src.get(name), trg.get(name)
            differ = _bits_differ(a, b)
            d = None
            if score and any(not is_input for _, _, is_input in uses):
                d = a.to(torch.float64, copy=True)
                d.sub_(b)
                d.square_()
            del a, b
            for e, part, is_input in uses:
                other = [i for i in range(differ.dim()) if i != part.axis]
                mask = differ.narrow(part.axis, part.offset, part.size)
                any_ = mask.any(dim=other) if other else mask.clone()
                found = inputs if is_input else channels
                found[e.key] = any_ if e.key not in found else found[e.key] | any_
                if d is not None and not is_input:
                    sl = d.narrow(part.axis, part.offset, part.size)
                    value = sl.sum(dim=other) if other else sl.clone()
                    squares[e.key] = value if e.key not in squares else squares[e.key] + value
            del d, differ
            release_freed_memory()
        scores = Scores({k: v.sqrt() for k, v in squares.items()}, "weight_delta") \
            if score else None
    return scores, (channels, inputs)


def weight_delta_scores(
    space: ChannelSpace,
    source: Checkpoint | str | Path,
    target: Checkpoint | str | Path,
    entries: Iterable[Entry] | None = None,
) -> Scores:
    """``||theta_src[channel] - theta_trg[channel]||_2`` over each channel's weight slice and
    bias element: the *weight-delta* control. Reads one tensor pair at a time; the scores
    carry which channels differ at all (``Scores.changed``, from the same read)."""
    scores, changed = weight_pass(space, source, target, entries)
    assert scores is not None
    scores.changed = changed
    return scores


def _bits_differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: the two tensors' bits differ (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype:
        return torch.ones(a.shape, dtype=torch.bool)
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return a.view(as_int) != b.view(as_int)


def changed_channels(space: ChannelSpace, source: Checkpoint | str | Path,
                     target: Checkpoint | str | Path, entries: Iterable[Entry] | None = None,
                     ) -> Changed:
    """Which channels (and input features) have parameters that differ between the two
    checkpoints at all: ``(channels, inputs)``, bool per entry. A channel whose parameters
    are bit-identical cannot change anything when transferred."""
    return weight_pass(space, source, target, entries, score=False)[1]


def restrict(changed: Changed, entries: Iterable[Entry]) -> Changed | None:
    """``changed`` for ``entries`` only (what :func:`changed_channels` of those entries
    returns), or ``None`` if it does not cover them all."""
    ents = list(entries)
    channels, inputs = changed
    if any(e.key not in channels or (e.inputs and e.key not in inputs) for e in ents):
        return None
    return ({e.key: channels[e.key] for e in ents},
            {e.key: inputs[e.key] for e in ents if e.inputs})
