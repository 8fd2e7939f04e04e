"""Detached runs (`raymem run ... --detach`): the driver submitted as a Ray job, followed by status / logs / stop.

The fast tests stand a recorder in for Ray's Job client; the slow one submits a real digits run to a local
head with its dashboard (own temp dir and ports) and stops that head afterwards.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from processes import kill_processes_holding  # tests/processes.py
import yaml

from raymem import api

from raymem.cluster import connection

from raymem.driver import detached
from raymem.errors import RaymemError
from raymem.store.storage import RunStore
from raymem.driver import run as run_module
from raymem.config.experiment import resolve_config

REPO_ROOT = Path(__file__).resolve().parents[1]


class FakeJobs:
    """Stands in for ray.job_submission.JobSubmissionClient and records what it is asked."""

    def __init__(self):
        self.submitted: list[dict] = []
        self.states: dict[str, str] = {}
        self.stopped: list[str] = []

    def submit_job(self, *, entrypoint, submission_id, runtime_env, metadata):
        experiment = yaml.safe_load(Path(runtime_env["working_dir"], detached.EXPERIMENT_FILE).read_text())
        self.submitted.append(dict(entrypoint=entrypoint, submission_id=submission_id, env=runtime_env["env_vars"],
                                   experiment=experiment, metadata=metadata))
        self.states[submission_id] = "RUNNING"
        return submission_id

    def get_job_status(self, job_id):
        return SimpleNamespace(value=self.states[job_id])

    def get_job_info(self, job_id):
        return SimpleNamespace(status=SimpleNamespace(value=self.states[job_id]), message="msg",
                               start_time=1_795_000_000_000, end_time=None)

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        self.states[job_id] = "STOPPED"
        return True

    def get_job_logs(self, job_id):
        return f"output of {job_id}\n"

    async def tail_job_logs(self, job_id):
        for chunk in ("one\n", "two\n"):
            yield chunk


@pytest.fixture
def fake_jobs(monkeypatch) -> FakeJobs:
    fake = FakeJobs()
    monkeypatch.setattr(detached, "client", lambda url: fake)
    monkeypatch.setattr(detached, "dashboard_url", lambda address: "http://127.0.0.1:8265")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return fake


def test_detach_without_an_address_exits_2_with_one_error_line_and_starts_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from raymem.cli import app

    started = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(run_module, "run_experiment", lambda *a, **k: started.append("driver"))
    monkeypatch.setattr(detached, "submit", lambda *a, **k: started.append("job"))
    result = CliRunner().invoke(app, ["run", "digits", "--trials", "3", "--storage", str(tmp_path / "runs"),
                                      "--detach"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--address" in lines[0]
    assert not started and not (tmp_path / "runs").exists()


def test_detach_refuses_local_ray_sizes(tmp_path, fake_jobs):
    with pytest.raises(RaymemError, match="num_cpus") as refused:
        api.run("digits", storage=str(tmp_path), options=api.DriverOptions(address="127.0.0.1:1", num_cpus=2),
                detach=True)
    assert refused.value.parameter == "num_cpus"
    assert fake_jobs.submitted == []


def test_submit_records_the_job_and_runs_the_same_command(tmp_path, fake_jobs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = api.run("digits", overrides={"trials": 3, "epochs": 2}, storage="runs",
                  options=api.DriverOptions(address="127.0.0.1:6379", until_jaccard=0.9), detach=True)
    assert job.job_id.startswith("raymem-digits-") and job.run_uri.endswith("/runs/digits")
    (sent,) = fake_jobs.submitted
    words = shlex.split(sent["entrypoint"])
    assert words[:5] == [sys.executable, "-m", "raymem.cli", "run", detached.EXPERIMENT_FILE]
    assert "--detach" not in words
    assert words[words.index("--storage") + 1] == str(tmp_path / "runs")  # absolute: the job runs elsewhere
    assert words[words.index("--name") + 1] == "digits" and words[words.index("--until-jaccard") + 1] == "0.9"
    assert resolve_config("digits", {"trials": 3, "epochs": 2}).to_dict() == sent["experiment"]
    assert sent["env"][connection.JOB_ID_ENV] == job.job_id
    record = json.loads((tmp_path / "runs" / "digits" / detached.JOB_FILE).read_text())
    assert record["job_id"] == job.job_id and record["address"] == "127.0.0.1:6379"
    assert not (tmp_path / "runs" / "digits" / "run.json").exists()  # the job's driver creates the run

    # while it runs: no second driver for the same run
    with pytest.raises(RaymemError, match="already has job"):
        api.run("digits", overrides={"trials": 3, "epochs": 2}, storage="runs",
                options=api.DriverOptions(address="127.0.0.1:6379"), detach=True)
    assert len(fake_jobs.submitted) == 1

    status = api.status("digits", storage="runs")  # no run.json yet: the job alone
    assert status["job"]["state"] == "RUNNING" and status["trials_done"] == 0
    assert api.logs("digits", storage="runs") == f"output of {job.job_id}\n"
    assert list(api.logs("digits", storage="runs", follow=True)) == ["one\n", "two\n"]

    assert api.stop_job("digits", storage="runs") == {"job_id": job.job_id, "was": "RUNNING", "state": "STOPPED"}
    assert fake_jobs.stopped == [job.job_id]
    assert api.stop("digits", storage="runs")["accumulator"] is False  # already stopped; no run, no accumulator

    again = api.run("digits", overrides={"trials": 3, "epochs": 2}, storage="runs",
                    options=api.DriverOptions(address="127.0.0.1:6379"), detach=True)
    # a stopped job: resubmitting is allowed (and resumes from the log)
    assert again.job_id != job.job_id and len(fake_jobs.submitted) == 2


def test_logs_of_a_run_that_was_never_detached_say_so(tmp_path):
    with pytest.raises(RaymemError, match="--detach"):
        api.logs(str(tmp_path / "plain"))


def test_status_of_a_detached_run_with_an_unreachable_cluster(tmp_path, monkeypatch):
    store = RunStore.open(str(tmp_path / "run"))
    store.write_bytes_atomic(detached.JOB_FILE, json.dumps(detached.DetachedRun(
        job_id="raymem-x", name="x", run_uri=store.uri, address="127.0.0.1:1", dashboard_url="http://127.0.0.1:1",
        entrypoint="raymem run", submitted="2026-01-01T00:00:00+00:00").to_dict()).encode())
    state = detached.job_state(store)
    assert state["state"] == "UNREACHABLE" and state["job_id"] == "raymem-x"
    assert detached.stop(store)["state"] == "UNREACHABLE"


def test_a_head_without_a_dashboard_is_named(monkeypatch):
    monkeypatch.setattr(detached.connection, "reachable", lambda address: False)
    with pytest.raises(RaymemError, match="nothing answers"):
        detached.dashboard_url("127.0.0.1:1")
    assert detached.dashboard_url("http://127.0.0.1:8265/") == "http://127.0.0.1:8265"


# --------------------------------------------------------------------------- a real head


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _raymem(*arguments: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raymem.cli", *arguments], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_detached_digits_run_on_a_local_head_with_its_dashboard(tmp_path, monkeypatch):
    pytest.importorskip("aiohttp", reason="Ray's Job API needs ray[default]")
    from raymem.cluster import launcher as cluster

    temp_dir = tempfile.mkdtemp(prefix="rmdt", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAYMEM_STORAGE")}
    env.update(cluster.LOCAL_HEAD_ENV, RAY_TMPDIR=temp_dir,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    storage = str(tmp_path / "runs")
    head = None
    try:
        head = cluster.start_local_head(port=_free_port(), client_server_port=_free_port(), temp_dir=temp_dir,
                                        dashboard=True, dashboard_port=_free_port(), dashboard_agent_port=_free_port())
        flags = ["--trials", "3", "--epochs", "2", "--storage", storage, "--address", head["address"]]
        started = time.monotonic()
        submitted = _raymem("run", "digits", *flags, "--detach", env=env)
        submit_seconds = time.monotonic() - started
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        job_id = submitted.stdout.strip().splitlines()[-1]
        assert job_id.startswith("raymem-digits-")
        run_dir = Path(storage) / "digits"
        assert json.loads((run_dir / "job.json").read_text())["job_id"] == job_id

        # the command returned while the job trains: it is pending or running, and status shows it
        shown = _raymem("status", "digits", "--storage", storage, "--json", env=env)
        assert shown.returncode == 0, shown.stderr[-2000:]
        early = json.loads(shown.stdout)
        assert early["job"]["state"] in ("PENDING", "RUNNING"), early["job"]
        assert early["trials_done"] < 3

        deadline = time.monotonic() + 300
        while (state := detached.job_state(RunStore.open(str(run_dir)))["state"]) not in detached.TERMINAL_STATES:
            assert time.monotonic() < deadline, "the detached run did not finish in 300 s"
            time.sleep(2)
        logs = _raymem("logs", "digits", "--storage", storage, env=env)
        assert state == "SUCCEEDED", logs.stdout[-3000:]
        assert "3/3 trials in the log (3 trained now" in logs.stdout
        shown = _raymem("status", "digits", "--storage", storage, env=env)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert "3/3 trials" in shown.stdout and f"job {job_id}: SUCCEEDED" in shown.stdout
        followed = _raymem("logs", "digits", "--storage", storage, "--follow", env=env)
        assert "3/3 trials in the log" in followed.stdout  # a finished job: the whole output, then it ends

        # the same command again (one more trial) resumes from the log; stop ends it, job and accumulator
        more = _raymem("run", "digits", *flags[:1], "4", *flags[2:], "--detach", env=env)
        assert more.returncode == 0, more.stderr[-2000:]
        second = more.stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + 240
        while detached.job_state(RunStore.open(str(run_dir)))["state"] not in detached.TERMINAL_STATES:
            assert time.monotonic() < deadline
            time.sleep(2)
        assert "4/4 trials in the log (1 trained now" in api.logs("digits", storage=storage)
        stopped = _raymem("stop", "digits", "--storage", storage, env=env)
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        assert f"job {second} of digits: SUCCEEDED" in stopped.stdout and "stopped the accumulator" in stopped.stdout
        print(f"\ndetach returned in {submit_seconds:.1f} s")
    finally:
        if head is not None:
            cluster.stop_local_head(temp_dir=temp_dir)
        time.sleep(1)
        kill_processes_holding(temp_dir)  # the dashboard and runtime-env agents outlive a SIGTERM of the head
        shutil.rmtree(temp_dir, ignore_errors=True)
