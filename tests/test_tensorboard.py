"""RUN/tensorboard/, read back with TensorBoard's own event reader: one step per update, each scalar equal to what
`raymem status` says of the run after that many trials (computed independently: a run of only those trials)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from raymem.cli import app
from raymem.handle import Run
from raymem.paper import figures, tensorboard
from raymem.estimator.log_replay import offline_view
from raymem.store.run_info import new_run_info, write_run_info
from raymem.store.storage import RunStore
from raymem.store.trial_log import write_trial
from raymem.store.trial_record import TrialRecord

N, N_TEST, T, EVERY = 30, 20, 14, 4


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def write_run(folder, sim, trials: int, planned: int = T) -> Run:
    """A run of the first ``trials`` trials of ``sim``, planned for ``planned`` (the anytime bars' plan), whose
    trials record a finish time a minute apart and their test accuracy."""
    store = RunStore.open(str(folder))
    info = new_run_info(name="tb", n_train=N, n_test=N_TEST, subset_size=sim.subset_size, seed=0,
                        config={"trials": planned, "subset_ratio": sim.subset_size / N}, fingerprint={},
                        source="ingest")
    write_run_info(store, info)
    for k in range(trials):
        metadata = {"finished": 1_000_000.0 + 60.0 * k + (k % 3), "test_accuracy": float(sim.test_correct[k].mean())}
        write_trial(store, TrialRecord(run_id=info.run_id, trial_id=k, seed=0, mask=sim.masks[k],
                                       train_correct=sim.train_correct[k], test_correct=sim.test_correct[k],
                                       metadata=metadata))
    return Run(str(folder))


def read_events(logdir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every summary in ``logdir``, by TensorBoard's own EventAccumulator, or where the
    tensorboard package is not installed (TensorFlow 2.21 no longer brings it) by TensorFlow's event reader."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.util import tensor_util
    except ImportError:
        return _read_with_tensorflow(logdir)
    events = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    events.Reload()
    found = {}
    for tag in events.Tags()["tensors"]:
        values = {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in events.Tensors(tag)}
        found[tag] = {step: (float(v) if v.ndim == 0 else v) for step, v in values.items()}
        assert events.SummaryMetadata(tag).plugin_data.plugin_name in ("scalars", "histograms", "images")
    return found


def _read_with_tensorflow(logdir) -> dict[str, dict[int, float]]:
    import tensorflow as tf

    found: dict = {}
    for path in sorted((tmp for tmp in logdir.iterdir() if "tfevents" in tmp.name)):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                found.setdefault(value.tag, {})[event.step] = float(array) if array.ndim == 0 else array
    return found


def test_replayed_scalars_equal_status_at_each_update(tmp_path, synthetic_run):
    sim = synthetic_run(seed=5, n=N, n_test=N_TEST, t=T, memorized=[2, 7], planted=[(2, 3)])
    run = write_run(tmp_path / "run", sim, T)
    result = CliRunner().invoke(app, ["tensorboard", str(tmp_path / "run"), "--every", str(EVERY)])
    assert result.exit_code == 0, result.output
    scalars = read_events(tmp_path / "run" / "tensorboard")
    steps = [4, 8, 12, 14]  # every 4 trials and the last
    assert set(scalars) == set(tensorboard.SCALAR_TAGS) | {tensorboard.HISTOGRAM_TAG}  # no images: ingested
    for tag in tensorboard.SCALAR_TAGS:
        assert sorted(scalars[tag]) == steps, tag
    for k in steps:
        prefix = write_run(tmp_path / f"prefix{k}", sim, k)
        status = prefix.status()
        assert status["trials_done"] == k
        expected = {
            "mem/median_halfwidth": status["mem"]["median_halfwidth"],
            "mem/max_halfwidth": status["mem"]["max_halfwidth"],
            "mem/certified": status["mem"]["certified"],
            "split_half/jaccard": status["split_half"]["mem"]["0.25"]["jaccard"],
            "test_accuracy/mean": figures.mean_test_accuracy(offline_view(prefix.store).counts),
            "trials_per_hour": (min(k, 50) - 1) / np.ptp([60.0 * i + (i % 3) for i in range(k)][-50:]) * 3600,
        }
        for tag, value in expected.items():
            assert math.isclose(scalars[tag][k], value, rel_tol=1e-6, abs_tol=1e-6), (tag, k)
    histogram = scalars[tensorboard.HISTOGRAM_TAG][14]
    assert histogram[:, 2].sum() == 14 and histogram[0, 0] == pytest.approx(sim.test_correct.mean(axis=1).min())
    assert run.trials().column("test_accuracy").to_numpy().mean() == pytest.approx(scalars["test_accuracy/mean"][14])
    # a second replay replaces the first: still one value per step
    CliRunner().invoke(app, ["tensorboard", str(tmp_path / "run"), "--every", "7"])
    again = read_events(tmp_path / "run" / "tensorboard")
    assert sorted(again["mem/certified"]) == [7, 14]


def test_the_memorized_examples_grid_is_written_where_the_run_has_images(tmp_path, synthetic_run, monkeypatch,
                                                                           tf):
    sim = synthetic_run(seed=5, n=N, n_test=N_TEST, t=T, memorized=[2, 7])
    run = write_run(tmp_path / "run", sim, T)
    images = np.random.default_rng(1).random((N, 6, 5, 1))
    monkeypatch.setattr(Run, "images", lambda self, data_dir=None: (images, None, None))
    run.tensorboard(every=1)  # 14 updates: the grid at the 1st, the 11th and the last
    grids = read_events(tmp_path / "run" / "tensorboard")[tensorboard.IMAGE_TAG]
    assert sorted(grids) == [1, 11, 14]
    width, height, png = grids[14]
    expected = tensorboard.memorized_grid(images, offline_view(run.store).counts.all.memorization())
    assert (int(width), int(height)) == (expected.shape[1], expected.shape[0]) == (4 * 6 - 1, 4 * 7 - 1)
    assert np.array_equal(tf.io.decode_png(png).numpy(), expected)
    mem = offline_view(run.store).counts.all.memorization()
    top = np.lexsort((np.arange(N), -mem))[0]  # the first tile is the most memorized example
    assert np.array_equal(expected[:6, :5, 0], np.round(images[top, ..., 0] * 255).astype(np.uint8))


def test_live_events_write_at_most_every_min_seconds_and_the_rest_on_close(tmp_path, synthetic_run):
    sim = synthetic_run(seed=6, n=N, n_test=N_TEST, t=6)
    run = write_run(tmp_path / "run", sim, 6)
    now = [0.0]
    reads = []

    def read_status():
        reads.append(now[0])
        return {**run.status(pairs_fdr=None), "trials_done": len(reads) * 10}

    live = tensorboard.LiveEvents(run.store, read_status, min_seconds=5, clock=lambda: now[0])
    live.landed([0])
    now[0] = 2.0
    live.landed([1])  # too soon: no update
    now[0] = 6.0
    live.landed([2])
    now[0] = 7.0
    live.landed([3])
    live.close()
    assert reads == [0.0, 6.0, 7.0]
    scalars = read_events(tmp_path / "run" / "tensorboard")
    assert sorted(scalars["mem/certified"]) == [10, 20, 30]


def test_a_live_driver_refuses_the_replay(tmp_path, synthetic_run, monkeypatch):
    sim = synthetic_run(seed=6, n=N, n_test=N_TEST, t=4)
    write_run(tmp_path / "run", sim, 4)
    monkeypatch.setattr("raymem.driver.lease.driver_state", lambda store: {"live": True, "pid": 1, "host": "h"})
    result = CliRunner().invoke(app, ["tensorboard", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_ray")
def test_a_training_run_writes_its_events_as_trials_land(tmp_path):
    from raymem.config.experiment import resolve_config
    from raymem.driver.run import DriverOptions, run_experiment

    config = resolve_config("digits", dict(trials=3, epochs=1, batch_size=64))
    run_dir = tmp_path / "live"
    result = run_experiment(config, name="live", run_uri=str(run_dir), options=DriverOptions(num_cpus=2,
                                                                                             progress=False))
    assert result.trials_done == 3
    scalars = read_events(run_dir / "tensorboard")
    last = max(scalars["mem/certified"])
    assert last == 3  # the update written on close holds every trial
    status = Run(str(run_dir)).status(pairs_fdr=None)
    assert scalars["mem/median_halfwidth"][3] == pytest.approx(status["mem"]["median_halfwidth"], rel=1e-6)
    assert scalars["test_accuracy/mean"][3] == pytest.approx(
        np.mean(Run(str(run_dir)).trials().column("test_accuracy").to_numpy()), rel=1e-6)
    assert 3 in scalars[tensorboard.IMAGE_TAG]  # digits are images: the grid of the last update
