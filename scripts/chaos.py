"""A fault storm: one run of digits trials on a simulated cluster while nodes, the accumulator and the driver die.

    PYTHONPATH=. .venv/bin/python scripts/chaos.py [--quick] [--json] [--baseline] [--seed S] [--workdir DIR]

``scripts/reliability.py`` injects one fault per run; a preemptible cluster produces them continuously and
several at once. This script starts a ``ray.cluster_utils.Cluster`` (a head node without CPUs and 1-CPU
worker nodes, as reliability.py does), runs ``raymem run`` as a separate driver process on it (checkpoints
every epoch, the pair matrix split over two shard actors) and, while the run goes on:

- every few seconds kills a random worker node (its raylet and workers, no grace) and adds a fresh one;
- SIGKILLs the accumulator's process, the first time together with a node kill, the last time while a pair
  shard that was just SIGKILLed is restarting (Ray reports it RESTARTING: its process starts and replays the
  log), so the accumulator's restart and the shard's replay overlap;
- SIGKILLs the driver process once and starts it again (it resumes from the log; trials in flight resume
  from their checkpoints).

Afterwards it audits the run with reliability.py's audit (trial ids in the log, the live accumulator
against an offline recount of the log), checks that each pair shard holds exactly the log's trials, and
measures the epochs a killed trial trained again: the newest checkpoint its earlier attempts wrote (a
watcher notes every checkpoint file with its write time while the run goes on) plus the epoch in progress,
minus the epoch its final attempt resumed from (``resumed_from_epoch`` in the record's metadata). With
checkpoints every E epochs no trial may retrain more than E. It prints a Markdown table (``--json``: one
JSON object) and exits 1 when any check fails. ``--quick`` is a smaller storm (under 10 minutes on 2
cores, still at least 10 faults); ``--baseline`` also times the same run without faults.
``tests/test_chaos.py`` runs a smaller storm through :func:`run_storm`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reliability.py, beside this file

import reliability  # noqa: E402
from raymem.actors.pair_shard import shard_name  # noqa: E402
from raymem.cluster.connection import AUTH_MODE_ENV, NAMESPACE  # noqa: E402
from raymem.training.checkpoints import CHECKPOINTS_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Seconds between two looks at the run (its log, the next fault due).
TICK_S = 0.25
#: Seconds between two scans of the run's checkpoint files.
WATCH_S = 0.1


@dataclass(frozen=True)
class StormPlan:
    """What one storm trains and which faults it injects.

    ``accumulator_kills_at`` and ``driver_kill_at`` are fractions of the trials in the log at which the
    fault fires; node churn (one kill and one add) fires every ``node_period_s`` once a trial is logged,
    ``node_kills`` times. The last accumulator kill overlaps a pair shard's replay when ``pair_shards`` > 1.
    """

    trials: int = 40
    workers: int = 4
    epochs: int = 3
    node_kills: int = 8
    node_period_s: float = 6.0
    accumulator_kills_at: tuple[float, ...] = (0.15, 0.6)
    driver_kill_at: float | None = 0.35
    pair_shards: int = 2
    checkpoint_every: int = 1
    min_faults: int = 10
    timeout_s: float = 1500.0


FULL = StormPlan()
QUICK = StormPlan(trials=16, workers=3, epochs=3, node_kills=4, node_period_s=5.0,
                  accumulator_kills_at=(0.2, 0.6), driver_kill_at=0.4, timeout_s=540.0)


# ---- the driver, a process of its own ------------------------------------------------------------

class DriverProcess(reliability.WatchedRun):
    """``raymem run`` of the plan's run in a child process (its own session), connected to ``address``."""

    def __init__(self, plan: StormPlan, name: str, workdir: str | Path, address: str):
        self.plan, self.name, self.workdir, self.address = plan, name, str(workdir), address
        self.run_dir = str(Path(workdir, name))
        self.starts: list[float] = []
        self.proc: subprocess.Popen | None = None
        self.start()

    def command(self) -> list[str]:
        p = self.plan
        return [sys.executable, "-m", "raymem.cli", "run", "digits", "--trials", str(p.trials),
                "--epochs", str(p.epochs), "--batch-size", "64", "--name", self.name, "--storage", self.workdir,
                "--address", self.address, "--checkpoint-every", str(p.checkpoint_every),
                "--pair-shards", str(p.pair_shards), "--max-attempts", "20", "--quiet", "--json"]

    @staticmethod
    def environment() -> dict:
        """This process's environment, with this checkout's raymem first and Ray's auth mode made explicit.

        The simulated cluster runs in this process's auth mode (none unless RAY_AUTH_MODE says otherwise);
        left to itself a driver that finds ``~/.ray/auth_token`` turns token mode on, and workers without
        the token then cannot reach it (every trial fails with OwnerDiedError).
        """
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path, AUTH_MODE_ENV: os.environ.get(AUTH_MODE_ENV, "disabled")}

    def start(self) -> None:
        self.log_path = Path(self.workdir, f"{self.name}.driver-{len(self.starts) + 1}.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            # a session of its own: the kill reaches the driver and nothing of this process
            self.proc = subprocess.Popen(self.command(), env=self.environment(), stdout=log,
                                         stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=REPO)
        self.starts.append(time.time())

    def kill(self) -> None:
        """SIGKILL the driver (and anything it started) and reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait(self, timeout: float = reliability.RUN_TIMEOUT_S) -> dict:
        """The last driver's ``--json`` result; raise RuntimeError when it failed, TimeoutError when it runs on."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"driver of {self.name} still running after {timeout:.0f} s") from None
        text = self.output()
        if code != 0:
            raise RuntimeError(f"driver of {self.name} exited {code}:\n{text[-3000:]}")
        return json.loads(text[text.index("{"):text.rindex("}") + 1])


# ---- what the storm watches ------------------------------------------------------------------------

class CheckpointWatcher:
    """Notes every checkpoint manifest (``checkpoints/trial-K/epoch-E.json``) of a run with its write time.

    Checkpoints are deleted once their trial is acknowledged, so only a watcher sees what an attempt that
    died had saved.
    """

    def __init__(self, run_dir: str):
        self.root = Path(run_dir, CHECKPOINTS_DIR)
        self.seen: dict[tuple[int, int], float] = {}  # (trial id, epoch) -> mtime of its manifest
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chaos-checkpoints", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_S):
            self.scan()

    def scan(self) -> None:
        try:
            trials = [d for d in os.scandir(self.root) if d.name.startswith("trial-")]
        except FileNotFoundError:
            return
        for trial in trials:
            try:
                entries = list(os.scandir(trial.path))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith("epoch-") and entry.name.endswith(".json"):
                    key = (int(trial.name.split("-")[1]), int(entry.name[6:-5]))
                    try:
                        self.seen.setdefault(key, entry.stat().st_mtime)
                    except FileNotFoundError:
                        pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def saved_before(self, trial_id: int, moment: float) -> int:
        """The newest epoch trial ``trial_id`` had checkpointed before ``moment`` (0: none seen)."""
        return max((e for (k, e), t in self.seen.items() if k == trial_id and t < moment), default=0)


def epochs_retrained(records: list, watcher: CheckpointWatcher, epochs: int) -> dict[int, int]:
    """Per trial whose earlier attempt died: the epochs its final attempt trained again.

    An earlier attempt reached its newest checkpoint and was inside the next epoch (counted whole) when it
    died; the final attempt resumed from ``resumed_from_epoch``. A trial counts as killed when its final
    attempt is a retry (``attempt`` > 1), resumed from a checkpoint, or started after checkpoints of it
    were written; a killed attempt that saved nothing (and whose retry came from a new driver) shows none of
    these, and retrained at most the epoch it was in.
    """
    retrained = {}
    for record in records:
        meta = record.metadata
        saved = watcher.saved_before(record.trial_id, meta["started"])
        resumed = int(meta.get("resumed_from_epoch", 0))
        if saved or resumed or int(meta.get("attempt", 1)) > 1:
            retrained[record.trial_id] = max(0, min(saved + 1, epochs) - resumed)
    return retrained


def actor_process(handle) -> tuple[int, str]:
    """(pid, state) of an actor as Ray's control store has them; state is ALIVE, RESTARTING, ..."""
    from ray._private import state

    info = state.actors(actor_id=handle._actor_id.hex())
    return int(info.get("Pid") or 0), str(info.get("State"))


# ---- the faults ------------------------------------------------------------------------------------

@dataclass
class Fault:
    kind: str
    at: float          # seconds since the storm began
    detail: str = ""


@dataclass
class Injector:
    """Fires the plan's faults at the cluster, the run's actors and the driver; keeps the list of those fired."""

    cluster: object
    plan: StormPlan
    driver: DriverProcess
    rng: random.Random
    began: float = field(default_factory=time.monotonic)
    faults: list[Fault] = field(default_factory=list)
    node_kills: int = 0
    accumulator_kills: int = 0
    driver_killed: bool = False
    killed_during_replay: bool | None = None
    _last_churn: float | None = None

    def note(self, kind: str, detail: str = "") -> None:
        self.faults.append(Fault(kind, round(time.monotonic() - self.began, 1), detail))

    def tick(self, logged: int) -> None:
        """Fire every fault due now that ``logged`` trials are in the log."""
        plan, now = self.plan, time.monotonic()
        if logged and self._last_churn is None:
            self._last_churn = now
        kills_at = plan.accumulator_kills_at
        if self.accumulator_kills < len(kills_at) and logged >= kills_at[self.accumulator_kills] * plan.trials:
            last = self.accumulator_kills == len(kills_at) - 1
            if last and plan.pair_shards > 1:
                self.kill_accumulator_during_replay()
            else:
                self.kill_accumulator()
                if self.accumulator_kills == 1 and self.node_kills < plan.node_kills:
                    self.churn()  # a trial's node dies while the accumulator restarts
        if plan.driver_kill_at is not None and not self.driver_killed and logged >= plan.driver_kill_at * plan.trials:
            self.kill_driver()
        # every node_period_s, and at the latest spread evenly over the run, so that every kill fires before its end
        behind = logged >= (self.node_kills + 1) / (plan.node_kills + 1) * plan.trials
        if self._last_churn is not None and self.node_kills < plan.node_kills \
                and (now - self._last_churn >= plan.node_period_s or behind):
            self.churn()

    def churn(self) -> None:
        """Kill a random worker node without grace, then add a fresh one."""
        victim = self.rng.choice(list(self.cluster.worker_nodes))
        self.cluster.remove_node(victim, allow_graceful=False)
        self.node_kills += 1
        self.note("node killed", victim.node_id[:8])
        node = reliability.add_worker(self.cluster, wait_for_all=False)  # the storm goes on meanwhile
        self.note("node added", node.node_id[:8])
        self._last_churn = time.monotonic()

    def _accumulator_pid(self) -> int:
        import ray

        return ray.get(reliability.accumulator_handle(self.driver.name).describe.remote(), timeout=120)["pid"]

    def kill_accumulator(self, detail: str = "") -> None:
        pid = self._accumulator_pid()
        os.kill(pid, signal.SIGKILL)  # the head node is this machine
        self.accumulator_kills += 1
        self.note("accumulator killed", detail or f"pid {pid}")

    def kill_accumulator_during_replay(self) -> None:
        """SIGKILL pair shard 1, and the accumulator while Ray restarts that shard (it replays the log)."""
        import ray

        pid = self._accumulator_pid()
        shard = ray.get_actor(shard_name(self.driver.name, 0, self.plan.pair_shards), namespace=NAMESPACE)
        shard_pid, _ = actor_process(shard)
        os.kill(shard_pid, signal.SIGKILL)
        self.note("pair shard killed", f"pid {shard_pid}")
        deadline = time.monotonic() + 10
        state = "ALIVE"
        while time.monotonic() < deadline:
            now_pid, state = actor_process(shard)
            if state != "ALIVE" or now_pid != shard_pid:
                break
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        self.accumulator_kills += 1
        self.killed_during_replay = state != "ALIVE"
        self.note("accumulator killed", f"pid {pid}, pair shard 1 {state}")

    def kill_driver(self) -> None:
        self.driver.kill()
        self.driver_killed = True
        self.note("driver killed", f"pid {self.driver.proc.pid}")
        self.driver.start()


# ---- one storm ---------------------------------------------------------------------------------------

@dataclass
class StormOutcome:
    """What a storm did and what its audit found (``as_json`` is what ``--json`` prints)."""

    name: str
    run_dir: str
    plan: StormPlan
    trials_in_log: int
    trials_lost: int
    trials_double_counted: int
    counts_match_log: bool
    shards_match_log: bool
    max_epochs_retrained: int
    trials_killed: int
    faults: list[Fault]
    killed_during_replay: bool | None
    driver_starts: int
    retried: int
    wall_seconds: float
    baseline_wall_seconds: float | None = None

    @property
    def faults_injected(self) -> int:
        return len(self.faults)

    def faults_by_kind(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.faults))

    def checks(self, faults: bool = True) -> dict[str, bool]:
        """Each check of the storm and whether it holds (without faults: only the counting ones)."""
        p = self.plan
        found = {
            "no trial lost": self.trials_lost == 0 and self.trials_in_log == p.trials,
            "no trial counted twice": self.trials_double_counted == 0,
            "counts equal a recount of the log": self.counts_match_log and self.shards_match_log,
            f"no killed trial retrained more than {p.checkpoint_every} epoch(s)":
                self.max_epochs_retrained <= p.checkpoint_every,
        }
        if faults:
            kinds = self.faults_by_kind()
            found[f"at least {p.min_faults} faults injected"] = self.faults_injected >= p.min_faults
            found["every planned fault fired"] = (
                kinds.get("node killed", 0) == p.node_kills
                and kinds.get("accumulator killed", 0) == len(p.accumulator_kills_at)
                and kinds.get("driver killed", 0) == (p.driver_kill_at is not None))
            if p.pair_shards > 1 and p.accumulator_kills_at:
                found["accumulator killed while a pair shard replayed"] = bool(self.killed_during_replay)
        return found

    def as_json(self) -> dict:
        fields = {k: v for k, v in asdict(self).items() if k not in ("faults", "plan")}
        return {**fields, "trials_requested": self.plan.trials, "faults_injected": self.faults_injected,
                "faults_by_kind": self.faults_by_kind(), "checkpoint_every": self.plan.checkpoint_every,
                "plan": {**asdict(self.plan), "accumulator_kills_at": list(self.plan.accumulator_kills_at)},
                "faults": [asdict(f) for f in self.faults], "checks": self.checks(bool(self.faults)),
                "ok": all(self.checks(bool(self.faults)).values())}


def run_storm(cluster, workdir: str | Path, plan: StormPlan, *, seed: int = 0, faults: bool = True,
              name: str = "storm") -> StormOutcome:
    """Run ``plan`` on ``cluster`` (head only; this adds the workers) with its faults (or none); audit the run."""
    started = time.perf_counter()
    for _ in range(plan.workers):
        reliability.add_worker(cluster)
    driver = DriverProcess(plan, name, workdir, cluster.address)
    watcher = CheckpointWatcher(driver.run_dir)
    injector = Injector(cluster, plan, driver, random.Random(seed))
    deadline = time.monotonic() + plan.timeout_s
    try:
        while driver.running:
            if time.monotonic() > deadline:
                raise TimeoutError(f"storm {name}: the run did not end within {plan.timeout_s:.0f} s (a hang?); "
                                   f"driver output in {driver.log_path}")
            if faults:
                injector.tick(len(driver.log_ids()))
            time.sleep(TICK_S)
        result = driver.wait(0)
    finally:
        if driver.running:
            driver.kill()
        watcher.stop()
    wall = time.perf_counter() - started
    return _audit_storm(driver, watcher, injector, result, wall)


def _audit_storm(driver: DriverProcess, watcher: CheckpointWatcher, injector: Injector, result: dict,
                 wall: float) -> StormOutcome:
    import ray

    plan = driver.plan
    watcher.scan()
    found = reliability.audit(driver.run_dir, driver.name, plan.trials)
    shard_trials = []
    if plan.pair_shards > 1:
        shards = [ray.get_actor(shard_name(driver.name, k, plan.pair_shards), namespace=NAMESPACE)
                  for k in range(plan.pair_shards)]
        shard_trials = ray.get([s.trials.remote() for s in shards])
    log_count = len(found["log_ids"])
    retrained = epochs_retrained(reliability.records(driver.run_dir), watcher, plan.epochs)
    return StormOutcome(
        name=driver.name, run_dir=driver.run_dir, plan=plan, trials_in_log=log_count,
        trials_lost=len(found["lost"]),
        trials_double_counted=max([found["double_counted"], *(t - log_count for t in shard_trials), 0]),
        counts_match_log=found["counts_match_log"], shards_match_log=all(t == log_count for t in shard_trials),
        max_epochs_retrained=max(retrained.values(), default=0), trials_killed=len(retrained),
        faults=injector.faults, killed_during_replay=injector.killed_during_replay,
        driver_starts=len(driver.starts), retried=len(result.get("retried") or {}), wall_seconds=round(wall, 1),
    )


# ---- the script -----------------------------------------------------------------------------------------

def markdown_table(outcome: StormOutcome) -> str:
    """The storm's numbers and checks as a two-column Markdown table."""
    p, kinds = outcome.plan, outcome.faults_by_kind()
    rows = [
        ("trials requested", p.trials),
        ("trials in the log", outcome.trials_in_log),
        ("trials lost", outcome.trials_lost),
        ("trials counted twice", outcome.trials_double_counted),
        ("counts == recount of the log (accumulator and pair shards)",
         str(outcome.counts_match_log and outcome.shards_match_log).lower()),
        ("trials whose attempt was killed (seen: a retry, a resume or checkpoints)", outcome.trials_killed),
        (f"most epochs a killed trial retrained (checkpoint every {p.checkpoint_every})",
         outcome.max_epochs_retrained),
        ("faults injected", f"{outcome.faults_injected}: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))),
        ("accumulator killed while a pair shard replayed", str(outcome.killed_during_replay).lower()),
        ("driver processes started", outcome.driver_starts),
        ("wall seconds", outcome.wall_seconds),
    ]
    if outcome.baseline_wall_seconds is not None:
        rows.append(("wall seconds of the same run without faults", outcome.baseline_wall_seconds))
    lines = ["| | |", "|---|---|"] + [f"| {what} | {value} |" for what, value in rows]
    checks = outcome.checks()
    lines += ["", "| check | holds |", "|---|---|"] + [f"| {c} | {'yes' if ok else 'NO'} |" for c, ok in checks.items()]
    return "\n".join(lines)


@contextmanager
def stdout_to_stderr():
    """Send what is written to file descriptor 1 to 2 meanwhile: Ray prints its nodes' deaths to the driver's
    stdout, which this script keeps for its table or its one JSON object."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller storm: 16 trials, 3 worker nodes")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--baseline", action="store_true", help="also time the same run without faults")
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of nodes to kill")
    parser.add_argument("--trials", type=int, help="trials of the run (default: the plan's)")
    parser.add_argument("--workdir", help="where the runs go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.trials:
        plan = replace(plan, trials=args.trials)
    workdir = args.workdir or tempfile.mkdtemp(prefix="raymem-chaos-")
    with stdout_to_stderr():
        with reliability.simulated_cluster() as cluster:
            outcome = run_storm(cluster, workdir, plan, seed=args.seed)
        if args.baseline:
            with reliability.simulated_cluster() as cluster:
                quiet = run_storm(cluster, workdir, plan, faults=False, name="baseline")
            outcome.baseline_wall_seconds = quiet.wall_seconds
            if not all(quiet.checks(faults=False).values()):
                print(f"the run without faults failed its checks: {quiet.checks(faults=False)}", file=sys.stderr)
                return 1
    if args.json:
        print(json.dumps(outcome.as_json(), indent=2))
    else:
        print(f"\nrun in {outcome.run_dir}\n")
        print(markdown_table(outcome))
    return 0 if all(outcome.checks().values()) else 1


if __name__ == "__main__":
    sys.exit(main())
