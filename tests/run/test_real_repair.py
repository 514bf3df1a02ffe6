"""Repairing a real pretrained model through the installed `actc` (slow; CI runs it).

SmolLM2-135M with planted damage and drift (the real zoo): at a budget equal to the number of
damaged rows, `local_absdiff` must find most of them, and the repaired model's perplexity
must come close to copying exactly the damaged rows back (the zoo's oracle).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SPEC = """
use std.real_zoo as real
use std.selectors

surgery repair -> "out" {{
  target = real.planted
  transfer real.english from real.smollm2 {{
    channels = selectors.projections
    score = local_absdiff
    budget = {rows}
    truth = real.truth
  }}
  eval = [real.english]
}}
"""


def test_local_scores_repair_the_planted_real_model(real_zoo, zoo_cache_dir, tmp_path: Path):
    truth = real_zoo.ground_truth()
    rows = truth["n_damage"]
    spec = tmp_path / "repair.act"
    spec.write_text(textwrap.dedent(SPEC.format(rows=rows)))
    actc = Path(sys.executable).with_name("actc")
    result = subprocess.run([str(actc), "run", "--json", str(spec)], cwd=tmp_path, text=True,
                            capture_output=True, timeout=1200,
                            env={**os.environ, "ACTLANG_CACHE_DIR": str(zoo_cache_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    (surgery,) = json.loads(result.stdout)["surgeries"]
    found = json.loads((tmp_path / "out" / "report.json").read_text())["truth"]
    (localization,) = found.values()
    assert localization["recall"] >= 0.85, localization
    repaired = surgery["evals"]["real.english"]["after transfer"]
    oracle = real_zoo.data["oracle"]["planted_restored"]["perplexity"]["english"]
    damaged = surgery["evals"]["real.english"]["target (real.planted)"]
    assert repaired <= 1.10 * oracle < damaged, (repaired, oracle, damaged)
