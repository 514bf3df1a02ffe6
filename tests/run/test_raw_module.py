"""The escape hatch `module(glob, axis)` end to end, through the installed `actc`: raw
channels are planned, scored, selected, moved, masked, fine-tuned and reported, and only
they change (tests/run/conftest.py's tiny Llama pair, whose `tuned` has rows 0..3 of every
`mlp.up_proj` changed a lot, and every parameter nudged).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from actlang.arch.adapters import TensorPart
from actlang.run.mask import ChannelMask

from ..conftest import PRELUDE

UP = "model.layers.{}.mlp.up_proj.weight"
DOWN = "model.layers.{}.mlp.down_proj.weight"
ROWS = 'module("model.layers.*.mlp.up_proj", axis = 0)'

SURGERIES = f'''
surgery rows -> "out/rows" {{ target = tuned
  transfer sums from base {{ channels = [{ROWS}]  budget = 10% }}  eval = [] }}
surgery local -> "out/local" {{ target = tuned
  transfer sums from base {{ channels = [{ROWS}]  score = local_absdiff  budget = 10% }}
  eval = [] }}
surgery kinds -> "out/kinds" {{ target = tuned
  transfer sums from base {{ budget = 5% }}  eval = [] }}
surgery cols -> "out/cols" {{ target = tuned
  transfer sums from base {{ channels = module("model.layers.*.mlp.down_proj.weight", axis = 1)
                            score = weight_delta  budget = 10 }}  eval = [] }}
surgery whole -> "out/whole" {{ target = tuned
  transfer sums from base {{ channels = [{ROWS}]  granularity = module  score = weight_delta
                            budget = 1 }}  eval = [] }}
surgery trained -> "out/trained" {{ target = tuned
  transfer sums from base {{ channels = [{ROWS}]  budget = 10% }}
  finetune {{ data = probe  steps = 3  lr = 1e-2  scope = transferred }}  eval = [] }}
'''


def _run(spec: Path, cache: Path, **env: str) -> dict[str, Any]:
    """The report of the installed `actc run --json spec` (which must succeed), run in the
    spec's folder with the statistics cache ``cache``."""
    executable = shutil.which("actc", path=str(Path(sys.executable).parent))
    assert executable, "actc is not installed next to this Python"
    result = subprocess.run([executable, "run", "--json", str(spec)], cwd=spec.parent,
                            env={**os.environ, "ACTLANG_CACHE_DIR": str(cache), **env},
                            text=True, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def ran(pair: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One run of ``SURGERIES`` for every test here: (its folder, its report)."""
    root = tmp_path_factory.mktemp("raw")
    spec = root / "spec.act"
    spec.write_text(PRELUDE.format(root=pair) + SURGERIES)
    return root, _run(spec, root / "cache")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (NaN payloads and -0.0 included)."""
    return a.dtype == b.dtype and a.shape == b.shape and \
        a.contiguous().view(torch.uint8).equal(b.contiguous().view(torch.uint8))


def _changed(out: dict, target: dict, name: str, axis: int) -> set[int]:
    """Indices along ``axis`` of tensor ``name`` whose slice differs from the target's."""
    differs = out[name] != target[name]
    return set(torch.nonzero(differs.any(dim=1 - axis)).reshape(-1).tolist())


def _only_changed(out: dict, target: dict, names: set[str]) -> None:
    """Every tensor but ``names`` is bit-identical to the target's."""
    assert out.keys() == target.keys()
    for name in sorted(out.keys() - names):
        assert _same(out[name], target[name]), name


def _selected(mask: ChannelMask, key: str) -> set[int]:
    return set(torch.nonzero(mask.selected(key)).reshape(-1).tolist())


@pytest.mark.parametrize("surgery", ["rows", "local"])
def test_raw_channels_move_alone(ran, pair: Path, surgery: str) -> None:
    tmp_path, report = ran
    # the raw rules share the capture (and paired scores) with the canonical one
    assert report["counters"]["forward_passes"] == 2
    base, tuned = (load_file(pair / name / "model.safetensors") for name in ("base", "tuned"))
    ups = {UP.format(layer) for layer in range(2)}
    output = tmp_path / "out" / surgery

    out = load_file(output / "model.safetensors")
    _only_changed(out, tuned, ups)
    mask = ChannelMask.load(output / "masks/donor-0.safetensors")
    keys = [f"raw.model.layers.{layer}.mlp.up_proj" for layer in range(2)]
    assert sorted(mask.channels) == keys and mask.n_channels == 13  # 10% of 2 x 64 rows
    assert mask.meta["candidates"] == keys  # what the report ranks (the score is shared)
    for layer, key in enumerate(keys):
        name = UP.format(layer)
        rows = _changed(out, tuned, name, axis=0)
        assert rows == _selected(mask, key)
        assert all(_same(out[name][r], base[name][r]) for r in rows)
        assert {0, 1, 2, 3} <= rows  # the rows that changed a lot
        # the loaded mask keeps its raw entries (config.json alone does not give them)
        assert mask.space[key].parts == (TensorPart(name, 0, 0, 64),)
    summary = json.loads((output / "masks/donor-0.json").read_text())
    assert {k: v["selected"] for k, v in summary["per_kind"].items() if v["selected"]} == \
        {key: len(_selected(mask, key)) for key in keys}
    assert set(summary["per_layer"]) == {"0", "1"}
    results = json.loads((output / "run_results.json").read_text())
    (select,) = [op for op in results["ops"] if op["kind"] == "select"]
    assert select["selected_per_kind"] == {key: len(_selected(mask, key)) for key in keys}
    assert "raw:mlp.up_proj" in (output / "report.md").read_text()  # its channel map


def test_input_columns_move_by_weight_delta(ran, pair: Path) -> None:
    """axis = 1 of a Linear: columns (input features) move; scored by the weights."""
    tmp_path, _ = ran
    base, tuned = (load_file(pair / name / "model.safetensors") for name in ("base", "tuned"))
    downs = {DOWN.format(layer) for layer in range(2)}
    out = load_file(tmp_path / "out/cols/model.safetensors")
    _only_changed(out, tuned, downs)
    mask = ChannelMask.load(tmp_path / "out/cols/masks/donor-0.safetensors")
    assert mask.n_channels == 10
    for layer in range(2):
        name = DOWN.format(layer)
        columns = _changed(out, tuned, name, axis=1)
        assert columns == _selected(mask, f"raw.model.layers.{layer}.mlp.down_proj")
        assert all(_same(out[name][:, c], base[name][:, c]) for c in columns)
        assert mask.tensors[name].keys() == {1}


def test_a_raw_module_moves_whole(ran, pair: Path) -> None:
    """granularity = module: the up_proj whose rows changed most moves, every row of it."""
    tmp_path, _ = ran
    base, tuned = (load_file(pair / name / "model.safetensors") for name in ("base", "tuned"))
    ups = [UP.format(layer) for layer in range(2)]
    out = load_file(tmp_path / "out/whole/model.safetensors")
    # a module's score: the mean of its channels' (rows') weight_delta
    delta = [float((base[n] - tuned[n]).double().norm(dim=1).mean()) for n in ups]
    moved = ups[delta.index(max(delta))]
    _only_changed(out, tuned, {moved})
    assert _same(out[moved], base[moved])


def test_masked_finetune_trains_only_the_raw_channels(ran) -> None:
    tmp_path, _ = ran
    transferred = load_file(tmp_path / "out/rows/model.safetensors")  # the same selection
    out = load_file(tmp_path / "out/trained/model.safetensors")
    mask = ChannelMask.load(tmp_path / "out/trained/masks/donor-0.safetensors")
    ups = {UP.format(layer) for layer in range(2)}
    _only_changed(out, transferred, ups)
    trained = 0
    for layer in range(2):
        name = UP.format(layer)
        rows = _selected(mask, f"raw.model.layers.{layer}.mlp.up_proj")
        assert _changed(out, transferred, name, axis=0) <= rows
        others = [r for r in range(64) if r not in rows]
        assert _same(out[name][others], transferred[name][others])
        trained += len(_changed(out, transferred, name, axis=0))
    assert trained > 0


def test_zoo_models(tiny_zoo, zoo_cache_dir: Path, tmp_path: Path) -> None:
    """On the zoo's models (a curated Llama) and the zoo's own probe."""
    spec = tmp_path / "repair.act"
    spec.write_text('use std.zoo\n'
                    'surgery repair -> "out/repair" { target = zoo.tuned\n'
                    f'  transfer zoo.arithmetic from zoo.base {{ channels = [{ROWS}]\n'
                    '    budget = 5% } eval = [] }\n')
    _run(spec, zoo_cache_dir, ACTLANG_ZOO_PROFILE="tiny")
    base, tuned = (load_file(tiny_zoo.model_path(name) / "model.safetensors")
                   for name in ("base", "tuned"))
    out = load_file(tmp_path / "out/repair/model.safetensors")
    layers = sorted({int(n.split(".")[2]) for n in out if n.startswith("model.layers.")})
    ups = {UP.format(layer) for layer in layers}
    _only_changed(out, tuned, ups)
    moved = 0
    for name in sorted(ups):
        rows = _changed(out, tuned, name, axis=0)
        assert all(_same(out[name][r], base[name][r]) for r in rows)
        moved += len(rows)
    total = sum(tuned[name].shape[0] for name in ups)
    assert moved == int(0.05 * total + 0.5)
