"""Which files of a model directory hold its weights (no torch: the planner uses this too)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PICKLE_PATTERNS", "has_tokenizer", "pickle_files", "safetensors_files"]

#: Pickle checkpoint files: refused unless a spec allows them (unpickling runs code).
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def safetensors_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def has_tokenizer(directory: Path) -> bool:
    """Whether a model directory holds tokenizer files (a config-only one does not)."""
    return directory.is_dir() and any((directory / name).is_file() for name in
               ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"))


def pickle_files(directory: Path) -> list[Path]:
    """The pickle checkpoint files of ``directory`` (sorted, each once)."""
    return sorted({p for pattern in PICKLE_PATTERNS for p in directory.glob(pattern)})
