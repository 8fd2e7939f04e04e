"""Pair-matrix shards: the H_in counts of a slice of training rows, in an actor of their own.

ImageNet's pair matrix (1.28M x 50,000 float32) is 256 GB, more than one process should hold. With
``pair_shards = S > 1`` the accumulator keeps every per-example count itself (memorization, status and
canaries stay local and fast) and S ``PairShard`` actors each keep ``Counts`` over an equal slice of
training rows, pair matrix included. Pair reads gather the shards' answers.

Why no trial is lost or counted twice, whatever fails when:
- the accumulator writes a trial to the log BEFORE it forwards it to the shards, and a shard counts a
  trial id at most once (``Counts.add`` is idempotent), so a forward that arrives again is harmless;
- a shard that restarts rebuilds its slice from the log, which holds every trial written so far;
  later trials reach it by forward;
- an accumulator that restarts rebuilds from the log and then hands each shard the logged trials it has
  not counted (``reconcile``), so a crash between the log write and a forward loses nothing.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from raymem.estimator import report
from raymem.estimator.run_files import RunInfo, read_run_info
from raymem.estimator.storage import RunStore
from raymem.estimator.trial_log import iter_trials

#: Ray reserves this much memory per shard beyond its pair matrix (buffers, reads).
MEMORY_HEADROOM = 1.3


class PairShard:
    """Counts (pair matrix included) of training rows ``rows`` of one run."""

    def __init__(self, run_uri: str, rows: tuple[int, int], batch_size: int = 64):
        from raymem.api import counts_from_log

        store = RunStore.open(run_uri)
        self.counts = counts_from_log(store, read_run_info(store), with_pairs=True, rows=tuple(rows), batch_size=batch_size)

    def add(self, trial_id: int, mask, train_correct, test_correct) -> bool:
        return self.counts.add(trial_id, mask, train_correct, test_correct)

    def done_trial_ids(self) -> list[int]:
        return sorted(self.counts.trial_ids)

    def pairs_table(self, **kwargs) -> pa.Table:
        return report.pairs_table(self.counts, **kwargs)

    def influence_table(self, **kwargs) -> pa.Table:
        return report.influence_table(self.counts, **kwargs)


def shard_rows(n_train: int, shards: int) -> list[tuple[int, int]]:
    """Split rows 0..n_train into ``shards`` contiguous slices whose sizes differ by at most one."""
    bounds = [round(k * n_train / shards) for k in range(shards + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def start_shards(info: RunInfo, run_uri: str, shards: int, batch_size: int, resources: dict) -> list:
    """Get or start the run's S shard actors (named, detached, restarted by Ray after a crash)."""
    import ray

    handles = []
    for k, (start, stop) in enumerate(shard_rows(info.n_train, shards)):
        matrix_bytes = (stop - start) * info.n_test * 4
        handles.append(ray.remote(PairShard).options(
            name=f"{info.name}.pairs-{k + 1}-of-{shards}",
            namespace="raymem",
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=-1,
            num_cpus=0,
            memory=max(1, int(matrix_bytes * MEMORY_HEADROOM)),
            resources=resources,
        ).remote(run_uri, (start, stop), batch_size))
    return handles


def reconcile(handles: list, store: RunStore, counted: set[int]) -> int:
    """Hand every shard the logged trials it has not counted; return how many forwards that took."""
    import ray

    sent = 0
    for handle, done in zip(handles, ray.get([h.done_trial_ids.remote() for h in handles])):
        missing = sorted(counted - set(done))
        for record in iter_trials(store, trial_ids=missing):
            ray.get(handle.add.remote(record.trial_id, record.mask, record.train_correct, record.test_correct))
            sent += 1
    return sent


def forward(handles: list, trial_id: int, mask, train_correct, test_correct) -> None:
    """Count one trial in every shard (waits for all of them)."""
    import ray

    ray.get([h.add.remote(trial_id, mask, train_correct, test_correct) for h in handles])


def gather_pairs(handles: list, **kwargs) -> pa.Table:
    """The shards' high-influence pairs, in row order (shards hold increasing row slices)."""
    import ray

    return pa.concat_tables(ray.get([h.pairs_table.remote(**kwargs) for h in handles]))


def gather_influence(handles: list, *, top: int, **kwargs) -> pa.Table:
    """The top influencers over all shards: each shard's top ``top``, merged and re-ranked."""
    import ray

    merged = pa.concat_tables(ray.get([h.influence_table.remote(top=top, **kwargs) for h in handles]))
    order = pc.sort_indices(merged, [("infl", "descending"), ("train_index", "ascending")])
    best = merged.take(order[:top])
    return best.set_column(best.column_names.index("rank"), "rank", pa.array(range(1, best.num_rows + 1), pa.int64()))
