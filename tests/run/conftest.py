"""Shared fixtures for the runtime tests: tiny random models of every family, a char tokenizer.

Models are built from configs (no downloads), saved with ``save_pretrained`` into a
session temp dir. For each family there is a *target* and a *donor*: the donor is the
target plus small noise on every parameter, like a fine-tune of it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3", "phi3", "gpt2"]

_DEC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, vocab_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            max_position_embeddings=128)

CONFIGS: dict[str, dict] = {
    "llama": dict(_DEC),
    "mistral": dict(_DEC),
    "qwen2": dict(_DEC),
    "qwen3": dict(_DEC, head_dim=8),
    "gemma2": dict(_DEC, head_dim=8),
    "gemma3_text": dict(_DEC, head_dim=8),
    # multimodal Gemma 3: the text model nested in text_config, a vision tower beside it
    "gemma3": dict(text_config=dict(_DEC, head_dim=8, sliding_window=16),
                   vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=28, patch_size=14),
                   mm_tokens_per_image=4, boi_token_index=125, eoi_token_index=126, image_token_index=127),
    "phi3": dict(_DEC),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=128, bos_token_id=1,
                 eos_token_id=2, pad_token_id=0),
}


def make_config(family: str, **overrides):
    from transformers import AutoConfig

    return AutoConfig.for_model(family, **{**CONFIGS[family], **overrides})


def make_model(family: str, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(make_config(family, **overrides), dtype=torch.float32)
    with torch.no_grad():  # norms start at 1 (or 0): make every tensor distinct
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def perturbed(model, seed: int, scale: float = 0.02):
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return other.eval()


def make_tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)]
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def save_model(model, path: Path, tokenizer=None) -> Path:
    model.save_pretrained(path)
    (tokenizer or make_tokenizer()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def family_models():
    """family -> (target model, donor model), in memory."""
    out = {}
    for i, fam in enumerate(FAMILIES):
        trg = make_model(fam, seed=i)
        out[fam] = (trg, perturbed(trg, seed=100 + i))
    return out


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, family_models, tokenizer):
    """family -> (target dir, donor dir) saved with save_pretrained (safetensors)."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for fam, (trg, src) in family_models.items():
        out[fam] = (save_model(trg, root / f"{fam}-target", tokenizer),
                    save_model(src, root / f"{fam}-donor", tokenizer))
    return out


SENTENCES = [
    "the cat sat on the mat",
    "2 + 3 = 5",
    "seven plus one is eight",
    "a b c d e f g",
    "hello world, hello again",
    "q: 4 + 4 a: 8",
]
