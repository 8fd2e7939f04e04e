"""The labels of a streamed data set, cached in the run directory.

A streamed data set (ImageNet) holds only its labels in memory, and reading them means reading every
record of both splits (~150 GB for ImageNet), on every driver start. A run already stores its labels
(``labels.parquet``: the original training labels, the test labels, and the training labels it trains on);
``dataset-source.json`` records what they were read from (:func:`raymem.data.datasets.streaming_source`:
tfds version, examples, bytes and shards per split, the files' names and sizes). A driver that resumes
the run reuses the stored labels when

- the data set's source is still the recorded one (same prepared files),
- the stored labels have the run's fingerprint (``run.json``: the sha256 of the original labels), and
- their counts are the splits' sizes;

otherwise it scans again (and the run's usual fingerprint check decides whether the run may go on).
"""

from __future__ import annotations

import json

from raymem.errors import RaymemError
from raymem.store.run_info import read_labels, read_run_info
from raymem.store.storage import RunStore
from raymem.data import datasets

#: File in a run directory: the source the run's labels were read from (streamed data sets only).
SOURCE_FILE = "dataset-source.json"


def load_run_dataset(name: str, data_dir: str | None, store: RunStore, options: dict | None = None):
    """``datasets.load_dataset(name, data_dir, **options)``, but a streamed data set of a run being resumed takes
    its labels from the run directory when they are still valid (see the module docstring)."""
    if name not in datasets.TFDS_STREAMING_NAMES:
        return datasets.load_dataset(name, data_dir, **(options or {}))
    cached = cached_streaming_dataset(name, data_dir, store)
    return cached if cached is not None else datasets.load_dataset(name, data_dir)


def cached_streaming_dataset(name: str, data_dir: str | None, store: RunStore):
    """The streamed data set ``name`` built from the run's stored labels, or None when they cannot be trusted."""
    if not (store.exists("run.json") and store.exists(SOURCE_FILE)):
        return None
    try:
        recorded = json.loads(store.read_bytes(SOURCE_FILE))
        info = read_run_info(store)
        labels = read_labels(store)
    except (RaymemError, ValueError, OSError):
        return None
    data_dir = datasets.resolve_data_dir(data_dir)
    source = datasets.streaming_source(name, data_dir)
    if labels is None or source is None or recorded.get("source") != source:
        return None
    _, y_test, y_train = labels  # the data set's own labels: before any canary flips
    if datasets.labels_sha256(y_train, y_test) != info.fingerprint.get("labels_sha256"):
        return None
    if (len(y_train), len(y_test)) != (source["splits"]["train"]["num_examples"],
                                       source["splits"]["test"]["num_examples"]):
        return None
    return datasets.streaming_dataset(name, data_dir, y_train, y_test)


def remember_source(store: RunStore, data) -> None:
    """Record where a streamed data set's labels came from, so the next driver start need not scan them again."""
    if not isinstance(data, datasets.StreamingDataset):
        return
    source = datasets.streaming_source(data.name, data.data_dir)
    if source is None:
        return
    record = {"source": source, "labels_sha256": datasets.labels_sha256(data.y_train, data.y_test)}
    if store.exists(SOURCE_FILE):
        try:
            if json.loads(store.read_bytes(SOURCE_FILE)) == record:
                return
        except ValueError:
            pass
    store.write_bytes_atomic(SOURCE_FILE, json.dumps(record, indent=1).encode())
