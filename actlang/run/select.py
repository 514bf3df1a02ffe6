"""Selection: from scores to a :class:`~actlang.run.mask.ChannelMask`.

    mask = select_channels(scores, space, "3%")                       # paper default
    mask = select_channels(scores, space, Budget("per_layer", 0.05), kinds=["mlp.*"],
                           granularity="neuron", min_per_module=1)

**Candidates** (:func:`candidate_entries`): by default every entry except those excluded by
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

**Budget** (:class:`Budget`), counted in units of the granularity: ``global`` top-p over all
candidate units (paper default), ``per_module`` and ``per_layer`` top-p, ``count`` (top-n)
and ``threshold`` (score >= t). Fractions round to the nearest unit. With ``global`` and
``count`` budgets exactly that many units are selected, also under the guards
``min_per_module`` / ``max_per_module`` (an int, or a fraction of the module's units),
which take each module's best units first and skip full modules. A budget larger than the
selectable units is an error.

**Tying** (``tie=``) moves groups together once selected: ``neuron`` (``gate[i]``,
``up[i]``, ``down[:, i]``), ``head`` (a q channel brings its head's q rows, its o columns and
the k/v rows of its KV group; a k/v channel brings its group's k and v rows), ``kv_group``
(any q/k/v channel brings the whole group: k/v rows of the group, q rows and o columns of
every head sharing it). Tying may move channels of kinds that are not candidates.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from actlang.arch.adapters import ChannelSpace, Entry
from actlang.arch.errors import GlobalChannelWarning, RuntimeUserError
from actlang.arch.selection import Budget
from actlang.run.mask import ChannelMask
from actlang.run.scores import Scores

__all__ = [
    "Budget",
    "GRANULARITIES",
    "TIES",
    "candidate_entries",
    "select_channels",
]

GRANULARITIES = ("channel", "neuron", "head", "module", "layer")
TIES = (None, "neuron", "head", "kv_group")
def candidate_entries(
    space: ChannelSpace,
    kinds: Sequence[str] | None = None,
    layers: Iterable[int] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    warn: bool = True,
) -> list[Entry]:
    """The entries a selection may choose from (see the module docs for the defaults)."""
    if kinds is None:
        ents = [e for e in space.match(layers=layers, exclude=exclude) if not e.default_excluded]
    else:
        ents = space.match(kinds, layers, exclude)
        if not ents:
            raise RuntimeUserError(
                f"the selector {list(kinds)} matches no module of this {space.model_type} model",
                hint="kinds: " + ", ".join(space.kinds),
            )
        glob = sorted({e.kind for e in ents if e.is_global})
        if glob and warn:
            warnings.warn(
                f"selection includes channels global to the model ({', '.join(glob)}): residual dimensions "
                "and shared norm elements affect every layer, not one module",
                GlobalChannelWarning, stacklevel=3,
            )
    if not ents:
        raise RuntimeUserError("nothing to select from: every module is excluded or outside the layers")
    return ents


# --------------------------------------------------------------------------- units


@dataclass
class _Block:
    """A vector of units of one module-like group; ``expand(j)`` says what unit j moves."""

    name: str
    layer: int | None
    scores: torch.Tensor  # [n] float64
    members: Callable[[np.ndarray], list[tuple[str, str, np.ndarray]]]  # local idx -> (ch|in, key, indices)
    n_channels: int = 0

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


def _blocks(space: ChannelSpace, scores: Scores, ents: list[Entry], granularity: str) -> list[_Block]:
    if granularity not in GRANULARITIES:
        raise RuntimeUserError(f"unknown granularity {granularity!r}", hint=f"granularities: {', '.join(GRANULARITIES)}")
    blocks: list[_Block] = []
    if granularity == "channel":
        return [_channel_block(e, scores) for e in ents]
    if granularity == "module":
        for e in ents:
            s = _score_of(scores, e.key, e.size)
            blocks.append(_Block(e.key, e.layer, s.mean().reshape(1),
                                 lambda j, e=e: [("ch", e.key, np.arange(e.size))] if len(j) else [], e.size))
        return blocks
    if granularity == "layer":
        by_layer: dict[int, list[Entry]] = {}
        globals_: list[_Block] = []
        for e in ents:
            if e.layer is None:
                s = _score_of(scores, e.key, e.size)
                globals_.append(_Block(e.key, None, s.mean().reshape(1),
                                       lambda j, e=e: [("ch", e.key, np.arange(e.size))] if len(j) else [], e.size))
            else:
                by_layer.setdefault(e.layer, []).append(e)
        for layer, es in by_layer.items():
            s = torch.cat([_score_of(scores, e.key, e.size) for e in es]).mean().reshape(1)
            blocks.append(_Block(
                f"layers.{layer}", layer, s,
                lambda j, es=es: [("ch", e.key, np.arange(e.size)) for e in es] if len(j) else [],
                sum(e.size for e in es)))
        return blocks + globals_

    taken: set[str] = set()
    layer_ids = sorted({e.layer for e in ents if e.layer is not None})
    cand = {e.key for e in ents}
    for layer in layer_ids:
        pre = f"layers.{layer}."
        if granularity == "neuron":
            keys = [pre + "mlp.gate", pre + "mlp.up"]
            scored = [k for k in keys if k in cand]
            if scored:
                size = space[scored[0]].size
                s = torch.stack([_score_of(scores, k, size) for k in scored]).mean(0)
                movers = [k for k in keys if k in space]
                down = pre + "mlp.down" if (pre + "mlp.down") in space and space[pre + "mlp.down"].inputs else None

                def neuron(j: np.ndarray, movers: list[str] = movers, down: str | None = down) -> list:
                    out = [("ch", k, j) for k in movers]
                    if down:
                        out.append(("in", down, j))
                    return out

                blocks.append(_Block(pre + "mlp.neuron", layer, s, neuron, size * len(movers)))
                taken.update(scored)
        elif granularity == "head":
            heads, kv, hd = space.heads()
            q, k, v, o = (pre + x for x in ("attn.q", "attn.k", "attn.v", "attn.o"))
            if q in cand:
                s = _score_of(scores, q, heads * hd).view(heads, hd).mean(1)
                o_in = o if o in space and space[o].inputs else None

                def qhead(j: np.ndarray, q: str = q, o_in: str | None = o_in, hd: int = hd) -> list:
                    idx = (j[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
                    return [("ch", q, idx)] + ([("in", o_in, idx)] if o_in else [])

                blocks.append(_Block(pre + "attn.head", layer, s, qhead, heads * hd))
                taken.add(q)
            kvs = [x for x in (k, v) if x in cand]
            if kvs:
                s = torch.stack([_score_of(scores, x, kv * hd).view(kv, hd).mean(1) for x in kvs]).mean(0)

                def kvhead(j: np.ndarray, kvs: list[str] = kvs, hd: int = hd) -> list:
                    idx = (j[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
                    return [("ch", x, idx) for x in kvs]

                blocks.append(_Block(pre + "attn.kv_head", layer, s, kvhead, kv * hd * len(kvs)))
                taken.update(kvs)
    # everything else stays at channel granularity (ordered as the space)
    rest = [_channel_block(e, scores) for e in ents if e.key not in taken]
    return blocks + rest


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
                 budget: Budget, mins: np.ndarray, maxs: np.ndarray) -> np.ndarray:
    U = score.size
    idx = np.arange(U)
    order_b = np.lexsort((idx, -score, block))
    rank = np.empty(U, dtype=np.int64)
    sorted_blocks = block[order_b]
    starts = np.searchsorted(sorted_blocks, np.arange(sizes.size))
    rank[order_b] = np.arange(U) - starts[sorted_blocks]

    if budget.mode in ("global", "count"):
        k = int(math.floor(budget.value * U + 0.5)) if budget.mode == "global" else int(budget.value)
        if k > U:
            raise RuntimeUserError(
                f"the budget of {k} units exceeds the {U} selectable units",
                hint="lower the budget or widen the selector (kinds, layers)",
            )
        mandatory = rank < mins[block]
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
        chosen = elig[np.lexsort((elig, -score[elig]))[:rest]]
        sel = mandatory.copy()
        sel[chosen] = True
        return sel
    if budget.mode == "threshold":
        sel = score >= budget.value
    elif budget.mode == "per_module":
        quota = np.floor(budget.value * sizes + 0.5).astype(np.int64)
        sel = rank < quota[block]
    else:  # per_layer: rank within each layer group
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
    return (sel | (rank < mins[block])) & (rank < maxs[block])


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
) -> ChannelMask:
    """Select the best-scoring units under a budget; returns the mask of what moves.

    ``entries`` overrides the candidates computed from ``kinds`` / ``layers`` / ``exclude``.
    The mask's ``meta`` records the budget, granularity, tie, score method and the number of
    units selected (``units_selected``) out of ``units_total``.
    """
    b = Budget.parse(budget)
    if tie not in TIES:
        raise RuntimeUserError(f"unknown tie {tie!r}", hint="ties: neuron, head, kv_group")
    ents = list(entries) if entries is not None else candidate_entries(space, kinds, layers, exclude)
    blocks = _blocks(space, scores, ents, granularity)
    if b.mode == "per_module" and granularity in ("module", "layer"):
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
    sel = _select_flat(score, block, group, sizes, b, mins, maxs)

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
        "candidates": sorted({e.kind for e in ents}),
        "model_type": space.model_type,
    }
    return ChannelMask.from_channels(space, ch, ins, channel_scores=ch_sc, input_scores=in_sc, meta=meta)


def _get(d: dict[str, torch.Tensor], key: str, size: int, fill: Any) -> torch.Tensor:
    if key not in d:
        d[key] = torch.full((size,), fill, dtype=torch.bool if isinstance(fill, bool) else torch.float64)
    return d[key]


def _apply_tie(space: ChannelSpace, tie: str, ch: dict, ch_sc: dict, ins: dict, in_sc: dict) -> None:
    ninf = float("-inf")
    for layer in range(space.n_layers):
        pre = f"layers.{layer}."
        if tie == "neuron":
            keys = [k for k in (pre + "mlp.gate", pre + "mlp.up") if k in space]
            down = pre + "mlp.down" if pre + "mlp.down" in space and space[pre + "mlp.down"].inputs else None
            if not keys:
                continue
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
                continue
            for k in keys:
                _get(ch, k, n, False).__ior__(sel)
                s = _get(ch_sc, k, n, ninf)
                s.copy_(torch.where(sel, torch.maximum(s, grp), s))
            if down:
                _get(ins, down, n, False).__ior__(sel)
                s = _get(in_sc, down, n, ninf)
                s.copy_(torch.where(sel, torch.maximum(s, grp), s))
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
