"""`actc run` end to end, in subprocesses, on a tiny model pair (tests/run/conftest.py).

Work is checked with counters (forward passes, cache hits), never with clocks.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import PRELUDE, THREE_RULES
from .conftest import run_json


def test_three_rules_one_forward_pass_per_model(actc, write_spec) -> None:
    report = run_json(actc, write_spec(THREE_RULES))
    counters = report["counters"]
    assert counters["forward_passes"] == 2
    assert sorted(counters["passes_by_model_and_corpus"].values()) == [1, 1]
    assert len(report["surgeries"]) == 3
    for surgery in report["surgeries"]:
        assert surgery["transfer"]["parameters_changed"] > 0


def test_changed_budget_reruns_without_forward_passes(actc, write_spec) -> None:
    spec = write_spec(THREE_RULES)
    first = run_json(actc, spec)
    spec.write_text(spec.read_text().replace("budget = 5%", "budget = 7%"))
    report = run_json(actc, spec, "--force")  # --force: output a exists, made with 5 %
    assert report["counters"]["forward_passes"] == 0
    kinds = [op["kind"] for op in report["ops"]]
    assert "capture" not in kinds and "load" not in kinds
    statistics = [op["status"] for op in report["ops"] if op["kind"] == "statistic"]
    assert statistics and set(statistics) == {"cached"}
    before, after = ({s["name"]: s for s in r["surgeries"]} for r in (first, report))
    moved = {name: (before[name]["transfer"]["parameters_changed"],
                    after[name]["transfer"]["parameters_changed"]) for name in "abc"}
    assert moved["a"][1] > moved["a"][0]  # the new budget moved more
    assert moved["b"][0] == moved["b"][1] and moved["c"][0] == moved["c"][1]
    assert (Path(after["a"]["output"]) / "model.safetensors").is_file()


def test_unchanged_spec_is_entirely_cached(actc, write_spec) -> None:
    spec = write_spec(THREE_RULES.replace("eval = []", ""))
    first = run_json(actc, spec)
    assert any(op["status"] == "done" for op in first["ops"])
    second = run_json(actc, spec)
    assert second["ops"] and all(op["status"] == "cached" for op in second["ops"])
    assert second["counters"]["forward_passes"] == 0
    assert [s["evals"] for s in second["surgeries"]] == [s["evals"] for s in first["surgeries"]]


def test_output_is_a_loadable_model_and_runs_are_byte_identical(actc, write_spec, tmp_path):
    from transformers import AutoModelForCausalLM

    spec = write_spec('surgery s -> "out/s" { target = tuned '
                      'transfer sums from base { budget = 10% } }')
    run_json(actc, spec)
    run_json(actc, spec, "--output", "again")
    first, second = tmp_path / "out/s", tmp_path / "again"
    written = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.safetensors"))
    assert "model.safetensors" in written and any(n.startswith("masks/") for n in written)
    for name in written:  # weights and masks: the same bytes
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    model = AutoModelForCausalLM.from_pretrained(first)
    assert model.config.model_type == "llama"
    results = json.loads((first / "run_results.json").read_text())
    assert results["evals"]["sums"].keys() >= {"target (tuned)", "donor (base)", "after transfer"}
    assert (first / "masks").is_dir() and "base_model" in (first / "README.md").read_text()
    assert (tmp_path / "spec.act.lock").is_file()
    lock = json.loads((tmp_path / "spec.act.lock").read_text())
    assert set(lock["models"]) == {"base", "tuned"} and all(
        m["digest"] for m in lock["models"].values())


def test_existing_output_needs_force(actc, write_spec, tmp_path) -> None:
    spec = write_spec('surgery s -> "out/s" { target = tuned '
                      'transfer sums from base { budget = 10% } eval = [] }')
    (tmp_path / "out/s").mkdir(parents=True)
    (tmp_path / "out/s/keep.txt").write_text("mine")
    refused = actc("run", str(spec))
    assert refused.returncode == 1 and "already exists" in refused.stderr
    assert "Traceback" not in refused.stderr
    line = PRELUDE.count("\n") + 1  # located at the surgery that writes the output
    assert f"spec.act:{line}:1" in refused.stderr and "^" in refused.stderr, refused.stderr
    assert (tmp_path / "out/s/keep.txt").read_text() == "mine"
    forced = actc("run", "--force", str(spec))  # --force replaces only what actc wrote
    assert forced.returncode == 1 and "no actc marker" in forced.stderr
    assert f"spec.act:{line}:1" in forced.stderr
    assert (tmp_path / "out/s/keep.txt").read_text() == "mine"


def test_failed_gate_has_its_own_exit_code(actc, write_spec) -> None:
    spec = write_spec('surgery s -> "out/s" { target = tuned transfer sums from base '
                      '{ budget = 10% } expect eval(sums) >= 2 }')
    result = actc("run", str(spec))
    assert result.returncode == 3, result.stderr[-2000:]
    assert "gate failed" in result.stdout and "eval(sums) >= 2" in result.stdout
    assert f"report: {spec.parent / 'out/s/report.html'}" in " ".join(result.stdout.split())


def test_passed_gates_are_printed_with_their_numbers(actc, write_spec) -> None:
    spec = write_spec('surgery s -> "out/s" { target = tuned transfer sums from base '
                      '{ budget = 10% } expect eval(sums) >= 0 }')
    result = actc("run", str(spec))
    assert result.returncode == 0, result.stderr[-2000:]
    shown = " ".join(result.stdout.split())
    assert "gate passed in s: eval(sums) >= 0 (" in shown and "vs 0.0000, by " in shown
    card = (spec.parent / "out/s/README.md").read_text()
    assert "\n# s\n" in card and "# transfer-" not in card  # titled by the surgery


def test_mismatched_architectures_fail_before_any_work(actc, write_spec, pair, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "wide"
    LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 vocab_size=20)).save_pretrained(other)
    spec = write_spec(f'model wide = local("{other}")\n'
                      'surgery s -> "out/s" { target = tuned transfer sums from wide '
                      '{ budget = 10% } }')
    result = actc("run", str(spec))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error[E501]" in result.stderr and "differ" in result.stderr
    assert "spec.act:" in result.stderr  # located at the rule
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "stats").exists()


@pytest.mark.slow
def test_killed_run_leaves_no_finished_output_and_resumes_from_cache(actc, write_spec,
                                                                     tmp_path) -> None:
    # A long fine-tune after the capture gives time to kill the run once statistics exist.
    spec = write_spec('surgery s -> "out/s" { target = tuned transfer sums from base '
                      '{ budget = 10% } finetune { data = probe steps = 400 lr = 1e-3 '
                      'scope = full } eval = [] }')
    process = subprocess.Popen([actc.executable, "run", str(spec)], cwd=tmp_path, env=actc.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stats = tmp_path / "cache" / "stats"
    deadline = time.monotonic() + 300
    while not any(stats.glob("*/*.safetensors")) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "out" / "s").exists()  # only hidden temporaries may remain
    assert all(p.name.startswith(".") for p in (tmp_path / "out").iterdir())
    result = actc("run", "--json", str(spec))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["counters"]["forward_passes"] == 0  # statistics came from the cache
    assert (tmp_path / "out" / "s" / "run_results.json").is_file()
    assert not any(p.name.startswith(".actc-work") for p in (tmp_path / "out").iterdir())


def test_pickle_donor_is_refused_unless_the_spec_allows_it(actc, pair, tmp_path) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(pair / "tuned", pickled)
    state = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    surgery = ('surgery s -> "out/s" { target = base  transfer sums from donor { budget = 10% } '
               'eval = [] }\n')
    spec = tmp_path / "refused.act"
    spec.write_text(PRELUDE.format(root=pair) + f'model donor = local("{pickled}")\n' + surgery)
    for command in ("plan", "run"):
        result = actc(command, str(spec))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "pickle" in result.stderr and "allow_pickle" in result.stderr
        assert f"{spec.name}:" in result.stderr and "^" in result.stderr  # located, with a caret
    assert not (tmp_path / "out").exists()

    allowed = tmp_path / "allowed.act"
    allowed.write_text(PRELUDE.format(root=pair)
                       + f'model donor = local("{pickled}", allow_pickle = true)\n' + surgery)
    report = run_json(actc, allowed)
    (done,) = report["surgeries"]
    assert done["transfer"]["parameters_changed"] > 0
    out = Path(done["output"])
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    moved = load_file(out / "model.safetensors")
    base = load_file(pair / "base" / "model.safetensors")
    changed = [n for n in base if not torch.equal(moved[n], base[n])]
    assert changed and all(torch.equal(moved[n][moved[n] != base[n]], state[n][moved[n] != base[n]])
                           for n in changed)  # every moved element is the pickled donor's
    assert all(op["status"] == "cached" for op in run_json(actc, allowed)["ops"])


def test_after_a_run_plan_all_shows_the_whole_pipeline_in_dependency_order(actc, write_spec):
    spec = write_spec('surgery s -> "out/s" { target = tuned  '
                      'transfer sums from base { budget = 10% } }')
    before = actc("plan", str(spec))
    assert before.returncode == 0, before.stderr
    run_json(actc, spec)
    after = actc("plan", str(spec))
    assert "(0 new, 1 cached)" in after.stdout and "`actc plan --all`" in after.stdout
    every = actc("plan", str(spec), "--all")
    assert every.returncode == 0, every.stderr
    listed = [line.strip() for line in every.stdout.splitlines() if line[:4] in ("  + ", "  = ", "  - ")]
    ops = [line for line in before.stdout.splitlines() if line[:4] == "  + "]
    assert len(listed) == len(ops)  # every op of the spec, once
    assert [line[2:].split("  [")[0] for line in listed] == \
        [line.strip()[2:].split("  [")[0] for line in ops]  # in the same, topological order
    assert listed[-1].startswith("= save s") and all(m[0] in "-=" for m in listed)
    graph = actc("graph", str(spec), "--all", "--format", "mermaid")
    assert graph.stdout.count("(not needed)") == len(listed) - sum(m[0] == "=" for m in listed)


def test_a_cached_op_is_listed_just_before_its_first_user():
    import networkx as nx

    from actlang.compile.passes import defer_cached

    graph = nx.DiGraph([("load", "capture"), ("capture", "score"), ("stat", "score"),
                        ("score", "save")])
    graph.add_node("eval")
    order = ["stat", "eval", "load", "capture", "score", "save"]  # what the schedule gives
    deferred = defer_cached(graph, order, {"stat", "eval"})
    assert deferred == ["load", "capture", "stat", "score", "save", "eval"]
    assert list(nx.topological_sort(graph.subgraph(deferred)))  # still a valid order
    position = {op: i for i, op in enumerate(deferred)}
    assert all(position[a] < position[b] for a, b in graph.edges)


def test_a_merge_baselines_column_says_merge_not_transfer(actc, write_spec):
    spec = write_spec('surgery m -> "out/m" { target = tuned  merge linear from [base, tuned]\n'
                      '  eval = [sums] }')
    result = run_json(actc, spec)
    (surgery,) = result["surgeries"]
    columns = set(surgery["evals"]["sums"])
    assert "after merge" in columns and "after transfer" not in columns


def test_the_report_counts_the_candidates_the_plan_counts(actc, write_spec, tmp_path):
    import re

    spec = write_spec('surgery s -> "out/s" { target = tuned  '
                      'transfer sums from base { budget = 10% } }')
    planned = actc("plan", str(spec))
    chosen, candidates = map(lambda n: int(n.replace(",", "")), re.search(
        r"select 10% of sums channels \(channel\)\s+\[([\d,]+) of ([\d,]+) channels\]",
        planned.stdout).groups())
    run_json(actc, spec)
    report = json.loads((tmp_path / "out/s/report.json").read_text())
    (selection,) = report["selections"]
    assert selection["candidate_units"] == candidates
    assert selection["units"] <= chosen  # unchanged channels are never chosen
    assert f"of {candidates:,}" in (tmp_path / "out/s/report.md").read_text()
