"""Experiment configs: presets, files, flags, validation, resume checks and the dry-run plan."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from raymem.cli import app
from raymem.errors import RaymemError
from raymem.config.experiment import (
    PRESET_DIR, PRESETS, RESUMABLE_KEYS, config_keys, compare_for_resume, gpu_hours, keys_table, load_config_file,
    preset_file, resolve_config,
)
from raymem.driver.run import plan


def test_every_preset_is_valid_and_names_known_parts():
    from raymem.data.datasets import DATASET_NAMES
    from raymem.training.models import _BUILDERS
    from raymem.config.catalog import MODEL_NAMES, SCHEDULE_KINDS

    assert set(_BUILDERS) == set(MODEL_NAMES)  # every model name in the catalog has a builder
    for name, config in PRESETS.items():
        assert resolve_config(name) == config
        assert config.model in MODEL_NAMES and config.recipe.schedule in SCHEDULE_KINDS
        assert config.dataset in DATASET_NAMES or config.dataset.startswith("npz:")


def test_paper_recipes_are_the_supplements():
    imagenet, cifar, mnist = PRESETS["imagenet"], PRESETS["cifar100"], PRESETS["mnist"]
    assert (imagenet.recipe.batch_size, imagenet.recipe.base_lr, imagenet.recipe.epochs) == (896, 0.7, 100)
    assert imagenet.recipe.schedule_params == {"warmup_epochs": 15, "decay_epochs": [30, 60, 90], "decay_factor": 10.0}
    assert imagenet.resources.gpus_per_trial == 8 and imagenet.uses_train_group and imagenet.recipe.augment_pad == 32
    r = cifar.recipe
    assert (r.batch_size, r.base_lr, r.epochs, r.augment_pad) == (512, 0.4, 160, 4)
    assert (mnist.recipe.batch_size, mnist.recipe.base_lr, mnist.recipe.epochs) == (256, 0.1, 30)
    assert PRESETS["cifar100-densenet100"].recipe.batch_size == 256 and PRESETS["cifar100-linear"].recipe.epochs == 40
    # 2,000 ImageNet trials x 100 epochs x 30 min x 8 GPUs
    assert gpu_hours(imagenet) == pytest.approx(2000 * 100 * 0.5 * 8)


# Written out from supplement B and the preset tables, independently of the preset files: data set, model, trials,
# (epochs, batch size, base LR, schedule, pad, flip), (CPUs, GPUs, checkpoint every), (paper s/epoch, paper GPUs).
CIFAR = (160, 512, 0.4, "warmup_linear_decay", 4, True)
EXPECTED_PRESETS = {
    "digits": ("digits", "small_cnn", 64, (30, 32, 0.05, "warmup_linear_decay", 0, False), (1, 0, None), (None, None)),
    "mnist": ("mnist", "inception", 2000, (30, 256, 0.1, "warmup_linear_decay", 0, False), (2, 0.25, None), (7, 1)),
    "cifar10": ("cifar10", "resnet50", 2000, CIFAR, (4, 1, 5), (90, 1)),
    "cifar100": ("cifar100", "resnet50", 2000, CIFAR, (4, 1, 5), (90, 1)),
    "cifar100-resnet18": ("cifar100", "resnet18", 2000, CIFAR, (4, 1, 5), (17, 1)),
    "cifar100-inception": ("cifar100", "inception", 2000, CIFAR, (4, 1, 5), (14, 1)),
    "cifar100-densenet100": ("cifar100", "densenet100", 2000, (160, 256, 0.2, "warmup_linear_decay", 4, True),
                             (4, 1, 5), (45, 1)),
    "cifar100-linear": ("npz:cifar100-features.npz", "linear", 2000, (40, 512, 0.4, "warmup_linear_decay", 0, False),
                        (1, 0.125, None), (0.5, 1)),
    "imagenet": ("imagenet2012", "resnet50", 2000, (100, 896, 0.7, "warmup_piecewise", 32, True), (32, 8, 1),
                 (1800, 8)),
    # the public MNIST examples' small CNN for their 12 epochs (batch 128): see the preset file
    "mnist-fast": ("mnist", "small_cnn", 2000, (12, 128, 0.05, "warmup_linear_decay", 0, False), (1, 0.25, None),
                   (None, None)),
    # airbench94's recipe (KellerJordan/cifar10-airbench) in raymem's terms: see the preset file
    "cifar10-fast": ("cifar10", "airbench94", 2000, (35, 1024, 1.5, "warmup_linear_decay", 2, True), (2, 0.25, None),
                     (None, None)),
    # the same with the 100-way head and 34 epochs (within 1/50 of cifar100's FLOPs)
    "cifar100-fast": ("cifar100", "airbench94", 2000, (34, 1024, 1.5, "warmup_linear_decay", 2, True),
                      (2, 0.25, None), (None, None)),
}

AIRBENCH = ("cifar10-fast", "cifar100-fast")


def test_the_preset_files_hold_the_papers_values():
    assert list(PRESETS) == list(EXPECTED_PRESETS)  # `raymem presets` lists them in this order
    for name, (dataset, model, trials, recipe, resources, budget) in EXPECTED_PRESETS.items():
        c = PRESETS[name]
        r = c.recipe
        assert (c.preset, c.dataset, c.model, c.trials) == (name, dataset, model, trials), name
        assert (r.epochs, r.batch_size, r.base_lr, r.schedule, r.augment_pad, r.augment_flip) == recipe, name
        got = (c.resources.cpus_per_trial, c.resources.gpus_per_trial, c.resources.checkpoint_every)
        assert got == resources, name
        assert (c.budget.paper_epoch_seconds, c.budget.paper_gpus) == budget, name
        # what no preset changes: the paper's subset ratio, seed 0, one try of three, full pairs; and the paper's
        # presets SGD with momentum 0.9 (a fast preset has its source's optimizer)
        momentum = 0.85 if name in AIRBENCH else 0.9
        assert (c.subset_ratio, c.seed, c.flip_labels, r.momentum, r.mixed_precision, r.xla) == (0.7, 0, 0, momentum,
                                                                                                 "auto", "auto")
        assert (c.resources.nodes_per_trial, c.resources.max_attempts, c.resources.pack) == (1, 3, 1)
        assert c.estimator.track_pairs
        warmup = {"warmup_epochs": 15, "decay_epochs": [30, 60, 90], "decay_factor": 10.0} if name == "imagenet" \
            else {"warmup_fraction": 0.23 if name in AIRBENCH else 0.15}
        assert r.schedule_params == warmup
        scope = (16, "class") if name == "imagenet" else (64, "full")
        assert (c.estimator.pair_batch, c.estimator.influence_scope) == scope


def test_every_preset_file_is_a_complete_config_that_reads_as_a_users_file():
    import yaml

    assert sorted(path.stem for path in PRESET_DIR.glob("*.yaml")) == sorted(PRESETS)
    for name, config in PRESETS.items():
        path = preset_file(name)
        written = yaml.safe_load(path.read_text())
        # complete: every key is written, and the loader adds nothing and changes no type (10.0 stays a float)
        assert json.dumps(written) == json.dumps(config.to_dict()), name
        assert load_config_file(path) == config
        assert resolve_config(str(path)) == config  # as a user's file: preset: NAME plus every key
        copy = resolve_config(str(path), {"epochs": 3})
        assert copy.recipe.epochs == 3 and copy.model == config.model


def test_a_preset_file_names_itself_and_is_complete(tmp_path, monkeypatch):
    import raymem.config.experiment as experiment

    with pytest.raises(RaymemError, match="unknown preset 'cifar1000'; use one of digits, mnist"):
        preset_file("cifar1000")
    partial = tmp_path / "partial.yaml"
    partial.write_text("preset: partial\ndataset: digits\nmodel: small_cnn\ntrials: 4\n")
    with pytest.raises(RaymemError, match="config key recipe is missing in .*partial.yaml; add it"):
        load_config_file(partial)
    partial.write_text(partial.read_text() + "recipe: {epochs: 3, batch_size: 8, base_lr: 0.1}\n")
    with pytest.raises(RaymemError, match="config key recipe.schedule is missing in .*partial.yaml"):
        load_config_file(partial)
    misnamed = tmp_path / "other.yaml"
    misnamed.write_text(preset_file("digits").read_text())
    monkeypatch.setattr(experiment, "PRESET_DIR", tmp_path)
    monkeypatch.setattr(experiment, "preset_names", lambda: ["other"])
    with pytest.raises(RaymemError, match="preset file other.yaml says preset: digits.*write preset: other"):
        experiment._load_presets()


def test_the_package_ships_the_preset_files():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["raymem"]
    shipped = {path for pattern in patterns for path in (root / "raymem").glob(pattern)}
    assert shipped == set(PRESET_DIR.glob("*.yaml")) and len(shipped) == len(EXPECTED_PRESETS)


def test_config_keys_describe_every_key_once():
    keys = config_keys()
    by_key = {k["key"]: k for k in keys}
    assert len(by_key) == len(keys) == len({k["name"] for k in keys}) == 39
    assert all(k["description"] and k["description"].endswith(".") for k in keys)
    assert by_key["recipe.epochs"] == {
        "key": "recipe.epochs", "name": "epochs", "section": "recipe", "type": "int", "default": None,
        "required": True, "description": "Training epochs of one trial.", "resumable": False,
    }
    trials = by_key["trials"]
    assert (trials["section"], trials["required"], trials["resumable"]) == (None, True, True)
    got = {key: (by_key[key]["type"], by_key[key]["default"], by_key[key]["resumable"]) for key in (
        "subset_ratio", "recipe.schedule_params", "recipe.xla", "resources.checkpoint_every", "resources.pack",
        "estimator.track_pairs", "estimator.influence_scope", "budget.paper_gpus", "recipe.optimizer")}
    assert got == {
        "subset_ratio": ("float", 0.7, False), "recipe.schedule_params": ("mapping", {}, False),
        "recipe.xla": ("auto, on or off", "auto", True), "resources.checkpoint_every": ("int or null", None, True),
        "resources.pack": ("int or auto", 1, True), "estimator.track_pairs": ("bool", True, False),
        "estimator.influence_scope": ("full or class", "full", True),
        "budget.paper_gpus": ("float or null", None, True), "recipe.optimizer": ("sgd, adam or adamw", "sgd", False),
    }
    header, *rows = keys_table()
    assert header == ["key", "type", "default", "on resume", "description"] and len(rows) == len(keys)
    assert ["resources.checkpoint_every", "int or null", "null", "may change"] == rows[
        [r[0] for r in rows].index("resources.checkpoint_every")][:4]
    assert all("|" not in cell for row in rows for cell in row)  # a Markdown table cell each


def test_resumable_keys_are_the_ones_marked_on_the_fields():
    assert set(RESUMABLE_KEYS) == {
        "trials", "cpus_per_trial", "gpus_per_trial", "nodes_per_trial", "max_attempts", "pack", "checkpoint_every",
        "keep_models", "max_pending", "mixed_precision", "xla", "pair_batch", "pair_shards", "influence_scope",
        "paper_epoch_seconds", "paper_gpus",
    } and len(RESUMABLE_KEYS) == 16


@pytest.mark.parametrize("key, value, resumes", [
    ("trials", 9, True), ("gpus_per_trial", 0.5, True), ("pack", 2, True), ("xla", "off", True),
    ("influence_scope", "class", True), ("paper_gpus", 2.0, True), ("checkpoint_every", 2, True),
    ("seed", 1, False), ("subset_ratio", 0.5, False), ("flip_labels", 0.1, False), ("momentum", 0.8, False),
    ("track_pairs", False, False), ("model", "linear", False), ("augment_flip", True, False),
])
def test_resume_accepts_exactly_the_resumable_keys(key, value, resumes):
    stored = PRESETS["digits"].to_dict()
    new = resolve_config("digits", {key: value})
    if resumes:
        compare_for_resume(stored, new, "r")
    else:
        with pytest.raises(RaymemError, match=f"run r was started with {key}="):
            compare_for_resume(stored, new, "r")


def test_file_then_flags_override_the_preset(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("preset: cifar100\nmodel: resnet18\nepochs: 80\n")
    config = resolve_config(str(path), {"epochs": 3, "trials": None})
    got = (config.dataset, config.model, config.recipe.epochs, config.recipe.batch_size)
    assert got == ("cifar100", "resnet18", 3, 512)
    toml = tmp_path / "exp.toml"
    toml.write_text('preset = "mnist"\ngpus_per_trial = 0.5\n')
    assert resolve_config(str(toml)).resources.gpus_per_trial == 0.5
    # sections and dotted keys say the same as flat keys
    nested = tmp_path / "nested.yaml"
    nested.write_text("preset: cifar100\nrecipe: {epochs: 80, momentum: 0.8}\nresources:\n  gpus_per_trial: 0.5\n")
    config = resolve_config(str(nested), {"estimator.pair_batch": 8})
    assert (config.recipe.epochs, config.recipe.momentum, config.resources.gpus_per_trial) == (80, 0.8, 0.5)
    assert config.estimator.pair_batch == 8 and config.recipe.batch_size == 512


@pytest.mark.parametrize("text, match", [
    ("preset: cifar100\nepochz: 3\n", "unknown config key 'epochz'.*valid keys"),
    ("recipe: {epochz: 3}\n", "unknown config key 'recipe.epochz'"),
    ("preset: nope\n", "names preset"),
    ("- a\n- b\n", "must hold a mapping"),
    ("epochs: [\n", "not valid YAML"),
    ("epochs: 0\n", "recipe.epochs=0 .*greater than 0"),
    ("subset_ratio: 1.5\n", "subset_ratio=1.5 .*less than 1"),
    ("gpus_per_trial: 2.5\n", "whole number"),
    ("xla: maybe\n", "recipe.xla='maybe' .*'auto', 'on' or 'off'"),
    ('base_lr: "abc"\n', "recipe.base_lr='abc' .*valid number"),
    ("base_lr: .nan\n", "recipe.base_lr=nan .*finite"),
    ("model: resnet5O\n", "model='resnet5O' .*choose one of resnet50"),
    ("dataset: imagenet21k\n", "dataset='imagenet21k' .*choose one of digits"),
    ("schedule: cosine\n", "recipe.schedule='cosine' .*warmup_piecewise"),
    ("schedule_params: {warmup_epochs: 3}\n", "warmup_epochs is not a parameter of schedule 'warmup_linear_decay'"),
    ("schedule_params: {warmup_fraction: abc}\n", "warmup_fraction='abc' must be a number"),
    ("augment_pad: -1\n", "recipe.augment_pad=-1"),
    # a key given twice: the last one would silently win
    ("trials: 20\nepochs: 3\ntrials: 2000\n", r"line 3, column 1 \(found the key 'trials' twice\)"),
    ("recipe:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n", "found the key 'epochs' twice"),
    # strict types: no bool or float read as a whole number, no number read from a string
    ("trials: true\n", "trials=True .*valid integer"),
    ("epochs: 2.5\n", "recipe.epochs=2.5 .*valid integer"),
    ("epochs: 3.0\n", "recipe.epochs=3.0 .*valid integer"),
    ('trials: "20"\n', "trials='20' .*valid integer"),
    ("augment_flip: 1\n", "recipe.augment_flip=1 .*valid boolean"),
    ("momentum: false\n", "recipe.momentum=False .*valid number"),
    # sane upper bounds on counts
    ("trials: 100000000000000000000\n", "trials=100000000000000000000 .*less than or equal to 16777216"),
    ("seed: 18446744073709551616\n", "seed=.* .*less than 9223372036854775808"),
    ("cpus_per_trial: 0\n", "resources.cpus_per_trial=0 .*greater than 0"),
    ("max_attempts: 1000000\n", "resources.max_attempts=1000000 .*less than or equal to 100"),
])
def test_bad_config_files_are_named(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RaymemError, match=match):
        resolve_config(str(path))


@pytest.mark.parametrize("text, match", [
    ("trials = 20\ntrials = 2000\n", "not valid TOML .*line 2"),
    ("[recipe]\nepochs = 3\nepochs = 4\n", "not valid TOML"),
    ("trials = true\n", "trials=True .*valid integer"),
    ("[recipe]\nepochs = 2.0\n", "recipe.epochs=2.0 .*valid integer"),
])
def test_bad_toml_files_are_named(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RaymemError, match=match):
        resolve_config(str(path))


def test_typed_values_that_mean_what_they_say_are_kept(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("trials: 7\nbase_lr: 1\nxla: on\nmixed_precision: off\ngpus_per_trial: 1\n")
    config = resolve_config(str(path))
    assert config.trials == 7 and config.recipe.base_lr == 1.0 and isinstance(config.recipe.base_lr, float)
    assert (config.recipe.xla, config.recipe.mixed_precision) == ("on", "off")  # YAML 1.1 reads on/off as booleans
    assert config.resources.gpus_per_trial == 1.0
    assert resolve_config("digits", {"trials": 16_777_216}).trials == 16_777_216


def test_unknown_experiment_and_missing_file():
    with pytest.raises(RaymemError, match="unknown experiment"):
        resolve_config("imagenet22k")
    with pytest.raises(RaymemError, match="does not exist"):
        resolve_config("missing.yaml")


def test_resume_refuses_a_different_recipe_but_not_more_trials():
    stored = PRESETS["digits"].to_dict()
    compare_for_resume(stored, resolve_config("digits", {"trials": 500, "gpus_per_trial": 0.5}), "r")
    with pytest.raises(RaymemError, match="base_lr"):
        compare_for_resume(stored, resolve_config("digits", {"base_lr": 0.2}), "r")
    # a run started before configs had sections stored them flat: it still resumes
    flat = PRESETS["digits"].flat()
    compare_for_resume(flat, resolve_config("digits", {"trials": 500}), "r")
    with pytest.raises(RaymemError, match="epochs"):
        compare_for_resume(flat, resolve_config("digits", {"epochs": 3}), "r")


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    readable = CliRunner().invoke(app, ["run", "imagenet", "--trials", "10", "--dry-run", "--storage", str(tmp_path)])
    assert readable.exit_code == 0, readable.output
    assert re.search(r"GPU-hours +4,000", readable.output) and "ray-train worker group" in readable.output
    assert re.search(r"influence +class scope", readable.output)
    result = CliRunner().invoke(app, ["run", "imagenet", "--trials", "10", "--dry-run", "--json",
                                      "--storage", str(tmp_path)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    expected = json.loads(json.dumps(plan(resolve_config("imagenet", {"trials": 10}))))
    assert {k: v for k, v in shown.items() if k != "run_dir"} == expected
    assert shown["run_dir"] == str(tmp_path / "imagenet")
    assert shown["estimated_gpu_hours"] == pytest.approx(10 * 100 * 0.5 * 8)
    assert shown["executor"] == "ray-train worker group"
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("args, match", [
    (["--subset-ratio", "2"], "subset_ratio"),
    (["--model", "resnet5O"], "model='resnet5O'"),
    (["--set", "recipe.schedule=cosine"], "recipe.schedule='cosine'"),
    (["--set", "recipe.schedule_params={decay_factor: 2}"], "decay_factor is not a parameter"),
    (["--set", "recipe.base_lr=abc"], "recipe.base_lr='abc'"),
    (["--set", "nope=1"], "unknown config key 'nope'"),
    (["--set", "epochs"], "is not KEY=VALUE"),
    (["--name", "../escape"], "not a valid run name"),
    (["--name", ""], "'' is not a valid run name"),
    (["--cpus-per-trial", "0"], "resources.cpus_per_trial=0.0"),
    (["--set", "trials=true"], "trials=True"),
    (["--set", "epochs=2.5"], "recipe.epochs=2.5"),
    (["--trials", "100000000000000000000"], "trials=100000000000000000000"),
    (["--until-halfwidth", "-1"], "--until-halfwidth"),
    (["--until-jaccard", "nan"], "--until-jaccard"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_cli_run_rejects_bad_config_before_ray_starts(tmp_path, monkeypatch, args, match, dry_run):
    import sys

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_loaded = "ray" in sys.modules
    result = CliRunner().invoke(app, ["run", "digits", "--trials", "1", "--storage", str(tmp_path), *args]
                                + (["--dry-run"] if dry_run else []))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.output
    assert list(tmp_path.iterdir()) == []  # nothing written
    if not ray_loaded:
        assert "ray" not in sys.modules  # Ray was not even imported


def test_presets_markdown_lists_every_preset():
    result = CliRunner().invoke(app, ["presets", "--markdown"])
    assert result.exit_code == 0
    for name in PRESETS:
        assert f"| {name} |" in result.output


def test_readme_presets_table_is_the_generated_one():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    result = CliRunner().invoke(app, ["presets", "--markdown"])
    assert result.output.strip() in readme, "regenerate the README table with `raymem presets --markdown`"
    keys = CliRunner().invoke(app, ["presets", "--keys", "--markdown"])
    assert keys.exit_code == 0 and keys.output.count("\n") == len(config_keys()) + 2
    assert keys.output.strip() in readme, "regenerate the README key table with `raymem presets --keys --markdown`"
