"""Channel transfer: ``theta <- theta_trg + lambda * (theta_src - theta_trg)`` on masked
channels only.

    report = transfer("zoo/tuned", [Donor("zoo/base", mask, lam=1.0)], "out/recovered")

Each :class:`Donor` brings a model, a :class:`~actlang.run.mask.ChannelMask` and a
``lam``. An element of a tensor moves when its row/column is selected along any masked axis
(bias elements move with their rows). ``lam == 1`` copies the donor's value exactly;
``lam == 0`` leaves the target exactly; every element that no donor selects — and every
tensor that no mask touches — is bit-identical to the target.

Several donors (merging): where the masks overlap, ``overlap`` decides —

* ``mean``: the target plus the mean of the donors' updates ``lam_i (src_i - trg)``;
* ``max_score``: the donor whose selecting unit has the highest score (ties: earlier donor);
* ``priority``: the earliest donor in the list;
* ``error``: a :class:`RuntimeUserError` naming the tensor.

:func:`transfer` works over safetensors checkpoints *tensor by tensor*: it validates the
architectures, tensor names, shapes and masks first (headers only), then reads one tensor of
the target (and of each donor whose mask touches it), computes the result and streams it
into the output shard — memory stays near one tensor per model. Tensors that no mask
touches are copied byte for byte from the target file, in chunks, without being loaded. :func:`apply_masks_` does the
same on in-memory ``nn.Module`` s (for notebooks, fine-tuning and tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from actlang.arch.errors import RuntimeUserError
from actlang.run.checkpoint import (
    Checkpoint,
    FileSlice,
    as_checkpoint,
    check_compatible,
    natural_key,
    one_thread,
    require_finite,
)
from actlang.run.mask import ChannelMask, moving_axes
from actlang.run.output import DEFAULT_MAX_SHARD_SIZE, OutTensor, write_model_dir

__all__ = [
    "Donor",
    "OVERLAP_POLICIES",
    "TransferReport",
    "apply_masks_",
    "merge_tensor",
    "move_slices",
    "transfer",
]

OVERLAP_POLICIES = ("mean", "max_score", "priority", "error")


@dataclass
class Donor:
    """A donor model (directory, :class:`Checkpoint`, or ``nn.Module`` for
    :func:`apply_masks_`), the mask of what it gives, and the interpolation ``lam``."""

    model: Any
    mask: ChannelMask
    lam: float = 1.0
    name: str | None = None

    def label(self, i: int) -> str:
        if self.name:
            return self.name
        if isinstance(self.model, Checkpoint):
            return str(self.model.path)
        if isinstance(self.model, (str, Path)):
            return str(self.model)
        return f"donor {i}"


@dataclass
class TransferReport:
    """What a transfer did."""

    out_dir: Path | None = None
    elements_moved: int = 0
    elements_overlapping: int = 0
    tensors_changed: list[str] = field(default_factory=list)
    per_tensor: dict[str, int] = field(default_factory=dict)
    channels_per_donor: list[int] = field(default_factory=list)
    bytes_written: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "elements_moved": self.elements_moved,
            "elements_overlapping": self.elements_overlapping,
            "tensors_changed": len(self.tensors_changed),
            "channels_per_donor": self.channels_per_donor,
            "bytes_written": self.bytes_written,
        }


def _check_args(donors: Sequence[Donor], overlap: str) -> None:
    if overlap not in OVERLAP_POLICIES:
        raise RuntimeUserError(f"unknown overlap policy {overlap!r}", hint=f"policies: {', '.join(OVERLAP_POLICIES)}")
    if not donors:
        raise RuntimeUserError("a transfer needs at least one donor")
    for i, d in enumerate(donors):
        if not isinstance(d.mask, ChannelMask):
            raise RuntimeUserError(f"donor {d.label(i)} has no ChannelMask")
        if not math.isfinite(float(d.lam)):
            raise RuntimeUserError(f"lambda of donor {d.label(i)} is not finite: {d.lam}")


def _work_dtype(trg: torch.Tensor) -> torch.dtype:
    return torch.float32 if trg.dtype in (torch.float16, torch.bfloat16) or not trg.is_floating_point() else trg.dtype


def _check_donor_tensor(name: str, trg: torch.Tensor, src: torch.Tensor, donor: str) -> None:
    if tuple(src.shape) != tuple(trg.shape):
        raise RuntimeUserError(f"shapes differ at tensor {name}: target {list(trg.shape)}, donor {list(src.shape)}")
    if trg.is_floating_point() != src.is_floating_point():  # raw codes, not weights
        raise RuntimeUserError(
            f"tensor {name} holds {str(src.dtype).removeprefix('torch.')} values in "
            f"{donor} and {str(trg.dtype).removeprefix('torch.')} in the target",
            hint="a quantized or otherwise converted checkpoint cannot be mixed with "
                 "real weights; use both models in floating point")


def _interpolate(trg: torch.Tensor, src: torch.Tensor, lam: float, work: torch.dtype) -> torch.Tensor:
    """``trg + lam (src - trg)`` elementwise, in ``work``, as ``trg``'s dtype (``src``
    itself, converted, for ``lam == 1``)."""
    if lam == 1:
        return src.to(trg.dtype)
    t = trg.to(work)
    return (t + lam * (src.to(work) - t)).to(trg.dtype)


def move_slices(name: str, trg: torch.Tensor, src: torch.Tensor, axes: Mapping[int, torch.Tensor],
                lam: float, label: str = "donor") -> int | None:
    """One donor's transfer into ``trg`` in place, a selected slice along each axis at a time:
    the elements :func:`merge_tensor` moves given ``ChannelMask.element_mask`` of ``axes``
    (bool per index along each masked axis), with the same values, without building that
    mask or gathering through it. Returns the number of elements moved, or ``None`` where
    this cannot be done slice by slice (several axes with ``lam != 1``: a slice must not
    read what another has written); then nothing was written."""
    shape = tuple(trg.shape)
    selected = {axis: m.nonzero().reshape(-1)
                for axis, m in moving_axes(name, axes, shape).items()}
    if not selected or lam == 0:
        return 0
    if len(selected) > 1 and lam != 1:
        return None
    _check_donor_tensor(name, trg, src, label)
    work = _work_dtype(trg)
    for axis, index in selected.items():  # lam == 1 where slices cross: both copy the donor's
        trg.index_copy_(axis, index, _interpolate(trg.index_select(axis, index),
                                                  src.index_select(axis, index), lam, work))
    untouched = 1
    for axis, size in enumerate(shape):
        untouched *= size - (len(selected[axis]) if axis in selected else 0)
    return math.prod(shape) - untouched


def merge_tensor(
    name: str,
    trg: torch.Tensor,
    srcs: Sequence[torch.Tensor | None],
    masks: Sequence[torch.Tensor | None],
    lams: Sequence[float],
    overlap: str = "mean",
    scores: Sequence[torch.Tensor | None] | None = None,
    labels: Sequence[str] | None = None,
    in_place: bool = False,
) -> tuple[torch.Tensor, int, int]:
    """One tensor's transfer: ``(result, elements moved, elements with > 1 donor)``.

    ``masks[i]`` (bool, shape of ``trg``) says where donor ``i`` applies (``None``: nowhere);
    ``srcs[i]`` is needed only where ``masks[i]`` is set. The result *is* ``trg`` (same
    object) when nothing moves, and with ``in_place`` (``trg`` is the caller's copy: a
    copy-on-write mapping of the target's file, whose pages become private only where an
    element moves into them).
    """
    active = [i for i, m in enumerate(masks) if m is not None and lams[i] != 0 and bool(m.any())]
    if not active:
        return trg, 0, 0
    work = _work_dtype(trg)

    def value(i: int) -> torch.Tensor:
        src = srcs[i]
        assert src is not None, name
        _check_donor_tensor(name, trg, src, labels[i] if labels else f"donor {i}")
        return _interpolate(trg, src, lams[i], work)

    out = trg if in_place else trg.clone()
    if len(active) == 1:  # one donor: write its elements only, touch nothing else
        (i,) = active
        m = masks[i]
        assert m is not None
        out[m] = value(i)[m]
        return out, int(torch.count_nonzero(m)), 0
    moved = torch.zeros(trg.shape, dtype=torch.bool)
    # earliest donor wins where masks overlap (the priority policy; others fix overlaps below)
    for i in reversed(active):
        m = masks[i]
        assert m is not None
        out = torch.where(m, value(i), out)
        moved |= m
    n_over = 0
    if len(active) > 1:
        count = torch.zeros(trg.shape, dtype=torch.int32)
        for i in active:
            count += masks[i]  # type: ignore[operator]
        over = count > 1
        n_over = int(torch.count_nonzero(over))
        if n_over:
            if overlap == "error":
                who = [labels[i] if labels else f"donor {i}" for i in active]
                raise RuntimeUserError(
                    f"donors {', '.join(who)} overlap on {n_over} elements of tensor {name}",
                    hint="choose an overlap policy: mean, max_score or priority",
                )
            if overlap == "mean":
                t = trg.to(work)
                acc = torch.zeros(trg.shape, dtype=work)
                for i in active:
                    m = masks[i]
                    src = srcs[i]
                    assert m is not None and src is not None
                    acc += torch.where(m, lams[i] * (src.to(work) - t), torch.zeros((), dtype=work))
                mean = (t + acc / count.clamp_min(1).to(work)).to(trg.dtype)
                out = torch.where(over, mean, out)
            elif overlap == "max_score":
                ninf = torch.tensor(float("-inf"), dtype=torch.float64)
                best = torch.full(trg.shape, float("-inf"), dtype=torch.float64)
                winner = torch.full(trg.shape, -1, dtype=torch.int64)
                for i in active:  # strict '>' keeps the earlier donor on ties
                    m = masks[i]
                    s = scores[i] if scores is not None else None
                    s = torch.zeros(trg.shape, dtype=torch.float64) if s is None else s
                    s = torch.where(m, s, ninf)  # type: ignore[arg-type]
                    better = m & ((s > best) | (winner < 0))  # type: ignore[operator]
                    best = torch.where(better, s, best)
                    winner = torch.where(better, torch.tensor(i), winner)
                for i in active:
                    out = torch.where(over & (winner == i), value(i), out)
    return out, int(torch.count_nonzero(moved)), n_over


def transfer(
    target: str | Path | Checkpoint,
    donors: Sequence[Donor],
    out_dir: str | Path,
    *,
    overlap: str = "mean",
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    spec_text: str | None = None,
    base_models: Sequence[str] | None = None,
    tags: Sequence[str] = (),
    description: str | None = None,
    save_masks: bool = True,
    extra_files: Mapping[str, bytes | str | Path] | None = None,
    allow_pickle: bool = False,
    progress: Callable[[str], None] | None = None,
) -> TransferReport:
    """Transfer the donors' masked channels into ``target``; write a HF directory at ``out_dir``.

    Validates everything (architectures, names, shapes, vocabularies, masks) from headers
    before reading any tensor data. With ``save_masks``, each donor's mask is written under
    ``masks/`` in the output. ``base_models`` defaults to the target and donor paths.
    """
    _check_args(donors, overlap)
    trg = as_checkpoint(target, allow_pickle)
    srcs = [as_checkpoint(d.model, allow_pickle) for d in donors]
    check_compatible(trg, srcs)
    for d in donors:
        d.mask.validate(trg)
    labels = [d.label(i) for i, d in enumerate(donors)]
    report = TransferReport(channels_per_donor=[d.mask.n_channels for d in donors])

    names = sorted(trg.keys(), key=natural_key)
    layout = [OutTensor(n, trg.dtype(n), trg.info(n).shape) for n in names]

    def produce(name: str) -> torch.Tensor | FileSlice:
        shape = trg.info(name).shape
        touched = [d.lam != 0 and any(bool(m.any()) for m in d.mask.tensors.get(name, {}).values()) for d in donors]
        if not any(touched):
            # unchanged: copy the target's bytes verbatim, without loading the tensor
            raw = trg.raw_slice(name)
            return raw if raw is not None else trg.get(name)
        if sum(touched) == 1:  # one donor: its selected slices, written in place
            i = touched.index(True)
            t = trg.get(name)
            moved = move_slices(name, t, srcs[i].get(name), donors[i].mask.tensors[name],
                                donors[i].lam, labels[i])
            if moved is not None:
                require_finite(name, t, "transfer")
                if moved:
                    report.tensors_changed.append(name)
                    report.per_tensor[name] = moved
                    report.elements_moved += moved
                return t
        masks = [d.mask.element_mask(name, shape) if n else None for d, n in zip(donors, touched)]
        need = [m is not None for m in masks]
        t = trg.get(name)
        src_t = [s.get(name) if n else None for s, n in zip(srcs, need)]
        scores = None
        if overlap == "max_score" and sum(need) > 1:
            scores = [d.mask.element_scores(name, tuple(t.shape)) if n else None for d, n in zip(donors, need)]
        out, moved, over = merge_tensor(name, t, src_t, masks, [d.lam for d in donors], overlap,
                                        scores, labels, in_place=True)
        require_finite(name, out, "transfer")
        if moved:
            report.tensors_changed.append(name)
            report.per_tensor[name] = moved
            report.elements_moved += moved
            report.elements_overlapping += over
        return out

    extras: dict[str, bytes | str | Path] = dict(extra_files or {})
    if save_masks:
        import tempfile

        tmpdir = Path(tempfile.mkdtemp(prefix="actlang-masks-"))
        for i, d in enumerate(donors):
            stem = f"masks/donor-{i}"
            p = d.mask.save(tmpdir / f"donor-{i}.safetensors")
            extras[f"{stem}.safetensors"] = p
            extras[f"{stem}.json"] = p.with_suffix(".json")
    else:
        tmpdir = None
    try:
        with one_thread():  # a pass over the weights: see one_thread
            write_model_dir(
                out_dir, layout, produce, source_dir=trg.path,
                base_models=list(base_models) if base_models is not None else [str(trg.path), *[str(s.path) for s in srcs]],
                tags=tags, spec_text=spec_text, description=description, max_shard_size=max_shard_size,
                overwrite=overwrite, input_dirs=[s.path for s in srcs], extra_files=extras, progress=progress,
            )
    finally:
        if tmpdir is not None:
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)
    report.out_dir = Path(out_dir)
    report.bytes_written = sum(t.nbytes for t in layout)
    return report


def apply_masks_(
    target: nn.Module,
    donors: Sequence[Donor],
    *,
    overlap: str = "mean",
) -> TransferReport:
    """In-place transfer between in-memory models (``Donor.model`` is an ``nn.Module``).

    Parameters are matched by state-dict name (masks name checkpoint tensors, translated by
    the family's naming); tensors tied to another (``lm_head`` tied to the embedding) are
    updated once, through the tensor they share.
    """
    from actlang.arch.adapters import checkpoint_naming

    _check_args(donors, overlap)
    to_checkpoint = checkpoint_naming(target).to_checkpoint
    sd_t = target.state_dict()
    sds = []
    for i, d in enumerate(donors):
        if not isinstance(d.model, nn.Module):
            raise RuntimeUserError(f"apply_masks_ needs in-memory models; donor {d.label(i)} is a {type(d.model).__name__}")
        sd = d.model.state_dict()
        for name, t in sd_t.items():
            if name not in sd:
                raise RuntimeUserError(f"tensor {name} of the target is missing from donor {d.label(i)}")
            if tuple(sd[name].shape) != tuple(t.shape):
                raise RuntimeUserError(f"shapes differ at tensor {name}: target {list(t.shape)}, "
                                       f"donor {d.label(i)} {list(sd[name].shape)}")
        sds.append(sd)
    labels = [d.label(i) for i, d in enumerate(donors)]
    report = TransferReport(channels_per_donor=[d.mask.n_channels for d in donors])
    seen: set[int] = set()
    with torch.no_grad():
        for name in sorted(sd_t, key=natural_key):
            t = sd_t[name]
            if t.data_ptr() in seen and t.numel():
                continue
            masks = [d.mask.element_mask(to_checkpoint(name), tuple(t.shape)) for d in donors]
            if not any(m is not None for m in masks):
                continue
            seen.add(t.data_ptr())
            scores = None
            if overlap == "max_score":
                scores = [d.mask.element_scores(to_checkpoint(name), tuple(t.shape)) for d in donors]
            out, moved, over = merge_tensor(
                name, t.detach().cpu(), [sd[name].detach().cpu() for sd in sds], masks,
                [d.lam for d in donors], overlap, scores, labels)
            if moved:
                t.copy_(out.to(t.device))
                report.tensors_changed.append(name)
                report.per_tensor[name] = moved
                report.elements_moved += moved
                report.elements_overlapping += over
    return report
