"""No silent wrong answers: inputs that would make `actc run` report a meaningless result
are an error (or a warning the summary repeats), through the installed `actc`."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from ..conftest import PRELUDE

NO_EVAL = "eval = []"


def _rule(body: str) -> str:
    return f'surgery s -> "out" {{ target = tuned  transfer sums from base {{ {body} }}  {NO_EVAL} }}\n'


def test_a_probe_without_scored_tokens_is_an_error(actc, write_spec, tmp_path) -> None:
    """Documents whose scored answer lies past max_tokens leave 0 scored tokens: before,
    the run still moved channels chosen from all-zero scores."""
    spec = write_spec(_rule("budget = 5%")).read_text().replace(
        'score = "a")', 'score = "a", max_tokens = 2)')
    (tmp_path / "cut.act").write_text(spec)
    result = actc("run", str(tmp_path / "cut.act"))
    assert result.returncode == 1, result.stderr
    assert "0 scored tokens" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_donor_with_nan_weights_is_refused_before_writing(actc, pair, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(pair / "base", broken)
    weights = load_file(broken / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"][:] = float("nan")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    spec = tmp_path / "s.act"
    spec.write_text(PRELUDE.format(root=pair).replace(f'local("{pair}/base")', f'local("{broken}")')
                    + _rule("budget = 20%  score = random(seed = 1)  skip_identical = false"))
    result = actc("run", str(spec))
    assert result.returncode == 1, result.stderr
    assert "NaN/Inf" in result.stderr and "model.layers.0.mlp.up_proj.weight" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_donor_whose_tokenizer_maps_the_probe_elsewhere_is_refused(actc, pair, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(pair / "base", other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["plus"], vocab["is"] = vocab["is"], vocab["plus"]  # same size, other ids
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    spec = tmp_path / "s.act"
    spec.write_text(PRELUDE.format(root=pair).replace(f'local("{pair}/base")', f'local("{other}")')
                    + _rule("budget = 5%"))
    result = actc("run", str(spec))
    assert result.returncode == 1, result.stderr
    assert "different token ids" in result.stderr


def test_budgets_spend_only_on_channels_that_differ(actc, pair, tmp_path) -> None:
    """A donor identical to the target except in a few rows: a large budget selects only the
    rows that differ and says how many more it asked for; a control that may not skip
    (skip_identical = false) selects the full budget and reports how few of its channels
    move weights."""
    donor = tmp_path / "donor"
    shutil.copytree(pair / "tuned", donor)
    weights = load_file(donor / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3] += 1.0
    weights["model.layers.0.self_attn.q_proj.weight"][5] += 1.0
    save_file(weights, donor / "model.safetensors", metadata={"format": "pt"})
    for skip, name in (("true", "skip"), ("false", "all")):
        spec = tmp_path / f"{name}.act"
        spec.write_text(PRELUDE.format(root=pair).replace(f'local("{pair}/base")', f'local("{donor}")')
                        + _rule(f"budget = 10  skip_identical = {skip}").replace('"out"', f'"out-{name}"'))
        result = actc("run", "--json", str(spec))
        assert result.returncode == 0, result.stderr
        (surgery,) = json.loads(result.stdout)["surgeries"]
        transfer, notes = surgery["transfer"], " ".join(result.stderr.split())
        if skip == "true":
            assert transfer["channels_selected"] == [2] and transfer["channels_moving"] == [2]
            assert "asked for 8 more units than have donor weights that differ" in notes
        else:
            assert transfer["channels_selected"] == [10] and transfer["channels_moving"] == [2]
            assert "2 of 10 selected channels move weights" in notes
        moved = load_file(tmp_path / f"out-{name}" / "model.safetensors")
        target = load_file(pair / "tuned" / "model.safetensors")
        changed = [n for n in target if not torch.equal(moved[n], target[n])]
        assert sorted(changed) == ["model.layers.0.self_attn.q_proj.weight",
                                   "model.layers.1.mlp.up_proj.weight"]


def test_a_budget_that_selects_nothing_says_so(actc, write_spec) -> None:
    result = actc("run", str(write_spec(_rule("budget = 0.0001%"))))
    assert result.returncode == 0, result.stderr
    assert "selects no channel" in " ".join(result.stderr.split())


def test_plan_refuses_local_scores_on_norms(actc, write_spec) -> None:
    result = actc("plan", str(write_spec(_rule(
        "channels = [mlp.*, norm.*]  include_global = true  score = local_absdiff  budget = 5%"))))
    assert result.returncode == 1
    assert "cannot score" in result.stderr and "norm." in result.stderr
    assert "spec.act:" in result.stderr  # located at the rule
