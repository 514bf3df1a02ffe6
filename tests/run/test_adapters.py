"""Adapter conformance: every canonical channel is really an output unit of its module."""

from __future__ import annotations

import json

import pytest
import torch

from actlang.arch.adapters import (
    ChannelSpace,
    RawSelector,
    checkpoint_naming,
    get_adapter,
    supported_model_types,
)
from actlang.arch.errors import RuntimeUserError
from actlang.run.checkpoint import Checkpoint

from .conftest import FAMILIES, make_model


def _space(model) -> ChannelSpace:
    return ChannelSpace.from_config(model.config.to_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_space_covers_checkpoint(family, family_dirs):
    target_dir, _ = family_dirs[family]
    space = ChannelSpace.from_pretrained(target_dir)  # config.json only
    ckpt = Checkpoint.open(target_dir)
    space.check_tensors(ckpt.shapes())
    covered = set(space.tensors())
    outside_text_model = {n for n in ckpt.keys() if n.startswith(("vision_tower.", "multi_modal_projector."))}
    assert covered == set(ckpt.keys()) - outside_text_model, sorted(set(ckpt.keys()) ^ covered)
    assert bool(outside_text_model) == (family == "gemma3")
    assert space.adapter is not None and family in space.adapter.model_types
    # every hook site exists as a module
    model = make_model(family)
    for e in space:
        assert e.hook is not None
        model.get_submodule(e.hook.module)


def test_space_from_config_only(tmp_path):
    cfg = make_model("llama").config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    space = ChannelSpace.from_pretrained(tmp_path)
    assert space["layers.1.mlp.up"].size == cfg["intermediate_size"]
    assert space["layers.0.attn.k"].size == cfg["num_key_value_heads"] * cfg["head_dim"]
    assert space.n_layers == cfg["num_hidden_layers"]
    assert "lm_head" in space and space["lm_head"].default_excluded


def test_gpt2_defaults_and_layout():
    space = _space(make_model("gpt2"))
    up = space["layers.0.mlp.up"]
    assert up.size == 4 * 32  # n_inner is None -> 4 * n_embd
    assert up.parts[0].axis == 1  # Conv1D [in, out]: a channel is a column
    k = space["layers.0.attn.k"]
    assert (k.parts[0].name, k.parts[0].axis, k.parts[0].offset) == ("transformer.h.0.attn.c_attn.weight", 1, 32)
    assert k.parts[1].name.endswith("c_attn.bias")
    assert space["lm_head"].parts[0].name == "transformer.wte.weight"  # tied


def test_phi3_fused_subblocks():
    space = _space(make_model("phi3"))
    q, k, v = (space[f"layers.0.attn.{x}"] for x in "qkv")
    assert [p.offset for p in (q.parts[0], k.parts[0], v.parts[0])] == [0, 32, 48]
    up = space["layers.0.mlp.up"]
    assert up.parts[0].name.endswith("gate_up_proj.weight") and up.parts[0].offset == 48


def test_unsupported_architecture_names_supported_ones():
    with pytest.raises(RuntimeUserError) as err:
        get_adapter("mamba")
    msg = str(err.value)
    assert "mamba" in msg and "llama" in msg and "gpt2" in msg and "raw" in msg
    assert set(supported_model_types()) >= {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2"}


def test_raw_escape_hatch(family_dirs, family_models, tokenizer):
    from actlang.arch.corpus import inline
    from actlang.run.stats import collect_stats

    target_dir, _ = family_dirs["llama"]
    space = ChannelSpace.from_pretrained(target_dir, raw=[RawSelector("model.layers.*.mlp.up_proj", axis=0)])
    raws = [e for e in space if e.kind == "raw"]
    assert [e.key for e in raws] == ["raw.model.layers.0.mlp.up_proj", "raw.model.layers.1.mlp.up_proj"]
    assert raws[0].layer == 0 and raws[0].size == 48
    stats = collect_stats(family_models["llama"][0], space, inline(["a b c"]).tokenize(tokenizer), entries=raws)
    assert stats["raw.model.layers.0.mlp.up_proj"]["count"][0] == 5
    # an architecture without adapter works with raw selectors only
    cfg = dict(space.config, model_type="my_custom_lm")
    shapes = Checkpoint.open(target_dir).shapes()
    only_raw = ChannelSpace.from_config(cfg, raw=[RawSelector("model.layers.0.self_attn.q_proj")], shapes=shapes)
    assert [e.key for e in only_raw] == ["raw.model.layers.0.self_attn.q_proj"]
    with pytest.raises(RuntimeUserError, match="matches no module"):
        ChannelSpace.from_config(cfg, raw=[RawSelector("nothing.*")], shapes=shapes)


# --------------------------------------------------------------------------- conformance


def _outputs(model, module_path, input_ids, pre_hook=None):
    got = {}
    mod = model.get_submodule(module_path)
    h = mod.register_forward_hook(lambda m, i, o: got.__setitem__("out", (o[0] if isinstance(o, tuple) else o).clone()))
    h2 = mod.register_forward_pre_hook(pre_hook) if pre_hook else None
    with torch.no_grad():
        model(input_ids=input_ids)
    h.remove()
    if h2:
        h2.remove()
    return got["out"]


class _perturb:
    """Add 0.5 to slices of parameters in place; restore them exactly on exit."""

    def __init__(self, model, parts, index_of_part):
        sd, naming = model.state_dict(), checkpoint_naming(model)
        self.views = [sd[naming.to_state(p.name)].narrow(p.axis, index_of_part(p), 1) for p in parts]

    def __enter__(self):
        self.saved = [v.clone() for v in self.views]
        with torch.no_grad():
            for v in self.views:
                v.add_(0.5)

    def __exit__(self, *exc):
        with torch.no_grad():
            for v, s in zip(self.views, self.saved):
                v.copy_(s)


@pytest.mark.parametrize("family", FAMILIES)
def test_channels_are_output_units(family, family_models):
    """Perturbing channel i's parameters changes output coordinate i of the hooked module only."""
    model = family_models[family][0]
    space = _space(model)
    input_ids = torch.tensor([[5, 9, 20, 33, 7, 61]])
    for e in space:
        if e.layer not in (None, 1):
            continue
        for i in sorted({0, e.size // 2 + 1, e.size - 1}):
            if e.kind == "lm_head" and space.tied and i in input_ids:
                continue
            a = _outputs(model, e.hook.module, input_ids)
            with _perturb(model, e.parts, lambda p: p.offset + i):
                b = _outputs(model, e.hook.module, input_ids)
            if e.hook.seq_axis != 1:
                a, b = a.movedim(e.hook.seq_axis, 1), b.movedim(e.hook.seq_axis, 1)
            changed = (a != b).reshape(-1, a.shape[-1]).any(0).nonzero().flatten().tolist()
            assert changed == [e.hook.start + i], (family, e.key, i, changed)


@pytest.mark.parametrize("family", FAMILIES)
def test_input_features_are_input_units(family, family_models):
    """For attn.o / mlp.down, input part j really reads input feature j."""
    model = family_models[family][0]
    space = _space(model)
    input_ids = torch.tensor([[5, 9, 20, 33]])
    for kind in ("attn.o", "mlp.down"):
        e = space[f"layers.0.{kind}"]
        (p,) = e.inputs
        j = p.size - 2

        def zero_j(module, args, j=j):
            x = args[0].clone()
            x[..., j] = 0
            return (x,)

        a = _outputs(model, e.hook.module, input_ids, zero_j)
        a2 = _outputs(model, e.hook.module, input_ids)
        with _perturb(model, e.inputs, lambda p: p.offset + j):
            b = _outputs(model, e.hook.module, input_ids, zero_j)
            b2 = _outputs(model, e.hook.module, input_ids)
        assert torch.equal(a, b), (family, kind)  # feature j zeroed: column j is not read
        assert not torch.equal(a2, b2)


def test_adapter_files_are_plain_data():
    from pathlib import Path

    import actlang.arch.adapters as adapters_pkg

    files = sorted(Path(adapters_pkg.__file__).parent.glob("*.json"))
    assert {f.stem for f in files} >= {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2"}
    for f in files:
        data = json.loads(f.read_text())
        assert {"family", "model_types", "dims", "layer_prefix", "layer_kinds"} <= set(data)
