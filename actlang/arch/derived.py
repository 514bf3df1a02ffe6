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

import hashlib
import json
import os
import re
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
    expert_leaves: Mapping[str, str]
    expert_containers: tuple[str, ...]

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

    def hooked(self, kind: str) -> bool:
        """Whether the kind's module output holds its channels token by token."""
        return not self.layer_kinds.get(kind, {}).get("no_hook", False)

    def expert_kind(self, leaf: str) -> str | None:
        """``gate`` / ``up`` / ``down`` for an expert's projection named ``leaf``."""
        return self.expert_leaves.get(leaf)

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
        expert_leaves={leaf: kind.rpartition(".")[2]
                       for kind, leaves in data["experts"]["leaves"].items() for leaf in leaves},
        expert_containers=tuple(data["experts"]["containers"]),
    )


@dataclass(frozen=True)
class ModuleSite:
    """One channel-bearing module found in the tree.

    Attributes:
        path: its module path (state-dict prefix).
        layer: decoder-layer index, or ``None`` outside the layer list.
        relative: its path inside the layer (the full path for global modules).
        form: ``linear``, ``conv1d``, ``embedding``, ``norm`` or ``matrix`` (a module that
            only holds a ``[out, in]`` weight and computes something else with it: a router).
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

    sites: tuple[ModuleSite, ...]
    dims: Mapping[str, int]
    tied: bool
    output_embedding: str | None
    input_embedding: str | None
    checkpoint_names: Mapping[str, str]
    converted: Mapping[str, tuple[int, ...]]
    """Checkpoint tensors that ``save_pretrained`` makes by converting module parameters
    (one per expert from a 3-D expert tensor), with their shapes."""
    seq_axes: Mapping[str, int]
    copied: tuple[str, ...]
    """Modules with parameters that are not channels (MoE experts, routers, custom blocks):
    copied unchanged unless a ``module(...)`` selector names their checkpoint tensors."""
    fused_experts: Mapping[int, str]
    """Per layer, the module holding its experts in 3-D tensors of the layout statistics
    know (``gate_up_proj [E, 2I, H]``, gate rows first; ``down_proj [E, H, I]``; an
    ``act_fn``)."""


def derive(config: Mapping[str, Any], *, directory: str | Path | None = None,
           trust_remote_code: bool = False) -> Derived:
    """Instantiate the model of ``config`` on the meta device and read its structure.

    Args:
        config: the model's ``config.json``.
        directory: the model directory, whose code a remote-code model (``auto_map``) runs.
        trust_remote_code: run that code; without it a remote-code model is refused.

    Raises:
        RuntimeUserError: torch or transformers missing, a model type transformers does not
            know, remote code not allowed, or a model without a recognizable layer list.
    """
    key = json.dumps(config, sort_keys=True, default=str)
    return _derive_cached(key, None if directory is None else str(directory), trust_remote_code)


@lru_cache(maxsize=16)
def _derive_cached(config_json: str, directory: str | None, trust_remote_code: bool) -> Derived:
    try:
        import torch
        import transformers
    except ImportError:
        raise RuntimeUserError(
            "deriving the channel space of an architecture without a curated adapter needs "
            "torch and transformers", hint="pip install torch transformers") from None
    raw = json.loads(config_json)
    try:
        config = _hf_config(raw, directory, trust_remote_code, transformers)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(
                config, trust_remote_code=trust_remote_code)
    except RuntimeUserError:
        raise
    # A config.json that transformers refuses (a field of the wrong type, an unknown
    # activation, an encoder-decoder, a token id outside the vocabulary) fails in whatever
    # way its config or model class checks it: each is a problem with the user's file.
    except Exception as error:  # noqa: BLE001
        reason = " ".join(str(error).split())[:300]
        raise RuntimeUserError(
            f"transformers cannot build a {raw.get('model_type')!r} causal LM from this "
            f"config.json: {type(error).__name__}: {reason}",
            hint="is config.json complete and unedited? the one save_pretrained() writes "
                 "builds") from None
    model.eval()
    text = config.get_text_config()
    dims = _dims(text)
    decoder_path, layers_path, layer_list = decoder_layers(model, dims.get("layers"))
    input_embedding = _module_path(model, model.get_input_embeddings())
    output_embedding = _module_path(model, model.get_output_embeddings())
    sites, copied = _sites(model, decoder_path, layers_path, len(layer_list), output_embedding)
    renamed, converted = _checkpoint_names(model)
    if converted:  # the experts' tensors are channels, saved one per expert
        rules = conventions()
        copied = [p for p in copied if p.rpartition(".")[2] not in rules.expert_containers]
    return Derived(
        sites=tuple(sites), dims=dims,
        tied=_is_tied(model), output_embedding=output_embedding,
        input_embedding=input_embedding, checkpoint_names=renamed, converted=converted,
        seq_axes=_seq_axes(model, sites), copied=tuple(copied),
        fused_experts=_fused_experts(model, layers_path))


def _hf_config(raw: Mapping[str, Any], directory: str | None, trust_remote_code: bool,
               transformers: Any) -> Any:
    """The transformers config of ``raw``: its own class, or — for a remote-code model that
    is trusted — the class its directory's code defines."""
    model_type = raw.get("model_type")
    if raw.get("auto_map") and trust_remote_code:
        if directory is None:
            raise RuntimeUserError(
                "deriving the channel space of a remote-code model needs its files",
                hint="point the model at the directory holding its code")
        return transformers.AutoConfig.from_pretrained(directory, trust_remote_code=True)
    try:
        config_class = transformers.AutoConfig.for_model(model_type).__class__
    except (ValueError, KeyError):
        remote = " (its config names repository code: auto_map)" if raw.get("auto_map") else ""
        raise RuntimeUserError(
            f"transformers does not know the model type {model_type!r}{remote}",
            hint="opt in with trust_remote_code = true if you trust the model's code; "
                 "or a newer transformers may know it") from None
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


def decoder_layers(model: Any, n_layers: int | None) -> tuple[str, str, Any]:
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
    if not isinstance(weight, torch.nn.Parameter):
        return None
    if "norm" in type(module).__name__.lower() and weight.dim() == 1:
        return "norm", weight.shape[0], weight.shape[0]
    if weight.dim() == 2 and len(list(module.parameters(recurse=False))) == 1:
        return "matrix", weight.shape[0], weight.shape[1]  # a router: [experts, hidden]
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


def _fused_experts(model: Any, layers_path: str) -> dict[int, str]:
    """Per layer, the experts module whose 3-D layout statistics can recompute."""
    import torch

    found: dict[int, str] = {}
    prefix = layers_path + "."
    for path, module in model.named_modules():
        gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
        if not path.startswith(prefix) or not hasattr(module, "act_fn") or \
                not all(isinstance(p, torch.nn.Parameter) and p.dim() == 3 for p in (gate_up, down)):
            continue
        experts, double, hidden = gate_up.shape
        if tuple(down.shape) == (experts, hidden, double // 2) and double % 2 == 0:
            found[int(path[len(prefix):].partition(".")[0])] = path
    return found


def _is_tied(model: Any) -> bool:
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None:
        return False
    if outputs.weight is inputs.weight:
        return True
    text = model.config.get_text_config()
    return bool(getattr(text, "tie_word_embeddings", False) or
                getattr(model.config, "tie_word_embeddings", False))


def _checkpoint_names(model: Any) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """What ``save_pretrained`` writes: ``(renamed, converted)``.

    transformers 5 reverts its load-time conversions on save (on meta tensors too). A pure
    renaming keeps the tensor object: ``renamed`` maps such state-dict names to the saved
    ones. Every other saved tensor is made by a conversion (one per expert, split from a
    3-D expert tensor): ``converted`` gives its name and shape.
    """
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # an older transformers saves state-dict names as they are
        return {}, {}
    state = dict(model.state_dict())
    by_id = {id(tensor): name for name, tensor in state.items()}
    try:
        saved = revert_weight_conversion(model, state)
    except Exception:  # noqa: BLE001 — a conversion that cannot run on meta converts nothing we can see
        return {}, {}
    renamed = {by_id[id(t)]: name for name, t in saved.items()
               if id(t) in by_id and by_id[id(t)] != name}
    converted = {name: tuple(t.shape) for name, t in saved.items() if id(t) not in by_id}
    return renamed, converted


def _seq_axes(model: Any, sites: list[ModuleSite]) -> dict[str, int]:
    """Per relative module path, the sequence axis of its output when it is not 1.

    One forward pass on meta tensors, stopped as soon as every per-layer norm's path has
    been seen once (a 70B model runs its first layer only); data-dependent code (MoE
    routing) may stop it earlier, and the modules it reached still count. Layers share
    their modules' axes.
    """
    import torch

    wanted = {site.path: site for site in sites if site.form == "norm" and site.layer is not None}
    if not wanted:
        return {}
    relatives = {site.relative for site in wanted.values()}
    seen: set[str] = set()
    axes: dict[str, int] = {}

    class Enough(Exception):
        """Every norm seen: the rest of the pass would add nothing."""

    def record(path: str):
        def hook(module: Any, args: Any, output: Any) -> None:
            relative = wanted[path].relative
            if torch.is_tensor(output):
                found = [i for i, n in enumerate(output.shape) if n == _PROBE_LENGTH]
                if len(found) == 1 and found[0] != 1:
                    axes.setdefault(relative, found[0])
            seen.add(relative)
            if seen == relatives:
                raise Enough
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


def derive_entries(config: Mapping[str, Any], *, directory: str | Path | None = None,
                   trust_remote_code: bool = False, memo: Path | None = None
                   ) -> tuple[list[Any], dict[str, int], bool, dict[str, str]]:
    """The channel-space entries of a model without a curated adapter (arguments as
    :func:`derive`).

    Args:
        memo: a directory keeping derived spaces as JSON, keyed by the config, the
            conventions and the transformers version: a space derived once is read back
            without importing torch or transformers (planning a 70B config stays fast).
            A type with a shipped template (:mod:`actlang.arch.templates`) that fits the
            config needs neither.

    Returns:
        ``(entries, dims, tied, checkpoint_names)`` for
        :class:`actlang.arch.adapters.ChannelSpace`.
    """
    if not trust_remote_code:
        from actlang.arch.templates import expand

        expanded = expand(config)
        if expanded is not None:
            return _from_json(expanded)
    file = None if memo is None else \
        memo / f"{_memo_key(config, directory, trust_remote_code)}.json"
    if file is not None and file.is_file():
        try:
            return _from_json(json.loads(file.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged memo is derived again and rewritten
    derived = _derive_entries(config, directory, trust_remote_code)
    if file is not None:
        _write_memo(file, _to_json(*derived))
    return derived


def _memo_key(config: Mapping[str, Any], directory: str | Path | None,
              trust_remote_code: bool) -> str:
    """What a derived space depends on: the config, the conventions and this module, the
    transformers version, and — for trusted remote code — the code files themselves."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:
        transformers_version = "none"
    code = sorted((p.name, p.read_text(errors="replace")) for p in Path(directory).glob("*.py")) \
        if trust_remote_code and directory is not None and Path(directory).is_dir() else []
    text = json.dumps([config, trust_remote_code, transformers_version, code,
                       _CONVENTIONS.read_text(), Path(__file__).read_text()],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _write_memo(file: Path, data: dict[str, Any]) -> None:
    """Written whole or not at all: a temporary file renamed into place."""
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, file)


def _to_json(entries: list[Any], dims: dict[str, int], tied: bool,
             names: dict[str, str]) -> dict[str, Any]:
    from dataclasses import asdict

    return {"entries": [asdict(e) for e in entries], "dims": dims, "tied": tied,
            "names": names}


def _from_json(data: dict[str, Any]) -> tuple[list[Any], dict[str, int], bool, dict[str, str]]:
    from actlang.arch.adapters import Entry, Hook, TensorPart

    entries = []
    for e in data["entries"]:
        entries.append(Entry(**{
            **e, "parts": tuple(TensorPart(**p) for p in e["parts"]),
            "inputs": tuple(TensorPart(**p) for p in e["inputs"]),
            "hook": None if e["hook"] is None else Hook(**e["hook"])}))
    return entries, dict(data["dims"]), bool(data["tied"]), dict(data["names"])


def _derive_entries(config: Mapping[str, Any], directory: str | Path | None,
                    trust_remote_code: bool
                    ) -> tuple[list[Any], dict[str, int], bool, dict[str, str]]:
    from actlang.arch.adapters import Entry, Hook, TensorPart, entry_key

    derived = derive(config, directory=directory, trust_remote_code=trust_remote_code)
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
            kind = rules.layer_kind(site.relative) or \
                _expert_module_kind(site.relative, rules) or site.relative
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
            hooked = site.form != "matrix" and rules.hooked(block_kind) and \
                not _in_experts(site.relative, rules)
            entries.append(Entry(
                key=key, layer=site.layer, kind=block_kind, size=size, parts=parts,
                inputs=inputs if rules.takes_inputs(block_kind) else (),
                hook=Hook(site.path, offset, offset + size,
                          derived.seq_axes.get(site.relative, 1)) if hooked else None,
                is_global=is_global, default_excluded=is_global))
    entries += _expert_entries(derived.converted, rules, taken, derived.fused_experts)
    dims = dict(derived.dims)
    up = next((e for e in entries if e.kind == "mlp.up"), None)
    if "intermediate" not in dims and up is not None:  # GPT-2's n_inner: None means 4 * hidden
        dims["intermediate"] = up.size
    return _ordered(entries), dims, derived.tied, dict(names)


_EXPERT_TENSOR = re.compile(r"^(?P<prefix>.*)\.(?P<container>[A-Za-z_]+)\.(?P<expert>\d+)\."
                            r"(?P<leaf>[A-Za-z0-9_]+)\.weight$")
_LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


def _in_experts(relative: str, rules: Conventions) -> bool:
    """A module of one expert (``mlp.experts.3.up_proj``): it sees only routed tokens."""
    return any(f".{c}." in f".{relative}." for c in rules.expert_containers)


def _expert_module_kind(relative: str, rules: Conventions) -> str | None:
    """``mlp.experts.E.<gate|up|down>`` for one expert's own ``Linear`` (a ``ModuleList``
    of experts)."""
    parts = relative.split(".")
    if len(parts) >= 3 and parts[-3] in rules.expert_containers and parts[-2].isdigit():
        role = rules.expert_kind(parts[-1])
        return f"mlp.experts.{parts[-2]}.{role}" if role else None
    return None


def _expert_entries(converted: Mapping[str, tuple[int, ...]], rules: Conventions,
                    taken: set[str], fused: Mapping[int, str]) -> list[Any]:
    """One entry per expert projection that ``save_pretrained`` writes as its own tensor:
    kind ``mlp.experts.E.<gate|up|down>``, channels the tensor's rows (its outputs); hooked
    through the layer's experts module where its layout is known (``fused``)."""
    from actlang.arch.adapters import Entry, Hook, TensorPart, entry_key

    entries = []
    for name, shape in sorted(converted.items(), key=lambda item: _natural(item[0])):
        match, layer = _EXPERT_TENSOR.match(name), _LAYER_INDEX.search(name)
        if match is None or layer is None or len(shape) != 2 or \
                match["container"] not in rules.expert_containers:
            continue
        role = rules.expert_kind(match["leaf"])
        if role is None:
            continue
        kind = f"mlp.experts.{match['expert']}.{role}"
        key = entry_key(int(layer.group(1)), kind)
        if key in taken:
            continue
        taken.add(key)
        index = int(layer.group(1))
        inputs = (TensorPart(name, 1, 0, shape[1]),) if role == "down" else ()
        hook = Hook(fused[index], 0, shape[0], expert=int(match["expert"]), role=role) \
            if index in fused else None
        entries.append(Entry(key=key, layer=index, kind=kind, size=shape[0],
                             parts=(TensorPart(name, 0, 0, shape[0]),), inputs=inputs,
                             hook=hook))
    return entries


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


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

