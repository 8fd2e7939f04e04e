"""One driver per run: a lease file in the run directory, refreshed while the driver lives.

Two ``raymem run`` drivers of one run (a second terminal, a plain run while a ``--detach`` job drives it,
two notebooks) would each submit the same missing trials: the log keeps one record per trial id, but the
GPU-hours of the other are lost. So a driver holds ``RUN/driver.json`` (who: host, pid, job; when: a
heartbeat a background thread rewrites every ``HEARTBEAT_SECONDS``) and deletes it when it ends. Another
driver refuses to start while the heartbeat is younger than ``STALE_SECONDS``. A driver that died without
releasing it stops blocking the run at once when it ran on the same host (its pid is gone), else once
its heartbeat is ``STALE_SECONDS`` old (killed elsewhere, its node lost).

Best effort, on purpose: two drivers started in the same second may both see no lease (the run store
has no compare-and-swap on every file system); the second one to write then sees the other's token when
it reads the lease back and refuses.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from raymem.cluster.connection import JOB_ID_ENV
from raymem.errors import RaymemError
from raymem.store.storage import RunStore

LEASE_FILE = "driver.json"
#: How often a live driver rewrites its heartbeat.
HEARTBEAT_SECONDS = 15.0
#: A lease whose heartbeat is older than this is a dead driver's: the run may be driven again.
STALE_SECONDS = 90.0


def read_lease(store: RunStore) -> dict | None:
    """The lease in the run directory, or None (no driver, or an unreadable record: treated as none)."""
    if not store.exists(LEASE_FILE):
        return None
    try:
        lease = json.loads(store.read_bytes(LEASE_FILE))
        float(lease["heartbeat"])
        return lease
    except (ValueError, KeyError, TypeError):
        return None


def driver_state(store: RunStore) -> dict | None:
    """``{"pid", "host", "job_id", "heartbeat_age_s", "live"}`` of the run's driver lease, or None (no driver)."""
    lease = read_lease(store)
    if lease is None:
        return None
    age = max(0.0, time.time() - float(lease["heartbeat"]))
    return {"pid": lease.get("pid"), "host": lease.get("host"), "job_id": lease.get("job_id"),
            "heartbeat_age_s": round(age, 1), "live": age < STALE_SECONDS and _alive(lease)}


def release_stopped_job(store: RunStore, job_id: str) -> bool:
    """Delete the lease of a detached run's driver whose job has ended (a stopped job's driver is killed before
    it can release it); return whether it did."""
    lease = read_lease(store)
    if lease is None or lease.get("job_id") != job_id:
        return False
    store.delete(LEASE_FILE)
    return True


def describe(lease: dict) -> str:
    """``pid 123 on host h (job J), last heartbeat 4 s ago``."""
    age = max(0.0, time.time() - float(lease["heartbeat"]))
    job = f" (job {lease['job_id']})" if lease.get("job_id") else ""
    return f"pid {lease.get('pid', '?')} on host {lease.get('host', '?')}{job}, last heartbeat {age:.0f} s ago"


def _alive(lease: dict) -> bool:
    """False when the lease's driver ran on this host and its process is gone (killed: no need to wait for
    its heartbeat to go stale); True otherwise (another host's driver is judged by its heartbeat)."""
    if lease.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(lease.get("pid")), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True
    return True


def _exists(store: RunStore) -> bool:
    import pyarrow.fs as pafs

    return store.filesystem.get_file_info(store.base_path).type != pafs.FileType.NotFound


def _remove_if_empty(store: RunStore) -> None:
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(store.base_path, allow_not_found=True, recursive=True)
    if not store.filesystem.get_file_info(selector):
        try:
            store.filesystem.delete_dir(store.base_path)
        except OSError:
            pass


class DriverLease:
    """The lease of one driver on one run; use as a context manager, or ``acquire()`` / ``release()``.

    Args:
        store: the run directory.
        name: the run's name (for the error message).
    """

    def __init__(self, store: RunStore, name: str):
        self.store, self.name = store, name
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created_dir = False

    def _record(self) -> dict:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                "job_id": os.environ.get(JOB_ID_ENV), "heartbeat": time.time()}

    def _refuse_if_held(self) -> None:
        lease = read_lease(self.store)
        if lease is None or lease.get("token") == self.token or not _alive(lease):
            return
        if time.time() - float(lease["heartbeat"]) < STALE_SECONDS:
            raise RaymemError(
                f"run {self.name} is being driven by another raymem run ({describe(lease)}); two drivers would "
                f"train its trials twice; let it finish (`raymem status {self.name}`), stop it (Ctrl-C there, or "
                f"`raymem stop {self.name}` for a detached run), or, if it died on another host, run again once "
                f"its heartbeat is {STALE_SECONDS:.0f} s old.")

    def acquire(self) -> "DriverLease":
        """Take the lease (RaymemError while another live driver holds it) and start the heartbeat."""
        self._refuse_if_held()
        self._created_dir = not _exists(self.store)
        try:
            self.store.write_bytes_atomic(LEASE_FILE, json.dumps(self._record()).encode())
        except OSError as exc:
            raise RaymemError(f"cannot write {self.store.location(LEASE_FILE)} ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}); give a writable --storage.") from None
        self._refuse_if_held()   # another driver wrote in the same instant: the last writer's token wins
        self._thread = threading.Thread(target=self._beat, name="raymem-driver-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                lease = read_lease(self.store)
                if lease is not None and lease.get("token") != self.token:
                    return   # taken over after we went stale: never overwrite another driver's lease
                self.store.write_bytes_atomic(LEASE_FILE, json.dumps(self._record()).encode())
            except Exception:  # noqa: BLE001 - a storage hiccup: the next beat tries again
                continue

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        lease = read_lease(self.store)
        if lease is not None and lease.get("token") == self.token:
            self.store.delete(LEASE_FILE)
        if self._created_dir:   # a run that failed before writing anything leaves no empty directory behind
            _remove_if_empty(self.store)

    def __enter__(self) -> "DriverLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
