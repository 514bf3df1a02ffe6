"""Writing standard Hugging Face model directories, atomically and tensor by tensor.

:func:`write_model_dir` writes ``config.json`` (copied from the source model),
``generation_config.json`` and the tokenizer files (copied when present), the weights as
safetensors — ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` plus
``model.safetensors.index.json`` above ``max_shard_size`` — and a ``README.md`` model card
whose YAML front matter lists ``base_model``, ``library_name: transformers`` and ``tags`` and
whose body embeds the spec. The result loads with ``AutoModelForCausalLM.from_pretrained``.

Weights are *streamed*: the caller gives the layout (name, dtype, shape of every tensor) and
a function producing one tensor at a time; each safetensors file is written header first,
then tensor after tensor, so memory stays at about one tensor whatever the shard size.
Files are deterministic: same tensors in, byte-identical files out.

Atomicity: everything is written into a temporary directory next to the output (same
parent, so the final ``rename`` is atomic); an interrupted write leaves no directory that
looks finished, and the temporaries of a killed writer (they carry its pid) are removed by
the next write beside them. An existing output is replaced only with ``overwrite=True``.

Safety: an output that is, is inside, or contains one of ``input_dirs`` — or anything
:func:`guarded_outputs` protects (a run protects every input of its spec and the cache),
the filesystem root or the home directory — is refused, symlinks resolved, when the writer
starts and again right before the rename. Every directory written here carries actc's
marker (``.actc-output``, listing the files written); under a guard, ``overwrite`` replaces
only a directory with a valid marker and no file the marker does not list.

Concurrency: :func:`locked_output` holds an output's advisory lock (``flock`` on
``.<name>.lock`` beside it) — exclusive while a run writes it, shared while one only reads an
up-to-date one — so two runs never write one output at once; the second is refused at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping, Sequence

import torch

from actlang.arch.errors import RuntimeUserError
from actlang.arch.sizes import parse_size
from actlang.compile.cache import pid_alive, remove_stale, temporary_name
from actlang.compile.plan import (
    OUTPUT_MARKER,
    output_conflict,
    output_marker,
    replace_problem,
)
from actlang.run.checkpoint import (
    DTYPE_TO_ST,
    FileSlice,
    natural_key,
    release_freed_memory,
)

__all__ = [
    "DEFAULT_MAX_SHARD_SIZE",
    "OutTensor",
    "atomic_output_dir",
    "guarded_outputs",
    "locked_output",
    "model_card",
    "checkpoint_state",
    "save_state_dict",
    "write_model_dir",
    "write_safetensors",
]

DEFAULT_MAX_SHARD_SIZE = 5 * 1024**3
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "chat_template.jinja",
    "chat_template.json",
)
COPIED_FILES = ("generation_config.json", *TOKENIZER_FILES)


@dataclass(frozen=True)
class OutTensor:
    """One tensor of an output layout."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


_CHUNK = 8 * 1024 * 1024


def _copy_slice(out: Any, src: FileSlice) -> None:
    """Append ``src``'s bytes to the open file ``out`` in chunks (kernel copy when possible)."""
    out.flush()
    with open(src.file, "rb", buffering=0) as f:
        if f.seek(0, os.SEEK_END) < src.start + src.nbytes:
            raise RuntimeUserError(f"{src.file} is truncated")
        done = 0
        if hasattr(os, "copy_file_range"):
            try:
                while done < src.nbytes:
                    n = os.copy_file_range(f.fileno(), out.fileno(), min(_CHUNK * 8, src.nbytes - done),
                                           src.start + done)
                    if n <= 0:
                        break
                    done += n
            except OSError:
                pass  # e.g. across file systems on old kernels: fall back to read/write
        f.seek(src.start + done)
        buf = bytearray(min(_CHUNK, max(src.nbytes - done, 1)))
        view = memoryview(buf)
        while done < src.nbytes:
            n = f.readinto(view[: min(len(buf), src.nbytes - done)])
            if not n:
                raise RuntimeUserError(f"{src.file} is truncated")
            out.write(view[:n])
            done += n


def write_safetensors(path: Path, layout: Sequence[OutTensor],
                      produce: Callable[[str], "torch.Tensor | FileSlice"],
                      metadata: Mapping[str, str] | None = None) -> int:
    """Stream tensors into one safetensors file in ``layout`` order; returns bytes of data.

    ``produce(name)`` returns a tensor, or a :class:`~actlang.run.checkpoint.FileSlice`
    whose bytes are copied verbatim (an unchanged tensor never enters memory)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for t in layout:
        if t.dtype not in DTYPE_TO_ST:
            raise RuntimeUserError(f"tensor {t.name} has dtype {t.dtype}, which safetensors cannot store")
        header[t.name] = {"dtype": DTYPE_TO_ST[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in layout:
            x = produce(t.name)
            assert x.dtype == t.dtype and tuple(x.shape) == t.shape, (t.name, x.dtype, tuple(x.shape), t)
            if isinstance(x, FileSlice):
                assert x.nbytes == t.nbytes, t.name
                _copy_slice(f, x)
            else:
                f.write(_tensor_bytes(x))
            del x
            release_freed_memory()
    return offset


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str]) -> Path:
    """Write a small safetensors file atomically (temp file, then rename), byte for byte the
    same for the same tensors and metadata — ``safetensors.save_file`` writes metadata keys
    in hash order, which differs between processes."""
    layout = [OutTensor(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    tmp = path.with_name(f"{temporary_name(path.name)}{uuid.uuid4().hex[:8]}")
    try:
        write_safetensors(tmp, layout, tensors.__getitem__, dict(sorted(metadata.items())))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _shards(layout: Sequence[OutTensor], max_shard_size: int) -> list[list[OutTensor]]:
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in layout:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _yaml_list(items: Iterable[str]) -> str:
    return "".join(f"- {json.dumps(str(i))}\n" for i in items)


ACT_DESCRIPTION = (
    "Made with actlang — ACT, activation-guided channel-wise ability transfer (arXiv 2601.09398): "
    "channels localized by activation difference were moved from the donor model(s) into the "
    "target; every other parameter is bit-identical to the target.")


def finetune_description(steps: int, scope: str) -> str:
    """The model card's account of a transfer followed by a compatibility fine-tune."""
    kept = "every other parameter is bit-identical to the target" \
        if scope == "transferred" else "all parameters were trained"
    return (f"{ACT_DESCRIPTION.split(';')[0]}; then a {steps}-step compatibility fine-tune "
            f"(scope {scope}): {kept}.")


def model_card_name(model: Any) -> str:
    """How a model card's ``base_model`` names an input model (a ``ModelSpec``): the hub id,
    the local path, the GGUF file's path (inside its package: ``package/file``)."""
    if model.source == "zoo":
        return f"actlang-zoo/{model.location}"
    if model.package:
        return f"{model.package}/{model.location}"
    return model.location


def model_card(*, name: str, base_models: Sequence[str], tags: Sequence[str] = (), spec_text: str | None = None,
               description: str | None = None) -> str:
    """README.md text: YAML front matter (base_model, library_name, tags), what was done
    (``description``, by default the ACT transfer), the inputs and the spec."""
    all_tags = list(dict.fromkeys(["actlang", "act", "ability-transfer", *tags]))
    out = "---\n"
    if base_models:
        out += "base_model:\n" + _yaml_list(base_models)
    out += "library_name: transformers\n"
    out += "tags:\n" + _yaml_list(all_tags)
    out += "---\n\n"
    out += f"# {name}\n\n"
    out += (description or ACT_DESCRIPTION).strip() + "\n\n"
    if base_models:
        out += "Inputs:\n\n" + "".join(f"- `{b}`\n" for b in base_models) + "\n"
    if spec_text is not None:
        fence = "```"
        while fence in spec_text:
            fence += "`"
        out += f"## Spec\n\n{fence}act\n{spec_text.rstrip()}\n{fence}\n"
    return out


def retitle_model_card(card: Path, name: str) -> None:
    """Give a README.md that :func:`model_card` wrote another title (its first heading).
    The card is replaced, not rewritten in place: an output's files may be hard links to a
    stage's, which must not change."""
    lines = card.read_text(encoding="utf-8").split("\n")
    heading = next(i for i, line in enumerate(lines) if line.startswith("# "))
    lines[heading] = f"# {name}"
    fresh = card.with_name(card.name + ".retitled")
    fresh.write_text("\n".join(lines), encoding="utf-8")
    os.replace(fresh, card)


def _inside(a: Path, b: Path) -> bool:
    try:
        a.relative_to(b)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class _Guard:
    protected: tuple[tuple[Path, str], ...] = ()
    actc_outputs_only: bool = False


_GUARD: ContextVar[_Guard] = ContextVar("actlang_output_guard", default=_Guard())


@contextmanager
def guarded_outputs(protected: Iterable[tuple[Path, str]], *,
                    actc_outputs_only: bool = True) -> Iterator[None]:
    """Within this block every :class:`atomic_output_dir` refuses outputs that overlap
    ``protected`` ((path, what it is) pairs) and, with ``actc_outputs_only``, replaces only
    directories an earlier actc write marked (``actc run`` wraps itself in one)."""
    token = _GUARD.set(_Guard(tuple(protected), actc_outputs_only))
    try:
        yield
    finally:
        _GUARD.reset(token)


class atomic_output_dir:
    """Context manager: a temp dir next to ``out_dir`` that becomes ``out_dir`` on success.

    >>> with atomic_output_dir("out/model", overwrite=False, input_dirs=[src]) as tmp:
    ...     (tmp / "config.json").write_text("{}")
    """

    def __init__(self, out_dir: str | Path, *, overwrite: bool = False, input_dirs: Iterable[str | Path] = ()) -> None:
        self.out = Path(out_dir).absolute()
        self.overwrite = overwrite
        self.protected = [(Path(d), f"the input model directory {d}") for d in input_dirs]
        self._check_target()
        if self.out.exists() and not overwrite:
            raise RuntimeUserError(f"output directory {self.out} already exists",
                                   hint="choose another output, or overwrite it explicitly (--force / overwrite=True)")
        self.tmp = self.out.parent / f"{temporary_name(self.out.name)}{uuid.uuid4().hex[:12]}"

    def _check_target(self) -> None:
        """Refuse an output overlapping what is protected, or one that may not be replaced."""
        guard = _GUARD.get()
        problem = output_conflict(self.out, [*self.protected, *guard.protected])
        if problem:
            raise RuntimeUserError(f"refusing to write the output to {self.out}: {problem}; "
                                   "an output never overlaps the inputs, the cache or the home "
                                   "directory", hint="choose another output directory")
        if self.out.is_symlink() or self.out.exists() and not self.out.is_dir():
            raise RuntimeUserError(f"output path {self.out} exists and is not a directory",
                                   hint="choose another output")
        if self.out.exists() and self.overwrite and guard.actc_outputs_only:
            problem = replace_problem(self.out)
            if problem:
                raise RuntimeUserError(
                    f"refusing to replace {self.out}: it {problem}",
                    hint="--force replaces only outputs of earlier actc runs; delete it "
                    "yourself if you mean it, or write elsewhere")

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(self.out.parent, prefix=f".{self.out.name}.")  # of killed writers
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            (self.tmp / OUTPUT_MARKER).write_text(
                json.dumps(output_marker(self.tmp), indent=1, sort_keys=True) + "\n")
            self._check_target()  # again, right before the rename: nothing moved meanwhile
            if self.out.exists() and not self.overwrite:  # appeared meanwhile
                raise RuntimeUserError(f"output directory {self.out} appeared while writing; not replacing it")
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if not self.out.exists():
            os.replace(self.tmp, self.out)
        elif _exchange(self.tmp, self.out):  # one step: the old output or the new, always
            _discard(self.tmp)
        else:  # no atomic exchange here: the old output is moved aside for an instant
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            _discard(old)


def _discard(replaced: Path) -> None:
    """Remove an output that was replaced (a kill before this leaves it as a temporary of
    the killed run, which the next run removes)."""
    shutil.rmtree(replaced, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``), so
    a replaced output never goes missing, even for an instant a kill could hit; ``False``
    where the system or the filesystem cannot (the caller falls back to two renames)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).renameat2
    except (OSError, AttributeError):  # no libc found, or one older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextmanager
def locked_output(out_dir: str | Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the advisory lock of the output ``out_dir`` for the block: ``exclusive`` to write
    it, shared to read it. Another process holding it in a conflicting mode is a
    RuntimeUserError at once (a run never waits: it would only find the output changed).

    The lock is ``flock`` on ``.<name>.lock`` beside the output: the kernel releases it when
    its holder dies, so a killed run never leaves a stale lock, and the last holder removes
    the file. An exclusive holder writes its pid there, for the error message."""
    out = Path(out_dir).absolute()
    path = out.parent / f".{out.name}.lock"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a regular file where a directory should be, a read-only disk
        raise RuntimeUserError(f"cannot create the lock file {path}: cannot make "
                               f"{error.filename or out.parent}: {error.strerror}",
                               hint="the output's directory must be writable") from None
    fd = _acquire_lock(path, exclusive, out)
    try:
        yield
    finally:
        _release_lock(path, fd)


def _acquire_lock(path: Path, exclusive: bool, out: Path) -> int:
    while True:
        try:  # never through a symbolic link: the pid written below would land elsewhere
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise RuntimeUserError(f"cannot create the lock file {path}: {error.strerror}",
                                   hint="the output's directory must be writable") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RuntimeUserError(
                f"the output {out} is in use by another actc run{holder}",
                hint="wait for that run to finish, or write elsewhere with --output") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # its last holder removed the file meanwhile: lock the new one
    if exclusive:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _release_lock(path: Path, fd: int) -> None:
    """Unlock; the last holder (the only one that can take the lock exclusively) removes the
    file first, while it still holds it, so no process ever locks a removed file for good."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # other readers hold it: the last of them removes it
    else:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_ino, named.st_dev) == (opened.st_ino, opened.st_dev)


def _lock_holder(fd: int) -> str:
    """`` (pid N)`` when the lock file names a live writer, else nothing."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f" (pid {text})" if text.isdigit() and pid_alive(int(text)) else ""


def write_model_dir(
    out_dir: str | Path,
    layout: Sequence[OutTensor],
    produce: Callable[[str], "torch.Tensor | FileSlice"],
    *,
    source_dir: str | Path,
    base_models: Sequence[str] = (),
    tags: Sequence[str] = (),
    spec_text: str | None = None,
    description: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    input_dirs: Iterable[str | Path] = (),
    extra_files: Mapping[str, bytes | str | Path] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a loadable HF model directory (see module docs); returns its path.

    ``layout`` gives every tensor's name, dtype and shape, in file order; ``produce(name)``
    returns that tensor (called once per tensor, in order). ``source_dir`` supplies
    config.json, generation config and tokenizer files. ``extra_files`` maps relative paths
    to contents (bytes, text, or a file to copy).
    """
    source = Path(source_dir)
    max_bytes = parse_size(max_shard_size)
    if max_bytes <= 0:
        raise RuntimeUserError("max_shard_size must be positive")
    if not (source / "config.json").is_file():
        raise RuntimeUserError(f"no config.json in {source}")
    names = [t.name for t in layout]
    if len(set(names)) != len(names):
        raise RuntimeUserError("duplicate tensor names in the output layout")
    with atomic_output_dir(out_dir, overwrite=overwrite, input_dirs=[source, *input_dirs]) as tmp:
        cfg_text = (source / "config.json").read_text()
        if config_overrides:
            cfg = json.loads(cfg_text)
            cfg.update(config_overrides)
            cfg_text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
        (tmp / "config.json").write_text(cfg_text)
        for fname in COPIED_FILES:
            if (source / fname).is_file():
                shutil.copyfile(source / fname, tmp / fname)
        shards = _shards(layout, max_bytes)
        total = sum(t.nbytes for t in layout)

        def counted(name: str) -> "torch.Tensor | FileSlice":
            if progress:
                progress(name)
            return produce(name)

        if len(shards) == 1:
            write_safetensors(tmp / "model.safetensors", shards[0], counted)
        else:
            weight_map: dict[str, str] = {}
            n = len(shards)
            for i, shard in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{n:05d}.safetensors"
                write_safetensors(tmp / fname, shard, counted)
                for t in shard:
                    weight_map[t.name] = fname
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        card = model_card(name=Path(out_dir).name, base_models=base_models, tags=tags, spec_text=spec_text,
                          description=description)
        (tmp / "README.md").write_text(card)
        for rel, content in (extra_files or {}).items():
            dest = tmp / rel
            if not _inside(dest.resolve(), tmp.resolve()):
                raise RuntimeUserError(f"extra file {rel} would be written outside the output directory")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, dest)
            elif isinstance(content, bytes):
                dest.write_bytes(content)
            else:
                dest.write_text(content)
    return Path(out_dir)


def checkpoint_state(model: Any, source_dir: str | Path, channel_tensors: Collection[str]) -> dict[str, torch.Tensor]:
    """An in-memory model's tensors under the names its source checkpoint stores them by.

    State-dict names are translated by the family's :class:`~actlang.arch.adapters.Naming`.
    A source tensor the model's state still lacks is read from the source when it lies
    outside ``channel_tensors`` (e.g. Gemma 3's vision tower, whose hub names transformers
    does not reproduce; a text-only fine-tune never changes it); inside, it is an error.

    Args:
        model: a transformers model (its ``config`` picks the naming).
        source_dir: the model directory it was loaded from.
        channel_tensors: checkpoint names of the tensors that channels live in.
    """
    from actlang.arch.adapters import checkpoint_naming
    from actlang.run.checkpoint import Checkpoint

    naming = checkpoint_naming(model)
    state = {naming.to_checkpoint(k): v.detach().cpu() for k, v in model.state_dict().items()}
    source = Checkpoint.open(source_dir)
    for name in source.keys():
        if name not in state:
            if name in channel_tensors:
                raise RuntimeUserError(f"the model's state dict lacks tensor {name} of {source_dir}",
                                       hint="the model does not match its adapter's checkpoint names")
            state[name] = source.get(name)
    return state


def save_state_dict(
    out_dir: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source_dir: str | Path,
    names: Sequence[str] | None = None,
    **kwargs: Any,
) -> Path:
    """Write an in-memory state dict as a model directory shaped like ``source_dir``.

    ``names`` (default: the tensors of ``source_dir``'s checkpoint, so tied weights that
    the source does not store are not written either) selects and orders the tensors.
    Other keyword arguments go to :func:`write_model_dir`.
    """
    if names is None:
        from actlang.run.checkpoint import Checkpoint

        names = Checkpoint.open(source_dir).keys()
    missing = [n for n in names if n not in state_dict]
    if missing:
        raise RuntimeUserError(f"the state dict lacks tensor {missing[0]} of {source_dir}")
    ordered = sorted(names, key=natural_key)
    layout = [OutTensor(n, state_dict[n].dtype, tuple(state_dict[n].shape)) for n in ordered]
    return write_model_dir(out_dir, layout, lambda n: state_dict[n], source_dir=source_dir, **kwargs)
