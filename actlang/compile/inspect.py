"""``actc inspect``: a model's channel space, as a user checks it before spending GPU time.

A model is named by a path (a model directory, its ``config.json``, a ``.gguf`` file), by a
zoo name (``zoo.base``), or by its name in a spec. Only configs and headers are read::

    info = inspect_model(resolve_target("models/olmo2-7b"))
    print(render_inspection(info))     # or json.dumps(info)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actlang.arch.adapters import ChannelSpace, Entry, read_config
from actlang.arch.errors import RuntimeUserError
from actlang.arch.gguf import read_gguf_header
from actlang.compile.cache import Cache
from actlang.compile.render import human_count
from actlang.compile.resolve import ZooRef, built_zoo, gguf_file, model_directory
from actlang.lang import program as P

__all__ = ["Target", "inspect_model", "render_inspection", "resolve_target"]


@dataclass(frozen=True)
class Target:
    """What to inspect: a name for the report and the config to read."""

    name: str
    config: dict[str, Any]
    trust_remote_code: bool = False
    directory: Path | None = None


def resolve_target(target: str, *, spec_models: tuple[P.ModelSpec, ...] | None = None,
                   cache: Cache | None = None, zoo_profile: str = "default",
                   trust_remote_code: bool = False) -> Target:
    """The config of ``target``: a spec's model name (when ``spec_models`` is given), an
    existing path, or ``zoo.NAME`` (a model of the built zoo of ``zoo_profile``).

    Raises:
        RuntimeUserError: nothing of that name, an unbuilt zoo, an unconverted non-llama
            GGUF file, a directory without config.json.
    """
    cache = cache or Cache(None)
    if spec_models is not None:
        by_name = {m.name: m for m in spec_models}
        model = by_name.get(target) or by_name.get(f"zoo.{target}")
        if model is None:
            raise RuntimeUserError(f"the spec declares no model {target!r}",
                                   hint="its models: " + ", ".join(sorted(by_name)))
        return _spec_model(model, cache, trust_remote_code or model.trust_remote_code)
    path = Path(target)
    if path.exists():
        return Target(str(path), _path_config(path), trust_remote_code, _directory(path))
    if target.startswith("zoo."):
        manifest = built_zoo(ZooRef(zoo_profile, 0), cache)
        try:
            directory = manifest.model_path(target[len("zoo."):])
        except KeyError as error:
            raise RuntimeUserError(str(error.args[0])) from None
        return Target(target, _path_config(directory), trust_remote_code, directory)
    raise RuntimeUserError(f"no model at {target!r}",
                           hint="name a model directory, a config.json, a .gguf file, "
                                "zoo.NAME, or a model of a spec with --spec")


def _spec_model(model: P.ModelSpec, cache: Cache, trust_remote_code: bool) -> Target:
    if model.source == "gguf":
        directory = model_directory(model, cache)
        source = directory if directory is not None else gguf_file(model)
        return Target(model.name, _path_config(source), trust_remote_code)
    directory = model_directory(model, cache)
    if directory is None:
        raise RuntimeUserError(f"{model.name} is a zoo model and its zoo is not built",
                               hint="`actc run` builds it, or `actc zoo build`")
    return Target(model.name, _path_config(directory), trust_remote_code, directory)


def _directory(path: Path) -> Path | None:
    """The model directory a path names (a remote-code model's code lives there)."""
    return path if path.is_dir() else path.parent if path.name == "config.json" else None


def _path_config(path: Path) -> dict[str, Any]:
    if path.suffix == ".gguf":
        header = read_gguf_header(path, max_array=0)
        if header.architecture != "llama":
            raise RuntimeUserError(
                f"{path} is a {header.architecture} GGUF file: only llama headers map to a "
                "config without converting", hint="`actc run` converts it into the cache once")
        return header.hf_config()
    return read_config(path)


def inspect_model(target: Target, memo: Path | None = None) -> dict[str, Any]:
    """The channel space of ``target`` as data (what ``--json`` prints); ``memo`` keeps a
    derived space for the plans that follow (:func:`actlang.compile.plan.derived_memo`)."""
    space = ChannelSpace.from_config(target.config, directory=target.directory,
                                     trust_remote_code=target.trust_remote_code, memo=memo)
    shared = _shared_tensors(space)
    kinds: dict[str, list[Entry]] = {}
    for entry in space:
        kinds.setdefault(entry.kind, []).append(entry)
    return {
        "model": target.name,
        "model_type": space.model_type,
        "source": space.source,
        "dims": dict(space.dims),
        "tied_embeddings": space.tied,
        "layers": space.n_layers,
        "channels": {
            "default": sum(e.size for e in space if not e.default_excluded),
            "residual": sum(e.size for e in space if e.is_global),
            "excluded": sum(e.size for e in space if e.default_excluded and not e.is_global),
        },
        "kinds": [_kind(kind, entries, shared) for kind, entries in kinds.items()],
        "residual_stream": sorted({e.kind for e in space if e.is_global}),
        "copied": _copied(target, space),
    }


def _kind(kind: str, entries: list[Entry], shared: dict[str, list[str]]) -> dict[str, Any]:
    first = entries[0]
    layers = sorted({e.layer for e in entries if e.layer is not None})
    sizes = sorted({e.size for e in entries})
    fused = sorted({k for p in first.parts for k in shared.get(p.name, []) if k != first.kind})
    return {
        "kind": kind,
        "modules": len(entries),
        "layers": [layers[0], layers[-1]] if layers else None,
        "channels": sizes[0] if len(sizes) == 1 else sizes,
        "tensors": [{"name": p.name, "axis": p.axis, "offset": p.offset, "size": p.size}
                    for p in first.parts],
        "fused_with": fused,
        "residual": first.is_global,
        "excluded": first.default_excluded,
    }


def _shared_tensors(space: ChannelSpace) -> dict[str, list[str]]:
    """Tensor name → the kinds with channels in it (more than one: a fused tensor)."""
    table: dict[str, list[str]] = {}
    for entry in space:
        for part in entry.parts:
            table.setdefault(part.name, []).append(entry.kind)
    return table


def _copied(target: Target, space: ChannelSpace) -> list[str]:
    """Modules with parameters that are not channels (derived spaces only), as layer-glob
    patterns: ``model.layers.*.mlp.experts``."""
    if not space.derived:
        return []
    from actlang.arch.derived import derive

    derived = derive(target.config, directory=target.directory,
                     trust_remote_code=target.trust_remote_code)
    return sorted({re.sub(r"\.\d+\.", ".*.", path) for path in derived.copied})


def render_inspection(info: dict[str, Any]) -> str:
    """The inspection as an aligned text table."""
    dims = info["dims"]
    lines = [
        f"{info['model']}: {info['model_type']}, channel space {info['source']}",
        "  " + ", ".join(f"{k} {v}" for k, v in dims.items())
        + f"; embeddings {'tied' if info['tied_embeddings'] else 'untied'}",
        f"  channels: {human_count(info['channels']['default'])} selectable by default, "
        f"{human_count(info['channels']['residual'])} residual (only with include_global), "
        f"{human_count(info['channels']['excluded'])} excluded unless named (lm_head)",
        "",
    ]
    header = ("kind", "modules", "layers", "channels", "tensor (first module)", "notes")
    rows = [header]
    for kind in info["kinds"]:
        layers = "-" if kind["layers"] is None else f"{kind['layers'][0]}..{kind['layers'][1]}"
        part = kind["tensors"][0]
        where = part["name"] + (f" [{part['offset']}:{part['offset'] + part['size']}"
                                f" axis {part['axis']}]")
        notes = []
        if kind["fused_with"]:
            notes.append("fused with " + ", ".join(kind["fused_with"]))
        if kind["residual"]:
            notes.append("residual")
        elif kind["excluded"]:
            notes.append("excluded unless named")
        rows.append((kind["kind"], str(kind["modules"]), layers, str(kind["channels"]), where,
                     "; ".join(notes)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
              for row in rows]
    if info["residual_stream"]:
        lines += ["", "  residual-stream kinds (channels shared by every layer): "
                  + ", ".join(info["residual_stream"])]
    if info["copied"]:
        lines += ["", "  not channels (copied unchanged; name their checkpoint tensors with "
                  "module(glob, axis)):"] + [f"    {p}" for p in info["copied"]]
    return "\n".join(lines)
