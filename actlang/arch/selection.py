"""Selection without tensors: budgets, and which channels a rule may choose from.

Both the planner (which checks a spec before any forward pass) and the runtime (which
selects) read this module, so whatever the plan accepts the run accepts.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

from actlang.arch.adapters import ChannelSpace, Entry
from actlang.arch.errors import GlobalChannelWarning, RuntimeUserError
from actlang.arch.registry import GRANULARITIES

__all__ = ["ALL", "Budget", "Term", "UnitGroup", "candidate_entries", "check_budget",
           "unit_groups"]

BudgetMode = Literal["global", "per_module", "per_layer", "count", "threshold"]
_MODES = ("global", "per_module", "per_layer", "count", "threshold")


@dataclass(frozen=True)
class Budget:
    """How many units to select. ``value`` is a fraction in [0, 1] for ``global``,
    ``per_module`` and ``per_layer``; a number of units for ``count``; a minimum score for
    ``threshold``."""

    mode: BudgetMode = "global"
    value: float = 0.03

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise RuntimeUserError(f"unknown budget mode {self.mode!r}", hint=f"modes: {', '.join(_MODES)}")
        if self.mode in ("global", "per_module", "per_layer") and not (0.0 <= self.value <= 1.0):
            raise RuntimeUserError(f"a {self.mode} budget is a fraction between 0% and 100%, got {self.value:g}")
        if self.mode == "count" and (self.value < 0 or self.value != int(self.value)):
            raise RuntimeUserError(f"a count budget is a whole number >= 0, got {self.value:g}")

    @classmethod
    def parse(cls, spec: "Budget | str | float | int") -> "Budget":
        """``"3%"``, ``"3% global"``, ``"5% per module"``, ``"5% per layer"``, ``"120"``
        (count), ``"threshold 0.5"`` / ``">= 0.5"``; a float in [0, 1] is a global fraction,
        an int a count."""
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, bool):
            raise RuntimeUserError(f"not a budget: {spec!r}")
        if isinstance(spec, int):
            return cls("count", spec)
        if isinstance(spec, float):
            return cls("global", spec)
        text = str(spec).strip().lower()
        m = re.fullmatch(r"(?:threshold\s*|>=\s*)([-+0-9.e]+)", text)
        if m:
            return cls("threshold", float(m.group(1)))
        m = re.fullmatch(r"([0-9.]+)\s*%\s*(global|per[ _-]?module|per[ _-]?layer)?", text)
        if m:
            mode = (m.group(2) or "global").replace(" ", "_").replace("-", "_")
            if mode in ("permodule", "perlayer"):
                mode = "per_" + mode[3:]
            return cls(mode, float(m.group(1)) / 100.0)  # type: ignore[arg-type]
        m = re.fullmatch(r"([0-9]+)\s*(channels|units)?", text)
        if m:
            return cls("count", int(m.group(1)))
        raise RuntimeUserError(f"cannot read the budget {spec!r}",
                               hint="e.g. 3%, 5% per module, 5% per layer, 120, threshold 0.5")

    def __str__(self) -> str:
        if self.mode == "count":
            return f"{int(self.value)}"
        if self.mode == "threshold":
            return f"threshold {self.value:g}"
        pct = f"{self.value * 100:g}%"
        return pct if self.mode == "global" else f"{pct} {self.mode.replace('_', ' ')}"




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
    for layer in sorted({e.layer for e in entries if e.layer is not None}):
        pre = f"layers.{layer}."
        if granularity == "neuron":
            scored = tuple(k for k in (pre + "mlp.gate", pre + "mlp.up") if k in candidates)
            if scored:
                movers = [k for k in (pre + "mlp.gate", pre + "mlp.up") if k in space]
                size = space[scored[0]].size
                groups.append(UnitGroup(pre + "mlp.neuron", layer, "neuron", scored, size,
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


def _channel_group(e: Entry) -> UnitGroup:
    return UnitGroup(e.key, e.layer, "channel", (e.key,), e.size, e.size)


def check_budget(budget: Budget, groups: Sequence[UnitGroup]) -> int:
    """The number of units a selection chooses from; raises when a count budget asks for
    more units than there are."""
    total = sum(g.n_units for g in groups)
    if budget.mode == "count" and budget.value > total:
        unit = "channels" if all(g.kind == "channel" for g in groups) else "units"
        raise RuntimeUserError(
            f"the budget asks for {int(budget.value)} {unit} but the selector matches {total}",
            hint="lower the budget or widen `channels`")
    return total
