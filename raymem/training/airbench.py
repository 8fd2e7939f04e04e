"""airbench94's network in Keras (Keller Jordan, 2024, `KellerJordan/cifar10-airbench`: 94% on CIFAR-10 in 3.83 s
on one A100, 0.36 PFLOPs per run), for the ``cifar10-fast`` and ``cifar100-fast`` presets.

The layer shapes and initialisations of its published network, written from its description:

- a 2x2 convolution (valid padding, bias) from 3 to ``2 x 3 x 2 x 2 = 24`` channels, then GELU;
- three groups of widths 64, 256, 256 (``base_width`` x 1, 4, 4), each: 3x3 convolution (same padding, no bias),
  2x2 max pool, batch norm, GELU, 3x3 convolution, batch norm, GELU. Batch norm has no scale (PyTorch's weight is
  frozen at 1), a trained bias, epsilon 1e-12 and momentum 0.6 (PyTorch 0.4: the weight of the new batch);
- a 3x3 max pool (32x32 inputs: the whole 3x3 map), a dense layer to the classes without bias, logits x 1/9;
- every convolution starts from PyTorch's default initialisation (uniform in +-1/sqrt(fan_in)) with its first
  ``c_in`` filters replaced by the identity (an implicit residual: "dirac" init).

What this port does not do, and why: the first convolution's whitening initialisation from the training
images' patch covariance and its freezing (a raymem builder sees only the input shape, never the data: here
the layer trains from the init above); the 64x learning rate of batch-norm biases, Lookahead/EMA and
multi-crop test-time augmentation (training-loop features raymem's recipe does not have); per-channel input
normalisation (inputs are standardised by one scalar mean and deviation, so that the layer stays elementwise
and packs replay it). The 1/9 output scale is applied to the features before the bias-free dense layer:
``W(x/9) = (Wx)/9``, with the same gradients, and the logits layer stays a plain Dense as in every model.
"""

from __future__ import annotations

import numpy as np

from raymem.errors import RaymemError
from raymem.training.keras_backend import keras, layers

#: airbench94's published widths: its base width and the three groups' multiples of it.
BASE_WIDTH = 64
GROUP_MULTIPLES = (1, 4, 4)
WHITEN_KERNEL = 2
BN_MOMENTUM = 0.6
BN_EPSILON = 1e-12
OUTPUT_SCALE = 1 / 9
#: CIFAR-10's mean and standard deviation over all channels (airbench: per channel, 0.491/0.482/0.447 and
#: 0.247/0.244/0.262): one scalar each keeps the input layer elementwise.
INPUT_MEAN, INPUT_STD = 0.4734, 0.2516
#: The smallest input side whose map survives the whitening conv and three 2x2 pools with 3x3 left for the last
#: pool: 32x32 CIFAR goes 31, 15, 7, 3.
MIN_SIDE = 25


class IdentityStartInit(keras.initializers.Initializer):
    """PyTorch's default convolution init (uniform in +-1/sqrt(fan_in)) with the first ``c_in`` filters set to the
    identity: filter i passes input channel i through at the kernel's centre (``torch.nn.init.dirac_``)."""

    def __call__(self, shape, dtype=None):
        kh, kw, c_in, c_out = shape
        base = keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")(shape, dtype=dtype)
        keep = np.ones(shape, np.float32)
        identity = np.zeros(shape, np.float32)
        for i in range(min(c_in, c_out)):
            keep[:, :, :, i] = 0.0
            identity[kh // 2, kw // 2, i, i] = 1.0
        return base * keep + identity

    def get_config(self) -> dict:
        """No parameters."""
        return {}


def _standardize(x):
    return (x - INPUT_MEAN) * (1.0 / INPUT_STD)


def _scale_output(x):
    return x * OUTPUT_SCALE


def _conv(filters: int, name: str, kernel: int = 3, **options):
    return layers.Conv2D(filters, kernel, padding=options.pop("padding", "same"),
                         use_bias=options.pop("use_bias", False), kernel_initializer=IdentityStartInit(),
                         name=name, **options)


def _norm(name: str):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=False, name=name)


def airbench94(input_shape, num_classes: int, names: tuple[str, str], base_width: int = BASE_WIDTH) -> keras.Model:
    """Return airbench94's network for ``input_shape`` (height and width >= MIN_SIDE) and ``num_classes``.

    ``names``: the names of its penultimate and logits layers (``models`` defines them for every model; it passes
    them in, so this module does not import it back).
    """
    penultimate, logits_name = names
    if min(input_shape[:2]) < MIN_SIDE:
        raise RaymemError(f"model airbench94 needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels (CIFAR's 32x32), "
                          f"got {input_shape}; use another model for this data set.")
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Activation(_standardize, name="standardize")(inputs)
    whiten_width = 2 * input_shape[-1] * WHITEN_KERNEL ** 2
    x = _conv(whiten_width, "whiten", WHITEN_KERNEL, padding="valid", use_bias=True, bias_initializer="zeros")(x)
    x = layers.Activation("gelu", name="whiten_gelu")(x)
    for g, multiple in enumerate(GROUP_MULTIPLES, start=1):
        width = base_width * multiple
        x = _conv(width, f"group{g}_conv1")(x)
        x = layers.MaxPooling2D(2, name=f"group{g}_pool")(x)
        x = layers.Activation("gelu", name=f"group{g}_gelu1")(_norm(f"group{g}_norm1")(x))
        x = _conv(width, f"group{g}_conv2")(x)
        x = layers.Activation("gelu", name=f"group{g}_gelu2")(_norm(f"group{g}_norm2")(x))
    x = layers.MaxPooling2D(3, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Activation(_scale_output, name=penultimate)(x)
    logits = layers.Dense(num_classes, use_bias=False, kernel_initializer=keras.initializers.VarianceScaling(
        1 / 3, "fan_in", "uniform"), name=logits_name)(x)
    return keras.Model(inputs, logits, name="airbench94")
