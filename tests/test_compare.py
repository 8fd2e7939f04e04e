"""Comparing estimates: two runs (supplement Eq. 4) and a run against pairs in the paper's released layout."""

from __future__ import annotations

import numpy as np
import pytest

from raymem.errors import RaymemError
from raymem.paper import compare
from raymem.estimator import formulas, report, selection
from raymem.estimator.counts import Counts


def synthetic_counts(seed: int, n=40, n_test=25, t=120) -> Counts:
    """Random trials where a few training examples are memorized and drive a few test examples."""
    rng = np.random.default_rng(seed)
    counts = Counts.empty(n, n_test, batch_size=7)
    for k in range(t):
        mask = np.zeros(n, bool)
        mask[rng.choice(n, int(0.7 * n), replace=False)] = True
        train_ok = rng.random(n) < 0.8
        train_ok[:6] = mask[:6] & (rng.random(6) < 0.9)   # memorized: right only when trained on
        test_ok = rng.random(n_test) < 0.7
        test_ok[:6] = mask[:6] & (rng.random(6) < 0.9)    # test j < 6 is driven by training example j
        counts.add(k, mask, train_ok, test_ok)
    counts.flush()
    return counts


def full_estimates(counts: Counts):
    v = counts.all
    mem = formulas.memorization(v.in_hits, v.n_in, v.out_hits, v.n_out)
    infl = formulas.influence(counts.pairs_ready(), v.n_in, v.test_hits, v.n_out)
    return mem, infl


def test_compare_runs_matches_brute_force_over_full_matrices():
    a, b = synthetic_counts(1), synthetic_counts(2)
    table = compare.compare_runs(a, b).to_pylist()
    mem_a, infl_a = full_estimates(a)
    mem_b, infl_b = full_estimates(b)
    for row in table:
        if row["quantity"] == "mem":
            expect = selection.jaccard_and_mean_difference(mem_a, mem_b, row["threshold"])
        else:
            expect = selection.jaccard_and_mean_difference(
                infl_a, infl_b, row["threshold"], eligible_a=mem_a >= 0.25, eligible_b=mem_b >= 0.25)
        for key in ("size_a", "size_b", "size_union"):
            assert row[key] == expect[key]
        for key in ("jaccard", "mean_abs_diff"):
            assert (np.isnan(row[key]) and np.isnan(expect[key])) or row[key] == pytest.approx(expect[key])


def test_a_run_against_itself_is_perfectly_consistent():
    a = synthetic_counts(3)
    rows = [r for r in compare.compare_runs(a, a).to_pylist() if r["size_union"]]
    assert rows and all(r["jaccard"] == 1.0 and r["mean_abs_diff"] == 0.0 for r in rows)


def test_exported_pairs_round_trip_and_compare_with_released(tmp_path):
    counts = synthetic_counts(4)
    pairs = report.pairs_table(counts)
    assert pairs.num_rows > 0  # the planted pairs are found
    out = compare.export_pairs_npz(pairs, tmp_path / "pairs.npz")
    released = compare.load_pairs_npz(out)
    assert released["tr_idx"].dtype == np.int64 and released["infl"].dtype == np.float64
    same = compare.compare_with_released(counts, released)
    assert same["jaccard"] == 1.0 and same["infl_mean_abs_diff_on_released"] == pytest.approx(0.0)
    # a released file that lost half its pairs and whose values are off by 0.1
    half = {k: v[::2] for k, v in released.items()}
    half["infl"] = half["infl"] + 0.1
    other = compare.compare_with_released(counts, half)
    assert other["pairs_common"] == len(half["tr_idx"])
    assert other["jaccard"] == pytest.approx(len(half["tr_idx"]) / pairs.num_rows)
    assert other["infl_mean_abs_diff_on_released"] == pytest.approx(0.1)


def test_released_pairs_errors(tmp_path):
    counts = synthetic_counts(5)
    with pytest.raises(RaymemError, match="does not exist"):
        compare.load_pairs_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "nokeys.npz", tr_idx=np.arange(3))
    with pytest.raises(RaymemError, match="lacks .tt_idx."):
        compare.load_pairs_npz(tmp_path / "nokeys.npz")
    np.savez(tmp_path / "obj.npz", tr_idx=np.array([object()]), tt_idx=np.arange(1), infl=np.ones(1), mem=np.ones(1))
    with pytest.raises(RaymemError, match="Python objects"):
        compare.load_pairs_npz(tmp_path / "obj.npz")
    # float indices are refused, never truncated to integers
    np.savez(tmp_path / "float.npz", tr_idx=np.array([1.7]), tt_idx=np.arange(1), infl=np.ones(1), mem=np.ones(1))
    with pytest.raises(RaymemError, match="not integer indices"):
        compare.load_pairs_npz(tmp_path / "float.npz")
    big = {"tr_idx": np.array([10_000]), "tt_idx": np.array([0]), "infl": np.ones(1), "mem": np.ones(1)}
    with pytest.raises(RaymemError, match="beyond this run"):
        compare.compare_with_released(counts, big)


def test_released_reference_files_load():
    from pathlib import Path

    ref = Path(__file__).resolve().parent / "data" / "reference"  # copies of the paper's released pairs
    files = sorted(ref.glob("*_high_infl_pairs_*.npz"))
    assert len(files) == 2
    for f in files:
        data = compare.load_pairs_npz(f)
        # the files hold what their name says: pairs at infl >= 0.15 and mem >= 0.25
        assert data["infl"].min() >= 0.15 - 1e-9 and data["mem"].min() >= 0.25 - 1e-9


def test_cli_pairs_npz_and_compare_round_trip(tmp_path):
    from typer.testing import CliRunner

    from raymem import api
    from raymem.cli import app

    rng = np.random.default_rng(7)
    t, n, n_test = 60, 30, 12
    masks = np.zeros((t, n), bool)
    for k in range(t):
        masks[k, rng.choice(n, 21, replace=False)] = True
    train_ok = np.where(np.arange(n) < 4, masks, rng.random((t, n)) < 0.8)
    test_ok = rng.random((t, n_test)) < 0.6
    test_ok[:, :4] = masks[:, :4]
    run_dir = str(tmp_path / "run")
    api.ingest(run_dir, masks, train_ok, test_ok)
    runner = CliRunner()
    result = runner.invoke(app, ["pairs", run_dir, "--npz", str(tmp_path / "p.npz")])
    assert result.exit_code == 0, result.output
    exported = compare.load_pairs_npz(tmp_path / "p.npz")
    table = api.pairs(run_dir)
    assert np.array_equal(exported["tr_idx"], table.column("train_index").to_numpy())
    assert {(0, 0), (1, 1), (2, 2), (3, 3)} <= set(zip(exported["tr_idx"].tolist(), exported["tt_idx"].tolist()))
    result = runner.invoke(app, ["compare", run_dir, str(tmp_path / "p.npz")])
    assert result.exit_code == 0 and '"jaccard": 1.0' in result.output
    result = runner.invoke(app, ["compare", run_dir, run_dir, "--figure", str(tmp_path / "missing" / "c.png")])
    assert result.exit_code == 2 and "--figure" in result.output
