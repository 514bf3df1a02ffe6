"""Helpers shared by the benchmarks: machine description and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"


#: Sixteen plain English sentences: the probe of the real-model benches.
PROBE = [
    "The river flows past the old mill and into the quiet valley below.",
    "She opened the window to let the cool morning air into the kitchen.",
    "Most birds build their nests in spring, when food is easy to find.",
    "The library closes at six, so we should leave before it gets dark.",
    "A good teacher explains a hard idea with a simple example.",
    "He wrote a long letter to his grandmother about the summer trip.",
    "Bread rises because yeast turns sugar into gas inside the dough.",
    "The train was late, and the station filled with tired travellers.",
    "Water boils at a lower temperature high up in the mountains.",
    "They planted tomatoes, beans and a row of sunflowers by the fence.",
    "The museum shows paintings from many centuries and countries.",
    "Children learn to read by listening to stories every evening.",
    "The doctor asked him to rest and drink plenty of water.",
    "Snow covered the roofs, and the streets were silent all night.",
    "Our team finished the project a week earlier than planned.",
    "The old bridge was repaired with stone from the nearby hills.",
]

def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- bench:NAME -->`` markers."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nMeasured by the scripts in `bench/`; each rewrites its own section.\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)


@dataclass
class Measured:
    """What one finished command cost: CPU seconds (user + system, the kernel's accounting),
    and the peaks of its private memory (``RssAnon``) and resident set (``VmHWM``), bytes."""

    cpu: float
    private: int
    rss: int


def measure(command: list[str], env: dict[str, str], cwd: Path) -> Measured:
    """Run ``command`` to its end and measure it (its memory sampled every 10 ms); exit with
    its stderr if it fails."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    private = rss = 0
    done = threading.Event()

    def sample() -> None:
        # VmHWM, not ru_maxrss: a child's ru_maxrss counts the resident set it had when it
        # was forked from the bench, before it ran the command (torch, the models made)
        nonlocal private, rss
        status = Path(f"/proc/{process.pid}/status")
        while not done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        private = max(private, int(line.split()[1]) * 1024)
                    elif line.startswith("VmHWM:"):
                        rss = max(rss, int(line.split()[1]) * 1024)
            except OSError:
                return
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = process.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    process.stderr.close()  # type: ignore[union-attr]
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    return Measured(usage.ru_utime + usage.ru_stime, private, rss)
