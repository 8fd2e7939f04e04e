"""Everything about reaching Ray, defined once: the namespace, the head pin, token auth, loopback.

Connecting the driver (or a reader) to Ray: an existing cluster, or a local one started here.

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

#: Ray namespace of every raymem actor and driver.
NAMESPACE = "raymem"
#: The resource only a Ray head node has (Ray adds it to every head by itself, so no cluster file
#: has to declare anything): raymem's actors ask for a sliver of it, which keeps them off spot workers.
HEAD_RESOURCE = "node:__internal_head__"
#: How every raymem actor lives: named in raymem's namespace, outliving its driver, restarted by Ray
#: after a crash with its queued calls replayed (so its methods must be idempotent), taking no CPU slot.
DURABLE_ACTOR_OPTIONS = dict(
    namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_restarts=-1, max_task_retries=-1, num_cpus=0,
)
#: A local Ray listens on this address only.
LOOPBACK_IP = "127.0.0.1"
#: File in a run directory that holds the address of the local Ray of a run going on.
LIVE_FILE = "live.json"
#: Ray's switch for token authentication, and the mode raymem uses.
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_MODE_TOKEN = "token"
#: Ray reads the token from this file when set, else from ~/.ray/auth_token.
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


#: Ray's single-machine switch: with it at "0" a local Ray binds to 127.0.0.1 instead of the
#: machine's outward address (Ray rewrites _node_ip_address="127.0.0.1" otherwise). Read when ray is
#: imported, so it must be set before; drivers of such a Ray need it too.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Set in the driver of a detached run (a Ray job) to the job's id: the job records and the driver lease name it.
JOB_ID_ENV = "RAYMEM_JOB_ID"


#: The environment variable that names the Ray cluster when no address is given.
ADDRESS_ENV = "RAY_ADDRESS"


def ray_address(explicit: str | None) -> str | None:
    """The Ray cluster to use: ``explicit`` when given, else ``$RAY_ADDRESS``, else None (start a local Ray)."""
    return explicit or os.environ.get(ADDRESS_ENV) or None


def head_pin() -> dict:
    """Ray ``resources=`` that place an actor on the head node (never on a spot GPU worker)."""
    return {HEAD_RESOURCE: 0.001}


def auth_token_path() -> Path:
    """Return where Ray reads the auth token from: $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    custom = os.environ.get(AUTH_TOKEN_PATH_ENV)
    return Path(custom) if custom else Path.home() / ".ray" / "auth_token"


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
        with socket.create_connection((host or LOOPBACK_IP, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _auth_env() -> None:
    """With a token at hand and no explicit mode, connect in token mode (Ray 2.60 needs it for an address)."""
    if AUTH_MODE_ENV in os.environ or not (auth_token_path().exists() or os.environ.get("RAY_AUTH_TOKEN")):
        return
    os.environ[AUTH_MODE_ENV] = AUTH_MODE_TOKEN
    try:  # ray may already be imported: refresh its cached config as ray itself does
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass


def connect(address: str, runtime_env: dict | None = None) -> None:
    """Attach this process to the cluster at ``address`` as a driver in raymem's namespace (with the job's
    ``runtime_env``, e.g. the ``py_modules`` of your own model)."""
    import ray

    if ray.is_initialized():
        return
    _auth_env()
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR",
                 runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RaymemError(
            f"cannot connect to the Ray cluster at {address} ({str(exc).splitlines()[0][:200]}); "
            "check --address / RAY_ADDRESS, that the cluster is up (`raymem up`), and its auth token."
        ) from None


def start_local(num_cpus: int | None = None, num_gpus: float | None = None, runtime_env: dict | None = None) -> str:
    """Start a Ray instance on this machine only (loopback) and return its GCS address."""
    import ray

    ray.init(
        address="local",
        runtime_env=runtime_env,
        namespace=NAMESPACE,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        _node_ip_address=LOOPBACK_IP,
    )
    return ray.get_runtime_context().gcs_address


def connect_or_start(address: str | None, num_cpus: int | None = None, num_gpus: float | None = None,
                     runtime_env: dict | None = None) -> tuple[str, bool]:
    """Connect to ``address`` (or RAY_ADDRESS); with neither, start a local Ray. Return (address, started_here).

    ``runtime_env`` is the job's (a process already connected keeps its own).
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address, False
    address = ray_address(address)
    if address:
        connect(address, runtime_env)
        return ray.get_runtime_context().gcs_address, False
    return start_local(num_cpus, num_gpus, runtime_env), True


def loopback(address: str) -> str:
    """The same port on the loopback address: a local Ray is read from this machine only."""
    return f"{LOOPBACK_IP}:" + address.rpartition(":")[2]


def is_loopback(address: str) -> bool:
    """True when ``address`` is a ``host:port`` on the loopback address."""
    return address.startswith(f"{LOOPBACK_IP}:")


def write_live_address(store, address: str) -> None:
    """Leave the local Ray's address in the run directory for readers in other terminals."""
    address = loopback(address)
    store.write_bytes_atomic(LIVE_FILE, json.dumps({"address": address, "pid": os.getpid()}).encode())


def clear_live_address(store) -> None:
    """Remove the address left by :func:`write_live_address` (the local Ray is going away)."""
    store.delete(LIVE_FILE)


def read_live_address(store) -> str | None:
    """Return the address a local run left in its directory, or None."""
    if not store.exists(LIVE_FILE):
        return None
    try:
        return json.loads(store.read_bytes(LIVE_FILE))["address"]
    except (ValueError, KeyError, TypeError):
        return None
