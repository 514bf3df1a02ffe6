"""Content addressing that cannot go stale, and outputs that never touch an input (torch-free).

* a file's identity changes whenever its bytes change, even with size and mtime restored;
* every cache entry has a checksum, verified on read: a damaged entry is reported and missed;
* temporaries of dead processes are removed, those of live ones never;
* the planner refuses an output over an input, located at the output's string, and `--force`
  replaces only what actc wrote; a model config naming repository code is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from actlang.compile import cache as cache_module
from actlang.compile.cache import Cache, owner_pid, remove_stale
from actlang.compile.plan import (
    OUTPUT_MARKER,
    PlanError,
    make_plan,
    output_conflict,
    output_marker,
    protected_paths,
    replace_problem,
)
from actlang.lang.ast import Span
from actlang.lang.checker import check_file
from actlang.lang.diagnostics import output_span

from ..conftest import PRELUDE

KEY = "cd" + "1" * 62


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def warnings_seen() -> list[str]:
    return []


@pytest.fixture
def cache(tmp_path: Path, warnings_seen: list[str]) -> Cache:
    return Cache(tmp_path / "cache", warn=warnings_seen.append)


# ---- identities -------------------------------------------------------------------------------


def test_a_rewrite_with_size_and_mtime_restored_is_hashed_again(cache: Cache, tmp_path: Path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"A" * 64)
    first = cache.file_digest(file)
    stat = file.stat()
    file.write_bytes(b"B" * 64)  # `touch -r`: the same size, the old times
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (file.stat().st_size, file.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert cache.known_file_digest(file) is None
    assert cache.file_digest(file) == sha256(b"B" * 64) != first
    assert Cache(cache.root).known_file_digest(file) == sha256(b"B" * 64)


def test_a_replacement_by_rename_is_hashed_again(cache: Cache, tmp_path: Path):
    file, other = tmp_path / "model.safetensors", tmp_path / "other"
    file.write_bytes(b"A" * 64)
    cache.file_digest(file)
    stat = file.stat()
    other.write_bytes(b"C" * 64)
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, file)
    assert cache.known_file_digest(file) is None
    assert cache.file_digest(file) == sha256(b"C" * 64)


def test_an_unchanged_file_is_hashed_once_and_the_memo_keeps_one_state_per_file(
        cache: Cache, tmp_path: Path, monkeypatch):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"A" * 64)
    first = cache.file_digest(file)
    monkeypatch.setattr(cache_module, "sha256_file", lambda path: pytest.fail("read again"))
    assert cache.file_digest(file) == first == Cache(cache.root).file_digest(file)
    monkeypatch.undo()
    file.write_bytes(b"B" * 64)
    cache.file_digest(file)
    memo = json.loads((cache.root / "digests.json").read_text())["digests"]
    assert list(memo.values()) == [sha256(b"B" * 64)]


def test_an_edited_digest_memo_is_forgotten(cache: Cache, tmp_path: Path,
                                            warnings_seen: list[str]):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"A" * 64)
    cache.file_digest(file)
    path = cache.root / "digests.json"
    data = json.loads(path.read_text())
    data["digests"] = {k: sha256(b"forged") for k in data["digests"]}  # valid JSON, wrong sum
    path.write_text(json.dumps(data))
    assert cache.known_file_digest(file) is None
    assert cache.file_digest(file) == sha256(b"A" * 64)
    assert len(warnings_seen) == 1 and "digests.json" in warnings_seen[0]
    assert Cache(cache.root, warn=pytest.fail).known_file_digest(file) == sha256(b"A" * 64)


# ---- entries ----------------------------------------------------------------------------------


def _damage(entry: Path, how: str) -> None:
    checksum = entry.with_name(entry.name + ".sha256")
    data = entry.read_bytes()
    if how == "a flipped byte":
        entry.write_bytes(data[:3] + bytes([data[3] ^ 1]) + data[4:])
    elif how == "truncated":
        entry.write_bytes(data[:-2])
    elif how == "appended":
        entry.write_bytes(data + b" ")
    elif how == "no checksum":
        checksum.unlink()
    elif how == "a malformed checksum":
        checksum.write_text("not a digest\n")
    elif how == "a checksum of other bytes":
        checksum.write_text(f"{sha256(b'other')}  {entry.name}\n")


DAMAGES = ["a flipped byte", "truncated", "appended", "no checksum", "a malformed checksum",
           "a checksum of other bytes"]


@pytest.mark.parametrize("kind", ["stats", "evals"])
@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_entry_is_reported_and_never_used(cache: Cache, warnings_seen: list[str],
                                                    kind: str, how: str):
    path = cache.store(kind, KEY, lambda p: p.write_text('{"accuracy": 0.5}'))
    assert cache.has(kind, KEY) and not warnings_seen
    _damage(path, how)
    assert not cache.has(kind, KEY) and not cache.has(kind, KEY)
    assert len(warnings_seen) == 1 and str(path) in warnings_seen[0] and "corrupt" in warnings_seen[0]
    assert cache.load(kind, KEY, lambda p: pytest.fail("a corrupt entry was read")) is None
    assert not path.exists()  # removed by the run that misses it
    cache.store(kind, KEY, lambda p: p.write_text('{"accuracy": 0.5}'))  # recomputed
    assert cache.load(kind, KEY, lambda p: json.loads(p.read_text())) == {"accuracy": 0.5}
    assert len(warnings_seen) == 1


def test_the_checksum_is_sha256sum_format_and_lands_before_the_entry(cache: Cache, tmp_path,
                                                                     monkeypatch):
    renamed: list[str] = []
    replace = os.replace

    def recording(source, destination):
        renamed.append(Path(destination).name)
        replace(source, destination)

    monkeypatch.setattr(cache_module.os, "replace", recording)
    path = cache.store("stats", KEY, lambda p: p.write_bytes(b"statistics"))
    assert renamed == [f"{KEY}.safetensors.sha256", f"{KEY}.safetensors"]
    checksum = path.with_name(path.name + ".sha256")
    assert checksum.read_text() == f"{sha256(b'statistics')}  {path.name}\n"
    check = subprocess.run(["sha256sum", "-c", checksum.name], cwd=path.parent,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert [e.key for e in cache.entries()] == [KEY]  # a checksum is not an entry


def test_entries_of_an_older_cache_without_checksums_are_recomputed(cache: Cache,
                                                                    warnings_seen: list[str]):
    path = cache.root / "evals" / KEY[:2] / f"{KEY}.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"accuracy": 0.5}')
    assert cache.load_json(KEY) is None and len(warnings_seen) == 1
    assert "checksum is missing" in warnings_seen[0]


# ---- temporaries of killed processes ----------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_owner_pids_are_read_from_temporary_names():
    assert owner_pid(".model.tmp-123-abcdef") == 123
    assert owner_pid(".x.safetensors.tmp-45-0a1b") == 45
    assert owner_pid(".out.old-67-0a1b") == 67
    assert owner_pid(".actc-work-89-0a1b2c3d") == 89
    assert owner_pid(".x.tmp-12") == 12
    for name in ("model.tmp-123-abc", ".tmp-default-s0-1234", ".x.tmpfile-12", "x", ".x.tmp-a1"):
        assert owner_pid(name) is None, name


def test_temporaries_of_dead_processes_are_removed_and_no_others(cache: Cache):
    dead, alive = _dead_pid(), os.getpid()
    stats = cache.root / "stats" / "ab"
    evals = cache.root / "evals" / "cd"
    gguf = cache.root / "gguf"
    for directory in (stats, evals, gguf):
        directory.mkdir(parents=True)
    stale = [stats / f".ab1.safetensors.tmp-{dead}-x1", evals / f".cd1.json.tmp-{dead}-x2",
             cache.root / f".digests.json.tmp-{dead}-x3", gguf / f".0123.tmp-{dead}-0a1b2c"]
    kept = [stats / f".ab2.safetensors.tmp-{alive}-x1", stats / "ab3.safetensors",
            gguf / "0123", cache.root / "notes.tmp-1"]
    for path in (*stale, *kept):
        if path.parent == gguf:
            path.mkdir()
            (path / "model.safetensors").write_bytes(b"w")
        else:
            path.write_bytes(b"w")
    removed = cache.remove_stale()
    assert sorted(removed) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_remove_stale_keeps_to_its_prefix(tmp_path: Path):
    dead = _dead_pid()
    mine, theirs = tmp_path / f".out.tmp-{dead}-a1", tmp_path / f".other.tmp-{dead}-a1"
    mine.mkdir()
    theirs.mkdir()
    assert remove_stale(tmp_path, prefix=".out.") == [mine]
    assert theirs.exists()


# ---- outputs: never over an input -------------------------------------------------------------


def test_output_conflicts(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    model = tmp_path / "models" / "tuned"
    model.mkdir(parents=True)
    (tmp_path / "link").symlink_to(model)
    protected = [(model, "the model `tuned`")]
    assert output_conflict(Path("/"), protected) == "it is the filesystem root"
    assert "is the home directory" in output_conflict(tmp_path / "home", protected)
    assert "contains the home directory" in output_conflict(tmp_path, protected)
    assert output_conflict(tmp_path / "home" / "out", protected) is None
    assert output_conflict(model, protected) == "it is the model `tuned`"
    assert output_conflict(tmp_path / "link", protected) == "it is the model `tuned`"
    assert output_conflict(tmp_path / "link" / "x", protected) == "it lies inside the model `tuned`"
    assert output_conflict(tmp_path / "models", protected) == "it contains the model `tuned`"
    assert output_conflict(model / ".." / "tuned", protected) == "it is the model `tuned`"
    assert output_conflict(tmp_path / "models" / "tuned-out", protected) is None


def test_replace_problem_reads_the_marker(tmp_path: Path):
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"w")
    (out / "masks" / "m.json").write_text("{}")
    assert "no actc marker" in replace_problem(out)
    (out / OUTPUT_MARKER).write_text(json.dumps(output_marker(out)))
    assert replace_problem(out) is None
    (out / "masks" / "notes.txt").write_text("mine")
    assert "masks/notes.txt" in replace_problem(out)
    (out / "masks" / "notes.txt").unlink()
    (out / OUTPUT_MARKER).write_text("{not json")
    assert "no actc marker" in replace_problem(out)
    (out / OUTPUT_MARKER).write_text(json.dumps({"format": "something else", "files": []}))
    assert "no actc marker" in replace_problem(out)
    (tmp_path / "link").symlink_to(out)
    assert replace_problem(tmp_path / "link") == "is a symbolic link"
    (tmp_path / "file").write_text("x")
    assert replace_problem(tmp_path / "file") == "is not a directory"


def test_output_span_is_the_output_string():
    line = 'surgery s -> "out/a \\" b" { target = t }'
    span = Span("s.act", 3, 1, 5, 2, 100, 180)
    found = output_span(span, line)
    assert line[found.column - 1:found.end_column - 1] == '"out/a \\" b"'
    assert (found.line, found.end_line) == (3, 3)
    assert found.start_pos == 100 + found.column - 1
    assert found.end_pos - found.start_pos == found.end_column - found.column
    fallback = output_span(span, None)
    assert (fallback.line, fallback.end_line, fallback.column) == (3, 3, 1)


@pytest.fixture
def private_pair(config_only_pair: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(config_only_pair, tmp_path / "inputs"))


RULE = "{ target = tuned  transfer sums from base { budget = 10% }  eval = [] }"


def _plan_error(spec: Path, cache: Cache, **kwargs) -> PlanError:
    program = check_file(spec)
    with pytest.raises(PlanError) as caught:
        make_plan(program, cache, **kwargs)
    return caught.value


def test_the_planner_refuses_an_output_over_an_input_at_its_string(private_pair: Path,
                                                                    tmp_path: Path):
    cache = Cache(tmp_path / "cache")
    specs = tmp_path / "specs"
    specs.mkdir()
    for output, what in [(private_pair / "tuned", "the model `tuned`"),
                         (private_pair, "contains the model `"),
                         (private_pair / "text.txt", "the corpus"),
                         (specs, "contains the spec"),
                         (specs / "spec.act.lock", "the spec's lock file"),
                         (tmp_path / "cache" / "x", "the actlang cache")]:
        spec = specs / "spec.act"
        spec.write_text(PRELUDE.format(root=private_pair) + f'surgery s -> "{output}" {RULE}\n')
        error = _plan_error(spec, cache)
        assert what in error.error.message, (output, error.error.message)
        line = spec.read_text().splitlines()[error.span.line - 1]
        assert line[error.span.column - 1:error.span.end_column - 1] == f'"{output}"'
    protected = {str(path): what for path, what in protected_paths(check_file(spec), cache)}
    assert str(spec.resolve()) in protected and str((tmp_path / "cache").resolve()) in protected


def test_the_planner_refuses_nested_outputs(private_pair: Path, tmp_path: Path):
    spec = tmp_path / "spec.act"
    spec.write_text(PRELUDE.format(root=private_pair) + f'surgery a -> "out" {RULE}\n'
                    f'surgery b -> "out/b" {RULE}\n')
    error = _plan_error(spec, Cache(tmp_path / "cache"))
    assert "inside the output of surgery `a`" in error.error.message
    assert error.span.line == len(spec.read_text().splitlines())


def test_force_is_refused_at_plan_time_over_a_directory_actc_did_not_write(private_pair: Path,
                                                                            tmp_path: Path):
    spec = tmp_path / "spec.act"
    spec.write_text(PRELUDE.format(root=private_pair) + f'surgery s -> "out" {RULE}\n')
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("mine")
    error = _plan_error(spec, Cache(tmp_path / "cache"), rebuild=True)
    assert "no actc marker" in error.error.message and error.span is not None
    plan = make_plan(check_file(spec), Cache(tmp_path / "cache"))  # a dry run says so
    assert any("will not replace it" in note for note in plan.notes)


@pytest.mark.parametrize("config", ["config.json", "tokenizer_config.json"])
def test_auto_map_is_refused_at_the_model_unless_it_opts_in(private_pair: Path, tmp_path: Path,
                                                            config: str):
    path = private_pair / "tuned" / config
    data = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**data, "auto_map": {"AutoConfig": "evil.Config"}}))
    spec = tmp_path / "spec.act"
    spec.write_text(PRELUDE.format(root=private_pair) + f'surgery s -> "out" {RULE}\n')
    error = _plan_error(spec, Cache(tmp_path / "cache"))
    assert "auto_map" in error.error.message and "trust_remote_code = true" in error.error.hint
    assert spec.read_text().splitlines()[error.span.line - 1].startswith("model tuned")
    if config == "config.json":  # (a tokenizer config alone would not load: no tokenizer)
        spec.write_text(spec.read_text().replace('/tuned")', '/tuned", trust_remote_code = true)'))
        make_plan(check_file(spec), Cache(tmp_path / "cache"))  # opted in: planned
