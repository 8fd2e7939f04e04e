"""Every read command and its error paths, run many times while other processes load every core: exit codes only.

    .venv/bin/python scripts/stress_exits.py [--reps 20] [--json]

A command that did its work must exit 0 and one refused with an ``error:`` line must exit 2, every time. Native
threads still running while the interpreter finalizes (Arrow pool threads releasing Python buffers,
apache/arrow#49942) abort a process after its work is done, with 134, and only some of the time and mostly under
load, which is why each case runs ``--reps`` times beside one busy loop per core. The run read is an ingested
synthetic run with labels (so ``export`` has what it needs), made in a temporary folder.

Prints a Markdown table (case, runs, exit codes seen); exits 1 when any run exited with another code than its
case's. ``tests/test_exit_codes.py`` runs this file with a few repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RAYMEM = str(Path(sys.executable).parent / "raymem")

#: (case, arguments with {run}, {missing} and {tmp} to fill, the exit code it must give).
CASES = [
    ("status", ["status", "{run}"], 0),
    ("status --json", ["status", "{run}", "--json"], 0),
    ("estimates --out csv", ["estimates", "{run}", "--out", "{tmp}/estimates-{i}.csv"], 0),
    ("pairs --fdr", ["pairs", "{run}", "--fdr", "0.2", "--out", "{tmp}/pairs-{i}.parquet"], 0),
    ("influence", ["influence", "{run}", "--test-index", "6"], 0),
    ("trials", ["trials", "{run}"], 0),
    ("export fz", ["export", "{run}", "--format", "fz", "--out", "{tmp}/fz-{i}.npz"], 0),
    ("figures", ["figures", "{run}", "--out", "{tmp}/figures-{i}"], 0),
    ("compare", ["compare", "{run}", "{run}"], 0),
    ("status: no run", ["status", "{missing}"], 2),
    ("estimates: --delta 0", ["estimates", "{run}", "--delta", "0"], 2),
    ("estimates: --out .txt", ["estimates", "{run}", "--out", "{tmp}/x.txt"], 2),
    ("pairs: --fdr 2", ["pairs", "{run}", "--fdr", "2"], 2),
    ("influence: --test-index -1", ["influence", "{run}", "--test-index", "-1"], 2),
    ("trials: no run", ["trials", "{missing}"], 2),
    ("export: bad format", ["export", "{run}", "--format", "npy", "--out", "{tmp}/bad.npz"], 2),
    ("figures: --out is a file", ["figures", "{run}", "--out", "{run}/run.json"], 2),
    ("compare: no other run", ["compare", "{run}", "{missing}"], 2),
]


def make_run(folder: Path, n: int = 30, n_test: int = 20, trials: int = 40, seed: int = 3) -> Path:
    """Ingest a small synthetic run with labels (10 classes) into ``folder/run``; return its directory."""
    from raymem import api

    rng = np.random.default_rng(seed)
    masks = np.zeros((trials, n), dtype=bool)
    for k in range(trials):
        masks[k, rng.choice(n, size=round(0.7 * n), replace=False)] = True
    train_correct = masks | (rng.random((trials, n)) < 0.5)
    test_correct = rng.random((trials, n_test)) < np.where(masks[:, [4]], 0.9, 0.2)
    run = folder / "run"
    api.ingest(str(run), masks, train_correct, test_correct, train_labels=np.arange(n) % 10,
               test_labels=np.arange(n_test) % 10)
    return run


def _busy_loops(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def _one(args: list[str], env: dict) -> tuple[int, str]:
    done = subprocess.run([RAYMEM, *args], capture_output=True, text=True, timeout=300, env=env)
    return done.returncode, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def stress(reps: int, workdir: Path, parallel: int | None = None) -> list[dict]:
    """Run every case ``reps`` times (``parallel`` at once, beside one busy loop per core); one dict per case."""
    run = make_run(workdir)
    fill = {"run": str(run), "missing": str(workdir / "no-such-run"), "tmp": str(workdir)}
    jobs = [(case, [a.format(i=i, **fill) for a in args], expected)
            for i in range(reps) for case, args, expected in CASES]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # read the log, never a cluster
    loops = _busy_loops(os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(parallel or os.cpu_count() or 1) as pool:
            results = list(pool.map(lambda job: _one(job[1], env), jobs))
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    rows = {case: {"case": case, "expected": expected, "runs": 0, "codes": Counter(), "unexpected": []}
            for case, _, expected in CASES}
    for (case, _, expected), (code, last_line) in zip(jobs, results):
        row = rows[case]
        row["runs"] += 1
        row["codes"][code] += 1
        if code != expected:
            row["unexpected"].append(f"exit {code}: {last_line}")
    return [{**row, "codes": dict(sorted(row["codes"].items()))} for row in rows.values()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="Runs of each case (default 20).")
    parser.add_argument("--parallel", type=int, default=None, help="Commands at once (default: the cores).")
    parser.add_argument("--json", action="store_true", help="Print the rows as JSON instead of a table.")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="raymem-stress-") as tmp:
        rows = stress(args.reps, Path(tmp), args.parallel)
    bad = sum(len(row["unexpected"]) for row in rows)
    if args.json:
        print(json.dumps({"rows": rows, "unexpected": bad, "seconds": round(time.monotonic() - started, 1)}))
    else:
        print(f"{sum(row['runs'] for row in rows)} runs, {os.cpu_count()} busy loops, "
              f"{time.monotonic() - started:.0f} s\n")
        print("| case | must exit | runs | exit codes seen |\n|---|---|---|---|")
        for row in rows:
            seen = ", ".join(f"{code}: {count}" for code, count in row["codes"].items())
            print(f"| `{row['case']}` | {row['expected']} | {row['runs']} | {seen} |")
        for row in rows:
            for problem in row["unexpected"]:
                print(f"{row['case']}: {problem}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
