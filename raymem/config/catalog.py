"""The names an experiment config may use for its parts, defined once and importable without TensorFlow.

``config`` checks every name against these tables before anything starts; ``models`` and
``schedules`` build what they name (a test checks that each name has a builder).
"""

from __future__ import annotations

#: Model name -> rank of one input example: 3 for images (height, width, channels), 1 for feature vectors.
MODEL_INPUT_RANK: dict[str, int] = {
    "resnet50": 3,
    "resnet18": 3,
    "inception": 3,
    "densenet100": 3,
    "linear": 1,
    "small_cnn": 3,
    "airbench94": 3,
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_INPUT_RANK)

#: Learning-rate schedule kind -> the parameters it takes (``schedule_params``).
SCHEDULE_OPTIONS: dict[str, tuple[str, ...]] = {
    "warmup_piecewise": ("warmup_epochs", "decay_epochs", "decay_factor"),
    "warmup_linear_decay": ("warmup_fraction",),
    "constant": (),
}
SCHEDULE_KINDS: tuple[str, ...] = tuple(SCHEDULE_OPTIONS)

#: Values of the accelerator switches (``mixed_precision``, ``xla``): auto is on when the trial sees a GPU.
SWITCH_VALUES: tuple[str, ...] = ("auto", "on", "off")
