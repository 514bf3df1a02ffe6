"""Locate the files that ship with the language: the grammar and the standard library.

In a source checkout (or an editable install) they sit at the repository root; a wheel
carries them under ``actlang/_data``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    packaged = _PACKAGE_DIR / "_data" / name
    if packaged.is_dir():
        return packaged
    checkout = _PACKAGE_DIR.parent / name
    assert checkout.is_dir(), f"actlang installation is missing its {name}/ directory"
    return checkout


def grammar_path() -> Path:
    """Path of the Lark grammar of the .act language."""
    return _data_dir("grammar") / "act.lark"


def stdlib_dir() -> Path:
    """Root of the standard library: ``use std.x`` loads ``<stdlib_dir>/std/x.act``."""
    return _data_dir("stdlib")


def stdlib_digest() -> str:
    """A digest of every stdlib file: the stdlib version a lockfile records."""
    import hashlib

    hasher = hashlib.sha256()
    root = stdlib_dir()
    for path in sorted(root.rglob("*.act")):
        hasher.update(path.relative_to(root).as_posix().encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()[:16]
