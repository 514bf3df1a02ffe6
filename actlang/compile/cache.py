"""The content-addressed cache: statistics and evaluations that never need recomputing.

A key is a digest of everything a result depends on — the weights' identity (a content hash
of the safetensors files, or the pinned hub revision), the tokenized corpus, the statistic's
configuration and the code version — so a hit is always valid and a changed input is always a
miss. Entries are written atomically (temporary file, then rename): an interrupted run leaves
either a complete entry or none. An entry that fails to load is treated as a miss and removed.

Weight digests are memoized in ``digests.json`` by (path, size, mtime), so a model is hashed
once; ``actc plan`` reads the memo and never hashes (it never reads tensor data).

Layout under the cache root (``$ACTLANG_CACHE_DIR``, default ``~/.cache/actlang``)::

    stats/ab/abcdef....safetensors     statistics
    evals/ab/abcdef....json            evaluation results
    digests.json                       weight digests memo
    zoo/                               the zoo's models (see actlang.zoo)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

# Bump when the meaning of cached statistics or evaluations changes.
CACHE_FORMAT = "1"


def default_cache_dir() -> Path:
    """``$ACTLANG_CACHE_DIR``, else ``$XDG_CACHE_HOME/actlang``, else ``~/.cache/actlang``."""
    if os.environ.get("ACTLANG_CACHE_DIR"):
        return Path(os.environ["ACTLANG_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "actlang"


def digest(*parts: Any) -> str:
    """A stable hex digest of JSON-serializable parts."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary)`` then rename it to ``path``; nothing is left on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class CacheEntry:
    kind: str  # "stats" or "evals"
    key: str
    path: Path
    size: int


class Cache:
    """Statistics and evaluations by key, plus the weight-digest memo.

    Args:
        root: the cache directory (created on first write).
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    # -- entries

    def _path(self, kind: str, key: str) -> Path:
        suffix = ".safetensors" if kind == "stats" else ".json"
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def has(self, kind: str, key: str) -> bool:
        return self._path(kind, key).is_file()

    def load(self, kind: str, key: str, read: Callable[[Path], Any]) -> Any | None:
        """``read(path)`` of the entry, or None on a miss or an unreadable entry (removed)."""
        path = self._path(kind, key)
        if not path.is_file():
            return None
        try:
            return read(path)
        except Exception:  # noqa: BLE001 - any corrupt entry is a miss, never a crash
            path.unlink(missing_ok=True)
            return None

    def store(self, kind: str, key: str, write: Callable[[Path], None]) -> Path:
        path = self._path(kind, key)
        write_atomically(path, write)
        return path

    def load_json(self, key: str) -> Any | None:
        return self.load("evals", key, lambda p: json.loads(p.read_text()))

    def store_json(self, key: str, value: Any) -> None:
        self.store("evals", key, lambda p: p.write_text(json.dumps(value, sort_keys=True)))

    def entries(self) -> Iterator[CacheEntry]:
        for kind in ("stats", "evals"):
            directory = self.root / kind
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob("*/*")):
                if path.name.startswith("."):
                    continue  # an unfinished write
                yield CacheEntry(kind, path.name.split(".")[0], path, path.stat().st_size)

    def clear(self) -> int:
        """Remove statistics, evaluations and the digest memo (not the zoo); bytes freed."""
        freed = sum(e.size for e in self.entries())
        for kind in ("stats", "evals"):
            shutil.rmtree(self.root / kind, ignore_errors=True)
        (self.root / "digests.json").unlink(missing_ok=True)
        return freed

    # -- weight digests

    def _memo(self) -> dict[str, str]:
        try:
            return json.loads((self.root / "digests.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    @staticmethod
    def _stat_key(file: Path) -> str:
        st = file.stat()
        return f"{file.resolve()}:{st.st_size}:{st.st_mtime_ns}"

    def known_file_digest(self, file: Path) -> str | None:
        """The memoized content digest of a file, if it was hashed in its current state."""
        return self._memo().get(self._stat_key(file))

    def file_digest(self, file: Path) -> str:
        """Content digest of a file, hashed once per (path, size, mtime)."""
        stat_key = self._stat_key(file)
        memo = self._memo()
        if stat_key in memo:
            return memo[stat_key]
        hasher = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        value = hasher.hexdigest()
        memo = self._memo()  # another process may have added entries meanwhile
        memo[stat_key] = value
        write_atomically(self.root / "digests.json",
                         lambda p: p.write_text(json.dumps(memo, sort_keys=True, indent=0)))
        return value
