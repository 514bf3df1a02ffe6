"""Pause points for the fault tests (tests/run/test_faults.py); test code, never installed.

A test runs the installed ``actc`` with this directory on ``PYTHONPATH`` (so Python imports
this module at startup) and ``ACTC_TEST_PAUSE`` set; the process then stops itself with
SIGSTOP at that point of its work, and the test kills it there (SIGKILL), interrupts it
(SIGINT then SIGCONT: the KeyboardInterrupt is raised right at the point) or lets it go on
(SIGCONT) — a fault at a chosen instant, every time, rather than after a guessed delay.
Without the variable this module does nothing. With ``ACTC_TEST_PAUSE_RANK`` set too, only
the process of that rank (its ``RANK``, as torchrun and ``actc run --nproc`` set it) pauses.

``ACTC_TEST_PAUSE`` is ``KIND:WHERE`` or ``KIND:WHERE#N`` (the N-th occurrence, default 1):

``call:MODULE:QUALNAME``
    on entry to that function or method, replaced by a wrapper as soon as MODULE has run:
    every later lookup of the name, ``from MODULE import NAME`` included, finds the wrapper
    (a reference MODULE keeps of its own, such as a table of functions, does not);
``replace:GLOB``
    at an ``os.replace`` whose destination matches GLOB (``fnmatch``), before it renames —
    the instant a file or directory written beside its destination is complete.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.abc
import importlib.util
import os
import signal
import sys
from typing import Any, Callable

POINT = os.environ.get("ACTC_TEST_PAUSE", "")
if os.environ.get("ACTC_TEST_PAUSE_RANK", os.environ.get("RANK")) != os.environ.get("RANK"):
    POINT = ""  # another rank pauses


class _Countdown:
    """Stops the process at the ``nth`` time it is hit."""

    def __init__(self, nth: int) -> None:
        self.left = nth

    def hit(self) -> None:
        self.left -= 1
        if self.left == 0:
            os.kill(os.getpid(), signal.SIGSTOP)


def _pausing(function: Callable[..., Any], countdown: _Countdown) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        countdown.hit()
        return function(*args, **kwargs)
    return wrapper


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Wraps ``QUALNAME`` of ``module`` as soon as the module has run (then steps aside)."""

    def __init__(self, module: str, qualname: str, countdown: _Countdown) -> None:
        self.module, self.qualname, self.countdown = module, qualname, countdown

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.module:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        run_module = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run_module(module)
            *owners, name = self.qualname.split(".")
            owner = module
            for attribute in owners:
                owner = getattr(owner, attribute)
            setattr(owner, name, _pausing(getattr(owner, name), self.countdown))

        spec.loader.exec_module = exec_module
        return spec


def _install(point: str) -> None:
    kind, _, where = point.partition(":")
    where, _, nth = where.partition("#")
    countdown = _Countdown(int(nth or 1))
    if kind == "call":
        module, _, qualname = where.partition(":")
        sys.meta_path.insert(0, _WrapOnImport(module, qualname, countdown))
    elif kind == "replace":
        replace = os.replace

        def pausing_replace(source: Any, destination: Any, *args: Any, **kwargs: Any) -> None:
            if fnmatch.fnmatch(os.fspath(destination), where):
                countdown.hit()
            replace(source, destination, *args, **kwargs)

        os.replace = pausing_replace
    else:
        raise ValueError(f"ACTC_TEST_PAUSE: unknown kind of pause point {point!r}")


if POINT:
    _install(POINT)
