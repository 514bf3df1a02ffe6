"""Fuzzing the front end at scale (issue 12): at least 10,000 generated specs.

The generators of ``tests/lang/fuzzing.py`` — well-formed specs, mutated real specs, raw
text and bytes — run through the checker (from a file, with neighbours to import) and the
parser under the invariants of ``tests/lang/test_fuzz.py``. Here a failure does not stop the
run: each crash (an exception other than the parser's ``DiagnosticError``, or a broken
invariant) is counted by where it was raised, with the smallest input that raised it. The
slowest example is reported too: no spec should take more than a couple of seconds.

    .venv/bin/python bench/bench_fuzz.py [--count 10000] [--seed 0] [--write]
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import sys
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import machine, write_section  # noqa: E402
from tests.lang import fuzzing  # noqa: E402

#: Each generator's share of the examples.
GENERATORS = {"well-formed": (fuzzing.well_formed_specs, 0.3),
              "mutated": (fuzzing.mutated_specs(), 0.5),
              "raw": (fuzzing.raw_specs, 0.2)}


#: How many of the slowest examples are timed again at the end (the machine may be shared:
#: one slow run can be another process's doing; the best of three reruns cannot).
RETIMED = 5


class Tally:
    """What the examples did: diagnostic codes, crashes by place, the slowest examples."""

    def __init__(self) -> None:
        self.examples = collections.Counter()  # generator → examples run
        self.checked = 0  # specs that checked without an error
        self.codes = collections.Counter()
        self.crashes: dict[str, dict] = {}  # "Type in file:line (function)" → count, input
        self.seconds = 0.0
        self.slowest: list[tuple[float, int, str, bytes]] = []  # a heap of RETIMED

    def run(self, generator: str, main: bytes) -> None:
        start = time.perf_counter()
        try:
            diagnostics = fuzzing.front_end(main)
        except Exception as error:  # noqa: BLE001 — counted, the run goes on
            self._crash(error, main)
        else:
            errors = {d.code for d in diagnostics if d.severity == "error"}
            self.checked += not errors
            self.codes.update(errors)
        elapsed = time.perf_counter() - start
        self.examples[generator] += 1
        self.seconds += elapsed
        entry = (elapsed, sum(self.examples.values()), generator, main)
        (heapq.heappush if len(self.slowest) < RETIMED else heapq.heappushpop)(self.slowest, entry)

    def retimed_slowest(self) -> tuple[float, str, bytes]:
        """The slowest example by the best of three reruns of the slowest few."""
        def best(main: bytes) -> float:
            times = []
            for _ in range(3):
                start = time.perf_counter()
                try:
                    fuzzing.front_end(main)
                except Exception:  # noqa: BLE001 — a crash was counted already
                    pass
                times.append(time.perf_counter() - start)
            return min(times)

        return max(((best(main), generator, main) for _, _, generator, main in self.slowest),
                   default=(0.0, "", b""))

    def _crash(self, error: Exception, main: bytes) -> None:
        # the innermost frame of actlang's own code says where the crash needs a fix
        frames = traceback.extract_tb(error.__traceback__)
        frame = next((f for f in reversed(frames) if "/actlang/" in f.filename), frames[-1])
        where = (f"{type(error).__name__} in {Path(frame.filename).name}:{frame.lineno} "
                 f"({frame.name})")
        crash = self.crashes.setdefault(where, {"count": 0, "input": main,
                                                "message": str(error)[:200]})
        crash["count"] += 1
        if len(main) < len(crash["input"]):
            crash["input"], crash["message"] = main, str(error)[:200]


def fuzz(tally: Tally, name: str, count: int, random_seed: int) -> None:
    strategy, _ = GENERATORS[name]

    @seed(random_seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(main: bytes) -> None:
        tally.run(name, main)

    one()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="specs in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="record it in BENCHMARKS.md")
    args = parser.parse_args()
    fuzzing.front_end(b"")  # builds the parser: a cost of the first spec, not of any spec
    tally = Tally()
    start = time.perf_counter()
    for name, (_, share) in GENERATORS.items():
        fuzz(tally, name, round(args.count * share), args.seed)
    wall = time.perf_counter() - start
    total = sum(tally.examples.values())
    first_time = max(tally.slowest, default=(0.0,))[0]
    slowest, slowest_generator, slowest_input = tally.retimed_slowest()
    crashes = {where: {"count": c["count"], "message": c["message"],
                       "smallest_input_bytes": len(c["input"]),
                       "smallest_input": repr(c["input"][:4000])}
               for where, c in tally.crashes.items()}
    result = {
        "examples": dict(tally.examples), "total": total,
        "checked_without_error": tally.checked,
        "crashes": sum(c["count"] for c in crashes.values()), "distinct_crashes": crashes,
        "top_codes": dict(tally.codes.most_common(12)),
        "mean_ms": round(1000 * tally.seconds / max(total, 1), 1),
        "slowest_first_run_seconds": round(first_time, 3),
        "slowest_seconds": round(slowest, 3), "slowest_generator": slowest_generator,
        "slowest_input_bytes": len(slowest_input), "slowest_input": repr(slowest_input[:4000]),
        "wall_seconds": round(wall, 1),
    }
    print(json.dumps(result, indent=2))
    if args.write:
        per_generator = ", ".join(f"{n:,} {name}" for name, n in tally.examples.items())
        crash_lines = "\n".join(
            f"- `{where}` x{c['count']}: {c['message'][:100]}; smallest input "
            f"({c['smallest_input_bytes']:,} bytes): `{c['smallest_input'][:100]}`"
            for where, c in crashes.items()) or "- none"
        write_section("fuzz", f"""## Fuzzing the front end (`bench/bench_fuzz.py`)

Machine: {machine()}. {total:,} generated specs ({per_generator}; seed {args.seed}),
each checked from a file next to importable neighbours and parsed, under the invariants of
`tests/lang/test_fuzz.py`: no exception but a diagnostic, every error located, every
diagnostic renderable.

```
specs                        {total:9,d}
checked without an error     {tally.checked:9,d}
crashes                      {result["crashes"]:9,d}
mean per spec                {result["mean_ms"]:9.1f} ms
slowest spec, first run      {first_time:9.3f} s
slowest spec, rerun          {slowest:9.3f} s   ({slowest_generator}, {len(slowest_input):,} bytes; best of 3)
wall time                    {wall:9.1f} s
```

The {RETIMED} slowest first runs are run three times again and the slowest of their best
times is kept: on a shared machine, one slow run can be another process's doing.

Crashes by place (the innermost frame in actlang):
{crash_lines}
""")


if __name__ == "__main__":
    main()
