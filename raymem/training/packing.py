"""Packed training: K trials of a run trained together as one vectorised model.

Small models (the digits CNN, a linear model on features, the paper's MNIST-sized nets) leave the
hardware idle: each step of one trial is a handful of tiny kernels. A *pack* trains K trials at once:

- **K independent copies of the architecture** (``packed_model.PackedModel``): the trial's Keras model is
  built once per copy with that copy's trial seed, exactly as the unpacked trial builds it, so copy k
  starts from the very weights trial k would start from; its graph is replayed over stacked weights
  (grouped convolutions, batched dense products, batch normalization per channel of one copy).
- **Each copy reads only its own subset.** The run's training set is placed on the device once; every
  step, copy k gathers its own batch of ``recipe.batch_size`` examples from its own subset, in its own
  per-epoch shuffle (drawn from its trial seed), so its batch size, its steps per epoch
  (``ceil(m / batch_size)``, equal for all copies since every subset has size m), its learning-rate
  schedule and its momentum are those of the unpacked recipe. The loss is the sum over copies of each
  copy's mean cross-entropy over its own batch, so copy k's gradient is its unpacked gradient. An
  example outside a copy's subset is never gathered for that copy: neither its input, nor its label,
  nor a gradient, nor a batch statistic can reach it: batch normalization's moments are taken over copy
  k's own batch (its channels hold only its examples), exactly as the unpacked trial's over its batch.

  This replaces the "full-data batch with per-copy masks as sample weights" design on purpose: masking
  computes every copy on the ~30% of examples it must ignore (1/0.7 = 1.43x the work per model), gives
  each copy a batch of Binomial(b, 0.7) examples instead of b, and shares one shuffle among the copies
  (trials would no longer be independent given their subsets). Gathering is cheaper, exact, and leak-free
  by construction.
- **Predictions** of every copy on every training and test example come from one forward pass per
  chunk of inputs (the input is shared, the first layer's copies become one wider layer), giving one
  ``(train_pred, test_pred, metadata)`` per trial id, as ``training.train_and_predict`` does for one.

Which runs pack: every model of the catalog, on any data set held in memory (all but ImageNet, which
streams from files; refused by the config before anything starts).

TensorFlow is imported lazily, as in ``training``.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from raymem.errors import RaymemError
from raymem.config.experiment import ExperimentConfig
from raymem.data.datasets import StreamingDataset
from raymem.training.packed_model import PackedModel

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Inputs per copy in one prediction chunk: K x PREDICT_CHUNK examples go through the model at once.
PREDICT_CHUNK = 256
#: --pack auto tries K = 1, 2, 4, ... up to this.
AUTO_MAX_PACK = 128
#: --pack auto keeps doubling K while the step time of 2K copies is below this factor times that of K, i.e.
#: while doubling still buys >= 5% more models per second (on a CPU the gain per doubling is small but real:
#: digits 4.2 -> 3.9 -> 3.6 ms per copy at K = 1, 2, 4, which 1.8 would have stopped at K = 1).
AUTO_GROWTH = 1.9


def initial_weights(config: ExperimentConfig, data, seed: int) -> list[np.ndarray]:
    """The weights trial ``seed`` starts from: its Keras model built as ``training.train_model`` builds it."""
    from raymem.training.keras_backend import keras
    from raymem.training.models import build_model

    keras.utils.set_random_seed(seed)
    return build_model(config.model, tuple(data.input_shape), data.num_classes, **config.model_params).get_weights()


def build_packed(config: ExperimentConfig, data, seeds: list[int]) -> PackedModel:
    """A PackedModel of ``config.model`` whose copy k starts from trial seed ``seeds[k]``'s initial weights."""
    from raymem.training.keras_backend import keras
    from raymem.training.models import build_model

    # packs train in float32: float16 needs a loss scale, and one scale shared by the copies would let an
    # overflow in one copy skip every copy's step (a copy's training would depend on the others' data)
    keras.mixed_precision.set_global_policy("float32")
    weights = [initial_weights(config, data, seed) for seed in seeds]
    template = build_model(config.model, tuple(data.input_shape), data.num_classes, **config.model_params)
    return PackedModel(template, weights)


# --------------------------------------------------------------------------------------------------
# Training


def steps_per_epoch(config: ExperimentConfig, subset_size: int) -> int:
    """Steps of one epoch over a subset: ``ceil(m / batch_size)``, as the unpacked trial takes."""
    return max(1, math.ceil(subset_size / config.recipe.batch_size))


def _epoch_orders(masks: np.ndarray, seeds: list[int], epochs: int):
    """Yield, per epoch, ``(K, m)`` int32: each copy's subset indices in its own shuffle of that epoch."""
    members = [np.flatnonzero(mask) for mask in masks]
    rngs = [np.random.default_rng([int(seed), 0x9ACC]) for seed in seeds]
    for _ in range(epochs):
        yield np.stack([rng.permutation(idx) for rng, idx in zip(rngs, members)]).astype(np.int32)


def _make_step(packed: PackedModel, optimizer, x_all, y_all, augment: tuple[int, bool], xla: bool,
               label_smoothing: float = 0.0):
    """The compiled training step: gather each copy's batch, sum of per-copy mean losses, one optimizer update.

    The recipe's optimizers (SGD, Adam, AdamW, decoupled weight decay) all update each weight from its own
    gradient and state only, so over stacked copies they stay K independent optimizers.
    """
    import tensorflow as tf

    from raymem.training.fit import smoothed_cross_entropy

    pad, flip = augment
    augment_on = packed.input_rank == 3 and (pad > 0 or flip)

    def step(indices, step_seed):
        x = tf.gather(x_all, indices)             # (K, b, ...): copy k's own examples only
        y = tf.gather(y_all, indices)             # (K, b)
        if augment_on:
            from raymem.training.augment import random_pad_crop_flip

            shape = tf.shape(x)
            flat = tf.reshape(x, tf.concat([[-1], shape[2:]], 0))
            seeds = tf.random.experimental.stateless_split(step_seed, num=tf.shape(flat)[0])
            flat = tf.map_fn(lambda pair: random_pad_crop_flip(pair[0], pad, flip, pair[1]), (flat, seeds),
                             fn_output_signature=flat.dtype)
            x = tf.reshape(flat, shape)
        with tf.GradientTape() as tape:
            logits = packed.logits(x, training=True)
            per_example = smoothed_cross_entropy(y, logits, label_smoothing)
            per_copy = tf.reduce_mean(per_example, axis=1)   # each copy's mean over its own batch
            loss = tf.reduce_sum(per_copy)                   # copies share no weight: gradients stay apart
        grads = tape.gradient(loss, packed.variables)
        optimizer.apply_gradients(zip(grads, packed.variables))
        return per_copy

    return tf.function(step, jit_compile=xla, reduce_retracing=True)


def train_pack(config: ExperimentConfig, data, masks: np.ndarray, seeds: list[int], *,
               max_steps: int | None = None) -> tuple[PackedModel, dict]:
    """Train one copy per row of ``masks`` (all of the same size m), copy k from trial seed ``seeds[k]``.

    Returns (packed model, metadata). ``max_steps`` stops early (measurements only).
    """
    import tensorflow as tf

    from raymem.training.schedules import make_schedule, recipe_optimizer
    from raymem.training.fit import accelerator_settings

    if isinstance(data, StreamingDataset):
        raise RaymemError(f"data set {data.name} streams from files; packing needs an in-memory data set; use pack=1.")
    masks = np.asarray(masks, dtype=bool)
    sizes = masks.sum(axis=1)
    if len(masks) != len(seeds) or len(set(sizes.tolist())) != 1:
        raise ValueError("a pack needs one seed per mask and masks of one size")
    started = time.perf_counter()
    tf.get_logger().setLevel("ERROR")
    settings = accelerator_settings(config)
    recipe = config.recipe
    packed = build_packed(config, data, list(seeds))
    spe = steps_per_epoch(config, int(sizes[0]))
    schedule = make_schedule(recipe.schedule, recipe.base_lr, recipe.epochs, spe, **recipe.schedule_params)
    optimizer = recipe_optimizer(recipe, schedule)
    x_all = tf.constant(data.x_train)
    y_all = tf.constant(data.y_train.astype(np.int32))
    step = _make_step(packed, optimizer, x_all, y_all, (recipe.augment_pad, recipe.augment_flip), settings["xla"],
                      recipe.label_smoothing)
    batch = recipe.batch_size
    done, losses, warm = 0, None, None
    seed_base = int(seeds[0])
    for order in _epoch_orders(masks, seeds, recipe.epochs):
        for start in range(0, order.shape[1], batch):
            losses = step(tf.constant(order[:, start:start + batch]), tf.constant([seed_base, done], tf.int32))
            done += 1
            if done == 2 and max_steps is not None:  # measurements: time the steps after tracing and warm-up
                losses.numpy()
                warm = time.perf_counter()
            if max_steps is not None and done >= max_steps:
                break
        if max_steps is not None and done >= max_steps:
            break
    finished = time.perf_counter() if losses is None else (losses.numpy(), time.perf_counter())[1]
    metadata = {
        "train_seconds": finished - started,
        "step_seconds": None if warm is None or done <= 2 else (finished - warm) / (done - 2),
        "epochs": recipe.epochs,
        "replicas": 1,
        "global_batch": batch,  # per copy: each copy's own batch, as unpacked
        "steps": done,
        "final_losses": [] if losses is None else [float(v) for v in losses.numpy()],
        "mixed_precision": False,  # packs train in float32
        "xla": settings["xla"],
        "streaming": False,
    }
    return packed, metadata


def train_and_predict_pack(config: ExperimentConfig, data, masks: np.ndarray, seeds: list[int]) -> list[tuple]:
    """Train a pack and return, per copy, ``(train_pred, test_pred, metadata)`` as ``train_and_predict`` does."""
    import tensorflow as tf

    from raymem.training.keras_backend import LEGACY
    from raymem.training.fit import release_session

    packed, shared = train_pack(config, data, masks, seeds)
    trained = time.perf_counter()
    chunk = max(1, PREDICT_CHUNK * 16 // packed.k) if packed.k > 16 else PREDICT_CHUNK
    train_pred = packed.predict_labels(data.x_train, chunk)
    test_pred = packed.predict_labels(data.x_test, chunk)
    predict_seconds = time.perf_counter() - trained
    out = []
    for k, mask in enumerate(masks):
        metadata = {key: value for key, value in shared.items() if key != "final_losses"}
        metadata.update({
            "final_loss": shared["final_losses"][k] if shared["final_losses"] else float("nan"),
            "predict_seconds": predict_seconds,
            "subset_accuracy": float(np.mean(train_pred[k][mask] == data.y_train[mask])),
            "test_accuracy": float(np.mean(test_pred[k] == data.y_test)),
            "gpus_visible": len(tf.config.list_physical_devices("GPU")),
            "keras": "tf_keras" if LEGACY else "keras3",
        })
        out.append((train_pred[k], test_pred[k], metadata))
    release_session()
    return out


# --------------------------------------------------------------------------------------------------
# --pack auto


def _peak_memory_bytes() -> int:
    """Peak memory of this process so far: the GPU's allocator peak when there is a GPU, else max RSS."""
    import resource

    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _memory_limit_bytes(config: ExperimentConfig) -> int:
    """Memory one pack may use: its share of the GPU, else the machine's available memory per CPU slot."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        total = tf.config.experimental.get_device_details(gpus[0]).get("memory_limit") or 16 * 2**30
        return int(total * min(1.0, config.resources.gpus_per_trial or 1.0))
    try:
        import psutil

        available = psutil.virtual_memory().available
    except ImportError:  # pragma: no cover
        available = 8 * 2**30
    return int(available / max(1, os.cpu_count() or 1) * max(1.0, config.resources.cpus_per_trial))


def measure_pack_sizes(config: ExperimentConfig, data, max_pack: int, steps: int = 20) -> list[dict]:
    """Time ``steps`` training steps (after 2 warm-up steps) at K = 1, 2, 4, ... <= max_pack (one short pack each).

    Returns rows {"pack", "step_seconds", "peak_bytes"}; stops doubling once the step time grows by
    AUTO_GROWTH or more, or the next K would not fit in memory.
    """
    from raymem.estimator.subsets import subset_mask, trial_seed
    from raymem.training.fit import release_session

    n = len(data.y_train)
    m = config.subset_size(n)
    limit = _memory_limit_bytes(config)
    rows: list[dict] = []
    k = 1
    while k <= max_pack:
        masks = np.stack([subset_mask(config.seed, j, n, m) for j in range(k)])
        seeds = [trial_seed(config.seed, j) for j in range(k)]
        base = _peak_memory_bytes()
        _, timed = train_pack(config, data, masks, seeds, max_steps=2 + steps)  # 2 warm-up steps, then `steps` timed
        per_step = max(1e-6, timed["step_seconds"])
        peak = _peak_memory_bytes()
        rows.append({"pack": k, "step_seconds": per_step, "peak_bytes": peak, "grew_bytes": max(0, peak - base)})
        release_session()
        if len(rows) >= 2 and rows[-1]["step_seconds"] >= AUTO_GROWTH * rows[-2]["step_seconds"]:
            break
        per_copy = max(rows[-1]["grew_bytes"], 1) / k
        if peak + per_copy * k > limit:   # doubling would add about k more copies
            break
        k *= 2
    return rows


def choose_pack(rows: list[dict]) -> int:
    """The largest measured K whose step time is still below AUTO_GROWTH times that of half as many copies."""
    best = rows[0]["pack"]
    for previous, row in zip(rows, rows[1:]):
        if row["step_seconds"] < AUTO_GROWTH * previous["step_seconds"]:
            best = row["pack"]
        else:
            break
    return best


def auto_pack(config: ExperimentConfig, data, max_pack: int) -> tuple[int, list[dict]]:
    """Measure and return (K, the measurements) for ``--pack auto`` (run where trials run: one trial's resources)."""
    from raymem.training.fit import limit_tf_threads

    limit_tf_threads(config.resources.cpus_per_trial)
    rows = measure_pack_sizes(config, data, max(1, min(max_pack, AUTO_MAX_PACK)))
    return choose_pack(rows), rows
