"""The Keras models of the paper's experiments (supplement, section B), built from layers.

Every builder returns an uncompiled functional model that maps float32 channels-last inputs
(already scaled by the dataset) to logits (no softmax). The layer feeding the final Dense layer is
named ``PENULTIMATE`` in every model, so ``feature_extractor`` works for all of them; the final
layer is named ``LOGITS``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from typing import Callable  # noqa: E402

from raymem.training.keras_backend import keras, layers  # noqa: E402

from raymem.errors import RaymemError  # noqa: E402
from raymem.config.catalog import MODEL_INPUT_RANK, MODEL_NAMES  # noqa: E402
from raymem.training.model_import import is_import_path, load_builder  # noqa: E402

PENULTIMATE = "penultimate"
LOGITS = "logits"

# Inputs at most this tall are "small" (CIFAR/MNIST-sized): ResNets and DenseNet then use a
# single 3x3/stride-1 convolution as stem instead of the ImageNet 7x7/2 conv + 3x3/2 max pool.
SMALL_INPUT_MAX_HEIGHT = 64

# Zhang et al. 2017 (Appendix A, Fig. 3): the small Inception for CIFAR10/MNIST. Each entry is
# ("conv", filters), ("inception", 1x1 filters, 3x3 filters) or ("downsample", 3x3 filters).
ZHANG_INCEPTION_PLAN = (
    ("conv", 96),
    ("inception", 32, 32),
    ("inception", 32, 48),
    ("downsample", 80),
    ("inception", 112, 48),
    ("inception", 96, 64),
    ("inception", 80, 80),
    ("inception", 48, 96),
    ("downsample", 96),
    ("inception", 176, 160),
    ("inception", 176, 160),
)

# DenseNet-BC (Huang et al. 2017): bottleneck width factor, transition compression.
DENSENET_BOTTLENECK_WIDTH = 4
DENSENET_COMPRESSION = 0.5


def _is_small_image(input_shape: tuple[int, ...]) -> bool:
    """Return True when the image is small enough for the CIFAR-style 3x3/stride-1 stem."""
    return input_shape[0] <= SMALL_INPUT_MAX_HEIGHT


def _bn_relu(x, name: str):
    """Return BatchNorm followed by ReLU applied to ``x``."""
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _conv(x, filters: int, kernel: int, stride: int, name: str):
    """Return a bias-free 'same'-padded convolution of ``x`` (a BatchNorm always follows it)."""
    return layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=name,
    )(x)


def _stem(x, filters: int, small: bool):
    """Return the stem output: one 3x3/1 conv for small inputs, else 7x7/2 conv + 3x3/2 max pool."""
    if small:
        x = _conv(x, filters, 3, 1, name="stem_conv")
        return _bn_relu(x, "stem")
    x = _conv(x, filters, 7, 2, name="stem_conv")
    x = _bn_relu(x, "stem")
    return layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)


def _head(x, num_classes: int) -> "keras.KerasTensor":
    """Return logits from a feature map: global average pool (named PENULTIMATE) + Dense."""
    x = layers.GlobalAveragePooling2D(name=PENULTIMATE)(x)
    return layers.Dense(num_classes, name=LOGITS)(x)


def _basic_block(x, filters: int, stride: int, name: str):
    """Return the output of a ResNet basic block (two 3x3 convs, expansion 1)."""
    y = _conv(x, filters, 3, stride, name=f"{name}_conv1")
    y = _bn_relu(y, f"{name}_1")
    y = _conv(y, filters, 3, 1, name=f"{name}_conv2")
    y = layers.BatchNormalization(name=f"{name}_2_bn")(y)
    return _residual_out(x, y, filters, stride, name)


def _residual_out(x, y, out_filters: int, stride: int, name: str):
    """ReLU(y + shortcut): the identity, or a strided 1x1 projection when the shape changes."""
    shortcut = x
    if stride != 1 or x.shape[-1] != out_filters:
        shortcut = _conv(x, out_filters, 1, stride, name=f"{name}_proj")
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def _bottleneck_block(x, filters: int, stride: int, name: str):
    """Return the output of a ResNet bottleneck block (1x1, 3x3 with the stride, 1x1 x4)."""
    out_filters = 4 * filters
    y = _conv(x, filters, 1, 1, name=f"{name}_conv1")
    y = _bn_relu(y, f"{name}_1")
    y = _conv(y, filters, 3, stride, name=f"{name}_conv2")
    y = _bn_relu(y, f"{name}_2")
    y = _conv(y, out_filters, 1, 1, name=f"{name}_conv3")
    y = layers.BatchNormalization(name=f"{name}_3_bn")(y)
    return _residual_out(x, y, out_filters, stride, name)


def _resnet(input_shape, num_classes: int, block: Callable, blocks_per_stage, name: str):
    """Return a ResNet: stem, four stages (64, 128, 256, 512 base filters; stages 2-4 stride 2), head.

    Block j of stage s is named ``stage{s}_block{j}``; its output layer ``stage{s}_block{j}_out``.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = _stem(inputs, 64, _is_small_image(input_shape))
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage), start=1):
        for index in range(1, blocks + 1):
            stride = 2 if stage > 1 and index == 1 else 1
            x = block(x, filters, stride, name=f"stage{stage}_block{index}")
    return keras.Model(inputs, _head(x, num_classes), name=name)


def _resnet50(input_shape, num_classes):
    """Return ResNet50 (bottleneck blocks 3, 4, 6, 3)."""
    return _resnet(input_shape, num_classes, _bottleneck_block, (3, 4, 6, 3), "resnet50")


def _resnet18(input_shape, num_classes):
    """Return ResNet18 (basic blocks 2, 2, 2, 2)."""
    return _resnet(input_shape, num_classes, _basic_block, (2, 2, 2, 2), "resnet18")


def _conv_module(x, filters: int, kernel: int, stride: int, name: str):
    """Return Zhang et al.'s conv module: convolution, BatchNorm, ReLU."""
    return _bn_relu(_conv(x, filters, kernel, stride, name=f"{name}_conv"), name)


def _inception(input_shape, num_classes):
    """Return the small Inception of Zhang et al. 2017 (ZHANG_INCEPTION_PLAN, then pool + Dense)."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for index, (kind, *filters) in enumerate(ZHANG_INCEPTION_PLAN, start=1):
        name = f"{kind}{index}"
        if kind == "conv":
            x = _conv_module(x, filters[0], 3, 1, name=name)
        elif kind == "inception":
            branch_1x1 = _conv_module(x, filters[0], 1, 1, name=f"{name}_1x1")
            branch_3x3 = _conv_module(x, filters[1], 3, 1, name=f"{name}_3x3")
            x = layers.Concatenate(name=f"{name}_concat")([branch_1x1, branch_3x3])
        else:
            branch_conv = _conv_module(x, filters[0], 3, 2, name=f"{name}_conv3x3")
            branch_pool = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
            x = layers.Concatenate(name=f"{name}_concat")([branch_conv, branch_pool])
    return keras.Model(inputs, _head(x, num_classes), name="inception")


def _densenet_bc(input_shape, num_classes, depth: int, growth_rate: int, name: str):
    """Return DenseNet-BC: three dense blocks of (depth - 4) / 6 bottleneck layers, 0.5 compression."""
    if (depth - 4) % 6:
        raise ValueError(f"DenseNet-BC depth must be 6n + 4, got {depth}")
    layers_per_block = (depth - 4) // 6
    inputs = keras.Input(shape=input_shape, name="image")
    # Pre-activation network: every dense layer starts with BN + ReLU, so the small stem is a bare conv.
    if _is_small_image(input_shape):
        x = _conv(inputs, 2 * growth_rate, 3, 1, name="stem_conv")
    else:
        x = _stem(inputs, 2 * growth_rate, small=False)
    for block in range(1, 4):
        for index in range(1, layers_per_block + 1):
            prefix = f"dense{block}_layer{index}"
            y = _bn_relu(x, f"{prefix}_a")
            y = _conv(y, DENSENET_BOTTLENECK_WIDTH * growth_rate, 1, 1, name=f"{prefix}_conv1x1")
            y = _bn_relu(y, f"{prefix}_b")
            y = _conv(y, growth_rate, 3, 1, name=f"{prefix}_conv3x3")
            x = layers.Concatenate(name=f"{prefix}_concat")([x, y])
        if block < 3:
            prefix = f"transition{block}"
            x = _bn_relu(x, prefix)
            x = _conv(x, int(x.shape[-1] * DENSENET_COMPRESSION), 1, 1, name=f"{prefix}_conv")
            x = layers.AveragePooling2D(2, strides=2, name=f"{prefix}_pool")(x)
    x = _bn_relu(x, "final")
    return keras.Model(inputs, _head(x, num_classes), name=name)


def _densenet100(input_shape, num_classes):
    """Return DenseNet-BC with depth 100 and growth rate 12."""
    return _densenet_bc(input_shape, num_classes, depth=100, growth_rate=12, name="densenet100")


def _linear(input_shape, num_classes):
    """Return a linear model (one Dense layer) on precomputed feature vectors."""
    inputs = keras.Input(shape=input_shape, name="features")
    x = layers.Identity(name=PENULTIMATE)(inputs)
    return keras.Model(inputs, layers.Dense(num_classes, name=LOGITS)(x), name="linear")


def _small_cnn(input_shape, num_classes):
    """Return a small CNN for 8x8 digits: 3x3 convs of 32 and 64, 2x2 max pool, Dense 128."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name=PENULTIMATE)(x)
    return keras.Model(inputs, layers.Dense(num_classes, name=LOGITS)(x), name="small_cnn")


def _airbench94(input_shape, num_classes):
    """Return airbench94's network (Keller Jordan 2024; see ``raymem.training.airbench``)."""
    from raymem.training.airbench import airbench94

    return airbench94(input_shape, num_classes, names=(PENULTIMATE, LOGITS))


# catalog name -> builder (the names and their input ranks are defined once, in catalog)
_BUILDERS: dict[str, Callable] = {
    "resnet50": _resnet50,
    "resnet18": _resnet18,
    "inception": _inception,
    "densenet100": _densenet100,
    "linear": _linear,
    "small_cnn": _small_cnn,
    "airbench94": _airbench94,
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **params) -> keras.Model:
    """Return the uncompiled model ``name`` mapping inputs of ``input_shape`` to ``num_classes`` logits.

    ``name`` is a catalog name, or an import path (``nets.py:tiny_cnn``) whose function gets ``params``
    (the config's ``model_params``; see ``model_import``).
    """
    if is_import_path(name):
        return load_builder(name)(tuple(int(size) for size in input_shape), int(num_classes), **params)
    if name not in _BUILDERS:
        raise RaymemError(f"Unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
    builder, rank = _BUILDERS[name], MODEL_INPUT_RANK[name]
    input_shape = tuple(int(size) for size in input_shape)
    if len(input_shape) != rank or min(input_shape) < 1:
        expected = "(height, width, channels)" if rank == 3 else "(feature_dim,)"
        raise RaymemError(
            f"Model {name!r} needs input_shape {expected} of positive sizes, got {input_shape}; "
            f"fix the dataset or the model in the experiment config."
        )
    if int(num_classes) < 2:
        raise RaymemError(f"num_classes must be at least 2, got {num_classes}; fix the dataset metadata.")
    return builder(input_shape, int(num_classes))


def feature_extractor(model: keras.Model) -> keras.Model:
    """Return a model sharing ``model``'s weights that outputs its penultimate-layer activations: the layer named
    ``PENULTIMATE``, or in a model of your own without one, the input of its last layer (what the logits read)."""
    try:
        features = model.get_layer(PENULTIMATE).output
    except ValueError:
        last = model.layers[-1]
        if isinstance(last.input, (list, tuple)) or len(model.layers) < 3:  # several tensors, or the raw inputs
            raise RaymemError(
                f"Model {model.name!r} has no layer named {PENULTIMATE!r} and its last layer does not read one "
                f"hidden tensor; name the layer whose output are the features {PENULTIMATE!r}."
            ) from None
        features = last.input
    return keras.Model(model.input, features, name=f"{model.name}_features")
