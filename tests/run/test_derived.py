"""Channel spaces derived from the module tree: equal to every curated adapter, and a real
transfer through `actc run` on architectures that have no adapter at all.

The conformance check is the one a new user would run: two tiny models of one config (the
donor perturbed), a word-level tokenizer, ``transfer ... { budget = 5% }``; only the
selected channels may change, each must equal the donor's, and the output must load.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from actlang.arch.adapters import ChannelSpace, adapters
from actlang.run.checkpoint import Checkpoint
from actlang.run.mask import ChannelMask
from actlang.run.scores import random_scores
from actlang.run.select import select_channels
from actlang.run.transfer import Donor, transfer

from ..conftest import PRELUDE, WORDS
from .conftest import FAMILIES, make_config, write_pair

_DEC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=64)

#: Architectures with no curated adapter, as a lab would fine-tune them (tiny).
DERIVED: dict[str, dict] = {
    "olmo2": dict(_DEC, num_key_value_heads=2),
    "granite": dict(_DEC, num_key_value_heads=2),
    "stablelm": dict(_DEC, num_key_value_heads=2),
    "phi": dict(_DEC, num_key_value_heads=2),
    "gpt_neox": dict(_DEC),
    "falcon": dict(_DEC),
    "starcoder2": dict(_DEC, num_key_value_heads=2),
    "mixtral": dict(_DEC, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "olmoe": dict(_DEC, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(_DEC, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=24, shared_expert_intermediate_size=32),
}
#: Fast in every run; the rest run with the slow tests (CI runs both).
FAST = {"olmo2", "gpt_neox", "mixtral"}


def _model(model_type: str, vocab_size: int, **fields):
    """A tiny model of ``model_type`` (``DERIVED``'s config, else ``_DEC`` and ``fields``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **{**DERIVED.get(model_type, _DEC), **fields},
                                  vocab_size=vocab_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # norms start at 1 (or 0): make every tensor distinct
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_derived_space_equals_the_curated_adapter(family):
    """The curated adapters are the oracle: kinds, sizes, tensors, offsets, hooks, flags."""
    config = make_config(family).to_dict()
    curated = ChannelSpace.from_config(config)
    assert curated.adapter is not None
    model_type = config["model_type"]
    with pytest.MonkeyPatch.context() as mp:  # the same config, as if no adapter existed
        mp.setattr("actlang.arch.adapters.adapters", lambda: {
            k: v for k, v in adapters().items() if k != model_type})
        derived = ChannelSpace.from_config(config)
    assert derived.derived and not curated.derived
    assert list(derived) == list(curated)  # entries equal, in the same order
    assert derived.tied == curated.tied
    assert {k: derived.dims[k] for k in curated.dims} == curated.dims


def _surgery(path, root, rule: str, output: str = "out"):
    """Write a spec at ``path``: ``PRELUDE`` over the pair in ``root`` and one surgery that
    moves ``sums`` from ``tuned`` into ``base`` by ``rule`` (the transfer block's body)."""
    path.write_text(PRELUDE.format(root=root) + (
        f'surgery s -> "{output}" {{ target = base  transfer sums from tuned {{\n'
        f'  {rule} }}\n  eval = [] }}\n'))
    return path


def _pair(root, model_type: str):
    from actlang.zoo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(WORDS)
    return write_pair(root, lambda: _model(model_type, len(tokenizer)), tokenizer, noise=0.02)


@pytest.mark.parametrize("family", [
    pytest.param(f, marks=() if f in FAST else pytest.mark.slow) for f in DERIVED])
def test_transfer_on_an_architecture_without_adapter(family, tmp_path, actc):
    root = _pair(tmp_path / "pair", family)
    spec = _surgery(tmp_path / "spec.act", root, "budget = 5%")
    result = actc("run", str(spec))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    space = ChannelSpace.from_pretrained(out)
    assert space.derived and space.n_channels() > 0
    (mask_file,) = (out / "masks").glob("*.safetensors")
    mask = ChannelMask.load(mask_file)
    assert mask.n_channels > 0
    base, tuned = load_file(root / "base" / "model.safetensors"), \
        load_file(root / "tuned" / "model.safetensors")
    result_tensors = load_file(out / "model.safetensors")
    assert set(result_tensors) == set(base)
    moved = 0
    for name, original in base.items():
        selected = mask.element_mask(name, tuple(original.shape))
        if selected is None:
            assert torch.equal(result_tensors[name], original), name
            continue
        assert torch.equal(result_tensors[name][~selected], original[~selected]), name
        assert torch.equal(result_tensors[name][selected], tuned[name][selected]), name
        moved += int(selected.sum())
    assert moved > 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    logits = model(input_ids=torch.tensor([[1, 5, 6, 7]])).logits
    assert torch.isfinite(logits).all()


PROPS = settings(max_examples=12, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def derived_pairs(tmp_path_factory):
    """model type -> (target dir, donor dir), saved by transformers."""
    out = {}
    for family in DERIVED:
        root = tmp_path_factory.mktemp(family)
        target, donor = _model(family, 32), _model(family, 32)
        target.save_pretrained(root / "target")
        donor.save_pretrained(root / "donor")
        out[family] = (root / "target", root / "donor")
    return out


@PROPS
@given(family=st.sampled_from(sorted(DERIVED)), seed=st.integers(0, 10_000),
       fraction=st.floats(0, 0.6))
def test_non_selected_tensors_stay_bit_identical(derived_pairs, tmp_path_factory, family, seed,
                                                 fraction):
    target_dir, donor_dir = derived_pairs[family]
    space = ChannelSpace.from_pretrained(target_dir)
    mask = select_channels(random_scores(space, seed), space, fraction)
    out = tmp_path_factory.mktemp("out") / "m"
    transfer(target_dir, [Donor(donor_dir, mask)], out)
    target, donor, result = (Checkpoint.open(d) for d in (target_dir, donor_dir, out))
    assert set(result.keys()) == set(target.keys())
    for name in target.keys():
        t, r = target.get(name), result.get(name)
        selected = mask.element_mask(name, tuple(t.shape))
        if selected is None:
            assert torch.equal(r, t), name
        else:
            assert torch.equal(r[~selected], t[~selected]), name
            assert torch.equal(r[selected], donor.get(name)[selected]), name


def test_derived_kinds_name_what_a_user_expects():
    """Conventions give canonical kinds; fused layouts that are not known stay whole; what
    matches nothing keeps its own name."""
    neox = ChannelSpace.from_config(_model("gpt_neox", 32).config.to_dict())
    assert {e.kind for e in neox if e.layer == 0} == {
        "norm.input", "norm.post_attn", "attn.qkv", "attn.o", "mlp.up", "mlp.down"}
    assert neox["layers.0.attn.qkv"].size == 3 * 32  # interleaved per head: one kind
    assert neox["lm_head"].parts[0].name == "embed_out.weight" or \
        neox["lm_head"].parts[0].name == "lm_head.weight"
    phi = ChannelSpace.from_config(_model("phi", 32).config.to_dict())
    assert phi["layers.1.attn.o"].parts[0].name == "model.layers.1.self_attn.dense.weight"
    assert phi["layers.1.mlp.up"].inputs == () and phi["layers.1.mlp.down"].inputs
    assert len(phi["lm_head"].parts) == 2  # Phi's output layer has a bias
    mixtral = ChannelSpace.from_config(_model("mixtral", 32).config.to_dict())
    assert mixtral.heads() == (4, 2, 8)
    assert "layers.0.attn.q" in mixtral


def test_every_derived_kind_is_one_a_spec_can_name():
    """The conventions' kinds are registered module kinds (so `actc check` accepts them)."""
    import fnmatch

    from actlang.arch.derived import conventions
    from actlang.arch.registry import MODULE_KINDS

    rules = conventions()
    kinds = [*rules.layer_kinds, *rules.global_kinds,
             *(f"mlp.experts.7.{role}" for role in set(rules.expert_leaves.values()))]
    for kind in kinds:
        assert any(fnmatch.fnmatchcase(kind, name) for name in MODULE_KINDS.names), kind


def test_experts_and_router_through_actc(tmp_path, actc):
    """Per-expert budgets move channels of every expert; the router needs a weight score."""
    root = _pair(tmp_path / "pair", "mixtral")

    def run(rule: str, name: str):
        return actc("run", str(_surgery(tmp_path / f"{name}.act", root, rule, name)))

    experts = run("channels = mlp.experts.*  budget = 10% per module", "experts")
    assert experts.returncode == 0, experts.stderr[-2000:]
    mask = ChannelMask.load(next((tmp_path / "experts" / "masks").glob("*.safetensors")))
    per_expert = mask.summary()
    moved = {k for k in mask.channels if mask.selected(k).any()}
    assert moved and all(".mlp.experts." in k for k in moved), sorted(moved)
    assert len(moved) == 2 * 4 * 3, per_expert  # 10% of each expert's gate, up and down
    named = run("channels = mlp.router  budget = 1", "router")
    assert named.returncode == 1 and "measures activations" in named.stderr
    weights = run("channels = mlp.router  budget = 1  score = weight_delta", "router_w")
    assert weights.returncode == 0, weights.stderr[-2000:]
    everything = run("budget = 5%", "all")
    assert everything.returncode == 0 and "cannot measure" in everything.stderr


def test_a_derived_space_is_kept_and_read_back_without_torch(tmp_path):
    """Planning a derived architecture again reads its space back (no torch import); a
    damaged memo is derived again and rewritten whole. (OLMo 2 with q/k/v biases and tied
    embeddings: a structure no shipped template was built for, so it is derived.)"""
    import json
    import subprocess
    import sys

    config = _model("olmo2", 32, attention_bias=True, tie_word_embeddings=True).config.to_dict()
    memo = tmp_path / "memo"
    first = ChannelSpace.from_config(config, memo=memo)
    (file,) = memo.glob("*.json")
    (tmp_path / "config.json").write_text(json.dumps(config))
    code = ("import sys; from pathlib import Path; "
            "from actlang.arch.adapters import ChannelSpace; "
            f"s = ChannelSpace.from_pretrained(Path({str(tmp_path)!r}), memo=Path({str(memo)!r})); "
            "print(len(s), s.derived, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(first)), "True", "False"]
    file.write_text('{"entries": [')
    again = ChannelSpace.from_config(config, memo=memo)
    assert list(again) == list(first)
    assert json.loads(file.read_text())["dims"] == first.dims


def test_module_escape_hatch_on_a_derived_architecture(tmp_path, actc):
    """`module(glob, axis)` names checkpoint tensors on an architecture without adapter as
    on any other: only the named rows move, each equal to the donor's."""
    root = _pair(tmp_path / "pair", "olmo2")
    spec = _surgery(tmp_path / "spec.act", root, 'channels = [module('
                    '"model.layers.*.self_attn.k_proj", axis = 0)]  budget = 25% per module')
    result = actc("run", str(spec))
    assert result.returncode == 0, result.stderr[-3000:]
    base, tuned = load_file(root / "base" / "model.safetensors"), \
        load_file(root / "tuned" / "model.safetensors")
    out = load_file(tmp_path / "out" / "model.safetensors")
    for name, original in base.items():
        if ".self_attn.k_proj." not in name:
            assert torch.equal(out[name], original), name
            continue
        changed = (out[name] != original).any(1)
        assert 0 < int(changed.sum()) < original.shape[0], name
        assert torch.equal(out[name][changed], tuned[name][changed]), name
    missing = _surgery(tmp_path / "missing.act", root, 'channels = [module('
                       '"model.layers.*.attn.nothing", axis = 0)]  budget = 5%', "out2")
    refused = actc("plan", str(missing))
    assert refused.returncode == 1 and "missing.act:11:" in refused.stderr, refused.stderr
    assert "matches no module" in refused.stderr and "self_attn" in refused.stderr
