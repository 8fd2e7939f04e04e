"""Reads during absorbs: the accumulator's threads never change what is counted, and every read is consistent."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scripts_loader import load_script  # tests/scripts_loader.py

from raymem.actors.accumulator import Accumulator
from raymem.actors.live_counts import LiveCounts, add_outer_products_gil_free
from raymem.errors import RaymemError
from raymem.estimator.counts import Counts
from raymem.estimator.log_replay import counts_from_log, offline_view
from raymem.store.storage import RunStore

def test_gil_free_update_equals_the_product():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 5, (1100, 37)).astype(np.float32)
    masks = rng.random((9, 1100)) < 0.7
    correct = rng.random((9, 37)) < 0.5
    expected = h + masks.T.astype(np.float32) @ correct.astype(np.float32)
    add_outer_products_gil_free(h, masks.astype(np.float32), correct.astype(np.float32), chunk_rows=256)
    assert np.array_equal(h, expected)


def test_every_pair_snapshot_matches_its_own_trials_while_absorbs_go_on():
    n, n_test, t = 300, 40, 200
    rng = np.random.default_rng(1)
    masks = rng.random((t, n)) < 0.7
    train = rng.random((t, n)) < 0.8
    test = rng.random((t, n_test)) < 0.6
    live = LiveCounts(Counts.empty(n, n_test, batch_size=8))
    bad: list = []
    done = threading.Event()

    def reader():
        reads = 0
        while not done.is_set() or reads < 3:
            with live.snapshot(pairs=True) as snap:
                ids = sorted(snap.trial_ids)
                expected = masks[ids].T.astype(np.float32) @ test[ids].astype(np.float32)
                if not np.array_equal(snap.h_in, expected) or snap.trials != len(ids) \
                        or not np.array_equal(snap.all.n_in, masks[ids].sum(axis=0)):
                    bad.append(len(ids))
            reads += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for th in threads:
        th.start()
    for k in range(t):
        assert live.add(k, masks[k], train[k], test[k])
        assert not live.add(k, masks[k], train[k], test[k])  # a second delivery is not counted
    done.set()
    for th in threads:
        th.join()
    live.close()
    assert not bad, f"inconsistent snapshots at {bad[:5]} trials"
    assert live.flush() == t
    assert np.array_equal(live.counts.h_in, masks.T.astype(np.float32) @ test.astype(np.float32))


def test_reader_loop_during_absorbs_does_not_change_what_is_counted(tmp_path):
    bench = load_script("bench_accumulator.py")
    uri, info = bench.make_run(str(tmp_path / "run"), n_train=400, n_test=60)
    acc = Accumulator(uri, with_pairs=True, batch_size=4)
    assert acc.reader is not None  # pair reads go to the reader process over the shared matrix
    records = [bench.synthetic_record(info, k) for k in range(40)]
    stop = threading.Event()
    reads = {"pairs": 0, "status": 0}

    def read_loop():
        while not stop.is_set():
            acc.pairs_table()
            reads["pairs"] += 1
            assert acc.status()["trials_done"] <= len(records)
            reads["status"] += 1

    readers = [threading.Thread(target=read_loop) for _ in range(2)]
    for th in readers:
        th.start()
    absorbers = [threading.Thread(target=lambda part=part: [acc.absorb(r) for r in part])
                 for part in (records[0::2], records[1::2], records[::5])]  # the third delivers some again
    for th in absorbers:
        th.start()
    for th in absorbers:
        th.join()
    stop.set()
    for th in readers:
        th.join()
    assert reads["pairs"] >= 2
    assert acc.describe()["trials"] == 40 and acc.describe()["duplicates"] == 8
    store = RunStore.open(uri)
    offline = counts_from_log(store, info, with_pairs=True)
    acc.flush()
    with acc.live.snapshot(pairs=True) as live:
        assert live.trial_ids == offline.trial_ids == set(range(40))
        for name in ("n_in", "in_hits", "total_hits", "test_hits"):
            assert np.array_equal(getattr(live.all, name), getattr(offline.all, name))
            assert np.array_equal(getattr(live.even, name), getattr(offline.even, name))
        assert np.array_equal(live.h_in, offline.pairs_ready())
    assert acc.pairs_table().equals(offline_view(store).pairs_table())
    assert acc.influence_table(test_index=3, top=5).equals(offline_view(store).influence_table(test_index=3, top=5))
    with pytest.raises(RaymemError, match="test_index"):
        acc.influence_table(test_index=10_000)  # the child's user error arrives as itself
    acc.live.close()
    acc.reader.close()
