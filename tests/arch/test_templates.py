"""Shipped templates expand to exactly what derivation gives, for configs they were not built
from; a config of another structure is derived; a template never needs torch."""

from __future__ import annotations

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

    template = templates._template(model_type)
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
    files = sorted(TEMPLATES.glob("*.json"))
    assert {f"{t}.json" for t in TYPES} <= {f.name for f in files}
    for file in files:
        template = json.loads(file.read_text())
        assert template["model_type"] == file.stem
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


def test_a_size_left_out_takes_the_default_transformers_gives_it():
    _same_version()
    config = _config("olmo2", 7, diff=False)
    del config["num_key_value_heads"]  # transformers: as many as the query heads
    assert expand(config) == _derived(config)
    gpt_neox = _config("gpt_neox", 8, diff=True)
    gpt_neox.pop("intermediate_size", None)  # the type's constant default
    assert expand(gpt_neox) == _derived(gpt_neox)


@pytest.mark.parametrize("change", [
    {"attention_bias": True},            # a structural flag the template was not built with
    {"qk_layernorm_kind": "per_head"},   # a key the template does not know
    {"auto_map": {"AutoConfig": "x.Config"}},  # remote code: never a template
    {"num_key_value_heads": 0},          # not a size
    {"layer_types": ["full_attention", "an unknown kind"]},
])
def test_another_structure_gets_no_template(change):
    config = {**_config("olmo2", 9, diff=False), **change}
    assert expand(config) is None


def test_a_structure_without_template_is_derived():
    """What the template cannot vouch for is derived: q/k/v biases appear in the space."""
    from actlang.arch.adapters import ChannelSpace

    config = {**_config("olmo2", 10, diff=False), "attention_bias": True}
    space = ChannelSpace.from_config(config)
    q = space["layers.0.attn.q"]
    assert [p.name.rpartition(".")[2] for p in q.parts] == ["weight", "bias"]


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
        (tmp_path / "olmo2.json").write_text('{"key": ')
        assert expand(config) is None
        assert expand({"model_type": "../../etc/passwd"}) is None
    finally:
        templates._template.cache_clear()
