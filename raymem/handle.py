"""The ``Run`` handle: one run of an experiment, and every question a notebook asks of it.

``Run("demo", storage="runs")`` (or ``Run("runs/demo")``, ``Run("s3://bucket/runs/demo")``) names a run the way
sqlite-utils' ``Database`` names a file: nothing is read until a property or method needs it. Reads ask the run's
live accumulator actor when a Ray cluster holding it is reachable, and otherwise rebuild the same counts from the
trial log; both answer through :class:`~raymem.estimator.run_view.RunView`, so both give the same numbers.

Every read that shows intervals builds one :class:`~raymem.estimator.bars.Bars` from the caller's choices and the
run's plan, and passes it to everything it draws or tabulates, so a figure and a table of one read agree. Tables
are ``pyarrow.Table`` (``polars.from_arrow`` / ``.to_pandas()`` read them); summaries are plain dicts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from raymem.cluster import connection
from raymem.errors import RaymemError
from raymem.estimator import bounds, formulas, report
from raymem.estimator.bars import Bars
from raymem.estimator.log_replay import offline_view
from raymem.estimator.report import PairSelection, StatusQuestions
from raymem.estimator.run_view import run_bars
from raymem.paper.marginal_utility import KIND as MARGINAL_KIND
from raymem.store.run_info import RunInfo, read_run_info
from raymem.store.storage import RunStore, run_location, validate_run_name

__all__ = ["Run", "default_storage", "STORAGE_ENV", "DEFAULT_STORAGE"]

STORAGE_ENV = "RAYMEM_STORAGE"
DEFAULT_STORAGE = "runs"
MARGINAL_SUFFIX = "-marginal"
METHOD, DELTA = bounds.DEFAULT_METHOD, bounds.DEFAULT_DELTA


def default_storage() -> str:
    """The storage root for run names: ``$RAYMEM_STORAGE`` or ``./runs``."""
    return os.environ.get(STORAGE_ENV, DEFAULT_STORAGE)


def _location(run: str, storage: str | None) -> str:
    """The run directory of ``run``: itself if it is a path or URI, else ``storage/run``."""
    if "://" in run or "/" in run or os.sep in run or run in (".", "..") or Path(run).is_dir():
        return run
    return run_location(storage or default_storage(), validate_run_name(run))


class _Live:
    """The reads of a live accumulator actor, with the signatures of :class:`RunView`'s."""

    def __init__(self, actor):
        self.actor = actor

    def _get(self, ref):
        import ray

        return ray.get(ref)

    def mem_table(self, bars: Bars) -> pa.Table:
        return self._get(self.actor.mem_table.remote(bars))

    def pairs_table(self, bars: Bars, selected: PairSelection) -> pa.Table:
        return self._get(self.actor.pairs_table.remote(bars, selected))

    def influence_table(self, test_index: int, bars: Bars, top: int) -> pa.Table:
        return self._get(self.actor.influence_table.remote(test_index, bars, top))

    def status(self, bars: Bars, questions: StatusQuestions) -> dict:
        return self._get(self.actor.status.remote(bars, questions))


class Run:
    """One run: its files, its estimates, its figures and its driver.

    Args:
        run: a run name (under ``storage``) or a run directory / URI.
        storage: the storage root for run names (default ``$RAYMEM_STORAGE`` or ``./runs``; local, s3:// or gs://).
        address: the Ray cluster holding the run's live accumulator (default ``RAY_ADDRESS``, else the address the
            run recorded); with none reachable, reads rebuild the counts from the trial log.
    """

    def __init__(self, run: str, storage: str | None = None, *, address: str | None = None):
        self.name = run
        self.location = _location(run, storage)
        self.store = RunStore.open(self.location)
        self.address = address

    def __repr__(self) -> str:
        return f"Run({self.store.uri!r})"

    # ---- what the run knows ----------------------------------------------------------------

    @property
    def uri(self) -> str:
        """The run directory, as a path or URI."""
        return self.store.uri

    @property
    def exists(self) -> bool:
        """Whether the directory holds a run (its run.json)."""
        return self.store.exists("run.json")

    @property
    def info(self) -> RunInfo:
        """What run.json records (read on each access, so a running driver's changes show)."""
        return read_run_info(self.store)

    @property
    def config(self) -> dict:
        """The run's experiment config as stored (a dict)."""
        return dict(self.info.config)

    @property
    def kind(self) -> str:
        """``subsets`` (an influence run) or ``marginal`` (a marginal-utility run)."""
        return self.info.kind

    @property
    def n_train(self) -> int:
        return self.info.n_train

    @property
    def n_test(self) -> int:
        return self.info.n_test

    @property
    def trials_done(self) -> int:
        """Trials in the trial log (each counted exactly once)."""
        from raymem.store.trial_log import trial_ids

        return len(trial_ids(self.store))

    def bars(self, method: str = METHOD, delta: float = DELTA, simultaneous: bool = False) -> Bars:
        """The :class:`Bars` of a read of this run: the caller's choices tuned to the run's plan."""
        return run_bars(self.info, method, delta, simultaneous)

    # ---- reads -------------------------------------------------------------------------------

    def _reader(self, info: RunInfo, with_pairs: bool = True):
        """The live accumulator when reachable, else a view rebuilt from the trial log."""
        actor = self._live_accumulator(info)
        return _Live(actor) if actor is not None else offline_view(self.store, with_pairs=with_pairs)

    def _live_accumulator(self, info: RunInfo):
        address = connection.ray_address(self.address) or connection.read_live_address(self.store)
        if not address:
            from raymem.driver.detached import job_address

            address = job_address(self.store)  # a detached run: the cluster its job was submitted to
        if not address:
            return None
        if connection.is_loopback(address):
            connection.keep_on_loopback()
        from raymem.actors.accumulator import find_accumulator

        return find_accumulator(info, address)

    def view(self, *, with_pairs: bool = True):
        """The run's counts rebuilt from its trial log as one :class:`~raymem.estimator.run_view.RunView`, which
        many reads of one moment can share (each read of ``Run`` rebuilds them): what ``raymem serve`` holds until
        new trials land. Its reads with ``self.bars(...)`` give exactly the offline answers of ``Run``'s."""
        return offline_view(self.store, with_pairs=with_pairs)

    def images(self, data_dir: str | None = None) -> tuple:
        """``(train images, test images, why none)``: the run's images from its own data loader (what
        :meth:`figures` shows); ``(None, None, reason)`` for ingested runs and data without images in memory."""
        return _run_images(self.info, data_dir)

    def estimates(self, *, method: str = METHOD, delta: float = DELTA, simultaneous: bool = False) -> pa.Table:
        """Memorization of every training example with its interval and counts.

        Returns:
            One row per training example: ``train_index, mem, mem_lo, mem_hi, mem_hoeffding_lo, mem_hoeffding_hi,
            p_in, p_out, n_in, n_out, in_hits, out_hits`` (and ``label_flipped`` with canaries; ``label_name`` where
            the data set names its classes, e.g. ``imagefolder:``).
        """
        info = self.info
        table = self._reader(info, with_pairs=False).mem_table(run_bars(info, method, delta, simultaneous))
        return self.with_label_names(table, {"train_index": "label_name"})

    def with_label_names(self, table: pa.Table, columns: dict[str, str]) -> pa.Table:
        """``table`` with the class name of the example each index column names (``{"train_index": "label_name"}``),
        where the run keeps class names (an ``imagefolder:`` set)."""
        from raymem.store.run_info import read_class_names, read_labels

        names = read_class_names(self.store)
        if not names:
            return table
        _, test_labels, train_labels = read_labels(self.store)  # original labels: a canary keeps its true class
        for index_column, name_column in columns.items():
            labels = train_labels if index_column.startswith("train") else test_labels
            named = np.asarray(names, dtype=object)[labels[table.column(index_column).to_numpy()]]
            table = table.append_column(name_column, pa.array(named.tolist(), pa.string()))
        return table

    def pairs(self, *, min_infl: float = formulas.PAPER_MIN_INFL, min_mem: float = formulas.PAPER_MIN_MEM,
              fdr: float | None = None, method: str = METHOD, delta: float = DELTA,
              simultaneous: bool = False) -> pa.Table:
        """High-influence pairs with their intervals: the paper's rule (infl >= 0.15, mem >= 0.25), or with ``fdr``
        the pairs whose influence exceeds ``min_infl`` at that false discovery rate (adds ``q_value``).

        Returns:
            One row per pair: ``train_index, test_index, infl, infl_lo, infl_hi, mem, n_in, n_out`` (+ ``q_value``;
            + ``train_label_name, test_label_name`` where the data set names its classes).
        """
        selected = PairSelection(min_infl, min_mem, fdr)
        info = self.info
        table = self._reader(info).pairs_table(run_bars(info, method, delta, simultaneous), selected)
        return self.with_label_names(table, {"train_index": "train_label_name", "test_index": "test_label_name"})

    def influence(self, test_index: int, *, top: int = 10, method: str = METHOD, delta: float = DELTA,
                  simultaneous: bool = False) -> pa.Table:
        """The ``top`` training examples with the largest influence on test example ``test_index``.

        Returns:
            One row per influencer: ``rank, train_index, test_index, infl, infl_lo, infl_hi, mem``.
        """
        info = self.info
        return self._reader(info).influence_table(int(test_index), run_bars(info, method, delta, simultaneous),
                                                  int(top))

    def status(self, *, method: str = METHOD, delta: float = DELTA, simultaneous: bool = False,
               target_halfwidth: float = report.DEFAULT_TARGET_HALFWIDTH, until_halfwidth: float | None = None,
               until_jaccard: float | None = None, pairs_fdr: float | None = report.STATUS_FDR) -> dict:
        """Trials counted and the convergence summary: error-bar widths, certified examples, split-half
        consistency, trials still needed for ``target_halfwidth``, the stopping criteria asked, how many pairs pass
        at ``pairs_fdr`` (None skips it), canary recall; live reads add ``progress``; a detached run adds ``job``
        and a run with a driver adds ``driver``. A marginal run's status is its :meth:`marginal_report`.
        """
        from raymem.driver.detached import job_state
        from raymem.driver.lease import driver_state

        questions = StatusQuestions(target_halfwidth, until_halfwidth, until_jaccard, pairs_fdr)
        Bars(method, delta, simultaneous)  # refuse bad settings before any file is read
        if not self.exists and (job := job_state(self.store)) is not None:
            # detached, and the job's driver has not created the run yet (or failed before it did)
            return {"run": self.name, "source": "job", "trials_done": 0, "trials_target": None, "job": job}
        info = self.info
        if info.kind == MARGINAL_KIND:  # memorization of its arms' trials means nothing
            summary = {"kind": MARGINAL_KIND, **self.marginal_report(delta=delta)}
        else:
            bars = run_bars(info, method, delta, simultaneous)
            summary = self._reader(info, with_pairs=pairs_fdr is not None).status(bars, questions)
            if (job := job_state(self.store)) is not None:
                summary["job"] = job
        if (driver := driver_state(self.store)) is not None:
            summary["driver"] = driver
        return summary

    def trials(self) -> pa.Table:
        """One row per trial in the log: ``trial_id, attempt, node_id, host, started, finished, train_seconds,
        predict_seconds, resumed_from_epoch, epochs, train_accuracy`` (on the trial's own subset), ``test_accuracy,
        gpu_ids, checkpoint_warnings``; null where a trial did not record it."""
        from raymem.store.trial_metadata import trial_table

        self.info  # noqa: B018 - not a run: a clear error
        return trial_table(self.store)

    def tensorboard(self, *, every: int = 10, method: str = METHOD, delta: float = DELTA,
                    simultaneous: bool = False, data_dir: str | None = None) -> dict:
        """Write ``RUN/tensorboard/`` from the trial log (``tensorboard --logdir RUN`` shows it): the status
        scalars, trials per hour and test accuracy, one update every ``every`` trials (step = trials counted),
        replacing the events there. A run a live driver holds is refused: its driver writes them as trials land.
        Where the run's data loader gives images (``data_dir``: prepared TensorFlow Datasets), the most memorized
        training examples as an image every few updates.

        Returns:
            ``{"logdir", "steps", "tags"}`` (see :func:`raymem.paper.tensorboard.replay`) and ``"images"``: why
            there is no grid, where there is none.
        """
        from raymem.driver.lease import driver_state
        from raymem.paper import tensorboard

        bars = Bars(method, delta, simultaneous)  # refuse bad settings before any file is read
        info = self.info
        if (driver := driver_state(self.store)) is not None and driver.get("live"):
            raise RaymemError(f"run {info.name} is being trained by a live driver (pid {driver.get('pid')} on "
                              f"{driver.get('host')}), which writes its TensorBoard events itself; open "
                              f"`tensorboard --logdir {self.uri}` instead.")
        bars = run_bars(info, bars.method, bars.delta, bars.simultaneous)
        try:
            images, _, no_images = self.images(data_dir)
        except RaymemError as exc:  # a data set not prepared here: the curves still tell the run
            images, no_images = None, str(exc)
        written = tensorboard.replay(self.store, every=every, bars=bars, images=images)
        return {**written, **({"images": no_images} if no_images else {})}

    # ---- the paper's outputs -------------------------------------------------------------------

    def figures(self, out_dir: str, *, klass: int | None = None, data_dir: str | None = None,
                method: str = METHOD, delta: float = DELTA, simultaneous: bool = False) -> dict:
        """Draw the paper's figures into ``out_dir`` (from the trial log), every interval by this read's bars.

        ``memorized.png`` (Fig. D.4), ``influence.png`` + ``influence-examples.parquet`` (Figs. D.5-D.9, rows chosen
        by the supplement's non-cherry-picking rule), ``influence-hist.png`` (Fig. C.1) and ``convergence.png``.
        Images come from the run's own data loader; a run without images (ingested, or a streamed data set) gets
        the histogram and the convergence plot, and the summary says what was skipped and why.

        Args:
            klass: the class memorized.png shows (default: the class with most examples at mem >= 0.25).
            data_dir: prepared TensorFlow Datasets (default ``$RAYMEM_DATA_DIR``).

        Returns:
            ``{"out_dir", "written", "skipped": {name: reason}, "pairs", "influenced_by": {k: test examples}, ...}``.
        """
        from raymem.paper import figures as paper_figures
        from raymem.store.run_info import read_class_names, read_labels
        from raymem.store.trial_log import iter_trials, trial_ids

        Bars(method, delta, simultaneous)  # refuse bad settings before the trial log is read
        paper_figures.check_out_dir(out_dir, "out_dir")
        view = offline_view(self.store)
        bars = view.bars(method, delta, simultaneous)
        labels = read_labels(self.store)
        if labels is None:  # ingested without labels: one class, nothing to show by class
            labels = (np.zeros(view.info.n_train, np.int64), np.zeros(view.info.n_test, np.int64), None)
        train_images, test_images, no_images = _run_images(view.info, data_dir)
        data = paper_figures.RunData(labels[0], labels[1], labels[2], train_images, test_images,
                                     class_names=read_class_names(self.store))
        summary = paper_figures.figures_for_counts(
            out_dir, view.counts, data, bars, records=iter_trials(self.store), total=len(trial_ids(self.store)),
            layout=paper_figures.Layout(klass=klass))
        if no_images:
            summary.setdefault("images", no_images)
        return summary

    def export(self, out: str, *, layout: str = "fz", index_map: str | None = None) -> str:
        """Write the run's estimates in another tool's layout; return ``out``.

        Args:
            layout: ``fz``: the layout Feldman & Zhang released (``tr_mem``, ``tr_labels``, ``tt_labels`` and per
                class c ``infl_matrix_class{c}``, ``tr_classidx_{c}``, ``tt_classidx_{c}``).
            index_map: a ``.npy`` (training) or ``.npz`` (``train``/``test``) map from the authors' order to tfds
                order.
        """
        from raymem.paper import fz_format
        from raymem.store.run_info import read_labels
        from raymem.store.safe_files import check_output_path

        if layout != "fz":
            raise RaymemError(f"layout {layout!r} is not an export layout; use fz.", parameter="layout")
        check_output_path(out, "out")
        train_map, test_map = fz_format.load_index_map(index_map) if index_map else (None, None)
        labels = read_labels(self.store)
        if labels is None:
            raise RaymemError(f"run {self.name} has no labels.parquet, and the fz layout is per class; ingest it with "
                              "labels or export its pairs with `raymem pairs --npz`.")
        counts = offline_view(self.store).counts
        return str(fz_format.export_fz(counts, labels[0], labels[1], out, train_index_map=train_map,
                                       test_index_map=test_map))

    def compare(self, other: str, *, min_infl: float = formulas.PAPER_MIN_INFL,
                min_mem: float = formulas.PAPER_MIN_MEM, storage: str | None = None):
        """Compare with another run (a name under ``storage``, default this run's storage root, or a directory) or
        with released pairs in the paper's ``.npz`` layout (``tr_idx, tt_idx, infl, mem``).

        Returns:
            Against a run: a table of consistency curves (Jaccard and mean |difference| per threshold, Fig. C.2).
            Against released pairs: a dict (pair counts, Jaccard, mean differences on the released pairs).
        """
        from raymem.paper import compare as comparing

        selected = PairSelection(min_infl, min_mem)
        counts = offline_view(self.store).counts
        if other.endswith(".npz"):
            released = comparing.load_pairs_npz(other)
            return comparing.compare_with_released(counts, released, min_infl=selected.min_infl,
                                                   min_mem=selected.min_mem, source=other)
        other_counts = offline_view(RunStore.open(_location(other, storage))).counts
        return comparing.compare_runs(counts, other_counts, min_mem=selected.min_mem)

    # ---- marginal utility (supplement, section C) ------------------------------------------------

    def marginal_location(self, name: str) -> str:
        """The directory of this run's marginal run ``name``: beside this run, in the same storage."""
        from urllib.parse import urlsplit, urlunsplit

        if "://" in self.location:
            parts = urlsplit(self.location)
            parent = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/").rsplit("/", 1)[0], parts.query,
                                 ""))
        else:
            parent = os.path.dirname(os.path.normpath(self.location)) or "."
        return run_location(parent, validate_run_name(name))

    def marginal(self, models_per_arm: int, *, name: str | None = None, min_infl: float | None = None,
                 min_mem: float | None = None, fdr: float | None = None, method: str | None = None,
                 seed: int | None = None, settings: list[str] | None = None, options=None,
                 delta: float = DELTA) -> dict:
        """The marginal-utility experiment of this finished influence run (supplement, section C).

        Trains ``models_per_arm`` (K) models on each arm: the full training set S, S minus S_h (the training
        examples of the run's high-influence pairs) and S minus a random set of |S_h| examples (the control),
        with the run's recipe, data and labels, as a run of its own (``kind: "marginal"``, default name
        ``<name>-marginal`` beside this run; trial k trains arm k % 3). Running it again trains only the trials its
        log lacks (a larger K adds models).

        Args:
            min_infl, min_mem, fdr: the pair selection; each one not given is the marginal run's own on resume,
                else the paper's 0.15 / 0.25 (and no FDR); with ``fdr``, ``method`` is the bars it uses.
            seed: the marginal run's seed (training seeds, the random control); default this run's.
            settings: ``--set`` items for resource keys (where trials run; the recipe stays this run's).
            options: a :class:`raymem.driver.run.DriverOptions` (cluster, data dir, progress).
            delta: the report's intervals hold with probability 1 - delta.

        Returns:
            :meth:`marginal_report` of the marginal run plus ``trained_now``, ``failed`` and ``created``.
        """
        from raymem.driver import marginal_run
        from raymem.driver.run import DriverOptions, run_experiment

        options = options or DriverOptions()
        marginal_run.check_models_per_arm(models_per_arm)
        delta = bounds.check_delta(delta)  # before any training, not after it
        source = self.info
        marginal_run.check_source(source, self.uri)
        mname = validate_run_name(source.name + MARGINAL_SUFFIX if name is None else name)
        request = marginal_run.MarginalRequest(mname, models_per_arm, min_infl, min_mem, fdr, method, seed,
                                               tuple(settings or ()), options.data_dir)
        location = self.marginal_location(mname)  # keeps a URI's query (store.uri is for messages)
        prepared = marginal_run.prepare(self.store, RunStore.open(location), request)
        trained, failed = [], {}
        if prepared.missing:
            if not connection.ray_address(options.address):
                connection.keep_on_loopback()
            result = run_experiment(prepared.config, name=prepared.info.name, run_uri=location, options=options)
            trained, failed = sorted(result.trained_now), dict(result.failed)
        return {**Run(location).marginal_report(delta=delta), "trained_now": trained, "failed": failed,
                "created": prepared.created}

    def marginal_report(self, *, delta: float = DELTA) -> dict:
        """Accuracies of a marginal run's arms with intervals, read from its trial log (no training).

        Returns:
            ``{"run", "source_run", "selection", "trials_per_arm", "trials_done", "full", "without_high_influence",
            "without_random", "drops", "sizes", "interval"}``: per arm ``models``, ``train_size``, ``test`` and
            ``influenced`` (``mean, lo, hi, std``); per reduced arm under ``drops`` the drop from ``full`` on
            ``test``, on ``influenced`` and its ``influenced_contribution`` (weighted by |S'_h| / n_test).
        """
        from raymem.paper import marginal_utility

        delta = bounds.check_delta(delta)
        info = self.info
        if info.kind != marginal_utility.KIND:
            raise RaymemError(f"run {info.name} is not a marginal run; make one with "
                              f"`raymem marginal {info.name} --trials K`.")
        return marginal_utility.report_from_log(self.store, info, delta=delta)

    # ---- the run's driver ----------------------------------------------------------------------

    def verify(self, *, quarantine: bool = False):
        """Check every file of the run (trial files' checksums and columns, run.json, labels.parquet).

        Args:
            quarantine: move the damaged trial files to ``RUN/quarantine/``, so that the next ``raymem run`` trains
                exactly those trials again.

        Returns:
            A :class:`raymem.store.verify.VerifyReport`: files checked, the damaged ones, the ones moved.
        """
        from raymem.store import verify

        report = verify.verify_run(self.store)
        return verify.quarantine(self.store, report) if quarantine else report

    def logs(self, *, follow: bool = False):
        """The output of a detached run's job: a string, or with ``follow`` an iterator of chunks that ends with
        the job. RaymemError when the run has no job or its cluster does not answer."""
        from raymem.driver import detached

        return detached.logs(self.store, self.name, follow=follow)

    def stop_job(self) -> dict | None:
        """Stop a detached run's job if it is pending or running (waits until it ended).

        Returns:
            ``{"job_id", "was", "state"}`` (its state before and after), or None when the run has no job.
        """
        from raymem.driver import detached

        return detached.stop(self.store)

    def stop(self) -> dict:
        """Stop the run: first its detached job if any (whose driver would otherwise start a new accumulator),
        then its live accumulator (the counts can always be rebuilt from the log).

        Returns:
            ``{"job": stop_job()'s answer or None, "accumulator": True if one was stopped}``.
        """
        job = self.stop_job()
        if not self.exists:
            return {"job": job, "accumulator": False}  # its job was stopped before its driver created the run
        actor = self._live_accumulator(self.info)
        if actor is None:
            return {"job": job, "accumulator": False}
        import ray

        ray.get(actor.stop_shards.remote())  # detached pair shards would outlive their accumulator
        ray.kill(actor, no_restart=True)
        return {"job": job, "accumulator": True}


def _run_images(info: RunInfo, data_dir: str | None):
    """(train images, test images, why none) from the run's own data loader; images of in-memory sets only."""
    dataset = info.config.get("dataset") if info.source == "runner" else None
    if not dataset:
        return None, None, "the run was ingested: raymem has no images for it"
    from raymem.data.datasets import ArrayDataset, data_options, load_dataset

    data = load_dataset(dataset, data_dir, **data_options(info.config))
    if not isinstance(data, ArrayDataset) or data.x_train.ndim < 3:
        return None, None, f"{dataset} has no images in memory (streamed data or feature vectors)"
    return data.x_train, data.x_test, None
