"""Benchmark the Ray runner against a plain sequential loop over the same digits trials.

    .venv/bin/python scripts/bench_runner.py [--trials 16 --epochs 30]

Both sides train the SAME trials of the ``digits`` preset (same subsets and seeds, drawn from
(run seed, trial id); same epochs), each in fresh processes, and the wall time of each includes
its process start and TensorFlow import:

- loop: one subprocess that imports TensorFlow, loads digits once and, for each trial, draws the
  subset, calls ``train_and_predict`` and builds the ``TrialRecord`` (TensorFlow uses every core);
- ray: ``raymem run digits`` as a subprocess on a fresh local Ray (default resources: 1 CPU per
  trial, so as many trials run at once as the machine has cores), into a temporary storage dir,
  with ``RAY_TMPDIR`` a fresh short dir under /tmp and ``RAY_ADDRESS`` unset.

The fixed costs come from each trial's timestamps (Ray: the trial log's metadata ``started``,
``finished``, ``train_seconds``, ``predict_seconds``, ``pid``):

- start-up: launch of the subprocess to the start of its first trial;
- first trial in a process: its wall time minus training and predicting (a Ray worker imports
  TensorFlow inside its first trial; the loop imported it before, as part of its start-up);
- fixed cost per warm trial: for every later trial of a process, the time from the previous
  trial's finish in that process to this one's finish, minus training and predicting; split into
  the part inside the trial (subset draw, model clean-up, record) and the gap between trials (Ray:
  the previous record's hand-over to the accumulator, task scheduling, argument transfer);
- tail: the last trial's finish to the subprocess's exit (Ray: shutdown).

Prints the machine, the load average, one table (target: ray / loop <= 1.0) and the breakdown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATIO_TARGET = 1.0
PRESET = "digits"
RUN_NAME = "bench"
LOOP_RUN_ID = "bench-loop"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16, help="trials on each side (default 16)")
    p.add_argument("--epochs", type=int, default=30, help="epochs per trial (the digits preset: 30)")
    p.add_argument("--skip-loop", action="store_true", help="time only the Ray run")
    p.add_argument("--keep", action="store_true", help="keep the Ray run's storage and RAY_TMPDIR (paths printed)")
    p.add_argument("--loop-child", metavar="OUT_JSON", help=argparse.SUPPRESS)  # internal: be the loop process
    return p.parse_args(argv)


def bench_config(trials: int, epochs: int):
    """Return the digits preset's ExperimentConfig with ``trials`` and ``epochs``."""
    from raymem.config.experiment import resolve_config

    return resolve_config(PRESET, {"trials": trials, "epochs": epochs})


def mask_digest(mask: np.ndarray) -> str:
    """Return a short sha256 of a subset mask (to check both sides trained the same subsets)."""
    from raymem.store.trial_record import pack_bits

    return hashlib.sha256(pack_bits(np.asarray(mask, dtype=bool))).hexdigest()[:16]


# ---- the plain loop (runs in its own fresh process) --------------------------------------------

def loop_child(out_json: str, trials: int, epochs: int) -> None:
    """Train the trials one after another in this process; write their timings as JSON to ``out_json``."""
    import_started = time.time()
    import tensorflow  # noqa: F401  (the import is part of what the loop pays, as `raymem run` does)

    tf_import_s = time.time() - import_started
    import dataclasses

    from raymem.store.trial_record import TrialRecord
    from raymem.estimator.subsets import subset_mask, trial_seed
    from raymem.data import canaries
    from raymem.data.datasets import load_dataset
    from raymem.training.fit import train_and_predict

    config = bench_config(trials, epochs)
    data = load_dataset(config.dataset)
    labels = canaries.flip_labels(data.y_train, config.flip_labels, data.num_classes, config.seed)
    data = dataclasses.replace(data, y_train=labels)  # the run's labels, as `raymem run` trains on
    n_train, size = len(data.y_train), config.subset_size(len(data.y_train))
    rows = []
    for k in range(config.trials):
        started = time.time()
        mask = subset_mask(config.seed, k, n_train, size)
        seed = trial_seed(config.seed, k)
        train_pred, test_pred, metadata = train_and_predict(config, data, mask, seed)
        TrialRecord.from_predictions(
            run_id=LOOP_RUN_ID, trial_id=k, seed=seed, mask=mask, train_pred=train_pred, test_pred=test_pred,
            train_labels=data.y_train, test_labels=data.y_test, metadata=metadata,
        )
        rows.append(trial_row(k, seed, mask, metadata, started, time.time(), os.getpid()))
    Path(out_json).write_text(json.dumps({"tf_import_s": tf_import_s, "trials": rows}))


def trial_row(trial_id: int, seed: int, mask, metadata: dict, started: float, finished: float, pid: int) -> dict:
    """Return one trial's timings (epoch seconds) and identity as a plain dict."""
    return {
        "trial_id": int(trial_id), "seed": int(seed), "mask": mask_digest(mask), "pid": int(pid),
        "started": float(started), "finished": float(finished),
        "train_s": float(metadata["train_seconds"]), "predict_s": float(metadata["predict_seconds"]),
        "test_accuracy": float(metadata["test_accuracy"]),
    }


def run_loop(trials: int, epochs: int) -> dict:
    """Run the loop in a fresh subprocess; return {launched, wall_s, tf_import_s, trials}."""
    with tempfile.TemporaryDirectory(prefix="raymem-bench-loop-") as tmp:
        out = os.path.join(tmp, "loop.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--loop-child", out,
               "--trials", str(trials), "--epochs", str(epochs)]
        launched, wall_s = timed_subprocess(cmd, os.environ.copy(), "plain loop")
        result = json.loads(Path(out).read_text())
    return {"launched": launched, "wall_s": wall_s, **result}


# ---- `raymem run` ------------------------------------------------------------------------------

def raymem_command() -> list[str]:
    """Return the argv prefix of the `raymem` command of this Python environment."""
    script = Path(sys.executable).parent / "raymem"
    return [str(script)] if script.exists() else [sys.executable, "-m", "raymem.cli"]


def run_ray(trials: int, epochs: int, keep: bool) -> dict:
    """Run `raymem run digits` on a fresh local Ray; return {launched, wall_s, trials, stdout}."""
    from raymem.store.storage import RunStore
    from raymem.store.trial_log import iter_trials

    storage = tempfile.mkdtemp(prefix="raymem-bench-runs-")
    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths live under it
    env = os.environ.copy()
    env.pop("RAY_ADDRESS", None)
    env["RAY_TMPDIR"] = ray_tmp
    cmd = raymem_command() + ["run", PRESET, "--trials", str(trials), "--epochs", str(epochs),
                              "--storage", storage, "--name", RUN_NAME, "--quiet"]
    try:
        launched, wall_s, stdout = timed_subprocess(cmd, env, "raymem run", capture=True)
        store = RunStore.open(os.path.join(storage, RUN_NAME))
        rows = [trial_row(r.trial_id, r.seed, r.mask, r.metadata, r.metadata["started"], r.metadata["finished"],
                          r.metadata["pid"]) for r in iter_trials(store)]
    finally:
        if keep:
            print(f"kept: storage {storage}, RAY_TMPDIR {ray_tmp}")
        else:
            shutil.rmtree(storage, ignore_errors=True)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"launched": launched, "wall_s": wall_s, "trials": rows, "stdout": stdout}


def timed_subprocess(cmd: list[str], env: dict, what: str, capture: bool = False):
    """Run ``cmd``; return (launch epoch time, wall seconds[, stdout]). Exit with its output if it fails."""
    print(f"running {what}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    launched = time.time()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE if capture else None, text=True)
    wall_s = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{what} failed with exit status {proc.returncode}; output above.")
    return (launched, wall_s, proc.stdout) if capture else (launched, wall_s)


# ---- where the time went ------------------------------------------------------------------------

def breakdown(side: dict) -> dict:
    """Return the start-up, per-trial and tail costs of one side (see the module docstring)."""
    rows = sorted(side["trials"], key=lambda r: (r["pid"], r["started"]))
    work = {r["trial_id"]: r["train_s"] + r["predict_s"] for r in rows}
    first_overhead, warm_fixed, warm_inside, gaps = [], [], [], []
    for i, r in enumerate(rows):
        if i == 0 or rows[i - 1]["pid"] != r["pid"]:
            first_overhead.append(r["finished"] - r["started"] - work[r["trial_id"]])
        else:
            warm_fixed.append(r["finished"] - rows[i - 1]["finished"] - work[r["trial_id"]])
            warm_inside.append(r["finished"] - r["started"] - work[r["trial_id"]])
            gaps.append(r["started"] - rows[i - 1]["finished"])
    first_start = min(r["started"] for r in rows)
    last_finish = max(r["finished"] for r in rows)
    return {
        "processes": len({r["pid"] for r in rows}),
        "startup_s": first_start - side["launched"],
        "first_trial_overhead_s": float(np.mean(first_overhead)),
        "warm_fixed_ms": 1000 * float(np.mean(warm_fixed)) if warm_fixed else float("nan"),
        "warm_fixed_max_ms": 1000 * float(np.max(warm_fixed)) if warm_fixed else float("nan"),
        "warm_inside_ms": 1000 * float(np.mean(warm_inside)) if warm_inside else float("nan"),
        "warm_gap_ms": 1000 * float(np.mean(gaps)) if gaps else float("nan"),
        "train_s": float(np.mean([r["train_s"] for r in rows])),
        "predict_s": float(np.mean([r["predict_s"] for r in rows])),
        "tail_s": side["launched"] + side["wall_s"] - last_finish,
        "test_accuracy": float(np.mean([r["test_accuracy"] for r in rows])),
    }


def same_trials(loop: dict, ray: dict) -> bool:
    """True when both sides trained the same trial ids on the same subsets with the same seeds."""
    key = lambda side: sorted((r["trial_id"], r["seed"], r["mask"]) for r in side["trials"])  # noqa: E731
    return key(loop) == key(ray)


def machine() -> str:
    """Return one line: cores, memory and the load average now."""
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: nproc {os.cpu_count()}, memory {mem_kb / 2**20:.1f} GiB, load average (1/5/15 min) {load}"


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def print_report(trials: int, epochs: int, loop: dict | None, ray: dict) -> None:
    rb = breakdown(ray)
    lb = breakdown(loop) if loop else None
    nan = float("nan")
    ratio = ray["wall_s"] / loop["wall_s"] if loop else nan
    print()
    print("| trials | epochs | loop wall s | ray wall s | ray/loop (target <= 1.0) | train s/trial loop "
          "| train s/trial ray "
          "| fixed ms/warm trial loop | fixed ms/warm trial ray | ray start-up s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {trials} | {epochs} | {fmt(loop['wall_s'] if loop else nan)} | {fmt(ray['wall_s'])} | "
          f"{fmt(ratio, 2)}{'' if ratio != ratio else (' ok' if ratio <= RATIO_TARGET else ' MISSED')} | "
          f"{fmt(lb['train_s'] if lb else nan, 2)} | {fmt(rb['train_s'], 2)} | "
          f"{fmt(lb['warm_fixed_ms'] if lb else nan, 0)} | {fmt(rb['warm_fixed_ms'], 0)} | {fmt(rb['startup_s'])} |")
    print()
    print("| where the time went | loop | ray |")
    print("|---|---:|---:|")
    rows = [
        ("processes that trained", "processes", 0),
        ("start-up: launch to first trial start, s", "startup_s", 1),
        ("first trial of a process: wall minus train+predict, s", "first_trial_overhead_s", 2),
        ("mean train s per trial", "train_s", 2),
        ("mean predict s per trial", "predict_s", 2),
        ("fixed cost per warm trial, ms (mean)", "warm_fixed_ms", 0),
        ("fixed cost per warm trial, ms (max)", "warm_fixed_max_ms", 0),
        ("  of which inside the trial (not train/predict), ms", "warm_inside_ms", 0),
        ("  of which between trials (hand-over, scheduling), ms", "warm_gap_ms", 0),
        ("tail: last finish to exit, s", "tail_s", 1),
        ("mean test accuracy", "test_accuracy", 3),
    ]
    for label, key, digits in rows:
        print(f"| {label} | {fmt(lb[key] if lb else nan, digits)} | {fmt(rb[key], digits)} |")
    if loop:
        print(f"| TensorFlow import in the loop process, s | {loop['tf_import_s']:.1f} | |")
        print(f"\nsame trial ids, seeds and subsets on both sides: {'yes' if same_trials(loop, ray) else 'NO'}")


def main() -> None:
    args = parse_args()
    if args.loop_child:
        loop_child(args.loop_child, args.trials, args.epochs)
        return
    bench_config(args.trials, args.epochs)  # a bad --trials/--epochs fails here, before any work
    print(machine(), "(before)")
    loop = None if args.skip_loop else run_loop(args.trials, args.epochs)
    if loop:
        print(machine(), "(after the loop)")
    ray = run_ray(args.trials, args.epochs, args.keep)
    print(machine(), "(after the Ray run)")
    print(ray["stdout"].strip())
    print_report(args.trials, args.epochs, loop, ray)


if __name__ == "__main__":
    main()
