"""Faults and concurrency through the installed `actc` (issue 12, part 7): a run killed
(SIGKILL) at every phase, interrupted (Ctrl-C, SIGINT) at a few, and runs that share an
output or a cache at once.

**Timing a fault.** Each faulty run is the real ``actc run``, with
``tests/run/pause_points`` on its ``PYTHONPATH``: its ``sitecustomize`` makes the process
stop itself (SIGSTOP) at a named point — a function's entry, or the rename that finishes a
file — and the test then kills, interrupts or resumes it there. A fault lands in the phase
it names every time, not after a guessed delay (the progress lines come only when an op
ends, and most ops last milliseconds).

**What a fault must leave**, checked right after it:

- no output that looks finished: the output directory is absent, or finished and equal to a
  clean run's (its marker written last, inside the unfinished directory, before the rename);
- a sound cache: every entry matches its checksum (a checksum may wait for an entry that a
  kill kept from its rename; the next store of that key replaces it);
- the inputs and the spec unchanged (hashes);
- no temporaries but the killed run's own: hidden, named with its pid, in the output's
  folder or the cache, and the lock file of an output (its lock died with the run) — none
  in ``TMPDIR`` (a temporary there would never be found again);

and the rerun then succeeds, reports no corrupt cache entry, leaves nothing behind, and
writes an output equal to a clean run's.

**Equal outputs** are equal file by file, byte for byte — weights, masks, plots, configs,
model card, reports — except ``run_results.json``'s ``ops`` and ``counters``: each op's timing
and whether it came from the cache, and the forward passes counted (a rerun takes the
statistics a killed run cached). Outputs and reports name their spec and output by absolute
path, and an output's key digests its path, so every run of this module happens in one
directory (``where``), the clean runs' included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import (
    PRELUDE,
    actc_in,
    assert_located_error,
    hashes,
    run_actc,
    surgery_line,
)

PAUSE_POINTS = Path(__file__).parent / "pause_points"

#: The run every fault interrupts: statistics, selection, transfer, a fine-tune and the
#: ability's evaluations (of the inputs and of both stages), saved with its report.
SURGERY = '''
surgery s -> "out/s" {
  target = tuned
  transfer sums from base { budget = 10% }
  finetune { data = probe steps = 2 lr = 1e-3 scope = transferred }
}
'''

#: Another spec over the same inputs: the same statistics and input evaluations (so two
#: runs sharing a cache write the same entries), a different output.
OTHER_SURGERY = '''
surgery t -> "out/t" { target = tuned  transfer sums from base { budget = 20% } }
'''

#: Where the spec of each output is, below ``where``.
SPEC_FOLDERS = {"s": "a", "t": "b"}

#: A temporary of a run: hidden, named with its writer's pid (see actlang.compile.cache).
TEMPORARY = re.compile(r"^\.(?:.+\.(?:tmp|old)|actc-work)-(\d+)-")
#: An output's lock file (actlang.run.output.locked_output).
OUTPUT_LOCK = re.compile(r"^\..+\.lock$")


# ---- the inputs, a clean run, and running actc in the background -----------------------------


@pytest.fixture(scope="module")
def site(pair: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's folder: ``inputs``, its copy of the pair (a fault that wrote over an
    input would damage only it), and ``run``, where every run happens (see ``where``)."""
    site = tmp_path_factory.mktemp("faults")
    shutil.copytree(pair, site / "inputs")
    return site


def fresh_run_folder(site: Path) -> Path:
    """``site / "run"``, empty; what an earlier test left there is moved aside, to be read
    after a failure."""
    where = site / "run"
    if where.exists():
        where.rename(site / f"run-{len(list(site.glob('run-*')))}")
    where.mkdir()
    (where / "tmp").mkdir()
    return where


def write_spec(where: Path, inputs: Path, body: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    spec = where / "spec.act"
    spec.write_text(PRELUDE.format(root=inputs) + body)
    return spec


def fingerprint(output: Path) -> dict[str, Any]:
    """What must be equal between two runs' ``output`` (see the module's docstring)."""
    found: dict[str, Any] = {}
    for file in sorted(p for p in output.rglob("*") if p.is_file()):
        name = file.relative_to(output).as_posix()
        if name == "run_results.json":
            results = json.loads(file.read_text())
            del results["ops"], results["counters"]  # timings, cache hits, passes run
            found[name] = results
        else:
            found[name] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


@dataclass(frozen=True)
class Reference:
    """Clean runs of both specs (serially, one cache): fingerprints, and ``output``, a copy
    of the first's (an earlier output for --force to replace)."""

    s: dict[str, Any]
    t: dict[str, Any]
    output: Path


@pytest.fixture(scope="module")
def reference(site: Path) -> Reference:
    where = fresh_run_folder(site)
    actc = actc_in(where)
    prints = []
    for name, body in (("s", SURGERY), ("t", OTHER_SURGERY)):
        spec = write_spec(where / SPEC_FOLDERS[name], site / "inputs", body)
        result = run_actc(actc, "run", str(spec), cwd=spec.parent)
        assert result.returncode == 0, result.stderr[-3000:]
        prints.append(fingerprint(spec.parent / "out" / name))
    earlier = Path(shutil.copytree(where / SPEC_FOLDERS["s"] / "out" / "s",
                                   site / "earlier-output"))
    return Reference(*prints, output=earlier)


@pytest.fixture
def where(site: Path) -> Path:
    """The folder of this test's runs (``site / "run"``, as for the clean runs, which
    pytest makes first: a module's fixtures come before a test's): the spec of ``s`` in
    ``a``, that of ``t`` in ``b``, the cache in ``cache``, ``TMPDIR`` ``tmp``."""
    return fresh_run_folder(site)


@pytest.fixture
def actc(where: Path):
    """The installed ``actc`` in ``where``."""
    return actc_in(where)


@pytest.fixture
def env(actc, where: Path) -> dict[str, str]:
    """``actc``'s environment with a private ``TMPDIR``, empty at first."""
    return {**actc.env, "TMPDIR": str(where / "tmp")}


@pytest.fixture
def inputs(site: Path) -> Path:
    return site / "inputs"


@pytest.fixture
def spec(where: Path, inputs: Path) -> Path:
    return write_spec(where / SPEC_FOLDERS["s"], inputs, SURGERY)


def _interruptible() -> None:
    """In the child, before actc starts: Ctrl-C acts as in a terminal even where the tests
    run in the background (a shell starts background jobs with SIGINT ignored, Python then
    installs no handler for it, and the interrupt tests would see a run that ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Run:
    """``actc run SPEC *args`` in the background (in the spec's folder), optionally stopping
    itself at ``pause`` (a pause point, see tests/run/pause_points/sitecustomize.py)."""

    def __init__(self, actc, env: dict[str, str], spec: Path, *args: str,
                 pause: str | None = None) -> None:
        if pause is not None:
            env = {**env, "ACTC_TEST_PAUSE": pause,
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(PAUSE_POINTS),
                                                               env.get("PYTHONPATH")]))}
        # files, not pipes: a pipe nobody reads while the run is stopped could fill and block it
        self.stdout, self.stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([actc.executable, "run", str(spec), *args],
                                        cwd=spec.parent, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self.stdout, stderr=self.stderr,
                                        preexec_fn=_interruptible)
        self.pid = self.process.pid

    def wait_paused(self, timeout: float = 300) -> None:
        """Wait until the run stops itself at its pause point (fails if it ends first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WUNTRACED | os.WNOHANG)
            if pid and os.WIFSTOPPED(status):
                return
            if pid:  # reaped here: tell the Popen, which cannot wait for it any more
                self.process.returncode = os.waitstatus_to_exitcode(status)
                pytest.fail(f"actc ended ({self.process.returncode}) before its pause "
                            f"point:\n{self.finish().stderr[-3000:]}")
            time.sleep(0.02)
        self.kill()
        pytest.fail("actc did not reach its pause point in time")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        assert self.finish().returncode == -signal.SIGKILL

    def interrupt(self) -> subprocess.CompletedProcess:
        """Ctrl-C: SIGINT, then SIGCONT, so that the run goes on right into it."""
        self.process.send_signal(signal.SIGINT)
        self.resume()
        return self.finish()

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def finish(self, timeout: float = 600) -> subprocess.CompletedProcess:
        """Wait for the run to end: its exit status and output."""
        self.process.wait(timeout=timeout)
        streams = []
        for stream in (self.stdout, self.stderr):
            stream.seek(0)
            streams.append(stream.read())
            stream.close()
        return subprocess.CompletedProcess(self.process.args, self.process.returncode,
                                           *streams)


# ---- what a fault may leave -------------------------------------------------------------------


def output_of(where: Path, name: str = "s") -> Path:
    return where / SPEC_FOLDERS[name] / "out" / name


def leftovers(where: Path) -> list[Path]:
    """Temporaries and output lock files of actc under ``where``, and every file in its
    ``TMPDIR``."""
    found = {p for p in where.rglob("*") if TEMPORARY.match(p.name) or OUTPUT_LOCK.match(p.name)}
    return sorted(found | set((where / "tmp").iterdir()))


def assert_cache_sound(cache: Path, *, settled: bool) -> None:
    """Every cache entry matches its checksum; ``settled``: every checksum has its entry
    (true once a run ended normally: a kill can leave a checksum waiting for its entry)."""
    entries = {p for kind in ("stats", "evals") for p in (cache / kind).glob("*/*")
               if not p.name.startswith(".") and not p.name.endswith(".sha256")}
    for entry in entries:
        recorded = entry.with_name(entry.name + ".sha256").read_text().split()[0]
        assert hashlib.sha256(entry.read_bytes()).hexdigest() == recorded, entry
    if settled:
        checksums = set(cache.glob("*/*/*.sha256"))
        assert {c.with_name(c.name.removesuffix(".sha256")) for c in checksums} == entries
    if (cache / "digests.json").exists():
        json.loads((cache / "digests.json").read_text())


def assert_nothing_half_done(where: Path, reference: Reference, *, owner: int) -> None:
    """Right after a fault in the run ``owner`` (see the module's docstring)."""
    output = output_of(where)
    if output.exists():
        assert fingerprint(output) == reference.s
    visible = [p.name for p in output.parent.glob("*") if not p.name.startswith(".")]
    assert visible in ([], ["s"]), visible
    assert_cache_sound(where / "cache", settled=False)
    for path in leftovers(where):
        match = TEMPORARY.match(path.name)
        assert match and int(match.group(1)) == owner or OUTPUT_LOCK.match(path.name), path


def assert_finished_cleanly(where: Path, result: subprocess.CompletedProcess,
                            fingerprints: dict[str, dict[str, Any]]) -> None:
    """A run in ``where`` succeeded, used no corrupt cache entry, wrote outputs equal to
    ``fingerprints`` (by output name) and left nothing behind."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert "corrupt" not in result.stderr and "Traceback" not in result.stderr
    for name, expected in fingerprints.items():
        assert fingerprint(output_of(where, name)) == expected
    assert leftovers(where) == []
    assert_cache_sound(where / "cache", settled=True)


# ---- 1. SIGKILL at every phase ----------------------------------------------------------------


def phase_id(phase: str) -> str:
    """A phase as a test id: ``-k transfer``, ``-k fine-tune``."""
    return phase.replace(" ", "-").replace("'", "")


#: The phases killed over an earlier output of the spec, replaced with --force: the output
#: must exist, whole, at each of them.
REPLACING = ("replacing the output", "removing the replaced output")

#: Each phase, and the pause point where a run is killed in it.
KILLS = {
    # planning hashes the weights and memoizes their digests: killed before the memo's rename
    "planning": "replace:*/cache/digests.json",
    # the second forward batch of the capture (the first one's statistics are in memory)
    "statistics capture": "call:actlang.run.stats:_run#2",
    # the entry complete in its temporary, its checksum already in place, before the rename
    "statistics cache write": "replace:*/cache/stats/*/*.safetensors",
    # the handler has read the donor's and the target's weights to find changed channels
    "selection": "call:actlang.run.select:select_channels",
    # the second changed tensor (one donor: its slices moved in place): the transferred
    # weights half written in the work directory
    "transfer": "call:actlang.run.transfer:move_slices#2",
    "fine-tune": "call:actlang.run.finetune:causal_lm_loss#2",
    # the third evaluation: of the fine-tuned stage, in the work directory
    "evaluation": "call:actlang.run.evaluate:exact_match#3",
    # weights and run_results.json copied into the unfinished output, no report yet
    "writing the report": "call:actlang.run.handlers:_report",
    # the new output complete with its marker beside the earlier one, right before they
    # are exchanged; then the earlier one swapped out, before it is removed
    REPLACING[0]: "call:actlang.run.output:_exchange",
    REPLACING[1]: "call:actlang.run.output:_discard",
    # after the output is in place: the spec's lock file, before its rename
    "writing the spec's lock file": "replace:*/spec.act.lock",
}


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(KILLS), ids=phase_id)
def test_a_run_killed_in_any_phase_leaves_nothing_half_done(
        actc, env: dict[str, str], spec: Path, inputs: Path, reference: Reference,
        where: Path, phase: str) -> None:
    args = ["--force"] if phase in REPLACING else []
    if phase in REPLACING:
        shutil.copytree(reference.output, output_of(where))
    before = hashes(inputs, spec)
    killed = Run(actc, env, spec, *args, pause=KILLS[phase])
    killed.wait_paused()
    killed.kill()
    assert_nothing_half_done(where, reference, owner=killed.pid)
    if phase in REPLACING:  # the earlier output or the new one, never none
        assert output_of(where).is_dir()
    assert hashes(inputs, spec) == before
    rerun = run_actc(actc, "run", *args, str(spec), env=env, cwd=spec.parent)
    assert_finished_cleanly(where, rerun, {"s": reference.s})
    assert hashes(inputs, spec) == before


# ---- 2. Ctrl-C --------------------------------------------------------------------------------

INTERRUPTS = ["statistics capture", "transfer", "writing the report"]


@pytest.mark.slow
@pytest.mark.parametrize("phase", INTERRUPTS, ids=phase_id)
def test_ctrl_c_stops_a_run_with_status_130_and_cleans_up_after_itself(
        actc, env: dict[str, str], spec: Path, inputs: Path, where: Path, phase: str) -> None:
    before = hashes(inputs, spec)
    run = Run(actc, env, spec, pause=KILLS[phase])
    run.wait_paused()
    result = run.interrupt()
    assert result.returncode == 130, result.stderr[-3000:]
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    assert not output_of(where).exists()
    assert leftovers(where) == []  # unlike a kill, an interrupt cleans up at once
    assert_cache_sound(where / "cache", settled=True)
    assert hashes(inputs, spec) == before


# ---- 3. concurrency ---------------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_of_one_spec_at_once_end_well(
        actc, env: dict[str, str], spec: Path, inputs: Path, reference: Reference,
        where: Path) -> None:
    """Both succeed (the second found the output up to date), or one is refused with a
    located error: the output is in use, or (the other finished first) already exists."""
    before = hashes(inputs, spec)
    runs = [Run(actc, env, spec) for _ in range(2)]
    results = [run.finish() for run in runs]
    for result in results:
        assert "Traceback" not in result.stderr
        if result.returncode != 0:
            assert_located_error(result, "E501", surgery_line(spec))
            assert re.search("in use by another actc run|already exists", result.stderr)
    winner = min(results, key=lambda result: result.returncode)
    assert_finished_cleanly(where, winner, {"s": reference.s})
    assert hashes(inputs, spec) == before


@pytest.mark.slow
def test_a_run_is_refused_an_output_that_another_run_is_writing(
        actc, env: dict[str, str], spec: Path, reference: Reference, where: Path) -> None:
    writer = Run(actc, env, spec, pause=KILLS["writing the report"])
    writer.wait_paused()  # it holds the output's lock, half written
    # refused even with --force, which replaces only what a finished run wrote
    refused = run_actc(actc, "run", "--force", str(spec), env=env, cwd=spec.parent)
    assert_located_error(refused, "E501", surgery_line(spec))
    assert f"in use by another actc run (pid {writer.pid})" in refused.stderr
    writer.resume()
    assert_finished_cleanly(where, writer.finish(), {"s": reference.s})


@pytest.mark.slow
def test_two_specs_sharing_a_cache_at_once_both_succeed(
        actc, env: dict[str, str], inputs: Path, reference: Reference, where: Path) -> None:
    specs = [write_spec(where / SPEC_FOLDERS["s"], inputs, SURGERY),
             write_spec(where / SPEC_FOLDERS["t"], inputs, OTHER_SURGERY)]
    runs = [Run(actc, env, spec) for spec in specs]  # both with the cache where / "cache"
    for result in [run.finish() for run in runs]:
        assert_finished_cleanly(where, result, {"s": reference.s, "t": reference.t})


# ---- the output lock, in process --------------------------------------------------------------


def test_an_output_lock_admits_one_writer_or_many_readers(tmp_path: Path) -> None:
    from actlang.arch.errors import RuntimeUserError
    from actlang.run.output import locked_output

    output, lock_file = tmp_path / "out" / "s", tmp_path / "out" / ".s.lock"
    busy = f"the output {output} is in use by another actc run"
    with locked_output(output, exclusive=True):  # flock: two opens conflict in one process
        assert lock_file.read_text() == f"{os.getpid()}\n"
        for exclusive in (True, False):
            with pytest.raises(RuntimeUserError) as refused:
                with locked_output(output, exclusive=exclusive):
                    pass
            assert refused.value.message == f"{busy} (pid {os.getpid()})"
    assert not lock_file.exists()
    with locked_output(output, exclusive=False), locked_output(output, exclusive=False):
        with pytest.raises(RuntimeUserError) as refused:
            with locked_output(output, exclusive=True):
                pass
        assert refused.value.message == busy  # readers write no pid
    assert not lock_file.exists()  # the last reader removed it


def test_the_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    from actlang.run.output import locked_output

    lock_file = tmp_path / ".s.lock"
    holder = subprocess.Popen(
        ["python3", "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(lock_file)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d' % os.getpid())\n"
         "print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    holder.kill()
    holder.wait()
    assert lock_file.exists()  # what a killed run leaves
    with locked_output(tmp_path / "s", exclusive=True):
        assert lock_file.read_text() == f"{os.getpid()}\n"
    assert not lock_file.exists()


def test_a_lock_file_that_is_a_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    from actlang.arch.errors import RuntimeUserError
    from actlang.run.output import locked_output

    victim = tmp_path / "thesis.txt"
    victim.write_text("mine")
    (tmp_path / ".s.lock").symlink_to(victim)
    with pytest.raises(RuntimeUserError, match="cannot create the lock file"):
        with locked_output(tmp_path / "s", exclusive=True):
            pass
    assert victim.read_text() == "mine"
