"""airbench94's network in Keras: its parameter count and FLOPs against the published widths and figures, its
initialisation, and a short training run of the cifar10-fast preset on synthetic CIFAR-shaped data."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from raymem.config.experiment import PRESETS, resolve_config
from raymem.errors import RaymemError
from raymem.training import flops

#: KellerJordan/cifar10-airbench, airbench94.py: whitening conv 2x2 to 2 x 3 x 2^2 = 24 channels (with bias), groups
#: of widths 64, 256, 256 (two 3x3 convs each, no bias, batch norm without scale), a bias-free linear head.
WHITEN, WIDTHS = 24, (64, 256, 256)


def published_parameter_count(classes: int) -> tuple[int, int]:
    """(trainable, batch-norm statistics) from the published widths alone."""
    trainable = 2 * 2 * 3 * WHITEN + WHITEN                      # whitening conv and its bias
    c_in = WHITEN
    for width in WIDTHS:
        trainable += 3 * 3 * c_in * width + 3 * 3 * width * width  # conv1, conv2
        trainable += 2 * width                                     # the two batch norms' biases
        c_in = width
    trainable += WIDTHS[-1] * classes                              # linear head, no bias
    return trainable, 2 * 2 * sum(WIDTHS)                          # moving mean and variance of 6 norms


@pytest.fixture(scope="module")
def net():
    from raymem.training.keras_backend import keras
    from raymem.training.models import build_model

    keras.utils.set_random_seed(0)
    return build_model("airbench94", (32, 32, 3), 10)


def test_the_parameter_count_is_the_one_derived_from_the_published_widths(net):
    trainable, statistics = published_parameter_count(10)
    assert sum(int(np.prod(w.shape)) for w in net.trainable_weights) == trainable == 1_971_640  # its "1.97M"
    assert sum(int(np.prod(w.shape)) for w in net.non_trainable_weights) == statistics
    assert net.output.shape[1:] == (10,) and net.get_layer("penultimate").output.shape[1:] == (256,)


def test_the_flops_of_airbench94s_own_run_are_its_published_036_pflops(net):
    """All 50,000 training images, 9.9 epochs of 48 full batches of 1024 (drop_last), six test-time views of each
    of the 10,000 test images: within 25% of the published 0.36 PFLOPs."""
    forward = flops.forward_flops(net)
    seen = int(np.ceil(48 * 9.9)) * 1024
    total = flops.train_flops(forward, seen, 1, 10000, eval_passes=6)
    assert abs(total / 0.36e15 - 1) < 0.25, total   # counted: 0.359 PFLOPs


def test_convolutions_start_from_the_identity_in_their_first_input_channels(net):
    kernel = net.get_layer("group2_conv1").get_weights()[0]       # (3, 3, 64, 256)
    np.testing.assert_array_equal(kernel[:, :, :, :64], np.eye(64)[None, None] * np.pad(
        np.ones((1, 1)), 1)[:, :, None, None])
    rest = kernel[:, :, :, 64:]
    bound = 1 / np.sqrt(3 * 3 * 64)                                 # PyTorch's default: +-1/sqrt(fan_in)
    assert np.abs(rest).max() <= bound and np.abs(rest).max() > 0.9 * bound


def test_small_images_are_refused_with_the_model_named():
    from raymem.training.models import build_model

    with pytest.raises(RaymemError, match="model airbench94 needs images of at least 25x25"):
        build_model("airbench94", (8, 8, 1), 10)


def test_cifar10_fast_costs_a_fiftieth_of_the_papers_cifar10():
    from raymem.driver.run import plan

    fast, paper = plan(PRESETS["cifar10-fast"]), plan(PRESETS["cifar10"])
    assert paper["train_flops_per_model"] / fast["train_flops_per_model"] > 45   # counted: 50x
    assert fast["estimated_gpu_hours"] is None and fast["estimate_basis"].startswith("unmeasured")
    assert "of preset cifar10's" in fast["estimate_basis"]


def test_the_full_data_accuracy_command_trains_with_the_fast_recipe():
    from raymem.training.features import features_config

    config = features_config("cifar10", model="airbench94")
    assert config.preset == "cifar10-fast" and config.recipe == PRESETS["cifar10-fast"].recipe


@pytest.mark.slow
def test_the_cifar10_fast_recipe_trains_on_synthetic_cifar_shaped_data():
    from raymem.data.datasets import ArrayDataset
    from raymem.training.fit import train_and_predict

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(96, 32, 32, 3)).astype(np.float32)
    y = (x[:, :16].mean(axis=(1, 2, 3)) > x[:, 16:].mean(axis=(1, 2, 3))).astype(np.int64)   # learnable
    data = ArrayDataset("synthetic-cifar", x[:64], y[:64], x[64:], y[64:], 10)
    config = resolve_config("cifar10-fast", {"epochs": 2, "batch_size": 32})
    mask = np.ones(64, dtype=bool)
    train_pred, test_pred, metadata = train_and_predict(config, data, mask, 0)
    assert train_pred.shape == (64,) and test_pred.shape == (32,) and np.isfinite(metadata["final_loss"])
