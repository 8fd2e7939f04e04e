"""The pair matrix split over shard actors answers exactly as one accumulator and as the log."""

from __future__ import annotations

import dataclasses
import tempfile
import time

import numpy as np
import pyarrow as pa
import pytest

from raymem.estimator.report import PairSelection
from raymem.estimator import log_replay
from raymem.actors import pair_shard
from raymem.actors.accumulator import get_or_create_accumulator
from raymem.cluster.connection import NAMESPACE
from raymem.errors import RaymemError
from raymem.store.trial_record import TrialRecord
from raymem.store.run_info import new_run_info, write_labels, write_run_info
from raymem.store.storage import RunStore
from raymem.store.trial_log import trial_path

pytestmark = pytest.mark.slow  # starts Ray

N, N_TEST, SUBSET = 50, 9, 35


@pytest.fixture
def local_ray(monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="rmt", dir="/tmp"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=NAMESPACE)
    yield ray
    ray.shutdown()


def make_run(run_dir, info):
    write_run_info(RunStore.open(str(run_dir)), info)
    return str(run_dir)


def records(run_id, count, seed=0):
    """Trials where examples 0..3 are memorized and drive test examples 0..3."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        mask = np.zeros(N, bool)
        mask[rng.choice(N, SUBSET, replace=False)] = True
        train_ok = np.where(np.arange(N) < 4, mask, rng.random(N) < 0.8)
        test_ok = rng.random(N_TEST) < 0.6
        test_ok[:4] = mask[:4]
        out.append(TrialRecord(run_id=run_id, trial_id=k, seed=k, mask=mask, train_correct=train_ok,
                               test_correct=test_ok))
    return out


def assert_same(a: pa.Table, b: pa.Table):
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
        assert np.allclose(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y), name


def test_shard_rows_cover_every_row_once():
    for n, s in ((50, 3), (7, 7), (1_281_167, 16)):
        rows = pair_shard.shard_rows(n, s)
        assert rows[0][0] == 0 and rows[-1][1] == n and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
        sizes = [b - a for a, b in rows]
        assert max(sizes) - min(sizes) <= 1


def test_sharded_accumulator_equals_unsharded_and_the_log_through_a_shard_crash(tmp_path, local_ray):
    ray = local_ray
    info = new_run_info(name="one", n_train=N, n_test=N_TEST, subset_size=SUBSET, seed=0,
                        config={"trials": 30}, fingerprint={}, source="ingest")
    one_dir = make_run(tmp_path / "one", info)
    three_dir = make_run(tmp_path / "three", dataclasses.replace(info, name="three"))
    original = np.arange(N) % 3
    flipped = original.copy()
    flipped[:4] = (flipped[:4] + 1) % 3  # canaries: the memorized examples carry flipped labels
    for run_dir in (one_dir, three_dir):
        write_labels(RunStore.open(run_dir), flipped, np.zeros(N_TEST, np.int64), original)
    one = get_or_create_accumulator(info, one_dir, with_pairs=True, batch_size=4)
    three = get_or_create_accumulator(dataclasses.replace(info, name="three"), three_dir, with_pairs=True,
                                      batch_size=4, pair_shards=3)
    assert ray.get(three.describe.remote())["pair_shards"] == 3
    recs = records(info.run_id, 30)
    for k, record in enumerate(recs):
        ray.get(one.absorb.remote(record))
        ray.get(three.absorb.remote(record))
        if k in (3, 17):  # delivered twice: counted once
            assert ray.get(three.absorb.remote(record))["counted"] is False
        if k == 12:  # a shard dies; Ray restarts it and it rebuilds its rows from the log
            shard = ray.get_actor("three.pairs-2-of-3", namespace=NAMESPACE)
            ray.kill(shard, no_restart=False)
    offline = log_replay.offline_view(RunStore.open(three_dir))
    every_pair = {"bars": offline.bars(simultaneous=True), "selected": PairSelection(-1.0, -1.0)}  # in order
    reads = [("pairs_table", {}), ("pairs_table", {"selected": PairSelection(0.05, 0.0)}),
             ("pairs_table", every_pair),
             ("influence_table", {"test_index": 2, "top": 7}), ("influence_table", {"test_index": 5, "top": 80}),
             ("mem_table", {}), ("status", {})]
    reads += [("influence_table", {"test_index": j, "top": 3}) for j in range(N_TEST)]
    for method, kwargs in reads:
        a = ray.get(getattr(one, method).remote(**kwargs))
        b = ray.get(getattr(three, method).remote(**kwargs))
        c = getattr(offline, method)(**kwargs)
        if method == "status":
            assert b["canaries"]["count"] == 4
            per_run = ("run", "source", "progress", "pairs_pending")  # names, where from, timings, buffers
            assert {k: v for k, v in a.items() if k not in per_run} == {k: v for k, v in b.items() if k not in per_run}
            assert {k: v for k, v in b.items() if k not in per_run} == {k: v for k, v in c.items() if k not in per_run}
            continue
        assert_same(a, b)
        assert_same(b, c)
    assert ray.get(three.pairs_table.remote(selected=PairSelection(-1.0, -1.0))).num_rows == N * N_TEST
    # a shard's user error reaches the caller as the same one sentence the offline reader raises
    with pytest.raises(RaymemError) as offline_error:
        offline.influence_table(test_index=N_TEST)
    with pytest.raises(RaymemError) as live_error:
        ray.get(three.influence_table.remote(test_index=N_TEST))
    assert str(live_error.value.cause) == str(offline_error.value)
    pairs = ray.get(three.pairs_table.remote())
    assert {(i, i) for i in range(4)} <= set(zip(pairs.column("train_index").to_pylist(),
                                                 pairs.column("test_index").to_pylist()))


def test_restarted_accumulator_reconciles_shards_with_the_log(tmp_path, local_ray):
    """A trial logged while a shard missed it (crash between log write and forward) is handed over on restart."""
    ray = local_ray
    info = new_run_info(name="rec", n_train=N, n_test=N_TEST, subset_size=SUBSET, seed=0,
                        config={"trials": 6}, fingerprint={}, source="ingest")
    run_dir = make_run(tmp_path / "rec", info)
    acc = get_or_create_accumulator(info, run_dir, with_pairs=True, batch_size=2, pair_shards=2)
    recs = records(info.run_id, 6, seed=1)
    for record in recs[:5]:
        ray.get(acc.absorb.remote(record))
    # simulate the crash window: the last trial reaches the log but no shard
    from raymem.store.trial_log import write_trial

    write_trial(RunStore.open(run_dir), recs[5])
    old_pid = ray.get(acc.describe.remote())["pid"]
    ray.kill(acc, no_restart=False)  # the accumulator restarts, rebuilds 6 trials, and reconciles
    deadline = time.monotonic() + 60
    while (described := ray.get(acc.describe.remote()))["pid"] == old_pid and time.monotonic() < deadline:
        time.sleep(0.2)
    assert described["pid"] != old_pid and described["trials"] == 6
    shard = ray.get_actor("rec.pairs-1-of-2", namespace=NAMESPACE)
    assert ray.get(shard.done_trial_ids.remote()) == list(range(6))
    assert_same(ray.get(acc.pairs_table.remote(selected=PairSelection(0.0, 0.0))),
                log_replay.offline_view(RunStore.open(run_dir)).pairs_table(
                    log_replay.offline_view(RunStore.open(run_dir)).bars(),
                    PairSelection(min_infl=0.0, min_mem=0.0)))


def restart_and_wait(ray, handle, timeout_s: float = 60.0) -> dict:
    """Kill an accumulator so that Ray restarts it; return describe() of the new process."""
    old_pid = ray.get(handle.describe.remote())["pid"]
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + timeout_s
    while (described := ray.get(handle.describe.remote()))["pid"] == old_pid and time.monotonic() < deadline:
        time.sleep(0.2)
    assert described["pid"] != old_pid
    return described


def test_shards_recover_from_a_hard_kill_a_deleted_trial_file_and_an_old_run_of_the_same_name(tmp_path, local_ray):
    ray = local_ray
    # an old run named "reuse" whose shards outlive its accumulator (killed for good)
    old = new_run_info(name="reuse", n_train=N, n_test=N_TEST, subset_size=SUBSET, seed=0,
                       config={"trials": 4}, fingerprint={}, source="ingest")
    old_dir = make_run(tmp_path / "old", old)
    acc = get_or_create_accumulator(old, old_dir, with_pairs=True, batch_size=2, pair_shards=2)
    for record in records(old.run_id, 4, seed=2):
        ray.get(acc.absorb.remote(record))
    ray.kill(acc, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # Ray releases the killed accumulator's name asynchronously
        try:
            ray.get_actor("reuse", namespace=NAMESPACE)
            time.sleep(0.1)
        except ValueError:
            break
    # a new run under the same name never uses the old run's shards
    info = dataclasses.replace(new_run_info(name="reuse", n_train=N, n_test=N_TEST, subset_size=SUBSET, seed=0,
                                            config={"trials": 8}, fingerprint={}, source="ingest"))
    run_dir = make_run(tmp_path / "new", info)
    acc = get_or_create_accumulator(info, run_dir, with_pairs=True, batch_size=2, pair_shards=2)
    names = [pair_shard.shard_name("reuse", k, 2) for k in range(2)]
    for name in names:
        described = ray.get(ray.get_actor(name, namespace=NAMESPACE).describe.remote())
        assert described["run_id"] == info.run_id and described["trials"] == 0
    recs = records(info.run_id, 8, seed=3)
    for k, record in enumerate(recs[:6]):
        ray.get(acc.absorb.remote(record))
        if k == 2:  # a shard killed for good: the next absorb starts it again, and it rebuilds from the log
            ray.kill(ray.get_actor(names[1], namespace=NAMESPACE), no_restart=True)
    # trial 1's file is deleted (as after a corruption) and the accumulator restarts: the shards drop it too
    RunStore.open(run_dir).delete(trial_path(1))
    assert restart_and_wait(ray, acc)["trials"] == 5
    for record in recs[6:]:
        ray.get(acc.absorb.remote(record))
    offline = log_replay.offline_view(RunStore.open(run_dir))
    for name in names:
        assert ray.get(ray.get_actor(name, namespace=NAMESPACE).done_trial_ids.remote()) == [0, 2, 3, 4, 5, 6, 7]
    assert_same(ray.get(acc.pairs_table.remote(selected=PairSelection(-1.0, -1.0))),
                offline.pairs_table(offline.bars(), PairSelection(min_infl=-1.0, min_mem=-1.0)))
    for j in range(N_TEST):
        assert_same(ray.get(acc.influence_table.remote(test_index=j, top=6)),
                    offline.influence_table(test_index=j, top=6))
    # a live accumulator's layout is never changed behind the user's back
    with pytest.raises(RaymemError, match="over 2 actor"):
        get_or_create_accumulator(info, run_dir, with_pairs=True, batch_size=2, pair_shards=3)
    shards = [ray.get_actor(name, namespace=NAMESPACE) for name in names]
    assert ray.get(acc.stop_shards.remote()) == 2
    for shard in shards:  # killed for good: not restarted
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(shard.describe.remote())
    # a run on the head's disk whose shards cannot fit in the head's memory is refused, not left waiting forever
    huge = new_run_info(name="huge", n_train=4, n_test=10**12, subset_size=3, seed=0,
                        config={"trials": 1}, fingerprint={}, source="ingest")
    with pytest.raises(RaymemError, match="shared storage"):
        get_or_create_accumulator(huge, make_run(tmp_path / "huge", huge), with_pairs=True, batch_size=2, pair_shards=2)
