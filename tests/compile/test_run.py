"""`actc plan` and `actc run` end to end, in subprocesses, on a tiny model pair.

Work is checked with counters (forward passes, cache hits), never with clocks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

THREE_RULES = '''
surgery a -> "out/a" { target = tuned  transfer sums from base { budget = 5% }  eval = [] }
surgery b -> "out/b" { target = tuned  transfer sums from base { budget = 10% per layer }
                       eval = [] }
surgery c -> "out/c" { target = tuned  transfer sums from base { budget = 20
                                                                score = absmean_diff }
                       eval = [] }
'''


def run_json(actc, spec: Path, *args: str) -> dict:
    result = actc("run", "--json", str(spec), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


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
    run_json(actc, spec)
    spec.write_text(spec.read_text().replace("budget = 5%", "budget = 7%"))
    report = run_json(actc, spec, "--force")  # output a changes; b and c are up to date
    assert report["counters"]["forward_passes"] == 0
    statuses = {op["kind"]: op["status"] for op in report["ops"] if op["kind"] == "statistic"}
    assert statuses == {"statistic": "cached"}
    outputs = [s for s in report["surgeries"] if s["name"] == "a"]
    assert outputs and (Path(outputs[0]["output"]) / "model.safetensors").is_file()


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
    assert (first / "model.safetensors").read_bytes() == \
        (second / "model.safetensors").read_bytes()
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
    assert (tmp_path / "out/s/keep.txt").read_text() == "mine"
    assert actc("run", "--force", str(spec)).returncode == 0
    assert not (tmp_path / "out/s/keep.txt").exists()


def test_failed_gate_has_its_own_exit_code(actc, write_spec) -> None:
    spec = write_spec('surgery s -> "out/s" { target = tuned transfer sums from base '
                      '{ budget = 10% } expect eval(sums) >= 2 }')
    result = actc("run", str(spec))
    assert result.returncode == 3, result.stderr[-2000:]
    assert "gate failed" in result.stdout and "eval(sums) >= 2" in result.stdout


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
    assert not (tmp_path / "out").exists()


def test_plan_json_document(actc, write_spec) -> None:
    result = actc("plan", "--json", str(write_spec(THREE_RULES)))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["format_version"] == 1
    assert plan["models"]["base"]["architecture"] == "llama"
    assert plan["models"]["base"]["parameters"] > 0
    assert {op["kind"] for op in plan["ops"]} >= {"load", "capture", "statistic", "score",
                                                  "select", "transfer", "save"}
    assert not any(op["cached"] for op in plan["ops"])
    assert plan["estimates"]["forward_passes"] == 2
    assert plan["estimates"]["tokens"] > 0 and plan["estimates"]["bytes_written"] > 0


def test_plan_on_a_config_only_70b_model(actc, tmp_path) -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8, vocab_size=128256)
    for name in ("base", "tuned"):
        config.save_pretrained(tmp_path / name)
    (tmp_path / "s.act").write_text(
        'model base = local("base")\nmodel tuned = local("tuned")\n'
        'ability a { probe = lines(["x"]) }\n'
        'surgery s -> "out" { target = tuned transfer a from base { channels = attn + mlp '
        'budget = 1% } }\n')
    result = actc("plan", "--json", "s.act")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["models"]["base"]["parameters"] == 70_553_706_496
    assert plan["estimates"]["peak_memory_bytes"] > 2 * 70e9  # two models in lock-step


def test_plan_reads_no_tensor_data(pair, write_spec, monkeypatch, tmp_path) -> None:
    """Every way of reading tensor data is made to fail; planning must not notice."""
    import safetensors
    import safetensors.torch

    from actlang.compile.cache import Cache
    from actlang.compile.plan import make_plan
    from actlang.lang.checker import check_file
    from actlang.run.checkpoint import Checkpoint

    def forbidden(*args, **kwargs):
        raise AssertionError("the planner read tensor data")

    monkeypatch.setattr(os, "pread", forbidden)
    monkeypatch.setattr(Checkpoint, "get", forbidden)
    monkeypatch.setattr(safetensors, "safe_open", forbidden)
    monkeypatch.setattr(safetensors.torch, "load_file", forbidden)
    plan = make_plan(check_file(write_spec(THREE_RULES)), Cache(tmp_path / "cache"))
    assert plan.models["base"].parameters > 0 and plan.estimates.forward_passes == 2


def test_selector_budget_errors_are_found_by_plan(actc, write_spec) -> None:
    result = actc("plan", str(write_spec('surgery s -> "o" { target = tuned transfer sums '
                                         'from base { channels = attn.q budget = 100000 } }')))
    assert result.returncode == 1 and "asks for 100000 channels" in result.stderr
    result = actc("plan", str(write_spec('surgery s -> "o" { target = tuned transfer sums '
                                         'from base { channels = embed budget = 1% } }')))
    assert result.returncode == 1 and "include_global" in result.stderr


def test_graph_formats(actc, write_spec) -> None:
    spec = str(write_spec(THREE_RULES))
    dot = actc("graph", spec)
    assert dot.returncode == 0 and dot.stdout.startswith("digraph actc {") and "->" in dot.stdout
    mermaid = actc("graph", "--format", "mermaid", spec)
    assert mermaid.stdout.startswith("flowchart LR") and "-->" in mermaid.stdout


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


def test_executor_releases_both_models_of_a_paired_capture(write_spec, tmp_path) -> None:
    """Both models' last use is the capture (no evals): neither may stay loaded."""
    from actlang.compile.cache import Cache
    from actlang.compile.plan import make_plan
    from actlang.lang.checker import check_file
    from actlang.run.executor import Executor

    spec = write_spec('surgery s -> "out/s" { target = tuned transfer sums from base '
                      '{ budget = 10% } eval = [] }')
    cache = Cache(tmp_path / "cache")
    executor = Executor(make_plan(check_file(spec), cache, dry_run=False), cache)
    seen = []
    executor.progress.op_finished = lambda op, status, seconds: seen.append(
        (op.kind, sorted(executor.loaded)))
    executor.run()
    assert ("capture", ["base", "tuned"]) in seen  # loaded while capturing
    assert executor.loaded == {}


@pytest.fixture(scope="module")
def gemma3_pair(tmp_path_factory) -> Path:
    """A multimodal Gemma 3 base/tuned pair (vision tower included) with the pair's corpora."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from actlang.zoo.tokenizer import build_tokenizer

    from .conftest import WORDS, write_pair

    root = tmp_path_factory.mktemp("gemma3")
    tokenizer = build_tokenizer(WORDS)
    vocab = len(tokenizer) + 3  # room for the image-boundary tokens
    config = Gemma3Config(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, vocab_size=vocab, sliding_window=16,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=64),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=vocab - 3, eoi_token_index=vocab - 2, image_token_index=vocab - 1)
    return write_pair(root, lambda: Gemma3ForConditionalGeneration(config), tokenizer, noise=0.05,
                      nudged=lambda name: "language_model" in name)


@pytest.mark.slow
def test_multimodal_gemma3_transfer_and_finetune_end_to_end(actc, gemma3_pair, tmp_path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from .conftest import PRELUDE

    spec = tmp_path / "gemma3.act"
    spec.write_text(PRELUDE.format(root=gemma3_pair) + (
        'surgery s -> "out/s" { target = tuned  transfer sums from base { budget = 10% }\n'
        '  finetune { data = probe steps = 3 lr = 1e-3 } }\n'))
    assert actc("plan", str(spec)).returncode == 0
    report = run_json(actc, spec)
    (surgery,) = report["surgeries"]
    out = Path(surgery["output"])
    tuned, result = load_file(gemma3_pair / "tuned" / "model.safetensors"), {}
    for shard in out.glob("*.safetensors"):
        result.update(load_file(shard))
    assert set(result) == set(tuned)  # the checkpoint's own names, vision tower included
    vision = [n for n in tuned if n.startswith(("vision_tower.", "multi_modal_projector."))]
    assert vision and all(torch.equal(result[n], tuned[n]) for n in vision)
    changed = [n for n in tuned if not torch.equal(result[n], tuned[n])]
    assert changed and all(n.startswith("language_model.model.layers.") for n in changed)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 5, 6]])).logits.shape[-1] == len(model.get_input_embeddings().weight)


def test_pickle_donor_is_refused_unless_the_spec_allows_it(actc, pair, tmp_path) -> None:
    import shutil

    import torch
    from safetensors.torch import load_file

    from .conftest import PRELUDE

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
