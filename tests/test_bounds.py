"""Error bars: Chernoff (KL form) and Hoeffding intervals, their difference, and the global bounds.

Checked against a slow scalar reference, closed forms, exact binomial coverage and seeded
simulations of Bernoulli trials with known truth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from raymem.errors import RaymemError
from raymem.estimator import bounds


# --- independent references -------------------------------------------------------------------

def scalar_kl(p: float, q: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(q)) for one pair, written out with math only."""
    total = 0.0
    if p > 0:
        total += p * math.log(p / q) if q > 0 else math.inf
    if p < 1:
        total += (1 - p) * math.log((1 - p) / (1 - q)) if q < 1 else math.inf
    return total


def scalar_chernoff(hits: int, n: int, delta: float) -> tuple[float, float]:
    """Slow reference: one scalar bisection per end, 200 steps each."""
    if n == 0:
        return 0.0, 1.0
    p_hat, budget = hits / n, math.log(2 / delta)
    lo, hi = 0.0, 1.0
    if hits > 0:
        a, b = 0.0, p_hat  # a outside, b inside
        for _ in range(200):
            m = (a + b) / 2
            if n * scalar_kl(p_hat, m) <= budget:
                b = m
            else:
                a = m
        lo = b
    if hits < n:
        a, b = p_hat, 1.0  # a inside, b outside
        for _ in range(200):
            m = (a + b) / 2
            if n * scalar_kl(p_hat, m) <= budget:
                a = m
            else:
                b = m
        hi = a
    return lo, hi


def binomial_pmf(n: int, p: float) -> np.ndarray:
    """P[Binomial(n, p) = k] for k = 0..n, via log-gamma (0 < p < 1)."""
    k = np.arange(n + 1)
    log_comb = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    return np.exp(log_comb + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_upper_tail(n: int, p: float, at_least: int) -> float:
    """P[Binomial(n, p) >= at_least]."""
    return float(binomial_pmf(n, p)[at_least:].sum())


def count_grid() -> tuple[np.ndarray, np.ndarray]:
    """(hits, n) pairs covering every hits for small n, and the ends and middle for large n."""
    hits, ns = [], []
    for n in (1, 2, 3, 5, 10, 37, 100):
        hits.extend(range(n + 1))
        ns.extend([n] * (n + 1))
    for n in (1000, 20000):
        chosen = [0, 1, 2, n // 3, n // 2, n - 2, n - 1, n]
        hits.extend(chosen)
        ns.extend([n] * len(chosen))
    return np.array(hits), np.array(ns)


# --- kl_bernoulli -------------------------------------------------------------------------------

def test_kl_bernoulli_matches_scalar_formula_and_edge_conventions():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, size=50)
    q = rng.uniform(0.01, 0.99, size=50)
    expected = [scalar_kl(a, b) for a, b in zip(p, q)]
    np.testing.assert_allclose(bounds.kl_bernoulli(p, q), expected, rtol=1e-12)
    q = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(bounds.kl_bernoulli(0.0, q), -np.log1p(-q), rtol=1e-12)
    np.testing.assert_allclose(bounds.kl_bernoulli(1.0, q), -np.log(q), rtol=1e-12)
    np.testing.assert_allclose(bounds.kl_bernoulli(q, q), 0.0, atol=1e-15)
    # q at the wrong end is clipped: large but finite.
    assert np.isfinite(bounds.kl_bernoulli(0.5, np.array([0.0, 1.0]))).all()


# --- chernoff_interval --------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [0.05, 0.3])
def test_chernoff_interval_matches_scalar_reference(delta):
    hits, ns = count_grid()
    lo, hi = bounds.chernoff_interval(hits, ns, delta)
    reference = np.array([scalar_chernoff(int(h), int(n), delta) for h, n in zip(hits, ns)])
    np.testing.assert_allclose(lo, reference[:, 0], atol=1e-9)
    np.testing.assert_allclose(hi, reference[:, 1], atol=1e-9)
    assert lo.dtype == np.float64 and hi.dtype == np.float64


def test_chernoff_interval_closed_forms_at_the_ends():
    ns = np.array([1, 2, 7, 50, 500])
    delta = 0.1
    lo, hi = bounds.chernoff_interval(np.zeros_like(ns), ns, delta)
    assert (lo == 0.0).all()
    np.testing.assert_allclose(hi, 1 - (delta / 2) ** (1 / ns), atol=1e-12)
    lo, hi = bounds.chernoff_interval(ns, ns, delta)
    assert (hi == 1.0).all()
    np.testing.assert_allclose(lo, (delta / 2) ** (1 / ns), atol=1e-12)


def test_chernoff_interval_keeps_shape_and_handles_no_samples():
    hits = np.array([[0, 3], [0, 10]])
    ns = np.array([[0, 5], [0, 10]])
    lo, hi = bounds.chernoff_interval(hits, ns, 0.05)
    assert lo.shape == hits.shape and hi.shape == hits.shape
    assert lo[0, 0] == 0.0 and hi[0, 0] == 1.0 and lo[1, 0] == 0.0 and hi[1, 0] == 1.0
    assert 0.0 < lo[0, 1] < 0.6 < hi[0, 1] < 1.0


def test_chernoff_interval_is_never_wider_than_hoeffding():
    hits, ns = count_grid()
    for delta in (0.001, 0.05, 0.5):
        kl_lo, kl_hi = bounds.chernoff_interval(hits, ns, delta)
        h_lo, h_hi = bounds.hoeffding_interval(hits, ns, delta)
        assert (kl_lo >= h_lo - 1e-12).all()
        assert (kl_hi <= h_hi + 1e-12).all()
        # ... and strictly narrower somewhere (at the ends KL is much tighter).
        assert ((kl_hi - kl_lo) < (h_hi - h_lo) - 1e-3).any()


@pytest.mark.parametrize("interval", [bounds.chernoff_interval, bounds.hoeffding_interval])
@pytest.mark.parametrize("n", [1, 2, 5, 13, 50, 500])
def test_exact_binomial_coverage_is_at_least_one_minus_delta(interval, n):
    delta = 0.1
    lo, hi = interval(np.arange(n + 1), np.full(n + 1, n), delta)
    for p in np.concatenate([np.linspace(0.001, 0.999, 97), [0.02, 0.3, 0.5, 0.97]]):
        covered = (lo <= p) & (p <= hi)
        coverage = float(binomial_pmf(n, p)[covered].sum())
        assert coverage >= 1 - delta - 1e-12, (n, p, coverage)


@pytest.mark.parametrize("interval", [bounds.chernoff_interval, bounds.hoeffding_interval])
def test_simulated_coverage_on_bernoulli_trials(interval):
    rng = np.random.default_rng(12345)
    delta, repetitions = 0.1, 4000
    for p in (0.02, 0.3, 0.5, 0.97):
        for n in (5, 50, 500):
            trials = rng.random((repetitions, n)) < p
            lo, hi = interval(trials.sum(axis=1), np.full(repetitions, n), delta)
            misses = int(np.count_nonzero((p < lo) | (p > hi)))
            # Were the miss rate really delta, seeing this many misses or more would be rarer than 1e-6.
            assert binomial_upper_tail(repetitions, delta, misses) > 1e-6, (p, n, misses)


# --- hoeffding_interval ---------------------------------------------------------------------------

def test_hoeffding_interval_values_and_no_samples():
    delta = 0.05
    lo, hi = bounds.hoeffding_interval(np.array([0, 20, 100, 0]), np.array([100, 100, 100, 0]), delta)
    half = math.sqrt(math.log(2 / delta) / 200)
    np.testing.assert_allclose(lo, [0.0, 0.2 - half, 1.0 - half, 0.0], atol=1e-15)
    np.testing.assert_allclose(hi, [half, 0.2 + half, 1.0, 1.0], atol=1e-15)


# --- difference_interval --------------------------------------------------------------------------

def test_difference_interval_spends_delta_over_two_per_term():
    n_in = np.array([1, 4, 30, 300])
    delta = 0.05
    # An empty out-term is [0, 1]: the upper end is then the in-term's, at delta / 2 (ln(4 / delta)).
    lo, hi = bounds.difference_interval(np.zeros_like(n_in), n_in, 0, 0, delta, method="chernoff")
    np.testing.assert_allclose(hi, 1 - (delta / 4) ** (1 / n_in), atol=1e-12)
    np.testing.assert_allclose(lo, -1.0)
    lo, hi = bounds.difference_interval(0, 0, 0, 0, delta, method="hoeffding")
    assert lo == -1.0 and hi == 1.0
    lo, hi = bounds.difference_interval(n_in, n_in, 0, n_in, delta, method="hoeffding")
    half = np.sqrt(math.log(4 / delta) / (2 * n_in))
    np.testing.assert_allclose(lo, np.clip(1 - 2 * half, -1, 1), atol=1e-12)
    np.testing.assert_allclose(hi, 1.0)


@pytest.mark.parametrize("method", ["chernoff", "hoeffding"])
def test_difference_interval_exact_coverage(method):
    delta = 0.1
    for n_in, n_out in ((0, 5), (3, 0), (7, 4), (30, 12), (70, 30)):
        h_in, h_out = np.meshgrid(np.arange(n_in + 1), np.arange(n_out + 1), indexing="ij")
        lo, hi = bounds.difference_interval(h_in, n_in, h_out, n_out, delta, method=method)
        for p_in, p_out in ((0.9, 0.1), (0.5, 0.5), (0.97, 0.3), (0.02, 0.6), (0.999, 0.001)):
            weight = np.outer(binomial_pmf(n_in, p_in), binomial_pmf(n_out, p_out))
            covered = (lo <= p_in - p_out) & (p_in - p_out <= hi)
            assert weight[covered].sum() >= 1 - delta - 1e-12, (n_in, n_out, p_in, p_out)


@pytest.mark.parametrize("method", ["chernoff", "hoeffding"])
def test_difference_interval_simulated_coverage_with_random_inclusion(method):
    # The estimator's setting: each of t trials contains example i with probability 0.7, and is
    # correct with probability p_in when it does and p_out when it does not.
    rng = np.random.default_rng(7)
    delta, repetitions, t = 0.1, 4000, 40
    for p_in, p_out in ((0.95, 0.2), (0.5, 0.5), (0.3, 0.02)):
        included = rng.random((repetitions, t)) < 0.7
        correct = rng.random((repetitions, t)) < np.where(included, p_in, p_out)
        n_in = included.sum(axis=1)
        lo, hi = bounds.difference_interval(
            (included & correct).sum(axis=1), n_in, (~included & correct).sum(axis=1), t - n_in, delta, method)
        misses = int(np.count_nonzero((p_in - p_out < lo) | (p_in - p_out > hi)))
        assert binomial_upper_tail(repetitions, delta, misses) > 1e-6, (p_in, p_out, misses)


def test_difference_interval_rejects_unknown_method():
    with pytest.raises(RaymemError, match="method"):
        bounds.difference_interval(1, 2, 1, 2, 0.05, method="bernstein")


# --- input checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 2.0])
def test_bad_delta_names_the_flag(delta):
    for call in (lambda: bounds.chernoff_interval(1, 2, delta),
                 lambda: bounds.hoeffding_interval(1, 2, delta),
                 lambda: bounds.difference_interval(1, 2, 1, 2, delta),
                 lambda: bounds.family_delta(delta, 10, True)):
        with pytest.raises(RaymemError, match="delta"):
            call()


def test_counts_out_of_range_are_rejected():
    with pytest.raises(RaymemError):
        bounds.chernoff_interval(np.array([3]), np.array([2]), 0.05)
    with pytest.raises(RaymemError):
        bounds.hoeffding_interval(np.array([-1]), np.array([2]), 0.05)


# --- family_delta, lemma21_rms_bound, trials_needed ------------------------------------------------

def test_family_delta_union_bound():
    assert bounds.family_delta(0.05, 1000, simultaneous=True) == pytest.approx(0.05 / 1000)
    assert bounds.family_delta(0.05, 1000, simultaneous=False) == 0.05
    with pytest.raises(RaymemError):
        bounds.family_delta(0.05, 0, simultaneous=True)


def test_lemma21_rms_bound():
    # CIFAR-100 setting: n = 50,000, m = 35,000 (p = 0.3), t = 2000 trials.
    expected = math.sqrt(1 / (0.3 * 2000) + 1 / (0.7 * 2000) + math.exp(-0.3 * 2000 / 16) / 2)
    assert bounds.lemma21_rms_bound(2000, 35000, 50000) == pytest.approx(expected, rel=1e-12)
    # p = min(m/n, 1 - m/n): m and n - m give the same bound.
    assert bounds.lemma21_rms_bound(500, 30, 100) == bounds.lemma21_rms_bound(500, 70, 100)
    assert bounds.lemma21_rms_bound(0, 70, 100) == 1.0
    assert bounds.lemma21_rms_bound(10, 100, 100) == 1.0
    values = [bounds.lemma21_rms_bound(t, 70, 100) for t in range(0, 3000, 7)]
    assert all(0 < v <= 1.0 for v in values)
    assert all(later <= earlier for earlier, later in zip(values, values[1:]))
    with pytest.raises(RaymemError):
        bounds.lemma21_rms_bound(10, 101, 100)
    with pytest.raises(RaymemError):
        bounds.lemma21_rms_bound(-1, 70, 100)


def test_trials_needed_extrapolates_one_over_sqrt_trials():
    # Hoeffding half-widths shrink exactly as 1/sqrt(n), so the extrapolation is exact for them.
    def halfwidth(n):
        lo, hi = bounds.hoeffding_interval(n // 2, n, 0.05)
        return float(hi - lo) / 2

    assert bounds.trials_needed(100, halfwidth(100), halfwidth(400)) == 400
    assert bounds.trials_needed(100, 0.2, 0.1) == 400
    assert bounds.trials_needed(100, 0.1, 0.1) == 100
    assert bounds.trials_needed(100, 0.05, 0.1) == 100  # already there: never fewer than done
    assert bounds.trials_needed(3, 0.2, 0.15) == math.ceil(3 * (0.2 / 0.15) ** 2)
    with pytest.raises(RaymemError):
        bounds.trials_needed(100, 0.2, 0.0)
    with pytest.raises(RaymemError):
        bounds.trials_needed(0, 0.5, 0.1)
