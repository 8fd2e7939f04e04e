"""One finished trial as a record: which examples it trained on and where its model was correct.

A :class:`TrialRecord` is what a trial hands to the accumulator and what the trial log stores.
:func:`validate_record` checks it against its run; :func:`record_checksum` gives the sha256 the log
stores beside it. Bits are packed with :func:`pack_bits` / :func:`unpack_bits` everywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np

from raymem.errors import RaymemError

#: Byte order of packed bits (``np.packbits``): bit 0 of a byte is the first element.
BIT_ORDER = "little"
#: dtype of stored predicted labels (little-endian int32).
PRED_DTYPE = np.dtype("<i4")
#: Seeds and trial ids are stored as int64.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Tag that starts the checksummed encoding; change it if the encoding ever changes.
CHECKSUM_DOMAIN = b"raymem-trial-record-v1"


def pack_bits(bits: np.ndarray) -> bytes:
    """Return a 1-D bool array packed 8 per byte (little bit order); the last byte is zero-padded."""
    bits = np.asarray(bits)
    if bits.dtype != np.bool_ or bits.ndim != 1:
        raise TypeError(f"pack_bits needs a 1-D bool array, got dtype {bits.dtype} with shape {bits.shape}")
    return np.packbits(bits, bitorder=BIT_ORDER).tobytes()


def unpack_bits(data: bytes, n: int) -> np.ndarray:
    """Return the first ``n`` bits of ``data`` as a bool array (ValueError when ``data`` has the wrong length)."""
    if len(data) != packed_length(n):
        raise ValueError(f"{n} bits pack into {packed_length(n)} bytes, got {len(data)}")
    packed = np.frombuffer(data, dtype=np.uint8)
    return np.unpackbits(packed, count=n, bitorder=BIT_ORDER).astype(bool)


def packed_length(n: int) -> int:
    """Return how many bytes ``n`` packed bits take."""
    return (n + 7) // 8


@dataclass(frozen=True, eq=False)
class TrialRecord:
    """The outcome of one trial (compare records by :func:`record_checksum`, not ``==``)."""

    run_id: str                 # the run's uuid from run.json; a record for another run is rejected
    trial_id: int               # >= 0
    seed: int                   # the seed the trial's subset and training used
    mask: np.ndarray            # bool (n_train,): example i was in the trial's training subset
    train_correct: np.ndarray   # bool (n_train,)
    test_correct: np.ndarray    # bool (n_test,)
    train_pred: np.ndarray | None = None  # int32 (n_train,) predicted label, None when unknown
    test_pred: np.ndarray | None = None   # int32 (n_test,)
    metadata: dict = field(default_factory=dict)  # JSON-serialisable: accuracy, duration_s, node, ...

    @classmethod
    def from_predictions(
        cls, *, run_id: str, trial_id: int, seed: int, mask: np.ndarray,
        train_pred: np.ndarray, test_pred: np.ndarray,
        train_labels: np.ndarray, test_labels: np.ndarray, metadata: dict | None = None,
    ) -> "TrialRecord":
        """Return the record of a trial whose predicted labels are known; correctness is pred == label."""
        train_pred = _as_pred_array(train_pred, "train_pred", trial_id)
        test_pred = _as_pred_array(test_pred, "test_pred", trial_id)
        train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
        if train_labels.shape != train_pred.shape or test_labels.shape != test_pred.shape:
            raise RaymemError(
                f"Trial {trial_id}: predictions have shapes {train_pred.shape} (train) and "
                f"{test_pred.shape} (test) but the run's labels have {train_labels.shape} and "
                f"{test_labels.shape}; predict on every training and test example of the run."
            )
        return cls(
            run_id=run_id, trial_id=trial_id, seed=seed, mask=np.asarray(mask),
            train_correct=train_pred == train_labels, test_correct=test_pred == test_labels,
            train_pred=train_pred, test_pred=test_pred, metadata=dict(metadata or {}),
        )


def _as_pred_array(pred: np.ndarray, name: str, trial_id: int) -> np.ndarray:
    """Return ``pred`` as a 1-D int32 array; RaymemError when it is not integer or does not fit int32."""
    pred = np.asarray(pred)
    if pred.ndim != 1 or not np.issubdtype(pred.dtype, np.integer):
        raise RaymemError(
            f"Trial {trial_id}: {name} must be a 1-D array of integer labels, got dtype {pred.dtype} "
            f"with shape {pred.shape}; pass the argmax of the model's outputs."
        )
    info = np.iinfo(np.int32)
    if pred.size and (pred.min() < info.min or pred.max() > info.max):
        raise RaymemError(f"Trial {trial_id}: {name} holds labels outside int32; labels must be class indices.")
    return pred.astype(PRED_DTYPE)


def _is_int(value) -> bool:
    """Return True for a Python or numpy integer (bool excluded)."""
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _array_problem(value, name: str, dtype: np.dtype, length: int) -> str | None:
    """Return what is wrong with ``value`` as a (length,) array of ``dtype``, or None when it is right."""
    if not isinstance(value, np.ndarray):
        return f"{name} is a {type(value).__name__}, not a numpy array"
    if value.dtype != dtype or value.shape != (length,):
        return f"{name} has dtype {value.dtype} and shape {value.shape}, expected {dtype} and ({length},)"
    return None


def metadata_json(metadata: dict) -> str:
    """Return the canonical JSON text of a trial's metadata (sorted keys, fixed separators)."""
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def validate_record(
    record: TrialRecord, *, run_id: str, n_train: int, n_test: int, subset_size: int | None = None
) -> None:
    """Return None when ``record`` belongs to run ``run_id`` with these sizes; raise RaymemError naming the problem.

    Checks ids, dtypes and shapes, and (when ``subset_size`` is given) the size of the training
    subset. Whether predictions agree with the correctness bits is not checked (that needs labels).
    """
    if not isinstance(record, TrialRecord):
        raise RaymemError(f"Expected a TrialRecord, got a {type(record).__name__}; build one with TrialRecord(...).")
    trial_id = record.trial_id
    if not _is_int(trial_id) or trial_id < 0 or trial_id > INT64_MAX:
        raise RaymemError(f"Trial id {trial_id!r} is not a non-negative integer; number trials 0, 1, 2, ...")

    def fail(problem: str) -> None:
        raise RaymemError(f"Trial {trial_id}: {problem}; fix the trial's output before recording it.")

    if record.run_id != run_id:
        fail(f"the record is for run {record.run_id!r}, not for this run ({run_id!r})")
    if not _is_int(record.seed) or not INT64_MIN <= record.seed <= INT64_MAX:
        fail(f"seed {record.seed!r} is not a 64-bit integer")
    arrays = [
        (record.mask, "mask", np.dtype(bool), n_train),
        (record.train_correct, "train_correct", np.dtype(bool), n_train),
        (record.test_correct, "test_correct", np.dtype(bool), n_test),
    ]
    if record.train_pred is not None:
        arrays.append((record.train_pred, "train_pred", PRED_DTYPE, n_train))
    if record.test_pred is not None:
        arrays.append((record.test_pred, "test_pred", PRED_DTYPE, n_test))
    for value, name, dtype, length in arrays:
        problem = _array_problem(value, name, dtype, length)
        if problem:
            fail(problem)
    if subset_size is not None and int(record.mask.sum()) != subset_size:
        fail(f"the mask selects {int(record.mask.sum())} training examples, not the run's subset size {subset_size}")
    if not isinstance(record.metadata, dict):
        fail(f"metadata is a {type(record.metadata).__name__}, not a dict")
    try:
        metadata_json(record.metadata)
    except (TypeError, ValueError) as exc:
        fail(f"metadata is not JSON-serialisable ({exc})")


def record_checksum(record: TrialRecord) -> str:
    """Return the sha256 hex digest of a canonical byte encoding of every field of ``record``.

    Each field is encoded as its name, its length and its bytes: ids and seed as decimal text,
    bool arrays as their length plus packed bits, predictions as int32 little-endian bytes (or a
    marker for None), metadata as :func:`metadata_json`.
    """
    digest = hashlib.sha256(CHECKSUM_DOMAIN)

    def put(name: str, data: bytes) -> None:
        digest.update(name.encode("ascii") + b"\0" + len(data).to_bytes(8, "little") + data)

    put("run_id", record.run_id.encode("utf-8"))
    put("trial_id", str(int(record.trial_id)).encode("ascii"))
    put("seed", str(int(record.seed)).encode("ascii"))
    for name in ("mask", "train_correct", "test_correct"):
        bits = getattr(record, name)
        put(name, str(len(bits)).encode("ascii") + b":" + pack_bits(bits))
    for name in ("train_pred", "test_pred"):
        pred = getattr(record, name)
        put(name, b"none" if pred is None else b"int32le:" + np.asarray(pred, dtype=PRED_DTYPE).tobytes())
    put("metadata", metadata_json(record.metadata).encode("ascii"))
    return digest.hexdigest()
