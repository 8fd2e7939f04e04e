"""Fractional-GPU trials cap TensorFlow's memory before any op (TensorFlow's config API mocked: no GPU here)."""

from __future__ import annotations

import pytest

from raymem.training import fit


class FakeConfig:
    def __init__(self, gpus, initialised=False):
        self.gpus, self.initialised = gpus, initialised
        self.logical, self.growth = {}, {}

    def list_physical_devices(self, kind):
        return list(self.gpus) if kind == "GPU" else []

    def set_logical_device_configuration(self, device, configs):
        if self.initialised:
            raise RuntimeError("Virtual devices cannot be modified after being initialized")
        self.logical[device] = [c.memory_limit for c in configs]

    def set_memory_growth(self, device, enable):
        self.growth[device] = enable


@pytest.fixture
def fake_tf(tf, monkeypatch):
    def install(gpus, total_mb, initialised=False):
        fake = FakeConfig(gpus, initialised)
        monkeypatch.setattr(tf.config, "list_physical_devices", fake.list_physical_devices)
        monkeypatch.setattr(tf.config, "set_logical_device_configuration", fake.set_logical_device_configuration)
        monkeypatch.setattr(tf.config.experimental, "set_memory_growth", fake.set_memory_growth)
        asked = []
        monkeypatch.setattr(fit, "gpu_total_memory_mb", lambda index: asked.append(index) or total_mb)
        monkeypatch.setattr(fit, "_GPU_SHARE", None)
        return fake, asked
    return install


def test_quarter_gpu_gets_a_logical_device_capped_at_its_share(fake_tf, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    fake, asked = fake_tf(["GPU:0"], total_mb=80_000)
    done = fit.configure_gpu_share(0.25)
    assert asked == ["3"]  # the physical GPU Ray gave this process
    assert fake.logical == {"GPU:0": [int(80_000 * 0.25 * fit.GPU_SHARE_HEADROOM)]}
    assert done == {"gpu_share": "memory_limit", "gpu_memory_limit_mb": 18_000}
    assert fit.configure_gpu_share(0.25) is done  # once per process
    assert fake.growth == {}


def test_unknown_memory_falls_back_to_growth(fake_tf):
    fake, _ = fake_tf(["GPU:0"], total_mb=None)
    assert fit.configure_gpu_share(0.5) == {"gpu_share": "memory_growth"}
    assert fake.growth == {"GPU:0": True} and fake.logical == {}


def test_whole_gpus_and_cpu_trials_are_left_alone(fake_tf):
    fake, asked = fake_tf(["GPU:0"], total_mb=80_000)
    assert fit.configure_gpu_share(1.0) == {} and fit.configure_gpu_share(0.0) == {}
    assert fake.logical == {} and asked == []


def test_already_initialised_tensorflow_is_reported_not_fatal(fake_tf):
    fake_tf(["GPU:0"], total_mb=80_000, initialised=True)
    assert fit.configure_gpu_share(0.25) == {"gpu_share": "already initialised"}


def test_no_gpu_visible(fake_tf):
    fake_tf([], total_mb=None)
    assert fit.configure_gpu_share(0.25) == {"gpu_share": "none visible"}
