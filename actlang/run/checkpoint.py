"""Read model checkpoints tensor by tensor, safetensors only.

:class:`Checkpoint` opens a Hugging Face model directory through its headers
(:class:`actlang.arch.safetensors.Headers`: missing shards, truncated files, bad headers are
:class:`RuntimeUserError`), and reads one tensor at a time with positioned reads. Reading with ``pread`` rather than a memory map keeps
the process' resident memory at the tensors it holds, not at the pages of the files it has
touched — the point of working tensor by tensor.

Pickle checkpoints (``pytorch_model.bin``, ``*.pt``) are refused: unpickling can run
arbitrary code. ``allow_pickle=True`` (a spec must ask for it explicitly) loads them with
``torch.load(weights_only=True, mmap=True)``.

``check_compatible(target, donors)`` compares architectures, tensor names, shapes and
vocabularies before any heavy work, naming the first mismatching tensor.
"""

from __future__ import annotations

import math
import mmap
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from actlang.arch import safetensors as H
from actlang.arch.errors import RuntimeUserError
from actlang.arch.safetensors import TensorInfo, natural_key, read_safetensors_header

__all__ = [
    "Checkpoint",
    "FileSlice",
    "TensorInfo",
    "check_compatible",
    "DTYPE_TO_ST",
    "ST_TO_DTYPE",
    "natural_key",
    "read_safetensors_header",
]

ST_TO_DTYPE: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        ST_TO_DTYPE[_name] = getattr(torch, _attr)
DTYPE_TO_ST = {v: k for k, v in ST_TO_DTYPE.items()}


@dataclass(frozen=True)
class FileSlice:
    """The raw bytes of one tensor in a safetensors file: copied to an output verbatim,
    in chunks, without ever holding the tensor in memory."""

    file: Path
    start: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class Checkpoint:
    """A model directory opened for tensor-by-tensor reading.

    ``Checkpoint.open(path)`` reads ``config.json`` and the safetensors headers only.
    ``get(name)`` reads one tensor into memory (a fresh CPU tensor, owned by the caller).
    """

    def __init__(self, path: Path, config: dict[str, Any], infos: dict[str, TensorInfo],
                 metadata: dict[str, str], pickled: dict[str, torch.Tensor] | None = None) -> None:
        self.path = path
        self.config = config
        self._infos = infos
        self.metadata = metadata
        self._pickled = pickled

    @classmethod
    def open(cls, path: str | Path, *, allow_pickle: bool = False) -> "Checkpoint":
        headers = H.Headers.open(path, allow_pickle=allow_pickle)
        if headers.pickled:
            return cls._open_pickle(headers.path, headers.config, headers.pickled)
        return cls(headers.path, headers.config, headers.infos, headers.metadata)

    @classmethod
    def _open_pickle(cls, path: Path, config: dict[str, Any], names: list[str]) -> "Checkpoint":
        tensors: dict[str, torch.Tensor] = {}
        for n in names:
            try:
                sd = torch.load(path / n, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # noqa: BLE001 - report any load failure as a user error
                raise RuntimeUserError(f"cannot load pickle checkpoint {path / n}: {err}") from None
            if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
                sd = sd["state_dict"]
            for k, v in sd.items():
                if isinstance(v, torch.Tensor):
                    tensors[k] = v
        infos = {
            k: TensorInfo(k, DTYPE_TO_ST[v.dtype], tuple(v.shape), None, 0,
                          v.numel() * v.element_size())
            for k, v in tensors.items()
        }
        return cls(path, config, infos, {"format": "pt"}, pickled=tensors)

    # -- access ----------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise RuntimeUserError(f"tensor {name} is not in the checkpoint {self.path}") from None

    def infos(self) -> list[TensorInfo]:
        return list(self._infos.values())

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    def dtype(self, name: str) -> torch.dtype:
        """The torch dtype of tensor ``name``."""
        code = self.info(name).dtype
        if code not in ST_TO_DTYPE:
            raise RuntimeUserError(f"tensor {name} has dtype {code}, which this torch build "
                                   f"({torch.__version__}) cannot hold")
        return ST_TO_DTYPE[code]

    def headers(self) -> H.Headers:
        """This checkpoint's layout, for the torch-free checks of :mod:`actlang.arch`."""
        return H.Headers(self.path, self.config, self._infos, self.metadata)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self._infos.items()}

    def get(self, name: str) -> torch.Tensor:
        """One tensor, the caller's to read and write: a private (copy-on-write) mapping of
        the file. Pages only read stay the page cache's, so reading a model's tensors takes
        no private memory, and two processes reading one model share it; a page written
        becomes the caller's own copy, and the file never changes."""
        info = self.info(name)
        if self._pickled is not None:
            return self._pickled[name].clone()
        assert info.file is not None
        dtype = self.dtype(name)
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        with open(info.file, "rb", buffering=0) as f:
            if os.fstat(f.fileno()).st_size < info.start + info.nbytes:
                raise RuntimeUserError(f"{info.file} is truncated while reading {name}")
            start = info.start - info.start % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(f.fileno(), info.start + info.nbytes - start,
                               access=mmap.ACCESS_COPY, offset=start)
        if hasattr(mapped, "madvise"):  # read ahead: the tensor is read whole, in order
            mapped.madvise(mmap.MADV_WILLNEED)
        return torch.frombuffer(mapped, dtype=dtype, offset=info.start - start,
                                count=info.nbytes // dtype.itemsize).reshape(info.shape)

    def raw_slice(self, name: str) -> FileSlice | None:
        """Where tensor ``name``'s bytes are (``None`` for a pickle checkpoint)."""
        info = self.info(name)
        if self._pickled is not None or info.file is None:
            return None
        return FileSlice(info.file, info.start, info.nbytes, self.dtype(name), info.shape)

    def iter_tensors(self, names: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for n in names or self.keys():
            yield n, self.get(n)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor in memory (for small models and tests)."""
        return {n: t for n, t in self.iter_tensors()}


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system once they pass 128 MB: glibc keeps
    freed blocks under 32 MB for reuse, so the temporaries of a pass over a model's tensors
    (a layer's masks, task vectors, differences) would add up to far more than one
    tensor's — measured: the selection of a transfer between 1.35 GB models held 0.9 GB
    after it ended. Called after each tensor of such a pass; below the bound, the freed
    blocks stay for the next tensor (pages given back cost page faults when used again).
    (No-op with another allocator.)"""
    if _GLIBC is None:
        return
    if _GLIBC.mallinfo2 is not None and _GLIBC.mallinfo2().fordblks < _KEEP_FREE:
        return
    _GLIBC.malloc_trim(0)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside: for passes over a model's weights, a tensor at a time.

    Their ops are elementwise or per-row reductions over tensors read from the page cache,
    bound by memory rather than arithmetic, and there are many of them (several per tensor).
    Every parallel op waits for its slowest thread, and on a machine whose other cores are
    busy that is a scheduler time slice: measured on 2 cores beside a training run, ``sqrt``
    of 2,816 float64 values took 7.4 ms on two threads and 0.007 ms on one, and the
    weight-delta pass over two 1.35 GB models 10.8 s of CPU against 4.5 s. The values are
    the same bits on any number of threads (elementwise ops, and reductions along rows that
    torch splits between threads by row)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


#: Freed heap bytes kept for reuse.
_KEEP_FREE = 128 * 2**20


def _glibc() -> Any:
    import ctypes
    from types import SimpleNamespace

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    info = getattr(libc, "mallinfo2", None)  # glibc 2.33 and later
    if info is not None:
        info.restype = Mallinfo2
    return SimpleNamespace(malloc_trim=trim, mallinfo2=info)


_GLIBC = _glibc()


def require_finite(name: str, tensor: torch.Tensor, made_by: str) -> torch.Tensor:
    """``tensor`` itself, or a :class:`RuntimeUserError` if an output tensor would hold NaN
    or Inf (an input model's weights are broken where they were read)."""
    # A finite sum has no NaN or Inf in it: one pass, no temporary (isfinite() makes three,
    # each the tensor's size). Only a sum that is not finite is looked at closely.
    if tensor.is_floating_point() and not math.isfinite(float(tensor.sum())) \
            and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise RuntimeUserError(
            f"the {made_by} would write {bad:,} NaN/Inf values into tensor {name}",
            hint="an input model has non-finite weights there; check the donor (and base) "
                 "checkpoints, or exclude that module")
    return tensor


def as_checkpoint(x: "Checkpoint | str | Path", allow_pickle: bool = False) -> Checkpoint:
    """``x`` itself if it is a :class:`Checkpoint`, else the checkpoint of directory ``x``."""
    if isinstance(x, Checkpoint):
        return x
    if isinstance(x, (str, Path)):
        return Checkpoint.open(x, allow_pickle=allow_pickle)
    raise RuntimeUserError(f"expected a model directory or a Checkpoint, got {type(x).__name__}",
                           hint="in-memory models go through apply_masks_")


def check_compatible(target: "Checkpoint | str | Path", donors: Sequence["Checkpoint | str | Path"]) -> None:
    """:func:`actlang.arch.safetensors.check_compatible` for checkpoints or directories."""
    H.check_compatible(as_checkpoint(target).headers(), [as_checkpoint(d).headers() for d in donors])
