"""A module's own change, applied to real inputs: ``(θ_b − θ_a)`` acting on ``x``.

On a real model, the output of a module differs between two models also because its input
differs (every upstream change flows in), so output differences localize poorly. The local
difference removes what flows in: for a Linear ``y = W x + b`` it is ``ΔW x + Δb`` with
``Δ = b − a`` and ``x`` the module's input in the lock-step pass — the change this module
alone makes to its output on the inputs it really sees. Per output channel ``r`` it is zero
when row ``r`` (and ``bias[r]``) did not change, whatever happened upstream.

Defined for the modules whose channels are rows of a weight: ``nn.Linear`` (q/k/v/o,
gate/up/down, lm_head, fused qkv / gate_up), GPT-2's ``Conv1D`` (weight ``[in, out]``), and
``nn.Embedding`` (channel ``r`` of token ``t``: ``ΔE[t, r]``). A norm scales a normalized
input (``γ ⊙ n(x)``), which its output hook does not see, so it has no local difference
here; :func:`local_delta` returns None for it and the score refuses such channels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def supports(module: nn.Module) -> bool:
    """Whether :func:`local_delta` is defined for ``module``."""
    return isinstance(module, (nn.Linear, nn.Embedding)) or _is_conv1d(module)


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D, recognised without importing transformers here
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None \
        and module.weight.dim() == 2


def local_delta(a: nn.Module, b: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``(θ_b − θ_a)`` applied to inputs ``x``, in float32.

    Args:
        a, b: the same module of two models (same type and shapes).
        x: ``[rows, in_features]`` inputs (token ids ``[rows]`` for an embedding).

    Returns:
        ``[rows, out_channels]``, or None when the module is not Linear, Conv1D or Embedding.
    """
    if isinstance(b, nn.Embedding):
        return b.weight[x].float() - a.weight[x].float()
    if not (isinstance(b, nn.Linear) or _is_conv1d(b)):
        return None
    delta_w = b.weight.float() - a.weight.float()
    delta_b = None if b.bias is None else b.bias.float() - a.bias.float()
    x = x.float()
    if isinstance(b, nn.Linear):  # weight [out, in]
        return F.linear(x, delta_w, delta_b)
    y = x @ delta_w  # Conv1D: weight [in, out]
    return y if delta_b is None else y.add_(delta_b)
