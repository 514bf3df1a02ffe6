"""The compute dtype (issue 13, part 3): chosen in the spec (`dtype = bfloat16`) or for every
model on the command line (`--dtype`), honoured on any device, part of the cache keys, and
never the precision statistics are summed in (float64)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from actlang.lang import program as P
from actlang.lang.checker import check

from ..conftest import run_actc

SURGERY = 'surgery s -> "out/s" { target = tuned  transfer sums from base { budget = 10% } }\n'


def models_in(value) -> list[P.ModelSpec]:
    """Every ModelSpec reachable in a program."""
    import dataclasses

    if isinstance(value, P.ModelSpec):
        return [value]
    if isinstance(value, tuple):
        return [m for v in value for m in models_in(v)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [m for f in dataclasses.fields(value) for m in models_in(getattr(value, f.name))]
    return []


def test_with_dtype_reaches_every_model_of_a_program(write_spec):
    program, diagnostics, _ = check(write_spec(SURGERY))
    assert program is not None, diagnostics
    assert {m.dtype for m in models_in(program)} == {"auto"}
    half = P.with_dtype(program, "bfloat16")
    assert models_in(half) and {m.dtype for m in models_in(half)} == {"bfloat16"}
    assert {m.compute_dtype for m in models_in(program)} == {"float32"}  # auto computes in fp32
    assert half.surgeries[0].target == half.models[[m.name for m in half.models].index("tuned")]


def stats_files(cache: Path) -> dict[str, Path]:
    return {p.name: p for p in cache.rglob("*.safetensors") if "stats" in p.parts}


def test_dtype_on_the_command_line_computes_in_it_and_keeps_its_own_cache(actc, write_spec,
                                                                        tmp_path):
    spec = write_spec(SURGERY)
    plan = run_actc(actc, "plan", str(spec), "--dtype", "bfloat16")
    assert plan.returncode == 0, plan.stderr
    assert "computes in bfloat16" in plan.stdout and "computes in float32" not in plan.stdout
    full = run_actc(actc, "run", str(spec), "--json")
    assert full.returncode == 0, full.stderr[-3000:]
    before = stats_files(tmp_path / "cache")
    half = run_actc(actc, "run", str(spec), "--json", "--dtype", "bfloat16", "--force")
    assert half.returncode == 0, half.stderr[-3000:]
    ops = json.loads(half.stdout)["ops"]
    # the float32 statistics are not taken for bfloat16 ones: the capture ran again
    assert [op["status"] for op in ops if op["kind"] == "capture"] == ["done"]
    added = set(stats_files(tmp_path / "cache")) - set(before)
    assert added
    for name in added:  # computed in bfloat16, summed in float64
        with safe_open(str(stats_files(tmp_path / "cache")[name]), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F64"}
    # the output's weights keep the checkpoint's dtype: the transfer copies tensors
    with safe_open(str(tmp_path / "out/s/model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    again = run_actc(actc, "run", str(spec), "--json", "--dtype", "bfloat16")
    assert again.returncode == 0 and "already exists" not in again.stderr


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_a_spec_dtype_is_honoured_on_the_cpu(dtype, pair):
    from actlang.run.context import RunContext

    spec = P.ModelSpec("m", "local", str(pair / "base"), dtype=dtype)
    ctx = RunContext.__new__(RunContext)  # dtype() reads nothing of the run
    assert RunContext.dtype(ctx, spec) == getattr(torch, dtype)
    assert RunContext.dtype(ctx, P.ModelSpec("m", "local", "x")) == torch.float32
