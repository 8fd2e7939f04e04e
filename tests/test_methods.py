"""The interval methods of issue 9 against known truth: exact coverage of "fixed", path-wise coverage of
"anytime", valid p-values, false discovery control of pairs_table(fdr=...), stopping criteria, input checks.

Deterministic: exact enumerations where possible, fixed seeds and binomial allowances elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from raymem.estimator.bars import Bars
from raymem.estimator.report import PairSelection, StatusQuestions
from raymem.errors import RaymemError
from raymem.estimator.bars import per_distinct_difference
from raymem.estimator import bounds, fdr, joint_bounds, report, stopping
from raymem.estimator.counts import Counts

P_IN = (0.8, 0.9, 0.95, 0.99, 1.0)
P_OUT = (0.0, 0.02, 0.2, 0.5, 0.9)


def exact_coverage(lo, hi, n_in, n_out, p_in, p_out) -> float:
    """P[lo <= p_in - p_out <= hi] over the binomial laws of both counts (lo, hi indexed [h_in, h_out])."""
    weight = np.outer(binom.pmf(np.arange(n_in + 1), n_in, p_in), binom.pmf(np.arange(n_out + 1), n_out, p_out))
    covered = (lo <= p_in - p_out + 1e-12) & (p_in - p_out - 1e-12 <= hi)
    return float(weight[covered].sum())


def upper_tail(n: int, p: float, at_least: int) -> float:
    return float(binom.sf(at_least - 1, n, p))


# ---- fixed: exact coverage at each grid cell ------------------------------------------------------

@pytest.mark.parametrize("trials", [20, 100, 400])
@pytest.mark.parametrize("delta", [0.05, 0.2])
def test_fixed_exact_coverage_at_every_grid_cell(trials, delta):
    n_in = round(0.7 * trials)
    n_out = trials - n_in
    h_in, h_out = np.meshgrid(np.arange(n_in + 1), np.arange(n_out + 1), indexing="ij")
    lo, hi = bounds.difference_interval(h_in, n_in, h_out, n_out, delta, method="fixed")
    assert (lo <= hi).all()
    for p_in in P_IN:
        for p_out in P_OUT:
            coverage = exact_coverage(lo, hi, n_in, n_out, p_in, p_out)
            assert coverage >= 1 - delta, (trials, p_in, p_out, coverage)


def test_fixed_and_anytime_contain_the_point_estimate_and_nest_in_delta():
    h_in, h_out = np.meshgrid(np.arange(0, 71, 7), np.arange(0, 31, 3), indexing="ij")
    estimate = h_in / 70 - h_out / 30
    for method in ("fixed", "anytime"):
        wide = bounds.difference_interval(h_in, 70, h_out, 30, 0.01, method=method,
                                          plan=joint_bounds.Plan(100, 0.7, 3.0))
        narrow = bounds.difference_interval(h_in, 70, h_out, 30, 0.1, method=method,
                                            plan=joint_bounds.Plan(100, 0.7, 3.0))
        assert (wide[0] <= narrow[0] + 1e-12).all() and (narrow[1] <= wide[1] + 1e-12).all()
        assert (narrow[0] <= estimate + 1e-12).all() and (estimate <= narrow[1] + 1e-12).all()


def test_empty_terms_give_the_widest_bars():
    for method in ("fixed", "anytime"):
        lo, hi = bounds.difference_interval(0, 0, 0, 0, 0.05, method=method)
        assert (lo, hi) == (-1.0, 1.0)
        lo, hi = bounds.difference_interval(np.array([5]), np.array([10]), 0, 0, 0.05, method=method)
        assert hi[0] <= 1.0 and lo[0] <= -0.5


# ---- anytime: no miss at any look, along whole trajectories -----------------------------------------

@pytest.mark.parametrize("p_in, p_out", [(0.95, 0.5), (0.5, 0.5), (0.99, 0.02), (0.8, 0.9)])
def test_anytime_pathwise_coverage_over_many_looks(p_in, p_out):
    rng = np.random.default_rng(int(1000 * p_in + 10 * p_out))
    delta, paths, trials, looks = 0.1, 600, 400, 50
    included = rng.random((paths, trials)) < 0.7
    correct = rng.random((paths, trials)) < np.where(included, p_in, p_out)
    in_hits = np.cumsum(included & correct, axis=1)
    n_in = np.cumsum(included, axis=1)
    out_hits = np.cumsum(~included & correct, axis=1)
    missed = np.zeros(paths, dtype=bool)
    plan = joint_bounds.Plan(trials, 0.7)
    for t in np.linspace(trials // looks, trials, looks).astype(int):
        k = t - 1
        lo, hi = per_distinct_difference(
            in_hits[:, k], n_in[:, k], out_hits[:, k], t - n_in[:, k], delta, method="anytime", plan=plan)
        missed |= (p_in - p_out < lo) | (p_in - p_out > hi)
    misses = int(missed.sum())
    # Were the path-wise miss rate delta, this many misses or more would be rarer than 1e-6.
    assert upper_tail(paths, delta, misses) > 1e-6, misses
    assert misses <= delta * paths  # in fact far below it


def test_anytime_is_tightest_near_the_planned_trials():
    # Bars tuned to 2000 trials are narrower at 2000 trials than bars tuned to 100 trials, and vice versa.
    def half(t, planned):
        n_in = round(0.7 * t)
        lo, hi = bounds.difference_interval(round(0.95 * n_in), n_in, round(0.5 * (t - n_in)), t - n_in, 0.05,
                                            method="anytime", plan=joint_bounds.Plan(planned, 0.7))
        return float(hi - lo) / 2
    assert half(2000, 2000) < half(2000, 100)
    assert half(100, 100) < half(100, 2000)


# ---- p-values ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["fixed", "anytime", "chernoff", "hoeffding"])
def test_pair_pvalues_are_valid_at_the_null_boundary(method):
    """P[p <= alpha] <= alpha exactly (enumeration), for nulls with infl exactly at the threshold."""
    n_in, n_out, threshold = 42, 18, 0.15
    h, other = np.meshgrid(np.arange(n_in + 1), np.arange(n_out + 1), indexing="ij")
    p = fdr.pair_pvalues(h, np.full(h.shape, n_in), np.full(h.shape, n_out), h + other, threshold,
                         method=method, fdr=0.5, n_hypotheses=1)
    assert ((p > 0) & (p <= 1)).all()
    for p_in in (0.3, 0.6, 0.95):
        p_out = p_in - threshold
        weight = np.outer(binom.pmf(np.arange(n_in + 1), n_in, p_in), binom.pmf(np.arange(n_out + 1), n_out, p_out))
        for alpha in (0.01, 0.05, 0.1, 0.3):
            assert weight[p <= alpha].sum() <= alpha, (p_in, alpha)


def test_pvalues_are_small_for_strong_pairs_and_one_below_the_threshold():
    h_in, n_in, n_out = np.array([270, 60]), np.array([300, 300]), np.array([120, 120])
    test_hits = np.array([270 + 12, 60 + 60])  # infl 0.8, then -0.3
    for method in bounds.INTERVAL_METHODS:
        p = fdr.pair_pvalues(h_in, n_in, n_out, test_hits, 0.15, method=method, fdr=0.1, n_hypotheses=10**6)
        assert p[0] < 1e-6 and p[1] == 1.0, method


def test_step_up_matches_benjamini_hochberg_and_yekutieli():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    rejected, q = fdr.step_up(p, 0.05, 10, "anytime")  # e-BH: BH on p = 1 / e
    assert rejected.tolist() == [True, True] + [False] * 8
    np.testing.assert_allclose(q[:2], [0.01, 0.04])
    rejected_by, _ = fdr.step_up(p, 0.05, 10, "fixed")  # BY: BH at Q / H_10
    assert rejected_by.tolist() == [True] + [False] * 9
    # Uncomputed hypotheses count in m: the same p-values among 1000 hypotheses reject nothing.
    assert not fdr.step_up(p, 0.05, 1000, "anytime")[0].any()
    assert fdr.harmonic(10) == pytest.approx(sum(1 / k for k in range(1, 11)))
    assert fdr.harmonic(10**7) == pytest.approx(math.log(10**7) + 0.5772156649 + 0.5e-7, rel=1e-9)


# ---- pairs at a false discovery rate: planted simulations ---------------------------------------------

def planted_counts(seed: int, n: int = 600, n_test: int = 300, trials: int = 400, true_pairs: int = 60,
                   boundary_pairs: int = 40):
    """Counts of a run with known influence: `true_pairs` pairs, half with infl 0.8 and half with infl 0.4,
    `boundary_pairs` nulls with infl exactly 0.15 (the hardest nulls), every other pair infl ~0; 150 memorized
    rows (p_in 0.95, p_out 0.1)."""
    rng = np.random.default_rng(seed)
    m = round(0.7 * n)
    memorized = rng.choice(n, size=150, replace=False)
    p_out = rng.uniform(0.3, 0.9, n)
    p_in = p_out.copy()
    p_in[memorized], p_out[memorized] = 0.95, 0.1
    tests = rng.permutation(n_test)[: true_pairs + boundary_pairs]
    partners = rng.choice(memorized, size=tests.size)
    counts = Counts.empty(n, n_test, batch_size=64)
    base_rate = rng.uniform(0.2, 0.9, n_test)
    for k in range(trials):
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[:m]] = True
        train = rng.random(n) < np.where(mask, p_in, p_out)
        rate = base_rate.copy()
        inside = mask[partners]
        strong = true_pairs // 2
        rate[tests[:strong]] = np.where(inside[:strong], 0.9, 0.1)
        rate[tests[strong:true_pairs]] = np.where(inside[strong:true_pairs], 0.7, 0.3)
        rate[tests[true_pairs:]] = np.where(inside[true_pairs:], 0.575, 0.425)
        counts.add(k, mask, train, rng.random(n_test) < rate)
    truth = set(zip(partners[:true_pairs].tolist(), tests[:true_pairs].tolist()))
    return counts, truth


@pytest.mark.parametrize("method", ["anytime", "fixed"])
def test_fdr_pairs_control_the_false_discovery_proportion(method):
    proportions, powers, paper_rule = [], [], []
    for seed in range(20):
        counts, truth = planted_counts(seed)
        bars = Bars(method=method, planned_trials=400, subset_ratio=0.7)
        table = report.pairs_table(counts, bars, PairSelection(fdr=0.1)).to_pydict()
        paper = report.pairs_table(counts, bars).to_pydict()  # the paper's thresholds on the point estimates
        chosen = set(zip(paper["train_index"], paper["test_index"]))
        paper_rule.append(len(chosen - truth) / max(len(chosen), 1))
        selected = set(zip(table["train_index"], table["test_index"]))
        false = len(selected - truth)
        proportions.append(false / max(len(selected), 1))
        powers.append(len(selected & truth) / len(truth))
        assert all(0 < q <= 0.1 for q in table["q_value"])
        assert all(lo > -1 for lo in table["infl_lo"])
    mean_fdp, power = float(np.mean(proportions)), float(np.mean(powers))
    print(f"{method}: mean FDP {mean_fdp:.3f}, power {power:.3f} over 20 planted runs; the paper's thresholds: "
          f"mean false proportion {np.mean(paper_rule):.3f}")
    assert mean_fdp <= 0.1
    assert power >= 0.5  # at least the strong planted pairs (infl 0.8 at 400 trials) are found


def test_status_counts_the_pairs_passing_at_fdr_01():
    counts, truth = planted_counts(99, trials=300)
    s = report.convergence_summary(counts, Bars(planned_trials=300), subset_size=420)
    assert s["pairs_fdr_0.1"] == report.pairs_table(counts, Bars(planned_trials=300, subset_ratio=0.7),
                                                    PairSelection(fdr=0.1)).num_rows > 0
    no_pairs = Counts.empty(10, 4, with_pairs=False)
    no_pairs.add(0, np.ones(10, bool), np.ones(10, bool), np.ones(4, bool))
    assert "pairs_fdr_0.1" not in report.convergence_summary(no_pairs, subset_size=7)


def test_fdr_of_a_shard_uses_the_total_hypothesis_count():
    counts, _ = planted_counts(5, trials=300)
    whole = report.pairs_table(counts, Bars(), PairSelection(fdr=0.1))
    fewer = report.pairs_table(counts, Bars(), PairSelection(fdr=0.1), n_hypotheses=10**9)
    assert fewer.num_rows <= whole.num_rows


# ---- stopping criteria ---------------------------------------------------------------------------------

def test_stopping_criteria_report_value_target_and_met(synthetic_run):
    run = synthetic_run(seed=3, n=80, n_test=5, t=300, memorized=list(range(0, 80, 4)))
    counts = Counts.empty(80, 5, with_pairs=False)
    for k in range(300):
        counts.add(run.trial_ids[k], run.masks[k], run.train_correct[k], run.test_correct[k])
    s = report.convergence_summary(counts, Bars(planned_trials=300),
                                   StatusQuestions(until_halfwidth=0.5, until_jaccard=0.01),
                                   subset_size=run.subset_size)
    crit = s["stopping"]
    assert crit["until_halfwidth"] == {"met": True, "value": s["mem"]["median_halfwidth"], "target": 0.5}
    assert crit["until_jaccard"]["value"] == pytest.approx(s["split_half"]["mem"]["0.25"]["jaccard"])
    assert crit["until_jaccard"]["met"] and crit["all_met"]
    strict = report.convergence_summary(counts, Bars(planned_trials=300), StatusQuestions(until_halfwidth=0.01),
                                        subset_size=run.subset_size)
    assert strict["stopping"]["until_halfwidth"]["met"] is False and strict["stopping"]["all_met"] is False
    assert "stopping" not in report.convergence_summary(counts, subset_size=run.subset_size)
    # more trials needed: additional ones, 0 once the target is reached, about the 1/sqrt(t) law for chernoff.
    assert report.convergence_summary(counts, Bars(), StatusQuestions(target_halfwidth=0.99),
                                      subset_size=run.subset_size)["mem"]["more_trials_needed"] == 0
    chernoff = report.convergence_summary(counts, Bars(method="chernoff"), StatusQuestions(target_halfwidth=0.1),
                                          subset_size=run.subset_size)
    more = chernoff["mem"]["more_trials_needed"]
    law = bounds.trials_needed(300, chernoff["mem"]["median_halfwidth"], 0.1) - 300
    assert 0.7 * law <= more <= 1.3 * law
    assert stopping.all_met({}) is False


# ---- input checks --------------------------------------------------------------------------------------

@pytest.fixture
def small_counts(synthetic_run):
    run = synthetic_run(seed=4, n=20, n_test=6, t=30, memorized=[1, 2])
    counts = Counts.empty(20, 6)
    for k in range(30):
        counts.add(k, run.masks[k], run.train_correct[k], run.test_correct[k])
    return counts


@pytest.mark.parametrize("kwargs, parameter", [
    ({"min_infl": math.nan}, "min_infl"), ({"min_infl": math.inf}, "min_infl"), ({"min_infl": 2.0}, "min_infl"),
    ({"min_mem": math.nan}, "min_mem"), ({"fdr": 0.0}, "fdr"), ({"fdr": 1.5}, "fdr"), ({"fdr": math.nan}, "fdr"),
    ({"fdr": 1.0}, "fdr"), ({"method": "bernstein"}, "method"), ({"delta": math.nan}, "delta"),
])
def test_bad_pairs_arguments_name_their_parameter(small_counts, kwargs, parameter):
    bars = {k: kwargs.pop(k) for k in ("method", "delta") if k in kwargs}
    with pytest.raises(RaymemError, match=parameter) as refused:
        report.pairs_table(small_counts, Bars(**bars), PairSelection(**kwargs))
    assert refused.value.parameter == parameter


@pytest.mark.parametrize("kwargs, parameter", [
    ({"target_halfwidth": math.nan}, "target_halfwidth"), ({"target_halfwidth": 0.0}, "target_halfwidth"),
    ({"until_halfwidth": -1.0}, "until_halfwidth"), ({"until_halfwidth": 0.0}, "until_halfwidth"),
    ({"until_halfwidth": math.nan}, "until_halfwidth"), ({"until_jaccard": 0.0}, "until_jaccard"),
    ({"until_jaccard": 1.5}, "until_jaccard"), ({"until_jaccard": math.nan}, "until_jaccard"),
    ({"method": "wald"}, "method"), ({"pairs_fdr": 0.0}, "pairs_fdr"),
])
def test_bad_status_arguments_name_their_parameter(small_counts, kwargs, parameter):
    bars = {k: kwargs.pop(k) for k in ("method",) if k in kwargs}
    with pytest.raises(RaymemError, match=parameter) as refused:
        report.convergence_summary(small_counts, Bars(**bars), StatusQuestions(**kwargs), subset_size=14)
    assert refused.value.parameter == parameter


def test_unknown_method_names_the_choices(small_counts):
    for call in (lambda: report.mem_table(small_counts, Bars(method="x")),
                 lambda: report.influence_table(small_counts, 0, Bars(method="x")),
                 lambda: bounds.difference_interval(1, 2, 1, 2, 0.05, method="x")):
        with pytest.raises(RaymemError, match="anytime, fixed, chernoff, hoeffding"):
            call()


def test_bad_plan_is_a_user_error(small_counts):
    with pytest.raises(RaymemError, match="planned_trials"):
        report.mem_table(small_counts, Bars(planned_trials=0))
