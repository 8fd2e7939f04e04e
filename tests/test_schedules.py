"""Learning-rate schedules against the paper's stated values and an independent reference."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import math  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from raymem.errors import RaymemError  # noqa: E402
from raymem.training.schedules import (  # noqa: E402
    SCHEDULE_KINDS,
    constant,
    make_optimizer,
    make_schedule,
    warmup_linear_decay,
    warmup_piecewise,
)

IMAGENET_STEPS_PER_EPOCH = math.ceil(0.7 * 1_281_167 / 896)  # 70% subsets, batch 896
CIFAR_STEPS_PER_EPOCH = math.ceil(0.7 * 50_000 / 512)  # 70% subsets, batch 512


def reference_imagenet_lr(epoch: float) -> float:
    """The paper's ImageNet schedule read literally: 0 -> 0.7 linearly over 15 epochs, /10 at 30, 60, 90."""
    lr = 0.7 * min(epoch / 15.0, 1.0)
    for boundary in (30, 60, 90):
        if epoch >= boundary:
            lr /= 10.0
    return lr


def reference_warmup_linear_decay(step: float, base_lr: float, total_steps: int, fraction: float) -> float:
    """Piecewise-linear interpolation through (0, 0), (fraction * total, base), (total, 0), then 0."""
    return float(np.interp(step, [0.0, fraction * total_steps, total_steps], [0.0, base_lr, 0.0], right=0.0))


def test_imagenet_schedule_has_the_papers_values_at_named_epochs():
    spe = IMAGENET_STEPS_PER_EPOCH
    schedule = make_schedule("warmup_piecewise", 0.7, epochs=100, steps_per_epoch=spe,
                             warmup_epochs=15, decay_epochs=[30, 60, 90], decay_factor=10)
    expected = {0: 0.0, 7.5: 0.35, 15: 0.7, 20: 0.7, 29.9: 0.7, 30: 0.07, 45: 0.07,
                60: 0.007, 89: 0.007, 90: 0.0007, 100: 0.0007}
    for epoch, lr in expected.items():
        assert schedule.value_at(round(epoch * spe)) == pytest.approx(lr, rel=1e-4, abs=1e-7), epoch


def test_imagenet_schedule_matches_reference_at_every_sampled_step():
    spe = 37
    schedule = warmup_piecewise(0.7, steps_per_epoch=spe, warmup_epochs=15, decay_epochs=(30, 60, 90),
                                decay_factor=10)
    for step in range(0, 100 * spe + 1, 7):
        assert schedule.value_at(step) == pytest.approx(reference_imagenet_lr(step / spe), rel=1e-5, abs=1e-8)


def test_make_schedule_defaults_are_the_papers_imagenet_settings():
    explicit = make_schedule("warmup_piecewise", 0.7, 100, 50, warmup_epochs=15, decay_epochs=[30, 60, 90],
                             decay_factor=10)
    default = make_schedule("warmup_piecewise", 0.7, 100, 50)
    assert default.get_config() == explicit.get_config()


def test_cifar_schedule_rises_to_its_peak_at_15_percent_and_reaches_zero_at_the_end():
    epochs, spe = 160, CIFAR_STEPS_PER_EPOCH
    total = epochs * spe
    schedule = make_schedule("warmup_linear_decay", 0.4, epochs=epochs, steps_per_epoch=spe, warmup_fraction=0.15)
    values = np.array([schedule.value_at(step) for step in range(0, total + 1, 3)])
    steps = np.arange(0, total + 1, 3)
    peak_step = 0.15 * total
    assert values[0] == 0.0
    assert schedule.value_at(peak_step) == pytest.approx(0.4, rel=1e-5)
    assert values.max() == pytest.approx(0.4, rel=1e-3)
    assert np.all(np.diff(values[steps <= peak_step]) > 0)
    assert np.all(np.diff(values[steps >= peak_step]) < 0)
    assert schedule.value_at(total) == pytest.approx(0.0, abs=1e-7)
    assert schedule.value_at(total + 500) == 0.0
    reference = [reference_warmup_linear_decay(step, 0.4, total, 0.15) for step in steps]
    np.testing.assert_allclose(values, reference, rtol=1e-4, atol=1e-6)


def test_mnist_schedule_uses_the_same_shape_with_base_0_1():
    schedule = make_schedule("warmup_linear_decay", 0.1, epochs=30, steps_per_epoch=165)
    total = 30 * 165
    for step in (0, 100, int(0.15 * total), 3000, total - 1, total):
        assert schedule.value_at(step) == pytest.approx(
            reference_warmup_linear_decay(step, 0.1, total, 0.15), rel=1e-4, abs=1e-7)


def test_constant_schedule_is_constant():
    schedule = make_schedule("constant", 0.05, epochs=3, steps_per_epoch=10)
    assert [schedule.value_at(step) for step in (0, 1, 29, 10_000)] == pytest.approx([0.05] * 4)
    assert constant(0.05).get_config() == schedule.get_config()


@pytest.mark.parametrize("schedule", [
    warmup_piecewise(0.7, 13, 15, (30, 60, 90), 10),
    warmup_linear_decay(0.4, 1000, 0.15),
    constant(0.3),
], ids=["warmup_piecewise", "warmup_linear_decay", "constant"])
def test_schedule_in_a_graph_and_after_serialization_agrees_with_python_evaluation(schedule):
    step_variable = tf.Variable(0, dtype=tf.int64)
    graph_value = tf.function(lambda: schedule(step_variable))
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    for step in (0, 1, 97, 150, 390, 500, 999, 1300, 2000):
        step_variable.assign(step)
        python_value = schedule.value_at(step)
        assert float(graph_value()) == pytest.approx(python_value, rel=1e-6, abs=1e-9)
        assert restored.value_at(step) == pytest.approx(python_value, rel=1e-6, abs=1e-9)


def test_optimizer_is_momentum_sgd_following_the_schedule():
    """Keras SGD updates agree with a numpy simulation of heavy-ball momentum at the scheduled rates."""
    schedule = warmup_linear_decay(0.4, total_steps=20, warmup_fraction=0.15)
    optimizer = make_optimizer(schedule)
    gradients = np.random.default_rng(0).normal(size=(20, 3)).astype("float32")
    weight = tf.Variable(np.zeros(3, dtype="float32"))
    expected_weight, velocity = np.zeros(3), np.zeros(3)
    for step, gradient in enumerate(gradients):
        lr = reference_warmup_linear_decay(step, 0.4, 20, 0.15)
        velocity = 0.9 * velocity - lr * gradient
        expected_weight = expected_weight + velocity
        optimizer.apply_gradients([(tf.constant(gradient), weight)])
    np.testing.assert_allclose(weight.numpy(), expected_weight, rtol=1e-5, atol=1e-6)
    assert int(optimizer.iterations) == 20
    assert make_optimizer(constant(0.1), momentum=0.5).get_config()["momentum"] == 0.5


def test_unknown_kind_and_options_raise_raymem_error():
    with pytest.raises(RaymemError, match="cosine"):
        make_schedule("cosine", 0.1, 10, 10)
    with pytest.raises(RaymemError, match="warmup_epochs"):
        make_schedule("warmup_linear_decay", 0.1, 10, 10, warmup_epochs=5)
    with pytest.raises(RaymemError):
        make_schedule("constant", 0.1, 0, 10)
    with pytest.raises(RaymemError):
        make_schedule("constant", -0.1, 10, 10)
    with pytest.raises(RaymemError):
        make_schedule("warmup_linear_decay", 0.1, 10, 10, warmup_fraction=1.0)
    with pytest.raises(RaymemError):
        make_schedule("warmup_piecewise", 0.1, 10, 10, decay_epochs=[60, 30])
    assert set(SCHEDULE_KINDS) == {"warmup_piecewise", "warmup_linear_decay", "constant"}
