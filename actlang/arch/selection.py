"""Selection without tensors: budgets, and which channels a rule may choose from.

Both the planner (which checks a spec before any forward pass) and the runtime (which
selects) read this module, so whatever the plan accepts the run accepts.
"""

from __future__ import annotations

import fnmatch
import math
import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

from actlang.arch.adapters import ChannelSpace, Entry
from actlang.arch.errors import GlobalChannelWarning, RuntimeUserError
from actlang.arch.registry import (
    BUDGET_MODES,
    GRANULARITIES,
    BudgetKind,
    budget_mode,
    scope_words,
)

__all__ = ["ALL", "Budget", "Term", "UnitGroup", "candidate_entries", "check_budget",
           "measures_outputs", "output_axis", "raw_twin", "unit_groups"]


@dataclass(frozen=True)
class Budget:
    """How many units to select: a mode of :data:`~actlang.arch.registry.BUDGET_MODES` by
    name, and its value (a fraction in [0, 1], a number of units, or a minimum score).

    Raises:
        RuntimeUserError: an unknown mode, or a value the mode does not accept.
    """

    mode: str = "global"
    value: float = 0.03

    def __post_init__(self) -> None:
        if self.mode not in BUDGET_MODES:
            raise RuntimeUserError(f"unknown budget mode {self.mode!r}",
                                   hint=f"modes: {', '.join(BUDGET_MODES.names)}")
        declared = BUDGET_MODES[self.mode]
        if not declared.accepts(self.value):
            raise RuntimeUserError(f"a {self.mode} budget is {declared.value_doc}, "
                                   f"got {self.value:g}")

    @property
    def kind(self) -> BudgetKind:
        """What the value is: ``fraction``, ``count`` or ``threshold``."""
        return BUDGET_MODES[self.mode].kind

    @property
    def scope(self) -> str:
        """The units ranked together: ``global``, or each ``module`` / ``layer``."""
        return BUDGET_MODES[self.mode].scope

    def units(self, total: int) -> int | None:
        """How many of ``total`` units ranked together the budget selects (a fraction rounds
        to the nearest unit); None where that is not one number: a threshold, or a fraction
        of each module or layer."""
        if self.scope != "global" or self.kind == "threshold":
            return None
        if self.kind == "count":
            return int(self.value)
        return int(math.floor(self.value * total + 0.5))

    @classmethod
    def parse(cls, spec: "Budget | str | float | int") -> "Budget":
        """``"3%"``, ``"3% global"``, ``"5% per module"``, ``"5% per layer"``, ``"120"``
        (count), ``"threshold(0.5)"`` / ``"threshold 0.5"`` / ``">= 0.5"``: each mode as
        a spec writes it, and more; a float in [0, 1] is a global fraction, an int a count."""
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, bool):
            raise RuntimeUserError(f"not a budget: {spec!r}")
        if isinstance(spec, int):
            return cls._of("count", spec)
        if isinstance(spec, float):
            return cls._of("fraction", spec)
        text = str(spec).strip().lower()
        m = re.fullmatch(r"threshold\s*\(\s*([-+0-9.e]+)\s*\)|(?:threshold\s*|>=\s*)([-+0-9.e]+)",
                         text)
        if m:
            return cls._of("threshold", float(m.group(1) or m.group(2)))
        m = re.fullmatch(r"([0-9.]+)\s*%\s*(?:global|per[ _-]?([a-z]+))?", text)
        if m and budget_mode("fraction", m.group(2) or "global"):
            return cls._of("fraction", float(m.group(1)) / 100.0, m.group(2) or "global")
        m = re.fullmatch(r"([0-9]+)\s*(channels|units)?", text)
        if m:
            return cls._of("count", int(m.group(1)))
        raise RuntimeUserError(f"cannot read the budget {spec!r}",
                               hint="e.g. " + ", ".join(mode.written for mode in BUDGET_MODES))

    @classmethod
    def _of(cls, kind: str, value: float, scope: str = "global") -> "Budget":
        mode = budget_mode(kind, scope)
        assert mode is not None, (kind, scope)  # parse asks only for declared pairs
        return cls(mode.name, value)

    def __str__(self) -> str:
        if self.kind == "count":
            return f"{int(self.value)}"
        if self.kind == "threshold":
            return f"threshold {self.value:g}"
        pct = f"{self.value * 100:g}%"
        return pct if self.scope == "global" else f"{pct} {scope_words(self.scope)}"


# ---- candidates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One selector term: a glob over canonical kinds (``mlp.*``), or — with ``axis`` — the
    ``module(glob, axis)`` escape hatch, a glob over checkpoint module paths."""

    glob: str
    axis: int | None = None

    @property
    def raw(self) -> bool:
        return self.axis is not None

    @property
    def explicit(self) -> bool:
        """Named without a wildcard: the rule means exactly these modules."""
        return self.raw or "*" not in self.glob

    def matches(self, entry: Entry) -> bool:
        if self.raw:
            return entry.kind == "raw" and fnmatch.fnmatchcase(
                entry.key[len("raw."):], self.glob.removesuffix(".weight"))
        return entry.kind != "raw" and fnmatch.fnmatchcase(entry.kind, self.glob)

    def __str__(self) -> str:
        if self.raw:
            return f'module("{self.glob}", axis = {self.axis})'
        return "all" if self.glob == "*" else self.glob


#: Every kind, as the selector ``all`` names it.
ALL = ((1, Term("*")),)


def raw_twin(space: ChannelSpace, entry: Entry) -> Entry | None:
    """The entry of the space's own kinds that a raw entry names again — the same module
    and weight tensor (``module("model.layers.0.mlp.up_proj")`` and ``layers.0.mlp.up``) —
    or None: a module the space does not describe, or an entry that is not raw."""
    if entry.kind != "raw" or entry.hook is None:
        return None
    weight = entry.parts[0].name
    return next((e for e in space if e.kind != "raw" and e.hook is not None and e.parts
                 and e.hook.module == entry.hook.module and e.parts[0].name == weight), None)


def output_axis(space: ChannelSpace, entry: Entry) -> int:
    """The axis of an entry's weight along which its module's outputs run: the space's own
    channel axis for a module it describes (1 for GPT-2's ``Conv1D`` and the embedding),
    and 0 for a raw entry of any other module — ``nn.Linear``'s ``[out, in]`` layout."""
    described = entry if entry.kind != "raw" else raw_twin(space, entry)
    return described.parts[0].axis if described is not None else 0


def measures_outputs(space: ChannelSpace, entry: Entry) -> bool:
    """Whether forward statistics measure the entry's channels. Hooks read a module's
    outputs, so a raw entry along another axis — a Linear's input columns, ``axis = 1`` —
    has no activation of its own to measure."""
    return entry.hook is not None and entry.parts[0].axis == output_axis(space, entry)


def candidate_entries(space: ChannelSpace, terms: Sequence[tuple[int, Term]] = ALL, *,
                      exclude: Sequence[Term] = (), layers: Iterable[int] | None = None,
                      include_global: bool = False, warn: bool = True) -> list[Entry]:
    """The entries a rule may select from, in the space's order — for plan and run alike.

    Terms apply left to right (``+`` adds what a term matches, ``-`` removes it); then
    ``exclude`` removes, and ``layers`` keeps per-layer entries of those layers.

    Residual (global) channels need ``include_global``: named explicitly without it they are
    an error, under a wildcard they are skipped, and when they do come in a
    :class:`GlobalChannelWarning` says so. Kinds excluded by default (``lm_head``) come in
    only when named without a wildcard.

    Raises:
        RuntimeUserError: a term that matches nothing, residual channels named without
            ``include_global``, layers past the model's, or nothing left to select.
    """
    chosen: dict[str, Entry] = {}
    for sign, term in terms:
        hits = [e for e in space if term.matches(e)]
        if sign < 0:
            for e in hits:
                chosen.pop(e.key, None)
            continue
        if not hits:
            raise RuntimeUserError(f"the selector `{term}` matches no module of this "
                                   f"{space.model_type} model",
                                   hint="kinds here: " + ", ".join(space.kinds))
        for e in hits:
            if e.is_global and not include_global:
                if term.explicit:
                    raise RuntimeUserError(
                        f"`{term}` channels are residual dimensions shared by the whole model",
                        hint="set include_global = true to move them anyway")
                continue
            if e.default_excluded and not e.is_global and not term.explicit:
                continue  # lm_head: its rows are vocabulary entries, moved only by name
            chosen[e.key] = e
    for term in exclude:
        for e in [e for e in chosen.values() if term.matches(e)]:
            del chosen[e.key]
    if layers is not None:
        wanted = set(layers)
        beyond = sorted(layer for layer in wanted if not 0 <= layer < space.n_layers)
        if beyond:
            raise RuntimeUserError(f"layer {beyond[-1]} is past the model's {space.n_layers} "
                                   "layers", hint=f"the layers are 0..{space.n_layers}")
        chosen = {k: e for k, e in chosen.items() if e.layer is not None and e.layer in wanted}
    entries = [e for e in space if e.key in chosen]
    if not entries:
        raise RuntimeUserError("the rule's channels, layers and exclusions leave nothing to select")
    residual = sorted({e.kind for e in entries if e.is_global})
    if residual and warn:
        warnings.warn(f"the selection includes channels global to the model "
                      f"({', '.join(residual)}): residual dimensions and shared norm elements "
                      "affect every layer, not one module", GlobalChannelWarning, stacklevel=2)
    return entries


# ---- units --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitGroup:
    """A run of selection units that share a layout: one module's channels, one layer's
    neurons, one layer's heads, ... ``kind`` says how a unit maps to channels:

    * ``channel``: unit i is channel i of ``keys[0]``;
    * ``module`` / ``layer``: one unit, every channel of ``keys``;
    * ``neuron``: unit i is row i of the layer's gate and up (and column i of down);
    * ``q_head``: unit h is head h's q rows (and o columns);
    * ``kv_head``: unit g is KV head g's rows of each of ``keys`` (k and/or v).
    """

    name: str
    layer: int | None
    kind: str
    keys: tuple[str, ...]
    n_units: int
    n_channels: int


def unit_groups(space: ChannelSpace, entries: Sequence[Entry], granularity: str) -> list[UnitGroup]:
    """The units a selection at ``granularity`` ranks, in a fixed order (ties between equal
    scores break on it): grouped units first, then candidates that stay channels."""
    if granularity not in GRANULARITIES:
        raise RuntimeUserError(f"unknown granularity {granularity!r}",
                               hint=f"granularities: {', '.join(GRANULARITIES.names)}")
    if granularity == "channel":
        return [_channel_group(e) for e in entries]
    if granularity == "module":
        return [UnitGroup(e.key, e.layer, "module", (e.key,), 1, e.size) for e in entries]
    if granularity == "layer":
        by_layer: dict[int, list[Entry]] = {}
        for e in entries:
            if e.layer is not None:
                by_layer.setdefault(e.layer, []).append(e)
        layers = [UnitGroup(f"layers.{layer}", layer, "layer", tuple(e.key for e in es), 1,
                            sum(e.size for e in es)) for layer, es in by_layer.items()]
        return layers + [UnitGroup(e.key, None, "module", (e.key,), 1, e.size)
                         for e in entries if e.layer is None]
    groups: list[UnitGroup] = []
    taken: set[str] = set()
    candidates = {e.key for e in entries}
    mlps = mlp_prefixes(space)
    for layer in sorted({e.layer for e in entries if e.layer is not None}):
        pre = f"layers.{layer}."
        if granularity == "neuron":
            for mlp in mlps.get(layer, ()):
                scored = tuple(k for k in (mlp + "gate", mlp + "up") if k in candidates)
                if scored:
                    movers = [k for k in (mlp + "gate", mlp + "up") if k in space]
                    size = space[scored[0]].size
                    groups.append(UnitGroup(mlp + "neuron", layer, "neuron", scored, size,
                                            size * len(movers)))
                    taken.update(scored)
            continue
        heads, kv, head_dim = space.heads()
        if pre + "attn.q" in candidates:
            groups.append(UnitGroup(pre + "attn.head", layer, "q_head", (pre + "attn.q",),
                                    heads, heads * head_dim))
            taken.add(pre + "attn.q")
        kvs = tuple(k for k in (pre + "attn.k", pre + "attn.v") if k in candidates)
        if kvs:
            groups.append(UnitGroup(pre + "attn.kv_head", layer, "kv_head", kvs, kv,
                                    kv * head_dim * len(kvs)))
            taken.update(kvs)
    return groups + [_channel_group(e) for e in entries if e.key not in taken]


def mlp_prefixes(space: ChannelSpace) -> dict[int, list[str]]:
    """Per layer, the key prefix of each of its MLPs, in the space's order: the dense MLP
    (``layers.3.mlp.``), each expert (``layers.3.mlp.experts.5.``) and a shared expert
    (``layers.3.mlp.shared.``) — each with ``gate`` / ``up`` / ``down`` entries, whose
    neuron ``i`` is row ``i`` of gate and up and column ``i`` of down."""
    found: dict[int, dict[str, None]] = {}
    for e in space:
        role = e.kind.rpartition(".")[2]
        mlp = e.kind[: -len(role)]
        if e.layer is None or role not in ("gate", "up", "down") or not (
                mlp == "mlp." or mlp == "mlp.shared." or mlp.startswith("mlp.experts.")):
            continue
        found.setdefault(e.layer, {})[f"layers.{e.layer}.{mlp}"] = None
    return {layer: list(prefixes) for layer, prefixes in found.items()}


def _channel_group(e: Entry) -> UnitGroup:
    return UnitGroup(e.key, e.layer, "channel", (e.key,), e.size, e.size)


def check_budget(budget: Budget, groups: Sequence[UnitGroup]) -> int:
    """The number of units a selection chooses from; raises when a count budget asks for
    more units than there are."""
    total = sum(g.n_units for g in groups)
    if budget.kind == "count" and budget.value > total:
        unit = "channels" if all(g.kind == "channel" for g in groups) else "units"
        raise RuntimeUserError(
            f"the budget asks for {int(budget.value)} {unit} but the selector matches {total}",
            hint="lower the budget or widen `channels`")
    return total
