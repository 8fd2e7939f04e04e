"""Report tables against brute-force loops over the paper's definitions, and against planted (known) truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raymem.estimator.bars import Bars
from raymem.estimator.report import PairSelection, StatusQuestions
from raymem.errors import RaymemError
from raymem.estimator.bars import per_distinct_difference
from raymem.estimator import bounds, report
from raymem.estimator.counts import Counts

N, N_TEST, T = 30, 20, 40
DELTA = 0.05


def count(run, rows=None, batch_size=7) -> Counts:
    n, n_test = run.masks.shape[1], run.test_correct.shape[1]
    counts = Counts.empty(n, n_test, rows=rows, batch_size=batch_size)
    for k in range(len(run.trial_ids)):
        counts.add(run.trial_ids[k], run.masks[k], run.train_correct[k], run.test_correct[k])
    return counts


def rate(outcomes: list) -> float:
    """Mean of a list of 0/1 outcomes; 1/2 for an empty list (the paper's convention)."""
    return sum(outcomes) / len(outcomes) if outcomes else 0.5


def brute_mem(masks, correct, i: int) -> float:
    t = masks.shape[0]
    return rate([int(correct[k, i]) for k in range(t) if masks[k, i]]) - \
        rate([int(correct[k, i]) for k in range(t) if not masks[k, i]])


def brute_infl(masks, test_correct, i: int, j: int) -> float:
    t = masks.shape[0]
    return rate([int(test_correct[k, j]) for k in range(t) if masks[k, i]]) - \
        rate([int(test_correct[k, j]) for k in range(t) if not masks[k, i]])


@pytest.fixture
def run(synthetic_run):
    run = synthetic_run(seed=2, n=N, n_test=N_TEST, t=T, memorized=[3, 8, 15], planted=[(3, 2), (8, 11)],
                        trial_ids=np.random.default_rng(5).permutation(2 * T)[:T])
    run.masks[:, 0] = True    # example 0 in every trial: its "out" term is empty
    run.masks[:, 1] = False   # example 1 in none: its "in" term is empty
    return run


# ---- mem_table ---------------------------------------------------------------------------------

@pytest.mark.parametrize("simultaneous", [False, True])
def test_mem_table_equals_the_definition_per_example(run, brute_counts, simultaneous):
    table = report.mem_table(count(run), Bars(delta=DELTA, simultaneous=simultaneous)).to_pydict()
    assert table["train_index"] == list(range(N))
    expected = [brute_mem(run.masks, run.train_correct, i) for i in range(N)]
    np.testing.assert_allclose(table["mem"], expected, rtol=0, atol=1e-12)
    assert table["p_out"][0] == 0.5 and table["p_in"][1] == 0.5
    c = brute_counts(run.masks, run.train_correct, run.test_correct)
    assert table["n_in"] == c["n_in"].tolist() and table["n_out"] == (T - c["n_in"]).tolist()
    assert table["in_hits"] == c["in_hits"].tolist()
    assert table["out_hits"] == (c["total_hits"] - c["in_hits"]).tolist()
    d = DELTA / N if simultaneous else DELTA
    chernoff = report.mem_table(count(run), Bars(method="chernoff", delta=DELTA, simultaneous=simultaneous)).to_pydict()
    plan = Bars(delta=DELTA).plan
    for method, got, lo_col, hi_col in (("anytime", table, "mem_lo", "mem_hi"),
                                        ("chernoff", chernoff, "mem_lo", "mem_hi"),
                                        ("hoeffding", table, "mem_hoeffding_lo", "mem_hoeffding_hi")):
        lo, hi = bounds.difference_interval(c["in_hits"], c["n_in"], c["total_hits"] - c["in_hits"], T - c["n_in"], d,
                                            method, plan=plan)
        np.testing.assert_array_equal(got[lo_col], lo)
        np.testing.assert_array_equal(got[hi_col], hi)
    for got in (table, chernoff):
        assert all(lo <= m <= hi for lo, m, hi in zip(got["mem_lo"], got["mem"], got["mem_hi"]))


def test_simultaneous_bands_are_wider_than_per_example_ones(run):
    counts = count(run)
    each = report.mem_table(counts, Bars(delta=DELTA)).to_pydict()
    every = report.mem_table(counts, Bars(delta=DELTA, simultaneous=True)).to_pydict()
    assert all(a <= b for a, b in zip(every["mem_lo"], each["mem_lo"]))
    assert all(a >= b for a, b in zip(every["mem_hi"], each["mem_hi"]))
    width = lambda t: np.subtract(t["mem_hi"], t["mem_lo"])  # noqa: E731
    assert np.median(width(every)) > np.median(width(each))
    pairs_each = report.pairs_table(counts, Bars(), PairSelection(min_infl=0.1234, min_mem=-1.0)).to_pydict()
    pairs_every = report.pairs_table(counts, Bars(simultaneous=True),
                                     PairSelection(min_infl=0.1234, min_mem=-1.0)).to_pydict()
    assert pairs_each["infl"] == pairs_every["infl"] and len(pairs_each["infl"]) > 0
    assert all(a < b for a, b in zip(pairs_every["infl_lo"], pairs_each["infl_lo"]))


def test_a_bad_delta_is_a_user_error(run):
    for delta in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(RaymemError, match="delta") as refused:
            report.mem_table(count(run), Bars(delta=delta))
        assert refused.value.parameter == "delta"


# ---- pairs_table -------------------------------------------------------------------------------

@pytest.mark.parametrize("min_infl, min_mem", [(0.1234, -0.0567), (0.15, 0.25), (-0.3001, 0.1001)])
@pytest.mark.parametrize("simultaneous", [False, True])
def test_pairs_table_equals_thresholding_the_full_influence_matrix(run, brute_counts, min_infl, min_mem, simultaneous):
    table = report.pairs_table(count(run), Bars(delta=DELTA, simultaneous=simultaneous),
                               PairSelection(min_infl=min_infl, min_mem=min_mem)).to_pydict()
    mem = [brute_mem(run.masks, run.train_correct, i) for i in range(N)]
    infl = [[brute_infl(run.masks, run.test_correct, i, j) for j in range(N_TEST)] for i in range(N)]
    expected = [(i, j) for i in range(N) for j in range(N_TEST) if mem[i] >= min_mem and infl[i][j] >= min_infl]
    assert 0 < len(expected) < N * N_TEST  # the thresholds split the cells
    assert list(zip(table["train_index"], table["test_index"])) == expected
    np.testing.assert_allclose(table["infl"], [infl[i][j] for i, j in expected], rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["mem"], [mem[i] for i, _ in expected], rtol=0, atol=1e-12)
    c = brute_counts(run.masks, run.train_correct, run.test_correct)
    rows, cols = np.array(expected).T
    h = c["h_in"][rows, cols]
    assert table["n_in"] == c["n_in"][rows].tolist() and table["n_out"] == (T - c["n_in"][rows]).tolist()
    d = DELTA / (N * N_TEST) if simultaneous else DELTA
    lo, hi = bounds.difference_interval(h, c["n_in"][rows], c["test_hits"][cols] - h, T - c["n_in"][rows], d,
                                        plan=Bars(delta=DELTA).plan)
    np.testing.assert_array_equal(table["infl_lo"], lo)
    np.testing.assert_array_equal(table["infl_hi"], hi)


def test_pairs_table_of_a_row_slice_reports_global_indexes(run):
    whole = report.pairs_table(count(run), Bars(), PairSelection(min_infl=0.1234, min_mem=-0.0567)).to_pydict()
    part = report.pairs_table(count(run, rows=(10, 25)), Bars(),
                              PairSelection(min_infl=0.1234, min_mem=-0.0567)).to_pydict()
    keep = [k for k, i in enumerate(whole["train_index"]) if 10 <= i < 25]
    assert len(keep) > 0
    for name in whole:
        assert part[name] == [whole[name][k] for k in keep], name


# ---- influence_table ---------------------------------------------------------------------------

@pytest.mark.parametrize("test_index", [0, 2, 11, N_TEST - 1])
@pytest.mark.parametrize("top", [1, 5, N, N + 10])
def test_influence_table_top_k_equals_a_full_sort(run, brute_counts, test_index, top):
    table = report.influence_table(count(run), test_index, Bars(delta=DELTA), top=top).to_pydict()
    infl = [brute_infl(run.masks, run.test_correct, i, test_index) for i in range(N)]
    order = sorted(range(N), key=lambda i: (-infl[i], i))[:top]  # ties: smaller train index first
    assert table["train_index"] == order
    assert table["rank"] == list(range(1, len(order) + 1))
    assert table["test_index"] == [test_index] * len(order)
    np.testing.assert_allclose(table["infl"], [infl[i] for i in order], rtol=0, atol=1e-12)
    np.testing.assert_allclose(table["mem"], [brute_mem(run.masks, run.train_correct, i) for i in order], atol=1e-12)
    c = brute_counts(run.masks, run.train_correct, run.test_correct)
    h = c["h_in"][order, test_index]
    lo, hi = bounds.difference_interval(h, c["n_in"][order], c["test_hits"][test_index] - h, T - c["n_in"][order],
                                        DELTA, plan=Bars(delta=DELTA).plan)
    np.testing.assert_array_equal(table["infl_lo"], lo)
    np.testing.assert_array_equal(table["infl_hi"], hi)


def test_influence_table_of_a_row_slice_ranks_only_its_rows(run):
    table = report.influence_table(count(run, rows=(10, 25)), 4, top=3).to_pydict()
    infl = [brute_infl(run.masks, run.test_correct, i, 4) for i in range(N)]
    assert table["train_index"] == sorted(range(10, 25), key=lambda i: (-infl[i], i))[:3]


@pytest.mark.parametrize("test_index, top, flag", [(N_TEST, 3, "test_index"), (-1, 3, "test_index"), (0, 0, "top")])
def test_influence_table_refuses_bad_arguments(run, test_index, top, flag):
    with pytest.raises(RaymemError, match=flag):
        report.influence_table(count(run), test_index, top=top)


# ---- canaries and convergence ------------------------------------------------------------------

def test_canary_recall_on_a_hand_built_case():
    mem = np.array([0.9, 0.1, 0.8, 0.0, 0.5, 0.85])
    flipped = np.array([True, False, False, False, True, True])
    # top 3 by mem: 0 (0.9), 5 (0.85), 2 (0.8); flipped among them: 0 and 5
    assert report.canary_recall(mem, flipped) == {"count": 3, "recall": 2 / 3, "chance": 3 / 6}
    assert report.canary_recall(mem, np.zeros(6, bool)) == {"count": 0, "recall": None, "chance": None}
    assert report.canary_recall(mem, np.array([False, True, False, False, False, False]))["recall"] == 0.0


def test_convergence_summary_fields_and_their_values(run):
    counts = count(run)
    s = report.convergence_summary(counts, Bars(delta=DELTA), subset_size=21)
    table = report.mem_table(counts, Bars(delta=DELTA)).to_pydict()
    assert (s["trials_done"], s["n_train"], s["n_test"], s["subset_size"], s["delta"], s["simultaneous"]) == \
        (T, N, N_TEST, 21, DELTA, False)
    half = (np.array(table["mem_hi"]) - np.array(table["mem_lo"])) / 2
    mem = s["mem"]
    assert mem["median_halfwidth"] == pytest.approx(np.median(half))
    assert mem["max_halfwidth"] == pytest.approx(half.max())
    assert mem["estimated_above"] == sum(m >= 0.25 for m in table["mem"])
    assert mem["certified"] == sum(lo >= 0.25 for lo in table["mem_lo"])
    assert mem["certified"] <= mem["estimated_above"]
    assert s["method"] == "anytime"
    assert mem["more_trials_needed"] > 0  # 40 trials are far from a 0.1 half-width
    assert s["lemma21_rms_bound"] == bounds.lemma21_rms_bound(T, 21, N)
    even = run.trial_ids % 2 == 0
    for key, theta in (("0.25", 0.25), ("0.5", 0.5)):
        a = {i for i in range(N) if brute_mem(run.masks[even], run.train_correct[even], i) >= theta}
        b = {i for i in range(N) if brute_mem(run.masks[~even], run.train_correct[~even], i) >= theta}
        split = s["split_half"]["mem"][key]
        assert split["size_a"] == len(a) and split["size_b"] == len(b)
        if a | b:
            assert split["jaccard"] == pytest.approx(len(a & b) / len(a | b))
    wide = report.convergence_summary(counts, Bars(delta=DELTA, simultaneous=True), subset_size=21)
    assert wide["mem"]["median_halfwidth"] > mem["median_halfwidth"]
    assert wide["mem"]["certified"] <= mem["certified"]


def test_convergence_summary_before_any_trial():
    s = report.convergence_summary(Counts.empty(5, 3), subset_size=3)
    assert s["trials_done"] == 0 and s["mem"]["more_trials_needed"] is None
    assert "pairs_fdr_0.1" not in s
    assert s["mem"]["certified"] == s["mem"]["estimated_above"] == 0
    assert s["split_half"]["mem"]["0.25"]["jaccard"] is None


# ---- known truth -------------------------------------------------------------------------------

MEMORIZED = [2, 11, 23, 37, 50]
PLANTED = [(2, 4), (11, 9), (23, 17), (37, 25)]


@pytest.fixture
def truth_run(synthetic_run):
    return synthetic_run(seed=11, n=60, n_test=30, t=400, memorized=MEMORIZED, planted=PLANTED)


def test_planted_memorized_examples_and_pairs_are_found(truth_run):
    counts = count(truth_run, batch_size=64)
    mem = report.mem_table(counts, Bars(simultaneous=True)).to_pydict()
    assert [i for i, lo in enumerate(mem["mem_lo"]) if lo > 0] == MEMORIZED
    assert sorted(np.argsort(mem["mem"])[-len(MEMORIZED):].tolist()) == MEMORIZED
    pairs = report.pairs_table(counts).to_pydict()  # the paper's thresholds
    found = set(zip(pairs["train_index"], pairs["test_index"]))
    assert set(PLANTED) <= found
    certified = report.pairs_table(counts, Bars(simultaneous=True)).to_pydict()
    assert {(i, j) for i, j, lo in zip(certified["train_index"], certified["test_index"], certified["infl_lo"])
            if lo > 0} == set(PLANTED)
    for i, j in PLANTED:
        assert report.influence_table(counts, j, top=1).column("train_index").to_pylist() == [i]
    flipped = np.isin(np.arange(60), MEMORIZED)
    assert report.canary_recall(np.array(mem["mem"]), flipped)["recall"] == 1.0
    s = report.convergence_summary(counts, subset_size=truth_run.subset_size)
    assert s["mem"]["certified"] == len(MEMORIZED) <= s["mem"]["estimated_above"]


@pytest.mark.parametrize("simultaneous", [False, True])
def test_intervals_cover_the_truth_at_the_promised_rate(truth_run, simultaneous):
    counts = count(truth_run, batch_size=64)
    mem = report.mem_table(counts, Bars(delta=DELTA, simultaneous=simultaneous)).to_pydict()
    covered = [lo <= m <= hi for lo, m, hi in zip(mem["mem_lo"], truth_run.true_mem, mem["mem_hi"])]
    infl_covered = []
    for j in range(30):
        table = report.influence_table(counts, j, Bars(delta=DELTA, simultaneous=simultaneous), top=60).to_pydict()
        truth = truth_run.true_infl[table["train_index"], j]
        infl_covered += [lo <= x <= hi for lo, x, hi in zip(table["infl_lo"], truth, table["infl_hi"])]
    if simultaneous:  # all at once, with probability at least 1 - delta
        assert all(covered) and all(infl_covered)
    else:             # each on its own: at least a 1 - delta share on average
        assert np.mean(covered) >= 1 - DELTA and np.mean(infl_covered) >= 1 - DELTA
    assert np.median(np.subtract(mem["mem_hi"], mem["mem_lo"])) / 2 < (0.4 if simultaneous else 0.3)


# ---- intervals evaluated once per distinct counts ----------------------------------------------

@pytest.mark.parametrize("trials", [50, 2**22])  # the second packs no int64 key: the row-unique path
def test_intervals_per_distinct_counts_equal_the_plain_ones(trials):
    rng = np.random.default_rng(8)
    n_in = rng.integers(0, 40, (30, 7))
    n_in[0, 0], n_in[0, 1] = 0, trials  # empty terms at both ends
    hits_in = rng.integers(0, n_in + 1)
    hits_in[0, 1] = trials  # with trials = 2**22 the counts span more than an int64 key can pack
    n_out = trials - n_in
    hits_out = rng.integers(0, np.minimum(n_out, 60) + 1)
    for method in ("anytime", "fixed", "chernoff", "hoeffding"):
        got = per_distinct_difference(hits_in, n_in, hits_out, n_out, 0.01, method)
        expected = bounds.difference_interval(hits_in, n_in, hits_out, n_out, 0.01, method)
        for a, b in zip(got, expected):
            assert a.shape == (30, 7)
            np.testing.assert_array_equal(a, b)
    scalar_row = per_distinct_difference(hits_in[0], n_in[0], 3, n_out[0].max() + 5, 0.01)
    np.testing.assert_array_equal(scalar_row[1],
                                  bounds.difference_interval(hits_in[0], n_in[0], 3, n_out[0].max() + 5, 0.01)[1])
    empty = per_distinct_difference(np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), 0.1)
    assert empty[0].shape == (0,)
    with pytest.raises(RaymemError, match="delta"):
        per_distinct_difference(hits_in, n_in, hits_out, n_out, 2.0)


# ---- RunView: the one reader over counts and what the run knows ---------------------------------

def test_run_view_adds_canaries_and_run_facts(truth_run):
    from raymem.store.run_info import new_run_info
    from raymem.estimator.run_view import RunView

    info = new_run_info(name="truth", n_train=60, n_test=30, subset_size=truth_run.subset_size, seed=0,
                        config={"trials": 500}, fingerprint={}, source="ingest")
    flipped = np.isin(np.arange(60), MEMORIZED[:3])
    view = RunView(info, count(truth_run, batch_size=64), flipped=flipped)
    table = view.mem_table()
    assert table.column("label_flipped").to_pylist() == flipped.tolist()
    plan = Bars(planned_trials=500, subset_ratio=truth_run.subset_size / 60)  # the run's plan tunes the anytime bars
    assert (view.planned_trials, view.subset_ratio) == (500, truth_run.subset_size / 60)
    assert view.bars() == plan
    assert table.drop_columns(["label_flipped"]).equals(report.mem_table(view.counts, plan))
    s = view.status()
    assert ((s["run"], s["run_id"], s["source"], s["trials_target"], s["trials_done"])
            == ("truth", info.run_id, "log", 500, 400))
    assert s["canaries"] == report.canary_recall(np.array(table.column("mem").to_pylist()), flipped)
    assert s["pairs_fdr_0.1"] == view.pairs_table(view.bars(), PairSelection(fdr=0.1)).num_rows
    assert s["canaries"]["count"] == 3 and 0 < s["canaries"]["recall"] <= 1.0
    assert view.pairs_table().equals(report.pairs_table(view.counts, plan))
    assert view.influence_table(4, top=3).equals(report.influence_table(view.counts, 4, plan, top=3))
    assert s["method"] == "anytime" and s["planned_trials"] == 500
    chernoff = view.status(view.bars(method="chernoff"), StatusQuestions(until_halfwidth=0.2, until_jaccard=0.5))
    assert (chernoff["method"] == "chernoff"
            and set(chernoff["stopping"]) == {"until_halfwidth", "until_jaccard", "all_met"})
