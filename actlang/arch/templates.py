"""Pre-derived channel spaces: a derived architecture is planned without importing torch.

Deriving a space (:mod:`actlang.arch.derived`) imports torch, transformers and the model's
modelling code, about 5 s on a small machine: more than planning a 70B pair should take. A
template is that derivation done ahead of time for one ``model_type``. Every size in it is a
formula over the config's sizes (``2 * intermediate_size``, ``(heads + 2 * kv) * head_dim``)
and every per-layer name is a pattern over the layer index. Any config of the same
*structure* then expands to the space that derivation would give, with neither import.

Building a template (``python -m actlang.arch.templates [MODEL_TYPE ...]``, which rewrites
``templates/``) derives many small random configs of the type. It keeps the template only if
expanding it gives exactly what derivation gives for each of them, and also for configs that
leave a size out (so the default transformers fills in is known). ``tests/arch`` derives
fresh configs and checks them against the shipped templates.

A config uses a template only when all of these hold:

- the installed transformers is the version the template was derived with, and
  ``derived.py`` and ``conventions.json`` are unchanged;
- the config names no remote code (``auto_map``);
- every key of the config is one of these:
  - a size: hidden, intermediate, heads, kv heads, head_dim, vocab, positions, layers,
    expert sizes;
  - a key that shapes no parameter: token ids, rope settings, dtype, dropout, any float;
  - a per-layer list (``layer_types``) whose values shape no module, of the right length;
  - a key equal to the value the template was derived with.

Any other config is derived as before.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
from fractions import Fraction
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping

__all__ = ["expand", "build", "TEMPLATES"]

TEMPLATES = Path(__file__).resolve().parent / "templates"
_HERE = Path(__file__).resolve().parent

#: Size roles and the config keys that hold them (the first present in the type's default
#: config is the type's key for that role).
ROLES: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "heads": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    "kv": ("num_key_value_heads", "num_kv_heads"),
    "head_dim": ("head_dim",),
    "inter": ("intermediate_size", "n_inner", "ffn_hidden_size"),
    "vocab": ("vocab_size",),
    "positions": ("max_position_embeddings", "n_positions"),
    "moe_inter": ("moe_intermediate_size",),
    "shared_inter": ("shared_expert_intermediate_size",),
}

#: Keys that shape no parameter. Besides these: ``*_token_id``, ``*dropout*`` and floats.
_INERT = frozenset({
    "_name_or_path", "architectures", "dtype", "torch_dtype", "id2label", "label2id",
    "problem_type", "transformers_version", "use_cache", "rope_parameters", "rope_scaling",
    "rope_theta", "partial_rotary_factor", "rotary_pct", "rotary_emb_base", "sliding_window",
    "output_attentions", "output_hidden_states", "return_dict", "chunk_size_feed_forward",
    "tokenizer_class", "task_specific_params", "finetuning_task", "prefix",
    "initializer_range", "hidden_act", "activation_function", "attn_implementation",
})

#: Sizes a missing key takes, as transformers' configs compute them (checked per template:
#: a role whose default is neither this nor the type's constant default is ``required``).
_COMPUTED_DEFAULTS = {"kv": lambda v: v.get("heads"),
                      "head_dim": lambda v: v["hidden"] // v["heads"]
                      if v.get("hidden") and v.get("heads") else None,
                      "inter": lambda v: 4 * v["hidden"] if v.get("hidden") else None}

_SAMPLES = 16   # random configs a template is solved from; each is also a check
_LAYER = "{L}"


# -- use --------------------------------------------------------------------------------


class NotASize(ValueError):
    """A formula that gives no size for these values: the template does not apply."""


def expand(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The derived space of ``config`` from its type's template, in the JSON form of
    :func:`actlang.arch.derived.derive_entries`' memo; ``None`` when no template applies."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or config.get("auto_map"):
        return None
    template = _template(model_type)
    if template is None or template.get("key") != _key():
        return None
    for variant in template["variants"]:
        values = _role_values(variant, config)
        if values is None:
            continue
        try:
            return _instantiate(variant, values)
        except NotASize:  # sizes the samples never had (hidden not a multiple of 16)
            return None
    return None


@lru_cache(maxsize=None)
def _template(model_type: str) -> dict[str, Any] | None:
    """The template file of a type (gzip-compressed JSON: expert entries repeat)."""
    if not model_type.replace("_", "").replace("-", "").isalnum():
        return None  # not a file name of ours
    try:
        return json.loads(gzip.decompress((TEMPLATES / f"{model_type}.json.gz").read_bytes()))
    except (OSError, ValueError, EOFError):
        return None


@lru_cache(maxsize=1)
def _key() -> dict[str, str]:
    """What a template's derivations depended on: the transformers version, and the
    derivation code and conventions (by hash)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:
        transformers_version = "none"
    code = hashlib.sha256()
    for name in ("derived.py", "conventions.json"):
        code.update((_HERE / name).read_bytes())
    return {"transformers": transformers_version, "derivation": code.hexdigest()[:16]}


def _inert(key: str, *values: Any) -> bool:
    return key in _INERT or key.endswith("_token_id") or "dropout" in key or \
        any(isinstance(v, float) for v in values)


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def _role_values(template: Mapping[str, Any], config: Mapping[str, Any]
                 ) -> dict[str, int] | None:
    """The config's sizes by role, or ``None`` when its structure is not the variant's.

    A key the config class does not define is inert unless building the model read it (a
    ``getattr`` with a default): the class keeps it as a plain attribute, and derivation
    would build the same modules with or without it."""
    roles: dict[str, str] = template["roles"]
    by_key = {key: role for role, key in roles.items()}
    base, lists = template["base"], template["per_layer_lists"]
    values: dict[str, int] = {}
    for key, value in config.items():
        if key == "model_type" or key in template["inert"]:
            continue
        if key in by_key:
            if type(value) is not int or value <= 0:
                return None
            values[by_key[key]] = value
        elif key in lists:
            if not isinstance(value, list) or any(v not in lists[key] for v in value):
                return None
        elif key in base:
            if _normal(value) != base[key] and not _inert(key, value, base[key]):
                return None
        elif key in template["probed"] and not _inert(key, value):
            return None
    for role, key in roles.items():
        if role in values:
            continue
        if key in template["required"]:
            return None
        rule = _COMPUTED_DEFAULTS.get(role) if role in template["computed"] else None
        value = rule(values) if rule else template["defaults"][role]
        if type(value) is not int:
            return None
        values[role] = value
    for key, value in config.items():
        if key in lists and len(value) != values["layers"]:
            return None
    # Every sample had whole heads (hidden a multiple of heads, heads of kv heads), so a
    # formula may read hidden where the model computes heads * (hidden // heads): a config
    # without whole heads is derived instead.
    heads, kv, hidden = values.get("heads"), values.get("kv"), values.get("hidden")
    if heads and (hidden and hidden % heads or kv and heads % kv):
        return None
    return values


def _quantities(values: Mapping[str, int]) -> dict[str, int]:
    """The sizes formulas are written over: each role, and the products and quotients
    attention layouts are made of."""
    q = {"1": 1, **values}
    heads, kv, hidden, head_dim = (values.get(r) for r in ("heads", "kv", "hidden", "head_dim"))
    if heads and head_dim:
        q["heads*head_dim"] = heads * head_dim
        if kv:
            q["kv*head_dim"] = kv * head_dim
    if heads and hidden:
        q["hidden//heads"] = hidden // heads
        if kv:
            q["kv*hidden//heads"] = kv * (hidden // heads)
    return q


def _instantiate(template: Mapping[str, Any], values: Mapping[str, int]) -> dict[str, Any]:
    q = _quantities(values)
    layer_entries = [_fill(e, q, layer) for layer in range(values["layers"])
                     for e in template["layer"]]
    names = {_fill(k, q, layer): _fill(v, q, layer) for layer in range(values["layers"])
             for k, v in template["names_layer"]}
    names.update({k: v for k, v in template["names_global"]})
    return {"entries": layer_entries + [_fill(e, q, None) for e in template["global"]],
            "dims": {k: _fill(v, q, None) for k, v in template["dims"].items()},
            "tied": template["tied"], "names": names}


def _fill(node: Any, q: Mapping[str, int], layer: int | None) -> Any:
    """A template node with its formulas evaluated and its layer patterns filled."""
    if isinstance(node, str):
        return node.replace(_LAYER, str(layer)) if layer is not None else node
    if isinstance(node, list):
        return [_fill(n, q, layer) for n in node]
    if isinstance(node, dict):
        if "=" in node:  # a formula: sum(coefficient * quantity) / denominator
            total = sum(Fraction(c) * q[name] for name, c in node["="])
            if total.denominator != 1 or total < 0:
                raise NotASize(f"{node} gives {total}")
            return int(total)
        return {k: layer if v == _LAYER and k == "layer" else _fill(v, q, layer)
                for k, v in node.items()}
    return node


# -- build ------------------------------------------------------------------------------


class NoTemplate(Exception):
    """Why a type gets no template (derivation is then the only way)."""


def build(model_type: str, *, seed: int = 0) -> dict[str, Any]:
    """Derive random small configs of ``model_type`` and generalize them into a template:
    the type's default structure, and one variant per boolean flag that changes modules
    (``tie_word_embeddings``, ``attention_bias``, ...) flipped, each also with the sizes
    the default leaves unset set.

    Raises:
        NoTemplate: the default structure cannot be generalized (not derivable, layers
            that differ, a size that follows no formula the samples agree on).
    """
    from transformers import AutoConfig

    rng = random.Random(seed)
    base = _normal(AutoConfig.for_model(model_type).to_dict())
    first = _variant(base, rng)
    flips = [{}] + [{key: not base[key]} for key in sorted(first["base"])
                    if type(base[key]) is bool]
    # A size the default leaves unset (Falcon's num_kv_heads, Mixtral's head_dim) is a
    # size in configs that set it: each structure also gets a variant with them set.
    unset = {keys[0]: 1 for keys in ROLES.values() if keys[0] in base and base[keys[0]] is None}
    variants = [first]
    for flip in flips:
        for sizes in ([{}, unset] if unset else [{}]):
            if not flip and not sizes:
                continue
            try:
                variants.append(_variant({**base, **flip, **sizes}, rng))
            except NoTemplate:
                pass  # configs of that structure are derived
    return {"model_type": model_type, "key": _key(), "variants": variants}


def _variant(base: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The template of the configs whose structure is ``base``'s."""
    found = {role: next((k for k in keys if type(base.get(k)) is int), None)
             for role, keys in ROLES.items()}
    roles = {role: key for role, key in found.items() if key is not None}
    if "layers" not in roles:
        raise NoTemplate("no layer count in the config")
    n_layers = base[roles["layers"]]
    # Per-layer lists (``layer_types``): samples draw each layer's value from the default
    # list's values, so a list that shapes modules makes layers differ (no template) and one
    # that does not may hold any of its values.
    lists = {key: sorted(set(map(json.dumps, value)))
             for key, value in base.items()
             if isinstance(value, list) and len(value) == n_layers and n_layers > 1}
    lists = {key: [json.loads(v) for v in values] for key, values in lists.items()}
    structural = {k: v for k, v in base.items()
                  if k not in roles.values() and k not in lists and not _inert(k, v)
                  and k != "model_type"}
    template: dict[str, Any] = {
        "roles": roles, "per_layer_lists": lists, "base": structural,
        "defaults": {role: base[key] for role, key in roles.items()},
        "required": [], "computed": [], "inert": [], "probed": []}

    samples, read = [], set()
    for _ in range(_SAMPLES * 3):
        values = _sample(rng, roles)
        derived = _derive(_sample_config(base, template, values, rng=rng), read)
        if derived is not None:
            samples.append((values, derived))
        if len(samples) == _SAMPLES:
            break
    if len(samples) < _SAMPLES:
        raise NoTemplate(f"only {len(samples)} of {_SAMPLES * 3} random configs derive")
    _generalize_into(template, samples)
    for values, derived in samples:
        if _instantiate(template, values) != derived:
            raise NoTemplate("the template does not reproduce its own samples")
    template["probed"] = sorted(n for n in read - base.keys() if not n.startswith("_"))
    _learn_defaults(template, base, rng)
    _learn_inert(template, base, rng)
    return template


def _sample(rng: random.Random, roles: Mapping[str, str]) -> dict[str, int]:
    """Small sizes, independent of each other where the config lets them be (no size is the
    probe length derivation looks for, 13)."""
    kv = rng.choice([1, 2, 4]) if "kv" in roles else None
    heads = (kv or 1) * rng.choice([1, 2, 3]) if kv else rng.choice([2, 3, 4, 6])
    head_dim = rng.choice([8, 16, 24, 32])
    values = {"hidden": heads * head_dim * rng.choice([1, 2]), "heads": heads,
              "layers": rng.choice([2, 3]), "head_dim": head_dim,
              "inter": rng.randrange(16, 160, 4), "vocab": rng.randrange(128, 512, 4),
              "positions": rng.randrange(64, 256, 4), "moe_inter": rng.randrange(8, 64, 4),
              "shared_inter": rng.randrange(8, 96, 4)}
    if kv:
        values["kv"] = kv
    return {role: values[role] for role in roles}


def _sample_config(base: Mapping[str, Any], template: Mapping[str, Any],
                   values: Mapping[str, int], *, rng: random.Random,
                   drop: str | None = None) -> dict[str, Any]:
    config = {k: v for k, v in base.items()}
    for role, key in template["roles"].items():
        config[key] = values[role]
    for key, allowed in template["per_layer_lists"].items():
        config[key] = [rng.choice(allowed) for _ in range(values["layers"])]
    for key, value in base.items():  # token ids must lie inside the small vocabulary
        if key.endswith("_token_id") and value is not None:
            config[key] = [1] * len(value) if isinstance(value, list) else 1
    if drop is not None:
        config.pop(drop, None)
    return config


def _derive(config: Mapping[str, Any], read: set[str] | None = None) -> dict[str, Any] | None:
    """What derivation gives for ``config`` (``None`` if it cannot build); ``read`` collects
    the config attributes building the model looked up."""
    from transformers import PreTrainedConfig

    from actlang.arch.derived import _derive_cached, _derive_entries, _to_json

    _derive_cached.cache_clear()  # every attribute read happens again
    original = PreTrainedConfig.__getattribute__

    def recording(self: Any, name: str) -> Any:
        if read is not None:
            read.add(name)
        return original(self, name)

    PreTrainedConfig.__getattribute__ = recording  # type: ignore[method-assign]
    try:
        return _normal(_to_json(*_derive_entries(config, None, False)))
    except Exception:  # noqa: BLE001 — a sample that does not build
        return None
    finally:
        PreTrainedConfig.__getattribute__ = original  # type: ignore[method-assign]


def _generalize_into(template: dict[str, Any], samples: list[tuple[dict, dict]]) -> None:
    """Pattern each sample's layers over the layer index, then solve every integer across
    the samples as a formula over their sizes."""
    tokens = _layer_tokens(samples[0][1])
    shapes = [_layer_pattern(derived, values["layers"], tokens) for values, derived in samples]
    quantities = [_quantities(values) for values, _ in samples]
    general = _generalize(shapes, quantities, "")
    template.update(general)


def _layer_tokens(derived: Mapping[str, Any]) -> set[str]:
    """The names the layer index follows in module paths (``layers``, ``h``, ``blocks``):
    the tokens before the one that reads ``0`` in layer 0's entries and ``1`` in layer 1's."""
    first = [e for e in derived["entries"] if e["layer"] == 0]
    second = [e for e in derived["entries"] if e["layer"] == 1]
    if len(first) != len(second) or not first:
        raise NoTemplate("layers 0 and 1 differ in their modules")
    found: set[str] = set()

    def walk(a: Any, b: Any) -> None:
        if isinstance(a, str) and isinstance(b, str):
            ta, tb = a.split("."), b.split(".")
            if len(ta) == len(tb):
                found.update(ta[i - 1] for i in range(1, len(ta))
                             if ta[i] == "0" and tb[i] == "1")
        elif isinstance(a, dict) and isinstance(b, dict):
            for k in a.keys() & b.keys():
                walk(a[k], b[k])
        elif isinstance(a, list) and isinstance(b, list):
            for x, y in zip(a, b):
                walk(x, y)

    walk(first, second)
    return found


def _pattern(text: str, layer: int, tokens: set[str]) -> str:
    parts = text.split(".")
    return ".".join(_LAYER if i and p == str(layer) and parts[i - 1] in tokens else p
                    for i, p in enumerate(parts))


def _layer_of(text: str, tokens: set[str]) -> int | None:
    parts = text.split(".")
    found = {int(p) for i, p in enumerate(parts) if i and p.isdigit() and parts[i - 1] in tokens}
    return found.pop() if len(found) == 1 else None


def _layer_pattern(derived: Mapping[str, Any], n_layers: int, tokens: set[str]
                   ) -> dict[str, Any]:
    """One sample as ``layer`` (layer 0's entries as patterns; every layer must read the
    same), ``global``, ``names_layer``, ``names_global``, ``dims`` and ``tied``."""

    def patterned(node: Any, layer: int) -> Any:
        if isinstance(node, str):
            return _pattern(node, layer, tokens)
        if isinstance(node, list):
            return [patterned(n, layer) for n in node]
        if isinstance(node, dict):
            return {k: _LAYER if k == "layer" else patterned(v, layer) for k, v in node.items()}
        return node

    per_layer = [[patterned(e, layer) for e in derived["entries"] if e["layer"] == layer]
                 for layer in range(n_layers)]
    if any(entries != per_layer[0] for entries in per_layer):
        raise NoTemplate("the decoder layers differ in their modules")
    ordered = [e for layer in range(n_layers) for e in derived["entries"] if e["layer"] == layer]
    if ordered + [e for e in derived["entries"] if e["layer"] is None] != derived["entries"]:
        raise NoTemplate("entries are not in layer order")
    names_layer: list[list[list[str]]] = [[] for _ in range(n_layers)]
    names_global = []
    for k, v in sorted(derived["names"].items()):
        layer = _layer_of(k, tokens)
        if layer is None:
            names_global.append([k, v])
        else:
            names_layer[layer].append([_pattern(k, layer, tokens), _pattern(v, layer, tokens)])
    if any(names != names_layer[0] for names in names_layer):
        raise NoTemplate("the decoder layers' checkpoint names differ")
    return {"layer": per_layer[0], "global": [e for e in derived["entries"] if e["layer"] is None],
            "names_layer": names_layer[0], "names_global": names_global,
            "dims": derived["dims"], "tied": derived["tied"]}


def _generalize(nodes: list[Any], quantities: list[dict[str, int]], where: str) -> Any:
    first = nodes[0]
    if type(first) is int and all(type(n) is int for n in nodes):
        return _formula(nodes, quantities, where)
    if isinstance(first, dict) and all(isinstance(n, dict) and n.keys() == first.keys()
                                       for n in nodes):
        return {k: _generalize([n[k] for n in nodes], quantities, f"{where}.{k}")
                for k in first}
    if isinstance(first, list) and all(isinstance(n, list) and len(n) == len(first)
                                       for n in nodes):
        return [_generalize([n[i] for n in nodes], quantities, f"{where}[{i}]")
                for i in range(len(first))]
    if all(n == first for n in nodes):
        return first
    raise NoTemplate(f"{where or 'the space'} differs between configs of one structure")


def _formula(values: list[int], quantities: list[dict[str, int]], where: str) -> Any:
    """The sparsest rational combination of the quantities that gives ``values`` in every
    sample: a plain int when it is a constant."""
    names = [n for n in quantities[0] if all(n in q for q in quantities)]
    for size in (1, 2, 3):
        for support in combinations(names, size):
            coefficients = _solve(support, values, quantities)
            if coefficients is None:
                continue
            if support == ("1",):
                return int(coefficients[0])
            return {"=": [[n, str(c)] for n, c in zip(support, coefficients) if c]}
    raise NoTemplate(f"{where}: no formula over the config's sizes fits")


def _solve(support: tuple[str, ...], values: list[int], quantities: list[dict[str, int]]
           ) -> list[Fraction] | None:
    """Coefficients that fit every sample exactly, from the first independent rows."""
    rows = [[Fraction(q[n]) for n in support] for q in quantities]
    picked: list[int] = []
    for i in range(len(rows)):
        if _rank([rows[j] for j in picked + [i]]) > len(picked):
            picked.append(i)
        if len(picked) == len(support):
            break
    if len(picked) < len(support):
        return None
    coefficients = _gauss([rows[i] for i in picked], [Fraction(values[i]) for i in picked])
    if any(sum(c * x for c, x in zip(coefficients, row)) != v for row, v in zip(rows, values)):
        return None
    return coefficients


def _rank(rows: list[list[Fraction]]) -> int:
    return len(_echelon([row[:] for row in rows]))


def _echelon(rows: list[list[Fraction]]) -> list[list[Fraction]]:
    result: list[list[Fraction]] = []
    for row in rows:
        for pivot in result:
            lead = next(i for i, x in enumerate(pivot) if x)
            if row[lead]:
                factor = row[lead] / pivot[lead]
                row = [a - factor * b for a, b in zip(row, pivot)]
        if any(row):
            result.append(row)
    return result


def _gauss(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    n = len(matrix)
    augmented = [row[:] + [value] for row, value in zip(matrix, rhs)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if augmented[r][col])
        augmented[col], augmented[pivot] = augmented[pivot], augmented[col]
        for r in range(n):
            if r != col and augmented[r][col]:
                factor = augmented[r][col] / augmented[col][col]
                augmented[r] = [a - factor * b for a, b in zip(augmented[r], augmented[col])]
    return [augmented[i][n] / augmented[i][i] for i in range(n)]


def _learn_defaults(template: dict[str, Any], base: Mapping[str, Any],
                    rng: random.Random) -> None:
    """For each size a config may leave out: which default transformers gives it — the
    computed one (kv heads = heads; head_dim = hidden // heads; intermediate = 4 * hidden),
    the type's constant, or
    neither (then the key is ``required``)."""
    for role, key in template["roles"].items():
        if role == "layers":
            template["required"].append(key)
            continue
        values = _sample(rng, template["roles"])
        derived = _derive(_sample_config(base, template, values, rng=rng, drop=key))
        candidates = []
        if role in _COMPUTED_DEFAULTS:
            candidates.append(("computed", _COMPUTED_DEFAULTS[role](values)))
        candidates.append(("constant", template["defaults"][role]))
        for how, value in candidates:
            if derived is not None and type(value) is int and \
                    _instantiate_or_none(template, {**values, role: value}) == derived:
                if how == "computed":
                    template["computed"].append(role)
                break
        else:
            template["required"].append(key)


def _instantiate_or_none(template: Mapping[str, Any], values: Mapping[str, int]
                         ) -> dict[str, Any] | None:
    try:
        return _instantiate(template, values)
    except NotASize:
        return None


def _learn_inert(template: dict[str, Any], base: Mapping[str, Any],
                 rng: random.Random) -> None:
    """Flags and counts of the structure that shape no module (``max_window_layers``, a
    flag read only in the forward pass): changed one at a time, derivation gives the same
    space in samples of two and three layers. Such keys may then hold any value."""
    for key, value in sorted(template["base"].items()):
        if type(value) is bool:
            changes = [not value]
        elif type(value) is int:
            changes = [value + 1, value * 2 + 3]
        else:
            continue
        inert = True
        for layers in (2, 3):
            values = {**_sample(rng, template["roles"]), "layers": layers}
            config = _sample_config(base, template, values, rng=rng)
            expected = _instantiate_or_none(template, values)
            if expected is None or _derive(config) != expected:
                inert = False
            for change in changes:
                if _derive({**config, key: change}) != expected:
                    inert = False
        if inert:
            template["inert"].append(key)
            del template["base"][key]


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    from actlang.arch.adapters import _curated_adapter

    parser = argparse.ArgumentParser(description="Rebuild actlang/arch/templates/.")
    parser.add_argument("types", nargs="*", help="model types (default: every causal LM "
                        "type transformers knows that has no curated adapter)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    types = args.types or [t for t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                           if _curated_adapter({"model_type": t}) is None]
    TEMPLATES.mkdir(exist_ok=True)
    for model_type in types:
        file = TEMPLATES / f"{model_type}.json.gz"
        try:
            template = build(model_type)
        except NoTemplate as reason:
            file.unlink(missing_ok=True)
            print(f"{model_type:28} none: {reason}", flush=True)
            continue
        except Exception as error:  # noqa: BLE001 — a type transformers cannot build at all
            file.unlink(missing_ok=True)
            print(f"{model_type:28} none: {type(error).__name__}: {str(error)[:120]}",
                  flush=True)
            continue
        text = json.dumps(template, separators=(",", ":"), sort_keys=True)
        file.write_bytes(gzip.compress(text.encode(), mtime=0))
        first = template["variants"][0]
        print(f"{model_type:28} {len(first['layer'])} per layer, {len(first['global'])} global;"
              f" {len(template['variants'])} variants; inert: {', '.join(first['inert'])}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
