"""Checked program → operation graph (before optimization).

Every surgery (each point of a sweep is one) contributes its ops; equal ops are one node, so
what two surgeries share is computed once. Edges point from an op to the ops that use its
result. Statistics are attached to the models they need (``load → statistic``); the
``fuse_captures`` pass then groups them into forward passes.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace

import networkx as nx

from actlang.arch.registry import MODULE_KINDS, SCORES
from actlang.compile import ops as O
from actlang.lang import program as P


def lower(program: P.Program) -> nx.DiGraph:
    """Build the unoptimized graph of a program: one node per distinct op."""
    graph = nx.DiGraph()
    for surgery in program.surgeries:
        _lower_surgery(graph, surgery)
    return graph


def _statistics(score: O.Score, rule: P.TransferRule) -> list[O.Statistic]:
    """The statistics a score reads (none for random and weight_delta)."""
    corpora = [score.ability.probe]
    if score.contrast > 0:
        assert score.ability.control is not None, "the checker requires a control corpus"
        corpora.append(score.ability.control)
    tokenizer = score.target
    modules = "all" if _may_select_residual(rule) else "default"
    raw = tuple(dict.fromkeys(t for sign, t in rule.channels.terms
                              if sign > 0 and isinstance(t, P.RawModule)))
    method = SCORES[score.score.name]
    if method.inputs == "paired":
        local = method.statistic == "sum_local"
        return [O.Statistic(score.target, c, tokenizer, score.donor, modules, local, raw)
                for c in corpora]
    if method.inputs == "unpaired":
        return [O.Statistic(m, c, tokenizer, None, modules, raw=raw) for c in corpora
                for m in (score.target, score.donor)]
    return []


def _may_select_residual(rule: P.TransferRule) -> bool:
    """Whether the rule can select a kind that statistics do not hook by default (residual
    ones under include_global, lm_head when named)."""
    named = [t.glob for sign, t in rule.channels.terms
             if sign > 0 and isinstance(t, P.KindPattern)]
    return any(fnmatch.fnmatchcase(kind.name, glob) and
               ((kind.excluded and "*" not in glob) or (kind.residual and rule.include_global))
               for kind in MODULE_KINDS for glob in named)


def _lower_surgery(graph: nx.DiGraph, surgery: P.SurgerySpec) -> None:
    target = surgery.target
    state: O.ModelState
    donors: list[P.ModelSpec]
    if surgery.transfers:
        selections = []
        for rule in surgery.transfers:
            score = O.Score(target, rule.donor, rule.ability, rule.score, rule.normalize,
                            rule.contrast)
            graph.add_node(score)
            for statistic in _statistics(score, rule):
                for model in filter(None, (statistic.model, statistic.partner)):
                    graph.add_edge(O.LoadModel(model), statistic)
                graph.add_edge(statistic, score)
            select = O.Select(score, replace(rule, lambda_=1.0))
            graph.add_edge(score, select)
            selections.append((select, rule.lambda_))
        state = O.Transfer(target, tuple(selections), surgery.overlap)
        for select, _ in selections:
            graph.add_edge(select, state)
        donors = [rule.donor for rule in surgery.transfers]
    else:
        assert surgery.merge is not None, "the checker requires a transfer or merge rule"
        state = O.MergeModels(target, surgery.merge)
        graph.add_node(state)
        donors = list(surgery.merge.donors)
    stages: dict[str, O.ModelState] = {"target": target, "transferred": state, "output": state}
    if surgery.finetune is not None and surgery.finetune.scope != "none":
        finetuned = O.Finetune(state, surgery.finetune)
        graph.add_edge(O.LoadModel(target), finetuned)  # trains from the transferred weights
        graph.add_edge(state, finetuned)
        stages["output"] = finetuned
    save = O.Save(surgery, stages["output"])
    graph.add_edge(stages["output"], save)
    # The before/after table: target, donors, after transfer, after fine-tune.
    states = [target, *dict.fromkeys(donors), state, stages["output"]]
    measured = [(a, s) for a in surgery.evals for s in dict.fromkeys(states)]
    for expectation in surgery.expects:
        for measure in _measures(expectation.left) + _measures(expectation.right):
            on = stages[measure.on] if isinstance(measure.on, str) else measure.on
            measured.append((measure.ability, on))
    for ability, on in dict.fromkeys(measured):
        if not ability.evals:
            continue
        evaluate = O.Evaluate(ability, on)
        if isinstance(on, P.ModelSpec):
            graph.add_edge(O.LoadModel(on), evaluate)
        else:
            graph.add_edge(on, evaluate)
        graph.add_edge(evaluate, save)


def _measures(quantity: P.Quantity) -> list[P.Measure]:
    if isinstance(quantity, P.Measure):
        return [quantity]
    if isinstance(quantity, P.Arith):
        return _measures(quantity.left) + _measures(quantity.right)
    return []
