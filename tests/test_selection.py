"""Pair selection, top influencers and consistency, each against a brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raymem.errors import RaymemError
from raymem.estimator import formulas
from raymem.estimator.selection import (
    consistency_curve,
    high_influence_pairs,
    jaccard_and_mean_difference,
    top_influencers,
)


def simulated_counts(seed: int, rows: int = 41, n_test: int = 23, trials: int = 16) -> dict:
    """Count tensors from simulated trials; some rows are in no trial or in every trial (empty terms).

    Test example j leans on training example j % rows: models that saw it are more often right.
    """
    rng = np.random.default_rng(seed)
    mask = rng.random((trials, rows)) < 0.7
    mask[:, 0] = False  # row 0: n_in = 0
    mask[:, 1] = True   # row 1: n_out = 0
    train_correct = rng.random((trials, rows)) < np.where(mask, 0.95, rng.uniform(0.1, 0.9, rows))
    partner = np.arange(n_test) % rows
    test_p = np.where(mask[:, partner], 0.9, rng.uniform(0.05, 0.6, n_test))
    test_correct = rng.random((trials, n_test)) < test_p
    n_in = mask.sum(axis=0)
    in_hits = (mask & train_correct).sum(axis=0)
    n_out = trials - n_in
    out_hits = train_correct.sum(axis=0) - in_hits
    return {
        "h_in": (mask.T.astype(np.float32) @ test_correct.astype(np.float32)),
        "n_in": n_in,
        "n_out": n_out,
        "test_hits": test_correct.sum(axis=0),
        "mem": formulas.memorization(in_hits, n_in, out_hits, n_out),
    }


def brute_force_pairs(c: dict, min_infl: float, min_mem: float) -> tuple[np.ndarray, np.ndarray]:
    infl = formulas.influence(c["h_in"], c["n_in"], c["test_hits"], c["n_out"])
    return np.nonzero((infl >= min_infl) & (c["mem"] >= min_mem)[:, None])


class RecordingMatrix:
    """A read-only stand-in for H_in that remembers which rows were read."""

    def __init__(self, array: np.ndarray):
        self.array, self.rows_read = array, set()
        self.ndim, self.shape = array.ndim, array.shape

    def __getitem__(self, rows):
        self.rows_read.update(np.arange(self.shape[0])[rows].tolist())
        return self.array[rows]


# --- high_influence_pairs -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_infl, min_mem",
                         [(formulas.PAPER_MIN_INFL, formulas.PAPER_MIN_MEM), (0.0, -1.0), (0.3, 0.1)])
@pytest.mark.parametrize("chunk_rows", [1, 3, 1024])
def test_high_influence_pairs_match_brute_force(seed, min_infl, min_mem, chunk_rows):
    c = simulated_counts(seed)
    rows, cols = brute_force_pairs(c, min_infl, min_mem)
    assert rows.size > 0  # the simulation must give the check something to compare
    got = high_influence_pairs(c["h_in"], c["n_in"], c["n_out"], c["test_hits"], c["mem"],
                               min_infl=min_infl, min_mem=min_mem, row_offset=100, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(got["train_index"], rows + 100)
    np.testing.assert_array_equal(got["test_index"], cols)
    infl = formulas.influence(c["h_in"], c["n_in"], c["test_hits"], c["n_out"])
    np.testing.assert_array_equal(got["infl"], infl[rows, cols])
    np.testing.assert_array_equal(got["h_in"], c["h_in"][rows, cols].astype(np.int64))
    np.testing.assert_array_equal(got["n_in"], c["n_in"][rows])
    np.testing.assert_array_equal(got["n_out"], c["n_out"][rows])
    assert got["train_index"].dtype == np.int64 and got["h_in"].dtype == np.int64
    assert got["infl"].dtype == np.float64


def test_high_influence_pairs_include_empty_term_rows_when_they_qualify():
    c = simulated_counts(3)
    got = high_influence_pairs(c["h_in"], c["n_in"], c["n_out"], c["test_hits"], c["mem"], min_infl=-1.0, min_mem=-1.0)
    assert {0, 1} <= set(got["train_index"].tolist())  # rows with n_in = 0 and n_out = 0
    assert got["train_index"].size == c["h_in"].size


def test_high_influence_pairs_over_shards_equal_the_whole():
    c = simulated_counts(4)
    whole = high_influence_pairs(c["h_in"], c["n_in"], c["n_out"], c["test_hits"], c["mem"], min_infl=0.1, min_mem=0.0)
    parts = []
    for start, stop in ((0, 13), (13, 30), (30, 41)):
        parts.append(high_influence_pairs(
            c["h_in"][start:stop], c["n_in"][start:stop], c["n_out"][start:stop], c["test_hits"],
            c["mem"][start:stop], min_infl=0.1, min_mem=0.0, row_offset=start, chunk_rows=4))
    for field, values in whole.items():
        np.testing.assert_array_equal(np.concatenate([part[field] for part in parts]), values)


def test_high_influence_pairs_read_only_rows_that_pass_the_memorization_threshold():
    c = simulated_counts(5)
    matrix = RecordingMatrix(c["h_in"])
    high_influence_pairs(matrix, c["n_in"], c["n_out"], c["test_hits"], c["mem"], chunk_rows=2)
    expected = set(np.flatnonzero(c["mem"] >= formulas.PAPER_MIN_MEM).tolist())
    assert 0 < len(expected) < c["h_in"].shape[0]
    assert matrix.rows_read == expected


def test_high_influence_pairs_reads_a_memory_map(tmp_path):
    c = simulated_counts(6)
    stored = np.lib.format.open_memmap(tmp_path / "h_in.npy", mode="w+", dtype=np.float32, shape=c["h_in"].shape)
    stored[:] = c["h_in"]
    stored.flush()
    mapped = np.load(tmp_path / "h_in.npy", mmap_mode="r")
    got = high_influence_pairs(mapped, c["n_in"], c["n_out"], c["test_hits"], c["mem"], min_infl=0.1, min_mem=0.0)
    rows, cols = brute_force_pairs(c, 0.1, 0.0)
    np.testing.assert_array_equal(got["train_index"], rows)
    np.testing.assert_array_equal(got["test_index"], cols)


def test_high_influence_pairs_with_no_selection_return_empty_typed_arrays():
    c = simulated_counts(7)
    got = high_influence_pairs(c["h_in"], c["n_in"], c["n_out"], c["test_hits"], c["mem"], min_mem=2.0)
    assert set(got) == {"train_index", "test_index", "infl", "h_in", "n_in", "n_out"}
    assert all(values.size == 0 for values in got.values())
    assert got["infl"].dtype == np.float64 and got["train_index"].dtype == np.int64


def test_high_influence_pairs_reject_mismatched_shapes():
    c = simulated_counts(8)
    with pytest.raises(RaymemError, match="mem"):
        high_influence_pairs(c["h_in"], c["n_in"], c["n_out"], c["test_hits"], c["mem"][:-1])
    with pytest.raises(RaymemError, match="test_hits"):
        high_influence_pairs(c["h_in"], c["n_in"], c["n_out"], c["test_hits"][:-1], c["mem"])


# --- top_influencers ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [0, 1, 5, 41, 50])
def test_top_influencers_match_a_full_sort(seed, k):
    c = simulated_counts(seed, trials=8)  # few trials: many tied influence values
    infl = formulas.influence(c["h_in"], c["n_in"], c["test_hits"], c["n_out"])
    for j in range(c["h_in"].shape[1]):
        column = infl[:, j]
        expected = sorted(range(column.size), key=lambda i: (-column[i], i))[:k]
        got = top_influencers(c["h_in"][:, j], c["n_in"], c["n_out"], c["test_hits"][j], k, row_offset=7)
        np.testing.assert_array_equal(got["train_index"], np.array(expected, dtype=np.int64) + 7)
        np.testing.assert_array_equal(got["infl"], column[expected])
        np.testing.assert_array_equal(got["h_in"], c["h_in"][expected, j].astype(np.int64))


def test_top_influencers_break_ties_by_train_index():
    # Every row has the same counts, so every influence is equal: the first k rows win.
    got = top_influencers(np.full(10, 3.0), np.full(10, 5), np.full(10, 5), 6, k=4)
    np.testing.assert_array_equal(got["train_index"], [0, 1, 2, 3])


def test_top_influencers_reject_negative_k():
    with pytest.raises(RaymemError):
        top_influencers(np.ones(3), np.ones(3), np.ones(3), 2, k=-1)


# --- jaccard_and_mean_difference and consistency_curve ----------------------------------------------

def brute_force_consistency(a: np.ndarray, b: np.ndarray, threshold: float, eligible_a, eligible_b) -> dict:
    """Python sets over index tuples, following supplement Eq. 4 literally."""
    cells = list(np.ndindex(a.shape))
    set_a = {x for x in cells if a[x] >= threshold and eligible_a(x)}
    set_b = {x for x in cells if b[x] >= threshold and eligible_b(x)}
    union = set_a | set_b
    if not union:
        return {"jaccard": math.nan, "mean_abs_diff": math.nan, "size_a": len(set_a), "size_b": len(set_b),
                "size_union": 0}
    return {
        "jaccard": len(set_a & set_b) / len(union),
        "mean_abs_diff": sum(abs(a[x] - b[x]) for x in union) / len(union),
        "size_a": len(set_a), "size_b": len(set_b), "size_union": len(union),
    }


def assert_same_result(got: dict, expected: dict) -> None:
    assert got["size_a"] == expected["size_a"]
    assert got["size_b"] == expected["size_b"]
    assert got["size_union"] == expected["size_union"]
    for key in ("jaccard", "mean_abs_diff"):
        if math.isnan(expected[key]):
            assert math.isnan(got[key])
        else:
            assert got[key] == pytest.approx(expected[key], rel=1e-12)


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.15, 0.25, 0.5, 0.95, 2.0])
def test_jaccard_on_vectors_matches_sets(threshold):
    rng = np.random.default_rng(0)
    # Multiples of 0.05 so that values land exactly on the thresholds.
    a = np.round(rng.uniform(-1, 1, 200) * 20) / 20
    b = np.clip(a + np.round(rng.normal(0, 0.1, 200) * 20) / 20, -1, 1)
    got = jaccard_and_mean_difference(a, b, threshold)
    assert_same_result(got, brute_force_consistency(a, b, threshold, lambda x: True, lambda x: True))


@pytest.mark.parametrize("threshold", [0.0, 0.15, 0.4])
def test_jaccard_on_matrices_with_per_row_eligibility_matches_sets(threshold):
    rng = np.random.default_rng(1)
    a = np.round(rng.uniform(-0.5, 1, (17, 9)) * 20) / 20
    b = np.clip(a + rng.normal(0, 0.1, a.shape), -1, 1)
    mem_a, mem_b = rng.uniform(-0.2, 1, 17), rng.uniform(-0.2, 1, 17)
    got = jaccard_and_mean_difference(a, b, threshold, eligible_a=mem_a >= 0.25, eligible_b=mem_b >= 0.25)
    expected = brute_force_consistency(a, b, threshold, lambda x: mem_a[x[0]] >= 0.25, lambda x: mem_b[x[0]] >= 0.25)
    assert_same_result(got, expected)
    # A full-shape mask gives the same answer as the per-row one spread across columns.
    full_a = np.repeat((mem_a >= 0.25)[:, None], 9, axis=1)
    full_b = np.repeat((mem_b >= 0.25)[:, None], 9, axis=1)
    assert_same_result(jaccard_and_mean_difference(a, b, threshold, full_a, full_b), expected)


def test_jaccard_empty_union_is_nan():
    got = jaccard_and_mean_difference(np.zeros(5), np.zeros(5), 0.5)
    assert math.isnan(got["jaccard"]) and math.isnan(got["mean_abs_diff"])
    assert got["size_union"] == 0


def test_jaccard_rejects_mismatched_shapes():
    with pytest.raises(RaymemError):
        jaccard_and_mean_difference(np.zeros(5), np.zeros(6), 0.5)
    with pytest.raises(RaymemError):
        jaccard_and_mean_difference(np.zeros((4, 3)), np.zeros((4, 3)), 0.5, eligible_a=np.ones(3, dtype=bool))


def test_consistency_curve_is_one_result_per_threshold():
    rng = np.random.default_rng(2)
    a = rng.uniform(-1, 1, 100)
    b = a + rng.normal(0, 0.05, 100)
    thresholds = [0.0, 0.25, 0.5, 0.75]
    curve = consistency_curve(a, b, thresholds)
    assert [point["threshold"] for point in curve] == thresholds
    for point, threshold in zip(curve, thresholds):
        expected = brute_force_consistency(a, b, threshold, lambda x: True, lambda x: True)
        assert_same_result(point, expected)
