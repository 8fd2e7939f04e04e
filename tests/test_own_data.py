"""Your own data and model: a model module by import path, an image folder of PNGs, and the refusals of data and
models estimates could not mean anything for (exit 2, one `error:` line, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from raymem.cli import app
from raymem.data.datasets import load_dataset
from raymem.errors import RaymemError

NETS = '''import keras


def tiny_cnn(input_shape, num_classes, width=8):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def three_logits(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))


def with_dropout(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Dropout(0.1)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def no_weights(input_shape, num_classes):
    inputs = keras.Input(shape=input_shape)
    return keras.Model(inputs, keras.layers.Flatten()(inputs)[:, :num_classes])
'''
CLASS_NAMES = ["eight", "five", "four", "nine", "one", "seven", "six", "three", "two", "zero"]  # sorted
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
N_TRAIN, N_TEST = 200, 60


@pytest.fixture
def nets(tmp_path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def write_png(tf, path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())


@pytest.fixture
def folder(tmp_path, tf) -> Path:
    """N_TRAIN + N_TEST digits as 8x8 grayscale PNGs in folder/{train,test}/<digit name>/<k>.png."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
    root = tmp_path / "digits-png"
    for k in range(N_TRAIN + N_TEST):
        split = "train" if k < N_TRAIN else "test"
        write_png(tf, root / split / DIGIT_NAMES[bunch.target[k]] / f"{k:04d}.png", images[k])
    return root


def test_an_image_folder_loads_in_sorted_class_and_file_order(folder):
    data = load_dataset(f"imagefolder:{folder}")
    assert data.class_names == tuple(CLASS_NAMES) and data.num_classes == 10
    assert data.x_train.shape == (N_TRAIN, 8, 8, 1) and data.x_test.shape == (N_TEST, 8, 8, 1)
    assert list(data.y_train) == sorted(data.y_train)  # class folders in name order, files sorted inside each
    first = sorted((folder / "train" / "eight").iterdir())[0]
    from sklearn.datasets import load_digits

    expected = np.round(load_digits().images[int(first.stem)] * (255 / 16)) / 255
    np.testing.assert_allclose(data.x_train[0, ..., 0], expected, atol=1e-6)
    assert load_dataset(f"imagefolder:{folder}", image_size=12).input_shape == (12, 12, 1)


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_refused(result, storage: Path, *names: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    assert not storage.exists() or not any(storage.rglob("*")), sorted(storage.rglob("*"))  # nothing written


def _npz(tmp_path: Path, y_train, y_test) -> str:
    rng = np.random.default_rng(0)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    path = tmp_path / "set.npz"
    np.savez(path, x_train=rng.integers(0, 255, (len(y_train), 4, 4), dtype=np.uint8), y_train=y_train,
             x_test=rng.integers(0, 255, (len(y_test), 4, 4), dtype=np.uint8), y_test=y_test)
    return f"npz:{path}"


def _refusal(case: str, tmp_path: Path, tf, nets: Path) -> tuple[list[str], list[str]]:
    """(run arguments, what the error line must name) of each refusal."""
    if case.startswith("model") and case != "model file missing":
        function, extra = {"model output shape": ("three_logits", []),
                           "model without weights": ("no_weights", []),
                           "model unknown function": ("missing_fn", []),
                           "model bad params": ("tiny_cnn", ["--set", "model_params.depth=3"]),
                           "model not packable": ("with_dropout", ["--pack", "2"])}[case]
        must = {"model output shape": ["(None, 10)"], "model without weights": ["trainable weights"],
                "model unknown function": ["missing_fn"], "model bad params": ["depth"],
                "model not packable": ["dropout", "pack=1"]}[case]
        return ["--model", f"{nets}:{function}", *extra], [str(nets.name), *must]
    if case == "model file missing":
        return ["--model", f"{tmp_path / 'absent.py'}:net"], ["absent.py"]
    if case == "test labels unseen in training":
        return ["--dataset", _npz(tmp_path, [0, 1, 2, 0, 1, 2], [5, 6, 7])], ["5, 6, 7", "y_test"]
    if case == "single class":
        return ["--dataset", _npz(tmp_path, [1, 1, 1, 1], [1, 1])], ["only class 1"]
    if case == "empty test split":
        return ["--dataset", _npz(tmp_path, [0, 1, 0, 1], [])], ["x_test"]
    root = tmp_path / "images"
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "dog").mkdir(parents=True)
    (root / "test" / "cat").mkdir(parents=True)
    if case == "image folder without images":
        return ["--dataset", f"imagefolder:{root}"], ["holds no images"]
    for cls in ("cat", "dog"):
        write_png(tf, root / "train" / cls / "a.png", np.zeros((4, 4, 1), np.uint8))
    write_png(tf, root / "test" / "cat" / "a.png", np.zeros((4, 4, 1), np.uint8))
    if case == "unreadable image":
        (root / "train" / "dog" / "b.png").write_bytes(b"not a png")
        return ["--dataset", f"imagefolder:{root}"], [str(root / "train" / "dog" / "b.png")]
    if case == "images of two sizes":
        write_png(tf, root / "train" / "dog" / "b.png", np.zeros((5, 4, 1), np.uint8))
        return ["--dataset", f"imagefolder:{root}"], [str(root / "train" / "dog" / "b.png"), "image_size"]
    assert case == "test class without training folder"
    write_png(tf, root / "test" / "fox" / "a.png", np.zeros((4, 4, 1), np.uint8))
    return ["--dataset", f"imagefolder:{root}"], ["fox"]


REFUSALS = ["model output shape", "model without weights", "model unknown function", "model bad params",
            "model not packable", "model file missing", "test labels unseen in training", "single class",
            "empty test split", "image folder without images", "unreadable image", "images of two sizes",
            "test class without training folder"]


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_data_and_models_are_refused_before_anything_starts(case, tmp_path, tf, nets, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args, names = _refusal(case, tmp_path, tf, nets)
    storage = tmp_path / "runs"
    result = invoke("run", "digits", "--trials", "2", "--epochs", "1", "--storage", str(storage), "--name", "r",
                    *args)
    assert_refused(result, storage, *names)


def test_model_params_belong_to_own_models_only():
    from raymem.config.experiment import resolve_config

    with pytest.raises(RaymemError, match="model_params"):
        resolve_config("digits", {"model_params": {"width": 4}})
    with pytest.raises(RaymemError, match="image_size"):
        resolve_config("digits", {"image_size": 16})
    config = resolve_config("digits", {"model": "nets.py:tiny_cnn", "model_params": {"width": 4}})
    assert config.flat()["model_params"] == {"width": 4}


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_ray")
def test_own_model_on_an_image_folder_runs_and_names_the_classes(tmp_path, folder, nets, monkeypatch):
    from raymem import api
    from raymem.driver.run import DriverOptions

    monkeypatch.chdir(tmp_path)  # the model is named relative to the current directory, as a user writes it
    config = api.load_config("digits", {"dataset": f"imagefolder:{folder}", "model": "nets.py:tiny_cnn",
                                        "model_params": {"width": 4}, "trials": 4, "epochs": 1})
    result = api.run(config, name="own", storage=str(tmp_path / "runs"),
                     options=DriverOptions(num_cpus=2, progress=False))
    assert result.trials_done == 4 and not result.failed, result.failed
    table = api.Run("own", str(tmp_path / "runs")).estimates()
    assert table.num_rows == N_TRAIN
    assert set(table.column("label_name").to_pylist()) == set(CLASS_NAMES)
    assert {"train_label_name", "test_label_name"} <= set(api.Run("own", str(tmp_path / "runs")).pairs().column_names)
    info = json.loads((tmp_path / "runs" / "own" / "run.json").read_text())
    import hashlib

    assert info["model_source"]["sha256"] == hashlib.sha256(nets.read_bytes()).hexdigest()
    assert info["model_source"]["params"] == {"width": 4}
    nets.write_text(NETS.replace("width=8", "width=6"))  # a changed source: resuming would mix two models
    with pytest.raises(RaymemError, match="sha256"):
        api.run(config.model_copy(update={"trials": 6}), name="own", storage=str(tmp_path / "runs"),
                options=DriverOptions(num_cpus=2, progress=False))


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_ray")
def test_the_model_module_reaches_workers_of_both_nodes_without_its_file(tmp_path, nets, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from raymem.config.experiment import resolve_config
    from raymem.driver.run import _job_runtime_env

    monkeypatch.chdir(tmp_path)
    config = resolve_config("digits", {"model": "nets.py:tiny_cnn", "model_params": {"width": 4}})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, runtime_env=_job_runtime_env(config))
        nets.rename(tmp_path / "moved.py")  # no node can read the file now: only the job's py_modules has it

        @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
        def build(model, params):
            import os

            from raymem.training.models import build_model

            os.chdir("/")  # a worker that did not start in the driver's directory
            net = build_model(model, (8, 8, 1), 10, **params)
            return ray.get_runtime_context().get_node_id(), net.count_params()

        results = ray.get([build.remote(config.model, config.model_params) for _ in range(2)])
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len({node for node, _ in results}) == 2
    assert {count for _, count in results} == {(3 * 3 * 1 * 4 + 4) + (4 * 10 + 10)}


def test_a_run_stored_before_the_new_keys_resumes_with_their_defaults():
    from raymem.config.experiment import compare_for_resume, resolve_config

    config = resolve_config("digits")
    stored = config.to_dict()
    del stored["model_params"], stored["image_size"]
    compare_for_resume(stored, config, "old")  # no refusal: the keys it lacks are their defaults
    stored["dataset"] = "imagefolder:x"
    with pytest.raises(RaymemError, match="started with image_size=None"):
        compare_for_resume(stored, resolve_config("digits", {"dataset": "imagefolder:x", "image_size": 16}), "old")


def test_features_of_an_own_model_are_what_its_logits_read(nets, monkeypatch):
    from raymem.training.models import build_model, feature_extractor

    monkeypatch.chdir(nets.parent)
    net = build_model("nets.py:tiny_cnn", (8, 8, 1), 10, width=4)  # no layer named "penultimate"
    assert tuple(feature_extractor(net).output.shape) == (None, 4)
