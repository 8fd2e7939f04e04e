"""Rebuilding a run's counts from its trial log (the source of truth): the one replay.

The offline readers, the accumulator actor (on start and after a restart) and the pair shards
all call :func:`counts_from_log`, so every path counts exactly the same trials.
"""

from __future__ import annotations

import numpy as np

from raymem.errors import RaymemError
from raymem.estimator.counts import Counts
from raymem.store.run_info import RunInfo, read_labels, read_run_info
from raymem.estimator.influence_scope import check_scope, scope_of_config
from raymem.store.storage import RunStore
from raymem.store.trial_log import iter_trials
from raymem.estimator.run_view import RunView


def run_influence_scope(info: RunInfo) -> str:
    """The influence scope of a run, from its stored config (:func:`scope_of_config`)."""
    return scope_of_config(info.config, f"run.json of run {info.name}")


def empty_counts(store: RunStore, info: RunInfo, *, with_pairs: bool = True, rows=None, batch_size: int = 64,
                 influence_scope: str | None = None) -> Counts:
    """Zero counts shaped for the run in ``store``, in its influence scope (``influence_scope`` overrides it).

    Class scope reads the labels from ``labels.parquet`` (training labels as trained, canaries flipped);
    a class-scope run without that file is a RaymemError. This is what the accumulator and the pair
    shards start from (``counts_from_log`` then counts the log into it).
    """
    scope = run_influence_scope(info) if influence_scope is None else check_scope(influence_scope)
    train_labels = test_labels = None
    if scope == "class":
        labels = read_labels(store)
        if labels is None:
            raise RaymemError(
                f"run {info.name} counts influence per class (influence scope 'class') but {store.uri} has no "
                "labels.parquet; write the run's labels there or read it with influence scope 'full'."
            )
        train_labels, test_labels = labels[0], labels[1]
    return Counts.empty(info.n_train, info.n_test, rows=rows, with_pairs=with_pairs, batch_size=batch_size,
                        influence_scope=scope, train_labels=train_labels, test_labels=test_labels)


def counts_from_log(store: RunStore, info: RunInfo, *, with_pairs: bool = True, rows=None, batch_size: int = 256,
                    influence_scope: str | None = None) -> Counts:
    """Recompute a run's counts from its trial log.

    Args:
        store: the run directory.
        info: the run's ``run.json`` (trials of another run are refused).
        with_pairs: keep the pair counts (influence) too.
        rows: ``(start, stop)`` to count only that slice of training rows (a pair shard), or None for all.
        batch_size: trials buffered per pair-matrix update.
        influence_scope: "full" or "class"; None (default): the run's own (``run_influence_scope``).

    Returns:
        The counts of every trial in the log, flushed.
    """
    counts = empty_counts(store, info, with_pairs=with_pairs, rows=rows, batch_size=batch_size,
                          influence_scope=influence_scope)
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


def offline_view(store: RunStore, *, with_pairs: bool = True, influence_scope: str | None = None) -> RunView:
    """Return a :class:`RunView` of the run in ``store`` rebuilt from its trial log (no Ray needed).

    influence_scope: None (default) reads the run in its own scope; "class" reads a full-scope run per class
    (less memory, same numbers on same-label pairs); "full" a class-scope run in full (all pairs).
    """
    info = read_run_info(store)
    counts = counts_from_log(store, info, with_pairs=with_pairs, influence_scope=influence_scope)
    return RunView(info, counts, flipped_labels(store), source="log")
