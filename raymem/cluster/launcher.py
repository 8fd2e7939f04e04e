"""Start and stop the Ray clusters raymem runs on.

Two kinds of cluster:

- a cloud cluster described by a Ray cluster YAML (`raymem up cluster.yaml`,
  `raymem down cluster.yaml`). Ray's launcher has no dry run, so the file is checked
  offline first: against Ray's own JSON schema (`ray/autoscaler/ray-schema.json`), then
  with Ray's `prepare_config` + `validate_config`. A file that fails any check ends in a
  `RaymemError` naming the file and the field, and nothing is launched.
- a head on this machine (`raymem up --local`): `ray start --head --block` in a
  subprocess, bound to 127.0.0.1, with token authentication on.

Both keep Ray's token authentication on: the token lives in `~/.ray/auth_token`
(Ray's default path); `ray get-auth-token --generate` creates it when it is missing.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from raymem.cluster.connection import (
    ADDRESS_ENV,
    AUTH_MODE_ENV,
    AUTH_MODE_TOKEN,
    AUTH_TOKEN_PATH_ENV,
    LOOPBACK_IP,
    SINGLE_MACHINE_ENV,
    auth_token_path,
)
from raymem.config.yaml_reader import describe_yaml_error, load_yaml
from raymem.errors import RaymemError

# Custom resource cluster.yaml gives spot workers: avoid (or prefer) them with it. (The
# accumulator is pinned to the head with Ray's own head resource, connection.HEAD_RESOURCE.)
SPOT_RESOURCE = "spot"

DEFAULT_HEAD_PORT = 6379
DEFAULT_CLIENT_SERVER_PORT = 10001
DEFAULT_DASHBOARD_PORT = 8265
# The environment of the local head AND of every driver that connects to it: token auth on, and
# loopback only (Ray rewrites 127.0.0.1 to the machine's outward IP otherwise; see connection.py).
LOCAL_HEAD_ENV = {
    AUTH_MODE_ENV: AUTH_MODE_TOKEN,
    SINGLE_MACHINE_ENV: "0",
}

_LOCAL_HEAD_STATE_FILE = "raymem_local_head.json"
_LOCAL_HEAD_LOG_FILE = "raymem_local_head.log"
_RAY_STARTED_LINE = "Ray runtime started."
_LOCAL_HEAD_START_TIMEOUT_S = 90.0
_LOCAL_HEAD_STOP_TIMEOUT_S = 45.0


# --------------------------------------------------------------------------- validation


def load_cluster_config(path: str | Path) -> dict:
    """Read a Ray cluster YAML file and validate it offline.

    Returns the file's mapping exactly as written (not Ray's prepared version); raises
    `RaymemError` if the file is missing, is not YAML, is not a mapping or fails Ray's
    schema or Ray's own checks.
    """
    path = Path(path)
    config = _read_yaml_mapping(path)
    validate_cluster_config(config, str(path))
    return config


def validate_cluster_config(config: dict, source: str) -> dict:
    """Check a cluster config against Ray's JSON schema, then with Ray's own checks.

    `source` names the config in error messages (usually the file path). Returns the
    config as Ray's launcher would use it (`prepare_config`: defaults filled in, setup
    commands merged); `config` itself is not changed.
    """
    if not isinstance(config, dict):
        raise RaymemError(
            f"Cluster config {source} must be a mapping of Ray cluster fields at its top "
            f"level, not a {type(config).__name__}; start from the repository's cluster.yaml."
        )
    _check_against_ray_schema(config, source)

    from ray.autoscaler._private.util import prepare_config, validate_config

    ray_util_logger = logging.getLogger("ray.autoscaler._private.util")
    previous_level = ray_util_logger.level
    ray_util_logger.setLevel(logging.WARNING)  # silence "setting max workers ..." notes
    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except jsonschema.ValidationError as error:
        raise _schema_error(error, source, other_problems=0) from None
    except (ValueError, RuntimeError, KeyError, TypeError, AssertionError,
            NotImplementedError) as error:
        raise RaymemError(
            f"Cluster config {source} fails Ray's checks ({_one_line(error)}); fix the file."
        ) from None
    finally:
        ray_util_logger.setLevel(previous_level)
    return prepared


def _read_yaml_mapping(path: Path) -> dict:
    """Return the top-level mapping of the YAML file at `path`, or raise RaymemError."""
    if not path.is_file():
        raise RaymemError(
            f"Cluster config {path} does not exist or is not a file; pass the path of a "
            "Ray cluster YAML file such as the repository's cluster.yaml."
        )
    try:
        config = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RaymemError(
            f"Cluster config {path} is not valid YAML {describe_yaml_error(error)}; fix the syntax."
        ) from None
    except UnicodeDecodeError:
        raise RaymemError(
            f"Cluster config {path} is not UTF-8 text; pass a Ray cluster YAML file."
        ) from None
    if not isinstance(config, dict):
        kind = "empty" if config is None else f"a {type(config).__name__}"
        raise RaymemError(
            f"Cluster config {path} is {kind} at its top level, but it must be a mapping "
            "of Ray cluster fields (cluster_name, provider, ...); start from the "
            "repository's cluster.yaml."
        )
    return config


@functools.cache
def _ray_schema() -> dict:
    """Return the JSON schema that ships with the installed Ray for cluster YAML files."""
    schema_file = importlib.resources.files("ray.autoscaler") / "ray-schema.json"
    return json.loads(schema_file.read_text(encoding="utf-8"))


def _check_against_ray_schema(config: dict, source: str) -> None:
    """Raise RaymemError naming the most relevant schema violation, if there is one."""
    schema = _ray_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    errors = list(validator_class(schema).iter_errors(config))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise _schema_error(best, source, other_problems=len(errors) - 1)


def _schema_error(
    error: jsonschema.ValidationError, source: str, other_problems: int
) -> RaymemError:
    """Build the one-sentence RaymemError for a schema violation."""
    field = _field_path(error)
    more = ""
    if other_problems > 0:
        plural = "s" if other_problems > 1 else ""
        more = f" (and {other_problems} more problem{plural})"
    if error.validator == "required":
        fix = "add that field"
    elif error.validator == "additionalProperties":
        fix = "remove or rename that field"
    else:
        fix = "fix that field"
    return RaymemError(
        f"Cluster config {source} is invalid at field `{field}`: {error.message}{more}; "
        f"{fix} (Ray's cluster YAML reference lists the allowed fields and types)."
    )


def _field_path(error: jsonschema.ValidationError) -> str:
    """Return the dotted path of the field a schema error is about.

    For a missing required field or an unknown field the path ends with that field's
    name, not with the mapping that holds it.
    """
    parts = [str(part) for part in error.absolute_path]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        parts += missing[:1]
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        unknown = _unknown_keys(error.instance, error.schema)
        parts += unknown[:1]
    return ".".join(parts) if parts else "<top level>"


def _unknown_keys(instance: dict, schema: dict) -> list[str]:
    """Return the keys of `instance` that `schema` neither names nor matches by pattern."""
    named = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return sorted(
        str(key)
        for key in instance
        if key not in named and not any(re.search(pattern, str(key)) for pattern in patterns)
    )


# --------------------------------------------------------------------------- cloud cluster


def up(
    path: str | Path,
    *,
    no_restart: bool = False,
    restart_only: bool = False,
    yes: bool = True,
) -> dict:
    """Validate a cluster YAML, then create or update that cluster with Ray's launcher.

    Relative local paths in `file_mounts` are read relative to the YAML file's folder.
    Makes sure this machine has a Ray auth token (the config ships it to the nodes).
    With `yes=False` asks on stdin first. Returns `{"cluster_name", "launched",
    "config_path"}` plus `"head_ip"` when Ray reports one. Raises RaymemError (and
    launches nothing) if the file is invalid or a file to mount is missing.
    """
    path = Path(path)
    if no_restart and restart_only:
        raise RaymemError(
            "`no_restart` and `restart_only` exclude each other; pass at most one of them."
        )
    config = load_cluster_config(path)
    check_cloud_access(config, path)  # before anything else: a fresh install lacks the cloud's SDK
    launch_config = _with_local_paths_resolved(config, path)
    ensure_auth_token()
    _check_file_mounts_exist(launch_config, path)

    summary = {"cluster_name": config["cluster_name"], "config_path": str(path)}
    max_workers = launch_config.get("max_workers", "Ray's default number of")
    question = (
        f"Create or update cluster {config['cluster_name']!r} "
        f"({launch_config['provider']['type']}, up to {max_workers} workers) from {path}?"
    )
    if not yes and not _confirm(question):
        return {**summary, "launched": False}

    import ray.autoscaler.sdk

    try:
        ray.autoscaler.sdk.create_or_update_cluster(
            launch_config, no_restart=no_restart, restart_only=restart_only
        )
    except Exception as error:  # the launcher talks to a cloud: credentials, quotas, ssh
        raise RaymemError(
            f"Ray's cluster launcher failed for {path} ({_one_line(error)}); "
            "check the cloud credentials and quotas, then run `raymem up` again."
        ) from error

    result = {**summary, "launched": True}
    try:
        result["head_ip"] = ray.autoscaler.sdk.get_head_node_ip(launch_config)
    except Exception:  # the head IP is informational; the cluster is up either way
        pass
    return result


def down(path: str | Path, *, yes: bool = True) -> None:
    """Validate a cluster YAML, then tear that cluster down with Ray's launcher.

    With `yes=False` asks on stdin first and returns without doing anything on "no".
    Raises RaymemError (and tears nothing down) if the file is invalid.
    """
    path = Path(path)
    config = load_cluster_config(path)
    launch_config = _with_local_paths_resolved(config, path)
    check_cloud_access(config, path)
    question = f"Tear down cluster {config['cluster_name']!r} from {path}?"
    if not yes and not _confirm(question):
        return

    import ray.autoscaler.sdk

    try:
        ray.autoscaler.sdk.teardown_cluster(launch_config)
    except Exception as error:  # the launcher talks to a cloud: credentials, ssh
        raise RaymemError(
            f"Ray's cluster launcher could not tear down {path} ({_one_line(error)}); "
            "check the cloud credentials, then run `raymem down` again."
        ) from error


#: Provider type -> (module Ray's launcher imports, the extra that installs it, how to give it credentials).
CLOUD_SDKS = {
    "aws": ("boto3", "aws", "run `aws configure` (or set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"),
    "gcp": ("googleapiclient", "gcp",
            "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS)"),
}


def check_cloud_access(config: dict, path: Path | str) -> None:
    """Raise RaymemError when the SDK Ray's launcher needs for this provider is missing, or finds no credentials.

    Each message names what is missing and the command that fixes it (``pip install 'raymem[aws]'``,
    ``aws configure``); providers raymem does not know are left to Ray's own checks.
    """
    provider = (config.get("provider") or {}).get("type")
    if provider not in CLOUD_SDKS:
        return
    module, extra, login = CLOUD_SDKS[provider]
    try:
        sdk = __import__(module)
    except ImportError:
        package = "google-api-python-client" if module == "googleapiclient" else module
        raise RaymemError(
            f"Cluster config {path} uses the {provider} provider, whose SDK ({module}) is not installed in this "
            f"environment; run `pip install 'raymem[{extra}]'` (or `pip install {package}`) "
            "and then `raymem up` again."
        ) from None
    if provider == "aws":
        found = sdk.Session().get_credentials() is not None
    else:
        try:
            import google.auth

            google.auth.default()
            found = True
        except Exception:  # noqa: BLE001 - google.auth raises DefaultCredentialsError (and ImportError if absent)
            found = False
    if not found:
        raise RaymemError(
            f"Cluster config {path} uses the {provider} provider but this machine has no {provider} credentials; "
            f"{login}, then `raymem up` again."
        )


def _with_local_paths_resolved(config: dict, config_path: Path) -> dict:
    """Return a copy of `config` whose relative `file_mounts` sources are absolute.

    Ray reads them relative to the current directory; raymem reads them relative to the
    YAML file, so `raymem up path/to/cluster.yaml` works from any directory.
    """
    resolved = copy.deepcopy(config)
    base = config_path.resolve().parent
    mounts = resolved.get("file_mounts") or {}
    for remote, local in mounts.items():
        local_path = Path(os.path.expanduser(str(local)))
        if not local_path.is_absolute():
            mounts[remote] = str(base / local_path)
    return resolved


def _check_file_mounts_exist(config: dict, config_path: Path) -> None:
    """Raise RaymemError if a local source named in `file_mounts` does not exist."""
    for remote, local in (config.get("file_mounts") or {}).items():
        if not Path(os.path.expanduser(str(local))).exists():
            raise RaymemError(
                f"Cluster config {config_path} mounts {local} at {remote} "
                f"(field `file_mounts.{remote}`), but {local} does not exist on this "
                "machine; create it or remove the mount."
            )


def _one_line(error: BaseException) -> str:
    """Return `Type: message` of an exception on one line (for one-sentence errors)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _confirm(question: str) -> bool:
    """Ask a yes/no question on stdin; returns True only for an explicit yes."""
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


# --------------------------------------------------------------------------- auth token


def ensure_auth_token() -> Path:
    """Make sure this machine has a Ray auth token, creating one if needed.

    Uses Ray's own `ray get-auth-token --generate` (which keeps an existing token).
    Returns the token's path. The token itself is never printed.
    """
    if os.environ.get("RAY_AUTH_TOKEN") or auth_token_path().is_file():
        return auth_token_path()
    if os.environ.get(AUTH_TOKEN_PATH_ENV):  # Ray generates tokens only at the default path
        raise RaymemError(
            f"{AUTH_TOKEN_PATH_ENV} names {auth_token_path()}, which does not exist; put the "
            f"cluster's token there or unset {AUTH_TOKEN_PATH_ENV}."
        )
    completed = subprocess.run(
        _ray_cli("get-auth-token", "--generate"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RaymemError(
            f"Could not create a Ray auth token at {auth_token_path()} ({last_line}); "
            "run `ray get-auth-token --generate` and fix what it reports."
        )
    return auth_token_path()


def _ray_cli(*arguments: str) -> list[str]:
    """Return the command line that runs Ray's CLI of this Python environment."""
    return [sys.executable, "-m", "ray.scripts.scripts", *arguments]


# --------------------------------------------------------------------------- local head


def start_local_head(
    *,
    port: int = DEFAULT_HEAD_PORT,
    dashboard: bool = True,
    num_gpus: int | None = None,
    temp_dir: str | Path | None = None,
    client_server_port: int = DEFAULT_CLIENT_SERVER_PORT,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    dashboard_agent_port: int | None = None,
) -> dict:
    """Start a Ray head on this machine, bound to 127.0.0.1, with token auth on.

    Runs `ray start --head --block` as a detached subprocess (it keeps running after
    this process exits) and waits until Ray reports it started. Like every Ray head it
    has Ray's head resource, which pins raymem's accumulator (connection.HEAD_RESOURCE). Its
    process id is recorded in `<temp_dir>/raymem_local_head.json` for
    `stop_local_head`. `temp_dir` defaults to Ray's (/tmp/ray or $RAY_TMPDIR); keep it
    short, Ray puts socket paths under it.

    Returns `{"address", "node_ip", "port", "pid", "temp_dir", "log_path",
    "auth_mode", "token_path", "dashboard_url", "driver_env"}`. A driver connects with
    `ray.init(address=result["address"])` from a process whose environment holds
    `driver_env` (LOCAL_HEAD_ENV) before it imports ray.

    Like `ray start --head`, the head serves Ray's dashboard on 127.0.0.1:`dashboard_port`, which
    Ray's Job API (`raymem run --detach`) needs; `dashboard=False` leaves it out. A second head on the
    same machine needs its own `dashboard_port` and `dashboard_agent_port` (Ray's default agent port is 52365).
    """
    temp_dir = _local_temp_dir(temp_dir)
    state_file = _claim_local_head_record(temp_dir)
    token_path = ensure_auth_token()
    temp_dir.mkdir(parents=True, exist_ok=True)
    log_path = temp_dir / _LOCAL_HEAD_LOG_FILE
    address = f"{LOOPBACK_IP}:{port}"
    command = _local_head_command(port=port, temp_dir=temp_dir, client_server_port=client_server_port,
                                  num_gpus=num_gpus, dashboard=dashboard, dashboard_port=dashboard_port,
                                  dashboard_agent_port=dashboard_agent_port)
    process = _spawn_local_head(command, log_path)
    _wait_until_started(process, log_path, address)

    state = {
        "pid": process.pid,
        "address": address,
        "temp_dir": str(temp_dir),
        "log_path": str(log_path),
    }
    state_file.write_text(json.dumps(state, indent=2), encoding="utf-8")
    return {
        **state,
        "node_ip": LOOPBACK_IP,
        "port": port,
        "auth_mode": AUTH_MODE_TOKEN,
        "token_path": str(token_path),
        "dashboard_url": f"http://{LOOPBACK_IP}:{dashboard_port}" if dashboard else None,
        "driver_env": dict(LOCAL_HEAD_ENV),
    }


def _claim_local_head_record(temp_dir: Path) -> Path:
    """Return the record file of a new head in `temp_dir`; RaymemError if a raymem head runs there already.

    A record whose head is gone is stale and removed, so a crashed head never blocks a new one.
    """
    state_file = temp_dir / _LOCAL_HEAD_STATE_FILE
    if state_file.is_file():
        state = _read_local_head_state(state_file)
        if _is_our_local_head(state.get("pid"), temp_dir):
            raise RaymemError(
                f"A raymem local head is already running at {state.get('address')} "
                f"(temp dir {temp_dir}); stop it with `raymem down --local` first."
            )
        state_file.unlink()
    return state_file


def _local_head_command(*, port: int, temp_dir: Path, client_server_port: int, num_gpus: int | None,
                        dashboard: bool, dashboard_port: int, dashboard_agent_port: int | None) -> list[str]:
    """The `ray start --head --block` command line of a loopback-only local head."""
    command = _ray_cli(
        "start",
        "--head",
        "--block",
        f"--node-ip-address={LOOPBACK_IP}",
        f"--port={port}",
        f"--ray-client-server-port={client_server_port}",
        f"--temp-dir={temp_dir}",
        f"--include-dashboard={'true' if dashboard else 'false'}",
        f"--dashboard-host={LOOPBACK_IP}",
        "--disable-usage-stats",
    )
    if dashboard:
        command.append(f"--dashboard-port={dashboard_port}")
        if dashboard_agent_port is not None:
            command.append(f"--dashboard-agent-listen-port={dashboard_agent_port}")
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus}")
    return command


def _spawn_local_head(command: list[str], log_path: Path) -> subprocess.Popen:
    """Start `command` in its own session, its output in `log_path`.

    RAY_ADDRESS is dropped from its environment: the head's own processes (dashboard, agents) must not see an
    address that names another cluster.
    """
    environment = {**os.environ, **LOCAL_HEAD_ENV}
    environment.pop(ADDRESS_ENV, None)
    with open(log_path, "w", encoding="utf-8") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,  # survives this process and Ctrl-C in its terminal
        )


def stop_local_head(*, temp_dir: str | Path | None = None) -> None:
    """Stop the head that `start_local_head` started with the same `temp_dir`.

    Sends SIGTERM to that one `ray start --block` process (which stops the Ray
    processes it started) and waits for it; never touches other Ray clusters on the
    machine. Raises RaymemError if no raymem local head is recorded in `temp_dir`.
    """
    temp_dir = _local_temp_dir(temp_dir)
    state_file = temp_dir / _LOCAL_HEAD_STATE_FILE
    if not state_file.is_file():
        raise RaymemError(
            f"No raymem local head is recorded in {temp_dir}; start one with "
            "`raymem up --local`, or pass the temp dir it was started with."
        )
    state = _read_local_head_state(state_file)
    pid = state.get("pid")
    if _is_our_local_head(pid, temp_dir):
        os.kill(pid, signal.SIGTERM)
        if not _wait_until_gone(pid, _LOCAL_HEAD_STOP_TIMEOUT_S):
            os.kill(pid, signal.SIGKILL)
            _wait_until_gone(pid, 10.0)
    _forget_ray_address(temp_dir, state.get("address"))
    state_file.unlink()


def _local_temp_dir(temp_dir: str | Path | None) -> Path:
    """Return the temp dir a local head uses: the one given, else Ray's default."""
    if temp_dir is not None:
        return Path(temp_dir).absolute()
    from ray._common.utils import get_default_ray_temp_dir

    return Path(get_default_ray_temp_dir()).absolute()


def _read_local_head_state(state_file: Path) -> dict:
    """Return the recorded local head (pid, address, ...); RaymemError if unreadable."""
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RaymemError(
            f"The local head record {state_file} is unreadable ({error}); delete it and "
            "stop that head with `ray stop` if it still runs."
        ) from None
    if not isinstance(state, dict):
        raise RaymemError(
            f"The local head record {state_file} is not a JSON object; delete it."
        )
    return state


def _wait_until_started(process: subprocess.Popen, log_path: Path, address: str) -> None:
    """Wait until `ray start` logs that it started; RaymemError if it exits or stalls."""
    deadline = time.monotonic() + _LOCAL_HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RaymemError(
                f"Ray could not start a local head at {address} "
                f"({_last_meaningful_line(log_path)}; full log {log_path}); pick a free "
                "--port, or stop what runs there."
            )
        if _RAY_STARTED_LINE in log_path.read_text(encoding="utf-8", errors="replace"):
            return
        time.sleep(0.2)
    process.terminate()
    process.wait(timeout=_LOCAL_HEAD_STOP_TIMEOUT_S)
    raise RaymemError(
        f"Ray did not start a local head at {address} within "
        f"{_LOCAL_HEAD_START_TIMEOUT_S:.0f} s (log {log_path}); read the log and try again."
    )


def _last_meaningful_line(log_path: Path) -> str:
    """Return the last non-empty line of a log file (for error messages)."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else "no output"


def _is_our_local_head(pid: Any, temp_dir: Path) -> bool:
    """True if `pid` is a live `ray start --head --block` using `temp_dir`."""
    if not isinstance(pid, int) or pid <= 0 or _is_gone(pid):
        return False
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [argument.decode(errors="replace") for argument in arguments]
    return "--block" in words and "--head" in words and f"--temp-dir={temp_dir}" in words


def _is_gone(pid: int) -> bool:
    """True if process `pid` has exited (a zombie counts as exited; our child is reaped)."""
    try:
        reaped_pid, _ = os.waitpid(pid, os.WNOHANG)
        if reaped_pid == pid:
            return True
    except ChildProcessError:
        pass  # not our child: someone else reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state == "Z"


def _wait_until_gone(pid: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for process `pid` to exit; returns whether it did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _is_gone(pid):
            return True
        time.sleep(0.2)
    return _is_gone(pid)


def _forget_ray_address(temp_dir: Path, address: Any) -> None:
    """Remove Ray's "current cluster" file in `temp_dir` if it still names `address`.

    Otherwise `ray.init(address="auto")` would keep trying the stopped head.
    """
    address_file = temp_dir / "ray_current_cluster"
    try:
        if address_file.read_text(encoding="utf-8").strip() == address:
            address_file.unlink()
    except OSError:
        pass
