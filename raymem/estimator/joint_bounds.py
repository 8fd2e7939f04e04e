"""Joint error bars for a difference of two conditional terms: the "anytime" and "fixed" methods.

memorization and influence are differences q1 - q2 of two Bernoulli means: q1 = P[correct | i in J]
estimated from the n1 trials that contain i (S1 of them correct), q2 = P[correct | i not in J] from
the n2 = t - n1 others (S2 correct). Given the masks (which depend on nothing that is measured), the
in-samples and the out-samples are independent Bernoulli samples, and every trial feeds exactly one
of the two streams. Both methods build a confidence region for the pair (q1, q2) of the form

    R = {(q1, q2) : u1(q1) + u2(q2) < L}

with one "evidence" function u per term, and report its projection onto q1 - q2 (never the box of two
separate intervals, and no delta split to choose: the projection finds the best split by itself).

anytime (the default): u = log M_t(q), the beta-binomial conjugate mixture of the likelihood ratio,

    M_t(q) = B(c q + S, c (1 - q) + F) / (B(c q, c (1 - q)) q^S (1 - q)^F),     F = n - S,

i.e. the likelihood ratio of the alternatives q' ~ Beta(c q, c (1 - q)) (centred on the null q, c
pseudo-samples wide) against q. Under the true q, M_t(q) is a nonnegative martingale with mean 1 in
the number of samples. Trials arrive one at a time and each trial extends exactly one of the two
streams, so for the true (q1, q2) the product M_in(q1) M_out(q2) is a nonnegative martingale for the
filtration of all trials (a product of the two likelihood-ratio mixtures, each factor moving only on
its own trials); with L = ln(1 / delta) Ville's inequality gives P[exists t: (q1, q2) not in R_t] <=
delta. So the bars hold simultaneously at every look, however often a user looks and whenever the
run stops (on what it shows, too). The one assumption beyond the paper's: the order in which trials
are counted does not depend on their outcomes (it may depend on anything else, e.g. which worker
finished first). c is tuned once per run, from the planned trial count T* and subset ratio r (c_in =
x r T*, c_out = x (1 - r) T*, with x minimising the Gaussian-limit width (1 + x)(L + ln(1 + 1/x)) at
T*), so the bars are narrowest where users decide; c never changes while the run goes on (it may not:
the martingale needs one fixed mixture).

fixed: u = -ln p, with p the exact (Clopper-Pearson) one-sided binomial tail: for the lower end of
q1 - q2, p1(q1) = P_q1[X1 >= S1] and p2(q2) = P_q2[X2 <= S2]. These are independent super-uniform
p-values, so -ln p1 - ln p2 is stochastically below a Gamma(2, 1) variable (Fisher's combination) and
L with e^-L (1 + L) = delta / 2 gives a one-sided region valid at one fixed, pre-planned trial count;
the upper end mirrors it with the opposite tails (delta / 2 each side). Projecting R equals taking
the best union-bound split (delta1, delta2) over all splits with ln delta1 + ln delta2 = -L, chosen
after seeing the data, which is valid because it is this projection.

Computation. Each term's bounds are computed once per distinct (S, n) on a ladder of levels
U_0 + j h (j = 0..J), {q : u(q) <= U_j} = [lo_j, hi_j]; the region R is covered by the union of
boxes [lo1_j, hi1_j] x [lo2_{J0-j}, hi2_{J0-j}] (a staircase: every point with u1 + u2 < L lies in one
of them when U_{j} + U_{J0-j} = L + h), so the reported interval contains the exact projection (it is
wider by at most the step h = LEVEL_STEP in L). Anytime bounds are read off a fine grid of q per term
(the outer grid point is reported, so a bound is never inside the exact one by more than the grid's
resolution at the crossing); fixed bounds are exact beta quantiles (scipy.special.betaincinv).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import betaincinv, gammaln

from raymem.errors import RaymemError

#: Spacing h of the ladder of levels (in nats): the staircase covers the region u1 + u2 < L + h.
LEVEL_STEP = 0.25
#: Evenly spaced grid points per side of the anytime bounds, out to the farthest level (~0.1 standard error apart).
GRID_POINTS = 72
#: Points of the geometric tail that carries the anytime grid from its last z-step to q = 0 (or 1).
GRID_TAIL = 12
#: Smallest distance from 0 and 1 at which the anytime mixture is evaluated.
GRID_EDGE = 1e-13
#: The paper's run length: the anytime mixture is tuned to it when the run's plan is not known.
DEFAULT_PLANNED_TRIALS = 2000
#: The paper's subset ratio, used with DEFAULT_PLANNED_TRIALS.
DEFAULT_SUBSET_RATIO = 0.7


@dataclass(frozen=True)
class Plan:
    """The run's plan, to which the anytime mixture is tuned: planned trials T* and subset ratio m / n.

    budget: the level ln(1/delta) the mixture is tuned to; None tunes it to each call's own delta. The
    readers fix it to the user's nominal delta, so that a simultaneous band (delta / N) uses the same
    mixture as the per-example bars, only a higher threshold, and is nested around them.
    """

    trials: int = DEFAULT_PLANNED_TRIALS
    ratio: float = DEFAULT_SUBSET_RATIO
    budget: float | None = None

    @classmethod
    def of(cls, planned_trials=None, subset_ratio=None, budget=None) -> "Plan":
        """The plan for a run of ``planned_trials`` trials at ``subset_ratio`` (defaults when None)."""
        trials = DEFAULT_PLANNED_TRIALS if planned_trials is None else planned_trials
        ratio = DEFAULT_SUBSET_RATIO if subset_ratio is None else subset_ratio
        try:
            trials, ratio = int(trials), float(ratio)
        except (TypeError, ValueError):
            raise RaymemError(f"planned_trials ({planned_trials!r}) and subset_ratio ({subset_ratio!r}) "
                              "must be numbers; "
                              "check the run's trials and subset ratio.", parameter="planned_trials") from None
        if trials < 1:
            raise RaymemError(f"planned_trials must be at least 1 (got {trials}); check the run's trials.",
                              parameter="planned_trials")
        if not 0.0 < ratio < 1.0:
            raise RaymemError(f"subset_ratio must lie strictly between 0 and 1 (got {ratio}); check the run's "
                              "subset_ratio.", parameter="subset_ratio")
        return cls(trials, ratio, None if budget is None else float(budget))


# ---- tuning --------------------------------------------------------------------------------------

def fisher_budget(delta: float) -> float:
    """Return L > 0 with e^-L (1 + L) = delta: the Fisher-combination threshold of two p-values at level delta."""
    lo, hi = 0.0, 800.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.exp(-mid) * (1.0 + mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def fisher_level(budget) -> np.ndarray:
    """The inverse of fisher_budget: delta = e^-L (1 + L) (1 where L <= 0)."""
    budget = np.maximum(np.asarray(budget, dtype=np.float64), 0.0)
    return np.exp(-budget) * (1.0 + budget)


def mixture_ratio(budget: float) -> float:
    """Return x > 0 minimising (1 + x)(L + ln(1 + 1/x)): the mixture's pseudo-samples per planned sample.

    In the Gaussian limit the projected half-width of the anytime region at the planned trial count is
    sigma_diff * sqrt(2 (1 + x)(L + ln(1 + 1/x))) when each term's mixture has c = x n* pseudo-samples.
    """
    budget = max(float(budget), 1e-3)
    f = lambda x: (1.0 + x) * (budget + math.log1p(1.0 / x))  # noqa: E731
    lo, hi = math.log(1e-4), math.log(10.0)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(80):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if f(math.exp(a)) < f(math.exp(b)):
            hi = b
        else:
            lo = a
    return math.exp(0.5 * (lo + hi))


def mixture_sizes(plan: Plan, budget: float) -> tuple[float, float]:
    """Return (c_in, c_out): the anytime mixture's pseudo-samples for the in- and the out-term.

    Tuned to plan.budget when the plan fixes one, else to `budget` (the call's own ln(1/delta))."""
    x = mixture_ratio(plan.budget if plan.budget is not None else budget)
    return x * plan.ratio * plan.trials, x * (1.0 - plan.ratio) * plan.trials


# ---- per-term evidence ---------------------------------------------------------------------------

def log_mixture(q, hits, n, c) -> np.ndarray:
    """ln M(q) of the beta-binomial mixture (centred at q, c pseudo-samples); q strictly inside (0, 1)."""
    q = np.asarray(q, dtype=np.float64)
    s = np.asarray(hits, dtype=np.float64)
    f = np.asarray(n, dtype=np.float64) - s
    a, b = c * q, c * (1.0 - q)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (gammaln(a + s) - gammaln(a) + gammaln(b + f) - gammaln(b)
                 - (gammaln(c + s + f) - gammaln(c)) - s * np.log(q) - f * np.log1p(-q))
    return value


def _unique_terms(hits: np.ndarray, n: np.ndarray):
    """Return (hits, n) of each distinct term and the index of every entry's term."""
    key = np.stack([hits.astype(np.int64), n.astype(np.int64)], axis=1)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    return uniq[:, 0], uniq[:, 1], inverse.ravel()


def _grid(p_hat, n, c, top_level: float):
    """Distances from p_hat (terms, G): GRID_POINTS even steps out to the farthest level, then a geometric tail.

    The farthest level sits about sqrt(2 (1 + c/n) U) standard errors out (Gaussian regime) or about
    (1 + c/n) U / n away (near 0 or 1, where the binomial looks Poisson); the even steps reach the larger.
    """
    nn = np.maximum(n, 1).astype(np.float64)
    inflate = 1.0 + c / nn
    top = max(top_level, 1.0)
    gaussian = np.sqrt(p_hat * (1.0 - p_hat) / nn * inflate) * (math.sqrt(2.6 * top) + 1.5)
    poisson = 1.3 * inflate * (top + 2.0) / nn
    reach = np.minimum(np.maximum(gaussian, poisson), 1.0)
    near = reach[:, None] * np.linspace(0.0, 1.0, GRID_POINTS)[None, :]
    tail = reach[:, None] * np.geomspace(1.0, 1e15, GRID_TAIL)[None, 1:]
    return np.concatenate([near, tail], axis=1)


def _side_bounds(u: np.ndarray, q: np.ndarray, levels: np.ndarray, far_end: float) -> np.ndarray:
    """Outer bound of {q : u(q) <= U} on one side, for every row of u and every level U.

    u, q: (terms, G), grid points ordered from p_hat outwards. Uses the suffix minimum of u (from the
    far end inwards), so a level is "reached" only beyond the farthest grid point still inside; the
    bound is the first grid point past it, or far_end when the whole grid is inside.
    """
    terms, g = u.shape
    w = np.minimum.accumulate(u[:, ::-1], axis=1)[:, ::-1]  # nondecreasing outwards
    w = np.where(np.isnan(w), np.inf, w)
    # First index k with w[k] >= level (g when none): a binary search per (term, level), exact.
    lo = np.zeros((terms, levels.size), dtype=np.int64)
    hi = np.full((terms, levels.size), g, dtype=np.int64)
    target = np.broadcast_to(levels[None, :], lo.shape)
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        below = np.take_along_axis(w, np.minimum(mid, g - 1), axis=1) < target
        moving = lo < hi
        lo = np.where(moving & below, mid + 1, lo)
        hi = np.where(moving & ~below, mid, hi)
    q_ext = np.concatenate([q, np.full((terms, 1), far_end)], axis=1)
    return np.take_along_axis(q_ext, lo, axis=1)


def _anytime_terms(hits, n, c: float, top_level: float):
    """Per distinct term: (lower-side grid q, u), (upper-side grid q, u), and the smallest u seen."""
    hits = hits.astype(np.float64)
    n = n.astype(np.float64)
    has = n > 0
    p_hat = np.where(has, hits / np.where(has, n, 1.0), 0.5)
    dist = _grid(p_hat, n, c, top_level)
    q_lo = np.clip(p_hat[:, None] - dist, GRID_EDGE, 1.0 - GRID_EDGE)
    q_hi = np.clip(p_hat[:, None] + dist, GRID_EDGE, 1.0 - GRID_EDGE)
    u_lo = log_mixture(q_lo, hits[:, None], n[:, None], c)
    u_hi = log_mixture(q_hi, hits[:, None], n[:, None], c)
    u_lo[~has] = 0.0
    u_hi[~has] = 0.0
    u_min = np.minimum(np.nanmin(u_lo, axis=1), np.nanmin(u_hi, axis=1))
    return (q_lo, u_lo), (q_hi, u_hi), u_min


@dataclass
class _Ladder:
    """Bounds of one kind of term at the global levels (first + k) h, k = 0..K: lo, hi (distinct terms, K + 1).

    floor: per distinct term, a level index at or below the term's smallest evidence (its ladder's
    useful bottom); inverse: entry -> distinct term.
    """

    lo: np.ndarray
    hi: np.ndarray
    floor: np.ndarray
    inverse: np.ndarray


#: Margin (nats) between a term's smallest evidence seen on its grid and its ladder's floor.
FLOOR_MARGIN = 0.5
#: Levels below a term's floor the anytime ladder still provides (its floor may be the pair's base).
GRID_EXTRA_LEVELS = 6.0


def _anytime_ladders(h_in, n_in, h_out, n_out, c_in, c_out, top_budget: float):
    """Ladders of both terms for the anytime method, on one global level grid; and its first index."""
    terms, grids = [], []
    first = 0
    for hits, n, c in ((h_in, n_in, c_in), (h_out, n_out, c_out)):
        s, m, inverse = _unique_terms(hits, n)
        low, high, u_min = _anytime_terms(s, m, c, top_budget + GRID_EXTRA_LEVELS)
        floor = np.floor((u_min - FLOOR_MARGIN) / LEVEL_STEP).astype(np.int64)
        floor = np.minimum(floor, 0)
        terms.append((inverse, floor))
        grids.append((low, high))
        if floor.size:
            first = min(first, int(floor.min()))
    # The highest level a pair needs: base + j0 with base >= first.
    last = _budget_steps(top_budget, first * LEVEL_STEP) + first
    levels = LEVEL_STEP * np.arange(first, last + 1)
    ladders = []
    for (inverse, floor), ((q_lo, u_lo), (q_hi, u_hi)) in zip(terms, grids):
        lo = _side_bounds(u_lo, q_lo, levels, 0.0)
        hi = _side_bounds(u_hi, q_hi, levels, 1.0)
        lo = np.where(lo <= GRID_EDGE * 1.5, 0.0, lo)
        hi = np.where(hi >= 1.0 - GRID_EDGE * 1.5, 1.0, hi)
        ladders.append(_Ladder(lo, hi, floor, inverse))
    return ladders, first


def _fixed_ladders(h_in, n_in, h_out, n_out, top_budget: float):
    """Ladders of both terms for the fixed method: exact one-sided Clopper-Pearson bounds at e^-(k h)."""
    steps = _budget_steps(top_budget, 0.0)
    levels = LEVEL_STEP * np.arange(steps + 1)
    alphas = np.exp(-levels)[None, :]
    ladders = []
    for hits, n in ((h_in, n_in), (h_out, n_out)):
        s, m, inverse = _unique_terms(hits, n)
        s = s.astype(np.float64)[:, None]
        m = m.astype(np.float64)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            lo = np.where(s > 0, betaincinv(np.maximum(s, 1e-300), m - s + 1.0, alphas), 0.0)
            hi = np.where(s < m, betaincinv(s + 1.0, np.maximum(m - s, 1e-300), 1.0 - alphas), 1.0)
        lo = np.where(np.isnan(lo), 0.0, lo)
        hi = np.where(np.isnan(hi), 1.0, hi)
        ladders.append(_Ladder(lo, hi, np.zeros(lo.shape[0], dtype=np.int64), inverse))
    return ladders, 0


def _staircase(lower_a: np.ndarray, upper_b: np.ndarray, base: np.ndarray, j0) -> np.ndarray:
    """Per row: min over j = 0..j0 of lower_a[base + j] - upper_b[base + j0 - j] (column indexes of the ladders)."""
    rows, width = lower_a.shape
    j = np.arange(width)[None, :]
    base = np.asarray(base)[:, None]
    j0 = np.broadcast_to(np.asarray(j0), (rows,))[:, None]
    a_idx = base + j
    b_idx = base + j0 - j
    valid = (j <= j0) & (a_idx < width) & (b_idx >= 0) & (b_idx < width)
    a_val = np.take_along_axis(lower_a, np.clip(a_idx, 0, width - 1), axis=1)
    b_val = np.take_along_axis(upper_b, np.clip(b_idx, 0, width - 1), axis=1)
    return np.min(np.where(valid, a_val - b_val, np.inf), axis=1)


def _budget_steps(budget: float, base) -> np.ndarray | int:
    """j0 = ceil((L + h - 2 U_0) / h): boxes j = 0..j0 cover u1 + u2 < L when both u >= U_0."""
    steps = np.ceil((budget + LEVEL_STEP - 2.0 * np.asarray(base, dtype=np.float64)) / LEVEL_STEP
                    - 1e-9).astype(np.int64)
    return int(steps) if steps.ndim == 0 else steps


def _pair_view(ladders, first: int):
    """Per entry: its two terms' ladders (gathered) and its base column (the lower floor of its two terms)."""
    a, b = ladders
    fa, fb = a.floor[a.inverse], b.floor[b.inverse]
    base_level = np.minimum(fa, fb)           # level index of U_0 for this pair
    base_col = base_level - first             # its column in the ladders
    return (a.lo[a.inverse], a.hi[a.inverse], b.lo[b.inverse], b.hi[b.inverse]), base_level, base_col


def _as_counts(h_in, n_in, h_out, n_out):
    arrays = np.broadcast_arrays(*(np.asarray(a) for a in (h_in, n_in, h_out, n_out)))
    shape = arrays[0].shape
    flat = [np.rint(np.asarray(a, dtype=np.float64)).astype(np.int64).ravel() for a in arrays]
    return shape, flat


def difference_interval(h_in, n_in, h_out, n_out, delta: float, method: str, plan: Plan | None = None):
    """Return (lo, hi) for q_in - q_out at confidence 1 - delta by the "anytime" or the "fixed" method.

    Counts are integer arrays of any broadcastable shape (hits <= trials, checked by the caller).
    """
    shape, (h1, n1, h2, n2) = _as_counts(h_in, n_in, h_out, n_out)
    if h1.size == 0:
        return np.zeros(shape), np.zeros(shape)
    if method == "anytime":
        budget = math.log(1.0 / delta)
        c_in, c_out = mixture_sizes(plan or Plan(), budget)
        ladders, first = _anytime_ladders(h1, n1, h2, n2, c_in, c_out, budget)
    elif method == "fixed":
        budget = fisher_budget(delta / 2.0)
        ladders, first = _fixed_ladders(h1, n1, h2, n2, budget)
    else:
        raise ValueError(method)
    (lo1, hi1, lo2, hi2), base_level, base_col = _pair_view(ladders, first)
    j0 = _budget_steps(budget, base_level * LEVEL_STEP)
    lower = _staircase(lo1, hi2, base_col, j0)
    upper = -_staircase(-hi1, -lo2, base_col, j0)
    lower = np.clip(lower, -1.0, 1.0)
    upper = np.clip(upper, -1.0, 1.0)
    return lower.reshape(shape), upper.reshape(shape)


def lower_pvalue(h_in, n_in, h_out, n_out, threshold: float, method: str, plan: Plan | None = None,
                 budget_for_tuning: float | None = None, p_max: float = 1.0, p_floor: float = 1e-30):
    """Return a valid one-sided p-value for H0: q_in - q_out <= threshold, per entry.

    p = the level of the largest region on the ladder whose projection's lower end stays above the
    threshold: every null point then lies outside a region that holds with probability >= 1 - p.
    anytime: p = e^-L, so 1 / p is an e-value, valid at any stopping time (Benjamini-Hochberg on these
    p-values is the e-BH procedure, valid under any dependence); fixed: p = e^-L (1 + L) (Fisher).
    p-values above p_max are reported as 1, and p-values below p_floor as p_floor (rounding up keeps a
    p-value valid). budget_for_tuning: the L to which the anytime mixture is tuned (default ln(1/p_max)).
    """
    shape, (h1, n1, h2, n2) = _as_counts(h_in, n_in, h_out, n_out)
    if h1.size == 0:
        return np.ones(shape)
    p_max, p_floor = float(p_max), min(float(p_floor), float(p_max))
    if method == "anytime":
        tuning = budget_for_tuning if budget_for_tuning is not None else math.log(1.0 / min(p_max, 0.5))
        c_in, c_out = mixture_sizes(plan or Plan(), tuning)
        min_budget, top = math.log(1.0 / p_max), math.log(1.0 / p_floor)
        ladders, first = _anytime_ladders(h1, n1, h2, n2, c_in, c_out, top)
        to_level = lambda budget: np.exp(-budget)  # noqa: E731
    elif method == "fixed":
        min_budget = fisher_budget(p_max) if p_max < 1.0 else 0.0
        top = fisher_budget(p_floor)
        ladders, first = _fixed_ladders(h1, n1, h2, n2, top)
        to_level = fisher_level
    else:
        raise ValueError(method)
    (lo1, _, _, hi2), base_level, base_col = _pair_view(ladders, first)
    width = lo1.shape[1]
    # LB(j0) is nonincreasing in j0 (the boxes grow); find the largest j0 with LB(j0) > threshold.
    # With boxes j = 0..j0 the region covered is u1 + u2 < L(j0) = 2 U_0 + (j0 - 1) h.
    j_max = width - 1 - base_col
    j_min = np.minimum(np.maximum(_budget_steps(min_budget, base_level * LEVEL_STEP), 0), j_max)
    good = _staircase(lo1, hi2, base_col, j_min) > threshold
    top_ok = good & (_staircase(lo1, hi2, base_col, j_max) > threshold)
    lo_j, hi_j = j_min.copy(), j_max.copy()
    active = good & ~top_ok
    while np.any(active & (hi_j - lo_j > 1)):
        mid = (lo_j + hi_j) // 2
        ok = _staircase(lo1, hi2, base_col, mid) > threshold
        lo_j = np.where(active & ok, mid, lo_j)
        hi_j = np.where(active & ~ok, mid, hi_j)
    best = np.where(top_ok, j_max, lo_j)
    budget = 2.0 * base_level * LEVEL_STEP + (best - 1) * LEVEL_STEP
    p = np.minimum(to_level(budget), 1.0)
    p = np.maximum(p, p_floor)
    p = np.where(good & (p <= p_max), p, 1.0)
    return p.reshape(shape)
