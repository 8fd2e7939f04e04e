"""Data on every node: cluster.yaml gives every node RAYMEM_DATA_DIR and copies the data sets there
(scripts/sync_data.sh, run here with a stand-in `aws` that records what it is asked)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "sync_data.sh"


def _config() -> dict:
    return yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())


def test_every_node_reads_the_data_sets_at_one_path_copied_in_its_setup():
    config = _config()
    common = " ".join(config["setup_commands"])
    assert "RAYMEM_DATA_DIR=/mnt/data/tensorflow_datasets" in common and "RAYMEM_DATA_SOURCE=s3://" in common
    head = [c for c in config["head_setup_commands"] if "sync_data.sh" in c]
    workers = [c for c in config["worker_setup_commands"] if "sync_data.sh" in c]
    assert head and "imagenet2012" in head[0] and "cifar100" in head[0]
    assert workers and "cifar100" in workers[0] and "nvidia-smi" in workers[0]  # ImageNet only on 8-GPU nodes
    assert "/home/ubuntu/raymem" in config["file_mounts"]  # the script travels with the repository


def _run_script(tmp_path, source: str | None, *names: str, present=("mnist", "cifar100")):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "aws-calls"
    fake_aws = bin_dir / "aws"
    listed = " ".join(f"*/{name}/" for name in present)
    fake_aws.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {calls}\n'
        'if [ "$2" = ls ]; then case "$3" in ' + (listed.replace(" ", "|") or "__none__")
        + ") exit 0;; *) exit 1;; esac; fi\n"
    )
    fake_aws.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAYMEM_DATA_DIR": str(tmp_path / "data")}
    env.pop("RAYMEM_DATA_SOURCE", None)
    if source is not None:
        env["RAYMEM_DATA_SOURCE"] = source
    done = subprocess.run(["bash", str(SCRIPT), *names], env=env, capture_output=True, text=True, timeout=30)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_sync_copies_each_named_data_set_and_skips_missing_ones(tmp_path):
    done, calls = _run_script(tmp_path, "s3://bucket/tfds/", "mnist", "cifar100", "imagenet2012")
    assert done.returncode == 0, done.stderr
    data = tmp_path / "data"
    assert f"s3 sync --only-show-errors s3://bucket/tfds/mnist {data}/mnist" in calls
    assert f"s3 sync --only-show-errors s3://bucket/tfds/cifar100 {data}/cifar100" in calls
    assert not any(c.startswith("s3 sync") and "imagenet2012" in c for c in calls)
    assert "imagenet2012 skipped" in done.stderr
    assert data.is_dir()


def test_sync_without_a_bucket_copies_nothing_and_does_not_fail_the_setup(tmp_path):
    for source in (None, "s3://YOUR-BUCKET/tensorflow_datasets", "/not/s3"):
        done, calls = _run_script(tmp_path, source, "mnist")
        assert done.returncode == 0 and calls == [] and "no data set copied" in done.stderr
