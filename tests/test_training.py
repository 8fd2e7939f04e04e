"""Tests for raymem.training.fit: streaming (ImageNet, mocked) trials and the shared training pieces."""

import collections
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from raymem.estimator.subsets import subset_mask
from raymem.training import fit
from raymem.config.experiment import resolve_config
from raymem.data.datasets import ArrayDataset, StreamingDataset, load_dataset

pytestmark = pytest.mark.slow  # trains Keras models (mocked ImageNet through tfds)

N_MOCK = 24          # mocked ImageNet examples per split
IMAGE_SIZE = 16      # StreamingDataset.image_size override: tiny images keep the CPU work small
SUBSET = 17          # examples in the trial's subset
LABEL_OFFSET = 100   # run label of example i is LABEL_OFFSET + i: a label says which example it is


@pytest.fixture
def mocked_imagenet(tfds):
    """Yields the mocked imagenet2012 as a StreamingDataset of IMAGE_SIZE images whose y_train are run
    labels that name their example (LABEL_OFFSET + index) and differ from the labels in the files."""
    with tfds.testing.mock_data(num_examples=N_MOCK):
        data = load_dataset("imagenet2012")
        assert isinstance(data, StreamingDataset)
        run_labels = np.arange(N_MOCK, dtype=np.int64) + LABEL_OFFSET
        assert np.any(run_labels != data.y_train)  # the test would not see which labels were used otherwise
        yield dataclasses.replace(data, image_size=IMAGE_SIZE, y_train=run_labels)


def _imagenet_config(**overrides):
    """The imagenet preset shrunk to a CPU test: small_cnn, 1 epoch, batch 5."""
    return resolve_config("imagenet", {"model": "small_cnn", "epochs": 1, "batch_size": 5, **overrides})


def _images_in_index_order(tfds, data, split):
    """The images of a split through the data set's own eval pipeline, one by one, stacked."""
    return np.stack([image for image, _ in tfds.as_numpy(data.eval_dataset(split))])


def _mask():
    return subset_mask(7, 3, N_MOCK, SUBSET)


def test_streaming_pipeline_reads_only_the_subset_with_the_run_labels(tfds, mocked_imagenet):
    data, mask = mocked_imagenet, _mask()
    config = _imagenet_config(augment_pad=0, augment_flip=False)
    pipeline = fit.train_pipeline(config, data, mask, seed=3)
    epochs = [list(tfds.as_numpy(pipeline)) for _ in range(2)]
    images = _images_in_index_order(tfds, data, "train")
    orders = []
    for batches in epochs:
        # the GLOBAL batch size, the last batch holding the rest
        assert [len(labels) for _, labels in batches] == [5, 5, 5, 2]
        labels = np.concatenate([labels for _, labels in batches])
        seen = labels - LABEL_OFFSET  # which example each label belongs to
        np.testing.assert_array_equal(np.sort(seen), np.flatnonzero(mask))  # each subset example once, no other
        # each image is the one of the example whose run label came with it
        np.testing.assert_array_equal(np.concatenate([image for image, _ in batches]), images[seen])
        orders.append(seen)
    assert not np.array_equal(orders[0], np.flatnonzero(mask))  # shuffled,
    assert not np.array_equal(orders[0], orders[1])  # and reshuffled every epoch


def test_streaming_pipeline_augments_with_pad_crop_and_flip(tfds, mocked_imagenet):
    data, mask = mocked_imagenet, _mask()
    config = _imagenet_config()
    assert config.recipe.augment_pad == 32 and config.recipe.augment_flip  # the paper's ImageNet augmentation
    images = _images_in_index_order(tfds, data, "train")
    batches = list(tfds.as_numpy(fit.train_pipeline(config, data, mask, seed=3)))
    augmented = np.concatenate([image for image, _ in batches])
    seen = np.concatenate([labels for _, labels in batches]) - LABEL_OFFSET
    assert augmented.shape == (SUBSET, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(np.sort(seen), np.flatnonzero(mask))
    changed = [not np.array_equal(augmented[k], images[i]) for k, i in enumerate(seen)]
    assert sum(changed) > SUBSET // 2  # a 32 px pad on a 16 px image almost always moves it


def test_streaming_trial_trains_on_the_subset_and_predicts_in_index_order(tf, tfds, mocked_imagenet, monkeypatch):
    data, mask = mocked_imagenet, _mask()
    config = _imagenet_config(epochs=2)
    seen_labels = []

    real_pipeline = fit.train_pipeline

    def recording_pipeline(*args, **kwargs):
        def record(labels):
            seen_labels.extend(labels.numpy().tolist())
            return labels

        def recorded(images, labels):
            passed = tf.py_function(record, [labels], labels.dtype)
            passed.set_shape(labels.shape)
            return images, passed

        return real_pipeline(*args, **kwargs).map(recorded)

    built = []
    from raymem.training import models

    real_build = models.build_model

    def capturing_build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(fit, "train_pipeline", recording_pipeline)
    monkeypatch.setattr(models, "build_model", capturing_build)
    train_pred, test_pred, metadata = fit.train_and_predict(config, data, mask, seed=11)

    # the model saw every subset example once per epoch, with its run label, and nothing else
    counts = collections.Counter(np.asarray(seen_labels) - LABEL_OFFSET)
    assert counts == {int(i): 2 for i in np.flatnonzero(mask)}
    assert train_pred.shape == (N_MOCK,) and test_pred.shape == (data.n_test,)
    assert train_pred.dtype == np.int32 and test_pred.dtype == np.int32
    # predictions are those of the trained model on the examples in index order
    (model,) = built
    for split, predicted in (("train", train_pred), ("test", test_pred)):
        expected = np.argmax(model.predict(_images_in_index_order(tfds, data, split), verbose=0), axis=-1)
        np.testing.assert_array_equal(predicted, expected)
    assert metadata["streaming"] is True and metadata["global_batch"] == 5
    assert metadata["subset_accuracy"] == pytest.approx(np.mean(train_pred[mask] == data.y_train[mask]))
    assert metadata["test_accuracy"] == pytest.approx(np.mean(test_pred == data.y_test))


def test_streaming_predictions_come_in_index_order(tf, tfds, mocked_imagenet):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    for split in ("train", "test"):
        expected = model.predict(_images_in_index_order(tfds, mocked_imagenet, split), verbose=0)
        assert len(np.unique(expected[:, 0])) == N_MOCK  # every example has its own output
        streamed = fit.predict_outputs(model, fit.split_inputs(mocked_imagenet, split))
        np.testing.assert_allclose(streamed, expected, rtol=1e-5, atol=1e-6)


def test_trial_record_is_scored_against_the_run_labels(mocked_imagenet, monkeypatch):
    from raymem.driver import trial

    data = mocked_imagenet
    file_labels = load_dataset("imagenet2012").y_train  # still mocked: the labels stored in the files
    flipped = np.zeros(N_MOCK, dtype=bool)
    flipped[[2, 5, 11]] = True
    run_labels = np.where(flipped, (file_labels + 1) % data.num_classes, file_labels)
    data = dataclasses.replace(data, y_train=run_labels)

    def predicts_the_file_labels(config, data, mask, seed, **_options):  # strategy, checkpoints, ...: unused
        return file_labels.astype(np.int32), data.y_test.astype(np.int32), {}

    monkeypatch.setattr(fit, "train_and_predict", predicts_the_file_labels)
    monkeypatch.setattr(trial, "_placement", lambda: {})
    monkeypatch.setattr(fit, "limit_tf_threads", lambda num_cpus: None)
    run = {"run_id": "r", "seed": 7, "n_train": N_MOCK, "n_test": data.n_test, "subset_size": SUBSET}
    record = trial.build_record(_imagenet_config(), run, data, trial_id=3, attempt=1)
    np.testing.assert_array_equal(record.train_correct, ~flipped)  # wrong exactly where the run relabelled
    np.testing.assert_array_equal(record.mask, _mask())
    assert record.test_correct.all()


def test_array_pipeline_reads_only_the_subset():
    rng = np.random.default_rng(0)
    n = 40
    x = rng.random((n, 3), dtype=np.float32)
    data = ArrayDataset("tiny", x, np.arange(n, dtype=np.int64) % 4, x[:5], np.arange(5, dtype=np.int64) % 4, 4)
    mask = subset_mask(1, 2, n, 28)
    config = resolve_config("digits", {"batch_size": 8})
    batches = list(fit.train_pipeline(config, data, mask, seed=1).as_numpy_iterator())
    assert [len(labels) for _, labels in batches] == [8, 8, 8, 4]
    inputs = np.concatenate([features for features, _ in batches])
    rows = [int(np.flatnonzero((x == row).all(axis=1))[0]) for row in inputs]
    np.testing.assert_array_equal(np.sort(rows), np.flatnonzero(mask))
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in batches]), data.y_train[rows])


@pytest.mark.parametrize("setting, gpu, expected", [
    ("auto", False, False), ("auto", True, True), ("on", False, True), ("off", True, False),
])
def test_accelerator_settings_follow_auto_on_off(monkeypatch, setting, gpu, expected):
    monkeypatch.setattr(fit, "_gpus_present", lambda: gpu)
    config = resolve_config("digits", {"mixed_precision": setting, "xla": setting})
    assert fit.accelerator_settings(config) == {"mixed_precision": expected, "xla": expected}


def test_mixed_precision_policy_is_set_for_every_model():
    import keras

    rng = np.random.default_rng(0)
    x = rng.random((20, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    data = ArrayDataset("tiny", x, y, x[:6], y[:6], 2)
    mask = np.ones(20, dtype=bool)
    base = {"model": "linear", "epochs": 1, "batch_size": 10, "xla": "off"}
    try:
        on, _ = fit.train_model(resolve_config("digits", {**base, "mixed_precision": "on"}), data, mask, 0)
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        off, _ = fit.train_model(resolve_config("digits", {**base, "mixed_precision": "off"}), data, mask, 0)
        assert keras.mixed_precision.global_policy().name == "float32"  # not left over from the previous model
        assert on.get_layer("logits").compute_dtype == "float16" and off.get_layer("logits").compute_dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
