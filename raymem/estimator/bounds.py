"""Error bars for the estimator's conditional terms and their differences, and the checks of their inputs.

Each conditional term (e.g. P[correct | i in J]) is the mean of independent Bernoulli samples, one per
trial that contains (or omits) i. A difference of two terms (memorization, influence) gets an interval
by one of four methods (``INTERVAL_METHODS``):

- "anytime" (the default): a time-uniform confidence sequence, valid at every look however often one
  looks and whenever one stops (a joint region for both terms from a beta-binomial mixture martingale
  and Ville's inequality, projected onto the difference; see ``raymem.estimator.joint_bounds``).
- "fixed": valid at one fixed, pre-planned trial count (exact binomial tails combined by Fisher's
  method, projected onto the difference; ``raymem.estimator.joint_bounds``).
- "chernoff": a KL-form Chernoff interval per term at delta / 2, [lo_in - hi_out, hi_in - lo_out]
  (for comparison with the paper's Chernoff bars; valid at a fixed trial count).
- "hoeffding": the same with Hoeffding intervals.

The paper's global bound (Lemma 2.1) is offered beside them. Everything here is vectorised: counts may
be arrays of any (broadcastable) shape.
"""

from __future__ import annotations

import math

import numpy as np

from raymem.errors import RaymemError
from raymem.estimator import joint_bounds
from raymem.estimator.joint_bounds import Plan

#: How far q is kept from 0 and 1 inside kl_bernoulli, so that logarithms stay finite.
KL_Q_CLIP = 1e-15
#: Bisection steps for the Chernoff interval: the bracket [0, 1] halves each step, so after
#: 60 steps it is narrower than 1e-18 (well under the 1e-9 the interval needs).
CHERNOFF_BISECTION_STEPS = 60
#: The methods difference_interval accepts; the first is the default.
INTERVAL_METHODS = ("anytime", "fixed", "chernoff", "hoeffding")
DEFAULT_METHOD = "anytime"
#: Every interval holds with probability 1 - delta unless the reader asks for another delta.
DEFAULT_DELTA = 0.05
#: Methods whose bars hold at every look (the others hold at one fixed, pre-planned trial count).
ANYTIME_METHODS = ("anytime",)


def _number(value, name: str, example: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RaymemError(f"{name} must be a number (got {value!r}); pass e.g. {example}.", parameter=name) from None


def check_delta(delta: float, name: str = "delta") -> float:
    """Return delta as a float after checking 0 < delta < 1 (RaymemError naming the parameter otherwise)."""
    delta = _number(delta, name, "0.05")
    if not 0.0 < delta < 1.0:
        raise RaymemError(f"{name} must lie strictly between 0 and 1 (got {delta}); pass e.g. 0.05.", parameter=name)
    return delta


def check_method(method: str, name: str = "method") -> str:
    """Return method after checking it is one of INTERVAL_METHODS (RaymemError naming the parameter and the choices)."""
    if method not in INTERVAL_METHODS:
        raise RaymemError(f"{name} {method!r} is not an interval method; use one of {', '.join(INTERVAL_METHODS)}.",
                          parameter=name)
    return method


def check_threshold(value: float, name: str, example: str = "0.15") -> float:
    """Return a finite threshold in [-1, 1] (min_infl, min_mem, ...); RaymemError naming the parameter otherwise."""
    value = _number(value, name, example)
    if not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise RaymemError(f"{name} must be a finite number between -1 and 1 (got {value}); pass e.g. {example}.",
                          parameter=name)
    return value


def check_halfwidth(value: float, name: str) -> float:
    """Return a half-width target in (0, 1] (finite); RaymemError naming the parameter otherwise."""
    value = _number(value, name, "0.1")
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise RaymemError(f"{name} must be a half-width in (0, 1] (got {value}); pass e.g. 0.1.", parameter=name)
    return value


def check_jaccard(value: float, name: str) -> float:
    """Return a Jaccard similarity target in (0, 1]; RaymemError naming the parameter otherwise."""
    value = _number(value, name, "0.8")
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise RaymemError(f"{name} must be a Jaccard similarity in (0, 1] (got {value}); pass e.g. 0.8.",
                          parameter=name)
    return value


def check_fdr(value: float, name: str = "fdr") -> float:
    """Return the false discovery rate Q after checking 0 < Q < 1 (RaymemError naming the parameter otherwise)."""
    value = _number(value, name, "0.1")
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise RaymemError(f"{name} must lie strictly between 0 and 1 (got {value}); pass e.g. 0.1.", parameter=name)
    return value


def _counts(hits, n) -> tuple[np.ndarray, np.ndarray]:
    """Return (hits, n) as broadcast float64 arrays after checking 0 <= hits <= n."""
    hits, n = np.broadcast_arrays(np.asarray(hits, dtype=np.float64), np.asarray(n, dtype=np.float64))
    if np.any(n < 0) or np.any(hits < 0) or np.any(hits > n):
        raise RaymemError("hit counts must satisfy 0 <= hits <= trials for every entry; check the counts passed in.")
    return hits, n


def kl_bernoulli(p, q) -> np.ndarray:
    """Return KL(Bernoulli(p) || Bernoulli(q)) elementwise (float64, natural log).

    Uses 0 * log(0 / x) = 0, so p = 0 and p = 1 are exact; q is clipped to
    [KL_Q_CLIP, 1 - KL_Q_CLIP] so the result is finite (large where q sits at the wrong end).
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.clip(np.asarray(q, dtype=np.float64), KL_Q_CLIP, 1.0 - KL_Q_CLIP)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0)
        second = np.where(p < 1, (1 - p) * np.log(np.where(p < 1, 1 - p, 1.0) / (1 - q)), 0.0)
    return first + second


def chernoff_interval(hits, n, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (lo, hi): the two-sided KL-form Chernoff interval, confidence 1 - delta, for a Bernoulli mean.

    With p_hat = hits / n and L = ln(2 / delta) (delta / 2 per side):
    lo = min{q <= p_hat : n * KL(p_hat || q) <= L}, hi = max{q >= p_hat : n * KL(p_hat || q) <= L}.
    Computed by a fixed number of vectorised bisection steps (error < 1e-15); the returned ends are
    the outer ends of the final brackets, so the interval never falls short of the exact one.
    hits = 0 gives lo = 0, hits = n gives hi = 1, and n == 0 gives [0, 1]. Arrays of any shape.
    """
    delta = check_delta(delta)
    hits, n = _counts(hits, n)
    budget = math.log(2.0 / delta)
    has_samples = n > 0
    p_hat = np.where(has_samples, hits / np.where(has_samples, n, 1.0), 0.5)

    def inside(q):
        return n * kl_bernoulli(p_hat, q) <= budget

    # Lower end: `outer` is excluded (or 0), `inner` is included (p_hat always is).
    outer, inner = np.zeros_like(p_hat), p_hat.copy()
    for _ in range(CHERNOFF_BISECTION_STEPS):
        middle = 0.5 * (outer + inner)
        ok = inside(middle)
        inner = np.where(ok, middle, inner)
        outer = np.where(ok, outer, middle)
    lo = outer
    # Upper end, mirrored.
    inner, outer = p_hat.copy(), np.ones_like(p_hat)
    for _ in range(CHERNOFF_BISECTION_STEPS):
        middle = 0.5 * (outer + inner)
        ok = inside(middle)
        inner = np.where(ok, middle, inner)
        outer = np.where(ok, outer, middle)
    hi = outer

    lo = np.where(has_samples & (hits > 0), lo, 0.0)
    hi = np.where(has_samples & (hits < n), hi, 1.0)
    return lo, hi


def hoeffding_interval(hits, n, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (lo, hi) = p_hat -/+ sqrt(ln(2 / delta) / (2 n)) clipped to [0, 1]; n == 0 gives [0, 1]."""
    delta = check_delta(delta)
    hits, n = _counts(hits, n)
    has_samples = n > 0
    safe_n = np.where(has_samples, n, 1.0)
    p_hat = hits / safe_n
    half = np.sqrt(math.log(2.0 / delta) / (2.0 * safe_n))
    lo = np.where(has_samples, np.clip(p_hat - half, 0.0, 1.0), 0.0)
    hi = np.where(has_samples, np.clip(p_hat + half, 0.0, 1.0), 1.0)
    return lo, hi


def difference_interval(hits_in, n_in, hits_out, n_out, delta: float, method: str = DEFAULT_METHOD,
                        plan: Plan | None = None):
    """Return (lo, hi): confidence 1 - delta for rate_in - rate_out (memorization or influence).

    method "anytime" / "fixed": the projection of a joint region for both terms (``joint``); ``plan``
    (planned trials and subset ratio) tunes the anytime mixture and is ignored by the others.
    method "chernoff" / "hoeffding": each term gets a two-sided interval at delta / 2 (so each side
    uses ln(4 / delta)); then lo = lo_in - hi_out and hi = hi_in - lo_out. An empty term contributes [0, 1].
    Results are clipped to [-1, 1].
    """
    delta = check_delta(delta)
    check_method(method)
    if method in ("anytime", "fixed"):
        _counts(hits_in, n_in)
        _counts(hits_out, n_out)
        return joint_bounds.difference_interval(hits_in, n_in, hits_out, n_out, delta, method, plan)
    interval = chernoff_interval if method == "chernoff" else hoeffding_interval
    lo_in, hi_in = interval(hits_in, n_in, delta / 2.0)
    lo_out, hi_out = interval(hits_out, n_out, delta / 2.0)
    return np.clip(lo_in - hi_out, -1.0, 1.0), np.clip(hi_in - lo_out, -1.0, 1.0)


def family_delta(delta: float, family_size: int, simultaneous: bool) -> float:
    """Return the delta to give each member of a family of intervals.

    delta / family_size when the bands must hold simultaneously for all members (union bound),
    else delta (each band holds on its own with confidence 1 - delta).
    """
    delta = check_delta(delta)
    if not simultaneous:
        return delta
    if int(family_size) < 1:
        raise RaymemError(f"a simultaneous band needs at least one estimate (got family size {family_size}).")
    return delta / int(family_size)


def lemma21_rms_bound(trials: int, subset_size: int, n_train: int) -> float:
    """Return the paper's global bound on the root mean squared error of any estimate (Lemma 2.1).

    sqrt(1/(p t) + 1/((1-p) t) + exp(-p t / 16) / 2) with p = min(m/n, 1 - m/n), t = trials,
    m = subset_size, n = n_train. The result is capped at 1.0: the value says nothing useful above
    that, and with t == 0 every estimate is exactly 1/2 - 1/2 = 0, whose error is at most 1.
    (For t >= 1 an estimate can in principle miss by up to 2, so a capped 1.0 reads "no guarantee",
    not a proven bound.) p == 0 (m = 0 or m = n) also gives 1.0.
    """
    trials, subset_size, n_train = int(trials), int(subset_size), int(n_train)
    if trials < 0 or n_train < 1 or not 0 <= subset_size <= n_train:
        raise RaymemError(
            f"Lemma 2.1 needs trials >= 0, n_train >= 1 and 0 <= subset size <= n_train "
            f"(got {trials}, {n_train}, {subset_size}); check the run's config."
        )
    p = min(subset_size, n_train - subset_size) / n_train  # = min(m/n, 1 - m/n), without rounding
    if trials == 0 or p <= 0.0:
        return 1.0
    squared = 1.0 / (p * trials) + 1.0 / ((1.0 - p) * trials) + math.exp(-p * trials / 16.0) / 2.0
    return min(1.0, math.sqrt(squared))


def trials_needed(trials_done: int, halfwidth: float, target_halfwidth: float) -> int:
    """Return about how many trials in total bring `halfwidth` down to `target_halfwidth` (1/sqrt(t) scaling).

    An extrapolation, not a guarantee: interval half-widths shrink roughly as 1/sqrt(trials), so
    the answer is ceil(t * (halfwidth / target)^2), and never less than trials_done. The status
    reports ``more_trials_needed`` (additional trials, under the method in use) instead; see
    ``raymem.estimator.stopping``.
    """
    trials_done = int(trials_done)
    halfwidth = float(halfwidth)
    target_halfwidth = check_halfwidth(target_halfwidth, "target_halfwidth")
    if trials_done < 1:
        raise RaymemError("the number of trials needed can only be extrapolated after at least one trial is done.")
    estimate = trials_done * (halfwidth / target_halfwidth) ** 2
    # The tiny relative slack keeps e.g. halfwidth == target from rounding up to t + 1.
    return max(trials_done, math.ceil(estimate * (1.0 - 1e-12)))
