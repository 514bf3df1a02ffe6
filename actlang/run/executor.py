"""Executing a plan: each op in the planned order, results cached, outputs written atomically.

:class:`Executor` walks ``plan.order`` and gives each op to its handler
(:data:`actlang.run.handlers.HANDLERS`) with the results of the op's graph predecessors.
Models load at their first use and are released after their last; statistics come from the
capture that computed them or from the cache (and are stored there as soon as they exist, so
an interrupted run resumes from them); transfers, merges and fine-tunes write into a hidden
work directory next to the outputs; ``save`` moves a finished stage into place with
``run_results.json`` (and the report) — atomically, so an interrupted run never leaves a
directory that looks finished.

Inputs are sacred: the whole run is guarded (:func:`actlang.run.output.guarded_outputs`) —
no directory is written over, inside or around a model, corpus, spec or the cache, and
``--force`` replaces only outputs of earlier actc runs (they carry its marker). The
temporaries of killed runs (work directories, unfinished outputs, cache entries) are
removed when the next run starts; every temporary file of a run, a library's included, lives
in its work directory. Two runs never write one output at once: a run holds each output's
lock (:func:`actlang.run.output.locked_output`), and one held by another run is a located
error at the surgery that writes it.

Progress goes to a :class:`~actlang.run.context.Progress` (rich bars on stderr in the CLI);
the clock is injectable so tests can check timings without sleeping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from actlang.arch.errors import RuntimeUserError, write_refused
from actlang.compile import ops as O
from actlang.compile.cache import Cache, remove_stale
from actlang.compile.passes import last_uses
from actlang.compile.plan import (
    Plan,
    PlanError,
    op_span,
    output_conflict,
    protected_paths,
    replace_problem,
)
from actlang.run import stats as S
from actlang.run.context import Progress, RunContext, quiet_libraries
from actlang.run.handlers import HANDLERS
from actlang.run.ranks import SINGLE, Ranks
from actlang.run.results import OpRecord, RunResult, SurgeryResult


class Executor:
    """Runs a plan made with ``dry_run=False``.

    Args:
        plan: the plan (its order, cache keys and resolved models).
        cache: where statistics and evaluations are read and written.
        spec_text: the spec, embedded in each output's model card.
        force: replace existing outputs.
        progress: receives progress events.
        clock: returns seconds (``time.perf_counter`` by default).
        ranks: the run's processes; this is rank 0, and the others wait in
            :func:`actlang.run.worker.serve` for each capture to run their share of it.
    """

    def __init__(self, plan: Plan, cache: Cache, *, spec_text: str = "", force: bool = False,
                 progress: Progress | None = None,
                 clock: Callable[[], float] = time.perf_counter, ranks: Ranks = SINGLE):
        assert ranks.is_root, "rank 0 runs the plan; the other ranks serve its captures"
        self.ranks = ranks
        self.plan = plan
        self.cache = cache
        self.spec_text = spec_text
        self.force = force
        self.progress = progress or Progress()
        self.clock = clock
        self.loaded: dict[str, Any] = {}  # models in memory, by name (empty after a run)
        quiet_libraries()

    def run(self) -> RunResult:
        from actlang.run.output import guarded_outputs


        protected = protected_paths(self.plan.program, self.cache)
        with guarded_outputs(protected):
            self._check_outputs(protected)  # before a lock file is made beside any output
            with self._locked_outputs():
                self._check_outputs(protected)  # another run may have written one meanwhile
                self._remove_stale()
                return self._run()

    def _remove_stale(self) -> None:
        """Remove what killed runs left in the cache and beside this run's outputs."""
        self.cache.remove_stale()
        for op in self.plan.order:
            if isinstance(op, O.Save):
                output = Path(op.surgery.output).absolute()
                remove_stale(output.parent, prefix=f".{output.name}.")

    @contextmanager
    def _locked_outputs(self) -> Iterator[None]:
        """Hold the lock of every output for the run: exclusive where it writes one, shared
        where it only reads one that is up to date."""
        from actlang.run.output import locked_output

        with ExitStack() as locks:
            for op in self.plan.order:
                if isinstance(op, O.Save):
                    try:
                        locks.enter_context(locked_output(
                            op.surgery.output, exclusive=op not in self.plan.cached))
                    except RuntimeUserError as error:  # located at the surgery that writes it
                        raise PlanError(error, op.surgery.span) from None
            yield

    def _run(self) -> RunResult:
        S.COUNTERS.reset()
        outputs = [Path(s.surgery.output) for s in self.plan.order if isinstance(s, O.Save)]
        ctx = RunContext(self.plan, self.cache, _work_dir(outputs), spec_text=self.spec_text,
                         force=self.force, progress=self.progress, loaded=self.loaded,
                         ranks=self.ranks)
        results: dict[O.Op, Any] = {}
        last = last_uses(self.plan.graph, self.plan.order)  # models freed after that op
        # Temporary files (the masks a transfer stages, a library's scratch files) go into the
        # work directory, which the next run removes if this one is killed.
        previous_tempdir, tempfile.tempdir = tempfile.tempdir, str(ctx.work)
        try:
            for index, op in enumerate(self.plan.order):
                self.progress.op_started(index, len(self.plan.order), op)
                start = self.clock()
                cached = op in self.plan.cached
                if isinstance(op, O.Capture) and not cached:
                    self.ranks.command(index)  # the other ranks run their share with us
                inputs = {p: results[p] for p in self.plan.graph.predecessors(op)}
                try:
                    outcome = HANDLERS[type(op)](ctx, op, inputs, cached)
                # A user's error, or a write the machine refused: located where the spec
                # asks for the operation.
                except (RuntimeUserError, OSError) as error:
                    user = write_refused(error) if isinstance(error, OSError) else error
                    raise PlanError(user, op_span(op, self.plan.program), code="E502") \
                        from None
                results[op] = outcome.value
                record = OpRecord(O.op_id(op), op.kind, op.label,
                                  "cached" if cached else "done", self.clock() - start,
                                  outcome.details)
                ctx.records[op] = record
                self.progress.op_finished(op, record.status, record.seconds)
                for load, last_index in last.items():
                    if last_index == index:  # several models can end at one op (a capture)
                        self.loaded.pop(load.model.name, None)
                        results.pop(load, None)
            self.ranks.command(None)  # the other ranks are done
        finally:
            tempfile.tempdir = previous_tempdir
            shutil.rmtree(ctx.work, ignore_errors=True)
        position = {s: i for i, s in enumerate(self.plan.program.surgeries)}
        surgeries = [r for r in results.values() if isinstance(r, SurgeryResult)]
        return RunResult([ctx.records[op] for op in self.plan.order],
                         sorted(surgeries, key=lambda r: position[r.surgery]),
                         S.COUNTERS.to_json())

    def _check_outputs(self, protected: list[tuple[Path, str]]) -> None:
        """Before anything runs: every output it will write is safe to write (the plan
        checked this; checked again here, as right before each write), and an existing one
        is replaced only with ``force`` and only if an earlier actc run wrote it."""
        for op in self.plan.order:
            if not isinstance(op, O.Save) or op in self.plan.cached:
                continue
            error = self._output_error(Path(op.surgery.output), protected)
            if error is not None:  # located at the surgery that writes it
                raise PlanError(error, op.surgery.span)

    def _output_error(self, output: Path, protected: list[tuple[Path, str]]
                      ) -> RuntimeUserError | None:
        """Why ``output`` may not be written (``None``: it may)."""
        problem = output_conflict(output, protected)
        if problem is not None:
            return RuntimeUserError(f"refusing to write the output to {output}: {problem}",
                                    hint="choose an output directory outside every input")
        if not (output.exists() or output.is_symlink()):
            return None
        problem = replace_problem(output)
        if not self.force:
            return RuntimeUserError(
                f"output {output} already exists" +
                (", made by an earlier run with other inputs" if problem is None else ""),
                hint="replace it with --force, or write elsewhere with --output"
                if problem is None else "write elsewhere with --output")
        if problem is not None:
            return RuntimeUserError(
                f"--force refuses to replace {output}: it {problem}",
                hint="--force replaces only outputs of earlier actc runs; delete it "
                "yourself if you mean it, or write elsewhere with --output")
        return None


def _work_dir(outputs: list[Path]) -> Path:
    """A hidden work directory beside the first output; stale ones of dead runs go first."""
    parent = (outputs[0].parent if outputs else Path.cwd()).absolute()
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, prefix=".actc-work-")
    work = parent / f".actc-work-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    return work
