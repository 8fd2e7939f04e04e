"""``raymem features``: precomputed penultimate-layer representations for the linear-model experiments.

The paper's "linear model on precomputed hidden representations" (supplement, B and C.3) trains one
network on the ENTIRE training set, takes its penultimate-layer activations of every training and
test example as fixed features, and then runs the subset trials with a linear model on those
features. ``compute_features`` does the first two steps with the training recipe of the data set's
preset and writes an ``.npz`` (x_train, y_train, x_test, y_test) that ``--dataset npz:FILE`` reads,
e.g. for the ``cifar100-linear`` preset.
"""

from __future__ import annotations

import time

import numpy as np

from raymem.errors import RaymemError
from raymem.store.safe_files import check_output_path, write_atomic
from raymem.config.experiment import PRESETS, ExperimentConfig, with_overrides


def features_config(dataset_name: str, *, model: str = "resnet50", epochs: int | None = None,
                    batch_size: int | None = None, base_lr: float | None = None, seed: int = 0) -> ExperimentConfig:
    """Returns the recipe that trains the feature network: the preset of ``dataset_name`` (the one with
    ``model`` if several), with ``model`` and any given epochs / batch size / base LR put in.

    Raises RaymemError when no preset trains on ``dataset_name``.
    """
    image_presets = [preset for preset in PRESETS.values() if preset.model != "linear"]
    matching = [preset for preset in image_presets if preset.dataset == dataset_name]
    if not matching:
        known = sorted({preset.dataset for preset in image_presets})
        raise RaymemError(f"No preset trains on data set {dataset_name!r}, so it has no recipe for features; "
                          f"use one of {', '.join(known)}.")
    base = next((preset for preset in matching if preset.model == model), matching[0])
    overrides = {"model": model, "seed": seed, "flip_labels": 0.0, "epochs": epochs, "batch_size": batch_size,
                 "base_lr": base_lr}
    return with_overrides(base, overrides, f"raymem features {dataset_name}")


def _default_strategy():
    """Returns a MirroredStrategy over this machine's GPUs when it has several, else None."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy() if len(tf.config.list_physical_devices("GPU")) > 1 else None


def compute_features(
    dataset_name: str,
    *,
    model: str = "resnet50",
    epochs: int | None = None,
    batch_size: int | None = None,
    base_lr: float | None = None,
    data_dir: str | None = None,
    out: str,
    seed: int = 0,
) -> dict:
    """Train one ``model`` on all of ``dataset_name``'s training set and write its penultimate-layer
    features of every training and test example (index order, float32) with the labels to ``out``.

    epochs / batch_size / base_lr default to the data set's preset recipe (``features_config``).
    Returns {"out", "dataset", "model", "preset", "epochs", "x_train_shape", "x_test_shape",
    "feature_dim", "train_accuracy", "test_accuracy", "train_seconds", "seconds"}. Raises
    RaymemError (before any training) for an unknown data set or model, or an unwritable ``out``.
    """
    from raymem.data.datasets import load_dataset
    from raymem.training.keras_backend import keras
    from raymem.training.models import feature_extractor
    from raymem.training.fit import predict_outputs, release_session, split_inputs, train_model

    started = time.perf_counter()
    path = check_output_path(out, "--out")
    config = features_config(dataset_name, model=model, epochs=epochs, batch_size=batch_size,
                             base_lr=base_lr, seed=seed)
    data = load_dataset(dataset_name, data_dir)
    everything = np.ones(len(data.y_train), dtype=bool)
    trained, fit_metadata = train_model(config, data, everything, seed, strategy=_default_strategy())
    features_and_logits = keras.Model(trained.input, [feature_extractor(trained).output, trained.output])
    arrays, accuracy = {}, {}
    for split, labels in (("train", data.y_train), ("test", data.y_test)):
        features, logits = predict_outputs(features_and_logits, split_inputs(data, split))
        arrays[f"x_{split}"] = np.asarray(features, dtype=np.float32)
        arrays[f"y_{split}"] = np.asarray(labels, dtype=np.int64)
        accuracy[split] = float(np.mean(np.argmax(logits, axis=-1) == labels))
    write_atomic(path, lambda buffer: np.savez(buffer, **arrays), "--out")
    release_session()
    return {
        "out": path,
        "dataset": dataset_name,
        "model": config.model,
        "preset": config.preset,
        "epochs": config.recipe.epochs,
        "x_train_shape": list(arrays["x_train"].shape),
        "x_test_shape": list(arrays["x_test"].shape),
        "feature_dim": int(arrays["x_train"].shape[1]),
        "train_accuracy": accuracy["train"],
        "test_accuracy": accuracy["test"],
        "train_seconds": fit_metadata["train_seconds"],
        "seconds": time.perf_counter() - started,
    }
