"""Reading a spec and everything it imports.

``use std.selectors`` loads ``<stdlib>/std/selectors.act``; ``use "./x.act"`` loads a file
relative to the importing one. Every file is parsed once; import cycles are reported with the
chain that closes them. A file that fails to parse still yields its diagnostics, and the files
that import it go on being checked (names from it are then unknown without further errors).

Only specs are read as specs: an import must be a ``.act`` file (its real path, symlinks
resolved), and every file must be a regular file — a FIFO or a device is refused without
being read (it could block forever). So a diagnostic quotes the spec named on the command
line and ``.act`` imports only, never a line of any other file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from actlang.lang import ast
from actlang.lang.diagnostics import (
    Diagnostic,
    DiagnosticError,
    SourceCache,
    did_you_mean,
)
from actlang.lang.parser import parse
from actlang.lang.schema import LIMITS
from actlang.resources import stdlib_dir


@dataclass
class LoadedFile:
    """One parsed file. ``imports`` maps the name each ``use`` binds to the imported file's key
    (None when the import failed, so uses of the name stay quiet)."""

    key: str  # absolute path
    display: str  # the name diagnostics show
    module: ast.Module | None
    imports: dict[str, str | None] = field(default_factory=dict)


@dataclass
class LoadResult:
    main: str
    files: dict[str, LoadedFile]
    diagnostics: list[Diagnostic]
    sources: SourceCache


def display_name(path: Path) -> str:
    """A path as diagnostics show it: stdlib files as ``<stdlib>/std/x.act``, others relative
    to the working directory."""
    try:
        return f"<stdlib>/{path.relative_to(stdlib_dir().resolve()).as_posix()}"
    except ValueError:
        pass
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


SPEC_SUFFIX = ".act"


class NotRegularFile(OSError):
    """A path that names something other than a regular file (a FIFO, a device, ...)."""


class SpecTooLarge(OSError):
    """A spec file larger than ``LIMITS["spec_bytes"]``: refused before it is read."""


def read_spec_text(path: Path) -> str:
    """A spec's text (universal newlines). The file is opened without blocking and checked
    to be a regular file before anything is read: a FIFO never hangs the reader.

    Raises:
        NotRegularFile: it is not a regular file.
        SpecTooLarge: it is larger than a spec may be.
        OSError, UnicodeDecodeError: it cannot be read, or is not UTF-8.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, encoding="utf-8", closefd=True) as handle:  # closes fd, whatever happens
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise NotRegularFile(0, "not a regular file")
        limit = LIMITS["spec_bytes"].value
        if status.st_size > limit:
            raise SpecTooLarge(0, f"{status.st_size:,} bytes; a spec file has at most "
                               f"{limit:,}")
        return handle.read(limit + 1)  # a file that grows while being read stops at the limit


def stdlib_modules() -> list[str]:
    """Dotted names of every stdlib module, e.g. ``std.selectors``."""
    root = stdlib_dir()
    return sorted(".".join(p.relative_to(root).with_suffix("").parts)
                  for p in root.rglob("*.act"))


def load(path: Path | str, text: str | None = None) -> LoadResult:
    """Load a spec and, transitively, its imports.

    Args:
        path: the spec file.
        text: its text, if already read (otherwise the file is read).
    """
    loader = _Loader()
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: reading it reports the error
        resolved = Path(path).absolute()
    main = loader.load_file(resolved, text=text, via=None)
    return LoadResult(main=main, files=loader.files, diagnostics=loader.diagnostics,
                      sources=loader.sources)


class _Loader:
    def __init__(self) -> None:
        self.files: dict[str, LoadedFile] = {}
        self.diagnostics: list[Diagnostic] = []
        self.sources = SourceCache()
        self._stack: list[str] = []  # files being loaded, for cycle detection
        self._bytes = 0  # of spec text read so far

    def load_file(self, path: Path, text: str | None, via: ast.Use | None) -> str:
        key = str(path)
        if key in self.files:
            return key
        display = display_name(path)
        if text is None:
            try:
                text = read_spec_text(path)
            except (OSError, UnicodeDecodeError) as error:
                reason = error.strerror if isinstance(error, OSError) else "not valid UTF-8"
                hint = None
                if isinstance(error, NotRegularFile):
                    hint = f"a spec is a regular {SPEC_SUFFIX} file"
                elif isinstance(error, SpecTooLarge):
                    hint = "keep data in corpus files (jsonl(...), lines(...) of a file)"
                elif via is not None:
                    hint = "check the path; file imports are relative to the importing file"
                self.diagnostics.append(Diagnostic(
                    "E405" if isinstance(error, SpecTooLarge) else "E005",
                    f"cannot read `{display}`: {reason}",
                    via.span if via is not None else None, hint=hint))
                self.files[key] = LoadedFile(key, display, None)
                return key
        self._bytes += len(text.encode("utf-8", "surrogatepass"))
        limit = LIMITS["source_bytes"]
        if via is not None and self._bytes > limit.value:
            self.diagnostics.append(Diagnostic(
                "E405", f"this import would make the spec read more than {limit.value:,} "
                "bytes of spec text", via.span,
                hint="keep data in corpus files (jsonl(...), lines(...) of a file)"))
            self.files[key] = LoadedFile(key, display, None)
            return key
        self.sources.add(display, text)
        try:
            module = parse(text, display)
        except DiagnosticError as error:
            self.diagnostics.extend(error.diagnostics)
            self.files[key] = LoadedFile(key, display, None)
            return key
        loaded = LoadedFile(key, display, module)
        self.files[key] = loaded
        self._stack.append(key)
        for item in module.items:
            if isinstance(item, ast.Use):
                loaded.imports[item.bound_name] = self._load_import(item, path)
        self._stack.pop()
        return key

    def _load_import(self, use: ast.Use, importer: Path) -> str | None:
        if use.module is not None:
            target = stdlib_dir().joinpath(*use.module).with_suffix(".act")
            # looked up by name: a name too long for a file is unknown, not an OSError
            if use.module[0] != "std" or ".".join(use.module) not in stdlib_modules():
                dotted = ".".join(use.module)
                hint = did_you_mean(dotted, stdlib_modules())
                if use.module[0] != "std":
                    hint = hint or f'stdlib modules start with `std.`; for a file write `use "./{dotted.replace(".", "/")}.act"`'
                self.diagnostics.append(Diagnostic(
                    "E103", f"unknown stdlib module `{dotted}`", use.span,
                    hint=hint or "stdlib modules: " + ", ".join(stdlib_modules())))
                return None
        else:
            target = self._file_import(use, importer)
            if target is None:
                return None
        key = str(target)
        limit = LIMITS["files"]
        if key not in self.files and len(self.files) >= limit.value:
            self.diagnostics.append(Diagnostic(
                "E405", f"this import would make the spec read more than {limit.value} "
                "files", use.span, hint="a spec reads itself and its imports, transitively; "
                "merge small modules"))
            return None
        if key in self._stack:
            chain = self._stack[self._stack.index(key):] + [key]
            names = " -> ".join(display_name(Path(k)) for k in chain)
            self.diagnostics.append(Diagnostic(
                "E104", f"import cycle: {names}", use.span,
                hint="move the shared declarations into a file both can import"))
            return None
        return self.load_file(target, text=None, via=use)

    def _file_import(self, use: ast.Use, importer: Path) -> Path | None:
        """The real path of ``use "file"``: an existing regular ``.act`` file (else a
        located diagnostic, and None)."""
        written = use.file or ""
        try:
            target = (importer.parent / written).resolve()
        except (OSError, RuntimeError, ValueError) as error:  # a symlink loop, a NUL byte
            reason = "a symbolic link loop" if isinstance(error, (OSError, RuntimeError)) \
                else "an invalid path"
            self.diagnostics.append(Diagnostic(
                "E103", f"cannot resolve `{written}`: {reason}", use.span,
                hint="file imports name .act files, relative to the importing file"))
            return None
        problem = None
        try:
            exists, regular = target.exists(), target.is_file()
        except OSError as error:  # a name too long for the filesystem, say
            self.diagnostics.append(Diagnostic(
                "E103", f"cannot look up `{written}`: {error.strerror}", use.span,
                hint="file imports name .act files, relative to the importing file"))
            return None
        if not written.endswith(SPEC_SUFFIX) or target.suffix != SPEC_SUFFIX:
            problem = (f"`{written}` is not a spec: `use` imports only {SPEC_SUFFIX} files"
                       if not written.endswith(SPEC_SUFFIX) else
                       f"`{written}` leads to {display_name(target)}, which is not a "
                       f"{SPEC_SUFFIX} file")
        elif not exists:
            self.diagnostics.append(Diagnostic(
                "E103", f"cannot find `{written}`", use.span,
                label=f"looked for {display_name(target)}",
                hint="file imports are relative to the importing file"))
            return None
        elif not regular:
            problem = f"`{written}` is not a regular file"
        if problem is not None:
            self.diagnostics.append(Diagnostic(
                "E103", problem, use.span,
                hint=f"a file import names a spec: a regular {SPEC_SUFFIX} file, relative to "
                "the importing file"))
            return None
        return target
