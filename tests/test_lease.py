"""One driver per run (``driver.lease``): a second driver is refused while the first one's heartbeat is fresh."""

from __future__ import annotations

import json
import os
import time

import pytest

from raymem.errors import RaymemError
from raymem.store.storage import RunStore
from raymem.driver import lease as lease_module
from raymem.driver.lease import LEASE_FILE, STALE_SECONDS, DriverLease, read_lease


def _foreign_lease(store: RunStore, age: float, token: str = "someone-else") -> None:
    store.write_bytes_atomic(LEASE_FILE, json.dumps({"token": token, "host": "gpu-head-7", "pid": 4242,
                                                     "job_id": "raymem-r-1", "heartbeat": time.time() - age}).encode())


def test_a_second_driver_is_refused_until_the_first_releases(tmp_path):
    store = RunStore.open(str(tmp_path / "run"))
    first = DriverLease(store, "r").acquire()
    record = read_lease(store)
    assert record["token"] == first.token and record["pid"] == os.getpid()
    with pytest.raises(RaymemError,
                       match=r"run r is being driven by another raymem run \(pid \d+ on host .*two drivers"):
        DriverLease(store, "r").acquire()
    first.release()
    assert read_lease(store) is None
    with DriverLease(store, "r") as second:          # free again
        assert read_lease(store)["token"] == second.token


def test_a_live_foreign_lease_refuses_and_is_left_alone(tmp_path):
    store = RunStore.open(str(tmp_path / "run"))
    _foreign_lease(store, age=STALE_SECONDS / 3)
    with pytest.raises(RaymemError, match=r"pid 4242 on host gpu-head-7 \(job raymem-r-1\), last heartbeat 30 s ago"):
        DriverLease(store, "r").acquire()
    assert read_lease(store)["token"] == "someone-else"   # not removed by the refused driver


def test_a_dead_drivers_stale_or_unreadable_lease_does_not_block_the_run(tmp_path):
    store = RunStore.open(str(tmp_path / "run"))
    _foreign_lease(store, age=STALE_SECONDS + 1)
    with DriverLease(store, "r") as mine:
        assert read_lease(store)["token"] == mine.token
    store.write_bytes_atomic(LEASE_FILE, b"{not json")
    with DriverLease(store, "r") as mine:
        assert read_lease(store)["token"] == mine.token


def test_a_killed_driver_on_this_host_does_not_block_the_run(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = RunStore.open(str(tmp_path / "run"))
    store.write_bytes_atomic(LEASE_FILE, json.dumps({"token": "killed", "host": socket.gethostname(), "pid": dead.pid,
                                                     "heartbeat": time.time()}).encode())
    with DriverLease(store, "r") as mine:   # fresh heartbeat, but its process is gone
        assert read_lease(store)["token"] == mine.token
    store.write_bytes_atomic(LEASE_FILE, json.dumps({"token": "alive", "host": socket.gethostname(),
                                                     "pid": os.getppid(), "heartbeat": time.time()}).encode())
    with pytest.raises(RaymemError, match="being driven by another raymem run"):
        DriverLease(store, "r").acquire()   # a live process on this host holds it


def test_the_heartbeat_moves_and_never_overwrites_a_takeover(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "HEARTBEAT_SECONDS", 0.05)
    store = RunStore.open(str(tmp_path / "run"))
    mine = DriverLease(store, "r").acquire()
    first_beat = read_lease(store)["heartbeat"]
    deadline = time.time() + 10
    while read_lease(store)["heartbeat"] == first_beat and time.time() < deadline:
        time.sleep(0.02)
    assert read_lease(store)["heartbeat"] > first_beat
    _foreign_lease(store, age=0)                      # another driver took the run over (we had gone stale)
    time.sleep(0.3)
    assert read_lease(store)["token"] == "someone-else"
    mine.release()
    assert read_lease(store)["token"] == "someone-else"   # release deletes only its own lease


def test_a_run_directory_the_lease_created_is_removed_when_nothing_else_was_written(tmp_path):
    fresh = RunStore.open(str(tmp_path / "fresh"))
    with DriverLease(fresh, "fresh"):
        assert (tmp_path / "fresh" / LEASE_FILE).exists()
    assert not (tmp_path / "fresh").exists()
    used = RunStore.open(str(tmp_path / "used"))
    with DriverLease(used, "used"):
        used.write_bytes_atomic("run.json", b"{}")
    assert sorted(os.listdir(tmp_path / "used")) == ["run.json"]
    existing = tmp_path / "existing"
    existing.mkdir()
    with DriverLease(RunStore.open(str(existing)), "existing"):
        pass
    assert existing.is_dir()   # it was there before: kept


def test_raymem_run_on_a_run_another_driver_holds_exits_2_before_ray_starts(tmp_path):
    import subprocess
    import sys

    runs = tmp_path / "runs"
    store = RunStore.open(str(runs / "busy"))
    _foreign_lease(store, age=1)
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom raymem.cli import app\n"
            "r = CliRunner().invoke(app, ['run', 'digits', '--name', 'busy', "
            f"'--storage', {str(runs)!r}, '--trials', '2'])\n"
            "print(r.output)\nprint('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY')\nsys.exit(r.exit_code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("error: run busy is being driven by another raymem run (pid 4242 on host gpu-head-7")
    assert lines[-1] == "NO_RAY"
    assert sorted(os.listdir(runs / "busy")) == [LEASE_FILE]   # nothing else written


def test_status_names_the_driver_and_a_stopped_jobs_lease_is_released(tmp_path):
    from raymem.driver.lease import driver_state, release_stopped_job

    store = RunStore.open(str(tmp_path / "run"))
    assert driver_state(store) is None
    _foreign_lease(store, age=5)
    state = driver_state(store)
    assert (state["live"] and state["pid"] == 4242 and state["job_id"] == "raymem-r-1"
            and 4 < state["heartbeat_age_s"] < 60)
    _foreign_lease(store, age=STALE_SECONDS + 5)
    assert not driver_state(store)["live"]
    assert not release_stopped_job(store, "raymem-other-job") and read_lease(store) is not None
    assert release_stopped_job(store, "raymem-r-1") and read_lease(store) is None


def test_an_unwritable_run_directory_is_named(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    store = RunStore.open(str(tmp_path / "a-file" / "run"))   # its parent is a file: nothing can be written there
    with pytest.raises(RaymemError, match=r"cannot write .*a-file/run/driver.json .*give a writable --storage"):
        DriverLease(store, "run").acquire()
