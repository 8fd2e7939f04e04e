"""Tests for raymem.training.features: penultimate-layer features that a linear model trains on."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from raymem.errors import RaymemError
from raymem.estimator.subsets import subset_mask
from raymem.training import features
from raymem.config.experiment import PRESETS, resolve_config
from raymem.data.datasets import load_dataset


@pytest.mark.slow
def test_digits_features_load_as_npz_and_train_a_linear_model(tmp_path):
    from raymem.training.models import PENULTIMATE, build_model
    from raymem.training.fit import train_and_predict

    out = tmp_path / "digits-features.npz"
    summary = features.compute_features("digits", model="small_cnn", epochs=2, out=str(out), seed=0)
    assert sorted(os.listdir(tmp_path)) == ["digits-features.npz"]  # no temp file left behind

    digits = load_dataset("digits")
    width = build_model("small_cnn", digits.input_shape, digits.num_classes).get_layer(PENULTIMATE).output.shape[-1]
    data = load_dataset(f"npz:{out}")
    assert data.x_train.shape == (digits.n_train, width) and data.x_test.shape == (digits.n_test, width)
    np.testing.assert_array_equal(data.y_train, digits.y_train)
    np.testing.assert_array_equal(data.y_test, digits.y_test)
    assert summary["x_train_shape"] == [digits.n_train, width] and summary["feature_dim"] == width
    assert summary["preset"] == "digits" and summary["epochs"] == 2
    assert summary["test_accuracy"] > 0.5  # the feature network itself learned something

    # the paper's linear-model recipe on the features, trained on a 70% subset like a trial
    config = resolve_config("cifar100-linear", {"dataset": f"npz:{out}"})
    mask = subset_mask(0, 0, data.n_train, config.subset_size(data.n_train))
    _, test_pred, _ = train_and_predict(config, data, mask, seed=1)
    chance = np.max(np.bincount(data.y_test)) / data.n_test
    assert np.mean(test_pred == data.y_test) > max(0.8, 5 * chance)


def test_features_config_uses_the_preset_recipe_of_the_data_set():
    config = features.features_config("cifar100")
    recipe = PRESETS["cifar100"]
    assert (config.model, config.recipe.epochs, config.recipe.batch_size, config.recipe.base_lr,
            config.recipe.augment_pad) == \
        ("resnet50", recipe.recipe.epochs, recipe.recipe.batch_size, recipe.recipe.base_lr, recipe.recipe.augment_pad)
    assert features.features_config("cifar100", model="densenet100").recipe.batch_size == \
        PRESETS["cifar100-densenet100"].recipe.batch_size  # the recipe of the preset with that model
    overridden = features.features_config("imagenet2012", epochs=3, batch_size=64, base_lr=0.1)
    assert (overridden.recipe.epochs, overridden.recipe.batch_size, overridden.recipe.base_lr) == (3, 64, 0.1)
    assert overridden.recipe.schedule == PRESETS["imagenet"].recipe.schedule


def test_bad_inputs_fail_before_training(tmp_path):
    with pytest.raises(RaymemError, match="npz:/data/x.npz"):
        features.compute_features("npz:/data/x.npz", out=str(tmp_path / "f.npz"))
    with pytest.raises(RaymemError, match="does not exist"):
        features.compute_features("digits", model="small_cnn", out=str(tmp_path / "missing" / "f.npz"))
    with pytest.raises(RaymemError, match="is a directory"):
        features.compute_features("digits", model="small_cnn", out=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_outputs_are_replaced_atomically(tmp_path, monkeypatch):
    """The one atomic writer (used for features, tables, figures): a failed write leaves the old file whole."""
    from raymem.store.safe_files import write_atomic

    path = str(tmp_path / "f.npz")
    first = {"x_train": np.ones((2, 3), np.float32), "y_train": np.array([0, 1])}
    write_atomic(path, lambda buffer: np.savez(buffer, **first))
    with np.load(path) as stored:
        np.testing.assert_array_equal(stored["x_train"], first["x_train"])

    def fails(buffer):
        buffer.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(path, fails)
    assert os.listdir(tmp_path) == ["f.npz"]  # the old file is intact and no temp file is left
    with np.load(path) as stored:
        np.testing.assert_array_equal(stored["x_train"], first["x_train"])
