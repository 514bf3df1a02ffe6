"""`actc run --nproc N` (issue 13, part 2): every capture split between N real processes
(a gloo group), rank 0 writing — the same bytes as one process, and clean failures.

Each test runs the installed ``actc``; ``--nproc 2`` starts two ranks with torchrun's
environment (:mod:`actlang.run.launch`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import hashes, run_actc

pytestmark = pytest.mark.slow

SURGERY = '''
surgery s -> "{out}" {{
  target = tuned
  transfer sums from base {{ budget = 10% }}
  finetune {{ data = probe  steps = 3  lr = 1e-3  scope = transferred }}
}}
'''


def weights_and_results(output: Path) -> dict[str, object]:
    """What two runs of one spec must agree on: every tensor file's bytes, the selected
    channels and the evaluations (not timings, paths or what came from the cache)."""
    found: dict[str, object] = {
        p.relative_to(output).as_posix(): p.read_bytes()
        for p in sorted(output.rglob("*.safetensors"))}
    results = json.loads((output / "run_results.json").read_text())
    found["transfer"] = results["transfer"]
    found["evals"] = results["evals"]
    return found


def test_two_ranks_write_the_bytes_of_one_process(actc, write_spec, tmp_path):
    one_proc = write_spec(SURGERY.format(out="out/one"), name="one.act")
    two_procs = write_spec(SURGERY.format(out="out/two"), name="two.act")
    # each run with a cache of its own: both capture, neither reads the other's statistics
    single = run_actc(actc, "run", str(one_proc), "--json",
                      env={**actc.env, "ACTLANG_CACHE_DIR": str(tmp_path / "cache1")})
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_actc(actc, "run", str(two_procs), "--json", "--nproc", "2",
                      env={**actc.env, "ACTLANG_CACHE_DIR": str(tmp_path / "cache2")})
    assert double.returncode == 0, double.stderr[-3000:]
    assert weights_and_results(tmp_path / "out/one") == weights_and_results(tmp_path / "out/two")
    ops = json.loads(double.stdout)["ops"]
    # rank 0 scored its half of the corpus, the other rank the rest
    assert json.loads(double.stdout)["counters"]["tokens_scored"] * 2 == \
        json.loads(single.stdout)["counters"]["tokens_scored"]
    assert any(op["kind"] == "capture" and op["status"] == "done" for op in ops)
    # the statistics were cached once, by rank 0: the two caches hold the same entries
    assert sorted(p.name for p in (tmp_path / "cache1").rglob("*.safetensors")) == \
        sorted(p.name for p in (tmp_path / "cache2").rglob("*.safetensors"))
    # the other rank wrote nothing: no second lock, no work directory left
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def rank_env(env: dict[str, str], rank: int, port: int) -> dict[str, str]:
    """What torchrun gives rank ``rank`` of two on this machine."""
    return {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def test_ranks_that_planned_different_runs_are_refused(actc, write_spec, tmp_path):
    from actlang.run.launch import _free_port

    specs = [write_spec(SURGERY.format(out="out/s"), name="a.act"),
             write_spec(SURGERY.format(out="out/s").replace("10%", "20%"), name="b.act")]
    port = _free_port()
    ranks = [subprocess.Popen([actc.executable, "run", str(spec)], cwd=tmp_path,
                              env=rank_env(actc.env, rank, port), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)
             for rank, spec in enumerate(specs)]
    results = [rank.communicate(timeout=600) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [1, 1], results
    assert "rank 1 planned another run than rank 0" in results[0][1]
    assert "Traceback" not in results[0][1] + results[1][1]
    assert not (tmp_path / "out").exists()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def stopped(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def test_a_rank_killed_during_a_capture_stops_the_run_cleanly(actc, write_spec, tmp_path):
    from .test_faults import PAUSE_POINTS

    spec = write_spec(SURGERY.format(out="out/s"))
    env = {**actc.env, "ACTC_TEST_PAUSE": "call:actlang.run.ranks:Ranks.reduce",
           "ACTC_TEST_PAUSE_RANK": "1", "PYTHONPATH": str(PAUSE_POINTS)}
    launcher = subprocess.Popen([actc.executable, "run", str(spec), "--nproc", "2"],
                                cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (paused := [p for p in children_of(launcher.pid) if stopped(p)]):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.05)
    os.kill(paused[0], signal.SIGKILL)  # rank 1, about to send its share to rank 0
    stdout, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 1, stderr[-3000:]
    assert "rank 1 of 2 was killed by signal SIGKILL; the run is stopped" in stderr
    assert "Traceback" not in stderr
    # nothing half-written: no output, no work directory (the output's lock file may stay)
    assert [p.name for p in (tmp_path / "out").iterdir()] in ([], [".s.lock"])
    cached = hashes(tmp_path / "cache")
    # a rerun works from what is left, and its output is whole
    rerun = run_actc(actc, "run", str(spec), "--nproc", "2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tmp_path / "out/s/model.safetensors").is_file()
    assert all(hashes(Path(path)) == {path: digest} for path, digest in cached.items()
               if Path(path).exists() and Path(path).suffix == ".safetensors")
