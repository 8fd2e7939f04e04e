"""Learning-rate schedules of the paper (supplement, section B) and its optimizer (SGD, momentum 0.9; or the
recipe's Adam/AdamW, weight decay, Nesterov).

Each schedule is a Keras ``LearningRateSchedule`` whose ``__call__`` is written once with
``keras.ops``, so it runs inside the optimizer's graph and, called eagerly with a plain Python
number, gives the value at that step (``schedule.value_at(step)`` returns it as a float). The
step is the optimizer's iteration count: 0 before the first update.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from raymem.training.keras_backend import keras, ops  # noqa: E402

from raymem.errors import RaymemError  # noqa: E402

from raymem.config.catalog import SCHEDULE_KINDS, SCHEDULE_OPTIONS  # noqa: E402  (the schedule names, defined once)

# Paper defaults for make_schedule's optional parameters.
DEFAULT_WARMUP_EPOCHS = 15  # ImageNet
DEFAULT_DECAY_EPOCHS = (30, 60, 90)  # ImageNet
DEFAULT_DECAY_FACTOR = 10.0
DEFAULT_WARMUP_FRACTION = 0.15  # CIFAR-100 and MNIST
DEFAULT_MOMENTUM = 0.9
#: The optimizers a recipe may name (``recipe.optimizer``).
OPTIMIZERS = ("sgd", "adam", "adamw")


class _Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Base class: adds ``value_at`` (a float, for plain-Python use) to a Keras schedule."""

    def value_at(self, step: float) -> float:
        """Return the learning rate at optimizer step ``step`` as a Python float."""
        return float(ops.convert_to_numpy(self(step)))


@keras.saving.register_keras_serializable(package="raymem")
class ConstantSchedule(_Schedule):
    """The learning rate ``base_lr`` at every step."""

    def __init__(self, base_lr: float):
        self.base_lr = float(base_lr)

    def __call__(self, step):
        """Return ``base_lr`` as a float32 tensor."""
        return ops.convert_to_tensor(self.base_lr, dtype="float32")

    def get_config(self) -> dict:
        """Return the constructor arguments."""
        return {"base_lr": self.base_lr}


@keras.saving.register_keras_serializable(package="raymem")
class WarmupPiecewiseSchedule(_Schedule):
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_epochs``, then ``base_lr`` divided by
    ``decay_factor`` once for every decay epoch already reached (ImageNet in the paper)."""

    def __init__(self, base_lr: float, steps_per_epoch: int, warmup_epochs: float,
                 decay_epochs, decay_factor: float):
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_epochs = float(warmup_epochs)
        self.decay_epochs = [float(epoch) for epoch in decay_epochs]
        self.decay_factor = float(decay_factor)

    def __call__(self, step):
        """Return the learning rate at ``step`` as a float32 tensor."""
        epoch = ops.cast(step, "float32") / self.steps_per_epoch
        if self.warmup_epochs > 0:
            warmup = ops.minimum(epoch / self.warmup_epochs, 1.0)
        else:
            warmup = ops.ones_like(epoch)
        decays = ops.zeros_like(epoch)
        for boundary in self.decay_epochs:
            decays = decays + ops.cast(epoch >= boundary, "float32")
        return self.base_lr * warmup * ops.power(1.0 / self.decay_factor, decays)

    def get_config(self) -> dict:
        """Return the constructor arguments."""
        return {
            "base_lr": self.base_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_epochs": self.warmup_epochs,
            "decay_epochs": list(self.decay_epochs),
            "decay_factor": self.decay_factor,
        }


@keras.saving.register_keras_serializable(package="raymem")
class WarmupLinearDecaySchedule(_Schedule):
    """Linear warm-up from 0 to ``base_lr`` over the first ``warmup_fraction`` of ``total_steps``,
    then linear decay to 0 at ``total_steps`` (and 0 after; CIFAR-100 and MNIST in the paper)."""

    def __init__(self, base_lr: float, total_steps: int, warmup_fraction: float):
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_fraction = float(warmup_fraction)

    def __call__(self, step):
        """Return the learning rate at ``step`` as a float32 tensor."""
        step = ops.cast(step, "float32")
        warmup_steps = self.warmup_fraction * self.total_steps
        decay_steps = self.total_steps - warmup_steps
        falling = ops.maximum((self.total_steps - step) / decay_steps, 0.0)
        if warmup_steps > 0:
            return self.base_lr * ops.minimum(step / warmup_steps, falling)
        return self.base_lr * ops.minimum(falling, 1.0)

    def get_config(self) -> dict:
        """Return the constructor arguments."""
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction,
        }


def _require(condition: bool, message: str) -> None:
    """Raise RaymemError(message) unless ``condition`` holds."""
    if not condition:
        raise RaymemError(message)


def constant(base_lr: float) -> ConstantSchedule:
    """Return a schedule that is ``base_lr`` at every step."""
    _require(base_lr > 0, f"Learning rate base_lr must be positive, got {base_lr}; fix the experiment config.")
    return ConstantSchedule(base_lr)


def warmup_piecewise(base_lr: float, steps_per_epoch: int, warmup_epochs: float = DEFAULT_WARMUP_EPOCHS,
                     decay_epochs=DEFAULT_DECAY_EPOCHS,
                     decay_factor: float = DEFAULT_DECAY_FACTOR) -> WarmupPiecewiseSchedule:
    """Return the warm-up then piecewise-constant schedule (paper, ImageNet: 0.7, 15, (30, 60, 90), 10)."""
    _require(base_lr > 0, f"Learning rate base_lr must be positive, got {base_lr}; fix the experiment config.")
    _require(steps_per_epoch >= 1, f"steps_per_epoch must be at least 1, got {steps_per_epoch}; "
                                   f"use a batch size no larger than the training subset.")
    _require(warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {warmup_epochs}; fix the experiment config.")
    _require(decay_factor > 0, f"decay_factor must be positive, got {decay_factor}; fix the experiment config.")
    decay_epochs = list(decay_epochs)
    _require(decay_epochs == sorted(decay_epochs) and all(epoch >= 0 for epoch in decay_epochs),
             f"decay_epochs must be non-negative and increasing, got {decay_epochs}; fix the experiment config.")
    return WarmupPiecewiseSchedule(base_lr, steps_per_epoch, warmup_epochs, decay_epochs, decay_factor)


def warmup_linear_decay(base_lr: float, total_steps: int,
                        warmup_fraction: float = DEFAULT_WARMUP_FRACTION) -> WarmupLinearDecaySchedule:
    """Return the linear warm-up then linear decay schedule (paper, CIFAR-100: 0.4; MNIST: 0.1; 15%)."""
    _require(base_lr > 0, f"Learning rate base_lr must be positive, got {base_lr}; fix the experiment config.")
    _require(total_steps >= 1, f"total_steps must be at least 1, got {total_steps}; "
                               f"set epochs and steps_per_epoch to at least 1.")
    _require(0 <= warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {warmup_fraction}; "
                                       f"fix the experiment config.")
    return WarmupLinearDecaySchedule(base_lr, total_steps, warmup_fraction)


def make_schedule(kind: str, base_lr: float, epochs: int, steps_per_epoch: int,
                  **params) -> keras.optimizers.schedules.LearningRateSchedule:
    """Return the schedule ``kind`` for a run of ``epochs`` epochs of ``steps_per_epoch`` steps.

    ``params`` are the kind's own options: warmup_piecewise takes warmup_epochs, decay_epochs and
    decay_factor; warmup_linear_decay takes warmup_fraction; constant takes none.
    """
    _require(epochs >= 1 and steps_per_epoch >= 1,
             f"epochs and steps_per_epoch must be at least 1, got {epochs} and {steps_per_epoch}; "
             f"fix the experiment config.")
    _require(kind in SCHEDULE_OPTIONS,
             f"Unknown learning-rate schedule {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}.")
    unknown = sorted(set(params) - set(SCHEDULE_OPTIONS[kind]))
    _require(not unknown, f"Schedule {kind!r} does not take {', '.join(unknown)}; "
                          f"its options are: {', '.join(SCHEDULE_OPTIONS[kind]) or 'none'}.")
    if kind == "warmup_piecewise":
        return warmup_piecewise(base_lr, steps_per_epoch, **params)
    if kind == "warmup_linear_decay":
        return warmup_linear_decay(base_lr, epochs * steps_per_epoch, **params)
    return constant(base_lr)


def make_optimizer(schedule, momentum: float = DEFAULT_MOMENTUM, *, optimizer: str = "sgd",
                   weight_decay: float = 0.0, nesterov: bool = False):
    """Return the recipe's optimizer whose learning rate follows ``schedule`` (paper: SGD, momentum 0.9).

    ``optimizer`` is sgd (with ``momentum``, optionally ``nesterov``), adam or adamw. ``weight_decay`` is
    Keras' decoupled decay (each step every weight shrinks by lr x weight_decay) for all three; AdamW needs
    it above 0 to differ from Adam, and Keras' own AdamW default (0.004) is not used: 0 means 0.
    """
    _require(optimizer in OPTIMIZERS, f"Unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
    _require(weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}; fix the experiment config.")
    # None, not 0.0, when off: the Keras optimizer then skips its decay step entirely (the paper's recipe, unchanged)
    decay = float(weight_decay) or None
    if optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, nesterov=nesterov, weight_decay=decay)
    _require(not nesterov, f"nesterov is an option of sgd, not {optimizer}; set nesterov: false.")
    if optimizer == "adam":
        _require(decay is None, f"optimizer adam with weight_decay={weight_decay:g} is AdamW in Keras; "
                                "use optimizer adamw.")
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=float(weight_decay))


def recipe_optimizer(recipe, schedule):
    """Return the optimizer of a config's ``recipe`` (its optimizer, momentum, nesterov and weight decay keys)."""
    return make_optimizer(schedule, recipe.momentum, optimizer=recipe.optimizer,
                          weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
