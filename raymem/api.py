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

from raymem.cluster import connection
from raymem.errors import RaymemError
from raymem.estimator import formulas, report
from raymem.store.safe_files import load_npy
from raymem.paper.marginal_utility import KIND as MARGINAL_KIND
from raymem.store.trial_record import TrialRecord
from raymem.estimator.log_replay import offline_view
from raymem.store.run_info import RunInfo, new_run_info, read_run_info, write_labels, write_run_info
from raymem.store.storage import RunStore, run_location, validate_run_name
from raymem.store.trial_log import write_trial
from raymem.config.experiment import ExperimentConfig, parse_settings, presets_table, resolve_config

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
        settings: ``KEY=VALUE`` strings as given to ``--set`` (values read as YAML, so ``key=null`` sets None, e.g.
            ``checkpoint_every=null`` turns checkpoints off), applied after ``overrides``.

    Raises:
        RaymemError: naming the key, the bad value and the valid choices.
    """
    from raymem.config.experiment import with_overrides

    if isinstance(experiment, ExperimentConfig):
        config = with_overrides(experiment, overrides, "the given config") if overrides else experiment
    else:
        config = resolve_config(experiment, overrides)
    explicit = parse_settings(settings)
    return with_overrides(config, explicit, "--set", keep_none=True) if explicit else config


def plan(experiment: str | ExperimentConfig, overrides: dict | None = None, settings: list[str] | None = None,
         *, name: str | None = None, storage: str | None = None) -> dict:
    """What a run would do, without starting or writing anything (``raymem run --dry-run``).

    Returns:
        A dict: ``preset, dataset, model, trials, subset_ratio, recipe, per_trial, executor, pair_shards,
        estimated_gpu_hours, estimate_basis, run_dir``.
    """
    from raymem.driver.run import plan as make_plan

    config = load_config(experiment, overrides, settings)
    return {**make_plan(config), "run_dir": _new_run_dir(name or config.preset, storage)}


def run(experiment: str | ExperimentConfig, *, overrides: dict | None = None, settings: list[str] | None = None,
        name: str | None = None, storage: str | None = None, address: str | None = None, data_dir: str | None = None,
        num_cpus: int | None = None, num_gpus: float | None = None, progress: bool = True,
        until_halfwidth: float | None = None, until_jaccard: float | None = None, detach: bool = False):
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
        until_halfwidth: stop submitting trials once the median anytime memorization half-width is at most this
            (the trials in flight still finish and are counted; ``trials`` stays the cap).
        until_jaccard: stop once the split-half Jaccard of even vs odd trials at mem >= 0.25 is at least this.
        detach: submit the driver to the cluster at ``address`` (or ``RAY_ADDRESS``) as a Ray job running the same
            ``raymem run`` and return at once; the run directory records the job (see :mod:`raymem.driver.detached`).

    Returns:
        A :class:`raymem.driver.run.RunResult` (trials done, trained now, retried, failed, wall time); with
        ``detach`` a :class:`raymem.driver.detached.DetachedRun` (``job_id``, ``run_uri``, ``dashboard_url``, ...).
    """
    config = load_config(experiment, overrides, settings)
    check_stopping(until_halfwidth, until_jaccard)
    name = name or config.preset
    uri = _new_run_dir(name, storage)  # a bad name is refused here, before anything starts
    if detach:
        return _submit_detached(config, name, storage, address, data_dir, num_cpus, num_gpus,
                                until_halfwidth, until_jaccard)
    if not (address or os.environ.get("RAY_ADDRESS")):
        connection.keep_on_loopback()  # the local Ray started for this run listens on the loopback address only
    from raymem.driver.run import run_experiment

    return run_experiment(config, name=name, run_uri=uri, address=address, data_dir=data_dir,
                          num_cpus=num_cpus, num_gpus=num_gpus, progress=progress,
                          until_halfwidth=until_halfwidth, until_jaccard=until_jaccard)


def _submit_detached(config: ExperimentConfig, name: str, storage: str | None, address: str | None,
                     data_dir: str | None, num_cpus, num_gpus, until_halfwidth, until_jaccard):
    """:func:`run` with ``detach``: check the flags, then submit the driver as a Ray job."""
    from raymem.driver import detached

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise RaymemError("--detach submits the run to a Ray cluster, but no cluster was given; pass --address "
                          "(e.g. 127.0.0.1:6379 from `raymem up --local --dashboard`, or the dashboard URL) or set RAY_ADDRESS.")
    if num_cpus is not None or num_gpus is not None:
        raise RaymemError("--num-cpus / --num-gpus size a local Ray started by `raymem run`; a detached run uses the "
                          "cluster's resources, so drop them.")
    root = detached.absolute_storage(storage or default_storage())
    if connection.is_loopback(address) or address == "auto":
        connection.keep_on_loopback()
    return detached.submit(config, name=name, run_uri=_new_run_dir(name, root), storage=root, address=address,
                       data_dir=data_dir, until_halfwidth=until_halfwidth, until_jaccard=until_jaccard)


def features(dataset: str, out: str, *, model: str = "resnet50", epochs: int | None = None,
             batch_size: int | None = None, base_lr: float | None = None, data_dir: str | None = None,
             seed: int = 0) -> dict:
    """Train one model on a whole training set and save its penultimate-layer features (``.npz``).

    Returns:
        A summary dict (output path, shapes, accuracies, seconds); see ``training.features.compute_features``.
    """
    from raymem.training.features import compute_features

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
    influence_scope: str = "full",
) -> RunInfo:
    """Make a run from external results, one row per trial.

    Args:
        run_dir: a new run directory (local or URI); it must not hold a run yet.
        masks: bool (t, n): training example i was in trial k's subset.
        train_correct: bool (t, n): trial k's model is right on training example i.
        test_correct: bool (t, n_test): trial k's model is right on test example j.
        name: run name recorded in run.json (default: the folder name).
        train_labels, test_labels: labels to record, if known.
        influence_scope: ``full`` (every pair) or ``class`` (pairs of the same label only; needs the labels).

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
    if influence_scope not in ("full", "class"):
        raise RaymemError(f"--influence-scope {influence_scope!r} is not a scope; use full or class.")
    if influence_scope == "class" and (train_labels is None or test_labels is None):
        raise RaymemError("class influence scope needs the training and test labels; pass them or use the full scope.")
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
        config={"trials": t, "subset_ratio": float(sizes.mean() / n), "estimator": {"influence_scope": influence_scope}},
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

    def call(self, reader: str, **kwargs):
        """Call ``reader`` (a :class:`RunView` method name) on the live actor or the offline view."""
        if self.actor is not None:
            import ray

            return ray.get(getattr(self.actor, reader).remote(**kwargs))
        return getattr(self._view, reader)(**kwargs)


def _find_live_accumulator(store: RunStore, info: RunInfo, address: str | None):
    """Return the run's accumulator handle if a reachable cluster holds it, else None."""
    address = address or os.environ.get("RAY_ADDRESS") or connection.read_live_address(store)
    if not address:
        from raymem.driver.detached import job_address

        address = job_address(store)  # a detached run: the cluster its job was submitted to
    if not address:
        return None
    if connection.is_loopback(address):
        connection.keep_on_loopback()
    from raymem.actors.accumulator import find_accumulator

    return find_accumulator(info, address)


def estimates(run: str, *, storage=None, address=None, delta: float = report.DEFAULT_DELTA, simultaneous: bool = False,
              method: str = report.DEFAULT_METHOD) -> pa.Table:
    """Memorization of every training example with its intervals and counts.

    Args:
        run: run name or directory.
        storage: storage root for run names.
        address: Ray cluster holding the live accumulator (else ``RAY_ADDRESS`` or the run's live.json).
        delta: the bars hold with probability 1 - delta.
        simultaneous: the bars hold for all training examples at once.
        method: ``anytime`` (valid at every look, the default), ``fixed`` (valid at one planned trial count),
            ``chernoff`` or ``hoeffding`` (the earlier bars, for comparison).

    Returns:
        One row per training example: ``train_index, mem, mem_lo, mem_hi, ...`` (and ``label_flipped`` with canaries).
    """
    _check_reads(delta=delta, method=method)
    return LiveOrLog(run, storage, address, with_pairs=False).call("mem_table", delta=delta, simultaneous=simultaneous,
                                                                   method=method)


def pairs(
    run: str, *, storage=None, address=None,
    min_infl: float = formulas.PAPER_MIN_INFL, min_mem: float = formulas.PAPER_MIN_MEM,
    delta: float = report.DEFAULT_DELTA, simultaneous: bool = False, method: str = report.DEFAULT_METHOD,
    fdr: float | None = None,
) -> pa.Table:
    """High-influence pairs with their intervals.

    Args:
        min_infl, min_mem: the paper's selection (infl >= 0.15, mem >= 0.25 by default).
        fdr: instead of the point estimates, select pairs with infl > min_infl at this false discovery rate
            (among training examples with mem >= min_mem); adds a ``q_value`` column.
        delta, simultaneous, method: as for :func:`estimates`.

    Returns:
        One row per pair: ``train_index, test_index, infl, infl_lo, infl_hi, mem, n_in, n_out`` (+ ``q_value``).
    """
    _check_reads(delta=delta, method=method, min_infl=min_infl, min_mem=min_mem, fdr=fdr)
    return LiveOrLog(run, storage, address).call(
        "pairs_table", min_infl=min_infl, min_mem=min_mem, delta=delta, simultaneous=simultaneous, method=method,
        fdr=fdr,
    )


def influence(run: str, test_index: int, *, storage=None, address=None, top: int = 10,
              delta: float = report.DEFAULT_DELTA, simultaneous: bool = False,
              method: str = report.DEFAULT_METHOD) -> pa.Table:
    """The ``top`` training examples with the largest influence on test example ``test_index``.

    Returns:
        One row per influencer: ``rank, train_index, test_index, infl, infl_lo, infl_hi, mem``.
    """
    _check_reads(delta=delta, method=method)
    return LiveOrLog(run, storage, address).call(
        "influence_table", test_index=test_index, top=top, delta=delta, simultaneous=simultaneous, method=method
    )


def status(run: str, *, storage=None, address=None, delta: float = report.DEFAULT_DELTA, simultaneous: bool = False,
           target_halfwidth: float = report.DEFAULT_TARGET_HALFWIDTH, method: str = report.DEFAULT_METHOD,
           until_halfwidth: float | None = None, until_jaccard: float | None = None,
           pairs_fdr: float | None = report.STATUS_FDR) -> dict:
    """Trials counted and the convergence summary.

    Args:
        target_halfwidth: the median memorization half-width to extrapolate ``more_trials_needed`` to.
        until_halfwidth, until_jaccard: stopping criteria to report (met, value, target) under ``stopping``.
        pairs_fdr: report how many pairs pass at this FDR (``pairs_fdr_0.1``; needs the pair matrix, so offline
            reads load it); None skips it.
        delta, simultaneous, method: as for :func:`estimates`.

    Returns:
        A JSON-able dict (``method``, error-bar widths, certified examples, split-half consistency, more trials
        needed, canary recall); a live accumulator adds ``progress`` (throughput and ETA). For a marginal run
        (``kind: "marginal"``): its :func:`marginal_report` instead.
    """
    _check_reads(delta=delta, method=method, target_halfwidth=target_halfwidth, until_halfwidth=until_halfwidth,
                 until_jaccard=until_jaccard, fdr=pairs_fdr)
    from raymem.driver.detached import job_state
    from raymem.driver.lease import driver_state

    store = open_store(run, storage)
    if not store.exists("run.json") and (job := job_state(store)) is not None:
        # detached, and the job's driver has not created the run yet (or failed before it did)
        return {"run": run, "source": "job", "trials_done": 0, "trials_target": None, "job": job}
    if store.exists("run.json") and read_run_info(store).kind == MARGINAL_KIND:
        # a marginal run's status is its report (memorization of its arms' trials means nothing)
        summary = {"kind": MARGINAL_KIND, **marginal_report(store.uri, delta=delta)}
        driver = driver_state(store)
        return {**summary, "driver": driver} if driver is not None else summary
    reader = LiveOrLog(run, storage, address, with_pairs=pairs_fdr is not None)
    summary = reader.call(
        "status", delta=delta, simultaneous=simultaneous, target_halfwidth=target_halfwidth, method=method,
        until_halfwidth=until_halfwidth, until_jaccard=until_jaccard, pairs_fdr=pairs_fdr,
    )
    job = job_state(reader.store)  # a detached run: its job's state beside the counts
    driver = driver_state(reader.store)
    summary = {**summary, "driver": driver} if driver is not None else summary
    return {**summary, "job": job} if job is not None else summary


def logs(run: str, *, storage=None, follow: bool = False):
    """The output of a detached run's job (``raymem run ... --detach``).

    Returns:
        The output so far (a string); with ``follow`` an iterator of output chunks that ends when the job ends.

    Raises:
        RaymemError: the run has no job, or its cluster does not answer.
    """
    from raymem.driver import detached

    store = open_store(run, storage)
    return detached.logs(store, run, follow=follow)


def stop_job(run: str, *, storage=None) -> dict | None:
    """Stop a detached run's job if it is pending or running (waits until it ended).

    Returns:
        ``{"job_id", "was", "state"}`` (its state before and after), or None when the run has no job.
    """
    from raymem.driver import detached

    return detached.stop(open_store(run, storage))


def check_stopping(until_halfwidth: float | None, until_jaccard: float | None) -> None:
    """Refuse bad ``--until-halfwidth`` / ``--until-jaccard`` values (RaymemError naming the flag)."""
    _check_reads(delta=report.DEFAULT_DELTA, method=report.DEFAULT_METHOD, until_halfwidth=until_halfwidth,
                 until_jaccard=until_jaccard)


def _check_reads(*, delta: float, method: str, min_infl=None, min_mem=None, fdr=None, target_halfwidth=None,
                 until_halfwidth=None, until_jaccard=None) -> None:
    """Refuse bad read options before any run is opened (each check names its flag)."""
    from raymem.estimator import bounds

    bounds.check_delta(delta)
    bounds.check_method(method)
    if min_infl is not None:
        bounds.check_threshold(min_infl, "--min-infl")
    if min_mem is not None:
        bounds.check_threshold(min_mem, "--min-mem", "0.25")
    if fdr is not None:
        bounds.check_fdr(fdr)
    if target_halfwidth is not None:
        bounds.check_target_halfwidth(target_halfwidth)
    if until_halfwidth is not None:
        bounds.check_until_halfwidth(until_halfwidth)
    if until_jaccard is not None:
        bounds.check_until_jaccard(until_jaccard)


def trials(run: str, storage: str | None = None) -> pa.Table:
    """One row per trial in the run's log: ``trial_id, attempt, node_id, host, started, finished, train_seconds,
    predict_seconds, resumed_from_epoch, epochs, train_accuracy`` (on the trial's own subset), ``test_accuracy,
    gpu_ids, checkpoint_warnings`` (how many checkpoints the trial had to skip); null where a trial did not record it.
    """
    from raymem.store.trial_metadata import trial_table

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
    from raymem.estimator import bounds
    from raymem.paper import compare as comparing

    bounds.check_threshold(min_infl, "--min-infl")
    bounds.check_threshold(min_mem, "--min-mem", "0.25")
    counts = offline_view(open_store(run, storage)).counts
    if other.endswith(".npz"):
        released = comparing.load_pairs_npz(other)
        return comparing.compare_with_released(counts, released, min_infl=min_infl, min_mem=min_mem, source=other)
    other_counts = offline_view(open_store(other, storage)).counts
    return comparing.compare_runs(counts, other_counts, min_mem=min_mem)


def stop(run: str, *, storage=None, address=None) -> bool:
    """Stop the run's live accumulator (its counts can always be rebuilt from the log), and first the run's
    job if it was detached (:func:`stop_job`), whose driver would otherwise start a new accumulator.

    Returns:
        True if an accumulator was stopped, False if none was reachable.
    """
    store = open_store(run, storage)
    from raymem.driver import detached

    if detached.stop(store) is not None and not store.exists("run.json"):
        return False  # its job was stopped before its driver created the run
    info = read_run_info(store)
    actor = _find_live_accumulator(store, info, address)
    if actor is None:
        return False
    import ray

    ray.get(actor.stop_shards.remote())  # detached pair shards would outlive their accumulator
    ray.kill(actor, no_restart=True)
    return True


# ---- the paper's outputs -------------------------------------------------------------------

def figures(run: str, out_dir: str, *, klass: int | None = None, storage=None, data_dir: str | None = None,
            method: str = report.DEFAULT_METHOD) -> dict:
    """Draw the paper's figures of a run into ``out_dir`` (read from its trial log).

    ``memorized.png`` (Fig. D.4), ``influence.png`` + ``influence-examples.parquet`` (Figs. D.5-D.9, rows chosen
    by the supplement's non-cherry-picking rule), ``influence-hist.png`` (Fig. C.1) and ``convergence.png``.
    Images come from the run's own data loader; a run without images (ingested, or a streamed data set)
    gets the histogram and the convergence plot, and the summary says what was skipped and why.

    Args:
        klass: the class shown in memorized.png (default: the class with most examples at mem >= 0.25).
        data_dir: prepared TensorFlow Datasets (default ``$RAYMEM_DATA_DIR``).

    Returns:
        ``{"out_dir", "written", "skipped": {name: reason}, "pairs", "influenced_by": {k: test examples}, ...}``.
    """
    from raymem.paper import figures as paper_figures
    from raymem.store.run_info import read_labels
    from raymem.store.trial_log import iter_trials, trial_ids

    _check_reads(delta=report.DEFAULT_DELTA, method=method)
    paper_figures.check_out_dir(out_dir)
    store = open_store(run, storage)
    view = offline_view(store)
    labels = read_labels(store)
    train_images, test_images, skipped_images = _run_images(view.info, data_dir)
    if labels is None:  # ingested without labels: one class, nothing to show by class
        labels = (np.zeros(view.info.n_train, np.int64), np.zeros(view.info.n_test, np.int64), None)
    summary = paper_figures.figures_for_counts(
        out_dir, view.counts, train_labels=labels[0], test_labels=labels[1], original_train_labels=labels[2],
        records=iter_trials(store), total=len(trial_ids(store)), train_images=train_images, test_images=test_images,
        klass=klass, method=method, plan=view.plan_kwargs(),
    )
    if skipped_images:
        summary.setdefault("images", skipped_images)
    return summary


def _run_images(info: RunInfo, data_dir: str | None):
    """(train images, test images, why none) from the run's own data loader; images of in-memory sets only."""
    dataset = info.config.get("dataset") if info.source == "runner" else None
    if not dataset:
        return None, None, "the run was ingested: raymem has no images for it"
    from raymem.data.datasets import ArrayDataset, load_dataset

    data = load_dataset(dataset, data_dir)
    if not isinstance(data, ArrayDataset) or data.x_train.ndim < 3:
        return None, None, f"{dataset} has no images in memory (streamed data or feature vectors)"
    return data.x_train, data.x_test, None


def export(run: str, out: str, *, format: str = "fz", storage=None, index_map: str | None = None) -> str:
    """Write a run's estimates in another tool's layout.

    Args:
        format: ``fz``: the layout Feldman & Zhang released (``tr_mem``, ``tr_labels``, ``tt_labels`` and per class c
            ``infl_matrix_class{c}``, ``tr_classidx_{c}``, ``tt_classidx_{c}``).
        index_map: a ``.npy`` (training) or ``.npz`` (``train``/``test``) map from the authors' order to tfds order.

    Returns:
        ``out``.
    """
    from raymem.paper import fz_format
    from raymem.store.safe_files import check_output_path
    from raymem.store.run_info import read_labels

    if format != "fz":
        raise RaymemError(f"--format {format!r} is not an export format; use --format fz.")
    check_output_path(out, "--out")
    train_map, test_map = fz_format.load_index_map(index_map) if index_map else (None, None)
    store = open_store(run, storage)
    labels = read_labels(store)
    if labels is None:
        raise RaymemError(f"run {run} has no labels.parquet, and the fz layout is per class; ingest it with labels "
                          "or export its pairs with `raymem pairs --npz`.")
    view = offline_view(store)
    return str(fz_format.export_fz(view.counts, labels[0], labels[1], out, train_index_map=train_map,
                                   test_index_map=test_map))


INGEST_SOURCES = ("npy", "npz", "fz-aux")


def ingest_from(run_dir: str, source: str, path: str, *, name: str | None = None, index_map: str | None = None) -> RunInfo:
    """:func:`ingest` from another tool's files, read without pickle and checked before anything is written.

    Args:
        source: ``npz`` (one archive with ``trainset_mask``, ``trainset_correctness``, ``testset_correctness``) or
            ``fz-aux`` (a folder of the authors' runs, one ``aux_arrays.npz`` per run).
        index_map: as for :func:`export` (indices in the authors' order are mapped to tfds order).
    """
    from raymem.paper import fz_format

    train_map, test_map = fz_format.load_index_map(index_map) if index_map else (None, None)
    if source == "npz":
        arrays = fz_format.read_npz_trials(path, train_index_map=train_map, test_index_map=test_map)
    elif source == "fz-aux":
        arrays = fz_format.read_fz_aux(path, train_index_map=train_map, test_index_map=test_map)
    else:
        raise RaymemError(f"--from {source!r} is not a source; use --from npz FILE or --from fz-aux DIR "
                          "(or --masks/--train-correct/--test-correct .npy files).")
    return ingest(run_dir, *arrays, name=name)


def compare_many(runs: list[str], *, reference: str | None = None, storage=None,
                 min_mem: float = formulas.PAPER_MIN_MEM) -> tuple[str, dict, dict]:
    """Consistency curves of several runs against a reference run (supplement Figs. C.2/C.3).

    Returns:
        ``(reference, {run: curve table}, {run: legend info (architecture, pairs, test_accuracy)})``; draw them with
        ``raymem.paper.figures.comparison_figure``.
    """
    from raymem.paper import figures as paper_figures
    from raymem.estimator import bounds
    from raymem.paper import compare as comparing

    bounds.check_threshold(min_mem, "--min-mem", "0.25")
    reference = reference or runs[0]
    if reference not in runs:
        runs = [reference, *runs]
    views = {name: offline_view(open_store(name, storage)) for name in runs}
    legend = {}
    for name, view in views.items():
        legend[name] = {"architecture": view.info.config.get("model"),
                        "pairs": view.pairs_table(min_mem=min_mem).num_rows,
                        "test_accuracy": paper_figures.mean_test_accuracy(view.counts)}
    curves = {name: comparing.compare_runs(views[reference].counts, view.counts, min_mem=min_mem)
              for name, view in views.items() if name != reference}
    return reference, curves, legend


# ---- clusters ----------------------------------------------------------------------------

def up(cluster_yaml: str | None = None, *, local: bool = False, port: int = 6379, num_gpus: int | None = None,
       no_restart: bool = False, yes: bool = False, dashboard: bool = False) -> dict:
    """Start or update a cluster with Ray's launcher (validated offline first), or a local head (with ``dashboard``:
    serving Ray's dashboard and Job API on 127.0.0.1:8265, which detached runs need).

    Returns:
        For ``local``: the head's address and how to reach it; else the launcher's result.
    """
    from raymem.cluster import launcher

    if local:
        return launcher.start_local_head(port=port, num_gpus=num_gpus, dashboard=dashboard)
    if not cluster_yaml:
        raise RaymemError("give a cluster YAML (e.g. `raymem up launcher.yaml`) or --local.")
    return launcher.up(cluster_yaml, no_restart=no_restart, yes=yes)


def down(cluster_yaml: str | None = None, *, local: bool = False, yes: bool = False) -> None:
    """Tear down a cluster started by :func:`up` (the file validated first), or the local head."""
    from raymem.cluster import launcher

    if local:
        return launcher.stop_local_head()
    if not cluster_yaml:
        raise RaymemError("give the cluster YAML to tear down (e.g. `raymem down launcher.yaml`) or --local.")
    return launcher.down(cluster_yaml, yes=yes)


# ---- marginal utility (supplement, section C) ------------------------------------------------

MARGINAL_SUFFIX = "-marginal"


def marginal_location(run: str, name: str, storage: str | None = None) -> str:
    """The directory of marginal run ``name`` of ``run``: beside the source run, in the same storage."""
    from urllib.parse import urlsplit, urlunsplit

    source = run_uri(run, storage)
    if "://" in source:
        parts = urlsplit(source)
        parent = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/").rsplit("/", 1)[0], parts.query, ""))
    else:
        parent = os.path.dirname(os.path.normpath(source)) or "."
    return run_location(parent, validate_run_name(name))


def marginal(run: str, trials: int, *, name: str | None = None, storage: str | None = None,
             min_infl: float | None = None, min_mem: float | None = None, fdr: float | None = None,
             method: str | None = None, seed: int | None = None, delta: float = report.DEFAULT_DELTA,
             settings: list[str] | None = None, address: str | None = None, data_dir: str | None = None,
             num_cpus: int | None = None, num_gpus: float | None = None, progress: bool = True) -> dict:
    """The marginal-utility experiment of finished influence run ``run`` (supplement, section C).

    Trains ``trials`` (K) models on each arm: the full training set S, S minus S_h (the training examples of the
    run's high-influence pairs) and S minus a random set of |S_h| examples (the control), with the run's recipe,
    data and labels, as a run of its own (``kind: "marginal"``, default name ``RUN-marginal`` beside ``run``;
    trial k trains arm k % 3). Running it again trains only the trials its log lacks (a larger K adds models).

    Args:
        trials: K, models per arm (>= 1; intervals need K >= 2).
        name: the marginal run's name (default ``<run's name>-marginal``), a directory beside ``run``.
        min_infl, min_mem: the pair selection (default: the paper's 0.15 / 0.25; a resumed run keeps its own).
        fdr, method: select pairs at this false discovery rate instead (``pairs --fdr``).
        seed: the marginal run's seed (training seeds, the random control); default the source run's.
        delta: intervals at confidence 1 - delta.
        settings: ``--set`` items for resource keys (where trials run; the recipe stays the source run's).
        address, data_dir, num_cpus, num_gpus, progress: as for :func:`run`.

    Returns:
        :func:`marginal_report` of the run plus ``trained_now``, ``failed`` and ``created``.

    Raises:
        RaymemError: K < 1, an ingested source run (no recipe), no pairs selected, a bad option: before anything
            is written or started.
    """
    from raymem.estimator import bounds
    from raymem.driver import marginal_run as marginal_runner

    marginal_runner.check_trials(trials)
    bounds.check_delta(delta)
    _check_reads(delta=delta, method=method or report.DEFAULT_METHOD,
                 min_infl=min_infl, min_mem=min_mem, fdr=fdr)
    source_store = open_store(run, storage)
    source = read_run_info(source_store)
    marginal_runner.check_source(source, source_store.uri)
    mname = validate_run_name(name or source.name + MARGINAL_SUFFIX)
    location = marginal_location(run, mname, storage)  # keeps a URI's query (store.uri is for messages)
    store = RunStore.open(location)
    prepared = marginal_runner.prepare(source_store, store, mname, trials,
                                       min_infl=min_infl, min_mem=min_mem, fdr=fdr, method=method, seed=seed,
                                       settings=settings, data_dir=data_dir)
    trained, failed = [], {}
    if prepared.missing:
        if not (address or os.environ.get("RAY_ADDRESS")):
            connection.keep_on_loopback()
        from raymem.driver.run import run_experiment

        result = run_experiment(prepared.config, name=prepared.info.name, run_uri=location, address=address,
                                data_dir=data_dir, num_cpus=num_cpus, num_gpus=num_gpus, progress=progress)
        trained, failed = sorted(result.trained_now), dict(result.failed)
    return {**marginal_report(location, delta=delta), "trained_now": trained, "failed": failed,
            "created": prepared.created}


def marginal_report(run: str, *, storage: str | None = None, delta: float = report.DEFAULT_DELTA) -> dict:
    """Accuracies of a marginal run's arms with intervals, read from its trial log (no training).

    Returns:
        ``{"run", "source_run", "selection", "trials_per_arm", "trials_done", "full", "without_high_influence",
        "without_random", "drops", "sizes", "interval"}``: per arm ``models``, ``train_size``, ``test`` and
        ``influenced`` (``mean, lo, hi, std``); per reduced arm under ``drops`` the drop from ``full`` on ``test``,
        on ``influenced`` and its ``influenced_contribution`` (weighted by |S'_h| / n_test), each ``drop, lo, hi``.
    """
    from raymem.estimator import bounds
    from raymem.paper import marginal_utility as marginal_estimator

    bounds.check_delta(delta)
    store = open_store(run, storage)
    info = read_run_info(store)
    if info.kind != marginal_estimator.KIND:
        raise RaymemError(f"run {info.name} is not a marginal run; make one with `raymem marginal {info.name} --trials K`.")
    return marginal_estimator.report_from_log(store, info, delta=delta)
