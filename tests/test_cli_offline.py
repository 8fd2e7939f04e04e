"""The offline CLI: ingest .npy results, read estimates / pairs / influence / status from the trial log,
and turn every bad input into exit code 2 with one `error:` line that names it, writing nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from raymem import api
from raymem.estimator import log_replay
from raymem.cli import app
from raymem.estimator import report
from raymem.estimator.bars import Bars
from raymem.estimator.counts import Counts
from raymem.store.run_info import read_run_info
from raymem.store.storage import RunStore

N, N_TEST, T = 30, 20, 40
RAYMEM = Path(sys.executable).parent / "raymem"
LOOSE_PAIRS = ["--min-infl", "0.1234", "--min-mem", "-0.0567"]
#: What a run's anytime bars are tuned to: its planned trials and subset ratio (an ingested run plans what it holds).
PLAN = dict(planned_trials=T, subset_ratio=round(0.7 * N) / N)


def bars(**choices) -> Bars:
    return Bars(**choices, **PLAN)


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    """Readers must answer from the trial log, never from a Ray cluster found in the environment."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def sim(synthetic_run):
    return synthetic_run(seed=3, n=N, n_test=N_TEST, t=T, memorized=[4, 9], planted=[(4, 6)])


@pytest.fixture
def files(tmp_path, sim) -> dict[str, Path]:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = {}
    for flag, array in arrays_by_flag(sim):
        paths[flag] = folder / f"{flag.strip('-')}.npy"
        np.save(paths[flag], array)
    return paths


@pytest.fixture
def run_dir(tmp_path, files) -> Path:
    target = tmp_path / "run"
    result = invoke("ingest", str(target), *ingest_args(files))
    assert result.exit_code == 0, result.output
    return target


@pytest.fixture
def direct(sim) -> Counts:
    """The same trials counted straight from the arrays (no log, no CLI)."""
    counts = Counts.empty(N, N_TEST)
    for k in range(T):
        counts.add(k, sim.masks[k], sim.train_correct[k], sim.test_correct[k])
    counts.flush()
    return counts


def arrays_by_flag(sim) -> tuple:
    return ("--masks", sim.masks), ("--train-correct", sim.train_correct), ("--test-correct", sim.test_correct)


def ingest_args(files: dict[str, Path]) -> list[str]:
    return [str(x) for flag, path in files.items() for x in (flag, path)]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_user_error(result, *names: str) -> None:
    """Exit code 2, and stderr is exactly one line starting `error:` that mentions every name."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    assert result.stdout == ""


def assert_frame_equals_table(frame: pl.DataFrame, table) -> None:
    assert frame.columns == table.column_names
    for name in frame.columns:
        assert frame[name].to_list() == table.column(name).to_pylist(), name


# ---- what works --------------------------------------------------------------------------------

def test_ingest_writes_a_run_that_reads_back_the_same_counts(run_dir, direct):
    assert (run_dir / "run.json").is_file()
    assert len(list((run_dir / "trials").glob("trial-*.parquet"))) == T
    store = RunStore.open(str(run_dir))
    rebuilt = log_replay.counts_from_log(store, read_run_info(store))
    for name in ("n_in", "in_hits", "total_hits", "test_hits"):
        np.testing.assert_array_equal(getattr(rebuilt.all, name), getattr(direct.all, name))
    np.testing.assert_array_equal(rebuilt.pairs_ready(), direct.pairs_ready())


def test_estimates_out_writes_the_library_table(run_dir, tmp_path, direct):
    out = tmp_path / "est.parquet"
    result = invoke("estimates", str(run_dir), "--out", str(out), "--delta", "0.1")
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    assert {"train_index", "mem", "mem_lo", "mem_hi", "n_in", "n_out"} <= set(frame.columns)
    assert frame.height == N and frame["train_index"].to_list() == list(range(N))
    assert_frame_equals_table(frame, report.mem_table(direct, bars(delta=0.1)))
    assert_frame_equals_table(frame, api.estimates(str(run_dir), delta=0.1))
    assert "top memorized" in result.stdout


@pytest.mark.parametrize("command", [["estimates"], ["pairs", *LOOSE_PAIRS], ["influence", "--test-index", "6"]])
def test_an_out_ending_in_csv_is_written_as_csv_with_the_parquet_values(run_dir, tmp_path, command):
    written = {}
    for ext in ("parquet", "csv"):
        out = tmp_path / f"table.{ext}"
        result = invoke(command[0], str(run_dir), *command[1:], "--out", str(out))
        assert result.exit_code == 0, result.output
        written[ext] = out
    assert not written["csv"].read_bytes().startswith(b"PAR1")
    parquet, csv = pl.read_parquet(written["parquet"]), pl.read_csv(written["csv"])
    assert csv.columns == parquet.columns and csv.height == parquet.height > 0
    for name in parquet.columns:
        np.testing.assert_allclose(csv[name].cast(pl.Float64).to_numpy(), parquet[name].cast(pl.Float64).to_numpy(),
                                   rtol=1e-12, err_msg=name)


def test_estimates_figure_is_a_png(run_dir, tmp_path):
    figure = tmp_path / "mem.png"
    result = invoke("estimates", str(run_dir), "--figure", str(figure))
    assert result.exit_code == 0, result.output
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pairs_out_writes_the_library_pairs(run_dir, tmp_path, direct):
    out = tmp_path / "pairs.parquet"
    result = invoke("pairs", str(run_dir), *LOOSE_PAIRS, "--simultaneous", "--out", str(out))
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    expected = report.pairs_table(direct, bars(simultaneous=True), report.PairSelection(0.1234, -0.0567))
    assert 0 < frame.height == expected.num_rows
    assert_frame_equals_table(frame, expected)
    assert f"{frame.height} pairs" in result.stdout


def test_influence_lists_the_top_influencers(run_dir, tmp_path, direct):
    out = tmp_path / "infl.parquet"
    result = invoke("influence", str(run_dir), "--test-index", "6", "--top", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    assert_frame_equals_table(frame, report.influence_table(direct, 6, bars(), top=4))
    assert frame["train_index"].to_list()[0] == 4  # the planted pair (4, 6)


def test_status_json(run_dir, direct):
    result = invoke("status", str(run_dir), "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert (s["trials_done"], s["n_train"], s["n_test"], s["source"]) == (T, N, N_TEST, "log")
    expected = report.convergence_summary(direct, bars(), subset_size=s["subset_size"])
    assert s["mem"]["median_halfwidth"] == pytest.approx(expected["mem"]["median_halfwidth"])
    assert s["mem"]["certified"] == expected["mem"]["certified"]
    text = invoke("status", str(run_dir))
    assert text.exit_code == 0 and f"{T}/{T} trials" in text.stdout


def test_the_installed_command_exits_0_and_2(run_dir, tmp_path):
    """A real process: the console script's exit codes, and the one error line on stderr."""
    ok = subprocess.run([str(RAYMEM), "status", str(run_dir), "--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["trials_done"] == T
    missing = tmp_path / "no-such-run"
    bad = subprocess.run([str(RAYMEM), "estimates", str(missing)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ") and str(missing) in bad.stderr
    assert bad.stdout == "" and not missing.exists()


# ---- bad ingest inputs: nothing is written -----------------------------------------------------

def break_inputs(case: str, files: dict[str, Path], sim) -> list:
    """Spoil the ingest inputs as ``case`` says; return what the error message must name."""
    def save(flag, array, allow_pickle=False):
        np.save(files[flag], array, allow_pickle=allow_pickle)

    masks = files["--masks"]
    if case == "train-correct wider":
        save("--train-correct", np.ones((T, N + 1), bool))
        return ["--train-correct"]
    if case == "masks 1-D":
        save("--masks", sim.masks[0])
        return ["--masks", masks]
    if case == "test-correct 3-D":
        save("--test-correct", sim.test_correct[None])
        return ["--test-correct", files["--test-correct"]]
    if case == "masks int 0/1":
        save("--masks", sim.masks.astype(np.int64))
        return ["--masks", masks, "int64"]
    if case == "train-correct float":
        save("--train-correct", sim.train_correct.astype(np.float32))
        return ["--train-correct", files["--train-correct"], "float32"]
    if case == "masks pickled objects":
        save("--masks", sim.masks.astype(object), allow_pickle=True)
        return ["--masks", masks]
    if case == "test-correct fewer trials":
        save("--test-correct", sim.test_correct[:-1])
        return ["--test-correct"]
    if case == "train-correct more trials":
        save("--train-correct", np.vstack([sim.train_correct, sim.train_correct[:1]]))
        return ["--train-correct"]
    if case == "masks empty file":
        masks.write_bytes(b"")
        return [masks]
    if case == "masks truncated":
        masks.write_bytes(masks.read_bytes()[:-9])
        return [masks]
    if case == "masks npz archive":
        np.savez(masks.with_suffix(".npz"), a=sim.masks)
        masks.with_suffix(".npz").replace(masks)
        return [masks, ".npz"]
    if case == "test-correct missing":
        files["--test-correct"].unlink()
        return [files["--test-correct"], "does not exist"]
    if case == "masks is a folder":
        masks.unlink()
        masks.mkdir()
        return [masks, "directory"]
    if case == "no trials":
        for flag, array in arrays_by_flag(sim):
            save(flag, array[:0])
        return ["empty"]
    raise AssertionError(case)


BAD_INGESTS = ["train-correct wider", "masks 1-D", "test-correct 3-D", "masks int 0/1", "train-correct float",
               "masks pickled objects", "test-correct fewer trials", "train-correct more trials", "masks empty file",
               "masks truncated", "masks npz archive", "test-correct missing", "masks is a folder", "no trials"]


@pytest.mark.parametrize("case", BAD_INGESTS)
def test_bad_ingest_inputs_exit_2_and_write_nothing(tmp_path, files, sim, case):
    names = break_inputs(case, files, sim)
    before = snapshot(tmp_path)
    target = tmp_path / "new-run"
    result = invoke("ingest", str(target), *ingest_args(files))
    assert_user_error(result, *names)
    assert not target.exists()
    assert snapshot(tmp_path) == before


def test_ingest_into_an_existing_run_exits_2_and_changes_nothing(tmp_path, files, run_dir, sim):
    np.save(files["--masks"], ~sim.masks)  # different data: it must not reach the existing run
    before = snapshot(tmp_path)
    result = invoke("ingest", str(run_dir), *ingest_args(files))
    assert_user_error(result, run_dir, "already holds a run")
    assert snapshot(tmp_path) == before


def test_ingest_with_an_invalid_run_name_exits_2(tmp_path, files):
    target = tmp_path / "a run with spaces"
    result = invoke("ingest", str(target), *ingest_args(files))
    assert_user_error(result, "a run with spaces")
    assert not target.exists()
    named = invoke("ingest", str(target), *ingest_args(files), "--name", "fine")
    assert named.exit_code == 0, named.output


# ---- bad reads: exit 2, no output file ---------------------------------------------------------

CORRUPTIONS = {
    "flipped bytes": lambda b: (b[: len(b) // 3] + bytes(x ^ 0xFF for x in b[len(b) // 3: len(b) // 3 + 64])
                                + b[len(b) // 3 + 64:]),
    "truncated": lambda b: b[: len(b) // 2],
    "not parquet": lambda b: b"this is not a parquet file",
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("command", [["estimates"], ["pairs", *LOOSE_PAIRS], ["influence", "--test-index", "6"]])
def test_a_corrupt_trial_file_is_named_and_left_out(run_dir, tmp_path, sim, corruption, command):
    trial = run_dir / "trials" / "trial-00000003.parquet"
    trial.write_bytes(CORRUPTIONS[corruption](trial.read_bytes()))
    out = tmp_path / "out.parquet"
    result = invoke(command[0], str(run_dir), *command[1:], "--out", str(out))
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and str(trial) in warned[0] and "left out" in warned[0], result.stderr
    # what is read is exactly the other trials, counted straight from the arrays
    without = Counts.empty(N, N_TEST)
    for k in range(T):
        if k != 3:
            without.add(k, sim.masks[k], sim.train_correct[k], sim.test_correct[k])
    without.flush()
    expected = {"estimates": lambda: report.mem_table(without, bars()),
                "pairs": lambda: report.pairs_table(without, bars(), report.PairSelection(0.1234, -0.0567)),
                "influence": lambda: report.influence_table(without, 6, bars(), top=10)}[command[0]]()
    assert_frame_equals_table(pl.read_parquet(out), expected)
    status = invoke("status", str(run_dir), "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["trials_done"] == T - 1
    assert str(trial) in status.stderr
    assert trial.exists()  # a read never moves a file: `raymem verify --quarantine` or `raymem run` does


BAD_READS = {
    "delta zero": (["estimates", "{run}", "--delta", "0", "--out", "{out}"], ["--delta"]),
    "delta one": (["pairs", "{run}", "--delta", "1", "--out", "{out}"], ["--delta"]),
    "delta negative": (["status", "{run}", "--delta", "-0.5"], ["--delta"]),
    "delta above one": (["influence", "{run}", "--test-index", "0", "--delta", "1.5", "--out", "{out}"], ["--delta"]),
    "delta nan": (["estimates", "{run}", "--delta", "nan", "--out", "{out}"], ["--delta"]),
    "test index = n_test": (["influence", "{run}", "--test-index", str(N_TEST), "--out", "{out}"],
                            ["--test-index", str(N_TEST)]),
    "test index negative": (["influence", "{run}", "--test-index", "-1", "--out", "{out}"], ["--test-index", "-1"]),
    "top zero": (["influence", "{run}", "--test-index", "0", "--top", "0", "--out", "{out}"], ["--top"]),
    "estimates out folder missing": (["estimates", "{run}", "--out", "{missing}"], ["--out", "{missing}"]),
    "pairs out folder missing": (["pairs", "{run}", "--out", "{missing}"], ["--out", "{missing}"]),
    "influence out folder missing": (["influence", "{run}", "--test-index", "0", "--out", "{missing}"], ["--out"]),
    "figure folder missing": (["estimates", "{run}", "--out", "{out}", "--figure", "{missing}"],
                              ["--figure", "{missing}"]),
    "out is a folder": (["estimates", "{run}", "--out", "{folder}"], ["--out", "{folder}"]),
    "estimates out not a table format": (["estimates", "{run}", "--out", "{txt}"], ["--out", "{txt}", ".csv"]),
    "pairs out not a table format": (["pairs", "{run}", "--out", "{txt}"], ["--out", "{txt}", ".parquet"]),
    "influence out without extension": (["influence", "{run}", "--test-index", "0", "--out", "{bare}"],
                                        ["--out", "{bare}"]),
    "trials out not a table format": (["trials", "{run}", "--out", "{txt}"], ["--out", "{txt}"]),
    "compare out not a table format": (["compare", "{run}", "{run}", "--out", "{txt}"], ["--out", "{txt}"]),
    "run missing": (["estimates", "{nothing}", "--out", "{out}"], ["{nothing}", "run.json"]),
    "not a run": (["status", "{folder}"], ["{folder}"]),
    "target half-width nan": (["status", "{run}", "--target-halfwidth", "nan"], ["--target-halfwidth"]),
    "target half-width zero": (["status", "{run}", "--target-halfwidth", "0"], ["--target-halfwidth"]),
    "min infl nan": (["pairs", "{run}", "--min-infl", "nan", "--out", "{out}"], ["--min-infl"]),
    "min mem nan": (["pairs", "{run}", "--min-mem", "nan", "--out", "{out}"], ["--min-mem"]),
    "compare min infl nan": (["compare", "{run}", "{run}", "--min-infl", "nan", "--out", "{out}"], ["--min-infl"]),
    "fdr zero": (["pairs", "{run}", "--fdr", "0", "--out", "{out}"], ["--fdr"]),
    "fdr above one": (["pairs", "{run}", "--fdr", "1.5", "--out", "{out}"], ["--fdr"]),
    "fdr nan": (["pairs", "{run}", "--fdr", "nan", "--out", "{out}"], ["--fdr"]),
    "unknown method": (["estimates", "{run}", "--method", "bayes", "--out", "{out}"], ["--method", "anytime"]),
    "until half-width negative": (["status", "{run}", "--until-halfwidth", "-1"], ["--until-halfwidth"]),
    "until jaccard above one": (["status", "{run}", "--until-jaccard", "1.5"], ["--until-jaccard"]),
}


@pytest.mark.parametrize("case", list(BAD_READS))
def test_bad_read_arguments_exit_2_and_write_nothing(run_dir, tmp_path, case):
    args, names = BAD_READS[case]
    (tmp_path / "folder").mkdir()
    where = {"run": run_dir, "out": tmp_path / "out.parquet", "missing": tmp_path / "no" / "x.parquet",
             "folder": tmp_path / "folder", "nothing": tmp_path / "nothing", "txt": tmp_path / "x.txt",
             "bare": tmp_path / "table"}
    fill = lambda s: s.format(**where)  # noqa: E731
    before = snapshot(tmp_path)
    result = invoke(*map(fill, args))
    assert_user_error(result, *map(fill, names))
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "no").exists()


@pytest.mark.parametrize("method", ["anytime", "fixed", "chernoff", "hoeffding"])
def test_every_method_reads_and_status_names_it(run_dir, method):
    result = invoke("status", str(run_dir), "--json", "--method", method, "--until-halfwidth", "0.5")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["method"] == method and s["stopping"]["until_halfwidth"]["target"] == 0.5
    assert "pairs_fdr_0.1" in s and s["mem"]["more_trials_needed"] is not None
    table = api.estimates(str(run_dir), method=method)
    half = (table.column("mem_hi").to_numpy() - table.column("mem_lo").to_numpy()) / 2
    assert np.median(half) == pytest.approx(s["mem"]["median_halfwidth"])


def test_pairs_fdr_adds_q_values_and_selects_fewer(run_dir):
    loose = api.pairs(str(run_dir), min_infl=0.0, min_mem=0.0)
    controlled = api.pairs(str(run_dir), min_infl=0.0, min_mem=0.0, fdr=0.1)
    assert "q_value" in controlled.column_names and controlled.num_rows <= loose.num_rows
    assert all(q <= 0.1 for q in controlled.column("q_value").to_pylist())
    result = invoke("pairs", str(run_dir), "--fdr", "0.1", "--min-infl", "0", "--min-mem", "0")
    assert result.exit_code == 0 and "false discovery rate 0.1" in result.output


def test_figures_of_an_ingested_run_say_what_they_skip(run_dir, tmp_path):
    out = tmp_path / "figs"
    result = invoke("figures", str(run_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.iterdir())
    assert {"influence-hist.png", "convergence.png", "influence-examples.parquet"} <= set(written)
    assert all((out / name).stat().st_size > 0 for name in written)
    assert "skipped memorized.png" in result.stdout  # no images for an ingested run, and it says so


def test_export_fz_then_compare_with_the_export_agrees(tmp_path, files, sim):
    run_dir = tmp_path / "labelled"
    api.ingest(str(run_dir), sim.masks, sim.train_correct, sim.test_correct,
               train_labels=np.arange(N) % 3, test_labels=np.arange(N_TEST) % 3)
    out = tmp_path / "fz.npz"
    result = invoke("export", str(run_dir), "--out", str(out))
    assert result.exit_code == 0, result.output
    from raymem.paper import fz_format
    from raymem.estimator import log_replay
    from raymem.store.storage import RunStore

    counts = log_replay.offline_view(RunStore.open(str(run_dir))).counts
    same = fz_format.compare_with_fz(counts, fz_format.read_fz(out), min_infl=0.0, min_mem=0.0)
    assert same["mem"]["jaccard"] == 1.0 and same["infl"]["jaccard"] in (1.0, None)


def test_ingest_from_npz_layout_equals_ingest_from_npy_files(tmp_path, files, sim, run_dir):
    archive = tmp_path / "heldout.npz"
    np.savez(archive, trainset_mask=sim.masks, trainset_correctness=sim.train_correct,
             testset_correctness=sim.test_correct)
    other = tmp_path / "from-npz"
    result = invoke("ingest", str(other), "--from", "npz", str(archive))
    assert result.exit_code == 0, result.output
    assert api.estimates(str(other)).equals(api.estimates(str(run_dir)))


def test_compare_several_runs_draws_one_curve_each(run_dir, tmp_path, files):
    second = tmp_path / "second"
    assert invoke("ingest", str(second), *ingest_args(files)).exit_code == 0
    figure = tmp_path / "c.png"
    result = invoke("compare", str(run_dir), str(second), str(run_dir), "--reference", str(run_dir),
                    "--figure", str(figure))
    assert result.exit_code == 0, result.output
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(reference)" in result.stdout


BAD_PAPER_OUTPUTS = {
    "unknown class": (["figures", "{run}", "--out", "{figs}", "--class", "7"], ["class 7"]),
    "wrong format": (["export", "{run}", "--out", "{npz}", "--format", "csv"], ["--format", "fz"]),
    "archive missing keys": (["ingest", "{new}", "--from", "npz", "{bad}"], ["'testset_correctness'"]),
    "unknown source": (["ingest", "{new}", "--from", "hdf5", "{bad}"], ["--from"]),
    "export needs labels": (["export", "{run}", "--out", "{npz}"], ["labels"]),
}


@pytest.mark.parametrize("case", list(BAD_PAPER_OUTPUTS))
def test_bad_paper_output_inputs_exit_2_and_write_nothing(run_dir, tmp_path, case):
    args, names = BAD_PAPER_OUTPUTS[case]
    np.savez(tmp_path / "bad.npz", trainset_mask=np.zeros((2, 3), bool), trainset_correctness=np.zeros((2, 3), bool))
    where = {"run": run_dir, "figs": tmp_path / "figs", "npz": tmp_path / "out.npz", "new": tmp_path / "new",
             "bad": tmp_path / "bad.npz"}
    fill = lambda s: s.format(**where)  # noqa: E731
    before = snapshot(tmp_path)
    result = invoke(*map(fill, args))
    assert_user_error(result, *map(fill, names))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args, kind", [
    (["status", "{run}", "--json"], dict),
    (["trials", "{run}", "--json"], list),
    (["presets", "--json"], list),
    (["run", "digits", "--dry-run", "--json", "--storage", "{tmp}"], dict),
])
def test_every_json_flag_prints_one_document(run_dir, tmp_path, args, kind):
    result = invoke(*(a.format(run=run_dir, tmp=tmp_path) for a in args))
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.stdout), kind)  # all of stdout parses as one document


@pytest.mark.parametrize("args", [["estimates", "{run}"], ["pairs", "{run}", *LOOSE_PAIRS],
                                  ["influence", "{run}", "--test-index", "6"], ["presets"]])
def test_tables_read_in_80_columns(run_dir, monkeypatch, args):
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke(*(a.format(run=run_dir) for a in args))
    assert result.exit_code == 0, result.output
    table = [line for line in result.stdout.splitlines() if not line.startswith(("top memorized", "("))]
    table = table[1:] if args[0] == "pairs" else table  # the pairs' summary sentence comes first
    assert all(len(line) <= 80 for line in table), table
    assert set(table[1]) == {"─"}  # the rule under the headings
