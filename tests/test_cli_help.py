"""The CLI's shape: command order and sections, examples, shared option panels, the one table layout, the one
--json convention, errors that name the command's own flag, and what `up` and `stop` ask of the library."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from raymem import api
from raymem import cli
from raymem.cli import app, format_table, user_errors
from raymem.errors import RaymemError

MAIN_COMMANDS = ["run", "status", "estimates", "pairs", "figures"]


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


def help_of(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.stdout


def listed_commands(text: str) -> list[str]:
    """The command names of the main help, in the order shown."""
    return re.findall(r"^  ([a-z]+)  ", text, flags=re.MULTILINE)


def test_main_help_lists_run_and_status_first_and_every_command_once():
    text = help_of()
    names = listed_commands(text)
    assert names[:2] == ["run", "status"]
    assert sorted(names) == sorted(command.name or command.callback.__name__ for command in app.registered_commands)
    assert names.index("ingest") > names.index("estimates")
    for section in cli.COMMAND_SECTIONS:
        assert f"\n{section}:\n" in text


def test_main_help_states_the_json_convention():
    text = " ".join(help_of().split())
    assert "--json prints exactly one JSON document" in text and "array of row objects" in text


@pytest.mark.parametrize("command", MAIN_COMMANDS)
def test_main_commands_show_examples_of_themselves(command):
    text = help_of(command)
    assert "Examples:" in text
    examples = [line.strip() for line in text.split("Examples:")[1].splitlines() if line.strip()]
    assert examples and all(line.startswith(f"raymem {command} ") for line in examples)


@pytest.mark.parametrize("command", [c.callback.__name__ for c in app.registered_commands])
def test_every_help_fits_80_columns(command):
    assert all(len(line) <= 80 for line in help_of(command).splitlines())


@pytest.mark.parametrize("command", ["status", "estimates", "pairs", "influence"])
def test_shared_options_sit_in_their_panels(command):
    text = help_of(command)
    bars = text.split(f"\n{cli.ERROR_BARS}:\n")[1].split("\n\n")[0]
    where = text.split(f"\n{cli.WHERE}:\n")[1].split("\n\n")[0]
    assert all(flag in bars for flag in ("--method", "--delta", "--simultaneous"))
    assert all(flag in where for flag in ("--storage", "--address"))
    options = text.split("\nOptions:\n")[1].split("\n\n")[0]
    assert "--method" not in options and "--storage" not in options


def test_run_help_says_what_the_flags_really_do():
    text = " ".join(help_of("run").split())
    assert "0: off" not in text and "checkpoint_every=null" in text
    assert "(small_cnn, linear)" not in text and "imagenet2012" in text
    assert "(ImageNet: 16)" not in text


# ---- the table layout ---------------------------------------------------------------------------------------


def test_a_table_fits_80_columns_and_keeps_brackets_and_nulls():
    rows = [{"name": f"row-{i}", "value": i / 3, "note": "[not markup] " * 8, "n": None if i else 7}
            for i in range(30)]
    text = format_table(rows, {"name": "name", "value": "value", "note": "note", "n": "count"}, limit=5)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "[not markup]" in text and "count" in lines[0]
    assert lines[-1] == "(5 of 30 rows shown)"
    assert "row-4" in text and "row-5" not in text
    first = next(line for line in lines if line.startswith("row-0"))
    assert first.split()[1] == "0.000" and first.rstrip().endswith("7")
    assert next(line for line in lines if line.startswith("row-1")).rstrip().endswith("-")


def test_a_table_reads_arrow_tables_too():
    import pyarrow as pa

    text = format_table(pa.table({"a": [1, 2], "b": ["x", None]}))
    assert text.splitlines()[0].split() == ["a", "b"]
    assert [line.split() for line in text.splitlines()[2:]] == [["1", "x"], ["2", "-"]]


# ---- errors name the command's flag -----------------------------------------------------------------------------


def _app_raising(parameter: str, flags: dict | None = None) -> typer.Typer:
    tiny = typer.Typer()

    @tiny.command()
    @user_errors(flags=flags)
    def read(base_lr: float = typer.Option(0.1, "--lr"), min_infl: float = typer.Option(0.15, "--min-infl")):
        raise RaymemError(f"{parameter} must be a number (got 'x'); pass e.g. 0.15.", parameter=parameter)

    @tiny.command()
    def other():
        pass

    return tiny


@pytest.mark.parametrize("parameter, flags, flag", [
    ("min_infl", None, "--min-infl"),            # the command's option of that name
    ("base_lr", None, "--lr"),                   # an option whose flag differs from its name
    ("pairs_fdr", None, "--pairs-fdr"),          # no such option: -- and dashes
    ("out_dir", {"out_dir": "--out"}, "--out"),  # the command's override table
])
def test_a_library_error_names_the_commands_flag(parameter, flags, flag):
    result = CliRunner().invoke(_app_raising(parameter, flags), ["read"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: {flag} must be a number (got 'x'); pass e.g. 0.15.\n"


def test_export_names_its_format_flag(tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.npz"),
                                      "--format", "csv"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --format 'csv' ") and result.stderr.count("\n") == 1


# ---- up and stop ------------------------------------------------------------------------------------------------


def test_up_local_serves_the_job_api_unless_told_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr(api, "up", lambda *a, **k: calls.append(k) or {"address": "127.0.0.1:6379"})
    assert CliRunner().invoke(app, ["up", "--local"]).exit_code == 0
    assert CliRunner().invoke(app, ["up", "--local", "--no-dashboard"]).exit_code == 0
    assert [k["dashboard"] for k in calls] == [True, False]


def test_stop_stops_a_detached_job_once(monkeypatch):
    calls = []

    def stop(run, **kwargs):
        calls.append("stop")
        return {"job": {"job_id": "raymem-x-1", "was": "RUNNING", "state": "STOPPED"}, "accumulator": True}

    monkeypatch.setattr(api, "stop", stop)
    monkeypatch.setattr(api, "stop_job", lambda *a, **k: calls.append("stop_job"))
    result = CliRunner().invoke(app, ["stop", "x"])
    assert result.exit_code == 0, result.output
    assert calls == ["stop"]
    assert "job raymem-x-1 of x: STOPPED (stopped now)" in result.stdout
    assert "stopped the accumulator of x" in result.stdout
