"""Four mnist-shaped trials at 0.25 GPU each, at once on one GPU: do fractional trials share it?

    PYTHONPATH=. .venv/bin/python scripts/gpu_check.py [--epochs 3] [--fraction 0.25] [--trials 4]

Starts a local Ray with this machine's GPUs, then runs ``--trials`` trials of the ``mnist`` preset's
recipe and model (Inception, batch 256) on synthetic MNIST-shaped data (60,000 + 10,000 images of
28x28x1, 10 classes, a 70% subset each) as Ray tasks asking for ``--fraction`` of a GPU, the way
``raymem run mnist`` schedules them. Each trial configures TensorFlow with
``training.configure_gpu_share`` before any op. Prints per trial: the GPU it ran on, its memory cap,
TensorFlow's peak GPU memory, its wall time; then the overlap and models/hour. Exits 0 with a
message when no GPU is found (nvidia-smi missing or listing none).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time


def gpus_found() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in out.stdout.splitlines() if line.startswith("GPU ")]


def trial(config, data_ref, trial_id: int, fraction: float) -> dict:
    """A Ray task: one trial on a share of a GPU; returns its timing and TensorFlow's peak GPU memory."""
    import numpy as np
    import ray

    from raymem.training.fit import configure_gpu_share, limit_tf_threads, train_and_predict

    started = time.time()
    share = configure_gpu_share(fraction)
    limit_tf_threads(config.resources.cpus_per_trial)
    import tensorflow as tf

    data = data_ref
    rng = np.random.default_rng(trial_id)
    mask = rng.random(len(data.y_train)) < 0.7
    _, _, metadata = train_and_predict(config, data, mask, seed=trial_id)
    try:
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    except (ValueError, RuntimeError):
        peak = float("nan")
    gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []  # gpu_suite --smoke calls it without Ray
    return {"trial": trial_id, "gpu_ids": gpu_ids, "started": started, "finished": time.time(),
            "peak_mb": peak, "limit_mb": share.get("gpu_memory_limit_mb"), "mode": share.get("gpu_share"),
            "train_seconds": metadata["train_seconds"], "test_accuracy": metadata["test_accuracy"]}


def shared_trials(config, data, fraction: float, trials: int, num_gpus: int,
                  timeout: float | None = None) -> tuple[list[dict], float]:
    """``trials`` trials of ``config`` on ``data`` at once as Ray tasks asking for ``fraction`` of a GPU each, on a
    local Ray of ``num_gpus`` GPUs started and stopped here; returns (each trial's ``trial`` dict, wall seconds).
    ``timeout``: seconds to wait for the trials (ray.exceptions.GetTimeoutError past it)."""
    import ray

    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rmt-gpu-", dir="/tmp"))
    ray.init(address="local", num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(max_calls=0)(trial).options(num_gpus=fraction, num_cpus=1)
        data_ref = ray.put(data)
        started = time.time()
        results = ray.get([task.remote(config, data_ref, k, fraction) for k in range(trials)], timeout=timeout)
        return results, time.time() - started
    finally:
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    gpus = gpus_found()
    if not gpus:
        print("gpu_check: no GPU was found (nvidia-smi missing or listing no GPU); nothing to measure.")
        return 0
    print(f"gpu_check: {len(gpus)} GPU(s): {gpus[0]}")

    import numpy as np

    from raymem.config.experiment import resolve_config
    from raymem.data.datasets import ArrayDataset

    config = resolve_config("mnist", {"epochs": args.epochs, "trials": args.trials,
                                      "gpus_per_trial": args.fraction, "cpus_per_trial": 1.0})
    rng = np.random.default_rng(0)
    data = ArrayDataset("mnist-shaped", rng.random((60_000, 28, 28, 1), dtype=np.float32),
                        rng.integers(0, 10, 60_000).astype(np.int64),
                        rng.random((10_000, 28, 28, 1), dtype=np.float32),
                        rng.integers(0, 10, 10_000).astype(np.int64), 10)
    results, wall = shared_trials(config, data, args.fraction, args.trials, len(gpus))
    print(f"{'trial':>5} {'gpu':>4} {'mode':>13} {'cap MiB':>8} {'peak MiB':>9} {'wall s':>7} {'train s':>8}")
    for r in results:
        cap = "-" if r["limit_mb"] is None else str(r["limit_mb"])
        print(f"{r['trial']:>5} {','.join(map(str, r['gpu_ids'])):>4} {str(r['mode']):>13} {cap:>8} "
              f"{r['peak_mb']:>9.0f} {r['finished'] - r['started']:>7.1f} {r['train_seconds']:>8.1f}")
    spans = sorted((r["started"], r["finished"]) for r in results)
    overlapping = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    print(f"{args.trials} trials at {args.fraction:g} GPU, {args.epochs} epochs: {wall:.1f} s wall, "
          f"{args.trials / wall * 3600:.0f} models/hour, at most {overlapping} running at once")
    return 0


if __name__ == "__main__":
    sys.exit(main())
