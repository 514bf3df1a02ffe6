"""Markdown tables of a compare.act run, as the README shows them.

    actc run examples/compare.act --output out/compare
    python examples/results_tables.py out/compare

Reads each output's run_results.json (before/after scores) and report.json (concentration,
precision / recall against the planted ground truth).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(directory: Path) -> list[dict]:
    runs = []
    for results in sorted(directory.rglob("run_results.json")):
        run = json.loads(results.read_text())
        report = results.with_name("report.json")
        run["report"] = json.loads(report.read_text()) if report.is_file() else {}
        runs.append(run)
    return runs


def final(row: dict) -> float | None:
    for column in ("after finetune", "after transfer", "after merge"):
        if column in row:
            return row[column]
    return None


def fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def channels_table(runs: list[dict]) -> str:
    """ACT vs controls: arithmetic and language B after transfer and after fine-tune."""
    lines = ["| seed | budget | score | arithmetic: transfer | + finetune | language B: transfer "
             "| + finetune |", "|---|---|---|---:|---:|---:|---:|"]
    rows = {}
    for run in runs:
        if run["surgery"] not in ("seed0", "seed1"):
            continue
        sweep = run["sweep"]
        key = (run["surgery"], sweep["budget"], sweep["score"])
        abilities = list(run["evals"])
        entry = rows.setdefault(key, {})
        for name, ability in zip(("arith", "lang"), abilities):
            row = run["evals"][ability]
            entry[f"{name}_transfer"] = row.get("after transfer")
            if "after finetune" in row:
                entry[f"{name}_finetune"] = row["after finetune"]
    order = {"2%": 0, "5%": 1, "10%": 2, "20%": 3}
    for (seed, budget, score), e in sorted(rows.items(), key=lambda kv: (kv[0][0],
                                                                        order.get(kv[0][1], 9),
                                                                        kv[0][2])):
        lines.append(f"| {seed[-1]} | {budget} | {score} | {fmt(e.get('arith_transfer'))} | "
                     f"{fmt(e.get('arith_finetune'))} | {fmt(e.get('lang_transfer'))} | "
                     f"{fmt(e.get('lang_finetune'))} |")
    return "\n".join(lines)


def simple_table(runs: list[dict], surgeries: tuple[str, ...]) -> str:
    lines = ["| surgery | point | ability | target | donor | output |", "|---|---|---|---:|---:|---:|"]
    for run in runs:
        if run["surgery"] not in surgeries:
            continue
        point = ",".join(f"{k}={v}" for k, v in run["sweep"].items())
        for ability, row in run["evals"].items():
            target = next((v for k, v in row.items() if k.startswith("target")), None)
            donor = next((v for k, v in row.items() if k.startswith("donor")), None)
            lines.append(f"| {run['surgery']} | {point} | {ability} | {fmt(target)} | "
                         f"{fmt(donor)} | {fmt(final(row))} |")
    return "\n".join(lines)


def localization_table(runs: list[dict]) -> str:
    lines = ["| surgery | point | precision | recall | top-1 % mass | top-5 % mass |",
             "|---|---|---:|---:|---:|---:|"]
    for run in runs:
        if run["surgery"] not in ("planted", "decoy", "decoy_weight_delta"):
            continue
        point = ",".join(f"{k}={v}" for k, v in run["sweep"].items())
        report = run["report"]
        for name, truth in report.get("truth", {}).items():
            conc = report.get("scores", {}).get(name, {}).get("concentration") or {}
            lines.append(f"| {run['surgery']} | {point} | {fmt(truth.get('precision'))} | "
                         f"{fmt(truth.get('recall'))} | {fmt(conc.get('0.01'))} | "
                         f"{fmt(conc.get('0.05'))} |")
    return "\n".join(lines)


def planted_b_table(runs: list[dict]) -> str:
    """The damage in the language-B specialist: each score's precision against the damaged
    rows, arithmetic and language B after the transfer and after the masked fine-tune of
    each length, with the transfer (lambda 1) and without it (lambda 0: the fine-tune
    alone)."""
    lines = ["| seed | score | lambda | fine-tune steps | precision | arithmetic: transfer "
             "| + finetune | language B: transfer | + finetune |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        if run["surgery"] not in ("planted_b", "planted_b_s1"):
            continue
        sweep = run["sweep"]
        truth = next(iter(run["report"].get("truth", {}).values()), {})
        arithmetic, language_b = (run["evals"][a] for a in run["evals"])
        lines.append(f"| {1 if run['surgery'].endswith('s1') else 0} | {sweep['score']} | "
                     f"{sweep['lambda']} | {sweep.get('steps', '')} | "
                     f"{fmt(truth.get('precision'))} | "
                     f"{fmt(arithmetic.get('after transfer'))} | "
                     f"{fmt(arithmetic.get('after finetune'))} | "
                     f"{fmt(language_b.get('after transfer'))} | "
                     f"{fmt(language_b.get('after finetune'))} |")
    return "\n".join(lines)


def main() -> None:
    runs = load(Path(sys.argv[1] if len(sys.argv) > 1 else "out/compare"))
    print("### ACT vs controls at equal budgets\n\n" + channels_table(runs))
    print("\n### Granularity, overlap and whole-model baselines\n\n" +
          simple_table(runs, ("granularity", "overlap", "linear", "task_arithmetic", "ties",
                              "dare")))
    print("\n### Localization against the planted ground truth\n\n" + localization_table(runs))
    print("\n" + simple_table(runs, ("planted", "decoy", "decoy_weight_delta")))
    print("\n### Damage in the language-B specialist\n\n" + planted_b_table(runs))


if __name__ == "__main__":
    main()
