"""Safetensors checkpoints without tensors: headers, layouts and compatibility (no torch).

:class:`Headers` opens a Hugging Face model directory (``config.json`` plus
``model.safetensors`` or a sharded ``model.safetensors.index.json``) and validates every
header: missing shards, truncated files, malformed or lying headers and unknown dtypes are a
:class:`RuntimeUserError`. It reads a few kilobytes per shard, never tensor data, so the
planner sizes a 70B checkpoint in milliseconds. :class:`actlang.run.checkpoint.Checkpoint`
reads tensors on top of it.

Pickle checkpoints (``pytorch_model.bin``, ``*.pt``) are refused unless a spec allows them:
unpickling can run arbitrary code. Allowed pickle files have no header to read, so
:attr:`Headers.pickled` lists them and the runtime loads them.

:func:`check_compatible` compares architectures, tensor names, shapes and vocabularies,
naming the first mismatching tensor.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from actlang.arch.adapters import read_config
from actlang.arch.errors import RuntimeUserError
from actlang.arch.files import pickle_files, safetensors_files

__all__ = [
    "DTYPE_BYTES",
    "Headers",
    "TensorInfo",
    "check_compatible",
    "natural_key",
    "read_safetensors_header",
]

#: Bytes per element of each safetensors dtype actlang reads.
DTYPE_BYTES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}


def natural_key(s: str) -> list[Any]:
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's place in a safetensors file (no data)."""

    name: str
    dtype: str  # the safetensors code: "F32", "BF16", ...
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

    Raises :class:`RuntimeUserError` for a missing, truncated or malformed file, or one that
    is not a regular file (a FIFO would block the read forever).
    """
    if not path.exists():
        raise RuntimeUserError(f"checkpoint file is missing: {path}")
    if not path.is_file():
        raise RuntimeUserError(f"{path} is not a regular file",
                               hint="weights are the .safetensors files save_pretrained() writes")
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
    # ValueError: not UTF-8, not JSON, or an integer past Python's digit limit;
    # RecursionError: arrays nested thousands deep
    except (ValueError, RecursionError):
        raise RuntimeUserError(f"{path} has a corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise RuntimeUserError(f"{path} has a corrupt safetensors header (not a JSON object)")
    metadata = header.get("__metadata__")  # optional: absent or null
    if metadata is not None and not (isinstance(metadata, dict) and
                                     all(isinstance(v, str) for v in metadata.values())):
        raise RuntimeUserError(
            f"{path} has a corrupt safetensors header (__metadata__ is not a map of strings)",
            hint="the file is corrupt; download or save it again")
    data_start = 8 + n
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if not _valid_entry(meta):
            raise RuntimeUserError(f"{path} has a corrupt safetensors header (entry {name!r})",
                                   hint="the file is corrupt; download or save it again")
        end = max(end, meta["data_offsets"][1])
    if data_start + end > size:
        raise RuntimeUserError(
            f"{path} is truncated: its header describes {data_start + end} bytes, the file has {size}",
            hint="the download or save was interrupted; fetch or save the model again",
        )
    return header, data_start


def _valid_entry(meta: Any) -> bool:
    """Whether a header entry is well formed: a known dtype, a shape of naturals, and data
    offsets whose span holds exactly that many elements."""
    if not isinstance(meta, dict):
        return False
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        return False
    naturals = [*shape, *offsets]
    if len(offsets) != 2 or not all(type(x) is int and x >= 0 for x in naturals):
        return False
    span, size = offsets[1] - offsets[0], DTYPE_BYTES.get(dtype)
    if span < 0:
        return False
    if size is None:  # an unknown dtype is refused, by name, where the tensor is read
        return True
    numel = 0 if 0 in shape else 1
    for d in shape:
        numel *= d
        if numel * size > span:  # stop early: a long shape of huge dimensions costs no time
            return False
    return numel * size == span


@dataclass
class Headers:
    """A model directory's config and tensor layout, read from headers only.

    Attributes:
        path: the directory.
        config: ``config.json``.
        infos: every tensor's place, by name (empty for an allowed pickle checkpoint).
        metadata: the merged ``__metadata__`` of the shards.
        pickled: the pickle files to load instead (only with ``allow_pickle``).
    """

    path: Path
    config: dict[str, Any]
    infos: dict[str, TensorInfo] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    pickled: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path, *, allow_pickle: bool = False) -> "Headers":
        path = Path(path)
        if not path.exists():
            raise RuntimeUserError(f"model directory not found: {path}")
        if not path.is_dir():
            raise RuntimeUserError(f"{path} is a file; expected a model directory (config.json + safetensors)")
        config = read_config(path)
        files = _weight_files(path)
        if not files:
            pickles = [p.name for p in pickle_files(path)]
            if pickles and allow_pickle:
                return cls(path, config, metadata={"format": "pt"}, pickled=pickles)
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
                if meta["dtype"] not in DTYPE_BYTES:
                    raise RuntimeUserError(f"tensor {name} in {f.name} has unsupported dtype {meta['dtype']}")
                a, b = meta["data_offsets"]
                if name in infos:
                    raise RuntimeUserError(f"tensor {name} appears in two shards of {path}")
                infos[name] = TensorInfo(name=name, dtype=meta["dtype"], shape=tuple(meta["shape"]),
                                         file=f, start=data_start + a, nbytes=b - a)
        return cls(path, config, infos, metadata)

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    def keys(self) -> list[str]:
        return list(self.infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise RuntimeUserError(f"tensor {name} is not in the checkpoint {self.path}") from None


#: The file names ``save_pretrained`` gives the shards of a checkpoint.
_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of a directory: the index's shards, or the single file."""
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        # ValueError: not UTF-8 or not JSON; the others: JSON of another shape
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
            raise RuntimeUserError(f"{index} is not a valid safetensors index") from None
        if not all(isinstance(s, str) and s == Path(s).name and s not in ("", "..")
                   for s in shards):
            raise RuntimeUserError(f"{index} is not a valid safetensors index: its shards "
                                   "must be file names in the model directory")
        files = [path / f for f in sorted(shards, key=natural_key)]
        for f in files:
            if not f.exists():  # one that is not a regular file is refused where it is read
                raise RuntimeUserError(
                    f"shard {f.name} listed in {index.name} is missing from {path}",
                    hint="the download is incomplete",
                )
        return files
    if single.is_file():
        return [single]
    files = sorted(safetensors_files(path), key=lambda f: natural_key(f.name))
    shards = [f.name for f in files if _SHARD.fullmatch(f.name)]
    if shards:  # transformers loads shards through their index: without it, no checkpoint
        raise RuntimeUserError(
            f"{path} holds shards ({', '.join(shards[:2])}{', ...' if len(shards) > 2 else ''}) "
            f"but no {index.name}",
            hint="the download is incomplete: fetch the index with the shards")
    return files


def check_compatible(target: Headers, donors: Sequence[Headers]) -> None:
    """Raise :class:`RuntimeUserError` naming the first difference that makes a transfer
    between ``target`` and each donor impossible: architecture, vocabulary, tensor names or
    shapes. Reads only configs and headers."""
    trg = target
    for src in donors:
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
