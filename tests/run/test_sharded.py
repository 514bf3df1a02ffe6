"""Sharded checkpoints in and out (issue 13, part 5): a transfer or merge whose inputs are
split into many shards — each model's at its own boundaries — writes, into many shards, the
very tensors it writes from single-file inputs. Memory stays at about one tensor whatever the
shard count: measured by ``bench/bench_transfer_memory.py``, not here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from actlang.arch.adapters import ChannelSpace
from actlang.run.checkpoint import natural_key
from actlang.run.merge import merge_models
from actlang.run.output import OutTensor, write_model_dir
from actlang.run.scores import random_scores
from actlang.run.select import select_channels
from actlang.run.transfer import Donor, transfer


def tensors(directory: Path) -> dict[str, bytes]:
    """Every tensor of a model directory (single file or sharded), as raw bytes."""
    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                out[name] = (str(tensor.dtype), tuple(tensor.shape),
                             tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return out


def resharded(source: Path, destination: Path, max_shard_size: str) -> Path:
    """A copy of a model directory written as shards of at most ``max_shard_size``."""
    files = {}
    for file in sorted(source.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            files.update({name: handle.get_tensor(name) for name in handle.keys()})
    layout = [OutTensor(name, files[name].dtype, tuple(files[name].shape))
              for name in sorted(files, key=natural_key)]
    write_model_dir(destination, layout, files.__getitem__, source_dir=source,
                    max_shard_size=max_shard_size)
    return destination


@pytest.fixture(scope="module")
def sharded_pair(family_dirs, tmp_path_factory):
    """The llama pair, single-file and sharded (the target in ~8 KB shards, the donor in
    ~13 KB ones, so no shard boundary of one falls where the other's does)."""
    target, donor = family_dirs["llama"]
    root = tmp_path_factory.mktemp("sharded")
    return {"single": (target, donor),
            "sharded": (resharded(target, root / "target", "8KB"),
                        resharded(donor, root / "donor", "13KB"))}


def shard_count(directory: Path) -> int:
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return 1
    return len(set(json.loads(index.read_text())["weight_map"].values()))


def test_the_fixture_really_is_sharded(sharded_pair) -> None:
    target, donor = sharded_pair["sharded"]
    assert shard_count(target) >= 8 and shard_count(donor) >= 5
    assert shard_count(target) != shard_count(donor)


def test_a_transfer_between_sharded_checkpoints_writes_the_same_tensors(
        sharded_pair, tmp_path: Path) -> None:
    space = ChannelSpace.from_pretrained(sharded_pair["single"][0])
    mask = select_channels(random_scores(space, 5), space, 0.2)
    outputs = {}
    for layout, (target, donor) in sharded_pair.items():
        out = tmp_path / layout
        transfer(target, [Donor(donor, mask, lam=0.6)], out, max_shard_size="10KB")
        outputs[layout] = out
    assert shard_count(outputs["sharded"]) >= 5
    assert tensors(outputs["sharded"]) == tensors(outputs["single"])


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_a_merge_of_sharded_checkpoints_writes_the_same_tensors(
        sharded_pair, tmp_path: Path, method: str) -> None:
    outputs = {}
    for layout, (target, donor) in sharded_pair.items():
        out = tmp_path / layout
        if method == "linear":
            merge_models("linear", [target, donor], out, max_shard_size="10KB")
        else:
            merge_models("ties", [donor], out, base=target, density=0.5, max_shard_size="10KB")
        outputs[layout] = out
    assert tensors(outputs["sharded"]) == tensors(outputs["single"])


def test_a_missing_shard_is_named_before_anything_is_written(sharded_pair,
                                                              tmp_path: Path) -> None:
    from actlang.arch.errors import RuntimeUserError

    target = Path(shutil.copytree(sharded_pair["sharded"][0], tmp_path / "target"))
    victim = sorted(target.glob("model-*.safetensors"))[3]
    victim.unlink()
    space = ChannelSpace.from_pretrained(target)
    mask = select_channels(random_scores(space, 5), space, 0.2)
    with pytest.raises(RuntimeUserError, match=victim.name):
        transfer(target, [Donor(sharded_pair["sharded"][1], mask)], tmp_path / "out")
    assert not (tmp_path / "out").exists()
