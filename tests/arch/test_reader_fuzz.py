"""Fuzzing the file readers (issue 12, part 8): safetensors headers, ``config.json`` and the
channel space built from it, GGUF headers.

Whatever the bytes, a reader returns a valid result or raises a ``RuntimeUserError`` with a
message — never another exception. Every example runs under a deadline (no hang), and the
lying counts that would cost the most — 10**12 tensors, strings, elements or layers — are
read under ``tracemalloc``: refusing them must not allocate. Files are written only under
temporary directories, and hypothesis keeps no example database.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actlang.arch.adapters import ChannelSpace, read_config
from actlang.arch.errors import RuntimeUserError
from actlang.arch.gguf import read_gguf_header
from actlang.arch.safetensors import DTYPE_BYTES, Headers, read_safetensors_header
from tests.arch.test_gguf import (
    _FORMATS,
    ARR,
    STR,
    T_F32,
    U32,
    build_gguf,
    llama_kv,
    llama_tensors,
)
from tests.lang.fuzzing import MUTATIONS

FUZZ = settings(deadline=timedelta(seconds=2), database=None, max_examples=80,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])

#: Byte-level damage, shared with the spec fuzzer: a flipped bit, a byte set, a cut.
DAMAGE = [MUTATIONS["flip"], MUTATIONS["byte"], MUTATIONS["cut"]]


def user_error_or(read: Callable[[], Any]) -> Any:
    """``read()``'s result, or None when it raised a RuntimeUserError with a message; any
    other exception fails the test."""
    try:
        return read()
    except RuntimeUserError as error:
        assert error.message.strip(), "a RuntimeUserError says what is wrong"
        return None


@st.composite
def damaged(draw, blob: bytes) -> bytes:
    """``blob`` with one to four of :data:`DAMAGE`."""
    for _ in range(draw(st.integers(1, 4))):
        blob = draw(st.sampled_from(DAMAGE))(draw, blob)
    return blob


#: Numbers a hostile or corrupt file holds where a size or count belongs.
HOSTILE_NUMBERS = [0, -1, 1, 3, 7, 10**9, 10**12, 2**31, 2**32 - 1, 2**63, 2**64 - 1, -2**63,
                   10**400, 0.5, 64.0, -0.0, math.inf, -math.inf, math.nan, 1e308, True, False,
                   None, "64", [64], {}]

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
              st.sampled_from(HOSTILE_NUMBERS)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12)
"""Any JSON value, the hostile numbers included."""

#: JSON texts no value strategy draws: nesting past the parser's recursion, an integer past
#: Python's digit limit, text that is not UTF-8, nothing, half an object, a bare NaN, a key
#: given twice, a NUL.
HOSTILE_JSON = [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                b"9" * 5000, b'{"a": ' + b"9" * 5000 + b"}", b"\xff\xfe{}", b"", b"{", b"NaN",
                b'{"a": 1, "a": 2}', b"\x00"]


# ---- safetensors ----------------------------------------------------------------------------


def safetensors_bytes(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
    """A file: the 8-byte length (``length`` to lie), the JSON header, the data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length % 2**64) + raw + data


@st.composite
def valid_safetensors(draw) -> tuple[dict, bytes]:
    """A well-formed header (tensors of every dtype, optional ``__metadata__``) and its data."""
    header: dict[str, Any] = {}
    offset = 0
    names = draw(st.lists(st.from_regex(r"[a-z]{1,4}(\.[0-9])?\.weight", fullmatch=True),
                          max_size=4, unique=True))
    for name in names:
        dtype = draw(st.sampled_from(sorted(DTYPE_BYTES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=6), st.text(max_size=6),
                                                      max_size=3))
    return header, b"\0" * offset


@st.composite
def hostile_safetensors(draw) -> bytes:
    """A valid file with its header edited (a value, a field of an entry, the whole header),
    replaced by a hostile JSON text, its length lying, or its bytes damaged."""
    header, data = draw(valid_safetensors())
    how = draw(st.sampled_from(["entry", "field", "metadata", "header", "text", "length",
                                "bytes"]))
    tensors = [name for name in header if name != "__metadata__"]
    if how == "entry" and tensors:
        header[draw(st.sampled_from(tensors))] = draw(json_values)
    elif how == "field" and tensors:
        entry = header[draw(st.sampled_from(tensors))]
        entry[draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))] = \
            draw(st.one_of(json_values, st.lists(st.sampled_from(HOSTILE_NUMBERS), max_size=3)))
    elif how == "metadata":
        header["__metadata__"] = draw(json_values)
    elif how == "header":
        header = draw(json_values)
    elif how == "text":
        return safetensors_bytes(draw(st.sampled_from(HOSTILE_JSON)), data)
    blob = safetensors_bytes(header, data)
    if how == "length":
        n = len(blob) - 8 - len(data)
        lie = draw(st.sampled_from([0, 1, n - 1, n + 1, len(blob), 100_000_001, 10**12, 2**63,
                                    2**64 - 1]))
        return struct.pack("<Q", lie % 2**64) + blob[8:]
    return draw(damaged(blob)) if how == "bytes" else blob


#: Names a weights file is found under: the single file, another file, a shard (whose index
#: is missing).
WEIGHT_NAMES = ["model.safetensors", "weights.safetensors", "model-00001-of-00002.safetensors"]


def read_safetensors(directory: Path, blob: bytes, name: str = WEIGHT_NAMES[0]) -> None:
    """Read ``blob`` as the file ``name`` alone and as a model directory; check what comes
    back lies inside the file."""
    path = directory / name
    path.write_bytes(blob)
    result = user_error_or(lambda: read_safetensors_header(path))
    if result is not None:
        header, data_start = result
        assert isinstance(header, dict) and data_start == 8 + int.from_bytes(blob[:8], "little")
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    headers = user_error_or(lambda: Headers.open(directory))
    if name.startswith("model-"):
        assert headers is None, "shards without their index are refused"
    if headers is not None:
        assert result is not None, "the directory reads only if its file does"
        for info in headers.infos.values():
            assert data_start <= info.start and info.start + info.nbytes <= len(blob)
            assert info.nbytes == math.prod(info.shape) * DTYPE_BYTES[info.dtype]
        assert all(isinstance(v, str) for v in headers.metadata.values())


@settings(FUZZ, max_examples=200)
@given(hostile_safetensors(), st.sampled_from(WEIGHT_NAMES))
def test_safetensors_headers(blob: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        read_safetensors(Path(tmp), blob, name)


@pytest.mark.parametrize("make", [os.mkfifo, Path.mkdir], ids=["fifo", "directory"])
def test_weights_that_are_not_a_regular_file_are_refused(tmp_path: Path, make) -> None:
    """Found with the catalogue of bad inputs: a ``model.safetensors`` that is not a regular
    file sent the reader to sort the directory's files with a key for strings (TypeError);
    a FIFO must be refused unopened, or reading its header waits forever."""
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    make(tmp_path / "model.safetensors")
    with pytest.raises(RuntimeUserError, match="not a regular file"):
        Headers.open(tmp_path)


@settings(FUZZ)
@given(valid_safetensors())
def test_valid_safetensors_read_back(header_and_data) -> None:
    """The generator's valid files do read: the hostile ones start from real files."""
    header, data = header_and_data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(safetensors_bytes(header, data))
        assert read_safetensors_header(path)[0] == header
        read_safetensors(Path(tmp), path.read_bytes())


#: Shards an index may list that a reader must refuse without leaving the directory.
HOSTILE_SHARDS = ["../model.safetensors", "/etc/passwd", "", ".", "..", "a\0.safetensors",
                  "sub/model.safetensors", "missing.safetensors", 5, None, ["x"]]


@settings(FUZZ)
@given(st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(HOSTILE_JSON),
    st.dictionaries(st.text(max_size=6), st.sampled_from(HOSTILE_SHARDS), max_size=3)
      .map(lambda m: json.dumps({"weight_map": m}).encode())))
def test_safetensors_index(index: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "model"
        directory.mkdir()
        (directory / "config.json").write_text('{"model_type": "llama"}')
        (directory / "model.safetensors.index.json").write_bytes(index)
        header, data = {"a.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8
        (Path(tmp) / "model.safetensors").write_bytes(safetensors_bytes(header, data))
        headers = user_error_or(lambda: Headers.open(directory))
        assert headers is None, "no index names a shard in the directory"


# ---- config.json and the channel space ------------------------------------------------------


@settings(FUZZ)
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()),
                 st.sampled_from(HOSTILE_JSON), st.binary(max_size=64)))
def test_config_json(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_bytes(blob)
        config = user_error_or(lambda: read_config(Path(tmp)))
        assert config is None or isinstance(config, dict)


#: A small valid config of each curated family (Gemma 3's multimodal one nests its LM's).
CURATED = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=100),
    "phi3": dict(model_type="phi3", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=100),
    "gemma3": dict(model_type="gemma3", text_config=dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=100)),
}
#: Fields the adapters read, and fields transformers checks when it builds a derived model.
FIELDS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "vocab_size", "n_embd", "n_layer", "n_head",
          "n_inner", "tie_word_embeddings", "attention_bias", "text_config", "hidden_act",
          "rope_theta", "rope_scaling", "rms_norm_eps", "pad_token_id", "layer_types",
          "torch_dtype", "max_position_embeddings"]


@st.composite
def hostile_configs(draw, base: dict, model_types: st.SearchStrategy) -> dict:
    """``base`` with one to four fields (a size, a flag, a nested config, any other key) set
    to a hostile value or removed, or ``model_type`` set to one of ``model_types``."""
    config = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 4))):
        target = config["text_config"] if "text_config" in config and draw(st.booleans()) \
            and isinstance(config["text_config"], dict) else config
        key = draw(st.one_of(st.sampled_from(FIELDS), st.just("model_type"),
                             st.text(max_size=6)))
        if key == "model_type":
            config[key] = draw(model_types)
        elif draw(st.integers(0, 4)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(st.one_of(st.sampled_from(HOSTILE_NUMBERS), json_values))
    return config


def check_space(config: dict) -> None:
    """A channel space of entries with positive sizes, or a RuntimeUserError."""
    space = user_error_or(lambda: ChannelSpace.from_config(config))
    if space is not None:
        assert len(space) > 0
        assert all(type(e.size) is int and e.size > 0 for e in space), config


@settings(FUZZ, max_examples=200)
@given(st.sampled_from(sorted(CURATED)).flatmap(lambda family: hostile_configs(
    CURATED[family],
    # another curated family or no string at all: never an unknown name (or none), whose
    # space would be derived (tested below, with transformers)
    st.sampled_from([*CURATED, *(v for v in HOSTILE_NUMBERS
                                 if v is not None and not isinstance(v, str))]))))
def test_curated_channel_spaces_from_hostile_configs(config: dict) -> None:
    check_space(config)


OLMO2 = dict(CURATED["llama"], model_type="olmo2")


@pytest.fixture(scope="module")
def transformers_loaded():
    """Derived spaces import torch and transformers (seconds): once, outside the deadline."""
    pytest.importorskip("transformers")
    ChannelSpace.from_config(OLMO2)


@settings(FUZZ, max_examples=25, deadline=timedelta(seconds=10))
@given(hostile_configs(OLMO2, st.sampled_from(["olmo2", "t5", "bert", "no_such_model"])))
def test_derived_channel_spaces_from_hostile_configs(transformers_loaded, config: dict) -> None:
    """An architecture without a curated adapter: transformers builds the model from the
    config on the meta device, refusing bad fields in its own ways."""
    check_space(config)


# ---- GGUF -----------------------------------------------------------------------------------


def field_offsets(blob: bytes) -> list[tuple[int, str]]:
    """Where a valid GGUF file (of ``build_gguf``) keeps its counts, lengths and types:
    ``(offset, struct format)`` of each — what a lying header would change."""
    fields: list[tuple[int, str]] = [(8, "Q"), (16, "Q")]  # tensor and metadata counts
    pos = 24

    def string() -> None:
        nonlocal pos
        fields.append((pos, "Q"))
        pos += 8 + struct.unpack_from("<Q", blob, pos)[0]

    def value(vtype: int) -> None:
        nonlocal pos
        if vtype == STR:
            string()
        elif vtype == ARR:
            fields.extend([(pos, "I"), (pos + 4, "Q")])
            etype, count = struct.unpack_from("<IQ", blob, pos)
            pos += 12
            for _ in range(count):
                value(etype)
        else:
            pos += struct.calcsize("<" + _FORMATS[vtype])

    n_tensors, n_kv = struct.unpack_from("<QQ", blob, 8)
    for _ in range(n_kv):
        string()
        fields.append((pos, "I"))
        pos += 4
        value(struct.unpack_from("<I", blob, pos - 4)[0])
    for _ in range(n_tensors):
        string()
        (n_dims,) = struct.unpack_from("<I", blob, pos)
        fields.extend([(pos, "I"), *((pos + 4 + 8 * i, "Q") for i in range(n_dims)),
                       (pos + 4 + 8 * n_dims, "I"), (pos + 8 + 8 * n_dims, "Q")])
        pos += 16 + 8 * n_dims
    return fields


LIES = [0, 1, 2, 3, 255, 2**16, 2**31, 2**32 - 1, 10**6, 10**12, 2**63, 2**64 - 1]


gguf_values = st.one_of(
    st.tuples(st.sampled_from(sorted(_FORMATS)), st.integers(0, 1))
      .map(lambda t: (t[0], bool(t[1]) if _FORMATS[t[0]] == "?" else t[1])),
    st.text(max_size=5).map(lambda s: (STR, s)),
    st.lists(st.integers(0, 255), max_size=4).map(lambda v: (ARR, (0, v))),
    st.lists(st.text(max_size=3), max_size=4).map(lambda v: (ARR, (STR, v))))
"""A metadata value of any type: numbers, strings, arrays of bytes and of strings."""


@st.composite
def valid_gguf(draw) -> bytes:
    """A tiny llama with a random vocabulary and random extra metadata — well-formed as a
    file, though the llama keys it overrides (a block count that is a string, a vocabulary
    that is a number) and a scalar embedding make no sense as a model."""
    tokens = draw(st.lists(st.text(max_size=4), min_size=1, max_size=8))
    kv = llama_kv(**{"tokenizer.ggml.tokens": (ARR, (STR, tokens)),
                     "tokenizer.ggml.scores": (ARR, (6, [0.0] * len(tokens)))})
    kv.update(draw(st.dictionaries(st.from_regex(r"x\.[a-z]{1,5}", fullmatch=True), gguf_values,
                                   max_size=3)))
    for key in draw(st.lists(st.sampled_from(sorted(kv)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del kv[key]
        else:
            kv[key] = draw(gguf_values)
    tensors = llama_tensors(tied=draw(st.booleans()))
    if draw(st.booleans()):
        tensors["token_embd.weight"] = ((), 0)  # one F32 number
    return build_gguf(kv, tensors)


@st.composite
def hostile_gguf(draw) -> bytes:
    """A valid file with counts, lengths or types lying, bytes damaged, or both."""
    blob = draw(valid_gguf())
    fields = field_offsets(blob)
    for _ in range(draw(st.integers(0, 3))):
        offset, fmt = draw(st.sampled_from(fields))
        lie = draw(st.sampled_from(LIES)) % 2 ** (8 * struct.calcsize(fmt))
        blob = blob[:offset] + struct.pack("<" + fmt, lie) + blob[offset + struct.calcsize(fmt):]
    return draw(damaged(blob)) if draw(st.booleans()) else blob


def read_gguf(blob: bytes, max_array: int | None) -> None:
    """Read the header, its config and the channel space of that config."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.gguf"
        path.write_bytes(blob)
        header = user_error_or(lambda: read_gguf_header(path, max_array=max_array))
    if header is None:
        return
    assert all(t.offset >= header.data_start and t.offset + t.nbytes <= len(blob)
               for t in header.tensors.values())
    config = user_error_or(header.hf_config)
    if config is not None:
        check_space(config)


@settings(FUZZ, max_examples=200)
@given(hostile_gguf(), st.sampled_from([None, 0, 3]))
def test_gguf_headers(blob: bytes, max_array: int | None) -> None:
    read_gguf(blob, max_array)


def test_the_gguf_field_index_finds_every_count_and_length() -> None:
    """The lying-field mutator knows where the fields are: each tensor has a name length, a
    rank, its dimensions, a type and an offset; each key a length and a type."""
    blob = build_gguf(llama_kv(), llama_tensors())
    fields = dict(field_offsets(blob))
    tensors, kv = llama_tensors(), llama_kv()
    expected_tensor_fields = sum(1 + 1 + len(dims) + 1 + 1 for dims, _ in tensors.values())
    assert len(fields) >= 2 + 2 * len(kv) + expected_tensor_fields
    key = b"general.architecture"
    assert fields[blob.index(key) - 8] == "Q"  # the key's length precedes it


# ---- lying counts cost nothing -----------------------------------------------------------------

#: Peak Python allocation allowed while a lying count is refused.
SMALL = 1 << 20


def peak_allocation(read: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(RuntimeUserError):
            read()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("lie", [10**12, 2**63, 2**64 - 1])
def test_a_lying_gguf_count_is_refused_without_allocating(tmp_path: Path, lie: int) -> None:
    blob = build_gguf(llama_kv(), llama_tensors())
    path = tmp_path / "model.gguf"
    for offset, fmt in field_offsets(blob):
        if fmt != "Q":
            continue
        path.write_bytes(blob[:offset] + struct.pack("<Q", lie) + blob[offset + 8:])
        assert peak_allocation(lambda: read_gguf_header(path)) < SMALL, offset


@pytest.mark.parametrize("lie", [10**12, 2**63, 2**64 - 1])
def test_a_lying_safetensors_length_is_refused_without_allocating(tmp_path: Path,
                                                                  lie: int) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes({"a": {"dtype": "F32", "shape": [1],
                                              "data_offsets": [0, 4]}}, b"\0" * 4, length=lie))
    assert peak_allocation(lambda: read_safetensors_header(path)) < SMALL


def test_a_gguf_vocabulary_that_is_not_an_array_is_refused(tmp_path: Path) -> None:
    """Found: ``tokenizer.ggml.tokens`` holding a number raised TypeError from len()."""
    path = tmp_path / "model.gguf"
    path.write_bytes(build_gguf(llama_kv(**{"tokenizer.ggml.tokens": (U32, 6)}), llama_tensors()))
    with pytest.raises(RuntimeUserError, match="tokenizer.ggml.tokens is not an array"):
        read_gguf_header(path).hf_config()


def test_a_scalar_gguf_embedding_gives_no_vocabulary_size(tmp_path: Path) -> None:
    """Found: with no vocabulary in the metadata, a ``token_embd.weight`` without dimensions
    raised IndexError where its rows were counted."""
    kv = llama_kv()
    del kv["tokenizer.ggml.tokens"]
    path = tmp_path / "model.gguf"
    path.write_bytes(build_gguf(kv, {**llama_tensors(), "token_embd.weight": ((), T_F32)}))
    with pytest.raises(RuntimeUserError, match="says nothing of its vocabulary size"):
        read_gguf_header(path).hf_config()


def test_a_shape_of_huge_dimensions_is_refused_at_once(tmp_path: Path) -> None:
    """Found: the element count of a shape was multiplied out in full before comparing it
    with the data offsets: 100,000 dimensions of 2**64 took minutes of big-integer
    arithmetic. The product now stops as soon as it passes what the offsets hold."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes({"a": {"dtype": "F32", "shape": [2**64] * 100_000,
                                              "data_offsets": [0, 4]}}, b"\0" * 4))
    start = time.perf_counter()
    with pytest.raises(RuntimeUserError, match="corrupt"):
        read_safetensors_header(path)
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("layers", [10**6, 10**9, 10**12])
def test_a_lying_layer_count_is_refused_without_allocating(layers: int) -> None:
    config = dict(CURATED["llama"], num_hidden_layers=layers)
    assert peak_allocation(lambda: ChannelSpace.from_config(config)) < SMALL
