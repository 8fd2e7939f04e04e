"""Faults during elastic runs on a simulated multi-node Ray cluster (CPU only, tiny digits trials).

The scenarios live in ``scripts/reliability.py`` (which also prints the reliability table); these
tests run them and check the outcome independently: the trial ids in the log, the accumulator's
counts against an offline recount of the log, and the per-example counts against sums of the
logged masks and correctness bits.
"""

from __future__ import annotations


import numpy as np
import pytest
from scripts_loader import load_script  # tests/scripts_loader.py

from raymem.estimator import log_replay
from raymem.errors import RaymemError
from raymem.store.run_info import read_run_info
from raymem.store.storage import RunStore
from raymem.store.trial_log import iter_trials, trial_ids

pytestmark = pytest.mark.slow  # starts Ray

reliability = load_script("reliability.py")


@pytest.fixture
def cluster():
    """A simulated cluster (head node without CPUs) with this process as its driver; shut down afterwards."""
    with reliability.simulated_cluster() as cluster:
        yield cluster


def assert_each_trial_counted_once(run_dir: str, name: str, trials: int) -> list:
    """Check log ids, the live accumulator against the log, and its counts against the logged records; return them."""
    import ray

    store = RunStore.open(run_dir)
    assert trial_ids(store) == list(range(trials))
    records = sorted(iter_trials(store), key=lambda r: r.trial_id)
    handle = ray.get_actor(name, namespace="raymem")
    assert ray.get(handle.describe.remote())["trials"] == trials
    live = ray.get(handle.mem_table.remote())
    info = read_run_info(store)
    offline = log_replay.counts_from_log(store, info)
    assert offline.trials == trials
    assert live.equals(log_replay.offline_view(store).mem_table())
    # brute force: a trial counted twice (or not at all) would show in these sums
    masks = np.array([r.mask for r in records])
    correct = np.array([r.train_correct for r in records])
    assert np.array_equal(live["n_in"].to_numpy(), masks.sum(axis=0))
    assert np.array_equal(live["in_hits"].to_numpy(), (masks & correct).sum(axis=0))
    assert np.array_equal(live["out_hits"].to_numpy(), (~masks & correct).sum(axis=0))
    return records


def spans_overlap(a, b) -> bool:
    return a.metadata["started"] < b.metadata["finished"] and b.metadata["started"] < a.metadata["finished"]


@pytest.mark.parametrize("spans, lo, hi, expected", [
    ([], -np.inf, np.inf, 0),
    ([(0, 1), (1, 2)], -np.inf, np.inf, 1),          # touching is not overlapping
    ([(0, 3), (1, 2), (1.5, 4)], -np.inf, np.inf, 3),
    ([(0, 3), (1, 2), (5, 6)], 2.5, np.inf, 1),      # only (0, 3) still runs at 2.5, later only (5, 6)
    ([(0, 10), (5, 6)], -np.inf, 5, 1),               # the second starts at the window's end
    ([(0, 10), (5, 6)], 4, np.inf, 2),
])
def test_max_overlap_counts_spans_running_at_once(spans, lo, hi, expected):
    # brute force on a fine grid of moments
    grid = [t / 10 for t in range(-10, 110)]
    brute = max((sum(1 for s, e in spans if s <= t < e) for t in grid if lo <= t < hi), default=0)
    assert brute == expected
    assert reliability.max_overlap(spans, lo, hi) == expected


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_node_removed_mid_run_loses_no_trial_and_counts_each_once(cluster, tmp_path):
    import ray

    head = [n for n in ray.nodes() if "node:__internal_head__" in n["Resources"]]
    assert len(head) == 1 and head[0]["Resources"].get("CPU", 0) == 0  # the accumulator's pin exists, on the head only
    outcome = reliability.node_removed(cluster, tmp_path, trials=6)
    result = outcome.details["result"]
    assert not result.failed
    assert result.retried, "the removed node was not running a trial when it died"
    records = assert_each_trial_counted_once(outcome.run_dir, outcome.name, 6)
    assert result.trials_done == 6
    removed, removed_at = outcome.details["removed_node_id"], outcome.details["removed_at"]
    assert outcome.details["finished_on_removed_node_after"] == []  # a dead node logs nothing
    # A trial can be retried for another cause (its retry may then finish on the victim while it still lives),
    # so the check is on the trial the removal killed: some retried trial finished on a survivor after it.
    retried = [r for r in records if r.trial_id in result.retried]
    assert all(r.metadata["node_id"] != removed or r.metadata["finished"] <= removed_at for r in retried)
    assert any(r.metadata["node_id"] != removed and r.metadata["finished"] > removed_at for r in retried)
    assert (outcome.lost, outcome.double_counted, outcome.counts_match_log) == (0, 0, True)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_node_added_mid_run_raises_concurrency(cluster, tmp_path):
    outcome = reliability.nodes_added(cluster, tmp_path, trials=10)
    details, result = outcome.details, outcome.details["result"]
    records = assert_each_trial_counted_once(outcome.run_dir, outcome.name, 10)
    joined = details["joined_at"]
    first, new = details["first_node_id"], details["new_node_id"]
    # before the join: one node with one fake GPU, so trials ran there one after another
    before = [r for r in records if r.metadata["started"] < joined]
    assert before and all(r.metadata["node_id"] == first for r in before)
    assert not any(spans_overlap(a, b) for i, a in enumerate(before) for b in before[i + 1:])
    # after it: the new node ran trials, at the same time as the first node
    on_new = [r for r in records if r.metadata["node_id"] == new]
    assert on_new and all(r.metadata["gpu_ids"] == ["0"] for r in on_new)
    assert any(spans_overlap(a, b) for a in on_new for b in records if b.metadata["node_id"] == first)
    assert details["overlap_before"] == 1 and details["overlap_after"] == 2
    assert result.max_in_flight > 2  # the window followed the cluster: 2 x one GPU, then 2 x two GPUs


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_accumulator_killed_mid_run_restarts_from_the_log(cluster, tmp_path):
    outcome = reliability.accumulator_killed(cluster, tmp_path, trials=6)
    before, after = outcome.details["before"], outcome.details["after"]
    assert after["pid"] != before["pid"]          # a new process ...
    assert after["rebuilt_trials"] >= 2           # ... that rebuilt the trials logged before the kill
    assert before["trials"] >= 2
    result = outcome.details["result"]
    assert not result.failed and result.trials_done == 6
    assert_each_trial_counted_once(outcome.run_dir, outcome.name, 6)
    assert (outcome.lost, outcome.double_counted, outcome.counts_match_log) == (0, 0, True)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_duplicate_and_invalid_deliveries(cluster, tmp_path):
    import ray

    outcome = reliability.bad_deliveries(cluster, tmp_path, trials=2)
    details = outcome.details
    for k, (first, again) in details["acks"].items():
        assert (first["trial_id"], first["counted"]) == (k, True)
        assert (again["trial_id"], again["counted"]) == (k, False)
    expected_words = {"wrong shapes": "shape", "other run": "another-run", "not the run's subset": "subset"}
    assert set(details["rejections"]) == set(expected_words)
    for what, exc in details["rejections"].items():
        assert isinstance(exc, ray.exceptions.RayTaskError), f"{what} was accepted"
        assert isinstance(exc.cause, RaymemError)
        message = str(exc.cause)
        assert expected_words[what] in message and message.count(";") == 1  # one sentence: problem; fix
    # nothing of a rejected record reached the log (not even a temporary file)
    assert details["trial_files"] == ["trial-00000000.parquet", "trial-00000001.parquet"]
    assert_each_trial_counted_once(outcome.run_dir, outcome.name, 2)
    handle = ray.get_actor(outcome.name, namespace="raymem")
    assert ray.get(handle.describe.remote())["duplicates"] == 2
