"""Training-time augmentation of the paper: random crop after zero padding, random left-right flip.

The paper pads by 4 pixels on CIFAR-100 and 32 on ImageNet (supplement, section B). The
functions work on one channels-last image (height, width, channels) inside a ``tf.data`` map.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from typing import Callable  # noqa: E402

import tensorflow as tf  # noqa: E402

from raymem.errors import RaymemError  # noqa: E402

_SEED_MAX = 2**31 - 1


def random_pad_crop_flip(image: tf.Tensor, pad: int, flip: bool, seed: tf.Tensor) -> tf.Tensor:
    """Return ``image`` zero-padded by ``pad`` pixels on each side, randomly cropped back to its
    size, then (if ``flip``) mirrored left-right with probability 1/2.

    ``seed`` is a shape-[2] integer tensor; the same seed gives the same crop and flip.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if pad > 0:
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.stateless_random_crop(padded, size=tf.shape(image), seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


def make_augment_fn(pad: int, flip: bool) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """Return ``fn(image, label) -> (augmented image, label)`` for a per-example ``tf.data`` map.

    Each call draws a fresh seed from TensorFlow's global random state (set it with
    ``tf.random.set_seed`` to repeat a run). With ``pad == 0`` and ``flip`` False it returns the
    pair unchanged.
    """
    pad = int(pad)
    if pad < 0:
        raise RaymemError(f"Augmentation pad must be >= 0 pixels, got {pad}; fix the experiment config.")

    if pad == 0 and not flip:
        def identity(image, label):
            return image, label
        return identity

    def augment(image, label):
        seed = tf.random.uniform([2], maxval=_SEED_MAX, dtype=tf.int32)
        return random_pad_crop_flip(image, pad, flip, seed), label

    return augment
