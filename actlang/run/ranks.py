"""The processes of one run: which share of a corpus each computes, and how their
statistics meet on rank 0.

``actc run`` under ``torchrun`` (or ``actc run --nproc N``, :mod:`actlang.run.launch`) runs
one process per rank. Every rank plans the spec; rank 0 runs the plan, and before each
capture that is not cached it names the capture to the other ranks, which run their share
of it (:func:`actlang.run.worker.serve`). A capture's batches are split into contiguous
ranges, one per rank; each rank sums its range along the fixed batch tree
(:mod:`actlang.run.batchtree`) and sends its nodes to rank 0, which adds them in batch
order. So the statistics are the same bits for any number of ranks, one included, and only
rank 0 selects, transfers, fine-tunes, evaluates and writes.

The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPUs, nccl on GPUs (each rank on
``cuda:LOCAL_RANK``). Several hosts are the same code path::

    # on each of two hosts (node-rank 0 and 1), 8 processes each
    torchrun --nnodes 2 --node-rank $NODE --nproc-per-node 8 \\
        --master-addr host0 --master-port 29500 -m actlang.cli run spec.act
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from actlang.arch.errors import RuntimeUserError
from actlang.run.batchtree import BatchTree, Node, Slots

__all__ = ["Ranks", "SINGLE", "from_environment"]

#: How long a rank waits for another (a collective, a message) before it gives up. A rank
#: waits while rank 0 plans (which may build the zoo) and while rank 0 alone fine-tunes.
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("ACTC_RANK_TIMEOUT", 6 * 3600)))


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes (one process: ``SINGLE``).

    Args:
        rank: this process's index (0 selects, transfers and writes).
        world: the number of processes.
    """

    rank: int = 0
    world: int = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def batches(self, count: int) -> range:
        """This rank's contiguous share of ``count`` batches (shares differ by at most one)."""
        return range(self.rank * count // self.world, (self.rank + 1) * count // self.world)

    # -- statistics ---------------------------------------------------------------------------

    def reduce(self, nodes: Sequence[Node]) -> Slots | None:
        """The sum of every rank's nodes on rank 0; on the others, the sum of their own
        (``None``: no batch at all). Every rank calls it once per pass, in the same order."""
        if self.distributed:
            import torch.distributed as dist

            with _talking():
                if not self.is_root:
                    dist.send_object_list([[_on_cpu(node) for node in nodes]], dst=0)
                else:
                    tree = BatchTree()
                    tree.extend(nodes)
                    for source in range(1, self.world):
                        received: list[Any] = [None]
                        dist.recv_object_list(received, src=source)
                        tree.extend(received[0])
                    return tree.total()
        tree = BatchTree()
        tree.extend(nodes)
        return tree.total()

    # -- coordination --------------------------------------------------------------------------

    def command(self, value: int | None) -> int | None:
        """Rank 0 tells every rank what to do next (an op's index in the plan's order, or
        ``None``: the run is over); every other rank receives it."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        message = [value]
        with _talking():
            dist.broadcast_object_list(message, src=0)
        return message[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            with _talking():
                dist.barrier()

    def check_agreement(self, digest: str) -> None:
        """Refuse ranks that planned different runs (another spec, other inputs, another
        cache): their shares would be of different statistics."""
        if not self.distributed:
            return
        import torch.distributed as dist

        digests: list[Any] = [None] * self.world
        with _talking():
            dist.all_gather_object(digests, digest)
        strays = [rank for rank, theirs in enumerate(digests) if theirs != digests[0]]
        if strays:
            raise RuntimeUserError(
                f"rank {strays[0]} planned another run than rank 0 (its spec, inputs or "
                f"installed versions differ: plan digest {digests[strays[0]][:12]} vs "
                f"{digests[0][:12]})",
                hint="every rank needs the same spec, the same input files and the same "
                     "actlang, torch and transformers")

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


SINGLE = Ranks()


def from_environment() -> Ranks:
    """The ranks torchrun describes in the environment (joined here), or ``SINGLE``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    try:
        dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)
    except (RuntimeError, ValueError, KeyError) as error:
        raise RuntimeUserError(f"rank {rank} cannot join the run's {world} processes: {error}",
                               hint="start every rank with the same MASTER_ADDR and "
                                    "MASTER_PORT (torchrun sets them)") from None
    return Ranks(rank, world)


def plan_digest(plan: Any, spec_text: str) -> str:
    """What every rank must agree on: the spec and the plan's cache keys (which hash every
    input's bytes and the versions that compute on them)."""
    from actlang.compile import ops as O

    h = hashlib.sha256(spec_text.encode())
    for op in plan.order:
        h.update(f"{O.op_id(op)}={plan.keys.get(op, '')}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _talking() -> Iterator[None]:
    """A message to or from a rank that stopped (or never came) is the user's to know, not
    a traceback."""
    try:
        yield
    except RuntimeError as error:  # torch.distributed.DistError and gloo's errors
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        reason = re.sub(r"^\[[^\]]*\]\s*", "", reason)  # gloo's source location
        reason = reason.split(". This is typically")[0]
        raise RuntimeUserError(
            f"another rank of the run stopped or does not answer ({reason[:160]})",
            hint="its own error says why; outputs finished before stay, nothing is "
                 "half-written, and a rerun resumes from the cached statistics") from None


def _on_cpu(node: Node) -> Node:
    return Node(node.start, node.size, [
        None if slot is None else {k: {f: t.cpu() for f, t in fields.items()}
                                   for k, fields in slot.items()}
        for slot in node.value])
