"""Selection: from scores to a :class:`~actlang.run.mask.ChannelMask`.

    mask = select_channels(scores, space, "3%")                       # paper default
    mask = select_channels(scores, space, Budget("per_layer", 0.05), kinds=["mlp.*"],
                           granularity="neuron", min_per_module=1)

**Candidates** (:func:`~actlang.arch.selection.candidate_entries`, which the planner uses
too; :func:`kind_candidates` takes lists of kind globs): by default every entry except those excluded by
default — ``embed``, ``embed.pos``, ``lm_head`` and all norms (``norm.*``,
``attn.q_norm``, ``attn.k_norm``). Embedding columns and norm elements are residual-stream
dimensions read by *every* layer (and q/k norm elements are shared by every head), so moving
one changes the whole model; ``lm_head`` rows are vocabulary entries. They become candidates
only when ``kinds`` names them, and then a :class:`~actlang.arch.errors.GlobalChannelWarning`
is issued for the global ones. ``layers`` keeps per-layer entries of those layers only.

**Granularity** — the unit that is scored and selected; a unit's score is the mean of its
channels' scores:

* ``channel`` (default): one output channel of one module;
* ``neuron``: SwiGLU/MLP neuron ``i`` of a layer (``gate[i]``, ``up[i]`` rows and
  ``down[:, i]``), scored by its gate/up channels; other candidates stay channels;
* ``head``: attention head ``h`` (its q rows and o columns) and KV head ``g`` (its k and v
  rows); other candidates stay channels;
* ``module``: every channel of one (layer, kind);
* ``layer``: every candidate channel of one layer (global entries: one unit each).

**Budget** (:class:`Budget`, one of the modes of
:data:`~actlang.arch.registry.BUDGET_MODES`), counted in units of the granularity. Fractions
round to the nearest unit. With ``global`` and ``count`` budgets exactly that many units are
selected, also under the guards ``min_per_module`` / ``max_per_module`` (an int, or a
fraction of the module's units), which take each module's best units first and skip full
modules. A budget larger than the selectable units is an error.

**Tying** (``tie=``) moves groups together once selected: ``neuron`` (``gate[i]``,
``up[i]``, ``down[:, i]``), ``head`` (a q channel brings its head's q rows, its o columns and
the k/v rows of its KV group; a k/v channel brings its group's k and v rows), ``kv_group``
(any q/k/v channel brings the whole group: k/v rows of the group, q rows and o columns of
every head sharing it). Tying may move channels of kinds that are not candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from actlang.arch.adapters import ChannelSpace, Entry
from actlang.arch.errors import RuntimeUserError
from actlang.arch.registry import TIES
from actlang.arch.selection import (
    ALL,
    Budget,
    Term,
    UnitGroup,
    candidate_entries,
    mlp_prefixes,
    unit_groups,
)
from actlang.run.mask import ChannelMask
from actlang.run.scores import Scores

__all__ = [
    "Budget",
    "kind_candidates",
    "select_channels",
]

def kind_candidates(
    space: ChannelSpace,
    kinds: Sequence[str] | None = None,
    layers: Iterable[int] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    warn: bool = True,
) -> list[Entry]:
    """:func:`~actlang.arch.selection.candidate_entries` for lists of kind globs: every
    default candidate when ``kinds`` is None; naming kinds opts into residual ones (with a
    :class:`~actlang.arch.errors.GlobalChannelWarning`)."""
    terms = ALL if kinds is None else tuple((1, Term(k)) for k in kinds)
    return candidate_entries(space, terms, exclude=[Term(x) for x in exclude or ()],
                             layers=layers, include_global=kinds is not None, warn=warn)


# --------------------------------------------------------------------------- units


@dataclass
class _Block:
    """A vector of units of one module-like group; ``expand(j)`` says what unit j moves."""

    name: str
    layer: int | None
    scores: torch.Tensor  # [n] float64
    members: Callable[[np.ndarray], list[tuple[str, str, np.ndarray]]]  # local idx -> (ch|in, key, indices)
    n_channels: int = 0
    movable: np.ndarray | None = None  # [n] bool: the unit's parameters differ; None: all do

    @property
    def n(self) -> int:
        return int(self.scores.numel())


def _score_of(scores: Scores, key: str, size: int) -> torch.Tensor:
    s = scores[key]
    if s.numel() != size:
        raise RuntimeUserError(f"scores for {key} have {s.numel()} values, the module has {size} channels")
    if bool(torch.isnan(s).any()):
        raise RuntimeUserError(f"scores for {key} contain NaN", hint="the statistics are broken (no scored tokens?)")
    return s


def _channel_block(e: Entry, scores: Scores) -> _Block:
    return _Block(e.key, e.layer, _score_of(scores, e.key, e.size),
                  lambda j, k=e.key: [("ch", k, j)], e.size)


Changed = tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]


def _blocks(space: ChannelSpace, scores: Scores, ents: list[Entry], granularity: str,
            changed: Changed | None) -> list[_Block]:
    """Score each unit group (:func:`~actlang.arch.selection.unit_groups`, the layout the
    planner counts too), say which channels each of its units moves and, given which
    channels differ between donor and target (``changed``), which units can move anything."""
    blocks = []
    for group in unit_groups(space, ents, granularity):
        block = _block(space, scores, group)
        if changed is not None:
            block.movable = _movable(space, group, *changed)
        blocks.append(block)
    return blocks


def _movable(space: ChannelSpace, group: UnitGroup, channels: Mapping[str, torch.Tensor],
             inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Per unit of a group: whether any parameter it moves differs between the models."""
    keys, n = group.keys, group.n_units
    rows = [channels[k] for k in keys]
    if group.kind == "channel":
        return rows[0].numpy()
    if group.kind in ("module", "layer"):
        return np.array([any(bool(r.any()) for r in rows)])
    pre = f"layers.{group.layer}."
    if group.kind == "neuron":
        down = inputs.get(group.name.removesuffix("neuron") + "down")
        return torch.stack(rows + ([down] if down is not None else [])).any(0).numpy()
    per_unit = [r.view(n, -1).any(1) for r in rows]
    if group.kind == "q_head" and pre + "attn.o" in inputs:
        per_unit.append(inputs[pre + "attn.o"].view(n, -1).any(1))
    return torch.stack(per_unit).any(0).numpy()


def _block(space: ChannelSpace, scores: Scores, group: UnitGroup) -> _Block:
    keys = group.keys
    if group.kind == "channel":
        return _Block(group.name, group.layer, _score_of(scores, keys[0], group.n_units),
                      lambda j, k=keys[0]: [("ch", k, j)], group.n_channels)
    if group.kind in ("module", "layer"):
        mean = torch.cat([_score_of(scores, k, space[k].size) for k in keys]).mean().reshape(1)
        return _Block(group.name, group.layer, mean,
                      lambda j: [("ch", k, np.arange(space[k].size)) for k in keys] if len(j)
                      else [], group.n_channels)
    pre = f"layers.{group.layer}."
    if group.kind == "neuron":
        mlp = group.name.removesuffix("neuron")
        s = torch.stack([_score_of(scores, k, group.n_units) for k in keys]).mean(0)
        movers = [k for k in (mlp + "gate", mlp + "up") if k in space]
        down = mlp + "down" if (mlp + "down") in space and space[mlp + "down"].inputs else None

        def neuron(j: np.ndarray) -> list:
            return [("ch", k, j) for k in movers] + ([("in", down, j)] if down else [])

        return _Block(group.name, group.layer, s, neuron, group.n_channels)
    _, _, hd = space.heads()

    def rows(j: np.ndarray) -> np.ndarray:
        return (j[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)

    s = torch.stack([_score_of(scores, k, group.n_units * hd).view(group.n_units, hd).mean(1)
                     for k in keys]).mean(0)
    if group.kind == "q_head":
        o = pre + "attn.o"
        o_in = o if o in space and space[o].inputs else None
        return _Block(group.name, group.layer, s,
                      lambda j: [("ch", keys[0], rows(j))] + ([("in", o_in, rows(j))] if o_in
                                                                else []), group.n_channels)
    assert group.kind == "kv_head", group.kind
    return _Block(group.name, group.layer, s, lambda j: [("ch", k, rows(j)) for k in keys],
                  group.n_channels)


# --------------------------------------------------------------------------- selection


def _guard_vec(g: int | float | None, sizes: np.ndarray, default: int | None) -> np.ndarray:
    if g is None:
        return sizes.copy() if default is None else np.full_like(sizes, default)
    if isinstance(g, float) and 0 < g < 1:
        return np.minimum(sizes, np.floor(g * sizes + 0.5).astype(np.int64))
    if g < 0:
        raise RuntimeUserError(f"module guards must be >= 0, got {g}")
    return np.minimum(sizes, int(g))


def _select_flat(score: np.ndarray, block: np.ndarray, group: np.ndarray, sizes: np.ndarray,
                 budget: Budget, mins: np.ndarray, maxs: np.ndarray,
                 movable: np.ndarray) -> np.ndarray:
    U = score.size
    idx = np.arange(U)
    order_b = np.lexsort((idx, -score, block))
    rank = np.empty(U, dtype=np.int64)
    sorted_blocks = block[order_b]
    starts = np.searchsorted(sorted_blocks, np.arange(sizes.size))
    rank[order_b] = np.arange(U) - starts[sorted_blocks]

    k = budget.units(U)
    if k is not None:  # exactly k units, under the guards
        if k > U:
            raise RuntimeUserError(
                f"the budget of {k} units exceeds the {U} selectable units",
                hint="lower the budget or widen the selector (kinds, layers)",
            )
        mandatory = (rank < mins[block]) & movable
        eligible = ~mandatory & (rank < maxs[block])
        n_mand = int(mandatory.sum())
        if n_mand > k:
            raise RuntimeUserError(f"the min_per_module guards require {n_mand} units, more than the budget of {k}")
        rest = k - n_mand
        elig = np.nonzero(eligible)[0]
        if rest > elig.size:
            raise RuntimeUserError(
                f"the budget of {k} units exceeds the {n_mand + elig.size} units that max_per_module allows",
                hint="raise max_per_module or lower the budget",
            )
        elig = elig[movable[elig]]  # a unit whose parameters are identical moves nothing
        chosen = elig[np.lexsort((elig, -score[elig]))[:rest]]
        sel = mandatory.copy()
        sel[chosen] = True
        return sel
    if budget.kind == "threshold":
        sel = score >= budget.value
    elif budget.scope == "module":
        quota = np.floor(budget.value * sizes + 0.5).astype(np.int64)
        sel = rank < quota[block]
    else:  # a share of each layer: rank within each layer group
        assert budget.scope == "layer", budget  # a new scope ranks its units here
        n_groups = int(group.max()) + 1 if U else 0
        order_g = np.lexsort((idx, -score, group))
        grank = np.empty(U, dtype=np.int64)
        sg = group[order_g]
        gstarts = np.searchsorted(sg, np.arange(n_groups))
        grank[order_g] = np.arange(U) - gstarts[sg]
        gsizes = np.bincount(group, minlength=n_groups)
        quota = np.floor(budget.value * gsizes + 0.5).astype(np.int64)
        sel = grank < quota[group]
    # guards clip per module: best `min` units always, at most `max`
    return (sel | (rank < mins[block])) & (rank < maxs[block]) & movable


def select_channels(
    scores: Scores,
    space: ChannelSpace,
    budget: Budget | str | float | int = "3%",
    *,
    kinds: Sequence[str] | None = None,
    layers: Iterable[int] | None = None,
    exclude: Sequence[str] | None = None,
    granularity: str = "channel",
    tie: str | None = None,
    min_per_module: int | float = 0,
    max_per_module: int | float | None = None,
    entries: Sequence[Entry] | None = None,
    changed: Changed | None = None,
) -> ChannelMask:
    """Select the best-scoring units under a budget; returns the mask of what moves.

    ``entries`` overrides the candidates computed from ``kinds`` / ``layers`` / ``exclude``.
    ``changed`` (from :func:`~actlang.run.scores.changed_channels`) says which channels'
    parameters differ between donor and target: a unit whose parameters are all
    bit-identical is never selected, since moving it changes nothing — the budget goes to
    units that do change, and when fewer of them exist than the budget asks for, fewer are
    selected (``meta["units_short"]`` says by how many).
    The mask's ``meta`` records the budget, granularity, tie, score method and the number of
    units selected (``units_selected``) out of ``units_total`` (``units_unchanged`` of which
    could not move anything).
    """
    b = Budget.parse(budget)
    tie = None if tie == "none" else tie
    if tie is not None and tie not in TIES:
        raise RuntimeUserError(f"unknown tie {tie!r}", hint="ties: " + ", ".join(TIES.names))
    ents = list(entries) if entries is not None else kind_candidates(space, kinds, layers, exclude)
    blocks = _blocks(space, scores, ents, granularity, changed)
    if b.scope == "module" and granularity in ("module", "layer"):
        raise RuntimeUserError(f"a per-module budget needs a granularity finer than {granularity}")
    sizes = np.array([bl.n for bl in blocks], dtype=np.int64)
    score = (torch.cat([bl.scores for bl in blocks]).numpy() if blocks else np.zeros(0)).astype(np.float64)
    block = np.repeat(np.arange(len(blocks)), sizes)
    layer_of = [(-1 if bl.layer is None else bl.layer) for bl in blocks]
    lids = {l: i for i, l in enumerate(sorted(set(layer_of)))}
    group = np.repeat(np.array([lids[l] for l in layer_of], dtype=np.int64), sizes)
    mins = _guard_vec(min_per_module, sizes, 0)
    maxs = _guard_vec(max_per_module, sizes, None)
    if np.any(maxs < mins):
        raise RuntimeUserError("max_per_module is smaller than min_per_module")
    movable = np.concatenate([bl.movable if bl.movable is not None else np.ones(bl.n, bool)
                              for bl in blocks]) if blocks else np.zeros(0, bool)
    sel = _select_flat(score, block, group, sizes, b, mins, maxs, movable)

    # expand units into channel / input selections with their unit scores
    ch: dict[str, torch.Tensor] = {}
    ch_sc: dict[str, torch.Tensor] = {}
    ins: dict[str, torch.Tensor] = {}
    in_sc: dict[str, torch.Tensor] = {}
    ninf = float("-inf")
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    for i, bl in enumerate(blocks):
        local = np.nonzero(sel[offsets[i] : offsets[i + 1]])[0]
        if local.size == 0:
            continue
        for what, key, idx in bl.members(local):
            unit_scores = torch.from_numpy(score[offsets[i] + local])
            reps = idx.size // max(local.size, 1)
            vals = unit_scores.repeat_interleave(reps) if reps * local.size == idx.size else unit_scores.max().expand(idx.size)
            size = space[key].size if what == "ch" else space[key].inputs[0].size
            tgt, tsc = (ch, ch_sc) if what == "ch" else (ins, in_sc)
            m = tgt.setdefault(key, torch.zeros(size, dtype=torch.bool))
            s = tsc.setdefault(key, torch.full((size,), ninf, dtype=torch.float64))
            t_idx = torch.from_numpy(np.asarray(idx, dtype=np.int64))
            m[t_idx] = True
            s[t_idx] = torch.maximum(s[t_idx], vals.to(torch.float64))
    if tie is not None:
        _apply_tie(space, tie, ch, ch_sc, ins, in_sc)
    meta = {
        "budget": str(b),
        "budget_mode": b.mode,
        "budget_value": b.value,
        "granularity": granularity,
        "tie": tie,
        "score": scores.method,
        "units_selected": int(sel.sum()),
        "units_total": int(sel.size),
        "units_unchanged": int((~movable).sum()),
        "units_short": _shortfall(b, sel, movable),
        # raw entries by name: a score shared with other rules may cover other modules
        "candidates": sorted({e.key if e.kind == "raw" else e.kind for e in ents}),
        "model_type": space.model_type,
    }
    return ChannelMask.from_channels(space, ch, ins, channel_scores=ch_sc, input_scores=in_sc, meta=meta)


def _shortfall(budget: Budget, sel: np.ndarray, movable: np.ndarray) -> int:
    """Units a global or count budget asked for that no changed unit could fill."""
    wanted = budget.units(sel.size)
    if wanted is None:
        return 0
    return max(0, wanted - int(sel.sum())) if not movable.all() else 0


def _get(d: dict[str, torch.Tensor], key: str, size: int, fill: Any) -> torch.Tensor:
    if key not in d:
        d[key] = torch.full((size,), fill, dtype=torch.bool if isinstance(fill, bool) else torch.float64)
    return d[key]


def _apply_tie(space: ChannelSpace, tie: str, ch: dict, ch_sc: dict, ins: dict, in_sc: dict) -> None:
    ninf = float("-inf")
    mlps = mlp_prefixes(space)
    for layer in range(space.n_layers):
        pre = f"layers.{layer}."
        if tie == "neuron":
            for mlp in mlps.get(layer, ()):
                _tie_neurons(space, mlp, ch, ch_sc, ins, in_sc)
            continue
        # head / kv_group
        q, k, v, o = (pre + x for x in ("attn.q", "attn.k", "attn.v", "attn.o"))
        if q not in space:
            continue
        heads, kv, hd = space.heads()
        per = heads // kv
        qsel = _get(ch, q, heads * hd, False).view(heads, hd)
        qsc = _get(ch_sc, q, heads * hd, ninf).view(heads, hd)
        head_on = qsel.any(1)
        head_score = torch.where(qsel, qsc, torch.full_like(qsc, ninf)).amax(1)
        kv_on = torch.zeros(kv, dtype=torch.bool)
        kv_score = torch.full((kv,), ninf, dtype=torch.float64)
        for x in (k, v):
            if x in ch:
                xs = ch[x].view(kv, hd)
                kv_on |= xs.any(1)
                kv_score = torch.maximum(kv_score, torch.where(xs, ch_sc[x].view(kv, hd), torch.full((kv, hd), ninf, dtype=torch.float64)).amax(1))
        group_of_head = torch.arange(heads) // per
        heads_in_group_on = head_on.view(kv, per).any(1)
        heads_in_group_score = head_score.view(kv, per).amax(1)
        if tie == "head":
            new_head_on = head_on
            new_head_score = head_score
            new_kv_on = kv_on | heads_in_group_on
            new_kv_score = torch.maximum(kv_score, heads_in_group_score)
        else:  # kv_group
            g_on = kv_on | heads_in_group_on
            g_score = torch.maximum(kv_score, heads_in_group_score)
            new_kv_on, new_kv_score = g_on, g_score
            new_head_on = g_on[group_of_head]
            new_head_score = g_score[group_of_head]
        if not bool(new_head_on.any()) and not bool(new_kv_on.any()):
            continue

        def widen(on: torch.Tensor, sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return on.repeat_interleave(hd), sc.repeat_interleave(hd)

        h_on, h_sc = widen(new_head_on, new_head_score)
        qflat, qsflat = ch[q], ch_sc[q]
        qsflat.copy_(torch.where(h_on, torch.maximum(qsflat, h_sc), qsflat))
        qflat |= h_on
        if o in space and space[o].inputs:
            oi = _get(ins, o, heads * hd, False)
            os_ = _get(in_sc, o, heads * hd, ninf)
            os_.copy_(torch.where(h_on, torch.maximum(os_, h_sc), os_))
            oi |= h_on
        g_on, g_sc = widen(new_kv_on, new_kv_score)
        for x in (k, v):
            if x in space:
                xm = _get(ch, x, kv * hd, False)
                xs = _get(ch_sc, x, kv * hd, ninf)
                xs.copy_(torch.where(g_on, torch.maximum(xs, g_sc), xs))
                xm |= g_on


def _tie_neurons(space: ChannelSpace, mlp: str, ch: dict, ch_sc: dict, ins: dict,
                 in_sc: dict) -> None:
    """``tie = neuron`` in one MLP (key prefix ``mlp``: a layer's dense MLP, or one
    expert): a selected gate or up row, or down column, brings its neuron's three slices."""
    ninf = float("-inf")
    keys = [k for k in (mlp + "gate", mlp + "up") if k in space]
    down = mlp + "down" if mlp + "down" in space and space[mlp + "down"].inputs else None
    if not keys:
        return
    n = space[keys[0]].size
    sel = torch.zeros(n, dtype=torch.bool)
    grp = torch.full((n,), ninf, dtype=torch.float64)
    for k in keys:
        if k in ch:
            sel |= ch[k]
            grp = torch.maximum(grp, ch_sc.get(k, torch.full((n,), ninf, dtype=torch.float64)))
    if down and down in ins:
        sel |= ins[down]
        grp = torch.maximum(grp, in_sc.get(down, torch.full((n,), ninf, dtype=torch.float64)))
    if not bool(sel.any()):
        return
    for k in keys:
        _get(ch, k, n, False).__ior__(sel)
        s = _get(ch_sc, k, n, ninf)
        s.copy_(torch.where(sel, torch.maximum(s, grp), s))
    if down:
        _get(ins, down, n, False).__ior__(sel)
        s = _get(in_sc, down, n, ninf)
        s.copy_(torch.where(sel, torch.maximum(s, grp), s))
