"""Config sizes are bounded before anything is sized from them (issue 12, part 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actlang.arch.adapters import ChannelSpace
from actlang.arch.bounds import CONFIG_BOUNDS, MAX_EXPERT_LAYERS, check_config_bounds
from actlang.arch.errors import RuntimeUserError

LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=100)

FIELDS = [(bound, field) for bound in CONFIG_BOUNDS for field in bound.fields]


@given(st.sampled_from(FIELDS), st.data())
def test_a_size_is_accepted_exactly_within_its_bound(case, data) -> None:
    bound, field = case
    smallest = 0 if bound.dimension == "experts" else 1
    value = data.draw(st.one_of(st.integers(-10**12, 10**12),
                                st.sampled_from([smallest - 1, smallest, bound.largest,
                                                 bound.largest + 1])))
    config = {field: value}
    if smallest <= value <= bound.largest:
        check_config_bounds(config)
    else:
        with pytest.raises(RuntimeUserError, match=f"`{field}` is {value:,}"):
            check_config_bounds(config)


@pytest.mark.parametrize("value", ["32", 32.0, True, [32], {"n": 32}])
def test_a_size_that_is_not_an_integer_is_refused(value) -> None:
    with pytest.raises(RuntimeUserError, match="not an integer"):
        check_config_bounds({"hidden_size": value})


def test_absent_and_null_sizes_are_not_checked() -> None:
    check_config_bounds({"n_inner": None, "model_type": "gpt2"})


def test_expert_layers_are_bounded_together() -> None:
    layers = 1024
    experts = MAX_EXPERT_LAYERS // layers
    check_config_bounds({"num_hidden_layers": layers, "num_local_experts": experts})
    with pytest.raises(RuntimeUserError, match="expert layers"):
        check_config_bounds({"num_hidden_layers": layers, "num_local_experts": experts + 1})


def test_a_nested_language_model_config_is_checked() -> None:
    with pytest.raises(RuntimeUserError, match=r"\(text_config\): `num_hidden_layers`"):
        check_config_bounds({"text_config": {"num_hidden_layers": 10**6}})


@pytest.mark.parametrize("model_type", ["llama", "olmo2"])
def test_the_channel_space_refuses_before_building_anything(tmp_path: Path,
                                                            model_type: str) -> None:
    """A curated and a derived architecture: the bound is checked first, so a million
    layers costs nothing (a derived space would otherwise build them on the meta device)."""
    (tmp_path / "config.json").write_text(json.dumps(
        {**LLAMA, "model_type": model_type, "num_hidden_layers": 10**6}))
    with pytest.raises(RuntimeUserError, match="config.json: `num_hidden_layers` is 1,000,000"):
        ChannelSpace.from_pretrained(tmp_path)
