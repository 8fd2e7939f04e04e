"""How fast `raymem serve` answers on a big run: a synthetic run ingested, served on a free port, pages fetched.

    PYTHONPATH=. python scripts/bench_serve.py [--n-train 50000] [--n-test 10000] [--trials 64] [--dir DIR]

Prints one row per request: the first one builds the run's view from the trial log (the pair matrix,
n_train x n_test float32), the others are what a user waits for once it is held: the memorization page's first
screen (sorted by estimate, 50 rows), a test example's page (its top influencers) and a training example's page;
q-values at an FDR cost one pairs read of the whole matrix the first time (then they are held until trials land).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from raymem import api


def synthetic(n_train: int, n_test: int, trials: int, seed: int = 0):
    """Random 70% subsets; correctness by per-example rates, a few examples memorized."""
    rng = np.random.default_rng(seed)
    m = int(round(0.7 * n_train))
    masks = np.zeros((trials, n_train), dtype=bool)
    for k in range(trials):
        masks[k, rng.permutation(n_train)[:m]] = True
    p_out = rng.uniform(0.3, 0.95, n_train).astype(np.float32)
    p_in = np.where(rng.random(n_train) < 0.05, 0.97, p_out).astype(np.float32)
    train_correct = rng.random((trials, n_train), dtype=np.float32) < np.where(masks, p_in, p_out)
    test_correct = rng.random((trials, n_test), dtype=np.float32) < rng.uniform(0.3, 0.95, n_test).astype(np.float32)
    return masks, train_correct, test_correct


def fetch(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=3600) as response:
        size = len(response.read())
    return time.perf_counter() - started, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where to ingest the run (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-serve-"))
    started = time.perf_counter()
    run = api.ingest(str(root / "run"), *synthetic(args.n_train, args.n_test, args.trials))
    print(f"ingested {args.trials} trials of {args.n_train} x {args.n_test} in {time.perf_counter() - started:.1f} s")
    explorer = api.serve([run.uri], port=0)
    base = explorer.url.rstrip("/")
    requests = [
        ("first request: build the view from the log", "/run/0/api/status"),
        ("memorization, first screen (cold sort)", "/run/0/memorization"),
        ("memorization, first screen", "/run/0/memorization"),
        ("memorization, page 10", "/run/0/memorization?page=10"),
        ("test example page", f"/run/0/test/{args.n_test // 2}"),
        ("training example page", f"/run/0/train/{args.n_train // 2}"),
        ("test example page with q-values at FDR 0.1 (cold)", f"/run/0/test/{args.n_test // 3}?fdr=0.1"),
        ("test example page with q-values at FDR 0.1", f"/run/0/test/{args.n_test // 4}?fdr=0.1"),
        ("overview (with convergence curves, cold)", "/run/0/"),
        ("overview", "/run/0/"),
    ]
    rows = [(what, *fetch(base + path)) for what, path in requests]
    explorer.close()
    width = max(len(what) for what, _, _ in rows)
    print(f"{'request':<{width}}  {'seconds':>8}  {'bytes':>9}")
    for what, seconds, size in rows:
        print(f"{what:<{width}}  {seconds:8.3f}  {size:9d}")


if __name__ == "__main__":
    main()
