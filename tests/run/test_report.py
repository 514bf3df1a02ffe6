"""The surgery report: each section's numbers and markdown against hand-computed ones, the
assembled files, the HTML (markdown-it-py), determinism and empty input."""

from __future__ import annotations

import dataclasses
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
    Section,
    Selection,
    abilities_section,
    candidate_scores,
    channel_map_section,
    gates_section,
    ground_truth_section,
    header_section,
    interference_section,
    jaccard,
    markdown_to_html,
    overlap_section,
    precision_recall,
    score_distribution_section,
    selected_rows,
    selections_section,
    write_report,
)
from actlang.run.scores import Scores, concentration, random_scores
from actlang.run.select import select_channels

UP0 = "model.layers.0.mlp.up_proj.weight"
UP1 = "model.layers.1.mlp.up_proj.weight"
FRACTIONS = (0.01, 0.05, 0.10)
PNG = b"\x89PNG\r\n\x1a\n"


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


def _rows(md: str, first_cell: str) -> list[list[str]]:
    """The cells of the table rows of ``md`` whose first cell is ``first_cell``."""
    out = []
    for line in md.splitlines():
        if line.startswith(f"| {first_cell} |"):
            out.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return out


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
SPECIALISTS = {"arithmetic": "donor (zoo.base)", "lang_b": "target (zoo.tuned)"}


class _NoPlots:
    """The plots folder of a section that must draw nothing: naming a file in it fails."""

    def __truediv__(self, name: str):
        raise AssertionError(f"plot {name} drawn")


NO_PLOTS = _NoPlots()


def _selections(space: ChannelSpace) -> list[Selection]:
    """#1 the default candidates, #2 a random control without scores, #3 the same scores as #1
    over MLP and final-norm candidates only, #4 an empty selection with other scores."""
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


# --------------------------------------------------------------------------- concentration


def test_concentration_hand_computed():
    c = concentration(torch.arange(1, 101, dtype=torch.float64), FRACTIONS)  # 1..100, total 5050
    assert c[0.01] == pytest.approx(100 / 5050)
    assert c[0.05] == pytest.approx(sum(range(96, 101)) / 5050)
    assert c[0.10] == pytest.approx(sum(range(91, 101)) / 5050)
    # any shape; negative scores count as zero mass; the top fraction is at least one channel
    c = concentration(torch.tensor([[3.0, 1.0], [-5.0, 0.0]]), (0.01, 0.5))
    assert c[0.01] == pytest.approx(0.75) and c[0.5] == pytest.approx(1.0)
    # non-finite scores are dropped (n = 4 finite ones)
    assert concentration(torch.tensor([3.0, float("nan"), 1.0, float("inf"), 0.0, 0.0]), (0.25,))[0.25] == 0.75
    # a uniform score gives the fraction itself
    assert concentration(torch.ones(200), (0.05,))[0.05] == pytest.approx(0.05)
    # no mass: undefined
    assert all(math.isnan(v) for v in concentration(torch.zeros(10), FRACTIONS).values())
    assert all(math.isnan(v) for v in concentration(torch.zeros(0), FRACTIONS).values())


def test_concentration_rounds_half_up_like_budgets():
    # 0.25 * 10 = 2.5 channels: 3, as a 25 % budget takes (Python's round() would give 2)
    c = concentration(torch.arange(10, 0, -1, dtype=torch.float64), (0.25,))
    assert c[0.25] == pytest.approx((10 + 9 + 8) / 55)
    scores = Scores({"layers.0.mlp.up": torch.arange(24, dtype=torch.float64)})
    space = _space()
    picked = select_channels(scores, space, "12.5%", kinds=["mlp.up"], layers=[0])  # 3 of 24 channels
    share = float(scores["layers.0.mlp.up"][picked.selected("layers.0.mlp.up")].sum()) / float(scores.flat().sum())
    assert concentration(scores.flat(), (0.125,))[0.125] == pytest.approx(share)


def test_scores_concentration_is_the_function():
    s = Scores({"a": torch.tensor([4.0, -1.0]), "b": torch.tensor([3.0, 2.0, 1.0])})
    assert s.concentration((0.2, 0.5)) == concentration(s.flat(), (0.2, 0.5))
    assert all(math.isnan(v) for v in Scores({"a": torch.zeros(3)}).concentration().values())


def test_concentration_is_over_the_candidate_scores(tmp_path):
    space = _space()
    sels = _selections(space)
    mlp = sels[2]
    kinds = {"mlp.gate", "mlp.up", "mlp.down", "norm.final"}
    cand = candidate_scores(mlp, space)
    assert set(cand) == {e.key for e in space if e.kind in kinds}
    assert set(candidate_scores(sels[0], space)) == {e.key for e in space if not e.default_excluded}
    assert candidate_scores(sels[1], space) == {}  # no scores
    assert set(candidate_scores(sels[3], space)) == {e.key for e in space}  # the mask does not say

    section = score_distribution_section(sels, space, tmp_path)
    want = concentration(torch.cat(list(cand.values())), FRACTIONS)
    got = section.data["scores"]["mlp only"]
    assert got["concentration"] == pytest.approx(want)
    assert got["channels"] == sum(space[k].size for k in cand)
    # the old report took every score of the Scores object, candidates or not
    everything = concentration(mlp.scores.flat(), FRACTIONS)
    assert got["concentration"] != pytest.approx(everything, abs=0.01)


# --------------------------------------------------------------------------- small functions


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


# --------------------------------------------------------------------------- sections


def test_section_render():
    assert Section("A <b>", {}, "body", level=3).render() == "### A \\<b\\>\n\nbody"
    assert Section("Gates", {"gates": []}, "").render() == ""


def test_header_section():
    s = header_section("recover *x*", "examples/recover.act", ["Measured on the tiny zoo."])
    assert s.data == {"title": "recover *x*", "spec": "examples/recover.act"}
    assert s.render() == "# recover \\*x\\*\n\nReport of examples/recover.act.\n\nMeasured on the tiny zoo."


def test_abilities_section():
    s = abilities_section(EVALS)
    assert s.data == {"evals": EVALS}
    assert s.markdown.splitlines()[0] == ("| ability | metric | target (zoo.tuned) | donor (zoo.base) | after transfer"
                                          " | after finetune |")
    assert _rows(s.markdown, "arithmetic") == [["arithmetic", "accuracy ↑", "0.125", "0.875", "0.500", "0.812"]]
    assert _rows(s.markdown, "lang_b") == [["lang_b", "perplexity ↓", "10.000", "40.000", "12.500", "11.000"]]
    # a missing value is a dash; columns in the order of first appearance
    s = abilities_section({"a": {"x": 0.5}, "b": {"y": 0.25}})
    assert _rows(s.markdown, "a") == [["a", "accuracy ↑", "0.500", "—"]]
    assert abilities_section({}).markdown == "No abilities were evaluated."


def test_gates_section():
    s = gates_section(GATES)
    assert s.data == {"gates": GATES}
    assert s.markdown.startswith("1 of 2 passed.\n\n| gate | left | right | result | margin |")
    assert s.markdown.splitlines()[-2:] == [
        "| eval(arithmetic) \\>= 0.9 \\* eval(arithmetic, on = base) | 0.812 | 0.787 | passed | by 0.025 |",
        "| eval(lang_b) \\<= 10.5 | 11.000 | 10.500 | **FAILED** | short by 0.500 (4.8 % of the bound) |"]

    class Gate:
        def to_json(self):
            return {"condition": "c", "left": 1.0, "right": 2.0, "passed": False}

    s = gates_section([Gate()])
    assert s.data["gates"][0]["condition"] == "c"
    assert "short by 1.000 (50.0 % of the bound)" in s.markdown  # margin = left - right
    assert gates_section([]).render() == ""


def test_channel_map_section(tmp_path):
    space = _space()
    sel = _selections(space)[2]
    s = channel_map_section(3, sel, space, tmp_path)
    assert s.title == "#3 mlp only" and s.level == 3
    assert [p.name for p in s.plots] == ["map-03-mlp-only.png"] and s.plots[0].read_bytes()[:8] == PNG
    m = s.data["map"]
    assert m["rows"] == ["0", "1", "global"]
    assert m["cols"][-3:] == ["embed", "norm.final", "lm_head"]  # global kinds come in with a selection
    up1 = int(sel.mask.selected("layers.1.mlp.up").sum())
    assert m["selected"][1][m["cols"].index("mlp.up")] == up1
    assert m["total"][1][m["cols"].index("mlp.up")] == space["layers.1.mlp.up"].size
    assert m["selected"][0][m["cols"].index("embed")] is None  # no such entry in a layer
    lines = s.markdown.split("\n\n")
    assert lines[0] == "![selected channels of #3](plots/map-03-mlp-only.png)"
    assert lines[1] == f"{sel.mask.n_channels} channels selected. Channels per (layer, kind):"
    layer1 = _rows(s.markdown, "1")[0]
    assert layer1[1 + m["cols"].index("mlp.up")] == str(up1)
    assert layer1[-1] == str(sum(int(sel.mask.selected(f"layers.1.{k}").sum())
                                 for k in ("mlp.gate", "mlp.up", "mlp.down")))
    assert _rows(s.markdown, "global")[0][-1] == str(int(sel.mask.selected("norm.final").sum()))
    assert _rows(s.markdown, "all")[0][-1] == str(sel.mask.n_channels)

    empty = channel_map_section(4, Selection("nothing", "x", ChannelMask.empty(space), None), space, NO_PLOTS)
    assert empty.data == {"map": None} and empty.plots == ()
    assert empty.markdown == "No channels selected (0 of 352): this selection moves nothing."


def test_selections_section(tmp_path):
    space = _space()
    sels = _selections(space)
    s = selections_section(sels, space, tmp_path)
    assert len(s.plots) == 3  # the empty selection has no map
    assert [d["name"] for d in s.data["selections"]] == [x.name for x in sels]
    assert s.data["selections"][0]["channels"] == sels[0].mask.n_channels
    assert s.data["selections"][3]["map"] is None and s.data["selections"][2]["map"]["rows"][-1] == "global"
    assert _rows(s.markdown, "#1")[0] == ["#1", "zoo.arithmetic from zoo.base", "arithmetic", "11", "—",
                                          "11 of 224", "4.9 %", "5%", "channel",
                                          "paired_absdiff"]
    moving = selections_section([dataclasses.replace(sels[0], moving=7)], space, tmp_path)
    assert _rows(moving.markdown, "#1")[0][3:5] == ["11", "7"]
    assert moving.data["selections"][0]["channels_moving"] == 7
    assert _rows(s.markdown, "#2")[0][-1] == "random(seed=3)"
    assert _rows(s.markdown, "#4")[0][3:] == ["0", "—", "—", "—", "empty", "—", "paired_absdiff"]
    assert [line for line in s.markdown.splitlines() if line.startswith("### ")] == [
        "### #1 zoo.arithmetic from zoo.base", "### #2 random control", "### #3 mlp only", "### #4 nothing"]
    none = selections_section([], space, NO_PLOTS)
    assert none.data == {"selections": []} and none.markdown.startswith("No channel selections")


def test_score_distribution_section(tmp_path):
    space = _space()
    sels = _selections(space)
    s = score_distribution_section(sels, space, tmp_path)
    assert [p.name for p in s.plots] == ["score-ccdf.png"] and s.plots[0].read_bytes()[:8] == PNG
    assert set(s.data["scores"]) == {"zoo.arithmetic from zoo.base", "mlp only", "nothing"}  # #2 has no scores
    first = s.data["scores"]["zoo.arithmetic from zoo.base"]
    cand = candidate_scores(sels[0], space)
    flat = torch.cat(list(cand.values()))
    assert (first["channels"], first["positive"]) == (flat.numel(), int((flat > 0).sum()))
    assert first["concentration"] == pytest.approx(concentration(flat, FRACTIONS))
    picked = torch.cat([cand[k][sels[0].mask.selected(k)] for k in sels[0].mask.channels])
    assert (first["threshold"], first["threshold_exact"], first["selected_scored"]) == (
        float(picked.min()), True, sels[0].mask.n_channels)
    row = _rows(s.markdown, "#1")[0]
    assert row == ["#1", "zoo.arithmetic from zoo.base", "paired_absdiff", "224", "224",
                   *(f"{100 * first['concentration'][f]:.1f} %" for f in FRACTIONS),
                   f"{first['threshold']:.4f} (11 selected)"]
    assert _rows(s.markdown, "#4")[0][-1] == "—"  # nothing selected: no threshold
    assert s.markdown.startswith("![score CCDF](plots/score-ccdf.png)")
    assert "| # | selection | score | channels | > 0 | top 1 % | top 5 % | top 10 % | threshold |" in s.markdown

    # module granularity: channels were not ranked one by one, the threshold is approximate
    coarse = select_channels(sels[0].scores, space, "10%", granularity="module")
    s = score_distribution_section([Selection("modules", "x", coarse, sels[0].scores)], space, tmp_path)
    got = s.data["scores"]["modules"]
    ranked = flat.sort(descending=True).values
    assert not got["threshold_exact"] and got["threshold"] == float(ranked[coarse.n_channels - 1])
    assert _rows(s.markdown, "#1")[0][-1].startswith("≈ ")

    none = score_distribution_section([sels[1]], space, NO_PLOTS)
    assert none.data == {"scores": {}} and none.markdown.startswith("No selection has scores")
    zero = Scores({e.key: torch.zeros(e.size, dtype=torch.float64) for e in space})
    flat_zero = score_distribution_section([Selection("zero", "x", sels[0].mask, zero)], space, NO_PLOTS)
    assert flat_zero.markdown.startswith("No positive scores") and not flat_zero.plots
    assert _rows(flat_zero.markdown, "#1")[0][5:8] == ["—", "—", "—"]


def test_overlap_section(tmp_path):
    space = _space()
    sels = _selections(space)
    s = overlap_section(sels, tmp_path)
    assert [p.name for p in s.plots] == ["overlap-jaccard.png"]
    assert len(s.data["overlap"]) == 6
    for a in range(4):
        for b in range(a + 1, 4):
            j = jaccard(sels[a].mask, sels[b].mask)
            pair = next(p for p in s.data["overlap"] if (p["a"], p["b"]) == (sels[a].name, sels[b].name))
            assert pair["jaccard"] == pytest.approx(j)
            assert pair["intersection"] == int(sum((sels[a].mask.selected(k) & sels[b].mask.selected(k)).sum()
                                                   for k in sels[a].mask.channels))
            line = next(x for x in s.markdown.splitlines()
                        if x.startswith(f"| #{a + 1} {sels[a].name} | #{b + 1} {sels[b].name} |"))
            assert line.endswith(f"| {j:.3f} |")
    assert s.markdown.endswith("![Jaccard overlap](plots/overlap-jaccard.png)")
    two = overlap_section(sels[:2], NO_PLOTS)  # no heatmap for one pair
    assert len(two.data["overlap"]) == 1 and not two.plots
    assert overlap_section(sels[:1], NO_PLOTS).markdown == "Only one selection: no overlap to show."
    assert overlap_section([], NO_PLOTS).markdown == "No selections."


def test_ground_truth_section():
    space = _space()
    sels = _selections(space)
    s = ground_truth_section(sels, space)
    assert set(s.data["truth"]) == {sels[0].name, sels[1].name}
    for i in (1, 2):
        pr = precision_recall(sels[i - 1].mask, space, sels[i - 1].truth)
        assert s.data["truth"][sels[i - 1].name] == pr
        assert _rows(s.markdown, f"#{i}")[0][2:] == [
            str(pr["selected"]), str(pr["truth"]), str(pr["hit"]), f"{pr['precision']:.3f}",
            f"{pr['recall']:.3f}", f"{pr['f1']:.3f}"]
    none = ground_truth_section(sels[2:], space)
    assert none.data == {"truth": {}} and none.render() == ""


def test_interference_section():
    s = interference_section(EVALS, SPECIALISTS)
    # arithmetic 0.875 -> 0.5 / 0.8125; lang_b perplexity 10 -> 12.5 / 11
    assert _rows(s.markdown, "arithmetic")[0][1:] == ["donor (zoo.base)", "0.875", "0.500", "0.571", "0.812",
                                                      "0.929"]
    assert _rows(s.markdown, "lang_b")[0][1:] == ["target (zoo.tuned)", "10.000", "12.500", "0.800", "11.000",
                                                  "0.909"]
    lang_b = s.data["interference"]["lang_b"]
    assert lang_b["lower_is_better"] and lang_b["specialist_value"] == 10.0
    assert lang_b["outputs"]["after transfer"] == {"value": 12.5, "retained": pytest.approx(0.8)}
    # without "after ..." columns, the last column that is no specialist's
    s = interference_section({"a": {"spec": 0.5, "merged": 0.25}}, {"a": "spec"})
    assert _rows(s.markdown, "a")[0] == ["a", "spec", "0.500", "0.250", "0.500"]
    s = interference_section({"a": {"spec": 0.5}}, {"a": "spec"})
    assert s.markdown.startswith("No merged output was evaluated.")
    assert interference_section(EVALS, None).render() == ""


def test_markdown_to_html_renders_tables_and_escapes():
    md = ("# Title \\*x\\*\n\nA **bold** `co<de>` [link](a.html) a \\| b & c <b>raw</b>.\n\n"
          "| a | b \\| c | d |\n|---|---:|:---:|\n| 1 | 2 | `x` |\n\n![alt](plots/p.png)\n")
    h = markdown_to_html(md, title="T<")
    assert h.startswith("<!DOCTYPE html>") and "<style>" in h and h.rstrip().endswith("</html>")
    assert "<title>T&lt;</title>" in h
    assert "<h1>Title *x*</h1>" in h
    assert ('<p>A <strong>bold</strong> <code>co&lt;de&gt;</code> <a href="a.html">link</a> a | b &amp; c '
            "&lt;b&gt;raw&lt;/b&gt;.</p>") in h
    assert h.count("<table>") == 1
    assert '<th>a</th>\n<th style="text-align:right">b | c</th>\n<th style="text-align:center">d</th>' in h
    assert '<td>1</td>\n<td style="text-align:right">2</td>\n<td style="text-align:center"><code>x</code></td>' in h
    assert '<img src="plots/p.png" alt="alt"' in h


# --------------------------------------------------------------------------- the report


def test_write_report_assembles_the_sections(tmp_path):
    space = _space()
    sels = _selections(space)
    paths = write_report(tmp_path, title="recover arithmetic", spec_name="examples/recover.act", evals=EVALS,
                         selections=sels, space=space, gates=GATES, specialists=SPECIALISTS,
                         notes=["Measured on the tiny zoo."])
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
    names = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert names[:3] == ["report.md", "report.html", "report.json"]
    assert names[3:] == ["plots/map-01-zoo-arithmetic-from-zoo-base.png", "plots/map-02-random-control.png",
                         "plots/map-03-mlp-only.png", "plots/score-ccdf.png", "plots/overlap-jaccard.png"]

    md = (tmp_path / "report.md").read_text()
    plots = tmp_path / "elsewhere"
    sections = [header_section("recover arithmetic", "examples/recover.act", ["Measured on the tiny zoo."]),
                abilities_section(EVALS), gates_section(GATES), selections_section(sels, space, plots),
                score_distribution_section(sels, space, plots), overlap_section(sels, plots),
                ground_truth_section(sels, space), interference_section(EVALS, SPECIALISTS)]
    assert md == "\n\n".join(s.render() for s in sections) + "\n"
    assert [line for line in md.splitlines() if line.startswith("## ")] == [
        "## Abilities", "## Gates", "## Selections", "## Score distribution", "## Overlap between selections",
        "## Localization vs ground truth", "## Interference"]

    html = (tmp_path / "report.html").read_text()
    assert html.count("<table>") == md.count("\n|---") == 10
    assert md.count("\n| ") == html.count("<tr>")  # every table row, once
    assert "<td>arithmetic</td>\n<td>accuracy ↑</td>" in html
    for v in ("0.125", "0.875", "0.812", "0.571", "0.929", "0.800"):
        assert f'<td style="text-align:right">{v}</td>' in html
    imgs = re.findall(r'<img src="([^"]+)"', html)
    assert len(imgs) == 5 and all((tmp_path / s).is_file() for s in imgs)
    assert "eval(lang_b) &lt;= 10.5" in html and "<strong>FAILED</strong>" in html

    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data) == {"title", "spec", "evals", "gates", "selections", "scores", "overlap", "truth",
                         "interference"}
    assert data["overlap"][0]["jaccard"] == pytest.approx(jaccard(sels[0].mask, sels[1].mask))
    assert data["truth"]["zoo.arithmetic from zoo.base"]["hit"] == precision_recall(
        sels[0].mask, space, sels[0].truth)["hit"]
    assert data["interference"]["lang_b"]["outputs"]["after transfer"]["retained"] == pytest.approx(0.8)
    conc = concentration(torch.cat(list(candidate_scores(sels[0], space).values())), FRACTIONS)
    assert data["scores"]["zoo.arithmetic from zoo.base"]["concentration"] == pytest.approx(
        {str(f): v for f, v in conc.items()})
    assert data["scores"]["nothing"]["threshold"] is None  # NaN and None become null


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
    assert "## Gates" not in md and "## Interference" not in md
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
    (tmp_path / "plots" / "mine.png").write_bytes(PNG)  # not the report's: kept
    paths = write_report(tmp_path, title="t", spec_name="s.act", evals={}, selections=sels[:1], space=space)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        ["mine.png", *(p.name for p in paths if p.suffix == ".png")])


def test_import_does_not_load_matplotlib():
    code = "import sys, actlang.run.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
