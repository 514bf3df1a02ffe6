"""``actc run --nproc N``: start N ranks of the same run on this machine, as ``torchrun
--standalone --nproc-per-node N`` would, and stop them all when one fails.

Each rank is ``python -m actlang.cli run ...`` with torchrun's environment (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), so a run started here and
one started by torchrun take the same code path (:mod:`actlang.run.ranks`). Unless the
environment says otherwise, each rank gets ``cores / N`` threads (``OMP_NUM_THREADS``), as
torchrun gives one: N ranks on one machine share its cores.

A rank that stops with an error or a signal stops the run: the launcher interrupts rank 0
(SIGINT: it unwinds as after Ctrl-C, removing its work directory) and terminates the others,
then exits 1 with a line that names the rank. Rank 0's own errors are printed by rank 0, and
its exit status (1 for a user error, 3 for a failed gate) is the launcher's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Sequence

__all__ = ["launch"]

#: Seconds a rank has to stop after it was asked to, before it is killed.
GRACE = 20.0


def launch(arguments: Sequence[str], nproc: int, echo: Callable[[str], None],
           poll: float = 0.1) -> int:
    """Run ``actc`` with ``arguments`` as ``nproc`` ranks; the exit status of the run.

    Args:
        arguments: the command line after ``actc`` (``run spec.act ...``), without ``--nproc``.
        nproc: ranks to start.
        echo: prints a line for the user (stderr).
        poll: seconds between looks at the ranks.
    """
    assert nproc >= 2, "one process needs no launcher"
    environment = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                   "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
                   "GROUP_RANK": "0", "ROLE_RANK": "0"}
    environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = [sys.executable, "-m", "actlang.cli", *arguments]
    ranks = [subprocess.Popen(command, env={**environment, "RANK": str(r), "LOCAL_RANK": str(r),
                                            "ROLE_RANK": str(r)})
             for r in range(nproc)]
    try:
        while True:
            codes = [rank.poll() for rank in ranks]
            failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                return _stop(ranks, failed[0], echo)
            if all(code == 0 for code in codes):
                return 0
            time.sleep(poll)
    except KeyboardInterrupt:  # Ctrl-C reached every rank too: let them unwind
        _wait(ranks)
        return 130


def _stop(ranks: list[subprocess.Popen], failed: int, echo: Callable[[str], None]) -> int:
    """Stop the run after rank ``failed`` stopped; the launcher's exit status."""
    code = ranks[failed].returncode
    for r, rank in enumerate(ranks):
        if rank.poll() is None:
            rank.send_signal(signal.SIGINT if r == 0 else signal.SIGTERM)
    _wait(ranks)
    if failed == 0:  # rank 0 printed its error (or the failed gates) itself
        return code
    how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else \
        f"stopped with exit status {code}"
    echo(f"error: rank {failed} of {len(ranks)} {how}; the run is stopped (outputs finished "
         f"before stay, nothing is half-written; a rerun resumes from the cached statistics)")
    return 1


def _wait(ranks: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + GRACE
    for rank in ranks:
        try:
            rank.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rank.kill()
            rank.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
