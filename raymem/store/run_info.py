"""The files that describe a run: ``run.json`` (what the run is) and ``labels.parquet`` (its labels).

``run.json`` holds a :class:`RunInfo` as JSON (sorted keys, ``format_version`` 1).
``labels.parquet`` has one row per example: ``split`` ("train"/"test"), ``index`` (int64),
``label`` (int64) and ``original_label`` (int64), which differs from ``label`` only for training
examples whose label was flipped on purpose (canaries). Where the data set names its classes (``imagefolder:``),
the names (label i -> name) are kept once, in the file's schema metadata under ``raymem.class_names`` (JSON).
"""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymem.errors import RaymemError
from raymem.store.storage import RunStore, validate_run_name

RUN_INFO_FILE = "run.json"
LABELS_FILE = "labels.parquet"
#: The only run.json format this code reads and writes.
FORMAT_VERSION = 1
#: Where a run comes from: trained by raymem, or trial results ingested from elsewhere.
RUN_SOURCES = ("ingest", "runner")
#: What a run's trials train on: random subsets drawn from (run seed, trial id) (``subsets``, every influence
#: run), or the explicit example sets of a marginal-utility run (``marginal``; ``raymem.paper.marginal_utility``).
RUN_KINDS = ("subsets", "marginal")
LABEL_SPLITS = ("train", "test")
#: The labels.parquet schema metadata key holding the class names (a JSON list, label i -> name).
CLASS_NAMES_KEY = b"raymem.class_names"
LABELS_SCHEMA = pa.schema([
    ("split", pa.string()), ("index", pa.int64()), ("label", pa.int64()), ("original_label", pa.int64()),
])


@dataclass(frozen=True)
class RunInfo:
    """What a run is: its id, sizes, seed and the experiment that produced it."""

    run_id: str
    name: str
    n_train: int
    n_test: int
    subset_size: int
    seed: int
    config: dict       # the experiment config (JSON-serialisable), {} for ingested runs
    fingerprint: dict  # dataset fingerprint, {} for ingested runs
    source: str        # "ingest" or "runner"
    created: str       # ISO time
    format_version: int = FORMAT_VERSION
    kind: str = "subsets"  # RUN_KINDS; run.json leaves it out for "subsets" (the default)
    design: dict = dataclasses.field(default_factory=dict)  # a marginal run: its source run, arms and sets
    model_source: dict = dataclasses.field(default_factory=dict)  # your own model: name, params, file, sha256


#: The JSON type each run.json key must have.
_FIELD_TYPES = {
    "run_id": str, "name": str, "n_train": int, "n_test": int, "subset_size": int, "seed": int,
    "config": dict, "fingerprint": dict, "source": str, "created": str, "format_version": int,
}
#: Keys run.json may leave out, with their value when it does (written only when they differ from it).
_OPTIONAL_FIELDS = {"kind": (str, "subsets"), "design": (dict, {}), "model_source": (dict, {})}


def _run_info_problem(info: RunInfo) -> str | None:
    """Return what is wrong with ``info``'s values, or None when they are consistent."""
    for name, kind in {**_FIELD_TYPES, **{k: t for k, (t, _) in _OPTIONAL_FIELDS.items()}}.items():
        value = getattr(info, name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{name} must be of type {kind.__name__}, got {value!r}"
    if info.format_version != FORMAT_VERSION:
        return f"format_version {info.format_version} is not supported (this raymem reads {FORMAT_VERSION})"
    if info.source not in RUN_SOURCES:
        return f"source must be one of {RUN_SOURCES}, got {info.source!r}"
    if info.kind not in RUN_KINDS:
        return f"kind must be one of {RUN_KINDS}, got {info.kind!r}"
    if info.kind == "marginal" and info.source != "runner":
        return "a marginal run is trained by raymem (source 'runner')"
    if info.n_train < 1 or info.n_test < 0:
        return f"sizes n_train={info.n_train}, n_test={info.n_test} are invalid (need n_train >= 1, n_test >= 0)"
    if not 0 <= info.subset_size <= info.n_train:
        return f"subset_size {info.subset_size} is not between 0 and n_train={info.n_train}"
    return None


def new_run_info(
    *, name: str, n_train: int, n_test: int, subset_size: int, seed: int,
    config: dict, fingerprint: dict, source: str, kind: str = "subsets", design: dict | None = None,
) -> RunInfo:
    """Return the RunInfo of a new run: a fresh uuid4 run id and the current UTC time."""
    info = RunInfo(
        run_id=str(uuid.uuid4()), name=validate_run_name(name), n_train=n_train, n_test=n_test,
        subset_size=subset_size, seed=seed, config=config, fingerprint=fingerprint, source=source,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), kind=kind, design=dict(design or {}),
    )
    problem = _run_info_problem(info)
    if problem:
        raise RaymemError(f"Cannot create run {name!r}: {problem}; fix the run's settings.")
    return info


def write_run_info(store: RunStore, info: RunInfo) -> None:
    """Write ``info`` as ``run.json`` (sorted-key JSON, atomically)."""
    problem = _run_info_problem(info)
    if problem:
        raise RaymemError(f"Cannot write {store.location(RUN_INFO_FILE)}: {problem}; fix the run's settings.")
    fields = dataclasses.asdict(info)
    for key, (_, default) in _OPTIONAL_FIELDS.items():
        if fields[key] == default:
            del fields[key]  # run.json holds these keys only where a run departs from the default
    try:
        text = json.dumps(fields, sort_keys=True, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RaymemError(
            f"Cannot write {store.location(RUN_INFO_FILE)}: config or fingerprint is not plain JSON ({exc}); "
            "use only strings, numbers, booleans, lists and dicts."
        ) from exc
    store.write_bytes_atomic(RUN_INFO_FILE, (text + "\n").encode("utf-8"))


def read_run_info(store: RunStore) -> RunInfo:
    """Return the run's RunInfo from ``run.json``; RaymemError naming the file when it is missing or invalid."""
    where = store.location(RUN_INFO_FILE)
    if not store.exists(RUN_INFO_FILE):
        raise RaymemError(
            f"{store.uri} is not a raymem run directory (no run.json); create it with `raymem run` or `raymem ingest`."
        )
    try:
        data = json.loads(store.read_bytes(RUN_INFO_FILE).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RaymemError(f"{where} is not valid JSON ({exc}); restore it from a backup or recreate the run.") from exc
    if not isinstance(data, dict):
        raise RaymemError(f"{where} does not hold a JSON object; restore it from a backup or recreate the run.")
    if data.get("format_version") != FORMAT_VERSION:
        raise RaymemError(
            f"{where} has format_version {data.get('format_version')!r}, but this raymem reads only "
            f"{FORMAT_VERSION}; use the raymem version that wrote it."
        )
    missing = sorted(set(_FIELD_TYPES) - set(data))
    if missing:
        raise RaymemError(f"{where} lacks the keys {missing}; restore it from a backup or recreate the run.")
    info = RunInfo(**{name: data[name] for name in _FIELD_TYPES},
                   **{name: data[name] if name in data else type(default)(default)
                      for name, (_, default) in _OPTIONAL_FIELDS.items()})
    problem = _run_info_problem(info)
    if problem:
        raise RaymemError(f"{where} is invalid: {problem}; restore it from a backup or recreate the run.")
    return info


def _as_label_vector(labels, name: str) -> np.ndarray:
    """Return ``labels`` as a 1-D int64 array; RaymemError when they are not integer labels."""
    array = np.asarray(labels)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise RaymemError(
            f"{name} must be a 1-D array of integer class labels, got dtype {array.dtype} with shape {array.shape}."
        )
    return array.astype(np.int64)


def write_labels(store: RunStore, train_labels, test_labels, original_train_labels=None,
                 class_names=()) -> None:
    """Write ``labels.parquet`` atomically; ``original_train_labels`` defaults to the training labels;
    ``class_names`` (label i -> name), where the data set names its classes, go to the schema metadata."""
    train = _as_label_vector(train_labels, "train_labels")
    test = _as_label_vector(test_labels, "test_labels")
    original = (train if original_train_labels is None
                else _as_label_vector(original_train_labels, "original_train_labels"))
    if original.shape != train.shape:
        raise RaymemError(
            f"original_train_labels has {original.size} entries but train_labels has {train.size}; "
            "give one original label per training example."
        )
    table = pa.table(
        {
            "split": np.array(["train"] * train.size + ["test"] * test.size, dtype=object),
            "index": np.concatenate([np.arange(train.size), np.arange(test.size)]).astype(np.int64),
            "label": np.concatenate([train, test]),
            "original_label": np.concatenate([original, test]),
        },
        schema=LABELS_SCHEMA,
    )
    if class_names:
        table = table.replace_schema_metadata({CLASS_NAMES_KEY: json.dumps([str(n) for n in class_names])})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    store.write_bytes_atomic(LABELS_FILE, buffer.getvalue())


def read_labels(store: RunStore) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Return (train labels, test labels, original train labels) as int64 arrays, or None when the run has none.

    RaymemError naming the file when it is unreadable or its rows are not one per example.
    """
    if not store.exists(LABELS_FILE):
        return None
    where = store.location(LABELS_FILE)

    def fail(problem: str) -> RaymemError:
        return RaymemError(f"{where} is invalid ({problem}); delete it and write the run's labels again.")

    try:
        table = store.read_parquet(LABELS_FILE)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise fail(f"unreadable Parquet: {exc}") from exc
    if not table.schema.equals(LABELS_SCHEMA, check_metadata=False):
        raise fail(f"schema {table.schema.to_string(show_schema_metadata=False)!r}, expected {LABELS_SCHEMA}")
    if any(table.column(name).null_count for name in LABELS_SCHEMA.names):
        raise fail("null values")
    unknown = set(pc.unique(table.column("split")).to_pylist()) - set(LABEL_SPLITS)
    if unknown:
        raise fail(f"unknown split values {sorted(unknown)}")
    result = {}
    for name in LABEL_SPLITS:
        rows = pc.equal(table.column("split"), name).to_numpy(zero_copy_only=False)
        index = table.column("index").to_numpy()[rows]
        order = np.argsort(index, kind="stable")
        if not np.array_equal(index[order], np.arange(index.size)):
            raise fail(f"the {name} indexes are not 0..{index.size - 1}, each once")
        result[name] = tuple(table.column(c).to_numpy()[rows][order] for c in ("label", "original_label"))
    test, test_original = result["test"]
    if not np.array_equal(test, test_original):
        raise fail("a test example has original_label different from label")
    train, train_original = result["train"]
    return train, test, train_original


def read_class_names(store: RunStore) -> list[str] | None:
    """The class names kept in ``labels.parquet`` (label i -> name), or None when the run has none."""
    if not store.exists(LABELS_FILE):
        return None
    metadata = store.read_parquet(LABELS_FILE).schema.metadata or {}
    if CLASS_NAMES_KEY not in metadata:
        return None
    try:
        names = json.loads(metadata[CLASS_NAMES_KEY])
    except ValueError:
        return None
    return [str(name) for name in names] if isinstance(names, list) else None
