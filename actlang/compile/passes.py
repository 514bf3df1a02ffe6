"""Optimization passes over the operation graph. Each is a small function: graph in, graph out.

1. :func:`fuse_captures` — every statistic of one corpus comes from one forward pass per model.
2. :func:`drop_cached` — statistics, evaluations and up-to-date outputs need no work.
3. :func:`eliminate_dead_ops` — ops whose results reach no output are removed.
4. :func:`schedule` — a deterministic order that keeps few models in memory at once, with each
   model loaded once.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

import networkx as nx

from actlang.compile import ops as O
from actlang.lang import program as P


def fuse_captures(graph: nx.DiGraph) -> nx.DiGraph:
    """Group the statistics of each (corpus, tokenizer) into captures.

    Models linked by a paired statistic run in lock-step in one capture (the paired pass also
    yields each model's unpaired statistics); every other model needing statistics on the
    corpus gets a capture of its own. Either way each model runs over each corpus once.
    """
    graph = graph.copy()
    by_corpus: dict[tuple, list[O.Statistic]] = defaultdict(list)
    for op in graph.nodes:
        if isinstance(op, O.Statistic):
            by_corpus[(op.corpus, op.tokenizer)].append(op)
    for (corpus, tokenizer), statistics in by_corpus.items():
        links = nx.Graph()
        for s in statistics:
            links.add_node(s.model)
            if s.partner is not None:
                links.add_edge(s.model, s.partner)
        for component in sorted(nx.connected_components(links), key=_names):
            models = tuple(sorted(component, key=lambda m: m.name))
            members = tuple(sorted((s for s in statistics if s.model in component),
                                   key=lambda s: s.label))
            capture = O.Capture(corpus, tokenizer, models, members)
            for statistic in members:
                for load in list(graph.predecessors(statistic)):
                    graph.remove_edge(load, statistic)
                    graph.add_edge(load, capture)
                graph.add_edge(capture, statistic)
    return graph


def _names(models: Iterable[P.ModelSpec]) -> list[str]:
    return sorted(m.name for m in models)


def drop_cached(graph: nx.DiGraph, is_cached: Callable[[O.Op], bool]) -> tuple[nx.DiGraph,
                                                                               set[O.Op]]:
    """Detach the statistics, evaluations and outputs that ``is_cached`` finds (an output is
    cached when it exists and was made from the same inputs); shrink captures.

    A capture whose statistics are all cached disappears; one with some cached keeps only the
    models its missing statistics need. Returns the new graph and the set of cached ops
    (which stay in the graph, without inputs, so the plan can show them).
    """
    graph = graph.copy()
    cached = {op for op in graph.nodes
              if isinstance(op, (O.Statistic, O.Evaluate, O.Save)) and is_cached(op)}
    for op in cached:
        for source in list(graph.predecessors(op)):
            graph.remove_edge(source, op)
    for capture in [op for op in graph.nodes if isinstance(op, O.Capture)]:
        missing = tuple(s for s in capture.statistics if s not in cached)
        if len(missing) == len(capture.statistics):
            continue
        if not missing:
            graph.remove_node(capture)
            continue
        needed = {m for s in missing for m in filter(None, (s.model, s.partner))}
        smaller = O.Capture(capture.corpus, capture.tokenizer,
                            tuple(m for m in capture.models if m in needed), missing)
        nx.relabel_nodes(graph, {capture: smaller}, copy=False)
        for load in list(graph.predecessors(smaller)):
            if load.model not in needed:
                graph.remove_edge(load, smaller)
    return graph, cached


def eliminate_dead_ops(graph: nx.DiGraph) -> nx.DiGraph:
    """Keep only the ops some output (a Save) depends on. A cached Save has no inputs left,
    so what only it needed goes."""
    live: set[O.Op] = set()
    for save in (op for op in graph.nodes if isinstance(op, O.Save)):
        live.add(save)
        live |= nx.ancestors(graph, save)
    return graph.subgraph(live).copy()


def schedule(graph: nx.DiGraph) -> list[O.Op]:
    """A topological order that keeps loaded models few.

    Greedy list scheduling: run every ready op before loading another model; when only loads
    are ready, load the model whose users are closest to ready. Ties break on the pipeline
    stage, then the label, so the same graph always gives the same order. Each model loads
    once, at its first use, and is released after its last (:func:`last_uses`).
    """
    stage = {"load": 0, "capture": 1, "statistic": 2, "score": 3, "select": 4, "merge": 5,
             "transfer": 5, "finetune": 6, "eval": 7, "save": 8}
    indegree = {op: graph.in_degree(op) for op in graph.nodes}
    ready = {op for op, d in indegree.items() if d == 0}
    done: set[O.Op] = set()
    order: list[O.Op] = []

    def priority(op: O.Op) -> tuple:
        if isinstance(op, O.LoadModel):
            blocked = min((sum(1 for p in graph.predecessors(user) if p not in done and p != op)
                           for user in graph.successors(op)), default=0)
            return (1, blocked, op.label, O.op_id(op))
        # Evaluations of one model state run together, so the state is loaded once.
        group = O.op_id(op.state) if isinstance(op, O.Evaluate) and \
            not isinstance(op.state, P.ModelSpec) else ""
        return (0, stage[op.kind], group, op.label, O.op_id(op))

    while ready:
        op = min(ready, key=priority)
        ready.remove(op)
        order.append(op)
        done.add(op)
        for successor in graph.successors(op):
            indegree[successor] -= 1
            if indegree[successor] == 0:
                ready.add(successor)
    assert len(order) == graph.number_of_nodes(), "the operation graph has a cycle"
    return order


def defer_cached(graph: nx.DiGraph, order: list[O.Op], cached: set[O.Op]) -> list[O.Op]:
    """``order`` with each cached op moved to just before its first user (a cached op has
    no inputs left, so the schedule puts it first; read there, a plan lists a cached
    statistic before the model and capture it comes from). Still a topological order."""
    deferred = [op for op in order if op in cached]
    position = {op: i for i, op in enumerate(op for op in order if op not in cached)}
    before: dict[int, list[O.Op]] = {}
    for op in deferred:
        users = [position[s] for s in graph.successors(op) if s in position]
        before.setdefault(min(users, default=len(position)), []).append(op)
    result: list[O.Op] = []
    for index, op in enumerate([op for op in order if op not in cached] + [None]):
        result += before.get(index, [])
        if op is not None:
            result.append(op)
    assert len(result) == len(order)
    return result


def last_uses(graph: nx.DiGraph, order: list[O.Op]) -> dict[O.LoadModel, int]:
    """For each load, the index in ``order`` of the last op that uses the loaded model."""
    position = {op: i for i, op in enumerate(order)}
    return {op: max((position[s] for s in graph.successors(op)), default=position[op])
            for op in order if isinstance(op, O.LoadModel)}
