"""Which Keras a process builds models with: Keras 3 (default) or tf-keras for multi-node trials.

Keras 3 fails under TensorFlow's multi-*worker* strategy (keras-team/keras#20585): a trial that
spans several nodes runs its Ray Train workers with ``TF_USE_LEGACY_KERAS=1`` and builds everything
with ``tf_keras`` instead. Models, schedules and training import ``keras``, ``layers`` and ``ops``
from here, so the same code serves both. The choice is made when this module is first imported, so
the variable must be set before (Ray Train workers get it through their runtime environment).
"""

from __future__ import annotations

import os
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from raymem.config.experiment import LEGACY_KERAS_ENV  # noqa: E402

LEGACY = os.environ.get(LEGACY_KERAS_ENV) == "1"

if LEGACY:
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras  # noqa: F401
    from tf_keras import layers  # noqa: F401

    # The handful of keras.ops the schedules use, in plain TensorFlow.
    ops = types.SimpleNamespace(
        cast=tf.cast, minimum=tf.minimum, maximum=tf.maximum, power=tf.pow,
        ones_like=tf.ones_like, zeros_like=tf.zeros_like, convert_to_tensor=tf.convert_to_tensor,
        convert_to_numpy=lambda x: np.asarray(x),
    )
else:
    import keras  # noqa: F401
    from keras import layers, ops  # noqa: F401
