"""The catalogue of user errors (issue 12, part 6): distinct bad inputs — in the spec, the
models, the tokenizers, the corpora, the outputs and the environment — each given to the
installed `actc` as a real subprocess (stdin closed, with a timeout).

``CASES`` is the table: one :class:`Case` per bad input, with a description (its test id,
``"<kind>: <what is wrong>"``), how to build its inputs (a spec body after ``PRELUDE`` and a
``prepare`` function that damages the case's own copy of the tiny model pair, the spec, the
cache or the environment), the command (``check`` or ``plan`` where the error surfaces there —
they are fast —, ``run`` where only running finds it), the expected code and a fragment of
its message. One test, :func:`test_a_bad_input_is_a_clean_user_error`, runs every case and
asserts what every user error must guarantee:

- exit status 1, ``error[CODE]`` and the fragment on stderr, no traceback on either stream;
- a location ``FILE:LINE:COL`` at the line the case names (``at``, in ``spec.act`` unless
  ``in_file`` says otherwise): every spec error has one, and so has every planning error the
  planner can place (a corpus it cannot read, not yet: see "corpus: a file that does not
  exist"); so has every error an operation of the run meets (E502), at what the spec asks
  the operation for (the model it loads, the ability whose corpus it reads, the rule it
  applies, the surgery it saves), a write the machine refuses included; only a cache that
  cannot be opened before any operation runs has none;
- nothing outside the cache changed: every file, link and directory of the case's directory
  (the inputs, the spec, an output that existed) is as it was, and nothing appeared — no
  output, no temporary beside it, no lock file;
- the cache holds no temporary (``.NAME.tmp-PID-...``) and no partial entry: every
  statistics or evaluation entry has its checksum sidecar and matches it, and no sidecar is
  alone. Cases with a filesystem of their own (a full or read-only one, mounted in an
  unprivileged user and mount namespace, skipped where ``unshare`` cannot do that) also check
  what was left on it.

A case's directory is ``tmp_path/work`` (where `actc` runs: ``spec.act``, ``inputs/`` — a
copy of the pair of tests/run/conftest.py — and ``cache/``, the private
``ACTLANG_CACHE_DIR``); ``tmp_path/harness`` holds what the harness itself keeps.

Every case passes: none is marked as a known bug. ``run`` cases are ``slow`` (seconds each: they load torch and the models).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import re
import resource
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from ..conftest import PRELUDE, WORDS
from ..run.conftest import pair  # noqa: F401  (the session's tiny model pair, a fixture)

#: The surgery most cases check, plan or run: 10 % of ``sums`` from ``base`` into ``tuned``.
RULE = ('surgery s -> "out" { target = tuned  transfer sums from base { budget = 10% }  '
        "eval = [] }\n")

#: Longest one `actc COMMAND` may take: a case that hangs fails instead of blocking the suite.
TIMEOUT_S = {"check": 60, "plan": 60, "run": 120}

#: actc's temporaries (actlang/compile/cache.py: ``temporary_name`` and ``_STALE``).
TEMPORARY = re.compile(r"^\.(?:.*\.(?:tmp|old)|actc-work)-\d+(?:-|$)")

AS_ROOT = os.geteuid() == 0


@dataclass
class World:
    """One case's files and how `actc` starts on them; ``prepare`` functions change it."""

    root: Path  # where `actc` runs: spec.act, inputs/, cache/
    harness: Path  # what the harness keeps (outside ``root``)
    env: dict[str, str]
    spec_arg: str = "spec.act"
    namespace: list[str] | None = None  # shell lines that mount, before actc, in a namespace
    mounted: Path | None = None  # a mount point whose content is kept after actc
    file_size_limit: int | None = None  # RLIMIT_FSIZE of actc (SIGXFSZ ignored: EFBIG)
    held: list[int] = field(default_factory=list)  # file descriptors open during the run

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def spec(self) -> Path:
        return self.root / "spec.act"

    @property
    def cache(self) -> Path:
        """The case's cache (``ACTLANG_CACHE_DIR``, unless a case points it elsewhere)."""
        return self.root / "cache"

    def edit_spec(self, old: str, new: str) -> None:
        text = self.spec.read_text()
        assert old in text, old
        self.spec.write_text(text.replace(old, new, 1))

    def use_model(self, name: str, directory: Path | str) -> None:
        """Declare the model ``name`` (base or tuned) over ``directory`` instead."""
        self.edit_spec(f'local("{self.inputs}/{name}")', f'local("{directory}")')

    def allow_pickle(self, name: str) -> None:
        self.edit_spec(f'local("{self.inputs}/{name}")',
                       f'local("{self.inputs}/{name}", allow_pickle = true)')


@dataclass(frozen=True)
class Case:
    """One bad input and the error it must give."""

    id: str  # "<kind>: <what is wrong>", the test id
    command: str  # check | plan | run
    code: str  # the expected code, e.g. "E205"
    fragment: str  # a part of the expected message (whitespace-normalized)
    body: str = RULE  # the spec after PRELUDE
    prepare: Callable[[World], None] | None = None  # damages the world before the command
    at: str | None = None  # the error's line: the first line of ``in_file`` holding this
    in_file: str = "spec.act"
    marks: tuple = ()

    def param(self):
        slow = (pytest.mark.slow,) if self.command == "run" else ()
        return pytest.param(self, id=self.id, marks=(*slow, *self.marks))


# ---- damage ------------------------------------------------------------------------------------


def edit_json(path: Path, change: Callable[[object], object]) -> None:
    """Rewrite a JSON file with ``change(data)``: its result, or ``data`` changed in place."""
    data = json.loads(path.read_text())
    new = change(data)
    path.write_text(json.dumps(data if new is None else new))


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's JSON header and the bytes after it."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def edit_safetensors_header(path: Path, change: Callable[[dict], None]) -> None:
    header, data = safetensors_parts(path)
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def edit_tensors(path: Path, change: Callable[[dict], None]) -> None:
    """Rewrite a safetensors file after ``change(tensors)`` (a dict of torch tensors)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    change(tensors)
    save_file({n: t.contiguous() for n, t in tensors.items()}, path, metadata={"format": "pt"})


def first_tensor(header: dict) -> str:
    return min(name for name in header if name != "__metadata__")


def save_other_model(world: World, name: str, model_type: str = "llama", **config) -> Path:
    """inputs/NAME: a model of the pair's sizes but ``config`` (a Llama, or a GPT-2 of the
    same width), with the pair's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base = json.loads((world.inputs / "base" / "config.json").read_text())
    if model_type == "gpt2":
        settings = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
                    "vocab_size": base["vocab_size"]}
    else:
        settings = {k: base[k] for k in ("hidden_size", "intermediate_size",
                                         "num_hidden_layers", "num_attention_heads",
                                         "num_key_value_heads", "vocab_size",
                                         "max_position_embeddings")}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(model_type, **{**settings, **config}), dtype=torch.float32)
    directory = world.inputs / name
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(world.inputs / "base").save_pretrained(directory)
    return directory


def save_word_tokenizer(words: list[str], *directories: Path) -> None:
    """A word-level tokenizer (the pair's kind) over ``words``, saved in each directory."""
    from actlang.zoo.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(words)
    for directory in directories:
        tokenizer.save_pretrained(directory)


def _remove(relative: str) -> Callable[[World], None]:
    def prepare(world: World) -> None:
        path = world.inputs / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return prepare


def _write(relative: str, content: str | bytes) -> Callable[[World], None]:
    def prepare(world: World) -> None:
        path = world.inputs / relative
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return prepare


def _replace_by(relative: str, make: Callable[[Path], None]) -> Callable[[World], None]:
    """Replace an input file by what ``make(path)`` puts there (a directory, a FIFO...)."""
    def prepare(world: World) -> None:
        path = world.inputs / relative
        path.unlink()
        make(path)
    return prepare


def _self_link(path: Path) -> None:
    path.symlink_to(path)


# ---- spec --------------------------------------------------------------------------------------


def _with_rule(rule_fields: str, surgery_fields: str = "eval = []") -> str:
    """RULE with other rule fields (and surgery fields after the rule)."""
    return (f'surgery s -> "out" {{ target = tuned  transfer sums from base {{ {rule_fields} }}  '
            f"{surgery_fields} }}\n")


def _spec_bytes(content: bytes) -> Callable[[World], None]:
    def prepare(world: World) -> None:
        world.spec.write_bytes(content)
    return prepare


def _spec_is(make: Callable[[Path], None]) -> Callable[[World], None]:
    """The spec path is replaced by what ``make(path)`` puts there (or by nothing)."""
    def prepare(world: World) -> None:
        world.spec.unlink()
        make(world.spec)
    return prepare


def _spec_is_a_device(world: World) -> None:
    world.spec_arg = "/dev/zero"  # endless: read, it would never end


def _import_cycle(world: World) -> None:
    (world.root / "a.act").write_text('use "b.act" as b\nlet x = b.y\n')
    (world.root / "b.act").write_text('use "a.act" as a\nlet y = a.x\n')


def _import_through_loop(world: World) -> None:
    _self_link(world.root / "loop.act")


LETS_THAT_DOUBLE = "let a0 = attn\n" + "".join(f"let a{i} = a{i - 1} + a{i - 1}\n"
                                               for i in range(1, 20))

SPEC_CASES = [
    Case("spec: a field without a value", "check", "E001", "unexpected `}`",
         _with_rule("budget = "), at="surgery s"),
    Case("spec: a character outside the language", "check", "E002", "unexpected character `$`",
         _with_rule("budget = 10% $"), at="surgery s"),
    Case("spec: a block left open at the end of the file", "check", "E003",
         "unexpected end of file", 'surgery s -> "out" { target = tuned\n', at="surgery s"),
    Case("spec: an invalid escape in a string", "check", "E004", "invalid escape",
         RULE.replace('"out"', '"o\\qut"'), at="surgery s"),
    Case("spec: a keyword used as a name", "check", "E004", "`from` is a keyword",
         "let from = 3\n" + RULE, at="let from"),
    Case("spec: an integer literal of 5,000 digits", "check", "E004", "too long",
         "let big = " + "9" * 5000 + "\n" + RULE, at="let big"),
    Case("spec: a NUL character in a path string", "check", "E205", "NUL",
         'model extra = local("a\\u0000b")\n' + RULE, at="model extra"),
    Case("spec: brackets nested 10,000 deep", "check", "E006", "too deeply",
         "let deep = " + "[" * 10_000 + "]" * 10_000 + "\n" + RULE, at="let deep"),
    Case("spec: a positional argument after a keyword one", "check", "E007", "positional",
         'model extra = local(dtype = float32, "x")\n' + RULE, at="model extra"),
    Case("spec: a misspelled model name", "check", "E101", "unknown name `tuend`",
         RULE.replace("target = tuned", "target = tuend"), at="surgery s"),
    Case("spec: a model declared twice", "check", "E102", "`base` is defined more than once",
         'model base = local("elsewhere")\n' + RULE, at='model base = local("elsewhere'),
    Case("spec: an unknown stdlib module", "check", "E103", "std.nothing",
         "use std.nothing\n" + RULE, at="use std.nothing"),
    Case("spec: an import through a symlink loop", "check", "E103", "loop.act",
         'use "loop.act" as loop\n' + RULE, prepare=_import_through_loop, at='use "loop.act"'),
    Case("spec: lets defined in terms of each other", "check", "E107",
         "`a` is defined in terms of itself: `a` -> `b` -> `a`",
         "let a = b\nlet b = a\n" + RULE.replace("budget = 10%", "budget = a"), at="let b = a"),
    Case("spec: an import cycle", "check", "E104", "import cycle",
         'use "a.act" as a\n' + RULE, prepare=_import_cycle, at='use "a.act"', in_file="b.act"),
    Case("spec: an unknown member of an imported module", "check", "E105",
         "`selectors` has no `nope`",
         "use std.selectors\n" + _with_rule("budget = 10%  channels = selectors.nope"),
         at="surgery s"),
    Case("spec: a let that redefines a module kind", "check", "E106", "builtin name",
         "let attn = mlp\n" + RULE, at="let attn"),
    Case("spec: a misspelled rule field", "check", "E201", "unknown field `bugdet`",
         _with_rule("bugdet = 10%"), at="surgery s"),
    Case("spec: a rule without a budget", "check", "E202", "needs `budget`",
         _with_rule("score = weight_delta"), at="surgery s"),
    Case("spec: a field given twice", "check", "E203", "`budget` is set twice",
         _with_rule("budget = 10%  budget = 5%"), at="surgery s"),
    Case("spec: a budget that is a string", "check", "E204", "expected a budget",
         _with_rule('budget = "ten percent"'), at="surgery s"),
    Case("spec: a budget in gigabytes", "check", "E204", "found a size",
         _with_rule("budget = 5GB"), at="surgery s"),
    Case("spec: a shard size in percent", "check", "E204", "expected a size",
         _with_rule("budget = 10%", "eval = []  shard_size = 10%"), at="surgery s"),
    Case("spec: a corpus where a model belongs", "check", "E204",
         "expected a model, found a corpus `probe`",
         'model extra = probe\n' + RULE, at="model extra"),
    Case("spec: a budget over 100 %", "check", "E205", "got 150%",
         _with_rule("budget = 150%"), at="surgery s"),
    Case("spec: a negative lambda", "check", "E205", "`lambda` must be in [0, 1]",
         _with_rule("budget = 10%  lambda = -0.5"), at="surgery s"),
    Case("spec: a lambda too large for a float", "check", "E205", "got inf",
         _with_rule("budget = 10%  lambda = 1e999"), at="surgery s"),
    Case("spec: a negative seed", "check", "E205", "`seed` must be at least 0",
         _with_rule("budget = 10%", "eval = []  seed = -1"), at="surgery s"),
    Case("spec: an empty layer range", "check", "E205", "empty range 5..2",
         _with_rule("budget = 10%  layers = 5..2"), at="surgery s"),
    Case("spec: a misspelled option", "check", "E206", "unknown normalize `zcore`",
         _with_rule("budget = 10%  normalize = zcore"), at="surgery s"),
    Case("spec: an unknown budget scope", "check", "E207", "unknown scope `per banana`",
         _with_rule("budget = 12 per banana"), at="surgery s"),
    Case("spec: a finetune block inside a rule", "check", "E208", "not allowed in a transfer",
         _with_rule("budget = 10%  finetune { data = probe }"), at="surgery s"),
    Case("spec: an unknown corpus function", "check", "E301", "unknown function `jsnl`",
         'corpus extra = jsnl("x.jsonl")\n' + RULE, at="corpus extra"),
    Case("spec: a model function without its path", "check", "E304", "needs `path`",
         "model extra = local()\n" + RULE, at="model extra"),
    Case("spec: a misspelled keyword argument", "check", "E303", "no parameter `dtpye`",
         'model extra = local("x", dtpye = float32)\n' + RULE, at="model extra"),
    Case("spec: a keyword argument given twice", "check", "E305", "`dtype` is given more",
         'model extra = local("x", dtype = float32, dtype = bfloat16)\n' + RULE,
         at="model extra"),
    Case("spec: a surgery applying a model as a recipe", "check", "E401", "is not a recipe",
         'surgery s -> "out" = tuned(x = 1)\n', at="surgery s"),
    Case("spec: a recipe given too many arguments", "check", "E402", "takes 1 arguments",
         "recipe r(target) { target = target  transfer sums from base { budget = 5% }"
         "  eval = [] }\nsurgery s -> \"out\" = r(tuned, base)\n", at="surgery s"),
    Case("spec: two surgeries writing one output", "check", "E403", "the same output",
         RULE + RULE.replace("surgery s", "surgery t"), at="surgery t"),
    Case("spec: a sweep of the target", "check", "E404", "`target` cannot be swept",
         RULE.replace("target = tuned", "target = sweep(tuned, base)"), at="surgery s"),
    Case("spec: a sweep of one value", "check", "E404", "at least two values",
         _with_rule("budget = sweep(5%)"), at="surgery s"),
    Case("spec: a sweep of more values than the limit", "check", "E405", "at most 1,000",
         _with_rule("budget = sweep(" + ", ".join(str(i) for i in range(1, 1202)) + ")"),
         at="surgery s"),
    Case("spec: lets that double to more expansions than the limit", "check", "E405",
         "more than 50,000 references", LETS_THAT_DOUBLE
         + _with_rule("budget = 10%  channels = a19"), at="let a2 ="),
    Case("spec: a file over 256 KiB", "check", "E405", "at most 262,144",
         RULE + "#" * (1 << 18) + "\n"),
    Case("spec: bytes that are not UTF-8", "check", "E005", "not valid UTF-8",
         prepare=_spec_bytes(b'model m = local("\xff\xfe")\n')),
    Case("spec: a directory", "check", "E005", "Is a directory",
         prepare=_spec_is(lambda path: path.mkdir())),
    Case("spec: a symbolic link to itself", "check", "E005", "symbolic links",
         prepare=_spec_is(_self_link)),
    Case("spec: a file that does not exist", "check", "E005", "No such file",
         prepare=_spec_is(lambda path: None)),
    Case("spec: a character device", "check", "E005", "/dev/zero",
         prepare=_spec_is_a_device),
    # mistakes only the models reveal, found by the planner
    Case("spec: layers past the model's last", "plan", "E501", "past the model's 2 layers",
         _with_rule("budget = 10%  layers = 10..20"), at="surgery s"),
    Case("spec: a module glob that matches nothing", "plan", "E501", "matches no module",
         _with_rule('budget = 10%  channels = module("nothing.*")'), at="surgery s"),
    Case("spec: a count budget over the channels there are", "plan", "E501",
         "asks for 100000 channels", _with_rule("budget = 100000"), at="surgery s"),
    Case("spec: exclusions that leave nothing", "plan", "E501", "leave nothing to select",
         _with_rule("budget = 10%  exclude = all"), at="surgery s"),
]


# ---- models ------------------------------------------------------------------------------------


def _config(change: Callable[[dict], None], model: str = "tuned") -> Callable[[World], None]:
    def prepare(world: World) -> None:
        edit_json(world.inputs / model / "config.json", change)
    return prepare


def _header(change: Callable[[dict], None]) -> Callable[[World], None]:
    def prepare(world: World) -> None:
        edit_safetensors_header(world.inputs / "base" / "model.safetensors", change)
    return prepare


def _truncated_weights(world: World) -> None:
    weights = world.inputs / "base" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])


def _dtype_list(header: dict) -> None:
    header[first_tensor(header)]["dtype"] = ["F32"]


def _offsets_past_the_end(header: dict) -> None:
    start, end = header[first_tensor(header)]["data_offsets"]
    header[first_tensor(header)]["data_offsets"] = [start, end + 10**9]


def _shape_lies(header: dict) -> None:
    header[first_tensor(header)]["shape"] = [d * 2 for d in header[first_tensor(header)]["shape"]]


def _donor_missing_a_tensor(world: World) -> None:
    edit_tensors(world.inputs / "base" / "model.safetensors",
                 lambda tensors: tensors.pop("model.layers.1.mlp.up_proj.weight"))


def _integer_donor_tensor(world: World) -> None:
    def to_integers(tensors: dict) -> None:
        name = "model.layers.0.mlp.up_proj.weight"
        tensors[name] = (tensors[name] * 100).int()
    edit_tensors(world.inputs / "base" / "model.safetensors", to_integers)


def _infinite_target_weight(world: World) -> None:
    def poison(tensors: dict) -> None:
        tensors["model.layers.1.self_attn.v_proj.weight"][0, 0] = float("inf")
    edit_tensors(world.inputs / "tuned" / "model.safetensors", poison)


def _wider_donor(world: World) -> None:
    world.use_model("base", save_other_model(world, "wide", intermediate_size=128))


def _gpt2_donor(world: World) -> None:
    world.use_model("base", save_other_model(world, "gpt2", model_type="gpt2"))


def _pickle_weights(world: World) -> None:
    import torch
    from safetensors.torch import load_file

    directory = world.inputs / "base"
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()


class _Payload:
    """Unpickled, it would run a shell command (weights-only loading must refuse it)."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _malicious_pickle(world: World) -> None:
    directory = world.inputs / "base"
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": _Payload()}))
    world.allow_pickle("base")


def _index_to_a_missing_shard(world: World) -> None:
    directory = world.inputs / "base"
    header, _ = safetensors_parts(directory / "model.safetensors")
    names = sorted(n for n in header if n != "__metadata__")
    (directory / "model.safetensors").rename(directory / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {
        n: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, n in enumerate(names)}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def _rename(relative: str, name: str) -> Callable[[World], None]:
    def prepare(world: World) -> None:
        path = world.inputs / relative
        path.rename(path.with_name(name))
    return prepare


MODEL_CASES = [
    Case("model: a directory that does not exist", "plan", "E501", "no config.json",
         prepare=lambda w: w.use_model("base", w.inputs / "nowhere"), at="model base"),
    Case("model: a path that is a file", "plan", "E501", "no config.json",
         prepare=lambda w: w.use_model("base", w.inputs / "probe.jsonl"), at="model base"),
    Case("model: no config.json", "plan", "E501", "no config.json",
         prepare=_remove("tuned/config.json"), at="model tuned"),
    Case("model: config.json is a directory", "plan", "E501", "config.json",
         prepare=_replace_by("tuned/config.json", Path.mkdir), at="model tuned"),
    Case("model: config.json is not JSON", "plan", "E501", "is not valid JSON",
         prepare=_write("tuned/config.json", "{ this is not json"), at="model tuned"),
    Case("model: config.json is a JSON string", "plan", "E501", "config.json",
         prepare=_write("tuned/config.json", '"llama"'), at="model tuned"),
    Case("model: a layer count that is a string", "plan", "E501",
         "`num_hidden_layers` is 'two', not an integer",
         prepare=_config(lambda c: c.update(num_hidden_layers="two")), at="model tuned"),
    Case("model: a million layers", "plan", "E501", "`num_hidden_layers` is 1,000,000",
         prepare=_config(lambda c: c.update(num_hidden_layers=1_000_000)), at="model tuned"),
    Case("model: a negative hidden size", "plan", "E501", "hidden_size",
         prepare=_config(lambda c: c.update(hidden_size=-32)), at="model tuned"),
    Case("model: an unknown model_type", "plan", "E501", "does not know the model type",
         prepare=_config(lambda c: c.update(model_type="no_such_architecture")),
         at="model tuned"),
    Case("model: truncated safetensors", "plan", "E501", "is truncated",
         prepare=_truncated_weights, at="model base"),
    Case("model: a safetensors header whose dtype is a list", "plan", "E501",
         "corrupt safetensors header", prepare=_header(_dtype_list), at="model base"),
    Case("model: a safetensors header pointing past the end of the file", "plan", "E501",
         "corrupt safetensors header", prepare=_header(_offsets_past_the_end),
         at="model base"),
    Case("model: a safetensors header whose shapes lie", "plan", "E501",
         "corrupt safetensors header", prepare=_header(_shape_lies), at="model base"),
    Case("model: an index naming a shard that is missing", "plan", "E501",
         "model-00002-of-00002.safetensors", prepare=_index_to_a_missing_shard,
         at="model base"),
    Case("model: shards without their index", "plan", "E501", "model.safetensors.index.json",
         prepare=_rename("base/model.safetensors", "model-00001-of-00002.safetensors"),
         at="model base"),
    Case("model: weights that are a FIFO", "plan", "E501", "not a regular file",
         prepare=_replace_by("base/model.safetensors", os.mkfifo), at="model base"),
    Case("model: pickle weights without allow_pickle", "plan", "E501", "holds only pickle",
         prepare=_pickle_weights, at="model base"),
    Case("model: a donor missing a tensor", "plan", "E501", "is missing from",
         prepare=_donor_missing_a_tensor, at="surgery s"),
    Case("model: a donor tensor of integers", "run", "E502",
         "tensor model.layers.0.mlp.up_proj.weight holds int32 values",
         prepare=_integer_donor_tensor, at="surgery s"),  # the transfer reads it
    Case("model: a donor of another width", "plan", "E501", "128 vs 64 channels",
         prepare=_wider_donor, at="surgery s"),
    Case("model: a donor of another architecture", "plan", "E501",
         "base is a gpt2 model but tuned is a llama model", prepare=_gpt2_donor,
         at="surgery s"),
    Case("model: no weights", "run", "E501", "has a config but no safetensors weights",
         prepare=_remove("base/model.safetensors"), at="model base"),
    Case("model: a malicious pickle under allow_pickle", "run", "E502",
         "holds objects other than tensors", prepare=_malicious_pickle, at="model base"),
    Case("model: a target with an infinite weight", "run", "E502",
         "NaN/Inf values in tensor model.layers.1.self_attn.v_proj.weight",
         prepare=_infinite_target_weight, at="model tuned"),
]


# ---- tokenizers --------------------------------------------------------------------------------


def _no_tokenizer_files(world: World) -> None:
    for model in ("base", "tuned"):
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (world.inputs / model / name).unlink()


def _tokenizer_beyond_the_embedding(world: World) -> None:
    """A tokenizer of 200 more words than the models' embedding has rows, and a probe that
    uses them."""
    save_word_tokenizer(WORDS + [f"w{i}" for i in range(200)],
                        world.inputs / "base", world.inputs / "tuned")
    (world.inputs / "probe.jsonl").write_text(
        json.dumps({"q": "w150 plus 1 is", "a": "w199"}) + "\n")


def _donor_without_a_probe_word(world: World) -> None:
    donor = Path(shutil.copytree(world.inputs / "base", world.inputs / "other"))
    save_word_tokenizer([w for w in WORDS if w != "plus"], donor)
    world.use_model("base", donor)


TOKENIZER_CASES = [
    Case("tokenizer: tokenizer.json is not JSON", "plan", "E501", "cannot load the tokenizer",
         prepare=_write("tuned/tokenizer.json", "{ broken"), at="model tuned"),
    Case("tokenizer: tokenizer.json is a directory", "plan", "E501",
         "cannot load the tokenizer", prepare=_replace_by("tuned/tokenizer.json", Path.mkdir),
         at="model tuned"),
    Case("tokenizer: tokenizer_config.json is a JSON list", "plan", "E501",
         "cannot load the tokenizer", prepare=_write("tuned/tokenizer_config.json", "[1, 2]"),
         at="model tuned"),
    Case("tokenizer: tokenizer.json without its added_tokens", "plan", "E501",
         "cannot load the tokenizer",
         prepare=lambda w: edit_json(w.inputs / "tuned" / "tokenizer.json",
                                     lambda t: t.pop("added_tokens")),
         at="model tuned"),
    Case("tokenizer: no tokenizer files in either model", "run", "E502",
         "cannot load the tokenizer", prepare=_no_tokenizer_files, at="ability sums"),
    Case("tokenizer: token ids beyond the model's embedding", "run", "E502",
         "holds token id", prepare=_tokenizer_beyond_the_embedding, at="ability sums"),
    Case("tokenizer: a donor whose vocabulary lacks a probe word", "run", "E502",
         "map probe.jsonl to different token ids", prepare=_donor_without_a_probe_word,
         at="ability sums"),
]


# ---- corpora -----------------------------------------------------------------------------------


def _probe(content: str | bytes) -> Callable[[World], None]:
    return _write("probe.jsonl", content)


def _bad_third_line(world: World) -> None:
    lines = (world.inputs / "probe.jsonl").read_text().splitlines()
    lines[2] = "{oops"
    (world.inputs / "probe.jsonl").write_text("\n".join(lines) + "\n")


CORPUS_CASES = [
    Case("corpus: a file that does not exist", "plan", "E501", "probe.jsonl: not found",
         prepare=_remove("probe.jsonl"), at="ability sums"),
    Case("corpus: an empty file", "plan", "E501", "holds no record", prepare=_probe("")),
    Case("corpus: a file of blank lines", "plan", "E501", "holds no document",
         _with_rule("budget = 10%  contrast = 0.5"),
         prepare=_write("text.txt", "\n  \n\n")),
    Case("corpus: a line that is not JSON", "plan", "E501", "probe.jsonl:3: not valid JSON",
         prepare=_bad_third_line),
    Case("corpus: a line that is a JSON list", "plan", "E501", "expected a JSON object",
         prepare=_probe('["1 plus 1 is", "2"]\n')),
    Case("corpus: records without the scored field", "plan", "E501",
         "field 'a' of the template '{q} {a}' is missing",
         prepare=_probe('{"q": "1 plus 1 is"}\n' * 4)),
    Case("corpus: bytes that are not UTF-8", "plan", "E501", "is not UTF-8 text",
         prepare=_probe(b'{"q": "1 plus \xff is", "a": "2"}\n')),
    Case("corpus: a directory", "plan", "E501", "probe.jsonl is a directory",
         prepare=_replace_by("probe.jsonl", Path.mkdir)),
    Case("corpus: a FIFO", "plan", "E501", "probe.jsonl is not a regular file",
         prepare=_replace_by("probe.jsonl", os.mkfifo)),
    Case("corpus: a symbolic link to itself", "plan", "E205", "symbolic link loop",
         prepare=_replace_by("probe.jsonl", _self_link), at="corpus probe"),
    Case("corpus: eval records without the answer field", "plan", "E501",
         "eval.jsonl:1: field 'a' of the template '{q} {a}' is missing",
         _with_rule("budget = 10%", "eval = [sums]"),
         prepare=_write("eval.jsonl", '{"q": "1 plus 1 is"}\n' * 4)),
    Case("corpus: every scored answer empty", "run", "E502", "0 scored tokens",
         prepare=_probe('{"q": "1 plus 1 is", "a": ""}\n' * 8), at="ability sums"),
]


# ---- outputs -----------------------------------------------------------------------------------


def _output(path: str) -> Callable[[World], None]:
    def prepare(world: World) -> None:
        world.edit_spec('-> "out"', f'-> "{path}"')
    return prepare


def _output_exists(make: Callable[[Path], None]) -> Callable[[World], None]:
    def prepare(world: World) -> None:
        make(world.root / "out")
    return prepare


def _dangling_link_elsewhere(path: Path) -> None:
    """``out`` -> ``elsewhere/x``, which does not exist: nothing may be written there."""
    (path.parent / "elsewhere").mkdir()
    path.symlink_to(path.parent / "elsewhere" / "x")


def _output_under_a_file(world: World) -> None:
    (world.root / "notes.txt").write_text("a file\n")
    world.edit_spec('-> "out"', '-> "notes.txt/out"')


def _lock_is_a_link_to_an_input(world: World) -> None:
    (world.root / ".out.lock").symlink_to(world.inputs / "probe.jsonl")


def _unwritable_output_parent(world: World) -> None:
    (world.root / "locked").mkdir(mode=0o500)
    world.edit_spec('-> "out"', '-> "locked/out"')


def mount_tmpfs(world: World, directory: Path, size: str) -> None:
    """Run actc with a tmpfs of ``size`` at ``directory`` (an empty directory here), and
    keep what it leaves there."""
    directory.mkdir(parents=True, exist_ok=True)
    world.namespace = [f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(directory))}"]
    world.mounted = directory


def mount_read_only(world: World, directory: Path) -> None:
    """Run actc with ``directory`` bind-mounted read-only over itself."""
    directory.mkdir(parents=True, exist_ok=True)
    quoted = shlex.quote(str(directory))
    world.namespace = [f"mount --bind {quoted} {quoted}", f"mount -o remount,bind,ro {quoted}"]


def _read_only_output_parent(world: World) -> None:
    world.edit_spec('-> "out"', '-> "ro/out"')
    mount_read_only(world, world.root / "ro")


def _full_output_filesystem(world: World) -> None:
    world.edit_spec('-> "out"', '-> "disk/out"')
    mount_tmpfs(world, world.root / "disk", "48k")


@cache
def namespaces_work() -> bool:
    """Whether an unprivileged user and mount namespace can mount a tmpfs here."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=30, check=False)
    return probe.returncode == 0


NEEDS_NAMESPACES = (pytest.mark.skipif("not namespaces_work()",
                                       reason="needs unprivileged user and mount namespaces"),)
NOT_AS_ROOT = (pytest.mark.skipif(AS_ROOT, reason="root writes through permission bits"),)


OUTPUT_CASES = [
    Case("output: the spec file itself", "plan", "E501", "it is the spec",
         prepare=_output("spec.act"), at="surgery s"),
    Case("output: a symbolic link to the target", "plan", "E501", "it is the model `tuned`",
         prepare=_output_exists(lambda path: path.symlink_to(path.parent / "inputs/tuned")),
         at="surgery s"),
    Case("output: a dangling symbolic link into the target", "plan", "E501",
         "refusing to write the output",
         prepare=_output_exists(lambda path: path.symlink_to(path.parent / "inputs/tuned/x")),
         at="surgery s"),
    Case("output: a dangling symbolic link elsewhere", "run", "E501", "already exists",
         prepare=_output_exists(_dangling_link_elsewhere), at="surgery s"),
    Case("output: an existing regular file", "run", "E501", "already exists",
         prepare=_output_exists(lambda path: path.write_text("my notes\n")), at="surgery s"),
    Case("output: a path in /proc", "run", "E501", "cannot create the lock file",
         prepare=_output("/proc/actc-out"), at="surgery s"),
    Case("output: its lock file is a symbolic link to an input", "run", "E501",
         "cannot create the lock file", prepare=_lock_is_a_link_to_an_input, at="surgery s"),
    Case("output: a path under a regular file", "run", "E501", "notes.txt",
         prepare=_output_under_a_file, at="surgery s"),
    Case("output: a parent directory without write permission", "run", "E501",
         "cannot create the lock file", prepare=_unwritable_output_parent, at="surgery s",
         marks=NOT_AS_ROOT),
    Case("output: on a read-only filesystem", "run", "E501", "Read-only file system",
         prepare=_read_only_output_parent, at="surgery s", marks=NEEDS_NAMESPACES),
    Case("output: on a full filesystem", "run", "E502", "No space left",
         prepare=_full_output_filesystem, at="surgery s", marks=NEEDS_NAMESPACES),
]


# ---- the environment ---------------------------------------------------------------------------


def _cache_env(path: Callable[[World], Path | str]) -> Callable[[World], None]:
    def prepare(world: World) -> None:
        world.env["ACTLANG_CACHE_DIR"] = str(path(world))
    return prepare


def _cache_is(make: Callable[[Path], None]) -> Callable[[World], None]:
    def prepare(world: World) -> None:
        make(world.cache)
    return prepare


def _cache_under_a_file(world: World) -> Path:
    (world.root / "notes.txt").write_text("a file\n")
    return world.root / "notes.txt" / "cache"


def _cache_stats_is_a_file(world: World) -> None:
    world.cache.mkdir()
    (world.cache / "stats").write_text("not a directory\n")


def _default_cache_in_unusable_home(world: World) -> None:
    del world.env["ACTLANG_CACHE_DIR"]
    world.env.pop("XDG_CACHE_HOME", None)
    world.env["HOME"] = "/proc/actlang-home"


def _file_size_limit(limit: int) -> Callable[[World], None]:
    def prepare(world: World) -> None:
        world.file_size_limit = limit
    return prepare


def _output_locked_by_another_run(world: World) -> None:
    lock = os.open(world.root / ".out.lock", os.O_RDWR | os.O_CREAT, 0o644)
    world.held.append(lock)
    os.write(lock, f"{os.getpid()}\n".encode())
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


ENVIRONMENT_CASES = [
    Case("environment: another run holds the output's lock", "run", "E501",
         "is in use by another actc run", prepare=_output_locked_by_another_run,
         at="surgery s"),
    Case("environment: the cache is a regular file", "run", "E502", "cache",
         prepare=_cache_is(lambda path: path.write_text("not a directory\n"))),
    Case("environment: the cache is a FIFO", "run", "E502", "cache",
         prepare=_cache_is(os.mkfifo)),
    Case("environment: the cache lies under a regular file", "run", "E502", "cache",
         prepare=_cache_env(_cache_under_a_file)),
    Case("environment: the cache's stats folder is a file", "run", "E502", "stats",
         prepare=_cache_stats_is_a_file),
    Case("environment: the default cache under an unusable home", "run", "E502",
         "/proc/actlang-home", prepare=_default_cache_in_unusable_home),
    Case("environment: a cache without write permission", "run", "E502", "Permission denied",
         prepare=_cache_is(lambda path: path.mkdir(mode=0o500)),
         marks=NOT_AS_ROOT),
    Case("environment: a read-only cache", "run", "E502", "Read-only file system",
         prepare=lambda world: mount_read_only(world, world.cache),
         marks=NEEDS_NAMESPACES),
    Case("environment: a full cache filesystem", "run", "E502", "No space left",
         prepare=lambda world: mount_tmpfs(world, world.cache, "8k"),
         marks=NEEDS_NAMESPACES),
    Case("environment: a file size limit the statistics exceed", "run", "E502", "too large",
         prepare=_file_size_limit(16_000)),
    Case("environment: a file size limit the output exceeds", "run", "E502", "too large",
         prepare=_file_size_limit(40_000), at="surgery s"),
]

CASES = [*SPEC_CASES, *MODEL_CASES, *TOKENIZER_CASES, *CORPUS_CASES, *OUTPUT_CASES,
         *ENVIRONMENT_CASES]


# ---- running a case ----------------------------------------------------------------------------


def snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Everything under ``root`` but ``skip``: a file's sha256, a link's target, or its kind."""
    found = {}
    for directory, subdirectories, files in os.walk(root):
        here = Path(directory)
        subdirectories[:] = [d for d in subdirectories if here / d != skip]
        for name in [*subdirectories, *files]:
            path = here / name
            if path == skip:
                continue
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[str(path)] = f"a link to {os.readlink(path)}"
            elif stat.S_ISREG(mode):
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[str(path)] = "a directory" if stat.S_ISDIR(mode) else "special"
    return found


def cache_problems(cache_dir: Path) -> list[str]:
    """Temporaries and partial entries (an entry without its checksum or failing it, a
    checksum without its entry) in a cache directory."""
    if cache_dir.is_symlink() or not cache_dir.is_dir():
        return []
    problems = [f"a temporary: {path}" for path in sorted(cache_dir.rglob("*"))
                if TEMPORARY.match(path.name)]
    for path in sorted(cache_dir.glob("*/*/*")):
        if path.parent.parent.name not in ("stats", "evals") or TEMPORARY.match(path.name):
            continue
        if path.name.endswith(".sha256"):
            if not path.with_name(path.name.removesuffix(".sha256")).exists():
                problems.append(f"a checksum without its entry: {path}")
            continue
        sidecar = path.with_name(path.name + ".sha256")
        if not sidecar.is_file():
            problems.append(f"an entry without its checksum: {path}")
        elif sidecar.read_text().split()[:1] != [hashlib.sha256(path.read_bytes()).hexdigest()]:
            problems.append(f"an entry that fails its checksum: {path}")
    return problems


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def run_actc(world: World, command: str) -> subprocess.CompletedProcess:
    """``actc COMMAND SPEC`` in ``world.root``, stdin closed, within its ``TIMEOUT_S``."""
    actc = shutil.which("actc", path=str(Path(sys.executable).parent))
    assert actc, "actc is not installed next to this Python"
    argv = [actc, command, world.spec_arg]
    if world.namespace is not None:  # mount, run actc, keep what it left on the mount
        keep = ""
        if world.mounted is not None:
            (world.harness / "mounted").mkdir()
            keep = (f"cp -a {shlex.quote(str(world.mounted))}/. "
                    f"{shlex.quote(str(world.harness / 'mounted'))}/; ")
        script = f"set -e; {'; '.join(world.namespace)}; set +e; \"$@\"; status=$?; {keep}" \
                 'exit "$status"'
        argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
                *argv]
    preexec = None if world.file_size_limit is None else _limit_file_size(world.file_size_limit)
    return subprocess.run(argv, cwd=world.root, env=world.env, text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT_S[command],
                          preexec_fn=preexec, check=False)


def line_holding(file: Path, text: str) -> int:
    return next(i for i, line in enumerate(file.read_text().splitlines(), 1) if text in line)


@pytest.mark.parametrize("case", [case.param() for case in CASES])
def test_a_bad_input_is_a_clean_user_error(
        case: Case, pair: Path, tmp_path: Path) -> None:  # noqa: F811  (the fixture)
    root, harness = tmp_path / "work", tmp_path / "harness"
    harness.mkdir()
    shutil.copytree(pair, root / "inputs")
    world = World(root, harness, env={**os.environ, "ACTLANG_CACHE_DIR": str(root / "cache")})
    world.spec.write_text(PRELUDE.format(root=world.inputs) + case.body)
    if case.prepare is not None:
        case.prepare(world)
    line = None if case.at is None else line_holding(root / case.in_file, case.at)
    before = snapshot(root, skip=world.cache)
    try:
        result = run_actc(world, case.command)
    finally:
        for fd in world.held:
            os.close(fd)

    shown = (f"exit status {result.returncode}\n--- stdout\n{result.stdout[-2000:]}\n"
             f"--- stderr\n{result.stderr[-4000:]}")
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert result.returncode == 1, shown
    assert f"error[{case.code}]" in result.stderr, shown
    assert " ".join(case.fragment.split()) in " ".join(result.stderr.split()), shown
    if line is not None:
        assert re.search(rf"(^|/| ){re.escape(case.in_file)}:{line}:\d+", result.stderr,
                         re.MULTILINE), f"not located at {case.in_file}:{line}\n{shown}"
    after = snapshot(root, skip=world.cache)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"changed, appeared or vanished: {changed}\n{shown}"
    assert cache_problems(world.cache) == [], shown
    if world.mounted is not None:
        kept = harness / "mounted"
        if world.mounted == world.cache:
            assert cache_problems(kept) == [], shown
        else:
            left = sorted(str(p.relative_to(kept)) for p in kept.rglob("*"))
            assert left == [], f"left on the output's filesystem: {left}\n{shown}"


KINDS = ("spec", "model", "tokenizer", "corpus", "output", "environment")


def test_the_table_covers_every_kind_of_input() -> None:
    """At least 60 distinct bad inputs, each kind with several, no description twice."""
    counts = {kind: sum(case.id.startswith(f"{kind}: ") for case in CASES) for kind in KINDS}
    assert sum(counts.values()) == len(CASES) >= 60, counts
    assert len({case.id for case in CASES}) == len(CASES), "two cases share a description"
    assert min(counts.values()) >= 6, counts
