"""Benchmark the width of the memorization / influence error bars of every method against Wald's.

    PYTHONPATH=. .venv/bin/python scripts/bench_bounds.py [--delta 0.05 --ratio 0.7]

For a grid of p_in in [0.8, 1], p_out in [0, 0.9] and trials in {250, 500, 1000, 2000, 4000}, with
n_in = round(ratio * t) in-samples, n_out = t - n_in out-samples and the typical counts
(hits = round(p * n)), prints the half-width of each method's interval for p_in - p_out divided by the
Wald half-width z_{1-delta/2} * sqrt(p_in (1 - p_in) / n_in + p_out (1 - p_out) / n_out) (the asymptotic
interval, which guarantees nothing), then the median ratio per method and trial count, the trials each
method needs for Wald's width (ratio^2), and the price of anytime validity over fixed. The anytime
mixture is tuned to each row's trial count (a run planned for t trials, read at t). Goals: fixed median
ratio <= 1.45, anytime <= 2.0.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import norm

from raymem.estimator import bounds
from raymem.estimator.joint_bounds import Plan

P_IN = (0.8, 0.9, 0.95, 0.99, 1.0)
P_OUT = (0.02, 0.2, 0.5, 0.7, 0.9)
TRIALS = (250, 500, 1000, 2000, 4000)
METHODS = ("chernoff", "hoeffding", "fixed", "anytime")
GOALS = {"fixed": 1.45, "anytime": 2.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delta", type=float, default=0.05)
    p.add_argument("--ratio", type=float, default=0.7)
    args = p.parse_args()
    z = norm.ppf(1 - args.delta / 2)
    ratios = {m: {} for m in METHODS}
    seconds = {m: 0.0 for m in METHODS}
    lines = [f"half-width / Wald half-width, delta {args.delta}, subset ratio {args.ratio} "
             f"(n_in = round({args.ratio} t))",
             f"{'trials':>6} {'p_in':>5} {'p_out':>5} {'Wald':>7} " + " ".join(f"{m:>9}" for m in METHODS)]
    for t in TRIALS:
        n_in = round(args.ratio * t)
        n_out = t - n_in
        cells = [(a, b) for a in P_IN for b in P_OUT]
        h_in = np.array([round(a * n_in) for a, _ in cells])
        h_out = np.array([round(b * n_out) for _, b in cells])
        wald = z * np.sqrt(np.array([a * (1 - a) / n_in + b * (1 - b) / n_out for a, b in cells]))
        widths = {}
        for m in METHODS:
            start = time.perf_counter()
            lo, hi = bounds.difference_interval(h_in, n_in, h_out, n_out, args.delta, method=m,
                                                plan=Plan(t, args.ratio))
            seconds[m] += time.perf_counter() - start
            widths[m] = (hi - lo) / 2
            for k, cell in enumerate(cells):
                ratios[m][(t, *cell)] = widths[m][k] / wald[k]
        for k, (a, b) in enumerate(cells):
            lines.append(f"{t:>6} {a:>5} {b:>5} {wald[k]:7.4f} "
                         + " ".join(f"{widths[m][k] / wald[k]:9.2f}" for m in METHODS))
    lines.append("")
    lines.append("median ratio to Wald (trials for Wald's width = ratio^2)")
    lines.append(f"{'trials':>6} " + " ".join(f"{m:>16}" for m in METHODS))
    for t in TRIALS + ("all",):
        row = []
        for m in METHODS:
            values = [r for key, r in ratios[m].items() if t == "all" or key[0] == t]
            med = float(np.median(values))
            row.append(f"{med:6.2f} ({med * med:4.1f}x t)")
        lines.append(f"{t!s:>6} " + " ".join(f"{x:>16}" for x in row))
    lines.append("")
    for m, goal in GOALS.items():
        med = float(np.median(list(ratios[m].values())))
        lines.append(f"goal: {m} median ratio {med:.2f} <= {goal}: {'ok' if med <= goal else 'MISS'}")
    price = [ratios["anytime"][k] / ratios["fixed"][k] for k in ratios["fixed"]]
    med = float(np.median(price))
    lines.append(f"price of anytime validity over fixed: median width ratio {med:.2f} "
                 f"(range {min(price):.2f}-{max(price):.2f}), "
                 f"i.e. {med * med:.2f}x the trials for the same width")
    lines.append("seconds per method (all cells): " + ", ".join(f"{m} {seconds[m]:.2f}" for m in METHODS))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
