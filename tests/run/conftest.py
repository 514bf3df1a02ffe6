"""Shared fixtures for the runtime tests: tiny random models of every family, a char tokenizer,
and a model pair on disk for running specs.

Models are built from configs (no downloads), saved with ``save_pretrained`` into a
session temp dir. For each family there is a *target* and a *donor*: the donor is the
target plus small noise on every parameter, like a fine-tune of it.

``pair`` (which ``write_spec`` of tests/conftest.py writes specs over) is a directory with
``base`` (a random tiny Llama) and ``tuned`` (base with a few rows changed a lot and every
parameter nudged), a word-level tokenizer, and ``PRELUDE``'s corpora — enough for every op of
the pipeline in seconds, with no training.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from ..conftest import WORDS, write_corpora

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
    """The family models' tokenizer: one token per printable ASCII character."""
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


@pytest.fixture(scope="session")
def pair(tmp_path_factory) -> Path:
    """A tiny Llama ``base`` and its ``tuned`` (rows of every ``mlp.up_proj`` boosted)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from actlang.zoo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(WORDS)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, max_position_embeddings=64)
    return write_pair(tmp_path_factory.mktemp("pair"), lambda: LlamaForCausalLM(config),
                      tokenizer, noise=0.01,
                      boosted=lambda name: name.endswith("mlp.up_proj.weight"))


def write_pair(root: Path, make_model: Callable[[], Any], tokenizer: Any, *, noise: float,
               nudged: Callable[[str], bool] = lambda name: True,
               boosted: Callable[[str], bool] = lambda name: False) -> Path:
    """Save ``base`` and ``tuned`` (base plus noise on the ``nudged`` parameters and large
    changes to the first rows of the ``boosted`` ones) and ``PRELUDE``'s corpora in ``root``."""
    torch.manual_seed(0)
    base = make_model().eval()
    tuned = make_model().eval()
    tuned.load_state_dict(base.state_dict())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if nudged(name):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * noise)
            if boosted(name):
                parameter[:4] += torch.randn(parameter[:4].shape, generator=generator)
    save_model(base, root / "base", tokenizer)
    save_model(tuned, root / "tuned", tokenizer)
    write_corpora(root)
    return root


def run_json(actc: Callable[..., Any], spec: Path, *args: str) -> dict[str, Any]:
    """The report of ``actc run --json spec *args`` (which must succeed)."""
    result = actc("run", "--json", str(spec), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)
