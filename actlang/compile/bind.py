"""Program values → runtime arguments: corpora, channel candidates, budgets.

The checker speaks the language's terms (a selector is a sequence of added and removed
patterns; a budget has a scope); the runtime speaks in entries of a model's
:class:`~actlang.arch.adapters.ChannelSpace`. This module translates, and reports what the
language promises to catch before any heavy work: a selector that matches nothing, residual
channels named without ``include_global``, a count budget larger than the candidates.
"""

from __future__ import annotations

from actlang.arch import corpus as C
from actlang.arch import selection as S
from actlang.arch.adapters import ChannelSpace, Entry, RawSelector
from actlang.arch.selection import Budget, Term
from actlang.compile.cache import Cache
from actlang.compile.resolve import zoo_corpus
from actlang.lang import program as P


def runtime_corpus(spec: P.Corpus, cache: Cache) -> C.Corpus | None:
    """The documents of a corpus (None: a zoo corpus whose zoo is not built)."""

    options = spec.options
    if isinstance(spec, P.ZooCorpus):
        resolved = zoo_corpus(spec, cache)
        return None if resolved is None else runtime_corpus(resolved, cache)
    if isinstance(spec, P.TextCorpus):
        return C.text_file(spec.path, limit=options.limit, seed=options.seed)
    if isinstance(spec, P.JsonlCorpus):
        text = spec.text or "{" + str(spec.prompt) + "} {" + str(spec.answer) + "}"
        score = spec.score if spec.text else spec.answer
        return C.jsonl(spec.path, text=text, score=score, limit=options.limit,
                       seed=options.seed)
    if isinstance(spec, P.LinesCorpus):
        return C.inline(list(spec.lines), limit=options.limit, seed=options.seed)
    parts = [runtime_corpus(part, cache) for part in spec.parts]
    if any(part is None for part in parts):
        return None
    return C.mix(list(zip(parts, spec.weights)), limit=options.limit, seed=options.seed)


def raw_selectors(rule: P.TransferRule) -> list[RawSelector]:
    """The escape-hatch selectors a rule names (the channel space must know them)."""
    terms = [*rule.channels.terms, *rule.exclude.terms]
    return [RawSelector(t.glob, t.axis) for _, t in terms if isinstance(t, P.RawModule)]


def _term(pattern: P.KindPattern | P.RawModule) -> Term:
    if isinstance(pattern, P.RawModule):
        return Term(pattern.glob, pattern.axis)
    return Term(pattern.glob)


def candidate_entries(space: ChannelSpace, rule: P.TransferRule, *,
                      warn: bool = True) -> list[Entry]:
    """The entries a rule may select from (:func:`actlang.arch.selection.candidate_entries`,
    which plan and run both call through here)."""
    layers = None if rule.layers is None else range(*rule.layers)
    return S.candidate_entries(space, [(sign, _term(t)) for sign, t in rule.channels.terms],
                               exclude=[_term(t) for _, t in rule.exclude.terms],
                               layers=layers, include_global=rule.include_global, warn=warn)


def unit_groups(space: ChannelSpace, rule: P.TransferRule) -> list[S.UnitGroup]:
    """The units the rule's selection ranks; raises if a count budget asks for more."""
    groups = S.unit_groups(space, candidate_entries(space, rule, warn=False), rule.granularity)
    S.check_budget(runtime_budget(rule.budget), groups)
    return groups


def runtime_budget(budget: P.Budget) -> Budget:
    if budget.kind == "threshold":
        return Budget("threshold", budget.value)
    if budget.kind == "count":
        return Budget("count", int(budget.value))
    mode = "global" if budget.scope == "global" else f"per_{budget.scope}"
    return Budget(mode, budget.value)  # type: ignore[arg-type]
