"""The estimator's formulas, defined once (Feldman & Zhang 2020, supplement Lemma 2.1).

Every place that turns counts into numbers calls these: the offline CLI, the accumulator actor,
the benchmarks and the tests' brute-force checks compare against them.

    mem(i)     = in_hits_i / n_in_i - out_hits_i / n_out_i
    infl(i, j) = H_in[i, j] / n_in_i - (T_j - H_in[i, j]) / n_out_i

A conditional term with no samples is estimated as 1/2 (supplement, proof of Lemma 2.1).
"""

from __future__ import annotations

import numpy as np

#: Point estimate of a conditional term that has no samples (supplement, Lemma 2.1 proof).
EMPTY_TERM_ESTIMATE = 0.5
#: The paper's thresholds for high-influence pairs (section 2): infl >= 0.15 and mem >= 0.25.
PAPER_MIN_INFL = 0.15
PAPER_MIN_MEM = 0.25
#: The paper's subset ratio m / n.
PAPER_SUBSET_RATIO = 0.7


def conditional_rate(hits: np.ndarray, trials: np.ndarray) -> np.ndarray:
    """Return hits / trials as float64, with EMPTY_TERM_ESTIMATE where trials == 0."""
    hits = np.asarray(hits, dtype=np.float64)
    trials = np.asarray(trials, dtype=np.float64)
    safe = np.where(trials > 0, trials, 1.0)
    return np.where(trials > 0, hits / safe, EMPTY_TERM_ESTIMATE)


def memorization(in_hits, n_in, out_hits, n_out) -> np.ndarray:
    """Return mem = P[correct | in] - P[correct | out] per training example (float64)."""
    return conditional_rate(in_hits, n_in) - conditional_rate(out_hits, n_out)


def pair_influence(h_in, n_in, test_hits, n_out) -> np.ndarray:
    """Return infl for cells given elementwise (broadcastable) counts of each cell (float64)."""
    h_in = np.asarray(h_in, dtype=np.float64)
    out_hits = np.asarray(test_hits, dtype=np.float64) - h_in
    return conditional_rate(h_in, n_in) - conditional_rate(out_hits, n_out)


def influence(h_in: np.ndarray, n_in: np.ndarray, test_hits: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """Return infl[i, j] for a block of training rows i and test columns j (float64).

    h_in: (rows, cols) trials that contain i and are correct on j; n_in, n_out: (rows,);
    test_hits: (cols,) all trials correct on j.
    """
    return pair_influence(h_in, np.asarray(n_in)[:, None], np.asarray(test_hits)[None, :], np.asarray(n_out)[:, None])


def subset_size(n_train: int, ratio: float) -> int:
    """Return m = round(ratio * n), the size of every trial's training subset."""
    return int(round(ratio * n_train))
