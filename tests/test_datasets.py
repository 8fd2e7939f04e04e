"""Tests for raymem.data.datasets: every loader offline (tfds through tfds.testing.mock_data)."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from raymem.errors import RaymemError
from raymem.config.experiment import resolve_config
from raymem.data import datasets
from raymem.data.datasets import ArrayDataset, StreamingDataset, load_dataset


# --- digits ------------------------------------------------------------------------------------


def test_digits_split_is_fixed_and_covers_every_example_once():
    from sklearn.datasets import load_digits

    first, second = load_dataset("digits"), load_dataset("digits")
    assert isinstance(first, ArrayDataset)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, key), getattr(second, key))
    assert first.x_train.shape == (1257, 8, 8, 1) and first.x_test.shape == (540, 8, 8, 1)
    assert first.x_train.dtype == np.float32 and first.y_train.dtype == np.int64
    assert first.num_classes == 10

    # Independent check: the split is RandomState(0)'s permutation, images are pixel values / 16.
    bunch = load_digits()
    order = np.random.RandomState(0).permutation(len(bunch.target))
    train, test = np.sort(order[:1257]), np.sort(order[1257:])
    np.testing.assert_array_equal(first.y_train, bunch.target[train])
    np.testing.assert_array_equal(first.y_test, bunch.target[test])
    np.testing.assert_array_equal(first.x_test[..., 0] * 16, bunch.images[test])
    assert len(np.union1d(train, test)) == len(bunch.target)


def test_digits_and_module_import_do_not_load_tensorflow():
    code = ("import sys, raymem.data.datasets as d; d.load_dataset('digits'); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- fingerprint -------------------------------------------------------------------------------


def _tiny_dataset(y_train, y_test):
    return ArrayDataset("tiny", np.zeros((len(y_train), 3), np.float32), np.asarray(y_train, np.int64),
                        np.zeros((len(y_test), 3), np.float32), np.asarray(y_test, np.int64), num_classes=4)


def test_fingerprint_fields_and_label_hash():
    data = _tiny_dataset([0, 1, 2, 3, 1], [3, 2])
    fingerprint = data.fingerprint()
    expected_hash = hashlib.sha256(np.array([0, 1, 2, 3, 1, 3, 2], dtype="<i8").tobytes()).hexdigest()
    assert fingerprint == {"name": "tiny", "n_train": 5, "n_test": 2, "num_classes": 4,
                           "input_shape": [3], "labels_sha256": expected_hash}
    assert json.loads(json.dumps(fingerprint)) == fingerprint

    same = _tiny_dataset([0, 1, 2, 3, 1], [3, 2])
    assert same.fingerprint() == fingerprint
    changed = dataclasses.replace(data, y_test=np.array([3, 1], np.int64))
    assert changed.fingerprint()["labels_sha256"] != fingerprint["labels_sha256"]
    # Moving an example from train to test changes the fingerprint even if the labels read the same.
    moved = _tiny_dataset([0, 1, 2, 3], [1, 3, 2])
    assert moved.fingerprint() != fingerprint


# --- tfds array data sets (mocked) -------------------------------------------------------------


@pytest.mark.parametrize("name, image_shape, num_classes", [
    ("mnist", (28, 28, 1), 10),
    ("cifar10", (32, 32, 3), 10),
    ("cifar100", (32, 32, 3), 100),
])
def test_tfds_array_datasets_through_mock(tfds, name, image_shape, num_classes):
    n = 6
    with tfds.testing.mock_data(num_examples=n):
        first = load_dataset(name)
        second = load_dataset(name)
        # Independent read of the same mocked split: raw uint8 images and labels in tfds order.
        raw = next(iter(tfds.as_numpy(tfds.builder(name).as_dataset(split="train", batch_size=n))))
    assert isinstance(first, ArrayDataset)
    assert first.x_train.shape == (n, *image_shape) and first.x_test.shape == (n, *image_shape)
    assert first.x_train.dtype == np.float32 and first.y_train.dtype == np.int64
    assert first.num_classes == num_classes
    assert 0.0 <= first.x_train.min() and first.x_train.max() <= 1.0
    np.testing.assert_allclose(first.x_train, raw["image"] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(first.y_train, raw["label"])
    assert ((0 <= first.y_train) & (first.y_train < num_classes)).all()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, key), getattr(second, key))
    assert first.fingerprint() == second.fingerprint()
    assert first.fingerprint()["input_shape"] == list(image_shape)


# --- imagenet streaming (mocked) ---------------------------------------------------------------


def test_any_tfds_image_classification_builder_through_mock(tfds):
    n = 200  # enough that every one of the 10 classes occurs in the mocked training split
    with tfds.testing.mock_data(num_examples=n):
        data = load_dataset("tfds:fashion_mnist")
        raw = next(iter(tfds.as_numpy(tfds.builder("fashion_mnist").as_dataset(split="test", batch_size=n))))
    assert isinstance(data, ArrayDataset) and data.name == "tfds:fashion_mnist"
    assert data.x_train.shape == (n, 28, 28, 1) and data.num_classes == 10
    np.testing.assert_allclose(data.x_test, raw["image"] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(data.y_test, raw["label"])
    assert data.class_names == tuple(tfds.builder("fashion_mnist").info.features["label"].names)
    assert data.class_names[:2] == ("T-shirt/top", "Trouser")


def test_tfds_splits_are_the_ones_the_config_names(tfds, monkeypatch):
    requested = []

    def recording(self, *args, split=None, **kwargs):
        requested.append(split)
        return mocked(self, *args, split=split, **kwargs)

    config = resolve_config("digits", {"dataset": "tfds:fashion_mnist", "train_split": "train[:90%]",
                                       "test_split": "train[90%:]"})
    with tfds.testing.mock_data(num_examples=200), monkeypatch.context() as patch:  # undone before the mock
        mocked = tfds.core.DatasetBuilder.as_dataset  # mock_data's own, which the recording calls
        patch.setattr(tfds.core.DatasetBuilder, "as_dataset", recording)
        load_dataset(config.dataset, **config.data_options)
    assert requested == ["train[:90%]", "train[90%:]"]
    for overrides, match in (({"train_split": "train[:5]"}, "not one; leave them at train and test"),
                             ({"dataset": "tfds:fashion_mnist", "test_split": "train"}, "both 'train'")):
        with pytest.raises(RaymemError, match=match):
            resolve_config("digits", overrides)


@pytest.mark.parametrize("name, match", [
    ("tfds:no_such_builder_here", "has no builder 'no_such_builder_here'.*tfds.list_builders"),
    ("tfds:glue:cola", "not an image and a class label"),
])
def test_tfds_builders_that_cannot_be_used_are_named(tfds, name, match):
    with pytest.raises(RaymemError, match=match):
        load_dataset(name)


def test_an_unprepared_tfds_builder_gives_the_line_that_prepares_it(tfds, tmp_path):
    with pytest.raises(RaymemError, match=r"not prepared in .*download_and_prepare\(\)"):
        load_dataset("tfds:fashion_mnist", data_dir=str(tmp_path))


def test_imagenet_streams_selected_examples_by_index(tfds):
    n = 10
    with tfds.testing.mock_data(num_examples=n):
        data = load_dataset("imagenet2012")
        assert isinstance(data, StreamingDataset)
        assert (data.n_train, data.n_test, data.num_classes) == (n, n, 1000)
        assert data.y_train.dtype == np.int64 and len(data.y_train) == n
        assert data.fingerprint()["input_shape"] == [224, 224, 3]

        everything = list(tfds.as_numpy(data.eval_dataset("train")))
        images = np.stack([image for image, _ in everything])
        np.testing.assert_array_equal([label for _, label in everything], data.y_train)
        assert images.shape == (n, 224, 224, 3) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5

        indices = np.array([1, 4, 5, 8])
        chosen = list(tfds.as_numpy(data.train_dataset(indices)))
        np.testing.assert_array_equal([label for _, label in chosen], data.y_train[indices])
        np.testing.assert_array_equal(np.stack([image for image, _ in chosen]), images[indices])

        shuffled = list(tfds.as_numpy(data.train_dataset(indices, shuffle_seed=3, batch_size=3)))
        assert [len(labels) for _, labels in shuffled] == [3, 1]
        shuffled_labels = np.concatenate([labels for _, labels in shuffled])
        np.testing.assert_array_equal(np.sort(shuffled_labels), np.sort(data.y_train[indices]))

        test_labels = np.concatenate([labels for _, labels in tfds.as_numpy(data.eval_dataset("test", batch_size=4))])
        np.testing.assert_array_equal(test_labels, data.y_test)

        assert len(list(data.train_dataset(None))) == n
        with pytest.raises(ValueError):
            data.train_dataset(np.array([0, 0]))
        with pytest.raises(ValueError):
            data.train_dataset(np.array([n]))


# --- missing tfds data and unknown names -------------------------------------------------------


def test_missing_tfds_data_dir_names_the_path(tfds, tmp_path):
    missing = tmp_path / "no-data-here"
    with pytest.raises(RaymemError) as caught:
        load_dataset("cifar100", data_dir=str(missing))
    assert str(missing) in str(caught.value) and "download_and_prepare" in str(caught.value)
    assert not missing.exists()  # nothing was downloaded or created


def test_missing_imagenet_through_environment_names_the_path(tfds, tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    assert datasets.resolve_data_dir(None) == str(tmp_path)
    assert datasets.resolve_data_dir("/elsewhere") == "/elsewhere"
    with pytest.raises(RaymemError) as caught:
        load_dataset("imagenet2012")
    assert str(tmp_path) in str(caught.value) and "downloads/manual" in str(caught.value)


def test_unknown_name_lists_known_names():
    with pytest.raises(RaymemError) as caught:
        load_dataset("cifar1000")
    for name in datasets.DATASET_NAMES:
        assert name in str(caught.value)


# --- npz ---------------------------------------------------------------------------------------


def _arrays(rng, x_train_shape=(5, 4, 4, 3), n_test=3):
    return {
        "x_train": rng.integers(0, 256, size=x_train_shape, dtype=np.uint8),
        "y_train": np.resize(np.array([0, 1, 4, 2], dtype=np.int32), x_train_shape[0]),  # every test class trained on
        "x_test": rng.integers(0, 256, size=(n_test, *x_train_shape[1:]), dtype=np.uint8),
        "y_test": np.array([0, 1, 4][:n_test], dtype=np.int32),
    }


def test_npz_uint8_images_are_scaled(tmp_path):
    arrays = _arrays(np.random.default_rng(1))
    path = tmp_path / "set.npz"
    np.savez(path, **arrays)
    data = load_dataset(f"npz:{path}")
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    np.testing.assert_allclose(data.x_train, arrays["x_train"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(data.y_test, arrays["y_test"])
    assert data.num_classes == 5  # largest label 4
    assert data.name == f"npz:{path}"


def test_npz_float_features_and_grayscale(tmp_path):
    rng = np.random.default_rng(2)
    features = {"x_train": rng.normal(size=(4, 7)), "y_train": np.arange(4), "x_test": rng.normal(size=(2, 7)),
                "y_test": np.array([1, 0])}
    np.savez(tmp_path / "f.npz", **features)
    data = load_dataset(f"npz:{tmp_path / 'f.npz'}")
    np.testing.assert_allclose(data.x_train, features["x_train"].astype(np.float32))
    assert data.input_shape == (7,)

    gray = _arrays(rng, x_train_shape=(4, 5, 6))
    np.savez(tmp_path / "g.npz", **gray)
    assert load_dataset(f"npz:{tmp_path / 'g.npz'}").x_train.shape == (4, 5, 6, 1)


def _bad_npz(tmp_path, name, change):
    arrays = _arrays(np.random.default_rng(3))
    change(arrays)
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case, change, key", [
    ("missing_key", lambda a: a.pop("y_test"), "y_test"),
    ("pickled_objects", lambda a: a.update(y_train=np.array([1, "a", None, 2, 3], dtype=object)), "y_train"),
    ("int_images", lambda a: a.update(x_test=a["x_test"].astype(np.int64)), "x_test"),
    ("length_mismatch", lambda a: a.update(y_train=a["y_train"][:-1]), "y_train"),
    ("negative_label", lambda a: a.update(y_test=np.array([0, -1, 2])), "y_test"),
    ("float_labels", lambda a: a.update(y_test=np.array([0.0, 1.0, 2.0])), "y_test"),
    ("shape_mismatch", lambda a: a.update(x_test=a["x_test"][:, :2]), "x_test"),
    ("nan_inputs", lambda a: a.update(x_train=np.full((5, 2), np.nan), x_test=np.zeros((3, 2))), "x_train"),
])
def test_npz_bad_input_names_file_and_key(tmp_path, case, change, key):
    path = _bad_npz(tmp_path, f"{case}.npz", change)
    with pytest.raises(RaymemError) as caught:
        load_dataset(f"npz:{path}")
    assert str(path) in str(caught.value) and repr(key) in str(caught.value)


def test_npz_missing_or_unreadable_file_names_path(tmp_path):
    missing = tmp_path / "absent.npz"
    with pytest.raises(RaymemError, match="absent.npz"):
        load_dataset(f"npz:{missing}")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not numpy")
    with pytest.raises(RaymemError, match="garbage.npz"):
        load_dataset(f"npz:{garbage}")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(RaymemError, match="single.npy"):
        load_dataset(f"npz:{single}")


# --- parquet -----------------------------------------------------------------------------------


def _png(tf, image):
    return tf.io.encode_png(image).numpy()


def _write_parquet(path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


def test_parquet_images_decode_in_row_order(tf, tmp_path):
    rng = np.random.default_rng(4)
    images = {split: rng.integers(0, 256, size=(n, 6, 5, 3), dtype=np.uint8)
              for split, n in [("train", 4), ("test", 2)]}
    labels = {"train": [2, 0, 3, 1], "test": [1, 3]}
    for split in ("train", "test"):
        _write_parquet(tmp_path / f"{split}.parquet",
                       {"label": labels[split], "image": [_png(tf, image) for image in images[split]]})
    data = load_dataset(f"parquet:{tmp_path}")
    np.testing.assert_allclose(data.x_train, images["train"] / 255.0, atol=1e-7)
    np.testing.assert_allclose(data.x_test, images["test"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(data.y_train, labels["train"])
    assert data.num_classes == 4 and data.y_test.dtype == np.int64


def test_parquet_features(tmp_path):
    import pyarrow as pa

    train = [[0.5, 1.0, -2.0], [1.5, 0.0, 3.0]]
    _write_parquet(tmp_path / "train.parquet", {"label": [0, 1], "features": pa.array(train, pa.list_(pa.float32()))})
    _write_parquet(tmp_path / "test.parquet",
                   {"label": [1], "features": pa.array([[9.0, 8.0, 7.0]], pa.list_(pa.float64()))})
    data = load_dataset(f"parquet:{tmp_path}")
    np.testing.assert_array_equal(data.x_train, np.array(train, np.float32))
    assert data.x_test.shape == (1, 3) and data.num_classes == 2


def _parquet_case(tf, directory, case):
    """Writes a parquet data set into `directory` that is broken as `case` says; returns the file
    whose name the error must carry."""
    import pyarrow as pa

    directory.mkdir()
    good = [_png(tf, np.zeros((4, 4, 1), np.uint8)), _png(tf, np.ones((4, 4, 1), np.uint8))]
    test_columns = {"label": [0, 1], "image": good}
    train_columns = dict(test_columns)
    if case == "missing_test_file":
        _write_parquet(directory / "train.parquet", train_columns)
        return directory / "test.parquet"
    if case == "no_label":
        train_columns.pop("label")
    elif case == "no_inputs":
        train_columns.pop("image")
    elif case == "sizes_differ":
        train_columns["image"] = [good[0], _png(tf, np.zeros((5, 4, 1), np.uint8))]
    elif case == "not_an_image":
        train_columns["image"] = [good[0], b"garbage"]
    elif case == "ragged_features":
        train_columns = {"label": [0, 1], "features": pa.array([[1.0], [1.0, 2.0]])}
    elif case == "string_labels":
        train_columns["label"] = ["cat", "dog"]
    _write_parquet(directory / "train.parquet", train_columns)
    _write_parquet(directory / "test.parquet", test_columns)
    return directory / "train.parquet"


@pytest.mark.parametrize("case", ["missing_test_file", "no_label", "no_inputs", "sizes_differ", "not_an_image",
                                  "ragged_features", "string_labels"])
def test_parquet_bad_input_names_file(tf, tmp_path, case):
    named = _parquet_case(tf, tmp_path / case, case)
    with pytest.raises(RaymemError) as caught:
        load_dataset(f"parquet:{tmp_path / case}")
    assert str(named) in str(caught.value)


def test_parquet_missing_directory_names_path(tmp_path):
    with pytest.raises(RaymemError, match="nowhere"):
        load_dataset(f"parquet:{tmp_path / 'nowhere'}")
