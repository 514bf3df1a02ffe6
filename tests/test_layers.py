"""The package's layers: imports point down only, and the front end and planner need no torch.

    arch  →  lang  →  compile  →  run  →  zoo  →  cli

``arch`` is the torch-free floor (architecture knowledge, header readers, the registry of the
method's options); the language's checker reads that registry, so ``lang`` stands on it.

Every ``import`` of every module under ``actlang/`` is read (function-level imports too), so
a lazy import cannot hide an arrow that points up.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "actlang"

# Rank of each layer; a module may import its own layer and the layers ranked below it.
LAYERS = {"arch": 0, "lang": 1, "compile": 2, "run": 3, "zoo": 4, "cli": 5}
BASE = {"actlang", "actlang.resources"}  # __version__ and data paths: importable by all


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if module in BASE or parts[0] != "actlang":
        return None
    return parts[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((node.lineno, base))
            # ``from actlang import run`` imports the subpackage
            if base == "actlang":
                found += [(node.lineno, f"actlang.{a.name}") for a in node.names
                          if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()]
    return found


def _back_edges() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _layer(_module_name(path))
        for line, module in _imports(path):
            target = _layer(module)
            if source is None or target is None or target == source:
                continue
            assert source in LAYERS and target in LAYERS, f"unknown layer: {source} or {target}"
            if LAYERS[target] >= LAYERS[source]:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: "
                                f"{source} imports {module} ({target})")
    return problems


def test_imports_point_down_only() -> None:
    assert _back_edges() == []


def test_the_checker_finds_a_back_edge(tmp_path, monkeypatch) -> None:
    """The test above can fail: an upward import planted in a copy of the tree is found."""
    import shutil

    copy = tmp_path / "actlang"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    victim = copy / "arch" / "files.py"
    victim.write_text(victim.read_text() + "\n\ndef _late():\n    from actlang.run import stats\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    assert [p for p in _back_edges() if "arch/files.py" in p]


# -- check and plan without torch ---------------------------------------------------------------

# Hides packages the way a machine without them would: finders report them absent.
_HIDE = """
import sys
from importlib.machinery import PathFinder

HIDDEN = set({hidden!r})


class Hide:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return PathFinder.find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return PathFinder.find_distributions(*args, **kwargs)


sys.meta_path[:] = [Hide if f is PathFinder else f for f in sys.meta_path]
sys.argv = ["actc", *{argv!r}]
from actlang.cli import main
try:
    main()
finally:
    assert not HIDDEN & set(sys.modules), "a hidden package was imported"
"""

_SPEC = """
model base = local("{big}")
model tuned = local("{big}")
corpus probe = lines(["one two three", "four five six"])
ability a {{ probe = probe }}
surgery s -> "out" {{
  target = tuned
  transfer a from base {{ channels = [attn.*, mlp.*]  budget = 1% }}
}}
"""


def _actc(argv: list[str], hidden: set[str], cwd: Path) -> subprocess.CompletedProcess:
    code = _HIDE.format(hidden=sorted(hidden), argv=argv)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def big_config_spec(tmp_path: Path) -> Path:
    """A spec over a 70B-class Llama config with no weights and no tokenizer."""
    big = tmp_path / "llama70b"
    big.mkdir()
    (big / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192,
        "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
        "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
        "tie_word_embeddings": False, "dtype": "bfloat16"}))
    spec = tmp_path / "big.act"
    spec.write_text(textwrap.dedent(_SPEC.format(big=big)))
    return spec


@pytest.mark.parametrize("command", ["check", "plan", "fmt"])
def test_check_and_plan_run_without_torch_and_transformers(big_config_spec: Path,
                                                           command: str) -> None:
    argv = [command, str(big_config_spec)] + (["--check"] if command == "fmt" else [])
    done = _actc(argv, {"torch", "transformers"}, big_config_spec.parent)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    if command != "fmt":
        assert done.returncode == 0, done.stderr
    if command == "plan":
        assert "forward" in done.stdout


def test_plan_counts_tokens_without_torch(tiny_zoo, tmp_path: Path) -> None:
    """With a real tokenizer the plan tokenizes the corpus: transformers (tokenizers only)
    is enough, torch is never imported."""
    model = tiny_zoo.model_path("base")
    spec = tmp_path / "s.act"
    spec.write_text(textwrap.dedent(_SPEC.format(big=model)))
    done = _actc(["plan", "--json", str(spec)], {"torch"}, tmp_path)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["estimates"]["tokens"] > 0 and plan["estimates"]["exact"]
