"""When is a run done? The stopping criteria and the extrapolated trials still needed.

- ``halfwidth_criterion``: the median memorization half-width (of the anytime bars by default: those stay
  valid when the run stops because of what they show) is at most W (``--until-halfwidth W``).
- ``jaccard_criterion``: the split-half Jaccard similarity of {i : mem >= 0.25} estimated from the even
  trials vs. the odd trials is at least J (``--until-jaccard J``); an empty union is "not met".
- ``more_trials_needed``: how many trials beyond those done bring the median half-width of the method in
  use down to a target, found by scaling the counts (same rates, more samples) and re-evaluating that
  method's bars on a fixed subsample of the examples: an extrapolation, not a guarantee.

A run stops when every criterion it was given is met (``all_met``); each criterion reports its current
value and target so a user sees how far it is.
"""

from __future__ import annotations

import math

import numpy as np

from raymem.estimator import bounds, formulas, selection
from raymem.estimator.counts import Counts, VectorCounts
from raymem.estimator.bars import Bars

#: The memorization threshold of the split-half criterion (the paper's).
JACCARD_THRESHOLD = formulas.PAPER_MIN_MEM
#: Examples (evenly spaced) on which more_trials_needed re-evaluates the bars.
EXTRAPOLATION_SAMPLE = 2000
#: Largest factor of the trials done that more_trials_needed searches.
EXTRAPOLATION_MAX_FACTOR = 2.0**20


def halfwidth_criterion(median_halfwidth: float, target: float) -> dict:
    """{"met", "value", "target"} of --until-halfwidth given the current median half-width."""
    target = bounds.check_halfwidth(target, "until_halfwidth")
    value = None if median_halfwidth is None or math.isnan(median_halfwidth) else float(median_halfwidth)
    return {"met": value is not None and value <= target, "value": value, "target": target}


def split_half_jaccard(counts: Counts, threshold: float = JACCARD_THRESHOLD) -> float:
    """Jaccard of {mem >= threshold} from the even trials vs. the odd trials (NaN when both sets are empty)."""
    return selection.jaccard_and_mean_difference(
        counts.even.memorization(), counts.odd.memorization(), threshold)["jaccard"]


def jaccard_criterion(counts: Counts, target: float, threshold: float = JACCARD_THRESHOLD) -> dict:
    """{"met", "value", "target", "threshold"} of --until-jaccard."""
    target = bounds.check_jaccard(target, "until_jaccard")
    value = split_half_jaccard(counts, threshold)
    value = None if math.isnan(value) else float(value)
    return {"met": value is not None and value >= target, "value": value, "target": target, "threshold": threshold}


def all_met(criteria: dict) -> bool:
    """True when every criterion given is met (False when none is given: nothing says stop)."""
    return bool(criteria) and all(c["met"] for c in criteria.values())


def _scaled(v: VectorCounts, rows: np.ndarray, factor: float):
    """Counts of `rows` as if factor times the trials had been done at the same rates (rounded)."""
    n_in = np.rint(v.n_in[rows] * factor).astype(np.int64)
    n_out = np.rint(v.n_out[rows] * factor).astype(np.int64)
    in_hits = np.minimum(np.rint(v.in_hits[rows] * factor).astype(np.int64), n_in)
    out_hits = np.minimum(np.rint(v.out_hits[rows] * factor).astype(np.int64), n_out)
    return in_hits, n_in, out_hits, n_out


def more_trials_needed(v: VectorCounts, target_halfwidth: float, bars: Bars, *, n_family: int,
                       current_median: float | None = None) -> int | None:
    """Return about how many more trials bring the median memorization half-width to `target_halfwidth`.

    0 when it is already there; None before any trial. Scales the counts of an evenly spaced sample of
    rows by a factor k (the same rates, k times the samples), re-evaluates `method`'s bars and finds the
    smallest k (bisection) whose median half-width is at most the target; the answer is
    ceil((k - 1) * trials). Accounts for what the method adds to the 1/sqrt(t) law (the anytime bars'
    slowly growing log term, the mixture tuned to the plan).
    ``bars``: the method, delta and plan of the bars whose width is extrapolated.
    """
    target_halfwidth = bounds.check_halfwidth(target_halfwidth, "target_halfwidth")
    t = int(v.trials)
    if t < 1 or v.n_in.size == 0:
        return None
    rows = np.unique(np.linspace(0, v.n_in.size - 1, min(EXTRAPOLATION_SAMPLE, v.n_in.size)).astype(np.int64))

    def median_at(factor: float) -> float:
        lo, hi = bars.difference(*_scaled(v, rows, factor), n_family)
        return float(np.median((hi - lo) / 2.0))

    now = current_median if current_median is not None else median_at(1.0)
    if now <= target_halfwidth:
        return 0
    lo_f, hi_f = 1.0, 2.0
    while median_at(hi_f) > target_halfwidth:
        lo_f, hi_f = hi_f, hi_f * 2.0
        if hi_f > EXTRAPOLATION_MAX_FACTOR:
            return math.ceil((EXTRAPOLATION_MAX_FACTOR - 1.0) * t)
    while hi_f - lo_f > max(0.5 / t, 1e-3 * lo_f):
        mid = 0.5 * (lo_f + hi_f)
        if median_at(mid) > target_halfwidth:
            lo_f = mid
        else:
            hi_f = mid
    return max(1, math.ceil((hi_f - 1.0) * t - 1e-9))
