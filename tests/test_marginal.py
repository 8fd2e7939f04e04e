"""The marginal-utility experiment (supplement C): arm sets, the mask source, intervals, the run directory,
bad inputs (offline, no Ray), and a tiny real digits run end to end (slow: Ray, CPU)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from raymem import api
from raymem.cli import app
from raymem.errors import RaymemError
from raymem.paper import marginal_utility
from raymem.store.trial_record import TrialRecord
from raymem.store.run_info import new_run_info, read_run_info, write_labels, write_run_info
from raymem.store.storage import RunStore
from raymem.estimator.subsets import subset_mask, trial_mask
from raymem.store.trial_log import iter_trials, trial_ids, write_trial

SOURCE_TRIALS = 8


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


# ---- arm sets and the mask source ------------------------------------------------------------

def test_arm_sets_exclude_exactly_their_set_and_the_control_is_reproducible():
    n = 200
    pairs_train = np.array([5, 5, 17, 42, 17, 199])
    pairs_test = np.array([3, 4, 3, 9, 0, 9])
    sets = marginal_utility.make_sets(pairs_train, pairs_test, n_train=n, seed=11)
    np.testing.assert_array_equal(sets["high_influence"], [5, 17, 42, 199])
    np.testing.assert_array_equal(sets["influenced_test"], [0, 3, 4, 9])
    assert len(sets["random"]) == 4 and len(np.unique(sets["random"])) == 4
    masks = marginal_utility.arm_masks(n, sets)
    assert masks[0].all()                                                              # full: all of S
    np.testing.assert_array_equal(np.flatnonzero(~masks[1]), sets["high_influence"])  # S minus exactly S_h
    np.testing.assert_array_equal(np.flatnonzero(~masks[2]), sets["random"])          # S minus exactly R
    assert masks[1].sum() == masks[2].sum() == n - 4                                   # same size
    # reproducible from the seed; another seed draws another control; the pairs do not move it
    again = marginal_utility.make_sets(pairs_train[::-1], pairs_test, n_train=n, seed=11)
    np.testing.assert_array_equal(again["random"], sets["random"])
    assert not np.array_equal(marginal_utility.random_removal(12, n, 4), sets["random"])
    # not a trial's subset stream: the control differs from subset_mask's draws with the same seed
    assert not np.array_equal(np.sort(np.flatnonzero(subset_mask(11, 1, n, 4))), sets["random"])
    with pytest.raises(RaymemError):
        marginal_utility.random_removal(0, 3, 4)


def test_random_control_is_uniform_over_the_training_set():
    # each index equally likely: over many seeds, counts are flat (chi-square far from rejecting)
    n, size = 20, 5
    counts = np.zeros(n)
    for seed in range(2000):
        counts[marginal_utility.random_removal(seed, n, size)] += 1
    assert stats.chisquare(counts).pvalue > 1e-3


def test_trial_k_trains_arm_k_mod_3_through_the_one_mask_source():
    sets = {"high_influence": np.array([1, 2]), "random": np.array([0, 7]), "influenced_test": np.array([3])}
    masks = marginal_utility.arm_masks(10, sets)
    run = {"seed": 0, "n_train": 10, "subset_size": 7, "arm_masks": masks}
    for k in range(9):
        np.testing.assert_array_equal(trial_mask(run, k), masks[k % 3])
        assert marginal_utility.ARMS[marginal_utility.arm_of(k)] == marginal_utility.ARMS[k % 3]
    plain = {"seed": 4, "n_train": 10, "subset_size": 7}
    np.testing.assert_array_equal(trial_mask(plain, 5), subset_mask(4, 5, 10, 7))  # ordinary runs unchanged
    assert marginal_utility.trial_ids(2) == [0, 1, 2, 3, 4, 5]


# ---- intervals ---------------------------------------------------------------------------------

def test_t_interval_matches_a_table_and_scipy():
    c = marginal_utility.t_interval([0.8, 0.9, 1.0], delta=0.05)
    # mean 0.9, sd 0.1, se 0.1/sqrt(3), t_{0.975, 2} = 4.302653 (any t table)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert c["mean"] == pytest.approx(0.9) and c["std"] == pytest.approx(0.1)
    assert c["lo"] == pytest.approx(0.9 - half, abs=1e-6) and c["hi"] == pytest.approx(min(1.0, 0.9 + half))
    values = np.array([0.71, 0.74, 0.69, 0.73, 0.75])
    lo, hi = stats.t.interval(0.9, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    c = marginal_utility.t_interval(values, delta=0.1)
    assert (c["lo"], c["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    one = marginal_utility.t_interval([0.5])
    assert one["mean"] == 0.5 and one["lo"] is None and one["std"] is None


def test_welch_interval_matches_scipy():
    a = np.array([0.76, 0.75, 0.77, 0.76, 0.78, 0.75])
    b = np.array([0.73, 0.74, 0.72, 0.735])
    expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    c = marginal_utility.welch_interval(a, b, delta=0.05)
    assert c["drop"] == pytest.approx(a.mean() - b.mean())
    assert (c["lo"], c["hi"]) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert marginal_utility.welch_interval([0.5], [0.4, 0.45])["lo"] is None


def test_summarize_groups_trials_by_arm_and_scales_the_contribution():
    rng = np.random.default_rng(0)
    ids = np.arange(12)
    correct = rng.random((12, 50)) < 0.8
    influenced = np.array([1, 5, 7, 30])
    s = marginal_utility.summarize(ids, correct, influenced, delta=0.05)
    for a, arm in enumerate(marginal_utility.ARMS):
        rows = correct[ids % 3 == a]
        assert s[arm]["trial_ids"] == ids[ids % 3 == a].tolist() and s[arm]["models"] == 4
        assert s[arm]["test"]["mean"] == pytest.approx(rows.mean())
        assert s[arm]["influenced"]["mean"] == pytest.approx(rows[:, influenced].mean())
    d = s["drops"]["without_high_influence"]
    full, reduced = correct[ids % 3 == 0][:, influenced].mean(1), correct[ids % 3 == 1][:, influenced].mean(1)
    assert d["influenced"]["drop"] == pytest.approx(full.mean() - reduced.mean())
    assert d["influenced_contribution"]["drop"] == pytest.approx(d["influenced"]["drop"] * 4 / 50)
    assert s["sizes"] == {"n_test": 50, "influenced_test": 4}


# ---- the run directory (offline: a fake source run written like a runner run) ------------------

def _fake_source(tmp_path: Path, name: str = "src") -> str:
    """A digits run as `raymem run` would leave it (config, fingerprint, labels, subset masks), with random
    correctness instead of trained models: enough to create (not train) a marginal run."""
    from raymem.config.experiment import resolve_config
    from raymem.data.datasets import load_dataset

    config = resolve_config("digits", {"trials": SOURCE_TRIALS, "epochs": 2, "batch_size": 64})
    data = load_dataset("digits")
    n, n_test = len(data.y_train), len(data.y_test)
    m = config.subset_size(n)
    run_dir = tmp_path / name
    store = RunStore.open(str(run_dir))
    info = new_run_info(name=name, n_train=n, n_test=n_test, subset_size=m, seed=config.seed, config=config.to_dict(),
                        fingerprint=data.fingerprint(), source="runner")
    write_labels(store, data.y_train, data.y_test)
    write_run_info(store, info)
    rng = np.random.default_rng(1)
    for k in range(SOURCE_TRIALS):
        write_trial(store, TrialRecord(run_id=info.run_id, trial_id=k, seed=k, mask=subset_mask(info.seed, k, n, m),
                                       train_correct=rng.random(n) < 0.9, test_correct=rng.random(n_test) < 0.9))
    return str(run_dir)


def test_prepare_writes_the_design_sets_and_labels_and_resume_adds_only_new_ids(tmp_path):
    from raymem.driver import marginal_run as runner_marginal

    source = _fake_source(tmp_path)
    pairs = api.pairs(source, min_infl=0.5, min_mem=0.5)
    assert pairs.num_rows > 0
    store = RunStore.open(api.Run(source).marginal_location("src-marginal"))
    assert store.uri == str(tmp_path / "src-marginal")
    p = runner_marginal.prepare(RunStore.open(source), store,
                                runner_marginal.MarginalRequest("src-marginal", 2, min_infl=0.5, min_mem=0.5, seed=3))
    assert p.created and p.missing == [0, 1, 2, 3, 4, 5]
    info = read_run_info(store)
    assert info.kind == "marginal" and info.source == "runner" and info.seed == 3
    assert info.design["source_run_id"] == read_run_info(RunStore.open(source)).run_id
    assert [a["name"] for a in info.design["arms"]] == list(marginal_utility.ARMS)
    assert info.config["trials"] == 6 and info.config["estimator"]["track_pairs"] is False
    assert info.config["recipe"] == read_run_info(RunStore.open(source)).config["recipe"]
    sets = marginal_utility.read_sets(store, info)
    expected = marginal_utility.make_sets(pairs.column("train_index").to_numpy(), pairs.column("test_index").to_numpy(),
                                  n_train=info.n_train, seed=3)
    for name in marginal_utility.SET_NAMES:
        np.testing.assert_array_equal(sets[name], expected[name])
    assert json.loads((tmp_path / "src" / "run.json").read_text()).get("kind") is None  # ordinary runs unchanged
    # resume: more models per arm; the stored sets, seed and selection are kept; a changed selection is refused
    p2 = runner_marginal.prepare(RunStore.open(source), store, runner_marginal.MarginalRequest("src-marginal", 3))
    assert not p2.created and p2.missing == list(range(9)) and read_run_info(store).design["trials_per_arm"] == 3
    with pytest.raises(RaymemError, match="min_infl"):
        runner_marginal.prepare(RunStore.open(source), store,
                                runner_marginal.MarginalRequest("src-marginal", 3, min_infl=0.2))
    with pytest.raises(RaymemError, match="seed"):
        runner_marginal.prepare(RunStore.open(source), store,
                                runner_marginal.MarginalRequest("src-marginal", 3, seed=4))
    # a tampered sets file is refused before anything trains on it
    other = marginal_utility.random_removal(99, info.n_train, len(sets["random"]))
    marginal_utility.write_sets(store, {**sets, "random": other})
    with pytest.raises(RaymemError, match="sha256"):
        runner_marginal.prepare(RunStore.open(source), store, runner_marginal.MarginalRequest("src-marginal", 3))
    (tmp_path / "src-marginal" / marginal_utility.SETS_FILE).write_bytes(b"not parquet")
    with pytest.raises(RaymemError, match="unreadable"):
        runner_marginal.prepare(RunStore.open(source), store, runner_marginal.MarginalRequest("src-marginal", 3))


def test_accumulator_checks_each_record_against_its_arm_set(tmp_path):
    from raymem.actors.accumulator import Accumulator
    from raymem.driver import marginal_run as runner_marginal

    source = _fake_source(tmp_path)
    store = RunStore.open(str(tmp_path / "m"))
    runner_marginal.prepare(RunStore.open(source), store,
                            runner_marginal.MarginalRequest("m", 1, min_infl=0.5, min_mem=0.5))
    info = read_run_info(store)
    masks = marginal_utility.read_arm_masks(store, info)
    acc = Accumulator(store.uri, with_pairs=False, pair_reader_process=False)

    def record(k, mask):
        return TrialRecord(run_id=info.run_id, trial_id=k, seed=0, mask=mask,
                           train_correct=np.ones(info.n_train, bool), test_correct=np.ones(info.n_test, bool))

    assert acc.absorb(record(1, masks[1]))["counted"]               # trial 1: S minus S_h
    with pytest.raises(RaymemError, match="arm's example set"):
        acc.absorb(record(2, masks[1]))                             # trial 2 must train S minus R
    with pytest.raises(RaymemError, match="arm's example set"):
        acc.absorb(record(0, subset_mask(info.seed, 0, info.n_train, round(0.7 * info.n_train))))
    assert trial_ids(store) == [1]
    (logged,) = list(iter_trials(store))
    np.testing.assert_array_equal(logged.mask, masks[1])


# ---- bad input: exit 2, one error line, nothing written ------------------------------------------

def _cli(*args):
    return CliRunner().invoke(app, list(args))


def _one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_inputs_exit_2_and_write_nothing(tmp_path):
    source = _fake_source(tmp_path)
    before = sorted(os.listdir(tmp_path))
    _one_error_line(_cli("marginal", source, "--trials", "0"), "--trials 0")
    _one_error_line(_cli("marginal", source, "--trials", "-2"), "--trials -2")
    _one_error_line(_cli("marginal", source, "--trials", "2", "--fdr", "0.01"), "no high-influence pairs", "loosen")
    _one_error_line(_cli("marginal", source, "--trials", "2", "--set", "epochs=9"), "--set epochs")
    _one_error_line(_cli("marginal", source, "--trials", "2", "--name", "../x"))
    _one_error_line(_cli("marginal", str(tmp_path / "nothing"), "--trials", "2"), "not a raymem run")
    assert sorted(os.listdir(tmp_path)) == before                   # no src-marginal, nothing else
    rng = np.random.default_rng(0)
    masks = rng.random((4, 30)) < 0.7
    api.ingest(str(tmp_path / "ing"), masks, rng.random((4, 30)) < 0.5, rng.random((4, 10)) < 0.5)
    before_ingest = sorted(os.listdir(tmp_path))
    _one_error_line(_cli("marginal", str(tmp_path / "ing"), "--trials", "2"), "ingested", "recipe")
    assert sorted(os.listdir(tmp_path)) == before_ingest and set(before_ingest) - set(before) == {"ing"}
    with pytest.raises(RaymemError, match="not a marginal run"):
        api.marginal_report(source)


# ---- a tiny real run (Ray, CPU) -------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.usefixtures("isolated_ray")
def test_tiny_digits_marginal_run_trains_each_arm_and_resumes(tmp_path):
    from raymem.config.experiment import resolve_config
    from raymem.driver.run import DriverOptions, run_experiment

    source_dir = tmp_path / "src"
    config = resolve_config("digits", dict(trials=4, epochs=2, batch_size=64))
    run_experiment(config, name="src", run_uri=str(source_dir), options=DriverOptions(num_cpus=2, progress=False))
    # K = 1: three trials, one per arm, each on its arm's set, in the marginal run's own directory
    first = api.marginal("src", 1, storage=str(tmp_path), options=api.DriverOptions(num_cpus=2, progress=False))
    assert first["created"] and first["trained_now"] == [0, 1, 2] and not first["failed"]
    mdir = tmp_path / "src-marginal"
    store = RunStore.open(str(mdir))
    info = read_run_info(store)
    masks = marginal_utility.read_arm_masks(store, info)
    records = {r.trial_id: r for r in iter_trials(store)}
    assert sorted(records) == [0, 1, 2]
    for k, r in records.items():
        np.testing.assert_array_equal(r.mask, masks[k % 3])
        assert r.train_pred is not None and r.test_pred is not None    # records keep the usual format
    assert first["interval"]["note"]                                    # one model per arm: no interval yet
    # K = 2: only trials 3, 4, 5 train (the arms interleave, nothing moves), then the intervals exist
    second = api.marginal("src", 2, storage=str(tmp_path), options=api.DriverOptions(num_cpus=2, progress=False))
    assert second["trained_now"] == [3, 4, 5] and trial_ids(store) == list(range(6))
    for arm in marginal_utility.ARMS:
        for where in ("test", "influenced"):
            c = second[arm][where]
            assert c["models"] == 2 and c["lo"] <= c["mean"] <= c["hi"]
    sizes = second["sizes"]
    assert second["without_high_influence"]["train_size"] == info.n_train - sizes["high_influence_train"]
    assert sizes["random_removed"] == sizes["high_influence_train"] > 0 and sizes["influenced_test"] > 0
    assert second["full"]["test"]["mean"] > 0.5                          # the source recipe trains a real model
    # a third call trains nothing (no Ray needed) and the CLI prints the same report as JSON
    result = _cli("marginal", "src", "--trials", "2", "--storage", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["trained_now"] == [] and shown["full"] == second["full"] and not shown["created"]
    table = _cli("marginal", "src", "--trials", "2", "--storage", str(tmp_path))
    assert "without_high_influence" in table.output and "drop without S_h" in table.output
    status = _cli("status", "src-marginal", "--storage", str(tmp_path))   # its report, not memorization lines
    assert status.exit_code == 0, status.output
    assert "drop without S_h" in status.output and "mem half-width" not in status.output
    shown = json.loads(_cli("status", "src-marginal", "--storage", str(tmp_path), "--json").output)
    assert shown["kind"] == "marginal" and shown["full"] == second["full"]


def test_marginal_run_lives_beside_its_source():
    assert api.Run("s3://b/runs/demo?region=x").marginal_location("demo-marginal") == "s3://b/runs/demo-marginal?region=x"
    assert api.Run("demo", "/data/runs").marginal_location("demo-marginal") == "/data/runs/demo-marginal"
    assert api.Run("/data/runs/demo/").marginal_location("m") == "/data/runs/m"
    with pytest.raises(RaymemError):
        api.Run("demo", "/data/runs").marginal_location("../escape")
