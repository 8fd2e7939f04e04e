"""Influence scope "class": per-class pair counts against brute force, and every pair read against the
full-scope answer restricted to same-label pairs (counts, pairs, influence, FDR, compare, export, figures,
replay from a trial log, pair-shard row slices), plus the memory numbers and bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymem.estimator.bars import Bars
from raymem.estimator.report import PairSelection
from raymem.errors import RaymemError
from raymem.estimator import bounds, report, influence_scope
from raymem.paper import compare, fz_format, shown_examples
from raymem.estimator import fdr as fdr_module
from raymem.estimator.counts import Counts
from raymem.estimator.log_replay import counts_from_log, offline_view, run_influence_scope
from raymem.store.run_info import read_run_info, write_run_info
from raymem.store.storage import RunStore

N, N_TEST, T = 30, 20, 240
DELTA = 0.05
#: planted pairs: (3, 2), (8, 11), (20, 6) share a label, (15, 5) does not (its influence is never estimated)
PLANTED = [(3, 2), (8, 11), (20, 6), (15, 5)]


def make_labels():
    rng = np.random.default_rng(11)
    train = rng.integers(0, 4, N)          # classes 0..3 for training examples
    test = rng.integers(0, 4, N_TEST)
    test[test == 3] = 4                    # class 3: training rows only; class 4: test examples only
    test[:2] = 4
    for i, j in PLANTED[:3]:
        train[i] = test[j] = [0, 1, 2][PLANTED.index((i, j))]
    train[15], test[5] = 1, 2
    return train.astype(np.int64), test.astype(np.int64)


TRAIN_LABELS, TEST_LABELS = make_labels()
SAME = TRAIN_LABELS[:, None] == TEST_LABELS[None, :]


@pytest.fixture
def run(synthetic_run):
    ids = np.random.default_rng(3).permutation(2 * T)[:T]
    return synthetic_run(seed=5, n=N, n_test=N_TEST, t=T, memorized=[3, 8, 15, 20], planted=PLANTED, trial_ids=ids)


def count(run, scope_name="full", rows=None, batch_size=7, order=None) -> Counts:
    counts = Counts.empty(N, N_TEST, rows=rows, batch_size=batch_size, influence_scope=scope_name,
                          train_labels=TRAIN_LABELS, test_labels=TEST_LABELS)
    for k in (range(len(run.trial_ids)) if order is None else order):
        counts.add(run.trial_ids[k], run.masks[k], run.train_correct[k], run.test_correct[k])
    return counts


def same_class(table: pa.Table) -> pa.Table:
    tr = table.column("train_index").to_numpy()
    tt = table.column("test_index").to_numpy()
    return table.filter(pa.array(SAME[tr, tt]))


def class_family() -> int:
    return int(SAME.sum())


# ---- counts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("rows", [None, (7, 19), (13, 13), (0, 30)])
def test_class_counts_equal_the_brute_force_counts_on_same_label_cells(run, brute_counts, batch_size, rows):
    expected = brute_counts(run.masks, run.train_correct, run.test_correct)
    counts = count(run, "class", rows=rows, batch_size=batch_size)
    start, stop = rows or (0, N)
    assert counts.influence_scope == "class" and counts.h_in is None and counts.tracks_pairs
    for name in ("n_in", "in_hits", "total_hits"):
        np.testing.assert_array_equal(getattr(counts.all, name), expected[name][start:stop])
    np.testing.assert_array_equal(counts.all.test_hits, expected["test_hits"])
    # every cell of the slice: estimated exactly when the labels agree, with the brute-force count
    i, j = np.meshgrid(np.arange(start, stop), np.arange(N_TEST), indexing="ij")
    h, estimated = counts.pair_cells(i, j)
    np.testing.assert_array_equal(estimated, SAME[start:stop])
    np.testing.assert_array_equal(h[estimated], expected["h_in"][start:stop][SAME[start:stop]])
    assert np.all(h[~estimated] == 0) and counts.pending == 0
    # the blocks are the per-class matrices, labels ascending, rows and columns ascending
    blocks = counts.pair_blocks()
    assert [b.label for b in blocks] == sorted({int(c) for c in TRAIN_LABELS[start:stop]}
                                               & {int(c) for c in TEST_LABELS})
    for b in blocks:
        assert np.all(TRAIN_LABELS[b.rows] == b.label) and np.all(TEST_LABELS[b.cols] == b.label)
        assert np.all(np.diff(b.rows) > 0) and np.all(np.diff(b.cols) > 0)
        np.testing.assert_array_equal(b.h, expected["h_in"][np.ix_(b.rows, b.cols)])
    assert sum(b.h.size for b in blocks) == counts.pair_cells_kept == int(SAME[start:stop].sum())
    assert counts.pair_family == class_family()


def test_class_counts_are_idempotent_by_trial_id_and_any_order(run, brute_counts):
    order = np.random.default_rng(1).permutation(T)
    counts = count(run, "class", batch_size=5, order=order)
    for k in (0, 7, T - 1):  # the same ids again, with other outcomes: ignored
        assert not counts.add(run.trial_ids[k], ~run.masks[k], ~run.train_correct[k], ~run.test_correct[k])
    full = count(run, "full")
    i, j = np.nonzero(SAME)
    np.testing.assert_array_equal(counts.pair_cells(i, j)[0], full.pair_cells(i, j)[0])
    even = brute_counts(run.masks, run.train_correct, run.test_correct, run.trial_ids % 2 == 0)
    np.testing.assert_array_equal(counts.even.n_in, even["n_in"])


def test_row_slices_of_class_counts_together_hold_the_whole(run):
    whole = count(run, "class")
    for start, stop in [(0, 9), (9, 22), (22, 30)]:
        part = count(run, "class", rows=(start, stop), batch_size=64)
        i, j = np.meshgrid(np.arange(start, stop), np.arange(N_TEST), indexing="ij")
        for got, want in zip(part.pair_cells(i, j), whole.pair_cells(i, j)):
            np.testing.assert_array_equal(got, want)
        assert part.pair_family == whole.pair_family  # the family is the run's, not the slice's


def test_full_scope_accessors_read_the_matrix(run):
    counts = count(run, "full")
    blocks = counts.pair_blocks()
    assert len(blocks) == 1 and blocks[0].label is None and blocks[0].h is counts.pairs_ready()
    rows, column = counts.pair_column(4)
    np.testing.assert_array_equal(rows, np.arange(N))
    np.testing.assert_array_equal(column, counts.pairs_ready()[:, 4])
    assert counts.pair_family == N * N_TEST and counts.pair_hypotheses(np.arange(N) < 5) == 5 * N_TEST


# ---- memory ------------------------------------------------------------------------------------------

def test_pair_count_bytes_of_imagenet_shaped_labels():
    train = np.repeat(np.arange(1000), 1281)
    test = np.repeat(np.arange(1000), 50)
    n, n_test = train.size, test.size
    assert influence_scope.pair_count_bytes("class", n, n_test, train_labels=train,
                                            test_labels=test) == 4 * 1000 * 1281 * 50
    assert influence_scope.pair_count_bytes("class", n, n_test, train_labels=train, test_labels=test) == 256_200_000
    assert influence_scope.pair_count_bytes("full", n, n_test) == 4 * n * n_test == 256_200_000_000
    assert influence_scope.pair_count_bytes("class", n, n_test, num_classes=1000) == 256_200_000
    assert influence_scope.pair_count_bytes("class", N, N_TEST, train_labels=TRAIN_LABELS,
                                            test_labels=TEST_LABELS) == 4 * class_family()
    with pytest.raises(RaymemError, match="labels"):
        influence_scope.pair_count_bytes("class", n, n_test)
    # a pair shard's slice: what its counts hold
    for rows in [(0, 9), (9, 22), (13, 13)]:
        klass = Counts.empty(N, N_TEST, rows=rows, influence_scope="class", train_labels=TRAIN_LABELS,
                             test_labels=TEST_LABELS)
        assert influence_scope.pair_count_bytes("class", N, N_TEST, train_labels=TRAIN_LABELS, test_labels=TEST_LABELS,
                                      rows=rows) == 4 * klass.pair_cells_kept == klass.pair_storage.nbytes
        assert (influence_scope.pair_count_bytes("full", N, N_TEST, rows=rows)
                == Counts.empty(N, N_TEST, rows=rows).h_in.nbytes)


# ---- reads: the full answer restricted to same-label pairs ---------------------------------------------

@pytest.mark.parametrize("method", ["anytime", "chernoff"])
def test_pairs_table_is_the_full_table_restricted_to_same_label_pairs(run, method):
    full, klass = count(run, "full"), count(run, "class")
    want = same_class(report.pairs_table(full, Bars(method=method)))
    got = report.pairs_table(klass, Bars(method=method))
    assert got.num_rows > 0 and got.num_rows < report.pairs_table(full, Bars(method=method)).num_rows
    assert got.equals(want)
    assert got.column_names == report.pairs_table(full, Bars(method=method)).column_names


def test_simultaneous_bands_cover_the_estimated_pairs(run):
    klass = count(run, "class")
    got = report.pairs_table(klass, Bars(simultaneous=True)).to_pydict()
    plan = Bars(delta=DELTA).plan
    d = bounds.family_delta(DELTA, class_family(), True)
    n_in, n_out = np.array(got["n_in"]), np.array(got["n_out"])
    h = klass.pair_cells(got["train_index"], got["test_index"])[0].astype(np.int64)
    lo, hi = bounds.difference_interval(h, n_in, klass.all.test_hits[got["test_index"]] - h, n_out, d, "anytime",
                                        plan=plan)
    np.testing.assert_array_equal(got["infl_lo"], lo)
    np.testing.assert_array_equal(got["infl_hi"], hi)


def test_influence_table_ranks_the_training_examples_of_the_test_examples_class(run):
    full, klass = count(run, "full"), count(run, "class")
    v = full.all
    infl = report.formulas.influence(full.pairs_ready(), v.n_in, v.test_hits, v.n_out)
    for j in range(N_TEST):
        got = report.influence_table(klass, j, top=4)
        rows = np.flatnonzero(TRAIN_LABELS == TEST_LABELS[j])
        order = rows[np.lexsort((rows, -infl[rows, j]))][:4]
        assert got.column("train_index").to_pylist() == order.tolist()
        whole = report.influence_table(full, j, top=N).to_pydict()
        by_row = {i: k for k, i in enumerate(whole["train_index"])}
        for name in ("infl", "infl_lo", "infl_hi", "mem"):
            assert got.column(name).to_pylist() == [whole[name][by_row[i]] for i in order.tolist()]
    assert report.influence_table(klass, 0).num_rows == 0  # test 0 is of class 4, which has no training example


@pytest.mark.parametrize("method", ["anytime", "fixed"])
def test_fdr_selection_counts_only_same_label_hypotheses(run, method):
    full, klass = count(run, "full"), count(run, "class")
    mem = full.all.memorization()
    m = int(sum(SAME[i].sum() for i in range(N) if mem[i] >= 0.25))
    assert klass.pair_hypotheses(mem >= 0.25) == m
    plan = Bars(delta=DELTA).plan
    candidates = same_class(report.pairs_table(full, Bars(method=method))).to_pydict()
    h = np.rint(full.pair_cells(candidates["train_index"], candidates["test_index"])[0]).astype(np.int64)
    p = fdr_module.pair_pvalues(h, candidates["n_in"], candidates["n_out"],
                                full.all.test_hits[candidates["test_index"]], 0.15, method=method, fdr=0.1,
                                n_hypotheses=m, plan=plan, tuning_family=class_family())
    kept, q = fdr_module.step_up(p, 0.1, m, method)
    got = report.pairs_table(klass, Bars(method=method), PairSelection(fdr=0.1))
    assert kept.any()
    assert got.column("train_index").to_pylist() == np.array(candidates["train_index"])[kept].tolist()
    assert got.column("test_index").to_pylist() == np.array(candidates["test_index"])[kept].tolist()
    np.testing.assert_array_equal(got.column("q_value").to_numpy(), q[kept])
    assert report.pairs_passing_fdr(klass, Bars(method=method), 0.1) == got.num_rows
    summary = report.convergence_summary(klass, Bars(method=method), subset_size=run.subset_size)
    assert summary["pairs_fdr_0.1"] == got.num_rows


def test_compare_runs_on_class_scope_compares_the_same_label_pairs(synthetic_run):
    a_run = synthetic_run(seed=6, n=N, n_test=N_TEST, t=120, memorized=[3, 8, 20], planted=PLANTED)
    b_run = synthetic_run(seed=7, n=N, n_test=N_TEST, t=120, memorized=[3, 8, 20], planted=PLANTED)
    a_full, b_full, a_cls, b_cls = count(a_run), count(b_run), count(a_run, "class"), count(b_run, "class")
    mem_a, mem_b = a_full.all.memorization(), b_full.all.memorization()
    infl = lambda c: report.formulas.influence(c.pairs_ready(), c.all.n_in, c.all.test_hits, c.all.n_out)  # noqa: E731
    table = compare.compare_runs(a_cls, b_cls).to_pylist()
    assert table == compare.compare_runs(a_cls, b_full).to_pylist() == compare.compare_runs(a_full, b_cls).to_pylist()
    for row in table:
        if row["quantity"] == "mem":
            want = report.selection.jaccard_and_mean_difference(mem_a, mem_b, row["threshold"])
        else:
            want = report.selection.jaccard_and_mean_difference(
                infl(a_full), infl(b_full), row["threshold"],
                eligible_a=(mem_a >= 0.25)[:, None] & SAME, eligible_b=(mem_b >= 0.25)[:, None] & SAME)
        for key in ("size_a", "size_b", "size_union"):
            assert row[key] == want[key]
        for key in ("jaccard", "mean_abs_diff"):
            assert (np.isnan(row[key]) and np.isnan(want[key])) or row[key] == pytest.approx(want[key], abs=1e-12)
    assert any(r["quantity"] == "infl" and r["size_union"] for r in table)


def test_compare_with_released_leaves_out_the_pairs_the_scope_does_not_estimate(run, tmp_path):
    full, klass = count(run, "full"), count(run, "class")
    pairs = report.pairs_table(full)
    path = compare.export_pairs_npz(pairs, tmp_path / "pairs.npz")
    released = compare.load_pairs_npz(path)
    cross = ~SAME[released["tr_idx"], released["tt_idx"]]
    assert cross.any()
    got = compare.compare_with_released(klass, released)
    want = compare.compare_with_released(full, {k: a[~cross] for k, a in released.items()})
    assert got.pop("released_outside_scope") == int(cross.sum())
    assert want.pop("released_outside_scope") == 0
    # the class run's pairs are exactly the released same-label ones; the full run also finds the cross-label ones
    assert (got["pairs_run"] == got["pairs_released"] == got["pairs_common"] == int((~cross).sum())
            and got["jaccard"] == 1.0)
    assert want["pairs_run"] == len(cross) and want["pairs_released"] == got["pairs_released"]
    for key in ("infl_mean_abs_diff_on_released", "mem_mean_abs_diff_on_released"):
        assert got[key] == want[key] == 0.0


def test_export_fz_of_a_class_scope_run_equals_the_full_runs(run, tmp_path):
    full, klass = count(run, "full"), count(run, "class")
    a = fz_format.export_fz(full, TRAIN_LABELS, TEST_LABELS, tmp_path / "full.npz")
    b = fz_format.export_fz(klass, TRAIN_LABELS, TEST_LABELS, tmp_path / "class.npz")
    with np.load(a) as x, np.load(b) as y:
        assert sorted(x.files) == sorted(y.files)
        for key in x.files:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    fz = fz_format.read_fz(b)
    assert fz_format.compare_with_fz(klass, fz) == fz_format.compare_with_fz(full, fz)
    other = TRAIN_LABELS.copy()
    other[3] = (other[3] + 1) % 4
    with pytest.raises(RaymemError, match="other labels"):
        fz_format.export_fz(klass, other, TEST_LABELS, tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


def test_top_influenced_from_counts_is_the_full_row_within_the_class(run):
    full, klass = count(run, "full"), count(run, "class")
    rows = [3, 8, 15, 20, 0]
    got = shown_examples.top_influenced_from_counts(klass, rows, k=3)
    want = shown_examples.top_influenced_from_counts(full, rows, k=3, test_columns=lambda i: SAME[i])
    assert got.equals(want)
    assert 15 in got.column("train_index").to_pylist()  # its class has test examples, its planted pair is not one


def test_figures_of_a_class_scope_run_show_same_label_examples(run, tmp_path):
    from raymem.paper import figures

    klass = count(run, "class")
    summary = figures.figures_for_counts(tmp_path / "fig", klass, figures.RunData(TRAIN_LABELS, TEST_LABELS), Bars())
    assert figures.INFLUENCE_HIST_PNG in summary["written"] and summary["pairs"] > 0
    examples = pq.read_table(tmp_path / "fig" / figures.INFLUENCE_EXAMPLES).to_pydict()
    assert examples["train_label"] and examples["train_label"] == examples["test_label"]


# ---- a run in class scope, replayed from its trial log -----------------------------------------------

def ingested(run, tmp_path, name="r", labels=True):
    from raymem import api

    kwargs = dict(train_labels=TRAIN_LABELS, test_labels=TEST_LABELS) if labels else {}
    api.ingest(str(tmp_path / name), run.masks, run.train_correct, run.test_correct, **kwargs)
    return RunStore.open(str(tmp_path / name))


def set_config(store, config):
    """Replace the stored config's scope keys with ``config`` (the rest of it kept)."""
    info = read_run_info(store)
    kept = {k: v for k, v in info.config.items() if k not in ("estimator", "influence_scope")}
    write_run_info(store, dataclasses.replace(info, config={**kept, **config}))


def test_a_class_scope_run_replayed_from_its_log_reads_like_a_full_one(run, tmp_path):
    store = ingested(run, tmp_path)
    full_view = offline_view(store)
    assert full_view.influence_scope == "full"
    set_config(store, {"estimator": {"influence_scope": "class"}})
    view = offline_view(store)
    assert view.influence_scope == "class" and view.counts.h_in is None
    assert view.pairs_table().equals(same_class(full_view.pairs_table()))
    assert view.pairs_table(view.bars(), PairSelection(fdr=0.1)).num_rows > 0
    assert view.mem_table().equals(full_view.mem_table())
    assert view.influence_table(test_index=2).column("train_index").to_pylist() == \
        [i for i in full_view.influence_table(test_index=2, top=N).column("train_index").to_pylist() if SAME[i, 2]][:10]
    assert view.fdr_hypotheses(0.25) == int(SAME[full_view.counts.all.memorization() >= 0.25].sum())
    status = view.status()
    assert status["influence_scope"] == "class" and full_view.status()["influence_scope"] == "full"
    # what the accumulator does on a restart (rebuild from the log) then on absorbs (add, idempotent)
    live = Counts.empty(N, N_TEST, influence_scope="class", train_labels=TRAIN_LABELS, test_labels=TEST_LABELS)
    for k in np.random.default_rng(2).permutation(T):
        live.add(k, run.masks[k], run.train_correct[k], run.test_correct[k])
    for k in range(5):
        assert not live.add(k, run.masks[k], run.train_correct[k], run.test_correct[k])
    i, j = np.nonzero(SAME)
    np.testing.assert_array_equal(live.pair_cells(i, j)[0], view.counts.pair_cells(i, j)[0])
    # pair shards' row slices of a class-scope run
    part = counts_from_log(store, read_run_info(store), rows=(10, 25))
    assert part.influence_scope == "class"
    rows = np.arange(10, 25)
    for got, want in zip(part.pair_cells(rows[:, None], np.arange(N_TEST)),
                         view.counts.pair_cells(rows[:, None], np.arange(N_TEST))):
        np.testing.assert_array_equal(got, want)
    # either scope can be asked for explicitly
    assert offline_view(store, influence_scope="full").pairs_table().equals(full_view.pairs_table())


@pytest.mark.parametrize("config, scope_name", [
    ({}, "full"),                                              # ingested / old runs: no key
    ({"influence_scope": "class"}, "class"),                   # flat keys (runs from before the sections)
    ({"estimator": {"pair_batch": 64}}, "full"),               # a section without the key
    ({"estimator": {"influence_scope": "full"}}, "full"),
])
def test_stored_configs_old_and_new_give_the_scope(run, tmp_path, config, scope_name):
    store = ingested(run, tmp_path)
    set_config(store, config)
    assert run_influence_scope(read_run_info(store)) == scope_name
    assert offline_view(store, with_pairs=False).counts.influence_scope == scope_name


def test_export_through_the_api_is_the_same_for_both_scopes(run, tmp_path):
    from raymem import api

    store = ingested(run, tmp_path)
    a = api.export(store.uri, str(tmp_path / "full.npz"))
    set_config(store, {"estimator": {"influence_scope": "class"}})
    b = api.export(store.uri, str(tmp_path / "class.npz"))
    with np.load(a) as x, np.load(b) as y:
        assert all(np.array_equal(x[k], y[k]) for k in x.files) and sorted(x.files) == sorted(y.files)


# ---- bad input -------------------------------------------------------------------------------------------

def test_class_scope_without_labels_is_a_clear_error(run, tmp_path):
    with pytest.raises(RaymemError, match="needs the run's training and test labels"):
        Counts.empty(N, N_TEST, influence_scope="class")
    with pytest.raises(RaymemError, match="training labels have shape"):
        Counts.empty(N, N_TEST, influence_scope="class", train_labels=TRAIN_LABELS[:-1], test_labels=TEST_LABELS)
    with pytest.raises(RaymemError, match="test labels .* dtype float"):
        Counts.empty(N, N_TEST, influence_scope="class", train_labels=TRAIN_LABELS, test_labels=TEST_LABELS + 0.5)
    with pytest.raises(RaymemError, match="not an influence scope"):
        Counts.empty(N, N_TEST, influence_scope="per-class")
    store = ingested(run, tmp_path, labels=False)
    set_config(store, {"estimator": {"influence_scope": "class"}})
    before = sorted(p.name for p in (tmp_path / "r").iterdir())
    with pytest.raises(RaymemError, match="no labels.parquet"):
        offline_view(store)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == before
    set_config(store, {"estimator": {"influence_scope": "diagonal"}})
    with pytest.raises(RaymemError, match="run.json .* 'diagonal' is not an influence scope"):
        offline_view(store)


def test_class_counts_refuse_the_full_matrix_read(run):
    with pytest.raises(RaymemError, match="per class"):
        count(run, "class").pairs_ready()
    no_pairs = Counts.empty(N, N_TEST, with_pairs=False, influence_scope="class", train_labels=TRAIN_LABELS,
                            test_labels=TEST_LABELS)
    assert not no_pairs.tracks_pairs and no_pairs.pair_hypotheses(np.ones(N, bool)) == class_family()
    with pytest.raises(RaymemError, match="without the pair matrix"):
        no_pairs.pair_blocks()


def test_config_key_and_the_imagenet_preset():
    from raymem.config.experiment import PRESETS, compare_for_resume, resolve_config

    assert resolve_config("digits").estimator.influence_scope == "full"
    imagenet = PRESETS["imagenet"]
    assert imagenet.estimator.influence_scope == "class" and imagenet.estimator.pair_shards == 1
    assert resolve_config("digits", {"influence_scope": "class"}).estimator.influence_scope == "class"
    assert resolve_config("digits", {"estimator.influence_scope": "class"}).estimator.influence_scope == "class"
    with pytest.raises(RaymemError, match="influence_scope"):
        resolve_config("digits", {"influence_scope": "pairs"})
    # runs stored before the key existed still resume
    old = resolve_config("digits").to_dict()
    del old["estimator"]["influence_scope"]
    compare_for_resume(old, resolve_config("digits"), "old-run")
