"""Tests for raymem.cluster.launcher: offline validation of cluster YAML files, `up`/`down`
handing only valid files to Ray's launcher, and the local head on 127.0.0.1.

Nothing here launches a cloud node: Ray's launcher SDK is replaced by a recorder.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

import ray.autoscaler.sdk

from raymem.cluster import connection
from raymem.cluster import launcher as cluster
from raymem.cluster.connection import HEAD_RESOURCE
from raymem.errors import RaymemError

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"


def _repo_config() -> dict:
    """The repository's cluster.yaml as plain YAML data (read independently of raymem)."""
    return yaml.safe_load(CLUSTER_YAML.read_text())


class LauncherRecorder:
    """Stands in for Ray's launcher SDK and records every call."""

    def __init__(self):
        self.created: list[tuple[dict, dict]] = []
        self.torn_down: list[dict] = []
        self.create_error: Exception | None = None

    def create_or_update_cluster(self, cluster_config, **options):
        self.created.append((copy.deepcopy(cluster_config), options))
        if self.create_error is not None:
            raise self.create_error
        return cluster_config

    def teardown_cluster(self, cluster_config, **options):
        self.torn_down.append(copy.deepcopy(cluster_config))

    def get_head_node_ip(self, cluster_config):
        return "198.51.100.7"


@pytest.fixture
def launcher(monkeypatch) -> LauncherRecorder:
    recorder = LauncherRecorder()
    monkeypatch.setattr(ray.autoscaler.sdk, "create_or_update_cluster",
                        recorder.create_or_update_cluster)
    monkeypatch.setattr(ray.autoscaler.sdk, "teardown_cluster", recorder.teardown_cluster)
    monkeypatch.setattr(ray.autoscaler.sdk, "get_head_node_ip", recorder.get_head_node_ip)
    monkeypatch.setattr(cluster, "check_cloud_access", lambda config, path: None)  # a cloud SDK and credentials
    return recorder


@pytest.fixture
def home_with_token(tmp_path, monkeypatch) -> Path:
    """A fake home whose ~/.ray/auth_token exists, so `up` neither creates nor reads ours."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("test-token-" + "0" * 32)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    return home


# --------------------------------------------------------------------------- the repository's file


def test_repository_cluster_yaml_passes_validation():
    config = cluster.load_cluster_config(CLUSTER_YAML)
    assert config == _repo_config()  # returned as written

    prepared = cluster.validate_cluster_config(config, str(CLUSTER_YAML))
    # Ray's prepare_config merged the common setup commands into the head's.
    assert prepared["head_setup_commands"][: len(config["setup_commands"])] == (
        config["setup_commands"]
    )


def test_repository_cluster_yaml_describes_the_intended_cluster():
    config = _repo_config()
    assert config["cluster_name"] == "raymem"
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    node_types = config["available_node_types"]

    head = node_types[config["head_node_type"]]
    assert head["resources"]["GPU"] == 0
    # The accumulator is pinned with Ray's own head resource, which no cluster file declares.
    assert HEAD_RESOURCE.startswith("node:") and HEAD_RESOURCE in Path(cluster.__file__).parents[2].joinpath(
        "cluster.yaml").read_text()
    assert node_types["gpu_8x"]["resources"]["GPU"] == 8
    assert node_types["gpu_1x"]["resources"]["GPU"] == 1
    for name, node_type in node_types.items():
        if name != config["head_node_type"]:
            assert node_type["max_workers"] <= config["max_workers"]
        on_spot = node_type["node_config"].get("InstanceMarketOptions", {}).get(
            "MarketType") == "spot"
        assert on_spot == (node_type["resources"].get(cluster.SPOT_RESOURCE) == 1), name
    assert config["idle_timeout_minutes"] > 0

    # Every command list is explicit, so none of Ray's AWS defaults leak in.
    for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        assert key in config, key
    assert any("pip install" in command and "/home/ubuntu/raymem[gpu]" in command
               for command in config["setup_commands"])
    assert "/home/ubuntu/raymem" in config["file_mounts"]


def test_repository_cluster_yaml_keeps_token_auth_on_and_dashboard_local():
    config = _repo_config()
    token_mounts = [local for local in config["file_mounts"].values()
                    if local == "~/.ray/auth_token"]
    assert token_mounts, "the auth token must be shipped to the nodes"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [command for command in config[key] if "ray start" in command]
        assert starts, key
        for command in starts:
            assert "RAY_AUTH_MODE=token" in command
            assert "0.0.0.0" not in command
    (head_start,) = [command for command in config["head_start_ray_commands"]
                     if "ray start" in command]
    assert "--dashboard-host=127.0.0.1" in head_start
    # No inbound rules beyond Ray's own (SSH + traffic inside the cluster).
    assert "security_group" not in config["provider"]


# --------------------------------------------------------------------------- invalid files


def _mutated(mutate) -> dict:
    config = _repo_config()
    mutate(config)
    return config


INVALID_CONFIGS = {
    "missing_provider": (lambda c: c.pop("provider"), "provider"),
    "max_workers_not_integer": (lambda c: c.__setitem__("max_workers", "lots"), "max_workers"),
    "gpu_count_not_integer": (
        lambda c: c["available_node_types"]["gpu_8x"]["resources"].__setitem__("GPU", "eight"),
        "available_node_types.gpu_8x.resources.GPU",
    ),
    "unknown_top_level_key": (lambda c: c.__setitem__("colour", "blue"), "colour"),
    "unknown_node_type_key": (
        lambda c: c["available_node_types"]["gpu_1x"].__setitem__("gpus", 1),
        "available_node_types.gpu_1x.gpus",
    ),
    "setup_commands_not_a_list": (
        lambda c: c.__setitem__("setup_commands", "pip install raymem"), "setup_commands"),
    "head_node_type_not_defined": (  # passes the schema, fails Ray's validate_config
        lambda c: c.__setitem__("head_node_type", "cpu_head"), "head_node_type"),
}


@pytest.mark.parametrize("case", sorted(INVALID_CONFIGS))
def test_invalid_config_names_file_and_field_and_launches_nothing(
        case, tmp_path, launcher, home_with_token):
    mutate, field = INVALID_CONFIGS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(_mutated(mutate)))

    for action in (cluster.up, cluster.down):
        with pytest.raises(RaymemError) as caught:
            action(path)
        message = str(caught.value)
        assert str(path) in message
        assert field in message
        assert "\n" not in message
    assert launcher.created == [] and launcher.torn_down == []


RAW_INVALID_FILES = {
    "broken_yaml": ("cluster_name: raymem\nprovider: {type: aws\n", "not valid YAML"),
    "top_level_list": ("- cluster_name: raymem\n", "mapping"),
    "empty_file": ("", "mapping"),
    "duplicated_key": ("cluster_name: raymem\nmax_workers: 2\nmax_workers: 200\n",
                       r"line 3, column 1 \(found the key 'max_workers' twice\)"),
}


@pytest.mark.parametrize("case", sorted(RAW_INVALID_FILES))
def test_unreadable_file_names_the_problem_and_launches_nothing(
        case, tmp_path, launcher, home_with_token):
    text, problem = RAW_INVALID_FILES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    for action in (cluster.up, cluster.down):
        with pytest.raises(RaymemError, match=problem) as caught:
            action(path)
        assert str(path) in str(caught.value)
    assert launcher.created == [] and launcher.torn_down == []


def test_broken_yaml_message_gives_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("cluster_name: raymem\nmax_workers: 2\nprovider: {type: aws\n")
    with pytest.raises(RaymemError, match=r"line \d+"):
        cluster.load_cluster_config(path)


def test_missing_file_launches_nothing(tmp_path, launcher, home_with_token):
    path = tmp_path / "nowhere" / "cluster.yaml"
    for action in (cluster.up, cluster.down):
        with pytest.raises(RaymemError, match="does not exist") as caught:
            action(path)
        assert str(path) in str(caught.value)
    assert launcher.created == [] and launcher.torn_down == []


def test_missing_mount_source_launches_nothing(tmp_path, launcher, home_with_token):
    config = _repo_config()
    config["file_mounts"]["/home/ubuntu/raymem"] = "./not-here"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(RaymemError, match="file_mounts./home/ubuntu/raymem") as caught:
        cluster.up(path)
    assert str(path) in str(caught.value)
    assert launcher.created == []


def test_conflicting_restart_flags_launch_nothing(launcher, home_with_token):
    with pytest.raises(RaymemError, match="no_restart"):
        cluster.up(CLUSTER_YAML, no_restart=True, restart_only=True)
    assert launcher.created == []


# --------------------------------------------------------------------------- valid files


def test_up_hands_the_valid_file_to_the_launcher_once(launcher, home_with_token):
    result = cluster.up(CLUSTER_YAML, no_restart=True)

    assert len(launcher.created) == 1 and launcher.torn_down == []
    sent, options = launcher.created[0]
    assert options == {"no_restart": True, "restart_only": False}
    expected = _repo_config()
    # The relative repository mount is read relative to the YAML file, nothing else changes.
    expected["file_mounts"]["/home/ubuntu/raymem"] = str(REPO_ROOT)
    assert sent == expected
    assert result == {"cluster_name": "raymem", "config_path": str(CLUSTER_YAML),
                      "launched": True, "head_ip": "198.51.100.7"}


def test_down_hands_the_valid_file_to_the_launcher_once(launcher, home_with_token):
    cluster.down(CLUSTER_YAML)
    assert launcher.created == []
    assert len(launcher.torn_down) == 1
    assert launcher.torn_down[0]["cluster_name"] == "raymem"
    assert launcher.torn_down[0]["file_mounts"]["/home/ubuntu/raymem"] == str(REPO_ROOT)


def test_up_and_down_ask_first_when_yes_is_false(monkeypatch, launcher, home_with_token):
    answers = iter(["n", "yes", "", "y"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))

    assert cluster.up(CLUSTER_YAML, yes=False)["launched"] is False
    assert launcher.created == []
    assert cluster.up(CLUSTER_YAML, yes=False)["launched"] is True
    assert len(launcher.created) == 1

    cluster.down(CLUSTER_YAML, yes=False)
    assert launcher.torn_down == []
    cluster.down(CLUSTER_YAML, yes=False)
    assert len(launcher.torn_down) == 1


def test_launcher_failure_becomes_one_sentence_error(launcher, home_with_token):
    launcher.create_error = RuntimeError("Unable to locate credentials")
    with pytest.raises(RaymemError, match="Unable to locate credentials") as caught:
        cluster.up(CLUSTER_YAML)
    assert str(CLUSTER_YAML) in str(caught.value)


def test_up_creates_the_auth_token_with_ray_when_missing(tmp_path, monkeypatch, launcher):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)

    cluster.up(CLUSTER_YAML)

    token_file = home / ".ray" / "auth_token"  # where Ray itself keeps it
    assert token_file.is_file() and len(token_file.read_text().strip()) >= 16
    assert len(launcher.created) == 1


# --------------------------------------------------------------------------- local head


def test_a_local_head_serves_the_job_api_by_default_as_ray_start_does():
    signature = inspect.signature(cluster.start_local_head)
    assert signature.parameters["dashboard"].default is True
    assert len(signature.parameters) <= 10
    common = dict(port=7000, temp_dir=Path("/tmp/rm"), client_server_port=7001, num_gpus=None, dashboard_port=7002,
                  dashboard_agent_port=7003)
    served = cluster._local_head_command(dashboard=True, **common)
    assert "--include-dashboard=true" in served and "--dashboard-host=127.0.0.1" in served
    assert "--dashboard-port=7002" in served and "--dashboard-agent-listen-port=7003" in served
    bare = cluster._local_head_command(dashboard=False, **common)
    assert "--include-dashboard=false" in bare and not any(a.startswith("--dashboard-port") for a in bare)
    assert {"--head", "--block", "--node-ip-address=127.0.0.1", "--port=7000", "--temp-dir=/tmp/rm"} <= set(bare)


def test_a_local_head_refuses_a_second_one_and_forgets_a_dead_one(tmp_path):
    record = tmp_path / cluster._LOCAL_HEAD_STATE_FILE
    record.write_text(json.dumps({"pid": os.getpid(), "address": "127.0.0.1:1"}))  # not a ray head: stale
    assert cluster._claim_local_head_record(tmp_path) == record and not record.exists()
    record.write_text("not json")
    with pytest.raises(RaymemError, match="unreadable"):
        cluster._claim_local_head_record(tmp_path)


def test_ray_address_prefers_the_explicit_one_then_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert connection.ray_address("127.0.0.1:1") == "127.0.0.1:1"
    assert connection.ray_address(None) == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert connection.ray_address(None) is None
    monkeypatch.delenv("RAY_ADDRESS")
    assert connection.ray_address("") is None


def test_stop_local_head_without_a_recorded_head_is_an_error(tmp_path):
    with pytest.raises(RaymemError, match="No raymem local head"):
        cluster.stop_local_head(temp_dir=tmp_path)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_DRIVER = """
import json, sys
import ray
ray.init(address=sys.argv[1])

@ray.remote
def node_ip_of_task():
    return ray.util.get_node_ip_address()

print(json.dumps({
    "node_ips": [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]],
    "task_ip": ray.get(node_ip_of_task.remote()),
    "head_resource": ray.cluster_resources().get(sys.argv[2], 0),
}))
"""


def _processes_mentioning(text: str, wait_s: float) -> list[int]:
    """Ids of live processes whose command line contains `text`, after waiting up to wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue
            if text.encode() in command_line and state != "Z":
                found.append(int(entry.name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _rejected_for_token(address: str, environment: dict, log_path: Path) -> bool:
    """Start a driver with a wrong token; True once the head answers InvalidAuthToken."""
    with open(log_path, "w") as log:
        driver = subprocess.Popen(
            [sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1])", address],
            env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "InvalidAuthToken" in log_path.read_text(errors="replace"):
                return True
            if driver.poll() is not None:
                return "InvalidAuthToken" in log_path.read_text(errors="replace")
            time.sleep(0.2)
        return False
    finally:
        driver.kill()
        driver.wait()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_local_head_binds_loopback_with_token_auth_and_stops(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # Short, private temp dir: Ray's socket paths live under it, and no other cluster does.
    temp_dir = Path(tempfile.mkdtemp(prefix="rmtest", dir="/tmp"))
    info = cluster.start_local_head(port=_free_port(), client_server_port=_free_port(),
                                    temp_dir=temp_dir, dashboard=False)  # test_detach covers the Job API
    try:
        assert info["address"] == f"127.0.0.1:{info['port']}"
        with pytest.raises(RaymemError, match="already running"):
            cluster.start_local_head(port=_free_port(), temp_dir=temp_dir)

        environment = {key: value for key, value in os.environ.items()
                       if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        environment.update(info["driver_env"])
        driver = subprocess.run(
            [sys.executable, "-c", _DRIVER, info["address"], HEAD_RESOURCE],
            env=environment, capture_output=True, text=True, timeout=90)
        assert driver.returncode == 0, driver.stderr[-2000:]
        seen = json.loads(driver.stdout.strip().splitlines()[-1])
        assert seen["node_ips"] == ["127.0.0.1"]
        assert seen["task_ip"] == "127.0.0.1"
        assert seen["head_resource"] == 1

        wrong_token = {**environment, "RAY_AUTH_TOKEN": "not-the-cluster-token-" + "x" * 16}
        assert _rejected_for_token(info["address"], wrong_token, temp_dir / "intruder.log")
    finally:
        cluster.stop_local_head(temp_dir=temp_dir)

    try:
        assert _processes_mentioning(str(temp_dir), wait_s=15) == []
        with pytest.raises(RaymemError, match="No raymem local head"):
            cluster.stop_local_head(temp_dir=temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
