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


def test_a_zoo_that_changes_during_a_run_is_a_located_error(
        tiny_zoo, zoo_cache_dir, tmp_path, monkeypatch) -> None:
    """The zoo's key hashes actlang's zoo code, so upgrading actlang during a run moves the
    zoo the plan found: the run stops with a located error (it was an AssertionError)."""
    import pytest

    from actlang.compile import resolve
    from actlang.compile.plan import PlanError

    monkeypatch.setenv("ACTLANG_ZOO_PROFILE", "tiny")
    spec = tmp_path / "repair.act"
    spec.write_text('use std.zoo\n'
                    'surgery repair -> "out/repair" {\n'
                    '  target = zoo.tuned\n'
                    '  transfer zoo.arithmetic from zoo.base { budget = 5% }\n'
                    '  eval = [zoo.arithmetic]\n'
                    '}\n')
    cache = Cache(zoo_cache_dir)
    plan = make_plan(check_file(spec), cache, dry_run=False)
    monkeypatch.setattr(resolve, "zoo_manifest", lambda ref, cache: None)
    with pytest.raises(PlanError) as raised:
        Executor(plan, cache).run()
    assert raised.value.code == "E502"
    assert "no longer where the plan found it" in raised.value.error.message
    # located at what reads the zoo's data: the ability, in the stdlib that defines it
    assert raised.value.span is not None and raised.value.span.file.endswith("std/zoo.act")
    assert not (tmp_path / "out/repair").exists()
