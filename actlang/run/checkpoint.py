"""Read model checkpoints tensor by tensor, safetensors only.

:class:`Checkpoint` opens a Hugging Face model directory (``config.json`` plus
``model.safetensors`` or a sharded ``model.safetensors.index.json``), validates the headers
(missing shards, truncated files, bad headers are :class:`RuntimeUserError`), and reads one
tensor at a time with positioned reads. Reading with ``pread`` rather than a memory map keeps
the process' resident memory at the tensors it holds, not at the pages of the files it has
touched — the point of working tensor by tensor.

Pickle checkpoints (``pytorch_model.bin``, ``*.pt``) are refused: unpickling can run
arbitrary code. ``allow_pickle=True`` (a spec must ask for it explicitly) loads them with
``torch.load(weights_only=True, mmap=True)``.

``check_compatible(target, donors)`` compares architectures, tensor names, shapes and
vocabularies before any heavy work, naming the first mismatching tensor.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from actlang.run.errors import RuntimeUserError
from actlang.run.files import pickle_files

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

def natural_key(s: str) -> list[Any]:
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's place in a safetensors file (no data)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path | None
    start: int  # absolute byte offset of the data in ``file``
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse a safetensors header: ``(header dict, offset of the data section)``.

    Raises :class:`RuntimeUserError` for a missing, truncated or malformed file.
    """
    if not path.is_file():
        raise RuntimeUserError(f"checkpoint file is missing: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise RuntimeUserError(f"{path} is truncated ({size} bytes): not a safetensors file")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > 100_000_000 or 8 + n > size:
            raise RuntimeUserError(
                f"{path} is not a valid safetensors file (header of {n} bytes in a {size}-byte file)",
                hint="the file is truncated or corrupt; download or save it again",
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RuntimeUserError(f"{path} has a corrupt safetensors header") from None
    data_start = 8 + n
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            a, b = meta["data_offsets"]
            meta["shape"], meta["dtype"]
        except (KeyError, TypeError, ValueError):
            raise RuntimeUserError(f"{path} has a corrupt safetensors header (entry {name!r})") from None
        end = max(end, b)
    if data_start + end > size:
        raise RuntimeUserError(
            f"{path} is truncated: its header describes {data_start + end} bytes, the file has {size}",
            hint="the download or save was interrupted; fetch or save the model again",
        )
    return header, data_start


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
        path = Path(path)
        if not path.exists():
            raise RuntimeUserError(f"model directory not found: {path}")
        if not path.is_dir():
            raise RuntimeUserError(f"{path} is a file; expected a model directory (config.json + safetensors)")
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise RuntimeUserError(
                f"no config.json in {path}",
                hint="a model directory is what save_pretrained() writes: config.json plus *.safetensors",
            )
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as err:
            raise RuntimeUserError(f"{cfg_path} is not valid JSON: {err}") from None

        index = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        files: list[Path]
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise RuntimeUserError(f"{index} is not a valid safetensors index") from None
            files = [path / f for f in sorted(set(weight_map.values()), key=natural_key)]
            for f in files:
                if not f.is_file():
                    raise RuntimeUserError(
                        f"shard {f.name} listed in {index.name} is missing from {path}",
                        hint="the download is incomplete",
                    )
        elif single.is_file():
            files = [single]
        else:
            files = sorted(path.glob("*.safetensors"), key=natural_key)
        if not files:
            pickles = [p.name for p in pickle_files(path)]
            if pickles and allow_pickle:
                return cls._open_pickle(path, config, pickles)
            if pickles:
                raise RuntimeUserError(
                    f"{path} holds only pickle checkpoints ({', '.join(pickles)}); actlang loads safetensors only",
                    hint="unpickling can run arbitrary code. Convert the model (load it and save_pretrained() it, "
                    "which writes safetensors), or allow pickle explicitly (allow_pickle=True) if you trust the file",
                )
            raise RuntimeUserError(f"no *.safetensors weights in {path}", hint="the model directory is incomplete")

        infos: dict[str, TensorInfo] = {}
        metadata: dict[str, str] = {}
        for f in files:
            header, data_start = read_safetensors_header(f)
            metadata.update(header.get("__metadata__") or {})
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                if meta["dtype"] not in ST_TO_DTYPE:
                    raise RuntimeUserError(f"tensor {name} in {f.name} has unsupported dtype {meta['dtype']}")
                a, b = meta["data_offsets"]
                if name in infos:
                    raise RuntimeUserError(f"tensor {name} appears in two shards of {path}")
                infos[name] = TensorInfo(
                    name=name, dtype=ST_TO_DTYPE[meta["dtype"]], shape=tuple(meta["shape"]),
                    file=f, start=data_start + a, nbytes=b - a,
                )
        return cls(path, config, infos, metadata)

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
            k: TensorInfo(k, v.dtype, tuple(v.shape), None, 0, v.numel() * v.element_size())
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

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self._infos.items()}

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (a new CPU tensor the caller owns)."""
        info = self.info(name)
        if self._pickled is not None:
            return self._pickled[name].clone()
        assert info.file is not None
        buf = bytearray(info.nbytes)
        with open(info.file, "rb", buffering=0) as f:
            fd = f.fileno()
            view = memoryview(buf)
            pos, done = info.start, 0
            if not hasattr(os, "preadv"):
                f.seek(pos)
            while done < info.nbytes:
                if hasattr(os, "preadv"):
                    n = os.preadv(fd, [view[done:]], pos + done)
                else:
                    n = f.readinto(view[done:])
                if not n:
                    raise RuntimeUserError(f"{info.file} is truncated while reading {name}")
                done += n
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        return torch.frombuffer(buf, dtype=info.dtype).reshape(info.shape)

    def raw_slice(self, name: str) -> FileSlice | None:
        """Where tensor ``name``'s bytes are (``None`` for a pickle checkpoint)."""
        info = self.info(name)
        if self._pickled is not None or info.file is None:
            return None
        return FileSlice(info.file, info.start, info.nbytes, info.dtype, info.shape)

    def iter_tensors(self, names: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for n in names or self.keys():
            yield n, self.get(n)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor in memory (for small models and tests)."""
        return {n: t for n, t in self.iter_tensors()}


def as_checkpoint(x: "Checkpoint | str | Path", allow_pickle: bool = False) -> Checkpoint:
    """``x`` itself if it is a :class:`Checkpoint`, else the checkpoint of directory ``x``."""
    if isinstance(x, Checkpoint):
        return x
    if isinstance(x, (str, Path)):
        return Checkpoint.open(x, allow_pickle=allow_pickle)
    raise RuntimeUserError(f"expected a model directory or a Checkpoint, got {type(x).__name__}",
                           hint="in-memory models go through apply_masks_")


def check_compatible(target: "Checkpoint | str | Path", donors: Sequence["Checkpoint | str | Path"]) -> None:
    """Raise :class:`RuntimeUserError` naming the first difference that makes a transfer
    between ``target`` and each donor impossible: architecture, vocabulary, tensor names or
    shapes. Reads only configs and headers."""
    trg = as_checkpoint(target)
    for d in donors:
        src = as_checkpoint(d)
        mt_t, mt_s = trg.model_type, src.model_type
        if mt_t != mt_s:
            raise RuntimeUserError(
                f"architectures differ: {src.path} is {mt_s!r}, the target {trg.path} is {mt_t!r}",
                hint="channel transfer needs two models of one architecture (e.g. a base and its fine-tune)",
            )
        names_t, names_s = trg.keys(), set(src.keys())
        for name in sorted(names_t, key=natural_key):
            if name not in names_s:
                raise RuntimeUserError(
                    f"tensor {name} of the target {trg.path} is missing from {src.path}",
                    hint="the two models have different layouts (layer count, tied embeddings or biases)",
                )
        extra = sorted(names_s - set(names_t), key=natural_key)
        if extra:
            raise RuntimeUserError(
                f"tensor {extra[0]} of {src.path} is not in the target {trg.path}",
                hint="the two models have different layouts (layer count, tied embeddings or biases)",
            )
        for name in sorted(names_t, key=natural_key):
            a, b = trg.info(name).shape, src.info(name).shape
            if a != b:
                vocab = ""
                if trg.config.get("vocab_size") != src.config.get("vocab_size"):
                    vocab = (f" (vocabularies differ: {trg.config.get('vocab_size')} vs "
                             f"{src.config.get('vocab_size')} tokens)")
                raise RuntimeUserError(
                    f"shapes differ at tensor {name}: target {list(a)}, {src.path} {list(b)}{vocab}",
                    hint="channel transfer needs two models of the same size and tokenizer",
                )
