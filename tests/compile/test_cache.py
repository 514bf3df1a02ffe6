"""The content-addressed cache: entries by key, written atomically, a broken entry is a miss
(and is removed), and weight digests hashed once per file state."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from actlang.compile.cache import Cache, default_cache_dir, digest, write_atomically

KEY = "ab" + "0" * 62


def write_text(text: str):
    return lambda path: path.write_text(text)


def read_text(path: Path) -> str:
    return path.read_text()


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_an_entry_is_stored_under_its_key_and_loaded_back(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    assert not cache.has("stats", KEY) and cache.load("stats", KEY, read_text) is None
    path = cache.store("stats", KEY, write_text("statistics"))
    assert path == tmp_path / "stats" / "ab" / f"{KEY}.safetensors"
    assert cache.has("stats", KEY) and not cache.has("evals", KEY)
    assert cache.load("stats", KEY, read_text) == "statistics"
    cache.store_json(KEY, {"accuracy": 0.5})
    assert cache.load_json(KEY) == {"accuracy": 0.5}
    assert (tmp_path / "evals" / "ab" / f"{KEY}.json").is_file()
    assert [(e.kind, e.key) for e in cache.entries()] == [("stats", KEY), ("evals", KEY)]


def test_a_failed_write_leaves_neither_an_entry_nor_a_temporary(tmp_path: Path) -> None:
    cache = Cache(tmp_path)

    def interrupted(path: Path) -> None:
        path.write_text("half an entr")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.store("stats", KEY, interrupted)
    assert not cache.has("stats", KEY) and files_under(tmp_path) == []


def test_a_rewrite_replaces_the_entry_whole(tmp_path: Path) -> None:
    """The new content appears by rename: a reader sees the old entry or the new one."""
    cache = Cache(tmp_path)
    cache.store("evals", KEY, write_text("old"))
    seen_during_write = []

    def slow_write(path: Path) -> None:
        path.write_text("new")
        seen_during_write.append(cache.load("evals", KEY, read_text))

    cache.store("evals", KEY, slow_write)
    assert seen_during_write == ["old"] and cache.load("evals", KEY, read_text) == "new"
    assert files_under(tmp_path) == [f"evals/ab/{KEY}.json", f"evals/ab/{KEY}.json.sha256"]


def test_unfinished_writes_are_not_entries(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.store("stats", KEY, write_text("x"))
    (tmp_path / "stats" / "ab" / f".{KEY}.safetensors.123.tmp").write_text("partial")
    assert [e.key for e in cache.entries()] == [KEY]


@pytest.mark.parametrize("damage", ["truncated", "unreadable"])
def test_a_broken_entry_is_a_miss_and_is_removed(tmp_path: Path, damage: str) -> None:
    cache = Cache(tmp_path)
    cache.store_json(KEY, {"accuracy": 0.5})
    path = tmp_path / "evals" / "ab" / f"{KEY}.json"
    if damage == "truncated":
        path.write_text(path.read_text()[:5])
    else:
        path.write_bytes(b"\xff\xfe not json")
    assert cache.load_json(KEY) is None
    assert not path.exists() and not cache.has("evals", KEY)


def test_a_reader_that_raises_any_error_gets_a_miss(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.store("stats", KEY, write_text("x"))

    def broken(path: Path):
        raise ValueError("header of 9 bytes in a 1-byte file")

    assert cache.load("stats", KEY, broken) is None and not cache.has("stats", KEY)


def test_clear_removes_entries_and_digests_but_not_the_zoo(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.store("stats", KEY, write_text("12345"))
    cache.store_json(KEY, [1])
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w")
    cache.file_digest(weights)
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "zoo.json").write_text("{}")
    assert cache.clear() == 5 + len("[1]")
    assert files_under(tmp_path) == ["w.bin", "zoo/zoo.json"]


def test_file_digest_is_the_sha256_of_the_content(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"weights" * 1000)
    assert Cache(tmp_path / "cache").file_digest(file) == hashlib.sha256(file.read_bytes()).hexdigest()


def test_file_digests_are_hashed_once_per_file_state(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"A" * 64)
    assert cache.known_file_digest(file) is None  # never hashed: plan cannot know it
    first = cache.file_digest(file)
    assert cache.known_file_digest(file) == first
    assert Cache(tmp_path / "cache").known_file_digest(file) == first  # memoized on disk
    # a new mtime is a new state: hashed again
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache.known_file_digest(file) is None
    assert cache.file_digest(file) == first
    # (a rewrite with size and mtime restored: tests/compile/test_cache_integrity.py)


def test_a_corrupt_digest_memo_is_forgotten_not_fatal(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"weights")
    cache.file_digest(file)
    (tmp_path / "cache" / "digests.json").write_text('{"truncat')
    assert cache.known_file_digest(file) is None
    assert cache.file_digest(file) == hashlib.sha256(b"weights").hexdigest()
    assert json.loads((tmp_path / "cache" / "digests.json").read_text())


def test_digest_is_stable_and_ignores_key_order() -> None:
    assert digest({"a": 1, "b": [2, 3]}, "x") == digest({"b": [2, 3], "a": 1}, "x")
    assert digest({"a": 1}, "x") != digest({"a": 1}, "y") != digest({"a": 2}, "y")
    assert len(digest()) == 64


def test_write_atomically_creates_the_directory(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "file.txt"
    write_atomically(target, write_text("done"))
    assert target.read_text() == "done" and files_under(tmp_path) == ["deep/er/file.txt"]


def test_default_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ACTLANG_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("ACTLANG_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "actlang"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "actlang"
    assert Cache().root == default_cache_dir()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_file_written_atomically_has_the_modes_the_umask_gives(tmp_path: Path,
                                                                 umask: int) -> None:
    """A spec's lock file is readable as any file the user writes (mkstemp's 0600 is only
    the temporary's)."""
    previous = os.umask(umask)
    try:
        write_atomically(tmp_path / "spec.act.lock", lambda p: p.write_text("{}\n"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "spec.act.lock").stat().st_mode) == 0o666 & ~umask
