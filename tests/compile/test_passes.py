"""Graph passes on checked programs (no model files needed: the graph is symbolic)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from actlang.compile import ops as O
from actlang.compile.lower import lower
from actlang.compile.passes import (
    drop_cached,
    eliminate_dead_ops,
    fuse_captures,
    last_uses,
    schedule,
)
from actlang.lang.checker import check_source

SPEC = '''
model base = local("b")
model tuned = local("t")
model other = local("o")
corpus probe = lines(["a", "b"])
corpus text = lines(["c"])
ability math {
  probe = probe
  control = text
  eval = perplexity(text)
}
'''


def graph_of(body: str, tmp_path: Path) -> nx.DiGraph:
    return fuse_captures(lower(check_source(SPEC + body, str(tmp_path / "s.act"))))


def nodes(graph: nx.DiGraph, kind: type) -> list:
    return [op for op in graph.nodes if isinstance(op, kind)]


def test_three_rules_from_one_donor_share_one_capture(tmp_path: Path) -> None:
    graph = graph_of('''
      surgery a -> "a" { target = tuned  transfer math from base { budget = 1% } }
      surgery b -> "b" { target = tuned  transfer math from base { budget = 2% per layer } }
      surgery c -> "c" { target = tuned  transfer math from base { budget = 5%
                                                                  score = absmean_diff } }''',
                     tmp_path)
    (capture,) = nodes(graph, O.Capture)
    assert [m.name for m in capture.models] == ["base", "tuned"]
    assert [tuple(m.name for m in p) for p in capture.passes()] == [("tuned", "base")]
    assert len(capture.statistics) == 3  # paired, and each model's unpaired: one pass


def test_a_budget_sweep_shares_scores(tmp_path: Path) -> None:
    graph = graph_of('surgery s -> "s" { target = tuned  transfer math from base '
                     '{ budget = sweep(1%, 2%, 5%, 10%) lambda = sweep(0.5, 1.0) } }', tmp_path)
    assert len(nodes(graph, O.Score)) == 1
    assert len(nodes(graph, O.Select)) == 4  # lambda does not change the selection
    assert len(nodes(graph, O.Transfer)) == 8
    assert len(nodes(graph, O.Capture)) == 1


def test_contrast_adds_a_capture_on_the_control_corpus(tmp_path: Path) -> None:
    graph = graph_of('surgery s -> "s" { target = tuned  transfer math from base '
                     '{ budget = 1% contrast = 0.5 } }', tmp_path)
    assert sorted(O.corpus_label(c.corpus) for c in nodes(graph, O.Capture)) == \
        ["1 inline lines", "2 inline lines"]


def test_controls_need_no_capture(tmp_path: Path) -> None:
    graph = graph_of('surgery s -> "s" { target = tuned  transfer math from base '
                     '{ budget = 1% score = sweep(random(seed = 1), weight_delta) } '
                     'eval = [] }', tmp_path)
    assert nodes(graph, O.Capture) == [] and nodes(graph, O.LoadModel) == []


def test_two_donors_share_one_lockstep_pass_of_the_target(tmp_path: Path) -> None:
    graph = graph_of('surgery s -> "s" { target = tuned '
                     'transfer math from base { budget = 1% } '
                     'transfer math from other { budget = 1% } }', tmp_path)
    (capture,) = nodes(graph, O.Capture)
    assert [tuple(m.name for m in p) for p in capture.passes()] == [("tuned", "base", "other")]
    assert capture.pass_count() == 3  # each model runs over the corpus once


def test_cached_statistics_remove_the_capture_and_its_loads(tmp_path: Path) -> None:
    graph = graph_of('surgery s -> "s" { target = tuned  transfer math from base '
                     '{ budget = 1% } eval = [] }', tmp_path)
    graph, cached = drop_cached(graph, lambda op: isinstance(op, O.Statistic))
    graph = eliminate_dead_ops(graph)
    assert nodes(graph, O.Capture) == [] and nodes(graph, O.LoadModel) == []
    assert len(cached) == 1


def test_partly_cached_capture_keeps_only_the_models_it_needs(tmp_path: Path) -> None:
    graph = graph_of('surgery s -> "s" { target = tuned  transfer math from base '
                     '{ budget = 1% score = absmean_diff } eval = [] }', tmp_path)
    graph, _ = drop_cached(graph, lambda op: isinstance(op, O.Statistic) and
                           op.model.name == "tuned")
    (capture,) = nodes(graph, O.Capture)
    assert [m.name for m in capture.models] == ["base"]
    assert [p.model.name for p in graph.predecessors(capture)] == ["base"]


def test_a_cached_output_drops_everything_only_it_needed(tmp_path: Path) -> None:
    graph = graph_of('surgery s -> "s" { target = tuned  transfer math from base '
                     '{ budget = 1% } }', tmp_path)
    graph, _ = drop_cached(graph, lambda op: isinstance(op, O.Save))
    assert [op.kind for op in eliminate_dead_ops(graph).nodes] == ["save"]


def test_schedule_is_topological_deterministic_and_loads_each_model_once(tmp_path: Path) -> None:
    body = ('surgery s -> "s" { target = tuned  transfer math from base '
            '{ budget = sweep(1%, 2%) } }')
    first = schedule(eliminate_dead_ops(graph_of(body, tmp_path)))
    second = schedule(eliminate_dead_ops(graph_of(body, tmp_path)))
    assert [O.op_id(op) for op in first] == [O.op_id(op) for op in second]
    graph = eliminate_dead_ops(graph_of(body, tmp_path))
    position = {op: i for i, op in enumerate(first)}
    assert all(position[a] < position[b] for a, b in graph.edges)
    assert sum(isinstance(op, O.LoadModel) for op in first) == 2
    # Evaluations of one model state are adjacent (the state is loaded once).
    states = [O.op_id(op.state) for op in first
              if isinstance(op, O.Evaluate) and not hasattr(op.state, "source")
              and isinstance(op.state, O.Transfer)]
    assert states == sorted(states, key=states.index) and \
        all(states[i] == states[i + 1] or states[i] not in states[i + 1:]
            for i in range(len(states) - 1))


def test_models_are_released_after_their_last_use(tmp_path: Path) -> None:
    graph = eliminate_dead_ops(graph_of('surgery s -> "s" { target = tuned  transfer math '
                                        'from base { budget = 1% } eval = [] }', tmp_path))
    order = schedule(graph)
    ends = last_uses(graph, order)
    (capture,) = [i for i, op in enumerate(order) if isinstance(op, O.Capture)]
    assert set(ends.values()) == {capture}  # both models are free after the capture

