"""Experiment configs: presets, files, flags, validation, resume checks and the dry-run plan."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from raymem.cli import app
from raymem.errors import RaymemError
from raymem.runner.config import PRESETS, compare_for_resume, gpu_hours, resolve_config
from raymem.runner.run import plan


def test_every_preset_is_valid_and_names_known_parts():
    from raymem.runner.datasets import DATASET_NAMES
    from raymem.runner.models import MODEL_NAMES
    from raymem.runner.schedules import SCHEDULE_KINDS

    for name, config in PRESETS.items():
        assert resolve_config(name) == config
        assert config.model in MODEL_NAMES and config.schedule in SCHEDULE_KINDS
        assert config.dataset in DATASET_NAMES or config.dataset.startswith("npz:")


def test_paper_recipes_are_the_supplements():
    imagenet, cifar, mnist = PRESETS["imagenet"], PRESETS["cifar100"], PRESETS["mnist"]
    assert (imagenet.batch_size, imagenet.base_lr, imagenet.epochs) == (896, 0.7, 100)
    assert imagenet.schedule_params == {"warmup_epochs": 15, "decay_epochs": [30, 60, 90], "decay_factor": 10.0}
    assert imagenet.gpus_per_trial == 8 and imagenet.uses_train_group and imagenet.augment_pad == 32
    assert (cifar.batch_size, cifar.base_lr, cifar.epochs, cifar.augment_pad) == (512, 0.4, 160, 4)
    assert (mnist.batch_size, mnist.base_lr, mnist.epochs) == (256, 0.1, 30)
    assert PRESETS["cifar100-densenet100"].batch_size == 256 and PRESETS["cifar100-linear"].epochs == 40
    # 2,000 ImageNet trials x 100 epochs x 30 min x 8 GPUs
    assert gpu_hours(imagenet) == pytest.approx(2000 * 100 * 0.5 * 8)


def test_file_then_flags_override_the_preset(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("preset: cifar100\nmodel: resnet18\nepochs: 80\n")
    config = resolve_config(str(path), {"epochs": 3, "trials": None})
    assert (config.dataset, config.model, config.epochs, config.batch_size) == ("cifar100", "resnet18", 3, 512)
    toml = tmp_path / "exp.toml"
    toml.write_text('preset = "mnist"\ngpus_per_trial = 0.5\n')
    assert resolve_config(str(toml)).gpus_per_trial == 0.5


@pytest.mark.parametrize("text, match", [
    ("preset: cifar100\nepochz: 3\n", "unknown config key"),
    ("preset: nope\n", "names preset"),
    ("- a\n- b\n", "must hold a mapping"),
    ("epochs: [\n", "not valid YAML"),
    ("epochs: 0\n", "positive integer"),
    ("subset_ratio: 1.5\n", "strictly between 0 and 1"),
    ("gpus_per_trial: 2.5\n", "whole number"),
    ("xla: maybe\n", "auto, on or off"),
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


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    result = CliRunner().invoke(app, ["run", "imagenet", "--trials", "10", "--dry-run", "--storage", str(tmp_path)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown == json.loads(json.dumps(plan(resolve_config("imagenet", {"trials": 10}))))
    assert shown["estimated_gpu_hours"] == pytest.approx(10 * 100 * 0.5 * 8)
    assert shown["executor"] == "ray-train worker group"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_run_rejects_bad_flags_with_one_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "digits", "--subset-ratio", "2", "--storage", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and "subset_ratio" in result.output
    assert list(tmp_path.iterdir()) == []


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
