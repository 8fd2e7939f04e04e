"""Training FLOPs per model, counted from the Keras graph: against counts worked out by hand, and in every
preset's dry run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from raymem.cli import app
from raymem.config.experiment import PRESETS, resolve_config
from raymem.training import flops


def test_forward_flops_of_a_hand_built_model_are_the_hand_count():
    from raymem.training.keras_backend import keras, layers

    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 3)(inputs)                                      # valid: 4x4x4
    x = layers.BatchNormalization()(x)                                   # not counted
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)  # 4x4x8
    x = layers.Conv2D(8, 1, groups=2)(x)                                 # 4x4x8, 2 groups of 4 -> 4
    x = layers.Conv2D(4, 3, strides=2, padding="same")(x)                # 2x2x4
    a = layers.Flatten()(x)                                              # 16
    shared = layers.Dense(5)
    logits = layers.Add()([shared(a), shared(layers.Dense(16)(a))])      # the shared Dense runs twice
    model = keras.Model(inputs, logits)
    by_hand = {
        "conv 3x3, 2 -> 4 at 4x4": 2 * 3 * 3 * 2 * 4 * (4 * 4),
        "depthwise 3x3, 4 x 2 at 4x4": 2 * 3 * 3 * 4 * 2 * (4 * 4),
        "grouped 1x1, 8 -> 8 in 2 groups at 4x4": 2 * 1 * 1 * (8 // 2) * 8 * (4 * 4),
        "conv 3x3 stride 2, 8 -> 4 at 2x2": 2 * 3 * 3 * 8 * 4 * (2 * 2),
        "dense 16 -> 16": 2 * 16 * 16,
        "shared dense 16 -> 5, twice": 2 * (2 * 16 * 5),
    }
    assert flops.forward_flops(model) == sum(by_hand.values()) == 8768


def _profiler_flops(tf, model, input_shape) -> int:
    """TensorFlow's own count (its graph profiler) of the convolution and matmul FLOPs of one example."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    traced = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, *input_shape], tf.float32))
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    options["account_type_regexes"] = ["Conv2D", "MatMul", "DepthwiseConv2dNative"]
    graph = convert_variables_to_constants_v2(traced).graph
    return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


@pytest.mark.parametrize("name, shape, classes", [("hand", (6, 6, 2), 5), ("small_cnn", (8, 8, 1), 10),
                                                  ("inception", (8, 8, 1), 10)])
def test_forward_flops_equal_tensorflows_profiler_count(tf, name, shape, classes):
    """An independent count: TensorFlow's graph profiler, on the ops the Keras layers compile to. It sees no
    grouped or depthwise convolution (Keras compiles those to an XLA call on a CPU): the hand count covers them."""
    from raymem.training.keras_backend import keras, layers
    from raymem.training.models import build_model

    if name == "hand":
        inputs = keras.Input(shape)
        x = layers.Conv2D(4, 3, padding="same")(inputs)
        x = layers.Conv2D(8, 3, strides=2, padding="same")(x)
        model = keras.Model(inputs, layers.Dense(classes)(layers.Flatten()(x)))
    else:
        model = build_model(name, shape, classes)
    assert flops.forward_flops(model) == _profiler_flops(tf, model, shape) > 0


def test_the_digits_plan_counts_training_and_predictions():
    plan = flops.plan_flops(resolve_config("digits"))
    # small_cnn on 8x8x1: conv 1 -> 32 and 32 -> 64 at 8x8, dense 1024 -> 128 -> 10
    forward = 2 * 9 * 1 * 32 * 64 + 2 * 9 * 32 * 64 * 64 + 2 * 1024 * 128 + 2 * 128 * 10
    assert plan["forward_flops_per_example"] == forward
    m = resolve_config("digits").subset_size(1257)
    assert plan["train_flops_per_model"] == 3 * forward * m * 30 + forward * (1257 + 540)


def test_an_npz_shape_is_read_from_its_headers(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, x_train=np.zeros((12, 7), np.float32), y_train=np.arange(12) % 3,
             x_test=np.zeros((5, 7), np.float32), y_test=np.arange(5) % 4)
    assert flops.dataset_shape(f"npz:{path}") == ((7,), 4, 12, 5)
    assert flops.dataset_shape(f"npz:{tmp_path / 'missing.npz'}") is None
    plan = flops.plan_flops(resolve_config("digits", {"dataset": f"npz:{tmp_path / 'missing.npz'}",
                                                      "model": "linear"}))
    assert plan["train_flops_per_model"] is None and "unknown" in plan["flops_basis"]


@pytest.mark.slow
def test_every_presets_dry_run_shows_its_training_flops(tmp_path):
    from raymem.driver.run import plan

    plans = {name: plan(config) for name, config in PRESETS.items()}
    counts = {name: p["train_flops_per_model"] for name, p in plans.items()}
    assert all(isinstance(v, int) and v > 0 for v in counts.values()), counts
    # ResNet-50 at 224x224 is ~4.1 G multiply-adds per image (He et al.); at 32x32 with the 3x3 stem ~1.3 G
    assert 7.8e9 < plans["imagenet"]["forward_flops_per_example"] < 8.6e9
    assert 2.4e9 < plans["cifar100"]["forward_flops_per_example"] < 2.8e9
    # a linear model on resnet50's 2,048 features, 100 classes: 35,000 examples x 40 epochs + 60,000 predictions
    assert counts["cifar100-linear"] == 3 * 2 * 2048 * 100 * 35000 * 40 + 2 * 2048 * 100 * 60000
    assert flops.format_flops(counts["cifar100"]) == "43.8 PFLOPs"
    result = CliRunner().invoke(app, ["run", "digits", "--dry-run", "--json", "--storage", str(tmp_path)])
    assert json.loads(result.output)["train_flops_per_model"] == counts["digits"]
    shown = CliRunner().invoke(app, ["run", "digits", "--dry-run", "--storage", str(tmp_path)]).output
    assert "train FLOPs  216 GFLOPs per model (3 x 2,660,864 forward FLOPs x 880 examples" in shown
    assert list(tmp_path.iterdir()) == []
