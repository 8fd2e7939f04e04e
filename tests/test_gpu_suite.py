"""scripts/gpu_suite.py: its smoke run (the whole suite on CPU in tiny sizes) writes every table, it never writes
CPU numbers over docs/gpu-results.md, and without a GPU it measures and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_suite.py"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=ENV, cwd=REPO,
                          timeout=600)


def test_smoke_refuses_to_write_cpu_numbers_over_the_gpu_results():
    docs = REPO / "docs" / "gpu-results.md"
    before = docs.read_bytes() if docs.exists() else None
    out = _run("--smoke", "--out", str(docs))
    assert out.returncode == 2 and "error:" in out.stderr and "--out" in out.stderr
    assert (docs.read_bytes() if docs.exists() else None) == before


def test_without_a_gpu_it_says_so_and_writes_nothing():
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_check

    if gpu_check.gpus_found():
        pytest.skip("a GPU is here: the suite would measure it")
    docs = REPO / "docs" / "gpu-results.md"
    before = docs.read_bytes() if docs.exists() else None
    out = _run()
    assert out.returncode == 0 and "no GPU is visible" in out.stdout
    assert (docs.read_bytes() if docs.exists() else None) == before


@pytest.mark.slow
def test_the_smoke_run_writes_every_table(tmp_path):
    target = tmp_path / "results.md"
    out = _run("--smoke", "--out", str(target))
    assert out.returncode == 0, out.stderr[-3000:]
    text = target.read_text()
    for heading in ("# GPU results", "- GPU: none (CPU)", "- TensorFlow: ", "- Keras: ", "- Ray: ", "- raymem: ",
                    "## 1. Seconds per epoch", "## 2. Models/hour", "### mnist:", "### cifar10-fast:",
                    "### cifar100-fast:", "## 3. Four 0.25-GPU", "## 4. A 2,000-trial study"):
        assert heading in text, heading
    for preset, paper in (("cifar100", "90"), ("cifar100-resnet18", "17"), ("mnist", "7")):
        row = next(line for line in text.splitlines() if line.startswith(f"| {preset} | "))
        assert f"| {paper} |" in row and "skipped" not in row and "failed" not in row, row
    for label in ("unpacked", "K = 1", "K = 2"):
        assert text.count(f"| {label} | ") == 3, label           # one row per packed preset
    assert "failed" not in text and "skipped" not in text
    assert "packing goal (>= 4x) is **" in text
    study = text.split("## 4.")[1]
    assert all(f"| {preset} | " in study for preset in ("cifar100", "cifar10-fast", "cifar100-fast"))
