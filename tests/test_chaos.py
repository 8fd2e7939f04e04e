"""A small fault storm (``scripts/chaos.py``): node churn, an accumulator kill while a pair shard replays, and a
driver killed and started again, all in one run; nothing lost, nothing counted twice, counts equal the log."""

from __future__ import annotations


import pytest
from scripts_loader import load_script  # tests/scripts_loader.py

from raymem.store.storage import RunStore
from raymem.store.trial_log import trial_ids

chaos = load_script("chaos.py")

SMALL = chaos.StormPlan(trials=8, workers=2, epochs=2, node_kills=1, node_period_s=2.0, accumulator_kills_at=(0.25,),
                        driver_kill_at=0.5, min_faults=5, timeout_s=240.0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_small_storm_loses_nothing_and_counts_each_trial_once(tmp_path):
    with chaos.reliability.simulated_cluster() as cluster:
        outcome = chaos.run_storm(cluster, tmp_path, SMALL, seed=1)
    kinds = outcome.faults_by_kind()
    assert kinds == {"node killed": 1, "node added": 1, "accumulator killed": 1, "pair shard killed": 1,
                     "driver killed": 1}, outcome.faults
    assert outcome.driver_starts == 2
    assert trial_ids(RunStore.open(outcome.run_dir)) == list(range(SMALL.trials))  # each id once, none missing
    assert (outcome.trials_lost, outcome.trials_double_counted, outcome.counts_match_log) == (0, 0, True)
    assert outcome.shards_match_log
    assert outcome.max_epochs_retrained <= SMALL.checkpoint_every
    assert all(outcome.checks().values()), outcome.checks()


class _Record:
    def __init__(self, trial_id, started, resumed=0, attempt=1):
        self.trial_id = trial_id
        self.metadata = {"started": started, "resumed_from_epoch": resumed, "attempt": attempt}


def test_epochs_retrained_counts_from_the_newest_checkpoint_an_earlier_attempt_wrote(tmp_path):
    watcher = chaos.CheckpointWatcher(str(tmp_path))
    watcher.stop()
    watcher.seen = {(0, 1): 10.0, (0, 2): 11.0, (0, 3): 30.0,   # trial 0: epochs 1-2 before its retry at 20
                    (1, 1): 10.0, (1, 2): 11.0,                 # trial 1: the same, but its retry started over
                    (2, 1): 25.0, (2, 2): 26.0}                 # trial 2: never killed (its own checkpoints)
    records = [_Record(0, 20.0, resumed=2, attempt=2), _Record(1, 20.0, resumed=0, attempt=2), _Record(2, 20.0),
               _Record(3, 20.0, resumed=0, attempt=2)]         # trial 3: killed before its first checkpoint
    assert chaos.epochs_retrained(records, watcher, epochs=4) == {0: 1, 1: 3, 3: 1}
    # a retry after the last epoch was saved trains nothing again
    assert chaos.epochs_retrained([_Record(0, 40.0, resumed=3, attempt=2)], watcher, epochs=3) == {0: 0}
