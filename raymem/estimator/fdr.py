"""High-influence pairs with a controlled false discovery rate.

Hypotheses: for every pair (i, j) whose training example passes the memorization filter
(mem_hat(i) >= min_mem; the paper's selection), H0(i, j): infl(i, j) <= min_infl. Each gets a one-sided
p-value from the same bounds as the error bars (``pair_pvalues``): the smallest level at which the
method's lower bound of infl(i, j) exceeds min_infl (on the level grid of the method, rounded up, which
keeps it valid). The pairs are then selected by a step-up procedure at level Q over all m hypotheses
(m = rows passing the filter x test examples, however many p-values were computed):

- method "anytime": 1 / p is an e-value (the infimum over the null of a nonnegative martingale), so
  Benjamini-Hochberg on these p-values is the e-BH procedure (Wang & Ramdas 2022): FDR <= Q under any
  dependence between the pairs, and at any stopping time of the run.
- methods "fixed", "chernoff", "hoeffding": p-values of different pairs are dependent in ways with no
  known sign (pairs sharing a test example share its outcomes, pairs sharing a training example share
  its masks; the p-value is increasing in some outcomes and decreasing in others), so PRDS cannot be
  argued and Benjamini-Yekutieli is used (BH at Q / H_m, H_m = 1 + 1/2 + ... + 1/m): FDR <= Q under any
  dependence, at the one planned trial count.

Only p-values <= Q can lead to a rejection, and a pair can only have p <= Q if its point estimate is
above min_infl (every method's region contains the point estimate, up to the exact binomial medians for
"fixed", i.e. for Q < 0.6), so p-values are computed only for the pairs ``selection.high_influence_pairs``
returns (read blockwise from the pair matrix, as for ``pairs``); all others count in m with p = 1.
Caveat shared with the paper's definition: the filter mem_hat >= min_mem uses the same trained models
as the influence estimates (other outcomes of them); the guarantee is for the hypotheses it selects.
"""

from __future__ import annotations

import math

import numpy as np

from raymem.estimator import bounds, joint_bounds
from raymem.estimator.per_distinct import per_distinct

#: Bisection steps (on ln delta) of the p-values of the per-term methods (chernoff, hoeffding).
PVALUE_BISECTION_STEPS = 40
_EULER_GAMMA = 0.5772156649015329


def harmonic(m: int) -> float:
    """H_m = 1 + 1/2 + ... + 1/m (exact sum below 10^6, the asymptotic series above)."""
    m = int(m)
    if m < 1:
        return 1.0
    if m < 1_000_000:
        return float(np.sum(1.0 / np.arange(1, m + 1)))
    return math.log(m) + _EULER_GAMMA + 1.0 / (2 * m) - 1.0 / (12 * m * m)


def procedure(method: str) -> str:
    """The step-up procedure used with `method`'s p-values: "e-BH" (anytime) or "BY" (the others)."""
    return "e-BH" if method in bounds.ANYTIME_METHODS else "BY"


def pair_pvalues(h_in, n_in, n_out, test_hits, min_infl: float, *, method: str, fdr: float, n_hypotheses: int,
                 plan: joint_bounds.Plan | None = None, tuning_family: int | None = None) -> np.ndarray:
    """One-sided p-values for H0: infl <= min_infl, for cells given by their counts (int arrays, same shape).

    Values above `fdr` are reported as 1 (they cannot be rejected at level fdr). The anytime mixture
    is tuned to the level a discovery needs, ln(tuning_family / fdr) (tuning_family: e.g. n_train x
    n_test, fixed before the data are seen; default n_hypotheses).
    """
    h_in = np.asarray(h_in, dtype=np.int64)
    n_in = np.asarray(n_in, dtype=np.int64)
    n_out = np.asarray(n_out, dtype=np.int64)
    test_hits = np.asarray(test_hits, dtype=np.int64)
    if h_in.size == 0:
        return np.ones(h_in.shape)
    m = max(int(n_hypotheses), 1)
    floor = fdr / (2.0 * m * max(harmonic(m), 1.0))  # every p-value below this is rejected anyway
    if method in ("anytime", "fixed"):
        family = max(int(tuning_family or m), 1)

        def fn(h, a, o, b):
            return joint_bounds.lower_pvalue(h, a, o, b, min_infl, method, plan,
                                      budget_for_tuning=math.log(family / fdr), p_max=fdr, p_floor=floor)
    else:
        def fn(h, a, o, b):
            return _per_term_pvalue(h, a, o, b, min_infl, method, fdr, floor)
    return per_distinct(fn, h_in, n_in, test_hits - h_in, n_out)


def _per_term_pvalue(h1, n1, h2, n2, threshold, method, p_max, floor):
    """Smallest delta (bisection on ln delta, rounded up) at which the method's lower bound exceeds threshold."""
    shape = np.shape(h1)
    lo_ok = _lower_at(h1, n1, h2, n2, np.full(shape, p_max), method) > threshold
    at_floor = _lower_at(h1, n1, h2, n2, np.full(shape, floor), method) > threshold
    a = np.full(shape, math.log(floor))   # ln delta at which the bound may not exclude the threshold
    b = np.full(shape, math.log(p_max))   # ln delta at which it does (for lo_ok entries)
    for _ in range(PVALUE_BISECTION_STEPS):
        mid = 0.5 * (a + b)
        ok = _lower_at(h1, n1, h2, n2, np.exp(mid), method) > threshold
        b = np.where(ok, mid, b)
        a = np.where(ok, a, mid)
    p = np.where(at_floor, floor, np.exp(b))
    return np.where(lo_ok, p, 1.0)


def _lower_at(h1, n1, h2, n2, deltas, method):
    """The lower bound of each entry at its own delta: bounds.difference_interval's per-term construction."""
    d = np.asarray(deltas, dtype=np.float64)
    if method == "chernoff":
        lo1, _ = _chernoff_at(h1, n1, d / 2.0)
        _, hi2 = _chernoff_at(h2, n2, d / 2.0)
    else:
        lo1, _ = _hoeffding_at(h1, n1, d / 2.0)
        _, hi2 = _hoeffding_at(h2, n2, d / 2.0)
    return np.clip(lo1 - hi2, -1.0, 1.0)


def _chernoff_at(hits, n, deltas):
    hits, n = np.asarray(hits, dtype=np.float64), np.asarray(n, dtype=np.float64)
    budget = np.log(2.0 / deltas)
    has = n > 0
    p_hat = np.where(has, hits / np.where(has, n, 1.0), 0.5)

    def inside(q):
        return n * bounds.kl_bernoulli(p_hat, q) <= budget

    outer, inner = np.zeros_like(p_hat), p_hat.copy()
    for _ in range(bounds.CHERNOFF_BISECTION_STEPS):
        mid = 0.5 * (outer + inner)
        ok = inside(mid)
        inner, outer = np.where(ok, mid, inner), np.where(ok, outer, mid)
    lo = np.where(has & (hits > 0), outer, 0.0)
    inner, outer = p_hat.copy(), np.ones_like(p_hat)
    for _ in range(bounds.CHERNOFF_BISECTION_STEPS):
        mid = 0.5 * (outer + inner)
        ok = inside(mid)
        inner, outer = np.where(ok, mid, inner), np.where(ok, outer, mid)
    hi = np.where(has & (hits < n), outer, 1.0)
    return lo, hi


def _hoeffding_at(hits, n, deltas):
    hits, n = np.asarray(hits, dtype=np.float64), np.asarray(n, dtype=np.float64)
    has = n > 0
    safe = np.where(has, n, 1.0)
    p_hat = hits / safe
    half = np.sqrt(np.log(2.0 / deltas) / (2.0 * safe))
    return (np.where(has, np.clip(p_hat - half, 0.0, 1.0), 0.0), np.where(has, np.clip(p_hat + half, 0.0, 1.0), 1.0))


def step_up(pvalues: np.ndarray, fdr: float, n_hypotheses: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (rejected mask, q-values) of the step-up procedure for `method` over n_hypotheses hypotheses.

    pvalues: the p-values that were computed (any others count in n_hypotheses with p = 1). q-values
    (adjusted p-values: the smallest level at which the hypothesis is rejected) are exact for every
    rejected hypothesis; others may be reported larger (capped at 1).
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    m = max(int(n_hypotheses), p.size, 1)
    factor = 1.0 if procedure(method) == "e-BH" else harmonic(m)
    order = np.argsort(p, kind="stable")
    ranked = p[order] * factor * m / np.arange(1, p.size + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty_like(p)
    q[order] = np.minimum(adjusted, 1.0)
    return q <= fdr, q
