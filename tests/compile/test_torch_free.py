"""The front end's and the planner's tests need no torch: they pass where it cannot be imported.

``actc check`` and ``actc plan`` run on machines without torch (tests/test_layers.py runs the
command line so); this runs their test suites so, which keeps the tests honest too — a
compile test that needs torch belongs in tests/run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The import system finds no torch: a finder in place of PathFinder that skips it (installed
# distributions' metadata stays visible, as where torch is installed but cannot load).
HIDE_TORCH = """
import sys
from importlib.machinery import PathFinder

class WithoutTorch(PathFinder):
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.partition(".")[0] == "torch":
            return None
        return super().find_spec(fullname, path, target)

sys.meta_path[:] = [WithoutTorch if f is PathFinder else f for f in sys.meta_path]
"""

RUN_PYTEST = HIDE_TORCH + """
import pytest
status = pytest.main(sys.argv[1:])
assert "torch" not in sys.modules, "torch was imported"
sys.exit(status)
"""


def python_without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=900)


def test_torch_cannot_be_imported_under_the_wrapper() -> None:
    """The wrapper really hides torch (else the test below would prove nothing)."""
    done = python_without_torch(HIDE_TORCH + "import torch\n")
    assert done.returncode == 1
    assert "ModuleNotFoundError: No module named 'torch'" in done.stderr


def test_lang_and_compile_tests_pass_without_torch(tmp_path: Path) -> None:
    done = python_without_torch(RUN_PYTEST, "tests/lang", "tests/compile", "-x", "-q",
                                "-p", "no:cacheprovider",
                                f"--ignore={Path(__file__).relative_to(ROOT)}",
                                f"--basetemp={tmp_path / 'basetemp'}")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]
