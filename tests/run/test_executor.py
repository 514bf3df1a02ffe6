"""The executor in process, on the tiny pair: what it holds in memory while it runs a plan."""

from __future__ import annotations

from actlang.compile.cache import Cache
from actlang.compile.plan import make_plan
from actlang.lang.checker import check_file
from actlang.run.executor import Executor


def test_executor_releases_both_models_of_a_paired_capture(write_spec, tmp_path) -> None:
    """Both models' last use is the capture (no evals): neither may stay loaded."""
    spec = write_spec('surgery s -> "out/s" { target = tuned transfer sums from base '
                      '{ budget = 10% } eval = [] }')
    cache = Cache(tmp_path / "cache")
    executor = Executor(make_plan(check_file(spec), cache, dry_run=False), cache)
    seen = []
    executor.progress.op_finished = lambda op, status, seconds: seen.append(
        (op.kind, sorted(executor.loaded)))
    executor.run()
    assert ("capture", ["base", "tuned"]) in seen  # loaded while capturing
    assert executor.loaded == {}
