"""`actc plan` and `actc graph` on model directories written without torch: what a plan
shows (models, ops, estimates), what it refuses, and that it reads no tensor data."""

from __future__ import annotations

import builtins
import io
import json
import math
import mmap
import os

import pytest

from actlang.compile.cache import Cache
from actlang.compile.plan import make_plan
from actlang.lang.checker import check_file

from ..conftest import PRELUDE, THREE_RULES
from .conftest import TINY_LLAMA, llama_shapes, write_config


def test_plan_json_document(actc, write_spec) -> None:
    result = actc("plan", "--json", str(write_spec(THREE_RULES)))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["format_version"] == 1
    assert plan["models"]["base"]["architecture"] == "llama"
    assert plan["models"]["base"]["parameters"] == sum(
        math.prod(shape) for shape in llama_shapes(TINY_LLAMA).values())
    assert {op["kind"] for op in plan["ops"]} >= {"load", "capture", "statistic", "score",
                                                  "select", "transfer", "save"}
    assert not any(op["cached"] for op in plan["ops"])
    assert plan["estimates"]["forward_passes"] == 2
    assert plan["estimates"]["tokens"] > 0 and plan["estimates"]["bytes_written"] > 0


def test_plan_on_a_config_only_70b_model(actc, tmp_path) -> None:
    config = {**TINY_LLAMA, "hidden_size": 8192, "intermediate_size": 28672,
              "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
              "vocab_size": 128256, "max_position_embeddings": 8192}
    for name in ("base", "tuned"):
        write_config(tmp_path / name, config)
    (tmp_path / "s.act").write_text(
        'model base = local("base")\nmodel tuned = local("tuned")\n'
        'ability a { probe = lines(["x"]) }\n'
        'surgery s -> "out" { target = tuned transfer a from base { channels = attn + mlp '
        'budget = 1% } }\n')
    result = actc("plan", "--json", "s.act")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["models"]["base"]["parameters"] == 70_553_706_496
    assert plan["estimates"]["peak_memory_bytes"] > 2 * 70e9  # two models in lock-step


class _HeaderOnly:
    """A safetensors file that may be read up to the end of its header and no further."""

    def __init__(self, handle, limit: int) -> None:
        self._handle, self._limit = handle, limit

    def __getattr__(self, name: str):
        attribute = getattr(self._handle, name)
        if not name.startswith("read"):
            return attribute

        def guarded(*args, **kwargs):
            value = attribute(*args, **kwargs)
            if self._handle.tell() > self._limit:
                raise AssertionError(f"tensor data read from {self._handle.name}")
            return value
        return guarded

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


@pytest.fixture
def header_only_safetensors(monkeypatch):
    """From here on, reading a ``.safetensors`` file past its header raises AssertionError,
    and so does every other way to its tensor data (mmap, pread, safetensors' own readers)."""
    import safetensors
    import safetensors.numpy

    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith(".safetensors") and "r" in mode:
            with real_open(file, "rb") as raw:
                limit = 8 + int.from_bytes(raw.read(8), "little")
            return _HeaderOnly(handle, limit)
        return handle

    def forbidden(*args, **kwargs):
        raise AssertionError("tensor data read")

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    for module, name in [(os, "pread"), (mmap, "mmap"), (safetensors, "safe_open"),
                         (safetensors.numpy, "load_file")]:
        monkeypatch.setattr(module, name, forbidden)


def test_plan_reads_no_tensor_data(write_spec, header_only_safetensors, tmp_path) -> None:
    program = check_file(write_spec(THREE_RULES))
    plan = make_plan(program, Cache(tmp_path / "cache"))
    assert plan.models["base"].parameters > 0 and plan.estimates.forward_passes == 2
    # the guard works: a run plan hashes the weights, which reads them
    with pytest.raises(AssertionError, match="tensor data read"):
        make_plan(program, Cache(tmp_path / "cache"), dry_run=False)


def test_selector_budget_errors_are_found_by_plan(actc, write_spec) -> None:
    result = actc("plan", str(write_spec('surgery s -> "o" { target = tuned transfer sums '
                                         'from base { channels = attn.q budget = 100000 } }')))
    assert result.returncode == 1 and "asks for 100000 channels" in result.stderr
    result = actc("plan", str(write_spec('surgery s -> "o" { target = tuned transfer sums '
                                         'from base { channels = embed budget = 1% } }')))
    assert result.returncode == 1 and "include_global" in result.stderr


def test_graph_formats(actc, config_only_pair, tmp_path) -> None:
    spec = tmp_path / "spec.act"
    spec.write_text(PRELUDE.format(root=config_only_pair) + THREE_RULES)
    dot = actc("graph", str(spec))
    assert dot.returncode == 0 and dot.stdout.startswith("digraph actc {") and "->" in dot.stdout
    mermaid = actc("graph", "--format", "mermaid", str(spec))
    assert mermaid.stdout.startswith("flowchart LR") and "-->" in mermaid.stdout
