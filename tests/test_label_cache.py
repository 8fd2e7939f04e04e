"""The label scan of a streamed data set is cached in the run directory and reused when a run resumes.

ImageNet is mocked with ``tfds.testing.mock_data``; a mocked data set has no prepared files to identify, so
``streaming_source`` (what the cache is checked against) is replaced by what tfds reports for prepared data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from raymem.store.run_info import read_labels, write_labels
from raymem.store.storage import RunStore
from raymem.data import datasets, label_cache
from raymem.config.experiment import resolve_config
from raymem.driver.run import prepare_run

N = 10


def _source(n_train=N, n_test=N, num_bytes=123456):
    return {"name": "imagenet2012", "version": "5.1.0", "num_classes": 1000,
            "splits": {"train": {"num_examples": n_train, "num_bytes": num_bytes, "shard_lengths": [n_train]},
                       "test": {"num_examples": n_test, "num_bytes": 999, "shard_lengths": [n_test]}},
            "files": 3, "bytes": num_bytes + 999, "files_sha256": "ab" * 32}


@pytest.fixture
def mocked_imagenet(tfds, monkeypatch):
    """The mocked imagenet2012, a stand-in source identity, and a count of full label scans."""
    scans = []
    scan = datasets._scan_streaming_labels

    def counting_scan(name, data_dir):
        scans.append(name)
        return scan(name, data_dir)

    source = {"now": _source()}
    monkeypatch.setattr(datasets, "_scan_streaming_labels", counting_scan)
    monkeypatch.setattr(datasets, "streaming_source", lambda name, data_dir: source["now"])
    with tfds.testing.mock_data(num_examples=N):
        yield scans, source


def test_resuming_reuses_the_runs_labels_instead_of_scanning(tmp_path, mocked_imagenet):
    scans, source = mocked_imagenet
    store = RunStore.open(str(tmp_path / "run"))
    config = resolve_config("imagenet", {"trials": 2, "flip_labels": 0.2})

    first = label_cache.load_run_dataset("imagenet2012", None, store)  # a new run: one scan
    info, train_labels = prepare_run(config, store, "run", first)
    label_cache.remember_source(store, first)
    assert scans == ["imagenet2012"]
    recorded = json.loads(store.read_bytes(label_cache.SOURCE_FILE))
    assert recorded["source"] == source["now"] and recorded["labels_sha256"] == info.fingerprint["labels_sha256"]

    again = label_cache.load_run_dataset("imagenet2012", None, store)  # resuming: no scan
    assert scans == ["imagenet2012"]
    assert isinstance(again, datasets.StreamingDataset)
    np.testing.assert_array_equal(again.y_train, first.y_train)  # the files' labels, not the canary-flipped ones
    np.testing.assert_array_equal(again.y_test, first.y_test)
    assert again.fingerprint() == first.fingerprint() and again.data_dir == first.data_dir
    assert (again.n_train, again.n_test, again.num_classes) == (first.n_train, first.n_test, first.num_classes)
    _, labels = prepare_run(config, store, "run", again)  # the run's own fingerprint check passes
    np.testing.assert_array_equal(labels, train_labels)
    assert len(list(again.train_dataset(np.array([1, 3])))) == 2  # it still streams from the files


def test_a_changed_source_or_damaged_labels_scan_again(tmp_path, mocked_imagenet):
    scans, source = mocked_imagenet
    store = RunStore.open(str(tmp_path / "run"))
    data = label_cache.load_run_dataset("imagenet2012", None, store)
    prepare_run(resolve_config("imagenet", {"trials": 2}), store, "run", data)
    label_cache.remember_source(store, data)
    assert len(scans) == 1

    source["now"] = _source(num_bytes=654321)  # re-prepared files: scan
    label_cache.load_run_dataset("imagenet2012", None, store)
    assert len(scans) == 2

    source["now"] = _source()
    label_cache.load_run_dataset("imagenet2012", None, store)
    assert len(scans) == 2  # back to the recorded source: cached again

    train, test, original = read_labels(store)  # labels.parquet that no longer has the run's fingerprint: scan
    write_labels(store, train, test, (original + 1) % 1000)
    label_cache.load_run_dataset("imagenet2012", None, store)
    assert len(scans) == 3

    write_labels(store, train, test, original)
    source["now"] = None  # the data set is not prepared where it is looked for: no cache (the scan says why)
    label_cache.load_run_dataset("imagenet2012", None, store)
    assert len(scans) == 4

    source["now"] = _source()
    store.write_bytes_atomic(label_cache.SOURCE_FILE, b"{not json")  # an unreadable record: scan
    label_cache.load_run_dataset("imagenet2012", None, store)
    assert len(scans) == 5


def test_a_new_run_and_in_memory_data_sets_never_use_the_cache(tmp_path, mocked_imagenet):
    scans, _ = mocked_imagenet
    store = RunStore.open(str(tmp_path / "new"))
    label_cache.load_run_dataset("imagenet2012", None, store)
    assert len(scans) == 1 and not store.exists(label_cache.SOURCE_FILE)
    digits = label_cache.load_run_dataset("digits", None, store)
    label_cache.remember_source(store, digits)
    assert isinstance(digits, datasets.ArrayDataset) and not store.exists(label_cache.SOURCE_FILE)


def test_streaming_source_of_an_unprepared_data_set_is_none(tfds, tmp_path):
    assert datasets.streaming_source("imagenet2012", str(tmp_path / "nothing")) is None
    assert not (tmp_path / "nothing").exists()


def test_file_sizes_list_a_prepared_version_directory(tmp_path):
    (tmp_path / "imagenet2012-train.tfrecord-00000-of-00002").write_bytes(b"x" * 5)
    (tmp_path / "dataset_info.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    assert datasets._file_sizes(str(tmp_path)) == [("dataset_info.json", 2),
                                                   ("imagenet2012-train.tfrecord-00000-of-00002", 5)]
    assert datasets._file_sizes(str(tmp_path / "missing")) == []
