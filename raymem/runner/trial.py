"""What one trial does on a Ray worker: draw its subset, train, predict, hand the record over.

Small trials (a fraction of a GPU, one GPU, or CPUs) run as Ray tasks in warm, reused worker
processes (``max_calls=0``): TensorFlow is imported and the data set fetched from the object
store once per process, not once per trial. Big trials (several GPUs of a node, or several nodes)
run as a Ray Train worker group (``TensorflowTrainer``) with ``tf.distribute`` inside; only the
rank-0 worker predicts and sends the record, so each trial sends exactly one.
"""

from __future__ import annotations

import os
import socket
import time

from raymem.estimator.records import TrialRecord
from raymem.estimator.subsets import subset_mask, trial_seed
from raymem.runner.config import ExperimentConfig

#: Test hook: comma-separated trial ids that raise on their first attempt (retry tests).
FAIL_ONCE_ENV = "RAYMEM_FAIL_TRIALS_ONCE"


class InjectedFailure(RuntimeError):
    """Raised on purpose by the retry test hook."""


def _maybe_inject_failure(trial_id: int, attempt: int) -> None:
    ids = {int(x) for x in os.environ.get(FAIL_ONCE_ENV, "").split(",") if x.strip()}
    if trial_id in ids and attempt == 1:
        raise InjectedFailure(f"injected failure of trial {trial_id} (attempt {attempt})")


def _placement() -> dict:
    import ray

    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
    }


def build_record(config: ExperimentConfig, run: dict, data, trial_id: int, attempt: int, strategy=None, extra=None) -> TrialRecord:
    """Train trial ``trial_id`` on this process and return its record."""
    from raymem.runner.training import limit_tf_threads, train_and_predict

    started = time.time()
    _maybe_inject_failure(trial_id, attempt)
    mask = subset_mask(run["seed"], trial_id, run["n_train"], run["subset_size"])
    seed = trial_seed(run["seed"], trial_id)
    limit_tf_threads(config.cpus_per_trial)
    train_pred, test_pred, metadata = train_and_predict(config, data, mask, seed, strategy=strategy)
    metadata.update(_placement())
    metadata.update(extra or {})
    metadata.update({"attempt": attempt, "started": started, "finished": time.time()})
    return TrialRecord.from_predictions(
        run_id=run["run_id"], trial_id=trial_id, seed=seed, mask=mask,
        train_pred=train_pred, test_pred=test_pred,
        train_labels=data.y_train, test_labels=data.y_test, metadata=metadata,
    )


def run_small_trial(config_dict: dict, run: dict, data, accumulator, trial_id: int, attempt: int) -> dict:
    """Ray task body for a small trial: train, send the record, return the accumulator's ack."""
    import ray

    config = ExperimentConfig(**config_dict)
    data = _materialize(data)
    record = build_record(config, run, data, trial_id, attempt)
    return ray.get(accumulator.absorb.remote(record))


_DATA_CACHE: dict = {}


def _materialize(data):
    """An ArrayDataset as is; a (name, data_dir) spec loaded once per process (streaming data sets)."""
    if isinstance(data, tuple):
        if data not in _DATA_CACHE:
            from raymem.runner.datasets import load_dataset

            _DATA_CACHE[data] = load_dataset(*data)
        return _DATA_CACHE[data]
    return data


def _train_group_worker(loop_config: dict) -> None:
    """Ray Train worker loop of a big trial: MirroredStrategy over this worker's GPUs; rank 0 reports."""
    import ray
    import ray.train
    import tensorflow as tf

    ctx = ray.train.get_context()
    config = ExperimentConfig(**loop_config["config"])
    (data,) = loop_config["data"]  # boxed in a list so Ray hands the ObjectRef through unresolved
    data = _materialize(ray.get(data) if isinstance(data, ray.ObjectRef) else data)
    multi_worker = ctx.get_world_size() > 1
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if multi_worker else tf.distribute.MirroredStrategy()
    record = build_record(
        config, loop_config["run"], data, loop_config["trial_id"], loop_config["attempt"], strategy=strategy,
        extra={"world_size": ctx.get_world_size(), "train_group": True},
    )
    ack = {}
    if ctx.get_world_rank() == 0:
        ack = ray.get(loop_config["accumulator"].absorb.remote(record))
    ray.train.report({"ack_trial_id": ack.get("trial_id", -1), "counted": bool(ack.get("counted", False)),
                      "world_size": ctx.get_world_size(), "rank": ctx.get_world_rank()})


def run_big_trial(config_dict: dict, run: dict, data_box: list, accumulator, trial_id: int, attempt: int, storage_path: str) -> dict:
    """Ray task body for a big trial: one Ray Train worker group per trial, waiting for its GPUs."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    config = ExperimentConfig(**config_dict)
    gpus = config.gpus_per_trial
    trainer = TensorflowTrainer(
        train_loop_per_worker=_train_group_worker,
        train_loop_config={
            "config": config_dict, "run": run, "data": data_box,
            "accumulator": accumulator, "trial_id": trial_id, "attempt": attempt,
        },
        scaling_config=ScalingConfig(
            num_workers=config.nodes_per_trial,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": config.cpus_per_trial, **({"GPU": gpus} if gpus > 0 else {})},
        ),
        run_config=RunConfig(name=f"{run['name']}-trial{trial_id}-a{attempt}", storage_path=storage_path),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    metrics = result.metrics or {}
    return {"trial_id": trial_id, "counted": bool(metrics.get("counted")), "world_size": metrics.get("world_size")}
