"""What the explorer holds of each run it serves: one offline view of the counts, rebuilt when new trials land.

Every table a page shows is a read of that view with the run's own bars (``Run.bars()``), through the same
``RunView`` methods ``Run.estimates`` / ``pairs`` / ``influence`` answer with, so a page and the CLI agree to the
last digit. Between new trials nothing is recomputed: sorted orders, the trials table and the convergence curve
are kept with the view they were made from.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa

from raymem.estimator import formulas
from raymem.estimator.report import PairSelection, StatusQuestions
from raymem.handle import Run

__all__ = ["RunSource", "CHECK_SECONDS", "SORT_KEYS", "MemQuery"]

#: How often a page looks for new trials in the log (a listing of the trials folder).
CHECK_SECONDS = 2.0
#: Columns the memorization table sorts by.
SORT_KEYS = ("mem", "mem_lo", "mem_hi", "halfwidth", "train_index", "n_in", "n_out")
#: Reads of every trial file (the convergence curve, the trials table) are redone at most this often while trials land.
SLOW_SECONDS = 30.0
SLOW_KEYS = ("curve", "convergence.svg", "trials")
OVERVIEW = StatusQuestions(pairs_fdr=None)  # a pairs read per refresh would cost more than the page


class MemQuery:
    """One request of the memorization table: sort, filters, page."""

    def __init__(self, sort: str = "mem", descending: bool = True, klass: int | None = None,
                 certified: bool = False, flipped: bool = False, min_mem: float | None = None,
                 max_mem: float | None = None, page: int = 0, per_page: int = 50):
        self.sort = sort if sort in SORT_KEYS else "mem"
        self.descending, self.klass, self.certified, self.flipped = descending, klass, certified, flipped
        self.min_mem, self.max_mem = min_mem, max_mem
        self.page, self.per_page = max(0, int(page)), min(500, max(1, int(per_page)))


class RunSource:
    """A served run: its :class:`Run`, and the view of its log as of the last trials counted."""

    def __init__(self, run: Run, data_dir: str | None = None):
        self.run = run
        self.data_dir = data_dir
        self.lock = threading.RLock()
        self.view = None
        self.checked = -np.inf
        self.cache: dict = {}
        self.timed: dict = {}
        self._images = None

    # ---- the view, rebuilt when the log grows -------------------------------------------------

    def current(self):
        """The view of the log, rebuilt first if trials landed since it was made (looked at every few seconds)."""
        from raymem.store.trial_log import trial_ids

        with self.lock:
            if self.view is None or time.monotonic() - self.checked >= CHECK_SECONDS:
                self.checked = time.monotonic()
                if self.view is None:
                    self.view = self.run.view()
                else:
                    self._count_new(set(trial_ids(self.run.store)))
            return self.view

    def _count_new(self, in_log: set[int]) -> None:
        """Count the trials that landed since the view was made (the counts add up, so this is the replay of the
        whole log); a log that lost trials (quarantined) or holds another run's is replayed whole."""
        from raymem.store.trial_log import read_trial

        counts = self.view.counts
        new = sorted(in_log - counts.trial_ids)
        if not new and in_log == counts.trial_ids:
            return
        records = [read_trial(self.run.store, k, self.view.info) for k in new]
        if counts.trial_ids - in_log or any(r.run_id != self.view.info.run_id for r in records):
            self.view = self.run.view()
        else:
            for r in records:
                counts.add(r.trial_id, r.mask, r.train_correct, r.test_correct)
            counts.flush()
        self.cache = {key: value for key, value in self.cache.items() if key in SLOW_KEYS}

    def cached(self, key, make):
        """``make(view)``, once per state of the counts (the slow ones at most every :data:`SLOW_SECONDS`)."""
        with self.lock:
            view = self.current()
            stamp = self.cache.get(key)
            fresh = stamp is not None and (stamp[1] == view.counts.trials or (
                key in SLOW_KEYS and time.monotonic() - stamp[2] < SLOW_SECONDS))
            if not fresh:
                self.cache[key] = (make(view), view.counts.trials, time.monotonic())
            return self.cache[key][0]

    def every(self, seconds: float, key: str, make):
        """``make()``, at most once per ``seconds`` (for what is not in the log: the driver, the job)."""
        with self.lock:
            stamp = self.timed.get(key)
            if stamp is None or time.monotonic() - stamp[1] >= seconds:
                self.timed[key] = stamp = (make(), time.monotonic())
            return stamp[0]

    @property
    def bars(self):
        return self.run.bars()

    # ---- reads ----------------------------------------------------------------------------------

    def status(self) -> dict:
        return self.cached("status", lambda view: view.status(self.bars, OVERVIEW))

    def estimates(self) -> pa.Table:
        """``Run.estimates()`` of the view, with the training labels (as trained) where the run keeps them."""
        def make(view):
            table = self.run.with_label_names(view.mem_table(self.bars), {"train_index": "label_name"})
            labels = self.labels()
            if labels is not None:
                table = table.append_column("label", pa.array(labels[0][table.column("train_index").to_numpy()]))
            return table

        return self.cached("estimates", make)

    def labels(self):
        from raymem.store.run_info import read_labels

        return self.cached("labels", lambda view: read_labels(self.run.store))

    def influence(self, test_index: int, top: int = 10) -> pa.Table:
        """``Run.influence(test_index, top=top)`` of the view."""
        with self.lock:  # the counts grow in place when trials land
            return self.current().influence_table(int(test_index), self.bars, int(top))

    def influenced(self, train_index: int, top: int = 10) -> pa.Table:
        """The test examples training example ``train_index`` influences most, with the same intervals."""
        with self.lock:
            return self.current().influenced_table(int(train_index), self.bars, int(top))

    def pairs(self, fdr: float | None = None) -> pa.Table:
        """``Run.pairs(fdr=fdr)`` of the view (the paper's thresholds)."""
        selected = PairSelection(fdr=fdr)
        return self.cached(("pairs", selected), lambda view: self.run.with_label_names(
            view.pairs_table(self.bars, selected), {"train_index": "train_label_name",
                                                    "test_index": "test_label_name"}))

    def trials(self) -> pa.Table:
        return self.cached("trials", lambda view: self.run.trials())

    def curve(self) -> pa.Table:
        """The convergence curve of the log (what ``convergence.png`` draws)."""
        from raymem.estimator.convergence_curves import convergence_curve
        from raymem.store.trial_log import iter_trials

        def make(view):
            info = view.info
            return convergence_curve(iter_trials(self.run.store, info=info), info.n_train, info.n_test, self.bars,
                                     total=view.counts.trials)

        return self.cached("curve", make)

    def images(self):
        """(train images, test images, why none), loaded once."""
        with self.lock:
            if self._images is None:
                try:
                    self._images = self.run.images(self.data_dir)
                except Exception as exc:  # a data set that cannot be loaded here: indices, and why
                    self._images = (None, None, f"the run's data set cannot be loaded here ({exc})")
            return self._images

    # ---- the memorization table -----------------------------------------------------------------

    def memorization(self, query: MemQuery) -> tuple[pa.Table, int]:
        """(the rows of one page, how many rows pass the filters) of the estimates, sorted and filtered."""
        table = self.estimates()
        order = self.cached(("order", query.sort, query.descending), lambda view: _order(table, query))
        keep = np.ones(table.num_rows, dtype=bool)
        if query.klass is not None and "label" in table.column_names:
            keep &= table.column("label").to_numpy() == query.klass
        if query.certified:
            keep &= table.column("mem_lo").to_numpy() >= formulas.PAPER_MIN_MEM
        if query.flipped and "label_flipped" in table.column_names:
            keep &= table.column("label_flipped").to_numpy(zero_copy_only=False)
        mem = table.column("mem").to_numpy()
        if query.min_mem is not None:
            keep &= mem >= query.min_mem
        if query.max_mem is not None:
            keep &= mem <= query.max_mem
        rows = order[keep[order]]
        start = query.page * query.per_page
        return table.take(pa.array(rows[start:start + query.per_page])), int(rows.size)


def _order(table: pa.Table, query: MemQuery) -> np.ndarray:
    """Row order by the query's column (ties by train index), NaN last."""
    if query.sort == "halfwidth":
        key = (table.column("mem_hi").to_numpy() - table.column("mem_lo").to_numpy()) / 2
    else:
        key = table.column(query.sort).to_numpy().astype(np.float64)
    key = np.where(np.isnan(key), -np.inf if query.descending else np.inf, key)
    index = table.column("train_index").to_numpy()
    return np.lexsort((index, -key if query.descending else key))
