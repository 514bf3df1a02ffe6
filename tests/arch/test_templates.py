"""Shipped templates expand to exactly what derivation gives, for configs they were not built
from; a config of another structure is derived; a template never needs torch."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from actlang.arch import templates
from actlang.arch.derived import _derive_entries, _to_json
from actlang.arch.templates import TEMPLATES, expand

#: The families issue 11 names, and more a lab fine-tunes; each must have a template.
TYPES = ["olmo2", "granite", "stablelm", "phi", "gpt_neox", "falcon", "starcoder2",
         "mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "cohere", "deepseek_v3", "olmo",
         "gptj", "glm4", "helium", "exaone", "seed_oss", "bloom", "codegen"]


def _derived(config: dict) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return templates._normal(_to_json(*_derive_entries(config, None, False)))


def _same_version() -> None:
    if templates._template("olmo2")["key"]["transformers"] != templates._key()["transformers"]:
        pytest.skip("templates were built with another transformers; they are not used here")


def _config(model_type: str, seed: int, *, diff: bool) -> dict:
    """A config of the type as ``save_pretrained`` writes it (``diff``: only what differs
    from the defaults, as most hub configs are) with sizes no template was built from."""
    from transformers import AutoConfig

    template = templates._template(model_type)["variants"][0]
    rng = random.Random(seed)
    values = templates._sample(rng, template["roles"])
    values = {role: v * 2 if role in ("inter", "vocab", "moe_inter", "shared_inter") else v
              for role, v in values.items()}
    fields = {template["roles"][role]: v for role, v in values.items()}
    tokens = {k: 1 for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = AutoConfig.for_model(model_type, **fields, **tokens)
    return {**(config.to_diff_dict() if diff else config.to_dict()), "model_type": model_type}


def test_every_template_is_current():
    """A change to derived.py or conventions.json makes the templates stale: rebuild them
    with `python -m actlang.arch.templates`."""
    files = sorted(TEMPLATES.glob("*.json.gz"))
    assert set(TYPES) <= {f.name.removesuffix(".json.gz") for f in files}
    for file in files:
        template = json.loads(gzip.decompress(file.read_bytes()))
        assert template["model_type"] == file.name.removesuffix(".json.gz")
        assert template["key"]["derivation"] == templates._key()["derivation"], \
            f"{file.name} is stale: python -m actlang.arch.templates"


@pytest.mark.parametrize("model_type", TYPES)
def test_a_template_expands_to_the_derivation(model_type):
    _same_version()
    for seed, diff in ((101, False), (202, True)):
        config = _config(model_type, seed, diff=diff)
        expanded = expand(config)
        assert expanded is not None, (model_type, config)
        assert expanded == _derived(config), (model_type, seed)


#: config.json files as the hub has them (older transformers wrote them: legacy keys, rope
#: at the top level, flags flipped from the defaults), cut to three layers.
HUB = {
    "Mixtral-8x22B": {"architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 6144, "initializer_range": 0.02, "intermediate_size": 16384, "max_position_embeddings": 65536, "model_type": "mixtral", "num_attention_heads": 48, "num_experts_per_tok": 2, "num_hidden_layers": 3, "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1000000, "router_aux_loss_coef": 0.001, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.38.0", "use_cache": True, "vocab_size": 32768},
    "OLMo-2-13B": {"architectures": ["Olmo2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "eos_token_id": 100257, "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02, "intermediate_size": 13824, "max_position_embeddings": 4096, "model_type": "olmo2", "num_attention_heads": 40, "num_hidden_layers": 3, "num_key_value_heads": 40, "pad_token_id": 100277, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 500000, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.47.0", "use_cache": True, "vocab_size": 100352},
    "falcon-40b": {"alibi": False, "apply_residual_connection_post_layernorm": False, "architectures": ["FalconForCausalLM"], "attention_dropout": 0.0, "bias": False, "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0, "hidden_size": 8192, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "falcon", "new_decoder_architecture": True, "num_attention_heads": 128, "num_hidden_layers": 3, "num_kv_heads": 8, "parallel_attn": True, "torch_dtype": "bfloat16", "transformers_version": "4.27.4", "use_cache": True, "vocab_size": 65024},
    "falcon-7b": {"alibi": False, "apply_residual_connection_post_layernorm": False, "architectures": ["FalconForCausalLM"], "attention_dropout": 0.0, "bias": False, "bos_token_id": 11, "eos_token_id": 11, "hidden_dropout": 0.0, "hidden_size": 4544, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "falcon", "multi_query": True, "new_decoder_architecture": False, "num_attention_heads": 71, "num_hidden_layers": 3, "parallel_attn": True, "torch_dtype": "bfloat16", "transformers_version": "4.27.4", "use_cache": True, "vocab_size": 65024},
    "gpt-neox-20b": {"architectures": ["GPTNeoXForCausalLM"], "attention_probs_dropout_prob": 0, "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu_fast", "hidden_dropout_prob": 0, "hidden_size": 6144, "initializer_range": 0.02, "intermediate_size": 24576, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "model_type": "gpt_neox", "num_attention_heads": 64, "num_hidden_layers": 3, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True, "use_parallel_residual": True, "vocab_size": 50432},
    "Qwen1.5-MoE-A2.7B": {"architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5632, "max_position_embeddings": 8192, "max_window_layers": 21, "model_type": "qwen2_moe", "moe_intermediate_size": 1408, "norm_topk_prob": False, "num_attention_heads": 16, "num_experts": 60, "num_experts_per_tok": 4, "num_hidden_layers": 3, "num_key_value_heads": 16, "output_router_logits": False, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 5632, "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.39.0.dev0", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936},
    "granite-3.0-8b": {"architectures": ["GraniteForCausalLM"], "attention_bias": False, "attention_dropout": 0.1, "attention_multiplier": 0.0078125, "bos_token_id": 0, "embedding_multiplier": 12.0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12800, "logits_scaling": 16.0, "max_position_embeddings": 4096, "mlp_bias": False, "model_type": "granite", "num_attention_heads": 32, "num_hidden_layers": 3, "num_key_value_heads": 8, "pad_token_id": 0, "residual_multiplier": 0.22, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.46.0.dev0", "use_cache": True, "vocab_size": 49155},
    "phi-2": {"architectures": ["PhiForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 50256, "embd_pdrop": 0.0, "eos_token_id": 50256, "hidden_act": "gelu_new", "hidden_size": 2560, "initializer_range": 0.02, "intermediate_size": 10240, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "model_type": "phi", "num_attention_heads": 32, "num_hidden_layers": 3, "num_key_value_heads": 32, "partial_rotary_factor": 0.4, "qk_layernorm": False, "resid_pdrop": 0.1, "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.37.0", "use_cache": True, "vocab_size": 51200},
    "starcoder2-15b": {"architectures": ["Starcoder2ForCausalLM"], "attention_dropout": 0.1, "residual_dropout": 0.1, "embedding_dropout": 0.1, "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 6144, "initializer_range": 0.01275, "intermediate_size": 24576, "layer_norm_epsilon": 1e-05, "max_position_embeddings": 16384, "mlp_type": "default", "model_type": "starcoder2", "norm_epsilon": 1e-05, "norm_type": "layer_norm", "num_attention_heads": 48, "num_hidden_layers": 3, "num_key_value_heads": 4, "rope_theta": 100000, "sliding_window": 4096, "torch_dtype": "bfloat16", "transformers_version": "4.37.0.dev0", "use_bias": True, "use_cache": True, "vocab_size": 49152},
    "stablelm-2-1.6b": {"architectures": ["StableLmForCausalLM"], "bos_token_id": 100257, "eos_token_id": 100257, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5632, "max_position_embeddings": 4096, "model_type": "stablelm", "layer_norm_eps": 1e-05, "num_attention_heads": 32, "num_hidden_layers": 3, "num_key_value_heads": 32, "partial_rotary_factor": 0.25, "rope_theta": 10000, "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.38.0", "use_cache": True, "use_qkv_bias": True, "use_parallel_residual": False, "qk_layernorm": False, "vocab_size": 100352},
    "c4ai-command-r": {"architectures": ["CohereForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 5, "eos_token_id": 255001, "hidden_act": "silu", "hidden_size": 8192, "initializer_range": 0.02, "intermediate_size": 22528, "layer_norm_eps": 1e-05, "logit_scale": 0.0625, "max_position_embeddings": 8192, "model_type": "cohere", "num_attention_heads": 64, "num_hidden_layers": 3, "num_key_value_heads": 64, "pad_token_id": 0, "rope_theta": 8000000.0, "torch_dtype": "float16", "transformers_version": "4.38.0.dev0", "use_cache": True, "use_qk_norm": False, "vocab_size": 256000},
}


@pytest.mark.parametrize("name", sorted(HUB))
def test_a_hub_config_expands_to_its_derivation(name):
    """Real configs (flags flipped from the defaults, legacy keys the config classes no
    longer define) take a template, and it gives what derivation gives."""
    _same_version()
    expanded = expand(HUB[name])
    assert expanded is not None, name
    assert expanded == _derived(HUB[name]), name


def test_a_size_left_out_takes_the_default_transformers_gives_it():
    _same_version()
    config = _config("olmo2", 7, diff=False)
    del config["num_key_value_heads"]  # transformers: as many as the query heads
    assert expand(config) == _derived(config)
    gpt_neox = _config("gpt_neox", 8, diff=True)
    gpt_neox.pop("intermediate_size", None)  # the type's constant default
    assert expand(gpt_neox) == _derived(gpt_neox)


@pytest.mark.parametrize("change", [
    {"attention_bias": True, "tie_word_embeddings": True},  # two flags flipped: no variant
    {"head_dim": 48},                    # not a key of the config, but read by the model
    {"auto_map": {"AutoConfig": "x.Config"}},  # remote code: never a template
    {"num_key_value_heads": 0},          # not a size
    {"layer_types": ["full_attention", "an unknown kind"]},
    {"hidden_size": 100, "num_attention_heads": 8},  # no whole heads: the samples never had
    {"num_attention_heads": 6, "num_key_value_heads": 4},
])
def test_another_structure_gets_no_template(change):
    config = {**_config("olmo2", 9, diff=False), **change}
    assert expand(config) is None


@pytest.mark.parametrize("change", [
    {"attention_bias": True},         # one flag flipped: a variant of the template
    {"tie_word_embeddings": True},
    {"a_key_no_transformers_reads": 3},  # kept by the config class, read by no model code
])
def test_a_variant_or_an_unread_key_expands_to_the_derivation(change):
    _same_version()
    config = {**_config("olmo2", 12, diff=True), **change}
    expanded = expand(config)
    assert expanded is not None
    assert expanded == _derived(config)


def test_a_structure_without_template_is_derived():
    """What no template vouches for is derived: q/k/v biases appear in the space."""
    from actlang.arch.adapters import ChannelSpace

    config = {**_config("olmo2", 10, diff=False), "attention_bias": True,
              "tie_word_embeddings": True}
    assert expand(config) is None
    space = ChannelSpace.from_config(config)
    q = space["layers.0.attn.q"]
    assert [p.name.rpartition(".")[2] for p in q.parts] == ["weight", "bias"]
    assert space.tied


def test_a_70b_config_with_a_template_is_planned_without_torch(tmp_path: Path):
    """The space of a 70B OLMo 2 comes from its template: torch is never imported."""
    config = {"model_type": "olmo2", "hidden_size": 8192, "intermediate_size": 28672,
              "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
              "vocab_size": 128256, "tie_word_embeddings": False, "dtype": "bfloat16",
              "rms_norm_eps": 1e-6, "rope_parameters": {"rope_theta": 500000.0,
                                                        "rope_type": "default"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    code = ("import sys; from actlang.arch.adapters import ChannelSpace; "
            f"s = ChannelSpace.from_pretrained({str(tmp_path)!r}); "
            "print(len(s), s.derived, s['layers.79.attn.k'].size, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == [str(80 * 11 + 3), "True", "1024", "False"]


def test_a_damaged_template_file_is_no_template(tmp_path, monkeypatch):
    config = _config("olmo2", 11, diff=False)
    monkeypatch.setattr(templates, "TEMPLATES", tmp_path)
    templates._template.cache_clear()
    try:
        (tmp_path / "olmo2.json.gz").write_bytes(gzip.compress(b'{"key": '))
        assert expand(config) is None
        assert expand({"model_type": "../../etc/passwd"}) is None
    finally:
        templates._template.cache_clear()
