"""`raymem verify RUN [--quarantine]`: damaged files are listed (exit 1), set aside, and retrained by `raymem run`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from raymem import api
from raymem.cli import app
from raymem.errors import RaymemWarning
from raymem.estimator import log_replay
from raymem.estimator.counts import Counts
from raymem.store.run_info import read_run_info
from raymem.store.storage import RunStore
from raymem.store.trial_log import read_trial, trial_ids, trial_path

N, N_TEST, T = 30, 20, 12
DAMAGED = {3: "flip", 7: "truncate"}


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "flip":  # flipped bits in the data pages (a flip in unused footer statistics would change nothing)
        start = len(data) // 3
        path.write_bytes(data[:start] + bytes(x ^ 0xFF for x in data[start:start + 64]) + data[start + 64:])
    else:
        path.write_bytes(data[: len(data) // 2])  # a truncated upload


@pytest.fixture
def sim(synthetic_run):
    return synthetic_run(seed=5, n=N, n_test=N_TEST, t=T, memorized=[2], planted=[(2, 4)])


@pytest.fixture
def run_dir(tmp_path, monkeypatch, sim):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    target = tmp_path / "run"
    api.ingest(str(target), sim.masks, sim.train_correct, sim.test_correct,
               train_labels=np.arange(N) % 3, test_labels=np.arange(N_TEST) % 3)
    return target


def test_an_intact_run_verifies_whole(run_dir):
    result = invoke("verify", run_dir)
    assert result.exit_code == 0, result.output
    assert f"{T + 2} files checked, 0 damaged" in result.stdout  # run.json, labels.parquet and every trial file


def test_damaged_trial_files_are_listed_quarantined_and_the_rest_reads_as_without_them(run_dir, sim):
    for trial_id, how in DAMAGED.items():
        damage(run_dir / trial_path(trial_id), how)
    read = invoke("estimates", run_dir)  # a read names each damaged file and leaves it out
    assert read.exit_code == 0 and all(trial_path(k) in read.stderr for k in DAMAGED), read.stderr

    listed = invoke("verify", run_dir, "--json")
    assert listed.exit_code == 1, listed.output
    report = json.loads(listed.stdout)
    assert report["checked"] == T + 2 and report["whole"] is False and report["quarantined"] == []
    assert {d["trial_id"]: d["path"] for d in report["damaged"]} == {k: trial_path(k) for k in DAMAGED}
    assert all(d["problem"] for d in report["damaged"])
    shown = invoke("verify", run_dir)
    assert shown.exit_code == 1 and all(trial_path(k) in shown.stdout for k in DAMAGED)
    assert "--quarantine" in shown.stdout

    moved = invoke("verify", run_dir, "--quarantine")
    assert moved.exit_code == 0, moved.output
    store = RunStore.open(str(run_dir))
    assert trial_ids(store) == [k for k in range(T) if k not in DAMAGED]
    assert sorted(p.name for p in (run_dir / "quarantine").iterdir()) == sorted(
        trial_path(k).rsplit("/", 1)[1] for k in DAMAGED)
    again = invoke("verify", run_dir)
    assert again.exit_code == 0 and f"{T - len(DAMAGED) + 2} files checked, 0 damaged" in again.stdout

    # what is read now is exactly the intact trials, counted independently from the arrays
    expected = Counts.empty(N, N_TEST)
    for k in range(T):
        if k not in DAMAGED:
            expected.add(k, sim.masks[k], sim.train_correct[k], sim.test_correct[k])
    expected.flush()
    rebuilt = log_replay.counts_from_log(store, read_run_info(store))
    for name in ("n_in", "in_hits", "total_hits", "test_hits"):
        np.testing.assert_array_equal(getattr(rebuilt.all, name), getattr(expected.all, name))
    np.testing.assert_array_equal(rebuilt.pairs_ready(), expected.pairs_ready())
    assert invoke("estimates", run_dir).exit_code == 0


def test_the_same_trial_quarantined_twice_keeps_both_files(run_dir):
    path = run_dir / trial_path(3)
    original = path.read_bytes()
    for _ in range(2):
        path.write_bytes(original)
        damage(path, "truncate")
        assert invoke("verify", run_dir, "--quarantine").exit_code == 0
    assert sorted(p.name for p in (run_dir / "quarantine").iterdir()) == [
        "trial-00000003.parquet", "trial-00000003.parquet.1"]


def test_damaged_labels_are_reported_and_never_moved(run_dir):
    labels = run_dir / "labels.parquet"
    damage(labels, "truncate")
    for args in ((), ("--quarantine",)):
        result = invoke("verify", run_dir, *args)
        assert result.exit_code == 1, result.output
        assert "labels.parquet" in result.stdout
    assert labels.exists() and not (run_dir / "quarantine").exists()


def test_verify_of_no_run_is_a_user_error(tmp_path):
    result = invoke("verify", tmp_path / "nothing")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "run.json" in lines[0]
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_ray")
def test_a_quarantined_trial_is_retrained_and_the_run_is_whole_again(tmp_path):
    from raymem.config.experiment import resolve_config
    from raymem.driver.run import DriverOptions, run_experiment
    from raymem.estimator.subsets import subset_mask

    config = resolve_config("digits", dict(trials=4, epochs=1, batch_size=64))
    run_dir = tmp_path / "whole"
    options = DriverOptions(num_cpus=2, progress=False)
    run_experiment(config, name="whole", run_uri=str(run_dir), options=options)
    damage(run_dir / trial_path(2), "flip")
    assert invoke("verify", run_dir).exit_code == 1
    assert invoke("verify", run_dir, "--quarantine").exit_code == 0
    damage(run_dir / trial_path(0), "truncate")  # left in the log: the run skips it and sets it aside itself

    with pytest.warns(RaymemWarning, match=r"trial-00000000\.parquet is damaged"):  # named, then retrained
        result = run_experiment(config, name="whole", run_uri=str(run_dir), options=options)
    assert sorted(result.trained_now) == [0, 2]  # exactly the damaged trials
    assert sorted(p.name for p in (run_dir / "quarantine").iterdir()) == [
        "trial-00000000.parquet", "trial-00000002.parquet"]
    store = RunStore.open(str(run_dir))
    info = read_run_info(store)
    assert trial_ids(store) == [0, 1, 2, 3]
    assert invoke("verify", run_dir).exit_code == 0
    record = read_trial(store, 2, info)  # the retrained trial trained on its own reproducible subset
    np.testing.assert_array_equal(record.mask, subset_mask(info.seed, 2, info.n_train, info.subset_size))
    recount = log_replay.counts_from_log(store, info)
    assert sorted(recount.trial_ids) == [0, 1, 2, 3]
    status = api.status(str(run_dir))
    assert status["trials_done"] == 4
