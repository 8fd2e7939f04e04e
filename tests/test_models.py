"""Models (shapes, stems, parameter counts from the literature, one training step, penultimate
features) and the training-time augmentation (checked against numpy windows)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from raymem.errors import RaymemError  # noqa: E402
from raymem.training.augment import make_augment_fn, random_pad_crop_flip  # noqa: E402
from raymem.training.models import MODEL_NAMES, build_model, feature_extractor  # noqa: E402

pytestmark = pytest.mark.slow  # builds and trains Keras models

# name -> (tiny input shape for a training step, classes, penultimate width known for that model)
TINY_CASES = {
    "resnet50": ((32, 32, 3), 100, 2048),
    "resnet18": ((32, 32, 3), 10, 512),
    "inception": ((28, 28, 1), 10, 176 + 160),  # Zhang et al.: last module is Inception(176, 160)
    "densenet100": ((32, 32, 3), 100, 342),  # DenseNet-BC-100, k=12: 150 + 16 * 12 channels
    "linear": ((16,), 5, 16),
    "small_cnn": ((8, 8, 1), 10, 128),
    "airbench94": ((32, 32, 3), 10, 256),  # its last group's width, 4 x 64
}

_built: dict = {}


def tiny_model(name: str) -> keras.Model:
    """Return the model for TINY_CASES[name], built once per test session."""
    if name not in _built:
        keras.utils.set_random_seed(0)
        shape, classes, _ = TINY_CASES[name]
        _built[name] = build_model(name, shape, classes)
    return _built[name]


def layer_output_shape(model: keras.Model, layer_name: str) -> tuple:
    """Return the output shape of the named layer without the batch dimension."""
    return tuple(model.get_layer(layer_name).output.shape[1:])


def trainable_count(model: keras.Model) -> int:
    """Return the number of trainable scalars."""
    return sum(int(np.prod(variable.shape)) for variable in model.trainable_weights)


def test_every_model_name_is_covered():
    assert set(MODEL_NAMES) == set(TINY_CASES)


@pytest.mark.parametrize("name", list(TINY_CASES))
def test_model_outputs_logits_and_one_training_step_changes_the_weights(name):
    shape, classes, _ = TINY_CASES[name]
    model = tiny_model(name)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, *shape)).astype("float32")
    labels = np.array([0, 1])
    before = [variable.numpy().copy() for variable in model.trainable_weights]
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = loss_fn(labels, logits)
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights), model.trainable_weights))

    assert logits.shape == (2, classes)
    assert np.isfinite(float(loss))
    assert model.get_layer("logits").activation is keras.activations.linear
    changed = [not np.array_equal(old, variable.numpy()) for old, variable in zip(before, model.trainable_weights)]
    assert all(changed), f"{changed.count(False)} of {len(changed)} weights did not move"


@pytest.mark.parametrize("name", list(TINY_CASES))
def test_feature_extractor_outputs_what_the_logits_layer_consumes(name):
    shape, classes, width = TINY_CASES[name]
    model = tiny_model(name)
    images = np.random.default_rng(2).normal(size=(3, *shape)).astype("float32")
    features = feature_extractor(model)(images, training=False).numpy()
    kernel, *bias = (weight.numpy() for weight in model.get_layer("logits").weights)
    bias = bias[0] if bias else 0.0  # airbench94's head has no bias
    assert features.shape == (3, width)
    # The logits layer in float32 against the same product in float64: a dot product of K terms rounds to
    # within K * eps * sum |f_k w_k| (the standard bound), so the tolerance follows the magnitude of the terms
    # (logits of a deep untrained net reach ~1e4, where a fixed rtol fails by chance).
    exact = features.astype(np.float64) @ kernel.astype(np.float64) + bias
    scale = np.abs(features).astype(np.float64) @ np.abs(kernel).astype(np.float64) + np.abs(bias)
    bound = (features.shape[1] + 2) * np.finfo(np.float32).eps * scale
    error = np.abs(model(images, training=False).numpy() - exact)
    assert np.all(error <= bound), (f"max error {error.max():.3g} over bound "
                                    f"{bound[error.argmax() // bound.shape[1]].max():.3g}")


def test_small_input_resnet_stem_is_one_stride_1_conv_without_pooling():
    model = tiny_model("resnet50")
    assert layer_output_shape(model, "stem_conv") == (32, 32, 64)
    assert model.get_layer("stem_conv").kernel_size == (3, 3)
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert layer_output_shape(model, "stage1_block3_out") == (32, 32, 256)
    assert layer_output_shape(model, "stage4_block3_out") == (4, 4, 2048)
    resnet18 = tiny_model("resnet18")
    assert layer_output_shape(resnet18, "stem_conv") == (32, 32, 64)
    assert layer_output_shape(resnet18, "stage4_block2_out") == (4, 4, 512)


def test_imagenet_resnet50_has_the_standard_stem_and_torchvision_parameter_count():
    model = build_model("resnet50", (224, 224, 3), 1000)
    assert model.get_layer("stem_conv").kernel_size == (7, 7)
    assert layer_output_shape(model, "stem_conv") == (112, 112, 64)
    assert layer_output_shape(model, "stem_pool") == (56, 56, 64)
    assert layer_output_shape(model, "stage1_block3_out") == (56, 56, 256)
    assert layer_output_shape(model, "stage4_block3_out") == (7, 7, 2048)
    assert trainable_count(model) == 25_557_032  # torchvision resnet50 (bias-free convs, BN gamma/beta)


def test_imagenet_resnet18_matches_torchvision_parameter_count():
    assert trainable_count(build_model("resnet18", (224, 224, 3), 1000)) == 11_689_512


def test_inception_matches_zhang_et_al_parameter_count_and_feature_map_sizes():
    model = build_model("inception", (28, 28, 3), 10)
    # Zhang et al. 2017, Table 1: 1,649,402 parameters; their batch norm has a shift but no scale.
    batchnorm_scales = sum(int(layer.gamma.shape[0]) for layer in model.layers
                           if isinstance(layer, keras.layers.BatchNormalization))
    assert trainable_count(model) - batchnorm_scales == 1_649_402
    pooled = model.get_layer("penultimate").input
    assert tuple(pooled.shape[1:]) == (7, 7, 336)  # "mean pooling 7x7" over a 28x28 input


def test_densenet100_matches_the_reference_parameter_count():
    # DenseNet-BC (L=100, k=12) on CIFAR-10: 0.8M parameters (Huang et al.); 769,162 exactly in
    # the reference PyTorch reimplementation (bamos/densenet.pytorch).
    assert trainable_count(build_model("densenet100", (32, 32, 3), 10)) == 769_162


def test_build_model_rejects_unknown_names_and_wrong_input_ranks():
    with pytest.raises(RaymemError, match="vgg16"):
        build_model("vgg16", (32, 32, 3), 10)
    with pytest.raises(RaymemError, match="linear"):
        build_model("linear", (8, 8, 1), 10)
    with pytest.raises(RaymemError, match="resnet18"):
        build_model("resnet18", (64,), 10)
    with pytest.raises(RaymemError):
        build_model("small_cnn", (8, 8, 1), 1)


def test_feature_extractor_rejects_models_without_a_penultimate_layer():
    inputs = keras.Input(shape=(4,))
    foreign = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(RaymemError, match="penultimate"):
        feature_extractor(foreign)


# ---- augmentation -------------------------------------------------------------------------


def matching_windows(original: np.ndarray, augmented: np.ndarray, pad: int) -> list[tuple[int, int, bool]]:
    """Return every (row offset, column offset, flipped) whose window of the zero-padded original
    equals ``augmented`` (brute force over all offsets)."""
    height, width = original.shape[:2]
    padded = np.pad(original, [(pad, pad), (pad, pad), (0, 0)])
    found = []
    for row in range(2 * pad + 1):
        for column in range(2 * pad + 1):
            window = padded[row:row + height, column:column + width]
            for flipped in (False, True):
                if np.array_equal(window[:, ::-1] if flipped else window, augmented):
                    found.append((row, column, flipped))
    return found


def test_no_padding_and_no_flip_is_the_identity():
    image = np.random.default_rng(3).normal(size=(6, 5, 3)).astype("float32")
    augment = make_augment_fn(pad=0, flip=False)
    dataset = tf.data.Dataset.from_tensor_slices((image[None], np.array([7]))).map(augment)
    (out_image, out_label), = list(dataset)
    np.testing.assert_array_equal(out_image.numpy(), image)
    assert int(out_label) == 7


def test_pad_crop_flip_gives_shifted_windows_of_the_padded_image_covering_all_offsets():
    pad = 2
    image = np.random.default_rng(4).normal(size=(6, 5, 3)).astype("float32")  # all windows differ
    seen = []
    for seed in range(200):
        out = random_pad_crop_flip(tf.constant(image), pad, True, tf.constant([seed, 11])).numpy()
        assert out.shape == image.shape
        matches = matching_windows(image, out, pad)
        assert len(matches) == 1, f"seed {seed}: not exactly one window of the padded image"
        seen.append(matches[0])
    assert {(row, column) for row, column, _ in seen} == {(r, c) for r in range(5) for c in range(5)}
    assert 0.3 < np.mean([flipped for _, _, flipped in seen]) < 0.7
    again = random_pad_crop_flip(tf.constant(image), pad, True, tf.constant([5, 11])).numpy()
    assert matching_windows(image, again, pad) == [seen[5]]


def test_crop_without_flip_never_mirrors_and_flip_without_pad_only_mirrors():
    image = np.random.default_rng(5).normal(size=(4, 4, 1)).astype("float32")
    for seed in range(30):
        cropped = random_pad_crop_flip(tf.constant(image), 1, False, tf.constant([seed, 0])).numpy()
        assert [flipped for _, _, flipped in matching_windows(image, cropped, 1)] == [False]
        mirrored = random_pad_crop_flip(tf.constant(image), 0, True, tf.constant([seed, 0])).numpy()
        assert matching_windows(image, mirrored, 0) in ([(0, 0, False)], [(0, 0, True)])


def test_augment_fn_in_a_tf_data_pipeline_keeps_shapes_and_labels():
    images = np.random.default_rng(6).normal(size=(8, 32, 32, 3)).astype("float32")
    labels = np.arange(8)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).map(
        make_augment_fn(pad=4, flip=True), num_parallel_calls=2, deterministic=True).batch(4)
    out_images, out_labels = (np.concatenate(parts) for parts in zip(*[(x.numpy(), y.numpy()) for x, y in dataset]))
    assert out_images.shape == images.shape and out_images.dtype == np.float32
    np.testing.assert_array_equal(out_labels, labels)
    for original, augmented in zip(images, out_images):
        assert len(matching_windows(original, augmented, 4)) == 1
    with pytest.raises(RaymemError):
        make_augment_fn(pad=-1, flip=False)
