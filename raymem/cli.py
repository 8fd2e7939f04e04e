"""The `raymem` command: a thin Typer layer over :mod:`raymem.api`: parse arguments, call, format the result."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import inspect
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from io import StringIO
from typing import List, Optional, Tuple

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import ArgumentInfo, OptionInfo

from raymem.errors import RaymemError, RaymemWarning
from raymem.estimator import formulas, report

APP_HELP = """Which training examples a network memorizes, and which test predictions each drives
(Feldman & Zhang 2020), on Ray.

Every command that takes --json prints exactly one JSON document on stdout: an object, or an array of row
objects for a table (`raymem trials --json`); messages go to stderr. --out writes a table as Parquet or CSV,
as its extension says.
"""

#: The main help's command sections, in the order a new user meets them.
COMMAND_SECTIONS = {
    "Run and watch": ["run", "status", "trials", "verify", "logs", "stop", "presets"],
    "Watch and browse": ["serve", "tensorboard"],
    "Read a run": ["estimates", "pairs", "influence", "compare"],
    "The paper's outputs": ["figures", "export", "marginal"],
    "Bring your own results": ["ingest", "features"],
    "Clusters": ["up", "down"],
}
COMMAND_ORDER = [name for names in COMMAND_SECTIONS.values() for name in names]
COMMAND_SECTION = {name: section for section, names in COMMAND_SECTIONS.items() for name in names}

#: Option panels shared by several commands (their options are defined once, below).
WHERE = "Where the run lives"
ERROR_BARS = "Error bars"
LOCAL_RAY = "Local Ray (when no cluster is given)"


class OrderedGroup(TyperGroup):
    """The `raymem` group: commands listed in COMMAND_ORDER, under their COMMAND_SECTIONS headings."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: COMMAND_ORDER.index(n) if n in COMMAND_ORDER else len(COMMAND_ORDER))

    def format_commands(self, ctx, formatter) -> None:
        sections: dict[str, list] = {}
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                sections.setdefault(COMMAND_SECTION.get(name, "Commands"), []).append((name, command))
        for section, commands in sections.items():
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section(section):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in commands])


class PanelCommand(TyperCommand):
    """A command whose options are listed under their ``rich_help_panel`` headings, also in plain help."""

    def format_options(self, ctx, formatter) -> None:
        arguments, panels = [], {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append(record)
            else:
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        for panel, records in panels.items():
            if records:
                with formatter.section(panel):
                    formatter.write_dl(records)


app = typer.Typer(
    cls=OrderedGroup,
    help=APP_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain: square brackets and backticks print as written
)


def command(**settings):
    """``app.command`` with grouped option panels."""
    return app.command(cls=PanelCommand, **settings)


RunArg = typer.Argument(..., help="Run name (under --storage) or run directory / URI.")

def _key_option(key: str, flag: str | None = None):
    """The option that sets config key ``key``, its help the key's description in the config (written once)."""
    from raymem.config.experiment import config_keys

    description = next(k["description"] for k in config_keys() if k["name"] == key)
    return typer.Option(None, flag or "--" + key.replace("_", "-"), help=description)

StorageOpt = typer.Option(None, "--storage", envvar="RAYMEM_STORAGE", rich_help_panel=WHERE,
                          help="Storage root for run names (local, s3:// or gs://); default ./runs.")
# No envvar here: the library falls back to $RAY_ADDRESS itself (connection.ray_address), in one place.
AddressOpt = typer.Option(None, "--address", rich_help_panel=WHERE,
                          help="Ray cluster holding the run's live accumulator (default: $RAY_ADDRESS, else the "
                               "address a local run left in its directory; none: read the trial log).")
ClusterOpt = typer.Option(None, "--address", rich_help_panel=WHERE,
                          help="Ray cluster to train on (default: $RAY_ADDRESS; none: a local Ray started here).")
DataDirOpt = typer.Option(None, "--data-dir", envvar="RAYMEM_DATA_DIR", rich_help_panel=WHERE,
                          help="Prepared TensorFlow Datasets folder.")
DeltaOpt = typer.Option(report.DEFAULT_DELTA, "--delta", rich_help_panel=ERROR_BARS,
                        help="Error bars hold with probability 1-delta.")
SimultaneousOpt = typer.Option(False, "--simultaneous", rich_help_panel=ERROR_BARS,
                               help="Bands hold for all examples at once (delta / family size).")
MethodOpt = typer.Option(report.DEFAULT_METHOD, "--method", rich_help_panel=ERROR_BARS,
                         help="anytime (valid at every look; default), fixed (valid at one planned trial "
                              "count, narrowest), chernoff or hoeffding (the earlier bars).")
NumCpusOpt = typer.Option(None, "--num-cpus", rich_help_panel=LOCAL_RAY, help="CPUs of a local Ray started here.")
NumGpusOpt = typer.Option(None, "--num-gpus", rich_help_panel=LOCAL_RAY, help="GPUs of a local Ray started here.")


# ---- errors ---------------------------------------------------------------------------------------------------


def _flag_for(parameter: str, command, overrides: dict[str, str]) -> str:
    """The command-line name of the API parameter ``parameter`` in ``command`` (a command's function).

    Order: the command's override table; the command's own option or argument of that Python name (so
    ``base_lr`` reads ``--lr``, ``klass`` reads ``--class``); else ``--`` + the name with dashes.
    """
    if parameter in overrides:
        return overrides[parameter]
    declared = inspect.signature(command).parameters.get(parameter)
    if isinstance(getattr(declared, "default", None), ArgumentInfo):
        return parameter.upper()
    if isinstance(getattr(declared, "default", None), OptionInfo):
        flags = [flag for flag in declared.default.param_decls or () if flag.startswith("--")]
        if flags:
            return flags[0].split("/")[0]
    return "--" + parameter.replace("_", "-")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A RaymemWarning as one ``warning: <sentence>`` line on stderr; other warnings as Python shows them."""
    if issubclass(category, RaymemWarning):
        typer.echo("warning: " + " ".join(str(message).split()), err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def user_errors(fn=None, *, flags: dict[str, str] | None = None):
    """Turn a RaymemError into one line, ``error: <sentence>``, on stderr and exit status 2.

    A library error about one parameter (``exc.parameter``) is shown with this command's flag in the
    parameter's place; ``flags`` maps API parameters whose flag the command's own options do not give.
    """

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("default", RaymemWarning)  # each distinct one once
                    warnings.showwarning = _show_warning
                    return function(*args, **kwargs)
            except RaymemError as exc:
                parameter = getattr(exc, "parameter", None)
                message = exc.naming(_flag_for(parameter, function, flags or {})) if parameter else str(exc)
                # always one line, even around a multi-line library message
                typer.echo("error: " + " ".join(message.split()), err=True)
                raise typer.Exit(2) from None

        return wrapper

    return decorate(fn) if fn is not None else decorate


def _finite(value: float, flag: str, *, low: float | None = None, high: float | None = None) -> float:
    """Refuse NaN/inf and values outside [low, high] for a numeric flag."""
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = f" in [{low:g}, {high:g}]" if low is not None and high is not None else (
            f" >= {low:g}" if low is not None else "")
        raise RaymemError(f"{flag} {value} is not a number{bounds}; pass a finite value{bounds}.")
    return value


# ---- output -----------------------------------------------------------------------------------------------------


def _json_value(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def echo_json(document) -> None:
    """Print one JSON document (the --json convention: an object, or an array of row objects)."""
    typer.echo(json.dumps(document, indent=2, default=_json_value))


def _cells(values: list) -> tuple[list[str], bool]:
    """One column's values as text, and whether it is numeric (right-aligned)."""
    present = [v for v in values if v is not None]
    numeric = bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    floats = [abs(v) for v in present if isinstance(v, float) and math.isfinite(v)]
    decimals = 3 if not floats or max(floats) < 10 else 1

    def text(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.{decimals}f}" if math.isfinite(v) else str(v)
        if isinstance(v, datetime.datetime):
            return v.strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(v, (list, tuple)):
            return ", ".join(map(str, v))
        return str(v)

    return [text(v) for v in values], numeric


def format_table(data, columns: dict[str, str] | None = None, *, limit: int | None = None, header: bool = True,
                 indent: int = 0) -> str:
    """The CLI's one table layout: aligned columns, numbers right, nulls as ``-``, as wide as the terminal.

    Args:
        data: a pyarrow Table, or a list of row dicts.
        columns: key -> heading of the columns to show, in order (default: every column, headed by its key).
        limit: show at most this many rows, and say how many there are in all.
        header: print the headings.
        indent: spaces before each line (a table inside a text block).
    """
    from rich import box
    from rich.console import Console
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    if hasattr(data, "to_pylist"):
        total, keys = data.num_rows, data.column_names
        rows = (data.slice(0, limit) if limit is not None else data).to_pylist()
    else:
        total, keys = len(data), list(data[0]) if data else []
        rows = data[:limit] if limit is not None else list(data)
    columns = columns or {key: key for key in keys}
    table = Table(box=box.SIMPLE_HEAD if header else None, show_header=header, show_edge=False, pad_edge=False,
                  collapse_padding=header)  # no box: the padding alone parts the columns
    texts = []
    for position, (key, heading) in enumerate(columns.items()):
        cells, numeric = _cells([row.get(key) for row in rows])
        # the first column names the row: it never wraps; long values elsewhere fold onto more lines
        table.add_column(Text(heading), justify="right" if numeric else "left", overflow="fold",
                         no_wrap=position == 0)
        texts.append(cells)
    for line in zip(*texts):
        table.add_row(*(Text(cell) for cell in line))  # Text: brackets in values are not rich markup
    width = max(40, shutil.get_terminal_size((80, 24)).columns)
    buffer = StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False, markup=False, emoji=False)
    console.print(Padding(table, (0, 0, 0, indent)) if indent else table)
    lines = [line.rstrip() for line in buffer.getvalue().splitlines()]
    if limit is not None and total > len(rows):
        lines.append(" " * indent + f"({len(rows)} of {total:,} rows shown)")
    return "\n".join(line for line in lines if line or header)


def _check_outputs(table: Optional[str] = None, **paths: Optional[str]) -> None:
    """Check every output path before any work, so a bad one writes nothing.

    ``table`` is the --out of a table (its extension chooses Parquet or CSV); other keywords are flag names.
    """
    from raymem.paper.plots import check_table_path
    from raymem.store.safe_files import check_output_path

    if table:
        check_table_path(table, "--out")
    for flag, path in paths.items():
        if path:
            check_output_path(path, f"--{flag}")


def _api():
    from raymem import api

    return api


# ---- run and watch ----------------------------------------------------------------------------------------------


def _describe_optimizer(r: dict) -> str:
    """``SGD momentum 0.9`` (the paper's), ``AdamW weight decay 0.05, label smoothing 0.2``: a recipe's optimizer."""
    name = r.get("optimizer", "sgd")
    text = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[name]
    if name == "sgd":
        text += (" Nesterov" if r.get("nesterov") else "") + f" momentum {r['momentum']:g}"
    extras = [f"weight decay {r['weight_decay']:g}" if r.get("weight_decay") else "",
              f"label smoothing {r['label_smoothing']:g}" if r.get("label_smoothing") else ""]
    return ", ".join([text, *filter(None, extras)])


def format_plan(p: dict) -> str:
    """The dry-run plan as a short two-column table."""
    from raymem.training.flops import format_flops

    r = p["recipe"]
    schedule = r["schedule"] + (f" {json.dumps(r['schedule_params'])}" if r["schedule_params"] else "")
    augment = ", ".join(filter(None, [f"pad-crop {r['augment_pad']}" if r["augment_pad"] else "",
                                      "flip" if r["augment_flip"] else ""])) or "none"
    per = p["per_trial"]
    hours = p["estimated_gpu_hours"]
    shards = p["pair_shards"]
    rows = [
        ("data", f"{p['dataset']}, {p['subset_ratio']:g} of the training set per trial"),
        ("model", p["model"]),
        ("trials", f"{p['trials']:,}"),
        ("recipe", f"{r['epochs']} epochs, batch {r['batch_size']}, {_describe_optimizer(r)}, "
                   f"base LR {r['base_lr']:g}"),
        ("schedule", schedule),
        ("augment", augment),
        ("per trial", f"{per['cpus']:g} CPU, {per['gpus']:g} GPU" + (f" x {per['nodes']} nodes" if per["nodes"] > 1
                                                                      else "")),
        ("executor", p["executor"]),
        ("influence", f"{p.get('influence_scope', 'full')} scope, pair counts in "
                      + (f"{shards} shard actors" if shards else "the accumulator")),
        ("train FLOPs", "unknown" if p.get("train_flops_per_model") is None
                        else f"{format_flops(p['train_flops_per_model'])} per model ({p['flops_basis']})"),
        ("GPU-hours", "unmeasured" if hours is None else f"{hours:,.0f}"),
        ("based on", p["estimate_basis"]),
        ("run dir", p["run_dir"]),
    ]
    table = format_table([{"key": k, "value": v} for k, v in rows], header=False, indent=2)
    return f"plan for preset {p['preset']} (nothing started):\n{table}"


RUN_EXAMPLES = """Examples:

\b
  raymem run digits --trials 50    # on a local Ray
  raymem run cifar100 --dry-run    # the plan and its GPU-hours
  raymem run cifar100 --address 10.0.0.5:6379 --detach
  raymem run my-experiment.yaml --set recipe.momentum=0.8
  raymem run digits --trials 200 --until-halfwidth 0.1
"""


#: Options of `raymem run` whose help needs more than a line.
PairShardsOpt = typer.Option(None, "--pair-shards", help="Split a full-scope pair matrix over this many actors when "
                                                         "it does not fit one process (default 1).")
UntilHalfwidthOpt = typer.Option(None, "--until-halfwidth", help="Stop submitting trials once the median anytime "
                                                                 "memorization half-width is at most this (--trials "
                                                                 "stays the cap).")
UntilJaccardOpt = typer.Option(None, "--until-jaccard", help="Stop submitting trials once the split-half Jaccard at "
                                                             "mem >= 0.25 is at least this.")
InfluenceScopeOpt = typer.Option(None, "--influence-scope", help="full: influence of every (train, test) pair; "
                                                                 "class: pairs of the same label only, one block per "
                                                                 "class (the imagenet preset's).")
PackOpt = typer.Option(None, "--pack", help="Train K trials together as one packed model (any model; not a data set "
                                            "that streams from files, such as imagenet2012, nor trials of several "
                                            "GPUs or nodes), or 'auto'.")
CheckpointEveryOpt = typer.Option(None, "--checkpoint-every", help="Save each trial's training state every N >= 1 "
                                                                   "epochs into RUN/checkpoints (presets: imagenet "
                                                                   "1, cifar 5); --set checkpoint_every=null turns "
                                                                   "checkpoints off.")
KeepModelsOpt = typer.Option(None, "--keep-models", help="Keep each trial's final weights in "
                                                         "RUN/checkpoints/trial-*/final.npz.")
MaxPendingOpt = typer.Option(None, "--max-pending", help="Show at most this many waiting trials' resources to the "
                                                         "autoscaler (default: all remaining).")
SetOpt = typer.Option(None, "--set", help="Override any config key: --set recipe.momentum=0.8 (repeatable).")
DetachOpt = typer.Option(False, "--detach", help="Submit the driver to the cluster (--address) as a Ray job and "
                                                 "return; follow it with `raymem status/logs/stop RUN`.")


@command(epilog=RUN_EXAMPLES)
@user_errors
def run(
    experiment: str = typer.Argument(..., help="Preset name (see `raymem presets`) or a .yaml/.toml experiment "
                                               "file."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Trials the run should hold (raise it to extend "
                                                                "a run)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name; default: the preset's name."),
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = ClusterOpt,
    data_dir: Optional[str] = DataDirOpt,
    epochs: Optional[int] = _key_option("epochs"),
    batch_size: Optional[int] = _key_option("batch_size"),
    base_lr: Optional[float] = _key_option("base_lr", "--lr"),
    model: Optional[str] = _key_option("model"),
    dataset: Optional[str] = _key_option("dataset"),
    subset_ratio: Optional[float] = _key_option("subset_ratio"),
    seed: Optional[int] = _key_option("seed"),
    flip_labels: Optional[float] = _key_option("flip_labels"),
    cpus_per_trial: Optional[float] = _key_option("cpus_per_trial"),
    gpus_per_trial: Optional[float] = _key_option("gpus_per_trial"),
    nodes_per_trial: Optional[int] = _key_option("nodes_per_trial"),
    max_attempts: Optional[int] = _key_option("max_attempts"),
    pair_shards: Optional[int] = PairShardsOpt,
    until_halfwidth: Optional[float] = UntilHalfwidthOpt,
    until_jaccard: Optional[float] = UntilJaccardOpt,
    influence_scope: Optional[str] = InfluenceScopeOpt,
    pack: Optional[str] = PackOpt,
    checkpoint_every: Optional[int] = CheckpointEveryOpt,
    keep_models: Optional[bool] = KeepModelsOpt,
    max_pending: Optional[int] = MaxPendingOpt,
    settings: Optional[List[str]] = SetOpt,
    num_cpus: Optional[int] = NumCpusOpt,
    num_gpus: Optional[float] = NumGpusOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the GPU-hour estimate; start nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the result (with --dry-run: the plan) as JSON."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
    detach: bool = DetachOpt,
):
    """Train a run's missing trials on Ray.

    On the cluster at --address (or $RAY_ADDRESS), else on a local Ray started for the run; --detach leaves the
    run going as a Ray job. Running the same command again resumes the run from its trial log.
    """
    api = _api()
    overrides = dict(trials=trials, epochs=epochs, batch_size=batch_size, base_lr=base_lr, model=model,
                     dataset=dataset, subset_ratio=subset_ratio, seed=seed, flip_labels=flip_labels,
                     cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, nodes_per_trial=nodes_per_trial,
                     max_attempts=max_attempts, pair_shards=pair_shards, pack=pack, influence_scope=influence_scope,
                     checkpoint_every=checkpoint_every, keep_models=keep_models, max_pending=max_pending)
    config = api.load_config(experiment, overrides, settings)  # checked before anything starts
    report.StatusQuestions(until_halfwidth=until_halfwidth, until_jaccard=until_jaccard)  # checks them
    if dry_run:
        shown = api.plan(config, name=name, storage=storage)
        echo_json(shown) if as_json else typer.echo(format_plan(shown))
        return
    options = api.DriverOptions(address=address, data_dir=data_dir, num_cpus=num_cpus, num_gpus=num_gpus,
                                progress=not (quiet or as_json or detach), until_halfwidth=until_halfwidth,
                                until_jaccard=until_jaccard)
    if detach:
        job = api.run(config, name=name, storage=storage, options=options, detach=True)
        echo_json(job.to_dict()) if as_json else typer.echo(job.job_id)
        typer.echo(f"submitted run {job.name} as job {job.job_id} to {job.address}; data in {job.run_uri}. Follow "
                   f"it with `raymem status {job.run_uri}`, `raymem logs {job.run_uri} --follow`; "
                   f"`raymem stop {job.run_uri}` stops it; the same command again resumes it.", err=True)
        return
    _report_run(api.run(config, name=name, storage=storage, options=options), as_json)


def _report_run(result, as_json: bool) -> None:
    """What a finished `raymem run` prints; exit status 1 when trials failed (they are named on stderr)."""
    if as_json:
        echo_json({field.name: getattr(result, field.name) for field in dataclasses.fields(result)})
    else:
        typer.echo(f"run {result.name}: {result.trials_done}/{result.trials_target} trials in the log "
                   f"({len(result.trained_now)} trained now, {len(result.retried)} retried, {len(result.failed)} "
                   f"failed) in {result.wall_seconds:.1f}s; data in {result.run_uri}")
        if result.stopped_early:
            typer.echo(f"stopped early: {result.stopped_early}")
    for k, why in sorted(result.failed.items()):
        typer.echo(f"  trial {k} failed: {why}", err=True)
    if result.failed:
        raise typer.Exit(1)


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
    simultaneous = ", simultaneous" if s["simultaneous"] else ""
    lines += [
        f"  mem half-width ({s.get('method', '?')}, delta={s['delta']:g}{simultaneous}): "
        f"median {mem['median_halfwidth']:.3f}, max {mem['max_halfwidth']:.3f}",
        f"  mem >= {mem['certify_threshold']:g}: {mem['estimated_above']} estimated, {mem['certified']} certified "
        "(lower bound)",
        f"  more trials needed for median half-width {mem['target_halfwidth']:g}: {mem['more_trials_needed']}",
        f"  paper's Lemma 2.1 RMS bound: {s['lemma21_rms_bound']:.3f}",
    ]
    for key in (k for k in s if k.startswith("pairs_fdr_")):
        lines.append(f"  pairs passing at false discovery rate {key.removeprefix('pairs_fdr_')}: {s[key]}")
    for name, c in (s.get("stopping") or {}).items():
        if isinstance(c, dict):
            value = "n/a" if c.get("value") is None else f"{c['value']:.3f}"
            lines.append(f"  stop --{name.replace('_', '-')} {c['target']:g}: {'met' if c['met'] else 'not yet'} "
                         f"(now {value})")
    for theta, c in s["split_half"]["mem"].items():
        j = "n/a" if c["jaccard"] is None else f"{c['jaccard']:.3f}"
        d = "n/a" if c["mean_abs_diff"] is None else f"{c['mean_abs_diff']:.3f}"
        lines.append(f"  split-half (even vs odd trials) at mem >= {theta}: Jaccard {j}, mean |diff| {d}")
    canaries = s.get("canaries") or {}
    if canaries.get("count"):
        lines.append(f"  canaries: {canaries['count']} flipped labels, recall {canaries['recall']:.2f} among the "
                     f"top {canaries['count']} (chance {canaries['chance']:.3f})")
    return "\n".join(lines)


STATUS_EXAMPLES = """Examples:

\b
  raymem status digits             # the live run, else its trial log
  raymem status digits --watch     # refresh until the run is done
  raymem status digits --json | jq .mem.certified
  raymem status cifar100 --method fixed --until-halfwidth 0.05
"""


@command(epilog=STATUS_EXAMPLES)
@user_errors
def status(
    run: str = RunArg,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    watch: bool = typer.Option(False, "--watch", help="Refresh until the run reaches its target."),
    interval: float = typer.Option(5.0, "--interval", help="Seconds between refreshes with --watch."),
    target_halfwidth: float = typer.Option(report.DEFAULT_TARGET_HALFWIDTH, "--target-halfwidth",
                                           help="Half-width at which the run would be precise enough."),
    until_halfwidth: Optional[float] = typer.Option(None, "--until-halfwidth",
                                                    help="Show how far the run is from this median half-width."),
    until_jaccard: Optional[float] = typer.Option(None, "--until-jaccard",
                                                  help="Show how far the split-half Jaccard is from this."),
    delta: float = DeltaOpt,
    simultaneous: bool = SimultaneousOpt,
    method: str = MethodOpt,
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
):
    """Trials, error bars, certified examples, trials still needed.

    Trials counted, error-bar widths, certified examples, split-half consistency and the trials still needed,
    from the run's live accumulator when one answers, else from its trial log.
    """
    _finite(interval, "--interval", low=0.1, high=86400)

    def read() -> dict:
        # --watch skips the FDR pair count: each refresh would cost a full pairs read
        return _api().status(run, storage=storage, address=address, method=method, delta=delta,
                             simultaneous=simultaneous, target_halfwidth=target_halfwidth,
                             until_halfwidth=until_halfwidth, until_jaccard=until_jaccard,
                             **({"pairs_fdr": None} if watch else {}))

    if not watch or as_json:
        s = read()
        echo_json(s) if as_json else typer.echo(format_status(s))
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


#: What `raymem trials` shows a person; --json and --out hold every column.
TRIAL_COLUMNS = {"trial_id": "trial", "attempt": "attempt", "host": "host", "train_seconds": "train seconds",
                 "resumed_from_epoch": "resumed from epoch", "test_accuracy": "test accuracy"}


@command()
@user_errors
def trials(
    run: str = RunArg,
    as_json: bool = typer.Option(False, "--json", help="Print every column of every trial as JSON."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the table (every column) here: .parquet or .csv."),
    storage: Optional[str] = StorageOpt,
):
    """Each trial: attempt, host, seconds, resumed epoch, accuracy.

    The table shows trial, attempt, host, training seconds, the epoch it resumed from and its test accuracy;
    --json and --out hold every column (node, start and finish, train accuracy, GPUs, checkpoint warnings).
    """
    from raymem.paper import plots

    _check_outputs(table=out)
    table = _api().trials(run, storage=storage)
    if out:
        plots.write_table(table, out)
        typer.echo(f"wrote {table.num_rows} rows to {out}", err=as_json)
    if as_json:
        echo_json(table.to_pylist())
    elif not out:
        typer.echo(format_table(table, TRIAL_COLUMNS, limit=50))


@command()
@user_errors
def serve(
    runs: List[str] = typer.Argument(..., help="Runs to serve: names (under --storage) or run directories."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (beyond loopback: needs --token "
                                                         "or --insecure-public)."),
    port: int = typer.Option(8266, "--port", min=0, max=65535, help="Port to listen on (0: any free one)."),
    token: Optional[str] = typer.Option(None, "--token", help="A secret every request must carry (?token=T once)."),
    insecure_public: bool = typer.Option(False, "--insecure-public",
                                         help="Serve beyond loopback without a token: anyone who reaches it reads "
                                              "the runs."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", envvar="RAYMEM_DATA_DIR",
                                           help="Prepared TensorFlow Datasets, for the thumbnails."),
    storage: Optional[str] = StorageOpt,
):
    """A web explorer: overview, memorization, examples, pairs, trials.

    Serves the runs' pages until Ctrl-C: the overview (trials, throughput, the convergence curves; it reloads
    itself while the run trains), every training example sorted and filtered with its interval, an example's page
    with its influences (links both ways), the pairs and the trials, plus JSON under /run/K/api/. On a cluster head:
    ssh -L 8266:localhost:8266 head, then open http://localhost:8266/.
    """
    explorer = _api().serve(runs, host=host, port=port, token=token, insecure_public=insecure_public,
                            storage=storage, data_dir=data_dir, block=False)
    typer.echo(f"serving {len(runs)} run(s) at {explorer.url} (Ctrl-C stops)", err=True)
    try:
        explorer.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        explorer.close()


@command()
@user_errors
def tensorboard(
    run: str = RunArg,
    every: int = typer.Option(10, "--every", min=1, help="Trials per update (one TensorBoard step each)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", envvar="RAYMEM_DATA_DIR",
                                           help="Prepared TensorFlow Datasets, for the memorized-examples image."),
    delta: float = DeltaOpt,
    simultaneous: bool = SimultaneousOpt,
    method: str = MethodOpt,
    storage: Optional[str] = StorageOpt,
):
    """Write RUN/tensorboard/ from the trial log.

    Replays a finished or ingested run: the median and max memorization half-width, certified examples,
    split-half Jaccard, trials per hour and mean test accuracy (the numbers `raymem status` gives at each trial
    count), a histogram of per-trial test accuracy and the most memorized examples as an image (where the run's
    data loader gives images), one step every --every trials. A training run's driver
    writes them itself as trials land. Then: tensorboard --logdir RUN.
    """
    written = _api().tensorboard(run, storage=storage, every=every, method=method, delta=delta,
                                 simultaneous=simultaneous, data_dir=data_dir)
    steps = written["steps"]
    if written.get("images"):
        typer.echo(f"no memorized-examples image: {written['images']}")
    typer.echo(f"wrote {len(steps)} updates (trials {steps[0] if steps else 0}..{steps[-1] if steps else 0}) "
               f"to {written['logdir']}; open it with: tensorboard --logdir {written['logdir']}")


@command()
@user_errors
def verify(
    run: str = RunArg,
    quarantine: bool = typer.Option(False, "--quarantine", help="Move the damaged trial files to RUN/quarantine/; "
                                                                "the next `raymem run` trains those trials again."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    storage: Optional[str] = StorageOpt,
):
    """Check every file of a run; exit 1 listing the damaged ones.

    Each trial file's checksum and columns, run.json and labels.parquet. With --quarantine the damaged trial files
    are moved out of the log (exit 0 once moved), so that `raymem run` retrains exactly those trials.
    """
    report = _api().verify(run, storage=storage, quarantine=quarantine)
    if as_json:
        echo_json(report.to_dict())
    else:
        for damage in report.damaged:
            typer.echo(f"damaged: {damage.path}: {damage.problem}")
        for moved in report.quarantined:
            typer.echo(f"moved to {moved}")
        line = f"{report.checked} files checked, {len(report.damaged)} damaged"
        if report.quarantined:
            line += f", {len(report.quarantined)} moved to quarantine; `raymem run` trains those trials again"
        elif report.damaged and not quarantine:
            line += f"; `raymem verify {run} --quarantine` sets the damaged trial files aside to be retrained"
        typer.echo(line)
    unmovable = [d for d in report.damaged if d.trial_id is None]
    if unmovable or (report.damaged and not quarantine):
        raise typer.Exit(1)


@command()
@user_errors
def logs(
    run: str = RunArg,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing the output until the job ends."),
    storage: Optional[str] = StorageOpt,
):
    """The output of a detached run's job (`raymem run --detach`)."""
    output = _api().logs(run, storage=storage, follow=follow)
    if isinstance(output, str):
        typer.echo(output, nl=False)
        return
    for chunk in output:
        typer.echo(chunk, nl=False)


@command()
@user_errors
def stop(
    run: str = RunArg,
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
):
    """Stop a run's detached job and its live accumulator.

    Stopping the accumulator frees its memory; the trial log keeps everything, and `raymem run` resumes.
    """
    stopped = _api().stop(run, storage=storage, address=address)  # the job first, then the accumulator
    job = stopped["job"]
    if job is not None:
        now = " (stopped now)" if job["was"] != job["state"] else ""
        typer.echo(f"job {job['job_id']} of {run}: {job['state']}{now}")
    if stopped["accumulator"]:
        typer.echo(f"stopped the accumulator of {run}; `raymem run` starts a new one from the log.")
    else:
        typer.echo(f"no live accumulator of {run} was reachable; nothing to stop.")


#: What `raymem presets` shows in a terminal; --markdown and --json hold every column.
PRESET_COLUMNS = {"preset": "preset", "model": "model", "epochs": "epochs", "per trial": "per trial",
                  "GPU-h for 2,000 trials": "GPU-h, 2000 trials"}


KEY_COLUMNS = {"key": "key", "type": "type", "default": "default", "resumable": "on resume"}


def _key_row(key: dict) -> dict:
    """A config key as a row of the keys table (``config_keys()`` has more fields; --json of --keys shows these)."""
    default = "(required)" if key["required"] else json.dumps(key["default"])
    return {"key": key["key"], "type": key["type"], "default": default,
            "resumable": "may change" if key["resumable"] else "fixed", "description": key["description"]}


def _echo_markdown(rows: list[dict]) -> None:
    header = list(rows[0])
    typer.echo("| " + " | ".join(header) + " |")
    typer.echo("|" + "---|" * len(header))
    for row in rows:
        typer.echo("| " + " | ".join(" ".join(str(row[key]).split()).replace("|", "\\|") for key in header) + " |")


@command()
def presets(
    markdown: bool = typer.Option(False, "--markdown", help="Print every column as a Markdown table (as in the "
                                                            "README)."),
    as_json: bool = typer.Option(False, "--json", help="Print every column as JSON."),
    keys: bool = typer.Option(False, "--keys", help="List the config keys instead: type, default, whether a "
                                                    "resumed run may change it, and what it means."),
):
    """The presets: data, model, recipe, resources, GPU-hours.

    The table shows the main columns; --markdown and --json hold every column (recipe, schedule, augmentation,
    the paper's seconds per epoch). With --keys, the keys a config file, --set or a flag may give.
    """
    rows = [_key_row(k) for k in _api().config_keys()] if keys else _api().presets()
    if as_json:
        echo_json(rows)
        return
    if markdown or keys:
        _echo_markdown(rows) if markdown else typer.echo(format_table(rows, KEY_COLUMNS))
        return
    shown = {key: heading for key, heading in PRESET_COLUMNS.items() if key in rows[0]}
    typer.echo(format_table(rows, shown or None))


# ---- read a run ---------------------------------------------------------------------------------------------


ESTIMATES_EXAMPLES = """Examples:

\b
  raymem estimates digits          # the ten most memorized examples
  raymem estimates digits --out mem.parquet --figure mem.png
  raymem estimates cifar100 --method fixed --delta 0.01 --simultaneous
"""


@command(epilog=ESTIMATES_EXAMPLES)
@user_errors
def estimates(
    run: str = RunArg,
    out: Optional[str] = typer.Option(None, "--out", help="Write the table here: .parquet or .csv."),
    figure: Optional[str] = typer.Option(None, "--figure", help="Write a PNG histogram of the estimates here."),
    delta: float = DeltaOpt,
    simultaneous: bool = SimultaneousOpt,
    method: str = MethodOpt,
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
):
    """Memorization of every training example, with its error bars."""
    from raymem.paper import plots

    _check_outputs(table=out, figure=figure)
    table = _api().estimates(run, storage=storage, address=address, delta=delta, simultaneous=simultaneous,
                             method=method)
    if out:
        plots.write_table(table, out)
        typer.echo(f"wrote {table.num_rows} rows to {out}")
    if figure:
        plots.mem_figure(table, figure, title=f"memorization: {run}")
        typer.echo(f"wrote {figure}")
    import pyarrow.compute as pc

    typer.echo("top memorized training examples:")
    shown = [c for c in ("train_index", "label_name", "mem", "mem_lo", "mem_hi", "n_in", "n_out", "label_flipped")
             if c in table.column_names]
    top = table.take(pc.sort_indices(table, [("mem", "descending")])[:10])
    typer.echo(format_table(top, {c: c for c in shown}))


PAIRS_EXAMPLES = """Examples:

\b
  raymem pairs digits              # infl >= 0.15 and mem >= 0.25
  raymem pairs digits --fdr 0.1    # at a false discovery rate of 10%
  raymem pairs cifar100 --out pairs.parquet --npz pairs.npz
"""


@command(epilog=PAIRS_EXAMPLES)
@user_errors
def pairs(
    run: str = RunArg,
    min_infl: float = typer.Option(formulas.PAPER_MIN_INFL, "--min-infl",
                                   help="Keep pairs with influence at least this."),
    min_mem: float = typer.Option(formulas.PAPER_MIN_MEM, "--min-mem",
                                  help="Keep training examples with memorization at least this."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the pairs here: .parquet or .csv."),
    npz: Optional[str] = typer.Option(None, "--npz", help="Also write them in the paper's released layout "
                                                         "(tr_idx, tt_idx, infl, mem)."),
    fdr: Optional[float] = typer.Option(None, "--fdr", help="Select pairs with infl > --min-infl at this false "
                                                           "discovery rate (adds q_value) instead of by the point "
                                                           "estimates."),
    delta: float = DeltaOpt,
    simultaneous: bool = SimultaneousOpt,
    method: str = MethodOpt,
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
):
    """High-influence (train, test) pairs: the paper's rule or an FDR.

    The paper's rule keeps pairs with infl >= --min-infl whose training example has mem >= --min-mem; --fdr
    selects them at a false discovery rate instead.
    """
    from raymem.paper import plots

    _check_outputs(table=out, npz=npz)
    table = _api().pairs(run, storage=storage, address=address, min_infl=min_infl, min_mem=min_mem,
                         delta=delta, simultaneous=simultaneous, method=method, fdr=fdr)
    if out:
        plots.write_table(table, out)
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
                   f"{certain} of them with an influence lower bound above 0 ({method}, delta={delta:g}): the rest "
                   f"may be noise; --fdr 0.1 controls the false discoveries")
    typer.echo(format_table(table, limit=10))


@command()
@user_errors
def influence(
    run: str = RunArg,
    test_index: int = typer.Option(..., "--test-index", help="Test example to explain."),
    top: int = typer.Option(10, "--top", help="How many influencers to list."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the table here: .parquet or .csv."),
    delta: float = DeltaOpt,
    simultaneous: bool = SimultaneousOpt,
    method: str = MethodOpt,
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
):
    """The training examples that most influence one test example."""
    from raymem.paper import plots

    _check_outputs(table=out)
    table = _api().influence(run, test_index, storage=storage, address=address, top=top, delta=delta,
                             simultaneous=simultaneous, method=method)
    if out:
        plots.write_table(table, out)
    typer.echo(format_table(table, limit=top))


@command()
@user_errors
def compare(
    run: str = RunArg,
    others: List[str] = typer.Argument(..., help="Other runs (names or directories), or released pairs as .npz "
                                                 "(tr_idx, tt_idx, infl, mem)."),
    reference: Optional[str] = typer.Option(None, "--reference",
                                            help="With several runs: compare each with this one (default: the "
                                                 "first)."),
    min_infl: float = typer.Option(formulas.PAPER_MIN_INFL, "--min-infl"),
    min_mem: float = typer.Option(formulas.PAPER_MIN_MEM, "--min-mem"),
    out: Optional[str] = typer.Option(None, "--out", help="Write the consistency table here (run vs run): .parquet "
                                                          "or .csv."),
    figure: Optional[str] = typer.Option(None, "--figure",
                                         help="Write the consistency curves as a PNG (runs vs the reference)."),
    storage: Optional[str] = StorageOpt,
):
    """Consistency of runs' estimates (Jaccard, mean |difference|).

    Jaccard similarity and mean |difference| at thresholds (supplement Eq. 4, Figs. C.2/C.3), of a run with
    other runs or with released pairs.
    """
    from raymem.paper import plots

    _check_outputs(table=out, figure=figure)
    api = _api()
    if len(others) == 1 and reference is None:
        result = api.compare(run, others[0], storage=storage, min_infl=min_infl, min_mem=min_mem)
        if isinstance(result, dict):
            echo_json(result)
            return
        if out:
            plots.write_table(result, out)
        if figure:
            plots.consistency_figure(result, figure, title=f"{run} vs {others[0]}")
        typer.echo(format_table(result, limit=40))
        return
    import pyarrow as pa

    from raymem.paper import figures as paper_figures

    ref, curves, legend = api.compare_many([run, *others], reference=reference, storage=storage, min_mem=min_mem)
    table = pa.concat_tables([t.append_column("run", pa.array([name] * t.num_rows)) for name, t in curves.items()])
    if out:
        plots.write_table(table, out)
    if figure:
        paper_figures.comparison_figure(ref, curves, figure, legend=legend)
        typer.echo(f"wrote {figure}")
    for name, info in legend.items():
        typer.echo(paper_figures.legend_label(name, info) + (" (reference)" if name == ref else ""))
    typer.echo(format_table(table, limit=40))


# ---- the paper's outputs ----------------------------------------------------------------------------------------


FIGURES_EXAMPLES = """Examples:

\b
  raymem figures digits --out figs  # every figure the run can draw
  raymem figures cifar100 --out figs --class 3 --data-dir ~/tfds
"""


@command(epilog=FIGURES_EXAMPLES)
@user_errors(flags={"out_dir": "--out"})
def figures(
    run: str = RunArg,
    out: str = typer.Option(..., "--out", help="Folder for the PNGs and influence-examples.parquet (created if its "
                                              "parent exists)."),
    klass: Optional[int] = typer.Option(None, "--class", help="Class shown in memorized.png (default: most examples "
                                                              "at mem >= 0.25)."),
    method: str = MethodOpt,
    data_dir: Optional[str] = DataDirOpt,
    storage: Optional[str] = StorageOpt,
):
    """The paper's figures of a run.

    Memorized examples, influence rows, the influence histogram and convergence, as PNGs in --out.
    """
    summary = _api().figures(run, out, klass=klass, storage=storage, data_dir=data_dir, method=method)
    for name in summary["written"]:
        typer.echo(f"wrote {out}/{name}")
    for name, why in summary["skipped"].items():
        typer.echo(f"skipped {name}: {why}")
    counts = ", ".join(f"{n} by {k}" for k, n in sorted(summary.get("influenced_by", {}).items()))
    typer.echo(f"{summary['pairs']} high-influence pairs; test examples influenced: {counts or 'none'}")


@command()
@user_errors(flags={"layout": "--format"})
def export(
    run: str = RunArg,
    out: str = typer.Option(..., "--out", help="The .npz file to write."),
    format: str = typer.Option("fz", "--format", help="fz: the layout Feldman & Zhang released (tr_mem, per-class "
                                                      "influence)."),
    index_map: Optional[str] = typer.Option(None, "--index-map", help="Map from the authors' example order to tfds "
                                                                      "order (.npy or .npz train/test)."),
    storage: Optional[str] = StorageOpt,
):
    """Write a run's estimates in the authors' released layout."""
    written = _api().export(run, out, layout=format, storage=storage, index_map=index_map)
    typer.echo(f"wrote {written} ({format} layout)")


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
    arms = [{"arm": arm, "train": r[arm].get("train_size"), "models": r[arm]["models"],
             "test": _with_interval(r[arm]["test"]), "influenced": _with_interval(r[arm]["influenced"])}
            for arm in ("full", "without_high_influence", "without_random")]
    lines.append(format_table(arms, {"arm": "arm", "train": "train", "models": "models", "test": "test accuracy",
                                     "influenced": "accuracy on S'_h"}, indent=2))
    for arm, label in (("without_high_influence", "without S_h"), ("without_random", "without random")):
        d = r["drops"][arm]
        lines.append(f"  drop {label}: test {_drop(d['test'])}, on S'_h {_drop(d['influenced'])}, "
                     f"S'_h's share of the test drop {_drop(d['influenced_contribution'])}")
    if interval.get("note"):
        lines.append(f"  note: {interval['note']}")
    return "\n".join(lines)


@command()
@user_errors(flags={"models_per_arm": "--trials"})
def marginal(
    run: str = RunArg,
    trials: int = typer.Option(..., "--trials", help="K: models per arm (3K trials in all; intervals need K >= 2)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the marginal run, beside RUN (default "
                                                            "RUN-marginal)."),
    min_infl: Optional[float] = typer.Option(None, "--min-infl", help="Pairs with influence at least this (default "
                                                                      "0.15)."),
    min_mem: Optional[float] = typer.Option(None, "--min-mem", help="Pairs whose training example has mem at least "
                                                                    "this (default 0.25)."),
    fdr: Optional[float] = typer.Option(None, "--fdr", help="Select the pairs at this false discovery rate instead."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the marginal run (training, random control); "
                                                            "default RUN's."),
    delta: float = typer.Option(report.DEFAULT_DELTA, "--delta", help="Intervals at confidence 1-delta."),
    settings: Optional[List[str]] = typer.Option(None, "--set", help="Resource keys only, e.g. --set "
                                                                     "gpus_per_trial=1 (the recipe is RUN's)."),
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = ClusterOpt,
    data_dir: Optional[str] = DataDirOpt,
    num_cpus: Optional[int] = NumCpusOpt,
    num_gpus: Optional[float] = NumGpusOpt,
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
):
    """Marginal utility of a run's high-influence examples.

    Supplement C: retrain on S, on S minus S_h (the high-influence training examples) and on S minus a random
    set of the same size, K models each, and compare their test accuracy.
    """
    api = _api()
    options = api.DriverOptions(address=address, data_dir=data_dir, num_cpus=num_cpus, num_gpus=num_gpus,
                                progress=not (quiet or as_json))
    result = api.marginal(run, trials, storage=storage, name=name, min_infl=min_infl, min_mem=min_mem, fdr=fdr,
                          seed=seed, settings=settings, options=options, delta=delta)
    echo_json(result) if as_json else typer.echo(format_marginal(result))
    for k, why in sorted(result["failed"].items()):
        typer.echo(f"  trial {k} failed: {why}", err=True)
    if result["failed"]:
        raise typer.Exit(1)


# ---- bring your own results -------------------------------------------------------------------------------------


@command()
@user_errors
def ingest(
    run_dir: str = typer.Argument(..., help="New run directory (local path or s3:// gs:// URI)."),
    masks: Optional[str] = typer.Option(None, "--masks",
                                        help="bool .npy (trials, n_train): example i in trial k's subset."),
    train_correct: Optional[str] = typer.Option(None, "--train-correct",
                                                help="bool .npy (trials, n_train): trial k correct on training "
                                                     "example i."),
    test_correct: Optional[str] = typer.Option(None, "--test-correct",
                                               help="bool .npy (trials, n_test): trial k correct on test example j."),
    source: Optional[Tuple[str, str]] = typer.Option(None, "--from",
                                                     help="Instead of the .npy files: --from npz FILE "
                                                          "(trainset_mask, trainset_correctness, testset_correctness) "
                                                          "or --from fz-aux DIR (the authors' runs, one "
                                                          "aux_arrays.npz each)."),
    index_map: Optional[str] = typer.Option(None, "--index-map", help="Map from the authors' example order to tfds "
                                                                      "order (.npy or .npz train/test)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name recorded in run.json (default: the folder "
                                                            "name)."),
):
    """Make a run from external results.

    The authors' released runs, or any boolean arrays of subset masks and correctness.
    """
    api = _api()
    if source and source[0] is not None:
        if masks or train_correct or test_correct:
            raise RaymemError("give either --from npz FILE / --from fz-aux DIR or the three .npy files "
                              "--masks, --train-correct and --test-correct, not both.")
        info = api.ingest_from(run_dir, source[0], source[1], name=name, index_map=index_map).info
    elif masks and train_correct and test_correct:
        info = api.ingest_files(run_dir, masks, train_correct, test_correct, name=name).info
    else:
        raise RaymemError("give --masks, --train-correct and --test-correct (.npy files), or --from npz FILE / "
                          "--from fz-aux DIR.")
    typer.echo(f"ingested {info.config['trials']} trials into {run_dir}: n_train={info.n_train} "
               f"n_test={info.n_test} subset_size={info.subset_size}")


@command()
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
    """Save a trained model's penultimate-layer features.

    Trains one model on the full training set and writes its penultimate-layer features (the data of the
    `cifar100-linear` preset); prints a JSON summary.
    """
    summary = _api().features(dataset, out, model=model, epochs=epochs, batch_size=batch_size, base_lr=base_lr,
                              data_dir=data_dir, seed=seed)
    echo_json(summary)


# ---- clusters ---------------------------------------------------------------------------------------------------


@command()
@user_errors
def up(
    cluster_yaml: Optional[str] = typer.Argument(None, help="Ray cluster-launcher YAML (e.g. the repository's "
                                                            "cluster.yaml)."),
    local: bool = typer.Option(False, "--local", help="Start a Ray head on this machine instead (loopback only, "
                                                      "token auth on)."),
    port: int = typer.Option(6379, "--port", help="GCS port of a --local head."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", help="GPUs a --local head advertises."),
    dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard",
                                   help="A --local head serves Ray's dashboard and Job API (127.0.0.1:8265), which "
                                        "`raymem run --detach` needs, as `ray start --head` does."),
    no_restart: bool = typer.Option(False, "--no-restart", help="Update without restarting Ray on the nodes."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
):
    """Start a cluster (Ray's launcher) or a local Ray head.

    The cluster YAML is validated first, and nothing launches when it fails; --local starts a Ray head on this
    machine instead.
    """
    result = _api().up(cluster_yaml, local=local, port=port, num_gpus=num_gpus, no_restart=no_restart, yes=yes,
                       dashboard=dashboard)
    if local:
        typer.echo(f"local Ray head at {result['address']}; run trials on it with "
                   f"`RAY_AUTH_MODE=token raymem run digits --address {result['address']}`"
                   + (" (add --detach to leave them running there)" if dashboard else ""))
    elif result.get("launched"):
        typer.echo(f"cluster {result['cluster_name']} is up (head {result.get('head_ip', '?')}); "
                   f"`ray attach {cluster_yaml}` then `raymem run <preset>` on the head.")
    else:
        typer.echo("nothing launched.")


@command()
@user_errors
def down(
    cluster_yaml: Optional[str] = typer.Argument(None, help="The YAML the cluster was started from."),
    local: bool = typer.Option(False, "--local", help="Stop the local head started by `raymem up --local`."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
):
    """Tear down a cluster or the local head.

    A cluster started by `raymem up` (its YAML validated first), or the head of `raymem up --local`.
    """
    _api().down(cluster_yaml, local=local, yes=yes)
    typer.echo("local Ray head stopped." if local else f"cluster from {cluster_yaml} torn down.")


def main() -> None:
    """Entry point of the `raymem` command: the CLI, then an exit that keeps its status whatever native threads do.

    Reading run files on the calling thread (``RunStore.read_parquet``) removed the known cause of aborts at exit,
    yet the stress test (scripts/stress_exits.py) still saw an ``export`` end with SIGABRT ("terminate called
    without an active exception") after its work was done: a native thread pool torn down while the interpreter
    finalizes. A command's outcome is decided when it returns, so once Ray is shut down and every stream flushed
    the process leaves with that status without finalizing (``os._exit``).
    """
    try:
        app()
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
