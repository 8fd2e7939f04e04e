"""A full storage during a trial write: nothing half-written, the trial not counted, named, retrained once space is
back, and none of its attempts spent."""

from __future__ import annotations

import errno

import numpy as np
import pyarrow.fs as pafs
import pytest

from raymem.driver.space import SpaceWaiter, storage_full_cause
from raymem.store.run_info import new_run_info, write_run_info
from raymem.store.storage import RunStore, StorageFull
from raymem.store.trial_log import TRIALS_DIR, read_trial, trial_ids, write_trial
from raymem.store.trial_record import TrialRecord

N, N_TEST, M = 40, 10, 28


class FillingFileSystem:
    """A local file system that runs out of space on demand: a write then stores its first half and raises ENOSPC,
    as a disk that fills in the middle of a file does."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()
        self.full = False

    def __getattr__(self, name):
        return getattr(self.local, name)

    def open_output_stream(self, path, *args, **kwargs):
        stream = self.local.open_output_stream(path, *args, **kwargs)
        if not self.full:
            return stream
        owner = self

        class HalfThenFull:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                stream.close()

            def write(self, data):
                stream.write(bytes(data)[: len(data) // 2])
                if owner.full:
                    raise OSError(errno.ENOSPC, "No space left on device")

        return HalfThenFull()


@pytest.fixture
def store_and_info(tmp_path):
    filesystem = FillingFileSystem()
    store = RunStore(filesystem, str(tmp_path / "run"), uri=str(tmp_path / "run"))
    info = new_run_info(name="full", n_train=N, n_test=N_TEST, subset_size=M, seed=0, config={}, fingerprint={},
                        source="ingest")
    write_run_info(store, info)
    return store, info, filesystem


def record(info, trial_id: int) -> TrialRecord:
    rng = np.random.default_rng(trial_id)
    mask = np.zeros(N, dtype=bool)
    mask[rng.choice(N, M, replace=False)] = True
    return TrialRecord(run_id=info.run_id, trial_id=trial_id, seed=trial_id, mask=mask,
                       train_correct=rng.random(N) < 0.8, test_correct=rng.random(N_TEST) < 0.6, metadata={})


def test_a_trial_write_on_a_full_storage_leaves_nothing_and_names_the_storage(store_and_info, tmp_path):
    store, info, filesystem = store_and_info
    write_trial(store, record(info, 0), info)
    filesystem.full = True
    with pytest.raises(StorageFull, match=r"storage of .*trial-00000001\.parquet is full \(No space left on device\)"):
        write_trial(store, record(info, 1), info)
    assert sorted(p.name for p in (tmp_path / "run" / TRIALS_DIR).iterdir()) == ["trial-00000000.parquet"]
    assert trial_ids(store) == [0]
    filesystem.full = False  # space is back: the same trial writes whole and reads back
    assert write_trial(store, record(info, 1), info)
    np.testing.assert_array_equal(read_trial(store, 1, info).mask, record(info, 1).mask)


def test_the_waiter_says_what_is_full_and_returns_once_a_probe_write_succeeds(store_and_info):
    store, _, filesystem = store_and_info
    filesystem.full = True
    notes, sleeps = [], []

    def sleep(seconds):
        sleeps.append(seconds)
        filesystem.full = len(sleeps) < 3  # space comes back after the third wait

    waiter = SpaceWaiter(store, notes.append, interval=7.0, sleep=sleep)
    waiter(StorageFull(f"the storage of {store.uri}/trials/x is full (No space left on device), so nothing was "
                       "written there; free space on it."), [5, 6])
    assert sleeps == [7.0, 7.0, 7.0] and waiter.waits == 1
    assert "is full" in notes[0] and "Trial 5, 6 is not counted" in notes[0] and "every 7 s" in notes[0]
    assert "has space again" in notes[1]
    assert not store.exists(".raymem-space-probe")


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_ray")
def test_the_driver_retrains_a_trial_lost_to_a_full_storage_without_spending_its_attempts():
    import ray

    from raymem.config.experiment import resolve_config
    from raymem.driver.progress import Progress
    from raymem.driver.run import RunResult, _drive

    ray.init(num_cpus=2, include_dashboard=False)

    @ray.remote
    class Accumulator:  # fails the first write of trial 1 as the real one does on a full disk
        def __init__(self):
            self.seen = []

        def absorb(self, trial_id):
            self.seen.append(trial_id)
            if trial_id == 1 and self.seen.count(1) == 1:
                raise StorageFull("the storage of /runs/x/trials/trial-00000001.parquet is full (No space left on "
                                  "device), so nothing was written there; free space on it.")
            return trial_id

        def deliveries(self):
            return self.seen

    @ray.remote
    def trial(accumulator, trial_id):
        return ray.get(accumulator.absorb.remote(trial_id))

    accumulator = Accumulator.remote()
    config = resolve_config("digits", {"trials": 3, "max_attempts": 1})  # one try: a spent attempt would fail it
    result = RunResult("full", "/runs/x", 3, 0)
    waits = []
    _drive(config, [0, 1, 2], lambda k, attempt: trial.remote(accumulator, k), result,
           Progress(3, enabled=False), wait_for_space=lambda error, ids: waits.append((str(error), ids)))
    assert sorted(result.trained_now) == [0, 1, 2] and not result.failed and not result.retried
    assert len(waits) == 1 and waits[0][1] == [1] and waits[0][0].startswith("the storage of /runs/x")
    assert sorted(ray.get(accumulator.deliveries.remote())) == [0, 1, 1, 2]


def test_only_a_storage_full_error_is_waited_out():
    assert storage_full_cause(ValueError("x")) is None
    inner = StorageFull("full")
    outer = RuntimeError("task failed")
    outer.cause = inner
    assert storage_full_cause(outer) is inner
