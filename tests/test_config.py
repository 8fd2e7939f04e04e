"""Experiment configs: presets, files, flags, validation, resume checks and the dry-run plan."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from raymem.cli import app
from raymem.errors import RaymemError
from raymem.config.experiment import PRESETS, compare_for_resume, gpu_hours, resolve_config
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
    assert (cifar.recipe.batch_size, cifar.recipe.base_lr, cifar.recipe.epochs, cifar.recipe.augment_pad) == (512, 0.4, 160, 4)
    assert (mnist.recipe.batch_size, mnist.recipe.base_lr, mnist.recipe.epochs) == (256, 0.1, 30)
    assert PRESETS["cifar100-densenet100"].recipe.batch_size == 256 and PRESETS["cifar100-linear"].recipe.epochs == 40
    # 2,000 ImageNet trials x 100 epochs x 30 min x 8 GPUs
    assert gpu_hours(imagenet) == pytest.approx(2000 * 100 * 0.5 * 8)


def test_file_then_flags_override_the_preset(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("preset: cifar100\nmodel: resnet18\nepochs: 80\n")
    config = resolve_config(str(path), {"epochs": 3, "trials": None})
    assert (config.dataset, config.model, config.recipe.epochs, config.recipe.batch_size) == ("cifar100", "resnet18", 3, 512)
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
])
def test_bad_config_files_are_named(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RaymemError, match=match):
        resolve_config(str(path))


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
    result = CliRunner().invoke(app, ["run", "imagenet", "--trials", "10", "--dry-run", "--json", "--storage", str(tmp_path)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert {k: v for k, v in shown.items() if k != "run_dir"} == json.loads(json.dumps(plan(resolve_config("imagenet", {"trials": 10}))))
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
