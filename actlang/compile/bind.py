"""Program values → runtime arguments: corpora, channel candidates, budgets.

The checker speaks the language's terms (a selector is a sequence of added and removed
patterns; a budget has a scope); the runtime speaks in entries of a model's
:class:`~actlang.arch.adapters.ChannelSpace`. This module translates, and reports what the
language promises to catch before any heavy work: a selector that matches nothing, residual
channels named without ``include_global``, a count budget larger than the candidates.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from actlang.arch.adapters import ChannelSpace, Entry, RawSelector
from actlang.arch.errors import RuntimeUserError
from actlang.compile.cache import Cache
from actlang.compile.resolve import zoo_corpus
from actlang.lang import program as P

if TYPE_CHECKING:  # the runtime imports torch: planning a config-only model does not need it
    from actlang.arch.corpus import Corpus
    from actlang.arch.selection import Budget


def runtime_corpus(spec: P.Corpus, cache: Cache) -> Corpus | None:
    """The documents of a corpus (None: a zoo corpus whose zoo is not built)."""
    from actlang.arch import corpus as C

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


def _matches(entry: Entry, pattern: P.KindPattern | P.RawModule) -> bool:
    if isinstance(pattern, P.RawModule):
        return entry.kind == "raw" and fnmatch.fnmatchcase(entry.key[len("raw."):],
                                                           pattern.glob.removesuffix(".weight"))
    return entry.kind != "raw" and fnmatch.fnmatchcase(entry.kind, pattern.glob)


def _explicit(pattern: P.KindPattern | P.RawModule) -> bool:
    return isinstance(pattern, P.RawModule) or "*" not in pattern.glob


def candidate_entries(space: ChannelSpace, rule: P.TransferRule) -> list[Entry]:
    """The entries a rule may select from, in the space's order.

    Terms apply left to right. Residual (global) channels need ``include_global``; kinds
    excluded by default (``lm_head``) come in only when named without a wildcard.
    """
    chosen: dict[str, Entry] = {}
    for sign, pattern in rule.channels.terms:
        hits = [e for e in space if _matches(e, pattern)]
        if sign > 0:
            if not hits:
                raise RuntimeUserError(
                    f"the selector `{_show(pattern)}` matches no module of this "
                    f"{space.model_type} model", hint="kinds here: " + ", ".join(space.kinds))
            for e in hits:
                if e.is_global and not rule.include_global:
                    if _explicit(pattern):
                        raise RuntimeUserError(
                            f"`{_show(pattern)}` channels are residual dimensions shared by the "
                            "whole model", hint="set include_global = true to move them anyway")
                    continue
                if e.default_excluded and not e.is_global and not _explicit(pattern):
                    continue  # lm_head: its rows are vocabulary entries, moved only by name
                chosen[e.key] = e
        else:
            for e in hits:
                chosen.pop(e.key, None)
    for _, pattern in rule.exclude.terms:
        for e in [e for e in chosen.values() if _matches(e, pattern)]:
            del chosen[e.key]
    if rule.layers is not None:
        start, stop = rule.layers
        if stop > space.n_layers:
            raise RuntimeUserError(f"layers {start}..{stop} reach past the model's "
                                   f"{space.n_layers} layers",
                                   hint=f"the last layer range is 0..{space.n_layers}")
        chosen = {k: e for k, e in chosen.items() if e.layer is not None and start <= e.layer < stop}
    entries = [e for e in space if e.key in chosen]
    if not entries:
        raise RuntimeUserError("the rule's channels, layers and exclusions leave nothing to select")
    return entries


def runtime_budget(budget: P.Budget) -> Budget:
    from actlang.arch.selection import Budget

    if budget.kind == "threshold":
        return Budget("threshold", budget.value)
    if budget.kind == "count":
        return Budget("count", int(budget.value))
    mode = "global" if budget.scope == "global" else f"per_{budget.scope}"
    return Budget(mode, budget.value)  # type: ignore[arg-type]


def check_budget(rule: P.TransferRule, entries: list[Entry]) -> int:
    """Channels the rule can choose from; raises if a count budget asks for more."""
    available = sum(e.size for e in entries)
    if rule.budget.kind == "count" and rule.budget.value > available:
        raise RuntimeUserError(
            f"the budget asks for {int(rule.budget.value)} channels but the selector matches "
            f"{available}", hint="lower the budget or widen `channels`")
    return available


def _show(pattern: P.KindPattern | P.RawModule) -> str:
    if isinstance(pattern, P.RawModule):
        return f'module("{pattern.glob}", axis = {pattern.axis})'
    return "all" if pattern.glob == "*" else pattern.glob
