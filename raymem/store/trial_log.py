"""The trial log: one single-row Parquet file per finished trial, the run's source of truth.

``trials/trial-00000042.parquet`` holds trial 42 with the columns of :data:`TRIAL_SCHEMA`: ids,
seed and sizes, the packed bits of the mask and of the correctness vectors, the predicted labels
as int32 little-endian bytes (null when unknown), the metadata as JSON and the record's checksum.
A file is written atomically and never changed; writing the same record again is a no-op.
Reading checks every column and the checksum: a file that fails is never used, and the error
says to delete it so that the trial is re-run.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymem.errors import RaymemError, RaymemWarning
from raymem.store.trial_record import (
    PRED_DTYPE, TrialRecord, metadata_json, pack_bits, record_checksum, unpack_bits, validate_record,
)
from raymem.store.run_info import RunInfo, read_run_info
from raymem.store.storage import RunStore

TRIALS_DIR = "trials"
#: Where damaged trial files are set aside, inside the run directory (outside ``trials/``, so no read sees them).
QUARANTINE_DIR = "quarantine"
TRIAL_FILE_PATTERN = re.compile(r"trial-(\d{8,})\.parquet")
TRIAL_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("trial_id", pa.int64(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("n_train", pa.int64(), nullable=False),
    pa.field("n_test", pa.int64(), nullable=False),
    pa.field("mask", pa.binary(), nullable=False),
    pa.field("train_correct", pa.binary(), nullable=False),
    pa.field("test_correct", pa.binary(), nullable=False),
    pa.field("train_pred", pa.binary()),
    pa.field("test_pred", pa.binary()),
    pa.field("metadata", pa.string(), nullable=False),
    pa.field("checksum", pa.string(), nullable=False),
])


def trial_path(trial_id: int) -> str:
    """Return the store-relative path of trial ``trial_id``'s file, e.g. ``trials/trial-00000042.parquet``."""
    if int(trial_id) < 0:
        raise ValueError(f"trial ids are non-negative, got {trial_id}")
    return f"{TRIALS_DIR}/trial-{int(trial_id):08d}.parquet"


def subset_size_to_check(info: RunInfo) -> int | None:
    """Return the subset size every trial of the run must have, or None when sizes may vary.

    Runs trained by raymem draw subsets of exactly ``info.subset_size``; ingested runs may come
    from other protocols (e.g. Bernoulli masks), so their subset sizes are not enforced. The arms of a
    marginal run train on sets of different sizes (its accumulator checks each mask against its arm's set).
    """
    return info.subset_size if info.source == "runner" and info.kind == "subsets" else None


def _validate_for_run(record: TrialRecord, info: RunInfo) -> None:
    """Raise RaymemError when ``record`` does not fit run ``info``."""
    validate_record(
        record, run_id=info.run_id, n_train=info.n_train, n_test=info.n_test,
        subset_size=subset_size_to_check(info),
    )


def _encode(record: TrialRecord, checksum: str) -> bytes:
    """Return the Parquet bytes of a (validated) record."""
    def pred_bytes(pred):
        return None if pred is None else np.asarray(pred, dtype=PRED_DTYPE).tobytes()

    row = {
        "run_id": record.run_id, "trial_id": int(record.trial_id), "seed": int(record.seed),
        "n_train": len(record.mask), "n_test": len(record.test_correct),
        "mask": pack_bits(record.mask), "train_correct": pack_bits(record.train_correct),
        "test_correct": pack_bits(record.test_correct),
        "train_pred": pred_bytes(record.train_pred), "test_pred": pred_bytes(record.test_pred),
        "metadata": metadata_json(record.metadata), "checksum": checksum,
    }
    table = pa.Table.from_pylist([row], schema=TRIAL_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(
        table, buffer, compression="zstd", use_dictionary=False, write_statistics=False,
        write_page_checksum=True,
    )
    return buffer.getvalue()


def _intact_record(store: RunStore, relpath: str, trial_id: int, info: RunInfo) -> TrialRecord | None:
    """The record already logged for ``trial_id``, or None: none yet, or a damaged file, which reads skip (so its
    trial was trained again) and which is set aside here for the new record to take its place."""
    if not store.exists(relpath):
        return None
    try:
        return read_trial(store, trial_id, info)
    except DamagedTrialFile:
        set_aside(store, relpath)
        return None


def write_trial(store: RunStore, record: TrialRecord, info: RunInfo | None = None) -> bool:
    """Validate ``record`` against the run and write it to the log atomically.

    Returns True when the file was written, False when the log already holds this exact record
    (same checksum): writing is idempotent. A different record under the same trial id is a
    RaymemError. ``info`` is the run's RunInfo (read from ``run.json`` when not given).
    """
    info = read_run_info(store) if info is None else info
    _validate_for_run(record, info)
    checksum = record_checksum(record)
    relpath = trial_path(record.trial_id)
    existing = _intact_record(store, relpath, record.trial_id, info)
    if existing is not None:
        if record_checksum(existing) == checksum:
            return False
        raise RaymemError(
            f"{store.location(relpath)} already holds a different result for trial {record.trial_id}; "
            "a trial id is recorded once, so delete that file first if the trial really must be replaced."
        )
    store.write_bytes_atomic(relpath, _encode(record, checksum))
    return True


class DamagedTrialFile(RaymemError):
    """A trial file that cannot be used: unreadable, failing its checksum, or of another run.

    Attributes:
        relpath: the file's store-relative path; ``trial_id``: its trial; ``problem``: what is wrong with it.
    """

    def __init__(self, store: RunStore, relpath: str, trial_id: int, problem: str):
        super().__init__(f"{store.location(relpath)} is corrupt or does not belong to this run ({problem}); set it "
                         f"aside with `raymem verify {store.uri} --quarantine` (or delete it) so trial {trial_id} is "
                         "re-run.")
        self.relpath, self.trial_id, self.problem = relpath, int(trial_id), problem


def _decode(table: pa.Table, trial_id: int, info: RunInfo) -> TrialRecord:
    """Return the record in a trial file's table; ValueError describing the first problem found."""
    if not table.schema.equals(TRIAL_SCHEMA, check_metadata=False):
        raise ValueError(f"columns {table.schema.names} do not match the trial log format")
    if table.num_rows != 1:
        raise ValueError(f"{table.num_rows} rows instead of 1")
    row = table.to_pylist()[0]
    missing = [name for name in TRIAL_SCHEMA.names if row[name] is None and not TRIAL_SCHEMA.field(name).nullable]
    if missing:
        raise ValueError(f"null values in {missing}")
    if row["trial_id"] != trial_id:
        raise ValueError(f"it holds trial {row['trial_id']}")
    if row["run_id"] != info.run_id:
        raise ValueError(f"it holds run {row['run_id']!r}, this run is {info.run_id!r}")
    if (row["n_train"], row["n_test"]) != (info.n_train, info.n_test):
        raise ValueError(
            f"n_train={row['n_train']}, n_test={row['n_test']} but the run has "
            f"n_train={info.n_train}, n_test={info.n_test}"
        )
    n_train, n_test = info.n_train, info.n_test

    def preds(name: str, n: int):
        if row[name] is None:
            return None
        if len(row[name]) != n * PRED_DTYPE.itemsize:
            raise ValueError(f"{name} has {len(row[name])} bytes, expected {n * PRED_DTYPE.itemsize}")
        return np.frombuffer(row[name], dtype=PRED_DTYPE).copy()

    try:
        metadata = json.loads(row["metadata"])
    except ValueError as exc:
        raise ValueError(f"metadata is not JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ValueError("metadata is not a JSON object")
    record = TrialRecord(
        run_id=row["run_id"], trial_id=row["trial_id"], seed=row["seed"],
        mask=_unpack_column(row, "mask", n_train),
        train_correct=_unpack_column(row, "train_correct", n_train),
        test_correct=_unpack_column(row, "test_correct", n_test),
        train_pred=preds("train_pred", n_train), test_pred=preds("test_pred", n_test),
        metadata=metadata,
    )
    if record_checksum(record) != row["checksum"]:
        raise ValueError("checksum mismatch")
    expected_size = subset_size_to_check(info)
    if expected_size is not None and int(record.mask.sum()) != expected_size:
        raise ValueError(f"the mask selects {int(record.mask.sum())} examples, "
                         f"the run's subset size is {expected_size}")
    return record


def _unpack_column(row: dict, name: str, n: int) -> np.ndarray:
    """Return the ``n`` bits packed in ``row[name]``; ValueError naming the column when its length is wrong."""
    try:
        return unpack_bits(row[name], n)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def read_trial(store: RunStore, trial_id: int, info: RunInfo | None = None) -> TrialRecord:
    """Return trial ``trial_id``'s record, verified; RaymemError naming the file when it cannot be used.

    ``info`` is the run's RunInfo (read from ``run.json`` when not given).
    """
    info = read_run_info(store) if info is None else info
    relpath = trial_path(trial_id)
    try:
        table = store.read_parquet(relpath, verify_pages=True)
    except (pa.ArrowException, OSError, ValueError, MemoryError, OverflowError) as exc:
        raise DamagedTrialFile(store, relpath, trial_id, f"unreadable Parquet: {exc}") from exc
    try:
        return _decode(table, int(trial_id), info)
    except ValueError as exc:
        raise DamagedTrialFile(store, relpath, trial_id, str(exc)) from exc


def trial_ids(store: RunStore) -> list[int]:
    """Return the sorted ids of the trials in the log (from file names; unfinished temp files ignored)."""
    ids = []
    for name in store.list(TRIALS_DIR, ".parquet"):
        match = TRIAL_FILE_PATTERN.fullmatch(name)
        if match and trial_path(int(match.group(1))) == f"{TRIALS_DIR}/{name}":
            ids.append(int(match.group(1)))
    return sorted(ids)


_list_trial_ids = trial_ids  # iter_trials' parameter shadows the name


def set_aside(store: RunStore, relpath: str) -> str:
    """Move a damaged trial file to ``RUN/quarantine/`` and return where it went; a name already there (the same
    trial damaged twice) gets a numbered suffix, so nothing is overwritten."""
    name = relpath.rsplit("/", 1)[-1]
    target, n = f"{QUARANTINE_DIR}/{name}", 1
    while store.exists(target):
        target, n = f"{QUARANTINE_DIR}/{name}.{n}", n + 1
    store.move(relpath, target)
    return target


def warn_damaged(store: RunStore, relpath: str, trial_id: int, problem: str) -> None:
    """Say, as a RaymemWarning, that a reader leaves the damaged trial file ``relpath`` out, and what mends it."""
    warnings.warn(f"{store.location(relpath)} is damaged ({problem}) and is left out; `raymem run` trains trial "
                  f"{trial_id} again, and `raymem verify {store.uri}` lists every damaged file.", RaymemWarning,
                  stacklevel=3)


def iter_trials(
    store: RunStore, trial_ids: Iterable[int] | None = None, info: RunInfo | None = None
) -> Iterator[TrialRecord]:
    """Yield the verified records of ``trial_ids`` (default: every trial in the log), in that order.

    A damaged file is skipped with a :class:`RaymemWarning` naming it: its trial is then simply not in the log,
    which leaves every estimate valid (trials are independent draws), and the next ``raymem run`` trains it again
    and sets the damaged file aside. Every reader goes through here, so every reader skips the same trials.
    """
    info = read_run_info(store) if info is None else info
    ids = _list_trial_ids(store) if trial_ids is None else trial_ids
    for trial_id in ids:
        try:
            record = read_trial(store, trial_id, info)
        except DamagedTrialFile as exc:
            warn_damaged(store, exc.relpath, exc.trial_id, exc.problem)
            continue
        yield record
