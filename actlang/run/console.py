"""Terminal output of `actc run`: rich progress bars on stderr and the results tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBars
from rich.table import Table

from actlang.compile import ops as O
from actlang.run.context import Progress
from actlang.run.results import RunResult, SurgeryResult


class PlanningDisplay:
    """`actc run`'s planning on stderr: a spinner, and, only when planning builds a zoo or
    converts a GGUF file (once; both are cached), a line that says so, then the zoo's
    training steps as a bar with the time left.

    Use :meth:`zoo_builder` and :meth:`gguf_converter` as the plan's builders.

    Args:
        console: where it prints (stderr).
        build_zoo: builds a zoo (:func:`actlang.zoo.build.build_zoo`, a layer above this
            one: the command line passes it in).
    """

    def __init__(self, console: Console, build_zoo: Callable[..., Any]):
        self.build_zoo = build_zoo
        self.bars = RichBars(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             _Counted(MofNCompleteColumn()), TimeElapsedColumn(),
                             _Counted(TimeRemainingColumn()), console=console, transient=True)
        self.task = self.bars.add_task("planning", total=None)

    def __enter__(self) -> "PlanningDisplay":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def zoo_builder(self, root: Path, seed: int, profile: str) -> Any:
        console = self.bars.console
        console.print(f"building the {profile} zoo (seed {seed}): once, then it is cached "
                      f"in {root}")

        def progress(training: str, done: int, total: int) -> None:
            self.bars.update(self.task, description=f"zoo: training {training}",
                             completed=done, total=total)

        manifest = self.build_zoo(root, seed=seed, profile=profile, progress=progress,
                                  log=lambda line: console.print(f"[dim]{line}[/dim]"))
        self.bars.reset(self.task, description="planning", total=None)
        console.print(f"zoo built in {manifest.build_seconds:.0f} s")
        return manifest

    def gguf_converter(self, path: Path, out_dir: Path, *, overwrite: bool = False) -> Path:
        from actlang.run.gguf import convert_gguf

        self.bars.console.print(f"converting {path.name} into the cache (once)")
        return convert_gguf(path, out_dir, overwrite=overwrite)


class _Counted(ProgressColumn):
    """A column shown only for work of a known size (no ``0/?`` next to a spinner)."""

    def __init__(self, column: ProgressColumn):
        super().__init__()
        self.column = column

    def render(self, task: Any) -> Any:
        return self.column.render(task) if task.total is not None else ""


class BarsProgress(Progress):
    """One bar for the plan's ops, one for the work inside the current op."""

    def __init__(self, console: Console):
        self.bars = RichBars(TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                             transient=True)
        self.ops = self.bars.add_task("ops", total=None)
        self.work = self.bars.add_task("", total=None, visible=False)

    def __enter__(self) -> "BarsProgress":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def op_started(self, index: int, count: int, op: O.Op) -> None:
        self.bars.update(self.ops, total=count, completed=index, description=op.label[:60])
        self.bars.update(self.work, completed=0, total=None, visible=False)

    def advance(self, done: int, total: int | None) -> None:
        self.bars.update(self.work, completed=done, total=total, visible=True,
                         description="  " + ("batches/tensors/steps"))

    def op_finished(self, op: O.Op, status: str, seconds: float) -> None:
        mark = "=" if status == "cached" else "+"
        self.bars.console.print(f"[dim]{mark} {op.label} ({status}, {seconds:.2f}s)[/dim]")


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def eval_table(result: SurgeryResult) -> Table:
    columns: list[str] = []
    for row in result.evals.values():
        columns += [c for c in row if c not in columns]
    table = Table(title=f"{result.surgery.name} → {result.output}")
    table.add_column("ability")
    for column in columns:
        table.add_column(column, justify="right")
    for ability, row in result.evals.items():
        table.add_row(ability, *(_fmt(row.get(c)) for c in columns))
    return table


def summary_table(results: list[SurgeryResult]) -> Table:
    """One table for a run of several outputs: a row per (output, ability) with the inputs'
    scores (target, donor) and the output's, after transfer (or merge) and after fine-tune."""
    table = Table(title="results")
    for column in ("surgery", "point", "ability", "target", "donor", "after transfer / merge",
                   "after finetune"):
        table.add_column(column, justify="left" if column in ("surgery", "point", "ability")
                         else "right")
    for r in results:
        point = ",".join(f"{k}={v}" for k, v in r.surgery.sweep_point)
        for ability, row in r.evals.items():
            target = next((v for k, v in row.items() if k.startswith("target (")), None)
            donors = [v for k, v in row.items() if k.startswith("donor (")]
            table.add_row(r.surgery.sweep_group or r.surgery.name, point, ability,
                          _fmt(target), " / ".join(_fmt(v) for v in donors) or "—",
                          _fmt(row.get("after transfer", row.get("after merge"))),
                          _fmt(row.get("after finetune")))
    return table


def print_results(console: Console, result: RunResult) -> None:
    """The before/after table of a single output, or one summary table of several."""
    with_evals = [r for r in result.surgeries if r.evals]
    if len(with_evals) == 1:
        console.print(eval_table(with_evals[0]))
    elif with_evals:
        console.print(summary_table(with_evals))
    counters = result.counters
    cached = sum(1 for r in result.records if r.status == "cached")
    console.print(f"{len(result.records)} ops ({cached} cached), "
                  f"{counters['forward_passes']} forward passes for statistics, "
                  f"{counters['tokens_scored']:,} scored tokens")
    for surgery in result.surgeries:
        for gate in surgery.gates:  # passed ones too: a gate met by a wide margin says much
            verdict = "[green]gate passed[/green]" if gate.passed else "[red]gate failed[/red]"
            how = "by" if gate.passed else "short by"
            console.print(f"{verdict} in {surgery.surgery.name}: {gate.condition} "
                          f"({gate.left:.4f} vs {gate.right:.4f}, {how} "
                          f"{abs(gate.left - gate.right):.4f})")
    for surgery in result.surgeries:
        report = surgery.output / "report.html"
        if report.is_file():
            console.print(f"report: {report}", soft_wrap=True)  # a path to copy, unbroken


def print_notes(console: Console, result: RunResult) -> None:
    """What the user may not have meant: selections that move fewer channels than asked."""
    for record in result.records:
        if record.details.get("selected_nothing"):
            console.print(f"[yellow]warning[/yellow]: {record.label}: the budget selects no "
                          "channel; the output equals the target")
        if record.details.get("units_short"):
            console.print(f"[yellow]note[/yellow]: {record.label}: the budget asked for "
                          f"{record.details['units_short']:,} more units than have donor "
                          "weights that differ from the target's; fewer were selected")
    for r in result.surgeries:
        pairs = zip(r.transfer.get("channels_selected", []), r.transfer.get("channels_moving", []))
        for selected, moving in pairs:
            if moving < selected:
                console.print(f"[yellow]note[/yellow]: {r.surgery.name}: {moving:,} of "
                              f"{selected:,} selected channels move weights; the other "
                              f"{selected - moving:,} are identical in donor and target")
