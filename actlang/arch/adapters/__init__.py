"""Architecture adapters, kept as data, and the channel space of a model.

Each supported family is one small JSON file next to this module (``llama.json``,
``gpt2.json``, ...). It declares, per *canonical kind* of module, where that module lives in
the checkpoint and along which axis of its tensors a channel runs::

    "attn.k": {"module": "self_attn.qkv_proj", "offset": "heads * head_dim",
               "size": "kv_heads * head_dim"}

Fields of a kind (all sizes are expressions over ``dims``, which are read from
``config.json``; ``a | b`` means "a, or b when a is absent"):

``module``       module path (inside ``layer_prefix`` for per-layer kinds). Its tensors are
                 ``<module>.weight`` and, when ``bias`` holds, ``<module>.bias``.
``size``         number of channels (= output units of the module).
``axis``         axis of the weight along which channel ``i`` runs (0 = rows of a Linear
                 ``[out, in]``; 1 for GPT-2 ``Conv1D`` ``[in, out]`` and for the embedding,
                 whose channel is a hidden dimension, i.e. a column of ``[vocab, hidden]``).
``offset``       first index of the kind's sub-block in a fused tensor (Phi-3 ``qkv_proj``,
                 GPT-2 ``c_attn``); the forward hook reads the same slice of the output.
``inputs``       size of the input features (``attn.o``: one block per head; ``mlp.down``:
                 one per neuron) — used by tying; ``in_axis`` gives their axis (default: the
                 other axis).
``bias``         ``true``/``false`` or the name of a boolean config flag (``attention_bias``).
``global``       channels global to the model (residual dimensions, per-head-shared norms):
                 excluded by default, selectable only when named, with a warning.
``excluded``     excluded by default (``lm_head``), without being global.
``seq_axis``     axis of the sequence in the hooked output when it is not 1.
``tied_tensor``  the tensor that holds this kind when the embeddings are tied (``lm_head`` →
                 the embedding; its channel ``r`` is row ``r`` of ``[vocab, hidden]``).

Fields of an adapter besides its kinds: ``config_section`` names a nested config whose keys
override the top-level ones (``text_config`` of a multimodal Gemma 3); ``checkpoint_names``
maps module-path prefixes to the prefixes the checkpoint stores them under, when the two
differ (transformers writes Gemma 3's ``model.language_model.layers.0...`` as
``language_model.model.layers.0...``): entries name checkpoint tensors, hooks name modules,
and :class:`Naming` translates between state-dict and checkpoint names.

Canonical kinds: ``attn.q attn.k attn.v attn.o mlp.gate mlp.up mlp.down``, norms
(``norm.input norm.post_attn norm.pre_ffn norm.post_ffn norm.final attn.q_norm
attn.k_norm``), ``embed`` (``embed.pos`` for GPT-2) and ``lm_head``.

An adapter is chosen by ``config.model_type`` (:func:`get_adapter`), never by a name prefix.
For any other architecture, :class:`RawSelector` is the escape hatch: a glob over checkpoint
module paths plus the channel axis; it needs the safetensors headers (shapes), not weights.

:class:`ChannelSpace` enumerates, from ``config.json`` alone, every (layer, kind) of a model
with its tensors and channel count — the planner's view of a model::

    space = ChannelSpace.from_pretrained("zoo/base")       # reads config.json only
    space["layers.3.mlp.up"].size                            # -> 11008
    space.match(kinds=["mlp.*"], layers=range(4, 28))        # -> [Entry, ...]
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from actlang.arch.bounds import check_config_bounds
from actlang.arch.errors import RuntimeUserError

__all__ = [
    "Adapter",
    "ChannelSpace",
    "Entry",
    "Hook",
    "Naming",
    "RawSelector",
    "TensorPart",
    "get_adapter",
    "supported_model_types",
    "adapters",
    "checkpoint_naming",
    "entry_key",
    "parse_entry_key",
    "read_config",
]

_DATA_DIR = Path(__file__).resolve().parent
RAW_HINT = (
    "name modules directly with the raw escape hatch: module(\"model.layers.*.mlp.up_proj\", "
    "axis = 0) in a spec, or RawSelector(pattern, axis) in Python"
)


# --------------------------------------------------------------------------- expressions


def _eval_expr(expr: str | int, names: Mapping[str, Any]) -> int | None:
    """Evaluate a size expression: ints, names, ``+ - * //`` and ``a | b`` (fallback)."""
    if isinstance(expr, int):
        return expr
    tree = ast.parse(str(expr), mode="eval")

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return names.get(node.id)
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.BitOr):
                left = ev(node.left)
                return left if left is not None else ev(node.right)
            a, b = ev(node.left), ev(node.right)
            if a is None or b is None:
                return None
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.FloorDiv):
                return a // b
        raise ValueError(f"unsupported size expression: {expr!r}")

    value = ev(tree)
    if value is not None and not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"size expression {expr!r} is not an integer: {value!r}")
    return value


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class TensorPart:
    """Where the channels of an entry live in one checkpoint tensor.

    Channel ``i`` of the entry is index ``offset + i`` along ``axis`` of tensor ``name``.
    """

    name: str
    axis: int
    offset: int
    size: int

    @property
    def stop(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Hook:
    """A forward hook site: channel ``i`` is ``output[..., start + i]`` of ``module``.

    The output is ``[batch, seq, ..., features]``; ``seq_axis`` says where the sequence
    axis is when it is not 1 (Gemma 3 normalizes q/k as ``[batch, heads, seq, head_dim]``).

    A mixture-of-experts expert has no output of its own: ``module`` is then the module
    holding every expert in 3-D tensors (``gate_up_proj [E, 2I, H]``, ``down_proj
    [E, H, I]``), ``expert`` the expert's index and ``role`` its projection (``gate``,
    ``up`` or ``down``). Statistics recompute that projection from the module's inputs on
    the tokens routed to the expert.
    """

    module: str
    start: int
    stop: int
    seq_axis: int = 1
    expert: int | None = None
    role: str | None = None


@dataclass(frozen=True)
class Entry:
    """One module kind in one layer (or a model-global one such as ``embed``).

    Attributes:
        key: ``"layers.3.mlp.up"`` for per-layer kinds, the bare kind (``"embed"``) otherwise;
            ``"raw.<tensor>"`` for escape-hatch entries.
        layer: layer index, or ``None`` for global kinds.
        kind: canonical kind (``"mlp.up"``) or ``"raw"``.
        size: number of channels.
        parts: the tensor slices holding channel ``i`` (weight, then bias).
        inputs: the slices of the module's *input* features (``attn.o``, ``mlp.down``);
            used by tying only.
        hook: where forward statistics of the channels are read, or ``None``.
        is_global: channels global to the model (residual dims, shared per-head norms).
        default_excluded: excluded from selection unless named explicitly.
    """

    key: str
    layer: int | None
    kind: str
    size: int
    parts: tuple[TensorPart, ...]
    inputs: tuple[TensorPart, ...] = ()
    hook: Hook | None = None
    is_global: bool = False
    default_excluded: bool = False


def entry_key(layer: int | None, kind: str) -> str:
    return kind if layer is None else f"layers.{layer}.{kind}"


_KEY_RE = re.compile(r"^layers\.(\d+)\.(.+)$")


def parse_entry_key(key: str) -> tuple[int | None, str]:
    m = _KEY_RE.match(key)
    if m:
        return int(m.group(1)), m.group(2)
    return None, key


@dataclass(frozen=True)
class RawSelector:
    """Escape hatch: name checkpoint modules by a glob over their paths, plus an axis.

    ``RawSelector("model.layers.*.mlp.up_proj", axis=0)`` makes every matching
    ``<module>.weight`` a raw entry whose channel ``i`` is index ``i`` along ``axis``; a 1-D
    ``<module>.bias`` of the same length moves with it when ``axis`` is 0. Statistics hook the
    module's output (valid when ``axis`` is the module's output axis, e.g. 0 for ``Linear``).
    """

    pattern: str
    axis: int = 0
    param: str = "weight"


@dataclass(frozen=True)
class Naming:
    """State-dict (module path) names <-> checkpoint tensor names, by prefix rewrites.

    ``prefixes`` holds ``(state prefix, checkpoint prefix)`` pairs; ``names`` whole-name
    pairs, which win (a derived space learns renamings tensor by tensor). A name matching
    none is the same in both: the identity for every family whose checkpoint names are its
    module paths.
    """

    prefixes: tuple[tuple[str, str], ...] = ()
    names: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def _rewrite(name: str, pairs: Iterable[tuple[str, str]]) -> str:
        for old, new in pairs:
            if name.startswith(old):
                return new + name[len(old):]
        return name

    def to_checkpoint(self, name: str) -> str:
        """The checkpoint name of a state-dict (or module path) name."""
        exact = dict(self.names)
        return exact[name] if name in exact else self._rewrite(name, self.prefixes)

    def to_state(self, name: str) -> str:
        """The state-dict (or module path) name of a checkpoint name."""
        exact = {c: s for s, c in self.names}
        return exact[name] if name in exact else \
            self._rewrite(name, ((c, s) for s, c in self.prefixes))


@dataclass(frozen=True)
class Adapter:
    """One architecture family, as loaded from its JSON file."""

    family: str
    model_types: tuple[str, ...]
    doc: str
    dims: Mapping[str, str]
    tied_flag: str
    tied_default: bool
    layer_prefix: str
    layer_kinds: Mapping[str, Mapping[str, Any]]
    global_kinds: Mapping[str, Mapping[str, Any]]
    source: Path = field(compare=False)
    config_section: str | None = None
    naming: Naming = Naming()

    @property
    def kinds(self) -> list[str]:
        return [*self.layer_kinds, *self.global_kinds]

    def effective_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config the adapter reads: top-level keys, overridden by ``config_section``'s."""
        section = config.get(self.config_section) if self.config_section else None
        if self.config_section and not isinstance(section, Mapping):
            raise RuntimeUserError(f"config.json of this {self.family} model has no {self.config_section!r} section",
                                   hint="check that config.json is complete and matches its model_type")
        return {**config, **(section or {})}

    def resolve_dims(self, config: Mapping[str, Any]) -> dict[str, int]:
        names: dict[str, Any] = self.effective_config(config)
        dims: dict[str, int] = {}
        for name, expr in self.dims.items():
            value = _eval_expr(expr, {**names, **dims})
            if value is None:
                raise RuntimeUserError(
                    f"config.json of this {self.family} model lacks what '{name}' needs ({expr})",
                    hint="check that config.json is complete and matches its model_type",
                )
            # Each size the config gives is bounded (arch.bounds); one computed from them can
            # still be 0: a width smaller than the number of heads makes heads of width 0.
            if value < 1:
                raise RuntimeUserError(
                    f"config.json of this {self.family} model makes '{name}' {value} ({expr})",
                    hint="check that config.json is complete and matches its model_type",
                )
            dims[name] = value
        return dims


def _load_adapter(path: Path) -> Adapter:
    data = json.loads(path.read_text())
    tied = data.get("tied", {})
    return Adapter(
        family=data["family"],
        model_types=tuple(data["model_types"]),
        doc=data.get("doc", ""),
        dims=dict(data["dims"]),
        tied_flag=tied.get("flag", "tie_word_embeddings"),
        tied_default=bool(tied.get("default", False)),
        layer_prefix=data["layer_prefix"],
        layer_kinds=dict(data["layer_kinds"]),
        global_kinds=dict(data.get("global_kinds", {})),
        source=path,
        config_section=data.get("config_section"),
        naming=Naming(tuple(data.get("checkpoint_names", {}).items())),
    )


@lru_cache(maxsize=1)
def adapters() -> dict[str, Adapter]:
    """All adapters, keyed by ``model_type`` (several model types may share one file)."""
    table: dict[str, Adapter] = {}
    for path in sorted(_DATA_DIR.glob("*.json")):
        adapter = _load_adapter(path)
        for mt in adapter.model_types:
            assert mt not in table, f"model_type {mt} claimed by two adapters"
            table[mt] = adapter
    return table


def supported_model_types() -> list[str]:
    return sorted(adapters())


def get_adapter(model_type: str | None) -> Adapter:
    """The adapter for ``config.model_type``; a :class:`RuntimeUserError` if there is none."""
    table = adapters()
    if model_type in table:
        return table[model_type]
    raise RuntimeUserError(
        f"unsupported architecture: model_type {model_type!r} has no adapter "
        f"(supported: {', '.join(sorted(table))})",
        hint=RAW_HINT,
    )


def checkpoint_naming(model_or_config: Any) -> Naming:
    """How a model (or a model of this config) names its checkpoint tensors: its adapter's
    naming, what derivation learned without one, the identity for an object without a
    config."""
    config = getattr(model_or_config, "config", model_or_config)
    try:
        config = _config_dict(config)
    except TypeError:
        return Naming()
    adapter = _curated_adapter(config)
    return adapter.naming if adapter else ChannelSpace.from_config(config).naming


def _curated_adapter(config: Mapping[str, Any]) -> Adapter | None:
    """The curated adapter of a config's ``model_type``; None when it has none (or no
    ``model_type``): its space is derived."""
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise RuntimeUserError(f"config.json: `model_type` is {model_type!r}, not a string",
                               hint='model_type names the architecture, e.g. "llama"')
    return adapters().get(model_type)


# --------------------------------------------------------------------------- channel space


def _config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, (str, Path)):
        return read_config(Path(config))
    raise TypeError(f"cannot read a config from {type(config).__name__}")


def read_config(path: Path) -> dict[str, Any]:
    """The JSON object of a model directory's ``config.json`` (or of that file itself).

    Raises:
        RuntimeUserError: no such file, not JSON, or JSON that is not an object.
    """
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise RuntimeUserError(f"no config.json at {path}",
                               hint="a model directory is what save_pretrained() writes")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise RuntimeUserError(f"cannot read {path}: {err.strerror or err}") from None
    # ValueError: not UTF-8, not JSON, or an integer past Python's digit limit;
    # RecursionError: arrays or objects nested thousands deep
    except (ValueError, RecursionError) as err:
        raise RuntimeUserError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise RuntimeUserError(f"{path} does not hold a JSON object",
                               hint="config.json is what save_pretrained() writes")
    return config


def _flag(value: Any, config: Mapping[str, Any]) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return bool(config.get(str(value), False))


_LAYER_RE = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


class ChannelSpace:
    """Every selectable channel of one model: per (layer, kind) the tensors and the size.

    Built from ``config.json`` alone (:meth:`from_config`, :meth:`from_pretrained`); raw
    escape-hatch selectors additionally need tensor shapes (safetensors headers).
    Iterating yields :class:`Entry` objects in a stable order (layers ascending, kinds in
    adapter order, then global kinds, then raw entries).
    """

    def __init__(
        self,
        entries: Iterable[Entry],
        *,
        config: Mapping[str, Any],
        adapter: Adapter | None,
        dims: Mapping[str, int] | None = None,
        tied: bool = False,
        naming: Naming = Naming(),
    ) -> None:
        self._entries: dict[str, Entry] = {}
        for e in entries:
            assert e.key not in self._entries, e.key
            self._entries[e.key] = e
        self.config = dict(config)
        self.adapter = adapter
        self.dims = dict(dims or {})
        self.tied = tied
        self.naming = naming

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        raw: Sequence[RawSelector] = (),
        shapes: Mapping[str, Sequence[int]] | None = None,
        directory: str | Path | None = None,
        trust_remote_code: bool = False,
        memo: Path | None = None,
    ) -> "ChannelSpace":
        """Channel space from a config (dict, ``PretrainedConfig`` or path to config.json).

        ``raw`` selectors need ``shapes`` (tensor name → shape, from safetensors headers).
        A ``model_type`` with a curated adapter is read from its JSON; any other is derived
        from the model's module tree (:mod:`actlang.arch.derived`, which needs torch and
        transformers, and runs remote code — from ``directory`` — only with
        ``trust_remote_code``; ``memo``, a directory, keeps derived spaces).
        """
        cfg = _config_dict(config)
        check_config_bounds(cfg, f"{directory}/config.json" if directory else "config.json")
        adapter = _curated_adapter(cfg)
        if adapter is not None:
            space = cls._curated(adapter, cfg)
        else:
            from actlang.arch.derived import derive_entries

            try:
                entries, dims, tied, names = derive_entries(
                    cfg, directory=directory, trust_remote_code=trust_remote_code, memo=memo)
            except RuntimeUserError:
                if not raw:
                    raise
                entries, dims, tied, names = [], {}, False, {}  # the raw selectors suffice
            space = cls(entries, config=cfg, adapter=None, dims=dims, tied=tied,
                        naming=Naming(names=tuple(sorted(names.items()))))
        if not raw:
            return space
        if shapes is None:
            raise RuntimeUserError(
                "raw selectors need tensor shapes (safetensors headers)",
                hint="use ChannelSpace.from_pretrained(model_dir, raw=...)",
            )
        extra = _raw_entries(raw, shapes, set(space.keys()), space.naming)
        return cls([*space, *extra], config=cfg, adapter=space.adapter, dims=space.dims,
                   tied=space.tied, naming=space.naming)

    @classmethod
    def _curated(cls, adapter: Adapter, cfg: dict[str, Any]) -> "ChannelSpace":
        dims = adapter.resolve_dims(cfg)
        effective = adapter.effective_config(cfg)
        tied = bool(effective.get(adapter.tied_flag, adapter.tied_default))
        entries = []
        for layer in range(dims["layers"]):
            prefix = adapter.layer_prefix.format(layer=layer)
            for kind, spec in adapter.layer_kinds.items():
                entries.append(_make_entry(kind, spec, layer, prefix, dims, effective, tied, adapter.naming))
        for kind, spec in adapter.global_kinds.items():
            entries.append(_make_entry(kind, spec, None, "", dims, effective, tied, adapter.naming))
        return cls(entries, config=cfg, adapter=adapter, dims=dims, tied=tied,
                   naming=adapter.naming)

    @property
    def derived(self) -> bool:
        """Whether the space was derived from the module tree (no curated adapter)."""
        return self.adapter is None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, raw: Sequence[RawSelector] = (),
                        trust_remote_code: bool = False,
                        memo: Path | None = None) -> "ChannelSpace":
        """Channel space of a model directory; reads ``config.json`` (and headers if ``raw``)."""
        path = Path(path)
        if not path.exists():
            raise RuntimeUserError(f"model directory not found: {path}")
        cfg = _config_dict(path)
        shapes = None
        if raw:
            from actlang.arch.safetensors import Headers

            shapes = {name: info.shape for name, info in Headers.open(path).infos.items()}
        return cls.from_config(cfg, raw=raw, shapes=shapes, directory=path,
                               trust_remote_code=trust_remote_code, memo=memo)

    # -- access -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __getitem__(self, key: str) -> Entry:
        try:
            return self._entries[key]
        except KeyError:
            raise RuntimeUserError(f"no module {key!r} in this model") from None

    def keys(self) -> list[str]:
        return list(self._entries)

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def n_layers(self) -> int:
        return int(self.dims.get("layers", 0))

    @property
    def kinds(self) -> list[str]:
        seen: dict[str, None] = {}
        for e in self:
            seen.setdefault(e.kind, None)
        return list(seen)

    def n_channels(self, entries: Iterable[Entry] | None = None) -> int:
        return sum(e.size for e in (self if entries is None else entries))

    def match(
        self,
        kinds: Sequence[str] | None = None,
        layers: Iterable[int] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> list[Entry]:
        """Entries whose kind matches a glob in ``kinds`` (all kinds when ``None``), in
        ``layers`` (global kinds are kept only when ``layers`` is ``None``), and whose kind
        matches no glob in ``exclude``. Default exclusions are *not* applied here; see
        :func:`actlang.run.select.candidate_entries`."""
        layer_set = None if layers is None else set(layers)
        out = []
        for e in self:
            if kinds is not None and not any(_kind_match(e, pat) for pat in kinds):
                continue
            if exclude and any(_kind_match(e, pat) for pat in exclude):
                continue
            if layer_set is not None and (e.layer is None or e.layer not in layer_set):
                continue
            out.append(e)
        return out

    def tensors(self) -> dict[str, list[tuple[Entry, TensorPart]]]:
        """Checkpoint tensor name → the (entry, part) pairs that live in it."""
        table: dict[str, list[tuple[Entry, TensorPart]]] = {}
        for e in self:
            for p in (*e.parts, *e.inputs):
                table.setdefault(p.name, []).append((e, p))
        return table

    def check_tensors(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Verify that every tensor the space names exists with a large enough axis."""
        for e in self:
            for p in (*e.parts, *e.inputs):
                if p.name not in shapes:
                    raise RuntimeUserError(
                        f"tensor {p.name} (for {e.key}) is missing from the checkpoint",
                        hint="the checkpoint does not match its config.json, or the adapter "
                        f"for {self.model_type!r} does not fit it; the raw escape hatch can name modules directly",
                    )
                shape = shapes[p.name]
                if p.axis >= len(shape) or shape[p.axis] < p.stop:
                    raise RuntimeUserError(
                        f"tensor {p.name} has shape {list(shape)}, too small for {e.key} "
                        f"(channels {p.offset}..{p.stop} along axis {p.axis})",
                        hint="config.json does not match the weights",
                    )

    def heads(self) -> tuple[int, int, int]:
        """``(heads, kv_heads, head_dim)``."""
        if not all(name in self.dims for name in ("heads", "kv_heads", "head_dim")):
            raise RuntimeUserError(
                f"config.json of this {self.model_type} model does not give its attention "
                "heads (num_attention_heads, num_key_value_heads, head_dim)",
                hint="use granularity = channel and tie = none")
        return int(self.dims["heads"]), int(self.dims["kv_heads"]), int(self.dims["head_dim"])

    @property
    def source(self) -> str:
        """Where the space comes from, for ``actc inspect`` and the plan."""
        if self.adapter is None:
            return "derived from the module tree"
        return f"curated adapter {self.adapter.family} ({self.adapter.source.name})"

    def describe(self) -> str:
        lines = [f"{self.model_type} ({self.adapter.family if self.adapter else 'derived'}): "
                 f"{len(self)} modules, {self.n_channels()} channels"]
        for kind in self.kinds:
            es = [e for e in self if e.kind == kind]
            lines.append(f"  {kind:16s} x{len(es):<4d} {es[0].size} channels each")
        return "\n".join(lines)


def _kind_match(e: Entry, pattern: str) -> bool:
    if pattern.startswith("raw:"):
        return e.kind == "raw" and fnmatch.fnmatchcase(e.key[4:], pattern[4:])
    return fnmatch.fnmatchcase(e.kind, pattern) or fnmatch.fnmatchcase(e.key, pattern)


def _make_entry(
    kind: str,
    spec: Mapping[str, Any],
    layer: int | None,
    prefix: str,
    dims: Mapping[str, int],
    cfg: Mapping[str, Any],
    tied: bool,
    naming: Naming,
) -> Entry:
    size = _eval_expr(spec["size"], dims)
    offset = _eval_expr(spec.get("offset", 0), dims)
    assert size is not None and offset is not None, (kind, spec)
    axis = int(spec.get("axis", 0))
    module = prefix + spec["module"]
    weight = naming.to_checkpoint(f"{module}.{spec.get('param', 'weight')}")
    if "tied_tensor" in spec and tied:
        # lm_head tied to the embedding [vocab, hidden]: channel r is row r of the embedding.
        parts: tuple[TensorPart, ...] = (TensorPart(naming.to_checkpoint(spec["tied_tensor"]), 0, offset, size),)
    else:
        parts = (TensorPart(weight, axis, offset, size),)
        if _flag(spec.get("bias", False), cfg):
            parts += (TensorPart(naming.to_checkpoint(f"{module}.bias"), 0, offset, size),)
    inputs: tuple[TensorPart, ...] = ()
    if "inputs" in spec:
        n_in = _eval_expr(spec["inputs"], dims)
        assert n_in is not None
        in_axis = int(spec.get("in_axis", 1 - axis))
        inputs = (TensorPart(weight, in_axis, 0, n_in),)
    is_global = bool(spec.get("global", False))
    return Entry(
        key=entry_key(layer, kind),
        layer=layer,
        kind=kind,
        size=size,
        parts=parts,
        inputs=inputs,
        hook=Hook(module, offset, offset + size, int(spec.get("seq_axis", 1))),
        is_global=is_global,
        default_excluded=is_global or bool(spec.get("excluded", False)),
    )


def _raw_entries(
    raw: Sequence[RawSelector], shapes: Mapping[str, Sequence[int]], taken: set[str], naming: Naming
) -> list[Entry]:
    out: list[Entry] = []
    for sel in raw:
        suffix = "." + sel.param
        matched = [
            n for n in shapes
            if n.endswith(suffix) and fnmatch.fnmatchcase(n[: -len(suffix)], sel.pattern)
        ]
        if not matched:
            raise RuntimeUserError(
                f"raw selector {sel.pattern!r} matches no module with a {sel.param!r} tensor",
                hint="module paths look like " + ", ".join(sorted(shapes)[:3]),
            )
        for name in sorted(matched, key=_natural_key):
            module = name[: -len(suffix)]
            shape = tuple(shapes[name])
            if sel.axis >= len(shape):
                raise RuntimeUserError(f"raw selector axis {sel.axis} is out of range for {name} of shape {list(shape)}")
            size = int(shape[sel.axis])
            parts = (TensorPart(name, sel.axis, 0, size),)
            bias = f"{module}.bias"
            if sel.axis == 0 and bias in shapes and tuple(shapes[bias]) == (size,):
                parts += (TensorPart(bias, 0, 0, size),)
            key = f"raw.{module}"
            if key in taken:
                continue
            taken.add(key)
            m = _LAYER_RE.search("." + module + ".")
            out.append(Entry(
                key=key, layer=int(m.group(1)) if m else None, kind="raw", size=size,
                parts=parts, hook=Hook(naming.to_state(module), 0, size),
            ))
    return out


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
