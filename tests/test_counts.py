"""Counts against brute-force recounts: batched pair updates, duplicates, arrival order, row slices, even/odd halves."""

from __future__ import annotations

import numpy as np
import pytest

from raymem.errors import RaymemError
from raymem.estimator import counts as counts_module
from raymem.estimator.counts import Counts, add_outer_products

N, N_TEST, T = 30, 20, 40
VECTOR_FIELDS = ("n_in", "in_hits", "total_hits")


@pytest.fixture
def run(synthetic_run):
    # Shuffled, non-contiguous ids so that "even trials" is not "the first half".
    ids = np.random.default_rng(7).permutation(3 * T)[:T]
    return synthetic_run(seed=1, n=N, n_test=N_TEST, t=T, memorized=[3, 4], planted=[(3, 5)], trial_ids=ids)


def count_all(run, keep=None, rows=None, batch_size=64, with_pairs=True) -> Counts:
    counts = Counts.empty(N, N_TEST, rows=rows, batch_size=batch_size, with_pairs=with_pairs)
    for k in range(len(run.trial_ids)):
        if keep is None or keep[k]:
            assert counts.add(run.trial_ids[k], run.masks[k], run.train_correct[k], run.test_correct[k])
    return counts


def assert_vectors_equal(v, expected, rows=slice(None)) -> None:
    assert v.trials == expected["trials"]
    for name in VECTOR_FIELDS:
        np.testing.assert_array_equal(getattr(v, name), expected[name][rows], err_msg=name)
    np.testing.assert_array_equal(v.test_hits, expected["test_hits"])
    np.testing.assert_array_equal(v.n_out, expected["trials"] - expected["n_in"][rows])
    np.testing.assert_array_equal(v.out_hits, expected["total_hits"][rows] - expected["in_hits"][rows])


def assert_counts_equal(counts: Counts, expected, rows=slice(None)) -> None:
    assert_vectors_equal(counts.all, expected, rows)
    np.testing.assert_array_equal(counts.pairs_ready(), expected["h_in"][rows])
    assert counts.pending == 0


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_counts_equal_brute_force_for_every_batch_size(run, brute_counts, batch_size):
    expected = brute_counts(run.masks, run.train_correct, run.test_correct)
    counts = count_all(run, batch_size=batch_size)
    assert counts.pending == T % batch_size  # trials whose pair update is still buffered
    assert_counts_equal(counts, expected)
    assert counts.trial_ids == set(run.trial_ids.tolist())


def test_batched_and_one_at_a_time_are_identical(run):
    one = count_all(run, batch_size=1).pairs_ready()
    for batch_size in (3, 64):
        assert np.array_equal(count_all(run, batch_size=batch_size).pairs_ready(), one)


def test_callers_may_reuse_their_arrays_while_a_trial_is_buffered(run, brute_counts):
    """add copies the trial into its buffer: overwriting the caller's arrays afterwards changes nothing."""
    counts = Counts.empty(N, N_TEST, batch_size=64)
    mask, train, test = (np.empty(N, bool), np.empty(N, bool), np.empty(N_TEST, bool))
    for k in range(T):
        mask[:], train[:], test[:] = run.masks[k], run.train_correct[k], run.test_correct[k]
        counts.add(run.trial_ids[k], mask, train, test)
    mask[:], test[:] = True, True
    assert_counts_equal(counts, brute_counts(run.masks, run.train_correct, run.test_correct))


def test_duplicate_trial_ids_are_counted_once(run, brute_counts):
    counts = count_all(run, batch_size=3)
    other = np.random.default_rng(99)
    for k in (0, 5, T - 1):  # same ids, different (and even wrong-looking) outcomes: ignored
        assert not counts.add(run.trial_ids[k], other.random(N) < 0.5, other.random(N) < 0.5,
                              other.random(N_TEST) < 0.5)
    assert not any(counts.add(run.trial_ids[k], run.masks[k], run.train_correct[k], run.test_correct[k])
                   for k in range(4))
    assert_counts_equal(counts, brute_counts(run.masks, run.train_correct, run.test_correct))


def test_repeats_within_a_stream_are_skipped(run, brute_counts):
    counts = Counts.empty(N, N_TEST, batch_size=3)
    idx = [0, 1, 2, 1, 3, 0]
    added = [counts.add(run.trial_ids[k], run.masks[k], run.train_correct[k], run.test_correct[k]) for k in idx]
    assert added == [True, True, True, False, True, False]
    keep = np.isin(np.arange(T), [0, 1, 2, 3])
    assert_counts_equal(counts, brute_counts(run.masks, run.train_correct, run.test_correct, keep))


@pytest.mark.parametrize("seed", [0, 1])
def test_any_arrival_order_gives_the_brute_force_counts(run, brute_counts, seed):
    """Trials finish in any order (out-of-order workers): the counts are those of the set of trials."""
    order = np.random.default_rng(seed).permutation(T)
    counts = Counts.empty(N, N_TEST, batch_size=5)
    for k in order:
        assert counts.add(run.trial_ids[k], run.masks[k], run.train_correct[k], run.test_correct[k])
    assert_counts_equal(counts, brute_counts(run.masks, run.train_correct, run.test_correct))
    even = run.trial_ids % 2 == 0
    assert_vectors_equal(counts.even, brute_counts(run.masks, run.train_correct, run.test_correct, even))


@pytest.mark.parametrize("cuts", [(7, 19), (0, 30), (13, 13)])
def test_row_slices_together_hold_the_full_brute_force_count(run, brute_counts, cuts):
    a, b = cuts
    expected = brute_counts(run.masks, run.train_correct, run.test_correct)
    even = brute_counts(run.masks, run.train_correct, run.test_correct, run.trial_ids % 2 == 0)
    for start, stop in [(0, a), (a, b), (b, N)]:
        part = count_all(run, rows=(start, stop), batch_size=64)  # T < 64: every pair update still pending
        assert part.pending == T
        assert_counts_equal(part, expected, rows=slice(start, stop))
        assert_vectors_equal(part.even, even, rows=slice(start, stop))


def test_memorization_of_counts_equals_the_formula(run, brute_counts):
    counts = count_all(run)
    c = brute_counts(run.masks, run.train_correct, run.test_correct)
    for i in range(N):
        inside = [bool(run.train_correct[k, i]) for k in range(T) if run.masks[k, i]]
        outside = [bool(run.train_correct[k, i]) for k in range(T) if not run.masks[k, i]]
        rate = lambda xs: sum(xs) / len(xs) if xs else 0.5  # noqa: E731
        assert counts.all.memorization()[i] == pytest.approx(rate(inside) - rate(outside), abs=1e-12)
    assert c["trials"] == T


def test_a_row_slice_with_a_pending_buffer_counts_its_rows(run, brute_counts):
    counts = count_all(run, rows=(11, 23), batch_size=7)  # 40 = 5 * 7 + 5: five trials pending
    assert counts.pending == 5
    expected = brute_counts(run.masks, run.train_correct, run.test_correct)
    assert_counts_equal(counts, expected, rows=slice(11, 23))


def test_even_and_odd_halves_equal_counting_them_separately(run, brute_counts):
    counts = count_all(run, batch_size=3)
    even = run.trial_ids % 2 == 0
    assert 0 < even.sum() < T
    assert_vectors_equal(counts.even, brute_counts(run.masks, run.train_correct, run.test_correct, even))
    assert_vectors_equal(counts.odd, brute_counts(run.masks, run.train_correct, run.test_correct, ~even))


def test_counts_without_pairs_keep_the_vectors_and_refuse_pair_reads(run, brute_counts):
    counts = count_all(run, with_pairs=False)
    assert counts.h_in is None and counts.pending == 0
    assert_vectors_equal(counts.all, brute_counts(run.masks, run.train_correct, run.test_correct))
    with pytest.raises(RaymemError, match="pair matrix"):
        counts.pairs_ready()


@pytest.mark.parametrize("bad", ["mask", "train", "test"])
def test_shape_mismatch_is_a_user_error_and_counts_nothing(run, bad):
    counts = count_all(run, keep=np.arange(T) < 3, batch_size=64)
    trials, pending, n_in, ids = counts.trials, counts.pending, counts.all.n_in.copy(), set(counts.trial_ids)
    mask, train, test = run.masks[5], run.train_correct[5], run.test_correct[5]
    mask, train, test = {"mask": (mask[:-1], train, test), "train": (mask, np.append(train, True), test),
                         "test": (mask, train, test[:-2])}[bad]
    with pytest.raises(RaymemError, match="training and .* test examples"):
        counts.add(run.trial_ids[5], mask, train, test)
    assert (counts.trials, counts.pending, counts.trial_ids) == (trials, pending, ids)
    np.testing.assert_array_equal(counts.all.n_in, n_in)


def test_bad_row_slice_and_batch_size_are_refused():
    with pytest.raises(ValueError):
        Counts.empty(10, 4, rows=(5, 11))
    with pytest.raises(RaymemError, match="batch size"):
        Counts.empty(10, 4, batch_size=0)


@pytest.mark.parametrize("use_blas", [True, False])
@pytest.mark.parametrize("chunk_rows", [1, 4, 4096])
def test_add_outer_products_accumulates_exactly(monkeypatch, use_blas, chunk_rows):
    """Both update paths (BLAS in place, numpy by row chunks) add masks.T @ correct to what is there."""
    if not use_blas:
        monkeypatch.setattr(counts_module, "_blas_sgemm", lambda: None)
    elif counts_module._blas_sgemm() is None:
        pytest.skip("SciPy is not installed")
    rng = np.random.default_rng(3)
    masks, correct = rng.random((9, 11)) < 0.7, rng.random((9, 6)) < 0.5
    start = rng.integers(0, 50, (11, 6)).astype(np.float32)
    h_in = start.copy()
    add_outer_products(h_in, masks.astype(np.float32), correct.astype(np.float32), chunk_rows=chunk_rows)
    expected = start.astype(np.int64)
    for k in range(9):
        for i in range(11):
            for j in range(6):
                expected[i, j] += int(masks[k, i] and correct[k, j])
    np.testing.assert_array_equal(h_in, expected)


def test_add_outer_products_on_a_non_contiguous_matrix_uses_the_chunked_path():
    rng = np.random.default_rng(4)
    masks, correct = (rng.random((5, 8)) < 0.5).astype(np.float32), (rng.random((5, 6)) < 0.5).astype(np.float32)
    backing = np.zeros((8, 12), np.float32)
    view = backing[:, ::2]  # not C-contiguous
    add_outer_products(view, masks, correct)
    np.testing.assert_array_equal(backing[:, ::2], masks.T @ correct)
    np.testing.assert_array_equal(backing[:, 1::2], 0)
