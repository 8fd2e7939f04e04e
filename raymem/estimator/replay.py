"""Rebuilding a run's counts from its trial log (the source of truth): the one replay.

The offline readers, the accumulator actor (on start and after a restart) and the pair shards
all call :func:`counts_from_log`, so every path counts exactly the same trials.
"""

from __future__ import annotations

import numpy as np

from raymem.errors import RaymemError
from raymem.estimator.counts import Counts
from raymem.estimator.run_files import RunInfo, read_labels, read_run_info
from raymem.estimator.storage import RunStore
from raymem.estimator.trial_log import iter_trials
from raymem.estimator.view import RunView


def counts_from_log(store: RunStore, info: RunInfo, *, with_pairs: bool = True, rows=None, batch_size: int = 256) -> Counts:
    """Recompute a run's counts from its trial log.

    Args:
        store: the run directory.
        info: the run's ``run.json`` (trials of another run are refused).
        with_pairs: keep the n_train x n_test pair matrix (influence) too.
        rows: ``(start, stop)`` to count only that slice of training rows (a pair shard), or None for all.
        batch_size: trials buffered per pair-matrix update.

    Returns:
        The counts of every trial in the log, flushed.
    """
    counts = Counts.empty(info.n_train, info.n_test, rows=rows, with_pairs=with_pairs, batch_size=batch_size)
    for record in iter_trials(store):
        if record.run_id != info.run_id:
            raise RaymemError(
                f"{store.uri}/trials holds trial {record.trial_id} of another run ({record.run_id}); remove that file."
            )
        counts.add(record.trial_id, record.mask, record.train_correct, record.test_correct)
    counts.flush()
    return counts


def flipped_labels(store: RunStore) -> np.ndarray | None:
    """Return the bool mask of training examples whose label was flipped (canaries), or None when there are none."""
    labels = read_labels(store)
    if labels is None:
        return None
    train, _test, original = labels
    flipped = train != original
    return flipped if flipped.any() else None


def offline_view(store: RunStore, *, with_pairs: bool = True) -> RunView:
    """Return a :class:`RunView` of the run in ``store`` rebuilt from its trial log (no Ray needed)."""
    info = read_run_info(store)
    return RunView(info, counts_from_log(store, info, with_pairs=with_pairs), flipped_labels(store), source="log")
