"""Train one trial: fit a fresh Keras model on the trial's subset and predict on every example.

This is the only place that runs Keras for a trial; the Ray tasks, the Ray Train worker and the
plain-loop benchmark all call ``train_and_predict``. TensorFlow is imported here, lazily, so the
estimator and the CLI never pay for it.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from raymem.runner.config import ExperimentConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EVAL_BATCH = 1024
_THREADS_SET = False


def limit_tf_threads(num_cpus: float) -> None:
    """Keep one process's TensorFlow to the CPUs its trial asked for (once per process)."""
    global _THREADS_SET
    if _THREADS_SET or num_cpus <= 0:
        return
    import tensorflow as tf

    threads = max(1, int(math.floor(num_cpus)))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(threads, 2)))
    except RuntimeError:
        pass  # TensorFlow already initialised in this process; keep its settings
    _THREADS_SET = True


def _gpus_present() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _flag(value: str) -> bool:
    return value == "on" or (value == "auto" and _gpus_present())


def _train_dataset(config: ExperimentConfig, x: np.ndarray, y: np.ndarray, seed: int, global_batch: int):
    import tensorflow as tf

    from raymem.runner.augment import make_augment_fn

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if x.ndim == 4 and (config.augment_pad or config.augment_flip):
        ds = ds.map(make_augment_fn(config.augment_pad, config.augment_flip), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(global_batch).prefetch(tf.data.AUTOTUNE)


def predict_labels(model, x) -> np.ndarray:
    """Predicted class of every example (int32), in order."""
    logits = model.predict(x, batch_size=EVAL_BATCH, verbose=0)
    return np.argmax(logits, axis=-1).astype(np.int32)


def train_and_predict(
    config: ExperimentConfig,
    data,
    mask: np.ndarray,
    seed: int,
    strategy=None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train on the examples where ``mask`` is True; return (train_pred, test_pred, metadata).

    ``data`` is an ``ArrayDataset`` whose ``y_train`` holds the run's labels (canaries flipped).
    ``strategy`` is a ``tf.distribute`` strategy for multi-GPU trials (MirroredStrategy), or None.
    """
    import keras
    import tensorflow as tf

    from raymem.runner.models import build_model
    from raymem.runner.schedules import make_optimizer, make_schedule

    started = time.perf_counter()
    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(seed)
    if _flag(config.mixed_precision):
        keras.mixed_precision.set_global_policy("mixed_float16")
    x, y = data.x_train[mask], data.y_train[mask]
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    global_batch = config.batch_size
    steps_per_epoch = max(1, math.ceil(len(x) / global_batch))
    scope = strategy.scope() if strategy is not None else _null_scope()
    with scope:
        model = build_model(config.model, tuple(data.x_train.shape[1:]), data.num_classes)
        schedule = make_schedule(config.schedule, config.base_lr, config.epochs, steps_per_epoch, **config.schedule_params)
        model.compile(
            optimizer=make_optimizer(schedule, momentum=config.momentum),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=_flag(config.xla),
        )
    history = model.fit(_train_dataset(config, x, y, seed, global_batch), epochs=config.epochs, verbose=0, shuffle=False)
    trained = time.perf_counter()
    train_pred = predict_labels(model, data.x_train)
    test_pred = predict_labels(model, data.x_test)
    metadata = {
        "train_seconds": trained - started,
        "predict_seconds": time.perf_counter() - trained,
        "epochs": config.epochs,
        "replicas": replicas,
        "final_loss": float(history.history["loss"][-1]),
        "subset_accuracy": float(np.mean(train_pred[mask] == data.y_train[mask])),
        "test_accuracy": float(np.mean(test_pred == data.y_test)),
        "gpus_visible": len(tf.config.list_physical_devices("GPU")),
    }
    keras.backend.clear_session()
    return train_pred, test_pred, metadata


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
