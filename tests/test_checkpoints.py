"""In-trial checkpoints: a retried attempt resumes from the newest complete checkpoint (local Ray, digits)."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from raymem import api
from raymem.errors import RaymemError
from raymem.store.storage import RunStore
from raymem.store.trial_log import iter_trials, trial_ids
from raymem.training.checkpoints import CHECKPOINTS_DIR, TrialCheckpoints, trial_dir
from raymem.config.experiment import resolve_config
from raymem.driver.run import check_checkpoint_location, DriverOptions, run_experiment, train_storage_path


@pytest.fixture(autouse=True)
def isolated_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="rmt", dir="/tmp"))
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def tiny(**overrides):
    base = dict(trials=3, epochs=4, batch_size=64)
    base.update(overrides)
    return resolve_config("digits", base)


def test_presets_and_bad_values():
    assert resolve_config("imagenet").resources.checkpoint_every == 1
    assert resolve_config("cifar100").resources.checkpoint_every == 5
    assert resolve_config("digits").resources.checkpoint_every is None  # off
    assert resolve_config("mnist").resources.checkpoint_every is None
    # flags: None = unset
    assert resolve_config("cifar100", {"resources.checkpoint_every": None}).resources.checkpoint_every == 5
    from raymem import api

    assert api.load_config("cifar100", settings=["checkpoint_every=null"]).resources.checkpoint_every is None  # off
    for bad in (-1, 0):
        with pytest.raises(RaymemError, match="checkpoint_every"):
            resolve_config("digits", {"checkpoint_every": bad})
    with pytest.raises(RaymemError, match="max_pending"):
        resolve_config("digits", {"max_pending": 0})


def test_unwritable_checkpoint_location_is_refused(tmp_path):
    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    (run_dir / CHECKPOINTS_DIR).write_text("a file where the directory should be")
    with pytest.raises(RaymemError, match="cannot write checkpoints"):
        check_checkpoint_location(tiny(checkpoint_every=1), RunStore.open(str(run_dir)))
    check_checkpoint_location(tiny(), RunStore.open(str(run_dir)))  # off: not checked


def test_train_storage_is_inside_the_run():
    assert train_storage_path("s3://bucket/runs/x?region=eu-west-1") == "s3://bucket/runs/x/ray-train?region=eu-west-1"
    assert train_storage_path("/data/runs/x").endswith("/data/runs/x/ray-train")


def _ray_dying_after_checkpoint(dying: dict[int, tuple[int, bool]], num_gpus: int = 0):
    """Local Ray whose workers, on attempt 1 of trial k, exit the process right after saving the checkpoint of
    epoch ``dying[k][0]`` (and first corrupt that checkpoint's arrays when ``dying[k][1]``)."""
    import ray

    def hook():
        import os

        import raymem.training.checkpoints as ck
        import raymem.driver.trial as trial

        original_build, original_save = trial.build_record, ck.TrialCheckpoints.save

        def build_record(config, run, data, trial_id, attempt, *args, **kwargs):
            ck._attempt_under_test = attempt
            return original_build(config, run, data, trial_id, attempt, *args, **kwargs)

        def save(self, model, epochs_done):
            original_save(self, model, epochs_done)
            epoch, corrupt = dying.get(self.trial_id, (None, False))
            if epochs_done == epoch and getattr(ck, "_attempt_under_test", 0) == 1:
                if corrupt:  # a torn write the manifest does not describe
                    self.store.write_bytes_atomic(f"{self.dir}/epoch-{epochs_done:05d}.npz", b"PK\x03\x04 torn")
                os._exit(1)  # the worker dies mid-trial, as on a lost spot node

        trial.build_record = build_record
        ck.TrialCheckpoints.save = save

    ray.init(address="local", num_cpus=2, num_gpus=num_gpus, include_dashboard=False, namespace="raymem",
             runtime_env={"worker_process_setup_hook": hook})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_worker_resumes_from_checkpoint_and_torn_one_falls_back(tmp_path):
    _ray_dying_after_checkpoint({1: (2, False), 2: (3, True)})
    run_dir = tmp_path / "ckpt"
    result = run_experiment(tiny(checkpoint_every=1), name="ckpt", run_uri=str(run_dir),
                            options=DriverOptions(progress=False))
    assert not result.failed, result.failed
    assert sorted(result.retried) == [1, 2]
    store = RunStore.open(str(run_dir))
    assert trial_ids(store) == [0, 1, 2]  # each trial counted once
    meta = {r.trial_id: r.metadata for r in iter_trials(store)}
    assert (meta[0]["attempt"], meta[0]["resumed_from_epoch"]) == (1, 0)
    assert (meta[1]["attempt"], meta[1]["resumed_from_epoch"]) == (2, 2)
    assert "checkpoint_warnings" not in meta[1]
    # trial 2's newest checkpoint (epoch 3) was torn: the attempt fell back to epoch 2, with a warning
    assert (meta[2]["attempt"], meta[2]["resumed_from_epoch"]) == (2, 2)
    assert "epoch 3" in meta[2]["checkpoint_warnings"][0]
    assert all(m["test_accuracy"] > 0.5 for m in meta.values())
    # acknowledged trials leave no checkpoints behind
    assert not any(store.exists(trial_dir(k)) for k in range(3))
    table = api.trials(str(run_dir))
    rows = {row["trial_id"]: row for row in table.to_pylist()}
    assert rows[1]["attempt"] == 2 and rows[1]["resumed_from_epoch"] == 2 and rows[0]["resumed_from_epoch"] == 0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_multi_node_group_resumes_every_worker_from_rank_zeros_checkpoint(tmp_path):
    """Two workers (tf-keras, MultiWorkerMirroredStrategy) train one model; rank 0 dies right after its epoch-2
    checkpoint. Attempt 2: rank 0 resumes from epoch 2 and the other worker from that same epoch (a worker
    starting elsewhere would hang the group's collectives or train a different number of steps)."""
    _ray_dying_after_checkpoint({0: (2, False)}, num_gpus=2)
    run_dir = tmp_path / "group"
    config = tiny(trials=1, epochs=4, gpus_per_trial=1, cpus_per_trial=1.0, nodes_per_trial=2, checkpoint_every=1)
    result = run_experiment(config, name="group", run_uri=str(run_dir), options=DriverOptions(progress=False))
    assert not result.failed, result.failed
    assert result.retried == {0: 1}
    store = RunStore.open(str(run_dir))
    (record,) = list(iter_trials(store))
    meta = record.metadata
    assert meta["world_size"] == 2 and meta["attempt"] == 2
    assert meta["resumed_from_epoch"] == 2 and "checkpoint_warnings" not in meta
    assert meta["checkpoints_saved"] == [3]     # attempt 2 trained epochs 3 and 4 and saved after epoch 3
    assert meta["test_accuracy"] > 0.5
    assert not store.exists(trial_dir(0))       # acknowledged: no checkpoints left


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_keep_models_keeps_final_weights(tmp_path):
    run_dir = tmp_path / "keep"
    result = run_experiment(tiny(trials=2, epochs=2, keep_models=True), name="keep", run_uri=str(run_dir),
                            options=DriverOptions(num_cpus=2, progress=False))
    assert result.trials_done == 2
    store = RunStore.open(str(run_dir))
    for k in range(2):
        assert store.list(trial_dir(k)) == ["final.json", "final.npz"]


@pytest.mark.slow
def test_restore_skips_unreadable_checkpoints(tmp_path, tf):
    from raymem.training.keras_backend import keras

    store = RunStore.open(str(tmp_path / "run"))

    def model():
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        m.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        return m

    trained = model()
    trained.fit(np.ones((8, 3)), np.zeros((8, 2)), epochs=1, verbose=0)
    ckpt = TrialCheckpoints(store, 7, every=1, epochs=5)
    ckpt.save(trained, 1)
    ckpt.save(trained, 2)
    ckpt.save(trained, 3)
    assert ckpt.available() == [3, 2]  # the two newest are kept
    store.write_bytes_atomic(f"{trial_dir(7)}/epoch-00003.json", b"{not json")
    fresh = model()
    again = TrialCheckpoints(store, 7, every=1, epochs=5)
    assert again.restore(fresh) == 2 and len(again.warnings) == 1
    for a, b in zip(fresh.get_weights(), trained.get_weights()):
        assert np.array_equal(a, b)
    assert int(fresh.optimizer.iterations.numpy()) == int(trained.optimizer.iterations.numpy())
    again.finish(keep_final=False)
    assert not store.exists(trial_dir(7))
