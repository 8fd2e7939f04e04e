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

from raymem.store.trial_record import TrialRecord
from raymem.estimator.subsets import trial_mask, trial_seed
from raymem.config.experiment import ExperimentConfig

def _placement() -> dict:
    import ray

    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
    }


def trial_subset(run: dict, trial_id: int) -> tuple:
    """(mask, seed) of trial ``trial_id``: both reproducible from (run seed, trial id); the mask is the run's
    (``subsets.trial_mask``: a random subset, or a marginal run's arm set)."""
    mask = trial_mask(run, trial_id)
    return mask, trial_seed(run["seed"], trial_id)


def build_record(config: ExperimentConfig, run: dict, data, trial_id: int, attempt: int, strategy=None, extra=None,
                 predict_on_local_copy: bool = False, checkpoints=None) -> TrialRecord:
    """Train trial ``trial_id`` on this process and return its record.

    ``data`` (an ArrayDataset or a StreamingDataset) carries the run's training labels in ``y_train``
    (canaries flipped): the model trains on them and the record's correctness is measured against them.
    """
    from raymem.training.fit import configure_gpu_share, limit_tf_threads, train_and_predict

    started = time.time()
    mask, seed = trial_subset(run, trial_id)
    gpu_share = configure_gpu_share(config.resources.gpus_per_trial)  # before any TensorFlow op
    limit_tf_threads(config.resources.cpus_per_trial)
    train_pred, test_pred, metadata = train_and_predict(
        config, data, mask, seed, strategy=strategy, predict_on_local_copy=predict_on_local_copy,
        checkpoints=checkpoints)
    metadata.setdefault("resumed_from_epoch", 0)
    metadata.update(gpu_share)
    metadata.update(_placement())
    metadata.update(extra or {})
    metadata.update({"attempt": attempt, "started": started, "finished": time.time()})
    return TrialRecord.from_predictions(
        run_id=run["run_id"], trial_id=trial_id, seed=seed, mask=mask,
        train_pred=train_pred, test_pred=test_pred,
        train_labels=data.y_train, test_labels=data.y_test, metadata=metadata,
    )


def build_pack_records(config: ExperimentConfig, run: dict, data, trial_ids: list[int],
                       attempt: int) -> list[TrialRecord]:
    """Train the trials ``trial_ids`` together as one pack (``training.packing``) and return one record per trial.

    Each trial keeps its own subset and seed (``trial_subset``); its record is the one an unpacked trial
    would send, with ``metadata["pack"] = {"id", "members", "size"}`` saying which pack trained it.
    """
    import numpy as np

    from raymem.training.packing import train_and_predict_pack
    from raymem.training.fit import limit_tf_threads

    started = time.time()
    subsets = [trial_subset(run, k) for k in trial_ids]
    limit_tf_threads(config.resources.cpus_per_trial)
    outputs = train_and_predict_pack(config, data, np.stack([mask for mask, _ in subsets]),
                                     [seed for _, seed in subsets])
    placement, finished = _placement(), time.time()
    pack = {"id": f"{run['run_id']}:{trial_ids[0]}+{len(trial_ids)}", "members": [int(k) for k in trial_ids],
            "size": len(trial_ids)}
    records = []
    for trial_id, (mask, seed), (train_pred, test_pred, metadata) in zip(trial_ids, subsets, outputs):
        metadata.update(placement)
        metadata.update({"pack": pack, "attempt": attempt, "started": started, "finished": finished})
        records.append(TrialRecord.from_predictions(
            run_id=run["run_id"], trial_id=int(trial_id), seed=seed, mask=mask,
            train_pred=train_pred, test_pred=test_pred,
            train_labels=data.y_train, test_labels=data.y_test, metadata=metadata,
        ))
    return records


def run_pack(config: ExperimentConfig, run: dict, data, accumulator, trial_ids: list[int], attempt: int) -> list[dict]:
    """Ray task body for a pack of small trials: train them together, send each trial's record, return the acks."""
    import ray

    records = build_pack_records(config, run, data, trial_ids, attempt)
    return ray.get([accumulator.absorb.remote(record) for record in records])


def measure_pack(config: ExperimentConfig, data, max_pack: int) -> tuple[int, list[dict]]:
    """Ray task body for ``--pack auto``: measure step times where trials run; return (K, measurements)."""
    from raymem.training.packing import auto_pack

    return auto_pack(config, data, max_pack)


def run_small_trial(config: ExperimentConfig, run: dict, data, accumulator, trial_id: int, attempt: int) -> dict:
    """Ray task body for a small trial: train, send the record, return the accumulator's ack."""
    import ray

    from raymem.training import checkpoints as ckpt

    checkpoints = ckpt.for_trial(config, run, trial_id)
    record = build_record(config, run, data, trial_id, attempt, checkpoints=checkpoints)
    ack = ray.get(accumulator.absorb.remote(record))
    ckpt.finish_quietly(checkpoints)  # acknowledged: the trial's checkpoints are no longer needed
    return ack


def _train_group_worker(loop_config: dict) -> None:
    """Ray Train worker loop of a big trial.

    One worker (a node's GPUs): MirroredStrategy, as the paper trained ImageNet. Several workers
    (several nodes, tf-keras): MultiWorkerMirroredStrategy; all of them train, and rank 0 alone
    predicts, on a local copy of the synchronised weights, and sends the one record.
    """
    import ray
    import ray.train
    import tensorflow as tf

    from raymem.training import checkpoints as ckpt

    ctx = ray.train.get_context()
    config: ExperimentConfig = loop_config["config"]
    (data,) = loop_config["data"]  # boxed in a list so Ray hands the ObjectRef through unresolved
    data = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    run, trial_id, attempt = loop_config["run"], loop_config["trial_id"], loop_config["attempt"]
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if world > 1 else tf.distribute.MirroredStrategy()
    ack = {}
    # rank 0 saves; with several workers every worker resumes from the epoch rank 0 picked (broadcast)
    agree = None
    if world > 1:
        from ray.train.collective import broadcast_from_rank_zero as agree
    if rank == 0:
        checkpoints = ckpt.for_trial(config, run, trial_id, agree=agree)
        record = build_record(config, run, data, trial_id, attempt, strategy=strategy,
                              extra={"world_size": world, "train_group": True}, predict_on_local_copy=world > 1,
                              checkpoints=checkpoints)
        ack = ray.get(loop_config["accumulator"].absorb.remote(record))
        ckpt.finish_quietly(checkpoints)
    else:
        from raymem.training.fit import limit_tf_threads, release_session, train_model

        mask, seed = trial_subset(run, trial_id)
        limit_tf_threads(config.resources.cpus_per_trial)
        train_model(config, data, mask, seed, strategy=strategy,
                    checkpoints=ckpt.for_trial(config, run, trial_id, save=False, agree=agree))
        release_session()
    ray.train.report({"ack_trial_id": ack.get("trial_id", -1), "counted": bool(ack.get("counted", False)),
                      "world_size": world, "rank": rank})


def run_big_trial(config: ExperimentConfig, run: dict, data_box: list, accumulator, trial_id: int, attempt: int,
                  storage_path: str) -> dict:
    """Ray task body for a big trial: one Ray Train worker group per trial, waiting for its GPUs."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    gpus = config.resources.gpus_per_trial
    trainer = TensorflowTrainer(
        train_loop_per_worker=_train_group_worker,
        train_loop_config={
            "config": config, "run": run, "data": data_box,
            "accumulator": accumulator, "trial_id": trial_id, "attempt": attempt,
        },
        scaling_config=ScalingConfig(
            num_workers=config.resources.nodes_per_trial,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": config.resources.cpus_per_trial, **({"GPU": gpus} if gpus > 0 else {})},
        ),
        run_config=RunConfig(name=f"{run['name']}-trial{trial_id}-a{attempt}", storage_path=storage_path),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    metrics = result.metrics or {}
    return {"trial_id": trial_id, "counted": bool(metrics.get("counted")), "world_size": metrics.get("world_size")}
