#!/usr/bin/env python3
"""Per cell (model, method, distribution, layers, B), each metric's mean in BASE and in every other
run, with its difference from BASE, as a Markdown table; then the largest |ΔS| per run.
   scripts/compare_runs.py BASE RUN [RUN ...] [--metrics S,ES,PS,NS,EM,PM]
e.g. full statistics against `samples: auto` (scripts/stats_auto.sh), f32 against bf16 weights."""
import argparse
import csv
import os


def summary(run_dir, metrics):
    """cell key -> {metric: mean} of the edited models (stage "post")."""
    rows = {}
    with open(os.path.join(run_dir, "summary.csv")) as f:
        for r in csv.DictReader(f):
            if r["stage"] == "post" and r["metric"] in metrics:
                key = (r["model"], r["method"], r["distribution"], r["layers"], int(r["batch_size"]))
                rows.setdefault(key, {})[r["metric"]] = float(r["mean"])
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("runs", nargs="+")
    p.add_argument("--metrics", default="S,ES,PS,NS,EM,PM")
    a = p.parse_args()
    metrics = a.metrics.split(",")
    base = summary(a.base, metrics)
    runs = [(os.path.basename(os.path.normpath(d)), summary(d, metrics)) for d in a.runs]
    print(f"| method | distribution | layers | B | metric | {os.path.basename(os.path.normpath(a.base))} | "
          + " | ".join(f"{name} (Δ)" for name, _ in runs) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(runs))
    worst = {name: 0.0 for name, _ in runs}
    for key in sorted(base):
        for metric in metrics:
            if metric not in base[key]:
                continue
            b = base[key][metric]
            cells = []
            for name, s in runs:
                v = s.get(key, {}).get(metric)
                cells.append("—" if v is None else f"{v:.1f} ({v - b:+.1f})")
                if v is not None and metric == "S":
                    worst[name] = max(worst[name], abs(v - b))
            print(f"| {key[1]} | {key[2]} | {key[3]} | {key[4]} | {metric} | {b:.1f} | " + " | ".join(cells) + " |")
    print()
    print("largest |ΔS| against the base: " + ", ".join(f"{name}: {w:.2f}" for name, w in worst.items()))


if __name__ == "__main__":
    main()
