"""Convergence against trials, replayed from the trial log (what ``convergence.png`` draws).

The counts after the first k trials (ascending trial id, as the log lists them) are rebuilt in one pass
over the records; at about ``points`` values of k the same summary ``status`` gives is taken: the
median half-width of the memorization intervals, how many examples are certified (interval lower end
at or above a threshold) and the split-half consistency (even vs. odd trial ids, Jaccard and mean
|difference| at the paper's memorization threshold). Only the per-example vectors are replayed (no pair
matrix), so memory is a few vectors of n_train.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pyarrow as pa

from raymem.errors import RaymemError
from raymem.estimator import formulas, report, selection
from raymem.estimator.bars import Bars
from raymem.estimator.counts import VectorCounts

#: How many prefixes of the log the curve is computed at (fewer when the run has fewer trials).
DEFAULT_POINTS = 15


def checkpoints(total: int, points: int = DEFAULT_POINTS) -> np.ndarray:
    """Return the prefix lengths (ascending, distinct, ending at ``total``) at which the curve is evaluated."""
    total, points = int(total), int(points)
    if total < 1:
        return np.zeros(0, dtype=np.int64)
    if points < 1:
        raise RaymemError(f"the convergence curve needs at least one point (got {points}).")
    start = max(2, total // points) if total >= 2 else 1
    return np.unique(np.rint(np.linspace(min(start, total), total, points)).astype(np.int64))


def convergence_curve(records: Iterable, n_train: int, n_test: int, bars: Bars = Bars(), *,
                      total: int | None = None, points: int = DEFAULT_POINTS,
                      threshold: float = formulas.PAPER_MIN_MEM) -> pa.Table:
    """Replay trial records and return the convergence curve, one row per prefix of the log.

    records: objects with ``trial_id``, ``mask``, ``train_correct``, ``test_correct`` (TrialRecord, as
    ``trial_log.iter_trials`` yields them in ascending id), counted in the order given; a repeated
    trial id is counted once. total: how many records there are (default ``len(records)``); the prefix
    lengths are ``checkpoints(total, points)``. Columns: trials, median_halfwidth, max_halfwidth,
    certified (mem_lo >= threshold), estimated_above (mem >= threshold),
    split_jaccard, split_mean_abs_diff (even vs. odd trial ids at threshold; NaN when both sets
    are empty). ``bars``: the read's bars (tuned to the run's plan), so the curve shows what ``raymem status``
    shows for the run.
    """
    if total is None:
        try:
            total = len(records)  # type: ignore[arg-type]
        except TypeError:
            raise RaymemError("convergence_curve needs total= when the records are a stream; "
                              "pass the number of trials.") from None
    marks = set(checkpoints(total, points).tolist())
    everything = VectorCounts.zeros(int(n_train), int(n_test))
    even = VectorCounts.zeros(int(n_train), int(n_test))
    seen: set[int] = set()
    rows = []
    for record in records:
        trial_id = int(record.trial_id)
        if trial_id in seen:
            continue
        mask = np.asarray(record.mask, dtype=bool)
        train_ok = np.asarray(record.train_correct, dtype=bool)
        test_ok = np.asarray(record.test_correct, dtype=bool)
        if mask.shape != (n_train,) or train_ok.shape != (n_train,) or test_ok.shape != (n_test,):
            raise RaymemError(
                f"trial {trial_id} has shapes {mask.shape}, {train_ok.shape}, {test_ok.shape} but the run has "
                f"{n_train} training and {n_test} test examples; replay trials of this run only."
            )
        seen.add(trial_id)
        everything.add(mask, train_ok, test_ok)
        if trial_id % 2 == 0:
            even.add(mask, train_ok, test_ok)
        if everything.trials in marks:
            rows.append(_point(everything, even, bars, threshold))
    if rows and rows[-1]["trials"] != everything.trials:
        rows.append(_point(everything, even, bars, threshold))
    schema = pa.schema([
        ("trials", pa.int64()), ("median_halfwidth", pa.float64()), ("max_halfwidth", pa.float64()),
        ("certified", pa.int64()), ("estimated_above", pa.int64()),
        ("split_jaccard", pa.float64()), ("split_mean_abs_diff", pa.float64()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def _point(v: VectorCounts, even: VectorCounts, bars: Bars, threshold: float) -> dict:
    lo, hi = report.mem_intervals(v, bars, v.n_in.size)
    half = (hi - lo) / 2
    mem = v.memorization()
    split = selection.jaccard_and_mean_difference(even.memorization(), v.minus(even).memorization(), threshold)
    return {
        "trials": int(v.trials),
        "median_halfwidth": float(np.median(half)) if half.size else math.nan,
        "max_halfwidth": float(np.max(half)) if half.size else math.nan,
        "certified": int(np.sum(lo >= threshold)),
        "estimated_above": int(np.sum(mem >= threshold)),
        "split_jaccard": float(split["jaccard"]),
        "split_mean_abs_diff": float(split["mean_abs_diff"]),
    }
