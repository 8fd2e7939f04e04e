"""Experiment configs: a typed, nested config, the named presets, and how files and flags override them.

An experiment is a data set, a model, the subset ratio, the number of trials and a seed, plus four
sections:

- ``recipe``: how one model trains (epochs, batch size, the optimizer: SGD with momentum or Adam/AdamW, weight
  decay, label smoothing, learning-rate schedule, augmentation, accelerator switches);
- ``resources``: what one trial asks Ray for, and how often it is tried;
- ``estimator``: how the accumulator keeps the counts (pair matrix, its batching and sharding);
- ``budget``: the paper's time per epoch, for GPU-hour estimates only.

:func:`resolve_config` starts from a preset, applies a YAML/TOML file, then overrides (flags or
``--set section.key=value``), and validates the result before anything starts: every name is checked
against what exists (``catalog``, the data sets), every number against its range, and an error names
the key, the bad value and the valid choices. Files and overrides may give a key flat
(``epochs: 80``) or in its section (``recipe: {epochs: 80}`` / ``recipe.epochs``).

Each preset is a plain file, ``presets/<name>.yaml``: a complete config in the format of a user's file, read by the
same reader, so a preset can be read, diffed and copied as it is. Each key is described once, on its field
(``description``, and the ``RESUMABLE`` mark of keys that may change on resume); :func:`config_keys` hands those
to help texts and key tables.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raymem.errors import RaymemError
from raymem.estimator.formulas import PAPER_SUBSET_RATIO, subset_size
from raymem.config.catalog import MODEL_NAMES, SCHEDULE_OPTIONS
from raymem.config.yaml_reader import describe_yaml_error, load_yaml
from raymem.data.datasets import (DATASET_NAMES, IMAGEFOLDER_PREFIX, NPZ_PREFIX, PARQUET_PREFIX, TFDS_PREFIX,
                                  TFDS_STREAMING_NAMES, data_options)

#: Set to "1" in the workers of multi-node trials: they build with tf-keras (see keras_backend).
LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"

Switch = Literal["auto", "on", "off"]

#: The mark (``json_schema_extra``) of a field that may change between invocations of the same run; everything
#: else must match the stored config to resume it.
RESUMABLE = {"resumable": True}


def _one_of(value: str, choices, what: str) -> str:
    """``value`` if it is one of ``choices``; else the ValueError pydantic reports with the key and its value."""
    if value not in choices:
        raise ValueError(f"is not {what}; choose one of {', '.join(choices)}")
    return value


#: The most trials one run may plan: the pair matrix counts in float32, which counts every whole number exactly only
#: up to 2**24, and a count that stops growing would bias every influence estimate without an error.
MAX_TRIALS = 2**24


class _Section(BaseModel):
    """A frozen config part: unknown keys are refused, values are checked on construction.

    Strict types: YAML and TOML give each value its type, and a value of the wrong one is a mistake to name, not to
    convert (``trials: true`` is not 1 trial, ``epochs: 2.5`` not 2); an int is still a valid float.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def _switch_from_bool(value):
    """YAML 1.1 reads an unquoted ``on``/``off`` as true/false: take those as the switch values they were written as."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class Recipe(_Section):
    """How one model trains (supplement, section B)."""

    epochs: int = Field(gt=0, le=100_000, description="Training epochs of one trial.")
    batch_size: int = Field(gt=0, description="Examples per optimizer step.")
    base_lr: float = Field(gt=0, allow_inf_nan=False, description="Peak learning rate of the schedule.")
    schedule: str = Field(description=f"Learning-rate schedule: {', '.join(SCHEDULE_OPTIONS)}.")
    schedule_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of the schedule: "
                    + "; ".join(f"{kind}: {', '.join(params)}" for kind, params in SCHEDULE_OPTIONS.items() if params)
                    + ".")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    # The optimizer keys (issue 17): their defaults are the paper's recipe, so every paper preset trains as before.
    optimizer: Literal["sgd", "adam", "adamw"] = Field(
        default="sgd", description="Optimizer: sgd (with momentum), adam or adamw (base_lr and the schedule "
                                   "drive each; momentum is SGD's only).")
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False,
                                description="Decoupled weight decay per step (Keras' weight_decay, each weight "
                                            "shrinks by lr x weight_decay; 0: off).")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1,
                                   description="Label smoothing of the cross-entropy: the target puts this mass "
                                               "uniformly on all classes (0: off).")
    nesterov: bool = Field(default=False, description="Nesterov momentum (sgd only).")
    augment_pad: int = Field(default=0, ge=0,
                             description="Random crop after zero padding by this many pixels (0: off).")
    augment_flip: bool = Field(default=False, description="Random left-right flips.")
    mixed_precision: Switch = Field(default="auto", json_schema_extra=RESUMABLE,
                                    description="Mixed-precision training: auto, on or off; auto is on when the trial "
                                                "sees a GPU.")
    xla: Switch = Field(default="auto", json_schema_extra=RESUMABLE,
                        description="XLA compilation: auto, on or off; auto is on when the trial sees a GPU.")

    _switches_from_bools = field_validator("mixed_precision", "xla", mode="before")(_switch_from_bool)

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        return _one_of(value, SCHEDULE_OPTIONS, "a schedule")

    @model_validator(mode="after")
    def _optimizer_options_fit(self) -> "Recipe":
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError(f"nesterov=true is an option of optimizer sgd, not {self.optimizer}; "
                             "set nesterov: false or optimizer: sgd")
        # Keras decays every optimizer's weights decoupled, so Adam with a decay would silently be AdamW and not
        # the L2-coupled Adam that other frameworks call Adam with weight decay: say which one trains
        if self.optimizer == "adam" and self.weight_decay > 0:
            raise ValueError(f"optimizer adam with weight_decay={self.weight_decay:g} is AdamW (Keras decays "
                             "weights decoupled); write optimizer: adamw, or weight_decay: 0")
        return self

    @model_validator(mode="after")
    def _schedule_params_fit(self) -> "Recipe":
        allowed = SCHEDULE_OPTIONS[self.schedule]
        for key, value in self.schedule_params.items():
            if key not in allowed:
                raise ValueError(f"schedule_params.{key} is not a parameter of schedule {self.schedule!r}; "
                                 f"its parameters: {', '.join(allowed) or 'none'}")
            if key == "decay_epochs":
                ok = isinstance(value, list) and all(_is_number(v) and v >= 0 for v in value) and value == sorted(value)
                if not ok:
                    raise ValueError(f"schedule_params.decay_epochs={value!r} must be a list of increasing epochs >= 0")
            elif not _is_number(value) or value < 0 or (key == "warmup_fraction" and value >= 1) \
                    or (key == "decay_factor" and value == 0):
                bound = "in [0, 1)" if key == "warmup_fraction" else "> 0" if key == "decay_factor" else ">= 0"
                raise ValueError(f"schedule_params.{key}={value!r} must be a number {bound}")
        return self


class Resources(_Section):
    """What one trial asks Ray for, and how many times it is tried."""

    cpus_per_trial: float = Field(default=1.0, gt=0, le=1024, allow_inf_nan=False, json_schema_extra=RESUMABLE,
                                  description="CPUs one trial asks Ray for.")
    gpus_per_trial: float = Field(default=0.0, ge=0, le=64, allow_inf_nan=False, json_schema_extra=RESUMABLE,
                                  description="GPUs one trial asks Ray for: below 1 shares a GPU, above 1 takes that "
                                              "many GPUs of one node (a whole number).")
    nodes_per_trial: int = Field(default=1, gt=0, le=4096, json_schema_extra=RESUMABLE,
                                 description="Nodes of one trial; above 1 a multi-worker Ray Train group "
                                             "(tf-keras path).")
    max_attempts: int = Field(default=3, gt=0, le=100, json_schema_extra=RESUMABLE,
                              description="Tries per trial before it is reported failed.")
    checkpoint_every: int | None = Field(default=None, gt=0, json_schema_extra=RESUMABLE,
                                         description="Save a trial's state every N epochs (null: off).")
    keep_models: bool = Field(default=False, json_schema_extra=RESUMABLE,
                              description="Keep each trial's final weights in RUN/checkpoints/.")
    max_pending: int | None = Field(default=None, gt=0, json_schema_extra=RESUMABLE,
                                    description="Cap on the trials' resources shown to the autoscaler (null: no cap).")
    pack: int | Literal["auto"] = Field(
        default=1, json_schema_extra=RESUMABLE,
        description="Trials trained together as one packed model, asking for one trial's resources; auto: the "
                    "largest K whose measured step time still grows sub-linearly, capped by memory.")

    @field_validator("pack", mode="before")
    @classmethod
    def _pack_value(cls, value):
        if value == "auto":
            return value
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("must be a whole number >= 1 (trials per pack) or 'auto'")
        return value

    @model_validator(mode="after")
    def _whole_gpus_for_groups(self) -> "Resources":
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError(f"gpus_per_trial={self.gpus_per_trial:g} must be a whole number when above 1 "
                             "(fractions share one GPU)")
        if self.nodes_per_trial > 1 and 0 < self.gpus_per_trial < 1:
            raise ValueError("nodes_per_trial > 1 needs whole GPUs per node (gpus_per_trial >= 1) or CPU-only workers")
        return self


class EstimatorSettings(_Section):
    """How the accumulator keeps the count tensors."""

    track_pairs: bool = Field(default=True, description="Keep the n_train x n_test pair matrix (influence).")
    # 64, not 256: a larger B makes absorbing cheaper but a mid-run pairs read must first apply up to B - 1 buffered
    # trials (1.0 s for 213 pending at the CIFAR-100 shape, scripts/bench_estimator.py), and the reads are what a
    # user waits on; an absorb is tens of ms, far below any trial's time, so the accumulator is never the bottleneck.
    pair_batch: int = Field(default=64, gt=0, json_schema_extra=RESUMABLE,
                            description="Trials buffered per pair-matrix update.")
    pair_shards: int = Field(default=1, gt=0, le=4096, json_schema_extra=RESUMABLE,
                             description="Split the pair matrix by training rows over this many actors.")
    influence_scope: Literal["full", "class"] = Field(
        default="full", json_schema_extra=RESUMABLE,
        description="full: every (train, test) pair; class: only pairs of the same label, one block per class.")


class Budget(_Section):
    """The paper's time per epoch (supplement B), used only for GPU-hour estimates."""

    paper_epoch_seconds: float | None = Field(default=None, gt=0, json_schema_extra=RESUMABLE,
                                              description="The paper's seconds per epoch (supplement B), for GPU-hour "
                                                          "estimates only (null: unknown).")
    paper_gpus: float | None = Field(default=None, gt=0, json_schema_extra=RESUMABLE,
                                     description="GPUs the paper's epoch time was measured on (null: unknown).")


class ExperimentConfig(_Section):
    """One experiment: what is studied (data, model, subsets, trials) and its four sections."""

    preset: str = Field(description="Name of the preset the config starts from.")
    dataset: str = Field(description=f"Data set: {', '.join(DATASET_NAMES)}, {NPZ_PREFIX}FILE.npz, "
                                     f"{PARQUET_PREFIX}DIR, {IMAGEFOLDER_PREFIX}DIR (DIR/train/<class>/*, "
                                     f"DIR/test/<class>/*) or {TFDS_PREFIX}NAME[:CONFIG] (any image-classification "
                                     "TFDS builder prepared under the data dir).")
    image_size: int | None = Field(default=None, gt=0,
                                   description=f"Resize the images of an {IMAGEFOLDER_PREFIX} data set to this square "
                                               "size (null: keep their size, which all must share).")
    train_split: str = Field(default="train", description=f"The split of a {TFDS_PREFIX} data set trials train "
                                                         "on (a TFDS split name, e.g. train[:90%]).")
    test_split: str = Field(default="test", description=f"The split of a {TFDS_PREFIX} data set that is the test "
                                                       "set (a TFDS split name, e.g. validation).")
    model: str = Field(description=f"Model: {', '.join(MODEL_NAMES)}, or your own as MODULE:FUNCTION or "
                                   "FILE.py:FUNCTION (see the README's \"Your own data and model\").")
    model_params: dict[str, Any] = Field(default_factory=dict,
                                         description="Keyword arguments of your own model's function "
                                                     "(model MODULE:FUNCTION); empty for the catalog's models.")
    trials: int = Field(gt=0, le=MAX_TRIALS, json_schema_extra=RESUMABLE,
                        description="Trials planned for the run: models trained on random subsets.")
    subset_ratio: float = Field(default=PAPER_SUBSET_RATIO, gt=0, lt=1,
                                description="m / n: the fraction of the training set in each trial's subset.")
    seed: int = Field(default=0, ge=0, lt=2**63, description="Run seed; trial k's subset is drawn from (seed, k).")
    flip_labels: float = Field(default=0.0, ge=0, lt=1, description="Fraction of training labels flipped as canaries.")
    recipe: Recipe = Field(description=Recipe.__doc__)
    resources: Resources = Field(default_factory=Resources, description=Resources.__doc__)
    estimator: EstimatorSettings = Field(default_factory=EstimatorSettings, description=EstimatorSettings.__doc__)
    budget: Budget = Field(default_factory=Budget, description=Budget.__doc__)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        local = (NPZ_PREFIX, PARQUET_PREFIX, IMAGEFOLDER_PREFIX, TFDS_PREFIX)
        if value in DATASET_NAMES or (value.startswith(local) and value.split(":", 1)[1]):
            return value
        raise ValueError(f"is not a data set; choose one of {', '.join(DATASET_NAMES)}, "
                         f"{NPZ_PREFIX}FILE.npz, {PARQUET_PREFIX}DIR, {IMAGEFOLDER_PREFIX}DIR or "
                         f"{TFDS_PREFIX}NAME[:CONFIG]")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if ":" in value:  # your own model by import path: imported and checked on the data before Ray starts
            target, _, function = value.rpartition(":")
            if target.strip() and function.isidentifier():
                return value
            raise ValueError("is neither a catalog model nor MODULE:FUNCTION / FILE.py:FUNCTION; write e.g. "
                             "nets.py:tiny_cnn")
        return _one_of(value, MODEL_NAMES, "a model")

    @model_validator(mode="after")
    def _params_for_own_models(self) -> "ExperimentConfig":
        if self.model_params and ":" not in self.model:
            raise ValueError(f"model_params are keyword arguments of your own model's function, and model "
                             f"{self.model!r} is a catalog model that takes none; drop model_params")
        if self.image_size is not None and not self.dataset.startswith(IMAGEFOLDER_PREFIX):
            raise ValueError(f"image_size resizes the images of an {IMAGEFOLDER_PREFIX} data set, and data set "
                             f"{self.dataset!r} is not one; set image_size: null")
        if (self.train_split, self.test_split) != ("train", "test") and not self.dataset.startswith(TFDS_PREFIX):
            raise ValueError(f"train_split and test_split choose the splits of a {TFDS_PREFIX} data set, and data set "
                             f"{self.dataset!r} is not one; leave them at train and test")
        if self.train_split == self.test_split:
            raise ValueError(f"train_split and test_split are both {self.train_split!r}: a test set must be other "
                             "examples than the training set; choose two splits")
        return self

    @model_validator(mode="after")
    def _pack_fits(self) -> "ExperimentConfig":
        pack = self.resources.pack
        if pack == 1:
            return self
        if self.dataset in TFDS_STREAMING_NAMES:
            raise ValueError(f"resources.pack={pack!r} trains the copies of a pack from one in-memory training set, "
                             f"and data set {self.dataset!r} streams from files; use pack=1")
        if pack != "auto" and pack > self.trials:
            raise ValueError(f"resources.pack={pack} is larger than trials={self.trials}; use pack <= trials")
        if self.uses_train_group:
            raise ValueError(f"resources.pack={pack!r} packs small trials into one warm task; it cannot be combined "
                             "with gpus_per_trial > 1 or nodes_per_trial > 1; use pack=1")
        return self

    @property
    def data_options(self) -> dict:
        """How the data set is read: the keyword arguments of ``datasets.load_dataset`` this config sets."""
        return data_options(self.to_dict())

    @property
    def uses_train_group(self) -> bool:
        """Big trials (several GPUs or nodes) run as a Ray Train worker group; small ones as warm tasks."""
        return self.resources.gpus_per_trial > 1 or self.resources.nodes_per_trial > 1

    def subset_size(self, n_train: int) -> int:
        """Return m, the size of every trial's training subset, for a training set of ``n_train``."""
        return subset_size(n_train, self.subset_ratio)

    def to_dict(self) -> dict:
        """Return the config as a nested JSON-able dict (what run.json stores)."""
        return self.model_dump(mode="json")

    def flat(self) -> dict:
        """Return ``{key: value}`` with every section's keys at the top (key names are unique)."""
        return flatten(self.to_dict())


SECTIONS: dict[str, type[_Section]] = {
    "recipe": Recipe, "resources": Resources, "estimator": EstimatorSettings, "budget": Budget,
}
TOP_KEYS = tuple(k for k in ExperimentConfig.model_fields if k not in SECTIONS)
#: Flat key -> its section (None for the top-level keys).
KEY_SECTION: dict[str, str | None] = {
    **{key: None for key in TOP_KEYS},
    **{key: section for section, cls in SECTIONS.items() for key in cls.model_fields},
}


def config_keys() -> list[dict]:
    """Return every config key, in the order of a config file, with what a help text or a key table shows.

    Each key is a dict: ``key`` (dotted path, ``recipe.epochs``), ``name`` (flat name, ``epochs``), ``section``
    (None for the top-level keys), ``type`` (``int``, ``auto, on or off``, ``int or null``), ``default`` (its
    JSON value; None when ``required``), ``required`` (no default: every preset gives it), ``description`` and
    ``resumable`` (whether it may change when a run is resumed).
    """
    keys = []
    for section, fields in [(None, {k: ExperimentConfig.model_fields[k] for k in TOP_KEYS}),
                            *((name, cls.model_fields) for name, cls in SECTIONS.items())]:
        for name, field in fields.items():
            required = field.is_required()
            default = None if required else field.get_default(call_default_factory=True)
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            keys.append({
                "key": f"{section}.{name}" if section else name, "name": name, "section": section,
                "type": _type_name(field.annotation), "default": default, "required": required,
                "description": field.description, "resumable": bool(extra.get("resumable", False)),
            })
    return keys


def _type_name(annotation) -> str:
    """``int``, ``float or null``, ``auto, on or off``, ``mapping``: a field's type as a config file writes it.

    In words rather than ``|``, which would split a cell of a Markdown table.
    """
    names = _type_names(annotation)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _type_names(annotation) -> list[str]:
    """The alternatives a type allows: ``int | Literal["auto"]`` -> ``["int", "auto"]``."""
    origin = get_origin(annotation)
    if origin is Literal:
        return [str(arg) for arg in get_args(annotation)]
    if origin in (Union, UnionType):
        return [name for arg in get_args(annotation) for name in _type_names(arg)]
    if annotation is type(None):
        return ["null"]
    if origin is dict:
        return ["mapping"]
    return [getattr(annotation, "__name__", str(annotation))]


def keys_table() -> list[list[str]]:
    """Return rows (header first) describing every config key, for ``--help`` texts and the README's key table."""
    rows = [["key", "type", "default", "on resume", "description"]]
    for key in config_keys():
        default = "(preset)" if key["required"] else json.dumps(key["default"]).strip('"')
        rows.append([key["key"], key["type"], default, "may change" if key["resumable"] else "must match",
                     key["description"]])
    return rows


#: Flat names of the keys that may change between invocations of the same run (marked ``RESUMABLE`` on
#: their fields); everything else must match to resume.
RESUMABLE_KEYS: tuple[str, ...] = tuple(key["name"] for key in config_keys() if key["resumable"])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flatten(config: dict) -> dict:
    """Return a stored config (nested, or flat as runs before sections stored it) with flat keys."""
    out = {}
    for key, value in config.items():
        if key in SECTIONS and isinstance(value, dict):
            out.update(value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict:
    """Read a YAML or TOML experiment file into a dict of overrides (it may name a ``preset``)."""
    path = Path(path)
    if not path.is_file():
        raise RaymemError(f"experiment file {path} does not exist; pass a preset name ({', '.join(preset_names())}) "
                          "or a .yaml/.toml file.")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else load_yaml(text)
    except tomllib.TOMLDecodeError as exc:
        raise RaymemError(f"experiment file {path} is not valid TOML ({exc}); fix its syntax.") from None
    except yaml.YAMLError as exc:
        raise RaymemError(f"experiment file {path} is not valid YAML {describe_yaml_error(exc)}; "
                          "fix its syntax.") from None
    if not isinstance(data, dict):
        raise RaymemError(f"experiment file {path} must hold a mapping of config keys; "
                          "see the README's config section.")
    return data


def parse_settings(settings: list[str] | None) -> dict:
    """Turn ``--set`` items (``key=value`` or ``section.key=value``; values read as YAML) into overrides."""
    overrides: dict = {}
    for item in settings or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise RaymemError(f"--set {item!r} is not KEY=VALUE; write e.g. --set recipe.epochs=80.")
        try:
            overrides[key.strip()] = load_yaml(text) if text.strip() else None
        except yaml.YAMLError:
            overrides[key.strip()] = text
    return overrides


def _nest(values: dict, source: str) -> dict:
    """Place flat, dotted and sectioned keys into the nested layout; refuse unknown keys."""
    nested: dict = {}
    for key, value in values.items():
        section, _, sub = key.partition(".")
        if sub and section in SECTIONS and sub in SECTIONS[section].model_fields:
            nested.setdefault(section, {})[sub] = value
        elif sub and section == "model_params":  # --set model_params.width=32: one argument of your own model
            nested.setdefault(section, {})[sub] = value
        elif key in SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                if sub_key not in SECTIONS[key].model_fields:
                    _unknown(f"{key}.{sub_key}", source)
                nested.setdefault(key, {})[sub_key] = sub_value
        elif key in KEY_SECTION:
            target = KEY_SECTION[key]
            (nested.setdefault(target, {}) if target else nested)[key] = value
        else:
            _unknown(key, source)
    return nested


def _unknown(key: str, source: str):
    raise RaymemError(f"unknown config key {key!r} in {source}; valid keys: {', '.join(sorted(KEY_SECTION))} "
                      f"(flat, or as section.key with sections {', '.join(SECTIONS)}).")


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            and key in (*SECTIONS, "model_params") else value
    return out


def with_overrides(base: ExperimentConfig, overrides: dict, source: str, *,
                   keep_none: bool = False) -> ExperimentConfig:
    """Return ``base`` with ``overrides`` (flat, dotted or sectioned keys), validated.

    None values mean "not given" (flags left out) and are ignored, unless ``keep_none`` (``--set key=null``:
    an explicit None, e.g. checkpoints off).

    Raises:
        RaymemError: naming the key, the bad value and what would be valid.
    """
    values = {k: v for k, v in overrides.items() if keep_none or v is not None}
    return _validate(_merge(base.to_dict(), _nest(values, source)), source)


def _validate(merged: dict, source: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise RaymemError(_describe(exc, merged, source)) from None


def _describe(exc: ValidationError, merged: dict, source: str) -> str:
    """One sentence for the first problem pydantic found: the key, its value, what is wrong."""
    error = exc.errors(include_url=False)[0]
    location = [str(part) for part in error["loc"]]
    if error["type"] == "extra_forbidden":
        return f"unknown config key {'.'.join(location)!r} in {source}; valid keys: {', '.join(sorted(KEY_SECTION))}."
    if error["type"] == "missing":
        return f"config key {'.'.join(location)} is missing in {source}; add it, as every preset file does."
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error" and (not location or location[-1] not in KEY_SECTION):
        where = f"section {'.'.join(location)} of the config" if location else "the config"
        return f"{where} in {source} is invalid: {message}; fix that key."  # a check across keys of one section
    key = ".".join(location) or "config"
    shown = error.get("input", _lookup(merged, location))
    return f"config key {key}={shown!r} in {source} is invalid: {message}; fix that key."


def _lookup(tree: dict, location: list[str]):
    for part in location:
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


#: The preset files shipped in the package: ``<name>.yaml``, each a complete config in a user file's format.
PRESET_DIR = Path(__file__).with_name("presets")
#: The order ``raymem presets`` lists them in: the embedded default, the paper's experiments by data size, then the
#: fast recipes.
#: A preset file not named here follows, in name order.
_PRESET_ORDER = ("digits", "mnist", "cifar10", "cifar100", "cifar100-resnet18", "cifar100-inception",
                 "cifar100-densenet100", "cifar100-linear", "imagenet", "mnist-fast", "cifar10-fast",
                 "cifar100-fast")


def preset_names() -> list[str]:
    """Return the names of the shipped presets (their file names without ``.yaml``), in listing order."""
    found = {path.stem for path in PRESET_DIR.glob("*.yaml")}
    return [name for name in _PRESET_ORDER if name in found] + sorted(found - set(_PRESET_ORDER))


def preset_file(name: str) -> Path:
    """Return the path of preset ``name``'s file (to read, or to copy as the start of one's own config)."""
    names = preset_names()
    if name not in names:
        raise RaymemError(f"unknown preset {name!r}; use one of {', '.join(names)}.")
    return PRESET_DIR / f"{name}.yaml"


def load_config_file(path: str | Path) -> ExperimentConfig:
    """Return the config a complete config file describes (a preset file), validated with no preset under it.

    Raises:
        RaymemError: an unreadable file, an unknown key, a missing or a bad value.
    """
    return _validate(_nest(read_config_file(path), str(path)), str(path))


def _load_presets() -> dict[str, ExperimentConfig]:
    presets = {}
    for name in preset_names():
        config = load_config_file(PRESET_DIR / f"{name}.yaml")
        if config.preset != name:
            raise RaymemError(f"preset file {name}.yaml says preset: {config.preset}; a preset file names itself, "
                              f"so write preset: {name}.")
        presets[name] = config
    return presets


#: Preset name -> its config, read from :data:`PRESET_DIR` on import.
PRESETS: dict[str, ExperimentConfig] = _load_presets()


def resolve_config(experiment: str, overrides: dict | None = None) -> ExperimentConfig:
    """Return the config of a preset name or a ``.yaml``/``.toml`` file, with ``overrides`` applied.

    Args:
        experiment: a key of :data:`PRESETS`, or a config file that may name a ``preset`` (default digits).
        overrides: flat (``epochs``), dotted (``recipe.epochs``) or sectioned keys; None values are ignored.

    Returns:
        The validated config.

    Raises:
        RaymemError: an unknown experiment, an unreadable file, an unknown key or a bad value.
    """
    if experiment in PRESETS:
        values: dict = {}
        base, source = PRESETS[experiment], experiment
    elif experiment.endswith((".yaml", ".yml", ".toml")):
        values = read_config_file(experiment)
        preset = values.pop("preset", "digits")
        if preset not in PRESETS:
            raise RaymemError(f"experiment file {experiment} names preset {preset!r}; use one of {', '.join(PRESETS)}.")
        base, source = PRESETS[preset], experiment
    else:
        raise RaymemError(f"unknown experiment {experiment!r}; use a preset ({', '.join(PRESETS)}) "
                          "or a .yaml/.toml file.")
    config = with_overrides(base, values, source)
    return with_overrides(config, overrides or {}, f"{source} with the given flags") if overrides else config


def compare_for_resume(stored: dict, new: ExperimentConfig, run: str) -> None:
    """Refuse to resume ``run`` with a config that differs in anything but :data:`RESUMABLE_KEYS`.

    ``stored`` is the config in run.json, nested or flat (runs from before the sections stored it flat).
    """
    fixed = {k: v for k, v in new.flat().items() if k not in RESUMABLE_KEYS}
    # a key added since the run started (model_params, image_size, ...) is its default there
    defaults = {key["name"]: key["default"] for key in config_keys() if not key["required"]}
    old = {k: v for k, v in {**defaults, **flatten(stored)}.items() if k not in RESUMABLE_KEYS}
    diff = sorted(k for k in set(fixed) | set(old) if fixed.get(k) != old.get(k))
    if diff:
        k = diff[0]
        raise RaymemError(
            f"run {run} was started with {k}={old.get(k)!r} but this invocation has {k}={fixed.get(k)!r}; "
            "resume it with the same config or start a new run with --name."
        )


def gpu_hours(config: ExperimentConfig) -> float | None:
    """Return the GPU-hours of the configured trials at the paper's per-epoch time (None when unknown)."""
    budget = config.budget
    if budget.paper_epoch_seconds is None or budget.paper_gpus is None:
        return None
    return config.trials * config.recipe.epochs * budget.paper_epoch_seconds * budget.paper_gpus / 3600.0


def describe_resources(resources: Resources) -> str:
    """``4 CPU, 1 GPU`` / ``32 CPU, 8 GPU x 2 nodes``: what one trial asks for."""
    gpus = f", {resources.gpus_per_trial:g} GPU" if resources.gpus_per_trial else ""
    text = f"{resources.cpus_per_trial:g} CPU" + gpus
    return text + (f" x {resources.nodes_per_trial} nodes" if resources.nodes_per_trial > 1 else "")


def describe_augment(recipe: Recipe) -> str:
    """``pad-crop 4, flip`` or ``-``."""
    return ", ".join(filter(None, [f"pad-crop {recipe.augment_pad}" if recipe.augment_pad else "",
                                   "flip" if recipe.augment_flip else ""])) or "-"


def presets_table(budget_trials: int = 2000) -> list[list[str]]:
    """Return rows (header first) describing every preset, with the GPU-hours of ``budget_trials`` trials."""
    rows = [["preset", "data set", "model", "epochs", "batch", "base LR", "schedule", "augment",
             "per trial", "paper s/epoch", f"GPU-h for {budget_trials:,} trials"]]
    for key, c in PRESETS.items():
        c = c.model_copy(update={"trials": budget_trials})
        hours, r, b = gpu_hours(c), c.recipe, c.budget
        epoch_time = "-" if b.paper_epoch_seconds is None else (
            f"{b.paper_epoch_seconds:g} ({b.paper_gpus:g} GPU)" if b.paper_gpus != 1 else f"{b.paper_epoch_seconds:g}")
        rows.append([key, c.dataset, c.model, str(r.epochs), str(r.batch_size), f"{r.base_lr:g}", r.schedule,
                     describe_augment(r), describe_resources(c.resources), epoch_time,
                     "-" if hours is None else f"{hours:,.0f}"])
    return rows
