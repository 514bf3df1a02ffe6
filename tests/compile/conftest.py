"""Fixtures for compiler and `actc run` tests: a tiny model pair on disk, and a spec writer.

`pair` is a session-built directory with `base` (random tiny Llama) and `tuned` (base with a
few rows changed a lot and every parameter nudged), a word-level tokenizer, and a probe
corpus — enough for every op of the pipeline in seconds, with no training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

WORDS = [str(i) for i in range(10)] + ["plus", "is", "the", "cat", "dog", "sees", "."]


def _save(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="session")
def pair(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from actlang.zoo.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("pair")
    tokenizer = build_tokenizer(WORDS)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, max_position_embeddings=64)
    return write_pair(root, lambda: LlamaForCausalLM(config), tokenizer, noise=0.01,
                      boosted=lambda name: name.endswith("mlp.up_proj.weight"))


def write_pair(root: Path, make_model: Callable[[], Any], tokenizer: Any, *, noise: float,
               nudged: Callable[[str], bool] = lambda name: True,
               boosted: Callable[[str], bool] = lambda name: False) -> Path:
    """Save ``base`` and ``tuned`` (base plus noise on the ``nudged`` parameters and large
    changes to the first rows of the ``boosted`` ones) and the probe, eval and text corpora."""
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
    _save(base, tokenizer, root / "base")
    _save(tuned, tokenizer, root / "tuned")
    rows = [{"q": f"{a} plus {b} is", "a": str((a + b) % 10)} for a in range(10)
            for b in range(10)]
    (root / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:48]))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[48:64]))
    (root / "text.txt").write_text("the cat sees the dog .\nthe dog sees the cat .\n" * 8)
    return root


PRELUDE = '''
model base = local("{root}/base")
model tuned = local("{root}/tuned")
corpus probe = jsonl("{root}/probe.jsonl", text = "{{q}} {{a}}", score = "a")
corpus text = text("{root}/text.txt")
ability sums {{
  probe = probe
  control = text
  eval = exact_match(jsonl("{root}/eval.jsonl", prompt = "q", answer = "a"))
}}
'''


@pytest.fixture
def write_spec(pair, tmp_path):
    """write_spec(body) -> path of a spec holding the prelude (models, corpora) and body."""
    def write(body: str, name: str = "spec.act") -> Path:
        path = tmp_path / name
        path.write_text(PRELUDE.format(root=pair) + body)
        return path
    return write


@pytest.fixture
def actc(tmp_path):
    """Run the installed `actc` with a private cache; returns the CompletedProcess."""
    executable = shutil.which("actc", path=str(Path(sys.executable).parent))
    assert executable, "actc is not installed next to this Python"
    env = {**os.environ, "ACTLANG_CACHE_DIR": str(tmp_path / "cache")}

    def run(*args: str, check: bool = False) -> subprocess.CompletedProcess:
        result = subprocess.run([executable, *args], cwd=tmp_path, env=env, text=True,
                                capture_output=True, timeout=600)
        if check:
            assert result.returncode == 0, result.stderr[-3000:]
        return result
    run.env = env
    run.executable = executable
    return run
