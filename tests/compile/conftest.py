"""Model directories for planning, written without torch.

The planner reads a model's ``config.json``, its safetensors headers and its tokenizer —
never tensor data — so a directory written with ``safetensors.numpy`` and the ``tokenizers``
library is, to it, a model. ``pair`` (used by ``write_spec``, see ``tests/conftest.py``) is
a ``base`` and a ``tuned`` such directory with the corpora of ``PRELUDE``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from ..conftest import WORDS, write_corpora

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]

#: A Llama of 2 layers: 4 query heads of 8 (2 KV heads), 64 MLP neurons, hidden size 32.
TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": 40, "max_position_embeddings": 64,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    """A config-only model directory (what ``actc plan`` needs to bind rules)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def llama_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of an untied ``LlamaForCausalLM`` checkpoint of ``config``, with its shape."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    head = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head
    per_layer = {"self_attn.q_proj.weight": (hidden, hidden), "self_attn.k_proj.weight": (kv, hidden),
                 "self_attn.v_proj.weight": (kv, hidden), "self_attn.o_proj.weight": (hidden, hidden),
                 "mlp.gate_proj.weight": (inner, hidden), "mlp.up_proj.weight": (inner, hidden),
                 "mlp.down_proj.weight": (hidden, inner), "input_layernorm.weight": (hidden,),
                 "post_attention_layernorm.weight": (hidden,)}
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], hidden),
              "model.norm.weight": (hidden,), "lm_head.weight": (config["vocab_size"], hidden)}
    for layer in range(config["num_hidden_layers"]):
        shapes.update({f"model.layers.{layer}.{name}": shape for name, shape in per_layer.items()})
    return shapes


def write_tokenizer(directory: Path, words: list[str]) -> None:
    """A word-level fast tokenizer (``tokenizer.json`` and its config) over ``words``."""
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>",
        "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}))


def write_weights(directory: Path, config: dict[str, Any], seed: int) -> None:
    """Random float32 weights for every tensor of ``config``'s Llama, as ``model.safetensors``."""
    rng = np.random.default_rng(seed)
    save_file({name: rng.standard_normal(shape, dtype=np.float32)
               for name, shape in llama_shapes(config).items()},
              str(directory / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``base`` and ``tuned``: ``TINY_LLAMA`` directories with different random weights and
    one tokenizer, beside ``PRELUDE``'s corpora (written once per session, no torch)."""
    root = tmp_path_factory.mktemp("pair")
    for seed, name in enumerate(("base", "tuned")):
        directory = write_config(root / name, TINY_LLAMA)
        write_weights(directory, TINY_LLAMA, seed)
        write_tokenizer(directory, WORDS)
    write_corpora(root)
    return root


@pytest.fixture(scope="session")
def config_only_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pair`` with configs only (no weights, no tokenizer): a plan of it binds every rule
    but tokenizes nothing, so ``actc`` never imports transformers."""
    root = tmp_path_factory.mktemp("config-only-pair")
    for name in ("base", "tuned"):
        write_config(root / name, TINY_LLAMA)
    write_corpora(root)
    return root
