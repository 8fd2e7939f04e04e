"""Clean exits under load: every read command and its error paths exit exactly 0 or 2 (scripts/stress_exits.py).

A process that finishes its work and then aborts while finalizing (exit 134) is seen only sometimes, so each case
runs several times beside one busy loop per core; the script's full run (20 repetitions) is in the README.
"""

from __future__ import annotations


import pytest
from scripts_loader import load_script  # tests/scripts_loader.py

@pytest.mark.slow
def test_read_commands_exit_0_or_2_every_time_under_load(tmp_path):
    stress_exits = load_script("stress_exits.py")
    rows = stress_exits.stress(reps=3, workdir=tmp_path)
    assert {row["case"] for row in rows} == {case for case, _, _ in stress_exits.CASES}
    assert {row["expected"] for row in rows} == {0, 2}  # both the successes and the refusals are exercised
    for row in rows:
        assert row["runs"] == 3 and row["unexpected"] == [], row
        assert row["codes"] == {row["expected"]: 3}, row
