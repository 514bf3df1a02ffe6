"""Layer-streamed capture (issue 13, part 1) gives the in-memory capture's statistics, bit for
bit, on every curated family: the same activations reach the same hooks in the same batch
order, a layer at a time. Its memory is measured by ``bench/bench_streamed_capture.py``."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from actlang.arch.adapters import ChannelSpace
from actlang.arch.corpus import inline
from actlang.arch.errors import RuntimeUserError
from actlang.run.stats import collect_lockstep_stats
from actlang.run.streamed import StreamedModel, collect_lockstep_stats_streamed

from .conftest import FAMILIES, SENTENCES


@pytest.fixture(scope="module")
def data(tokenizer):
    return inline(SENTENCES * 3).tokenize(tokenizer)


def hooked(space: ChannelSpace, *kinds: str):
    """Every hooked entry but the output head's (the decoder's whole channel space)."""
    return [e for e in space if e.hook is not None and not e.kind.startswith("lm_head")
            and (not kinds or e.kind in kinds)]


def assert_equal(expected, found) -> None:
    assert expected.keys() == found.keys()
    for key in expected.keys():
        for field in expected.fields:
            assert torch.equal(expected[key][field], found[key][field]), (key, field)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_statistics_equal_the_in_memory_ones(family, family_models, family_dirs,
                                                      data) -> None:
    target, donor = family_models[family]
    target_dir, donor_dir = family_dirs[family]
    space = ChannelSpace.from_pretrained(target_dir)
    entries = hooked(space)
    (in_memory,) = collect_lockstep_stats(target, [donor], space, data, entries=entries,
                                          batch_size=4)
    (streamed,) = collect_lockstep_stats_streamed([target_dir, donor_dir], space, data,
                                                  entries=entries, batch_size=4)
    assert streamed.paired.n_scored == in_memory.paired.n_scored > 0
    assert_equal(in_memory.paired, streamed.paired)
    assert_equal(in_memory.a, streamed.a)
    assert_equal(in_memory.b, streamed.b)


def test_two_partners_stream_in_lock_step(family_models, family_dirs, data) -> None:
    """The anchor with two partners (here the donor twice): each pair equals the in-memory
    lock-step pass's."""
    target, donor = family_models["llama"]
    target_dir, donor_dir = family_dirs["llama"]
    space = ChannelSpace.from_pretrained(target_dir)
    entries = hooked(space, "attn.q", "mlp.down", "norm.final")
    in_memory = collect_lockstep_stats(target, [donor, copy.deepcopy(donor)], space, data,
                                       entries=entries)
    streamed = collect_lockstep_stats_streamed([target_dir, donor_dir, donor_dir], space,
                                               data, entries=entries)
    assert len(streamed) == 2
    for expected, found in zip(in_memory, streamed):
        assert_equal(expected.paired, found.paired)


def test_the_layers_stay_on_the_meta_device(family_dirs) -> None:
    target_dir, _ = family_dirs["llama"]
    space = ChannelSpace.from_pretrained(target_dir)
    model = StreamedModel(target_dir, space.naming)
    assert all(p.is_meta for p in model.layers.parameters())
    assert not model.model.get_input_embeddings().weight.is_meta
    with model.layer(1) as layer:
        assert not any(p.is_meta for p in layer.parameters())
        assert all(p.is_meta for p in model.layers[0].parameters())
    assert all(p.is_meta for p in model.layers.parameters())


def test_the_output_head_is_refused_with_a_reason(family_dirs, data) -> None:
    target_dir, donor_dir = family_dirs["llama"]
    space = ChannelSpace.from_pretrained(target_dir)
    head = [e for e in space if e.kind.startswith("lm_head") and e.hook is not None]
    if not head:
        pytest.skip("this family's output head has no hook")
    with pytest.raises(RuntimeUserError, match="not its output head"):
        collect_lockstep_stats_streamed([target_dir, donor_dir], space, data, entries=head)


@pytest.mark.slow
def test_actc_streams_a_pair_over_its_memory_limit_to_the_same_output(actc, write_spec,
                                                                      tmp_path) -> None:
    """Under a limit the pair exceeds, the plan streams the capture (and says why), loads
    neither model for it, and the run writes the bytes an in-memory run writes."""
    spec = write_spec('surgery s -> "out/s" { target = tuned '
                      'transfer sums from base { budget = 10% }  eval = [] }')
    in_memory = json.loads(actc("plan", str(spec), "--json").stdout)
    (whole,) = in_memory["captures"]
    assert whole["strategy"] == "in memory"
    limit = str(whole["peak_memory_bytes"] - 1)  # the pair no longer fits
    planned = actc("plan", str(spec), "--json", "--max-memory", limit)
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    (capture,) = plan["captures"]
    assert capture["strategy"] == "streamed" and "over the" in capture["reason"]
    assert capture["peak_memory_bytes"] < int(limit)
    assert not [op for op in plan["ops"] if op["kind"] == "load"]
    # a limit below one layer at a time: an error at the ability, before any work
    tiny = actc("plan", str(spec), "--max-memory", "10KB")
    assert tiny.returncode == 1 and "is below what this capture needs" in tiny.stderr
    assert "error[E501]" in tiny.stderr and "ability sums" in tiny.stderr
    assert "Traceback" not in tiny.stderr

    streamed = actc("run", str(spec), "--max-memory", limit, "--output", "streamed")
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    shutil.rmtree(tmp_path / "cache")  # the in-memory run captures again, it reuses nothing
    whole = actc("run", str(spec), "--output", "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    for name in ("model.safetensors", "masks/donor-0.safetensors"):
        assert (tmp_path / "streamed" / name).read_bytes() == \
            (tmp_path / "whole" / name).read_bytes(), name
