"""Whole-model merge baselines, defined exactly as mergekit 0.1.5 defines them.

    report = merge_models("ties", ["zoo/lang-b", "zoo/facts"], "out/ties", base="zoo/parent",
                          density=0.5)

These are the controls that show whether *localization* matters: the same donors merged
without any activation statistics. Methods (mergekit's ``linear`` and its "generalized task
arithmetic" family, arXiv 2212.04089, 2306.01708, 2311.03099):

* ``linear`` — weighted mean of the models themselves; default ``normalize=True``;
* ``task_arithmetic`` — task vectors, no sparsification, no consensus; ``normalize=False``;
* ``ties`` — magnitude (top-k) sparsification, sign consensus "sum"; ``normalize=True``;
* ``dare_linear`` — Bernoulli drop, no consensus; ``normalize=False``, ``rescale=True``;
* ``dare_ties`` — Bernoulli drop, sign consensus "sum"; ``normalize=False``, ``rescale=True``.

Per tensor, with base ``θ_b``, donors ``θ_i``, weights ``w_i`` (default 1 each):

* ``linear``: ``Σ w_i θ_i / Σ w_i`` (``normalize=False``: ``Σ w_i θ_i``), accumulated in
  donor order with a fused multiply-add into zeros (``addcmul_``), then divided. ``base`` is
  not a term of the sum (it only supplies config / tokenizer when no ``target`` is given).
* task vectors ``δ_i = θ_i − θ_b``;
* magnitude sparsification (``ties``): keep the ``k = max(1, int(density · numel))``
  entries of ``δ_i`` with the largest ``|δ_i|`` (a positive density keeps at least one),
  zero the rest; ``density >= 1`` keeps everything;
* Bernoulli sparsification (``dare_*``): keep each entry with probability ``density``;
* ``rescale`` (default on for ``dare_*``, off for ``ties``): the sparsified ``δ_i`` is
  scaled by ``‖δ_i‖₁ / ‖sparsified δ_i‖₁`` so its L1 norm is unchanged (not by
  ``1 / density``), unless either norm is below 1e-7;
* weighted deltas ``ω_i = w_i δ_i``;
* sign consensus "sum" (``ties``, ``dare_ties``): ``s = +1 where Σ_i ω_i >= 0 else −1``;
  entry ``i`` takes part where ``sign(ω_i) == s`` (a zero delta never takes part);
  ``mixed = Σ_i ω_i·m_i`` and the divisor is ``Σ_i w_i·m_i`` with zeros replaced by 1;
* without consensus: ``mixed = Σ_i ω_i``, divisor ``Σ_i w_i`` (|divisor| < 1e-8 → 1);
* ``normalize``: ``mixed /= divisor``; then ``mixed *= lambda``; result ``θ_b + mixed``.

``normalize=None`` / ``rescale=None`` (the defaults) take mergekit's default for the method
(list above). On float32 checkpoints the result is mergekit 0.1.5's bit for bit
(``tests/run/test_mergekit_parity.py`` runs mergekit itself). Where it differs, and why:

* bf16/fp16 checkpoints: task arithmetic runs in float32 and the result is rounded once to
  the checkpoint dtype; mergekit computes task vectors, weights and sums in the checkpoint
  dtype, rounding at each step (``linear`` computes in float32 in both, and agrees bit for
  bit). For TIES on bf16 about 20 % of elements differ, most by one ulp; where rounding
  decides a sign election or a keep-mask differently (6 % of elements in the parity test)
  an element can move by up to the task vectors' magnitudes there;
* equal magnitudes are ranked by a stable sort (mergekit's ``argsort`` is unstable, so its
  choice among ties is arbitrary);
* DARE drop masks come from a ``torch.Generator`` seeded by ``(seed, tensor name)`` (one draw
  per donor, in donor order), so a merge is reproducible and independent of the order tensors
  are visited in; mergekit draws from torch's global generator;
* ``linear`` with weights that sum to 0 and ``normalize`` is an error (mergekit divides by
  zero).
Non-floating tensors (integer buffers) are copied from the base (``linear``: the first donor).

:func:`merge_models` works tensor by tensor over safetensors checkpoints (memory ≈ one
tensor per model), validates the models' compatibility from headers first, and writes a
standard Hugging Face directory with :func:`~actlang.run.output.write_model_dir`.
:func:`merge_tensor_mergekit` is the pure per-tensor function.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from actlang.arch.errors import RuntimeUserError
from actlang.arch.registry import MERGE_METHODS, MergeMethod
from actlang.run.checkpoint import (
    Checkpoint,
    as_checkpoint,
    check_compatible,
    natural_key,
    require_finite,
)
from actlang.run.output import DEFAULT_MAX_SHARD_SIZE, OutTensor, write_model_dir

__all__ = [
    "MergeReport",
    "merge_generator",
    "merge_models",
    "merge_tensor_mergekit",
    "resolve_defaults",
]


def _method(method: str) -> MergeMethod:
    if method not in MERGE_METHODS:
        raise RuntimeUserError(f"unknown merge method {method!r}",
                               hint=f"methods: {', '.join(MERGE_METHODS.names)}")
    return MERGE_METHODS[method]


def resolve_defaults(method: str, normalize: bool | None, rescale: bool | None) -> tuple[bool, bool]:
    """``(normalize, rescale)`` with ``None`` replaced by mergekit's default for ``method``."""
    spec = _method(method)
    return (spec.normalize if normalize is None else bool(normalize),
            bool(spec.rescale) if rescale is None else bool(rescale))


def merge_generator(seed: int, name: str) -> torch.Generator:
    """The DARE drop-mask generator of one tensor: seeded by ``(seed, name)`` only."""
    h = hashlib.sha256(f"actlang-merge-v1\0{int(seed)}\0{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & (2**63 - 1))


def _densities(density: float | Sequence[float], n: int) -> list[float]:
    if isinstance(density, (int, float)):
        ds = [float(density)] * n
    else:
        ds = [float(d) for d in density]
        if len(ds) != n:
            raise RuntimeUserError(f"{n} donors but {len(ds)} densities")
    for d in ds:
        if not (math.isfinite(d) and 0.0 < d <= 1.0):
            raise RuntimeUserError(f"density must be in (0, 1], got {d}",
                                   hint="density is the fraction of each task vector kept")
    return ds


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    ws = [float(w) for w in weights]
    if len(ws) != n:
        raise RuntimeUserError(f"{n} donors but {len(ws)} weights", hint="give one weight per donor")
    if not all(math.isfinite(w) for w in ws):
        raise RuntimeUserError(f"merge weights must be finite, got {ws}")
    return ws


def _check_args(method: str, n_donors: int, has_base: bool, weights: Sequence[float] | None,
                density: float | Sequence[float], lambda_: float) -> tuple[MergeMethod, list[float], list[float]]:
    spec = _method(method)
    if n_donors < 1:
        raise RuntimeUserError(f"a {method} merge needs at least one donor")
    if spec.needs_base and not has_base:
        raise RuntimeUserError(f"{method} needs a base model (task vectors are donor − base)",
                               hint="give the common ancestor of the donors as base")
    ws = _weights(weights, n_donors)
    ds = _densities(density, n_donors)
    if not math.isfinite(float(lambda_)):
        raise RuntimeUserError(f"lambda must be finite, got {lambda_}")
    if not spec.needs_base:
        if float(lambda_) != 1.0:
            raise RuntimeUserError("linear merges have no lambda (it scales a task vector)",
                                   hint="use task_arithmetic with a base for a scaled merge")
        if any(d != 1.0 for d in ds):
            raise RuntimeUserError("linear merges do not sparsify; density must be 1",
                                   hint="use ties or dare_linear for sparsified merges")
    return spec, ws, ds


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _rescale_(kept: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """mergekit ``rescaled_masked_tensor`` with the L1 norm, in place: the masked task vector
    ``kept`` scaled by ``before / after`` (its L1 norms unmasked and masked) so it keeps its
    L1 norm (left as is where either norm is below 1e-7)."""
    if before < _RESCALE_EPS or after < _RESCALE_EPS:
        return kept
    return kept.mul_(before / after)


_RESCALE_EPS = 1e-7

#: Elements a pass over a large tensor handles at once (its temporaries stay small).
_BLOCK = 1 << 20


def _magnitude_(delta: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """mergekit ``sparsify.magnitude``, in place on ``delta``: keep the ``max(1,
    int(density·numel))`` entries of largest magnitude (a positive density keeps at least
    one), optionally L1-rescaled.

    Which entries: those above the k-th largest magnitude, then, among those equal to it,
    the first in index order — what a stable descending sort keeps, found by a selection
    (linear time, one copy) rather than a sort (n log n, two copies)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return delta.zero_()
    k = max(1, int(density * delta.numel()))
    magnitude = delta.abs().reshape(-1)
    ranked = magnitude.float()  # mergekit ranks float32 magnitudes (itself, for float32)
    threshold = _kth_largest(ranked, k)
    keep = ranked > threshold
    short = k - int(keep.sum())
    if short > 0:  # equal magnitudes at the threshold: the first ones, in index order
        keep[(ranked == threshold).nonzero().squeeze(1)[:short]] = True
    del ranked
    before = magnitude.sum() if rescale else None
    delta.mul_(keep.view(delta.shape))  # x * 1.0 or x * 0.0, as mergekit's float mask
    if not rescale:
        return delta
    return _rescale_(delta, before, magnitude.mul_(keep).sum())


def _kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest of 1-D ``values`` (no NaN), exactly, without ``kthvalue``'s
    copies of the whole tensor (its values, and an int64 index each: 3x the tensor).

    A strided sample of about a million values brackets the answer, ``[low, high]``; two
    counting passes check that the k-th largest lies inside it, and ``kthvalue`` runs on
    the values inside only (under 1 % of them). If the sample misleads, it runs on all."""
    n = values.numel()
    if n <= _SAMPLED:
        return torch.kthvalue(values, n - k + 1).values
    sample = values[:: n // _SAMPLED].sort(descending=True).values
    rank = k * sample.numel() // n  # where the k-th largest falls in the sample
    margin = 8 * int(math.sqrt(sample.numel())) + 16
    high = sample[max(0, rank - margin)]
    low = sample[min(sample.numel() - 1, rank + margin)]
    above = _count(values, lambda block, _: torch.gt(block, high, out=_mask(block)))
    at_least = _count(values, lambda block, _: torch.ge(block, low, out=_mask(block)))
    if not above < k <= at_least:
        return torch.kthvalue(values, n - k + 1).values
    inside = torch.cat([block[(block >= low) & (block <= high)]
                        for block in values.split(_BLOCK)])
    return torch.kthvalue(inside, inside.numel() - (k - above) + 1).values


#: Values above which the k-th largest is found from a sample.
_SAMPLED = 1 << 20


def _count(values: torch.Tensor, test: Callable[[torch.Tensor, int], torch.Tensor]) -> int:
    """How many of 1-D ``values`` pass ``test(block, start)``, a block at a time (``test``
    writes its answer into ``_mask(block)``: one buffer, no allocation per block)."""
    return sum(int(torch.count_nonzero(test(block, start)))
               for start, block in zip(range(0, values.numel(), _BLOCK), values.split(_BLOCK)))


_FULL_BLOCK_MASK: list[torch.Tensor] = []


def _mask(block: torch.Tensor) -> torch.Tensor:
    """A bool buffer of ``block``'s size, the same one for every full block (fresh memory
    costs page faults, and a tensor has hundreds of blocks)."""
    if block.numel() != _BLOCK:
        return torch.empty(block.numel(), dtype=torch.bool)
    if not _FULL_BLOCK_MASK:
        _FULL_BLOCK_MASK.append(torch.empty(_BLOCK, dtype=torch.bool))
    return _FULL_BLOCK_MASK[0]


def _bernoulli_(delta: torch.Tensor, density: float, rescale: bool,
                generator: torch.Generator | None) -> torch.Tensor:
    """mergekit ``sparsify.bernoulli``, in place on ``delta``: keep each entry with
    probability ``density``; ``rescale`` scales the kept entries so the task vector keeps its
    L1 norm."""
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full(delta.shape, density, dtype=torch.float32), generator=generator)
    before = delta.abs().sum() if rescale else None
    delta.mul_(mask.to(delta.dtype))
    return _rescale_(delta, before, delta.abs().sum()) if rescale else delta


def merge_tensor_mergekit(
    method: str,
    base: torch.Tensor | None,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    density: float | Sequence[float] = 1.0,
    lambda_: float = 1.0,
    normalize: bool | None = None,
    rescale: bool | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One tensor merged by ``method`` (see the module docs for the formulas).

    ``tensors`` are the donors' tensors (same shape as ``base``); the result has the base's
    dtype (``linear``: the first donor's). ``generator`` drives the DARE drop masks (one
    draw of ``base.shape`` per donor, in order); ``None`` uses torch's global generator.
    """
    spec, ws, ds = _check_args(method, len(tensors), base is not None, weights, density, lambda_)
    norm, resc = resolve_defaults(method, normalize, rescale)
    ref = base if spec.needs_base else tensors[0]
    assert ref is not None
    for i, t in enumerate(tensors):
        if tuple(t.shape) != tuple(ref.shape):
            raise RuntimeUserError(f"donor {i} has shape {list(t.shape)}, expected {list(ref.shape)}")
    if not ref.is_floating_point():
        return ref.clone()
    work = _work_dtype(ref)

    if not spec.needs_base:  # linear: accumulated in order with a fused multiply-add
        w = torch.tensor(ws, dtype=work)
        res = torch.zeros_like(ref, dtype=work)
        for tensor, coefficient in zip(tensors, w.unbind(0)):
            res.addcmul_(tensor, coefficient)
        if norm:
            if float(sum(ws)) == 0:
                raise RuntimeUserError("linear merge weights sum to 0; cannot normalize",
                                       hint="use weights with a non-zero sum, or normalize = false")
            res.div_(w.sum())
        return res.to(ref.dtype)

    # Task vectors one donor at a time, weighted in place; sums accumulate into zeros in
    # donor order — the bits of mergekit's stack-then-sum(0), without the stacked copies.
    b = ref.to(work)
    weights = torch.tensor(ws, dtype=work).unbind(0)
    weighted = []
    for t, d, w in zip(tensors, ds, weights):
        delta = t.to(work) - b
        if spec.sparsify == "magnitude":
            delta = _magnitude_(delta, d, resc)
        elif spec.sparsify == "random":
            delta = _bernoulli_(delta, d, resc, generator)
        weighted.append(delta.mul_(w))
    if spec.sign_consensus:  # elementwise: a block at a time, so its masks stay small
        mixed = torch.zeros_like(b)
        terms = [t.reshape(-1).split(_BLOCK) for t in weighted]
        for index, out in enumerate(mixed.view(-1).split(_BLOCK)):
            block = [t[index] for t in terms]
            positive = _sum(block, work) >= 0  # the majority sign: + where the sum is >= 0
            divisor = torch.zeros_like(out)
            for term, w in zip(block, weights):
                agrees = torch.where(positive, term > 0, term < 0)  # sign(term) == majority
                out += term.mul_(agrees)
                divisor.add_(agrees, alpha=float(w))  # + w·mask: w·1 or w·0, exact either way
            if norm:
                divisor[divisor == 0] = 1
                out.div_(divisor)
        del terms
    else:
        mixed = _sum(weighted, work)
        divisor = _sum(list(weights), work)
        if divisor.abs() < 1e-8:
            divisor = torch.ones((), dtype=work)
        if norm:
            mixed.div_(divisor)
    del weighted
    if float(lambda_) != 1.0:
        mixed.mul_(float(lambda_))
    return mixed.add_(b).to(ref.dtype)  # θ_b + mixed (addition commutes, bit for bit)


def _sum(terms: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``Σ terms`` added into zeros in order: what ``torch.stack(terms).sum(0)`` computes."""
    total = torch.zeros_like(terms[0], dtype=dtype)
    for term in terms:
        total += term
    return total


_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _n_bits_differ(a: torch.Tensor, b: torch.Tensor) -> int:
    """Elements of ``a`` and ``b`` (same dtype and shape) whose bit patterns differ: one
    comparison of the elements as integers of their width (NaN payloads and -0.0 count as
    bits, as a checkpoint stores them)."""
    if a.numel() == 0:
        return 0
    as_int = _SAME_WIDTH_INT[a.element_size()]
    x, y = a.contiguous().view(as_int).reshape(-1), b.contiguous().view(as_int).reshape(-1)
    return _count(x, lambda block, at: torch.ne(block, y[at:at + block.numel()], out=_mask(block)))


@dataclass
class MergeReport:
    """What a merge did."""

    method: str
    out_dir: Path | None = None
    donors: list[str] = field(default_factory=list)
    base: str | None = None
    weights: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)
    lambda_: float = 1.0
    normalize: bool = True
    rescale: bool = False
    seed: int = 0
    tensors: int = 0
    elements: int = 0
    tensors_changed: int = 0
    elements_changed: int = 0  # elements whose bits differ from the reference (base, or donor 0 for linear)
    bytes_written: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "donors": self.donors,
            "base": self.base,
            "weights": self.weights,
            "density": self.density,
            "lambda": self.lambda_,
            "normalize": self.normalize,
            "rescale": self.rescale,
            "seed": self.seed,
            "tensors": self.tensors,
            "elements": self.elements,
            "tensors_changed": self.tensors_changed,
            "elements_changed": self.elements_changed,
            "fraction_changed": self.elements_changed / self.elements if self.elements else 0.0,
            "bytes_written": self.bytes_written,
        }


def merge_models(
    method: str,
    donors: Sequence[str | Path | Checkpoint],
    out_dir: str | Path,
    *,
    base: str | Path | Checkpoint | None = None,
    weights: Sequence[float] | None = None,
    density: float | Sequence[float] = 1.0,
    lambda_: float = 1.0,
    normalize: bool | None = None,
    rescale: bool | None = None,
    seed: int = 0,
    target: str | Path | Checkpoint | None = None,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    spec_text: str | None = None,
    tags: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> MergeReport:
    """Merge ``donors`` (model directories or checkpoints) by ``method``; write a HF directory at ``out_dir``.

    ``base`` is the common ancestor (required by every method but ``linear``); ``target``
    supplies config.json, generation config and tokenizer (default: ``base``, else the first
    donor). Compatibility (architecture, tensor names, shapes, vocabulary) is checked from
    headers before any tensor is read; then each tensor is read from every model, merged with
    :func:`merge_tensor_mergekit` and streamed to the output.
    """
    spec, ws, ds = _check_args(method, len(donors), base is not None, weights, density, lambda_)
    norm, resc = resolve_defaults(method, normalize, rescale)
    srcs = [as_checkpoint(d) for d in donors]
    base_ck = as_checkpoint(base) if base is not None else None
    ref = base_ck if (spec.needs_base and base_ck is not None) else srcs[0]
    others = [c for c in [base_ck, *srcs] if c is not None and c is not ref]
    check_compatible(ref, others)
    trg_ck = as_checkpoint(target) if target is not None else None
    if trg_ck is not None and trg_ck is not ref:
        check_compatible(ref, [trg_ck])
    source_dir = trg_ck.path if trg_ck is not None else (base_ck.path if base_ck is not None else srcs[0].path)

    report = MergeReport(method=method, donors=[str(s.path) for s in srcs],
                         base=str(base_ck.path) if base_ck is not None else None, weights=ws, density=ds,
                         lambda_=float(lambda_), normalize=norm, rescale=resc, seed=int(seed))
    names = sorted(ref.keys(), key=natural_key)
    layout = [OutTensor(n, ref.dtype(n), ref.info(n).shape) for n in names]

    def produce(name: str) -> torch.Tensor:
        b = base_ck.get(name) if (spec.needs_base and base_ck is not None) else None
        ts = [s.get(name) for s in srcs]
        gen = merge_generator(seed, name) if spec.sparsify == "random" else None
        out = require_finite(name, merge_tensor_mergekit(method, b, ts, ws, ds, lambda_, norm,
                                                         resc, gen), f"{method} merge")
        r = b if b is not None else ts[0]
        changed = _n_bits_differ(out, r.to(out.dtype))
        report.tensors += 1
        report.elements += out.numel()
        report.elements_changed += changed
        report.tensors_changed += int(changed > 0)
        return out

    base_models = ([str(base_ck.path)] if base_ck is not None else []) + [str(s.path) for s in srcs]
    inputs = [s.path for s in srcs] + ([base_ck.path] if base_ck is not None else [])
    write_model_dir(
        out_dir, layout, produce, source_dir=source_dir, base_models=base_models,
        tags=["merge", "mergekit-method", method, *tags], spec_text=spec_text,
        description=(f"A `{method}` merge (defined as mergekit defines it) of "
                     f"{', '.join(f'`{d}`' for d in report.donors)}"
                     + (f" onto the base `{report.base}`" if report.base and spec.needs_base else "")
                     + f"; weights {ws}, density {ds}, lambda {float(lambda_):g}, normalize {norm}, "
                     f"rescale {resc}, seed {int(seed)}. A whole-model baseline: no channel localization."),
        max_shard_size=max_shard_size, overwrite=overwrite, input_dirs=inputs, progress=progress,
    )
    report.out_dir = Path(out_dir)
    report.bytes_written = sum(t.nbytes for t in layout)
    return report
