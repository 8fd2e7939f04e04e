"""`raymem trials`: one row per logged trial from its metadata (offline: no Ray, no TensorFlow)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from raymem import api
from raymem.cli import app
from raymem.store.run_info import read_run_info
from raymem.store.storage import RunStore
from raymem.store.trial_log import write_trial
from raymem.store.trial_record import TrialRecord

#: The columns the terminal table shows, in order.
HEADINGS = ["trial", "attempt", "host", "train seconds", "resumed from epoch", "test accuracy"]


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
        metadata={"attempt": 2, "node_id": "abc", "host": "gpu-node-7", "started": 1_700_000_000.0,
                  "finished": 1_700_000_060.5, "train_seconds": 55.0, "resumed_from_epoch": 3,
                  "subset_accuracy": 0.99, "test_accuracy": 0.8, "gpu_ids": ["0"],
                  "checkpoint_warnings": ["skipped one"]}))
    return run_dir


def test_trials_table_reads_metadata_and_leaves_unknowns_null(tmp_path):
    table = api.trials(_run_with_metadata(tmp_path))
    rows = table.to_pylist()
    assert [r["trial_id"] for r in rows] == [0, 1, 2]
    assert rows[0]["attempt"] is None and rows[0]["test_accuracy"] is None
    one = rows[1]
    assert (one["attempt"], one["node_id"], one["host"], one["resumed_from_epoch"]) == (2, "abc", "gpu-node-7", 3)
    assert (one["train_accuracy"], one["test_accuracy"], one["checkpoint_warnings"]) == (0.99, 0.8, 1)
    assert (one["finished"] - one["started"]).total_seconds() == 60.5


def test_trials_table_shows_the_six_columns_a_person_scans(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, ["trials", _run_with_metadata(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    header = lines[0]
    positions = [header.index(heading) for heading in HEADINGS]
    assert positions == sorted(positions)  # every heading, in this order, on one line
    for hidden in ("node", "started", "finished", "predict", "gpu", "warnings", "train_accuracy"):
        assert hidden not in header
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["1"] == ["1", "2", "gpu-node-7", "55.0", "3", "0.800"]
    assert rows["0"] == ["0", "-", "-", "-", "-", "-"]  # an ingested trial recorded none of them
    assert sorted(rows) == ["0", "1", "2"]


def test_trials_json_is_one_document_with_every_column(tmp_path):
    run_dir = _run_with_metadata(tmp_path)
    out = tmp_path / "t.parquet"
    result = CliRunner().invoke(app, ["trials", run_dir, "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # the whole of stdout is one JSON array; the --out message is on stderr
    assert isinstance(rows, list) and [r["trial_id"] for r in rows] == [0, 1, 2]
    assert set(rows[1]) == set(api.trials(run_dir).column_names)
    assert (rows[1]["attempt"], rows[1]["node_id"], rows[1]["test_accuracy"]) == (2, "abc", 0.8)
    assert rows[1]["started"].startswith("2023-11-14T22:13:20")
    assert "wrote 3 rows" in result.stderr
    assert pq.read_table(out).num_rows == 3


@pytest.mark.parametrize("args", [[], ["--json"]])
def test_trials_of_a_missing_run_is_one_error_line(tmp_path, args):
    result = CliRunner().invoke(app, ["trials", str(tmp_path / "missing"), *args])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
