"""The run's accumulator: one named, detached Ray actor that owns the count tensors.

``absorb(record)`` validates a finished trial, appends it to the trial log durably, updates the
counts, and only then acknowledges; a trial id already counted is acknowledged again without
being counted twice. On start (first time, or after a crash and restart by Ray) the actor
rebuilds its counts from the log, so the log stays the source of truth. Reads are answered from
a consistent snapshot of the live counts through the same ``RunView`` the offline path uses.

The actor is threaded (:data:`MAX_CONCURRENCY`): absorbs and reads run at the same time, so a
seconds-long ``pairs`` read never holds up the acknowledgement of a finished trial (whose GPU waits
for it). ``raymem.actors.live_counts`` explains the locking; absorbs validate and write the log
outside any lock and take the lock only for the O(n) count update.

With ``pair_shards = S > 1`` (and pairs tracked) the pair matrix lives in S ``PairShard`` actors over
equal slices of training rows (``raymem.actors.pair_shard``, whose docstring explains why no trial is
lost or counted twice); this actor keeps every per-example count, forwards each absorbed trial to all
shards after logging and counting it, and gathers pair and influence reads from them.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections import deque

import numpy as np

from raymem.actors import pair_shard
from raymem.actors.live_counts import LiveCounts
from raymem.actors.pair_reader import PairReader, ReaderUnavailable
from raymem.cluster.connection import DURABLE_ACTOR_OPTIONS, NAMESPACE, connect, head_pin, reachable
from raymem.errors import RaymemError
from raymem.estimator import report
from raymem.store.trial_record import TrialRecord, validate_record
from raymem.estimator.log_replay import counts_from_log, flipped_labels, run_influence_scope
from raymem.store.run_info import RunInfo, read_labels, read_run_info
from raymem.store.storage import RunStore
from raymem.paper.marginal_utility import mask_source
from raymem.estimator.subsets import trial_mask
from raymem.store.trial_log import write_trial
from raymem.estimator.bars import Bars
from raymem.estimator.report import PairSelection, StatusQuestions
from raymem.estimator.run_view import RunView, run_bars
#: Completed trials kept for the throughput estimate.
THROUGHPUT_WINDOW = 50
#: Threads of the accumulator actor: absorbs and reads at the same time (see live_counts).
MAX_CONCURRENCY = 16
#: Python hands the GIL to a waiting thread after this long (default 5 ms): an absorb waiting behind a
#: read's Python code waits at most this long per switch.
SWITCH_INTERVAL_S = 0.0005


class Accumulator:
    """Holds one run's counts; see the module docstring for the protocol."""

    def __init__(self, run_uri: str, with_pairs: bool = True, batch_size: int = 64, pair_shards: int = 1,
                 pair_reader_process: bool = True):
        sys.setswitchinterval(SWITCH_INTERVAL_S)  # this process is the actor's alone
        self.store = RunStore.open(run_uri)
        self.info = read_run_info(self.store)
        labels = read_labels(self.store)
        self.train_labels, self.test_labels = (labels[0], labels[1]) if labels is not None else (None, None)
        self.run_uri, self.batch_size = run_uri, batch_size
        # With shards they hold the pair matrix and this actor every other count.
        self.pair_shard_count = effective_pair_shards(with_pairs, pair_shards, self.info.n_train)
        started = time.perf_counter()
        counts = counts_from_log(self.store, self.info, with_pairs=with_pairs and not self.pair_shard_count,
                                 batch_size=batch_size)
        self.rebuild_seconds = time.perf_counter() - started
        self.influence_scope = run_influence_scope(self.info)  # the scope its counts were built in
        self.rebuilt_trials = counts.trials
        # pair reads in a child process over the matrix in shared memory (pair_reader): no GIL shared with absorbs
        self.reader = PairReader.share(counts.h_in) if pair_reader_process and counts.h_in is not None else None
        if self.reader is not None:
            counts.h_in = self.reader.matrix
        self.live = LiveCounts(counts)
        self.flipped = flipped_labels(self.store)
        self.mask_run = mask_source(self.store, self.info)  # what subsets.trial_mask needs
        self._shard_lock = threading.RLock()  # shard (re)starts and syncs, never held for a forward or a read
        self.shards: list = []
        self._shards_in_doubt = bool(self.pair_shard_count)  # True until every shard holds exactly our trials
        if self.pair_shard_count:
            self._sync_shards()
        self.finish_times: deque[float] = deque(maxlen=THROUGHPUT_WINDOW)
        self.duplicates = 0
        self.started_at = time.time()

    # ---- identity ----------------------------------------------------------------------
    def run_id(self) -> str:
        return self.info.run_id

    def describe(self) -> dict:
        return {
            "run_id": self.info.run_id,
            "run_uri": self.store.uri,
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "trials": self.live.trials,
            "rebuilt_trials": self.rebuilt_trials,
            "rebuild_seconds": self.rebuild_seconds,
            "duplicates": self.duplicates,
            "pair_shards": self.pair_shard_count,
            "influence_scope": self.influence_scope,
        }

    def done_trial_ids(self) -> list[int]:
        return sorted(self.live.trial_ids())

    def reload_info(self) -> None:
        """Re-read run.json (the driver raised the trial target)."""
        info = read_run_info(self.store)
        if info.run_id != self.info.run_id:
            raise RaymemError(f"{self.store.uri} now holds another run; restart the accumulator.")
        self.info = info

    # ---- the write path ------------------------------------------------------------------
    def absorb(self, record: TrialRecord) -> dict:
        """Validate, log durably, count, then acknowledge ``record``."""
        live = self.live
        if record.run_id == self.info.run_id and record.trial_id in live:
            return self._duplicate(record)
        self._validate(record)
        write_trial(self.store, record)  # durable first; the same record twice (two threads) is one file
        if not live.add(record.trial_id, record.mask, record.train_correct, record.test_correct):
            return self._duplicate(record)  # another thread counted the same delivery meanwhile
        if self.pair_shard_count:
            self._on_shards(lambda shards: pair_shard.forward(
                shards, record.trial_id, record.mask, record.train_correct, record.test_correct))
        self.finish_times.append(time.time())
        return {"trial_id": record.trial_id, "counted": True, "trials": live.trials}

    def _duplicate(self, record: TrialRecord) -> dict:
        self.duplicates += 1
        if self._shards_in_doubt:  # likely the retry of a delivery whose forward failed: complete it
            self._on_shards(lambda shards: None)
        return {"trial_id": record.trial_id, "counted": False, "trials": self.live.trials}

    def _validate(self, record: TrialRecord) -> None:
        info = self.info
        validate_record(record, run_id=info.run_id, n_train=info.n_train, n_test=info.n_test,
                        subset_size=None if info.kind == "marginal" else info.subset_size)  # arms: sizes differ
        if info.source == "runner" and not np.array_equal(record.mask, trial_mask(self.mask_run, record.trial_id)):
            drawn = "its arm's example set" if info.kind == "marginal" else "the one drawn from (run seed, trial id)"
            raise RaymemError(
                f"trial {record.trial_id} trained on a subset that is not {drawn}; "
                "send records produced by this run's trials only."
            )
        if self.train_labels is not None and record.train_pred is not None:
            if not (np.array_equal(record.train_correct, record.train_pred == self.train_labels)
                    and np.array_equal(record.test_correct, record.test_pred == self.test_labels)):
                raise RaymemError(
                    f"trial {record.trial_id} has correctness bits that disagree with its predictions and the run's "
                    "labels; build records with TrialRecord.from_predictions."
                )

    # ---- reads (same answers as the offline path) ------------------------------------------
    def _view(self, counts) -> RunView:
        return RunView(self.info, counts, self.flipped, source="actor")

    def _bars(self, bars: Bars | None) -> Bars:
        """The read's bars; None: the run's defaults, tuned to its plan."""
        return bars or run_bars(self.info)

    def mem_table(self, bars: Bars | None = None):
        with self.live.snapshot() as counts:
            return self._view(counts).mem_table(self._bars(bars))

    def _pair_read(self, method: str, kwargs: dict):
        with self.live.snapshot(pairs=True) as counts:  # the matrix holds exactly these trials until the read ends
            if self.reader is not None:
                try:
                    return self.reader.call(method, counts, kwargs)
                except ReaderUnavailable:
                    pass  # read here instead: correct, only slower for the absorbs meanwhile
            return getattr(self._view(counts), method)(**kwargs)

    def pairs_table(self, bars: Bars | None = None, selected: PairSelection = PairSelection()):
        bars = self._bars(bars)
        kwargs = {"bars": bars, "selected": selected}
        if not self.pair_shard_count:
            return self._pair_read("pairs_table", kwargs)
        # With an FDR, each shard sends its candidates' p-values (computed with the hypotheses of all shards) and
        # one step-up runs here: exactly the unsharded selection.
        if selected.fdr is not None:
            with self.live.snapshot() as counts:
                kwargs.update(n_hypotheses=self._view(counts).fdr_hypotheses(selected.min_mem), step_up=False)
        table = self._on_shards(lambda shards: pair_shard.gather_pairs(shards, **kwargs))
        if selected.fdr is None:
            return table
        return report.fdr_step_up(table, selected.fdr, kwargs["n_hypotheses"], bars.method)

    def influence_table(self, test_index: int, bars: Bars | None = None, top: int = 10):
        bars = self._bars(bars)
        if self.pair_shard_count:
            return self._on_shards(lambda shards: pair_shard.gather_influence(shards, test_index=test_index, top=top,
                                                                              bars=bars))
        return self._pair_read("influence_table", {"test_index": test_index, "bars": bars, "top": top})

    def status(self, bars: Bars | None = None, questions: StatusQuestions = StatusQuestions()) -> dict:
        bars = self._bars(bars)
        fdr = questions.pairs_fdr
        local_pairs = fdr is not None and not self.pair_shard_count and self.live.counts.tracks_pairs
        with self.live.snapshot(pairs=local_pairs) as counts:  # the FDR count needs the pair counts
            summary = self._view(counts).status(bars, questions)
        if self.pair_shard_count and fdr is not None and summary["trials_done"]:  # the pair counts are in the shards
            summary[f"pairs_fdr_{fdr:g}"] = self.pairs_table(bars, PairSelection(fdr=fdr)).num_rows
        summary["pairs_pending"] = self.live.pending
        summary["progress"] = self._progress(summary["trials_done"], summary["trials_target"])
        return summary

    def flush(self) -> int:
        trials = self.live.flush()
        if self.pair_shard_count:
            self._on_shards(pair_shard.flush)
        return trials

    # ---- pair shards ---------------------------------------------------------------------
    def _sync_shards(self) -> None:
        """Get or start the shards and have each count exactly this actor's trials (missing ones from the log)."""
        with self._shard_lock:
            self.shards = pair_shard.start_shards(self.info, self.run_uri, self.pair_shard_count, self.batch_size,
                                                  head_pin())
            pair_shard.sync(self.shards, self.live.trial_ids())
            self._shards_in_doubt = False

    def _on_shards(self, call):
        """Return ``call(shards)``, syncing the shards first when an earlier call failed.

        A shard that is gone for good is started again (it rebuilds from the log) and the call is
        retried once; any failure leaves the shards in doubt, so they are synced before the next use.
        """
        import ray

        try:
            if self._shards_in_doubt:
                self._sync_shards()
            try:
                return call(self.shards)
            except ray.exceptions.RayActorError:
                self._sync_shards()
                return call(self.shards)
        except BaseException:
            self._shards_in_doubt = True
            raise

    def stop_shards(self) -> int:
        """Kill the pair shards for good (call before killing this actor: they are detached); return how many."""
        stopped = pair_shard.stop(self.shards, self.info)
        self.shards, self._shards_in_doubt = [], bool(self.pair_shard_count)
        return stopped

    def _progress(self, done: int, target: int) -> dict:
        times = list(self.finish_times)
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) >= 2 and times[-1] > times[0] else 0.0
        remaining = max(0, target - done)
        eta = remaining / rate if rate > 0 else None
        return {
            "trials_per_hour": rate * 3600.0,
            "eta_seconds": eta,
            "eta": _format_seconds(eta) if eta is not None else ("done" if remaining == 0 else "unknown"),
        }


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def effective_pair_shards(with_pairs: bool, pair_shards: int, n_train: int) -> int:
    """Return how many shard actors hold the pair matrix: 0 (this actor holds it, or none is kept) or 2..n_train."""
    shards = min(int(pair_shards), int(n_train))
    return shards if with_pairs and shards > 1 else 0


def get_or_create_accumulator(info: RunInfo, run_uri: str, *, with_pairs: bool, batch_size: int, pair_shards: int = 1):
    """Return the run's accumulator, starting it (and rebuilding from the log) when none is alive."""
    import ray

    shards = effective_pair_shards(with_pairs, pair_shards, info.n_train)
    if shards:
        pair_shard.check_placement(info, run_uri, shards)
    actor_cls = ray.remote(Accumulator)
    handle = actor_cls.options(
        name=info.name,
        **DURABLE_ACTOR_OPTIONS,
        resources=head_pin(),
        max_concurrency=MAX_CONCURRENCY,
    ).remote(run_uri, with_pairs, batch_size, pair_shards)
    alive_id = ray.get(handle.run_id.remote())
    if alive_id != info.run_id:
        raise RaymemError(
            f"an accumulator named {info.name!r} for another run ({alive_id}) is alive on this cluster; "
            "pick another --name or stop that run's accumulator."
        )
    described = ray.get(handle.describe.remote())
    live = described["pair_shards"]
    if live != shards:
        raise RaymemError(
            f"the live accumulator of run {info.name} splits its pair matrix over {max(live, 1)} actor(s) but this "
            f"invocation asks for {max(shards, 1)}; run `raymem stop {info.name}` first (its counts are rebuilt from "
            "the log) or keep the old --pair-shards."
        )
    live_scope = described["influence_scope"]
    if live_scope != run_influence_scope(info):
        raise RaymemError(
            f"the live accumulator of run {info.name} counts influence in {live_scope} scope but this invocation "
            f"asks for {run_influence_scope(info)}; run `raymem stop {info.name}` first (its counts are rebuilt from "
            "the log in the new scope) or keep the old --influence-scope."
        )
    return handle


def find_accumulator(info: RunInfo, address: str, *, connect_timeout_s: float = 2.0):
    """Return the live accumulator of ``info`` on the cluster at ``address``, or None."""
    import ray

    if not ray.is_initialized():
        if not reachable(address, timeout_s=connect_timeout_s):
            return None
        connect(address)
    try:
        handle = ray.get_actor(info.name, namespace=NAMESPACE)
    except ValueError:
        return None
    if ray.get(handle.run_id.remote()) != info.run_id:
        return None
    return handle
