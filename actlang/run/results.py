"""What a run reports: a record per op, gates, a result per surgery, and their JSON.

``run_results.json`` in each output is :meth:`SurgeryResult.to_json`; the CLI's tables read
:class:`RunResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actlang import __version__
from actlang.lang import program as P

RESULTS_FORMAT_VERSION = 1


@dataclass
class OpRecord:
    """One executed (or cached) op: what it was, how long it took, what it reported."""

    id: str
    kind: str
    label: str
    status: str  # "done" or "cached"
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "status": self.status,
                "cache_hit": self.status == "cached", "seconds": round(self.seconds, 4),
                **self.details}


@dataclass
class GateResult:
    """One ``expect`` of a surgery, evaluated."""

    condition: str
    left: float
    right: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {"condition": self.condition, "left": self.left, "right": self.right,
                "passed": self.passed, "margin": self.left - self.right}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "GateResult":
        return cls(data["condition"], data["left"], data["right"], data["passed"])


@dataclass
class SurgeryResult:
    """One output of a run: its before/after table, gates and transfer summary.

    Attributes:
        evals: ability -> column ("target (m)", "donor (m)", "after transfer" or "after
            merge", "after finetune") -> the ability's primary metric.
        transfer: what the transfer or merge op reported (channels, parameters changed).
    """

    surgery: P.SurgerySpec
    output: Path
    evals: dict[str, dict[str, float]]
    gates: list[GateResult]
    transfer: dict[str, Any]

    def to_json(self, *, key: str | None, ops: list[OpRecord], counters: dict[str, Any],
                warnings: list[str]) -> dict[str, Any]:
        """``run_results.json``: this output, the ops it came from, the run's counters and
        the plan's warnings about this surgery's rules."""
        return {
            "format_version": RESULTS_FORMAT_VERSION, "actlang_version": __version__,
            "key": key, "surgery": self.surgery.name, "output": self.surgery.output,
            "sweep": dict(self.surgery.sweep_point),
            "ops": [record.to_json() for record in ops],
            "counters": counters, "transfer": self.transfer, "evals": self.evals,
            "gates": [g.to_json() for g in self.gates], "warnings": warnings,
        }

    @classmethod
    def from_json(cls, surgery: P.SurgerySpec, data: dict[str, Any]) -> "SurgeryResult":
        """The result an earlier run recorded for an output that is up to date."""
        return cls(surgery, Path(surgery.output), data["evals"],
                   [GateResult.from_json(g) for g in data["gates"]], data["transfer"])


@dataclass
class RunResult:
    """Everything a run did, in plan order, and its outputs in spec order."""

    records: list[OpRecord]
    surgeries: list[SurgeryResult]
    counters: dict[str, Any]

    @property
    def failed_gates(self) -> list[tuple[SurgeryResult, GateResult]]:
        return [(s, g) for s in self.surgeries for g in s.gates if not g.passed]
