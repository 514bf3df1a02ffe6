"""Channel masks: which rows / columns / elements of which tensors move.

A :class:`ChannelMask` holds two views of one selection:

* per entry (``"layers.3.mlp.up"``): a boolean vector over its channels, and for entries with
  input features (``attn.o``, ``mlp.down``) a boolean vector over those (set by tying);
* per checkpoint tensor and axis (``"model.layers.3.mlp.up_proj.weight"``, axis 0): a boolean
  vector along that axis — the form :mod:`actlang.run.transfer` applies. An element of a
  tensor moves when its index is selected along *any* masked axis (a selected row, or a
  selected column).

Masks are artifacts: :meth:`ChannelMask.save` writes ``NAME.safetensors`` (one bool vector per
tensor and axis, plus the per-entry vectors and the scores of the selected units) and
``NAME.json`` (counts per layer and per module kind); :meth:`ChannelMask.load` reads it back,
and the loaded mask re-applies without the statistics that produced it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from actlang.arch.adapters import ChannelSpace, Entry, Hook, TensorPart, parse_entry_key
from actlang.arch.errors import RuntimeUserError
from actlang.run.checkpoint import Checkpoint

__all__ = ["ChannelMask"]

FORMAT = "channel-mask/1"


def _tkey(name: str, axis: int) -> str:
    return f"{name}@{axis}"


def _split_tkey(k: str) -> tuple[str, int]:
    name, axis = k.rsplit("@", 1)
    return name, int(axis)



def moving_axes(name: str, axes: Mapping[int, torch.Tensor],
                shape: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """The masks of ``axes`` (bool per index along an axis of tensor ``name``) that select
    anything, each checked to fit ``shape``."""
    out = {}
    for axis, m in axes.items():
        if not bool(m.any()):
            continue
        if axis >= len(shape) or m.numel() > shape[axis]:
            raise RuntimeUserError(
                f"the mask does not fit tensor {name}: {m.numel()} entries along axis {axis}, "
                f"tensor shape {list(shape)}",
                hint="the mask was made for another model",
            )
        out[axis] = m
    return out


class ChannelMask:
    """A selection of channels of one model, per entry and per tensor axis."""

    def __init__(
        self,
        channels: Mapping[str, torch.Tensor],
        inputs: Mapping[str, torch.Tensor] | None = None,
        tensors: Mapping[str, Mapping[int, torch.Tensor]] | None = None,
        *,
        scores: Mapping[str, Mapping[int, torch.Tensor]] | None = None,
        space: ChannelSpace | None = None,
        meta: Mapping[str, Any] | None = None,
        sizes: Mapping[str, int] | None = None,
    ) -> None:
        self.channels = {k: v.to(torch.bool).cpu() for k, v in channels.items()}
        self.inputs = {k: v.to(torch.bool).cpu() for k, v in (inputs or {}).items()}
        self.space = space
        self.meta: dict[str, Any] = dict(meta or {})
        self.sizes = dict(sizes or {k: int(v.numel()) for k, v in self.channels.items()})
        if tensors is None:
            if space is None:
                raise ValueError("a ChannelMask needs either tensor masks or a channel space")
            tensors, scores = _tensor_masks(space, self.channels, self.inputs, None, None)
        self.tensors = {n: {a: m.to(torch.bool).cpu() for a, m in ax.items()} for n, ax in tensors.items()}
        self.scores = {n: dict(ax) for n, ax in (scores or {}).items()}

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_channels(
        cls,
        space: ChannelSpace,
        channels: Mapping[str, torch.Tensor],
        inputs: Mapping[str, torch.Tensor] | None = None,
        *,
        channel_scores: Mapping[str, torch.Tensor] | None = None,
        input_scores: Mapping[str, torch.Tensor] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> "ChannelMask":
        """Build tensor masks from per-entry selections. ``channel_scores`` (per entry,
        one value per channel) and ``input_scores`` (per entry, one per input feature) become
        the element scores used by the ``max_score`` overlap policy."""
        for k, v in channels.items():
            if v.numel() != space[k].size:
                raise RuntimeUserError(f"mask for {k} has {v.numel()} channels, the module has {space[k].size}")
        tensors, scores = _tensor_masks(space, channels, inputs or {}, channel_scores, input_scores)
        return cls(channels, inputs, tensors, scores=scores, space=space, meta=meta,
                   sizes={e.key: e.size for e in space})

    @classmethod
    def full(cls, space: ChannelSpace, entries: Iterable[Entry] | None = None,
             meta: Mapping[str, Any] | None = None) -> "ChannelMask":
        """Every channel of ``entries`` (default: every entry of the space)."""
        ents = list(space if entries is None else entries)
        return cls.from_channels(space, {e.key: torch.ones(e.size, dtype=torch.bool) for e in ents},
                                 meta={"selection": "full", **(meta or {})})

    @classmethod
    def empty(cls, space: ChannelSpace) -> "ChannelMask":
        return cls.from_channels(space, {}, meta={"selection": "empty"})

    # -- queries --------------------------------------------------------------------------

    @property
    def n_channels(self) -> int:
        """Selected channels (after tying), over all entries."""
        return int(sum(int(v.sum()) for v in self.channels.values()))

    @property
    def n_inputs(self) -> int:
        return int(sum(int(v.sum()) for v in self.inputs.values()))

    def is_empty(self) -> bool:
        return not any(bool(m.any()) for ax in self.tensors.values() for m in ax.values())

    def selected(self, key: str) -> torch.Tensor:
        """Bool vector over the channels of ``key`` (all false when nothing is selected)."""
        if key in self.channels:
            return self.channels[key]
        size = self.sizes.get(key) or (self.space[key].size if self.space else 0)
        return torch.zeros(size, dtype=torch.bool)

    def tensor_names(self) -> list[str]:
        return [n for n, ax in self.tensors.items() if any(bool(m.any()) for m in ax.values())]

    def element_mask(self, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Bool tensor of ``shape``: elements of tensor ``name`` that move (``None``: none)."""
        axes = self.tensors.get(name)
        if not axes:
            return None
        out: torch.Tensor | None = None
        for axis, m in moving_axes(name, axes, shape).items():
            if m.numel() < shape[axis]:
                m = torch.cat([m, torch.zeros(shape[axis] - m.numel(), dtype=torch.bool)])
            view = [1] * len(shape)
            view[axis] = shape[axis]
            b = m.view(view).expand(shape)
            out = b.clone() if out is None else (out | b)
        return out

    def element_scores(self, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Per element, the highest score of a unit that selected it (``-inf`` elsewhere)."""
        axes = self.scores.get(name)
        if not axes:
            return None
        out = torch.full(shape, float("-inf"), dtype=torch.float64)
        for axis, s in axes.items():
            if s.numel() < shape[axis]:
                s = torch.cat([s, torch.full((shape[axis] - s.numel(),), float("-inf"), dtype=torch.float64)])
            view = [1] * len(shape)
            view[axis] = shape[axis]
            out = torch.maximum(out, s.view(view).expand(shape))
        return out

    def validate(self, ckpt: Checkpoint) -> None:
        """Check that every masked tensor exists in ``ckpt`` with a fitting shape."""
        for name, axes in self.tensors.items():
            if name not in ckpt:
                raise RuntimeUserError(f"the mask names tensor {name}, which is not in {ckpt.path}",
                                       hint="the mask was made for another model")
            shape = ckpt.info(name).shape
            for axis, m in axes.items():
                if axis >= len(shape) or m.numel() > shape[axis]:
                    raise RuntimeUserError(
                        f"the mask does not fit tensor {name}: {m.numel()} entries along axis {axis}, "
                        f"tensor shape {list(shape)}", hint="the mask was made for another model")

    def union(self, other: "ChannelMask") -> "ChannelMask":
        """Channels selected by either mask (scores: the higher)."""
        def merge(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            out = dict(a)
            for k, v in b.items():
                out[k] = out[k] | v if k in out else v
            return out

        tensors: dict[str, dict[int, torch.Tensor]] = {n: dict(ax) for n, ax in self.tensors.items()}
        for n, ax in other.tensors.items():
            for a, m in ax.items():
                cur = tensors.setdefault(n, {}).get(a)
                tensors[n][a] = m if cur is None else cur | m
        scores: dict[str, dict[int, torch.Tensor]] = {n: dict(ax) for n, ax in self.scores.items()}
        for n, ax in other.scores.items():
            for a, s in ax.items():
                cur = scores.setdefault(n, {}).get(a)
                scores[n][a] = s if cur is None else torch.maximum(cur, s)
        return ChannelMask(merge(self.channels, other.channels), merge(self.inputs, other.inputs), tensors,
                           scores=scores, space=self.space or other.space, meta={"selection": "union"},
                           sizes={**other.sizes, **self.sizes})

    __or__ = union

    def summary(self) -> dict[str, Any]:
        """Counts per layer and per module kind (JSON-serializable)."""
        per_layer: dict[str, dict[str, int]] = {}
        per_kind: dict[str, int] = {}
        kind_total: dict[str, int] = {}
        for key, size in self.sizes.items():
            layer, kind = self._layer_kind(key)
            kind_total[kind] = kind_total.get(kind, 0) + size
        for key, v in self.channels.items():
            n = int(v.sum())
            layer, kind = self._layer_kind(key)
            per_kind[kind] = per_kind.get(kind, 0) + n
            if n:
                per_layer.setdefault("global" if layer is None else str(layer), {})[kind] = n
        total = sum(self.sizes.values())
        return {
            "format": FORMAT,
            "model_type": self.space.model_type if self.space else self.meta.get("model_type"),
            "channels_selected": self.n_channels,
            "channels_total": total,
            "fraction": self.n_channels / total if total else 0.0,
            "input_features_selected": self.n_inputs,
            "per_kind": {k: {"selected": per_kind.get(k, 0), "total": t} for k, t in kind_total.items()},
            "per_layer": dict(sorted(per_layer.items(), key=lambda kv: (kv[0] == "global", int(kv[0]) if kv[0].isdigit() else 0))),
            "tensors": {_tkey(n, a): int(m.sum()) for n, ax in self.tensors.items() for a, m in ax.items() if bool(m.any())},
            "meta": self.meta,
        }

    def _layer_kind(self, key: str) -> tuple[int | None, str]:
        """An entry's layer and the kind the summary counts it under: a raw entry (whose
        key names no layer) has its own row, in the layer its module path names."""
        if self.space is not None and key in self.space and self.space[key].kind == "raw":
            return self.space[key].layer, key
        return parse_entry_key(key)

    # -- files ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.safetensors``) and the JSON summary next to it (``.json``)."""
        from actlang.run.output import save_tensors

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.channels.items():
            tensors[f"channels/{k}"] = v.contiguous()
        for k, v in self.inputs.items():
            tensors[f"inputs/{k}"] = v.contiguous()
        for n, ax in self.tensors.items():
            for a, m in ax.items():
                tensors[f"tensors/{_tkey(n, a)}"] = m.contiguous()
        for n, ax in self.scores.items():
            for a, s in ax.items():
                tensors[f"scores/{_tkey(n, a)}"] = s.to(torch.float64).contiguous()
        meta = {
            "actlang": FORMAT,
            "meta": json.dumps(self.meta, sort_keys=True, default=str),
            "sizes": json.dumps(self.sizes),
            "config": json.dumps(self.space.config if self.space else {}, sort_keys=True, default=str),
            # config.json gives every entry but those of module(...) selectors
            "raw_entries": json.dumps([dataclasses.asdict(e) for e in self.space or ()
                                       if e.kind == "raw"]),
        }
        save_tensors(path, tensors, meta)
        summary = path.with_suffix(".json")
        summary.write_text(json.dumps(self.summary(), indent=2, default=str) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ChannelMask":
        from safetensors import safe_open

        path = Path(path)
        if path.suffix != ".safetensors" and not path.exists():
            path = path.with_suffix(".safetensors")
        if not path.is_file():
            raise RuntimeUserError(f"mask file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("actlang") != FORMAT:
                    raise RuntimeUserError(f"{path} is not an actlang channel mask")
                channels, inputs = {}, {}
                tensors: dict[str, dict[int, torch.Tensor]] = {}
                scores: dict[str, dict[int, torch.Tensor]] = {}
                for k in f.keys():
                    group, rest = k.split("/", 1)
                    t = f.get_tensor(k)
                    if group == "channels":
                        channels[rest] = t
                    elif group == "inputs":
                        inputs[rest] = t
                    elif group == "tensors":
                        n, a = _split_tkey(rest)
                        tensors.setdefault(n, {})[a] = t
                    elif group == "scores":
                        n, a = _split_tkey(rest)
                        scores.setdefault(n, {})[a] = t
        except RuntimeUserError:
            raise
        except Exception as err:  # noqa: BLE001
            raise RuntimeUserError(f"cannot read mask file {path}: {err}") from None
        space = _saved_space(json.loads(meta.get("config", "{}")),
                             json.loads(meta.get("raw_entries", "[]")))
        return cls(channels, inputs, tensors, scores=scores, space=space,
                   meta=json.loads(meta.get("meta", "{}")), sizes=json.loads(meta.get("sizes", "{}")))

    def __repr__(self) -> str:
        return (f"ChannelMask({self.n_channels} channels in {len(self.tensor_names())} tensors"
                f"{', ' + str(self.meta.get('budget')) if 'budget' in self.meta else ''})")


def _saved_space(config: dict[str, Any], raw: list[dict[str, Any]]) -> ChannelSpace | None:
    """The channel space a saved mask was made in: its config's entries and its raw ones
    (None when the config gives no space)."""
    if not config:
        return None
    try:
        space = ChannelSpace.from_config(config)
    except RuntimeUserError:
        return None
    if not raw:
        return space
    return ChannelSpace([*space, *map(_raw_entry, raw)], config=space.config,
                        adapter=space.adapter, dims=space.dims, tied=space.tied,
                        naming=space.naming)


def _raw_entry(data: dict[str, Any]) -> Entry:
    """An entry from its saved fields (:func:`dataclasses.asdict`)."""
    def parts(key: str) -> tuple[TensorPart, ...]:
        return tuple(TensorPart(**p) for p in data[key])

    return Entry(**{**data, "parts": parts("parts"), "inputs": parts("inputs"),
                    "hook": Hook(**data["hook"]) if data["hook"] else None})


def _tensor_masks(
    space: ChannelSpace,
    channels: Mapping[str, torch.Tensor],
    inputs: Mapping[str, torch.Tensor],
    scores_by_entry: Mapping[str, torch.Tensor] | None,
    input_scores: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, dict[int, torch.Tensor]]]:
    lengths: dict[tuple[str, int], int] = {}
    for e in space:
        for p in (*e.parts, *e.inputs):
            lengths[(p.name, p.axis)] = max(lengths.get((p.name, p.axis), 0), p.stop)
    tensors: dict[str, dict[int, torch.Tensor]] = {}
    scores: dict[str, dict[int, torch.Tensor]] = {}

    def put(name: str, axis: int, offset: int, sel: torch.Tensor, sc: torch.Tensor | None) -> None:
        n = lengths[(name, axis)]
        m = tensors.setdefault(name, {}).setdefault(axis, torch.zeros(n, dtype=torch.bool))
        m[offset : offset + sel.numel()] |= sel.to(torch.bool)
        if sc is not None:
            s = scores.setdefault(name, {}).setdefault(axis, torch.full((n,), float("-inf"), dtype=torch.float64))
            seg = s[offset : offset + sel.numel()]
            val = torch.where(sel.to(torch.bool), sc.to(torch.float64), torch.full_like(seg, float("-inf")))
            s[offset : offset + sel.numel()] = torch.maximum(seg, val)

    for key, sel in channels.items():
        e = space[key]
        sc = scores_by_entry.get(key) if scores_by_entry else None
        for p in e.parts:
            put(p.name, p.axis, p.offset, sel, sc)
    for key, sel in inputs.items():
        e = space[key]
        for p in e.inputs:
            if sel.numel() != p.size:
                raise RuntimeUserError(f"input mask for {key} has {sel.numel()} entries, the module has {p.size}")
            put(p.name, p.axis, p.offset, sel, input_scores.get(key) if input_scores else None)
    return tensors, scores
