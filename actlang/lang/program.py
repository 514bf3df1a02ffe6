"""The checked program: what a spec means, with every name resolved and every default filled.

The checker turns syntax (``ast``) into these frozen, hashable values; the compiler lowers them
to an operation graph. Nothing here refers to syntax except spans kept for error messages
later in the pipeline. Sweeps are already expanded: a surgery with ``budget = sweep(1%, 2%)``
becomes two :class:`SurgerySpec` values that share a ``sweep_group``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from actlang.lang.ast import Span


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)  # type: ignore[return-value]


# ---- models and data --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model. ``source`` is "local" (a directory), "hub" (id at a pinned revision, read from
    the local Hugging Face cache), "zoo" (a tiny synthetic model actlang builds itself) or
    "gguf" (a llama.cpp file, converted into the cache by ``actc run``)."""

    name: str  # qualified: "zoo.tuned" for a model declared in the module imported as zoo
    source: str
    # directory path or .gguf file (resolved against the spec file), hub id, zoo name, or,
    # with ``package``, the .gguf file's path inside that package
    location: str
    revision: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    zoo_profile: str = "default"  # zoo models only
    zoo_seed: int = 0
    package: str | None = None  # gguf models: the installed package that ships the file
    span: Span | None = _span()

    @property
    def compute_dtype(self) -> str:
        """What the model computes in: its ``dtype``, float32 for ``auto`` (statistics are
        float64 sums either way; half precision only where a spec asks for it)."""
        return "float32" if self.dtype == "auto" else self.dtype


@dataclass(frozen=True)
class CorpusOptions:
    limit: int | None = None  # at most this many documents (after shuffling with seed)
    seed: int = 0
    max_tokens: int = 512  # per document; longer ones are truncated


@dataclass(frozen=True)
class TextCorpus:
    """A text file, one document per line; every token is scored."""

    path: str
    options: CorpusOptions = CorpusOptions()


@dataclass(frozen=True)
class JsonlCorpus:
    """A jsonl file. ``text`` is a template over record fields (``"{q} {a}"``); when ``score``
    names a field, only the tokens of that field's span are scored. ``prompt`` / ``answer``
    name the fields an exact-match evaluation uses."""

    path: str
    text: str | None = None
    score: str | None = None
    prompt: str | None = None
    answer: str | None = None
    options: CorpusOptions = CorpusOptions()


@dataclass(frozen=True)
class LinesCorpus:
    """Documents written inline in the spec."""

    lines: tuple[str, ...]
    options: CorpusOptions = CorpusOptions()


@dataclass(frozen=True)
class ZooCorpus:
    """A split of one of the zoo's synthetic abilities (e.g. "arithmetic", split "probe")."""

    ability: str
    split: str
    options: CorpusOptions = CorpusOptions()
    zoo_profile: str = "default"
    zoo_seed: int = 0


@dataclass(frozen=True)
class MixCorpus:
    """Documents drawn from several corpora with the given weights (normalized to sum 1)."""

    parts: tuple[Corpus, ...]
    weights: tuple[float, ...]
    options: CorpusOptions = CorpusOptions()


Corpus = Union[TextCorpus, JsonlCorpus, LinesCorpus, ZooCorpus, MixCorpus]


@dataclass(frozen=True)
class ExactMatchEval:
    """Greedy generation from each record's prompt; score = share of exact answers."""

    corpus: Corpus
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class PerplexityEval:
    corpus: Corpus


EvalSpec = Union[ExactMatchEval, PerplexityEval]


@dataclass(frozen=True)
class AbilitySpec:
    name: str
    probe: Corpus
    control: Corpus | None = None
    evals: tuple[EvalSpec, ...] = ()
    span: Span | None = _span()


# ---- channel selection ------------------------------------------------------------------------


@dataclass(frozen=True)
class KindPattern:
    """Canonical module kinds matched by a glob over names like ``attn.q`` or ``mlp.*``."""

    glob: str


@dataclass(frozen=True)
class RawModule:
    """The escape hatch: checkpoint tensor names matched by a glob, channels on ``axis``."""

    glob: str
    axis: int = 0


@dataclass(frozen=True)
class Selector:
    """A set of modules built left to right: each term adds (+1) or removes (-1) its matches."""

    terms: tuple[tuple[int, KindPattern | RawModule], ...]


@dataclass(frozen=True)
class ScoreSpec:
    """How channels are ranked: an activation statistic, or a control (random, weight_delta)."""

    name: str
    seed: int = 0  # for random


@dataclass(frozen=True)
class Budget:
    """How many channels move. ``kind``: "fraction" (value in (0, 1]), "count" or "threshold";
    ``scope``: "global" (rank all channels together, the paper's default), "module" or "layer"."""

    kind: str
    value: float
    scope: str = "global"


@dataclass(frozen=True)
class ZooTruth:
    """The rows the zoo's planted fine-tune was allowed to change."""

    zoo_profile: str = "default"
    zoo_seed: int = 0


# Blocks are keyword-only and their fields have no defaults here: the checker fills every
# absent field from actlang.lang.schema (the one place a default is written).
@dataclass(frozen=True, kw_only=True)
class TransferRule:
    ability: AbilitySpec
    donor: ModelSpec
    channels: Selector
    budget: Budget
    score: ScoreSpec
    normalize: str
    contrast: float  # beta: score(probe) - beta * score(control)
    granularity: str
    tie: str
    lambda_: float
    layers: tuple[int, int] | None = None  # half-open [start, stop)
    exclude: Selector = Selector(())
    min_per_module: int
    max_per_module: Budget | None = None
    include_global: bool
    skip_identical: bool
    truth: str | ZooTruth | None = None  # a JSON file {tensor: [rows]} (resolved path)
    span: Span | None = _span()


@dataclass(frozen=True, kw_only=True)
class MergeRule:
    """A whole-model baseline, defined as mergekit defines it (the method's defaults for
    ``normalize`` and ``rescale`` come from actlang.arch.registry.MERGE_METHODS)."""

    method: str
    donors: tuple[ModelSpec, ...]
    base: ModelSpec | None = None
    weights: tuple[float, ...] | None = None  # None: equal
    density: float
    lambda_: float
    normalize: bool
    rescale: bool | None  # None: the method does not rescale
    seed: int
    span: Span | None = _span()


@dataclass(frozen=True, kw_only=True)
class FinetuneSpec:
    data: Corpus
    steps: int
    lr: float
    batch_size: int
    seed: int
    scope: str
    weight_decay: float
    span: Span | None = _span()


# ---- acceptance gates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """``eval(ability, on = ...)``: the ability's first eval, measured on a model or stage.

    ``on`` is a model, or a stage of the surgery: "output" (after fine-tune, the default),
    "transferred" (after transfer, before fine-tune) or "target"."""

    ability: AbilitySpec
    on: Union[str, ModelSpec]


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Arith:
    op: str
    left: Quantity
    right: Quantity


Quantity = Union[Measure, Number, Arith]


@dataclass(frozen=True)
class Expectation:
    op: str
    left: Quantity
    right: Quantity
    source: str  # the condition as written, for reports
    span: Span | None = _span()


# ---- surgeries --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SurgerySpec:
    name: str
    output: str  # resolved against the spec's directory; sweeps add "/param=value"
    target: ModelSpec
    transfers: tuple[TransferRule, ...] = ()
    merge: MergeRule | None = None
    finetune: FinetuneSpec | None = None
    evals: tuple[AbilitySpec, ...] = ()
    expects: tuple[Expectation, ...] = ()
    overlap: str
    seed: int
    shard_size: int
    sweep_group: str | None = None  # the surgery's name when it came from a sweep
    sweep_point: tuple[tuple[str, str], ...] = ()  # (parameter, value as written)
    span: Span | None = _span()


@dataclass(frozen=True)
class Program:
    """A checked spec: its surgeries (sweeps expanded) and everything they reference."""

    file: str
    surgeries: tuple[SurgerySpec, ...]
    models: tuple[ModelSpec, ...]
    abilities: tuple[AbilitySpec, ...]
    files: tuple[str, ...] = ()  # every .act file read, the main file first
    declared: tuple[ModelSpec, ...] = ()  # every model the main file declares, used or not


def with_dtype(program: Program, dtype: str) -> Program:
    """``program`` with every model computing in ``dtype`` (``actc run --dtype``): each
    :class:`ModelSpec` in it, wherever it is referenced, replaced by one copy."""
    import dataclasses

    def rewrite(value):
        if isinstance(value, ModelSpec):
            return dataclasses.replace(value, dtype=dtype)
        if isinstance(value, tuple):
            return tuple(rewrite(v) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {f.name: rewrite(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if any(changes[k] is not getattr(value, k) for k in changes):
                return dataclasses.replace(value, **changes)
        return value

    return rewrite(program)
