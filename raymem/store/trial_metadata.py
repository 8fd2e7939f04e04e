"""One row per logged trial, from the trial log's metadata: what ``raymem trials`` shows.

Users need each model's accuracy (the supplement quotes it); operators need retries, nodes and
resumed checkpoints. Only the ``trial_id`` and ``metadata`` columns of each trial file are read.
Keys a trial's metadata lacks are null: trials ingested from elsewhere carry none of them, and some
are recorded only where they apply (``checkpoint_warnings``, ``resumed_from_epoch``).
"""

from __future__ import annotations

import json

import pyarrow as pa

from raymem.store.storage import RunStore
from raymem.store.trial_log import trial_ids, trial_path, warn_damaged

#: (column, metadata key, Arrow type), in the table's order.
COLUMNS = (
    ("trial_id", None, pa.int64()),
    ("attempt", "attempt", pa.int64()),
    ("node_id", "node_id", pa.string()),
    ("host", "host", pa.string()),
    ("started", "started", pa.timestamp("ms", tz="UTC")),
    ("finished", "finished", pa.timestamp("ms", tz="UTC")),
    ("train_seconds", "train_seconds", pa.float64()),
    ("predict_seconds", "predict_seconds", pa.float64()),
    ("resumed_from_epoch", "resumed_from_epoch", pa.int64()),
    ("epochs", "epochs", pa.int64()),
    # accuracy on the trial's own training subset (the paper's "train accuracy") and on the test set
    ("train_accuracy", "subset_accuracy", pa.float64()),
    ("test_accuracy", "test_accuracy", pa.float64()),
    ("gpu_ids", "gpu_ids", pa.string()),
    ("checkpoint_warnings", "checkpoint_warnings", pa.int64()),
)


def _value(key: str, metadata: dict):
    value = metadata.get(key)
    if value is None:
        return None
    if key in ("started", "finished"):
        return int(round(float(value) * 1000))
    if key == "gpu_ids":
        return ",".join(map(str, value))
    if key == "checkpoint_warnings":
        return len(value)
    return value


def trial_metadata(store: RunStore, trial_id: int) -> dict | None:
    """The metadata of trial ``trial_id`` (only that column of its file is read); None, with a RaymemWarning naming
    the file, when the file is damaged (readers leave such a trial out, see ``trial_log.iter_trials``)."""
    relpath = trial_path(trial_id)
    try:
        table = store.read_parquet(relpath, columns=["metadata"])
        return json.loads(table.column("metadata")[0].as_py())
    except (OSError, ValueError, KeyError, IndexError, pa.ArrowException) as exc:
        warn_damaged(store, relpath, trial_id, type(exc).__name__)
        return None


def trial_table(store: RunStore) -> pa.Table:
    """Return one row per trial in the log (sorted by trial id) with the columns of :data:`COLUMNS`."""
    rows = {name: [] for name, _, _ in COLUMNS}
    for k in trial_ids(store):
        metadata = trial_metadata(store, k)
        if metadata is None:
            continue
        for name, key, _ in COLUMNS:
            rows[name].append(k if key is None else _value(key, metadata))
    return pa.table({name: pa.array(rows[name], type=kind) for name, _, kind in COLUMNS})
