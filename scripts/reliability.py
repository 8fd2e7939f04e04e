"""Fault scenarios for elastic raymem runs on a simulated multi-node Ray cluster; prints a Markdown table.

    .venv/bin/python scripts/reliability.py [--scenario NAME ...] [--workdir DIR]

Each scenario starts a ``ray.cluster_utils.Cluster`` on this machine (a head node without CPUs, so
trials run on worker nodes; worker nodes may carry fake GPUs), runs a tiny ``digits`` experiment in
a background thread, injects its fault from the calling thread, and audits the run afterwards:

- ``node-removed``: a worker node dies (its raylet is killed) while it runs a trial.
- ``nodes-added``: a worker node joins while the run goes on; concurrency is measured from the
  records' ``started`` / ``finished`` / ``node_id`` metadata.
- ``accumulator-killed``: the accumulator's process is SIGKILLed mid-run; Ray restarts it and it
  rebuilds its counts from the trial log.
- ``bad-deliveries``: records handed to ``absorb`` directly: each valid one twice, plus one with
  wrong shapes, one of another run and one whose mask is not the run's subset.

The audit counts a trial as *lost* when its id is missing from the log and as *double-counted*
when the accumulator holds more trials than the log; it also compares the accumulator's tables with
the same tables recomputed offline from the log. ``tests/test_faults.py`` imports this file, so the
tests and this script run one implementation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raymem.estimator import log_replay
from raymem.actors.accumulator import get_or_create_accumulator
from raymem.cluster.connection import NAMESPACE
from raymem.store.trial_record import TrialRecord
from raymem.store.run_info import read_run_info
from raymem.store.storage import RunStore
from raymem.estimator.subsets import subset_mask, trial_seed
from raymem.store.trial_log import TRIALS_DIR, iter_trials, trial_ids
from raymem.config.experiment import ExperimentConfig, resolve_config
from raymem.driver.run import RunResult, prepare_run, DriverOptions, run_experiment

#: Seconds a scenario waits for its run (or for the moment to inject its fault) before giving up.
RUN_TIMEOUT_S = 150.0
#: Columns of the printed table, in order.
TABLE_COLUMNS = (
    "scenario", "faults injected", "trials asked", "trials in log", "trials lost", "trials double-counted",
    "retries", "actor counts == log recount", "wall seconds",
)


@dataclass
class Outcome:
    """What one scenario did and what its audit found (``details`` holds scenario-specific measurements)."""

    scenario: str
    faults: str
    run_dir: str
    name: str
    trials_asked: int
    trials_in_log: int
    lost: int
    double_counted: int
    retries: int
    counts_match_log: bool
    wall_seconds: float
    details: dict = field(default_factory=dict)

    def row(self) -> tuple:
        return (
            self.scenario, self.faults, self.trials_asked, self.trials_in_log, self.lost, self.double_counted,
            self.retries, "yes" if self.counts_match_log else "NO", f"{self.wall_seconds:.1f}",
        )


# ---- the simulated cluster ------------------------------------------------------------------

@contextmanager
def simulated_cluster(head_cpus: float = 0):
    """Yield a ``ray.cluster_utils.Cluster`` (head node only) with this process connected as its driver.

    Ray keeps its files in a fresh ``RAY_TMPDIR`` (so nothing attaches to another Ray on the machine)
    and ``RAY_ADDRESS`` is unset while the cluster lives; both are restored, and everything shut
    down, on exit. The accumulator's pin (``node:__internal_head__``) exists only on the head node.
    """
    import ray
    from ray.cluster_utils import Cluster

    saved = {key: os.environ.get(key) for key in ("RAY_TMPDIR", "RAY_ADDRESS")}
    ray_tmp = tempfile.mkdtemp(prefix="rmf", dir="/tmp")
    os.environ["RAY_TMPDIR"] = ray_tmp
    os.environ.pop("RAY_ADDRESS", None)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(ray_tmp, ignore_errors=True)


def add_worker(cluster, num_cpus: float = 1, num_gpus: float = 0, wait_for_all: bool = True):
    """Add a worker node to ``cluster``, wait until Ray lists it, and return it (``.node_id`` is its hex id).

    ``wait_for_all``: also wait until Ray's node list matches the cluster's, which after a node was killed
    means until Ray has declared that node dead (missed heartbeats: many seconds); False waits for the new
    node to start only.
    """
    node = cluster.add_node(num_cpus=num_cpus, num_gpus=num_gpus)
    if wait_for_all:
        cluster.wait_for_nodes()
    return node


# ---- a run in the background ------------------------------------------------------------------

class WatchedRun:
    """A run going on elsewhere (a thread, another process) whose log the caller watches.

    Subclasses set ``name`` and ``run_dir`` and provide ``running`` and ``wait(timeout)``.
    """

    name: str
    run_dir: str

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def wait(self, timeout: float = RUN_TIMEOUT_S):
        raise NotImplementedError

    def log_ids(self) -> list[int]:
        """Return the ids of the trials in the run's log so far."""
        if not Path(self.run_dir, TRIALS_DIR).is_dir():
            return []
        return trial_ids(RunStore.open(self.run_dir))

    def wait_for_log(self, count: int, timeout: float = RUN_TIMEOUT_S) -> list[int]:
        """Block until the log holds at least ``count`` trials; return their ids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = self.log_ids()
            if len(ids) >= count:
                return ids
            if not self.running:
                self.wait(0)  # raises the run's error, if any
                raise AssertionError(f"run {self.name} ended with {len(ids)} trials in its log, expected {count}")
            time.sleep(0.1)
        raise TimeoutError(f"run {self.name}: fewer than {count} trials in the log after {timeout:.0f} s")


class BackgroundRun(WatchedRun):
    """``run_experiment`` on a thread of this process (the driver), so the caller can inject faults meanwhile."""

    def __init__(self, config: ExperimentConfig, name: str, run_dir: str):
        self.config, self.name, self.run_dir = config, name, run_dir
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.started = time.time()
        self._thread = threading.Thread(target=self._run, name=f"raymem-run-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = run_experiment(self.config, name=self.name, run_uri=self.run_dir,
                                         options=DriverOptions(progress=False))
        except BaseException as exc:  # handed to the caller by wait()
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> RunResult:
        """Return the run's RunResult; raise its error, or TimeoutError when it does not end in ``timeout``."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"run {self.name} did not finish within {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self.result


def tiny_config(trials: int, **overrides) -> ExperimentConfig:
    """The digits preset cut down to seconds per trial on a CPU (``overrides`` win)."""
    return resolve_config("digits", {"trials": trials, "epochs": 2, "batch_size": 64, **overrides})


def records(run_dir: str) -> list[TrialRecord]:
    return list(iter_trials(RunStore.open(run_dir)))


def accumulator_handle(name: str):
    import ray

    return ray.get_actor(name, namespace=NAMESPACE)


# ---- the audit ----------------------------------------------------------------------------------

def audit(run_dir: str, name: str, trials_asked: int) -> dict:
    """Compare the log with the trials asked for, and the live accumulator with an offline recount of the log.

    Returns a dict: ``log_ids``, ``lost`` (asked ids missing from the log), ``unexpected`` (log ids
    not asked for), ``actor_trials``, ``double_counted`` (actor trials beyond the log's),
    ``mem_tables_equal`` and ``influence_tables_equal`` (actor vs offline), ``counts_match_log``
    (all of: same trial count, both tables equal), and the actor's ``describe()``.
    """
    import ray

    store = RunStore.open(run_dir)
    ids = trial_ids(store)
    handle = accumulator_handle(name)
    described = ray.get(handle.describe.remote())
    offline = log_replay.offline_view(store)
    mem_equal = ray.get(handle.mem_table.remote()).equals(offline.mem_table())
    infl_equal = ray.get(handle.influence_table.remote(test_index=0, top=20)).equals(offline.influence_table(0, top=20))
    return {
        "log_ids": ids,
        "lost": sorted(set(range(trials_asked)) - set(ids)),
        "unexpected": sorted(set(ids) - set(range(trials_asked))),
        "actor_trials": described["trials"],
        "offline_trials": offline.counts.trials,
        "double_counted": max(0, described["trials"] - len(ids)),
        "mem_tables_equal": mem_equal,
        "influence_tables_equal": infl_equal,
        "counts_match_log": described["trials"] == offline.counts.trials == len(ids) and mem_equal and infl_equal,
        "describe": described,
    }


def _outcome(scenario: str, faults: str, run: BackgroundRun | None, run_dir: str, name: str,
             trials_asked: int, retries: int, started: float, details: dict) -> Outcome:
    found = audit(run_dir, name, trials_asked)
    return Outcome(
        scenario=scenario, faults=faults, run_dir=run_dir, name=name, trials_asked=trials_asked,
        trials_in_log=len(found["log_ids"]), lost=len(found["lost"]), double_counted=found["double_counted"],
        retries=retries, counts_match_log=found["counts_match_log"], wall_seconds=time.perf_counter() - started,
        details={**details, "audit": found, "result": run.result if run else None},
    )


def max_overlap(spans: list[tuple[float, float]], lo: float = -np.inf, hi: float = np.inf) -> int:
    """Return the most spans ``(start, end)`` running at one moment of ``[lo, hi)``.

    The count only rises at a start, so the maximum is reached at ``lo`` or at a start inside the window.
    """
    moments = [s for s, _ in spans if lo <= s < hi] + ([lo] if np.isfinite(lo) else [])
    return max((sum(1 for s, e in spans if s <= t < e) for t in moments), default=0)


# ---- the scenarios ------------------------------------------------------------------------------

def node_removed(cluster, workdir: str | Path, trials: int = 6, epochs: int = 8, delay_s: float = 1.0) -> Outcome:
    """Two 1-CPU worker nodes; ``delay_s`` after one of them finished a trial, kill it.

    Its worker is warm by then and takes the next queued trial at once; with ``epochs`` a warm trial
    lasts a few seconds, so the node dies in the middle of that trial.
    """
    started = time.perf_counter()
    nodes = [add_worker(cluster), add_worker(cluster)]
    run_dir, name = str(Path(workdir, "node-removed")), "node-removed"
    run = BackgroundRun(tiny_config(trials, epochs=epochs), name, run_dir)
    first = run.wait_for_log(1)[0]
    victim_id = next(r.metadata["node_id"] for r in records(run_dir) if r.trial_id == first)
    victim = next(n for n in nodes if n.node_id == victim_id)
    time.sleep(delay_s)
    removed_at = time.time()
    cluster.remove_node(victim, allow_graceful=False)
    result = run.wait()
    late_on_victim = [r.trial_id for r in records(run_dir)
                      if r.metadata["node_id"] == victim_id and r.metadata["finished"] > removed_at]
    return _outcome(
        "node-removed", "1 of 2 worker nodes killed mid-run", run, run_dir, name, trials,
        sum(result.retried.values()), started,
        {"removed_node_id": victim_id, "removed_at": removed_at, "finished_on_removed_node_after": late_on_victim},
    )


def nodes_added(cluster, workdir: str | Path, trials: int = 10, epochs: int = 4) -> Outcome:
    """One worker node (1 CPU, 1 fake GPU; one trial at a time); a second joins after the first trial ends.

    ``epochs`` keeps trials long enough that the new node (which first imports TensorFlow) gets some.
    """
    started = time.perf_counter()
    first_node = add_worker(cluster, num_cpus=1, num_gpus=1)
    run_dir, name = str(Path(workdir, "nodes-added")), "nodes-added"
    config = tiny_config(trials, epochs=epochs, gpus_per_trial=1.0, cpus_per_trial=1.0)
    run = BackgroundRun(config, name, run_dir)
    run.wait_for_log(1)
    joined_at = time.time()
    new_node = add_worker(cluster, num_cpus=1, num_gpus=1)
    result = run.wait()
    spans = [(r.metadata["started"], r.metadata["finished"]) for r in records(run_dir)]
    by_node: dict[str, list[int]] = {}
    for r in records(run_dir):
        by_node.setdefault(r.metadata["node_id"], []).append(r.trial_id)
    return _outcome(
        "nodes-added", "1 worker node (1 fake GPU) joined mid-run", run, run_dir, name, trials,
        sum(result.retried.values()), started,
        {
            "first_node_id": first_node.node_id, "new_node_id": new_node.node_id, "joined_at": joined_at,
            "overlap_before": max_overlap(spans, hi=joined_at), "overlap_after": max_overlap(spans, lo=joined_at),
            "trials_by_node": by_node, "max_in_flight": result.max_in_flight,
        },
    )


def accumulator_killed(cluster, workdir: str | Path, trials: int = 6) -> Outcome:
    """Two 1-CPU worker nodes; SIGKILL the accumulator's process once two trials are in the log."""
    import ray

    started = time.perf_counter()
    for _ in range(2):
        add_worker(cluster)
    run_dir, name = str(Path(workdir, "accumulator-killed")), "accumulator-killed"
    run = BackgroundRun(tiny_config(trials), name, run_dir)
    run.wait_for_log(2)
    before = ray.get(accumulator_handle(name).describe.remote())
    os.kill(before["pid"], signal.SIGKILL)  # the head node is this machine
    result = run.wait()
    after = ray.get(accumulator_handle(name).describe.remote())
    return _outcome(
        "accumulator-killed", "accumulator process SIGKILLed mid-run", run, run_dir, name, trials,
        sum(result.retried.values()), started,
        {"before": before, "after": after},
    )


def _record(info, train_labels, test_labels, trial_id: int, *, mask=None, run_id=None, n_train=None) -> TrialRecord:
    """A trial record of run ``info`` with random predictions; the keywords make it wrong on purpose."""
    n = info.n_train if n_train is None else n_train
    rng = np.random.default_rng(trial_id)
    if mask is None:
        mask = subset_mask(info.seed, trial_id, info.n_train, info.subset_size)[:n]
    return TrialRecord.from_predictions(
        run_id=run_id or info.run_id, trial_id=trial_id, seed=trial_seed(info.seed, trial_id), mask=mask,
        train_pred=rng.integers(0, 10, n), test_pred=rng.integers(0, 10, info.n_test),
        train_labels=train_labels[:n], test_labels=test_labels, metadata={"source": "reliability"},
    )


def bad_deliveries(cluster, workdir: str | Path, trials: int = 2) -> Outcome:
    """Hand ``absorb`` each valid record twice, then three invalid ones; record every ack and every rejection."""
    import ray

    from raymem.data.datasets import load_dataset

    started = time.perf_counter()
    run_dir, name = str(Path(workdir, "bad-deliveries")), "bad-deliveries"
    config = tiny_config(trials)
    store = RunStore.open(run_dir)
    data = load_dataset(config.dataset)
    info, train_labels = prepare_run(config, store, name, data)
    handle = get_or_create_accumulator(info, run_dir, with_pairs=True, batch_size=config.estimator.pair_batch)
    acks = {}
    for k in range(trials):
        record = _record(info, train_labels, data.y_test, k)
        acks[k] = [ray.get(handle.absorb.remote(record)) for _ in range(2)]  # the second is a redelivery
    bad = {
        "wrong shapes": _record(info, train_labels, data.y_test, trials, n_train=info.n_train - 1),
        "other run": _record(info, train_labels, data.y_test, trials + 1, run_id="another-run"),
        "not the run's subset": _record(
            info, train_labels, data.y_test, trials + 2,
            mask=subset_mask(info.seed, trials + 3, info.n_train, info.subset_size),
        ),
    }
    rejections = {}
    for what, record in bad.items():
        try:
            ray.get(handle.absorb.remote(record))
            rejections[what] = None
        except ray.exceptions.RayTaskError as exc:
            rejections[what] = exc
    trial_files = sorted(os.listdir(Path(run_dir, TRIALS_DIR)))
    return _outcome(
        "bad-deliveries", f"{trials} duplicate deliveries, {len(bad)} invalid records", None, run_dir, name, trials,
        0, started, {"acks": acks, "rejections": rejections, "trial_files": trial_files, "info": read_run_info(store)},
    )


SCENARIOS = {
    "node-removed": node_removed,
    "nodes-added": nodes_added,
    "accumulator-killed": accumulator_killed,
    "bad-deliveries": bad_deliveries,
}


# ---- the script ---------------------------------------------------------------------------------

def markdown_table(outcomes: list[Outcome]) -> str:
    """Return the outcomes as a Markdown table with TABLE_COLUMNS."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(str(v) for v in o.row()) + " |" for o in outcomes]
    return "\n".join(lines)


def rejection_summary(outcome: Outcome) -> list[str]:
    """One line per invalid record of ``bad-deliveries``: how it came back."""
    lines = []
    for what, exc in outcome.details.get("rejections", {}).items():
        if exc is None:
            lines.append(f"- {what}: ACCEPTED (should have been rejected)")
        else:
            cause = exc.cause
            message = str(cause).strip().splitlines()[-1]
            lines.append(f"- {what}: {type(exc).__name__} caused by {type(cause).__name__}: {message}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable)")
    parser.add_argument("--workdir", help="where the runs go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="raymem-reliability-")
    outcomes = []
    for scenario in args.scenario or list(SCENARIOS):
        with simulated_cluster() as cluster:
            outcomes.append(SCENARIOS[scenario](cluster, workdir))
    print(f"\nruns in {workdir}\n")
    print(markdown_table(outcomes))
    for outcome in outcomes:
        if outcome.scenario == "nodes-added":
            d = outcome.details
            print(f"\nnodes-added: most trials at once before the join {d['overlap_before']}, "
                  f"after {d['overlap_after']}; "
                  f"trials on the new node: {len(d['trials_by_node'].get(d['new_node_id'], []))}")
        if outcome.scenario == "accumulator-killed":
            d = outcome.details
            print(f"\naccumulator-killed: pid {d['before']['pid']} -> {d['after']['pid']}, "
                  f"rebuilt {d['after']['rebuilt_trials']} trials from the log on restart, "
                  f"{d['after']['duplicates']} replayed deliveries acknowledged without counting")
        if outcome.scenario == "bad-deliveries":
            print("\nbad-deliveries:")
            print("\n".join(rejection_summary(outcome)))
    failed = [o.scenario for o in outcomes if o.lost or o.double_counted or not o.counts_match_log]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
