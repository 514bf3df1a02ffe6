"""The content-addressed cache: statistics and evaluations that never need recomputing.

A key is a digest of everything a result depends on — the weights' identity (a content hash
of the safetensors files, or the pinned hub revision), the tokenized corpus, the statistic's
configuration and the code version — so a hit is always valid and a changed input is always a
miss. Entries are written atomically (temporary file, then rename): an interrupted run leaves
either a complete entry or none.

Integrity: every entry has a checksum sidecar, ``<entry>.sha256`` (``sha256sum`` format, so
``sha256sum -c`` checks it by hand), written atomically *before* the entry is renamed into
place — a reader never sees an entry without its checksum. An entry is used only when its
bytes hash to its sidecar: a corrupted, truncated or edited entry, or one whose checksum is
missing, is reported (one line on stderr) and treated as a miss, so it is recomputed and
rewritten, never used (:meth:`Cache.has` only reports it, as ``actc plan`` changes nothing;
:meth:`Cache.load` removes it). An entry that fails to load is a miss too, and is removed.

Weight digests are memoized in ``digests.json`` by the file's path and full state — size,
mtime, change time, inode and device — so a model is hashed once, and any rewrite (even one
that restores size and mtime with ``touch -r``: the change time cannot be set back) hashes it
again. The memo carries its own checksum; a memo that fails it is forgotten (everything is
rehashed). ``actc plan`` reads the memo and never hashes (it never reads tensor data).

Temporary files carry their writer's pid (``.<name>.tmp-<pid>-<random>``);
:meth:`Cache.remove_stale` deletes those of processes that are gone (a killed run).

Layout under the cache root (``$ACTLANG_CACHE_DIR``, default ``~/.cache/actlang``)::

    stats/ab/abcdef....safetensors          statistics
    stats/ab/abcdef....safetensors.sha256   its checksum
    evals/ab/abcdef....json                 evaluation results (and .json.sha256)
    digests.json                            weight digests memo
    zoo/                                    the zoo's models (see actlang.zoo)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

# Bump when the meaning of cached statistics or evaluations changes.
CACHE_FORMAT = "1"
CHECKSUM_SUFFIX = ".sha256"
_MEMO_FORMAT = "actlang-digests/2"


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


def sha256_file(file: Path) -> str:
    """The sha256 of a file's bytes (read in 1 MiB blocks)."""
    hasher = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def temporary_name(name: str) -> str:
    """The prefix of a temporary sibling of ``name``, owned by this process
    (:func:`remove_stale` recognizes it once the process is gone)."""
    return f".{name}.tmp-{os.getpid()}-"


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary)`` then rename it to ``path``; nothing is left on failure.

    The temporaries that killed writers left for ``path`` are removed first, so a file
    written here (a spec's lock file, the digest memo) never gathers them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, prefix=f".{path.name}.tmp-")  # see temporary_name
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=temporary_name(path.name))
    os.close(fd)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary only
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one we may not signal counts as alive)."""
    if pid <= 0:
        return True  # not a real owner: never treat its files as stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


#: A temporary of a process: ``.<name>.tmp-<pid>...``, ``.<name>.old-<pid>-...`` (a replaced
#: output), ``.actc-work-<pid>-...`` (a run's work directory).
_STALE = re.compile(r"^\.(?:.*\.(?:tmp|old)|actc-work)-(\d+)(?:-|$)")


def owner_pid(name: str) -> int | None:
    """The pid in the name of a temporary file or directory, or None if it is not one."""
    match = _STALE.match(name)
    return int(match.group(1)) if match else None


def remove_stale(directory: Path, prefix: str = ".") -> list[Path]:
    """Remove the temporaries directly under ``directory`` whose names start with ``prefix``
    and whose owner process is gone; returns what was removed (nothing of a live process is
    touched)."""
    removed: list[Path] = []
    try:
        children = list(directory.iterdir())
    except OSError:
        return removed
    for child in children:
        pid = owner_pid(child.name) if child.name.startswith(prefix) else None
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        try:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
            removed.append(child)
        except FileNotFoundError:
            pass  # another process cleaned it first
        except OSError:
            continue
    return removed


@dataclass(frozen=True)
class CacheEntry:
    kind: str  # "stats" or "evals"
    key: str
    path: Path
    size: int


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Cache:
    """Statistics and evaluations by key, plus the weight-digest memo.

    Args:
        root: the cache directory (created on first write).
        warn: receives one line per corrupt entry found (default: printed on stderr).
    """

    def __init__(self, root: Path | None = None, warn: Callable[[str], None] | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.warn = warn or _warn_stderr
        self._reported: set[Path] = set()

    # -- entries

    def _path(self, kind: str, key: str) -> Path:
        suffix = ".safetensors" if kind == "stats" else ".json"
        return self.root / kind / key[:2] / f"{key}{suffix}"

    @staticmethod
    def _checksum_path(path: Path) -> Path:
        return path.with_name(path.name + CHECKSUM_SUFFIX)

    def _problem(self, path: Path) -> str | None:
        """Why the entry at ``path`` cannot be trusted (None: its bytes match its checksum)."""
        try:
            recorded = self._checksum_path(path).read_text(encoding="ascii").split()
        except FileNotFoundError:
            return "its checksum is missing"
        except (OSError, UnicodeDecodeError):
            return "its checksum cannot be read"
        if not recorded or not re.fullmatch(r"[0-9a-f]{64}", recorded[0]):
            return "its checksum is malformed"
        try:
            actual = sha256_file(path)
        except OSError as error:
            return f"it cannot be read ({error.strerror})"
        return None if actual == recorded[0] else "its bytes do not match its checksum"

    def _verified(self, path: Path) -> bool:
        """Whether the entry exists and passes its checksum (a failure is reported once)."""
        if not path.is_file():
            return False
        problem = self._problem(path)
        if problem is None:
            return True
        if path not in self._reported:
            self._reported.add(path)
            self.warn(f"cache entry {path} is corrupt ({problem}): ignoring it, it will be "
                      "recomputed")
        return False

    def has(self, kind: str, key: str) -> bool:
        """Whether a verified entry exists (a corrupt one is reported and counts as absent)."""
        return self._verified(self._path(kind, key))

    def load(self, kind: str, key: str, read: Callable[[Path], Any]) -> Any | None:
        """``read(path)`` of the entry, or None on a miss, or a corrupt (reported) or
        unreadable entry (both removed)."""
        path = self._path(kind, key)
        if not self._verified(path):
            if path.is_file():
                self._remove(path)
            return None
        try:
            return read(path)
        except Exception:  # noqa: BLE001 - any corrupt entry is a miss, never a crash
            self._remove(path)
            return None

    def _remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._checksum_path(path).unlink(missing_ok=True)

    def store(self, kind: str, key: str, write: Callable[[Path], None]) -> Path:
        """Write an entry: ``write(temporary)``, its checksum, then the entry, atomically."""
        path = self._path(kind, key)

        def write_with_checksum(temporary: Path) -> None:
            write(temporary)
            value = sha256_file(temporary)
            write_atomically(self._checksum_path(path),
                             lambda p: p.write_text(f"{value}  {path.name}\n", encoding="ascii"))

        write_atomically(path, write_with_checksum)
        self._reported.discard(path)
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
                if path.name.startswith(".") or path.name.endswith(CHECKSUM_SUFFIX):
                    continue  # an unfinished write, or a checksum
                yield CacheEntry(kind, path.name.split(".")[0], path, path.stat().st_size)

    def clear(self) -> int:
        """Remove statistics, evaluations and the digest memo (not the zoo); bytes freed."""
        freed = sum(e.size for e in self.entries())
        for kind in ("stats", "evals"):
            shutil.rmtree(self.root / kind, ignore_errors=True)
        (self.root / "digests.json").unlink(missing_ok=True)
        return freed

    def remove_stale(self) -> list[Path]:
        """Remove temporaries that killed processes left in the cache (entries, checksums,
        the memo, GGUF conversions); returns what was removed."""
        directories = [self.root, self.root / "gguf"]
        for kind in ("stats", "evals"):
            if (self.root / kind).is_dir():
                directories += sorted(p for p in (self.root / kind).iterdir() if p.is_dir())
        return [path for directory in directories for path in remove_stale(directory)]

    # -- weight digests

    def _memo(self) -> dict[str, str]:
        """The memo, or {} when it is missing, unreadable or fails its checksum."""
        path = self.root / "digests.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("format") == _MEMO_FORMAT and \
                isinstance(data.get("digests"), dict) and data.get("sha256") == digest(data["digests"]):
            return data["digests"]
        if path not in self._reported:
            self._reported.add(path)
            self.warn(f"the weight digest memo {path} is corrupt or from an older actlang: "
                      "weights are hashed again")
        return {}

    def _store_memo(self, memo: dict[str, str]) -> None:
        data = {"format": _MEMO_FORMAT, "sha256": digest(memo), "digests": memo}
        write_atomically(self.root / "digests.json",
                         lambda p: p.write_text(json.dumps(data, sort_keys=True, indent=0)))
        self._reported.discard(self.root / "digests.json")

    @staticmethod
    def _stat_key(file: Path) -> str:
        """The file's path and state: any rewrite changes the change time (which no user
        can set back), a replacement by rename the inode too."""
        st = file.stat()
        return (f"{file.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:"
                f"{st.st_ino}:{st.st_dev}")

    def known_file_digest(self, file: Path) -> str | None:
        """The memoized content digest of a file, if it was hashed in its current state."""
        return self._memo().get(self._stat_key(file))

    def file_digest(self, file: Path) -> str:
        """Content digest of a file, hashed once per state (see :meth:`_stat_key`)."""
        stat_key = self._stat_key(file)
        memo = self._memo()
        if stat_key in memo:
            return memo[stat_key]
        value = sha256_file(file)
        if self._stat_key(file) != stat_key:  # rewritten while hashing: do not memoize
            return value
        path = stat_key.rsplit(":", 5)[0]
        memo = {k: v for k, v in self._memo().items()  # others may have added entries
                if k.rsplit(":", 5)[0] != path}  # earlier states of this file are gone
        memo[stat_key] = value
        self._store_memo(memo)
        return value
