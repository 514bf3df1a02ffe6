"""Mixture-of-experts activations, recomputed on the tokens routed to each expert.

An expert has no output of its own: transformers 5 holds a layer's experts in 3-D tensors
(``gate_up_proj [E, 2I, H]``, gate rows first; ``down_proj [E, H, I]``) and loops over them
inside one module, whose forward gets ``(hidden_states [N, H], top_k_index [N, k],
top_k_weights)``. A forward hook on that module sees those inputs, so an expert's
projections can be recomputed exactly on its routed tokens::

    rows = routed_rows(top_k_index, expert=3, scored=mask)       # [n] token indices
    out = expert_projections(experts_module, hidden[rows], 3)    # {"gate", "up", "down"}

Statistics of an expert therefore count only the tokens routed to it. Two models route
differently; paired statistics compare both models on the tokens the *anchor* (the target)
routes to the expert — the tokens that expert will see after the transfer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["expert_local_deltas", "expert_projections", "routed_rows"]


def routed_rows(top_k_index: torch.Tensor, expert: int,
                scored: torch.Tensor | None) -> torch.Tensor:
    """Indices of the tokens routed to ``expert`` (among the ``scored`` ones, a ``[N]``
    bool mask, when given); ``top_k_index`` is ``[N, k]``."""
    routed = (top_k_index == expert).any(dim=-1)
    if scored is not None:
        routed &= scored.to(routed.device)
    return routed.nonzero().squeeze(-1)


def expert_projections(module: nn.Module, x: torch.Tensor, expert: int
                       ) -> dict[str, torch.Tensor]:
    """The outputs of expert ``expert``'s gate, up and down projections on ``x [n, H]``."""
    gate, up = F.linear(x, module.gate_up_proj[expert]).chunk(2, dim=-1)
    down = F.linear(module.act_fn(gate) * up, module.down_proj[expert])
    return {"gate": gate, "up": up, "down": down}


def expert_local_deltas(anchor: nn.Module, partner: nn.Module, x: torch.Tensor,
                        expert: int) -> dict[str, torch.Tensor]:
    """Each projection's own change on the anchor's inputs: ``(θ_partner − θ_anchor) x``,
    with ``x [n, H]`` the anchor's routed hidden states and, for ``down``, the anchor's
    ``act(gate) * up`` as its input (:mod:`actlang.run.local`, per expert)."""
    delta_gate_up = partner.gate_up_proj[expert].to(x.device) - anchor.gate_up_proj[expert]
    gate, up = F.linear(x, delta_gate_up).chunk(2, dim=-1)
    anchor_gate, anchor_up = F.linear(x, anchor.gate_up_proj[expert]).chunk(2, dim=-1)
    inner = anchor.act_fn(anchor_gate) * anchor_up
    down = F.linear(inner, partner.down_proj[expert].to(x.device) - anchor.down_proj[expert])
    return {"gate": gate, "up": up, "down": down}
