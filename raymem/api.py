"""raymem's library API: every operation the CLI offers, as functions a notebook calls too.

A *run* is named either by a directory / URI (``runs/demo``, ``s3://bucket/runs/demo``) or by a
name under a storage root (``demo`` with ``storage="runs"``; the default root is
``$RAYMEM_STORAGE`` or ``./runs``). Readers ask the run's live accumulator actor when a Ray
cluster holding it is reachable, and otherwise rebuild the same counts from the trial log.

Tables come back as ``pyarrow.Table`` (``polars.from_arrow`` / ``.to_pandas()`` read them), summaries
as plain dicts. Every error a user can cause is a :class:`raymem.errors.RaymemError` whose message says
what to fix, raised before anything is written or started.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from raymem import connection
from raymem.errors import RaymemError
from raymem.estimator import formulas, report
from raymem.estimator.files import load_npy
from raymem.estimator.records import TrialRecord
from raymem.estimator.replay import offline_view
from raymem.estimator.run_files import RunInfo, new_run_info, read_run_info, write_labels, write_run_info
from raymem.estimator.storage import RunStore, run_location, validate_run_name
from raymem.estimator.trial_log import write_trial
from raymem.runner.config import ExperimentConfig, parse_settings, presets_table, resolve_config

STORAGE_ENV = "RAYMEM_STORAGE"
DEFAULT_STORAGE = "runs"


def default_storage() -> str:
    """Return the storage root for run names: ``$RAYMEM_STORAGE`` or ``./runs``."""
    return os.environ.get(STORAGE_ENV, DEFAULT_STORAGE)


def run_uri(run: str, storage: str | None = None) -> str:
    """Return the run directory of ``run``: itself if it is a path or URI, else ``storage/run``."""
    if "://" in run or "/" in run or os.sep in run or run in (".", "..") or Path(run).is_dir():
        return run
    return run_location(storage or default_storage(), validate_run_name(run))


def _new_run_dir(name: str, storage: str | None) -> str:
    """The run directory of run ``name`` (a name, never a path) under ``storage``."""
    return run_location(storage or default_storage(), validate_run_name(name))


def open_store(run: str, storage: str | None = None) -> RunStore:
    """Return the :class:`RunStore` of ``run`` (see :func:`run_uri`)."""
    return RunStore.open(run_uri(run, storage))


# ---- experiments -------------------------------------------------------------------------

def load_config(experiment: str | ExperimentConfig, overrides: dict | None = None,
                settings: list[str] | None = None) -> ExperimentConfig:
    """Return the validated config of an experiment.

    Args:
        experiment: a preset name (see :func:`presets`), a ``.yaml``/``.toml`` file, or a config.
        overrides: keys to override, flat (``{"epochs": 3}``) or dotted (``{"recipe.epochs": 3}``); None values are ignored.
        settings: ``KEY=VALUE`` strings as given to ``--set`` (values read as YAML), applied after ``overrides``.

    Raises:
        RaymemError: naming the key, the bad value and the valid choices.
    """
    overrides = {**(overrides or {}), **parse_settings(settings)}
    if isinstance(experiment, ExperimentConfig):
        from raymem.runner.config import with_overrides

        return with_overrides(experiment, overrides, "the given config") if overrides else experiment
    return resolve_config(experiment, overrides)


def plan(experiment: str | ExperimentConfig, overrides: dict | None = None, settings: list[str] | None = None,
         *, name: str | None = None, storage: str | None = None) -> dict:
    """What a run would do, without starting or writing anything (``raymem run --dry-run``).

    Returns:
        A dict: ``preset, dataset, model, trials, subset_ratio, recipe, per_trial, executor, pair_shards,
        estimated_gpu_hours, estimate_basis, run_dir``.
    """
    from raymem.runner.run import plan as make_plan

    config = load_config(experiment, overrides, settings)
    return {**make_plan(config), "run_dir": _new_run_dir(name or config.preset, storage)}


def run(experiment: str | ExperimentConfig, *, overrides: dict | None = None, settings: list[str] | None = None,
        name: str | None = None, storage: str | None = None, address: str | None = None, data_dir: str | None = None,
        num_cpus: int | None = None, num_gpus: float | None = None, progress: bool = True):
    """Train the missing trials of a run on Ray and wait until each is counted.

    The config is checked before Ray starts or anything is written. With no ``address`` (and no
    ``RAY_ADDRESS``) a Ray on this machine only (loopback) is started for the run and stopped after.

    Args:
        experiment: preset name, config file, or :class:`ExperimentConfig`.
        overrides, settings: as for :func:`load_config`.
        name: run name under ``storage`` (default: the preset's name).
        storage: storage root (default ``$RAYMEM_STORAGE`` or ``./runs``); local, ``s3://`` or ``gs://``.
        address: Ray cluster to run on (default ``$RAY_ADDRESS``; none: a local Ray).
        data_dir: prepared TensorFlow Datasets (default ``$RAYMEM_DATA_DIR``).
        num_cpus, num_gpus: size of a local Ray started here.
        progress: show a progress display on stderr.

    Returns:
        A :class:`raymem.runner.run.RunResult` (trials done, trained now, retried, failed, wall time).
    """
    config = load_config(experiment, overrides, settings)
    name = name or config.preset
    uri = _new_run_dir(name, storage)  # a bad name is refused here, before anything starts
    if not (address or os.environ.get("RAY_ADDRESS")):
        connection.keep_on_loopback()  # the local Ray started for this run listens on the loopback address only
    from raymem.runner.run import run_experiment

    return run_experiment(config, name=name, run_uri=uri, address=address, data_dir=data_dir,
                          num_cpus=num_cpus, num_gpus=num_gpus, progress=progress)


def features(dataset: str, out: str, *, model: str = "resnet50", epochs: int | None = None,
             batch_size: int | None = None, base_lr: float | None = None, data_dir: str | None = None,
             seed: int = 0) -> dict:
    """Train one model on a whole training set and save its penultimate-layer features (``.npz``).

    Returns:
        A summary dict (output path, shapes, accuracies, seconds); see ``runner.features.compute_features``.
    """
    from raymem.runner.features import compute_features

    return compute_features(dataset, model=model, epochs=epochs, batch_size=batch_size, base_lr=base_lr,
                            data_dir=data_dir, out=out, seed=seed)


def presets(budget_trials: int = 2000) -> list[dict]:
    """Return one dict per preset: data set, model, recipe, resources and the GPU-hours of ``budget_trials``."""
    header, *rows = presets_table(budget_trials)
    return [dict(zip(header, row)) for row in rows]


# ---- ingest ------------------------------------------------------------------------------

def load_bool_npy(path: str | Path, what: str) -> np.ndarray:
    """Load a 2-D boolean .npy file without pickle; RaymemError naming the file otherwise."""
    return load_npy(path, f"{what} file", dtype=np.bool_, ndim=2)


def ingest(
    run_dir: str,
    masks: np.ndarray,
    train_correct: np.ndarray,
    test_correct: np.ndarray,
    *,
    name: str | None = None,
    train_labels: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
) -> RunInfo:
    """Make a run from external results, one row per trial.

    Args:
        run_dir: a new run directory (local or URI); it must not hold a run yet.
        masks: bool (t, n): training example i was in trial k's subset.
        train_correct: bool (t, n): trial k's model is right on training example i.
        test_correct: bool (t, n_test): trial k's model is right on test example j.
        name: run name recorded in run.json (default: the folder name).
        train_labels, test_labels: labels to record, if known.

    Returns:
        The new run's :class:`RunInfo`. Everything is validated before anything is written.
    """
    for what, a in (("masks", masks), ("train-correct", train_correct), ("test-correct", test_correct)):
        if a.dtype != np.bool_ or a.ndim != 2:
            raise RaymemError(f"--{what} must be a 2-D bool array, got {a.dtype} with shape {a.shape}.")
    t, n = masks.shape
    if train_correct.shape != (t, n):
        raise RaymemError(
            f"--train-correct has shape {train_correct.shape} but --masks has {masks.shape}; both must be (trials, n_train)."
        )
    if test_correct.shape[0] != t:
        raise RaymemError(
            f"--test-correct has {test_correct.shape[0]} trials but --masks has {t}; every file needs one row per trial."
        )
    if t == 0 or n == 0 or test_correct.shape[1] == 0:
        raise RaymemError("the ingested arrays are empty; pass at least one trial, one training and one test example.")
    store = RunStore.open(run_dir)
    if store.exists("run.json"):
        raise RaymemError(f"{store.uri} already holds a run; pick a new directory for the ingested results.")
    sizes = masks.sum(axis=1)
    info = new_run_info(
        name=name or Path(run_dir.rstrip("/")).name or "ingested",
        n_train=n,
        n_test=int(test_correct.shape[1]),
        subset_size=int(round(float(sizes.mean()))),
        seed=0,
        config={"trials": t, "subset_ratio": float(sizes.mean() / n)},
        fingerprint={},
        source="ingest",
    )
    write_run_info(store, info)
    if train_labels is not None and test_labels is not None:
        write_labels(store, train_labels, test_labels)
    for k in range(t):
        write_trial(store, TrialRecord(
            run_id=info.run_id, trial_id=k, seed=0,
            mask=masks[k], train_correct=train_correct[k], test_correct=test_correct[k],
            metadata={"source": "ingest"},
        ))
    return info


def ingest_files(run_dir: str, masks: str, train_correct: str, test_correct: str, *, name: str | None = None) -> RunInfo:
    """:func:`ingest` from three ``.npy`` files (never unpickled); all are read and checked before anything is written."""
    arrays = [load_bool_npy(path, flag) for path, flag in
              ((masks, "--masks"), (train_correct, "--train-correct"), (test_correct, "--test-correct"))]
    return ingest(run_dir, *arrays, name=name)


# ---- reading -----------------------------------------------------------------------------

class LiveOrLog:
    """Answers from the run's live accumulator when reachable, else from the trial log."""

    def __init__(self, run: str, storage: str | None = None, address: str | None = None, with_pairs: bool = True):
        self.store = open_store(run, storage)
        self.info = read_run_info(self.store)
        self.actor = _find_live_accumulator(self.store, self.info, address)
        self._view = None if self.actor is not None else offline_view(self.store, with_pairs=with_pairs)

    def call(self, method: str, **kwargs):
        """Call the reader ``method`` (a :class:`RunView` method) on the live actor or the offline view."""
        if self.actor is not None:
            import ray

            return ray.get(getattr(self.actor, method).remote(**kwargs))
        return getattr(self._view, method)(**kwargs)


def _find_live_accumulator(store: RunStore, info: RunInfo, address: str | None):
    """Return the run's accumulator handle if a reachable cluster holds it, else None."""
    address = address or os.environ.get("RAY_ADDRESS") or connection.read_live_address(store)
    if not address:
        return None
    if connection.is_loopback(address):
        connection.keep_on_loopback()
    from raymem.actors.accumulator import find_accumulator

    return find_accumulator(info, address)


def estimates(run: str, *, storage=None, address=None, delta: float = report.DEFAULT_DELTA, simultaneous: bool = False) -> pa.Table:
    """Memorization of every training example with its intervals and counts.

    Args:
        run: run name or directory.
        storage: storage root for run names.
        address: Ray cluster holding the live accumulator (else ``RAY_ADDRESS`` or the run's live.json).
        delta: the bars hold with probability 1 - delta.
        simultaneous: the bars hold for all training examples at once.

    Returns:
        One row per training example: ``train_index, mem, mem_lo, mem_hi, ...`` (and ``label_flipped`` with canaries).
    """
    return LiveOrLog(run, storage, address, with_pairs=False).call("mem_table", delta=delta, simultaneous=simultaneous)


def pairs(
    run: str, *, storage=None, address=None,
    min_infl: float = formulas.PAPER_MIN_INFL, min_mem: float = formulas.PAPER_MIN_MEM,
    delta: float = report.DEFAULT_DELTA, simultaneous: bool = False,
) -> pa.Table:
    """High-influence pairs (infl >= min_infl, mem >= min_mem) with their intervals.

    Returns:
        One row per pair: ``train_index, test_index, infl, infl_lo, infl_hi, mem, n_in, n_out``.
    """
    return LiveOrLog(run, storage, address).call(
        "pairs_table", min_infl=min_infl, min_mem=min_mem, delta=delta, simultaneous=simultaneous
    )


def influence(run: str, test_index: int, *, storage=None, address=None, top: int = 10,
              delta: float = report.DEFAULT_DELTA, simultaneous: bool = False) -> pa.Table:
    """The ``top`` training examples with the largest influence on test example ``test_index``.

    Returns:
        One row per influencer: ``rank, train_index, test_index, infl, infl_lo, infl_hi, mem``.
    """
    return LiveOrLog(run, storage, address).call(
        "influence_table", test_index=test_index, top=top, delta=delta, simultaneous=simultaneous
    )


def status(run: str, *, storage=None, address=None, delta: float = report.DEFAULT_DELTA, simultaneous: bool = False,
           target_halfwidth: float = report.DEFAULT_TARGET_HALFWIDTH) -> dict:
    """Trials counted and the convergence summary (error-bar widths, certified examples, split-half consistency).

    Returns:
        A JSON-able dict; a live accumulator adds ``progress`` (throughput and ETA).
    """
    return LiveOrLog(run, storage, address, with_pairs=False).call(
        "status", delta=delta, simultaneous=simultaneous, target_halfwidth=target_halfwidth
    )


def trials(run: str, storage: str | None = None) -> pa.Table:
    """One row per trial in the run's log: ``trial_id, attempt, node_id, host, started, finished, train_seconds,
    predict_seconds, resumed_from_epoch, epochs, train_accuracy`` (on the trial's own subset), ``test_accuracy,
    gpu_ids, checkpoint_warnings`` (how many checkpoints the trial had to skip); null where a trial did not record it.
    """
    from raymem.estimator.trial_table import trial_table

    store = open_store(run, storage)
    read_run_info(store)  # not a run: a clear error
    return trial_table(store)


def compare(run: str, other: str, *, storage=None, min_infl: float = formulas.PAPER_MIN_INFL,
            min_mem: float = formulas.PAPER_MIN_MEM):
    """Compare a run with another run or with released pairs; both are read from their trial logs.

    Args:
        run: a run name or directory.
        other: another run, or released pairs in the paper's ``.npz`` layout (``tr_idx, tt_idx, infl, mem``).

    Returns:
        Against a run: a table of consistency curves (Jaccard and mean |difference| per threshold, Fig. C.2).
        Against released pairs: a dict (pair counts, Jaccard, mean differences on the released pairs).
    """
    from raymem.estimator import compare as comparing

    counts = offline_view(open_store(run, storage)).counts
    if other.endswith(".npz"):
        released = comparing.load_pairs_npz(other)
        return comparing.compare_with_released(counts, released, min_infl=min_infl, min_mem=min_mem, source=other)
    other_counts = offline_view(open_store(other, storage)).counts
    return comparing.compare_runs(counts, other_counts, min_mem=min_mem)


def stop(run: str, *, storage=None, address=None) -> bool:
    """Stop the run's live accumulator (its counts can always be rebuilt from the log).

    Returns:
        True if one was stopped, False if none was reachable.
    """
    store = open_store(run, storage)
    info = read_run_info(store)
    actor = _find_live_accumulator(store, info, address)
    if actor is None:
        return False
    import ray

    ray.get(actor.stop_shards.remote())  # detached pair shards would outlive their accumulator
    ray.kill(actor, no_restart=True)
    return True


# ---- clusters ----------------------------------------------------------------------------

def up(cluster_yaml: str | None = None, *, local: bool = False, port: int = 6379, num_gpus: int | None = None,
       no_restart: bool = False, yes: bool = False) -> dict:
    """Start or update a cluster with Ray's launcher (validated offline first), or a local head.

    Returns:
        For ``local``: the head's address and how to reach it; else the launcher's result.
    """
    from raymem import cluster

    if local:
        return cluster.start_local_head(port=port, num_gpus=num_gpus)
    if not cluster_yaml:
        raise RaymemError("give a cluster YAML (e.g. `raymem up cluster.yaml`) or --local.")
    return cluster.up(cluster_yaml, no_restart=no_restart, yes=yes)


def down(cluster_yaml: str | None = None, *, local: bool = False, yes: bool = False) -> None:
    """Tear down a cluster started by :func:`up` (the file validated first), or the local head."""
    from raymem import cluster

    if local:
        return cluster.stop_local_head()
    if not cluster_yaml:
        raise RaymemError("give the cluster YAML to tear down (e.g. `raymem down cluster.yaml`) or --local.")
    return cluster.down(cluster_yaml, yes=yes)
