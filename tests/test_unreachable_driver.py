"""A driver the cluster's workers cannot reach stops at its first trial with what to change, instead of spending
every attempt of every trial (seen: a driver in token mode on a cluster started without token authentication)."""

from __future__ import annotations

import secrets
import time

import pytest

from raymem.errors import RaymemError


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_ray")
def test_a_token_mode_driver_on_a_cluster_without_tokens_stops_at_once(tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    from raymem.config.experiment import resolve_config
    from raymem.driver.run import DriverOptions, run_experiment

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # no token authentication
    cluster.add_node(num_cpus=1)
    # what `connect` does when ~/.ray/auth_token exists: this driver speaks token mode
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    try:
        config = resolve_config("digits", {"trials": 3, "epochs": 1, "max_attempts": 3})
        started = time.monotonic()
        with pytest.raises(RaymemError, match="cannot reach this driver.*RAY_AUTH_MODE=disabled"):
            run_experiment(config, name="unreachable", run_uri=str(tmp_path / "run"),
                           options=DriverOptions(address=cluster.address, progress=False))
        assert time.monotonic() - started < 240
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
