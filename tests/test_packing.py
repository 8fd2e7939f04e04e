"""Packed training (``resources.pack`` / ``--pack``): K trials trained as one vectorised model.

What is checked: bad inputs are refused before anything starts; each packed copy computes exactly
its own Keras model and starts from the unpacked trial's initial weights; nothing about an example
outside a copy's subset reaches that copy (deterministic); packed and unpacked trials of the same
ids give the same estimates within their error bars, the same canary recall and test accuracy; and
packs are scheduled, logged, retried and resumed like trials.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from raymem.estimator.bars import Bars
from raymem.errors import RaymemError
from raymem.estimator.subsets import subset_mask, trial_seed
from raymem.config.catalog import MODEL_NAMES
from raymem.config.experiment import resolve_config
from raymem.data.datasets import ArrayDataset, load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _small(digits, n: int, labels=None, x=None) -> ArrayDataset:
    """The first ``n`` digits training examples (optionally other labels/pixels) and the whole test set."""
    return ArrayDataset("digits-head", digits.x_train[:n].copy() if x is None else x,
                        digits.y_train[:n].copy() if labels is None else labels,
                        digits.x_test, digits.y_test, digits.num_classes)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides, match", [
    ({"pack": 0}, "whole number >= 1"),
    ({"pack": -2}, "whole number >= 1"),
    ({"pack": "many"}, "whole number >= 1"),
    ({"pack": 5, "trials": 4}, "larger than trials=4"),
    ({"pack": 2, "dataset": "imagenet2012"}, "data set 'imagenet2012' streams from files; use pack=1"),
    ({"pack": "auto", "dataset": "imagenet2012"}, "streams from files"),
    ({"pack": 2, "gpus_per_trial": 2}, "cannot be combined"),
])
def test_bad_pack_is_refused_by_the_config(overrides, match):
    with pytest.raises(RaymemError, match=match):
        resolve_config("digits", overrides)


def test_pack_values_that_are_accepted():
    assert resolve_config("digits").resources.pack == 1
    assert resolve_config("digits", {"pack": "4"}).resources.pack == 4   # as the CLI passes it
    assert resolve_config("digits", {"resources.pack": "auto"}).resources.pack == "auto"
    assert resolve_config("digits", {"pack": 64, "trials": 64}).resources.pack == 64
    for model in ("inception", "resnet18"):  # batch normalization packs: each copy's moments are its own batch's
        assert resolve_config("digits", {"pack": 4, "model": model}).resources.pack == 4
    assert resolve_config("mnist", {"pack": 8}).resources.pack == 8


@pytest.mark.parametrize("args", [
    ["--pack", "0"], ["--pack", "8", "--trials", "4"], ["--pack", "2", "--dataset", "imagenet2012"],
])
def test_cli_bad_pack_exits_2_with_one_error_line_and_starts_nothing(tmp_path, args):
    from typer.testing import CliRunner

    from raymem.cli import app

    result = CliRunner().invoke(app, ["run", "digits", "--storage", str(tmp_path / "runs"), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pack" in lines[0]
    assert not (tmp_path / "runs").exists()  # no run directory, no Ray


@pytest.mark.slow
def test_a_layer_the_replay_does_not_know_is_refused_with_its_name(tf):
    import keras

    from raymem.training.packed_model import PackedModel

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.LayerNormalization(name="layer_norm")(x)   # statistics per example: not replayed
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    with pytest.raises(RaymemError, match=r"layer layer_norm \(LayerNormalization\).*cannot be packed; use pack=1"):
        PackedModel(model, [model.get_weights()] * 2)
    dilated = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(
        keras.layers.Conv2D(4, 3, dilation_rate=2, name="dilated")(inputs))))
    with pytest.raises(RaymemError, match="layer dilated .* dilated"):
        PackedModel(dilated, [dilated.get_weights()] * 2)


# ------------------------------------------------------------------------------------ the packed model


@pytest.mark.slow
@pytest.mark.parametrize("model", MODEL_NAMES)
def test_each_copy_is_its_own_keras_model_from_the_unpacked_initial_weights(tf, digits, model):
    """Every catalog model, 3 copies: the copy's weights are its Keras model's bit for bit; its logits are
    the Keras model's in inference (moving statistics) and in training (its own batch's statistics), and
    a training pass moves its batch-normalization averages exactly as Keras moves them."""
    import keras

    from raymem.training import packing
    from raymem.training.models import build_model

    if model == "linear":  # a linear model on feature vectors
        data = ArrayDataset("vec", digits.x_train.reshape(len(digits.x_train), -1)[:50], digits.y_train[:50],
                            digits.x_test.reshape(len(digits.x_test), -1)[:60], digits.y_test[:60], 10)
    elif model == "airbench94":  # CIFAR-sized images only: the digits at 4x, in three channels
        def big(x):
            return np.repeat(np.kron(x, np.ones((1, 4, 4, 1), np.float32)), 3, axis=-1)

        data = ArrayDataset("digits-32", big(digits.x_train[:50]), digits.y_train[:50], big(digits.x_test[:60]),
                            digits.y_test[:60], 10)
    else:
        data = _small(digits, 50)
    config = resolve_config("digits", {"model": model})
    seeds = [trial_seed(3, k) for k in range(3)]
    packed = packing.build_packed(config, data, seeds)
    x = data.x_test[:20]
    own = np.stack([data.x_test[20 * k:20 * (k + 1)] for k in range(3)])   # a different batch per copy
    initial = [packed.copy_weights(k) for k in range(3)]
    shared = packed._forward(tf.constant(x), shared=True).numpy()           # prediction path
    per_copy = packed.logits(tf.constant(np.stack([x] * 3))).numpy()        # per-copy inputs, inference
    trained = packed.logits(tf.constant(own), training=True).numpy()        # per-copy inputs, training
    deep = model in ("resnet50", "densenet100")  # float32 rounding grows with depth
    tol = dict(rtol=1e-3, atol=2e-3) if deep else dict(rtol=1e-4, atol=1e-4)
    for k, seed in enumerate(seeds):
        keras.utils.set_random_seed(seed)  # exactly as fit.train_model builds trial k's model
        reference = build_model(config.model, tuple(data.input_shape), data.num_classes)
        for mine, theirs in zip(initial[k], reference.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
        expected = reference(x, training=False).numpy()
        np.testing.assert_allclose(shared[k], expected, **tol)
        np.testing.assert_allclose(per_copy[k], expected, **tol)
        np.testing.assert_allclose(trained[k], reference(own[k], training=True).numpy(), **tol)
        for mine, theirs in zip(packed.copy_weights(k), reference.get_weights(), strict=True):
            np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-5)   # moving averages moved alike


@pytest.mark.slow
def test_a_packed_training_step_is_each_copys_own_keras_step_batch_norm_included(tf, digits):
    """One SGD step (learning rate 1, so the gradient is the whole change) on a different batch per copy:
    copy k's weights and moving averages afterwards are those of its Keras model stepped on its own batch."""
    import keras

    from raymem.training import packing
    from raymem.training.models import build_model

    data = _small(digits, 60)
    config = resolve_config("digits", {"model": "inception"})
    seeds = [trial_seed(4, k) for k in range(3)]
    packed = packing.build_packed(config, data, seeds)
    x = np.stack([data.x_train[16 * k:16 * (k + 1)] for k in range(3)])
    y = np.stack([data.y_train[16 * k:16 * (k + 1)] for k in range(3)]).astype(np.int32)
    with tf.GradientTape() as tape:
        logits = packed.logits(tf.constant(x), training=True)
        loss = tf.reduce_sum(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits), axis=1))
    for variable, grad in zip(packed.variables, tape.gradient(loss, packed.variables), strict=True):
        variable.assign_sub(grad)
    for k, seed in enumerate(seeds):
        keras.utils.set_random_seed(seed)
        reference = build_model(config.model, tuple(data.input_shape), data.num_classes)
        with tf.GradientTape() as tape:
            own = reference(x[k], training=True)
            own_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y[k], own))
        weights = reference.trainable_variables
        for variable, grad in zip(weights, tape.gradient(own_loss, weights), strict=True):
            variable.assign_sub(grad)
        for mine, theirs in zip(packed.copy_weights(k), reference.get_weights(), strict=True):
            np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["small_cnn", "inception"])
def test_an_example_outside_a_copys_subset_cannot_reach_that_copy(tf, digits, model):
    """Same seeds, one example changed (label and pixels): the copy that does not hold it ends bit-identical
    (weights and, for inception, batch-normalization averages), the copy that holds it changes (so the
    check would see a leak)."""
    from raymem.training import packing

    n, k = 120, 3
    config = resolve_config("digits", {"epochs": 2, "batch_size": 16, "xla": "off", "model": model})
    m = config.subset_size(n)
    masks = np.stack([subset_mask(5, j, n, m) for j in range(k)])
    seeds = [trial_seed(5, j) for j in range(k)]
    outside = int(np.flatnonzero(~masks[0] & masks[1])[0])  # not in copy 0's subset, in copy 1's
    base = _small(digits, n)
    labels, x = base.y_train.copy(), base.x_train.copy()
    labels[outside] = (labels[outside] + 3) % 10
    x[outside] = 1.0 - x[outside]
    changed = _small(digits, n, labels=labels, x=x)

    def trained(data):
        packed, _ = packing.train_pack(config, data, masks, seeds)
        return [packed.copy_weights(j) for j in range(k)]

    before, after = trained(base), trained(changed)
    for a, b in zip(before[0], after[0], strict=True):
        np.testing.assert_array_equal(a, b)   # copy 0 never saw the example: not a bit moved
    assert any(not np.array_equal(a, b) for a, b in zip(before[1], after[1]))  # copy 1 did
    if not masks[2][outside]:
        for a, b in zip(before[2], after[2], strict=True):
            np.testing.assert_array_equal(a, b)


def test_each_copy_reads_only_its_subset_in_batches_of_the_recipe(digits):
    from raymem.training import packing

    n, k = 200, 4
    config = resolve_config("digits", {"batch_size": 32})
    m = config.subset_size(n)
    masks = np.stack([subset_mask(1, j, n, m) for j in range(k)])
    seeds = [trial_seed(1, j) for j in range(k)]
    orders = list(packing._epoch_orders(masks, seeds, epochs=2))
    assert packing.steps_per_epoch(config, m) == -(-m // 32)  # as the unpacked trial
    for order in orders:
        assert order.shape == (k, m)
        for j in range(k):
            np.testing.assert_array_equal(np.sort(order[j]), np.flatnonzero(masks[j]))  # every subset example once
    assert not np.array_equal(orders[0], orders[1])                                   # reshuffled every epoch
    alone = list(packing._epoch_orders(masks[2:3], seeds[2:3], epochs=2))  # copy 2 in a pack of its own
    for order, own in zip(orders, alone):
        np.testing.assert_array_equal(order[2], own[0])  # its shuffle is its own, whatever else is packed


# ------------------------------------------------------------------------------ packed vs unpacked trials


@pytest.mark.slow
def test_packed_and_unpacked_trials_give_the_same_estimates(digits):
    """16 trials (600 digits examples with 5% canaries, all 540 test examples, 20 epochs), once as 16
    Keras trials and once as one pack of 16, same trial ids (so the same subsets and initial weights).

    Tolerances (measured: recall 0.47 vs 0.53, test accuracy 94.2 vs 94.7, every example's intervals
    overlap, mean |mem difference| 0.025): the only difference between the two is the order of each
    copy's batches and floating-point rounding, so the two estimates of each example are two draws of
    the same estimator on the same subsets. Each Chernoff interval covers the true value with probability
    >= 0.95 (in practice ~100x more often, see DESIGN), so both cover it, and overlap, for all but a
    handful of examples: we ask for 98%. Per-model test accuracy varies by ~0.9 points between seeds, so
    the mean of 16 has a standard error of ~0.23 and the difference of two means ~0.33: 1 point is 3
    standard errors. Recall is a share of 30 canaries (one canary = 0.033) whose memorization is
    estimated from ~5 out-of-subset models each: we ask both to be >= 5x chance and to differ by <= 0.3.
    Every seed is fixed, so the outcome is reproducible, not a coin flip per run."""
    from raymem.estimator import report
    from raymem.estimator.counts import VectorCounts
    from raymem.data import canaries
    from raymem.training import packing, fit

    n, trials = 600, 16
    labels = canaries.flip_labels(digits.y_train[:n], 0.05, digits.num_classes, 0)
    flipped = labels != digits.y_train[:n]
    data = _small(digits, n, labels=labels)
    config = resolve_config("digits", {"epochs": 20, "trials": trials})
    m = config.subset_size(n)
    masks = np.stack([subset_mask(0, k, n, m) for k in range(trials)])
    seeds = [trial_seed(0, k) for k in range(trials)]
    fit.limit_tf_threads(1)
    unpacked = [fit.train_and_predict(config, data, masks[k], seeds[k]) for k in range(trials)]
    packed = packing.train_and_predict_pack(config, data, masks, seeds)

    estimates = {}
    for name, outputs in (("unpacked", unpacked), ("packed", packed)):
        v = VectorCounts.zeros(n, len(data.y_test))
        for mask, (train_pred, test_pred, _) in zip(masks, outputs):
            v.add(mask, train_pred == labels, test_pred == data.y_test)
        mem = v.memorization()
        lo, hi = report.mem_intervals(v, Bars(delta=0.05), n)
        recall = report.canary_recall(mem, flipped)
        accuracy = 100 * np.mean([meta["test_accuracy"] for _, _, meta in outputs])
        estimates[name] = (mem, lo, hi, recall, accuracy)
    (mu, lu, hu, ru, au), (mp, lp, hp, rp, ap) = estimates["unpacked"], estimates["packed"]
    overlap = (lu <= hp) & (lp <= hu)
    assert overlap.mean() >= 0.98, overlap.mean()
    assert np.abs(mu - mp).mean() < 0.1
    assert ru["recall"] >= 5 * ru["chance"] and rp["recall"] >= 5 * rp["chance"], (ru, rp)
    assert abs(ru["recall"] - rp["recall"]) <= 0.3, (ru, rp)
    assert abs(au - ap) <= 1.0, (au, ap)


# ------------------------------------------------------------------------------------- packs on Ray


@pytest.mark.slow
def test_packs_are_scheduled_logged_retried_and_resumed_like_trials(tmp_path, isolated_ray):
    import ray

    from raymem.store.storage import RunStore
    from raymem.store.trial_log import iter_trials
    from raymem.driver.run import DriverOptions, run_experiment

    def hook():  # the first attempt of the pack holding trial 1 fails (a worker setup hook, as test_runner does)
        import raymem.driver.trial as trial

        original = trial.build_pack_records

        def build_pack_records(config, run, data, trial_ids, attempt):
            if 1 in trial_ids and attempt == 1:
                raise RuntimeError("injected failure of a pack")
            return original(config, run, data, trial_ids, attempt)

        trial.build_pack_records = build_pack_records

    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="raymem",
             runtime_env={"worker_process_setup_hook": hook})
    run_dir = tmp_path / "packed"
    config = resolve_config("digits", {"trials": 4, "epochs": 2, "batch_size": 64, "pack": 2})
    result = run_experiment(config, name="packed", run_uri=str(run_dir),
                            options=DriverOptions(progress=False, shutdown=False))
    assert not result.failed and sorted(result.trained_now) == [0, 1, 2, 3] and result.pack == 2
    assert sorted(result.retried) == [0, 1]  # the pack (0, 1) was retried whole
    records = {r.trial_id: r for r in iter_trials(RunStore.open(str(run_dir)))}
    assert sorted(records) == [0, 1, 2, 3]   # one record per trial id
    n, m = len(records[0].mask), round(0.7 * len(records[0].mask))
    for k, record in records.items():
        np.testing.assert_array_equal(record.mask, subset_mask(0, k, n, m))  # the unpacked trial's subset
        assert record.seed == trial_seed(0, k)
        pack = record.metadata["pack"]
        assert pack["size"] == 2 and k in pack["members"] and pack["members"] == [k - k % 2, k - k % 2 + 1]
        assert record.metadata["attempt"] == (2 if k in (0, 1) else 1)
        assert record.metadata["test_accuracy"] > 0.5
    assert records[0].metadata["pack"]["id"] == records[1].metadata["pack"]["id"] != records[2].metadata["pack"]["id"]

    # extend the run with --pack auto: only the missing trials train, K measured where trials run
    more = resolve_config("digits", {"trials": 6, "epochs": 2, "batch_size": 64, "pack": "auto"})
    again = run_experiment(more, name="packed", run_uri=str(run_dir),
                           options=DriverOptions(progress=False, shutdown=False))
    assert sorted(again.trained_now) == [4, 5] and not again.failed
    assert again.pack >= 1 and again.pack_measurements and again.pack_measurements[0]["pack"] == 1
    assert sorted(r.trial_id for r in iter_trials(RunStore.open(str(run_dir)))) == list(range(6))


def test_auto_pack_picks_the_largest_sublinear_k():
    from raymem.training.packing import choose_pack

    rows = [{"pack": 1, "step_seconds": 1.0}, {"pack": 2, "step_seconds": 1.1}, {"pack": 4, "step_seconds": 1.5},
            {"pack": 8, "step_seconds": 2.9}, {"pack": 16, "step_seconds": 5.5}]
    assert choose_pack(rows) == 4       # 8 copies take 1.93x the time of 4: no longer sub-linear enough
    assert choose_pack(rows[:1]) == 1


def test_a_pack_size_that_leaves_trial_slots_idle_is_named():
    from raymem.driver.run import idle_slots_warning

    assert idle_slots_warning(16, packs=1, slots=2) == ("warning: --pack 16 makes 1 pack of the missing trials for 2 "
                                                        "trial slots, so 1 slot stays idle; "
                                                        "a smaller K (or --pack auto) "
                                                        "keeps them busy.")
    assert "6 slots stay idle" in idle_slots_warning(8, packs=2, slots=8)
    assert idle_slots_warning(8, packs=2, slots=2) is None     # every slot has a pack
    assert idle_slots_warning(1, packs=1, slots=8) is None     # unpacked: the window fills the slots
