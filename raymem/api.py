"""raymem's library API: create or extend runs, and every read as a one-line call on a :class:`Run`.

A *run* is named either by a directory / URI (``runs/demo``, ``s3://bucket/runs/demo``) or by a name under a
storage root (``demo`` with ``storage="runs"``; the default root is ``$RAYMEM_STORAGE`` or ``./runs``).
:func:`run`, :func:`ingest` and :func:`ingest_from` make runs and return their :class:`Run`; the read functions
here (``estimates(run, ...)``, ``pairs(run, ...)``, ...) are ``Run(run, storage).estimates(...)`` and so on.

Tables come back as ``pyarrow.Table`` (``polars.from_arrow`` / ``.to_pandas()`` read them), summaries as plain
dicts. Every error a user can cause is a :class:`raymem.errors.RaymemError` whose message names the parameter
and what to fix, raised before anything is written or started.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from raymem.cluster import connection
from raymem.config.experiment import ExperimentConfig, config_keys, parse_settings, presets_table, resolve_config
from raymem.driver.run import DriverOptions
from raymem.errors import RaymemError
from raymem.estimator import formulas, report
from raymem.estimator.report import PairSelection, StatusQuestions
from raymem.handle import DELTA, METHOD, Run, _location, default_storage
from raymem.store.run_info import new_run_info, write_labels, write_run_info
from raymem.store.safe_files import load_npy
from raymem.store.storage import RunStore, run_location, validate_run_name
from raymem.store.trial_log import write_trial
from raymem.store.trial_record import TrialRecord

__all__ = [
    "Run", "DriverOptions", "PairSelection", "RaymemError",
    "run", "plan", "load_config", "presets", "config_keys", "ingest", "ingest_files", "ingest_from", "features",
    "estimates", "pairs", "influence", "status", "trials", "verify", "figures", "export", "compare", "compare_many",
    "marginal", "marginal_report", "logs", "stop", "stop_job", "up", "down", "default_storage", "tensorboard",
    "serve",
]



def _new_run_dir(name: str, storage: str | None) -> str:
    """The run directory of run ``name`` (a name, never a path) under ``storage``."""
    return run_location(storage or default_storage(), validate_run_name(name))


# ---- experiments -------------------------------------------------------------------------

def load_config(experiment: str | ExperimentConfig, overrides: dict | None = None,
                settings: list[str] | None = None) -> ExperimentConfig:
    """Return the validated config of an experiment.

    Args:
        experiment: a preset name (see :func:`presets`), a ``.yaml``/``.toml`` file, or a config.
        overrides: keys to override, flat (``{"epochs": 3}``) or dotted (``{"recipe.epochs": 3}``); None values
            are ignored.
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
    return {**make_plan(config), "run_dir": _new_run_dir(config.preset if name is None else name, storage)}


def run(experiment: str | ExperimentConfig, *, overrides: dict | None = None, settings: list[str] | None = None,
        name: str | None = None, storage: str | None = None, options: DriverOptions | None = None,
        detach: bool = False):
    """Train the missing trials of a run on Ray and wait until each is counted.

    The config and options are checked before Ray starts or anything is written. With no ``options.address``
    (and no ``RAY_ADDRESS``) a Ray on this machine only (loopback) is started for the run and stopped after.

    Args:
        experiment: preset name, config file, or :class:`ExperimentConfig`.
        overrides, settings: as for :func:`load_config`.
        name: run name under ``storage`` (default: the preset's name).
        storage: storage root (default ``$RAYMEM_STORAGE`` or ``./runs``); local, ``s3://`` or ``gs://``.
        options: a :class:`DriverOptions`: the cluster (``address``), ``data_dir``, the size of a local Ray
            (``num_cpus``, ``num_gpus``), ``progress``, and the stopping criteria ``until_halfwidth`` (the median
            anytime memorization half-width) / ``until_jaccard`` (split-half Jaccard at mem >= 0.25); trials in
            flight when a criterion is met still finish and are counted (``trials`` stays the cap).
        detach: submit the driver to the cluster at ``options.address`` (or ``RAY_ADDRESS``) as a Ray job running
            the same ``raymem run`` and return at once; the run directory records the job.

    Returns:
        A :class:`raymem.driver.run.RunResult` (trials done, trained now, retried, failed, wall time; read the run
        with ``Run(name, storage)``); with ``detach`` a :class:`raymem.driver.detached.DetachedRun`.
    """
    options = options or DriverOptions()
    config = load_config(experiment, overrides, settings)
    StatusQuestions(until_halfwidth=options.until_halfwidth, until_jaccard=options.until_jaccard)  # checks them
    name = config.preset if name is None else name  # "" is a bad name to refuse, not "no name"
    uri = _new_run_dir(name, storage)  # a bad name is refused here, before anything starts
    if detach:
        return _submit_detached(config, name, storage, options)
    if not connection.ray_address(options.address):
        connection.keep_on_loopback()  # the local Ray started for this run listens on the loopback address only
    from raymem.driver.run import run_experiment

    return run_experiment(config, name=name, run_uri=uri, options=options)


def _submit_detached(config: ExperimentConfig, name: str, storage: str | None, options: DriverOptions):
    """:func:`run` with ``detach``: check the options, then submit the driver as a Ray job."""
    from raymem.driver import detached

    address = connection.ray_address(options.address)
    if not address:
        raise RaymemError("detach submits the run to a Ray cluster, but no cluster was given; pass address "
                          "(e.g. 127.0.0.1:6379 from `raymem up --local`, or the dashboard URL) or set RAY_ADDRESS.",
                          parameter="address")
    if options.num_cpus is not None or options.num_gpus is not None:
        which = "num_cpus" if options.num_cpus is not None else "num_gpus"
        raise RaymemError(f"{which} sizes a local Ray started by `raymem run`; a detached run uses the cluster's "
                          "resources, so drop it.", parameter=which)
    root = detached.absolute_storage(storage or default_storage())
    if connection.is_loopback(address) or address == "auto":
        connection.keep_on_loopback()
    return detached.submit(config, name=name, run_uri=_new_run_dir(name, root), storage=root, address=address,
                           data_dir=options.data_dir, until_halfwidth=options.until_halfwidth,
                           until_jaccard=options.until_jaccard)


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
) -> Run:
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
        The new run's :class:`Run`. Everything is validated before anything is written.
    """
    for what, a in (("masks", masks), ("train-correct", train_correct), ("test-correct", test_correct)):
        if a.dtype != np.bool_ or a.ndim != 2:
            raise RaymemError(f"--{what} must be a 2-D bool array, got {a.dtype} with shape {a.shape}.")
    t, n = masks.shape
    if train_correct.shape != (t, n):
        raise RaymemError(
            f"--train-correct has shape {train_correct.shape} but --masks has {masks.shape}; "
            "both must be (trials, n_train)."
        )
    if test_correct.shape[0] != t:
        raise RaymemError(
            f"--test-correct has {test_correct.shape[0]} trials but --masks has {t}; "
            "every file needs one row per trial."
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
        name=(Path(run_dir.rstrip("/")).name or "ingested") if name is None else name,
        n_train=n,
        n_test=int(test_correct.shape[1]),
        subset_size=int(round(float(sizes.mean()))),
        seed=0,
        config={"trials": t, "subset_ratio": float(sizes.mean() / n),
                "estimator": {"influence_scope": influence_scope}},
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
    return Run(run_dir)


def _load_bool_npy(path: str | Path, what: str) -> np.ndarray:
    """Load a 2-D boolean .npy file without pickle; RaymemError naming the file otherwise."""
    return load_npy(path, f"{what} file", dtype=np.bool_, ndim=2)


def ingest_files(run_dir: str, masks: str, train_correct: str, test_correct: str, *, name: str | None = None) -> Run:
    """:func:`ingest` from three ``.npy`` files (never unpickled); all are read and checked before anything is
    written."""
    arrays = [_load_bool_npy(path, flag) for path, flag in
              ((masks, "--masks"), (train_correct, "--train-correct"), (test_correct, "--test-correct"))]
    return ingest(run_dir, *arrays, name=name)


INGEST_SOURCES = ("npy", "npz", "fz-aux")


def ingest_from(run_dir: str, source: str, path: str, *, name: str | None = None, index_map: str | None = None) -> Run:
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


# ---- reads: one-line calls on Run ----------------------------------------------------------

def estimates(run: str, *, storage: str | None = None, address: str | None = None, method: str = METHOD,
              delta: float = DELTA, simultaneous: bool = False) -> pa.Table:
    """:meth:`Run.estimates` of ``run``."""
    return Run(run, storage, address=address).estimates(method=method, delta=delta, simultaneous=simultaneous)


def pairs(run: str, *, storage: str | None = None, address: str | None = None,
          min_infl: float = formulas.PAPER_MIN_INFL, min_mem: float = formulas.PAPER_MIN_MEM, fdr: float | None = None,
          method: str = METHOD, delta: float = DELTA, simultaneous: bool = False) -> pa.Table:
    """:meth:`Run.pairs` of ``run``."""
    return Run(run, storage, address=address).pairs(min_infl=min_infl, min_mem=min_mem, fdr=fdr, method=method,
                                                     delta=delta, simultaneous=simultaneous)


def influence(run: str, test_index: int, *, storage: str | None = None, address: str | None = None, top: int = 10,
              method: str = METHOD, delta: float = DELTA, simultaneous: bool = False) -> pa.Table:
    """:meth:`Run.influence` of ``run``."""
    return Run(run, storage, address=address).influence(test_index, top=top, method=method, delta=delta,
                                                         simultaneous=simultaneous)


def status(run: str, *, storage: str | None = None, address: str | None = None, method: str = METHOD,
           delta: float = DELTA, simultaneous: bool = False, target_halfwidth: float = report.DEFAULT_TARGET_HALFWIDTH,
           until_halfwidth: float | None = None, until_jaccard: float | None = None,
           pairs_fdr: float | None = report.STATUS_FDR) -> dict:
    """:meth:`Run.status` of ``run``."""
    return Run(run, storage, address=address).status(
        method=method, delta=delta, simultaneous=simultaneous, target_halfwidth=target_halfwidth,
        until_halfwidth=until_halfwidth, until_jaccard=until_jaccard, pairs_fdr=pairs_fdr)


def trials(run: str, *, storage: str | None = None) -> pa.Table:
    """:meth:`Run.trials` of ``run``."""
    return Run(run, storage).trials()


def tensorboard(run: str, *, storage: str | None = None, every: int = 10, method: str = METHOD, delta: float = DELTA,
                simultaneous: bool = False, data_dir: str | None = None) -> dict:
    """:meth:`Run.tensorboard` of ``run``."""
    return Run(run, storage).tensorboard(every=every, method=method, delta=delta, simultaneous=simultaneous,
                                         data_dir=data_dir)


def serve(runs: list[str] | str, *, host: str = "127.0.0.1", port: int = 8266, token: str | None = None,
          insecure_public: bool = False, storage: str | None = None, data_dir: str | None = None,
          block: bool = False):
    """:func:`raymem.explorer.serve`: a web explorer over ``runs``; returns the :class:`~raymem.explorer.Explorer`
    (serving in a background thread unless ``block``)."""
    from raymem import explorer

    return explorer.serve(runs, host=host, port=port, token=token, insecure_public=insecure_public,
                          storage=storage, data_dir=data_dir, block=block)


def verify(run: str, *, storage: str | None = None, quarantine: bool = False):
    """:meth:`Run.verify` of ``run``."""
    return Run(run, storage).verify(quarantine=quarantine)


def figures(run: str, out_dir: str, *, storage: str | None = None, klass: int | None = None,
            data_dir: str | None = None, method: str = METHOD, delta: float = DELTA,
            simultaneous: bool = False) -> dict:
    """:meth:`Run.figures` of ``run``."""
    return Run(run, storage).figures(out_dir, klass=klass, data_dir=data_dir, method=method, delta=delta,
                                     simultaneous=simultaneous)


def export(run: str, out: str, *, storage: str | None = None, layout: str = "fz", index_map: str | None = None) -> str:
    """:meth:`Run.export` of ``run``."""
    return Run(run, storage).export(out, layout=layout, index_map=index_map)


def compare(run: str, other: str, *, storage: str | None = None, min_infl: float = formulas.PAPER_MIN_INFL,
            min_mem: float = formulas.PAPER_MIN_MEM):
    """:meth:`Run.compare` of ``run`` with ``other`` (a run under the same storage, or released pairs)."""
    return Run(run, storage).compare(other, min_infl=min_infl, min_mem=min_mem, storage=storage)


def marginal(run: str, models_per_arm: int, *, storage: str | None = None, **choices) -> dict:
    """:meth:`Run.marginal` of ``run``; ``choices`` are its keyword arguments (name, the pair selection, seed,
    settings, options, delta)."""
    return Run(run, storage).marginal(models_per_arm, **choices)


def marginal_report(run: str, *, storage: str | None = None, delta: float = DELTA) -> dict:
    """:meth:`Run.marginal_report` of ``run``."""
    return Run(run, storage).marginal_report(delta=delta)


def logs(run: str, *, storage: str | None = None, follow: bool = False):
    """:meth:`Run.logs` of ``run``."""
    return Run(run, storage).logs(follow=follow)


def stop_job(run: str, *, storage: str | None = None) -> dict | None:
    """:meth:`Run.stop_job` of ``run``."""
    return Run(run, storage).stop_job()


def stop(run: str, *, storage: str | None = None, address: str | None = None) -> dict:
    """:meth:`Run.stop` of ``run``."""
    return Run(run, storage, address=address).stop()


def compare_many(runs: list[str], *, reference: str | None = None, storage=None,
                 min_mem: float = formulas.PAPER_MIN_MEM) -> tuple[str, dict, dict]:
    """Consistency curves of several runs against a reference run (supplement Figs. C.2/C.3).

    Returns:
        ``(reference, {run: curve table}, {run: legend info (architecture, pairs, test_accuracy)})``; draw them with
        ``raymem.paper.figures.comparison_figure``.
    """
    from raymem.estimator.log_replay import offline_view
    from raymem.paper import compare as comparing
    from raymem.paper import figures as paper_figures

    selected = PairSelection(min_mem=min_mem)
    reference = reference or runs[0]
    if reference not in runs:
        runs = [reference, *runs]
    views = {name: offline_view(RunStore.open(_location(name, storage))) for name in runs}
    legend = {}
    for name, view in views.items():
        legend[name] = {"architecture": view.info.config.get("model"),
                        "pairs": view.pairs_table(view.bars(), selected).num_rows,
                        "test_accuracy": paper_figures.mean_test_accuracy(view.counts)}
    curves = {name: comparing.compare_runs(views[reference].counts, view.counts, min_mem=selected.min_mem)
              for name, view in views.items() if name != reference}
    return reference, curves, legend


# ---- clusters ----------------------------------------------------------------------------

def up(cluster_yaml: str | None = None, *, local: bool = False, port: int = 6379, num_gpus: int | None = None,
       no_restart: bool = False, yes: bool = False, dashboard: bool = True) -> dict:
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


