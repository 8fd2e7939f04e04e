"""`raymem trials`: one row per logged trial from its metadata (offline: no Ray, no TensorFlow)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from raymem import api
from raymem.cli import app
from raymem.store.trial_record import TrialRecord
from raymem.store.run_info import read_run_info
from raymem.store.storage import RunStore
from raymem.store.trial_log import write_trial


def _run_with_metadata(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((3, 20)) < 0.5
    run_dir = str(tmp_path / "r")
    api.ingest(run_dir, masks, rng.random((3, 20)) < 0.5, rng.random((3, 6)) < 0.5)
    store = RunStore.open(run_dir)
    info = read_run_info(store)
    store.delete("trials/trial-00000001.parquet")
    write_trial(store, TrialRecord(
        run_id=info.run_id, trial_id=1, seed=0, mask=masks[1], train_correct=masks[1], test_correct=np.ones(6, bool),
        metadata={"attempt": 2, "node_id": "abc", "started": 1_700_000_000.0, "finished": 1_700_000_060.5,
                  "train_seconds": 55.0, "resumed_from_epoch": 3, "subset_accuracy": 0.99, "test_accuracy": 0.8,
                  "gpu_ids": ["0"], "checkpoint_warnings": ["skipped one"]}))
    return run_dir


def test_trials_table_reads_metadata_and_leaves_unknowns_null(tmp_path):
    table = api.trials(_run_with_metadata(tmp_path))
    rows = table.to_pylist()
    assert [r["trial_id"] for r in rows] == [0, 1, 2]
    assert rows[0]["attempt"] is None and rows[0]["test_accuracy"] is None
    one = rows[1]
    assert (one["attempt"], one["node_id"], one["resumed_from_epoch"]) == (2, "abc", 3)
    assert (one["train_accuracy"], one["test_accuracy"], one["checkpoint_warnings"]) == (0.99, 0.8, 1)
    assert (one["finished"] - one["started"]).total_seconds() == 60.5


def test_trials_cli_json_and_parquet(tmp_path):
    run_dir = _run_with_metadata(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["trials", run_dir, "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["trial_id"] for r in lines] == [0, 1, 2] and lines[1]["attempt"] == 2
    out = tmp_path / "t.parquet"
    result = runner.invoke(app, ["trials", run_dir, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).num_rows == 3
    result = runner.invoke(app, ["trials", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "error:" in result.output
