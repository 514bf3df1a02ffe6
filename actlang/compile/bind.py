"""Program values → runtime arguments: corpora, channel candidates, budgets.

The checker speaks the language's terms (a selector is a sequence of added and removed
patterns; a budget has a scope); the runtime speaks in entries of a model's
:class:`~actlang.arch.adapters.ChannelSpace`. This module translates, and reports what the
language promises to catch before any heavy work: a selector that matches nothing, residual
channels named without ``include_global``, a count budget larger than the candidates.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

from actlang.arch import corpus as C
from actlang.arch import selection as S
from actlang.arch.adapters import ChannelSpace, Entry, RawSelector
from actlang.arch.errors import RuntimeUserError, UnmeasuredChannelWarning
from actlang.arch.registry import SCORES, budget_mode
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
    """The escape-hatch selectors a rule names, for the channel spaces of its target and
    donor (the planner adds their entries from safetensors headers).

    ``module(glob, axis)`` names modules by checkpoint path (a trailing ``.weight`` may be
    written); channel ``i`` is index ``i`` of the weight along ``axis``. Weights move along
    any axis, so ``weight_delta`` and ``random`` score any raw channel. Activation scores
    read the module's *outputs* (forward hooks), which measure the channels only along the
    output axis — the channel space's own axis for a module it describes (curated or
    derived), 0 (``nn.Linear``'s ``[out, in]``) for any other
    (:func:`~actlang.arch.selection.measures_outputs`). Along another axis, e.g.
    ``axis = 1`` on a Linear (its input columns), the output has no per-channel activation,
    and the planner refuses such a rule rather than measure the wrong features. A raw channel of a module the space describes is also refused by a
    score that refuses that module's kind (``local_absdiff`` on a norm).
    """
    terms = [*rule.channels.terms, *rule.exclude.terms]
    return [RawSelector(t.glob.removesuffix(".weight"), t.axis) for _, t in terms
            if isinstance(t, P.RawModule)]


def raw_entries(space: ChannelSpace, modules: Iterable[P.RawModule]) -> list[Entry]:
    """The raw entries of ``space`` that ``module(...)`` selectors match, in its order."""
    terms = [_term(m) for m in modules]
    return [e for e in space if any(t.matches(e) for t in terms)]


def _term(pattern: P.KindPattern | P.RawModule) -> Term:
    if isinstance(pattern, P.RawModule):
        return Term(pattern.glob, pattern.axis)
    return Term(pattern.glob)


def candidate_entries(space: ChannelSpace, rule: P.TransferRule, *,
                      warn: bool = True) -> list[Entry]:
    """The entries a rule may select from (:func:`actlang.arch.selection.candidate_entries`,
    which plan and run both call through here).

    A score of activations cannot rank a module without a token-wise output (a
    mixture-of-experts router): under a wildcard such entries are left out, with an
    :class:`~actlang.arch.errors.UnmeasuredChannelWarning`; named exactly, they are an error.
    """
    layers = None if rule.layers is None else range(*rule.layers)
    terms = [(sign, _term(t)) for sign, t in rule.channels.terms]
    entries = S.candidate_entries(space, terms, exclude=[_term(t) for _, t in rule.exclude.terms],
                                  layers=layers, include_global=rule.include_global, warn=warn)
    if not SCORES[rule.score.name].reads_activations:
        return entries
    unmeasured = [e for e in entries if e.hook is None and e.kind != "raw"]
    if not unmeasured:
        return entries
    kinds = sorted({e.kind for e in unmeasured})
    named = [str(t) for sign, t in terms
             if sign > 0 and not t.raw and "*" not in t.glob and t.glob in kinds]
    if named:
        raise RuntimeUserError(
            f"`{rule.score.name}` measures activations, and {', '.join(named)} has none "
            "(its module has no token-wise output)", hint="score it with weight_delta")
    if warn:
        warnings.warn(UnmeasuredChannelWarning(
            f"`{rule.score.name}` leaves out {len(unmeasured)} modules it cannot measure "
            f"({_kind_list(kinds)}): only weight_delta or random rank them"), stacklevel=2)
    return [e for e in entries if e.hook is not None or e.kind == "raw"]


def _kind_list(kinds: list[str], shown: int = 3) -> str:
    return ", ".join(kinds[:shown]) + (f" and {len(kinds) - shown} more" if len(kinds) > shown
                                       else "")


def unit_groups(space: ChannelSpace, rule: P.TransferRule,
                entries: Sequence[Entry] | None = None) -> list[S.UnitGroup]:
    """The units the rule's selection ranks; raises if a count budget asks for more.

    Args:
        space: the target's channel space.
        rule: the rule.
        entries: the rule's candidates when the caller has them already
            (:func:`candidate_entries`); computed otherwise.
    """
    if entries is None:
        entries = candidate_entries(space, rule, warn=False)
    groups = S.unit_groups(space, entries, rule.granularity)
    S.check_budget(runtime_budget(rule.budget), groups)
    return groups


def runtime_budget(budget: P.Budget) -> Budget:
    """The runtime budget of a language budget: the registry's mode of its kind and scope
    (the checker refuses pairs without one, such as a count per module)."""
    mode = budget_mode(budget.kind, budget.scope)
    assert mode is not None, budget
    return Budget(mode.name, int(budget.value) if mode.kind == "count" else budget.value)
