"""Train one model: fit a fresh Keras model on a subset and predict on every example.

This is the only place that runs a Keras training loop; the Ray tasks, the Ray Train worker, the
plain-loop benchmark and ``raymem features`` all call it. TensorFlow is imported here, lazily, so
the estimator and the CLI never pay for it.

Both kinds of data set train the same way:

- ``ArrayDataset``: the subset's arrays are shuffled in memory.
- ``StreamingDataset`` (ImageNet): the pipeline reads the TFRecord files, skips every example
  outside the subset before decoding it, looks each example's label up in the run's labels, and
  shuffles the encoded examples in a buffer (``StreamingDataset.train_dataset``); predictions
  stream through ``eval_dataset`` in index order.

In both, ``data.y_train`` holds the run's training labels (canaries flipped) and the model trains
on those, never on the labels stored in the files. The config's augmentation (random crop after
zero padding by ``augment_pad`` pixels, random flips) is applied to image inputs. Batches hold the
GLOBAL batch size ``config.recipe.batch_size``: under a ``tf.distribute.MirroredStrategy`` each batch is
split across the replicas (ImageNet: 896 over 8 GPUs = 112 per GPU), so the learning-rate schedule
is the paper's whatever the number of GPUs.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from raymem.config.experiment import ExperimentConfig
from raymem.data.datasets import StreamingDataset

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


#: Share of a GPU's memory a fractional trial may use, of its exact fraction: the rest covers each
#: process's CUDA context (~0.3-0.5 GB) and cuDNN workspaces that TensorFlow allocates outside its limit.
GPU_SHARE_HEADROOM = 0.9
_GPU_SHARE: dict | None = None


def gpu_total_memory_mb(device_index: str) -> int | None:
    """Total memory (MiB) of the physical GPU ``device_index`` (as in CUDA_VISIBLE_DEVICES), or None when unknown."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                              "-i", str(device_index)], capture_output=True, text=True, timeout=20, check=True)
        return int(float(out.stdout.strip().splitlines()[0]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def configure_gpu_share(fraction: float) -> dict:
    """Before TensorFlow touches a GPU: cap this process at ``fraction`` of its GPU's memory (0 < fraction < 1).

    Ray gives a trial that asks for a fraction of a GPU a share of one device but leaves memory to the
    process, and TensorFlow reserves nearly all of a GPU's memory on first use: the second trial on the
    GPU fails or thrashes. Each GPU this process sees gets one logical device with a hard memory limit of
    ``fraction x GPU_SHARE_HEADROOM`` of the device's memory, so 1/fraction trials fit side by side and a
    model too big for its share fails in its own trial instead of starving the others. When the device's
    memory cannot be read (no nvidia-smi), memory growth is turned on instead (allocate as needed).
    Called once per worker process (reused processes keep the first setting: TensorFlow cannot change it
    after initialisation). Returns what was done, for the trial's metadata.
    """
    global _GPU_SHARE
    if _GPU_SHARE is not None:
        return _GPU_SHARE
    if not 0 < fraction < 1:
        return {}
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        _GPU_SHARE = {"gpu_share": "none visible"}
        return _GPU_SHARE
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    total = gpu_total_memory_mb(visible[0] if visible else "0")
    try:
        if total:
            limit = int(total * fraction * GPU_SHARE_HEADROOM)
            for gpu in gpus:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
            _GPU_SHARE = {"gpu_share": "memory_limit", "gpu_memory_limit_mb": limit}
        else:
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
            _GPU_SHARE = {"gpu_share": "memory_growth"}
    except RuntimeError:  # TensorFlow already initialised its GPUs in this process: keep its settings
        _GPU_SHARE = {"gpu_share": "already initialised"}
    return _GPU_SHARE


def _gpus_present() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _flag(value: str) -> bool:
    """Returns whether an "auto" | "on" | "off" setting is on here: auto means on only when a GPU is present."""
    return value == "on" or (value == "auto" and _gpus_present())


def accelerator_settings(config: ExperimentConfig) -> dict:
    """Returns {"mixed_precision": bool, "xla": bool}: the config's auto|on|off flags resolved on this process."""
    return {"mixed_precision": _flag(config.recipe.mixed_precision), "xla": _flag(config.recipe.xla)}


def _augmented_batches(config: ExperimentConfig, pairs, input_rank: int, global_batch: int):
    """Returns ``pairs`` of (input, label) augmented (images only) and batched with the global batch size."""
    import tensorflow as tf

    from raymem.training.augment import make_augment_fn

    if input_rank == 3 and (config.recipe.augment_pad or config.recipe.augment_flip):
        pairs = pairs.map(make_augment_fn(config.recipe.augment_pad, config.recipe.augment_flip),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return pairs.batch(global_batch).prefetch(tf.data.AUTOTUNE)


def train_pipeline(config: ExperimentConfig, data, mask: np.ndarray, seed: int):
    """Returns the tf.data.Dataset one epoch of training reads: batches of (inputs, run labels) of the
    examples where ``mask`` is True, reshuffled every epoch, augmented, of ``config.recipe.batch_size`` (global)."""
    import tensorflow as tf

    if isinstance(data, StreamingDataset):
        pairs = data.train_dataset(np.flatnonzero(mask), shuffle_seed=seed, labels=data.y_train)
    else:
        x, y = data.x_train[mask], data.y_train[mask]
        pairs = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return _augmented_batches(config, pairs, len(data.input_shape), config.recipe.batch_size)


def split_inputs(data, split: str):
    """Returns the inputs of every example of ``split`` ("train" or "test") in index order: the array of an
    ``ArrayDataset``, or a tf.data.Dataset of image batches (EVAL_BATCH) for a ``StreamingDataset``."""
    if isinstance(data, StreamingDataset):
        return data.eval_dataset(split, batch_size=EVAL_BATCH).map(lambda image, _: image)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return data.x_train if split == "train" else data.x_test


def predict_outputs(model, inputs):
    """Returns ``model``'s outputs on ``inputs`` (an array or a batched tf.data.Dataset), in input order."""
    if isinstance(inputs, np.ndarray):
        return model.predict(inputs, batch_size=EVAL_BATCH, verbose=0)
    return model.predict(inputs, verbose=0)


def predict_labels(model, inputs) -> np.ndarray:
    """Returns the predicted class (int32) of every input, in order (see ``predict_outputs``)."""
    return np.argmax(predict_outputs(model, inputs), axis=-1).astype(np.int32)


def smoothed_cross_entropy(labels, logits, label_smoothing: float):
    """Per-example cross-entropy of integer ``labels`` against ``logits`` (any leading dims, classes last) with
    the target ``(1 - label_smoothing) x one-hot + label_smoothing / classes``.

    Written on sparse labels because Keras' SparseCategoricalCrossentropy has no label smoothing, and one-hot
    labels would change the data pipeline and the accuracy metric: (1 - s) x NLL + s x mean over classes of -log p.
    """
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)  # float16 logits of mixed precision: the loss in float32, as Keras does
    labels = tf.cast(tf.reshape(labels, tf.shape(logits)[:-1]), tf.int32)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    if not label_smoothing:
        return nll
    uniform = -tf.reduce_mean(tf.nn.log_softmax(logits), axis=-1)
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform


def recipe_loss(label_smoothing: float):
    """The loss ``model.compile`` gets: Keras' sparse cross-entropy on logits, or the smoothed one."""
    from raymem.training.keras_backend import keras

    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # the paper's recipe, unchanged
    return lambda y_true, logits: smoothed_cross_entropy(y_true, logits, label_smoothing)


def train_model(config: ExperimentConfig, data, mask: np.ndarray, seed: int, strategy=None, checkpoints=None) -> tuple:
    """Fit a fresh ``config.model`` on the examples where ``mask`` is True with the config's recipe.

    Returns (model, metadata) with metadata {"train_seconds", "epochs", "replicas", "global_batch",
    "final_loss", "mixed_precision", "xla", "streaming"}. ``data`` is an ``ArrayDataset`` or a
    ``StreamingDataset`` whose ``y_train`` holds the labels to train on. ``strategy`` is a
    ``tf.distribute`` strategy for multi-GPU training (MirroredStrategy), or None. ``checkpoints``: a
    ``checkpoints.TrialCheckpoints``: training resumes from its newest complete checkpoint and saves new
    ones as it goes (metadata then adds ``resumed_from_epoch``).
    """
    import tensorflow as tf

    from raymem.training.keras_backend import keras
    from raymem.training.models import build_model
    from raymem.training.schedules import make_schedule, recipe_optimizer

    started = time.perf_counter()
    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(seed)
    settings = accelerator_settings(config)
    keras.mixed_precision.set_global_policy("mixed_float16" if settings["mixed_precision"] else "float32")
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    steps_per_epoch = max(1, math.ceil(int(np.count_nonzero(mask)) / config.recipe.batch_size))
    scope = strategy.scope() if strategy is not None else _null_scope()
    with scope:
        model = build_model(config.model, tuple(data.input_shape), data.num_classes, **config.model_params)
        schedule = make_schedule(config.recipe.schedule, config.recipe.base_lr, config.recipe.epochs, steps_per_epoch,
                                 **config.recipe.schedule_params)
        model.compile(
            optimizer=recipe_optimizer(config.recipe, schedule),
            loss=recipe_loss(config.recipe.label_smoothing),
            metrics=["accuracy"],
            jit_compile=settings["xla"],
        )
    initial_epoch, callbacks = 0, []
    if checkpoints is not None:
        with strategy.scope() if strategy is not None else _null_scope():  # optimizer slots are built here
            initial_epoch = checkpoints.restore(model)
        callbacks.append(checkpoints.callback(model))
    if initial_epoch < config.recipe.epochs:
        history = model.fit(train_pipeline(config, data, mask, seed), epochs=config.recipe.epochs, verbose=0,
                            shuffle=False, initial_epoch=initial_epoch, callbacks=callbacks)
        final_loss = float(history.history["loss"][-1])
    else:
        final_loss = None  # resumed from a checkpoint of the last epoch: nothing left to train
    metadata = {
        "train_seconds": time.perf_counter() - started,
        "epochs": config.recipe.epochs,
        "replicas": replicas,
        "global_batch": config.recipe.batch_size,
        "final_loss": final_loss,
        **settings,
        "streaming": isinstance(data, StreamingDataset),
    }
    return model, metadata


def train_and_predict(
    config: ExperimentConfig,
    data,
    mask: np.ndarray,
    seed: int,
    strategy=None,
    predict_on_local_copy: bool = False,
    checkpoints=None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train on the examples where ``mask`` is True; return (train_pred, test_pred, metadata).

    ``data`` is an ``ArrayDataset`` or a ``StreamingDataset`` whose ``y_train`` holds the run's labels
    (canaries flipped); predictions (int32) cover every training and test example in index order.
    ``strategy`` is a ``tf.distribute`` strategy for multi-GPU trials (MirroredStrategy), or None.
    ``predict_on_local_copy``: predict with a copy of the trained weights outside the strategy, so that
    one worker of a multi-worker group can predict alone (the others would otherwise have to join).
    """
    import tensorflow as tf

    from raymem.training.keras_backend import LEGACY, keras

    model, metadata = train_model(config, data, mask, seed, strategy=strategy, checkpoints=checkpoints)
    if checkpoints is not None:
        metadata["resumed_from_epoch"] = checkpoints.resumed_from_epoch
        metadata["checkpoints_saved"] = list(checkpoints.saved)
        if checkpoints.warnings:
            metadata["checkpoint_warnings"] = list(checkpoints.warnings)
        if checkpoints.keep_final and checkpoints.save_enabled:
            checkpoints.save_final(model)
    trained = time.perf_counter()
    if predict_on_local_copy:
        local = keras.models.clone_model(model)
        local.set_weights(model.get_weights())
        model = local
    train_pred = predict_labels(model, split_inputs(data, "train"))
    test_pred = predict_labels(model, split_inputs(data, "test"))
    metadata.update({
        "predict_seconds": time.perf_counter() - trained,
        "subset_accuracy": float(np.mean(train_pred[mask] == data.y_train[mask])),
        "test_accuracy": float(np.mean(test_pred == data.y_test)),
        "gpus_visible": len(tf.config.list_physical_devices("GPU")),
        "keras": "tf_keras" if LEGACY else "keras3",
    })
    release_session()
    return train_pred, test_pred, metadata


def release_session() -> None:
    """Drop the trial's graph state. A full garbage collection (~250 ms) only pays off on GPUs,
    where it frees device memory before the next trial of a reused worker."""
    from raymem.training.keras_backend import LEGACY, keras

    if LEGACY:
        keras.backend.clear_session()
    else:
        keras.backend.clear_session(free_memory=_gpus_present())


class _null_scope:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
