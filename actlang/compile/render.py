"""Human-readable renderings of a plan: the dry-run report and the graph (dot, mermaid)."""

from __future__ import annotations

import math

from actlang.arch.sizes import human_bytes
from actlang.compile import ops as O
from actlang.compile.passes import schedule
from actlang.compile.plan import Plan


def human_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def render_plan(plan: Plan, every_op: bool = False) -> str:
    """Terraform-like text: models, ops marked `+` (new) or `=` (cached), then estimates.
    ``every_op``: also the ops the cache makes unnecessary, marked `-`."""
    lines = [f"Plan for {plan.program.file}", "", "Models:"]
    width = max((len(n) for n in plan.models), default=0)
    for name, info in sorted(plan.models.items()):
        if info.directory is None:
            lines.append(f"  {name:<{width}}  (zoo model, not built yet)")
            continue
        params = human_count(info.parameters) if info.parameters else "?"
        size = human_bytes(info.weight_bytes) if info.weight_bytes else "?"
        weights = "" if info.has_weights else "  [config only]"
        lines.append(f"  {name:<{width}}  {info.model_type:<8} {params:>8} params "
                     f"{size:>9}  computes in {info.spec.compute_dtype:<8}  "
                     f"{info.directory}{weights}")
    new = sum(1 for op in plan.order if op not in plan.cached)
    listed = plan.whole_order() if every_op else \
        [("=" if op in plan.cached else "+", op) for op in plan.order]
    unneeded = sum(1 for mark, _ in listed if mark == "-")
    lines += ["", f"Operations ({new} new, {len(plan.order) - new} cached"
              + (f", {unneeded} not needed" if every_op else "") + "):"]
    for mark, op in listed:
        lines.append(f"  {mark} {op.label}{_detail(plan, op) if mark != '-' else ''}")
    if not every_op and plan.whole is not None and \
            plan.whole.number_of_nodes() > len(plan.order):
        lines.append("  (ops the cache makes unnecessary are left out: `actc plan --all`)")
    est = plan.estimates
    approx = "" if est.exact else "  (lower bounds: some sizes are unknown)"
    lines += ["", f"Estimates:{approx}",
              f"  forward passes   {est.forward_passes}",
              f"  tokens           {est.tokens:,}",
              f"  FLOPs            {human_count(est.flops)}",
              f"  peak memory      {human_bytes(est.peak_memory_bytes)}",
              f"  bytes written    {human_bytes(est.bytes_written)}"]
    if plan.notes:
        lines += ["", "Notes:", *(f"  - {note}" for note in plan.notes)]
    return "\n".join(lines)


def _detail(plan: Plan, op: O.Op) -> str:
    if isinstance(op, O.Capture):
        tokens = plan.corpus_tokens.get((op.corpus, op.tokenizer))
        passes = op.pass_count()
        shown = f"{tokens:,} tokens" if tokens is not None else "tokens unknown"
        streamed = plan.strategies.get(op)
        how = ", a layer at a time" if streamed is not None and streamed.streamed else ""
        return f"  [{passes} forward pass{'es' if passes != 1 else ''}, {shown}{how}]"
    if isinstance(op, O.Select) and op in plan.selectable:
        available = plan.selectable[op]
        budget = op.rule.budget
        unit = "channels" if op.rule.granularity == "channel" else \
            f"{op.rule.granularity} units ({available.channels:,} channels)"
        if budget.kind == "fraction" and budget.scope == "global":
            chosen = math.floor(budget.value * available.units + 0.5)  # as selection rounds
            return f"  [{chosen:,} of {available.units:,} {unit}]"
        if budget.kind == "count":
            return f"  [{int(budget.value):,} of {available.units:,} {unit}]"
        return f"  [from {available.units:,} {unit}]"
    if isinstance(op, O.Statistic) and op in plan.cached:
        return "  [cache hit]"
    return ""


def render_graph(plan: Plan, fmt: str, every_op: bool = False) -> str:
    """The optimized graph as Graphviz dot or a Mermaid flowchart: cached ops dashed /
    marked. ``every_op``: the whole graph of the spec, with the ops the cache makes
    unnecessary dotted / marked and every edge."""
    graph = plan.whole if every_op and plan.whole is not None else plan.graph
    ops = schedule(graph) if graph is not plan.graph else plan.order
    marks = {op: plan.mark(op) for op in ops}
    ids = {op: O.op_id(op).replace("-", "_") for op in ops}
    edges = [(a, b) for a, b in graph.edges if a in ids and b in ids]
    if fmt == "dot":
        styles = {"+": "", "=": ", style=dashed", "-": ", style=dotted"}
        lines = ["digraph actc {", "  rankdir=LR;", "  node [shape=box, fontsize=10];"]
        for op in ops:
            label = op.label.replace('"', '\\"')
            lines.append(f'  {ids[op]} [label="{label}"{styles[marks[op]]}];')
        lines += sorted(f"  {ids[a]} -> {ids[b]};" for a, b in edges)
        return "\n".join(lines + ["}"])
    assert fmt == "mermaid", fmt
    notes = {"+": "", "=": " (cached)", "-": " (not needed)"}
    lines = ["flowchart LR"]
    for op in ops:
        label = op.label.replace('"', "'")
        lines.append(f'  {ids[op]}["{label}{notes[marks[op]]}"]')
    lines += sorted(f"  {ids[a]} --> {ids[b]}" for a, b in edges)
    return "\n".join(lines)
