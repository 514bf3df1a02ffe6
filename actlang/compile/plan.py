"""The plan: the optimized graph, what is cached, and what running it will cost.

:func:`make_plan` lowers a checked program, fuses captures, looks up the cache, drops dead
ops and schedules the rest. In *dry-run* mode (``actc plan``) it reads only ``config.json``,
safetensors headers, GGUF headers, tokenizers and corpora — never tensor data — and builds
nothing: a zoo that is not built yet, or a GGUF file not converted yet, is shown as such (a
GGUF model is then planned from its header). In *run* mode it builds the zoo, converts GGUF
files and hashes weights (once; the cache memoizes digests and keeps conversions), so every
cache key is known.

Every selector is resolved against the target's channel space here, so a selector that
matches nothing, a budget larger than what it matches, or two models that do not fit
together is an error before any forward pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from actlang import __version__
from actlang.arch.adapters import ChannelSpace, Entry, RawSelector
from actlang.arch.errors import RuntimeUserError, SelectionWarning
from actlang.arch.files import has_tokenizer, pickle_files, safetensors_files
from actlang.arch.gguf import read_gguf_header
from actlang.arch.registry import MERGE_METHODS, SCORES, ScoreMethod
from actlang.arch.safetensors import Headers, check_compatible
from actlang.arch.selection import UnitGroup, measures_outputs, output_axis, raw_twin
from actlang.compile import ops as O
from actlang.compile.bind import (
    candidate_entries,
    raw_entries,
    raw_selectors,
    runtime_corpus,
    unit_groups,
)
from actlang.compile.cache import CACHE_FORMAT, Cache, digest
from actlang.compile.lower import lower
from actlang.compile.passes import (
    defer_cached,
    drop_cached,
    eliminate_dead_ops,
    fuse_captures,
    last_uses,
    schedule,
)
from actlang.compile.resolve import (
    Builders,
    ensure_converted,
    ensure_zoos,
    gguf_file,
    model_directory,
    model_identity,
    zoo_refs,
)
from actlang.compile.strategy import CaptureStrategy, choose, host_memory
from actlang.lang import program as P
from actlang.lang.ast import Span
from actlang.lang.diagnostics import output_span
from actlang.lang.loader import display_name

PLAN_FORMAT_VERSION = 1
STATS_CONFIG = "hooked-entries/v1"  # captures hook the entries their Statistic.modules names
EVAL_CONFIG = "greedy-exact-match/v2"  # v2: records chosen as the corpus reader chooses them


class PlanError(Exception):
    """A problem with the inputs, located at a span of the spec when one applies: found
    while planning (``E501``) or, with ``code="E502"``, while running an operation."""

    def __init__(self, error: RuntimeUserError, span: Span | None, code: str = "E501"):
        super().__init__(error.message)
        self.error = error
        self.span = span
        self.code = code


@dataclass
class ModelInfo:
    """What the plan knows of a model without reading its weights."""

    spec: P.ModelSpec
    # The model's files: its directory. None: a zoo model not built yet. A GGUF model not
    # converted yet (dry run only; `actc run` converts first) shows its .gguf file here.
    directory: Path | None
    model_type: str | None = None
    parameters: int | None = None
    weight_bytes: int | None = None
    has_weights: bool = False
    largest_tensor: int | None = None  # elements: weight work holds a few of its size
    identity: str | None = None
    space: ChannelSpace | None = None
    gguf: Path | None = None  # the .gguf file of a gguf model

    @property
    def compute_bytes(self) -> int | None:
        """The model's size in memory: its parameters in the dtype it computes in (a bf16
        checkpoint of an ``auto`` model is loaded as float32, twice its file)."""
        if self.parameters is None:
            return None
        return self.parameters * _DTYPE_BYTES[self.spec.compute_dtype]

    @property
    def built(self) -> bool:
        """Whether the model's directory exists (a zoo built, a GGUF file converted)."""
        return self.directory is not None and self.directory != self.gguf

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.directory) if self.directory else None,
                "source": self.spec.source, "architecture": self.model_type,
                "parameters": self.parameters, "weight_bytes": self.weight_bytes,
                "built": self.built, **({"gguf": str(self.gguf)} if self.gguf else {})}


@dataclass
class Estimates:
    forward_passes: int = 0
    tokens: int = 0
    flops: float = 0.0
    peak_memory_bytes: int = 0
    bytes_written: int = 0
    exact: bool = True  # False when some sizes were unknown (e.g. an unbuilt zoo)


@dataclass(frozen=True)
class Selectable:
    """What a selection chooses from: units of its granularity, and the channels they hold."""

    units: int
    channels: int


@dataclass(frozen=True)
class PlanWarning:
    """Something the user may not mean, located at a rule of the spec."""

    message: str
    span: Span | None


@dataclass
class Plan:
    program: P.Program
    graph: nx.DiGraph
    order: list[O.Op]
    cached: set[O.Op]
    models: dict[str, ModelInfo]
    keys: dict[O.Op, str]
    corpus_tokens: dict[tuple, int | None]
    corpus_digests: dict[tuple, str]
    selectable: dict[O.Select, Selectable]  # what each selection chooses from
    estimates: Estimates = field(default_factory=Estimates)
    notes: list[str] = field(default_factory=list)
    warnings: list[PlanWarning] = field(default_factory=list)
    strategies: dict[O.Capture, CaptureStrategy] = field(default_factory=dict)
    max_memory: int | None = None  # the memory limit the strategies were chosen for
    #: Every op the spec asks for, before the cache removed any (``actc plan --all``).
    whole: nx.DiGraph | None = None

    def whole_order(self) -> list[tuple[str, O.Op]]:
        """Every op of the spec in a topological order, each marked ``+`` (runs), ``=``
        (cached) or ``-`` (not needed: what uses it is cached). A capture the cache makes
        smaller shows as the capture that runs."""
        if self.whole is None:
            return [(self.mark(op), op) for op in self.order]
        return [(self.mark(op), self._running(op)) for op in schedule(self.whole)]

    def mark(self, op: O.Op) -> str:
        """``+`` an op that runs, ``=`` one read from the cache, ``-`` one not needed."""
        op = self._running(op)
        return "=" if op in self.cached else "+" if op in self.graph else "-"

    def _running(self, op: O.Op) -> O.Op:
        """The capture that runs in place of a whole-graph capture the cache made smaller."""
        if isinstance(op, O.Capture) and op not in self.graph:
            return next((c for c in self.order if isinstance(c, O.Capture) and
                         (c.corpus, c.tokenizer) == (op.corpus, op.tokenizer)), op)
        return op

    def to_json(self) -> dict[str, Any]:
        ids = {op: O.op_id(op) for op in self.order}
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "actlang_version": __version__,
            "spec": self.program.file,
            "models": {name: info.to_json() for name, info in sorted(self.models.items())},
            "ops": [{"id": ids[op], "kind": op.kind, "label": op.label,
                     "inputs": sorted(ids[p] for p in self.graph.predecessors(op)),
                     "cached": op in self.cached} for op in self.order],
            "estimates": {"forward_passes": self.estimates.forward_passes,
                          "tokens": self.estimates.tokens, "flops": self.estimates.flops,
                          "peak_memory_bytes": self.estimates.peak_memory_bytes,
                          "bytes_written": self.estimates.bytes_written,
                          "exact": self.estimates.exact},
            "notes": self.notes,
            "warnings": [w.message for w in self.warnings],
            "max_memory_bytes": self.max_memory,
            "captures": [{"id": ids[op], "strategy": "streamed" if s.streamed else "in memory",
                          "reason": s.reason, "peak_memory_bytes": s.peak_bytes}
                         for op, s in self.strategies.items() if op in ids],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def lock(self, stdlib_digest: str) -> dict[str, Any]:
        """What pins this run's inputs: model digests and revisions, corpus digests."""
        return {
            "format_version": 1,
            "actlang_version": __version__,
            "stdlib": stdlib_digest,
            "models": {name: {"source": info.spec.source, "location": info.spec.location,
                              "revision": info.spec.revision,
                              "resolved": str(info.directory) if info.directory else None,
                              "digest": info.identity,
                              **({"package": info.spec.package} if info.spec.package else {}),
                              **({"gguf": str(info.gguf)} if info.gguf else {})}
                       for name, info in sorted(self.models.items())},
            "corpora": {f"{O.corpus_label(corpus)} ({tokenizer.name} tokens)": value
                        for (corpus, tokenizer), value in sorted(
                            self.corpus_digests.items(), key=lambda kv: repr(kv[0]))},
        }


# ---- building the plan ------------------------------------------------------------------------


def make_plan(program: P.Program, cache: Cache, *, dry_run: bool = True,
              rebuild: bool = False, builders: Builders | None = None,
              max_memory: int | None = None) -> Plan:
    """Plan a checked program.

    Args:
        program: the checked spec.
        cache: where statistics and evaluations are looked up.
        dry_run: read no tensor data and build nothing (``actc plan``); otherwise build zoo
            models, convert GGUF files and hash weights so that cache keys are exact
            (``actc run``).
        rebuild: redo outputs even when they are up to date (``actc run --force``); cached
            statistics and evaluations are still used.
        builders: in run mode, build the zoos and convert the GGUF files the program names
            that are not in the cache yet (the CLI passes
            :func:`actlang.zoo.build.build_zoo` and :func:`actlang.run.gguf.convert_gguf`).
            Without one, an unbuilt zoo or an unconverted file is an error in run mode.
        max_memory: the memory a capture's models may take together before it is streamed
            a layer at a time (:mod:`actlang.compile.strategy`); default: this machine's.

    Raises:
        PlanError: a problem with the models, data or selection, located in the spec.
    """
    builders = builders or Builders()
    _check_outputs(program, cache, rebuild)
    if not dry_run:
        try:
            ensure_zoos(zoo_refs(program), cache, builders.zoo_builder)
        except RuntimeUserError as error:
            raise PlanError(error, None) from None
    graph = fuse_captures(lower(program))
    models = {m.name: _model_info(m, cache, dry_run, builders) for m in _models(graph)}
    _add_raw_entries(graph, models, cache)
    selectable, rule_warnings = _validate_rules(graph, models)
    corpus_tokens, corpus_digests = _corpora(graph, models, cache, dry_run, program)
    keys = _cache_keys(graph, models, corpus_digests)
    limit = max_memory if max_memory is not None else host_memory()
    strategies = _strategies(graph, models, corpus_tokens, limit, program)
    graph = whole = _stream(graph, strategies)
    graph, cached = drop_cached(graph, lambda op: op in keys and not (
        rebuild and isinstance(op, O.Save)) and _in_cache(cache, op, keys[op]))
    graph = eliminate_dead_ops(graph)
    order = defer_cached(graph, schedule(graph), cached)
    plan = Plan(program, graph, order, cached & set(graph.nodes), models, keys, corpus_tokens,
                corpus_digests, selectable, warnings=rule_warnings,
                strategies={op: s for op, s in strategies.items() if op in graph},
                max_memory=limit, whole=whole)
    plan.estimates = _estimate(plan)
    for op, strategy in plan.strategies.items():
        if strategy.streamed or strategy.reason.startswith("in memory although"):
            how = "streamed a decoder layer at a time" if strategy.streamed else "in memory"
            plan.notes.append(f"{op.label}: {how}: {strategy.reason}")
    for name, info in models.items():
        if info.gguf is not None and not info.built:
            tokenizes = any(tokenizer.name == name for _, tokenizer in corpus_tokens)
            plan.notes.append(_unconverted_note(name, info, tokenizes))
        elif info.directory is None:
            plan.notes.append(f"{name}: the zoo is not built yet; `actc run` builds it "
                              "(or `actc zoo build`)")
        elif not info.has_weights:
            plan.notes.append(f"{name}: only a config at {info.directory} (no weights): "
                              "planning works, running needs the weights")
        elif not has_tokenizer(info.directory):
            plan.notes.append(f"{name}: no tokenizer files in {info.directory}: token counts "
                              "are unknown, and running needs them")
    for save in (op for op in order if isinstance(op, O.Save) and op not in plan.cached):
        output = Path(save.surgery.output)
        if output.exists() or output.is_symlink():
            problem = replace_problem(output)
            plan.notes.append(f"{output} exists: `actc run` replaces it only with --force"
                              if problem is None else
                              f"{output} exists and `actc run` will not replace it: it {problem}")
    return plan


def _models(graph: nx.DiGraph) -> list[P.ModelSpec]:
    found: dict[str, P.ModelSpec] = {}
    for op in graph.nodes:
        for value in vars(op).values():
            if isinstance(value, P.ModelSpec):
                found.setdefault(value.name, value)
        if isinstance(op, O.Transfer):
            for select, _ in op.selections:
                found.setdefault(select.rule.donor.name, select.rule.donor)
        if isinstance(op, O.MergeModels):
            for model in (*op.merge.donors, *filter(None, [op.merge.base])):
                found.setdefault(model.name, model)
    return [found[name] for name in sorted(found)]


def _model_info(spec: P.ModelSpec, cache: Cache, dry_run: bool, builders: Builders) -> ModelInfo:
    try:
        if spec.source == "gguf":
            return _gguf_info(spec, cache, dry_run, builders)
        return _directory_info(spec, model_directory(spec, cache), cache, dry_run)
    except RuntimeUserError as error:
        raise PlanError(error, spec.span) from None


def _gguf_info(spec: P.ModelSpec, cache: Cache, dry_run: bool, builders: Builders) -> ModelInfo:
    """A GGUF model: its converted directory when there is one (run mode converts first),
    else what its header says. The header is read first, so a bad file fails before
    anything is hashed or converted."""
    file = gguf_file(spec)
    header = read_gguf_header(file, max_array=0)  # validates; skips the vocabulary
    directory = model_directory(spec, cache) if dry_run else \
        ensure_converted(spec, cache, builders.gguf_converter)
    if directory is not None:
        info = _directory_info(spec, directory, cache, dry_run)
        info.gguf = file
        return info
    parameters = sum(math.prod(t.shape) for t in header.tensors.values())
    info = ModelInfo(spec, file, model_type=header.architecture, parameters=parameters,
                     weight_bytes=4 * parameters, has_weights=True, gguf=file,
                     identity=model_identity(spec, None, cache, compute=False))
    if header.architecture == "llama":  # the only one whose header maps to a config here
        info.space = ChannelSpace.from_config(header.hf_config())
        info.model_type = info.space.model_type
    return info


def _unconverted_note(name: str, info: ModelInfo, tokenizes: bool) -> str:
    what = ["planned from its header" if info.space is not None else
            f"a {info.model_type} file: the planner reads only llama headers, so its channels "
            "are checked once it is converted"]
    if tokenizes:
        what.append("its tokenizer comes with the conversion: token counts are unknown "
                    "until then")
    return (f"{name}: {info.gguf} is not converted yet; `actc run` converts it once into the "
            f"cache ({'; '.join(what)})")


def derived_memo(cache: Cache) -> Path:
    """Where derived channel spaces are kept (:func:`actlang.arch.derived.derive_entries`):
    a derived space is derived once, then read back without importing torch."""
    return cache.root / "derived"


def _directory_info(spec: P.ModelSpec, directory: Path | None, cache: Cache,
                    dry_run: bool) -> ModelInfo:
    """A model with a directory (or a zoo model not built yet: ``directory`` None)."""
    info = ModelInfo(spec, directory)
    if directory is None:
        return info
    if not (directory / "config.json").is_file():
        raise RuntimeUserError(f"no config.json in {directory}",
                               hint="a model directory is what save_pretrained() writes")
    _check_remote_code(spec, directory)
    info.space = ChannelSpace.from_pretrained(directory, trust_remote_code=spec.trust_remote_code,
                                              memo=derived_memo(cache))
    info.model_type = info.space.model_type
    info.parameters, info.weight_bytes, info.has_weights, info.largest_tensor = \
        _size(directory, info.space, spec.allow_pickle)
    if info.has_weights:
        info.identity = model_identity(spec, directory, cache, compute=not dry_run)
    elif not dry_run:
        raise RuntimeUserError(f"{directory} has a config but no safetensors weights",
                               hint="`actc plan` works on a config alone; running "
                               "needs the weights")
    return info


def _check_remote_code(spec: P.ModelSpec, directory: Path) -> None:
    """A config or tokenizer config that names repository code (``auto_map``) is refused
    unless the model opts in: actlang never runs a model's own code by default."""
    if spec.trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # missing here; an unreadable config.json is reported where it is read
        if isinstance(data, dict) and data.get("auto_map"):
            raise RuntimeUserError(
                f"{directory / name} names code of the model's repository (auto_map), "
                f"which actlang does not run unless the model `{spec.name}` opts in",
                hint="read that code first; to run it, declare the model with "
                "`trust_remote_code = true`")


def _size(directory: Path, space: ChannelSpace, allow_pickle: bool
          ) -> tuple[int, int, bool, int | None]:
    """(parameters, weight bytes, has weights, elements of the largest tensor): exact from
    safetensors headers, or estimated from the channel space for a directory holding only a
    config or (allowed) pickle files, which are not unpickled to plan (the largest tensor
    is then taken to be the embedding). Pickle files the spec does not allow are an error."""
    if safetensors_files(directory) or (pickle_files(directory) and not allow_pickle):
        infos = Headers.open(directory).infos.values()  # refuses pickle files
        return (sum(i.numel for i in infos), sum(i.nbytes for i in infos), True,
                max((i.numel for i in infos), default=0))
    parameters = config_parameters(space)
    dtype = space.config.get("dtype") or space.config.get("torch_dtype") or "float32"
    dims = space.dims
    embedding = dims["vocab"] * dims["hidden"] if dims.get("vocab") and dims.get("hidden") \
        else None
    return parameters, parameters * _DTYPE_BYTES.get(str(dtype), 4), \
        bool(pickle_files(directory)), embedding


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def config_parameters(space: ChannelSpace) -> int:
    """Parameter count of the tensors a channel space names, from its sizes alone.

    A tensor's length along its channel axis is the largest channel index any entry puts
    there (fused tensors hold several entries); the other axis is the entry's input size
    (attn.o, mlp.down), the vocabulary / positions for embeddings, the hidden size for other
    projections, and 1 for norms and biases.
    """
    length: dict[str, int] = {}
    width: dict[str, int] = {}
    hidden = int(space.dims.get("hidden", 0))
    positions = int(space.config.get("n_positions") or
                    space.config.get("max_position_embeddings") or 0)
    for entry in space:
        for index, part in enumerate(entry.parts):
            length[part.name] = max(length.get(part.name, 0), part.stop)
            if index > 0 or "norm" in entry.kind:
                width[part.name] = 1
            elif entry.inputs:
                width[part.name] = sum(p.size for p in entry.inputs)
            elif entry.kind == "embed":
                width[part.name] = int(space.dims.get("vocab", 0))
            elif entry.kind == "embed.pos":
                width[part.name] = positions
            else:
                width.setdefault(part.name, hidden)
    return sum(length[name] * width[name] for name in length)


def _validate_rules(graph: nx.DiGraph, models: dict[str, ModelInfo]
                    ) -> tuple[dict[O.Select, Selectable], list[PlanWarning]]:
    """Resolve each rule's selector against the target and count its units exactly as the
    run will (one function for both); check donors fit the target. Warnings (residual
    channels in a selection) are collected, each located at its rule."""
    selectable: dict[O.Select, Selectable] = {}
    found: list[PlanWarning] = []
    for op in _selects(graph):
        rule = op.rule
        target, donor = models[op.scores.target.name], models[rule.donor.name]
        if target.space is None:
            continue  # zoo not built: resolved when it is
        try:
            _check_pair(target, donor)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SelectionWarning)
                entries = candidate_entries(target.space, rule)
                for info in (target, donor):
                    _check_raw_axes(rule, info)
                _check_raw_units(rule, entries)
                _check_scorable(rule, target.space, entries)
                groups = unit_groups(target.space, rule, entries)
                selectable[op] = Selectable(units=sum(g.n_units for g in groups),
                                            channels=sum(g.n_channels for g in groups))
                _warn_count_meant_as_share(rule.budget, selectable[op].units)
                _warn_down_rows_beside_neurons(groups)
        except RuntimeUserError as error:
            raise PlanError(error, rule.span) from None
        for warning in caught:
            entry = PlanWarning(str(warning.message), rule.span)
            if entry not in found:
                found.append(entry)
    return selectable, found


def _warn_count_meant_as_share(budget: P.Budget, units: int) -> None:
    """``budget = 3`` selects three units; next to thousands of candidates, ``3%`` was
    almost surely meant."""
    count = budget.value
    if budget.kind != "count" or budget.scope != "global" or count > 100 or \
            units == 0 or count >= 0.01 * units:
        return
    shown = f"{count:g}"
    warnings.warn(f"`budget = {shown}` selects {shown} of {units:,} candidate units "
                  f"({100 * count / units:.2g} %); a share is written with %: "
                  f"`budget = {shown}%`", SelectionWarning, stacklevel=2)


def _warn_down_rows_beside_neurons(groups: list[UnitGroup]) -> None:
    """At ``granularity = neuron`` a neuron moves its gate and up rows and its down column;
    a down projection among the candidates is ranked by its own rows as well, and each of
    those rows crosses every neuron of its layer (a specialist's row also carries the other
    neurons' parent values)."""
    neurons = {g.name.removesuffix("neuron") for g in groups if g.kind == "neuron"}
    rows = [g.name for g in groups
            if g.kind == "channel" and g.name.endswith(".down")
            and g.name.removesuffix("down") in neurons]
    if rows:
        more = f" and {len(rows) - 1} more" if len(rows) > 1 else ""
        warnings.warn(f"at granularity = neuron each neuron moves its down column, and the "
                      f"rows of {rows[0]}{more} are ranked as units of their own, each "
                      f"crossing every neuron of its layer; to rank neurons only, leave the "
                      f"down projections out (`channels = mlp.gate + mlp.up`)",
                      SelectionWarning, stacklevel=2)


def _selects(graph: nx.DiGraph) -> list[O.Select]:
    """The graph's selections, in a stable order (errors name the same rule every time)."""
    return sorted((op for op in graph.nodes if isinstance(op, O.Select)), key=O.op_id)


def _add_raw_entries(graph: nx.DiGraph, models: dict[str, ModelInfo], cache: Cache) -> None:
    """Give each model's channel space the raw entries of every ``module(...)`` selector a
    rule names on it, as target or donor (from safetensors headers, no tensor data).

    Raises:
        PlanError: at the rule, a selector that matches no module or names an axis its
            tensors lack, or a model without safetensors headers to read.
    """
    wanted: dict[str, dict[RawSelector, None]] = {}
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for op in _selects(graph):
        for name in dict.fromkeys((op.scores.target.name, op.rule.donor.name)):
            info = models[name]
            if info.space is None:
                continue  # a zoo not built yet: bound once it is
            for selector in raw_selectors(op.rule):
                if selector in wanted.setdefault(name, {}):
                    continue
                try:
                    if name not in shapes:
                        shapes[name] = _tensor_shapes(info)
                    _check_raw_selector(selector, shapes[name], name)
                except RuntimeUserError as error:
                    raise PlanError(error, op.rule.span) from None
                wanted[name][selector] = None
    for name, selectors in wanted.items():
        if selectors:
            info = models[name]
            assert info.space is not None
            info.space = ChannelSpace.from_config(
                info.space.config, raw=list(selectors), shapes=shapes[name],
                directory=info.directory, trust_remote_code=info.spec.trust_remote_code,
                memo=derived_memo(cache))


def _tensor_shapes(info: ModelInfo) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor name -> shape, from the model's safetensors headers."""
    if not info.built or not safetensors_files(info.directory):
        raise RuntimeUserError(
            f"module(...) selectors read tensor shapes from safetensors headers, and the "
            f"model `{info.spec.name}` has none ({info.directory})",
            hint="`actc run` converts a GGUF file first; plan it then" if info.gguf else
            "module(...) needs the model's weights as .safetensors files")
    return {name: tuple(i.shape) for name, i in Headers.open(info.directory).infos.items()}


def _check_raw_selector(selector: RawSelector, shapes: dict[str, tuple[int, ...]],
                        model: str) -> None:
    """A ``module(...)`` selector matches a module with a weight, along an axis it has."""
    suffix = "." + selector.param
    modules = [n.removesuffix(suffix) for n in shapes if n.endswith(suffix)]
    matched = [m for m in modules if fnmatch.fnmatchcase(m, selector.pattern)]
    if not matched:
        close = difflib.get_close_matches(selector.pattern, modules, n=3, cutoff=0.0)
        raise RuntimeUserError(
            f'module("{selector.pattern}") matches no module of the model `{model}`',
            hint="module paths here look like " + ", ".join(close or sorted(modules)[:3]))
    for module in matched:
        shape = shapes[module + suffix]
        if selector.axis >= len(shape):
            raise RuntimeUserError(
                f"axis {selector.axis} is out of range for {module}{suffix}, of shape "
                f"{list(shape)}", hint=f"its axes are 0..{len(shape) - 1}" +
                (" (0: a Linear's output rows, 1: its input columns)" if len(shape) == 2
                 else ""))


def _check_raw_axes(rule: P.TransferRule, info: ModelInfo) -> None:
    """A module has one channel axis per model: two ``module(...)`` selectors naming it
    along different axes (in any rules on the model) would silently share the first."""
    if info.space is None:
        return  # a zoo not built yet
    for _, term in (*rule.channels.terms, *rule.exclude.terms):
        if not isinstance(term, P.RawModule):
            continue
        for entry in raw_entries(info.space, [term]):
            if entry.parts[0].axis != term.axis:
                raise RuntimeUserError(
                    f'module("{term.glob}", axis = {term.axis}) names {entry.key[4:]}, '
                    f"which another module(...) selector on the model `{info.spec.name}` "
                    f"takes along axis {entry.parts[0].axis}",
                    hint="a module has one channel axis per model: name it along one axis")


def _check_raw_units(rule: P.TransferRule, entries: list[Entry]) -> None:
    """Neurons and heads (granularity, tie) exist only for the adapter's MLP and attention
    kinds, not for ``module(...)`` channels."""
    raw = [e.key[4:] for e in entries if e.kind == "raw"]
    grouped = ([f"granularity = {rule.granularity}"] if rule.granularity in ("neuron", "head")
               else []) + ([f"tie = {rule.tie}"] if rule.tie != "none" else [])
    if raw and grouped:
        raise RuntimeUserError(
            f"{' and '.join(grouped)} cannot apply to module(...) channels ({raw[0]}): "
            "neurons and heads are known only for the adapter's MLP and attention kinds",
            hint="use granularity = channel, module or layer and tie = none, or select "
                 "those modules by kind (mlp.up, attn.q, ...)")


def _check_scorable(rule: P.TransferRule, space: ChannelSpace, entries: list[Entry]) -> None:
    """A rule's score must be able to measure every channel it may select: the registry's
    refusals go by kind (a raw entry has the kind of the module it names again, if the
    space describes it), and scores of activations measure raw channels only along their
    module's output axis (see :func:`actlang.compile.bind.raw_selectors`)."""
    method = SCORES[rule.score.name]
    refused = {e: kind for e in entries if (kind := _refused_kind(method, space, e))}
    if refused:
        kinds = ", ".join(sorted(set(refused.values())))
        raw = sorted(e.key[4:] for e in refused if e.kind == "raw")
        hint = f"exclude them (exclude = [{kinds}])" if not raw else \
            f"leave {raw[0]}{' and the like' if len(raw) > 1 else ''} out of module(...)"
        raise RuntimeUserError(f"`{method.name}` cannot score {kinds} channels",
                               hint=hint + " or use paired_absdiff")
    if not method.reads_activations:
        return  # weight_delta reads weights along any axis; random reads nothing
    entry = next((e for e in entries if e.kind == "raw" and not measures_outputs(space, e)),
                 None)
    if entry is not None:
        axis = output_axis(space, entry)
        raise RuntimeUserError(
            f"`{method.name}` measures module outputs, but the channels of {entry.key[4:]} "
            f"run along axis {entry.parts[0].axis} of its weight, and its outputs along "
            f"axis {axis}",
            hint=f"score them with weight_delta or random, which read the weights, or "
                 f"select output channels (axis = {axis})")


def _refused_kind(method: ScoreMethod, space: ChannelSpace, entry: Entry) -> str | None:
    """The kind by which ``method`` refuses ``entry``, if it does."""
    twin = raw_twin(space, entry)
    return next((kind for kind in (entry.kind, *([twin.kind] if twin else []))
                 if any(fnmatch.fnmatchcase(kind, glob) for glob in method.refuses)), None)


def _check_pair(target: ModelInfo, donor: ModelInfo) -> None:
    if donor.space is None or target.space is None:
        return
    if donor.model_type != target.model_type:
        raise RuntimeUserError(
            f"{donor.spec.name} is a {donor.model_type} model but {target.spec.name} is a "
            f"{target.model_type} model", hint="channels move only between models of one "
            "architecture (a base model and its fine-tunes)")
    for entry in target.space:
        if entry.kind == "raw" and entry.key not in donor.space:
            continue  # another rule's module(...) on the target; the headers check all
        other = donor.space[entry.key] if entry.key in donor.space else None
        if other is None or other.size != entry.size:
            raise RuntimeUserError(
                f"{donor.spec.name} and {target.spec.name} differ at {entry.key}: "
                f"{other.size if other else 'missing'} vs {entry.size} channels",
                hint="the two models must have the same shapes")
    if all(info.directory and safetensors_files(info.directory) for info in (target, donor)):
        # pickle weights (allowed by the spec) have no headers to read without unpickling:
        # the transfer checks them when it opens them, before any tensor moves
        check_compatible(Headers.open(target.directory), [Headers.open(donor.directory)])


def _corpora(graph: nx.DiGraph, models: dict[str, ModelInfo], cache: Cache, dry_run: bool,
             program: P.Program) -> tuple[dict[tuple, int | None], dict[tuple, str]]:
    """Token counts and content digests of every (corpus, tokenizer) the graph reads; a
    corpus that cannot be read is an error at the ability that reads it."""
    needed: set[tuple[P.Corpus, P.ModelSpec]] = set()
    for op in graph.nodes:
        if isinstance(op, O.Statistic):
            needed.add((op.corpus, op.tokenizer))
        elif isinstance(op, O.Evaluate):
            state = op.state
            tokenizer = O.state_target(state)
            for spec in op.ability.evals:
                needed.add((spec.corpus, tokenizer))
    tokens: dict[tuple, int | None] = {}
    digests: dict[tuple, str] = {}
    for corpus, tokenizer in sorted(needed, key=repr):
        info = models.get(tokenizer.name)
        directory = info.directory if info else None
        if directory is None or not has_tokenizer(directory):
            tokens[(corpus, tokenizer)] = None  # unbuilt zoo, or a config-only directory
            continue
        try:
            documents = runtime_corpus(corpus, cache)
        except RuntimeUserError as error:
            raise PlanError(error, _corpus_span(program, corpus)) from None
        if documents is None:
            tokens[(corpus, tokenizer)] = None
            continue
        try:
            loaded = _tokenizer(directory, tokenizer.trust_remote_code)
        # A damaged tokenizer file fails in whatever way its loader trips over it.
        except Exception as error:  # noqa: BLE001
            reason = " ".join(str(error).split())[:300]
            raise PlanError(RuntimeUserError(
                f"cannot load the tokenizer of {directory}: {type(error).__name__}: {reason}",
                hint="the tokenizer files save_pretrained() writes load; are they edited?"),
                tokenizer.span) from None
        try:
            tokenized = documents.tokenize(loaded, max_length=corpus.options.max_tokens)
        except RuntimeUserError as error:
            raise PlanError(error, _corpus_span(program, corpus)) from None
        tokens[(corpus, tokenizer)] = tokenized.n_tokens
        digests[(corpus, tokenizer)] = tokenized.digest()
    return tokens, digests


def _strategies(graph: nx.DiGraph, models: dict[str, ModelInfo], tokens: dict[tuple, int | None],
                limit: int | None, program: P.Program) -> dict[O.Capture, CaptureStrategy]:
    """How each capture runs; a limit no strategy fits is an error at the ability whose
    corpus the capture reads."""
    strategies = {}
    for op in sorted((op for op in graph.nodes if isinstance(op, O.Capture)), key=O.op_id):
        try:
            strategies[op] = choose(op, models, tokens.get((op.corpus, op.tokenizer)), limit)
        except RuntimeUserError as error:
            raise PlanError(error, op_span(op, program)) from None
    return strategies


def op_span(op: O.Op, program: P.Program) -> Span | None:
    """Where the spec asks for what an operation does, for errors the operation meets: the
    model it loads, the ability whose corpus it reads, the rule it applies, the surgery it
    saves."""
    if isinstance(op, O.LoadModel):
        return op.model.span
    if isinstance(op, (O.Capture, O.Statistic)):
        return _corpus_span(program, op.corpus) or \
            (op.models[0] if isinstance(op, O.Capture) else op.model).span
    if isinstance(op, (O.Score, O.Evaluate)):
        return op.ability.span
    if isinstance(op, O.Select):
        return op.rule.span
    if isinstance(op, O.Transfer):
        return op.selections[0][0].rule.span if op.selections else op.target.span
    if isinstance(op, O.MergeModels):
        return op.merge.span
    if isinstance(op, O.Finetune):
        return op.spec.span
    if isinstance(op, O.Save):
        return op.surgery.span
    return None


def _corpus_span(program: P.Program, corpus: P.Corpus) -> Span | None:
    """Where the spec reads a corpus: the ability whose probe, control or eval it is."""
    for ability in program.abilities:
        if corpus in (ability.probe, ability.control) or \
                any(spec.corpus == corpus for spec in ability.evals):
            return ability.span
    return None


def _tokenizer(directory: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    # explicit, so that transformers never asks (or runs) anything the spec did not allow
    return AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)


def _cache_keys(graph: nx.DiGraph, models: dict[str, ModelInfo],
                corpus_digests: dict[tuple, str]) -> dict[O.Op, str]:
    """Keys of cacheable ops whose inputs are all identified; others cannot hit."""
    keys: dict[O.Op, str] = {}
    for op in graph.nodes:
        if isinstance(op, O.Statistic):
            identities = [models[m.name].identity for m in filter(None, (op.model, op.partner))]
            corpus = corpus_digests.get((op.corpus, op.tokenizer))
            if None in identities or corpus is None:
                continue
            keys[op] = digest(CACHE_FORMAT, STATS_CONFIG, op.modules, "paired" if op.partner
                              else "unpaired", identities, corpus, op.corpus.options.max_tokens,
                              *_half([m for m in (op.model, op.partner) if m is not None]),
                              *(["local"] if op.local else []),
                              *([[(m.glob, m.axis) for m in op.raw]] if op.raw else []))
        elif isinstance(op, O.Save):
            identities = [info.identity for info in models.values()
                          if _uses(op.surgery, info.spec)]
            if None in identities:
                continue
            keys[op] = digest(CACHE_FORMAT, __version__, "output", O.op_id(op), identities,
                              sorted(corpus_digests.values()))
        elif isinstance(op, O.Evaluate) and isinstance(op.state, P.ModelSpec):
            identity = models[op.state.name].identity
            corpora = [corpus_digests.get((e.corpus, op.state)) for e in op.ability.evals]
            if identity is None or None in corpora:
                continue
            keys[op] = digest(CACHE_FORMAT, EVAL_CONFIG, identity, corpora,
                              [repr(e) for e in op.ability.evals], *_half([op.state]))
    return keys


def _half(models: list[P.ModelSpec]) -> list[list[str]]:
    """What models computing in half precision add to a cache key (float32, the default,
    adds nothing, so the keys of float32 runs stay what they were)."""
    dtypes = [m.compute_dtype for m in models]
    return [dtypes] if any(d != "float32" for d in dtypes) else []


def _uses(surgery: P.SurgerySpec, model: P.ModelSpec) -> bool:
    return model in (surgery.target, *(t.donor for t in surgery.transfers),
                     *(surgery.merge.donors if surgery.merge else ()),
                     *([surgery.merge.base] if surgery.merge and surgery.merge.base else []))


def _in_cache(cache: Cache, op: O.Op, key: str) -> bool:
    if isinstance(op, O.Save):
        return output_key(Path(op.surgery.output)) == key
    return cache.has("stats" if isinstance(op, O.Statistic) else "evals", key)


def output_key(directory: Path) -> str | None:
    """The key recorded in a finished output's run_results.json (None if there is none)."""
    try:
        return json.loads((directory / "run_results.json").read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None


# ---- outputs: never over an input, replaced only when actc wrote them ------------------------

#: The file every directory actc writes carries: it lists the files written (so a file the
#: user added later is never deleted by ``--force``).
OUTPUT_MARKER = ".actc-output"
_MARKER_FORMAT = "actc-output/1"
_OUTPUT_HINT = ("choose an output directory outside every input (models, corpora, specs), "
                "the actlang cache and your home directory, e.g. \"out/NAME\"")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(a: str, b: str) -> bool:
    """Whether the resolved path ``a`` lies strictly inside the resolved path ``b``."""
    return a != b and a.startswith(b if b.endswith(os.sep) else b + os.sep)


def _home() -> str | None:
    try:
        return os.path.realpath(Path.home())
    except (RuntimeError, KeyError, OSError):
        return None


def output_conflict(output: Path, protected: Iterable[tuple[Path, str]]) -> str | None:
    """Why ``output`` must not be written (None: it may be), symlinks resolved: it is the
    filesystem root, is or contains the home directory, or is, lies inside or contains one
    of the ``protected`` paths — (path, what it is) pairs."""
    return _conflict(os.path.realpath(output), _home(),
                     [(os.path.realpath(path), what) for path, what in protected])


def _conflict(out: str, home: str | None, protected: list[tuple[str, str]]) -> str | None:
    """:func:`output_conflict` over paths resolved already."""
    if out == os.path.dirname(out):
        return "it is the filesystem root"
    if home is not None and (out == home or _inside(home, out)):
        return f"it {'is' if out == home else 'contains'} the home directory {home}"
    for real, what in protected:
        if out == real:
            return f"it is {what}"
        if _inside(out, real):
            return f"it lies inside {what}"
        if _inside(real, out):
            return f"it contains {what}"
    return None


def protected_paths(program: P.Program, cache: Cache) -> list[tuple[Path, str]]:
    """What no output of ``program`` may be, lie inside or contain: its models' directories
    and files, its corpus files, its spec and every imported spec (and the spec's lock file),
    and the actlang cache; as (resolved path, what it is) pairs."""
    found: list[tuple[Path, str]] = []
    for model in program.models:
        found += _model_paths(model, cache)
    for path in sorted(_corpus_files(program)):
        found.append((Path(path), f"the corpus {path}"))
    for index, file in enumerate(program.files):
        found.append((Path(file), f"{'the spec' if index == 0 else 'the imported spec'} {file}"))
    if program.file:
        found.append((Path(program.file + ".lock"), f"the spec's lock file {program.file}.lock"))
    found.append((cache.root, f"the actlang cache {cache.root}"))
    return [(_real(path), what) for path, what in found]


def _model_paths(model: P.ModelSpec, cache: Cache) -> list[tuple[Path, str]]:
    try:
        if model.source == "local":
            return [(Path(model.location), f"the model `{model.name}` ({model.location})")]
        if model.source == "gguf":
            file = gguf_file(model)
            return [(file, f"the GGUF file of the model `{model.name}` ({file})")]
        if model.source == "hub":
            directory = model_directory(model, cache)
            return [(directory, f"the hub snapshot of the model `{model.name}` ({directory})")] \
                if directory is not None else []
    except RuntimeUserError:
        return []  # a missing model: reported, located, where it is resolved
    return []  # a zoo model lives in the cache, which is protected as a whole


def _corpus_files(program: P.Program) -> set[str]:
    """The paths of every text and jsonl corpus the program's surgeries read."""
    found: set[str] = set()
    seen: set[int] = set()
    stack: list[Any] = list(program.surgeries)
    while stack:
        value = stack.pop()
        if isinstance(value, (tuple, list)):
            stack.extend(value)
        elif dataclasses.is_dataclass(value) and id(value) not in seen:
            seen.add(id(value))
            if isinstance(value, (P.TextCorpus, P.JsonlCorpus)):
                found.add(value.path)
            stack.extend(getattr(value, f.name) for f in dataclasses.fields(value))
    return found


def _output_files(directory: Path) -> list[str]:
    """The files (and links) under ``directory``, relative, sorted; the marker excluded."""
    files = []
    for root, dirs, names in os.walk(directory):
        base = Path(root).relative_to(directory)
        names = [*names, *(d for d in dirs if os.path.islink(os.path.join(root, d)))]
        files += [(base / name).as_posix() for name in names]
    return sorted(f for f in files if f != OUTPUT_MARKER)


def output_marker(directory: Path) -> dict[str, Any]:
    """The marker of a directory actc finished writing (see :data:`OUTPUT_MARKER`)."""
    return {"format": _MARKER_FORMAT, "actlang_version": __version__,
            "files": _output_files(directory)}


def replace_problem(directory: Path) -> str | None:
    """Why ``--force`` must not replace ``directory`` (None: an earlier actc run wrote it,
    and nothing was added since): completes "it ..."."""
    if directory.is_symlink():
        return "is a symbolic link"
    if not directory.is_dir():
        return "is not a directory"
    marker = directory / OUTPUT_MARKER
    try:
        data = None if marker.is_symlink() or not marker.is_file() else \
            json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not (isinstance(data, dict) and data.get("format") == _MARKER_FORMAT and
            isinstance(data.get("files"), list)):
        return f"has no actc marker ({OUTPUT_MARKER}): no earlier actc run wrote it"
    foreign = sorted(set(_output_files(directory)) - set(map(str, data["files"])))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"holds files that actc did not write ({shown})"
    return None


def _check_outputs(program: P.Program, cache: Cache, rebuild: bool) -> None:
    """Every output is safe to write (see :func:`output_conflict`; no output lies inside
    another) and, with ``rebuild`` (``--force``), replaces only what actc wrote."""
    protected = [(str(path), what) for path, what in protected_paths(program, cache)]
    home = _home()
    outputs: dict[Path, P.SurgerySpec] = {}
    for surgery in program.surgeries:
        outputs.setdefault(_real(Path(surgery.output)), surgery)
    for surgery in program.surgeries:
        output = Path(surgery.output)
        real = _real(output)
        problem = _conflict(str(real), home, protected)
        if problem is None:
            outer = next((outputs[p] for p in real.parents if p in outputs), None)
            if outer is not None:
                problem = (f"it lies inside the output of surgery `{outer.name}` "
                           f"({outer.output})")
        if problem is not None:
            raise PlanError(RuntimeUserError(
                f"refusing to write the output of surgery `{surgery.name}` to {output}: "
                f"{problem}", hint=_OUTPUT_HINT), _output_span(surgery, program))
        if rebuild and (output.exists() or output.is_symlink()):
            problem = replace_problem(output)
            if problem is not None:
                raise PlanError(RuntimeUserError(
                    f"--force refuses to replace {output}: it {problem}",
                    hint="--force replaces only outputs of earlier actc runs; delete it "
                    "yourself if you mean it, or write elsewhere with --output"),
                    _output_span(surgery, program))


def _output_span(surgery: P.SurgerySpec, program: P.Program) -> Span | None:
    """The span of a surgery's output string (its header line if it cannot be found)."""
    span = surgery.span
    if span is None:
        return None
    line = None
    for key in program.files:
        if display_name(Path(key)) == span.file:
            try:  # a regular file: the loader read it (a FIFO put there since would hang)
                lines = Path(key).read_text(encoding="utf-8").splitlines() \
                    if Path(key).is_file() else []
                line = lines[span.line - 1] if span.line <= len(lines) else None
            except (OSError, UnicodeDecodeError):
                pass
            break
    return output_span(span, line)


def _stream(graph: nx.DiGraph, strategies: dict[O.Capture, CaptureStrategy]) -> nx.DiGraph:
    """A streamed capture reads its models' files itself: it does not need them loaded."""
    graph = graph.copy()
    for op, strategy in strategies.items():
        if strategy.streamed:
            graph.remove_edges_from([(load, op) for load in list(graph.predecessors(op))
                                     if isinstance(load, O.LoadModel)])
    return graph


# ---- estimates ----------------------------------------------------------------------------


def _estimate(plan: Plan) -> Estimates:
    est = Estimates()
    live: dict[str, int] = {}
    last_use = {load.model.name: index
                for load, index in last_uses(plan.graph, plan.order).items()}

    def resident() -> int:  # the models loaded, and what running them takes
        return sum(live.values()) + (MODELLING_BYTES if live else 0)

    for index, op in enumerate(plan.order):
        if isinstance(op, O.LoadModel):
            size = plan.models[op.model.name].compute_bytes
            est.exact &= size is not None
            live[op.model.name] = size or 0
        elif isinstance(op, O.Capture):
            tokens = plan.corpus_tokens.get((op.corpus, op.tokenizer))
            est.exact &= tokens is not None
            strategy = plan.strategies.get(op)
            if strategy is not None and strategy.streamed and strategy.peak_bytes:
                est.peak_memory_bytes = max(est.peak_memory_bytes, sum(live.values()) +
                                            MODELLING_BYTES + strategy.peak_bytes)
            for model in (m for models in op.passes() for m in models):  # each runs once
                est.forward_passes += 1
                est.tokens += tokens or 0
                est.flops += 2.0 * (plan.models[model.name].parameters or 0) * (tokens or 0)
        elif isinstance(op, O.Evaluate) and op not in plan.cached:
            target = O.state_target(op.state)
            params = plan.models[target.name].parameters or 0
            for spec in op.ability.evals:
                tokens = plan.corpus_tokens.get((spec.corpus, target)) or 0
                est.flops += 2.0 * params * tokens
        elif isinstance(op, O.Finetune):
            target = plan.models[op.source.target.name]
            params = target.parameters or 0
            est.flops += 6.0 * params * op.spec.steps * op.spec.batch_size * \
                op.spec.data.options.max_tokens
            # beside the models still loaded (the target's, for its tokenizer and masks)
            size = target.compute_bytes
            est.exact &= size is not None
            est.peak_memory_bytes = max(est.peak_memory_bytes, sum(live.values()) +
                                        MODELLING_BYTES + int(_FINETUNE_COPIES * (size or 0)))
        elif isinstance(op, (O.MergeModels, O.Transfer)):
            # Weight work maps a tensor of each input at a time from its file (resident while
            # it is read) and holds a few work tensors of the largest one's size.
            largest = _largest_tensor(plan, op)
            est.exact &= largest is not None
            if isinstance(op, O.MergeModels):  # work tensors, and one mapped of each input
                inputs = {*op.merge.donors, *([op.merge.base] if op.merge.base else [])}
                tensors = MERGE_METHODS[op.merge.method].peak_tensors(len(op.merge.donors)) + \
                    len(inputs)
            else:
                tensors = _TRANSFER_TENSORS
            est.peak_memory_bytes = max(est.peak_memory_bytes, resident() +
                                        int(tensors * _WORK_BYTES * (largest or 0)))
        elif isinstance(op, O.Save) and op not in plan.cached:
            size = plan.models[op.surgery.target.name].weight_bytes
            est.exact &= size is not None
            est.bytes_written += size or 0
        est.peak_memory_bytes = max(est.peak_memory_bytes, resident())
        for name in [n for n, last in last_use.items() if last == index]:
            live.pop(name, None)
    est.peak_memory_bytes += RUNTIME_BYTES
    return est


# Peak memory is the run's peak resident set (VmHWM): what a machine must hold for the run
# to go at speed. It counts model weights mapped from their files (transformers maps fp32
# safetensors; weight work maps a tensor of each input at a time): page-cache pages, shared
# and evictable, but read again and again, and charged to a container's memory limit.
# Measured by bench/bench_plan_memory.py (capture, fine-tune) and bench/bench_merge.py.

#: What the interpreter, torch and the pages of their libraries a run touches hold
#: (measured: 0.35 GB resident in weight work, of which 0.2-0.3 GB private).
RUNTIME_BYTES = 350_000_000
#: What running a model adds while one is loaded: transformers' modelling code, the pages of
#: the kernels a forward pass touches, activations (measured: 0.2 GB beside the runtime).
MODELLING_BYTES = 200_000_000
#: A fine-tune's memory in units of its model's size: the weights (private once trained),
#: their gradients, AdamW's two moments, and a step's temporaries (measured: 4.7 for
#: SmolLM2-135M, every parameter training; 4.3 for the transferred channels only).
_FINETUNE_COPIES = 4.5
#: Bytes of a work tensor's element: weight work computes in float32.
_WORK_BYTES = 4
#: Tensors of the largest one's size a transfer holds (measured): the pages of the target's
#: tensor the moved elements are written into, and the mapped tensors it reads (tensors that
#: no mask touches are copied file to file, never mapped).
_TRANSFER_TENSORS = 1.0


def _largest_tensor(plan: Plan, op: O.MergeModels | O.Transfer) -> int | None:
    """Elements of the largest tensor the weight work reads."""
    models = [op.target, *op.merge.donors] if isinstance(op, O.MergeModels) else \
        [op.target, *(select.rule.donor for select, _ in op.selections)]
    sizes = [plan.models[m.name].largest_tensor for m in models]
    return None if None in sizes else max(sizes)  # type: ignore[type-var]
