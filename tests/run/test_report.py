"""The surgery report: numbers against hand-computed ones, files, HTML, determinism, empty input."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import LlamaConfig

from actlang.arch.adapters import ChannelSpace
from actlang.run.mask import ChannelMask
from actlang.run.report import (
    Selection,
    concentration,
    jaccard,
    markdown_to_html,
    precision_recall,
    selected_rows,
    write_report,
)
from actlang.run.scores import Scores, random_scores
from actlang.run.select import select_channels

UP0 = "model.layers.0.mlp.up_proj.weight"
UP1 = "model.layers.1.mlp.up_proj.weight"


def _space(**kw) -> ChannelSpace:
    cfg = LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=24, vocab_size=32, **kw)
    return ChannelSpace.from_config(cfg.to_dict())


def _mask(space: ChannelSpace, picks: dict[str, list[int]]) -> ChannelMask:
    ch = {}
    for key, idx in picks.items():
        v = torch.zeros(space[key].size, dtype=torch.bool)
        v[idx] = True
        ch[key] = v
    return ChannelMask.from_channels(space, ch)


def _heavy_scores(space: ChannelSpace, seed: int = 0) -> Scores:
    g = torch.Generator().manual_seed(seed)
    return Scores({e.key: torch.rand(e.size, generator=g, dtype=torch.float64) ** 6 for e in space},
                  "paired_absdiff")


# --------------------------------------------------------------------------- small functions


def test_concentration_hand_computed():
    s = Scores({"a": torch.arange(1, 101, dtype=torch.float64)})  # 1..100, total 5050
    c = concentration(s)
    assert c[0.01] == pytest.approx(100 / 5050)
    assert c[0.05] == pytest.approx(sum(range(96, 101)) / 5050)
    assert c[0.10] == pytest.approx(sum(range(91, 101)) / 5050)
    # negative scores count as zero mass; the top fraction is at least one channel
    c = concentration({"a": torch.tensor([3.0, 1.0, -5.0, 0.0])}, fractions=(0.01, 0.5))
    assert c[0.01] == pytest.approx(0.75) and c[0.5] == pytest.approx(1.0)
    # a uniform score gives the fraction itself
    assert concentration(torch.ones(200))[0.05] == pytest.approx(0.05)
    # no mass: undefined
    assert all(math.isnan(v) for v in concentration(torch.zeros(10)).values())
    assert all(math.isnan(v) for v in concentration(Scores({})).values())


def test_jaccard_hand_computed():
    space = _space()
    a = _mask(space, {"layers.0.mlp.up": [0, 1, 2]})
    b = _mask(space, {"layers.0.mlp.up": [1, 2, 3], "layers.1.attn.q": [0]})
    assert jaccard(a, b) == pytest.approx(2 / 5)
    assert jaccard(b, a) == pytest.approx(2 / 5)
    assert jaccard(a, a) == 1.0
    empty = ChannelMask.empty(space)
    assert jaccard(a, empty) == 0.0
    assert jaccard(empty, ChannelMask.empty(space)) == 1.0
    # the same channel index in another module is another channel
    assert jaccard(_mask(space, {"layers.0.mlp.up": [0]}), _mask(space, {"layers.1.mlp.up": [0]})) == 0.0


def test_precision_recall_hand_computed():
    space = _space()
    mask = _mask(space, {"layers.0.mlp.up": [0, 1, 2, 3]})
    pr = precision_recall(mask, space, {UP0: [2, 3, 4]})
    assert (pr["selected"], pr["truth"], pr["hit"]) == (4, 3, 2)
    assert pr["precision"] == pytest.approx(0.5)
    assert pr["recall"] == pytest.approx(2 / 3)
    assert pr["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # rows of another tensor are other rows
    pr = precision_recall(mask, space, {UP1: [0, 1]})
    assert pr["hit"] == 0 and pr["precision"] == 0.0 and pr["recall"] == 0.0 and pr["f1"] == 0.0
    # empty selection: precision undefined, recall 0
    pr = precision_recall(ChannelMask.empty(space), space, {UP0: [1]})
    assert math.isnan(pr["precision"]) and pr["recall"] == 0.0


def test_selected_rows_counts_bias_once_and_uses_offsets():
    space = _space(attention_bias=True)
    mask = _mask(space, {"layers.0.attn.q": [0, 5], "layers.1.mlp.down": [3]})
    rows = selected_rows(mask, space)
    assert rows == {"model.layers.0.self_attn.q_proj.weight": {0, 5}, "model.layers.1.mlp.down_proj.weight": {3}}
    # the mask itself also moves the bias rows: they are not counted as extra rows
    assert int(mask.tensors["model.layers.0.self_attn.q_proj.bias"][0].sum()) == 2


# --------------------------------------------------------------------------- the report


EVALS = {
    "arithmetic": {"target (zoo.tuned)": 0.125, "donor (zoo.base)": 0.875, "after transfer": 0.5,
                   "after finetune": 0.8125},
    "lang_b": {"target (zoo.tuned)": 10.0, "donor (zoo.base)": 40.0, "after transfer": 12.5,
               "after finetune": 11.0},
}
GATES = [
    {"condition": "eval(arithmetic) >= 0.9 * eval(arithmetic, on = base)", "left": 0.8125,
     "right": 0.7875, "passed": True, "margin": 0.025},
    {"condition": "eval(lang_b) <= 10.5", "left": 11.0, "right": 10.5, "passed": False, "margin": 0.5},
]


def _selections(space: ChannelSpace) -> list[Selection]:
    scores = _heavy_scores(space)
    act = select_channels(scores, space, "5%")
    rnd = select_channels(random_scores(space, 3), space, "5%")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = select_channels(scores, space, "10%", kinds=["mlp.*", "norm.final"])
    truth = {UP0: [0, 1, 2, 3], "model.layers.1.self_attn.q_proj.weight": [4, 5]}
    return [Selection("zoo.arithmetic from zoo.base", "arithmetic", act, scores, truth),
            Selection("random control", "arithmetic", rnd, None, truth),
            Selection("mlp only", "lang_b", mlp, scores),
            Selection("nothing", "lang_b", ChannelMask.empty(space), _heavy_scores(space, 1))]


def _rows(md: str, first_cell: str) -> list[list[str]]:
    out = []
    for line in md.splitlines():
        if line.startswith(f"| {first_cell} |"):
            out.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return out


def test_write_report_contents(tmp_path):
    space = _space()
    sels = _selections(space)
    paths = write_report(tmp_path, title="recover arithmetic", spec_name="examples/recover.act", evals=EVALS,
                         selections=sels, space=space, gates=GATES,
                         specialists={"arithmetic": "donor (zoo.base)", "lang_b": "target (zoo.tuned)"},
                         notes=["Measured on the tiny zoo."])
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    assert {"report.md", "report.html", "report.json", "plots/score-ccdf.png",
            "plots/overlap-jaccard.png"} <= names
    maps = sorted(n for n in names if n.startswith("plots/map-"))
    assert len(maps) == 3  # the empty selection has no map
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names if n.endswith(".png"))

    md = (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert "Measured on the tiny zoo." in md

    # 1. the before/after table and the gates
    assert _rows(md, "arithmetic")[0] == ["arithmetic", "accuracy ↑", "0.125", "0.875", "0.500", "0.812"]
    assert _rows(md, "lang_b")[0] == ["lang_b", "perplexity ↓", "10.000", "40.000", "12.500", "11.000"]
    assert "1 of 2 passed" in md
    assert "short by 0.500" in md and "by 0.025" in md and "**FAILED**" in md

    # 2. selections and their maps
    for i, s in enumerate(sels, 1):
        assert f"| #{i} | {s.name} |" in md
    assert "No channels selected (0 of" in md
    assert md.count("![selected channels of #") == 3
    m = sels[2].mask
    up1 = int(m.selected("layers.1.mlp.up").sum())
    glob = _rows(md, "global")
    assert glob and glob[0][-1] == str(int(m.selected("norm.final").sum()))
    layer1 = _rows(md, "1")[-1]  # the map of selection #3 is the last with a layer-1 row
    header = next(line for line in md.splitlines()[md.splitlines().index("### #3 mlp only"):]
                  if line.startswith("| layer |"))
    cols = [c.strip() for c in header.strip().strip("|").split(" | ")]
    assert layer1[cols.index("mlp.up")] == str(up1)
    assert layer1[-1] == str(sum(int(m.selected(f"layers.1.{k}").sum()) for k in ("mlp.gate", "mlp.up", "mlp.down")))

    # 3. concentration (two distinct score sets: the first three share one)
    c = concentration(sels[0].scores)
    row = next(r for r in _rows(md, "#1") if r[-1].endswith("selected)"))
    assert f"{100 * c[0.01]:.1f} %" in row and f"{100 * c[0.05]:.1f} %" in row and f"{100 * c[0.10]:.1f} %" in row
    sel_scores = torch.cat([sels[0].scores[k][sels[0].mask.selected(k)] for k in sels[0].mask.channels])
    assert f"{float(sel_scores.min()):.4f} ({sels[0].mask.n_channels} selected)" in row

    # 4. Jaccard for every pair
    for a in range(4):
        for b in range(a + 1, 4):
            j = jaccard(sels[a].mask, sels[b].mask)
            line = f"| #{a + 1} {sels[a].name} | #{b + 1} {sels[b].name} |"
            got = next(x for x in md.splitlines() if x.startswith(line))
            assert got.rstrip().endswith(f"| {j:.3f} |")

    # 5. precision / recall
    for i in (1, 2):
        pr = precision_recall(sels[i - 1].mask, space, sels[i - 1].truth)
        r = next(x for x in _rows(md, f"#{i}") if len(x) == 8)
        assert r[2:] == [str(pr["selected"]), str(pr["truth"]), str(pr["hit"]), f"{pr['precision']:.3f}",
                         f"{pr['recall']:.3f}", f"{pr['f1']:.3f}"]

    # 6. interference: arithmetic 0.875 -> 0.5 / 0.8125; lang_b perplexity 10 -> 12.5 / 11
    assert _rows(md, "arithmetic")[1][1:] == ["donor (zoo.base)", "0.875", "0.500", "0.571", "0.812", "0.929"]
    lb = [r for r in md.splitlines() if r.startswith("| lang") and "target (zoo.tuned) |" in r][0]
    assert lb.rstrip().endswith("| 10.000 | 12.500 | 0.800 | 11.000 | 0.909 |")

    # the HTML holds the same tables and the images
    assert "<td>arithmetic</td><td>accuracy ↑</td>" in html
    for v in ("0.125", "0.875", "0.812", "0.571", "0.929", "0.800"):
        assert f'<td style="text-align:right">{v}</td>' in html
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) == 5 and all((tmp_path / s).is_file() for s in imgs)
    assert md.count("\n| ") == html.count("<tr>")  # every table row, once
    assert "eval(lang_b) &lt;= 10.5" in html

    data = json.loads((tmp_path / "report.json").read_text())
    assert data["overlap"][0]["jaccard"] == pytest.approx(jaccard(sels[0].mask, sels[1].mask))
    assert data["truth"]["zoo.arithmetic from zoo.base"]["hit"] == precision_recall(
        sels[0].mask, space, sels[0].truth)["hit"]
    assert data["interference"]["lang_b"]["outputs"]["after transfer"]["retained"] == pytest.approx(0.8)


def test_report_is_deterministic(tmp_path):
    space = _space()
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        write_report(d, title="t", spec_name="s.act", evals=EVALS, selections=_selections(space), space=space,
                     gates=GATES)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_empty_and_minimal_reports(tmp_path):
    space = _space()
    empty = ChannelMask.empty(space)
    paths = write_report(tmp_path / "one", title="t", spec_name="s.act", evals={}, space=space,
                         selections=[Selection("nothing", "x", empty, None)])
    md = (tmp_path / "one" / "report.md").read_text()
    assert "No abilities were evaluated." in md
    assert "No channels selected (0 of" in md
    assert "No selection has scores" in md
    assert "no overlap" in md
    assert not [p for p in paths if p.suffix == ".png"]

    # nothing at all, and all-zero scores (identical models)
    write_report(tmp_path / "two", title="t", spec_name="s.act", evals={"a": {"x": 0.5}}, selections=[],
                 space=space)
    assert "No channel selections" in (tmp_path / "two" / "report.md").read_text()
    zero = Scores({e.key: torch.zeros(e.size, dtype=torch.float64) for e in space})
    write_report(tmp_path / "three", title="t", spec_name="s.act", evals={}, space=space,
                 selections=[Selection("zero", "x", empty, zero, {UP0: [1]}),
                             Selection("zero2", "x", empty, zero)])
    md = (tmp_path / "three" / "report.md").read_text()
    assert "No positive scores" in md
    assert "| #1 | zero | 0 | 1 | 0 | — | 0.000 | — |" in md
    assert "1.000" in md  # two empty selections are identical


def test_rewrite_removes_stale_plots(tmp_path):
    space = _space()
    sels = _selections(space)
    write_report(tmp_path, title="t", spec_name="s.act", evals={}, selections=sels, space=space)
    paths = write_report(tmp_path, title="t", spec_name="s.act", evals={}, selections=sels[:1], space=space)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths
                                                                           if p.suffix == ".png")


def test_markdown_to_html_constructs():
    md = ("# Title *x*\n\nA **bold** `co<de>` [link](a.html) a \\| b & c.\n\n"
          "| a | b \\| c | d |\n|---|---:|:---:|\n| 1 | 2 | `x` |\n\n![alt](plots/p.png)\n\n- one\n- two\n")
    h = markdown_to_html(md, title="T<")
    assert "<title>T&lt;</title>" in h
    assert "<h1>Title *x*</h1>" in h
    assert "<p>A <strong>bold</strong> <code>co&lt;de&gt;</code> <a href=\"a.html\">link</a> a | b &amp; c.</p>" in h
    assert "<th>a</th><th style=\"text-align:right\">b | c</th><th style=\"text-align:center\">d</th>" in h
    assert "<td>1</td><td style=\"text-align:right\">2</td><td style=\"text-align:center\"><code>x</code></td>" in h
    assert '<img src="plots/p.png" alt="alt">' in h
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in h


def test_import_does_not_load_matplotlib():
    code = "import sys, actlang.run.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
