"""Connecting the driver (or a reader) to Ray: an existing cluster, or a local one started here.

Ray 2.60 keeps token authentication on: a local start writes ``~/.ray/auth_token``; a process
that connects to an explicit address needs ``RAY_AUTH_MODE=token`` and that token, which
``connect`` sets up when the token file exists. A run started on a local Ray leaves its address
in ``RUN_DIR/live.json`` so that ``raymem status RUN`` in a second terminal finds the live
accumulator without flags.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from raymem.errors import RaymemError

NAMESPACE = "raymem"
LIVE_FILE = "live.json"
TOKEN_PATH = Path.home() / ".ray" / "auth_token"


#: Ray's single-machine switch: with it at "0" a local Ray binds to 127.0.0.1 instead of the
#: machine's outward address (Ray rewrites _node_ip_address="127.0.0.1" otherwise). Read when ray is
#: imported, so it must be set before; drivers of such a Ray need it too.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_on_loopback() -> bool:
    """Ask for a loopback-only local Ray; True when it takes effect (ray not imported yet)."""
    if "ray" in sys.modules:
        return os.environ.get(SINGLE_MACHINE_ENV) == "0"
    os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
    return os.environ[SINGLE_MACHINE_ENV] == "0"


def reachable(address: str, timeout_s: float = 2.0) -> bool:
    """True when something listens at ``host:port`` (a cheap check before Ray's long connect)."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return True
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _auth_env() -> None:
    """With a token at hand and no explicit mode, connect in token mode (Ray 2.60 needs it for an address)."""
    if "RAY_AUTH_MODE" in os.environ or not (TOKEN_PATH.exists() or os.environ.get("RAY_AUTH_TOKEN")):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # ray may already be imported: refresh its cached config as ray itself does
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass


def connect(address: str) -> None:
    """Attach this process to the cluster at ``address`` as a driver in raymem's namespace."""
    import ray

    if ray.is_initialized():
        return
    _auth_env()
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RaymemError(
            f"cannot connect to the Ray cluster at {address} ({str(exc).splitlines()[0][:200]}); "
            "check --address / RAY_ADDRESS, that the cluster is up (`raymem up`), and its auth token."
        ) from None


def start_local(num_cpus: int | None = None, num_gpus: float | None = None) -> str:
    """Start a Ray instance on this machine only (loopback) and return its GCS address."""
    import ray

    ray.init(
        address="local",
        namespace=NAMESPACE,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        _node_ip_address="127.0.0.1",
    )
    return ray.get_runtime_context().gcs_address


def connect_or_start(address: str | None, num_cpus: int | None = None, num_gpus: float | None = None) -> tuple[str, bool]:
    """Connect to ``address`` (or RAY_ADDRESS); with neither, start a local Ray. Return (address, started_here)."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address, False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        connect(address)
        return ray.get_runtime_context().gcs_address, False
    return start_local(num_cpus, num_gpus), True


def loopback(address: str) -> str:
    """The same port on 127.0.0.1: a local Ray is read from this machine only."""
    return "127.0.0.1:" + address.rpartition(":")[2]


def write_live_address(store, address: str) -> None:
    address = loopback(address)
    store.write_bytes_atomic(LIVE_FILE, json.dumps({"address": address, "pid": os.getpid()}).encode())


def clear_live_address(store) -> None:
    store.delete(LIVE_FILE)


def read_live_address(store) -> str | None:
    if not store.exists(LIVE_FILE):
        return None
    try:
        return json.loads(store.read_bytes(LIVE_FILE))["address"]
    except (ValueError, KeyError, TypeError):
        return None
