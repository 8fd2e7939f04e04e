"""Absorb latency of the accumulator with and without a reader calling ``pairs`` in a loop.

    PYTHONPATH=. .venv/bin/python scripts/bench_accumulator.py [--n 50000 --n-test 10000 --trials 256 --batch 64]

Builds a run directory of the given shape (default CIFAR-100: 50,000 x 10,000, subset ratio 0.7), then
drives the real ``Accumulator`` class in this process from threads, as Ray's threaded actor does
(``max_concurrency``): one thread absorbs synthetic trials back to back (validate, write the trial log,
count), and in the second phase another thread calls ``pairs_table`` (the paper's thresholds) in a loop
meanwhile. Prints absorb latency p50 / p99 / max for both phases, the reads done, and the ratio of the
two p99s (goal: <= 2). Both phases end by checking the live counts against a rebuild from the log.
Run it alone on a quiet machine: two cores shared with other work make every number swing.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

import numpy as np

from raymem.actors.accumulator import Accumulator
from raymem.store.trial_record import TrialRecord
from raymem.estimator.log_replay import counts_from_log
from raymem.store.run_info import new_run_info, write_labels, write_run_info
from raymem.store.storage import RunStore
from raymem.estimator.subsets import subset_mask

P99_RATIO_TARGET = 2.0


def make_run(root: str, n_train: int, n_test: int, ratio: float = 0.7, seed: int = 0) -> tuple[str, object]:
    """A runner run directory of the given shape with random labels; return (uri, info)."""
    store = RunStore.open(root)
    info = new_run_info(name="bench", n_train=n_train, n_test=n_test, subset_size=int(round(ratio * n_train)),
                        seed=seed, config={"trials": 10**6}, fingerprint={}, source="runner")
    rng = np.random.default_rng(seed)
    write_labels(store, rng.integers(0, 100, n_train), rng.integers(0, 100, n_test))
    write_run_info(store, info)
    return root, info


def synthetic_record(info, trial_id: int) -> TrialRecord:
    """A valid record of ``trial_id``: the run's own subset; 70% of the examples are easy (right 98% of the
    time either way), 30% hard (right 98% when trained on, 50% when not: these pass mem >= 0.25), as in
    ``bench_estimator``; the test set is right 80% of the time."""
    rng = np.random.default_rng(trial_id + 1)
    mask = subset_mask(info.seed, trial_id, info.n_train, info.subset_size)
    hard = np.arange(info.n_train) % 10 < 3
    train_correct = rng.random(info.n_train) < np.where(mask | ~hard, 0.98, 0.5)
    test_correct = rng.random(info.n_test) < 0.8
    return TrialRecord(run_id=info.run_id, trial_id=trial_id, seed=trial_id, mask=mask,
                       train_correct=train_correct, test_correct=test_correct, metadata={"bench": True})


def absorb_phase(acc: Accumulator, records: list, reader: bool, interval_s: float = 0.0) -> dict:
    """Absorb ``records`` one after another on a thread; with ``reader``, read pairs in a loop meanwhile."""
    latencies: list[float] = []
    reads: list[float] = []
    stop = threading.Event()

    def read_loop():
        while not stop.is_set():
            started = time.perf_counter()
            acc.pairs_table()
            reads.append(time.perf_counter() - started)

    thread = threading.Thread(target=read_loop, daemon=True) if reader else None
    if thread:
        thread.start()
        time.sleep(0.2)
    for record in records:
        started = time.perf_counter()
        ack = acc.absorb(record)
        latencies.append(time.perf_counter() - started)
        assert ack["counted"]
        time.sleep(max(0.0, interval_s - latencies[-1]))  # trials arrive at a pace, not all at once
    stop.set()
    if thread:
        thread.join()
    lat = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()), "reads": len(reads),
            "read_s": float(np.median(reads)) if reads else float("nan")}


def check_against_log(acc: Accumulator, uri: str, info) -> None:
    acc.flush()
    offline = counts_from_log(RunStore.open(uri), info, with_pairs=True, batch_size=64)
    with acc.live.snapshot(pairs=True) as live:
        assert live.trial_ids == offline.trial_ids
        assert np.array_equal(live.all.n_in, offline.all.n_in)
        assert np.array_equal(live.all.in_hits, offline.all.in_hits)
        assert np.array_equal(live.h_in, offline.pairs_ready())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=256, help="trials absorbed per phase")
    parser.add_argument("--batch", type=int, default=64, help="trials per pair-matrix update")
    parser.add_argument("--interval-ms", type=float, default=20.0,
                        help="time between two trials' arrivals (a 2,000-GPU-hour run sees one every few seconds)")
    parser.add_argument("--in-process", action="store_true",
                        help="read pairs on a thread of the accumulator's process (no pair reader process)")
    parser.add_argument("--no-check", action="store_true", help="skip the recount from the log (slow at full size)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="raymem-bench-acc-") as root:
        uri, info = make_run(root + "/run", args.n, args.n_test)
        acc = Accumulator(uri, with_pairs=True, batch_size=args.batch, pair_reader_process=not args.in_process)
        warm = args.batch  # warm-up: imports, first allocations, the first flush; a pairs read before that
        records = [synthetic_record(info, k) for k in range(2 * args.trials + warm)]  # selects noise by the million
        for record in records[:warm]:
            acc.absorb(record)
        acc.flush()
        acc.pairs_table()
        interval = args.interval_ms / 1000
        alone = absorb_phase(acc, records[warm:warm + args.trials], reader=False, interval_s=interval)
        with_reader = absorb_phase(acc, records[warm + args.trials:], reader=True, interval_s=interval)
        if not args.no_check:
            check_against_log(acc, uri, info)
        acc.live.close()
        if acc.reader is not None:
            acc.reader.close()

    ratio = with_reader["p99_ms"] / alone["p99_ms"]
    print(f"accumulator absorb latency, {args.n:,} x {args.n_test:,} pair matrix, batch {args.batch}, "
          f"{args.trials} trials per phase arriving every {args.interval_ms:g} ms, "
          f"pair reads {'in process' if args.in_process else 'in the reader process'}")
    print(f"{'phase':<22}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'pairs reads':>13}{'read s (median)':>17}")
    for label, r in (("no reader", alone), ("reader in a loop", with_reader)):
        read_s = "-" if np.isnan(r["read_s"]) else f"{r['read_s']:.2f}"
        print(f"{label:<22}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}{r['reads']:>13}{read_s:>17}")
    verdict = "meets" if ratio <= P99_RATIO_TARGET else "MISSES"
    print(f"p99 with reader / without: {ratio:.2f} ({verdict} the target <= {P99_RATIO_TARGET:g})"
          + ("" if args.no_check else "; live counts equal the log rebuild"))


if __name__ == "__main__":
    main()
