"""One batch of hooked activations reduced to per-channel sums, in cache-sized row blocks.

A hook's work is memory-bound: a few elementwise passes over a ``[rows, channels]``
activation (``|a|``, ``a^2``, ``a > 0``, a paired difference) and a column sum after each.
Done on whole tensors, every pass streams the activation through main memory and every
elementwise op is one OpenMP fork/join. On CPU, :class:`Reducer` instead walks the rows in
blocks of about :data:`BLOCK_BYTES`, so each activation is read from memory once and the
other passes hit the L2 cache, and it runs them on one thread, so there is no fork/join per
op. ``bench/bench_stats.py`` on a 2-core VM: whole-tensor reductions on 2 threads cost
0.05–0.18 s per corpus batch depending on how the VM scheduled the OpenMP worker (the
capture took 1.10x–1.40x the plain forward, varying from process to process); blocked on
one thread, 0.05 s in every process. The forward itself keeps all its threads. For real
models the reductions are a small part anyway: they grow with the hidden size, the forward
with its square. (The switch is ``torch.set_num_threads``, which is process-wide: torch
work running concurrently in another Python thread also runs on one thread meanwhile.)

On accelerators a block is the whole tensor: kernels are asynchronous, and nothing here
waits for the device (no ``.item()``, no finiteness check).

Unscored rows (padding, tokens outside a corpus' score span) never reach the sums, so a
NaN or inf at a padded position (e.g. an all-masked attention row) is harmless: on CPU the
blocks are views of the runs of scored rows (no copy, no masking); on accelerators the
unscored rows are zeroed with ``torch.where`` first.

Sums of a block are float32 (the work precision of fp32/bf16/fp16 models; float64 for
float64 models); the blocks' sums are added up in float64.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import MutableMapping

import torch

from actlang.run.checkpoint import one_thread

__all__ = ["BLOCK_BYTES", "Reducer", "ScoredRows", "work_dtype"]

#: Bytes of one row block on CPU (about one L2 cache; measured best among 256 KiB-4 MiB).
BLOCK_BYTES = 1 << 20


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision sums are taken in: float32, or float64 for float64 activations."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


@dataclass(frozen=True, eq=False)
class ScoredRows:
    """Which rows of a hooked ``[rows, C]`` activation are scored.

    Attributes:
        total: rows of the activation.
        count: scored rows (a 0-d device tensor on accelerators, so the hooks never wait
            for the device).
        keep: ``[rows, 1]`` bool, True for scored rows; None when every row is scored.
        runs: maximal ``(start, stop)`` runs of scored rows.
    """

    total: int
    count: int | torch.Tensor
    keep: torch.Tensor | None
    runs: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, mask: torch.Tensor | None, positions: int, per_position: int = 1,
           device: torch.device | str = "cpu") -> "ScoredRows":
        """Rows = ``positions`` x ``per_position`` (e.g. tokens x heads for a per-head norm).

        Args:
            mask: ``[positions]`` bool, True where scored; None when every position is.
            positions: batch x sequence positions.
            per_position: rows per position.
            device: where the activations live.
        """
        device = torch.device(device)
        total = positions * per_position
        if mask is None:
            return cls(total, total, None, ((0, total),) if total else ())
        assert mask.shape == (positions,), f"mask of {list(mask.shape)} for {positions} positions"
        keep = (mask.repeat_interleave(per_position) if per_position > 1 else mask).to(device).unsqueeze(1)
        edges = torch.diff(mask.to("cpu", torch.int8), prepend=torch.zeros(1, dtype=torch.int8),
                           append=torch.zeros(1, dtype=torch.int8))
        starts = (edges == 1).nonzero().squeeze(1).tolist()
        stops = (edges == -1).nonzero().squeeze(1).tolist()
        runs = tuple((start * per_position, stop * per_position) for start, stop in zip(starts, stops))
        count = keep.sum() if device.type != "cpu" else sum(stop - start for start, stop in runs)
        return cls(total, count, keep, runs)


class Reducer:
    """Per-batch reductions with reusable work buffers.

    Args:
        block_bytes: size of a CPU row block (runs of scored rows are cut into blocks of at
            most this size).
        masked: reduce all rows at once with unscored rows zeroed, as on accelerators (which
            always do), also on CPU.
    """

    def __init__(self, block_bytes: int = BLOCK_BYTES, masked: bool = False) -> None:
        assert block_bytes > 0, "a block holds at least one row"
        self.block_bytes = block_bytes
        self.masked = masked
        self._buffers: dict[tuple, torch.Tensor] = {}

    # -- buffers and blocks -----------------------------------------------------------------

    def _buffer(self, slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A work tensor reused across calls (a fresh multi-megabyte tensor per hook call
        costs page faults on CPU)."""
        key = (slot, shape, dtype, device)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return buffer

    def _is_masked(self, device: torch.device) -> bool:
        return self.masked or device.type != "cpu"

    def _blocks(self, rows: ScoredRows, width: int, dtype: torch.dtype, device: torch.device) -> list[slice]:
        """Row slices to reduce: all rows at once when masked, else the scored runs cut into
        blocks of at most ``block_bytes``."""
        if self._is_masked(device):
            return [slice(0, rows.total)] if rows.total else []
        step = max(1, self.block_bytes // (width * torch.empty((), dtype=dtype).element_size()))
        return [slice(s, min(stop, s + step)) for start, stop in rows.runs for s in range(start, stop, step)]

    def _load(self, x: torch.Tensor, keep: torch.Tensor | None, slot: str, dtype: torch.dtype) -> torch.Tensor:
        """``x`` [rows, C] in ``dtype`` with unscored rows zeroed, for reading only: ``x``
        itself when nothing needs changing, else a copy in a work buffer."""
        if keep is None and x.dtype == dtype:
            return x
        out = self._buffer(slot, tuple(x.shape), dtype, x.device)
        if keep is None:
            return out.copy_(x)
        if x.dtype != dtype:
            x = x.to(dtype)
        return torch.where(keep, x, torch.zeros((), dtype=dtype, device=x.device), out=out)

    def _keep(self, rows: ScoredRows, device: torch.device, block: slice) -> torch.Tensor | None:
        """The mask to apply inside a block: none for blocks of scored rows only."""
        return rows.keep[block] if self._is_masked(device) and rows.keep is not None else None

    @staticmethod
    def _add(acc: MutableMapping[str, torch.Tensor], fields: list[str], parts: torch.Tensor,
             count: torch.Tensor | int) -> None:
        """Add the blocks' sums ``parts`` [blocks, fields, C] to the float64 accumulators
        (which may sit on another device: a model spread over several GPUs)."""
        device = acc["count"].device
        sums = parts.sum(0, dtype=torch.float64).to(device)  # [fields, C]
        for index, name in enumerate(fields):
            acc[name] += sums[index]
        acc["count"] += count.to(device) if isinstance(count, torch.Tensor) else count

    # -- unpaired ---------------------------------------------------------------------------

    def unpaired(self, acc: MutableMapping[str, torch.Tensor], x: torch.Tensor, rows: ScoredRows) -> None:
        """Add one batch to unpaired accumulators.

        Args:
            acc: float64 ``[C]`` tensors per field (``count`` and any of ``sum``,
                ``sum_abs``, ``sum_sq``, ``count_pos``); the fields present are computed.
            x: activations ``[rows, C]`` (a view of the module's output; never written).
            rows: which rows are scored.
        """
        assert x.shape[0] == rows.total, f"{x.shape[0]} activation rows for {rows.total} mask rows"
        width = x.shape[1]
        fields = [f for f in ("sum", "sum_abs", "sum_sq", "count_pos") if f in acc]
        dtype, device = work_dtype(x.dtype), x.device
        blocks = self._blocks(rows, width, dtype, device)
        parts = self._buffer("parts", (len(blocks), len(fields), width), dtype, device)
        column = {name: index for index, name in enumerate(fields)}
        with one_thread() if device.type == "cpu" else contextlib.nullcontext():
            for index, block in enumerate(blocks):
                xb = self._load(x[block], self._keep(rows, device, block), "x", dtype)
                part = parts[index]
                if "sum" in column:
                    torch.sum(xb, 0, out=part[column["sum"]])
                if "sum_abs" in column or "sum_sq" in column:
                    y = torch.abs(xb, out=self._buffer("y", tuple(xb.shape), dtype, device))
                    if "sum_abs" in column:
                        torch.sum(y, 0, out=part[column["sum_abs"]])
                    if "sum_sq" in column:
                        torch.sum(y.mul_(y), 0, out=part[column["sum_sq"]])
                if "count_pos" in column:
                    # a float 0/1 buffer: a bool reduction over the row axis is slow on CPU
                    y = torch.gt(xb, 0, out=self._buffer("y", tuple(xb.shape), dtype, device))
                    torch.sum(y, 0, out=part[column["count_pos"]])
            self._add(acc, fields, parts, rows.count)

    # -- paired -----------------------------------------------------------------------------

    def paired(self, acc: MutableMapping[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor,
               rows: ScoredRows) -> None:
        """Add one batch of the lock-step difference ``b - a`` to paired accumulators.

        Args:
            acc: float64 ``[C]`` tensors per field (``count``, ``sum_absdiff`` and any of
                ``sum_diff``, ``sum_sqdiff``, ``sum_abs_a``, ``sum_abs_b``).
            a, b: the two models' activations ``[rows, C]`` on the same batch (never written).
            rows: which rows are scored.
        """
        assert a.shape == b.shape, f"paired activations differ in shape: {list(a.shape)} vs {list(b.shape)}"
        assert b.shape[0] == rows.total, f"{b.shape[0]} activation rows for {rows.total} mask rows"
        width = b.shape[1]
        fields = [f for f in ("sum_diff", "sum_absdiff", "sum_sqdiff", "sum_abs_a", "sum_abs_b") if f in acc]
        dtype = torch.promote_types(work_dtype(a.dtype), work_dtype(b.dtype))
        device = b.device
        blocks = self._blocks(rows, width, dtype, device)
        parts = self._buffer("parts", (len(blocks), len(fields), width), dtype, device)
        column = {name: index for index, name in enumerate(fields)}
        with one_thread() if device.type == "cpu" else contextlib.nullcontext():
            for index, block in enumerate(blocks):
                keep = self._keep(rows, device, block)
                ab = self._load(a[block], keep, "a", dtype)
                bb = self._load(b[block], keep, "b", dtype)
                part = parts[index]
                d = torch.sub(bb, ab, out=self._buffer("d", tuple(bb.shape), dtype, device))
                if "sum_diff" in column:
                    torch.sum(d, 0, out=part[column["sum_diff"]])
                torch.sum(d.abs_(), 0, out=part[column["sum_absdiff"]])
                if "sum_sqdiff" in column:
                    torch.sum(d.mul_(d), 0, out=part[column["sum_sqdiff"]])
                if "sum_abs_a" in column:
                    torch.sum(torch.abs(ab, out=d), 0, out=part[column["sum_abs_a"]])
                if "sum_abs_b" in column:
                    torch.sum(torch.abs(bb, out=d), 0, out=part[column["sum_abs_b"]])
            self._add(acc, fields, parts, rows.count)
