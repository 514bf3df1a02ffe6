"""Operation nodes of the compiled graph: frozen, hashable values.

An op's identity is its content: two surgeries (or two points of a sweep) that need the same
statistic produce *equal* ops, which the graph stores once. Each op names only what its
result depends on — a score does not mention the budget, so a budget sweep shares its scores.

Kinds, in pipeline order::

    load       LoadModel        a model, resolved to a directory (zoo models are built)
    capture    Capture          one forward pass of each of its models over one corpus,
                                lock-step when it computes paired statistics
    statistic  Statistic        per-channel sums of one model (or one pair) on one corpus
    score      Score            per-channel scores of one rule
    select     Select           a channel mask from scores and a budget
    transfer   Transfer         masked interpolation of the donors into the target
    merge      MergeModels      a whole-model baseline (linear, ties, ...)
    finetune   Finetune         the compatibility fine-tune
    eval       Evaluate         an ability's evals on one model state
    save       Save             the output directory, with masks, report and results
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Union

from actlang.lang import program as P


@dataclass(frozen=True)
class LoadModel:
    model: P.ModelSpec
    kind = "load"

    @property
    def label(self) -> str:
        return f"load {self.model.name}"


@dataclass(frozen=True)
class Statistic:
    """Per-channel statistics of ``model`` on ``corpus``; paired with ``partner`` when set
    (then ``Δa = mean |a(partner) − a(model)|``). Tokens come from ``tokenizer``."""


    model: P.ModelSpec
    corpus: P.Corpus
    tokenizer: P.ModelSpec
    partner: P.ModelSpec | None = None
    # "default": the modules selectable by default; "all": also embed, norms and lm_head
    # (needed only when a rule may select those).
    modules: str = "default"
    # paired only: also each module's own change on real inputs (local_absdiff)
    local: bool = False
    # the rule's module(...) selectors: their raw entries are hooked too (only those, since
    # a raw entry's axis need not be its module's output axis)
    raw: tuple[P.RawModule, ...] = ()
    kind = "statistic"

    @property
    def label(self) -> str:
        pair = f"{self.model.name} ~ {self.partner.name}" if self.partner else self.model.name
        return f"{'paired' if self.partner else 'unpaired'} stats {pair} on {corpus_label(self.corpus)}"


@dataclass(frozen=True)
class Capture:
    """One forward pass per model over ``corpus``, producing ``statistics`` together."""

    corpus: P.Corpus
    tokenizer: P.ModelSpec
    models: tuple[P.ModelSpec, ...]
    statistics: tuple[Statistic, ...]
    kind = "capture"

    @property
    def label(self) -> str:
        names = ", ".join(m.name for m in self.models)
        return f"capture {names} on {corpus_label(self.corpus)}"

    @property
    def modules(self) -> str:
        """The hooked modules: "all" if any statistic needs them (it serves the rest too)."""
        return "all" if any(s.modules == "all" for s in self.statistics) else "default"

    @property
    def local(self) -> bool:
        """Whether the paired passes also reduce local differences (one serves both)."""
        return any(s.local for s in self.statistics)

    def passes(self) -> list[tuple[P.ModelSpec, ...]]:
        """The lock-step passes that compute the statistics, each ``(anchor, *partners)``:
        the anchor runs once and every partner reduces its difference to it, so each model
        runs once (a target paired with several donors is the anchor of one pass). A model
        with only unpaired statistics runs alone, ``(model,)``. When the pairs do not share
        one model (a chain a~b~c), the remaining pairs get passes of their own."""
        pairs = list(dict.fromkeys((s.model, s.partner) for s in self.statistics if s.partner))
        passes: list[tuple[P.ModelSpec, ...]] = []
        while pairs:
            count: dict[P.ModelSpec, int] = {}
            targets: dict[P.ModelSpec, int] = {}  # pairs naming the model first (a target)
            for pair in pairs:
                for model in pair:
                    count[model] = count.get(model, 0) + 1
                targets[pair[0]] = targets.get(pair[0], 0) + 1
            # the target anchors: local differences are taken on the anchor's inputs
            anchor = max(count, key=lambda m: (count[m], targets.get(m, 0), m.name))
            partners = [b if a == anchor else a for a, b in pairs if anchor in (a, b)]
            passes.append((anchor, *sorted(partners, key=lambda m: m.name)))
            pairs = [pair for pair in pairs if anchor not in pair]
        covered = {m for p in passes for m in p}
        return [*passes, *((m,) for m in self.models if m not in covered)]

    def pass_count(self) -> int:
        return sum(len(p) for p in self.passes())


@dataclass(frozen=True)
class Score:
    """Channel scores of one rule's ability: everything about a rule that precedes budgets."""

    target: P.ModelSpec
    donor: P.ModelSpec
    ability: P.AbilitySpec
    score: P.ScoreSpec
    normalize: str
    contrast: float
    kind = "score"

    @property
    def label(self) -> str:
        extra = f", contrast {self.contrast:g}" if self.contrast else ""
        return f"score {self.ability.name}: {self.donor.name} vs {self.target.name} " \
               f"({self.score.name}{extra})"


@dataclass(frozen=True)
class Select:
    """A mask from a rule's scores. ``rule`` has lambda normalized to 1 (it is applied by the
    transfer), so points of a lambda sweep share their selection."""

    scores: Score
    rule: P.TransferRule
    kind = "select"

    @property
    def label(self) -> str:
        b = self.rule.budget
        amount = f"{b.value * 100:g}%" if b.kind == "fraction" else \
            (f"{b.value:g}" if b.kind == "count" else f"score >= {b.value:g}")
        scope = "" if b.scope == "global" else f" per {b.scope}"
        return f"select {amount}{scope} of {self.scores.ability.name} channels " \
               f"({self.rule.granularity})"


@dataclass(frozen=True)
class Transfer:
    """θ ← θ_trg + λ(θ_src − θ_trg) on each selection's channels (λ per selection)."""

    target: P.ModelSpec
    selections: tuple[tuple[Select, float], ...]
    overlap: str
    kind = "transfer"

    @property
    def label(self) -> str:
        donors = ", ".join(s.rule.donor.name for s, _ in self.selections)
        return f"transfer {donors} -> {self.target.name}"


@dataclass(frozen=True)
class MergeModels:
    target: P.ModelSpec
    merge: P.MergeRule
    kind = "merge"

    @property
    def label(self) -> str:
        return f"merge {self.merge.method} of {', '.join(d.name for d in self.merge.donors)}"


@dataclass(frozen=True)
class Finetune:
    source: Union[Transfer, MergeModels]
    spec: P.FinetuneSpec
    kind = "finetune"

    @property
    def label(self) -> str:
        return f"finetune {self.spec.steps} steps ({self.spec.scope})"


ModelState = Union[P.ModelSpec, Transfer, MergeModels, Finetune]


@dataclass(frozen=True)
class Evaluate:
    ability: P.AbilitySpec
    state: ModelState
    kind = "eval"

    @property
    def label(self) -> str:
        return f"eval {self.ability.name} on {state_label(self.state)}"


@dataclass(frozen=True)
class Save:
    surgery: P.SurgerySpec
    state: ModelState
    kind = "save"

    @property
    def label(self) -> str:
        return f"save {self.surgery.name} -> {self.surgery.output}"


Op = Union[LoadModel, Capture, Statistic, Score, Select, Transfer, MergeModels, Finetune,
           Evaluate, Save]


def op_id(op: Op) -> str:
    """A stable id: a digest of the op's content (its repr, which leaves out spans).

    Stable across processes, unlike ``hash`` (string hashing is salted per process)."""
    return f"{op.kind}-{hashlib.sha256(repr(op).encode()).hexdigest()[:10]}"


def corpus_label(corpus: P.Corpus) -> str:
    if isinstance(corpus, (P.TextCorpus, P.JsonlCorpus)):
        return corpus.path.rsplit("/", 1)[-1]
    if isinstance(corpus, P.ZooCorpus):
        return f"zoo {corpus.ability}/{corpus.split}"
    if isinstance(corpus, P.LinesCorpus):
        return f"{len(corpus.lines)} inline lines"
    return "mix(" + ", ".join(corpus_label(p) for p in corpus.parts) + ")"


def state_target(state: ModelState) -> P.ModelSpec:
    """The input model a state starts from (a stage's target)."""
    while isinstance(state, Finetune):
        state = state.source
    return state if isinstance(state, P.ModelSpec) else state.target


def state_label(state: ModelState) -> str:
    if isinstance(state, P.ModelSpec):
        return state.name
    if isinstance(state, Finetune):
        how = "merge" if isinstance(state.source, MergeModels) else "transfer"
        return f"{state.source.target.name} after {how} + finetune"
    if isinstance(state, Transfer):
        return f"{state.target.name} after transfer"
    return f"{state.target.name} after merge"
