"""`raymem up cluster.yaml` on a fresh install: a missing cloud SDK or missing credentials, said as such."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import ray.autoscaler.sdk

from raymem.cluster import launcher as cluster
from raymem.errors import RaymemError

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture
def no_launch(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the launcher must not run")

    monkeypatch.setattr(ray.autoscaler.sdk, "create_or_update_cluster", refuse)
    monkeypatch.setattr(ray.autoscaler.sdk, "teardown_cluster", refuse)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no auth token is created before the check
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)


def test_missing_sdk_names_the_extra_that_installs_it(monkeypatch, no_launch, tmp_path):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError, as on a fresh install
    for action in (lambda: cluster.up(CLUSTER_YAML, yes=True), lambda: cluster.down(CLUSTER_YAML, yes=True)):
        with pytest.raises(RaymemError) as caught:
            action()
        message = str(caught.value)
        assert "boto3" in message and "pip install 'raymem[aws]'" in message and "credentials" not in message
    assert not (tmp_path / "home" / ".ray").exists()


def test_missing_credentials_name_the_login_command(monkeypatch, no_launch):
    fake = types.ModuleType("boto3")
    fake.Session = lambda: types.SimpleNamespace(get_credentials=lambda: None)
    monkeypatch.setitem(sys.modules, "boto3", fake)
    with pytest.raises(RaymemError, match="no aws credentials; run `aws configure`"):
        cluster.up(CLUSTER_YAML, yes=True)


def test_cli_reports_it_as_one_error_line(monkeypatch, no_launch):
    from typer.testing import CliRunner

    from raymem.cli import app

    monkeypatch.setitem(sys.modules, "boto3", None)
    result = CliRunner().invoke(app, ["up", str(CLUSTER_YAML), "--yes"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "raymem[aws]" in lines[0]
