"""GGUF headers without tensors: metadata, the tensor table, a config for the planner (no torch).

A GGUF file (llama.cpp's format, spec: ``ggml/docs/gguf.md``) is, little-endian::

    "GGUF"  u32 version  u64 tensor_count  u64 metadata_kv_count
    metadata_kv_count × (string key, u32 value_type, value)
    tensor_count × (string name, u32 n_dims, n_dims × u64 dim, u32 ggml_type, u64 offset)
    padding to general.alignment (default 32), then the tensor data

where a string is ``u64 length`` + UTF-8 bytes and an array is ``u32 element_type``,
``u64 count`` and the elements. :func:`read_gguf_header` parses all of that from a memory map
and never touches tensor data, so the 94 MiB SmolLM2 file is read in tens of milliseconds
(most of it decoding its 49152-token vocabulary; ``max_array`` skips such arrays).

This module imports neither torch, numpy nor the ``gguf`` package, so ``actc plan`` stays
light. Every problem with a file — not a GGUF file, a version or value type it does not
know, a truncated file, counts that cannot be true, an architecture or quantization type
transformers cannot convert — is a :class:`RuntimeUserError`; counts and lengths are
bounded by the file's size and by fixed caps, so a hostile header cannot make the reader
allocate gigabytes or loop for long.

:meth:`GGUFHeader.hf_config` maps a Llama file's metadata to the ``config.json`` fields the
planner reads; :func:`actlang.run.gguf.convert_gguf` writes the full Hugging Face directory.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from actlang.arch.errors import RuntimeUserError

__all__ = [
    "CONVERTIBLE_ARCHITECTURES",
    "GGML_TYPES",
    "GGUFHeader",
    "GGUFTensor",
    "SkippedArray",
    "read_gguf_header",
]

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # v1 counted in 32 bits; llama.cpp stopped writing it in 2023
DEFAULT_ALIGNMENT = 32

# Caps well above any real file (the largest vocabularies have ~262k tokens, the largest
# chat templates a few tens of kB, the largest models a few thousand tensors) that keep a
# lying header from costing memory or time. Counts are also bounded by the bytes left.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_ARRAY_LEN = 1 << 24
MAX_STRING_LEN = 1 << 24
MAX_ARRAY_DEPTH = 4  # arrays of arrays are legal; a deeper nesting is an attack, not a model
MAX_DIMS = 4  # GGML_MAX_DIMS
# Real headers are a few MB (the vocabulary); walking more than this is a hostile file.
MAX_HEADER_BYTES = 128 << 20

_TRUNCATED_HINT = "the file is truncated or corrupt (an interrupted download?); fetch it again"

#: Metadata value types: code → (name, struct format or None, size in bytes or the minimum).
_VALUE_TYPES: dict[int, tuple[str, str | None, int]] = {
    0: ("uint8", "B", 1), 1: ("int8", "b", 1), 2: ("uint16", "H", 2), 3: ("int16", "h", 2),
    4: ("uint32", "I", 4), 5: ("int32", "i", 4), 6: ("float32", "f", 4), 7: ("bool", "?", 1),
    8: ("string", None, 8), 9: ("array", None, 12),
    10: ("uint64", "Q", 8), 11: ("int64", "q", 8), 12: ("float64", "d", 8),
}
_STRING, _ARRAY = 8, 9

#: ggml tensor types (``enum ggml_type``): id → (name, elements per block, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}

# transformers 5 converts a GGUF file along one of two paths. Its native loader (qwen35,
# qwen35moe, lfm2) dequantizes in torch the block types of ``integrations/gguf/dequant.py``.
# Every other architecture goes through ``modeling_gguf_pytorch_utils.load_gguf_checkpoint``,
# which dequantizes with the ``gguf`` package: every type ``gguf.quants`` has a dequantizer
# for except NVFP4, which only gguf>=0.19 has. Neither path reads the integer and F64 types,
# nor Q8_1/Q8_K, which are llama.cpp's scratch formats and never stored.
_FLOATS = frozenset({"F32", "F16", "BF16"})
_NATIVE_QUANTS = _FLOATS | {
    "Q4_0", "Q4_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS",
    "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "IQ1_M",
}
_LEGACY_QUANTS = _NATIVE_QUANTS | {"Q5_0", "Q5_1", "TQ1_0", "TQ2_0", "MXFP4"}
_NATIVE_ARCHITECTURES = frozenset({"qwen35", "qwen35moe", "lfm2"})
# ``GGUF_SUPPORTED_ARCHITECTURES`` of transformers 5, spelled as GGUF files spell them
# (qwen2moe, gpt-oss, ...), less t5/umt5: encoder-decoders, not causal language models.
_LEGACY_ARCHITECTURES = frozenset({
    "llama", "mistral", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "gpt-oss", "falcon", "phi3",
    "bloom", "stablelm", "gpt2", "starcoder2", "mamba", "nemotron", "gemma2", "gemma3", "gemma4",
    "deci", "minimax-m2",
})
#: ``general.architecture`` values whose files transformers can turn into a causal LM.
CONVERTIBLE_ARCHITECTURES = _LEGACY_ARCHITECTURES | _NATIVE_ARCHITECTURES


class GGUFTensor(NamedTuple):
    """A tensor's place in a GGUF file (no data)."""

    shape: tuple[int, ...]  # row-major (torch) order; GGUF lists dimensions innermost first
    ggml_type: str  # "F32", "Q4_K", ...
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


@dataclass(frozen=True)
class SkippedArray:
    """A metadata array longer than ``max_array``: what it holds, not the values."""

    element_type: str  # "string", "int32", "array", ...
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class GGUFHeader:
    """Everything in a GGUF file but the tensor data.

    Attributes:
        path: the file.
        version: the GGUF version (2 or 3).
        metadata: every key-value pair, in file order; strings, ints, floats, bools, lists
            (arrays), or :class:`SkippedArray` for arrays longer than ``max_array``.
        tensors: every tensor's place, by GGUF name (``blk.0.attn_q.weight``), in file order.
        alignment: ``general.alignment``, or 32.
        data_start: offset of the tensor data section.
    """

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]
    alignment: int
    data_start: int

    @property
    def architecture(self) -> str:
        """``general.architecture`` (``llama``, ``qwen2``, ...)."""
        return self.metadata["general.architecture"]

    def hf_config(self) -> dict[str, Any]:
        """The ``config.json`` fields transformers derives from a Llama file's metadata.

        Mirrors transformers' GGUF loader, so the planner sees the dimensions that
        :func:`actlang.run.gguf.convert_gguf` will write. Only the ``llama`` architecture is
        mapped: the others have their own keys and quirks; convert those and plan on the
        converted directory.
        """
        if self.architecture != "llama":
            raise RuntimeUserError(
                f"{self.path}: reading a config from a {self.architecture!r} GGUF file without "
                "converting it is not supported (only llama)",
                hint="convert it to a Hugging Face directory first (actlang.run.gguf.convert_gguf)",
            )
        return _llama_config(self)


def read_gguf_header(path: str | Path, *, max_array: int | None = None) -> GGUFHeader:
    """Parse a GGUF file's header: metadata and tensor table, never tensor data.

    Args:
        path: the ``.gguf`` file.
        max_array: keep arrays of at most this many elements; longer ones (the tokenizer's
            vocabulary, merges, scores) become a :class:`SkippedArray`, which is faster.
            ``None`` keeps every array.

    Raises:
        RuntimeUserError: the file is missing, not GGUF, truncated or corrupt, or holds an
            architecture or tensor type that transformers cannot convert.
    """
    path = Path(path)
    if not path.is_file():
        raise RuntimeUserError(f"GGUF file is missing: {path}")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            _check_magic(path, f.read(4), size)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                header = _Parser(path, buf, max_array).header()
    except OSError as err:
        raise RuntimeUserError(f"cannot read GGUF file {path}: {err.strerror or err}") from None
    _check_data(header, size)
    _check_convertible(header)
    return header


def _check_magic(path: Path, head: bytes, size: int) -> None:
    """Refuse a file whose first bytes are not GGUF's magic."""
    if head != GGUF_MAGIC:
        if GGUF_MAGIC.startswith(head):  # includes the empty file
            raise RuntimeUserError(f"{path} is truncated ({size} bytes): not a GGUF file", hint=_TRUNCATED_HINT)
        raise RuntimeUserError(
            f"{path} is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})",
            hint="pass a .gguf file written by llama.cpp or the gguf package",
        )


class _Parser:
    """A cursor over the mapped file that checks every read against the header's end.

    ``size`` is where the header must end: the file's end, or :data:`MAX_HEADER_BYTES`.
    """

    def __init__(self, path: Path, buf: mmap.mmap, max_array: int | None) -> None:
        self.path = path
        self.buf = buf
        self.size = min(len(buf), MAX_HEADER_BYTES)
        self.pos = 0
        self.max_array = max_array

    def header(self) -> GGUFHeader:
        self.pos = len(GGUF_MAGIC)
        version = self.unpack("I", 4, "the version")
        if version not in GGUF_VERSIONS:
            raise RuntimeUserError(f"{self.path} is GGUF version {version}, which is not supported "
                                   f"(only {' and '.join(map(str, GGUF_VERSIONS))})", hint=_version_hint(version))
        n_tensors = self.count("tensors", MAX_TENSORS, 24)  # name length, n_dims, type, offset
        n_kv = self.count("metadata keys", MAX_KV, 13)  # key length, value type, one byte
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string("a metadata key")
            if key in metadata:
                raise self.corrupt(f"metadata key {key!r} appears twice")
            metadata[key] = self.value(self.unpack("I", 4, f"the type of {key!r}"), key, depth=0)
        alignment = _alignment(self, metadata)
        infos = [self.tensor_info() for _ in range(n_tensors)]
        data_start = -(-self.pos // alignment) * alignment  # the next multiple of the alignment
        tensors: dict[str, GGUFTensor] = {}
        for name, shape, ggml_type, rel, nbytes in infos:
            if name in tensors:
                raise self.corrupt(f"tensor {name!r} appears twice")
            if rel % alignment:
                raise self.corrupt(f"tensor {name!r} starts at offset {rel}, not a multiple of {alignment}")
            tensors[name] = GGUFTensor(shape, ggml_type, data_start + rel, nbytes)
        return GGUFHeader(self.path, version, metadata, tensors, alignment, data_start)

    def corrupt(self, what: str) -> RuntimeUserError:
        return RuntimeUserError(f"{self.path} has a corrupt GGUF header: {what}", hint=_TRUNCATED_HINT)

    @property
    def capped(self) -> bool:
        """Whether the header's end is :data:`MAX_HEADER_BYTES` rather than the file's."""
        return self.size < len(self.buf)

    def need(self, n: int, what: str) -> None:
        if self.pos + n <= self.size:
            return
        if self.capped:
            raise self.corrupt(f"{what} lies past byte {self.size}, longer than any real header")
        raise RuntimeUserError(
                f"{self.path} is truncated: it ends at byte {self.size}, inside {what} (byte {self.pos})",
                hint=_TRUNCATED_HINT,
            )

    def unpack(self, fmt: str, n: int, what: str) -> Any:
        self.need(n, what)
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return value

    def count(self, what: str, cap: int, min_bytes: int) -> int:
        """A u64 count, refused above ``cap`` or above what the bytes left can hold."""
        n = self.unpack("Q", 8, f"the number of {what}")
        if n > cap or n * min_bytes > self.size - self.pos:
            rest = f"the first {self.size} bytes (longer than any real header)" if self.capped else "the file"
            raise self.corrupt(f"it claims {n} {what}, more than the rest of {rest} can hold")
        return n

    def string(self, what: str) -> str:
        n = self.count(f"bytes of {what}", MAX_STRING_LEN, 1)
        start = self.pos
        self.pos += n
        try:
            return self.buf[start:self.pos].decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt(f"{what} at byte {start} is not UTF-8") from None

    def value(self, vtype: int, key: str, depth: int) -> Any:
        """One metadata value of type ``vtype``."""
        if vtype not in _VALUE_TYPES:
            raise RuntimeUserError(f"{self.path}: metadata key {key!r} has an unknown value type {vtype}",
                                   hint="the file is corrupt, or from a newer GGUF version than actlang knows")
        _, fmt, width = _VALUE_TYPES[vtype]
        if fmt is not None:
            return self.unpack(fmt, width, f"the value of {key!r}")
        if vtype == _STRING:
            return self.string(f"the value of {key!r}")
        return self.array(key, depth + 1)

    def array(self, key: str, depth: int) -> list[Any] | SkippedArray:
        if depth > MAX_ARRAY_DEPTH:
            raise self.corrupt(f"metadata key {key!r} nests arrays more than {MAX_ARRAY_DEPTH} deep")
        etype = self.unpack("I", 4, f"the element type of {key!r}")
        if etype not in _VALUE_TYPES:
            raise RuntimeUserError(f"{self.path}: metadata array {key!r} has an unknown element type {etype}",
                                   hint="the file is corrupt, or from a newer GGUF version than actlang knows")
        name, fmt, width = _VALUE_TYPES[etype]
        n = self.count(f"elements of {key!r}", MAX_ARRAY_LEN, width)
        keep = self.max_array is None or n <= self.max_array
        if fmt is not None:  # fixed width: one unpack, or one jump
            start = self.pos
            self.pos += n * width
            return list(struct.unpack_from(f"<{n}{fmt}", self.buf, start)) if keep else SkippedArray(name, n)
        if etype == _STRING:
            return self.strings(key, n, keep)
        values = [self.array(key, depth + 1) for _ in range(n)]
        return values if keep else SkippedArray(name, n)

    def strings(self, key: str, n: int, keep: bool) -> list[str] | SkippedArray:
        """``n`` strings (a vocabulary: the hot loop of the reader, hence the local names)."""
        buf, pos, size, unpack_from = self.buf, self.pos, self.size, struct.unpack_from
        out: list[str] = []
        append = out.append
        for i in range(n):
            if pos + 8 > size:
                self.pos = pos
                self.need(8, f"element {i} of {key!r}")
            (length,) = unpack_from("<Q", buf, pos)
            pos += 8
            if pos + length > size:
                self.pos = pos
                self.need(length, f"element {i} of {key!r}")
            if keep:
                try:
                    append(buf[pos:pos + length].decode("utf-8"))
                except UnicodeDecodeError:
                    raise self.corrupt(f"element {i} of {key!r} is not UTF-8") from None
            pos += length
        self.pos = pos
        return out if keep else SkippedArray("string", n)

    def tensor_info(self) -> tuple[str, tuple[int, ...], str, int, int]:
        """``(name, shape, type name, offset in the data section, nbytes)`` of the next tensor."""
        name = self.string("a tensor name")
        n_dims = self.unpack("I", 4, f"the rank of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise self.corrupt(f"tensor {name!r} has {n_dims} dimensions (GGUF allows at most {MAX_DIMS})")
        self.need(8 * n_dims, f"the shape of tensor {name!r}")
        dims = struct.unpack_from(f"<{n_dims}Q", self.buf, self.pos)
        self.pos += 8 * n_dims
        type_id = self.unpack("I", 4, f"the type of tensor {name!r}")
        offset = self.unpack("Q", 8, f"the offset of tensor {name!r}")
        if type_id not in GGML_TYPES:
            raise RuntimeUserError(f"{self.path}: tensor {name!r} has an unknown ggml type {type_id}",
                                   hint="the file is corrupt, or from a newer llama.cpp than actlang knows")
        type_name, block, block_bytes = GGML_TYPES[type_id]
        row = dims[0] if dims else 1  # a scalar (no dimensions) is one row of one element
        if row % block:
            raise self.corrupt(f"tensor {name!r} has rows of {row} elements, not whole {type_name} "
                               f"blocks of {block}")
        numel = 1
        for d in dims:
            numel *= d
        return name, tuple(reversed(dims)), type_name, offset, numel // block * block_bytes


def _version_hint(version: int) -> str:
    if version == 1:
        return "GGUF v1 files predate August 2023; convert the model again with a current llama.cpp"
    if version.to_bytes(4, "little") in {v.to_bytes(4, "big") for v in GGUF_VERSIONS}:
        return "this is a big-endian GGUF file; use its little-endian version"
    return "the file is corrupt, or from a newer GGUF version than actlang knows"


def _alignment(parser: _Parser, metadata: dict[str, Any]) -> int:
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(alignment) is not int or alignment <= 0 or alignment & (alignment - 1):
        raise parser.corrupt(f"general.alignment is {alignment!r}, not a power of two")
    return alignment


def _check_data(header: GGUFHeader, size: int) -> None:
    """Every tensor's data must lie inside the file: a cut-off download fails here, not later."""
    for name, t in header.tensors.items():
        if t.offset + t.nbytes > size:
            raise RuntimeUserError(
                f"{header.path} is truncated: tensor {name!r} ends at byte {t.offset + t.nbytes}, "
                f"the file has {size}",
                hint=_TRUNCATED_HINT,
            )


def _check_convertible(header: GGUFHeader) -> None:
    """Refuse architectures and tensor types transformers cannot turn into a causal LM."""
    arch = header.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise RuntimeUserError(f"{header.path} has no general.architecture in its metadata",
                               hint="the file is corrupt or was not written for a language model")
    if arch not in CONVERTIBLE_ARCHITECTURES:
        raise RuntimeUserError(
            f"{header.path}: GGUF architecture {arch!r} cannot be converted by transformers",
            hint=f"supported architectures: {', '.join(sorted(CONVERTIBLE_ARCHITECTURES))}",
        )
    allowed = _NATIVE_QUANTS if arch in _NATIVE_ARCHITECTURES else _LEGACY_QUANTS
    for name, t in header.tensors.items():
        if t.ggml_type not in allowed:
            raise RuntimeUserError(
                f"{header.path}: tensor {name!r} is stored as {t.ggml_type}, which transformers cannot "
                f"dequantize for {arch!r}",
                hint=f"use a file quantized with one of {', '.join(sorted(allowed))}",
            )


# tokenizer metadata → config.json token ids, as transformers maps them
_TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
              "unknown_token_id": "unk_token_id", "padding_token_id": "pad_token_id"}


def _llama_config(header: GGUFHeader) -> dict[str, Any]:
    """``config.json`` fields of a ``llama`` file, as transformers' GGUF loader derives them."""
    meta = header.metadata

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise RuntimeUserError(f"{header.path} lacks the metadata key llama.{key}",
                                   hint="the file is incomplete; convert the model again with llama.cpp")
        return value

    # transformers renames llama to mistral only when general.name is exactly "mistral"
    # (it tests membership in a one-element list), so mirror that rather than guess
    mistral = meta.get("general.name") == "mistral"
    heads = get("attention.head_count")
    config: dict[str, Any] = {
        "model_type": "mistral" if mistral else "llama",
        "architectures": ["MistralForCausalLM" if mistral else "LlamaForCausalLM"],
        "hidden_size": get("embedding_length"),
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "vocab_size": _vocab_size(header),
        # without the key, transformers keeps LlamaConfig's defaults
        "max_position_embeddings": get("context_length", 2048),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": get("rope.freq_base", 10000.0),
        "tie_word_embeddings": "output.weight" not in header.tensors,
    }
    if "llama.rope.dimension_count" in meta:  # transformers reads head_dim from it
        config["head_dim"] = meta["llama.rope.dimension_count"]
    for key, field in _TOKEN_IDS.items():
        if f"tokenizer.ggml.{key}" in meta:
            config[field] = meta[f"tokenizer.ggml.{key}"]
    return config


def _vocab_size(header: GGUFHeader) -> int:
    """``llama.vocab_size``, else the vocabulary's length (as transformers), else the embedding's rows."""
    meta = header.metadata
    if "llama.vocab_size" in meta:
        return meta["llama.vocab_size"]
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, (list, SkippedArray)):
        return len(tokens)
    if tokens is not None:
        raise RuntimeUserError(f"{header.path}: tokenizer.ggml.tokens is not an array of tokens",
                               hint=_TRUNCATED_HINT)
    embedding = header.tensors.get("token_embd.weight")
    if embedding is None or not embedding.shape:  # a scalar has no rows to count
        raise RuntimeUserError(f"{header.path} says nothing of its vocabulary size",
                               hint="the file is incomplete; convert the model again with llama.cpp")
    return embedding.shape[0]
