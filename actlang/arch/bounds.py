"""Bounds on the sizes a model's config.json declares, checked before anything is sized from
them.

A channel space has one entry per module per layer (per expert), and the planner sizes
statistics and budgets from the config's dimensions, so a corrupted or hostile config (10**6
layers, a negative width, a size written as a string) would otherwise grow ``actc plan`` past
gigabytes or fail deep inside with a traceback. The bounds are far above any released model
(Llama-3.1-405B: 126 layers, width 16384; DeepSeek-V3: 61 layers x 256 experts; Gemma 3:
262k-token vocabulary) and far below what would make planning slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from actlang.arch.errors import RuntimeUserError

__all__ = ["CONFIG_BOUNDS", "MAX_EXPERT_LAYERS", "check_config_bounds"]


@dataclass(frozen=True)
class Bound:
    """The config fields that spell one dimension, and the largest value accepted."""

    dimension: str
    fields: tuple[str, ...]
    largest: int


CONFIG_BOUNDS: tuple[Bound, ...] = (
    Bound("layers", ("num_hidden_layers", "n_layer", "n_layers", "num_layers"), 1024),
    Bound("width", ("hidden_size", "n_embd", "d_model"), 1 << 17),
    Bound("MLP width", ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size",
                        "moe_intermediate_size", "shared_expert_intermediate_size"), 1 << 20),
    Bound("heads", ("num_attention_heads", "n_head", "num_heads", "num_key_value_heads",
                    "num_kv_heads", "n_head_kv", "multi_query_group_num"), 1 << 14),
    Bound("head width", ("head_dim", "kv_channels"), 1 << 14),
    Bound("vocabulary", ("vocab_size",), 1 << 23),
    Bound("experts", ("num_experts", "num_local_experts", "n_routed_experts",
                      "n_shared_experts", "num_experts_per_tok"), 1 << 14),
)

#: Layers times experts: the entries of a mixture-of-experts space grow with the product.
MAX_EXPERT_LAYERS = 1 << 16

_NESTED = ("text_config", "language_config", "llm_config")  # multimodal configs nest the LM's


def check_config_bounds(config: Mapping[str, Any], where: str = "config.json") -> None:
    """Refuse a config whose sizes are not positive integers within :data:`CONFIG_BOUNDS`.

    A field that is absent or ``null`` is not checked (architectures spell their sizes
    differently, and a ``null`` ``n_inner`` means "the default").

    Args:
        config: the config as a dict (nested language-model configs are checked too).
        where: how the config is named in the error (its file).

    Raises:
        RuntimeUserError: a size that is not an integer, is below 1 (0 for expert counts) or
            is above its bound.
    """
    values: dict[str, int] = {}
    for bound in CONFIG_BOUNDS:
        for field in bound.fields:
            value = config.get(field)
            if value is None:
                continue
            smallest = 0 if bound.dimension == "experts" else 1
            if isinstance(value, bool) or not isinstance(value, int):
                raise RuntimeUserError(
                    f"{where}: `{field}` is {value!r}, not an integer",
                    hint=f"`{field}` gives the model's {bound.dimension}: a whole number")
            if not smallest <= value <= bound.largest:
                raise RuntimeUserError(
                    f"{where}: `{field}` is {value:,}; actlang accepts {smallest} to "
                    f"{bound.largest:,} ({bound.dimension})",
                    hint="is the config corrupted? released models are far inside this range")
            values[bound.dimension] = max(values.get(bound.dimension, 0), value)
    if values.get("layers", 1) * values.get("experts", 1) > MAX_EXPERT_LAYERS:
        raise RuntimeUserError(
            f"{where}: {values['layers']:,} layers of {values['experts']:,} experts; actlang "
            f"accepts at most {MAX_EXPERT_LAYERS:,} expert layers in all",
            hint="is the config corrupted? released models are far inside this range")
    for key in _NESTED:
        nested = config.get(key)
        if isinstance(nested, Mapping):
            check_config_bounds(nested, f"{where} ({key})")
