"""The whole remaining demand shown to the autoscaler, and the warning about a head-local run directory."""

from __future__ import annotations

import io
import tempfile

import pytest

from raymem.driver import run as run_module
from raymem.config.experiment import resolve_config
from raymem.driver.run import AutoscalerDemand, demand_bundles, single_point_of_loss


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_bundles_per_trial_and_per_worker():
    gpu = resolve_config("cifar100", {"trials": 10})
    assert demand_bundles(gpu, 3) == [{"CPU": 4.0, "GPU": 1.0}] * 3
    group = resolve_config("digits", {"gpus_per_trial": 2, "cpus_per_trial": 8, "nodes_per_trial": 2})
    assert demand_bundles(group, 2) == [{"CPU": 8.0, "GPU": 2.0}] * 4  # one bundle per worker
    assert demand_bundles(gpu, 0) == []


def test_whole_demand_from_the_start_then_shrinking_and_released():
    sent, clock = [], Clock()
    demand = AutoscalerDemand(resolve_config("cifar100", {"trials": 20}), request=lambda bundles: sent.append(bundles),
                              clock=clock)
    demand.update(20)
    assert sent[-1] == [{"CPU": 4.0, "GPU": 1.0}] * 20  # every remaining trial at once, not a window of 2
    demand.update(20)
    assert len(sent) == 1  # unchanged: not sent again
    clock.now += 1
    demand.update(19)
    assert len(sent) == 1  # shrinking is throttled
    clock.now += run_module.DEMAND_UPDATE_S
    demand.update(18)
    assert len(sent[-1]) == 18
    demand.update(0)
    assert sent[-1] == []  # the end of the run drops it at once
    demand.release()
    assert len(sent) == 3  # nothing left to withdraw


def test_max_pending_caps_the_request_and_release_withdraws_it():
    sent = []
    config = resolve_config("cifar100", {"trials": 2000, "max_pending": 16})
    demand = AutoscalerDemand(config, request=lambda bundles: sent.append(bundles), clock=Clock())
    demand.update(2000)
    assert len(sent[-1]) == 16
    demand.update(1999)
    assert len(sent) == 1  # still 16
    demand.release()
    assert sent[-1] == [] and demand.calls == [16, 0]


def test_a_failing_request_never_fails_the_run():
    def broken(bundles):
        raise RuntimeError("no autoscaler")

    demand = AutoscalerDemand(resolve_config("digits"), request=broken, clock=Clock())
    demand.update(5)
    demand.release()


def test_head_local_run_dir_on_a_multi_node_cluster_warns(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}] * 3 + [{"Alive": False}])
    stream = io.StringIO()
    message = run_module.warn_if_single_point_of_loss(tempfile.gettempdir() + "/runs/x", stream=stream)
    assert message and stream.getvalue().startswith("warning: run directory") and "3 nodes" in stream.getvalue()
    assert "--storage s3://" in message
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    assert run_module.warn_if_single_point_of_loss("/tmp/runs/x", stream=io.StringIO()) is None


@pytest.mark.parametrize("uri, nodes, mount, warns", [
    ("s3://bucket/runs/x", 5, None, False),
    ("/data/runs/x", 1, "ext4", False),
    ("/data/runs/x", 4, "ext4", True),
    ("/mnt/efs/runs/x", 4, "nfs4", False),
    ("/mnt/lustre/runs/x", 4, "lustre", False),
])
def test_single_point_of_loss(uri, nodes, mount, warns):
    assert (single_point_of_loss(uri, nodes, mount_type=mount) is not None) == warns


@pytest.mark.parametrize("flags", [["--checkpoint-every", "-1"], ["--checkpoint-every", "0"], ["--max-pending", "0"]])
def test_bad_run_flags_exit_2_with_one_error_line_and_start_nothing(tmp_path, monkeypatch, flags):
    from typer.testing import CliRunner

    from raymem.cli import app

    started = []
    monkeypatch.setattr(run_module, "run_experiment", lambda *a, **k: started.append(1))
    result = CliRunner().invoke(app, ["run", "digits", "--storage", str(tmp_path / "runs"), *flags])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert not started and not (tmp_path / "runs").exists()


def test_default_request_goes_to_rays_autoscaler_sdk(monkeypatch):
    import ray.autoscaler.sdk

    sent = []
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources",
                        lambda num_cpus=None, bundles=None: sent.append(bundles))
    demand = AutoscalerDemand(resolve_config("mnist", {"trials": 8}), clock=Clock())
    demand.update(8)
    demand.release()
    assert sent == [[{"CPU": 2.0, "GPU": 0.25}] * 8, []]
