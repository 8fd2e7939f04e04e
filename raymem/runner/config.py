"""Experiment configs: the named presets and how files and flags override them (defined once here).

An experiment is a dataset, a model, the subset ratio, the number of trials, the training recipe
(epochs, batch size, SGD with momentum, learning-rate schedule, augmentation) and the resources
each trial asks Ray for. ``resolve_config`` starts from a preset, applies a YAML/TOML file, then
CLI overrides, and validates the result.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from raymem.errors import RaymemError
from raymem.estimator.formulas import PAPER_SUBSET_RATIO, subset_size


#: Set to "1" in the workers of multi-node trials: they build with tf-keras (see keras_backend).
LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"


@dataclass(frozen=True)
class ExperimentConfig:
    preset: str
    dataset: str
    model: str
    trials: int
    epochs: int
    batch_size: int
    base_lr: float
    schedule: str                      # warmup_linear_decay | warmup_piecewise | constant
    schedule_params: dict = field(default_factory=dict)
    momentum: float = 0.9
    subset_ratio: float = PAPER_SUBSET_RATIO
    augment_pad: int = 0               # random crop after zero padding by this many pixels
    augment_flip: bool = False         # random left-right flips
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0        # a fraction shares a GPU; >1 trains data-parallel on one node
    nodes_per_trial: int = 1           # >1: a multi-worker Ray Train group (tf-keras path)
    mixed_precision: str = "auto"      # auto (on GPUs) | on | off
    xla: str = "auto"                  # auto (on GPUs) | on | off
    seed: int = 0
    flip_labels: float = 0.0           # fraction of training labels flipped as canaries
    max_attempts: int = 3              # tries per trial before it is reported failed
    pair_batch: int = 64               # trials buffered per pair-matrix update in the accumulator
    track_pairs: bool = True           # keep the n_train x n_test pair matrix (influence)
    pair_shards: int = 1               # split the pair matrix by training rows over this many actors
    paper_epoch_seconds: float | None = None  # the paper's time per epoch (budgeting only)
    paper_gpus: float | None = None           # GPUs the paper used per trial for that time

    @property
    def uses_train_group(self) -> bool:
        """Big trials (several GPUs or nodes) run as a Ray Train worker group; small ones as warm tasks."""
        return self.gpus_per_trial > 1 or self.nodes_per_trial > 1

    def subset_size(self, n_train: int) -> int:
        return subset_size(n_train, self.subset_ratio)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    # Fields that may change between invocations of the same run (everything else must match).
    RESUMABLE_FIELDS = ("trials", "cpus_per_trial", "gpus_per_trial", "nodes_per_trial", "max_attempts",
                        "mixed_precision", "xla", "pair_batch", "pair_shards", "paper_epoch_seconds", "paper_gpus")


_CIFAR_RECIPE = dict(epochs=160, batch_size=512, base_lr=0.4, schedule="warmup_linear_decay",
                     schedule_params={"warmup_fraction": 0.15}, augment_pad=4, augment_flip=True,
                     gpus_per_trial=1.0, cpus_per_trial=4.0)

PRESETS: dict[str, ExperimentConfig] = {
    # The embedded default: sklearn's bundled 8x8 digits, trains in seconds on a CPU. 30 epochs (as the
    # paper's MNIST) is what it takes to fit flipped labels: with 12 the canaries are not memorized.
    "digits": ExperimentConfig(
        preset="digits", dataset="digits", model="small_cnn", trials=64, epochs=30, batch_size=32,
        base_lr=0.05, schedule="warmup_linear_decay", schedule_params={"warmup_fraction": 0.15},
        cpus_per_trial=1.0, gpus_per_trial=0.0,
    ),
    "mnist": ExperimentConfig(
        preset="mnist", dataset="mnist", model="inception", trials=2000, epochs=30, batch_size=256,
        base_lr=0.1, schedule="warmup_linear_decay", schedule_params={"warmup_fraction": 0.15},
        gpus_per_trial=0.25, cpus_per_trial=2.0, paper_epoch_seconds=7, paper_gpus=1,
    ),
    "cifar10": ExperimentConfig(
        preset="cifar10", dataset="cifar10", model="resnet50", trials=2000, **_CIFAR_RECIPE,
        paper_epoch_seconds=90, paper_gpus=1,
    ),
    "cifar100": ExperimentConfig(
        preset="cifar100", dataset="cifar100", model="resnet50", trials=2000, **_CIFAR_RECIPE,
        paper_epoch_seconds=90, paper_gpus=1,
    ),
    "cifar100-resnet18": ExperimentConfig(
        preset="cifar100-resnet18", dataset="cifar100", model="resnet18", trials=2000, **_CIFAR_RECIPE,
        paper_epoch_seconds=17, paper_gpus=1,
    ),
    "cifar100-inception": ExperimentConfig(
        preset="cifar100-inception", dataset="cifar100", model="inception", trials=2000, **_CIFAR_RECIPE,
        paper_epoch_seconds=14, paper_gpus=1,
    ),
    # DenseNet: batch size and learning rate halved for its memory load (supplement B).
    "cifar100-densenet100": ExperimentConfig(
        preset="cifar100-densenet100", dataset="cifar100", model="densenet100", trials=2000,
        **{**_CIFAR_RECIPE, "batch_size": 256, "base_lr": 0.2}, paper_epoch_seconds=45, paper_gpus=1,
    ),
    # Linear model on precomputed penultimate features, 40 epochs: first
    # `raymem features cifar100 --out cifar100-features.npz` (or --dataset npz:OTHER.npz).
    "cifar100-linear": ExperimentConfig(
        preset="cifar100-linear", dataset="npz:cifar100-features.npz", model="linear", trials=2000,
        **{**_CIFAR_RECIPE, "epochs": 40, "augment_pad": 0, "augment_flip": False, "gpus_per_trial": 0.125,
           "cpus_per_trial": 1.0}, paper_epoch_seconds=0.5, paper_gpus=1,
    ),
    "imagenet": ExperimentConfig(
        preset="imagenet", dataset="imagenet2012", model="resnet50", trials=2000, epochs=100, batch_size=896,
        base_lr=0.7, schedule="warmup_piecewise",
        schedule_params={"warmup_epochs": 15, "decay_epochs": [30, 60, 90], "decay_factor": 10.0},
        augment_pad=32, augment_flip=True, gpus_per_trial=8.0, cpus_per_trial=32.0,
        # 1.28M x 50,000 float32 pair counts = 256 GB: 16 shard actors of 16 GB, each placed by Ray on a node with
        # the memory for it (gpu_8x nodes have it; the head has not), so use --storage s3://... for this preset
        track_pairs=True, pair_batch=16, pair_shards=16, paper_epoch_seconds=1800, paper_gpus=8,
    ),
}

FIELD_NAMES = {f.name for f in dataclasses.fields(ExperimentConfig)}


def read_config_file(path: str | Path) -> dict:
    """Read a YAML or TOML experiment file into a dict of overrides (may name a ``preset``)."""
    path = Path(path)
    if not path.is_file():
        raise RaymemError(f"experiment file {path} does not exist; pass a preset name ({', '.join(PRESETS)}) or a .yaml/.toml file.")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise RaymemError(f"experiment file {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'} ({exc}); fix its syntax.") from None
    if not isinstance(data, dict):
        raise RaymemError(f"experiment file {path} must hold a mapping of config keys; see the README's config section.")
    return data


def resolve_config(experiment: str, overrides: dict | None = None) -> ExperimentConfig:
    """Preset name or config file, then ``overrides`` (None values are ignored), validated."""
    if experiment in PRESETS:
        values: dict = {}
        base = PRESETS[experiment]
    elif experiment.endswith((".yaml", ".yml", ".toml")):
        values = read_config_file(experiment)
        preset = values.pop("preset", "digits")
        if preset not in PRESETS:
            raise RaymemError(f"experiment file {experiment} names preset {preset!r}; use one of {', '.join(PRESETS)}.")
        base = PRESETS[preset]
    else:
        raise RaymemError(f"unknown experiment {experiment!r}; use a preset ({', '.join(PRESETS)}) or a .yaml/.toml file.")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise RaymemError(f"unknown config key(s) {', '.join(unknown)} in {experiment}; valid keys: {', '.join(sorted(FIELD_NAMES))}.")
    try:
        config = dataclasses.replace(base, **values)
    except TypeError as exc:
        raise RaymemError(f"config for {experiment} is invalid ({exc}); fix the named key.") from None
    validate_config(config, experiment)
    return config


def validate_config(c: ExperimentConfig, source: str) -> None:
    def bad(key, why):
        raise RaymemError(f"config key {key}={getattr(c, key)!r} in {source} {why}.")

    for key in ("trials", "epochs", "batch_size", "nodes_per_trial", "max_attempts", "pair_batch", "pair_shards"):
        value = getattr(c, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            bad(key, "must be a positive integer")
    if not 0 < c.subset_ratio < 1:
        bad("subset_ratio", "must lie strictly between 0 and 1 (the paper uses 0.7)")
    if not 0 <= c.flip_labels < 1:
        bad("flip_labels", "must lie in [0, 1)")
    if c.base_lr <= 0:
        bad("base_lr", "must be positive")
    if c.cpus_per_trial < 0 or c.gpus_per_trial < 0:
        bad("gpus_per_trial" if c.gpus_per_trial < 0 else "cpus_per_trial", "must be non-negative")
    if c.gpus_per_trial > 1 and c.gpus_per_trial != int(c.gpus_per_trial):
        bad("gpus_per_trial", "must be a whole number when above 1 (fractions share one GPU)")
    if c.nodes_per_trial > 1 and c.gpus_per_trial < 1 and c.gpus_per_trial != 0:
        bad("nodes_per_trial", "needs whole GPUs per node (gpus_per_trial >= 1) or CPU-only workers")
    for key in ("mixed_precision", "xla"):
        if getattr(c, key) not in ("auto", "on", "off"):
            bad(key, "must be auto, on or off")
    if c.augment_pad < 0:
        bad("augment_pad", "must be >= 0")


def compare_for_resume(stored: dict, new: ExperimentConfig, run: str) -> None:
    """Refuse to resume ``run`` with a config that differs in anything but the resumable fields."""
    fixed = {k: v for k, v in new.to_dict().items() if k not in ExperimentConfig.RESUMABLE_FIELDS}
    old = {k: v for k, v in stored.items() if k not in ExperimentConfig.RESUMABLE_FIELDS}
    diff = sorted(k for k in set(fixed) | set(old) if fixed.get(k) != old.get(k))
    if diff:
        k = diff[0]
        raise RaymemError(
            f"run {run} was started with {k}={old.get(k)!r} but this invocation has {k}={fixed.get(k)!r}; "
            "resume it with the same config or start a new run with --name."
        )


def gpu_hours(config: ExperimentConfig) -> float | None:
    """GPU-hours for the configured trials at the paper's per-epoch time (None when unknown)."""
    if config.paper_epoch_seconds is None or config.paper_gpus is None:
        return None
    return config.trials * config.epochs * config.paper_epoch_seconds * config.paper_gpus / 3600.0


def presets_table(budget_trials: int = 2000) -> list[list[str]]:
    """Rows (header first) describing every preset, with the GPU-hours of ``budget_trials`` trials."""
    rows = [["preset", "data set", "model", "epochs", "batch", "base LR", "schedule", "augment",
             "per trial", "paper s/epoch", f"GPU-h for {budget_trials:,} trials"]]
    for key, c in PRESETS.items():
        c = dataclasses.replace(c, trials=budget_trials)
        hours = gpu_hours(c)
        resources = f"{c.cpus_per_trial:g} CPU" + (f", {c.gpus_per_trial:g} GPU" if c.gpus_per_trial else "")
        if c.nodes_per_trial > 1:
            resources += f" x {c.nodes_per_trial} nodes"
        augment = ", ".join(filter(None, [f"pad-crop {c.augment_pad}" if c.augment_pad else "",
                                          "flip" if c.augment_flip else ""])) or "-"
        epoch_time = "-" if c.paper_epoch_seconds is None else (
            f"{c.paper_epoch_seconds:g} ({c.paper_gpus:g} GPU)" if c.paper_gpus != 1 else f"{c.paper_epoch_seconds:g}")
        rows.append([key, c.dataset, c.model, str(c.epochs), str(c.batch_size), f"{c.base_lr:g}", c.schedule, augment,
                     resources, epoch_time, "-" if hours is None else f"{hours:,.0f}"])
    return rows
