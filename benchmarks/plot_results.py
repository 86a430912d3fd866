"""PNG plots of train-step CSVs (benchmarks/train_step.py): tokens per second and peak GPU memory against sequence
length, log axes, one line per model, runs that ran out of memory marked where they stopped.

    python benchmarks/plot_results.py benchmarks/results/issue11/causal_train_step.csv --out benchmarks/results/issue11

writes <csv stem>_tokens_per_s.png and <csv stem>_peak_memory.png beside each other in --out (default: the CSV's
folder). Needs matplotlib (`pip install hf-efficient[bench]`).
"""

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

METRICS = {"tokens_per_s": ("tokens per second (train step)", "tokens_per_s"),
           "peak_gib": ("peak GPU memory (GiB)", "peak_memory")}


def read_runs(path: Path) -> tuple[dict[str, list[tuple[int, dict]]], str]:
    """Rows grouped by model label, sorted by length; and a one-line description of the run's machine."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "length" not in rows[0] or "tokens_per_s" not in rows[0]:
        raise SystemExit(f"error: {path} is not a CSV of benchmarks/train_step.py (no length / tokens_per_s columns)")
    runs = defaultdict(list)
    for row in rows:
        runs[row.get("label") or row["model"]].append((int(row["length"]), row))
    machine = sorted({f"{r.get('device_name', '?')}, torch {r.get('torch', '?')}, {r.get('dtype', '')}" for r in rows})
    return {label: sorted(points, key=lambda p: p[0]) for label, points in runs.items()}, "; ".join(machine)


def value(row: dict, field: str) -> float:
    try:
        return float(row.get(field) or "nan")
    except ValueError:
        return math.nan


def plot(path: Path, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, machine = read_runs(path)
    written = []
    for field, (axis_label, suffix) in METRICS.items():
        figure, axes = plt.subplots(figsize=(9, 5.5))
        for label, points in runs.items():
            ok = [(n, value(row, field)) for n, row in points if row["status"] == "ok"]
            ok = [(n, y) for n, y in ok if not math.isnan(y)]
            failed = [n for n, row in points if row["status"] != "ok"]
            line = axes.plot(*zip(*ok, strict=True), marker="o", label=label)[0] if ok else None
            if failed and ok:  # where it stopped (out of memory, timeout): an x at the last measured value
                axes.plot([failed[0]], [ok[-1][1]], marker="x", markersize=10, color=line.get_color(), linestyle="")
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("sequence length (tokens)")
        axes.set_ylabel(axis_label)
        axes.set_title(f"{path.stem}: {axis_label}\n{machine}  (x: stopped there: out of memory or timeout)",
                       fontsize=9)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7, loc="best")
        figure.tight_layout()
        target = out / f"{path.stem}_{suffix}.png"
        figure.savefig(target, dpi=110)
        plt.close(figure)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, nargs="+", help="CSV files written by benchmarks/train_step.py")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: each CSV's folder)")
    args = parser.parse_args(argv)
    for path in args.csv:
        out = args.out or path.parent
        out.mkdir(parents=True, exist_ok=True)
        for target in plot(path, out):
            print(f"written {target}")


if __name__ == "__main__":
    main()
