#!/usr/bin/env python3
"""Template-seed variance of a sweep run with several template seeds (README, "Template variance").

Reads a results directory's summary.csv and prints, per cell (method, distribution, B) and metric
of the edited model: the per-seed means, their range and standard deviation across seeds, and the
mean standard error over records. Standard library only.

    scripts/template_variance.py results/committed/smollm2-template-seeds-64
"""
import csv
import statistics
import sys
from collections import defaultdict

METRICS = ["ES", "PS", "NS", "S", "EM", "PM", "NM"]


def main(directory):
    cells = defaultdict(dict)
    with open(f"{directory}/summary.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["stage"] != "post" or row["metric"] not in METRICS:
                continue
            key = (row["method"], row["distribution"], int(row["batch_size"]), row["metric"])
            cells[key][int(row["seed"])] = (float(row["mean"]), float(row["stderr"] or "nan"), int(row["n"]))
    print("| cell | metric | per-seed means | range | σ across seeds | s.e. over records |")
    print("|---|---|---|---|---|---|")
    widest = defaultdict(lambda: (0.0, 0.0))
    for (method, dist, b, metric), seeds in sorted(cells.items(), key=lambda kv: (kv[0][:3], METRICS.index(kv[0][3]))):
        means = [seeds[s][0] for s in sorted(seeds)]
        spread, sigma = max(means) - min(means), statistics.stdev(means) if len(means) > 1 else 0.0
        stderr = statistics.mean(seeds[s][1] for s in seeds)  # nan for S (a harmonic mean of means)
        n = seeds[min(seeds)][2]
        widest[metric] = (max(widest[metric][0], spread), max(widest[metric][1], sigma))
        print(f"| {method} {dist} B={b} ({n} records) | {metric} | {' / '.join(f'{m:.1f}' for m in means)} "
              f"| {spread:.1f} | {sigma:.1f} | {'—' if stderr != stderr else f'{stderr:.1f}'} |")
    print()
    print("Largest range (σ) per metric: " + ", ".join(f"{m} {widest[m][0]:.1f} (σ ≤ {widest[m][1]:.1f})" for m in METRICS if m in widest))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/committed/smollm2-template-seeds")
