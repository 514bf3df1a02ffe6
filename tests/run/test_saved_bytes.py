"""Files actlang writes are the same bytes in every process (safetensors' own writer orders
metadata keys by a per-process hash, so two runs of one spec gave different mask files)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

_WRITE = textwrap.dedent("""
    import sys, torch
    from actlang.arch.adapters import ChannelSpace
    from actlang.run.mask import ChannelMask
    from actlang.run.stats import ChannelStats
    out = sys.argv[1]
    space = ChannelSpace.from_config({
        "model_type": "llama", "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "vocab_size": 32})
    up = "layers.1.mlp.up"
    mask = ChannelMask.from_channels(space, {up: torch.arange(16) % 3 == 0},
                                     meta={"budget": "5%", "score": "paired_absdiff", "z": 1})
    mask.save(out + "/mask.safetensors")
    stats = ChannelStats.zeros("paired", [space[up]], meta={"model": "a", "corpus": "b"})
    stats.save(out + "/stats.safetensors")
""")


def _write(directory: Path) -> dict[str, bytes]:
    directory.mkdir()
    subprocess.run([sys.executable, "-c", _WRITE, str(directory)], check=True, timeout=120)
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_masks_and_statistics_are_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    runs = [_write(tmp_path / f"run{i}") for i in range(3)]
    assert set(runs[0]) == {"mask.safetensors", "mask.json", "stats.safetensors"}
    assert runs[0] == runs[1] == runs[2]
