"""Statistics summed along a fixed binary tree over batch indices: the same bits however
the batches are split between processes.

Floating-point addition is not associative, so a sum's bits depend on its order. Adding
batch after batch into one accumulator gives bits that only one process can reproduce; two
ranks each summing half and then adding the halves give others. Here each batch's sums are
kept apart and added along one tree fixed by the batch indices alone::

    node(level 0, i)     = the sums of batch i
    node(level k + 1, s) = node(k, s) + node(k, s + 2^k)      for s a multiple of 2^(k+1)

A range of batches ``[a, b)`` yields the tree's nodes that lie inside it (:class:`BatchTree`
pushes batches in order and adds two siblings as soon as both are known). Pushed in order,
the nodes of consecutive ranges combine into exactly the nodes that one process would have
made over the whole range: any split into ranks gives the same nodes, and the total is
their sum from the right. Memory: about ``2 log2(batches)`` nodes per range.

A node's value is a list of *slots* (one per statistic a pass computes; ``None`` where it
computes none), each ``{entry key: {field: float64 tensor}}``. A key a batch never touched
(an expert no token was routed to, a layer another phase of a streamed capture runs) is
absent and counts as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

__all__ = ["BatchTree", "Node", "Slots", "add_slots", "unite"]

#: One batch's (or node's) sums: per slot, entry key -> field -> float64 tensor.
Slots = list[Optional[dict[str, dict[str, torch.Tensor]]]]


@dataclass
class Node:
    """The sums of batches ``[start, start + size)``: a node of the fixed tree."""

    start: int
    size: int
    value: Slots

    def is_left_sibling_of(self, other: "Node") -> bool:
        return (self.size == other.size and self.start + self.size == other.start
                and self.start % (2 * self.size) == 0)


def add_slots(left: Slots, right: Slots) -> Slots:
    """``left + right`` slot by slot, key by key, field by field, into ``left`` (its tensors
    are the tree's own). The bits are those of ``left + right``."""
    assert len(left) == len(right), "nodes of one pass have the same slots"
    for mine, theirs in zip(left, right):
        if mine is None or theirs is None:
            assert mine is theirs, "a slot is computed in every batch or in none"
            continue
        for key, fields in theirs.items():
            own = mine.get(key)
            if own is None:  # untouched on the left: zeros, and 0 + x == x
                mine[key] = fields
                continue
            for name, tensor in fields.items():
                own[name].add_(tensor.to(own[name].device))
    return left


class BatchTree:
    """The nodes of the fixed tree that lie inside a range of pushed batches.

    Push batches (or nodes of the same tree) in increasing, contiguous order."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def push(self, index: int, value: Slots) -> None:
        """Add the sums of batch ``index``."""
        self.push_node(Node(index, 1, value))

    def push_node(self, node: Node) -> None:
        """Add a node of the tree (from another rank's range, say) after those pushed."""
        if self.nodes:
            last = self.nodes[-1]
            assert last.start + last.size == node.start, \
                f"batches pushed out of order: {node.start} after {last.start + last.size}"
        while self.nodes and self.nodes[-1].is_left_sibling_of(node):
            left = self.nodes.pop()
            node = Node(left.start, 2 * left.size, add_slots(left.value, node.value))
        self.nodes.append(node)

    def extend(self, nodes: Iterable[Node]) -> None:
        for node in nodes:
            self.push_node(node)

    def total(self) -> Slots | None:
        """The sum of every node, added from the right (``None`` when nothing was pushed)."""
        if not self.nodes:
            return None
        total = self.nodes[-1].value
        for node in reversed(self.nodes[:-1]):
            total = add_slots(node.value, total)
        return total


def unite(trees: Sequence[BatchTree]) -> list[Node]:
    """The nodes of trees over one batch range whose keys are disjoint (the phases of a
    streamed capture: embeddings, each layer, the final norm), node by node."""
    if not trees:
        return []
    shape = [(n.start, n.size) for n in trees[0].nodes]
    assert all([(n.start, n.size) for n in t.nodes] == shape for t in trees), \
        "phases of a capture cover the same batches"
    united = []
    for position, (start, size) in enumerate(shape):
        value: Slots = [None if slot is None else {} for slot in trees[0].nodes[position].value]
        for tree in trees:
            for mine, theirs in zip(value, tree.nodes[position].value):
                if mine is not None and theirs is not None:
                    overlap = mine.keys() & theirs.keys()
                    assert not overlap, f"two phases computed {sorted(overlap)[0]}"
                    mine.update(theirs)
        united.append(Node(start, size, value))
    return united
