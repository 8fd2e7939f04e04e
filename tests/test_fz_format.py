"""The authors' formats: export in their released layout and read it back (per class equal to brute force),
the fz-aux and npz trial layouts give back exactly the arrays they were made from, bad archives fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from raymem.errors import RaymemError
from raymem.paper import fz_format
from raymem.estimator.counts import Counts
from raymem.estimator.log_replay import offline_view
from raymem.store.storage import RunStore


def make_trials(seed=0, t=50, n=36, n_test=21, classes=3):
    rng = np.random.default_rng(seed)
    m = int(0.7 * n)
    masks = np.zeros((t, n), bool)
    for k in range(t):
        masks[k, rng.permutation(n)[:m]] = True
    train_ok = rng.random((t, n)) < 0.8
    train_ok[:, :4] = masks[:, :4] & (rng.random((t, 4)) < 0.95)       # memorized
    test_ok = rng.random((t, n_test)) < 0.7
    test_ok[:, :4] = np.where(masks[:, :4], rng.random((t, 4)) < 0.95, rng.random((t, 4)) < 0.05)  # influenced
    train_labels = np.arange(n) % classes
    test_labels = np.arange(n_test) % classes
    return masks, train_ok, test_ok, train_labels, test_labels


def counts_of(masks, train_ok, test_ok):
    counts = Counts.empty(masks.shape[1], test_ok.shape[1], batch_size=8)
    for k in range(len(masks)):
        counts.add(k, masks[k], train_ok[k], test_ok[k])
    counts.flush()
    counts.flush()
    return counts


def brute_rate(hits, trials):
    return hits / trials if trials else 0.5


def brute_mem(masks, train_ok, i):
    inn = masks[:, i]
    return brute_rate(train_ok[inn, i].sum(), inn.sum()) - brute_rate(train_ok[~inn, i].sum(), (~inn).sum())


def brute_infl(masks, test_ok, i, j):
    inn = masks[:, i]
    return brute_rate(test_ok[inn, j].sum(), inn.sum()) - brute_rate(test_ok[~inn, j].sum(), (~inn).sum())


def test_export_then_read_back_equals_brute_force_per_class(tmp_path):
    masks, train_ok, test_ok, y_tr, y_tt = make_trials()
    counts = counts_of(masks, train_ok, test_ok)
    out = fz_format.export_fz(counts, y_tr, y_tt, tmp_path / "fz.npz")
    with np.load(out, allow_pickle=False) as z:
        keys = set(z.files)
        assert {"tr_mem", "tr_labels", "tt_labels"} <= keys
        for c in range(3):
            assert z[f"infl_matrix_class{c}"].dtype == np.float32
            np.testing.assert_array_equal(z[f"tr_classidx_{c}"], np.flatnonzero(y_tr == c))
            np.testing.assert_array_equal(z[f"tt_classidx_{c}"], np.flatnonzero(y_tt == c))
        assert len(keys) == 3 + 3 * 3
    fz = fz_format.read_fz(out)
    np.testing.assert_allclose(fz.tr_mem, [brute_mem(masks, train_ok, i) for i in range(len(y_tr))])
    np.testing.assert_array_equal(fz.tr_labels, y_tr)
    np.testing.assert_array_equal(fz.tt_labels, y_tt)
    for c, (tr_idx, tt_idx, block) in fz.blocks.items():
        expect = np.array([[brute_infl(masks, test_ok, i, j) for j in tt_idx] for i in tr_idx])
        assert (y_tr[tr_idx] == c).all() and (y_tt[tt_idx] == c).all()
        np.testing.assert_allclose(block, expect, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # A run compared with its own export agrees perfectly on the cells the export holds.
    result = fz_format.compare_with_fz(counts, fz)
    assert result["mem"]["jaccard"] == 1.0 and result["mem"]["mean_abs_diff"] == 0.0
    assert result["pairs_run"] == result["pairs_file"] == result["pairs_common"] > 0
    assert result["infl"]["jaccard"] == 1.0 and result["infl"]["mean_abs_diff"] < 1e-6
    pairs = fz_format.fz_pairs(fz)
    assert len(pairs["tr_idx"]) == result["pairs_file"]
    assert (y_tr[pairs["tr_idx"]] == y_tt[pairs["tt_idx"]]).all() and (pairs["infl"] >= 0.15).all()


def test_index_maps_write_the_authors_order_and_read_back_tfds_order(tmp_path):
    masks, train_ok, test_ok, y_tr, y_tt = make_trials(seed=1)
    counts = counts_of(masks, train_ok, test_ok)
    rng = np.random.default_rng(7)
    tr_map, tt_map = rng.permutation(len(y_tr)), rng.permutation(len(y_tt))
    plain = fz_format.read_fz(fz_format.export_fz(counts, y_tr, y_tt, tmp_path / "plain.npz"))
    mapped_path = fz_format.export_fz(counts, y_tr, y_tt, tmp_path / "mapped.npz",
                                      train_index_map=tr_map, test_index_map=tt_map)
    with np.load(mapped_path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["tr_mem"], plain.tr_mem[tr_map])   # position k holds tfds example map[k]
        np.testing.assert_array_equal(z["tt_labels"], y_tt[tt_map])
    mapped = fz_format.read_fz(mapped_path, train_index_map=tr_map, test_index_map=tt_map)
    np.testing.assert_array_equal(mapped.tr_mem, plain.tr_mem)
    np.testing.assert_array_equal(mapped.tr_labels, y_tr)
    for c in plain.blocks:
        a_tr, a_tt, a = plain.blocks[c]
        b_tr, b_tt, b = mapped.blocks[c]
        oa, ob = np.argsort(a_tr), np.argsort(b_tr)
        pa_, pb = np.argsort(a_tt), np.argsort(b_tt)
        np.testing.assert_array_equal(a_tr[oa], b_tr[ob])
        np.testing.assert_array_equal(a[oa][:, pa_], b[ob][:, pb])
    # index map files
    np.save(tmp_path / "map.npy", tr_map)
    np.savez(tmp_path / "maps.npz", train=tr_map, test=tt_map)
    assert np.array_equal(fz_format.load_index_map(tmp_path / "map.npy")[0], tr_map)
    train, test = fz_format.load_index_map(tmp_path / "maps.npz")
    assert np.array_equal(train, tr_map) and np.array_equal(test, tt_map)
    with pytest.raises(RaymemError, match="not a permutation"):
        fz_format.export_fz(counts, y_tr, y_tt, tmp_path / "x.npz", train_index_map=np.zeros(len(y_tr), int))
    with pytest.raises(RaymemError, match="must be 36 integers"):
        fz_format.read_fz(mapped_path, train_index_map=tr_map[:5])
    assert not (tmp_path / "x.npz").exists()


def test_read_fz_rejects_missing_keys_and_bad_blocks(tmp_path):
    np.savez(tmp_path / "a.npz", tr_mem=np.zeros(4), tr_labels=np.zeros(4, int))
    with pytest.raises(RaymemError, match=r"a\.npz lacks 'tt_labels'"):
        fz_format.read_fz(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", tr_mem=np.zeros(4), tr_labels=np.zeros(4, int), tt_labels=np.zeros(3, int),
             infl_matrix_class0=np.zeros((4, 3), np.float32), tr_classidx_0=np.arange(4))
    with pytest.raises(RaymemError, match="lacks 'tt_classidx_0'"):
        fz_format.read_fz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", tr_mem=np.zeros(4), tr_labels=np.zeros(4, int), tt_labels=np.zeros(3, int),
             infl_matrix_class0=np.zeros((4, 2), np.float32), tr_classidx_0=np.arange(4), tt_classidx_0=np.arange(3))
    with pytest.raises(RaymemError, match="has shape"):
        fz_format.read_fz(tmp_path / "c.npz")
    with pytest.raises(RaymemError, match="does not exist"):
        fz_format.read_fz(tmp_path / "none.npz")


def test_export_rejects_bad_labels_and_targets(tmp_path):
    masks, train_ok, test_ok, y_tr, y_tt = make_trials()
    counts = counts_of(masks, train_ok, test_ok)
    with pytest.raises(RaymemError, match="train_labels has shape"):
        fz_format.export_fz(counts, y_tr[:3], y_tt, tmp_path / "x.npz")
    with pytest.raises(RaymemError, match="does not exist"):
        fz_format.export_fz(counts, y_tr, y_tt, tmp_path / "no" / "x.npz")
    with pytest.raises(RaymemError, match="is a directory"):
        fz_format.export_fz(counts, y_tr, y_tt, tmp_path)


# ---- the npz trial layout ------------------------------------------------------------------------

def test_npz_layout_returns_exactly_its_arrays(tmp_path):
    masks, train_ok, test_ok, *_ = make_trials(seed=2)
    np.savez(tmp_path / "t.npz", trainset_mask=masks, trainset_correctness=train_ok, testset_correctness=test_ok)
    got = fz_format.read_npz_trials(tmp_path / "t.npz")
    for a, b in zip(got, (masks, train_ok, test_ok)):
        assert a.dtype == np.bool_ and np.array_equal(a, b)
    np.savez(tmp_path / "ints.npz", trainset_mask=masks.astype(np.uint8), trainset_correctness=train_ok.astype(int),
             testset_correctness=test_ok.astype(np.int8))
    for a, b in zip(fz_format.read_npz_trials(tmp_path / "ints.npz"), (masks, train_ok, test_ok)):
        assert a.dtype == np.bool_ and np.array_equal(a, b)
    perm = np.random.default_rng(0).permutation(masks.shape[1])
    moved = fz_format.read_npz_trials(tmp_path / "t.npz", train_index_map=perm)
    assert np.array_equal(moved[0][:, perm], masks)


def test_npz_layout_ingests_like_the_arrays(tmp_path):
    from raymem import api

    masks, train_ok, test_ok, *_ = make_trials(seed=3, t=12)
    np.savez(tmp_path / "t.npz", trainset_mask=masks, trainset_correctness=train_ok, testset_correctness=test_ok)
    api.ingest(str(tmp_path / "run"), *fz_format.read_npz_trials(tmp_path / "t.npz"))
    view = offline_view(RunStore.open(str(tmp_path / "run")))
    direct = counts_of(masks, train_ok, test_ok)
    for name in ("n_in", "in_hits", "total_hits", "test_hits"):
        assert np.array_equal(getattr(view.counts.all, name), getattr(direct.all, name))
    assert np.array_equal(view.counts.pairs_ready(), direct.pairs_ready())


@pytest.mark.parametrize("arrays, match", [
    (dict(trainset_mask=np.zeros((2, 3), bool), trainset_correctness=np.zeros((2, 3), bool)),
     "lacks 'testset_correctness'"),
    (dict(trainset_mask=np.zeros((2, 3), bool), trainset_correctness=np.zeros((2, 4), bool),
          testset_correctness=np.zeros((2, 5), bool)), "trainset_correctness has shape"),
    (dict(trainset_mask=np.zeros((2, 3), bool), trainset_correctness=np.zeros((2, 3), bool),
          testset_correctness=np.zeros((3, 5), bool)), "testset_correctness has 3 trials"),
    (dict(trainset_mask=np.zeros(3, bool), trainset_correctness=np.zeros(3, bool),
          testset_correctness=np.zeros(5, bool)), "must be 2-D"),
    (dict(trainset_mask=np.full((2, 3), 0.5), trainset_correctness=np.zeros((2, 3), bool),
          testset_correctness=np.zeros((2, 5), bool)), "not 0/1"),
    (dict(trainset_mask=np.array([[None]] * 2, dtype=object), trainset_correctness=np.zeros((2, 1), bool),
          testset_correctness=np.zeros((2, 5), bool)), "Python objects"),
])
def test_npz_layout_bad_archives(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(RaymemError, match=match) as info:
        fz_format.read_npz_trials(tmp_path / "bad.npz")
    assert "bad.npz" in str(info.value)


def test_npz_layout_not_an_archive(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RaymemError, match="not a plain numpy file"):
        fz_format.read_npz_trials(tmp_path / "junk.npz")


# ---- the authors' aux_arrays runs ----------------------------------------------------------------

def write_aux_runs(root, masks, train_ok, test_ok, seed=0):
    """One folder per trial (names 0..t-1, so natural order matters past 9), arrays in shuffled orders."""
    rng = np.random.default_rng(seed)
    for k in range(len(masks)):
        run = root / str(k)
        run.mkdir(parents=True)
        idx_train = rng.permutation(np.flatnonzero(masks[k]))
        idx_removed = rng.permutation(np.flatnonzero(~masks[k]))
        idx_test = rng.permutation(test_ok.shape[1])
        np.savez(run / "aux_arrays.npz", subsample_idx=rng.permutation(idx_train),
                 correctness_train=train_ok[k, idx_train], index_train=idx_train,
                 correctness_removed=train_ok[k, idx_removed], index_removed=idx_removed,
                 correctness_test=test_ok[k, idx_test], index_test=idx_test)
    return root


def test_fz_aux_layout_returns_exactly_its_arrays(tmp_path):
    masks, train_ok, test_ok, *_ = make_trials(seed=4, t=12)
    root = write_aux_runs(tmp_path / "cifar100-inception" / "0.7", masks, train_ok, test_ok)
    (root / ".ipynb_checkpoints").mkdir()
    got = fz_format.read_fz_aux(root)
    for a, b in zip(got, (masks, train_ok, test_ok)):
        assert a.dtype == np.bool_ and np.array_equal(a, b)
    assert [p.parent.name for p in fz_format.fz_aux_runs(root)] == [str(k) for k in range(12)]
    with pytest.raises(RaymemError, match="subset-ratio folder: pass"):
        fz_format.read_fz_aux(tmp_path / "cifar100-inception")


def _one_aux(tmp_path, **override):
    masks, train_ok, test_ok, *_ = make_trials(seed=5, t=2)
    root = write_aux_runs(tmp_path / "runs", masks, train_ok, test_ok)
    path = root / "1" / "aux_arrays.npz"
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(override)
    for key in [k for k, v in override.items() if v is None]:
        del arrays[key]
    np.savez(path, **arrays)
    return root


@pytest.mark.parametrize("override, match", [
    (dict(index_test=None), "lacks 'index_test'"),
    (dict(subsample_idx=np.arange(3)), "subsample_idx is not the set of index_train"),
    (dict(index_removed=np.arange(10)), "correctness_removed has shape"),
    (dict(correctness_test=np.zeros(5, bool)), "correctness_test has shape"),
    (dict(index_train=np.zeros(25, int)), "do not list each"),
])
def test_fz_aux_bad_runs(tmp_path, override, match):
    root = _one_aux(tmp_path, **override)
    with pytest.raises(RaymemError, match=match) as info:
        fz_format.read_fz_aux(root)
    assert "aux_arrays.npz" in str(info.value)


def test_fz_aux_bad_directories(tmp_path):
    with pytest.raises(RaymemError, match="is not a directory"):
        fz_format.read_fz_aux(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RaymemError, match="no run subdirectories"):
        fz_format.read_fz_aux(tmp_path / "empty")
    (tmp_path / "empty" / "3").mkdir()
    with pytest.raises(RaymemError, match="has no aux_arrays.npz"):
        fz_format.read_fz_aux(tmp_path / "empty")
