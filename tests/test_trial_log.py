"""Trial records and the trial log: packing, validation, checksums, round trips, corruption, idempotence."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raymem.errors import RaymemError, RaymemWarning
from raymem.store.trial_record import TrialRecord, pack_bits, record_checksum, unpack_bits, validate_record
from raymem.store.run_info import new_run_info, write_run_info
from raymem.store.storage import TEMP_PREFIX, RunStore
from raymem.store.trial_log import iter_trials, read_trial, trial_ids, trial_path, write_trial

N_TRAIN, N_TEST, SUBSET = 21, 11, 15  # lengths that are not multiples of 8


def _make_run(store: RunStore, source: str = "runner", **changes):
    settings = dict(name="run", n_train=N_TRAIN, n_test=N_TEST, subset_size=SUBSET, seed=0,
                    config={}, fingerprint={}, source=source)
    settings.update(changes)
    info = new_run_info(**settings)
    write_run_info(store, info)
    return info


def _record(info, trial_id: int, *, with_preds: bool = True, metadata=None) -> TrialRecord:
    rng = np.random.default_rng(trial_id)
    mask = np.zeros(info.n_train, dtype=bool)
    mask[rng.choice(info.n_train, info.subset_size, replace=False)] = True
    train_pred = rng.integers(0, 3, info.n_train).astype(np.int32)
    test_pred = rng.integers(0, 3, info.n_test).astype(np.int32)
    train_correct, test_correct = rng.random(info.n_train) < 0.6, rng.random(info.n_test) < 0.6
    return TrialRecord(
        run_id=info.run_id, trial_id=trial_id, seed=1000 + trial_id, mask=mask,
        train_correct=train_correct, test_correct=test_correct,
        train_pred=train_pred if with_preds else None, test_pred=test_pred if with_preds else None,
        metadata={"accuracy": 0.5, "node": "n1", "attempt": 1} if metadata is None else metadata,
    )


def _assert_same_record(a: TrialRecord, b: TrialRecord) -> None:
    for f in dataclasses.fields(TrialRecord):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


@pytest.fixture(params=["local", "mock"])
def store(request, tmp_path):
    if request.param == "local":
        return RunStore.open(str(tmp_path / "run"))
    if not hasattr(pafs, "_MockFileSystem"):
        pytest.skip("pyarrow has no _MockFileSystem")
    return RunStore(pafs._MockFileSystem(), "bucket/run", "mock://bucket/run")


# ---------------------------------------------------------------- packing and records


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 1001])
def test_pack_bits_round_trip_and_layout(n):
    bits = np.random.default_rng(n).random(n) < 0.5
    packed = pack_bits(bits)
    assert len(packed) == (n + 7) // 8
    # independent check of the little bit order: element i is bit i % 8 of byte i // 8
    assert all(((packed[i // 8] >> (i % 8)) & 1) == bits[i] for i in range(n))
    np.testing.assert_array_equal(unpack_bits(packed, n), bits)
    with pytest.raises(ValueError):
        unpack_bits(packed + b"\0", n)
    with pytest.raises(TypeError):
        pack_bits(bits.astype(np.int8))


def test_from_predictions_compares_with_the_labels():
    rng = np.random.default_rng(0)
    train_labels, test_labels = rng.integers(0, 4, N_TRAIN), rng.integers(0, 4, N_TEST)
    train_pred, test_pred = rng.integers(0, 4, N_TRAIN), rng.integers(0, 4, N_TEST)
    mask = np.arange(N_TRAIN) < SUBSET
    record = TrialRecord.from_predictions(
        run_id="r", trial_id=2, seed=9, mask=mask, train_pred=train_pred, test_pred=test_pred,
        train_labels=train_labels, test_labels=test_labels, metadata={"a": 1},
    )
    assert record.train_correct.tolist() == [int(p) == int(y) for p, y in zip(train_pred, train_labels)]
    assert record.test_correct.tolist() == [int(p) == int(y) for p, y in zip(test_pred, test_labels)]
    assert record.train_pred.dtype == record.test_pred.dtype == np.int32
    validate_record(record, run_id="r", n_train=N_TRAIN, n_test=N_TEST, subset_size=SUBSET)
    with pytest.raises(RaymemError, match="Trial 2: predictions have shapes"):
        TrialRecord.from_predictions(
            run_id="r", trial_id=2, seed=9, mask=mask, train_pred=train_pred[:-1], test_pred=test_pred,
            train_labels=train_labels, test_labels=test_labels, metadata={},
        )


@pytest.mark.parametrize("change, message", [
    (dict(run_id="other"), "for run 'other'"),
    (dict(trial_id=-1), "Trial id -1 is not a non-negative integer"),
    (dict(trial_id=True), "is not a non-negative integer"),
    (dict(mask=np.ones(N_TRAIN, dtype=np.int8)), "mask has dtype int8"),
    (dict(train_correct=np.ones(N_TRAIN - 1, dtype=bool)), "train_correct has dtype bool and shape"),
    (dict(test_correct=[True] * N_TEST), "test_correct is a list"),
    (dict(train_pred=np.zeros(N_TRAIN, dtype=np.int64)), "train_pred has dtype int64"),
    (dict(test_pred=np.zeros(N_TEST + 1, dtype=np.int32)), "test_pred has dtype int32 and shape"),
    (dict(mask=np.ones(N_TRAIN, dtype=bool)),
     f"selects {N_TRAIN} training examples, not the run's subset size {SUBSET}"),
    (dict(metadata={"x": object()}), "metadata is not JSON-serialisable"),
    (dict(seed=2**64), "is not a 64-bit integer"),
])
def test_validate_record_names_the_problem(tmp_path, change, message):
    info = _make_run(RunStore.open(str(tmp_path)))
    good = _record(info, 7)
    validate_record(good, run_id=info.run_id, n_train=N_TRAIN, n_test=N_TEST, subset_size=SUBSET)
    bad = dataclasses.replace(good, **change)
    with pytest.raises(RaymemError, match=message) as caught:
        validate_record(bad, run_id=info.run_id, n_train=N_TRAIN, n_test=N_TEST, subset_size=SUBSET)
    if "trial_id" not in change:
        assert str(caught.value).startswith("Trial 7:")


def test_checksum_covers_every_field_and_ignores_key_order(tmp_path):
    info = _make_run(RunStore.open(str(tmp_path)))
    record = _record(info, 3, metadata={"a": 1, "b": [1, 2]})
    base = record_checksum(record)
    assert record_checksum(dataclasses.replace(record, metadata={"b": [1, 2], "a": 1})) == base
    flipped = lambda a, i=0: np.concatenate([a[:i], ~a[i:i + 1], a[i + 1:]])  # noqa: E731
    changes = [
        dict(run_id="x"), dict(trial_id=4), dict(seed=record.seed + 1),
        dict(mask=flipped(record.mask, N_TRAIN - 1)), dict(train_correct=flipped(record.train_correct)),
        dict(test_correct=flipped(record.test_correct, N_TEST - 1)),
        dict(train_pred=record.train_pred + 1), dict(test_pred=None), dict(metadata={"a": 2, "b": [1, 2]}),
        # the same bits moved between fields must not collide
        dict(train_correct=record.mask, mask=record.train_correct),
    ]
    checksums = {record_checksum(dataclasses.replace(record, **change)) for change in changes}
    assert base not in checksums and len(checksums) == len(changes)


# ---------------------------------------------------------------- the log


def test_write_read_round_trip(store):
    info = _make_run(store)
    records = [_record(info, 42), _record(info, 3, with_preds=False, metadata={}), _record(info, 100_000_000)]
    for record in records:
        assert write_trial(store, record) is True
    assert trial_ids(store) == [3, 42, 100_000_000]
    assert store.list("trials") == ["trial-00000003.parquet", "trial-00000042.parquet", "trial-100000000.parquet"]
    assert trial_path(42) == "trials/trial-00000042.parquet"
    for record in records:
        _assert_same_record(read_trial(store, record.trial_id), record)
    got = list(iter_trials(store))
    assert [r.trial_id for r in got] == [3, 42, 100_000_000]
    assert got[0].train_pred is None and got[0].test_pred is None
    assert [r.trial_id for r in iter_trials(store, [42, 3], info=info)] == [42, 3]

    schema = pq.read_schema(pa.BufferReader(store.read_bytes(trial_path(42))))
    assert schema.names == ["run_id", "trial_id", "seed", "n_train", "n_test", "mask", "train_correct",
                            "test_correct", "train_pred", "test_pred", "metadata", "checksum"]
    row = pq.read_table(pa.BufferReader(store.read_bytes(trial_path(42)))).to_pylist()[0]
    assert row["mask"] == np.packbits(records[0].mask, bitorder="little").tobytes()
    assert row["test_pred"] == records[0].test_pred.astype("<i4").tobytes()
    assert row["checksum"] == record_checksum(records[0])


def test_write_is_idempotent_and_refuses_a_different_record(store):
    info = _make_run(store)
    record = _record(info, 5)
    assert write_trial(store, record, info) is True
    before = store.read_bytes(trial_path(5))
    assert write_trial(store, record, info) is False
    assert store.list("trials") == ["trial-00000005.parquet"]
    assert store.read_bytes(trial_path(5)) == before
    other = dataclasses.replace(record, metadata={"attempt": 2})
    with pytest.raises(RaymemError,
                       match=rf"{store.location(trial_path(5))} already holds a different result for trial 5"):
        write_trial(store, other, info)
    assert store.read_bytes(trial_path(5)) == before


def test_write_validates_before_writing(store):
    info = _make_run(store)
    foreign = dataclasses.replace(_record(info, 1), run_id="another-run")
    with pytest.raises(RaymemError, match="Trial 1: the record is for run 'another-run'"):
        write_trial(store, foreign)
    wrong_size = dataclasses.replace(_record(info, 2), mask=np.ones(N_TRAIN, dtype=bool))
    with pytest.raises(RaymemError, match="subset size"):
        write_trial(store, wrong_size)
    assert trial_ids(store) == []


def test_ingested_runs_may_have_subsets_of_any_size(store):
    info = _make_run(store, source="ingest")
    record = dataclasses.replace(_record(info, 1), mask=np.ones(N_TRAIN, dtype=bool))
    assert write_trial(store, record)
    assert read_trial(store, 1).mask.all()


def test_trial_ids_ignore_temp_files_and_foreign_names(store):
    info = _make_run(store)
    write_trial(store, _record(info, 9), info)
    for name in [f"{TEMP_PREFIX}abc-trial-00000010.parquet", "trial-11.parquet", "notes.txt",
                 "trial-000000012.parquet"]:
        with store.filesystem.open_output_stream(store.path(f"trials/{name}")) as stream:
            stream.write(b"junk")
    assert trial_ids(store) == [9]


def test_write_without_run_json_is_refused(store):
    info = new_run_info(name="r", n_train=N_TRAIN, n_test=N_TEST, subset_size=SUBSET, seed=0,
                        config={}, fingerprint={}, source="runner")
    with pytest.raises(RaymemError, match="not a raymem run directory"):
        write_trial(store, _record(info, 1))


# ---------------------------------------------------------------- corruption


def _expect_corrupt(store, trial_id, info, reason):
    location = store.location(trial_path(trial_id))
    with pytest.raises(RaymemError, match=reason) as caught:
        read_trial(store, trial_id, info)
    message = str(caught.value)
    assert location in message and f"--quarantine` (or delete it) so trial {trial_id} is re-run" in message
    return message


def test_every_single_byte_flip_is_detected_or_harmless(tmp_path):
    """Flip each byte of a trial file: reading either fails naming the file, or returns the exact record."""
    store = RunStore.open(str(tmp_path))
    info = _make_run(store)
    record = _record(info, 42)
    write_trial(store, record, info)
    original = store.read_bytes(trial_path(42))
    expected = record_checksum(record)
    detected = 0
    for position in range(len(original)):
        corrupted = bytearray(original)
        corrupted[position] ^= 0xFF
        store.write_bytes_atomic(trial_path(42), bytes(corrupted))
        try:
            got = read_trial(store, 42, info)
        except RaymemError as exc:
            assert store.location(trial_path(42)) in str(exc) and "delete it" in str(exc)
            detected += 1
        else:
            assert record_checksum(got) == expected  # a flip in unused bytes changes nothing
    assert detected > len(original) // 2


def test_truncated_file_is_named(store):
    info = _make_run(store)
    write_trial(store, _record(info, 42), info)
    data = store.read_bytes(trial_path(42))
    for length in [0, 10, len(data) // 2, len(data) - 1]:
        store.write_bytes_atomic(trial_path(42), data[:length])
        _expect_corrupt(store, 42, info, "unreadable Parquet")
    with pytest.warns(RaymemWarning, match=r"trial-00000042\.parquet is damaged .* left out"):
        assert list(iter_trials(store)) == []  # every reader skips it: trial 42 is not in the log
    damaged = store.read_bytes(trial_path(42))
    assert write_trial(store, _record(info, 42), info)  # the retrained trial takes its place
    assert store.read_bytes("quarantine/trial-00000042.parquet") == damaged  # set aside, never overwritten
    assert record_checksum(read_trial(store, 42, info)) == record_checksum(_record(info, 42))


def _rewrite_column(store, trial_id, name, value):
    table = pq.read_table(pa.BufferReader(store.read_bytes(trial_path(trial_id))))
    index = table.schema.get_field_index(name)
    table = table.set_column(index, table.schema.field(index), pa.array([value], type=table.schema.field(index).type))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    store.write_bytes_atomic(trial_path(trial_id), buffer.getvalue())


def test_edited_checksum_is_named(store):
    info = _make_run(store)
    write_trial(store, _record(info, 42), info)
    _rewrite_column(store, 42, "checksum", "0" * 64)
    _expect_corrupt(store, 42, info, "checksum mismatch")


def test_edited_content_with_old_checksum_is_named(store):
    info = _make_run(store)
    record = _record(info, 42)
    write_trial(store, record, info)
    _rewrite_column(store, 42, "seed", record.seed + 1)
    _expect_corrupt(store, 42, info, "checksum mismatch")


def test_wrong_n_train_is_named(tmp_path):
    store = RunStore.open(str(tmp_path / "a"))
    info = _make_run(store)
    write_trial(store, _record(info, 42), info)
    # the same run id with one more training example: the file no longer fits run.json
    larger = dataclasses.replace(info, n_train=N_TRAIN + 1)
    _expect_corrupt(store, 42, larger, f"n_train={N_TRAIN}, n_test={N_TEST} but the run has n_train={N_TRAIN + 1}")
    # a file whose n_train column disagrees with its packed bits
    _rewrite_column(store, 42, "n_train", N_TRAIN + 8)
    _expect_corrupt(store, 42, info, f"n_train={N_TRAIN + 8}")


def test_file_of_another_run_or_trial_is_named(tmp_path):
    first, second = RunStore.open(str(tmp_path / "a")), RunStore.open(str(tmp_path / "b"))
    info_a, info_b = _make_run(first), _make_run(second)
    write_trial(first, _record(info_a, 42), info_a)
    second.write_bytes_atomic(trial_path(42), first.read_bytes(trial_path(42)))
    _expect_corrupt(second, 42, info_b, f"it holds run '{info_a.run_id}'")
    first.write_bytes_atomic(trial_path(43), first.read_bytes(trial_path(42)))
    _expect_corrupt(first, 43, info_a, "it holds trial 42")
