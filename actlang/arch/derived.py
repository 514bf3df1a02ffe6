"""Channel spaces derived from a model's own module tree, for architectures without a
curated adapter.

The model is instantiated from ``config.json`` alone on the ``meta`` device (no weights read,
no memory), so a 70B config costs what importing its modeling code costs. Then:

- the decoder layers are the ``ModuleList`` of the text decoder (``get_decoder()``) holding
  ``num_hidden_layers`` blocks; the layer index of a module is its index in that list;
- ``Linear`` (and subclasses), GPT-2 ``Conv1D``, ``Embedding`` and norm modules become
  channels; everything else is copied unchanged;
- kinds come from module-name conventions kept as data (``conventions.json``): a module
  that matches none keeps its path inside the layer as its kind (``self_attn.q_a_proj``);
- fused projections are split by the config's sizes where their layout is known (Phi-3
  ``qkv_proj``, GPT-2 ``c_attn``, ``gate_up_proj``) and otherwise stay one kind;
- checkpoint names are the ones ``save_pretrained`` writes (transformers renames some
  modules on save), and tied output embeddings point at the input embedding's rows;
- where a hook's sequence axis is not 1 (per-head norms applied after a transpose), one
  forward pass on ``meta`` tensors records it.

torch and transformers are imported inside :func:`derive_entries` only: the rest of
:mod:`actlang.arch` stays importable without them, and a curated architecture never needs
them to be planned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from actlang.arch.errors import RuntimeUserError

__all__ = ["Conventions", "Derived", "ModuleSite", "conventions", "derive", "derive_entries"]

_CONVENTIONS = Path(__file__).resolve().parent / "conventions.json"
# A sequence length no model dimension is likely to equal, so the hooked output's sequence
# axis is the one axis of this size.
_PROBE_LENGTH = 13


@dataclass(frozen=True)
class Conventions:
    """The naming conventions of ``conventions.json``, read once."""

    containers: Mapping[str, tuple[str, ...]]
    layer_kinds: Mapping[str, Mapping[str, Any]]
    global_kinds: Mapping[str, tuple[str, ...]]
    fused_layouts: Mapping[str, Mapping[str, Any]]
    dims: Mapping[str, str]

    def layer_kind(self, relative: str) -> str | None:
        """The canonical kind of a module at ``relative`` inside a decoder layer, if any."""
        container, _, leaf = relative.rpartition(".")
        for kind, rule in self.layer_kinds.items():
            if leaf in rule["leaves"] and container in self.containers[rule["in"]]:
                return kind
        return None

    def global_kind(self, name: str) -> str | None:
        leaf = name.rpartition(".")[2]
        return next((kind for kind, leaves in self.global_kinds.items() if leaf in leaves), None)

    def takes_inputs(self, kind: str) -> bool:
        return bool(self.layer_kinds.get(kind, {}).get("inputs", False))

    def split(self, kind: str, leaf: str, size: int, dims: Mapping[str, int]
              ) -> list[tuple[str, int, int]] | None:
        """``(kind, offset, size)`` blocks of a fused module whose layout is known and whose
        blocks fill it exactly; ``None`` otherwise (the module stays one kind)."""
        from actlang.arch.adapters import _eval_expr

        layout = self.fused_layouts.get(kind)
        if layout is None or leaf not in layout["leaves"]:
            return None
        blocks, offset = [], 0
        for block_kind, expr in layout["blocks"]:
            try:
                block = _eval_expr(expr, dims)
            except ValueError:
                return None
            if not block:
                return None
            blocks.append((block_kind, offset, block))
            offset += block
        return blocks if offset == size else None


@lru_cache(maxsize=1)
def conventions() -> Conventions:
    data = json.loads(_CONVENTIONS.read_text())
    return Conventions(
        containers={k: tuple(v) for k, v in data["containers"].items()},
        layer_kinds=data["layer_kinds"],
        global_kinds={k: tuple(v) for k, v in data["global_kinds"].items()},
        fused_layouts=data["fused_layouts"],
        dims=data["dims"],
    )


@dataclass(frozen=True)
class ModuleSite:
    """One channel-bearing module found in the tree.

    Attributes:
        path: its module path (state-dict prefix).
        layer: decoder-layer index, or ``None`` outside the layer list.
        relative: its path inside the layer (the full path for global modules).
        form: ``linear``, ``conv1d``, ``embedding`` or ``norm``.
        out_features / in_features: its output channels and input features.
        bias: whether it has a bias.
    """

    path: str
    layer: int | None
    relative: str
    form: str
    out_features: int
    in_features: int
    bias: bool


@dataclass(frozen=True)
class Derived:
    """What derivation learned of one config: the modules, the dims, tying and naming."""

    model_type: str
    sites: tuple[ModuleSite, ...]
    dims: Mapping[str, int]
    tied: bool
    output_embedding: str | None
    input_embedding: str | None
    checkpoint_names: Mapping[str, str]
    seq_axes: Mapping[str, int]
    copied: tuple[str, ...]
    """Modules with parameters that are not channels (MoE experts, routers, custom blocks):
    copied unchanged unless a ``module(...)`` selector names their checkpoint tensors."""


def derive(config: Mapping[str, Any], *, trust_remote_code: bool = False) -> Derived:
    """Instantiate the model of ``config`` on the meta device and read its structure.

    Raises:
        RuntimeUserError: torch or transformers missing, a model type transformers does not
            know, remote code not allowed, or a model without a recognizable layer list.
    """
    key = json.dumps(config, sort_keys=True, default=str)
    return _derive_cached(key, trust_remote_code)


@lru_cache(maxsize=16)
def _derive_cached(config_json: str, trust_remote_code: bool) -> Derived:
    try:
        import torch
        import transformers
    except ImportError:
        raise RuntimeUserError(
            "deriving the channel space of an architecture without a curated adapter needs "
            "torch and transformers", hint="pip install torch transformers") from None
    config = _hf_config(json.loads(config_json), trust_remote_code, transformers)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            config, trust_remote_code=trust_remote_code)
    model.eval()
    text = config.get_text_config()
    dims = _dims(text)
    decoder_path, layers_path, layer_list = _layer_list(model, dims.get("layers"))
    input_embedding = _module_path(model, model.get_input_embeddings())
    output_embedding = _module_path(model, model.get_output_embeddings())
    sites, copied = _sites(model, decoder_path, layers_path, len(layer_list), output_embedding)
    tied = _is_tied(model)
    return Derived(
        model_type=str(config.model_type), sites=tuple(sites), dims=dims, tied=tied,
        output_embedding=output_embedding, input_embedding=input_embedding,
        checkpoint_names=_checkpoint_names(model), seq_axes=_seq_axes(model, sites),
        copied=tuple(copied))


def _hf_config(raw: Mapping[str, Any], trust_remote_code: bool, transformers: Any) -> Any:
    model_type = raw.get("model_type")
    if raw.get("auto_map") and trust_remote_code:
        raise RuntimeUserError(
            "deriving the channel space of a remote-code model needs its files: plan it "
            "from its directory", hint="point the model at a directory holding its code")
    try:
        config_class = transformers.AutoConfig.for_model(model_type).__class__
    except (ValueError, KeyError):
        raise RuntimeUserError(
            f"transformers does not know the model type {model_type!r}",
            hint="a newer transformers may; or the model needs trust_remote_code = true") from None
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version")}
    return config_class.from_dict(fields)


def _dims(text_config: Any) -> dict[str, int]:
    """The config's standard sizes, where it has them (the attribute maps of transformers'
    configs turn ``n_embd`` into ``hidden_size``)."""
    from actlang.arch.adapters import _eval_expr

    names = {}
    for attribute in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size"):
        value = getattr(text_config, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            names[attribute] = value
    dims: dict[str, int] = {}
    for name, expr in conventions().dims.items():
        value = _eval_expr(expr, {**names, **dims})
        if value is not None:
            dims[name] = value
    return dims


def _layer_list(model: Any, n_layers: int | None) -> tuple[str, str, Any]:
    """``(decoder path, layer-list path, layer list)``: the ``ModuleList`` of layers inside
    ``get_decoder()``, of the config's length (the longest list when the config does not
    say)."""
    import torch

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    decoder_path = _module_path(model, decoder) or ""
    lists = [(name, module) for name, module in decoder.named_modules()
             if isinstance(module, torch.nn.ModuleList) and len(module) > 0]
    fitting = [item for item in lists if n_layers is None or len(item[1]) == n_layers]
    if not fitting:
        raise RuntimeUserError(
            f"cannot find the decoder layers of this {model.config.model_type} model "
            f"({n_layers} layers in config.json)",
            hint='name modules directly: module("model.layers.*.mlp.up_proj", axis = 0)')
    name, module = max(fitting, key=lambda item: (len(item[1]), -item[0].count(".")))
    return decoder_path, ".".join(p for p in (decoder_path, name) if p), module


def _module_path(model: Any, target: Any) -> str | None:
    if target is None:
        return None
    return next((name for name, module in model.named_modules() if module is target), None)


def _form(module: Any) -> tuple[str, int, int] | None:
    """``(form, out_features, in_features)`` of a channel-bearing module, else ``None``."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return "linear", module.out_features, module.in_features
    if isinstance(module, Conv1D):
        return "conv1d", module.nf, module.weight.shape[0]
    if isinstance(module, torch.nn.Embedding):
        return "embedding", module.embedding_dim, module.num_embeddings
    weight = getattr(module, "weight", None)
    if "norm" in type(module).__name__.lower() and weight is not None and weight.dim() == 1:
        return "norm", weight.shape[0], weight.shape[0]
    return None


def _sites(model: Any, decoder_path: str, layers_path: str, n_layers: int,
           output_embedding: str | None) -> tuple[list[ModuleSite], list[str]]:
    """The channel-bearing modules of the text decoder (and the output embedding), and the
    paths of the decoder's other modules with parameters. Modules outside the decoder (a
    vision tower, a projector) are neither: they are copied unchanged."""
    sites: list[ModuleSite] = []
    copied: list[str] = []
    layer_prefix = layers_path + "."
    for path, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        inside = not decoder_path or path.startswith(decoder_path + ".")
        if not inside and path != output_embedding:
            continue
        layer, relative = None, path
        if path.startswith(layer_prefix):
            index, _, relative = path[len(layer_prefix):].partition(".")
            layer = int(index)
            assert layer < n_layers, (path, n_layers)
        form = _form(module)
        if form is None:
            copied.append(path)
            continue
        kind, out_features, in_features = form
        sites.append(ModuleSite(path, layer, relative, kind, out_features, in_features,
                                getattr(module, "bias", None) is not None))
    return sites, copied


def _is_tied(model: Any) -> bool:
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None:
        return False
    if outputs.weight is inputs.weight:
        return True
    text = model.config.get_text_config()
    return bool(getattr(text, "tie_word_embeddings", False) or
                getattr(model.config, "tie_word_embeddings", False))


def _checkpoint_names(model: Any) -> dict[str, str]:
    """State-dict name → the name ``save_pretrained`` writes, for renamed tensors only.

    transformers 5 reverts its load-time conversions on save; a pure renaming keeps the
    tensor object, which is how a renamed tensor is recognised. Tensors converted (split,
    fused) on save are not renamings: they are left out, and stay copied unchanged.
    """
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # an older transformers saves state-dict names as they are
        return {}
    state = dict(model.state_dict())
    by_id = {id(tensor): name for name, tensor in state.items()}
    try:
        saved = revert_weight_conversion(model, state)
    except Exception:  # noqa: BLE001 — a conversion that cannot run on meta renames nothing we can see
        return {}
    return {by_id[id(tensor)]: name for name, tensor in saved.items()
            if id(tensor) in by_id and by_id[id(tensor)] != name}


def _seq_axes(model: Any, sites: list[ModuleSite]) -> dict[str, int]:
    """Per relative module path, the sequence axis of its output when it is not 1.

    One forward pass on meta tensors; data-dependent code (MoE routing) may stop it early,
    and the modules it reached still count. Layers share their modules' axes.
    """
    import torch

    wanted = {site.path: site for site in sites if site.form == "norm" and site.layer is not None}
    axes: dict[str, int] = {}

    def record(path: str):
        def hook(module: Any, args: Any, output: Any) -> None:
            if torch.is_tensor(output):
                found = [i for i, n in enumerate(output.shape) if n == _PROBE_LENGTH]
                if len(found) == 1 and found[0] != 1:
                    axes.setdefault(wanted[path].relative, found[0])
        return hook

    modules = dict(model.named_modules())
    handles = [modules[path].register_forward_hook(record(path)) for path in wanted]
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(1, _PROBE_LENGTH, dtype=torch.long, device="meta"))
    except Exception:  # noqa: BLE001 — see the docstring: a partial pass is still evidence
        pass
    finally:
        for handle in handles:
            handle.remove()
    return axes


def derive_entries(config: Mapping[str, Any], *, trust_remote_code: bool = False
                   ) -> tuple[list[Any], dict[str, int], bool, dict[str, str]]:
    """The channel-space entries of a model without a curated adapter.

    Returns:
        ``(entries, dims, tied, checkpoint_names)`` for
        :class:`actlang.arch.adapters.ChannelSpace`.
    """
    from actlang.arch.adapters import Entry, Hook, TensorPart, entry_key

    derived = derive(config, trust_remote_code=trust_remote_code)
    rules = conventions()
    names = derived.checkpoint_names

    def tensor(module: str, param: str) -> str:
        state = f"{module}.{param}"
        return names.get(state, state)

    entries: list[Entry] = []
    taken: set[str] = set()
    for site in derived.sites:
        if site.path == derived.output_embedding:
            entries.append(_lm_head(site, derived, tensor))
            continue
        if site.layer is None:
            kind = rules.global_kind(site.relative) or site.relative
        else:
            kind = rules.layer_kind(site.relative) or site.relative
        if entry_key(site.layer, kind) in taken:
            kind = site.relative  # a second module of one kind keeps its own name
        axis = 1 if site.form in ("conv1d", "embedding") else 0
        weight = tensor(site.path, "weight")
        leaf = site.relative.rpartition(".")[2]
        blocks = rules.split(kind, leaf, site.out_features, derived.dims) or \
            [(kind, 0, site.out_features)]
        inputs = (TensorPart(weight, 1 - axis, 0, site.in_features),) \
            if site.form in ("linear", "conv1d") else ()
        for block_kind, offset, size in blocks:
            parts = (TensorPart(weight, axis, offset, size),)
            if site.bias:
                parts += (TensorPart(tensor(site.path, "bias"), 0, offset, size),)
            is_global = site.form in ("norm", "embedding")
            key = entry_key(site.layer, block_kind)
            taken.add(key)
            entries.append(Entry(
                key=key, layer=site.layer, kind=block_kind, size=size, parts=parts,
                inputs=inputs if rules.takes_inputs(block_kind) else (),
                hook=Hook(site.path, offset, offset + size,
                          derived.seq_axes.get(site.relative, 1)),
                is_global=is_global, default_excluded=is_global))
    dims = dict(derived.dims)
    up = next((e for e in entries if e.kind == "mlp.up"), None)
    if "intermediate" not in dims and up is not None:  # GPT-2's n_inner: None means 4 * hidden
        dims["intermediate"] = up.size
    return _ordered(entries), dims, derived.tied, dict(names)


def _lm_head(site: ModuleSite, derived: Derived, tensor: Any) -> Any:
    """The output embedding: channel ``r`` is vocabulary row ``r`` — of the input embedding
    when the two are tied (the checkpoint may hold only that one)."""
    from actlang.arch.adapters import Entry, Hook, TensorPart

    if derived.tied and derived.input_embedding:
        parts = (TensorPart(tensor(derived.input_embedding, "weight"), 0, 0, site.out_features),)
    else:
        parts = (TensorPart(tensor(site.path, "weight"), 0, 0, site.out_features),)
        if site.bias:
            parts += (TensorPart(tensor(site.path, "bias"), 0, 0, site.out_features),)
    return Entry(key="lm_head", layer=None, kind="lm_head", size=site.out_features,
                 parts=parts, hook=Hook(site.path, 0, site.out_features),
                 default_excluded=True)


def _ordered(entries: list[Any]) -> list[Any]:
    """The order curated spaces have: layers ascending, each with its canonical kinds in the
    conventions' order, then the global kinds, then ``lm_head``; kinds named after their
    modules follow the canonical ones in module order (the sort is stable)."""
    rules = conventions()
    rank = {kind: i for i, kind in enumerate([*rules.layer_kinds, *rules.global_kinds,
                                              "lm_head"])}
    return sorted(entries, key=lambda e: (e.layer is None, e.layer or 0,
                                          rank.get(e.kind, len(rank))))

