"""The `raymem` command: a thin Typer layer over :mod:`raymem.api`: parse arguments, call, format the result."""

from __future__ import annotations

import functools
import json
import math
import time
from typing import List, Optional, Tuple

import typer

from raymem.errors import RaymemError
from raymem.estimator import formulas, report

app = typer.Typer(
    help="Which training examples a network memorizes, and which test predictions each drives (Feldman & Zhang 2020), on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain: square brackets and backticks print as written
)

RunArg = typer.Argument(..., help="Run name (under --storage) or run directory / URI.")
StorageOpt = typer.Option(None, "--storage", envvar="RAYMEM_STORAGE",
                          help="Storage root for run names (local, s3:// or gs://); default ./runs.")
AddressOpt = typer.Option(None, "--address", envvar="RAY_ADDRESS", help="Ray cluster holding the run's live accumulator.")
DataDirOpt = typer.Option(None, "--data-dir", envvar="RAYMEM_DATA_DIR", help="Prepared TensorFlow Datasets folder.")
DeltaOpt = typer.Option(report.DEFAULT_DELTA, "--delta", help="Error bars hold with probability 1-delta.")
SimultaneousOpt = typer.Option(False, "--simultaneous", help="Bands hold for all examples at once (delta / family size).")
MethodOpt = typer.Option(report.DEFAULT_METHOD, "--method",
                         help="Error bars: anytime (valid at every look; default), fixed (valid at one planned trial "
                              "count, narrowest), chernoff or hoeffding (the earlier bars).")


def user_errors(fn):
    """Turn a RaymemError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RaymemError as exc:
            message = " ".join(str(exc).split())  # always one line, even around a multi-line library message
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _finite(value: float, flag: str, *, low: float | None = None, high: float | None = None) -> float:
    """Refuse NaN/inf and values outside [low, high] for a numeric flag."""
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = f" in [{low:g}, {high:g}]" if low is not None and high is not None else (
            f" >= {low:g}" if low is not None else "")
        raise RaymemError(f"{flag} {value} is not a number{bounds}; pass a finite value{bounds}.")
    return value


def _print_table(table, limit: int = 20) -> None:
    import polars as pl

    with pl.Config(tbl_rows=limit, tbl_cols=12, float_precision=3, tbl_hide_dataframe_shape=False):
        typer.echo(pl.from_arrow(table).head(limit))


def _check_outputs(**paths: Optional[str]) -> None:
    """Check every output path (keyword = flag name) before any work, so a bad one writes nothing."""
    from raymem.store.safe_files import check_output_path

    for flag, path in paths.items():
        if path:
            check_output_path(path, f"--{flag}")


def _api():
    from raymem import api

    return api


@app.command()
@user_errors
def ingest(
    run_dir: str = typer.Argument(..., help="New run directory (local path or s3:// gs:// URI)."),
    masks: Optional[str] = typer.Option(None, "--masks", help="bool .npy (trials, n_train): example i in trial k's subset."),
    train_correct: Optional[str] = typer.Option(None, "--train-correct", help="bool .npy (trials, n_train): trial k correct on training example i."),
    test_correct: Optional[str] = typer.Option(None, "--test-correct", help="bool .npy (trials, n_test): trial k correct on test example j."),
    source: Optional[Tuple[str, str]] = typer.Option(None, "--from", help="Instead of the .npy files: --from npz FILE (trainset_mask, "
                                                                   "trainset_correctness, testset_correctness) or --from fz-aux DIR "
                                                                   "(the authors' runs, one aux_arrays.npz each).", ),
    index_map: Optional[str] = typer.Option(None, "--index-map", help="Map from the authors' example order to tfds order (.npy or .npz train/test)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name recorded in run.json (default: the folder name)."),
):
    """Make a run from external results (the authors' released runs, or any bool arrays)."""
    api = _api()
    if source and source[0] is not None:
        if masks or train_correct or test_correct:
            raise RaymemError("give either --from npz FILE / --from fz-aux DIR or the three .npy files "
                              "--masks, --train-correct and --test-correct, not both.")
        info = api.ingest_from(run_dir, source[0], source[1], name=name, index_map=index_map)
    elif masks and train_correct and test_correct:
        info = api.ingest_files(run_dir, masks, train_correct, test_correct, name=name)
    else:
        raise RaymemError("give --masks, --train-correct and --test-correct (.npy files), or --from npz FILE / --from fz-aux DIR.")
    typer.echo(f"ingested {info.config['trials']} trials into {run_dir}: n_train={info.n_train} n_test={info.n_test} "
               f"subset_size={info.subset_size}")


@app.command()
@user_errors
def estimates(
    run: str = RunArg,
    out: Optional[str] = typer.Option(None, "--out", help="Write the table as Parquet here."),
    figure: Optional[str] = typer.Option(None, "--figure", help="Write a PNG histogram of the estimates here."),
    delta: float = DeltaOpt,
    simultaneous: bool = SimultaneousOpt,
    method: str = MethodOpt,
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
):
    """Memorization of every training example, with its error bars."""
    from raymem.paper import plots

    _check_outputs(out=out, figure=figure)
    table = _api().estimates(run, storage=storage, address=address, delta=delta, simultaneous=simultaneous, method=method)
    if out:
        plots.write_parquet(table, out)
        typer.echo(f"wrote {table.num_rows} rows to {out}")
    if figure:
        plots.mem_figure(table, figure, title=f"memorization: {run}")
        typer.echo(f"wrote {figure}")
    import pyarrow.compute as pc

    typer.echo("top memorized training examples:")
    _print_table(table.take(pc.sort_indices(table, [("mem", "descending")])[:10]).select(
        [c for c in ("train_index", "mem", "mem_lo", "mem_hi", "n_in", "n_out", "label_flipped") if c in table.column_names]))


@app.command()
@user_errors
def pairs(
    run: str = RunArg,
    min_infl: float = typer.Option(formulas.PAPER_MIN_INFL, "--min-infl", help="Keep pairs with influence at least this."),
    min_mem: float = typer.Option(formulas.PAPER_MIN_MEM, "--min-mem", help="Keep training examples with memorization at least this."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the pairs as Parquet here."),
    npz: Optional[str] = typer.Option(None, "--npz", help="Also write them in the paper's released layout (tr_idx, tt_idx, infl, mem)."),
    fdr: Optional[float] = typer.Option(None, "--fdr", help="Select pairs with infl > --min-infl at this false discovery "
                                                           "rate (adds q_value) instead of by the point estimates."),
    delta: float = DeltaOpt,
    simultaneous: bool = SimultaneousOpt,
    method: str = MethodOpt,
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
):
    """High-influence pairs (train example, test example), as selected in the paper, or at a false discovery rate."""
    from raymem.paper import plots

    _check_outputs(out=out, npz=npz)
    table = _api().pairs(run, storage=storage, address=address, min_infl=min_infl, min_mem=min_mem,
                         delta=delta, simultaneous=simultaneous, method=method, fdr=fdr)
    if out:
        plots.write_parquet(table, out)
        typer.echo(f"wrote {table.num_rows} pairs to {out}")
    if npz:
        from raymem.paper.compare import export_pairs_npz

        export_pairs_npz(table, npz)
        typer.echo(f"wrote {table.num_rows} pairs to {npz} (the paper's layout)")
    if fdr is not None:
        typer.echo(f"{table.num_rows} pairs with infl > {min_infl:g} among mem >= {min_mem:g}, "
                   f"at false discovery rate {fdr:g} ({method} p-values)")
    else:
        certain = int((table.column("infl_lo").to_numpy() > 0).sum())
        typer.echo(f"{table.num_rows} pairs with infl >= {min_infl:g} and mem >= {min_mem:g}; "
                   f"{certain} of them with an influence lower bound above 0 ({method}, delta={delta:g}): the rest may "
                   f"be noise; --fdr 0.1 controls the false discoveries")
    _print_table(table, limit=10)


@app.command()
@user_errors
def influence(
    run: str = RunArg,
    test_index: int = typer.Option(..., "--test-index", help="Test example to explain."),
    top: int = typer.Option(10, "--top", help="How many influencers to list."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the table as Parquet here."),
    delta: float = DeltaOpt,
    simultaneous: bool = SimultaneousOpt,
    method: str = MethodOpt,
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
):
    """The training examples with the largest influence on one test example."""
    from raymem.paper import plots

    _check_outputs(out=out)
    table = _api().influence(run, test_index, storage=storage, address=address, top=top, delta=delta,
                             simultaneous=simultaneous, method=method)
    if out:
        plots.write_parquet(table, out)
    _print_table(table, limit=top)


def format_job(job: dict) -> str:
    """One line about a detached run's job."""
    line = f"  job {job['job_id']}: {job['state']}"
    if job.get("message") and job["state"] not in ("RUNNING", "SUCCEEDED"):
        line += f" ({' '.join(str(job['message']).split())[:200]})"
    return line + f" on {job['address']}"


def format_driver(d: dict) -> str:
    """One line (after a newline) about the driver holding a run."""
    state = "" if d["live"] else " (stale: that driver is gone; the run can be resumed)"
    job = f" (job {d['job_id']})" if d.get("job_id") else ""
    return f"\n  driver: pid {d['pid']} on {d['host']}{job}, last heartbeat {d['heartbeat_age_s']:.0f} s ago{state}"


def format_status(s: dict) -> str:
    """A human-readable status block."""
    if s.get("kind") == "marginal":
        return format_marginal(s) + (format_driver(s["driver"]) if s.get("driver") else "")
    if "mem" not in s:  # a detached run whose job has not created the run yet
        return f"run {s['run']}: no trials in the log yet\n" + format_job(s["job"])
    mem = s["mem"]
    lines = [
        f"run {s['run']} ({s['source']}): {s['trials_done']}/{s['trials_target']} trials, "
        f"n_train={s['n_train']} n_test={s['n_test']} subset={s['subset_size']}",
    ]
    if s.get("job"):
        lines.append(format_job(s["job"]))
    if s.get("driver"):
        lines.append(format_driver(s["driver"]).lstrip("\n"))
    if "progress" in s:
        p = s["progress"]
        lines.append(f"  throughput {p.get('trials_per_hour', 0):.1f} trials/h, ETA {p.get('eta', '?')}")
    lines += [
        f"  mem half-width ({s.get('method', '?')}, delta={s['delta']:g}{', simultaneous' if s['simultaneous'] else ''}): "
        f"median {mem['median_halfwidth']:.3f}, max {mem['max_halfwidth']:.3f}",
        f"  mem >= {mem['certify_threshold']:g}: {mem['estimated_above']} estimated, {mem['certified']} certified (lower bound)",
        f"  more trials needed for median half-width {mem['target_halfwidth']:g}: {mem['more_trials_needed']}",
        f"  paper's Lemma 2.1 RMS bound: {s['lemma21_rms_bound']:.3f}",
    ]
    fdr_keys = [k for k in s if k.startswith("pairs_fdr_")]
    for key in fdr_keys:
        lines.append(f"  pairs passing at false discovery rate {key.removeprefix('pairs_fdr_')}: {s[key]}")
    for name, c in (s.get("stopping") or {}).items():
        if isinstance(c, dict):
            value = "n/a" if c.get("value") is None else f"{c['value']:.3f}"
            lines.append(f"  stop --{name.replace('_', '-')} {c['target']:g}: {'met' if c['met'] else 'not yet'} (now {value})")
    for theta, c in s["split_half"]["mem"].items():
        j = "n/a" if c["jaccard"] is None else f"{c['jaccard']:.3f}"
        d = "n/a" if c["mean_abs_diff"] is None else f"{c['mean_abs_diff']:.3f}"
        lines.append(f"  split-half (even vs odd trials) at mem >= {theta}: Jaccard {j}, mean |diff| {d}")
    if s.get("canaries"):
        c = s["canaries"]
        if c["count"]:
            lines.append(f"  canaries: {c['count']} flipped labels, recall {c['recall']:.2f} among the top {c['count']} (chance {c['chance']:.3f})")
    return "\n".join(lines)


@app.command()
@user_errors
def status(
    run: str = RunArg,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    watch: bool = typer.Option(False, "--watch", help="Refresh until the run reaches its target."),
    interval: float = typer.Option(5.0, "--interval", help="Seconds between refreshes with --watch."),
    target_halfwidth: float = typer.Option(report.DEFAULT_TARGET_HALFWIDTH, "--target-halfwidth",
                                           help="Half-width at which the run would be precise enough."),
    until_halfwidth: Optional[float] = typer.Option(None, "--until-halfwidth", help="Show how far the run is from this median half-width."),
    until_jaccard: Optional[float] = typer.Option(None, "--until-jaccard", help="Show how far the split-half Jaccard is from this."),
    delta: float = DeltaOpt,
    simultaneous: bool = SimultaneousOpt,
    method: str = MethodOpt,
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
):
    """Trials counted, error-bar widths, certified examples, split-half consistency, more trials needed."""
    _finite(interval, "--interval", low=0.1, high=86400)

    def read() -> dict:
        # --watch skips the FDR pair count: each refresh would cost a full pairs read
        return _api().status(run, storage=storage, address=address, delta=delta, simultaneous=simultaneous,
                             target_halfwidth=target_halfwidth, method=method, until_halfwidth=until_halfwidth,
                             until_jaccard=until_jaccard, **({"pairs_fdr": None} if watch else {}))

    if not watch or as_json:
        s = read()
        typer.echo(json.dumps(s, indent=2) if as_json else format_status(s))
        return
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    with Live(console=Console(), auto_refresh=False) as live:
        while True:
            s = read()
            live.update(Text(time.strftime("%H:%M:%S ") + format_status(s)), refresh=True)
            if s["trials_target"] is not None and s["trials_done"] >= s["trials_target"]:
                return
            time.sleep(interval)


@app.command()
@user_errors
def trials(
    run: str = RunArg,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per trial."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the table as Parquet here."),
    storage: Optional[str] = StorageOpt,
):
    """One row per trial: attempt, node, start/finish, training time, resumed epoch, train/test accuracy."""
    from raymem.paper import plots

    _check_outputs(out=out)
    table = _api().trials(run, storage=storage)
    if out:
        plots.write_parquet(table, out)
        typer.echo(f"wrote {table.num_rows} rows to {out}", err=as_json)
    if as_json:
        for row in table.to_pylist():
            typer.echo(json.dumps(row, default=str))
    elif not out:
        _print_table(table, limit=50)


@app.command()
@user_errors
def compare(
    run: str = RunArg,
    others: List[str] = typer.Argument(..., help="Other runs (names or directories), or released pairs as .npz (tr_idx, tt_idx, infl, mem)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="With several runs: compare each with this one (default: the first)."),
    min_infl: float = typer.Option(formulas.PAPER_MIN_INFL, "--min-infl"),
    min_mem: float = typer.Option(formulas.PAPER_MIN_MEM, "--min-mem"),
    out: Optional[str] = typer.Option(None, "--out", help="Write the consistency table as Parquet here (run vs run)."),
    figure: Optional[str] = typer.Option(None, "--figure", help="Write the consistency curves as a PNG (runs vs the reference)."),
    storage: Optional[str] = StorageOpt,
):
    """Consistency of estimates: Jaccard and mean |difference| at thresholds (supplement Eq. 4, Figs. C.2/C.3)."""
    from raymem.paper import plots

    _check_outputs(out=out, figure=figure)
    api = _api()
    if len(others) == 1 and reference is None:
        result = api.compare(run, others[0], storage=storage, min_infl=min_infl, min_mem=min_mem)
        if isinstance(result, dict):
            typer.echo(json.dumps(result, indent=2))
            return
        if out:
            plots.write_parquet(result, out)
        if figure:
            plots.consistency_figure(result, figure, title=f"{run} vs {others[0]}")
        _print_table(result, limit=40)
        return
    import pyarrow as pa

    from raymem.paper import figures as paper_figures

    ref, curves, legend = api.compare_many([run, *others], reference=reference, storage=storage, min_mem=min_mem)
    table = pa.concat_tables([t.append_column("run", pa.array([name] * t.num_rows)) for name, t in curves.items()])
    if out:
        plots.write_parquet(table, out)
    if figure:
        paper_figures.comparison_figure(ref, curves, figure, legend=legend)
        typer.echo(f"wrote {figure}")
    for name, info in legend.items():
        typer.echo(paper_figures.legend_label(name, info) + (" (reference)" if name == ref else ""))
    _print_table(table, limit=40)


@app.command()
@user_errors
def figures(
    run: str = RunArg,
    out: str = typer.Option(..., "--out", help="Folder for the PNGs and influence-examples.parquet (created if its parent exists)."),
    klass: Optional[int] = typer.Option(None, "--class", help="Class shown in memorized.png (default: most examples at mem >= 0.25)."),
    method: str = MethodOpt,
    data_dir: Optional[str] = DataDirOpt,
    storage: Optional[str] = StorageOpt,
):
    """The paper's figures of a run: memorized examples, influence rows, influence histogram, convergence."""
    summary = _api().figures(run, out, klass=klass, storage=storage, data_dir=data_dir, method=method)
    for name in summary["written"]:
        typer.echo(f"wrote {out}/{name}")
    for name, why in summary["skipped"].items():
        typer.echo(f"skipped {name}: {why}")
    counts = ", ".join(f"{n} by {k}" for k, n in sorted(summary.get("influenced_by", {}).items()))
    typer.echo(f"{summary['pairs']} high-influence pairs; test examples influenced: {counts or 'none'}")


@app.command()
@user_errors
def export(
    run: str = RunArg,
    out: str = typer.Option(..., "--out", help="The .npz file to write."),
    format: str = typer.Option("fz", "--format", help="fz: the layout Feldman & Zhang released (tr_mem, per-class influence)."),
    index_map: Optional[str] = typer.Option(None, "--index-map", help="Map from the authors' example order to tfds order (.npy or .npz train/test)."),
    storage: Optional[str] = StorageOpt,
):
    """Write a run's estimates in the authors' released layout."""
    written = _api().export(run, out, format=format, storage=storage, index_map=index_map)
    typer.echo(f"wrote {written} ({format} layout)")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _with_interval(c: dict | None, key: str = "mean") -> str:
    """``97.3% [96.1, 98.5]`` (percent) or ``n/a``."""
    if not c or c.get(key) is None:
        return "n/a"
    if c.get("lo") is None:
        return f"{100 * c[key]:.1f}% [need 2 models]"
    return f"{100 * c[key]:.1f}% [{100 * c['lo']:.1f}, {100 * c['hi']:.1f}]"


def _drop(c: dict | None) -> str:
    """``+2.5 pts [1.9, 3.1]`` (percentage points) or ``n/a``."""
    if not c or c.get("drop") is None:
        return "n/a"
    interval = "" if c.get("lo") is None else f" [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}]"
    return f"{100 * c['drop']:+.1f} pts{interval}"


def format_marginal(r: dict) -> str:
    """The marginal-utility report as a short table."""
    sizes, interval = r["sizes"], r["interval"]
    sel = r.get("selection") or {}
    how = (f"FDR {sel['fdr']:g}" if sel.get("fdr") is not None else
           f"infl >= {sel.get('min_infl', 0.15):g}, mem >= {sel.get('min_mem', 0.25):g}")
    lines = [
        f"marginal utility of run {r.get('source_run')} ({sel.get('pairs', '?')} pairs, {how}); "
        f"marginal run {r['run']}, {r['trials_done']} trials",
        f"  |S_h| = {sizes.get('high_influence_train')} training examples, |S'_h| = {sizes['influenced_test']} of "
        f"{sizes['n_test']} test examples; the random control removes {sizes.get('random_removed')} "
        f"({sizes.get('random_overlap_with_high_influence')} of them in S_h)",
        f"  {interval['confidence']:.0%} intervals: {interval['kind']}",
    ]
    rows = [("arm", "train", "models", "test accuracy", "accuracy on S'_h")]
    for arm in ("full", "without_high_influence", "without_random"):
        a = r[arm]
        rows.append((arm, str(a.get("train_size", "?")), str(a["models"]), _with_interval(a["test"]),
                     _with_interval(a["influenced"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for arm, label in (("without_high_influence", "without S_h"), ("without_random", "without random")):
        d = r["drops"][arm]
        lines.append(f"  drop {label}: test {_drop(d['test'])}, on S'_h {_drop(d['influenced'])}, "
                     f"S'_h's share of the test drop {_drop(d['influenced_contribution'])}")
    if interval.get("note"):
        lines.append(f"  note: {interval['note']}")
    return "\n".join(lines)


@app.command()
@user_errors
def marginal(
    run: str = RunArg,
    trials: int = typer.Option(..., "--trials", help="K: models per arm (3K trials in all; intervals need K >= 2)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the marginal run, beside RUN (default RUN-marginal)."),
    min_infl: Optional[float] = typer.Option(None, "--min-infl", help="Pairs with influence at least this (default 0.15)."),
    min_mem: Optional[float] = typer.Option(None, "--min-mem", help="Pairs whose training example has mem at least this (default 0.25)."),
    fdr: Optional[float] = typer.Option(None, "--fdr", help="Select the pairs at this false discovery rate instead."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the marginal run (training, random control); default RUN's."),
    delta: float = typer.Option(report.DEFAULT_DELTA, "--delta", help="Intervals at confidence 1-delta."),
    settings: Optional[List[str]] = typer.Option(None, "--set", help="Resource keys only, e.g. --set gpus_per_trial=1 (the recipe is RUN's)."),
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = typer.Option(None, "--address", envvar="RAY_ADDRESS", help="Ray cluster address; none: start a local Ray."),
    data_dir: Optional[str] = DataDirOpt,
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of a local Ray started here."),
    num_gpus: Optional[float] = typer.Option(None, "--num-gpus", help="GPUs of a local Ray started here."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
):
    """Marginal utility of RUN's high-influence examples (supplement C): retrain on S, S minus S_h, S minus a random set."""
    result = _api().marginal(run, trials, name=name, storage=storage, min_infl=min_infl, min_mem=min_mem, fdr=fdr,
                             seed=seed, delta=delta, settings=settings, address=address, data_dir=data_dir,
                             num_cpus=num_cpus, num_gpus=num_gpus, progress=not (quiet or as_json))
    typer.echo(json.dumps(result, indent=2) if as_json else format_marginal(result))
    for k, why in sorted(result["failed"].items()):
        typer.echo(f"  trial {k} failed: {why}", err=True)
    if result["failed"]:
        raise typer.Exit(1)


@app.command()
@user_errors
def features(
    dataset: str = typer.Argument(..., help="Data set to featurize (e.g. cifar100, digits, npz:FILE)."),
    out: str = typer.Option(..., "--out", help="Write x_train, y_train, x_test, y_test (.npz) here."),
    model: str = typer.Option("resnet50", "--model", help="Model whose penultimate layer gives the features."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Default: the data set's preset."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    base_lr: Optional[float] = typer.Option(None, "--lr"),
    data_dir: Optional[str] = DataDirOpt,
    seed: int = typer.Option(0, "--seed"),
):
    """Train one model on the full training set and save its penultimate-layer features (for `cifar100-linear`)."""
    summary = _api().features(dataset, out, model=model, epochs=epochs, batch_size=batch_size, base_lr=base_lr,
                              data_dir=data_dir, seed=seed)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
@user_errors
def stop(
    run: str = RunArg,
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
):
    """Stop a run's job if it was detached, and its live accumulator (frees its memory; the trial log keeps everything)."""
    job = _api().stop_job(run, storage=storage)
    if job is not None:
        typer.echo(f"job {job['job_id']} of {run}: {job['state']}" + (" (stopped now)" if job["was"] != job["state"] else ""))
    if _api().stop(run, storage=storage, address=address):
        typer.echo(f"stopped the accumulator of {run}; `raymem run` starts a new one from the log.")
    else:
        typer.echo(f"no live accumulator of {run} was reachable; nothing to stop.")


@app.command()
@user_errors
def logs(
    run: str = RunArg,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing the output until the job ends."),
    storage: Optional[str] = StorageOpt,
):
    """The output of a detached run's job (`raymem run ... --detach`)."""
    output = _api().logs(run, storage=storage, follow=follow)
    if isinstance(output, str):
        typer.echo(output, nl=False)
        return
    for chunk in output:
        typer.echo(chunk, nl=False)


def format_plan(p: dict) -> str:
    """The dry-run plan as a short two-column table."""
    r = p["recipe"]
    schedule = r["schedule"] + (f" {json.dumps(r['schedule_params'])}" if r["schedule_params"] else "")
    augment = ", ".join(filter(None, [f"pad-crop {r['augment_pad']}" if r["augment_pad"] else "",
                                      "flip" if r["augment_flip"] else ""])) or "none"
    per = p["per_trial"]
    hours = p["estimated_gpu_hours"]
    rows = [
        ("data", f"{p['dataset']}, {p['subset_ratio']:g} of the training set per trial"),
        ("model", p["model"]),
        ("trials", f"{p['trials']:,}"),
        ("recipe", f"{r['epochs']} epochs, batch {r['batch_size']}, SGD momentum {r['momentum']:g}, base LR {r['base_lr']:g}"),
        ("schedule", schedule),
        ("augment", augment),
        ("per trial", f"{per['cpus']:g} CPU, {per['gpus']:g} GPU" + (f" x {per['nodes']} nodes" if per["nodes"] > 1 else "")),
        ("executor", p["executor"]),
        ("influence", f"{p.get('influence_scope', 'full')} scope, pair counts in {p['pair_shards'] or 'the accumulator'}"
                      f"{' shard actors' if p['pair_shards'] else ''}"),
        ("GPU-hours", "unknown" if hours is None else f"{hours:,.0f}"),
        ("based on", p["estimate_basis"]),
        ("run dir", p["run_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"plan for preset {p['preset']} (nothing started):"] + [f"  {k.ljust(width)}  {v}" for k, v in rows])


@app.command()
@user_errors
def run(
    experiment: str = typer.Argument(..., help="Preset name (see `raymem presets`) or a .yaml/.toml experiment file."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Trials the run should hold (raise it to extend a run)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name; default: the preset's name."),
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = typer.Option(None, "--address", envvar="RAY_ADDRESS",
                                          help="Ray cluster address; none: start a local Ray."),
    data_dir: Optional[str] = DataDirOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    base_lr: Optional[float] = typer.Option(None, "--lr", help="Base learning rate."),
    model: Optional[str] = typer.Option(None, "--model"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Data set name, or npz:FILE / parquet:DIR."),
    subset_ratio: Optional[float] = typer.Option(None, "--subset-ratio", help="m/n (paper: 0.7)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    flip_labels: Optional[float] = typer.Option(None, "--flip-labels", help="Flip this fraction of training labels (canaries)."),
    cpus_per_trial: Optional[float] = typer.Option(None, "--cpus-per-trial"),
    gpus_per_trial: Optional[float] = typer.Option(None, "--gpus-per-trial"),
    nodes_per_trial: Optional[int] = typer.Option(None, "--nodes-per-trial"),
    max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help="Tries per trial before it is reported failed."),
    pair_shards: Optional[int] = typer.Option(None, "--pair-shards", help="Split the pair matrix over this many actors (ImageNet: 16)."),
    until_halfwidth: Optional[float] = typer.Option(None, "--until-halfwidth",
                                                    help="Stop submitting trials once the median anytime memorization "
                                                         "half-width is at most this (--trials stays the cap)."),
    until_jaccard: Optional[float] = typer.Option(None, "--until-jaccard",
                                                  help="Stop submitting trials once the split-half Jaccard at mem >= 0.25 "
                                                       "is at least this."),
    influence_scope: Optional[str] = typer.Option(None, "--influence-scope",
                                                  help="full: influence of every (train, test) pair; class: pairs of the same "
                                                       "label only, one block per class (the imagenet preset's)."),
    pack: Optional[str] = typer.Option(None, "--pack", help="Train K trials together as one packed model (small_cnn, linear), or 'auto'."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Save each trial's training state every N epochs into RUN/checkpoints (0: off; presets: imagenet 1, cifar 5)."),
    keep_models: Optional[bool] = typer.Option(None, "--keep-models", help="Keep each trial's final weights in RUN/checkpoints/trial-*/final.npz."),
    max_pending: Optional[int] = typer.Option(None, "--max-pending", help="Show at most this many waiting trials' resources to the autoscaler (default: all remaining)."),
    settings: Optional[List[str]] = typer.Option(None, "--set", help="Override any config key: --set recipe.momentum=0.8 (repeatable)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of a local Ray started here."),
    num_gpus: Optional[float] = typer.Option(None, "--num-gpus", help="GPUs of a local Ray started here."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the GPU-hour estimate; start nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: print the plan as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
    detach: bool = typer.Option(False, "--detach", help="Submit the driver to the cluster (--address) as a Ray job and "
                                                       "return; follow it with `raymem status/logs/stop RUN`."),
):
    """Train the run's missing trials on Ray (a local Ray when no cluster is given)."""
    api = _api()
    overrides = dict(trials=trials, epochs=epochs, batch_size=batch_size, base_lr=base_lr, model=model, dataset=dataset,
                     subset_ratio=subset_ratio, seed=seed, flip_labels=flip_labels, cpus_per_trial=cpus_per_trial,
                     gpus_per_trial=gpus_per_trial, nodes_per_trial=nodes_per_trial, max_attempts=max_attempts,
                     pair_shards=pair_shards, pack=pack, influence_scope=influence_scope,
                     checkpoint_every=checkpoint_every, keep_models=keep_models, max_pending=max_pending)
    config = api.load_config(experiment, overrides, settings)  # checked before anything starts
    api.check_stopping(until_halfwidth, until_jaccard)
    if dry_run:
        shown = api.plan(config, name=name, storage=storage)
        typer.echo(json.dumps(shown, indent=2) if as_json else format_plan(shown))
        return
    if detach:
        job = api.run(config, name=name, storage=storage, address=address, data_dir=data_dir, num_cpus=num_cpus,
                      num_gpus=num_gpus, until_halfwidth=until_halfwidth, until_jaccard=until_jaccard, detach=True)
        typer.echo(job.job_id)
        typer.echo(f"submitted run {job.name} as job {job.job_id} to {job.address}; data in {job.run_uri}. Follow it with "
                   f"`raymem status {job.run_uri}`, `raymem logs {job.run_uri} --follow`; `raymem stop {job.run_uri}` "
                   "stops it; the same command again resumes it.", err=True)
        return
    result = api.run(config, name=name, storage=storage, address=address, data_dir=data_dir,
                     num_cpus=num_cpus, num_gpus=num_gpus, progress=not quiet,
                     until_halfwidth=until_halfwidth, until_jaccard=until_jaccard)
    typer.echo(f"run {result.name}: {result.trials_done}/{result.trials_target} trials in the log "
               f"({len(result.trained_now)} trained now, {len(result.retried)} retried, {len(result.failed)} failed) "
               f"in {result.wall_seconds:.1f}s; data in {result.run_uri}")
    if result.stopped_early:
        typer.echo(f"stopped early: {result.stopped_early}")
    for k, why in sorted(result.failed.items()):
        typer.echo(f"  trial {k} failed: {why}", err=True)
    if result.failed:
        raise typer.Exit(1)


@app.command()
def presets(markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (as in the README).")):
    """List the presets: data set, model, recipe, resources per trial and the GPU-hours of 2,000 trials."""
    rows = _api().presets()
    header = list(rows[0])
    table = [header] + [[row[key] for key in header] for row in rows]
    if markdown:
        typer.echo("| " + " | ".join(header) + " |")
        typer.echo("|" + "---|" * len(header))
        for row in table[1:]:
            typer.echo("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@app.command()
@user_errors
def up(
    cluster_yaml: Optional[str] = typer.Argument(None, help="Ray cluster-launcher YAML (e.g. the repository's cluster.yaml)."),
    local: bool = typer.Option(False, "--local", help="Start a Ray head on this machine instead (loopback only, token auth on)."),
    port: int = typer.Option(6379, "--port", help="GCS port of a --local head."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", help="GPUs a --local head advertises."),
    dashboard: bool = typer.Option(False, "--dashboard", help="A --local head also serves Ray's dashboard and Job API "
                                                             "(127.0.0.1:8265), which `raymem run --detach` needs."),
    no_restart: bool = typer.Option(False, "--no-restart", help="Update without restarting Ray on the nodes."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
):
    """Start or update a cluster with Ray's launcher (validated first), or a local head with --local."""
    result = _api().up(cluster_yaml, local=local, port=port, num_gpus=num_gpus, no_restart=no_restart, yes=yes,
                       **({"dashboard": True} if dashboard else {}))
    if local:
        typer.echo(f"local Ray head at {result['address']}; run trials on it with "
                   f"`RAY_AUTH_MODE=token raymem run digits --address {result['address']}`"
                   + (" (add --detach to leave them running there)" if dashboard else ""))
    elif result.get("launched"):
        typer.echo(f"cluster {result['cluster_name']} is up (head {result.get('head_ip', '?')}); "
                   f"`ray attach {cluster_yaml}` then `raymem run <preset>` on the head.")
    else:
        typer.echo("nothing launched.")


@app.command()
@user_errors
def down(
    cluster_yaml: Optional[str] = typer.Argument(None, help="The YAML the cluster was started from."),
    local: bool = typer.Option(False, "--local", help="Stop the local head started by `raymem up --local`."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
):
    """Tear down a cluster started by `raymem up` (validated first), or the --local head."""
    _api().down(cluster_yaml, local=local, yes=yes)
    typer.echo("local Ray head stopped." if local else f"cluster from {cluster_yaml} torn down.")


def main() -> None:
    """Entry point of the `raymem` command."""
    app()


if __name__ == "__main__":
    main()
