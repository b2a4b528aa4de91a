#!/usr/bin/env python3
"""The numbers behind the paper's claims, from a batch-size scaling run (e.g.
experiments/smollm2-scaling.yaml), as Markdown:
  1. per method x distribution x B: S, ES, PS, NS of the edited models (mean +- s.e. over the scored
     records), PPL (mean +- s.e. over the measured batches) and DWREL (mean over layers and batches);
  2. EMMET - MEMIT per distribution and B, and spread - single per method and B, on the same scored
     records: ES, PS, NS as paired differences (mean +- s.e. of the per-record differences), S with a
     seeded bootstrap s.e. over records (S is the harmonic mean of the three means), PPL unpaired.
   scripts/claims.py RUN_DIR [--out FILE] [--bootstrap 1000] [--seed 0]"""
import argparse
import csv
import math
import os
import random

SCORES = ["ES", "PS", "NS"]


def harmonic(means):
    return 0.0 if min(means) <= 0 else len(means) / sum(1 / m for m in means)


def mean_se(values):
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def load(run_dir):
    """cell (method, distribution, B) -> metric -> [(case_id, value)] of the edited models, in percent
    where the summaries scale by 100; "unedited" -> the pre-edit rows of the first cell."""
    cells, pre = {}, {}
    first_cell = None
    with open(os.path.join(run_dir, "results.csv")) as f:
        for r in csv.DictReader(f):
            scale = 1.0 if r["metric"] in ("PPL", "DWNORM") else 100.0
            item = (int(r["case_id"]), float(r["value"]) * scale)
            if r["stage"] == "pre":
                first_cell = first_cell or r["cell_id"]
                if r["cell_id"] == first_cell:
                    pre.setdefault(r["metric"], []).append(item)
                continue
            key = (r["method"], r["distribution"], int(r["batch_size"]))
            cells.setdefault(key, {}).setdefault(r["metric"], []).append(item)
    return cells, pre


def fmt(m, se, digits=1):
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}f}" if math.isnan(se) else f"{m:.{digits}f} ± {se:.{digits}f}"


def score_row(metrics):
    means = [mean_se([v for _, v in metrics.get(s, [])]) for s in SCORES]
    s = harmonic([m for m, _ in means]) if all(not math.isnan(m) for m, _ in means) else float("nan")
    ppl = mean_se([v for _, v in metrics.get("PPL", [])])
    dwrel = mean_se([v for _, v in metrics.get("DWREL", [])])
    return [fmt(s, float("nan"))] + [fmt(*m) for m in means] + [fmt(*ppl, 2), fmt(dwrel[0], float("nan"), 2)]


def paired(a, b, rng, resamples):
    """Per score: mean +- s.e. of a - b over the records scored in both; ΔS with a bootstrap s.e."""
    by_case = [(dict(a.get(s, [])), dict(b.get(s, []))) for s in SCORES]
    cases = sorted(set.intersection(*(set(x) & set(y) for x, y in by_case)))
    if not cases:
        return None
    out = [mean_se([x[c] - y[c] for c in cases]) for x, y in by_case]
    s_of = lambda sample, i: harmonic([sum(by_case[k][i][c] for c in sample) / len(sample) for k in range(3)])
    delta_s = s_of(cases, 0) - s_of(cases, 1)
    boots = []
    for _ in range(resamples):
        sample = [cases[rng.randrange(len(cases))] for _ in cases]
        boots.append(s_of(sample, 0) - s_of(sample, 1))
    s_se = mean_se(boots)[1] * math.sqrt(len(boots)) if len(boots) > 1 else float("nan")
    pa, pb = (mean_se([v for _, v in m.get("PPL", [])]) for m in (a, b))
    ppl = (pa[0] - pb[0], math.sqrt(pa[1] ** 2 + pb[1] ** 2)) if not math.isnan(pa[0] + pb[0]) else (float("nan"),) * 2
    return [fmt(delta_s, s_se)] + [fmt(*d) for d in out] + [fmt(*ppl, 2), str(len(cases))]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--out")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    cells, pre = load(a.run)
    rng = random.Random(a.seed)
    methods = sorted({k[0] for k in cells})
    dists = sorted({k[1] for k in cells})
    sizes = sorted({k[2] for k in cells})
    lines = [f"# The paper's claims: numbers from `{os.path.normpath(a.run)}`", "",
             "## Scores (mean ± s.e.; S from the means; PPL over the measured batches; DWREL in % of ‖W₀‖)", "",
             "| method | distribution | B | S | ES | PS | NS | PPL | DWREL |", "|---|---|---|---|---|---|---|---|---|",
             "| unedited | — | — | " + " | ".join(score_row(pre)) + " |"]
    for m in methods:
        for d in dists:
            for b in sizes:
                if (m, d, b) in cells:
                    lines.append(f"| {m} | {d} | {b} | " + " | ".join(score_row(cells[(m, d, b)])) + " |")
    head = "| ΔS | ΔES | ΔPS | ΔNS | ΔPPL | records |"
    comparisons = [("emmet", "memit", [(d, b, (("emmet", d, b), ("memit", d, b))) for d in dists for b in sizes], "distribution"),
                   ("spread", "single", [(m, b, ((m, "spread", b), (m, "single", b))) for m in methods for b in sizes], "method")]
    for left, right, pairs, label in comparisons:
        lines += ["", f"## {left} − {right} (paired over the same records; ΔS ± bootstrap s.e.)", "",
                  f"| {label} | B " + head, "|---|---|---|---|---|---|---|---|"]
        for x, b, (ka, kb) in pairs:
            if ka in cells and kb in cells:
                row = paired(cells[ka], cells[kb], rng, a.bootstrap)
                if row:
                    lines.append(f"| {x} | {b} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
