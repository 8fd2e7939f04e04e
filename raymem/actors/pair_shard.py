"""Pair-matrix shards: the H_in counts of a slice of training rows, in an actor of their own.

ImageNet's pair matrix (1.28M x 50,000 float32) is 256 GB, more than one process should hold. With
``pair_shards = S > 1`` the accumulator keeps every per-example count itself (memorization, status and
canaries stay local and fast) and S ``PairShard`` actors each keep ``Counts`` over an equal slice of
training rows, pair matrix included. Pair reads gather the shards' answers: the pairs are the shards'
tables one after the other (shards hold increasing row slices, so the order is the unsharded one), the
top influencers are the best of the shards' own top lists. Both are exactly the unsharded answers,
because every row's numbers depend only on that row's counts and the test counts, which every shard has.

A forward sends the trial's full-width arrays once to Ray's object store (``ray.put``) and every shard
reads them from there (one copy per node, 2.6 MB per ImageNet trial); ``Counts.add`` slices its rows.

Why no trial is lost or counted twice, whatever fails when:
- the accumulator writes a trial to the log BEFORE it counts it or forwards it, and a shard counts a
  trial id at most once (``Counts.add`` is idempotent), so a forward that arrives again is harmless;
- a shard that restarts rebuilds its slice from the log, which holds every trial written so far; a
  forward that was in flight is retried by Ray after the restart and finds the trial already counted;
- an accumulator that restarts rebuilds from the log and then has every shard ``sync`` with it: a
  shard counts the logged trials it missed (a crash between the log write and a forward) from the log,
  and a shard that holds a trial the log no longer has (its corrupt file was deleted) rebuilds;
- a shard killed for good is started again by the accumulator's next call (it rebuilds from the log)
  and the forward or read is retried once; any other failed forward fails the ``absorb`` and leaves the
  shards in doubt: the accumulator syncs them before its next absorb or read (the driver's retry of the
  absorb, a duplicate, does it at once), so the trial, already in the log and in the accumulator's
  counts, reaches every shard before anyone reads pairs;
- a shard under this run's shard name that belongs to another run (an old run of the same name whose
  shards outlived it) is replaced, never used.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from raymem.cluster.connection import DURABLE_ACTOR_OPTIONS, HEAD_RESOURCE, NAMESPACE
from raymem.errors import RaymemError
from raymem.estimator import report
from raymem.estimator.log_replay import counts_from_log
from raymem.store.run_info import RunInfo, read_run_info
from raymem.store.storage import RunStore
from raymem.store.trial_log import iter_trials

#: Ray reserves this much memory per shard for each byte of its pair matrix (buffers, table building).
MEMORY_HEADROOM = 1.3
#: Bytes of one pair count (``Counts.h_in`` is float32).
PAIR_COUNT_BYTES = 4
#: Seconds to wait for Ray to release the name of a shard that was killed.
NAME_RELEASE_TIMEOUT_S = 30.0


class PairShard:
    """Counts (pair matrix included) of training rows ``rows`` of one run, rebuilt from its trial log."""

    def __init__(self, run_uri: str, rows: tuple[int, int], batch_size: int = 64):
        self.store = RunStore.open(run_uri)
        self.info = read_run_info(self.store)
        self.rows = (int(rows[0]), int(rows[1]))
        self.batch_size = batch_size
        self.rebuild()

    def rebuild(self) -> int:
        """Recount this shard's rows from the whole trial log; return the trials counted."""
        self.counts = counts_from_log(self.store, self.info, with_pairs=True, rows=self.rows,
                                      batch_size=self.batch_size)
        return self.counts.trials

    # ---- identity ----------------------------------------------------------------------
    def describe(self) -> dict:
        return {"run_id": self.info.run_id, "rows": list(self.rows), "trials": self.counts.trials,
                "pairs_pending": self.counts.pending}

    def trials(self) -> int:
        return self.counts.trials

    def done_trial_ids(self) -> list[int]:
        return sorted(self.counts.trial_ids)

    # ---- updates -----------------------------------------------------------------------
    def add(self, trial_id: int, mask, train_correct, test_correct) -> bool:
        """Count one trial given its full-width arrays; False when this trial id was already counted."""
        return self.counts.add(trial_id, mask, train_correct, test_correct)

    def sync(self, trial_ids: list[int]) -> int:
        """Count every trial of ``trial_ids`` exactly once, reading the ones this shard lacks from the log.

        A shard that holds a trial outside ``trial_ids`` (its file left the log) first rebuilds from the
        log. Returns how many trials were added.
        """
        wanted = {int(k) for k in trial_ids}
        if not self.counts.trial_ids <= wanted:
            self.rebuild()
        before = self.counts.trials
        missing = sorted(wanted - self.counts.trial_ids)
        for record in iter_trials(self.store, missing, self.info):
            self.counts.add(record.trial_id, record.mask, record.train_correct, record.test_correct)
        return self.counts.trials - before

    def flush(self) -> int:
        self.counts.flush()
        return self.counts.trials

    # ---- reads -------------------------------------------------------------------------
    def pairs_table(self, **kwargs) -> pa.Table:
        """High-influence pairs among this shard's rows (``report.pairs_table``'s keywords)."""
        return report.pairs_table(self.counts, **kwargs)

    def influence_table(self, test_index: int, top: int = 10, **kwargs) -> pa.Table:
        """The ``top`` influencers of ``test_index`` among this shard's rows (``report.influence_table``'s keywords)."""
        return report.influence_table(self.counts, test_index, top=top, **kwargs)


# ---- the accumulator's side ------------------------------------------------------------------

def shard_rows(n_train: int, shards: int) -> list[tuple[int, int]]:
    """Split rows 0..n_train into ``shards`` contiguous slices whose sizes differ by at most one."""
    bounds = [round(k * n_train / shards) for k in range(shards + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def shard_name(run_name: str, index: int, shards: int) -> str:
    """The Ray actor name of shard ``index`` (0-based) of ``shards``: ``RUN.pairs-2-of-16``."""
    return f"{run_name}.pairs-{index + 1}-of-{shards}"


def shard_memory_bytes(rows: int, n_test: int) -> int:
    """Memory a shard of ``rows`` training rows asks Ray for: its pair matrix with headroom."""
    return max(1, int(rows * n_test * PAIR_COUNT_BYTES * MEMORY_HEADROOM))


def start_shards(info: RunInfo, run_uri: str, shards: int, batch_size: int, head_resources: dict) -> list:
    """Get or start the run's ``shards`` shard actors and wait until each has rebuilt; return their handles.

    Each is named, detached and restarted by Ray after a crash, and asks Ray for the memory of its pair
    matrix, so Ray places it on a node that can hold it. A run kept on a local disk pins its shards with
    ``head_resources`` to the head node, the only node that can read the log; one on ``s3://``/``gs://``
    lets them go to any node. A live shard of another run under the same name is replaced.
    """
    import ray


    local_log = _is_local(run_uri)
    slices = shard_rows(info.n_train, shards)

    def start(k: int):
        start_row, stop_row = slices[k]
        return ray.remote(PairShard).options(
            name=shard_name(info.name, k, shards),
            **DURABLE_ACTOR_OPTIONS,
            memory=shard_memory_bytes(stop_row - start_row, info.n_test),
            resources=head_resources if local_log else None,
        ).remote(run_uri, (start_row, stop_row), batch_size)

    handles = [start(k) for k in range(shards)]
    for k, described in enumerate(_describe_all(handles)):
        if described is None or described["run_id"] != info.run_id or described["rows"] != list(slices[k]):
            _kill_and_wait(handles[k], shard_name(info.name, k, shards))
            handles[k] = start(k)
            ray.get(handles[k].describe.remote())  # a shard that cannot start (e.g. a corrupt log) raises here
    return handles


def _is_local(run_uri: str) -> bool:
    """True when the run directory is on a local disk (only the node that has it can read the log)."""
    return isinstance(RunStore.open(run_uri).filesystem, pafs.LocalFileSystem)


def check_placement(info: RunInfo, run_uri: str, shards: int) -> None:
    """Raise RaymemError when a run on the head's disk has shards too big for the head (they would wait forever)."""
    import ray


    if not _is_local(run_uri):
        return
    needed = sum(shard_memory_bytes(b - a, info.n_test) for a, b in shard_rows(info.n_train, shards))
    head = [n for n in ray.nodes() if n.get("Alive") and HEAD_RESOURCE in n.get("Resources", {})]
    have = head[0]["Resources"].get("memory", 0.0) if head else None
    if have is not None and needed > have:
        raise RaymemError(
            f"the pair shards need {needed / 1e9:.1f} GB of memory but the head node, the only node that can read "
            f"the local run directory {RunStore.open(run_uri).uri}, has {have / 1e9:.1f} GB for Ray; put the run "
            "on shared storage (--storage s3://... or gs://...) so the shards can go to bigger nodes."
        )


def _describe_all(handles: list) -> list[dict | None]:
    """Each shard's ``describe()``, or None for a shard that died (e.g. one of a run whose log is gone)."""
    import ray

    described = []
    for ref in [h.describe.remote() for h in handles]:
        try:
            described.append(ray.get(ref))
        except ray.exceptions.RayActorError:
            described.append(None)
    return described


def _kill_and_wait(handle, name: str) -> None:
    """Kill a shard for good and wait until Ray releases its name."""
    import ray


    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + NAME_RELEASE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.1)
    raise RaymemError(f"Ray did not release the actor name {name!r} within {NAME_RELEASE_TIMEOUT_S:g}s; "
                      f"kill it with `ray.kill(ray.get_actor({name!r}, namespace={NAMESPACE!r}))` and retry.")


def sync(handles: list, trial_ids) -> int:
    """Make every shard count exactly ``trial_ids`` (the ones it lacks come from the log); return trials added."""
    ids = sorted(int(k) for k in trial_ids)
    return sum(_get([h.sync.remote(ids) for h in handles]))


def forward(handles: list, trial_id: int, mask, train_correct, test_correct) -> None:
    """Count one trial in every shard; returns when all have acknowledged. Arrays travel once, via the object store."""
    import ray

    refs = [ray.put(np.asarray(a, dtype=bool)) for a in (mask, train_correct, test_correct)]
    _get([h.add.remote(int(trial_id), *refs) for h in handles])


def flush(handles: list) -> None:
    _get([h.flush.remote() for h in handles])


def stop(handles: list, info: RunInfo) -> int:
    """Kill the run's shards for good and wait until their names are free; return how many (see ``start_shards``)."""
    for k, handle in enumerate(handles):
        _kill_and_wait(handle, shard_name(info.name, k, len(handles)))
    return len(handles)


def gather_pairs(handles: list, **kwargs) -> pa.Table:
    """The shards' high-influence pairs, in row order (shards hold increasing row slices)."""
    return pa.concat_tables(_get([h.pairs_table.remote(**kwargs) for h in handles]))


def gather_influence(handles: list, *, test_index: int, top: int = 10, **kwargs) -> pa.Table:
    """The top influencers over all shards: each shard's top ``top``, merged and re-ranked."""
    tables = _get([h.influence_table.remote(test_index=test_index, top=top, **kwargs) for h in handles])
    return merge_top_influencers(tables, top)


def merge_top_influencers(tables: list[pa.Table], top: int) -> pa.Table:
    """The ``top`` best rows of influence tables over disjoint rows, ranked 1..k.

    Order: infl descending, ties by train_index ascending (as ``selection.top_influencers``).
    """
    merged = pa.concat_tables(tables)
    infl = merged.column("infl").to_numpy()
    train_index = merged.column("train_index").to_numpy()
    best = merged.take(np.lexsort((train_index, -infl))[:top])
    ranks = pa.array(np.arange(1, best.num_rows + 1, dtype=np.int64))
    return best.set_column(best.column_names.index("rank"), "rank", ranks)


def _get(refs: list):
    """ray.get of ``refs``; a shard's RaymemError (e.g. a test index out of range) is raised as itself."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, RaymemError):
            raise exc.cause from None
        raise
