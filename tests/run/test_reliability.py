"""Hostile inputs through the installed `actc` (issue 12, parts 1, 2 and 4): inputs are never
written over, no foreign code or file is run or shown, and the cache cannot go stale.

Every test works on its own copy of the tiny pair (tests/run/conftest.py), so a regression
that writes over an input damages nothing but that copy; each checks the inputs' hashes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ..conftest import PRELUDE, assert_located_error, hashes, run_actc, surgery_line

RULE = "{ target = tuned  transfer sums from base { budget = 10% }  eval = [] }"


@pytest.fixture
def inputs(pair: Path, tmp_path: Path) -> Path:
    """A private copy of the pair (models and corpora)."""
    return Path(shutil.copytree(pair, tmp_path / "inputs"))


def spec_over(inputs: Path, body: str, where: Path) -> Path:
    spec = where / "spec.act"
    spec.write_text(PRELUDE.format(root=inputs) + body)
    return spec


# ---- 1. inputs are sacred ---------------------------------------------------------------------

OVERLAPS = {
    "the target's own directory": lambda inputs, tmp: inputs / "tuned",
    "the donor's directory": lambda inputs, tmp: inputs / "base",
    "inside the target": lambda inputs, tmp: inputs / "tuned" / "sub",
    "the parent of every input": lambda inputs, tmp: inputs,
    "a corpus file": lambda inputs, tmp: inputs / "probe.jsonl",
    "the spec's own directory": lambda inputs, tmp: tmp,
    "the filesystem root": lambda inputs, tmp: Path("/"),
    "the home directory": lambda inputs, tmp: tmp / "home",
    "the cache": lambda inputs, tmp: tmp / "cache",
    "inside the cache": lambda inputs, tmp: tmp / "cache" / "out",
}


#: The cases `actc run --force` is tried on (each costs a run's start); `actc plan` takes all.
RUN_CASES = ["the target's own directory", "the parent of every input", "the filesystem root",
             "the home directory", "the cache"]


@pytest.mark.parametrize("command,case", [*(("run", c) for c in RUN_CASES),
                                          *(("plan", c) for c in sorted(OVERLAPS))])
def test_an_output_over_an_input_is_a_located_error_even_with_force(
        actc, inputs: Path, tmp_path: Path, command: str, case: str) -> None:
    output = OVERLAPS[case](inputs, tmp_path)
    (tmp_path / "home").mkdir()
    (tmp_path / "cache").mkdir()
    spec = spec_over(inputs, f'surgery s -> "{output}" {RULE}\n', tmp_path)
    before = hashes(inputs, spec)
    args = ["run", "--force"] if command == "run" else ["plan"]
    result = run_actc(actc, *args, str(spec), cwd=tmp_path,
                      env={**actc.env, "HOME": str(tmp_path / "home")})
    assert_located_error(result, "E501", surgery_line(spec))
    assert "refusing to write the output" in result.stderr
    assert hashes(inputs, spec) == before
    assert not list(Path("/").glob(".*.tmp-*"))  # nothing left in / either


def test_the_plan_reports_an_output_over_an_input_at_the_output_string(
        actc, inputs: Path, tmp_path: Path) -> None:
    spec = spec_over(inputs, f'surgery s -> "{inputs}/tuned" {RULE}\n', tmp_path)
    result = run_actc(actc, "plan", str(spec), cwd=tmp_path)
    line = surgery_line(spec)
    assert_located_error(result, "E501", line)
    column = spec.read_text().splitlines()[line - 1].index('"') + 1
    assert f"spec.act:{line}:{column}" in result.stderr  # the caret is under the path
    assert "the model `tuned`" in result.stderr


def test_an_empty_output_path_is_a_check_error(actc, inputs: Path, tmp_path: Path) -> None:
    spec = spec_over(inputs, f'surgery s -> "" {RULE}\n', tmp_path)
    before = hashes(inputs, spec)
    for command in (["check"], ["run", "--force"]):
        result = run_actc(actc, *command, str(spec), cwd=tmp_path)
        assert_located_error(result, "E205", surgery_line(spec))
        assert "empty output path" in result.stderr
    assert hashes(inputs, spec) == before and spec.is_file()


def test_force_replaces_only_what_actc_wrote(actc, inputs: Path, tmp_path: Path) -> None:
    spec = spec_over(inputs, f'surgery s -> "out/s" {RULE}\n', tmp_path)
    mine = tmp_path / "out" / "s"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my thesis")
    refused = run_actc(actc, "run", str(spec), cwd=tmp_path)
    assert refused.returncode == 1 and "already exists" in refused.stderr
    refused = run_actc(actc, "run", "--force", str(spec), cwd=tmp_path)
    assert_located_error(refused, "E501", surgery_line(spec))
    assert "no actc marker" in refused.stderr
    assert (mine / "notes.txt").read_text() == "my thesis"
    # an output actc wrote is replaced; once the user adds a file to it, it is not
    shutil.rmtree(mine)
    assert run_actc(actc, "run", str(spec), cwd=tmp_path).returncode == 0
    assert (mine / ".actc-output").is_file()
    assert run_actc(actc, "run", "--force", str(spec), cwd=tmp_path).returncode == 0
    (mine / "masks" / "notes.txt").write_text("mine too")
    refused = run_actc(actc, "run", "--force", str(spec), cwd=tmp_path)
    assert refused.returncode == 1 and "masks/notes.txt" in refused.stderr
    assert (mine / "masks" / "notes.txt").read_text() == "mine too"


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_temporaries_of_killed_runs_are_removed_by_the_next_run(
        actc, inputs: Path, tmp_path: Path) -> None:
    spec = spec_over(inputs, f'surgery s -> "out/s" {RULE}\n', tmp_path)
    dead, alive = _dead_pid(), os.getpid()
    out = tmp_path / "out"
    stale = [out / f".actc-work-{dead}-0123abcd", out / f".s.tmp-{dead}-0123456789ab",
             out / f".s.old-{dead}-0123456789ab"]
    cache_stale = tmp_path / "cache" / "stats" / "ab" / f".ab12.safetensors.tmp-{dead}-xyz"
    live = [out / f".actc-work-{alive}-0123abcd", out / f".s.tmp-{alive}-0123456789ab"]
    for directory in (*stale, *live):
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"\0" * 1000)
    cache_stale.parent.mkdir(parents=True)
    cache_stale.write_bytes(b"\0" * 1000)
    other = out / "keep.tmp-1"
    other.write_text("not a temporary of actc")
    result = run_actc(actc, "run", str(spec), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(p.exists() for p in (*stale, cache_stale))
    assert all(p.exists() for p in live) and other.exists()


# ---- 2. no foreign code, no foreign files -----------------------------------------------------

EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("foreign code ran")
from transformers import PreTrainedTokenizerFast as EvilTokenizer
from transformers import LlamaForCausalLM as EvilModel
'''


@pytest.mark.parametrize("config", ["tokenizer_config.json", "config.json"])
def test_auto_map_without_opt_in_is_refused_and_never_run(
        actc, inputs: Path, tmp_path: Path, config: str) -> None:
    marker = tmp_path / "PWNED"
    (inputs / "tuned" / "evil.py").write_text(EVIL.format(marker=str(marker)))
    path = inputs / "tuned" / config
    data = json.loads(path.read_text())
    data["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]} \
        if config == "tokenizer_config.json" else {"AutoModelForCausalLM": "evil.EvilModel"}
    path.write_text(json.dumps(data))
    spec = spec_over(inputs, f'surgery s -> "out/s" {RULE}\n', tmp_path)
    declaration = next(i for i, line in enumerate(spec.read_text().splitlines(), 1)
                       if line.startswith("model tuned"))
    before = hashes(inputs)
    for command in (["plan"], ["run"]):
        result = run_actc(actc, *command, str(spec), cwd=tmp_path, timeout=120)
        assert_located_error(result, "E501", declaration)
        assert "auto_map" in result.stderr and "trust_remote_code = true" in result.stderr
        assert "[y/N]" not in result.stdout + result.stderr
        assert not marker.exists()
    assert hashes(inputs) == before and not (tmp_path / "out" / "s").exists()


@pytest.mark.parametrize("how", ["a text file", "a symlink named .act", "/proc/self/environ"])
def test_an_import_that_is_not_a_spec_is_refused_without_quoting_it(
        actc, tmp_path: Path, how: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("API_TOKEN=hunter2 do not print\n")
    (tmp_path / "secret.act").symlink_to(secret)
    target = {"a text file": "secret.txt", "a symlink named .act": "secret.act",
              "/proc/self/environ": "/proc/self/environ"}[how]
    spec = tmp_path / "spec.act"
    spec.write_text(f'use "{target}" as s\n')
    result = run_actc(actc, "check", str(spec), cwd=tmp_path,
                      env={**actc.env, "API_TOKEN": "hunter2"}, timeout=60)
    assert_located_error(result, "E103", 1)
    assert ".act" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


@pytest.mark.parametrize("role", ["spec", "import"])
def test_a_fifo_is_refused_not_waited_on(actc, tmp_path: Path, role: str) -> None:
    fifo = tmp_path / "pipe.act"
    os.mkfifo(fifo)
    spec = fifo
    if role == "import":
        spec = tmp_path / "spec.act"
        spec.write_text('use "pipe.act" as p\n')
    result = run_actc(actc, "check", str(spec), cwd=tmp_path, timeout=30)
    assert result.returncode == 1 and "not a regular file" in result.stderr
    assert "Traceback" not in result.stderr
    if role == "import":
        assert "spec.act:1:" in result.stderr


# ---- 4. content addressing that cannot go stale -----------------------------------------------


def _run(actc, spec: Path, cwd: Path, *args: str, cache: Path | None = None) -> dict:
    env = {**actc.env, **({"ACTLANG_CACHE_DIR": str(cache)} if cache else {})}
    result = run_actc(actc, "run", "--json", str(spec), *args, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    report["stderr"] = result.stderr
    return report


def _weights(directory: Path) -> bytes:
    return (directory / "model.safetensors").read_bytes()


def test_weights_rewritten_with_size_and_mtime_restored_are_hashed_again(
        actc, inputs: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    spec = spec_over(inputs, f'surgery s -> "out/s" {RULE}\n', tmp_path)
    first = _run(actc, spec, tmp_path)
    assert first["counters"]["forward_passes"] == 2
    # the donor's weights change (same names, shapes and file size), then `touch -r`
    weights = inputs / "base" / "model.safetensors"
    stat = weights.stat()
    tensors = load_file(weights)
    for name in [n for n in tensors if n.endswith("mlp.up_proj.weight")]:
        tensors[name] = tensors[name][::-1].copy()  # the rows, reversed
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == stat.st_size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = _run(actc, spec, tmp_path, "-o", str(tmp_path / "again"))
    assert again["counters"]["forward_passes"] == 2  # not the stale statistics
    _run(actc, spec, tmp_path, "-o", str(tmp_path / "clean"), cache=tmp_path / "fresh")
    assert _weights(tmp_path / "again") == _weights(tmp_path / "clean")
    assert _weights(tmp_path / "again") != _weights(tmp_path / "out" / "s")


def test_a_corrupted_cache_entry_is_reported_and_recomputed(
        actc, inputs: Path, tmp_path: Path) -> None:
    spec = spec_over(inputs, 'surgery s -> "out/s" { target = tuned  transfer sums from base '
                     '{ budget = 10% } }\n', tmp_path)
    first = _run(actc, spec, tmp_path)
    entries = sorted((tmp_path / "cache" / "stats").glob("*/*.safetensors"))
    evals = sorted((tmp_path / "cache" / "evals").glob("*/*.json"))
    assert entries and evals
    for entry in entries:  # one flipped byte in the tensor data: still a valid file
        data = bytearray(entry.read_bytes())
        data[-5] ^= 0x40
        entry.write_bytes(bytes(data))
    for entry in evals:  # an edited result: still valid JSON
        entry.write_text(json.dumps({k: 0.987 for k in json.loads(entry.read_text())}))
    again = _run(actc, spec, tmp_path, "--force")
    assert again["counters"]["forward_passes"] == 2
    assert again["stderr"].count("is corrupt") == len(entries) + len(evals)
    assert [s["evals"] for s in again["surgeries"]] == [s["evals"] for s in first["surgeries"]]
    assert "0.987" not in json.dumps(again["surgeries"])
    clean = _run(actc, spec, tmp_path, "-o", str(tmp_path / "clean"), cache=tmp_path / "fresh")
    assert _weights(tmp_path / "out" / "s") == _weights(tmp_path / "clean")
    # recomputed entries verify again: the next run uses them, silently
    third = _run(actc, spec, tmp_path, "-o", str(tmp_path / "third"))
    assert third["counters"]["forward_passes"] == 0 and "is corrupt" not in third["stderr"]
    assert clean["surgeries"][0]["evals"] == first["surgeries"][0]["evals"]
