"""Counts in, answers out: the tables and summaries every reader (CLI, actor, notebook) returns.

Each function turns a ``Counts`` into an Arrow table or a JSON-able dict by calling the formulas
(``formulas``), the error bars (``bounds``) and the selections (``selection``); nothing here
re-derives any of them. Tables are ``pyarrow.Table`` so polars, pandas and Parquet read them.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from raymem.estimator import bounds, formulas, selection
from raymem.estimator.counts import Counts, VectorCounts
from raymem.errors import RaymemError

DEFAULT_DELTA = 0.05
#: Half-width of the memorization interval a user typically wants before stopping.
DEFAULT_TARGET_HALFWIDTH = 0.1
#: Thresholds at which split-half consistency is reported (the paper's mem threshold among them).
SPLIT_HALF_THRESHOLDS = (0.25, 0.5)


def _mem_of(v: VectorCounts) -> np.ndarray:
    return formulas.memorization(v.in_hits, v.n_in, v.out_hits, v.n_out)


#: Largest product of the count ranges for which a tuple of counts is packed into one int64 key.
_MAX_PACKED_KEY = 2**62


def difference_interval_per_distinct_counts(hits_in, n_in, hits_out, n_out, delta: float, method: str = "chernoff"):
    """Return bounds.difference_interval for every entry, evaluating it once per distinct tuple of counts.

    Many examples and pairs share the same four counts (a run of t trials has at most ~t^3 distinct
    tuples, in practice a few thousand), so this is the same result for a fraction of the bisection work.
    """
    columns = [np.asarray(c).ravel() for c in np.broadcast_arrays(hits_in, n_in, hits_out, n_out)]
    if columns[0].size == 0 or not all(np.issubdtype(c.dtype, np.integer) for c in columns):
        return bounds.difference_interval(hits_in, n_in, hits_out, n_out, delta, method=method)
    shape = np.broadcast(hits_in, n_in, hits_out, n_out).shape
    columns = [c.astype(np.int64) for c in columns]
    lows = [int(c.min()) for c in columns]
    spans = [int(c.max()) - low + 1 for c, low in zip(columns, lows)]
    if math.prod(spans) < _MAX_PACKED_KEY:
        key = np.zeros(columns[0].size, dtype=np.int64)
        for c, low, span in zip(columns, lows, spans):
            key = key * span + (c - low)
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    else:
        _, first, inverse = np.unique(np.stack(columns, axis=1), axis=0, return_index=True, return_inverse=True)
    lo, hi = bounds.difference_interval(*(c[first] for c in columns), delta, method=method)
    inverse = inverse.ravel()
    return lo[inverse].reshape(shape), hi[inverse].reshape(shape)


def mem_intervals(v: VectorCounts, delta: float, n_family: int, simultaneous: bool, method: str = "chernoff"):
    """Return (lo, hi) of the memorization difference for every row of ``v``."""
    d = bounds.family_delta(delta, n_family, simultaneous)
    return difference_interval_per_distinct_counts(v.in_hits, v.n_in, v.out_hits, v.n_out, d, method=method)


def mem_table(counts: Counts, *, delta: float = DEFAULT_DELTA, simultaneous: bool = False) -> pa.Table:
    """One row per training example: mem with Chernoff and Hoeffding intervals and its counts."""
    v = counts.all
    lo, hi = mem_intervals(v, delta, counts.n_train, simultaneous)
    h_lo, h_hi = mem_intervals(v, delta, counts.n_train, simultaneous, method="hoeffding")
    return pa.table({
        "train_index": np.arange(counts.row_start, counts.row_stop, dtype=np.int64),
        "mem": _mem_of(v),
        "mem_lo": lo,
        "mem_hi": hi,
        "mem_hoeffding_lo": h_lo,
        "mem_hoeffding_hi": h_hi,
        "p_in": formulas.conditional_rate(v.in_hits, v.n_in),
        "p_out": formulas.conditional_rate(v.out_hits, v.n_out),
        "n_in": v.n_in,
        "n_out": v.n_out,
        "in_hits": v.in_hits,
        "out_hits": v.out_hits,
    })


def _infl_intervals(h_in, n_in, n_out, test_hits, delta):
    return difference_interval_per_distinct_counts(h_in, n_in, test_hits - h_in, n_out, delta)


def pairs_table(
    counts: Counts,
    *,
    min_infl: float = formulas.PAPER_MIN_INFL,
    min_mem: float = formulas.PAPER_MIN_MEM,
    delta: float = DEFAULT_DELTA,
    simultaneous: bool = False,
) -> pa.Table:
    """High-influence pairs (infl >= min_infl and mem >= min_mem) with intervals for each pair."""
    h_in = counts.pairs_ready()
    v = counts.all
    mem = _mem_of(v)
    found = selection.high_influence_pairs(
        h_in, v.n_in, v.n_out, v.test_hits, mem,
        min_infl=min_infl, min_mem=min_mem, row_offset=counts.row_start,
    )
    rows = found["train_index"] - counts.row_start
    cols = found["test_index"]
    d = bounds.family_delta(delta, counts.n_train * counts.n_test, simultaneous)
    lo, hi = _infl_intervals(found["h_in"], found["n_in"], found["n_out"], v.test_hits[cols], d)
    return pa.table({
        "train_index": found["train_index"].astype(np.int64),
        "test_index": cols.astype(np.int64),
        "infl": found["infl"],
        "infl_lo": lo,
        "infl_hi": hi,
        "mem": mem[rows],
        "n_in": found["n_in"].astype(np.int64),
        "n_out": found["n_out"].astype(np.int64),
    })


def influence_table(
    counts: Counts, test_index: int, *, top: int = 10, delta: float = DEFAULT_DELTA, simultaneous: bool = False
) -> pa.Table:
    """The ``top`` training examples with the largest influence on test example ``test_index``."""
    if not 0 <= test_index < counts.n_test:
        raise RaymemError(f"--test-index {test_index} is outside the run's test set 0..{counts.n_test - 1}; pick one in range.")
    if top < 1:
        raise RaymemError(f"--top {top} must be at least 1.")
    h_in = counts.pairs_ready()
    v = counts.all
    found = selection.top_influencers(
        h_in[:, test_index], v.n_in, v.n_out, v.test_hits[test_index], top, row_offset=counts.row_start
    )
    rows = found["train_index"] - counts.row_start
    d = bounds.family_delta(delta, counts.n_train * counts.n_test, simultaneous)
    lo, hi = _infl_intervals(found["h_in"], v.n_in[rows], v.n_out[rows], v.test_hits[test_index], d)
    return pa.table({
        "rank": np.arange(1, len(rows) + 1, dtype=np.int64),
        "train_index": found["train_index"].astype(np.int64),
        "test_index": np.full(len(rows), test_index, dtype=np.int64),
        "infl": found["infl"],
        "infl_lo": lo,
        "infl_hi": hi,
        "mem": _mem_of(v)[rows],
    })


def canary_recall(mem: np.ndarray, flipped: np.ndarray) -> dict:
    """Share of flipped-label examples among the top-|flipped| training examples by memorization."""
    count = int(flipped.sum())
    if count == 0:
        return {"count": 0, "recall": None, "chance": None}
    top = np.argsort(-mem, kind="stable")[:count]
    return {
        "count": count,
        "recall": float(flipped[top].mean()),
        "chance": float(count / len(mem)),
    }


def convergence_summary(
    counts: Counts,
    *,
    subset_size: int,
    delta: float = DEFAULT_DELTA,
    simultaneous: bool = False,
    certify_threshold: float = formulas.PAPER_MIN_MEM,
    target_halfwidth: float = DEFAULT_TARGET_HALFWIDTH,
) -> dict:
    """Should the run stop? Error-bar widths, certified examples, split-half consistency, trials needed."""
    v = counts.all
    lo, hi = mem_intervals(v, delta, counts.n_train, simultaneous)
    half = (hi - lo) / 2
    mem = _mem_of(v)
    median_half = float(np.median(half)) if half.size else math.nan
    split = {}
    for theta in SPLIT_HALF_THRESHOLDS:
        c = selection.jaccard_and_mean_difference(_mem_of(counts.even), _mem_of(counts.odd), theta)
        split[f"{theta:g}"] = {k: (None if isinstance(x, float) and math.isnan(x) else x) for k, x in c.items()}
    return {
        "trials_done": counts.trials,
        "n_train": counts.n_train,
        "n_test": counts.n_test,
        "subset_size": subset_size,
        "delta": delta,
        "simultaneous": simultaneous,
        "mem": {
            "median_halfwidth": median_half,
            "max_halfwidth": float(np.max(half)) if half.size else math.nan,
            "certify_threshold": certify_threshold,
            "estimated_above": int(np.sum(mem >= certify_threshold)),
            "certified": int(np.sum(lo >= certify_threshold)),
            "target_halfwidth": target_halfwidth,
            "trials_needed": bounds.trials_needed(counts.trials, median_half, target_halfwidth) if counts.trials else None,
        },
        "lemma21_rms_bound": bounds.lemma21_rms_bound(counts.trials, subset_size, counts.n_train),
        "split_half": {"mem": split},
    }
