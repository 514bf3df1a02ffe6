"""The report of one surgery output: ``report.md``, ``report.html`` and ``plots/*.png``.

    paths = write_report(out_dir, title="recover_math", spec_name="examples/recover.act",
                         evals={"arithmetic": {"target (zoo.tuned)": 0.12, "donor (zoo.base)": 0.91,
                                               "after transfer": 0.55, "after finetune": 0.83}},
                         selections=[Selection("zoo.arithmetic from zoo.base", "arithmetic",
                                               mask, scores)],
                         space=space, gates=[g.to_json() for g in gates])

Sections (each says so when it has nothing to show, e.g. an empty selection):

1. **Abilities** — the before/after table (``evals[ability][column]``) and the ``expect``
   gates, passed or failed and by how much (``margin = left - right``).
2. **Selections** — one row per selection (channels, fraction, budget, score), then per
   selection the per-layer × per-module-kind map of selected channels: a heatmap PNG of the
   fraction selected in each (layer, kind) and a markdown table of the counts. Global entries
   (``embed``, ``norm.final``, ``lm_head``) get their own row. Kinds excluded by default (norms,
   embeddings, ``lm_head``) appear only when something of them is selected.
3. **Score distribution** — the CCDF of the channel scores, ``P(score >= x)`` against ``x`` on
   log-log axes (positive scores only), one curve per selection with scores, with the budget
   threshold marked (the score at rank ``k``, ``k`` = channels the selection took among the
   scored modules); and the **concentration**: share of the total non-negative score mass held
   by the top 1 % / 5 % / 10 % of channels (:func:`concentration`; a uniform score would give
   1 % / 5 % / 10 %).
4. **Overlap** — Jaccard index of the channel sets of every pair of selections
   (:func:`jaccard`), and a heatmap when there are three or more selections.
5. **Localization vs ground truth** — when a selection has ``truth`` (rows per checkpoint
   tensor, e.g. the planted scenario's damaged rows): precision / recall / F1 of its selected
   rows. The rows of a selection are, for every entry whose first tensor part runs along axis 0,
   ``offset + i`` of its selected channels ``i`` in that tensor (bias rows are not counted
   twice; tied input columns are not rows).
6. **Interference** (merges, ``specialists``) — each ability's score on its specialist vs on
   the merged output, and the share retained (``merged / specialist`` for accuracies,
   ``specialist / merged`` for perplexities, so that 1.0 means nothing was lost either way).

A metric is taken for a perplexity (lower is better) when any value of its row exceeds 1;
accuracies are in [0, 1].

``report.html`` is :func:`markdown_to_html` of ``report.md`` (a small converter for exactly
the constructs the report uses: headings, paragraphs, bullet lists, pipe tables, images, inline
code, bold and links), self-contained apart from the PNGs, which it references relatively.
``report.json`` holds the computed numbers (concentration, overlap, precision / recall,
interference) for scripts. Plots are drawn with matplotlib's Agg renderer at a fixed size and
dpi with PNG metadata stripped, so the same inputs give the same bytes.
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from actlang.arch.adapters import ChannelSpace, Entry
from actlang.run.mask import ChannelMask
from actlang.run.scores import Scores

__all__ = [
    "Selection",
    "concentration",
    "jaccard",
    "markdown_to_html",
    "precision_recall",
    "selected_rows",
    "write_report",
]

FRACTIONS = (0.01, 0.05, 0.10)
DPI = 100
_GLOBAL = "global"


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
    """

    name: str
    ability: str
    mask: ChannelMask
    scores: Scores | None
    truth: dict[str, list[int]] | None = None


# --------------------------------------------------------------------------- numbers


def _flat_scores(scores: Scores | Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(scores, Scores):
        t = scores.flat()
    elif isinstance(scores, torch.Tensor):
        t = scores.reshape(-1)
    else:
        vals = [torch.as_tensor(v).reshape(-1) for v in scores.values()]
        t = torch.cat(vals) if vals else torch.zeros(0)
    t = t.detach().to(torch.float64).cpu()
    return t[torch.isfinite(t)]


def _top_k(fraction: float, n: int) -> int:
    """Units in the top ``fraction`` of ``n``: rounded to the nearest unit, at least one."""
    return max(1, min(n, math.floor(fraction * n + 0.5))) if n else 0


def concentration(scores: Scores | Mapping[str, torch.Tensor] | torch.Tensor,
                  fractions: Sequence[float] = FRACTIONS) -> dict[float, float]:
    """Share of the total score mass held by the top ``fraction`` of channels.

    Negative scores (e.g. contrastive ones) count as 0 and non-finite ones are dropped; the top
    fraction is ``max(1, round(fraction * n))`` channels. A uniform score gives ``fraction``;
    a share of 1.0 means the top channels hold all of it. NaN when the total mass is 0.
    """
    s = _flat_scores(scores).clamp_min(0).sort(descending=True).values
    total = float(s.sum())
    out: dict[float, float] = {}
    for f in fractions:
        out[f] = float(s[: _top_k(f, s.numel())].sum()) / total if total > 0 else float("nan")
    return out


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
    ``offset + i`` for its selected channels ``i``."""
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


def _is_perplexity(row: Mapping[str, float | None]) -> bool:
    return any(v is not None and math.isfinite(v) and v > 1.0 for v in row.values())


def _retained(specialist: float | None, merged: float | None, lower_better: bool) -> float:
    if specialist is None or merged is None or not math.isfinite(specialist) or not math.isfinite(merged):
        return float("nan")
    if lower_better:
        return specialist / merged if merged > 0 else float("nan")
    return merged / specialist if specialist > 0 else float("nan")


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
    row_order: list[str] = []
    global_cols: list[str] = []
    layers = sorted({e.layer for e in space if e.layer is not None})
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
    row_order = [str(l) for l in layers]
    if any(n > 0 for (row, _), (n, _) in cells.items() if row == _GLOBAL):
        cols += [c for c in global_cols if c not in cols]
        row_order.append(_GLOBAL)
    sel = [[cells[(r, c)][0] if (r, c) in cells else None for c in cols] for r in row_order]
    tot = [[cells[(r, c)][1] if (r, c) in cells else None for c in cols] for r in row_order]
    return _Map(row_order, cols, sel, tot)


# --------------------------------------------------------------------------- formatting


def _num(v: float | int | None, digits: int = 3) -> str:
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
    """Markdown-escape plain text for a table cell or paragraph."""
    s = str(text)
    s = s.replace("\\", "\\\\")
    for ch in "`*[]|<>":
        s = s.replace(ch, "\\" + ch)
    return s.replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    align = list(align or ["l"] + ["r"] * (len(header) - 1))
    sep = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


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


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def _plot_map(m: _Map, title: str, path: Path) -> Path:
    matplotlib, Figure, Canvas = _mpl()
    import numpy as np

    frac = np.array(m.fraction(), dtype=np.float64).reshape(len(m.rows), len(m.cols))
    finite = frac[np.isfinite(frac)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    with matplotlib.rc_context(_RC):
        w = min(14.0, 2.5 + 0.75 * len(m.cols))
        h = min(16.0, 1.6 + 0.28 * len(m.rows))
        fig = Figure(figsize=(w, h), dpi=DPI)
        Canvas(fig)
        ax = fig.add_subplot(1, 1, 1)
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
        fig.tight_layout()
        return _save(fig, path)


def _ccdf_points(s: torch.Tensor, n_points: int = 1500) -> tuple[Any, Any]:
    import numpy as np

    n = s.numel()
    desc = s.sort(descending=True).values.numpy()
    pos = int((desc > 0).sum())
    if pos == 0:
        return np.zeros(0), np.zeros(0)
    idx = np.unique(np.round(np.logspace(0, math.log10(pos), n_points)).astype(np.int64) - 1)
    return desc[idx], (idx + 1) / n


def _plot_ccdf(curves: list[tuple[str, torch.Tensor, list[tuple[str, float | None]]]], path: Path) -> Path:
    matplotlib, Figure, Canvas = _mpl()
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(6.4, 4.4), dpi=DPI)
        Canvas(fig)
        ax = fig.add_subplot(1, 1, 1)
        colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (label, s, marks) in enumerate(curves):
            x, y = _ccdf_points(s)
            if not len(x):
                continue
            c = colors[i % len(colors)]
            ax.plot(x, y, color=c, lw=1.2, label=label)
            for tag, thr in marks:
                if thr is None or thr <= 0:
                    continue
                frac = float((s >= thr).sum()) / s.numel()
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
        fig.tight_layout()
        return _save(fig, path)


def _plot_jaccard(labels: list[str], matrix: list[list[float]], path: Path) -> Path:
    matplotlib, Figure, Canvas = _mpl()
    import numpy as np

    a = np.array(matrix, dtype=np.float64)
    with matplotlib.rc_context(_RC):
        side = min(12.0, 2.5 + 0.6 * len(labels))
        fig = Figure(figsize=(side + 1.2, side), dpi=DPI)
        Canvas(fig)
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(a, cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if a[i, j] < 0.5 else "black")
        ax.set_title("Jaccard overlap of channel sets")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        return _save(fig, path)


# --------------------------------------------------------------------------- the report


def _threshold(sel: Selection) -> tuple[float | None, int, bool]:
    """The budget threshold on the selection's score curve: ``(score, k, exact)``.

    ``k`` is the number of selected channels among the scored modules. For a channel-level
    selection without tying the threshold is exact: the lowest score of a selected channel.
    Otherwise (units of several channels, tied groups) channels were not ranked one by one, and
    the threshold is the score at rank ``k`` of all scored channels — an approximation."""
    assert sel.scores is not None
    picked = [sel.scores[key][sel.mask.selected(key)] for key in sel.scores.keys()
              if key in sel.mask.channels and sel.mask.selected(key).numel() == sel.scores[key].numel()]
    k = sum(int(t.numel()) for t in picked)
    if k == 0:
        return None, 0, True
    meta = sel.mask.meta
    if meta.get("granularity", "channel") == "channel" and not meta.get("tie"):
        vals = torch.cat(picked)
        vals = vals[torch.isfinite(vals)]
        return (float(vals.min()) if vals.numel() else None), k, True
    s = _flat_scores(sel.scores).sort(descending=True).values
    return (float(s[min(k, s.numel()) - 1]) if s.numel() else None), k, False


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
    if plots.is_dir():  # plots of an earlier report here would no longer be referenced
        for old in sorted(plots.glob("*.png")):
            if old.name.startswith(("map-", "score-ccdf", "overlap-jaccard")):
                old.unlink()
    written: list[Path] = []
    data: dict[str, Any] = {"title": title, "spec": spec_name}
    md: list[str] = [f"# {_esc(title)}", f"Report of {_esc(spec_name)}."]
    md += [str(n) for n in notes]

    # 1. abilities ------------------------------------------------------------------------
    md.append("## Abilities")
    columns: list[str] = []
    for row in evals.values():
        columns += [c for c in row if c not in columns]
    if evals and columns:
        rows = []
        for ability, row in evals.items():
            metric = "perplexity ↓" if _is_perplexity(row) else "accuracy ↑"
            rows.append([_esc(ability), metric, *(_num(row.get(c)) for c in columns)])
        md.append(_table(["ability", "metric", *(_esc(c) for c in columns)], rows,
                         ["l", "l", *(["r"] * len(columns))]))
    else:
        md.append("No abilities were evaluated.")
    data["evals"] = evals
    gate_rows = [_gate_json(g) for g in gates]
    if gate_rows:
        n_pass = sum(bool(g.get("passed")) for g in gate_rows)
        md.append(f"**Gates:** {n_pass} of {len(gate_rows)} passed.")
        rows = []
        for g in gate_rows:
            left, right = float(g.get("left", float("nan"))), float(g.get("right", float("nan")))
            margin = float(g.get("margin", left - right))
            if g.get("passed"):
                verdict, how = "passed", f"by {_num(abs(margin))}"
            else:
                verdict = "**FAILED**"
                rel = f" ({_pct(abs(margin) / abs(right))} of the bound)" if right and math.isfinite(right) else ""
                how = f"short by {_num(abs(margin))}{rel}"
            rows.append([_esc(g.get("condition", "?")), _num(left), _num(right), verdict, how])
        md.append(_table(["gate", "left", "right", "result", "margin"], rows,
                         ["l", "r", "r", "l", "l"]))
    data["gates"] = gate_rows

    # 2. selections -----------------------------------------------------------------------
    md.append("## Selections")
    sel_data: list[dict[str, Any]] = []
    if not selections:
        md.append("No channel selections (a whole-model method, or no transfer).")
    else:
        rows = []
        for i, s in enumerate(selections, 1):
            summ = s.mask.summary()
            meta = s.mask.meta
            rows.append([f"#{i}", _esc(s.name), _esc(s.ability), str(s.mask.n_channels),
                         str(summ["channels_total"]), _pct(summ["fraction"]),
                         _esc(meta.get("budget", meta.get("selection", "—"))),
                         _esc(meta.get("granularity", "—")),
                         _esc(s.scores.method if s.scores is not None else meta.get("score", "none"))])
            sel_data.append({"name": s.name, "ability": s.ability, "channels": s.mask.n_channels,
                             "input_features": s.mask.n_inputs,
                             "channels_total": summ["channels_total"], "fraction": summ["fraction"],
                             "meta": meta})
        md.append(_table(["#", "selection", "ability", "channels", "of", "share of all", "budget",
                          "granularity", "score"], rows, ["l", "l", "l", "r", "r", "r", "l", "l", "l"]))
    for i, s in enumerate(selections, 1):
        md.append(f"### #{i} {_esc(s.name)}")
        n = s.mask.n_channels
        if n == 0:
            md.append(f"No channels selected (0 of {space.n_channels()}): this selection moves nothing.")
            sel_data[i - 1]["map"] = None
            continue
        m = _channel_map(s.mask, space)
        png = plots / f"map-{i:02d}-{_slug(s.name)}.png"
        written.append(_plot_map(m, f"#{i} {s.name}: selected channels", png))
        md.append(f"![selected channels of #{i}](plots/{png.name})")
        extra = f" and {s.mask.n_inputs} input features (tying)" if s.mask.n_inputs else ""
        md.append(f"{n} channels selected{extra}. Channels per (layer, kind):")
        rows = []
        for r, srow in zip(m.rows, m.selected):
            cells = ["" if v is None else str(v) for v in srow]
            rows.append([r, *cells, str(sum(v or 0 for v in srow))])
        kind_sel = [sum(m.selected[r][c] or 0 for r in range(len(m.rows))) for c in range(len(m.cols))]
        kind_tot = [sum(m.total[r][c] or 0 for r in range(len(m.rows))) for c in range(len(m.cols))]
        rows.append(["all", *(f"{a} ({_pct(a / t if t else 0.0)})" for a, t in zip(kind_sel, kind_tot)),
                     str(sum(kind_sel))])
        md.append(_table(["layer", *(_esc(c) for c in m.cols), "total"], rows))
        sel_data[i - 1]["map"] = {"rows": m.rows, "cols": m.cols, "selected": m.selected, "total": m.total}

    # 3. score distribution ---------------------------------------------------------------
    md.append("## Score distribution")
    scored = [(i, s) for i, s in enumerate(selections, 1) if s.scores is not None]
    conc_data: dict[str, Any] = {}
    if not scored:
        md.append("No selection has scores (controls such as random channels have none).")
    else:
        curves: list[tuple[str, torch.Tensor, list[tuple[str, float | None]]]] = []
        curve_of: dict[int, int] = {}  # id(Scores) -> curve index: one curve per distinct score set
        rows = []
        for i, s in scored:
            assert s.scores is not None
            flat = _flat_scores(s.scores)
            thr, k, exact = _threshold(s)
            conc = concentration(s.scores, FRACTIONS)
            npos = int((flat > 0).sum())
            j = curve_of.get(id(s.scores))
            if j is None:
                curve_of[id(s.scores)] = len(curves)
                curves.append((f"#{i} {s.name} ({s.scores.method})", flat, [(f"#{i}", thr)]))
            else:  # the same scores ranked by another selection: one curve, another threshold
                label, t, marks = curves[j]
                curves[j] = (f"{label}, #{i}", t, marks + [(f"#{i}", thr)])
            rows.append([f"#{i}", _esc(s.name), _esc(s.scores.method), str(flat.numel()), str(npos),
                         *(_pct(conc[f]) for f in FRACTIONS),
                         "—" if thr is None else f"{'' if exact else '≈ '}{_num(thr, 4)} ({k} selected)"])
            conc_data[s.name] = {"method": s.scores.method, "channels": flat.numel(), "positive": npos,
                                 "concentration": {str(f): v for f, v in conc.items()},
                                 "threshold": thr, "threshold_exact": exact, "selected_scored": k}
        if any(int((c[1] > 0).sum()) for c in curves):
            png = plots / "score-ccdf.png"
            written.append(_plot_ccdf(curves, png))
            md.append(f"![score CCDF](plots/{png.name})")
            md.append("The CCDF shows, for each score x, the fraction of channels scoring at least x "
                      "(log-log, positive scores only); the dashed line marks the budget threshold. "
                      "A heavy, straight tail means a few channels carry most of the difference.")
        else:
            md.append("No positive scores: the CCDF is empty (the models do not differ on the probe?).")
        md.append("**Concentration** — share of the total (non-negative) score mass held by the top "
                  "1 % / 5 % / 10 % of channels; uniform scores would give 1 % / 5 % / 10 %.")
        md.append(_table(["#", "selection", "score", "channels", "> 0",
                          *(f"top {_pct(f).replace('.0 %', ' %')}" for f in FRACTIONS), "threshold"], rows,
                         ["l", "l", "l", "r", "r", "r", "r", "r", "r"]))
    data["scores"] = conc_data

    # 4. overlap --------------------------------------------------------------------------
    md.append("## Overlap between selections")
    overlap_data: list[dict[str, Any]] = []
    if len(selections) < 2:
        md.append("Only one selection: no overlap to show." if selections else "No selections.")
    else:
        rows = []
        k = len(selections)
        matrix = [[1.0] * k for _ in range(k)]
        for a in range(k):
            for b in range(a + 1, k):
                na, nb, inter, union = _overlap(selections[a].mask, selections[b].mask)
                j = inter / union if union else 1.0
                matrix[a][b] = matrix[b][a] = j
                rows.append([f"#{a + 1} {_esc(selections[a].name)}", f"#{b + 1} {_esc(selections[b].name)}",
                             str(na), str(nb), str(inter), _num(j)])
                overlap_data.append({"a": selections[a].name, "b": selections[b].name, "size_a": na,
                                     "size_b": nb, "intersection": inter, "jaccard": j})
        md.append("Jaccard index `|A ∩ B| / |A ∪ B|` of the selected (module, channel) sets "
                  "(two empty sets count as identical).")
        md.append(_table(["A", "B", "\\|A\\|", "\\|B\\|", "\\|A ∩ B\\|", "Jaccard"], rows,
                         ["l", "l", "r", "r", "r", "r"]))
        if k >= 3:
            png = plots / "overlap-jaccard.png"
            written.append(_plot_jaccard([f"#{i}" for i in range(1, k + 1)], matrix, png))
            md.append(f"![Jaccard overlap](plots/{png.name})")
    data["overlap"] = overlap_data

    # 5. ground truth ---------------------------------------------------------------------
    with_truth = [(i, s) for i, s in enumerate(selections, 1) if s.truth is not None]
    truth_data: dict[str, Any] = {}
    if with_truth:
        md.append("## Localization vs ground truth")
        md.append("Selected rows (channels of modules whose channel is a row of their weight) against "
                  "the rows known to carry the change.")
        rows = []
        for i, s in with_truth:
            assert s.truth is not None
            pr = precision_recall(s.mask, space, s.truth)
            truth_data[s.name] = pr
            rows.append([f"#{i}", _esc(s.name), str(pr["selected"]), str(pr["truth"]), str(pr["hit"]),
                         _num(pr["precision"]), _num(pr["recall"]), _num(pr["f1"])])
        md.append(_table(["#", "selection", "rows selected", "true rows", "hits", "precision", "recall",
                          "F1"], rows, ["l", "l", "r", "r", "r", "r", "r", "r"]))
    data["truth"] = truth_data

    # 6. interference ---------------------------------------------------------------------
    inter_data: dict[str, Any] = {}
    if specialists:
        md.append("## Interference")
        outs = [c for c in columns if c.startswith("after")] or \
            [c for c in columns if c not in specialists.values()][-1:]
        header = ["ability", "specialist", "on specialist"]
        for c in outs:
            header += [_esc(c), "retained"]
        rows = []
        for ability, col in specialists.items():
            row = evals.get(ability, {})
            lower = _is_perplexity(row)
            spec_v = row.get(col)
            cells = [_esc(ability), _esc(col), _num(spec_v)]
            inter_data[ability] = {"specialist": col, "specialist_value": spec_v, "lower_is_better": lower,
                                   "outputs": {}}
            for c in outs:
                v = row.get(c)
                ret = _retained(spec_v, v, lower)
                cells += [_num(v), _num(ret)]
                inter_data[ability]["outputs"][c] = {"value": v, "retained": ret}
            rows.append(cells)
        md.append(_table(header, rows) if outs else "No merged output was evaluated.")
        md.append("Retained = merged ÷ specialist for accuracies, specialist ÷ merged for perplexities: "
                  "1.000 means the merge cost the ability nothing.")
    data["interference"] = inter_data
    data["selections"] = sel_data

    text = "\n\n".join(md) + "\n"
    md_path = out_dir / "report.md"
    md_path.write_text(text, encoding="utf-8")
    html_path = out_dir / "report.html"
    html_path.write_text(markdown_to_html(text, title=title), encoding="utf-8")
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(_jsonable(data), indent=1, sort_keys=True, allow_nan=False) + "\n",
                         encoding="utf-8")
    return [md_path, html_path, json_path, *written]


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


# --------------------------------------------------------------------------- markdown -> HTML

_INLINE = re.compile(
    r"\\(?P<esc>[\\`*\[\]|<>_#!()-])"
    r"|`(?P<code>[^`]*)`"
    r"|\*\*(?P<bold>.+?)\*\*"
    r"|!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]*)\)"
    r"|\[(?P<text>[^\]]*)\]\((?P<href>[^)\s]*)\)"
)

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


def _inline(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos : m.start()], quote=False))
        if m.group("esc") is not None:
            out.append(html.escape(m.group("esc"), quote=False))
        elif m.group("code") is not None:
            out.append(f"<code>{html.escape(m.group('code'), quote=False)}</code>")
        elif m.group("bold") is not None:
            out.append(f"<strong>{_inline(m.group('bold'))}</strong>")
        elif m.group("src") is not None:
            out.append(f'<img src="{html.escape(m.group("src"))}" alt="{html.escape(m.group("alt"))}">')
        else:
            out.append(f'<a href="{html.escape(m.group("href"))}">{_inline(m.group("text"))}</a>')
        pos = m.end()
    out.append(html.escape(text[pos:], quote=False))
    return "".join(out)


def _split_row(line: str) -> list[str]:
    """Cells of a pipe-table row; ``\\|`` is a literal bar inside a cell."""
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    cells, cur, i = [], [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if s[i] == "|":
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(s[i])
        i += 1
    cells.append("".join(cur).strip())
    return cells


_SEP = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")


def markdown_to_html(md: str, title: str = "report") -> str:
    """A self-contained HTML page for the markdown subset the report emits: ATX headings,
    paragraphs, ``-`` bullet lists, pipe tables (with alignment), images, inline code, bold,
    links and backslash escapes."""
    body: list[str] = []
    blocks = re.split(r"\n\s*\n", md.strip("\n")) if md.strip() else []
    for block in blocks:
        lines = block.split("\n")
        first = lines[0]
        h = re.match(r"^(#{1,6})\s+(.*)$", first)
        if h and len(lines) == 1:
            n = len(h.group(1))
            body.append(f"<h{n}>{_inline(h.group(2).strip())}</h{n}>")
        elif len(lines) >= 2 and first.lstrip().startswith("|") and _SEP.match(lines[1].strip()):
            aligns = []
            for c in _split_row(lines[1]):
                c = c.strip()
                aligns.append("center" if c.startswith(":") and c.endswith(":") else
                              "right" if c.endswith(":") else "left")
            head = _split_row(first)

            def cell(tag: str, text: str, j: int) -> str:
                a = aligns[j] if j < len(aligns) else "left"
                style = "" if a == "left" else f' style="text-align:{a}"'
                return f"<{tag}{style}>{_inline(text)}</{tag}>"

            rows = ["<tr>" + "".join(cell("th", c, j) for j, c in enumerate(head)) + "</tr>"]
            for line in lines[2:]:
                rows.append("<tr>" + "".join(cell("td", c, j) for j, c in enumerate(_split_row(line)))
                            + "</tr>")
            body.append("<table>\n<thead>" + rows[0] + "</thead>\n<tbody>\n" + "\n".join(rows[1:])
                        + "\n</tbody>\n</table>")
        elif all(re.match(r"^\s*[-*]\s+", line) for line in lines):
            items = [_inline(re.sub(r"^\s*[-*]\s+", "", line)) for line in lines]
            body.append("<ul>\n" + "\n".join(f"<li>{it}</li>" for it in items) + "\n</ul>")
        else:
            body.append("<p>" + _inline(" ".join(line.strip() for line in lines)) + "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
