"""End-to-end runs of the digits preset on a local Ray (CPU only, tiny trials)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from raymem import api
from raymem.errors import RaymemError
from raymem.store.run_info import read_run_info
from raymem.store.storage import RunStore
from raymem.store.trial_log import iter_trials, trial_ids
from raymem.config.experiment import resolve_config
from raymem.driver.run import DriverOptions, run_experiment

RAYMEM = str(Path(sys.executable).with_name("raymem"))


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_ray")]  # conftest: own Ray temp dir, shut down after


def tiny(**overrides):
    base = dict(trials=4, epochs=2, batch_size=64)
    base.update(overrides)
    return resolve_config("digits", base)


def log_ids(run_dir) -> list[int]:
    return trial_ids(RunStore.open(str(run_dir)))


def test_run_trains_every_trial_once_and_learns(tmp_path):
    config = resolve_config("digits", dict(trials=10, flip_labels=0.05))
    run_dir = tmp_path / "canary"
    result = run_experiment(config, name="canary", run_uri=str(run_dir),
                            options=DriverOptions(num_cpus=2, progress=False))
    assert result.trials_done == 10 and not result.failed
    assert log_ids(run_dir) == list(range(10))
    records = list(iter_trials(RunStore.open(str(run_dir))))
    # the preset's promise: a digits trial reaches high test accuracy (labels of the test set are never flipped)
    assert np.mean([r.metadata["test_accuracy"] for r in records]) > 0.95
    # each record trained on its own reproducible 70% subset
    assert all(r.mask.sum() == round(0.7 * 1257) for r in records)
    assert len({r.mask.tobytes() for r in records}) == 10
    status = api.status(str(run_dir))
    assert status["trials_done"] == 10 and status["trials_target"] == 10
    canaries = status["canaries"]
    assert canaries["count"] == round(0.05 * 1257)
    # flipped labels are the clearest memorization: they dominate the top of the ranking
    assert canaries["recall"] > 10 * canaries["chance"]
    assert canaries["recall"] > 0.5


def _ray_failing_first_attempts(trial_ids):
    """Start a local Ray whose workers raise on the first attempt of ``trial_ids`` (a worker setup hook,
    so the production trial path carries no test hook)."""
    import ray

    failing = set(trial_ids)

    def hook():
        import raymem.driver.trial as trial

        original = trial.build_record

        def build_record(config, run, data, trial_id, attempt, *args, **kwargs):
            if trial_id in failing and attempt == 1:
                raise RuntimeError(f"injected failure of trial {trial_id} (attempt {attempt})")
            return original(config, run, data, trial_id, attempt, *args, **kwargs)

        trial.build_record = build_record

    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="raymem",
             runtime_env={"worker_process_setup_hook": hook})


def test_injected_failure_is_retried_and_counted_once(tmp_path):
    _ray_failing_first_attempts({1, 2})
    run_dir = tmp_path / "retry"
    result = run_experiment(tiny(), name="retry", run_uri=str(run_dir), options=DriverOptions(progress=False))
    assert sorted(result.retried) == [1, 2]
    assert not result.failed
    assert log_ids(run_dir) == [0, 1, 2, 3]
    attempts = {r.trial_id: r.metadata["attempt"] for r in iter_trials(RunStore.open(str(run_dir)))}
    assert attempts == {0: 1, 1: 2, 2: 2, 3: 1}


def test_failure_after_max_attempts_is_reported(tmp_path):
    _ray_failing_first_attempts({0})
    run_dir = tmp_path / "fail"
    result = run_experiment(tiny(trials=2, max_attempts=1), name="fail", run_uri=str(run_dir),
                            options=DriverOptions(progress=False))
    assert list(result.failed) == [0] and "injected failure" in result.failed[0]
    assert log_ids(run_dir) == [1]


def test_until_halfwidth_stops_early_and_the_log_holds_every_counted_trial(tmp_path):
    run_dir = tmp_path / "until"
    # digits examples are mostly right in and out of the subset, so the median anytime half-width (planned for
    # 20 trials) falls to 0.8 after about 10 counted trials; the 2-3 trials in flight then finish and count
    result = api.run(tiny(trials=20), name="until", storage=str(tmp_path),
                     options=api.DriverOptions(num_cpus=2, progress=False, until_halfwidth=0.8))
    assert result.stopped_early and "halfwidth" in result.stopped_early
    assert result.trials_done < 20 and not result.failed
    assert log_ids(run_dir) == sorted(result.trained_now)  # every counted trial is in the log, nothing else
    status = api.status(str(run_dir), until_halfwidth=0.8, pairs_fdr=None)
    assert status["trials_done"] == result.trials_done and status["stopping"]["until_halfwidth"]["met"]


def test_extend_and_refuse_other_config(tmp_path):
    run_dir = tmp_path / "ext"
    run_experiment(tiny(trials=2), name="ext", run_uri=str(run_dir), options=DriverOptions(num_cpus=2, progress=False))
    result = run_experiment(tiny(trials=3), name="ext", run_uri=str(run_dir),
                            options=DriverOptions(num_cpus=2, progress=False))
    assert result.trained_now == [2]
    assert log_ids(run_dir) == [0, 1, 2]
    assert read_run_info(RunStore.open(str(run_dir))).config["trials"] == 3
    with pytest.raises(RaymemError, match="epochs"):
        run_experiment(tiny(trials=3, epochs=5), name="ext", run_uri=str(run_dir),
                       options=DriverOptions(num_cpus=2, progress=False))


def test_fractional_gpu_trials_share_a_gpu_concurrently(tmp_path):
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, namespace="raymem")
    run_dir = tmp_path / "frac"
    config = tiny(trials=4, epochs=4, gpus_per_trial=0.5, cpus_per_trial=1.0)
    result = run_experiment(config, name="frac", run_uri=str(run_dir), options=DriverOptions(progress=False))
    assert result.trials_done == 4
    records = list(iter_trials(RunStore.open(str(run_dir))))
    assert all(r.metadata["gpu_ids"] == ["0"] for r in records)  # Ray gave every trial its share of GPU 0
    spans = sorted((r.metadata["started"], r.metadata["finished"]) for r in records)
    overlaps = sum(1 for a, b in zip(spans, spans[1:]) if b[0] < a[1])
    assert overlaps >= 1, f"no two half-GPU trials overlapped: {spans}"


def test_multi_gpu_trial_gets_a_train_worker_group(tmp_path):
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, namespace="raymem")
    run_dir = tmp_path / "big"
    config = tiny(trials=1, epochs=1, gpus_per_trial=2, cpus_per_trial=1.0)
    result = run_experiment(config, name="big", run_uri=str(run_dir), options=DriverOptions(progress=False))
    assert result.trials_done == 1 and not result.failed
    (record,) = list(iter_trials(RunStore.open(str(run_dir))))
    assert record.metadata["train_group"] is True
    assert record.metadata["world_size"] == 1
    assert sorted(record.metadata["gpu_ids"]) == ["0", "1"]  # the worker holds both GPUs of the trial


def _start_cli_run(storage, name, trials, env):
    return subprocess.Popen(
        [RAYMEM, "run", "digits", "--trials", str(trials), "--epochs", "2", "--batch-size", "64",
         "--name", name, "--storage", str(storage), "--num-cpus", "2", "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_second_process_reads_while_running_and_resume_after_driver_killed(tmp_path):
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rmt", dir="/tmp")}
    run_dir = tmp_path / "live"
    proc = _start_cli_run(tmp_path, "live", 40, env)
    try:
        _wait_for(lambda: len(log_ids(run_dir)) >= 2 if run_dir.exists() else False, 180, "two trials in the log")
        # a second process asks the live accumulator (found through live.json) while training continues
        out = subprocess.run([RAYMEM, "status", "live", "--storage", str(tmp_path), "--json"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert status["source"] == "actor"
        assert 2 <= status["trials_done"] < 40
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run (with the local Ray it started)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # worker processes orphaned by the kill may still hand a finished trial to the dying actor for a
    # moment (worker-to-actor calls bypass the dead head); let them die before taking stock
    time.sleep(8)
    before = set(log_ids(run_dir))
    assert 2 <= len(before) < 40
    again = subprocess.run(
        [RAYMEM, "run", "digits", "--trials", str(len(before) + 2), "--epochs", "2", "--batch-size", "64",
         "--name", "live", "--storage", str(tmp_path), "--num-cpus", "2", "--quiet"],
        env={**env, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rmt", dir="/tmp")},
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    after = log_ids(run_dir)
    target = set(range(len(before) + 2))
    assert set(after) == target | before  # nothing lost, nothing trained twice (one file per trial id)
    assert f"{len(set(after) - before)} trained now" in again.stdout


def test_multi_node_trial_runs_a_worker_group_of_two_with_tf_keras(tmp_path):
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, namespace="raymem")
    run_dir = tmp_path / "nodes"
    config = tiny(trials=1, epochs=6, gpus_per_trial=1, cpus_per_trial=1.0, nodes_per_trial=2)
    result = run_experiment(config, name="nodes", run_uri=str(run_dir), options=DriverOptions(progress=False))
    assert result.trials_done == 1 and not result.failed, result.failed
    (record,) = list(iter_trials(RunStore.open(str(run_dir))))  # exactly one record, from rank 0
    assert record.metadata["world_size"] == 2
    assert record.metadata["keras"] == "tf_keras"  # Keras 3 fails under the multi-worker strategy
    assert len(record.metadata["gpu_ids"]) == 1    # each worker holds its own GPU
    assert record.metadata["test_accuracy"] > 0.5  # the two workers trained one model together


def test_stop_kills_the_live_accumulator_and_readers_fall_back_to_the_log(tmp_path):
    import ray

    from raymem.cluster.connection import NAMESPACE

    run_dir = tmp_path / "stopme"
    run_experiment(tiny(trials=2), name="stopme", run_uri=str(run_dir),
                   options=DriverOptions(num_cpus=2, progress=False, shutdown=False))
    address = ray.get_runtime_context().gcs_address
    ray.get_actor("stopme", namespace=NAMESPACE)  # alive after the run
    assert api.stop(str(run_dir), address=address)["accumulator"] is True

    def gone():
        try:
            ray.get_actor("stopme", namespace=NAMESPACE)
        except ValueError:
            return True
        return False

    _wait_for(gone, 20, "the accumulator to be gone")
    assert api.stop(str(run_dir), address=address)["accumulator"] is False
    assert api.status(str(run_dir), address=address)["source"] == "log"
