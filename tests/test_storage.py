"""RunStore (local paths, file:// URIs, other pyarrow filesystems), run names, run.json and labels."""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

import numpy as np
import pyarrow.fs as pafs
import pytest

from raymem.errors import RaymemError
from raymem.store.run_info import (
    LABELS_FILE, RUN_INFO_FILE, RunInfo, new_run_info, read_labels, read_run_info, write_labels, write_run_info,
)
from raymem.store.storage import TEMP_PREFIX, RunStore, run_location, validate_run_name


def _stores(tmp_path):
    """Yield (label, store) for every kind of filesystem the code must work through."""
    yield "local path", RunStore.open(str(tmp_path / "local" / "run"))
    yield "file uri", RunStore.open((tmp_path / "uri" / "run").as_uri())
    subtree = pafs.SubTreeFileSystem(str(tmp_path / "subtree"), pafs.LocalFileSystem())
    yield "subtree", RunStore(subtree, "runs/run", "subtree://runs/run")
    if hasattr(pafs, "_MockFileSystem"):
        yield "mock", RunStore(pafs._MockFileSystem(), "bucket/runs/run", "mock://bucket/runs/run")


@pytest.fixture(params=["local path", "file uri", "subtree", "mock"])
def store(request, tmp_path):
    stores = dict(_stores(tmp_path))
    if request.param not in stores:
        pytest.skip("pyarrow has no _MockFileSystem")
    return stores[request.param]


def test_open_local_path_and_file_uri_point_at_the_same_directory(tmp_path):
    by_path = RunStore.open(str(tmp_path / "run"))
    by_uri = RunStore.open((tmp_path / "run").as_uri())
    by_path.write_bytes_atomic("a/b.bin", b"hello")
    assert by_uri.read_bytes("a/b.bin") == b"hello"
    assert (tmp_path / "run" / "a" / "b.bin").read_bytes() == b"hello"
    assert by_path.uri == str(tmp_path / "run")
    assert by_path.location("a/b.bin") == f"{tmp_path / 'run'}/a/b.bin"


def test_open_rejects_unknown_scheme():
    with pytest.raises(RaymemError, match="nosuchscheme://bucket/run"):
        RunStore.open("nosuchscheme://bucket/run")


def test_store_round_trip_list_and_delete(store):
    assert not store.exists("trials/x.parquet")
    assert store.list("trials", ".parquet") == []  # a missing directory lists as empty
    for name, data in [("b.parquet", b"2"), ("a.parquet", b"1"), ("c.txt", b"3")]:
        store.write_bytes_atomic(f"trials/{name}", data)
    store.write_bytes_atomic("trials/a.parquet", b"replaced")
    assert store.list("trials", ".parquet") == ["a.parquet", "b.parquet"]
    assert store.list("trials") == ["a.parquet", "b.parquet", "c.txt"]
    assert store.read_bytes("trials/a.parquet") == b"replaced"
    assert store.exists("trials/b.parquet")
    store.delete("trials/b.parquet")
    store.delete("trials/b.parquet")  # already gone: no error
    assert not store.exists("trials/b.parquet")
    assert store.list("trials", ".parquet") == ["a.parquet"]
    with pytest.raises(RaymemError, match=f"{store.uri}/trials/b.parquet does not exist"):
        store.read_bytes("trials/b.parquet")


def test_relative_paths_cannot_leave_the_store(store):
    for bad in ["../x", "a/../../x", "/etc/passwd", "", "a//b"]:
        with pytest.raises(ValueError):
            store.write_bytes_atomic(bad, b"x")


class _MoveFails:
    """A filesystem proxy whose move always fails (as a crash between write and rename would)."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def move(self, src, dest):
        raise OSError("simulated failure during move")


def test_failed_atomic_write_leaves_no_temp_file_and_keeps_old_content(store, monkeypatch):
    store.write_bytes_atomic("trials/a.bin", b"old")
    monkeypatch.setattr(store, "filesystem", _MoveFails(store.filesystem))
    with pytest.raises(OSError, match="simulated"):
        store.write_bytes_atomic("trials/a.bin", b"new")
    with pytest.raises(OSError, match="simulated"):
        store.write_bytes_atomic("trials/b.bin", b"new")
    monkeypatch.undo()
    raw = store.filesystem.get_file_info(pafs.FileSelector(store.path("trials")))
    assert sorted(info.base_name for info in raw) == ["a.bin"]  # no .tmp-* left, b never appeared
    assert store.read_bytes("trials/a.bin") == b"old"


def test_list_hides_temp_files_of_unfinished_writes(store):
    store.write_bytes_atomic("trials/a.parquet", b"1")
    with store.filesystem.open_output_stream(store.path(f"trials/{TEMP_PREFIX}123-b.parquet")) as stream:
        stream.write(b"partial")
    assert store.list("trials", ".parquet") == ["a.parquet"]


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 65, "-x", "..", ".", "a b", "a\\b", "ü", None])
def test_invalid_run_names_are_rejected(name):
    with pytest.raises(RaymemError, match="not a valid run name"):
        validate_run_name(name)
    with pytest.raises(RaymemError):
        run_location("/tmp/root", name)


@pytest.mark.parametrize("name", ["cifar100-run_1.v2", "a", "x" * 64, "_private", "0"])
def test_valid_run_names_are_accepted(name):
    assert validate_run_name(name) == name


def test_run_location_stays_directly_under_the_root(tmp_path):
    root = str(tmp_path / "runs")
    location = run_location(root, "cifar100-run_1.v2")
    assert os.path.dirname(location) == root
    assert os.path.commonpath([os.path.realpath(location), os.path.realpath(root)]) == os.path.realpath(root)

    uri = run_location("s3://bucket/prefix/?region=us-east-1", "run1")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, parts.path, parts.query) == ("s3", "bucket", "/prefix/run1", "region=us-east-1")
    assert run_location("gs://bucket", "run1") == "gs://bucket/run1"


def test_uri_query_is_kept_out_of_messages():
    store = RunStore(pafs.LocalFileSystem(), "/nowhere/run", "s3://bucket/run?secret_key=abc")
    assert store.uri == "s3://bucket/run"
    assert "abc" not in store.location("run.json")


# ---------------------------------------------------------------- run.json and labels.parquet


def _info(**changes) -> RunInfo:
    settings = dict(name="digits-1", n_train=20, n_test=7, subset_size=14, seed=3,
                    config={"model": "cnn", "epochs": 2}, fingerprint={"sha": "ab"}, source="runner")
    settings.update(changes)
    return new_run_info(**settings)


def test_run_info_round_trip(store):
    info = _info()
    write_run_info(store, info)
    assert read_run_info(store) == info
    text = store.read_bytes(RUN_INFO_FILE).decode()
    assert json.loads(text)["format_version"] == 1
    keys = [line.split('"')[1] for line in text.splitlines() if line.startswith('  "')]
    assert keys == sorted(keys)


def test_new_run_info_gives_fresh_ids_and_validates():
    assert _info().run_id != _info().run_id
    with pytest.raises(RaymemError, match="not a valid run name"):
        _info(name="../escape")
    with pytest.raises(RaymemError, match="subset_size"):
        _info(subset_size=21)
    with pytest.raises(RaymemError, match="source"):
        _info(source="elsewhere")


def test_missing_run_json_says_how_to_create_one(store):
    with pytest.raises(RaymemError, match=r"is not a raymem run directory \(no run.json\).*raymem run"):
        read_run_info(store)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=2), "format_version 2"),
    (lambda d: d.pop("n_train"), r"lacks the keys \['n_train'\]"),
    (lambda d: d.update(n_test="7"), "n_test must be of type int"),
])
def test_bad_run_json_is_named(store, edit, message):
    data = json.loads(json.dumps(_info().__dict__))
    edit(data)
    store.write_bytes_atomic(RUN_INFO_FILE, json.dumps(data).encode())
    with pytest.raises(RaymemError, match=message) as caught:
        read_run_info(store)
    assert store.location(RUN_INFO_FILE) in str(caught.value)


def test_run_json_that_is_not_json_is_named(store):
    store.write_bytes_atomic(RUN_INFO_FILE, b"{not json")
    with pytest.raises(RaymemError, match=f"{store.location(RUN_INFO_FILE)} is not valid JSON"):
        read_run_info(store)


def test_labels_round_trip_with_flipped_canaries(store):
    assert read_labels(store) is None
    rng = np.random.default_rng(1)
    train, test = rng.integers(0, 10, 20), rng.integers(0, 10, 7)
    original = train.copy()
    original[[2, 5]] = (train[[2, 5]] + 1) % 10
    write_labels(store, train, test, original)
    got_train, got_test, got_original = read_labels(store)
    np.testing.assert_array_equal(got_train, train)
    np.testing.assert_array_equal(got_test, test)
    np.testing.assert_array_equal(got_original, original)
    assert got_train.dtype == got_test.dtype == got_original.dtype == np.int64

    write_labels(store, train, test)  # no canaries: original equals label
    np.testing.assert_array_equal(read_labels(store)[2], train)


def test_labels_with_mismatched_lengths_are_rejected(store):
    with pytest.raises(RaymemError, match="original_train_labels has 3 entries but train_labels has 4"):
        write_labels(store, [0, 1, 2, 3], [1], [0, 1, 2])
    with pytest.raises(RaymemError, match="integer class labels"):
        write_labels(store, np.array([0.5, 1.0]), [1])
    assert not store.exists(LABELS_FILE)


def test_corrupt_labels_file_is_named(store):
    write_labels(store, [0, 1, 2], [1])
    data = store.read_bytes(LABELS_FILE)
    store.write_bytes_atomic(LABELS_FILE, data[: len(data) // 2])
    with pytest.raises(RaymemError, match=f"{store.location(LABELS_FILE)} is invalid"):
        read_labels(store)
