"""What a rank other than 0 does in a run: its share of each capture rank 0 names.

Rank 0 runs the plan (:class:`~actlang.run.executor.Executor`); before each capture that
is not cached it sends the capture's position in the plan's order, and every other rank runs
the same capture handler on its share of the batches (:mod:`actlang.run.ranks`), whose
statistics go to rank 0. A rank here loads the capture's models (and releases those the
capture does not use), writes nothing — no cache entry, no output, no lock — and returns
when rank 0 says the run is over.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from actlang.compile import ops as O
from actlang.compile.cache import Cache
from actlang.compile.plan import Plan
from actlang.run import handlers
from actlang.run.context import RunContext, quiet_libraries
from actlang.run.ranks import Ranks

__all__ = ["serve"]


def serve(plan: Plan, cache: Cache, ranks: Ranks) -> None:
    """Run this rank's share of every capture rank 0 names, until it says the run is over.

    Args:
        plan: this rank's plan of the run (the same as rank 0's: checked before).
        cache: read for the zoo and converted inputs the plan resolved; never written.
        ranks: this process's place (not rank 0).
    """
    assert not ranks.is_root, "rank 0 runs the plan itself"
    quiet_libraries()
    # Libraries may write temporaries while loading; they go here, never beside an output.
    work = Path(tempfile.mkdtemp(prefix=f"actc-rank{ranks.rank}-"))
    ctx = RunContext(plan, cache, work, ranks=ranks)
    try:
        while (index := ranks.command(None)) is not None:
            op = plan.order[index]
            assert isinstance(op, O.Capture), f"rank 0 named {op.kind}, not a capture"
            _load_models_of(ctx, op)
            handlers.capture(ctx, op, {}, cached=False)
    finally:
        ctx.loaded.clear()
        shutil.rmtree(work, ignore_errors=True)


def _load_models_of(ctx: RunContext, op: O.Capture) -> None:
    """The capture's models in memory (unless it streams them), and no other."""
    streamed = (strategy := ctx.plan.strategies.get(op)) is not None and strategy.streamed
    wanted = set() if streamed else {m.name for m in op.models}
    for name in set(ctx.loaded) - wanted:
        del ctx.loaded[name]
    for model in op.models:
        if model.name in wanted and model.name not in ctx.loaded:
            ctx.loaded[model.name] = ctx.load(ctx.directory(model), model)
