"""The mnist-fast and cifar100-fast presets: their dry runs show the FLOPs and the honest "unmeasured" GPU-hour
line, cifar100-fast costs at most 1/50 of cifar100, and each trains a few steps on synthetic data of its shape,
unpacked and packed."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from typer.testing import CliRunner

from raymem.cli import app
from raymem.config.experiment import PRESETS, resolve_config

#: preset -> (its image shape, classes) and the paper preset its FLOPs are compared with
FAST = {"mnist-fast": ((28, 28, 1), 10, "mnist"), "cifar100-fast": ((32, 32, 3), 100, "cifar100")}


@pytest.mark.parametrize("name", sorted(FAST))
def test_the_dry_run_shows_the_flops_and_that_gpu_hours_are_unmeasured(name, tmp_path):
    shown = CliRunner().invoke(app, ["run", name, "--dry-run", "--storage", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "train FLOPs" in text and "FLOPs per model (3 x" in text
    assert "GPU-hours unmeasured" in text
    assert f"of preset {FAST[name][2]}'s" in text
    assert list(tmp_path.iterdir()) == []


def test_cifar100_fast_costs_at_most_a_fiftieth_of_cifar100():
    from raymem.driver.run import plan

    fast, paper = plan(PRESETS["cifar100-fast"]), plan(PRESETS["cifar100"])
    assert paper["train_flops_per_model"] / fast["train_flops_per_model"] >= 50   # counted: 51x at 34 epochs
    assert fast["estimated_gpu_hours"] is None


def test_the_full_data_accuracy_command_trains_with_each_fast_recipe():
    from raymem.training.features import features_config

    assert features_config("cifar100", model="airbench94").preset == "cifar100-fast"
    assert features_config("mnist", model="small_cnn").recipe == PRESETS["mnist-fast"].recipe


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAST))
def test_the_fast_recipe_trains_and_packs_on_synthetic_data_of_its_shape(name):
    from raymem.data.datasets import ArrayDataset
    from raymem.estimator.subsets import subset_mask
    from raymem.training.fit import train_and_predict
    from raymem.training.packing import train_and_predict_pack

    shape, classes, _ = FAST[name]
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(80, *shape)).astype(np.float32)
    y = rng.integers(0, classes, 80)
    data = ArrayDataset(f"synthetic-{name}", x[:64], y[:64], x[64:], y[64:], classes)
    config = resolve_config(name, {"epochs": 1, "batch_size": 16})
    masks = np.stack([subset_mask(0, j, 64, config.subset_size(64)) for j in range(2)])  # a pack: equal sizes
    train_pred, test_pred, metadata = train_and_predict(config, data, masks[0], 0)
    assert train_pred.shape == (64,) and test_pred.shape == (16,) and np.isfinite(metadata["final_loss"])
    packed = train_and_predict_pack(config, data, masks, [0, 1])
    assert len(packed) == 2 and all(p[0].shape == (64,) and p[1].shape == (16,) for p in packed)
