from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actlang.arch.adapters import ChannelSpace
from actlang.arch.errors import RuntimeUserError
from actlang.run.checkpoint import Checkpoint
from actlang.run.mask import ChannelMask
from actlang.run.scores import random_scores
from actlang.run.select import select_channels
from actlang.run.transfer import (
    Donor,
    apply_masks_,
    merge_tensor,
    move_slices,
    transfer,
)

from .conftest import make_model, perturbed, save_model

PROPS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _random_mask(space, seed, frac, tie=None, granularity="channel"):
    return select_channels(random_scores(space, seed), space, frac, tie=tie, granularity=granularity)


@PROPS
@given(seed=st.integers(0, 10_000), frac=st.floats(0, 0.5), family=st.sampled_from(["llama", "phi3", "gpt2", "qwen2", "gemma3"]),
       tie=st.sampled_from([None, "neuron", "head"]), lam=st.sampled_from([1.0, 0.5, 0.0]))
def test_only_masked_elements_change(family_dirs, tmp_path_factory, seed, frac, family, tie, lam):
    trg_dir, src_dir = family_dirs[family]
    space = ChannelSpace.from_pretrained(trg_dir)
    mask = _random_mask(space, seed, frac, tie)
    out = tmp_path_factory.mktemp("out") / "m"
    report = transfer(trg_dir, [Donor(src_dir, mask, lam=lam)], out)
    trg, src, res = Checkpoint.open(trg_dir), Checkpoint.open(src_dir), Checkpoint.open(out)
    assert set(res.keys()) == set(trg.keys())
    moved = 0
    for name in trg.keys():
        t, s, r = trg.get(name), src.get(name), res.get(name)
        m = mask.element_mask(name, tuple(t.shape))
        if m is None or lam == 0:
            assert torch.equal(r, t), name  # unmasked tensors bit-identical
            continue
        assert torch.equal(r[~m], t[~m]), name  # every changed element is in the mask
        if lam == 1:
            assert torch.equal(r[m], s[m]), name
        else:
            torch.testing.assert_close(r[m], t[m] + lam * (s[m] - t[m]))
        moved += int(m.sum())
    assert report.elements_moved == moved


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "phi3", "gpt2"])
def test_full_budget_lambda_one_gives_source(family, family_dirs, tmp_path):
    trg_dir, src_dir = family_dirs[family]
    space = ChannelSpace.from_pretrained(trg_dir)
    mask = ChannelMask.full(space)
    transfer(trg_dir, [Donor(src_dir, mask)], tmp_path / "out", save_masks=False)
    src, res = Checkpoint.open(src_dir), Checkpoint.open(tmp_path / "out")
    assert set(res.keys()) == set(src.keys()) == set(space.tensors())  # every tensor is in the mask
    for name in res.keys():
        assert torch.equal(res.get(name), src.get(name)), name


def test_gpt2_output_channel_changes_only_that_unit(family_dirs, family_models, tmp_path):
    trg_dir, src_dir = family_dirs["gpt2"]
    space = ChannelSpace.from_pretrained(trg_dir)
    unit = 17
    sel = torch.zeros(space["layers.0.mlp.up"].size, dtype=torch.bool)
    sel[unit] = True
    mask = ChannelMask.from_channels(space, {"layers.0.mlp.up": sel})
    transfer(trg_dir, [Donor(src_dir, mask)], tmp_path / "out")
    trg, res = Checkpoint.open(trg_dir), Checkpoint.open(tmp_path / "out")
    w_t, w_r = trg.get("transformer.h.0.mlp.c_fc.weight"), res.get("transformer.h.0.mlp.c_fc.weight")
    diff = (w_t != w_r).nonzero()
    assert set(diff[:, 1].tolist()) == {unit}  # only column `unit` of the [in, out] Conv1D
    b_t, b_r = trg.get("transformer.h.0.mlp.c_fc.bias"), res.get("transformer.h.0.mlp.c_fc.bias")
    assert (b_t != b_r).nonzero().flatten().tolist() == [unit]
    # and in the forward pass only that output unit of c_fc changes
    from transformers import AutoModelForCausalLM

    model_t, model_r = family_models["gpt2"][0], AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    outs = []
    for m in (model_t, model_r):
        got = {}
        h = m.transformer.h[0].mlp.c_fc.register_forward_hook(lambda mod, i, o: got.setdefault("o", o))
        with torch.no_grad():
            m(input_ids=torch.tensor([[4, 5, 6, 7]]))
        h.remove()
        outs.append(got["o"])
    assert (outs[0] != outs[1]).reshape(-1, outs[0].shape[-1]).any(0).nonzero().flatten().tolist() == [unit]


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gemma3", "phi3", "gpt2"])
def test_saved_output_reloads_and_matches_in_memory(family, family_dirs, family_models, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trg_dir, src_dir = family_dirs[family]
    trg_m, src_m = family_models[family]
    space = ChannelSpace.from_pretrained(trg_dir)
    mask = _random_mask(space, 7, 0.1, tie="neuron")
    transfer(trg_dir, [Donor(src_dir, mask, lam=0.7)], tmp_path / "out", max_shard_size="30KB",
             spec_text="surgery s -> \"out\" { }", base_models=["zoo/tuned", "zoo/base"])
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    mem = copy.deepcopy(trg_m)
    apply_masks_(mem, [Donor(src_m, mask, lam=0.7)])
    ids = torch.tensor([[5, 9, 20, 33, 7, 61, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, mem(input_ids=ids).logits)
    gen = loaded.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 11)
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok("ab").input_ids == tokenizer("ab").input_ids
    card = (tmp_path / "out" / "README.md").read_text()
    front = card.split("---")[1]
    assert "base_model:\n- \"zoo/tuned\"\n- \"zoo/base\"" in front and "library_name: transformers" in front
    assert "tags:" in front and "surgery s" in card
    assert (tmp_path / "out" / "masks" / "donor-0.json").is_file()


def test_deterministic_bytes(family_dirs, tmp_path):
    trg_dir, src_dir = family_dirs["qwen2"]
    space = ChannelSpace.from_pretrained(trg_dir)
    mask = _random_mask(space, 3, 0.2)
    for d in ("a", "b"):
        transfer(trg_dir, [Donor(src_dir, mask, lam=0.3)], tmp_path / d)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_mask_save_load_reapply(family_dirs, tmp_path):
    trg_dir, src_dir = family_dirs["llama"]
    space = ChannelSpace.from_pretrained(trg_dir)
    mask = _random_mask(space, 11, 0.05, tie="head")
    path = mask.save(tmp_path / "mask")
    summary = json.loads(path.with_suffix(".json").read_text())
    assert summary["channels_selected"] == mask.n_channels
    assert sum(sum(v.values()) for v in summary["per_layer"].values()) == mask.n_channels
    back = ChannelMask.load(path)
    assert back.n_channels == mask.n_channels and back.meta == json.loads(json.dumps(mask.meta))
    transfer(trg_dir, [Donor(src_dir, mask)], tmp_path / "a")
    transfer(trg_dir, [Donor(src_dir, back)], tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_overlap_policies():
    trg = torch.zeros(2, 3)
    s1, s2 = torch.full((2, 3), 2.0), torch.full((2, 3), 4.0)
    m1 = torch.tensor([[True, True, False], [False, False, False]])
    m2 = torch.tensor([[False, True, True], [False, False, False]])
    sc1, sc2 = torch.full((2, 3), 1.0, dtype=torch.float64), torch.full((2, 3), 5.0, dtype=torch.float64)
    out, moved, over = merge_tensor("w", trg, [s1, s2], [m1, m2], [1.0, 1.0], "mean")
    assert out[0].tolist() == [2.0, 3.0, 4.0] and moved == 3 and over == 1 and out[1].eq(0).all()
    out, *_ = merge_tensor("w", trg, [s1, s2], [m1, m2], [1.0, 1.0], "priority")
    assert out[0].tolist() == [2.0, 2.0, 4.0]
    out, *_ = merge_tensor("w", trg, [s1, s2], [m1, m2], [1.0, 1.0], "max_score", [sc1, sc2])
    assert out[0].tolist() == [2.0, 4.0, 4.0]
    with pytest.raises(RuntimeUserError, match="overlap on 1 elements of tensor w"):
        merge_tensor("w", trg, [s1, s2], [m1, m2], [1.0, 1.0], "error", labels=["a", "b"])
    out, moved, _ = merge_tensor("w", trg, [s1, s2], [m1, m2], [0.5, 0.0], "error")
    assert out[0].tolist() == [1.0, 1.0, 0.0] and moved == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lam", [1.0, 0.5, -0.3])
@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1)])
def test_one_donor_moves_slices_as_merge_tensor_moves_elements(dtype, lam, axes):
    """The one-donor fast path writes the selected rows/columns in place: the same bits and
    count as merge_tensor through the element mask (several axes only with lam 1)."""
    g = torch.Generator().manual_seed(0)
    trg, src = torch.randn(7, 5, generator=g).to(dtype), torch.randn(7, 5, generator=g).to(dtype)
    masks = {0: torch.tensor([1, 0, 0, 1, 1, 0], dtype=torch.bool),  # shorter than the axis
             1: torch.tensor([0, 1, 0, 0, 1], dtype=torch.bool)}
    mask = ChannelMask({}, tensors={"w": {a: masks[a] for a in axes}})
    ref, moved_ref, _ = merge_tensor("w", trg, [src], [mask.element_mask("w", (7, 5))], [lam])
    out = trg.clone()
    moved = move_slices("w", out, src, mask.tensors["w"], lam)
    if len(axes) > 1 and lam != 1:
        assert moved is None and torch.equal(out, trg)  # nothing written
        return
    assert moved == moved_ref
    assert torch.equal(out.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       ref.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))


def test_two_donors_merge_files(family_dirs, tmp_path):
    trg_dir, src_dir = family_dirs["llama"]
    other = save_model(perturbed(make_model("llama", seed=0), seed=999), tmp_path / "other")
    space = ChannelSpace.from_pretrained(trg_dir)
    m1, m2 = _random_mask(space, 1, 0.2), _random_mask(space, 2, 0.2)
    rep = transfer(trg_dir, [Donor(src_dir, m1), Donor(other, m2)], tmp_path / "out", overlap="priority")
    assert rep.elements_overlapping > 0
    with pytest.raises(RuntimeUserError, match="overlap"):
        transfer(trg_dir, [Donor(src_dir, m1), Donor(other, m2)], tmp_path / "out2", overlap="error")
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2*"))  # nothing half-written


# --------------------------------------------------------------------------- bad input


def test_output_safety(family_dirs, tmp_path):
    trg_dir, src_dir = family_dirs["llama"]
    space = ChannelSpace.from_pretrained(trg_dir)
    mask = _random_mask(space, 0, 0.1)
    transfer(trg_dir, [Donor(src_dir, mask)], tmp_path / "out")
    with pytest.raises(RuntimeUserError, match="already exists"):
        transfer(trg_dir, [Donor(src_dir, mask)], tmp_path / "out")
    transfer(trg_dir, [Donor(src_dir, mask, lam=0.0)], tmp_path / "out", overwrite=True)
    assert Checkpoint.open(tmp_path / "out").get("model.norm.weight").equal(Checkpoint.open(trg_dir).get("model.norm.weight"))
    for bad in (trg_dir, trg_dir / "sub", src_dir):
        with pytest.raises(RuntimeUserError, match="overlaps the input"):
            transfer(trg_dir, [Donor(src_dir, mask)], bad, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_mismatched_models_name_first_tensor(family_dirs, tmp_path):
    trg_dir, _ = family_dirs["llama"]
    space = ChannelSpace.from_pretrained(trg_dir)
    mask = _random_mask(space, 0, 0.1)
    qwen = family_dirs["qwen2"][0]
    with pytest.raises(RuntimeUserError, match="architectures differ.*'qwen2'.*'llama'"):
        transfer(trg_dir, [Donor(qwen, mask)], tmp_path / "o")
    wide = save_model(make_model("llama", intermediate_size=64), tmp_path / "wide")
    with pytest.raises(RuntimeUserError, match=r"shapes differ at tensor model\.layers\.0\.mlp\.down_proj\.weight"):
        transfer(trg_dir, [Donor(wide, mask)], tmp_path / "o")
    vocab = save_model(make_model("llama", vocab_size=256), tmp_path / "vocab")
    with pytest.raises(RuntimeUserError, match=r"shapes differ at tensor lm_head\.weight.*vocabularies differ: 128 vs 256"):
        transfer(trg_dir, [Donor(vocab, mask)], tmp_path / "o")
    deep = save_model(make_model("llama", num_hidden_layers=3), tmp_path / "deep")
    with pytest.raises(RuntimeUserError, match=r"model\.layers\.2\..* is not in the target"):
        transfer(trg_dir, [Donor(deep, mask)], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_missing_truncated_and_pickle(family_dirs, family_models, tmp_path):
    trg_dir, src_dir = family_dirs["llama"]
    with pytest.raises(RuntimeUserError, match="model directory not found"):
        Checkpoint.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeUserError, match="no config.json"):
        Checkpoint.open(tmp_path / "empty")
    trunc = tmp_path / "trunc"
    shutil.copytree(src_dir, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(RuntimeUserError, match="truncated"):
        Checkpoint.open(trunc)
    (trunc / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(RuntimeUserError, match="truncated"):
        Checkpoint.open(trunc)
    pk = tmp_path / "pickled"
    pk.mkdir()
    shutil.copy(src_dir / "config.json", pk / "config.json")
    torch.save(family_models["llama"][1].state_dict(), pk / "pytorch_model.bin")
    with pytest.raises(RuntimeUserError, match=r"pickle.*safetensors only") as err:
        Checkpoint.open(pk)
    assert "allow_pickle" in str(err.value)
    space = ChannelSpace.from_pretrained(trg_dir)
    mask = ChannelMask.full(space)
    with pytest.raises(RuntimeUserError, match="pickle"):
        transfer(trg_dir, [Donor(pk, mask)], tmp_path / "o")
    # explicitly allowed: the tied/untied state dict of the same model transfers like safetensors
    ck = Checkpoint.open(pk, allow_pickle=True)
    assert torch.equal(ck.get("model.norm.weight"), Checkpoint.open(src_dir).get("model.norm.weight"))
    shard = tmp_path / "sharded"
    shutil.copytree(src_dir, shard)
    (shard / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00002.safetensors"}}))
    with pytest.raises(RuntimeUserError, match="shard model-00002.safetensors .* is missing"):
        Checkpoint.open(shard)


def test_mask_for_another_model_is_refused(family_dirs, tmp_path):
    trg_dir, src_dir = family_dirs["llama"]
    gpt_space = ChannelSpace.from_pretrained(family_dirs["gpt2"][0])
    mask = _random_mask(gpt_space, 0, 0.1)
    with pytest.raises(RuntimeUserError, match="mask names tensor transformer"):
        transfer(trg_dir, [Donor(src_dir, mask)], tmp_path / "o")
    with pytest.raises(RuntimeUserError, match="unknown overlap"):
        transfer(trg_dir, [Donor(src_dir, mask)], tmp_path / "o", overlap="vote")
