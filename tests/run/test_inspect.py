"""`actc inspect`: a model's channel space from its config, through the installed command."""

from __future__ import annotations

import json
import textwrap

import pytest

from actlang.arch.adapters import ChannelSpace

from ..conftest import PRELUDE
from .test_derived import _model


def _inspect(actc, *args: str) -> dict:
    result = actc("inspect", "--json", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_curated_model_directory(actc, pair):
    info = _inspect(actc, str(pair / "base"))
    space = ChannelSpace.from_pretrained(pair / "base")
    assert info["source"].startswith("curated adapter llama")
    assert info["layers"] == space.n_layers
    assert info["channels"]["default"] == sum(e.size for e in space if not e.default_excluded)
    kinds = {k["kind"]: k for k in info["kinds"]}
    assert kinds["mlp.up"]["modules"] == space.n_layers
    assert kinds["mlp.up"]["channels"] == space["layers.0.mlp.up"].size
    assert kinds["norm.input"]["residual"] and kinds["lm_head"]["excluded"]
    text = actc("inspect", str(pair / "base"))
    assert text.returncode == 0 and "mlp.up" in text.stdout and "residual" in text.stdout


def test_a_spec_model_by_name(actc, pair, tmp_path):
    spec = tmp_path / "spec.act"
    spec.write_text(PRELUDE.format(root=pair))
    assert _inspect(actc, "--spec", str(spec), "tuned")["model"] == "tuned"
    missing = actc("inspect", "--spec", str(spec), "nothing")
    assert missing.returncode == 1 and "declares no model 'nothing'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_moe_model_lists_experts_and_fused_layouts(actc, tmp_path):
    _model("mixtral", 32).save_pretrained(tmp_path / "moe")
    info = _inspect(actc, str(tmp_path / "moe"))
    assert info["source"] == "derived from the module tree"
    kinds = {k["kind"]: k for k in info["kinds"]}
    assert kinds["mlp.router"]["channels"] == 4  # one channel per expert
    up = kinds["mlp.experts.3.up"]
    assert up["tensors"][0]["name"].endswith("experts.3.w3.weight")  # as saved on disk
    assert info["copied"] == []
    _model("gpt_neox", 32).save_pretrained(tmp_path / "neox")
    neox = {k["kind"]: k for k in _inspect(actc, str(tmp_path / "neox"))["kinds"]}
    assert "attn.qkv" in neox and "attn.q" not in neox  # interleaved per head: kept whole


def test_bad_targets_are_clear_errors(actc, tmp_path):
    for target, message in [(str(tmp_path / "nowhere"), "no model at"),
                            ("zoo.base", "zoo (seed 0) is not built")]:
        result = actc("inspect", target)
        assert result.returncode == 1, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    result = actc("inspect", str(tmp_path / "bad"))
    assert result.returncode == 1 and "not valid JSON" in result.stderr
    (tmp_path / "bad" / "config.json").write_text("[1, 2]")  # JSON, but not an object
    spec = tmp_path / "spec.act"
    spec.write_text('model m = local("bad")\nability a { probe = lines(["x"]) }\n'
                    'surgery s -> "out" { target = m  transfer a from m { budget = 1% } }\n')
    for result in (actc("inspect", str(tmp_path / "bad")), actc("plan", str(spec))):
        assert result.returncode == 1 and "does not hold a JSON object" in result.stderr
        assert "Traceback" not in result.stderr
    assert "spec.act:1:" in result.stderr  # the plan locates it at the model


REMOTE_CONFIG = '''
from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote"
'''
REMOTE_MODEL = '''
from transformers import LlamaForCausalLM

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
'''


@pytest.fixture
def remote_code_model(tmp_path, pair):
    """A model whose config names its own code (auto_map): a renamed Llama."""
    directory = tmp_path / "remote"
    directory.mkdir()
    config = json.loads((pair / "base" / "config.json").read_text())
    config.update(model_type="tiny_remote", architectures=["TinyRemoteForCausalLM"], auto_map={
        "AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
        "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM"})
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "configuration_tiny_remote.py").write_text(textwrap.dedent(REMOTE_CONFIG))
    (directory / "modeling_tiny_remote.py").write_text(textwrap.dedent(REMOTE_MODEL))
    return directory


def test_remote_code_runs_only_when_trusted(actc, remote_code_model, pair, tmp_path):
    actc.env["HF_HOME"] = str(tmp_path / "hf")  # transformers copies the code there
    refused = actc("inspect", str(remote_code_model))
    assert refused.returncode == 1 and "trust_remote_code" in refused.stderr
    assert not (tmp_path / "hf").exists()  # nothing of the model's code was imported
    info = _inspect(actc, "--trust-remote-code", str(remote_code_model))
    assert info["source"] == "derived from the module tree"
    curated = _inspect(actc, str(pair / "base"))
    assert info["kinds"] == curated["kinds"]  # a renamed Llama: the Llama space
