"""Sizes written by users: ``5GB``, ``500MB``, ``2GiB``, ``1000`` (torch-free)."""

from __future__ import annotations

import re

from actlang.arch.errors import RuntimeUserError

__all__ = ["parse_size"]


def parse_size(size: int | str) -> int:
    """``5GB``, ``500MB``, ``2GiB``, ``1000`` → bytes (decimal units as Hugging Face uses them)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?i?b?)\s*", str(size).lower())
    if not m:
        raise RuntimeUserError(f"cannot read the size {size!r}", hint="e.g. 5GB, 500MB, 2GiB")
    value, unit = float(m.group(1)), m.group(2).rstrip("b")
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
            "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}[unit]
    return int(value * mult)


def human_bytes(n: float) -> str:
    """``1.3 GB``, ``176.0 KB``, ``12 B`` (decimal units, as :func:`parse_size` reads them)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
