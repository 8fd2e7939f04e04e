"""Packed training (``--pack K``) against one model per trial, on this machine: prints two tables.

1. Models/hour of a preset's training (default digits; one trial's resources: ``cpus_per_trial``
   threads, or the GPU), for the unpacked Keras trial (``fit.train_and_predict``) and packs of
   K = 1, 4, 16, 64 (``packing.train_and_predict_pack``), each measured in a fresh process (so its peak
   memory, the max RSS or the GPU allocator's peak, is its own), TensorFlow import excluded, model
   building, training and prediction included. ``--model`` swaps the preset's model (``inception``:
   a batch-normalization model); ``--synthetic N`` trains on N random images of the preset's shape
   instead of its data set (``--preset mnist --synthetic 60000`` on a GPU: the paper's MNIST models/hour,
   no download needed).
2. End to end (digits only): ``raymem run digits --trials T`` with and without ``--pack K`` (a local Ray
   of ``--num-cpus`` CPUs started by each run, wall time of the whole command including Ray start-up).

    python scripts/bench_packing.py                      # 3 epochs; end to end 16 trials, --pack 8
    python scripts/bench_packing.py --epochs 30 --packs 1 4 16 --e2e-trials 16 --e2e-packs 8 16
    python scripts/bench_packing.py --model inception --epochs 5 --packs 1 4 16 --e2e-trials 0
    python scripts/bench_packing.py --preset mnist --synthetic 60000 --epochs 1 --packs 1 4 8 --e2e-trials 0

The CPU of a shared machine is shared: numbers move with the load (printed with the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(args) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import resource

    import numpy as np

    from raymem.estimator.subsets import subset_mask, trial_seed
    from raymem.training import packing, fit
    from raymem.config.experiment import resolve_config
    from raymem.data.datasets import load_dataset

    config = resolve_config(args.preset, {"epochs": args.epochs, "model": args.model})
    data = _synthetic(config, args.synthetic) if args.synthetic else load_dataset(config.dataset)
    fit.limit_tf_threads(config.resources.cpus_per_trial)
    import tensorflow as tf  # (imported before the clock starts)

    gpu = bool(tf.config.list_physical_devices("GPU"))

    n = len(data.y_train)
    m = config.subset_size(n)
    k = args.child_pack
    masks = np.stack([subset_mask(config.seed, j, n, m) for j in range(max(k, 1))])
    seeds = [trial_seed(config.seed, j) for j in range(max(k, 1))]
    started = time.perf_counter()
    if k == 0:  # unpacked: one Keras model per trial, as raymem trains it today
        outs = [fit.train_and_predict(config, data, masks[0], seeds[0])]
    else:
        outs = packing.train_and_predict_pack(config, data, masks, seeds)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "pack": k, "seconds": seconds, "models": len(outs),
        "peak_mb": (tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20 if gpu
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "device": "GPU" if gpu else "CPU",
        "test_accuracy": float(np.mean([o[2]["test_accuracy"] for o in outs])),
    }))


def _synthetic(config, n: int):
    """``n`` random training images (and n // 6 test images) of the preset's data set's shape and classes."""
    import numpy as np

    from raymem.data.datasets import ArrayDataset

    shape, classes = SYNTHETIC_SHAPES[config.dataset]
    rng = np.random.default_rng(0)
    n_test = max(1, n // 6)
    return ArrayDataset(f"synthetic-{config.dataset}", rng.random((n, *shape), dtype=np.float32),
                        rng.integers(0, classes, n), rng.random((n_test, *shape), dtype=np.float32),
                        rng.integers(0, classes, n_test), classes)


#: Image shape and classes of the data sets ``--synthetic`` imitates.
SYNTHETIC_SHAPES = {"digits": ((8, 8, 1), 10), "mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10),
                    "cifar100": ((32, 32, 3), 100),
                    "npz:cifar100-features.npz": ((2048,), 100)}  # cifar100-linear: ResNet50's penultimate features


def _child_args(args, pack: int) -> list[str]:
    out = ["--child-pack", str(pack), "--epochs", str(args.epochs), "--preset", args.preset]
    out += ["--model", args.model] if args.model else []
    return out + (["--synthetic", str(args.synthetic)] if args.synthetic else [])


def _measure(args, pack: int, timeout: float | None = None) -> dict:
    """One row in a fresh process; ``timeout`` seconds (gpu_suite's time budget) raise subprocess.TimeoutExpired."""
    out = subprocess.run([sys.executable, __file__, *_child_args(args, pack)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"measurement K={pack} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _e2e(trials: int, epochs: int, pack: int | None, num_cpus: int) -> float:
    raymem = str(Path(sys.executable).with_name("raymem"))
    storage = tempfile.mkdtemp(prefix="bench-pack-")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": tempfile.mkdtemp(prefix="rmb", dir="/tmp")}
    env.pop("RAY_ADDRESS", None)
    cmd = [raymem, "run", "digits", "--trials", str(trials), "--epochs", str(epochs), "--name", "bench",
           "--storage", storage, "--num-cpus", str(num_cpus), "--quiet"] + (["--pack", str(pack)] if pack else [])
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits", help="the preset whose recipe and model are trained")
    parser.add_argument("--model", default=None, help="another model of the catalog than the preset's")
    parser.add_argument("--synthetic", type=int, default=0, help="train on N random images of the preset's shape")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per model (the digits preset: 30)")
    parser.add_argument("--packs", type=int, nargs="*", default=[1, 4, 16, 64], help="none: skip the first table")
    parser.add_argument("--e2e-trials", type=int, default=16)
    parser.add_argument("--e2e-epochs", type=int, default=None, help="default: --epochs")
    parser.add_argument("--e2e-packs", type=str, nargs="*", default=["8"],
                        help="packs to run end to end ('auto' allowed)")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--child-pack", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_pack is not None:
        _child(args)
        return

    if args.packs:
        _table(args)
    epochs = args.e2e_epochs or args.epochs
    if args.e2e_trials and args.preset == "digits" and not args.synthetic and not args.model:
        print(f"\nend to end: raymem run digits --trials {args.e2e_trials} --epochs {epochs} "
              f"--num-cpus {args.num_cpus}; "
              f"load average {os.getloadavg()[0]:.2f}")
        base_wall = _e2e(args.e2e_trials, epochs, None, args.num_cpus)
        print(f"{'':12} {'wall s':>7} {'vs unpacked':>11}")
        print(f"{'unpacked':12} {base_wall:>7.1f} {1.0:>10.2f}x")
        for pack in args.e2e_packs:
            wall = _e2e(args.e2e_trials, epochs, pack, args.num_cpus)
            print(f"{'--pack ' + pack:12} {wall:>7.1f} {base_wall / wall:>10.2f}x")


def _table(args) -> None:
    from raymem.config.experiment import resolve_config

    config = resolve_config(args.preset, {"epochs": args.epochs, "model": args.model})
    data = f"{args.synthetic:,} synthetic images" if args.synthetic else config.dataset
    print(f"{args.preset} ({config.model} on {data}, batch {config.recipe.batch_size}), {args.epochs} epochs per "
          f"model, one trial's resources; load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    rows = [("unpacked", _measure(args, 0))] + [(f"pack {k}", _measure(args, k)) for k in args.packs]
    base = rows[0][1]["models"] * 3600 / rows[0][1]["seconds"]
    peak = f"peak {rows[0][1]['device']} MB"
    print(f"{'':10} {'models':>6} {'seconds':>8} {'models/hour':>12} {'vs unpacked':>11} {peak:>12} {'test acc':>8}")
    for label, r in rows:
        rate = r["models"] * 3600 / r["seconds"]
        print(f"{label:10} {r['models']:>6} {r['seconds']:>8.1f} {rate:>12,.0f} {rate / base:>10.2f}x "
              f"{r['peak_mb']:>12.0f} {r['test_accuracy']:>8.3f}")


if __name__ == "__main__":
    main()
