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
from actlang.compile.plan import PlanError, make_plan
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
    result = actc("plan", "--json", "s.act", "--max-memory", "1TB")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["models"]["base"]["parameters"] == 70_553_706_496
    assert plan["estimates"]["peak_memory_bytes"] > 2 * 70e9  # two models in lock-step
    assert [c["strategy"] for c in plan["captures"]] == ["in memory"]
    # Under 64 GB the pair (282 GB in float32) is captured a layer at a time, loading
    # neither model: embeddings, one layer and hidden states of each.
    streamed = json.loads(actc("plan", "--json", "s.act", "--max-memory", "64GB").stdout)
    (capture,) = streamed["captures"]
    assert capture["strategy"] == "streamed" and "over the 64.0 GB limit" in capture["reason"]
    assert not [op for op in streamed["ops"] if op["kind"] == "load"]
    assert 4e9 < streamed["estimates"]["peak_memory_bytes"] < 64e9


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


# ---- module(glob, axis): raw entries from safetensors headers ---------------------------------

ROWS = 'module("model.layers.*.mlp.up_proj", axis = 0)'


def _raw_rule(write_spec, body: str, *more: str):
    """(checked program, spec path, line of the rule) of a spec whose surgery ``s`` has one
    transfer rule of ``body``; ``more`` adds surgeries."""
    spec = write_spec('surgery s -> "o" { target = tuned\n'
                      f'  transfer sums from base {{ {body} }} }}\n' + "".join(more))
    line = spec.read_text().splitlines().index(f"  transfer sums from base {{ {body} }} }}")
    return check_file(spec), spec, line + 1


def test_module_selectors_bind_raw_entries_from_headers(write_spec, header_only_safetensors,
                                                        tmp_path) -> None:
    program, _, _ = _raw_rule(write_spec, f"channels = [{ROWS}]  budget = 10")
    plan = make_plan(program, Cache(tmp_path / "cache"))
    (selectable,) = plan.selectable.values()
    assert (selectable.units, selectable.channels) == (2 * 64, 2 * 64)
    for name in ("base", "tuned"):
        raw = [e for e in plan.models[name].space if e.kind == "raw"]
        assert [e.key for e in raw] == ["raw.model.layers.0.mlp.up_proj",
                                        "raw.model.layers.1.mlp.up_proj"]
        assert raw[1].layer == 1 and raw[1].parts[0].name == "model.layers.1.mlp.up_proj.weight"


def test_a_module_selector_matching_nothing_is_located_at_its_rule(actc, write_spec) -> None:
    _, spec, line = _raw_rule(write_spec, 'channels = module("model.layers.*.mlp.upproj")  '
                                          'budget = 1%')
    result = actc("plan", str(spec))
    assert result.returncode == 1 and "error[E501]" in result.stderr
    assert 'module("model.layers.*.mlp.upproj") matches no module of the model' in result.stderr
    assert f"spec.act:{line}:3" in result.stderr
    assert "module paths here look like model.layers." in result.stderr  # real ones, close
    assert "mlp.up_proj" in result.stderr


def test_a_module_axis_out_of_range_is_located_at_its_rule(actc, write_spec) -> None:
    _, spec, line = _raw_rule(write_spec, 'channels = module("model.layers.*.input_layernorm", '
                                          'axis = 1)  score = weight_delta  budget = 1%')
    result = actc("plan", str(spec))
    assert result.returncode == 1 and "error[E501]" in result.stderr
    assert "axis 1 is out of range for model.layers.0.input_layernorm.weight, of shape [32]" \
        in result.stderr
    assert f"spec.act:{line}:3" in result.stderr and "its axes are 0..0" in result.stderr


@pytest.mark.parametrize("body, units", [
    ('channels = module("model.layers.*.mlp.down_proj", axis = 1)  score = weight_delta', 128),
    ('channels = module("model.layers.*.mlp.down_proj", axis = 1)  score = random', 128),
    (f"channels = [{ROWS}]  score = local_absdiff", 128),  # a Linear's rows: its own change
    ('channels = module("model.embed_tokens", axis = 1)', 32),  # the embedding's outputs
    (f"channels = [{ROWS}, mlp.up]  granularity = layer", 2),
])
def test_what_module_selectors_may_score(write_spec, tmp_path, body: str, units: int) -> None:
    program, _, _ = _raw_rule(write_spec, body + "  budget = 1")
    (selectable,) = make_plan(program, Cache(tmp_path / "cache")).selectable.values()
    assert selectable.units == units


@pytest.mark.parametrize("body, message", [
    # a Linear's input columns have no activation of their own in its output
    ('channels = module("model.layers.*.mlp.down_proj", axis = 1)',
     "`paired_absdiff` measures module outputs, but the channels of model.layers.0.mlp."
     "down_proj run along axis 1 of its weight, and its outputs along axis 0"),
    ('channels = module("model.embed_tokens", axis = 0)  score = absmean_diff',
     "its outputs along axis 1"),
    ('channels = module("model.layers.*.input_layernorm")  score = local_absdiff',
     "`local_absdiff` cannot score norm.input channels"),
    (f"channels = [{ROWS}]  granularity = head", "granularity = head cannot apply"),
    (f"channels = [{ROWS}]  tie = neuron", "tie = neuron cannot apply"),
])
def test_what_module_selectors_cannot_do_is_refused_at_the_rule(write_spec, tmp_path,
                                                                body: str, message: str):
    program, _, line = _raw_rule(write_spec, body + "  budget = 1%")
    with pytest.raises(PlanError) as error:
        make_plan(program, Cache(tmp_path / "cache"))
    assert message in error.value.error.message and error.value.span.line == line


def test_one_module_is_selected_along_one_axis(write_spec, tmp_path) -> None:
    program, _, _ = _raw_rule(
        write_spec, f"channels = [{ROWS}]  budget = 1%",
        'surgery t -> "p" { target = tuned transfer sums from base {\n'
        '  channels = module("model.layers.*.mlp.up_proj", axis = 1)  score = random '
        'budget = 1% } }\n')
    with pytest.raises(PlanError, match="which another module.* selector on the model `tuned` "
                                        "takes along axis"):
        make_plan(program, Cache(tmp_path / "cache"))


def test_a_count_budget_far_below_one_percent_warns_that_a_share_was_meant(actc, write_spec):
    rule = 'surgery s -> "out/s" {{ target = tuned  transfer sums from base {{ {budget} }} }}'
    spec = write_spec(rule.format(budget="budget = 1"))
    planned = actc("plan", str(spec))
    assert planned.returncode == 0, planned.stderr
    assert "warning[W501]" in planned.stderr and "`budget = 1%`" in planned.stderr
    assert f"{spec.name}:{spec.read_text().count(chr(10)) + 1}:" in planned.stderr  # the rule
    for meant in ("budget = 1%", "budget = 20"):
        quiet = actc("plan", str(write_spec(rule.format(budget=meant), name="quiet.act")))
        assert quiet.returncode == 0 and "W501" not in quiet.stderr, quiet.stderr


def test_down_rows_ranked_beside_neurons_warn(actc, write_spec):
    """At granularity = neuron, `channels = mlp` also ranks mlp.down's rows, each crossing
    every neuron: the plan says so, and how to rank neurons only."""
    rule = ('surgery s -> "out/s" {{ target = tuned  transfer sums from base {{\n'
            '  channels = {channels}  granularity = neuron  budget = 10% per layer }} }}')
    planned = actc("plan", str(write_spec(rule.format(channels="mlp"))))
    assert planned.returncode == 0, planned.stderr
    assert "warning[W501]" in planned.stderr and "mlp.gate + mlp.up" in planned.stderr
    quiet = actc("plan", str(write_spec(rule.format(channels="mlp.gate + mlp.up"),
                                        name="quiet.act")))
    assert quiet.returncode == 0 and "W501" not in quiet.stderr, quiet.stderr


def test_a_finetunes_peak_counts_the_models_still_loaded_and_its_training_state(write_spec,
                                                                                tmp_path) -> None:
    """Peak memory is resident memory: the runtime, the models loaded while an op runs
    (the target stays loaded through its fine-tune), and a fine-tune's weights, gradients,
    AdamW moments and temporaries (measured: bench/bench_plan_memory.py)."""
    from actlang.compile.plan import _FINETUNE_COPIES, MODELLING_BYTES, RUNTIME_BYTES

    plain = 'surgery s -> "out/s" { target = tuned  transfer sums from base { budget = 5% } }'
    tuned = plain.replace("} }", "}\n  finetune { data = text  steps = 2 } }")
    plans = [make_plan(check_file(write_spec(text)), Cache(tmp_path / "cache"))
             for text in (plain, tuned)]
    size = plans[0].models["tuned"].compute_bytes
    both = size + plans[0].models["base"].compute_bytes
    runtime = RUNTIME_BYTES + MODELLING_BYTES
    assert plans[0].estimates.peak_memory_bytes == runtime + both  # the capture's pair
    assert plans[1].estimates.peak_memory_bytes == runtime + size + int(_FINETUNE_COPIES * size)
