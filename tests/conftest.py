"""Fixtures shared by every suite: the zoo, built once per test session.

``small_zoo`` (session scope) builds the ``small`` profile once per test session into a
temporary cache directory, which it installs as ``ACTLANG_CACHE_DIR`` for the rest of the
session (so subprocesses such as ``actc`` find the same zoo), and returns the
:class:`actlang.arch.zoo.ZooManifest`.  ``tiny_zoo`` does the same for the seconds-long
``tiny`` profile (a pipeline check whose models learn nothing).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actlang.arch.zoo import ZooManifest


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
