"""Multimodal Gemma 3: module paths and checkpoint names differ, and a vision tower rides along.

transformers builds ``model.language_model.layers.0...`` but stores
``language_model.model.layers.0...``; the hub also stores the vision tower under names that
transformers does not write back. Channels name checkpoint tensors, hooks name modules.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from actlang.arch.adapters import ChannelSpace, checkpoint_naming
from actlang.arch.errors import RuntimeUserError
from actlang.run.checkpoint import Checkpoint
from actlang.run.corpus import batches
from actlang.run.finetune import trainable_masks
from actlang.run.mask import ChannelMask
from actlang.run.output import checkpoint_state
from actlang.run.stats import collect_paired_stats

from ..conftest import PRELUDE, WORDS
from .conftest import SENTENCES, run_json, write_pair


def test_dims_come_from_text_config_with_gemma3_defaults():
    config = {"model_type": "gemma3", "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                                                      "num_hidden_layers": 34, "model_type": "gemma3_text"}}
    space = ChannelSpace.from_config(config)  # the gemma-3-4b config.json leaves heads etc. to defaults
    assert space.n_layers == 34
    assert space["layers.0.attn.q"].size == 8 * 256 and space["layers.0.attn.k"].size == 4 * 256
    assert space["layers.0.mlp.up"].size == 10240 and space["lm_head"].size == 262208
    assert space["layers.0.mlp.up"].parts[0].name == "language_model.model.layers.0.mlp.up_proj.weight"
    assert space["layers.0.mlp.up"].hook.module == "model.language_model.layers.0.mlp.up_proj"
    with pytest.raises(RuntimeUserError, match="text_config"):
        ChannelSpace.from_config({"model_type": "gemma3"})


def test_naming_round_trips():
    naming = checkpoint_naming({"model_type": "gemma3"})
    for state, stored in [("model.language_model.norm.weight", "language_model.model.norm.weight"),
                          ("lm_head.weight", "language_model.lm_head.weight"),
                          ("model.vision_tower.encoder.layers.0.mlp.fc1.weight", "vision_tower.encoder.layers.0.mlp.fc1.weight")]:
        assert naming.to_checkpoint(state) == stored and naming.to_state(stored) == state
    llama = checkpoint_naming({"model_type": "llama"})
    assert llama.to_checkpoint("model.norm.weight") == "model.norm.weight"


def test_paired_statistics_hook_the_text_model(family_models, tokenizer):
    from actlang.arch.corpus import inline

    a, b = family_models["gemma3"]
    space = ChannelSpace.from_config(a.config)
    data = inline(SENTENCES[:4]).tokenize(tokenizer, max_length=16)
    result = collect_paired_stats(a, b, space, data, batch_size=2)
    up = result.paired.mean_absdiff("layers.1.mlp.up")
    assert result.paired.n_scored == sum(batch.n_scored for batch in batches(data, 2))
    assert bool((up > 0).all())


def test_finetune_masks_translate_checkpoint_names(family_models):
    model = family_models["gemma3"][0]
    space = ChannelSpace.from_config(model.config)
    selected = torch.zeros(space["layers.0.mlp.up"].size, dtype=torch.bool)
    selected[[1, 5]] = True
    mask = ChannelMask.from_channels(space, {"layers.0.mlp.up": selected})
    masks = trainable_masks(model, [mask])
    assert list(masks) == ["model.language_model.layers.0.mlp.up_proj.weight"]
    assert masks["model.language_model.layers.0.mlp.up_proj.weight"].any(1).nonzero().flatten().tolist() == [1, 5]


def test_checkpoint_state_uses_source_names_and_keeps_the_vision_tower(family_models, family_dirs, tmp_path):
    model = family_models["gemma3"][0]
    target_dir = family_dirs["gemma3"][0]
    tensors = set(ChannelSpace.from_pretrained(target_dir).tensors())
    state = checkpoint_state(model, target_dir, tensors)
    assert set(state) >= set(Checkpoint.open(target_dir).keys())
    # a hub checkpoint names the vision tower in a way transformers does not write back
    hub = tmp_path / "hub"
    shutil.copytree(target_dir, hub)
    stored = load_file(hub / "model.safetensors")
    renamed = {n.replace("vision_tower.", "vision_tower.vision_model.", 1): t for n, t in stored.items()}
    save_file(renamed, hub / "model.safetensors", metadata={"format": "pt"})
    state = checkpoint_state(model, hub, tensors)
    name = "vision_tower.vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(state[name], renamed[name])  # copied unchanged from the source
    # a text-model tensor the state lacks is an error, not a silent copy
    del renamed["language_model.model.norm.weight"]
    renamed["language_model.model.final_norm.weight"] = stored["language_model.model.norm.weight"]
    save_file(renamed, hub / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeUserError, match="final_norm"):
        checkpoint_state(model, hub, tensors | {"language_model.model.final_norm.weight"})


# --------------------------------------------------------------------------- actc run


@pytest.fixture(scope="module")
def gemma3_pair(tmp_path_factory) -> Path:
    """A multimodal Gemma 3 base/tuned pair (vision tower included) with the pair's corpora."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from actlang.zoo.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("gemma3")
    tokenizer = build_tokenizer(WORDS)
    vocab = len(tokenizer) + 3  # room for the image-boundary tokens
    config = Gemma3Config(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, vocab_size=vocab, sliding_window=16,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=64),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=vocab - 3, eoi_token_index=vocab - 2, image_token_index=vocab - 1)
    return write_pair(root, lambda: Gemma3ForConditionalGeneration(config), tokenizer, noise=0.05,
                      nudged=lambda name: "language_model" in name)


@pytest.mark.slow
def test_multimodal_gemma3_transfer_and_finetune_end_to_end(actc, gemma3_pair, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    spec = tmp_path / "gemma3.act"
    spec.write_text(PRELUDE.format(root=gemma3_pair) + (
        'surgery s -> "out/s" { target = tuned  transfer sums from base { budget = 10% }\n'
        '  finetune { data = probe steps = 3 lr = 1e-3 } }\n'))
    assert actc("plan", str(spec)).returncode == 0
    report = run_json(actc, spec)
    (surgery,) = report["surgeries"]
    out = Path(surgery["output"])
    tuned, result = load_file(gemma3_pair / "tuned" / "model.safetensors"), {}
    for shard in out.glob("*.safetensors"):
        result.update(load_file(shard))
    assert set(result) == set(tuned)  # the checkpoint's own names, vision tower included
    vision = [n for n in tuned if n.startswith(("vision_tower.", "multi_modal_projector."))]
    assert vision and all(torch.equal(result[n], tuned[n]) for n in vision)
    changed = [n for n in tuned if not torch.equal(result[n], tuned[n])]
    assert changed and all(n.startswith("language_model.model.layers.") for n in changed)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 5, 6]])).logits.shape[-1] == len(model.get_input_embeddings().weight)
