"""Selection without tensors: budgets, and which channels a rule may choose from.

Both the planner (which checks a spec before any forward pass) and the runtime (which
selects) read this module, so whatever the plan accepts the run accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from actlang.arch.errors import RuntimeUserError

__all__ = ["Budget"]

BudgetMode = Literal["global", "per_module", "per_layer", "count", "threshold"]
_MODES = ("global", "per_module", "per_layer", "count", "threshold")


@dataclass(frozen=True)
class Budget:
    """How many units to select. ``value`` is a fraction in [0, 1] for ``global``,
    ``per_module`` and ``per_layer``; a number of units for ``count``; a minimum score for
    ``threshold``."""

    mode: BudgetMode = "global"
    value: float = 0.03

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise RuntimeUserError(f"unknown budget mode {self.mode!r}", hint=f"modes: {', '.join(_MODES)}")
        if self.mode in ("global", "per_module", "per_layer") and not (0.0 <= self.value <= 1.0):
            raise RuntimeUserError(f"a {self.mode} budget is a fraction between 0% and 100%, got {self.value:g}")
        if self.mode == "count" and (self.value < 0 or self.value != int(self.value)):
            raise RuntimeUserError(f"a count budget is a whole number >= 0, got {self.value:g}")

    @classmethod
    def parse(cls, spec: "Budget | str | float | int") -> "Budget":
        """``"3%"``, ``"3% global"``, ``"5% per module"``, ``"5% per layer"``, ``"120"``
        (count), ``"threshold 0.5"`` / ``">= 0.5"``; a float in [0, 1] is a global fraction,
        an int a count."""
        if isinstance(spec, Budget):
            return spec
        if isinstance(spec, bool):
            raise RuntimeUserError(f"not a budget: {spec!r}")
        if isinstance(spec, int):
            return cls("count", spec)
        if isinstance(spec, float):
            return cls("global", spec)
        text = str(spec).strip().lower()
        m = re.fullmatch(r"(?:threshold\s*|>=\s*)([-+0-9.e]+)", text)
        if m:
            return cls("threshold", float(m.group(1)))
        m = re.fullmatch(r"([0-9.]+)\s*%\s*(global|per[ _-]?module|per[ _-]?layer)?", text)
        if m:
            mode = (m.group(2) or "global").replace(" ", "_").replace("-", "_")
            if mode in ("permodule", "perlayer"):
                mode = "per_" + mode[3:]
            return cls(mode, float(m.group(1)) / 100.0)  # type: ignore[arg-type]
        m = re.fullmatch(r"([0-9]+)\s*(channels|units)?", text)
        if m:
            return cls("count", int(m.group(1)))
        raise RuntimeUserError(f"cannot read the budget {spec!r}",
                               hint="e.g. 3%, 5% per module, 5% per layer, 120, threshold 0.5")

    def __str__(self) -> str:
        if self.mode == "count":
            return f"{int(self.value)}"
        if self.mode == "threshold":
            return f"threshold {self.value:g}"
        pct = f"{self.value * 100:g}%"
        return pct if self.mode == "global" else f"{pct} {self.mode.replace('_', ' ')}"


