"""Detached runs: the driver of a run submitted to the cluster as a Ray job (``raymem run ... --detach``).

Ray's Job Submission API (``ray.job_submission.JobSubmissionClient``, served by the head's dashboard,
so it needs ``ray[default]`` on the cluster and a head started with its dashboard) runs the same
``raymem run`` command on the cluster, without ``--detach``: it trains the run's missing trials into
the run's storage, so submitting again resumes from the trial log. The experiment travels with the
job as ``experiment.yaml`` in its working directory (the fully resolved config, so preset files and
``--set`` flags need not exist on the cluster).

The run directory records the job in ``job.json`` (job id, cluster address, dashboard URL, entrypoint),
so ``raymem status / logs / stop RUN`` find it without flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import yaml

from raymem.cluster import connection
from raymem.errors import RaymemError
from raymem.store.storage import RunStore
from raymem.driver.lease import release_stopped_job

#: File in a run directory that names the Ray job running (or last run) the run's driver.
JOB_FILE = "job.json"
#: The experiment file inside the job's working directory.
EXPERIMENT_FILE = "experiment.yaml"
#: Overrides the Python that runs the job's entrypoint on the cluster (default: this interpreter for a
#: cluster on this machine, else ``python``, which cluster.yaml's setup puts first on every node's PATH).
JOB_PYTHON_ENV = "RAYMEM_JOB_PYTHON"
#: Job states after which the job will not change any more.
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
_DASHBOARD_LOOKUPS = 5  # tries (1 s apart) to read a fresh head's dashboard address from its GCS


@dataclass
class DetachedRun:
    """A run whose driver was submitted as a Ray job."""

    job_id: str
    name: str
    run_uri: str
    address: str             # the cluster address it was submitted to (GCS host:port, "auto", or the dashboard URL)
    dashboard_url: str       # where Ray's Job API answered
    entrypoint: str          # the command the job runs on the cluster
    submitted: str           # UTC, ISO 8601

    def to_dict(self) -> dict:
        return asdict(self)


# ---- reaching the Job API --------------------------------------------------------------------------


def _is_local(address: str) -> bool:
    """True for a cluster on this machine (loopback address, ``auto``, or a loopback dashboard URL)."""
    host = address.split("://", 1)[-1]
    return address == "auto" or host.startswith((connection.LOOPBACK_IP, "localhost"))


def dashboard_url(address: str) -> str:
    """The HTTP address of the Job API of the cluster at ``address`` (a dashboard URL is returned as is).

    A GCS address is looked up in the cluster's GCS, where the head's dashboard registers itself; a head
    without a dashboard has none, and the error says how to start one.
    """
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if address.startswith("ray://"):
        raise RaymemError(f"--address {address} is a Ray Client address; --detach needs the cluster's GCS address "
                          "(host:6379) or its dashboard URL (http://host:8265).")
    if address != "auto" and not connection.reachable(address):
        raise RaymemError(f"nothing answers at {address}; check --address / RAY_ADDRESS and that the cluster is up "
                          "(`raymem up`).")
    connection._auth_env()  # a token on this machine: the GCS and the dashboard want it
    from ray._private import ray_constants, services
    from ray._raylet import GcsClient

    try:
        gcs = GcsClient(address=services.canonicalize_bootstrap_address_or_die(address))
        for attempt in range(_DASHBOARD_LOOKUPS):
            url = gcs.internal_kv_get(ray_constants.DASHBOARD_ADDRESS.encode(),
                                      ray_constants.KV_NAMESPACE_DASHBOARD, timeout=5)
            if url:
                return f"http://{url.decode()}"
            time.sleep(1.0)
    except Exception as exc:  # noqa: BLE001 - grpc errors, a wrong token, no cluster for "auto"
        raise RaymemError(f"cannot reach the Ray cluster at {address} ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}); "
                          "check --address / RAY_ADDRESS and its auth token.") from None
    raise RaymemError(
        f"the Ray cluster at {address} runs no dashboard, and Ray's Job API (--detach) is served by it; start the head "
        "with its dashboard (`raymem up --local --dashboard`, or `ray start --head` without --include-dashboard=false; "
        "the repository's cluster.yaml has one) and install ray[default] there."
    )


@contextlib.contextmanager
def _no_ray_address_env():
    """Ray's Job client prefers $RAY_ADDRESS / $RAY_API_SERVER_ADDRESS to the address it is given: hide them."""
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def client(url: str):
    """A ``JobSubmissionClient`` for the Job API at ``url`` (RaymemError when ray[default] is missing or
    nothing answers)."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise RaymemError("Ray's Job API needs ray[default]; run `pip install 'ray[default]==2.60.0'`.") from None
    connection._auth_env()
    try:
        with _no_ray_address_env():
            return JobSubmissionClient(url)
    except RuntimeError as exc:
        if "ray[default]" in str(exc):
            raise RaymemError("Ray's Job API needs ray[default]; run `pip install 'ray[default]==2.60.0'`.") from None
        raise RaymemError(f"Ray's Job API at {url} did not answer ({' '.join(str(exc).split())[:200]}).") from None
    except (ConnectionError, OSError, ValueError) as exc:
        raise RaymemError(f"Ray's Job API at {url} did not answer ({' '.join(str(exc).split())[:200]}); is the cluster "
                          "up, and is this its dashboard?") from None


# ---- the run's job record -----------------------------------------------------------------------


def read_job(store: RunStore) -> DetachedRun | None:
    """The job recorded in the run directory, or None (never detached, or an unreadable record)."""
    if not store.exists(JOB_FILE):
        return None
    try:
        record = json.loads(store.read_bytes(JOB_FILE))
        return DetachedRun(**{k: record[k] for k in DetachedRun.__dataclass_fields__})
    except (ValueError, KeyError, TypeError):
        return None


def job_address(store: RunStore) -> str | None:
    """The cluster (GCS) address of the run's recorded job, for readers that look for its live accumulator."""
    job = read_job(store)
    if job is None or "://" in job.address:
        return None
    return job.address


def job_state(store: RunStore) -> dict | None:
    """``{"job_id", "state", "message", "address", "submitted", "start_time", "end_time"}`` of the run's job.

    None when the run was never detached; ``state`` is ``UNREACHABLE`` when the cluster does not answer (the
    trial log still holds every counted trial).
    """
    job = read_job(store)
    if job is None:
        return None
    out = {"job_id": job.job_id, "state": "UNREACHABLE", "message": None, "address": job.address,
           "submitted": job.submitted, "start_time": None, "end_time": None}
    try:
        info = client(job.dashboard_url).get_job_info(job.job_id)
    except RaymemError as exc:
        out["message"] = str(exc)
        return out
    except Exception as exc:  # noqa: BLE001 - the job is gone (cluster restarted) or the API failed
        out["message"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        return out
    out.update(state=str(getattr(info.status, "value", info.status)), message=info.message,
               start_time=_iso(info.start_time), end_time=_iso(info.end_time))
    return out


def _iso(ms: int | None) -> str | None:
    return (None if not ms
            else datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(timespec="seconds"))


def _require_job(store: RunStore, run: str) -> DetachedRun:
    job = read_job(store)
    if job is None:
        raise RaymemError(f"run {run} has no job ({store.location(JOB_FILE)} is missing); only runs started with "
                          "`raymem run ... --detach` have one, and their output is in the job's logs.")
    return job


# ---- submit, logs, stop -------------------------------------------------------------------------


def entrypoint(*, name: str, storage: str, data_dir: str | None, until_halfwidth: float | None,
               until_jaccard: float | None, python: str) -> str:
    """The ``raymem run`` command the job runs on the cluster (in its working directory, which holds the experiment)."""
    words = [*shlex.split(python), "-m", "raymem.cli", "run", EXPERIMENT_FILE, "--name", name, "--storage", storage]
    if data_dir:
        words += ["--data-dir", data_dir]
    if until_halfwidth is not None:
        words += ["--until-halfwidth", repr(float(until_halfwidth))]
    if until_jaccard is not None:
        words += ["--until-jaccard", repr(float(until_jaccard))]
    return shlex.join(words)


def absolute_storage(storage: str) -> str:
    """A storage root the job reads the same way: URIs as they are, local paths made absolute."""
    return storage if "://" in storage else os.path.abspath(os.path.expanduser(storage))


def submit(config, *, name: str, run_uri: str, storage: str, address: str, data_dir: str | None = None,
           until_halfwidth: float | None = None, until_jaccard: float | None = None) -> DetachedRun:
    """Submit the run's driver as a Ray job and record it in the run directory; return at once.

    Refuses (RaymemError, nothing submitted) when the run's recorded job is still pending or running:
    two drivers of one run would train its trials twice.
    """
    store = RunStore.open(run_uri)
    previous = job_state(store)
    if previous is not None and previous["state"] in ("PENDING", "RUNNING"):
        raise RaymemError(f"run {name} already has job {previous['job_id']} {previous['state'].lower()} on "
                          f"{previous['address']}; follow it with `raymem logs {name} --follow` or stop it with "
                          f"`raymem stop {name}` before submitting again.")
    url = dashboard_url(address)
    jobs = client(url)
    python = os.environ.get(JOB_PYTHON_ENV) or (shlex.quote(sys.executable) if _is_local(address) else "python")
    if data_dir and "://" not in data_dir:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    command = entrypoint(name=name, storage=storage, data_dir=data_dir, until_halfwidth=until_halfwidth,
                         until_jaccard=until_jaccard, python=python)
    job_id = f"raymem-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    # your own model's module travels with the job (its driver and its trials import it by name)
    from raymem.training.model_import import worker_runtime_env

    module_env = worker_runtime_env(config.model)
    env_vars = {connection.JOB_ID_ENV: job_id}
    if _is_local(address):  # drivers of a loopback head must stay on the loopback address too
        env_vars[connection.SINGLE_MACHINE_ENV] = "0"
    with tempfile.TemporaryDirectory(prefix="raymem-job-") as workdir:
        Path(workdir, EXPERIMENT_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
        try:
            jobs.submit_job(entrypoint=command, submission_id=job_id,
                            runtime_env={"working_dir": workdir, "env_vars": env_vars, **module_env},
                            metadata={"raymem_run": name, "raymem_run_uri": store.uri})
        except Exception as exc:  # noqa: BLE001 - the API's HTTP errors
            raise RaymemError(f"Ray's Job API at {url} refused the job ({' '.join(str(exc).split())[:300]}).") from None
    job = DetachedRun(job_id=job_id, name=name, run_uri=store.uri, address=address, dashboard_url=url,
                      entrypoint=command,
                      submitted=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    try:
        store.write_bytes_atomic(JOB_FILE, json.dumps(job.to_dict(), indent=2).encode())
    except Exception as exc:  # noqa: BLE001 - an unwritable run directory: do not leave an unrecorded job running
        with contextlib.suppress(Exception):
            jobs.stop_job(job_id)
        raise RaymemError(f"cannot record the job in {store.location(JOB_FILE)} ({type(exc).__name__}); the job was "
                          "stopped; give a writable --storage.") from None
    return job


def logs(store: RunStore, run: str, follow: bool = False) -> str | Iterator[str]:
    """The output of the run's job so far (a string), or with ``follow`` an iterator of chunks until the job ends."""
    job = _require_job(store, run)
    jobs = client(job.dashboard_url)
    if not follow:
        try:
            return jobs.get_job_logs(job.job_id)
        except Exception as exc:  # noqa: BLE001 - the job is unknown to this cluster (restarted?)
            raise RaymemError(f"the logs of job {job.job_id} are not available from {job.dashboard_url} "
                              f"({' '.join(str(exc).split())[:200]}).") from None
    return _follow(jobs, job.job_id)


def _follow(jobs, job_id: str) -> Iterator[str]:
    """Drive Ray's async log tail from plain (synchronous) code."""
    loop = asyncio.new_event_loop()
    tail = jobs.tail_job_logs(job_id)
    try:
        while True:
            try:
                yield loop.run_until_complete(tail.__anext__())
            except StopAsyncIteration:
                return
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(tail.aclose())
        loop.close()


def stop(store: RunStore, wait_s: float = 30.0) -> dict | None:
    """Stop the run's job if it is pending or running; wait until it has ended (up to ``wait_s``).

    Returns ``{"job_id", "state"}`` (its state afterwards; ``was`` its state before), or None when the run has no job.
    """
    job = read_job(store)
    if job is None:
        return None
    try:
        jobs = client(job.dashboard_url)
    except RaymemError:  # the cluster is gone: so is its job
        return {"job_id": job.job_id, "was": "UNREACHABLE", "state": "UNREACHABLE"}
    try:
        before = str(jobs.get_job_status(job.job_id).value)
    except Exception:  # noqa: BLE001 - unknown to this cluster: nothing runs
        return {"job_id": job.job_id, "was": "UNKNOWN", "state": "UNKNOWN"}
    state = before
    if before not in TERMINAL_STATES:
        jobs.stop_job(job.job_id)
        deadline = time.monotonic() + wait_s
        while state not in TERMINAL_STATES and time.monotonic() < deadline:
            time.sleep(0.5)
            state = str(jobs.get_job_status(job.job_id).value)
    if state in TERMINAL_STATES:  # its driver cannot release the run any more: the run may be driven again now
        release_stopped_job(store, job.job_id)
    return {"job_id": job.job_id, "was": before, "state": state}
