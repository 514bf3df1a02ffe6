"""The report of one surgery output: ``report.md``, ``report.html``, ``report.json`` and ``plots/*.png``.

    paths = write_report(out_dir, title="recover_math", spec_name="examples/recover.act",
                         evals={"arithmetic": {"target (zoo.tuned)": 0.12, "donor (zoo.base)": 0.91,
                                               "after transfer": 0.55, "after finetune": 0.83}},
                         selections=[Selection("zoo.arithmetic from zoo.base", "arithmetic",
                                               mask, scores)],
                         space=space, gates=[g.to_json() for g in gates])

Every section is one function returning a :class:`Section`: its heading, the numbers it adds
to ``report.json``, its markdown and the plots it drew. :func:`write_report` puts them in this
order (a section says so when it has nothing to show, e.g. an empty selection; the gates,
ground truth and interference sections are left out when they do not apply):

1. :func:`header_section` — the title, the spec and the notes.
2. :func:`abilities_section` — the before/after table (``evals[ability][column]``).
3. :func:`gates_section` — the ``expect`` gates, passed or failed and by how much
   (``margin = left - right``).
4. :func:`selections_section` — one row per selection (channels, fraction, budget, score),
   then per selection :func:`channel_map_section`: the per-layer × per-module-kind map of
   selected channels, a heatmap PNG of the fraction selected in each (layer, kind) and a
   markdown table of the counts. Global entries (``embed``, ``norm.final``, ``lm_head``) get
   their own row. Kinds excluded by default (norms, embeddings, ``lm_head``) appear only when
   something of them is selected.
5. :func:`score_distribution_section` — the CCDF of each selection's candidate scores
   (:func:`candidate_scores`), ``P(score >= x)`` against ``x`` on log-log axes (positive scores
   only), with the budget threshold marked (the score at rank ``k``, ``k`` = channels the
   selection took among its candidates); and the **concentration**
   (:func:`actlang.run.scores.concentration`): the share of the total non-negative score mass
   held by the top 1 % / 5 % / 10 % of the candidate channels (uniform scores give
   1 % / 5 % / 10 %).
6. :func:`overlap_section` — Jaccard index of the channel sets of every pair of selections
   (:func:`jaccard`), and a heatmap when there are three or more selections.
7. :func:`ground_truth_section` — when a selection has ``truth`` (rows per checkpoint tensor,
   e.g. the planted scenario's damaged rows): precision / recall / F1 of its selected rows
   (:func:`selected_rows`).
8. :func:`interference_section` (merges, ``specialists``) — each ability's score on its
   specialist vs on the merged output, and the share retained (``merged / specialist`` for
   accuracies, ``specialist / merged`` for perplexities, so that 1.0 means nothing was lost
   either way).

A metric is taken for a perplexity (lower is better) when any value of its row exceeds 1;
accuracies are in [0, 1].

``report.html`` is ``report.md`` rendered by markdown-it-py (CommonMark with tables, raw HTML
off; :func:`markdown_to_html`) in a page with inline CSS, self-contained apart from the PNGs,
which it references relatively. ``report.json`` holds the sections' numbers for scripts.
Plots are drawn with matplotlib's Agg renderer at a fixed size and dpi with PNG metadata
stripped, so the same inputs give the same bytes.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from markdown_it import MarkdownIt

from actlang.arch.adapters import ChannelSpace, Entry
from actlang.run.mask import ChannelMask
from actlang.run.scores import Scores, concentration

__all__ = [
    "Section",
    "Selection",
    "abilities_section",
    "candidate_scores",
    "channel_map_section",
    "gates_section",
    "ground_truth_section",
    "header_section",
    "interference_section",
    "jaccard",
    "markdown_to_html",
    "overlap_section",
    "precision_recall",
    "score_distribution_section",
    "selected_rows",
    "selections_section",
    "write_report",
]

FRACTIONS = (0.01, 0.05, 0.10)
DPI = 100
_GLOBAL = "global"
_PLOT_PREFIXES = ("map-", "score-ccdf", "overlap-jaccard")


@dataclass
class Selection:
    """One channel selection shown in the report.

    Attributes:
        name: a label, e.g. ``"zoo.arithmetic from zoo.base"``.
        ability: the ability the selection is for.
        mask: the channels selected.
        scores: the scores the selection ranked (``None`` for controls without a meaningful
            score, such as random channels).
        truth: ground-truth rows per checkpoint tensor name (planted scenario), optional.
        moving: how many selected channels have donor parameters that differ from the
            target's (None: not known); the others move nothing.
    """

    name: str
    ability: str
    mask: ChannelMask
    scores: Scores | None
    truth: dict[str, list[int]] | None = None
    moving: int | None = None


@dataclass(frozen=True)
class Section:
    """One section of the report.

    Attributes:
        title: the heading, plain text (escaped when rendered).
        data: what the section adds to ``report.json`` (top-level keys).
        markdown: the body under the heading; empty when the section does not apply, and then
            neither it nor its heading is rendered.
        level: the heading level.
        plots: the PNG files the section drew.
    """

    title: str
    data: dict[str, Any]
    markdown: str
    level: int = 2
    plots: tuple[Path, ...] = ()

    def render(self) -> str:
        """The heading and the body; empty for a section that does not apply."""
        if not self.markdown:
            return ""
        return f"{'#' * self.level} {_esc(self.title)}\n\n{self.markdown}"


# --------------------------------------------------------------------------- numbers


def _finite(values: Iterable[torch.Tensor]) -> torch.Tensor:
    """The finite values of the tensors, flattened into one float64 vector."""
    flat = [v.detach().reshape(-1).to(torch.float64).cpu() for v in values]
    t = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64)
    return t[torch.isfinite(t)]


def _channel_set(mask: ChannelMask) -> dict[str, torch.Tensor]:
    return {k: v for k, v in mask.channels.items() if bool(v.any())}


def _overlap(a: ChannelMask, b: ChannelMask) -> tuple[int, int, int, int]:
    """``(|A|, |B|, |A ∩ B|, |A ∪ B|)`` over (entry, channel) pairs."""
    sa, sb = _channel_set(a), _channel_set(b)
    inter = 0
    for k in sa.keys() & sb.keys():
        va, vb = sa[k], sb[k]
        if va.numel() != vb.numel():
            raise ValueError(f"the masks disagree on the size of {k}: {va.numel()} vs {vb.numel()} channels")
        inter += int((va & vb).sum())
    na = sum(int(v.sum()) for v in sa.values())
    nb = sum(int(v.sum()) for v in sb.values())
    return na, nb, inter, na + nb - inter


def jaccard(mask_a: ChannelMask, mask_b: ChannelMask) -> float:
    """``|A ∩ B| / |A ∪ B|`` of the two masks' output-channel sets (entry, channel index).

    Two empty selections are identical: 1.0."""
    _, _, inter, union = _overlap(mask_a, mask_b)
    return inter / union if union else 1.0


def _entry(space: ChannelSpace, mask: ChannelMask, key: str) -> Entry | None:
    if key in space:
        return space[key]
    if mask.space is not None and key in mask.space:
        return mask.space[key]
    return None


def selected_rows(mask: ChannelMask, space: ChannelSpace) -> dict[str, set[int]]:
    """Selected rows per checkpoint tensor: for each entry whose first part runs along axis 0,
    ``offset + i`` for its selected channels ``i`` (bias rows are not counted twice; tied
    input columns are not rows)."""
    rows: dict[str, set[int]] = {}
    for key, v in mask.channels.items():
        if not bool(v.any()):
            continue
        e = _entry(space, mask, key)
        if e is None or not e.parts:
            continue
        p = e.parts[0]
        if p.axis != 0:
            continue
        idx = torch.nonzero(v, as_tuple=False).reshape(-1).tolist()
        rows.setdefault(p.name, set()).update(p.offset + int(i) for i in idx)
    return rows


def precision_recall(mask: ChannelMask, space: ChannelSpace,
                     truth: Mapping[str, Iterable[int]]) -> dict[str, float | int]:
    """Precision / recall / F1 of the mask's selected rows (:func:`selected_rows`) against
    ground-truth rows per tensor. Precision is NaN for an empty selection, recall NaN for an
    empty truth; F1 is 0 when either is 0."""
    sel = {(n, r) for n, rs in selected_rows(mask, space).items() for r in rs}
    true = {(n, int(r)) for n, rs in truth.items() for r in rs}
    hit = len(sel & true)
    p = hit / len(sel) if sel else float("nan")
    r = hit / len(true) if true else float("nan")
    if math.isnan(p) or math.isnan(r):
        f1 = float("nan")
    else:
        f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"selected": len(sel), "truth": len(true), "hit": hit, "precision": p, "recall": r, "f1": f1}


def candidate_scores(selection: Selection, space: ChannelSpace) -> dict[str, torch.Tensor]:
    """The selection's scores of the entries it chose among: those of the module kinds (and
    raw entries, by key) its mask records as ``meta["candidates"]`` (as
    :func:`~actlang.run.select.select_channels` does), or all its scores when the mask does
    not say. Empty without scores."""
    if selection.scores is None:
        return {}
    kinds = selection.mask.meta.get("candidates")
    if kinds is None:
        return dict(selection.scores.items())
    wanted = set(kinds)
    return {key: values for key, values in selection.scores.items()
            if key in wanted or
            ((e := _entry(space, selection.mask, key)) is not None and e.kind in wanted)}


def _threshold(selection: Selection, candidates: Mapping[str, torch.Tensor],
               ranked: torch.Tensor) -> tuple[float | None, int, bool]:
    """The budget threshold on the selection's score curve: ``(score, k, exact)``.

    Args:
        selection: the selection.
        candidates: its candidate scores (:func:`candidate_scores`).
        ranked: the finite candidate scores, sorted in descending order.

    ``k`` is the number of selected channels among the candidates. For a channel-level
    selection without tying the threshold is exact: the lowest score of a selected channel.
    Otherwise (units of several channels, tied groups) channels were not ranked one by one, and
    the threshold is the score at rank ``k`` of the candidate channels — an approximation."""
    mask = selection.mask
    picked = [values[mask.selected(key)] for key, values in candidates.items()
              if key in mask.channels and mask.selected(key).numel() == values.numel()]
    k = sum(int(t.numel()) for t in picked)
    if k == 0:
        return None, 0, True
    if mask.meta.get("granularity", "channel") == "channel" and not mask.meta.get("tie"):
        lowest = _finite(picked)
        return (float(lowest.min()) if lowest.numel() else None), k, True
    return (float(ranked[min(k, ranked.numel()) - 1]) if ranked.numel() else None), k, False


def _is_perplexity(row: Mapping[str, float | None]) -> bool:
    return any(v is not None and math.isfinite(v) and v > 1.0 for v in row.values())


def _retained(specialist: float | None, merged: float | None, lower_better: bool) -> float:
    if specialist is None or merged is None or not math.isfinite(specialist) or not math.isfinite(merged):
        return float("nan")
    if lower_better:
        return specialist / merged if merged > 0 else float("nan")
    return merged / specialist if specialist > 0 else float("nan")


def _columns(evals: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The evals columns in the order of first appearance."""
    return list(dict.fromkeys(c for row in evals.values() for c in row))


# --------------------------------------------------------------------------- the channel map


@dataclass
class _Map:
    rows: list[str]
    cols: list[str]
    selected: list[list[int | None]]   # None: no such entry
    total: list[list[int | None]]

    def fraction(self) -> list[list[float]]:
        return [[(s / t if t else 0.0) if s is not None and t is not None else float("nan")
                 for s, t in zip(srow, trow)] for srow, trow in zip(self.selected, self.total)]


def _col_label(e: Entry) -> str:
    if e.kind == "raw":
        name = e.key[len("raw."):]
        if e.layer is not None:
            m = re.search(rf"\.{e.layer}\.(.+)$", name)
            if m:
                return "raw:" + m.group(1)
        return "raw:" + name
    return e.kind


def _channel_map(mask: ChannelMask, space: ChannelSpace) -> _Map:
    cells: dict[tuple[str, str], list[int]] = {}
    col_order: dict[str, bool] = {}   # column -> shown even when nothing of it is selected
    global_cols: list[str] = []
    for e in space:
        row = _GLOBAL if e.layer is None else str(e.layer)
        col = _col_label(e)
        n = int(mask.selected(e.key).sum()) if e.key in mask.channels else 0
        c = cells.setdefault((row, col), [0, 0])
        c[0] += n
        c[1] += e.size
        if e.layer is None:
            if col not in global_cols:
                global_cols.append(col)
        else:
            col_order[col] = col_order.get(col, False) or not e.default_excluded
    selected_cols = {col for (row, col), (n, _) in cells.items() if n > 0}
    cols = [c for c, shown in col_order.items() if shown or c in selected_cols]
    rows = [str(layer) for layer in sorted({e.layer for e in space if e.layer is not None})]
    if any(n > 0 for (row, _), (n, _) in cells.items() if row == _GLOBAL):
        cols += [c for c in global_cols if c not in cols]
        rows.append(_GLOBAL)
    sel = [[cells[(r, c)][0] if (r, c) in cells else None for c in cols] for r in rows]
    tot = [[cells[(r, c)][1] if (r, c) in cells else None for c in cols] for r in rows]
    return _Map(rows, cols, sel, tot)


# --------------------------------------------------------------------------- formatting


def _num(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return "—" if math.isnan(v) else ("∞" if v > 0 else "−∞")
    if abs(v) >= 1000:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{100 * v:.2f} %" if 0 < abs(v) < 0.001 else f"{100 * v:.1f} %"


def _esc(text: Any) -> str:
    """Markdown-escape plain text for a heading, table cell or paragraph."""
    s = str(text)
    s = s.replace("\\", "\\\\")
    for ch in "`*[]|<>":
        s = s.replace(ch, "\\" + ch)
    return s.replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A pipe table; ``align`` has one letter a column: ``l``eft, ``r``ight or ``c``enter
    (default: the first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _paragraphs(*blocks: str) -> str:
    return "\n\n".join(blocks)


def _slug(text: str, maxlen: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return s[:maxlen].strip("-") or "selection"


def _gate_json(g: Any) -> dict[str, Any]:
    if isinstance(g, Mapping):
        return dict(g)
    if hasattr(g, "to_json"):
        return dict(g.to_json())
    return {k: getattr(g, k) for k in ("condition", "left", "right", "passed") if hasattr(g, k)}


# --------------------------------------------------------------------------- plots


def _mpl():
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # never switch a caller's interactive backend
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return matplotlib, Figure, FigureCanvasAgg


_RC = {"font.size": 8, "svg.hashsalt": "actlang", "path.simplify": True, "axes.titlesize": 9}


@contextmanager
def _figure(path: Path, size: tuple[float, float]) -> Iterator[tuple[Any, Any, Any]]:
    """``(matplotlib, figure, axes)`` of a one-axes Agg figure in the report's style; on exit
    the figure is laid out and saved to ``path`` as a PNG without metadata."""
    matplotlib, Figure, Canvas = _mpl()
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=size, dpi=DPI)
        Canvas(fig)
        yield matplotlib, fig, fig.add_subplot(1, 1, 1)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


def _plot_map(m: _Map, title: str, path: Path) -> Path:
    import numpy as np

    frac = np.array(m.fraction(), dtype=np.float64).reshape(len(m.rows), len(m.cols))
    finite = frac[np.isfinite(frac)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    size = (min(14.0, 2.5 + 0.75 * len(m.cols)), min(16.0, 1.6 + 0.28 * len(m.rows)))
    with _figure(path, size) as (matplotlib, fig, ax):
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")
        im = ax.imshow(np.ma.masked_invalid(frac), aspect="auto", cmap=cmap, vmin=0.0, vmax=vmax,
                       interpolation="nearest")
        ax.set_xticks(range(len(m.cols)), m.cols, rotation=45, ha="right")
        ax.set_yticks(range(len(m.rows)), m.rows)
        ax.set_xlabel("module kind")
        ax.set_ylabel("layer")
        ax.set_title(title)
        if len(m.rows) * len(m.cols) <= 400:
            for i, srow in enumerate(m.selected):
                for j, n in enumerate(srow):
                    if n:
                        light = frac[i, j] < 0.6 * vmax
                        ax.text(j, i, str(n), ha="center", va="center", fontsize=6,
                                color="white" if light else "black")
        fig.colorbar(im, ax=ax, label="fraction of channels selected")
    return path


@dataclass
class _Curve:
    """One CCDF curve: a set of scores and the budget thresholds ``(tag, score)`` marked on it."""

    label: str
    scores: torch.Tensor
    marks: list[tuple[str, float | None]]


def _ccdf_points(s: torch.Tensor, n_points: int = 1500) -> tuple[Any, Any]:
    import numpy as np

    n = s.numel()
    desc = s.sort(descending=True).values.numpy()
    pos = int((desc > 0).sum())
    if pos == 0:
        return np.zeros(0), np.zeros(0)
    idx = np.unique(np.round(np.logspace(0, math.log10(pos), n_points)).astype(np.int64) - 1)
    return desc[idx], (idx + 1) / n


def _plot_ccdf(curves: Sequence[_Curve], path: Path) -> Path:
    with _figure(path, (6.4, 4.4)) as (matplotlib, _, ax):
        colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, curve in enumerate(curves):
            x, y = _ccdf_points(curve.scores)
            if not len(x):
                continue
            c = colors[i % len(colors)]
            ax.plot(x, y, color=c, lw=1.2, label=curve.label)
            for tag, thr in curve.marks:
                if thr is None or thr <= 0:
                    continue
                frac = float((curve.scores >= thr).sum()) / curve.scores.numel()
                ax.axvline(thr, color=c, ls="--", lw=0.8)
                ax.plot([thr], [frac], marker="o", color=c, ms=4)
                ax.annotate(tag, (thr, frac), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=c)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("channel score x")
        ax.set_ylabel("fraction of channels with score ≥ x")
        ax.set_title("Score distribution (CCDF); dashed: budget threshold")
        ax.grid(True, which="major", lw=0.3)
        ax.legend(loc="lower left", fontsize=7)
    return path


def _plot_jaccard(labels: list[str], matrix: list[list[float]], path: Path) -> Path:
    import numpy as np

    a = np.array(matrix, dtype=np.float64)
    side = min(12.0, 2.5 + 0.6 * len(labels))
    with _figure(path, (side + 1.2, side)) as (_, fig, ax):
        im = ax.imshow(a, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if a[i, j] < 0.5 else "black")
        ax.set_title("Jaccard overlap of channel sets")
        fig.colorbar(im, ax=ax)
    return path


# --------------------------------------------------------------------------- sections


def header_section(title: str, spec_name: str, notes: Sequence[str] = ()) -> Section:
    """The title, the spec the run came from and the notes (markdown paragraphs, as given)."""
    return Section(title, {"title": title, "spec": spec_name},
                   _paragraphs(f"Report of {_esc(spec_name)}.", *(str(n) for n in notes)), level=1)


def abilities_section(evals: Mapping[str, Mapping[str, float]]) -> Section:
    """The before/after table: one row per ability, one column per evaluated model.

    Args:
        evals: ``evals[ability][column]``; accuracies in [0, 1] or perplexities.
    """
    columns = _columns(evals)
    if not columns:
        return Section("Abilities", {"evals": dict(evals)}, "No abilities were evaluated.")
    rows = [[_esc(ability), "perplexity ↓" if _is_perplexity(row) else "accuracy ↑",
             *(_num(row.get(c)) for c in columns)] for ability, row in evals.items()]
    table = _table(["ability", "metric", *(_esc(c) for c in columns)], rows, "ll" + "r" * len(columns))
    return Section("Abilities", {"evals": dict(evals)}, table)


def _gate_cells(gate: Mapping[str, Any]) -> list[str]:
    left, right = float(gate.get("left", float("nan"))), float(gate.get("right", float("nan")))
    margin = abs(float(gate.get("margin", left - right)))
    if gate.get("passed"):
        verdict, how = "passed", f"by {_num(margin)}"
    else:
        relative = f" ({_pct(margin / abs(right))} of the bound)" if right and math.isfinite(right) else ""
        verdict, how = "**FAILED**", f"short by {_num(margin)}{relative}"
    return [_esc(gate.get("condition", "?")), _num(left), _num(right), verdict, how]


def gates_section(gates: Sequence[Any]) -> Section:
    """The ``expect`` gates: passed or failed, and by how much (``margin = left - right``).

    Args:
        gates: ``GateResult.to_json()`` dicts (``condition``, ``left``, ``right``, ``passed``,
            optional ``margin``), or objects with ``to_json()``.
    """
    found = [_gate_json(g) for g in gates]
    if not found:
        return Section("Gates", {"gates": []}, "")
    passed = sum(bool(g.get("passed")) for g in found)
    table = _table(["gate", "left", "right", "result", "margin"], [_gate_cells(g) for g in found], "lrrll")
    return Section("Gates", {"gates": found}, _paragraphs(f"{passed} of {len(found)} passed.", table))


def _map_table(m: _Map) -> str:
    """The selected channels per (layer, kind), with row totals and a last row per kind."""
    rows = [[r, *("" if v is None else str(v) for v in srow), str(sum(v or 0 for v in srow))]
            for r, srow in zip(m.rows, m.selected)]
    kind_sel = [sum(v or 0 for v in col) for col in zip(*m.selected)]
    kind_tot = [sum(v or 0 for v in col) for col in zip(*m.total)]
    rows.append(["all", *(f"{n} ({_pct(n / t if t else 0.0)})" for n, t in zip(kind_sel, kind_tot)),
                 str(sum(kind_sel))])
    return _table(["layer", *(_esc(c) for c in m.cols), "total"], rows)


def channel_map_section(index: int, selection: Selection, space: ChannelSpace, plots: Path) -> Section:
    """The selection's channels per layer × module kind: a heatmap PNG and a table of counts.

    Args:
        index: the selection's number in the report (``#index``).
        selection: the selection.
        space: the channel space of the target model.
        plots: the folder the heatmap is written to.
    """
    title = f"#{index} {selection.name}"
    n = selection.mask.n_channels
    if n == 0:
        return Section(title, {"map": None},
                       f"No channels selected (0 of {space.n_channels()}): this selection moves nothing.", level=3)
    m = _channel_map(selection.mask, space)
    png = _plot_map(m, f"{title}: selected channels", plots / f"map-{index:02d}-{_slug(selection.name)}.png")
    inputs = selection.mask.n_inputs
    tying = f" and {inputs} input features (tying)" if inputs else ""
    body = _paragraphs(f"![selected channels of #{index}](plots/{png.name})",
                       f"{n} channels selected{tying}. Channels per (layer, kind):", _map_table(m))
    data = {"map": {"rows": m.rows, "cols": m.cols, "selected": m.selected, "total": m.total}}
    return Section(title, data, body, level=3, plots=(png,))


def _selection_summary(selection: Selection) -> dict[str, Any]:
    mask = selection.mask
    summary = mask.summary()
    units, candidates = mask.meta.get("units_selected"), mask.meta.get("units_total")
    return {"name": selection.name, "ability": selection.ability, "channels": mask.n_channels,
            "channels_moving": selection.moving,
            "input_features": mask.n_inputs, "channels_total": summary["channels_total"],
            "fraction": summary["fraction"],
            # what the plan counts: the units the rule chose among, as `actc plan` shows them
            "units": units, "candidate_units": candidates,
            "fraction_of_candidates": units / candidates if units is not None and candidates
            else None, "meta": mask.meta}


def _selection_cells(index: int, selection: Selection, summary: Mapping[str, Any]) -> list[str]:
    meta = selection.mask.meta
    score = selection.scores.method if selection.scores is not None else meta.get("score", "none")
    moving = "—" if selection.moving is None else str(selection.moving)
    granularity = meta.get("granularity", "channel")
    chosen = "—" if summary["units"] is None else \
        f"{summary['units']:,} of {summary['candidate_units']:,}" + \
        ("" if granularity == "channel" else f" {granularity}s")
    share = "—" if summary["fraction_of_candidates"] is None else \
        _pct(summary["fraction_of_candidates"])
    return [f"#{index}", _esc(selection.name), _esc(selection.ability), str(summary["channels"]),
            moving, chosen, share,
            _esc(meta.get("budget", meta.get("selection", "—"))), _esc(meta.get("granularity", "—")),
            _esc(score)]


def selections_section(selections: Sequence[Selection], space: ChannelSpace, plots: Path) -> Section:
    """One row per selection, then each selection's :func:`channel_map_section`.

    Args:
        selections: the selections (may be empty; a selection may be empty).
        space: the channel space of the target model.
        plots: the folder the heatmaps are written to.
    """
    if not selections:
        return Section("Selections", {"selections": []},
                       "No channel selections (a whole-model method, or no transfer).")
    summaries = [_selection_summary(s) for s in selections]
    maps = [channel_map_section(i, s, space, plots) for i, s in enumerate(selections, 1)]
    table = _table(["#", "selection", "ability", "channels", "moving weights",
                    "chosen of the candidates", "share of the candidates",
                    "budget", "granularity", "score"],
                   [_selection_cells(i, s, summary) for i, (s, summary)
                    in enumerate(zip(selections, summaries), 1)], "lllrrrrlll")
    data = [{**summary, **m.data} for summary, m in zip(summaries, maps)]
    return Section("Selections", {"selections": data}, _paragraphs(table, *(m.render() for m in maps)),
                   plots=tuple(p for m in maps for p in m.plots))


def _score_summary(selection: Selection, candidates: Mapping[str, torch.Tensor],
                   ranked: torch.Tensor) -> dict[str, Any]:
    """The numbers of the selection's candidate scores (``ranked``: the finite ones, descending)."""
    assert selection.scores is not None
    threshold, k, exact = _threshold(selection, candidates, ranked)
    return {"method": selection.scores.method, "channels": ranked.numel(), "positive": int((ranked > 0).sum()),
            "concentration": concentration(ranked, FRACTIONS), "threshold": threshold,
            "threshold_exact": exact, "selected_scored": k}


def _score_cells(index: int, selection: Selection, summary: Mapping[str, Any]) -> list[str]:
    threshold = summary["threshold"]
    marked = "—" if threshold is None else (
        f"{'' if summary['threshold_exact'] else '≈ '}{_num(threshold, 4)} ({summary['selected_scored']} selected)")
    return [f"#{index}", _esc(selection.name), _esc(summary["method"]), str(summary["channels"]),
            str(summary["positive"]), *(_pct(summary["concentration"][f]) for f in FRACTIONS), marked]


def _ccdf_markdown(curves: Sequence[_Curve], plots: Path) -> tuple[str, tuple[Path, ...]]:
    """The CCDF plot and its caption, or why there is none; and the plot written."""
    if not any(bool((c.scores > 0).any()) for c in curves):
        return "No positive scores: the CCDF is empty (the models do not differ on the probe?).", ()
    png = _plot_ccdf(curves, plots / "score-ccdf.png")
    return _paragraphs(
        f"![score CCDF](plots/{png.name})",
        "The CCDF shows, for each score x, the fraction of candidate channels scoring at least x "
        "(log-log, positive scores only); the dashed line marks the budget threshold. "
        "A heavy, straight tail means a few channels carry most of the difference."), (png,)


def score_distribution_section(selections: Sequence[Selection], space: ChannelSpace, plots: Path) -> Section:
    """The CCDF of each scored selection's candidate scores with its budget threshold, and the
    concentration of their mass in the top 1 % / 5 % / 10 % of the candidate channels.

    Selections ranking the same candidate scores share one curve, with one threshold each.

    Args:
        selections: the selections; those without scores are left out.
        space: the channel space of the target model.
        plots: the folder the CCDF plot is written to.
    """
    scored = [(i, s) for i, s in enumerate(selections, 1) if s.scores is not None]
    if not scored:
        return Section("Score distribution", {"scores": {}},
                       "No selection has scores (controls such as random channels have none).")
    curves: dict[tuple[int, tuple[str, ...]], _Curve] = {}
    summaries: dict[str, Any] = {}
    rows = []
    for i, selection in scored:
        candidates = candidate_scores(selection, space)
        ranked = _finite(candidates.values()).sort(descending=True).values
        summaries[selection.name] = summary = _score_summary(selection, candidates, ranked)
        rows.append(_score_cells(i, selection, summary))
        mark = (f"#{i}", summary["threshold"])
        key = (id(selection.scores), tuple(candidates))
        if key in curves:
            curves[key].label += f", #{i}"
            curves[key].marks.append(mark)
        else:
            curves[key] = _Curve(f"#{i} {selection.name} ({summary['method']})", ranked, [mark])
    ccdf, written = _ccdf_markdown(list(curves.values()), plots)
    table = _table(["#", "selection", "score", "channels", "> 0",
                    *(f"top {_pct(f).replace('.0 %', ' %')}" for f in FRACTIONS), "threshold"], rows,
                   "lllrrrrrr")
    return Section("Score distribution", {"scores": summaries}, _paragraphs(
        ccdf,
        "**Concentration** — share of the total (non-negative) score mass held by the top "
        "1 % / 5 % / 10 % of the selection's candidate channels; uniform scores would give "
        "1 % / 5 % / 10 %.",
        table), plots=written)


def overlap_section(selections: Sequence[Selection], plots: Path) -> Section:
    """The Jaccard index of the channel sets of every pair of selections, and a heatmap of
    them when there are three or more selections.

    Args:
        selections: the selections.
        plots: the folder the heatmap is written to.
    """
    title = "Overlap between selections"
    if len(selections) < 2:
        return Section(title, {"overlap": []},
                       "Only one selection: no overlap to show." if selections else "No selections.")
    k = len(selections)
    matrix = [[1.0] * k for _ in range(k)]
    pairs, rows = [], []
    for a, b in itertools.combinations(range(k), 2):
        sa, sb = selections[a], selections[b]
        na, nb, inter, union = _overlap(sa.mask, sb.mask)
        matrix[a][b] = matrix[b][a] = j = inter / union if union else 1.0
        pairs.append({"a": sa.name, "b": sb.name, "size_a": na, "size_b": nb, "intersection": inter,
                      "jaccard": j})
        rows.append([f"#{a + 1} {_esc(sa.name)}", f"#{b + 1} {_esc(sb.name)}", str(na), str(nb), str(inter),
                     _num(j)])
    blocks = [("Jaccard index `|A ∩ B| / |A ∪ B|` of the selected (module, channel) sets "
               "(two empty sets count as identical)."),
              _table(["A", "B", "\\|A\\|", "\\|B\\|", "\\|A ∩ B\\|", "Jaccard"], rows, "llrrrr")]
    written: tuple[Path, ...] = ()
    if k >= 3:
        written = (_plot_jaccard([f"#{i}" for i in range(1, k + 1)], matrix, plots / "overlap-jaccard.png"),)
        blocks.append(f"![Jaccard overlap](plots/{written[0].name})")
    return Section(title, {"overlap": pairs}, _paragraphs(*blocks), plots=written)


def ground_truth_section(selections: Sequence[Selection], space: ChannelSpace) -> Section:
    """Precision / recall / F1 of the selected rows of every selection with a ``truth``
    (:func:`precision_recall`); does not apply when none has one.

    Args:
        selections: the selections.
        space: the channel space of the target model.
    """
    title = "Localization vs ground truth"
    with_truth = [(i, s, s.truth) for i, s in enumerate(selections, 1) if s.truth is not None]
    if not with_truth:
        return Section(title, {"truth": {}}, "")
    results = {s.name: precision_recall(s.mask, space, truth) for _, s, truth in with_truth}
    rows = [[f"#{i}", _esc(s.name), *(str(results[s.name][c]) for c in ("selected", "truth", "hit")),
             *(_num(results[s.name][c]) for c in ("precision", "recall", "f1"))] for i, s, _ in with_truth]
    return Section(title, {"truth": results}, _paragraphs(
        "Selected rows (channels of modules whose channel is a row of their weight) against "
        "the rows known to carry the change.",
        _table(["#", "selection", "rows selected", "true rows", "hits", "precision", "recall", "F1"], rows,
               "llrrrrrr")))


def _interference(row: Mapping[str, float], specialist: str, outputs: Sequence[str]) -> dict[str, Any]:
    """One ability's value on its specialist and, per merged output, its value and share retained."""
    lower = _is_perplexity(row)
    value = row.get(specialist)
    return {"specialist": specialist, "specialist_value": value, "lower_is_better": lower,
            "outputs": {c: {"value": row.get(c), "retained": _retained(value, row.get(c), lower)}
                        for c in outputs}}


def interference_section(evals: Mapping[str, Mapping[str, float]],
                         specialists: Mapping[str, str] | None) -> Section:
    """Each ability on its specialist vs on the merged outputs (the ``after ...`` columns, or
    else the last column that is no specialist's), and the share retained.

    Args:
        evals: ``evals[ability][column]``.
        specialists: ability → the evals column of its specialist; the section does not apply
            without them.
    """
    if not specialists:
        return Section("Interference", {"interference": {}}, "")
    columns = _columns(evals)
    outputs = [c for c in columns if c.startswith("after")] or \
        [c for c in columns if c not in specialists.values()][-1:]
    results = {ability: _interference(evals.get(ability, {}), column, outputs)
               for ability, column in specialists.items()}
    rows = [[_esc(ability), _esc(r["specialist"]), _num(r["specialist_value"]),
             *(_num(v) for c in outputs for v in (r["outputs"][c]["value"], r["outputs"][c]["retained"]))]
            for ability, r in results.items()]
    header = ["ability", "specialist", "on specialist", *(h for c in outputs for h in (_esc(c), "retained"))]
    return Section("Interference", {"interference": results}, _paragraphs(
        _table(header, rows) if outputs else "No merged output was evaluated.",
        "Retained = merged ÷ specialist for accuracies, specialist ÷ merged for perplexities: "
        "1.000 means the merge cost the ability nothing."))


# --------------------------------------------------------------------------- files


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:70em;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em}
th{background:#f3f3f3}
code{background:#f3f3f3;padding:0 0.2em;border-radius:3px}
img{max-width:100%}
h1,h2,h3{margin-top:1.4em}
"""


def markdown_to_html(markdown: str, title: str = "report") -> str:
    """A self-contained HTML page (inline CSS) of ``markdown``, rendered by markdown-it-py:
    CommonMark with pipe tables; raw HTML in the markdown is escaped, not passed through."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"{body}</body>\n</html>\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    return str(x)


def _remove_old_plots(plots: Path) -> None:
    """Remove the PNGs an earlier report wrote into ``plots``: the new one may not reference them."""
    if plots.is_dir():
        for old in sorted(plots.glob("*.png")):
            if old.name.startswith(_PLOT_PREFIXES):
                old.unlink()


def write_report(
    out_dir: Path,
    *,
    title: str,
    spec_name: str,
    evals: dict[str, dict[str, float]],
    selections: Sequence[Selection],
    space: ChannelSpace,
    gates: Sequence[dict] = (),
    specialists: dict[str, str] | None = None,
    notes: Sequence[str] = (),
) -> list[Path]:
    """Write ``report.md``, ``report.html``, ``report.json`` and ``plots/*.png`` into
    ``out_dir`` (see the module docs); returns the paths written.

    Args:
        title: the report's heading (e.g. the surgery's name).
        spec_name: the spec file the run came from.
        evals: ``evals[ability][column]`` — exact-match accuracies in [0, 1] or perplexities;
            columns in the order of first appearance.
        selections: the channel selections to show (may be empty; a selection may be empty).
        space: the channel space of the target model.
        gates: ``GateResult.to_json()`` dicts (``condition``, ``left``, ``right``, ``passed``,
            optional ``margin``); objects with ``to_json()`` are accepted too.
        specialists: for merges, ability → the evals column of its specialist; adds the
            interference table against every ``after ...`` column.
        notes: markdown paragraphs placed under the title, as given.

    Earlier plots of this module in ``out_dir/plots`` are removed first, so that the directory
    holds only what the new report references.
    """
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_old_plots(plots)
    sections = [
        header_section(title, spec_name, notes),
        abilities_section(evals),
        gates_section(gates),
        selections_section(selections, space, plots),
        score_distribution_section(selections, space, plots),
        overlap_section(selections, plots),
        ground_truth_section(selections, space),
        interference_section(evals, specialists),
    ]
    text = "\n\n".join(filter(None, (s.render() for s in sections))) + "\n"
    data = {key: value for s in sections for key, value in s.data.items()}
    md_path, html_path, json_path = out_dir / "report.md", out_dir / "report.html", out_dir / "report.json"
    md_path.write_text(text, encoding="utf-8")
    html_path.write_text(markdown_to_html(text, title=title), encoding="utf-8")
    json_path.write_text(json.dumps(_jsonable(data), indent=1, sort_keys=True, allow_nan=False) + "\n",
                         encoding="utf-8")
    return [md_path, html_path, json_path, *(p for s in sections for p in s.plots)]
