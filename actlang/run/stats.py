"""Per-channel activation statistics, reduced on the fly in forward hooks.

Forward hooks on every module of a :class:`~actlang.arch.adapters.ChannelSpace` reduce the
module's output, on scored positions only (attention mask and the corpus' score spans), to
per-channel float64 sums — no activation tensor outlives the hook.

Each batch is reduced by :class:`~actlang.run.reduce.Reducer` in cache-sized row blocks,
summed in float32 (float64 for float64 models) into float64 sums of its own; the batches'
sums are added along a binary tree fixed by the batch indices (:mod:`.batchtree`), so ranks
that each run a share of the batches get the same bits as one process
(:mod:`.ranks`).

Unpaired statistics (one model; fields of :data:`UNPAIRED_FIELDS`)::

    count      number of scored activations (tokens; tokens x heads for q_norm/k_norm)
    sum        sum a            sum_abs   sum |a|
    sum_sq     sum a^2          count_pos number of a > 0

Paired statistics (two models run the *same* batch in lock-step: model A's scored
activations of the batch are held until model B's hook for the same module reduces
``a_B - a_A``; fields of :data:`PAIRED_FIELDS`)::

    count, sum_absdiff (sum |a_B - a_A|, the paper's score numerator), sum_diff, sum_sqdiff,
    sum_abs_a, sum_abs_b
    sum_local  (on request, ``local=True``) sum of |(θ_B − θ_A) x_A| over model A's module
               inputs x_A: the module's own change on the inputs it really sees (:mod:`.local`)

A paired pass yields both models' unpaired statistics too, at no extra forward pass.

Statistics are sums, so two partial statistics merge exactly (:meth:`ChannelStats.merge`,
``a + b``): the statistics of two halves of a corpus add up to those of the whole (up to
float64 rounding of the sums), which makes them cacheable. They serialize to safetensors
(:meth:`ChannelStats.save` / :meth:`ChannelStats.load`).

:data:`COUNTERS` counts forward passes over corpora (``forward_passes``, one per model per
collection call), model forward calls (``forward_batches``) and scored tokens — so tests can
prove that work was, or was not, done.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import torch
from torch import nn

from actlang.arch.adapters import ChannelSpace, Entry
from actlang.arch.corpus import TokenizedCorpus
from actlang.arch.errors import RuntimeUserError
from actlang.run.batchtree import BatchTree, Slots, unite
from actlang.run.corpus import Batch, batches
from actlang.run.experts import expert_local_deltas, expert_projections, routed_rows
from actlang.run.ranks import SINGLE, Ranks
from actlang.run.reduce import Reducer, ScoredRows

__all__ = [
    "COUNTERS",
    "ChannelStats",
    "Counters",
    "PAIRED_FIELDS",
    "PairedResult",
    "UNPAIRED_FIELDS",
    "collect_paired_stats",
    "collect_stats",
    "default_stat_entries",
]

UNPAIRED_FIELDS = ("count", "sum", "sum_abs", "sum_sq", "count_pos")
PAIRED_FIELDS = ("count", "sum_absdiff", "sum_diff", "sum_sqdiff", "sum_abs_a", "sum_abs_b",
                 "sum_local")
#: What a paired pass computes unless asked: the local difference costs a matmul per module.
DEFAULT_PAIRED_FIELDS = PAIRED_FIELDS[:-1]
LOCAL_FIELD = "sum_local"
StatKind = Literal["unpaired", "paired"]


@dataclass
class Counters:
    """Work counters (process-wide, see :data:`COUNTERS`)."""

    forward_passes: int = 0
    forward_batches: int = 0
    tokens_scored: int = 0
    passes_by_label: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.forward_passes = self.forward_batches = self.tokens_scored = 0
        self.passes_by_label.clear()

    def to_json(self) -> dict[str, Any]:
        return {"forward_passes": self.forward_passes, "forward_batches": self.forward_batches,
                "tokens_scored": self.tokens_scored,
                "passes_by_model_and_corpus": dict(sorted(self.passes_by_label.items()))}

    def _pass(self, label: str | None) -> None:
        self.forward_passes += 1
        if label is not None:
            self.passes_by_label[label] = self.passes_by_label.get(label, 0) + 1


COUNTERS = Counters()


class ChannelStats:
    """Per-entry, per-channel float64 sums (``data[entry_key][field] -> tensor [channels]``)."""

    def __init__(self, kind: StatKind, data: Mapping[str, Mapping[str, torch.Tensor]],
                 meta: Mapping[str, str] | None = None) -> None:
        self.kind: StatKind = kind
        self.data = {k: dict(v) for k, v in data.items()}
        self.meta = dict(meta or {})

    @classmethod
    def zeros(cls, kind: StatKind, entries: Iterable[Entry], meta: Mapping[str, str] | None = None,
              device: torch.device | str = "cpu", fields: Sequence[str] | None = None) -> "ChannelStats":
        fields = _check_fields(kind, fields)
        data = {e.key: {f: torch.zeros(e.size, dtype=torch.float64, device=device) for f in fields} for e in entries}
        return cls(kind, data, meta)

    @property
    def fields(self) -> tuple[str, ...]:
        """The statistics collected (``count`` always; a subset when ``fields=`` was given)."""
        for d in self.data.values():
            return tuple(d)
        return UNPAIRED_FIELDS if self.kind == "unpaired" else PAIRED_FIELDS

    def keys(self) -> list[str]:
        return list(self.data)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __getitem__(self, key: str) -> dict[str, torch.Tensor]:
        try:
            return self.data[key]
        except KeyError:
            raise RuntimeUserError(f"no statistics for {key!r}",
                                   hint="the statistics were collected for other modules") from None

    # -- derived means ----------------------------------------------------------------------

    def mean(self, key: str, fld: str) -> torch.Tensor:
        """``fld / count`` per channel (0 where nothing was counted)."""
        d = self[key]
        if fld not in d:
            raise RuntimeUserError(f"statistic {fld!r} was not collected for {key!r} (collected: {', '.join(d)})",
                                   hint="collect it (fields=...) or use a score that does not need it")
        count = d["count"]
        return torch.where(count > 0, d[fld] / count.clamp_min(1), torch.zeros_like(count))

    def mean_act(self, key: str) -> torch.Tensor:
        return self.mean(key, "sum")

    def mean_abs(self, key: str) -> torch.Tensor:
        return self.mean(key, "sum_abs")

    def mean_sq(self, key: str) -> torch.Tensor:
        return self.mean(key, "sum_sq")

    def frac_pos(self, key: str) -> torch.Tensor:
        return self.mean(key, "count_pos")

    def mean_absdiff(self, key: str) -> torch.Tensor:
        """Paired: ``mean_t |a_B - a_A|`` (the paper's Δa)."""
        return self.mean(key, "sum_absdiff")

    @property
    def n_scored(self) -> int:
        """Scored tokens counted by the first entry (activations for q_norm-like entries)."""
        for d in self.data.values():
            return int(d["count"][0]) if d["count"].numel() else 0
        return 0

    # -- algebra ----------------------------------------------------------------------------

    def merge(self, other: "ChannelStats") -> "ChannelStats":
        """The statistics of both parts together (fieldwise sums)."""
        if self.kind != other.kind:
            raise RuntimeUserError(f"cannot merge {self.kind} with {other.kind} statistics")
        if self.fields != other.fields:
            raise RuntimeUserError(f"cannot merge statistics with different fields ({self.fields} vs {other.fields})")
        if set(self.data) != set(other.data):
            missing = sorted(set(self.data) ^ set(other.data))
            raise RuntimeUserError(f"cannot merge statistics of different modules (e.g. {missing[0]})")
        data = {}
        for k, d in self.data.items():
            o = other.data[k]
            if d["count"].shape != o["count"].shape:
                raise RuntimeUserError(f"cannot merge statistics: {k} has {d['count'].numel()} vs "
                                       f"{o['count'].numel()} channels")
            data[k] = {f: d[f] + o[f].to(d[f].device) for f in self.fields}
        meta = {k: v for k, v in self.meta.items() if other.meta.get(k) == v}
        return ChannelStats(self.kind, data, meta)

    __add__ = merge

    def cover(self, other: "ChannelStats") -> "ChannelStats":
        """These statistics, plus those of the modules only ``other`` has: two collections
        of the same model on the same corpus that hooked different modules (rules sharing a
        score but selecting differently)."""
        if self.kind != other.kind:
            raise RuntimeUserError(f"cannot combine {self.kind} with {other.kind} statistics")
        return ChannelStats(self.kind, {**other.data, **self.data}, self.meta)

    def allclose(self, other: "ChannelStats", rtol: float = 1e-12, atol: float = 0.0) -> bool:
        return (self.kind == other.kind and set(self.data) == set(other.data) and all(
            torch.allclose(self.data[k][f], other.data[k][f], rtol=rtol, atol=atol)
            for k in self.data for f in self.fields))

    # -- serialization ----------------------------------------------------------------------

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{k}/{f}": self.data[k][f].detach().cpu().contiguous()
                for k in self.data for f in self.fields}

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (atomically: temp file, then rename)."""
        from actlang.run.output import save_tensors

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"actlang": "channel-stats/1", "kind": self.kind, "keys": json.dumps(list(self.data)),
                "fields": json.dumps(list(self.fields)),
                **{f"meta.{k}": str(v) for k, v in self.meta.items()}}
        return save_tensors(path, self.to_tensors(), meta)

    @classmethod
    def load(cls, path: str | Path) -> "ChannelStats":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise RuntimeUserError(f"statistics file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("actlang") != "channel-stats/1":
                    raise RuntimeUserError(f"{path} is not an actlang statistics file")
                kind = meta["kind"]
                keys = json.loads(meta["keys"])
                fields = json.loads(meta["fields"]) if "fields" in meta else (
                    UNPAIRED_FIELDS if kind == "unpaired" else PAIRED_FIELDS)
                data = {k: {fl: f.get_tensor(f"{k}/{fl}") for fl in fields} for k in keys}
        except RuntimeUserError:
            raise
        except Exception as err:  # noqa: BLE001 - a corrupt cache file is a user-visible error
            raise RuntimeUserError(f"cannot read statistics file {path}: {err}") from None
        user_meta = {k[5:]: v for k, v in meta.items() if k.startswith("meta.")}
        return cls(kind, data, user_meta)  # type: ignore[arg-type]


def _check_fields(kind: StatKind, fields: Sequence[str] | None) -> tuple[str, ...]:
    allowed = UNPAIRED_FIELDS if kind == "unpaired" else PAIRED_FIELDS
    if fields is None:
        return UNPAIRED_FIELDS if kind == "unpaired" else DEFAULT_PAIRED_FIELDS
    bad = [f for f in fields if f not in allowed]
    if bad:
        raise RuntimeUserError(f"unknown {kind} statistic {bad[0]!r}", hint=f"fields: {', '.join(allowed)}")
    required = ("count",) if kind == "unpaired" else ("count", "sum_absdiff")
    return tuple(f for f in allowed if f in fields or f in required)


@dataclass
class PairedResult:
    """What one lock-step pass over a corpus yields."""

    paired: ChannelStats
    a: ChannelStats | None
    b: ChannelStats | None


# --------------------------------------------------------------------------- collection


def default_stat_entries(space: ChannelSpace) -> list[Entry]:
    """Entries with a hook that are selectable by default (not embed / lm_head / norms).
    Raw entries are hooked only when named: their axis need not be the output's."""
    return [e for e in space if e.hook is not None and not e.default_excluded
            and e.kind != "raw"]


class _Capture:
    """Forward hooks reducing module outputs of one model into statistics."""

    def __init__(self, model: nn.Module, entries: Sequence[Entry]) -> None:
        self.model = model
        self.entries = list(entries)
        # this batch's sums ({entry key: {field: float64 [channels]}}), set by _Pass.batch
        self.unpaired: dict[str, dict[str, torch.Tensor]] | None = None
        self.paired: dict[str, dict[str, torch.Tensor]] | None = None
        self.sites: dict[tuple[str, int], list[Entry]] = {}
        # experts: module path -> expert -> its entries (recomputed from the module's inputs)
        self.expert_sites: dict[str, dict[int, list[Entry]]] = {}
        for e in self.entries:
            if e.hook is None:
                raise RuntimeUserError(f"{e.key} has no forward hook site; it has no activation statistics",
                                       hint="use a weight_delta or random score for it")
            if e.hook.expert is not None:
                self.expert_sites.setdefault(e.hook.module, {}).setdefault(
                    e.hook.expert, []).append(e)
            else:
                self.sites.setdefault((e.hook.module, e.hook.seq_axis), []).append(e)
        self.handles: list[Any] = []
        self.B = self.T = 0
        self.mask: torch.Tensor | None = None  # [B*T] bool on CPU, None when every position is scored
        self.device = torch.device("cpu")
        self._scored_rows: dict[int, ScoredRows] = {}
        self.stash: dict[str, torch.Tensor] | None = None
        self.mode: str = "plain"  # "plain" | "stash" | "diff"
        self.keep = False  # "diff": leave the stash for a further partner
        # local differences: the anchor stashes each hooked module's scored inputs and the
        # module itself; a partner applies (θ_partner − θ_anchor) to the anchor's inputs
        self.local = False
        self.anchor_modules: dict[str, nn.Module] = {}
        self.reducer = Reducer()

    def __enter__(self) -> "_Capture":
        for (module_path, seq_axis), entries in self.sites.items():
            module = self._module(module_path, entries[0])
            self.handles.append(module.register_forward_hook(self._make_hook(module_path, seq_axis, entries)))
        for module_path, experts in self.expert_sites.items():
            module = self._module(module_path, next(iter(experts.values()))[0])
            self.handles.append(module.register_forward_hook(
                self._make_expert_hook(module_path, experts)))
        return self

    def _module(self, module_path: str, entry: Entry) -> nn.Module:
        try:
            return self.model.get_submodule(module_path)
        except AttributeError:
            raise RuntimeUserError(
                f"module {module_path} (for {entry.key}) does not exist in this model",
                hint="the model does not match its config.json or adapter",
            ) from None

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def set_batch(self, score_mask: torch.Tensor, device: torch.device) -> None:
        self.B, self.T = score_mask.shape
        self._scored_rows.clear()
        self.device = device
        self.mask = None if bool(score_mask.all()) else score_mask.reshape(-1).cpu()

    def scored_rows(self, per_position: int) -> ScoredRows:
        """The scored rows of this batch's activations, rows = positions x ``per_position``."""
        rows = self._scored_rows.get(per_position)
        if rows is None:
            rows = self._scored_rows[per_position] = ScoredRows.of(
                self.mask, self.B * self.T, per_position, self.device)
        return rows

    def _make_hook(self, module_path: str, seq_axis: int, entries: list[Entry]) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            x = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(x, torch.Tensor):
                raise RuntimeUserError(f"module {module_path} does not return a tensor; it cannot be hooked")
            B, T = self.B, self.T
            if x.dim() == 2 and x.shape[0] == B * T:  # tokens flattened (inside an MoE block)
                x = x.view(B, T, x.shape[1])
            if seq_axis != 1 and x.dim() > seq_axis:
                x = x.movedim(seq_axis, 1)
            if x.dim() < 2 or x.shape[1] != T or x.shape[0] not in (B, 1):
                raise RuntimeUserError(
                    f"output of {module_path} has shape {list(x.shape)}, not [batch, seq, ...]",
                    hint="statistics hook token-wise module outputs only",
                )
            if x.shape[0] != B:
                x = x.expand(B, *x.shape[1:])
            width = x.shape[-1]
            x = x.reshape(-1, width)  # rows: (batch, seq, ...) positions
            per_position = x.shape[0] // (B * T)
            rows = self.scored_rows(per_position)
            for e in entries:
                h = e.hook
                assert h is not None
                if h.stop > width:
                    raise RuntimeUserError(
                        f"output of {module_path} has {width} features, fewer than {e.key} needs ({h.stop})",
                        hint="a raw selector's axis must be the module's output axis",
                    )
                xs = x[:, h.start : h.stop] if (h.start, h.stop) != (0, width) else x
                if self.unpaired is not None:
                    self.reducer.unpaired(self.unpaired[e.key], xs, rows)
                if self.mode == "stash":
                    assert self.stash is not None
                    self.stash[e.key] = xs.clone()  # xs is a view of the module's output
                elif self.mode == "diff":
                    assert self.stash is not None and self.paired is not None
                    other = (self.stash[e.key] if self.keep else self.stash.pop(e.key)).to(xs.device)
                    self.reducer.paired(self.paired[e.key], other, xs, rows)
            if self.local:
                self._local(module_path, module, inputs, entries)

        return hook

    def _make_expert_hook(self, module_path: str, experts: dict[int, list[Entry]]
                          ) -> Callable[..., None]:
        """A hook on a module holding every expert (:mod:`actlang.run.experts`): each
        expert's projections, recomputed on the tokens routed to it. Paired statistics use
        the anchor's routing in both models; unpaired ones each model's own."""
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            hidden, index = inputs[0], inputs[1]
            if hidden.dim() != 2 or hidden.shape[0] != self.B * self.T or \
                    index.shape[0] != hidden.shape[0]:
                raise RuntimeUserError(
                    f"the experts of {module_path} got inputs of shapes {list(hidden.shape)} "
                    f"and {list(index.shape)}, not [tokens, hidden] and [tokens, top_k]",
                    hint="this mixture-of-experts layout is not one statistics know; use a "
                         "weight_delta score for its experts")
            for expert, entries in experts.items():
                slot = f"{module_path}\0expert{expert}"
                if self.unpaired is not None or self.mode == "stash":
                    own = routed_rows(index, expert, self.mask)
                    outputs = expert_projections(module, hidden[own], expert)
                    for e in entries:
                        xs = self._expert_slice(outputs, e)
                        if self.unpaired is not None and own.numel():
                            self.reducer.unpaired(self.unpaired[e.key], xs,
                                                  ScoredRows.of(None, own.numel()))
                        if self.mode == "stash":
                            self.stash[e.key] = xs.clone()
                    if self.mode == "stash":
                        self.stash[slot] = own
                        self.stash[slot + "\0hidden"] = hidden[own].clone()
                        self.anchor_modules[module_path] = module
                if self.mode != "diff":
                    continue
                take = (lambda key: self.stash[key]) if self.keep else self.stash.pop
                rows, anchor_hidden = take(slot), take(slot + "\0hidden")
                anchors = [take(e.key) for e in entries]
                if rows.numel() == 0:
                    continue
                outputs = expert_projections(module, hidden[rows.to(hidden.device)], expert)
                every = ScoredRows.of(None, rows.numel())
                for e, other in zip(entries, anchors):
                    self.reducer.paired(self.paired[e.key], other.to(hidden.device),
                                        self._expert_slice(outputs, e), every)
                if self.local:
                    deltas = expert_local_deltas(self.anchor_modules[module_path], module,
                                                 anchor_hidden.to(hidden.device), expert)
                    for e in entries:
                        acc = self.paired[e.key][LOCAL_FIELD]
                        acc += self._expert_slice(deltas, e).abs().sum(
                            0, dtype=torch.float64).to(acc.device)

        return hook

    @staticmethod
    def _expert_slice(outputs: dict[str, torch.Tensor], entry: Entry) -> torch.Tensor:
        h = entry.hook
        assert h is not None and h.role is not None
        return outputs[h.role][:, h.start:h.stop]

    def _scored_inputs(self, inputs: Any) -> torch.Tensor | None:
        """A module's first input on the batch's scored positions, ``[scored, ...]``."""
        x = inputs[0] if isinstance(inputs, (tuple, list)) and inputs else None
        if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[0] == self.B * self.T:
            flat = x  # tokens flattened (inside an MoE block)
        elif not isinstance(x, torch.Tensor) or x.dim() < 2 or \
                tuple(x.shape[:2]) != (self.B, self.T):
            return None
        else:
            flat = x.reshape(self.B * self.T, *x.shape[2:])
        return flat.clone() if self.mask is None else flat[self.mask.to(flat.device)]

    def _local(self, module_path: str, module: nn.Module, inputs: Any,
               entries: list[Entry]) -> None:
        """Stash (anchor) or reduce (partner) the module's local difference on this batch."""
        from actlang.run.local import local_delta

        assert self.stash is not None
        slot = f"{module_path}\0input"
        if self.mode == "stash":
            self.stash[slot] = self._scored_inputs(inputs)
            self.anchor_modules[module_path] = module
            return
        assert self.paired is not None
        theirs = self.stash[slot] if self.keep else self.stash.pop(slot)
        anchor = self.anchor_modules[module_path]
        delta = None if theirs is None else \
            local_delta(anchor, module, theirs.to(_device_of(module)))
        if delta is None:
            for e in entries:  # no local difference for this module: its scores are undefined
                self.paired[e.key][LOCAL_FIELD].fill_(float("nan"))
            return
        sums = delta.abs_().sum(0, dtype=torch.float64)
        for e in entries:
            h = e.hook
            assert h is not None
            acc = self.paired[e.key][LOCAL_FIELD]
            acc += sums[h.start:h.stop].to(acc.device)


def _device_of(model: nn.Module) -> torch.device:
    """Where a model computes: its first real parameter's device (a model streamed a layer
    at a time keeps the rest on the meta device)."""
    for p in model.parameters():
        if not p.is_meta:
            return p.device
    return torch.device("cpu")


def _batches(data: TokenizedCorpus | Iterable[Batch], batch_size: int) -> Iterable[Batch]:
    if isinstance(data, TokenizedCorpus):
        return batches(data, batch_size)
    return data


def _run(model: nn.Module, batch: Batch, need_logits: bool) -> None:
    target = model if need_logits else getattr(model, "base_model", model)
    target(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    COUNTERS.forward_batches += 1


def _needs_logits(model: nn.Module, entries: Sequence[Entry]) -> bool:
    base = getattr(model, "base_model", model)
    if base is model:
        return True
    base_modules = {id(m) for m in base.modules()}
    for e in entries:
        assert e.hook is not None
        try:
            if id(model.get_submodule(e.hook.module)) not in base_modules:
                return True
        except AttributeError:
            return True
    return False


def _resolve_entries(space: ChannelSpace, entries: Sequence[Entry | str] | None) -> list[Entry]:
    if entries is None:
        return default_stat_entries(space)
    return [space[e] if isinstance(e, str) else e for e in entries]


def _meta(space: ChannelSpace, data: Any, extra: Mapping[str, str] | None) -> dict[str, str]:
    meta = {"model_type": str(space.model_type)}
    if isinstance(data, TokenizedCorpus):
        meta["corpus_digest"] = data.digest()
    meta.update(extra or {})
    return meta


def collect_stats(
    model: nn.Module,
    space: ChannelSpace,
    data: TokenizedCorpus | Iterable[Batch],
    *,
    entries: Sequence[Entry | str] | None = None,
    batch_size: int = 8,
    label: str | None = None,
    progress: Callable[[int], None] | None = None,
    meta: Mapping[str, str] | None = None,
    fields: Sequence[str] | None = None,
    ranks: Ranks = SINGLE,
) -> ChannelStats:
    """Unpaired statistics of ``model`` over a corpus, in one forward pass over it.

    ``entries`` defaults to :func:`default_stat_entries`. ``fields`` restricts the
    statistics to a subset of :data:`UNPAIRED_FIELDS` (``count`` is always kept), e.g.
    ``("sum_abs",)`` for ``absmean_diff`` alone — cheaper hooks. ``progress`` is called
    with the number of scored tokens of each batch. ``label`` names the model in
    ``COUNTERS.passes_by_label``. Under several ``ranks`` each runs its share of the batches
    and rank 0 returns the whole (:mod:`actlang.run.ranks`; the others, their share).
    """
    ents = _resolve_entries(space, entries)
    device = _device_of(model)
    need_logits = _needs_logits(model, ents)
    was_training = model.training
    model.eval()
    COUNTERS._pass(label)
    try:
        with _Capture(model, ents) as cap, torch.inference_mode():
            sums = _Pass([cap], ents, [("unpaired", _check_fields("unpaired", fields), device)],
                         ranks)
            for index, batch in sums.batches(data, batch_size):
                batch = batch.to(device)
                cap.set_batch(batch.score_mask, device)
                with sums.batch(index):
                    _run(model, batch, need_logits)
                n = batch.n_scored
                COUNTERS.tokens_scored += n
                if progress:
                    progress(n)
            (stats,) = sums.results(_meta(space, data, meta))
    finally:
        model.train(was_training)
    assert stats is not None
    return stats


def collect_paired_stats(
    model_a: nn.Module,
    model_b: nn.Module,
    space: ChannelSpace,
    data: TokenizedCorpus | Iterable[Batch],
    *,
    entries: Sequence[Entry | str] | None = None,
    batch_size: int = 8,
    unpaired: bool = True,
    labels: tuple[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    meta: Mapping[str, str] | None = None,
    fields: Sequence[str] | None = None,
    unpaired_fields: Sequence[str] | None = None,
    local: bool = False,
    ranks: Ranks = SINGLE,
) -> PairedResult:
    """Paired statistics of ``model_b - model_a`` on the same batches, in lock-step.

    For each batch, model A runs first and its hooks keep that batch's scored activations;
    model B's hooks then reduce ``a_B - a_A`` per module and drop A's activations at once.
    Memory: one batch of A's hooked activations (choose ``batch_size`` accordingly).
    With ``unpaired`` (default), each model's unpaired statistics come out of the same pass.
    ``fields`` / ``unpaired_fields`` restrict what is computed (``count`` and
    ``sum_absdiff`` are always kept); ``local`` adds ``sum_local``, each module's own
    difference applied to model A's inputs (:mod:`actlang.run.local`): pass the target as A. :func:`collect_lockstep_stats`
    pairs one model with several.
    """
    (result,) = collect_lockstep_stats(
        model_a, [model_b], space, data, entries=entries, batch_size=batch_size,
        unpaired=unpaired, labels=labels, progress=progress, meta=meta, fields=fields,
        unpaired_fields=unpaired_fields, local=local, ranks=ranks)
    return result


def collect_lockstep_stats(
    anchor: nn.Module,
    partners: Sequence[nn.Module],
    space: ChannelSpace,
    data: TokenizedCorpus | Iterable[Batch],
    *,
    entries: Sequence[Entry | str] | None = None,
    batch_size: int = 8,
    unpaired: bool = True,
    labels: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    meta: Mapping[str, str] | None = None,
    fields: Sequence[str] | None = None,
    unpaired_fields: Sequence[str] | None = None,
    local: bool = False,
    ranks: Ranks = SINGLE,
) -> list[PairedResult]:
    """Paired statistics of each ``partner - anchor``, every model running once per batch.

    The anchor runs first and its hooks keep the batch's scored activations; each partner
    then reduces its difference to them, and the last one drops them. So a target paired
    with several donors runs over the corpus once, not once per donor. Result ``i`` holds
    the pair (anchor, partner ``i``); the anchor's unpaired statistics are in every ``.a``.
    ``labels`` names the anchor, then each partner, in ``COUNTERS.passes_by_label``.
    Under several ``ranks``, as :func:`collect_stats`.
    """
    models = [anchor, *partners]
    ents = _resolve_entries(space, entries)
    devices = [_device_of(m) for m in models]
    need = [_needs_logits(model, ents) for model in models]
    with lockstep_captures(models, ents, space, data, unpaired=unpaired, labels=labels,
                           meta=meta, fields=fields, unpaired_fields=unpaired_fields,
                           local=local, ranks=ranks) as (captures, sums, results):
        for index, batch in sums.batches(data, batch_size):
            with sums.batch(index):
                for model, capture, device, logits in zip(models, captures, devices, need):
                    on_device = batch.to(device)
                    capture.set_batch(on_device.score_mask, device)
                    _run(model, on_device, logits)
                check_drained(captures)
            n = batch.n_scored
            COUNTERS.tokens_scored += n
            if progress:
                progress(n)
    return results


@contextlib.contextmanager
def lockstep_captures(
    models: Sequence[nn.Module],
    entries: Sequence[Entry],
    space: ChannelSpace,
    data: Any,
    *,
    unpaired: bool = True,
    labels: Sequence[str] | None = None,
    meta: Mapping[str, str] | None = None,
    fields: Sequence[str] | None = None,
    unpaired_fields: Sequence[str] | None = None,
    local: bool = False,
    ranks: Ranks = SINGLE,
) -> Iterator[tuple[list["_Capture"], "_Pass", list[PairedResult]]]:
    """The hooks of a lock-step pass over ``models`` (the anchor first), in eval and
    inference mode: yields each model's capture, the :class:`_Pass` that sums its batches,
    and a list that holds the results, on the CPU, once the block ends. The caller runs
    every model on each batch of ``sums.batches(...)``, the anchor first, inside
    ``sums.batch(index)`` (:func:`collect_lockstep_stats` whole models;
    :mod:`actlang.run.streamed` a layer at a time)."""
    if len(models) < 2:
        raise RuntimeUserError("paired statistics need at least one partner model")
    if len({id(m) for m in models}) != len(models):
        raise RuntimeUserError("paired statistics need two different model objects",
                               hint="load the second model separately")
    devices = [_device_of(m) for m in models]
    if local:
        fields = (*(fields if fields is not None else DEFAULT_PAIRED_FIELDS), LOCAL_FIELD)
    single_fields = _check_fields("unpaired", unpaired_fields)
    slots = [("unpaired", single_fields, d) if unpaired else None for d in devices] + \
        [("paired", _check_fields("paired", fields), d) for d in devices[1:]]
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    for label in (labels or [None] * len(models)):
        COUNTERS._pass(label)
    stash: dict[str, torch.Tensor] = {}
    results: list[PairedResult] = []
    try:
        with contextlib.ExitStack() as stack:
            captures = [stack.enter_context(_Capture(model, entries)) for model in models]
            stack.enter_context(torch.inference_mode())
            captures[0].mode, captures[0].stash = "stash", stash
            for index, capture in enumerate(captures[1:], 1):
                capture.mode, capture.stash = "diff", stash
                capture.keep = index < len(captures) - 1  # the last partner frees the stash
                capture.anchor_modules = captures[0].anchor_modules
            for capture in captures:
                capture.local = local
            sums = _Pass(captures, entries, slots, ranks)
            yield captures, sums, results
            stats = sums.results(_meta(space, data, meta))
    finally:
        stash.clear()
        for model, mode in zip(models, modes):
            model.train(mode)
    singles, pairs = stats[:len(models)], stats[len(models):]
    results.extend(PairedResult(p, singles[0], single)  # type: ignore[arg-type]
                   for p, single in zip(pairs, singles[1:]))


class _Sums(dict):
    """One batch's sums of one statistic, ``{entry key: {field: float64 [channels]}}``: an
    entry's zeros are made when a hook first adds to it (a layer of a streamed capture
    touches its own entries only)."""

    def __init__(self, sizes: Mapping[str, int], fields: Sequence[str], device: torch.device):
        super().__init__()
        self._sizes, self._fields, self._device = sizes, fields, device

    def __missing__(self, key: str) -> dict[str, torch.Tensor]:
        sums = self[key] = {f: torch.zeros(self._sizes[key], dtype=torch.float64,
                                           device=self._device) for f in self._fields}
        return sums


class _Pass:
    """The statistics of one pass over a corpus: each batch gets fresh sums, added along the
    fixed batch tree (:mod:`actlang.run.batchtree`), so any split of the batches between
    ranks gives the same bits.

    Args:
        captures: each model's hooks (the anchor first).
        entries: the hooked entries.
        slots: what the pass computes, as ``(kind, fields, device)`` or ``None``: one
            unpaired slot per capture, then one paired slot per partner.
        ranks: the run's processes (this one computes its share of the batches).
    """

    def __init__(self, captures: Sequence["_Capture"], entries: Sequence[Entry],
                 slots: Sequence[tuple[StatKind, tuple[str, ...], torch.device] | None],
                 ranks: Ranks) -> None:
        assert len(slots) in (len(captures), 2 * len(captures) - 1), "a slot per statistic"
        self.captures, self.entries, self.slots, self.ranks = captures, entries, slots, ranks
        self.sizes = {e.key: e.size for e in entries}
        self.phases = [BatchTree()]

    def batches(self, data: TokenizedCorpus | Iterable[Batch], batch_size: int
                ) -> Iterator[tuple[int, Batch]]:
        """This rank's share of the corpus's batches, with their indices (a tokenized
        corpus's other batches are never made)."""
        if isinstance(data, TokenizedCorpus):
            share = self.ranks.batches(data.n_batches(batch_size))
            return zip(share, batches(data, batch_size, share))
        listed = list(data)
        return ((index, listed[index]) for index in self.ranks.batches(len(listed)))

    def next_phase(self) -> None:
        """The batches are run again on other modules (a streamed capture's next layer)."""
        self.phases.append(BatchTree())

    @contextlib.contextmanager
    def batch(self, index: int) -> Iterator[None]:
        """Hooks that run inside add to fresh sums of batch ``index``."""
        value: Slots = [None if slot is None else _Sums(self.sizes, slot[1], slot[2])
                        for slot in self.slots]
        for capture, single in zip(self.captures, value):
            capture.unpaired = single
        for capture, paired in zip(self.captures[1:], value[len(self.captures):]):
            capture.paired = paired
        try:
            yield
        finally:
            for capture in self.captures:
                capture.unpaired = capture.paired = None
        self.phases[-1].push(index, [None if v is None else dict(v) for v in value])

    def results(self, meta: Mapping[str, str]) -> list[ChannelStats | None]:
        """Per slot, the statistics over every rank's batches (rank 0) or this rank's."""
        total = self.ranks.reduce(unite(self.phases))
        results: list[ChannelStats | None] = []
        for position, slot in enumerate(self.slots):
            if slot is None:
                results.append(None)
                continue
            kind, fields, _ = slot
            sums = (total[position] if total is not None else None) or {}
            data = {e.key: {f: sums[e.key][f].cpu() if e.key in sums else
                            torch.zeros(e.size, dtype=torch.float64) for f in fields}
                    for e in self.entries}
            results.append(ChannelStats(kind, data, meta))
        return results


def check_drained(captures: Sequence["_Capture"]) -> None:
    """After every model ran a batch (or a layer of it), no anchor activation is left
    waiting for a partner: a partner that skipped modules is another architecture."""
    stash = captures[0].stash
    if stash:
        raise RuntimeUserError(
            f"a partner never ran the modules {sorted(stash)[:3]} that the first model ran",
            hint="paired statistics need models of one architecture",
        )
