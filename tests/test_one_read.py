"""One read, one kind of interval: the figures show exactly the intervals `pairs` and `estimates` report.

The figures' influence rows once took their intervals from a path that dropped the read's method and the
run's plan; this checks every shown interval against the table a user would compare it with, for each method.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import raymem
from raymem.paper import figures

N, N_TEST, TRIALS = 40, 12, 60


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An ingested run with planted memorization: examples 0..7 are right only when trained on."""
    rng = np.random.default_rng(7)
    masks = rng.random((TRIALS, N)) < 0.7
    train_correct = rng.random((TRIALS, N)) < 0.9
    train_correct[:, :8] = masks[:, :8]
    test_correct = rng.random((TRIALS, N_TEST)) < 0.8
    test_correct[:, :4] = masks[:, :4] & (rng.random((TRIALS, 4)) < 0.95)  # test j leans on train j
    labels = np.arange(N) % 3, np.arange(N_TEST) % 3
    location = str(tmp_path_factory.mktemp("runs") / "planted")
    raymem.ingest(location, masks, train_correct, test_correct, train_labels=labels[0], test_labels=labels[1])
    return location


@pytest.mark.parametrize("method", ["anytime", "fixed", "chernoff"])
def test_influence_examples_equal_pairs_and_estimates(run_dir, tmp_path, method):
    run = raymem.Run(run_dir)
    out = tmp_path / method
    run.figures(str(out), method=method)
    shown = pq.read_table(out / figures.INFLUENCE_EXAMPLES).to_pylist()
    assert shown, "the planted pairs give the figure rows to show"
    every_pair = run.pairs(min_infl=-1.0, min_mem=-1.0, method=method).to_pylist()
    by_pair = {(p["train_index"], p["test_index"]): p for p in every_pair}
    mem = {row["train_index"]: row for row in run.estimates(method=method).to_pylist()}
    for row in shown:
        pair = by_pair[(row["train_index"], row["test_index"])]
        assert (row["infl"], row["infl_lo"], row["infl_hi"]) == pytest.approx(
            (pair["infl"], pair["infl_lo"], pair["infl_hi"]), abs=1e-12)
        estimate = mem[row["train_index"]]
        assert (row["mem"], row["mem_lo"], row["mem_hi"]) == pytest.approx(
            (estimate["mem"], estimate["mem_lo"], estimate["mem_hi"]), abs=1e-12)


@pytest.mark.parametrize("method", ["anytime", "fixed", "chernoff"])
def test_memorized_figure_rows_equal_estimates(run_dir, tmp_path, monkeypatch, method):
    drawn = {}

    def record(out, shown, klass, memorization, data):
        drawn.update(shown=shown.tolist(), memorization=memorization)

    monkeypatch.setattr(figures, "_memorized_figure", record)
    run = raymem.Run(run_dir)
    view_images = np.zeros((N, 4, 4)), np.zeros((N_TEST, 4, 4))
    from raymem.estimator.log_replay import offline_view
    from raymem.store.storage import RunStore

    view = offline_view(RunStore.open(run_dir))
    labels = (np.arange(N) % 3, np.arange(N_TEST) % 3)
    data = figures.RunData(labels[0], labels[1], None, *view_images)
    figures.figures_for_counts(tmp_path / method, view.counts, data, run.bars(method))
    estimates = {row["train_index"]: row for row in run.estimates(method=method).to_pylist()}
    assert drawn["shown"]
    for i in drawn["shown"]:
        m = drawn["memorization"]
        assert (m.value[i], m.lo[i], m.hi[i]) == pytest.approx(
            (estimates[i]["mem"], estimates[i]["mem_lo"], estimates[i]["mem_hi"]), abs=1e-12)


def test_the_bars_of_a_read_are_tuned_to_the_runs_plan(run_dir):
    bars = raymem.Run(run_dir).bars("anytime")
    assert (bars.planned_trials, bars.subset_ratio) == (TRIALS, pytest.approx(
        raymem.Run(run_dir).info.subset_size / N))
