"""The fixed batch tree: any split of the batches into contiguous ranges sums to the same
bits as one range (property-based), and the sum is the sum."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actlang.run.batchtree import BatchTree, Node, unite


def batch_values(count: int, seed: int) -> list[list]:
    """Per batch one slot of two entries; values spread over magnitudes, so the order of
    additions shows in the bits; entry ``b`` is missing from some batches (untouched)."""
    g = torch.Generator().manual_seed(seed)
    values = []
    for i in range(count):
        scale = 10.0 ** torch.randint(-8, 9, (5,), generator=g).double()
        slot = {"a": {"sum": torch.randn(5, generator=g, dtype=torch.float64) * scale}}
        if i % 3:
            slot["b"] = {"sum": torch.randn(3, generator=g, dtype=torch.float64)}
        values.append([slot, None])
    return values


def copy(value: list) -> list:
    return [None if s is None else {k: {f: t.clone() for f, t in d.items()} for k, d in s.items()}
            for s in value]


def split_sum(values: list[list], cuts: list[int]) -> list:
    """Each range summed in a tree of its own, the ranges' nodes pushed in order."""
    bounds = [0, *cuts, len(values)]
    total = BatchTree()
    for start, stop in zip(bounds, bounds[1:]):
        part = BatchTree()
        for index in range(start, stop):
            part.push(index, copy(values[index]))
        total.extend(part.nodes)
    return total.total()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.integers(0, n), max_size=6).map(sorted), st.integers(0, 99))))
def test_any_split_gives_the_same_bits(case):
    count, cuts, seed = case
    values = batch_values(count, seed)
    whole = split_sum(values, [])
    split = split_sum(values, cuts)
    assert split[1] is None and set(split[0]) == set(whole[0])
    for key in whole[0]:
        assert torch.equal(split[0][key]["sum"], whole[0][key]["sum"]), (key, cuts)
    plain = sum(v[0]["a"]["sum"] for v in values)
    assert torch.allclose(whole[0]["a"]["sum"], plain, rtol=1e-12, atol=0)


def test_the_order_matters_so_the_tree_is_needed():
    """A left fold and the tree differ in bits on such data: the property above is not
    vacuous (and a split left fold would differ from the whole)."""
    values = batch_values(13, 3)
    fold = values[0][0]["a"]["sum"].clone()
    for v in values[1:]:
        fold += v[0]["a"]["sum"]
    assert not torch.equal(fold, split_sum(values, [])[0]["a"]["sum"])


def test_nodes_are_the_aligned_blocks_of_a_range():
    tree = BatchTree()
    for index in range(5, 13):
        tree.push(index, [None])
    assert [(n.start, n.size) for n in tree.nodes] == [(5, 1), (6, 2), (8, 4), (12, 1)]


def test_phases_with_disjoint_entries_unite():
    first, second = BatchTree(), BatchTree()
    for index in range(3):
        first.push(index, [{"embed": {"sum": torch.ones(2, dtype=torch.float64)}}])
        second.push(index, [{"layer0": {"sum": torch.full((2,), 2.0, dtype=torch.float64)}}])
    (node,) = [n for n in unite([first, second]) if n.size == 2]
    assert set(node.value[0]) == {"embed", "layer0"}
    assert isinstance(node, Node) and node.value[0]["layer0"]["sum"].tolist() == [4.0, 4.0]
