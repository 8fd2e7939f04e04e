"""The paper's figures from a run's estimates (Feldman & Zhang 2020, supplement Figs. C.1-C.3, D.4-D.9).

:func:`paper_figures` writes, into one output directory,

- ``memorized.png`` (Fig. D.4): training images of one class sorted by memorization, each titled with
  its label (flipped canaries marked) and mem with its interval;
- ``influence.png`` (Figs. D.5-D.9): rows of one memorized training example followed by its most
  influenced test examples, the rows chosen by the supplement's non-cherry-picking rule
  (:func:`raymem.paper.shown_examples.select_training_rows`), and ``influence-examples.parquet``
  listing exactly what is shown;
- ``influence-hist.png`` (Fig. C.1): histogram of the influence of the selected pairs, with how many test
  examples are influenced by 1, 2, 3, ... training examples;
- ``convergence.png``: median half-width, certified count and split-half Jaccard against trials.

Figures that need images are skipped (with the reason) when the run has none, e.g. ingested runs.
A run counted in influence scope "class" has influence only between examples of the same label, so its
pairs, histogram and influence rows show same-label test examples only.
:func:`comparison_figure` draws several runs against a reference (Figs. C.2/C.3). Inputs are estimator
objects and tables, never run names; ``raymem.api`` resolves runs. Every file is written atomically.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from raymem.errors import RaymemError
from raymem.estimator import formulas, report
from raymem.estimator.bars import Bars
from raymem.estimator.convergence_curves import convergence_curve
from raymem.estimator.counts import Counts
from raymem.estimator.report import PairSelection
from raymem.paper import plots, shown_examples
from raymem.store.safe_files import check_output_path

MEMORIZED_PNG = "memorized.png"
INFLUENCE_PNG = "influence.png"
INFLUENCE_EXAMPLES = "influence-examples.parquet"
INFLUENCE_HIST_PNG = "influence-hist.png"
CONVERGENCE_PNG = "convergence.png"
OUTPUT_FILES = (MEMORIZED_PNG, INFLUENCE_PNG, INFLUENCE_EXAMPLES, INFLUENCE_HIST_PNG, CONVERGENCE_PNG)
#: Training images memorized.png shows at most (the most memorized of the class).
DEFAULT_MAX_MEMORIZED = 24
MEM_COLUMNS = ("train_index", "mem", "mem_lo", "mem_hi")
PAIR_COLUMNS = ("train_index", "test_index", "infl", "mem")
CURVE_COLUMNS = ("quantity", "threshold", "jaccard", "mean_abs_diff")
EXAMPLES_SCHEMA = pa.schema([
    ("row", pa.int64()), ("copy", pa.int64()), ("position", pa.int64()),
    ("train_index", pa.int64()), ("rank", pa.int64()), ("test_index", pa.int64()),
    ("infl", pa.float64()), ("infl_lo", pa.float64()), ("infl_hi", pa.float64()),
    ("mem", pa.float64()), ("mem_lo", pa.float64()), ("mem_hi", pa.float64()),
    ("train_label", pa.int64()), ("test_label", pa.int64()),
])


# ---- checks (all before anything is written) ---------------------------------------------------

def check_out_dir(out_dir: str | Path, flag: str = "--out") -> Path:
    """Return ``out_dir`` as a Path if it is a directory or can be created as one; RaymemError otherwise."""
    out_dir = Path(out_dir)
    parameter = None if flag.startswith("--") else flag  # a parameter name: the CLI shows its own flag
    if out_dir.exists() and not out_dir.is_dir():
        raise RaymemError(f"{flag} {out_dir} is a file; give a directory for the figures.", parameter=parameter)
    if not out_dir.exists() and not out_dir.parent.is_dir():
        raise RaymemError(f"{flag} {out_dir}: the folder {out_dir.parent} does not exist; create it first.",
                          parameter=parameter)
    for name in OUTPUT_FILES:
        if (out_dir / name).is_dir():
            raise RaymemError(f"{flag} {out_dir} holds a directory named {name}; remove it or pick another "
                              "directory.", parameter=parameter)
    return out_dir


def _require_columns(table: pa.Table, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise RaymemError(f"the {what} table lacks the columns {', '.join(missing)}; "
                          "pass the table raymem made for the run.")


def _labels(array, what: str) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise RaymemError(f"{what} must be a 1-D array of integer class labels, "
                          f"got dtype {a.dtype} with shape {a.shape}.")
    return a.astype(np.int64)


def _check_images(images, n: int, what: str) -> None:
    if images is None:
        return
    try:
        count = len(images)
    except TypeError:
        raise RaymemError(f"{what} must be an array of images (n, H, W) or (n, H, W, C).") from None
    if count != n:
        raise RaymemError(f"{what} holds {count} images but the run has {n} examples; pass the run's own data set.")
    if n:
        first = np.asarray(images[0])
        if not (first.ndim == 2 or (first.ndim == 3 and first.shape[-1] in (1, 3, 4))):
            raise RaymemError(
                f"{what} are not images (one has shape {first.shape}); "
                "figures need (H, W) or (H, W, C) with C in 1, 3, 4."
            )


# ---- drawing helpers ---------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, image) -> None:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype == np.uint8:
        vmin, vmax = 0, 255
    else:
        a = a.astype(np.float64)
        lo, hi = (float(np.min(a)), float(np.max(a))) if a.size else (0.0, 1.0)
        if lo < 0.0 or hi > 1.0:  # normalised inputs: stretch this image to [0, 1]
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        vmin, vmax = 0.0, 1.0
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _fmt(x: float) -> str:
    return "?" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _interval(value, lo, hi) -> str:
    return f"{_fmt(value)} [{_fmt(lo)}, {_fmt(hi)}]"


def _name(label: int, class_names) -> str:
    if class_names is None:
        return str(int(label))
    try:
        return str(class_names[int(label)])
    except (IndexError, KeyError):
        return str(int(label))


# ---- the figures -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunData:
    """What the figures show of a run besides its estimates: its labels, the labels before canary flips, images.

    train_labels / test_labels: the labels the run trained and tested with. original_train_labels: the labels
    before canary flips (default: train_labels; a ``label_flipped`` column in the memorization table marks flips
    too, without the original label). train_images / test_images: (n, H, W) or (n, H, W, C) arrays, or any
    sequence whose ``[i]`` is one image (only the shown images are read), or None when the run has none.
    class_names: a name per label, shown instead of the number.
    """

    train_labels: np.ndarray
    test_labels: np.ndarray
    original_train_labels: np.ndarray | None = None
    train_images: object = None
    test_images: object = None
    class_names: Sequence[str] | None = None

    def checked(self) -> "RunData":
        """These data with labels as int64 arrays, or RaymemError naming what does not fit."""
        train = _labels(self.train_labels, "train_labels")
        test = _labels(self.test_labels, "test_labels")
        original = train if self.original_train_labels is None else _labels(self.original_train_labels,
                                                                             "original_train_labels")
        if original.shape != train.shape:
            raise RaymemError(f"original_train_labels has {original.size} entries but train_labels has {train.size}; "
                              "give one original label per training example.")
        _check_images(self.train_images, train.size, "train_images")
        _check_images(self.test_images, test.size, "test_images")
        return dataclasses.replace(self, train_labels=train, test_labels=test, original_train_labels=original)


@dataclass(frozen=True)
class Shown:
    """The estimates the figures show. mem: one row per training example (``report.mem_table``: train_index, mem,
    mem_lo, mem_hi, optional label_flipped). pairs: the selected pairs (``report.pairs_table``). counts: the run's
    counts; when given, each influence row shows the training example's most influenced test examples over all test
    examples (as the paper does), with intervals by the read's bars, else only among ``pairs``. top_influenced:
    overrides both: a function from training indices to a table like
    ``shown_examples.top_influenced_from_counts`` returns. convergence: ``convergence_curve``'s table, or None (the
    figure is skipped)."""

    mem: pa.Table
    pairs: pa.Table
    counts: Counts | None = None
    top_influenced: Callable[[np.ndarray], pa.Table] | None = None
    convergence: pa.Table | None = None


@dataclass(frozen=True)
class Layout:
    """What the figures pick: the class memorized.png shows (default ``shown_examples.default_class``), how many of
    its examples, and how many test examples beside each training example of influence.png."""

    klass: int | None = None
    max_memorized: int = DEFAULT_MAX_MEMORIZED
    n_test_examples: int = shown_examples.N_TEST_EXAMPLES


@dataclass(frozen=True)
class _Memorization:
    """mem, mem_lo, mem_hi indexed by training index (NaN where the table has no row), and the flipped labels."""

    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    flipped: np.ndarray

    @classmethod
    def of(cls, mem: pa.Table, data: RunData) -> "_Memorization":
        n_train = data.train_labels.size
        index = mem.column("train_index").to_numpy().astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= n_train):
            raise RaymemError(f"the memorization table indexes training examples beyond the {n_train} labels given; "
                              "pass the labels of the same run.")
        columns = []
        for name in ("mem", "mem_lo", "mem_hi"):
            column = np.full(n_train, np.nan)
            column[index] = mem.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            columns.append(column)
        flipped = data.train_labels != data.original_train_labels
        if "label_flipped" in mem.column_names:
            flipped[index] |= mem.column("label_flipped").to_numpy(zero_copy_only=False).astype(bool)
        return cls(*columns, flipped)


def paper_figures(out_dir: str | Path, shown: Shown, data: RunData, layout: Layout = Layout(),
                  bars: Bars = Bars()) -> dict:
    """Write the paper's figures of one run into ``out_dir``; return what was written and skipped.

    ``bars``: the read's intervals, for the test examples taken from ``shown.counts`` (the same intervals
    ``raymem pairs`` reports for those pairs). Everything is checked before anything is written. Returns a dict:
    ``out_dir``; ``written`` (file names, in order); ``skipped`` ({file name: reason}); ``pairs`` (number of
    selected pairs); ``influenced_by`` ({k: test examples influenced by exactly k selected training examples});
    ``class`` (the class memorized.png shows, or None); ``memorized_shown`` (training indices in memorized.png);
    ``influence_rows`` (training index of each row of influence.png).
    """
    out_dir = check_out_dir(out_dir)
    _require_columns(shown.mem, MEM_COLUMNS, "memorization")
    _require_columns(shown.pairs, PAIR_COLUMNS, "pairs")
    if shown.convergence is not None:
        _require_columns(shown.convergence, ("trials", "median_halfwidth", "certified", "split_jaccard"),
                         "convergence")
    data = data.checked()
    memorization = _Memorization.of(shown.mem, data)
    tr, tt, infl = _pair_columns(shown.pairs, data)
    klass, members = _shown_class(layout.klass, memorization, data)
    copies = shown_examples.select_training_rows(tr, infl)
    rows_train = np.concatenate(copies) if copies else np.zeros(0, dtype=np.int64)
    top = _top_influenced(shown, layout.n_test_examples, bars)(rows_train)
    _require_columns(top, ("train_index", "rank", "test_index", "infl", "infl_lo", "infl_hi"), "top influenced")
    examples = _examples_table(copies, top, layout.n_test_examples, memorization, data)

    out_dir.mkdir(exist_ok=True)
    members = members[: int(layout.max_memorized)]
    influenced_by = shown_examples.influenced_by_counts(tt)
    written, skipped = [], {}
    if data.train_images is None:
        skipped[MEMORIZED_PNG] = "the run has no training images (ingested runs carry none); pass its data set's images"
    else:
        _memorized_figure(out_dir / MEMORIZED_PNG, members, klass, memorization, data)
        written.append(MEMORIZED_PNG)
    plots.write_parquet(examples, out_dir / INFLUENCE_EXAMPLES)
    written.append(INFLUENCE_EXAMPLES)
    if data.train_images is None or data.test_images is None:
        skipped[INFLUENCE_PNG] = ("the run has no images (ingested runs carry none); "
                                  "influence-examples.parquet lists the rows")
    elif not copies:
        skipped[INFLUENCE_PNG] = ("no high-influence pairs are selected (infl >= 0.15 and mem >= 0.25), "
                                  "so there is no row to show")
    else:
        _influence_figure(out_dir / INFLUENCE_PNG, examples, len(copies), layout.n_test_examples, memorization, data)
        written.append(INFLUENCE_PNG)
    _histogram_figure(out_dir / INFLUENCE_HIST_PNG, infl, influenced_by)
    written.append(INFLUENCE_HIST_PNG)
    if shown.convergence is None or shown.convergence.num_rows == 0:
        skipped[CONVERGENCE_PNG] = "no trial records were given to replay (the run has no trials yet)"
    else:
        _convergence_figure(out_dir / CONVERGENCE_PNG, shown.convergence)
        written.append(CONVERGENCE_PNG)
    with_images = data.train_images is not None
    return {
        "out_dir": str(out_dir), "written": written, "skipped": skipped, "pairs": int(tr.size),
        "influenced_by": influenced_by, "class": klass if with_images else None,
        "memorized_shown": members.tolist() if with_images else [], "influence_rows": rows_train.tolist(),
    }


def _pair_columns(pairs: pa.Table, data: RunData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train_index, test_index, infl) of the selected pairs, checked against the run's sizes."""
    tr = pairs.column("train_index").to_numpy().astype(np.int64)
    tt = pairs.column("test_index").to_numpy().astype(np.int64)
    infl = pairs.column("infl").to_numpy(zero_copy_only=False).astype(np.float64)
    n_train, n_test = data.train_labels.size, data.test_labels.size
    if tr.size and (tr.min() < 0 or tr.max() >= n_train or tt.min() < 0 or tt.max() >= n_test):
        raise RaymemError(f"the pairs table indexes examples beyond the run's {n_train} training / {n_test} test "
                          "examples; pass the pairs and labels of the same run.")
    return tr, tt, infl


def _shown_class(klass: int | None, memorization: _Memorization, data: RunData) -> tuple[int | None, np.ndarray]:
    """The class memorized.png shows and its members, most memorized first."""
    labels = (data.train_labels, data.original_train_labels, data.test_labels)
    num_classes = int(max(a.max(initial=-1) for a in labels)) + 1
    known_mem = np.where(np.isnan(memorization.value), -np.inf, memorization.value)
    if klass is None:
        if not data.train_labels.size:
            return None, np.zeros(0, dtype=np.int64)
        klass = shown_examples.default_class(known_mem, data.train_labels, num_classes)
    members = shown_examples.class_members(klass, known_mem, data.train_labels, num_classes)  # checks klass
    return int(klass), members


def _top_influenced(shown: Shown, k: int, bars: Bars) -> Callable[[np.ndarray], pa.Table]:
    if shown.top_influenced is not None:
        return shown.top_influenced
    if shown.counts is not None:
        return lambda idx: shown_examples.top_influenced_from_counts(shown.counts, idx, bars, k)
    return lambda idx: shown_examples.top_influenced_from_pairs(shown.pairs, idx, k)


def figures_for_counts(out_dir: str | Path, counts: Counts, data: RunData, bars: Bars, *,
                       records: Iterable | None = None, total: int | None = None,
                       selected: PairSelection = PairSelection(), layout: Layout = Layout()) -> dict:
    """:func:`paper_figures` from a run's counts: builds the mem and pairs tables with ``bars`` (tuned to the run:
    ``RunView.bars``), replays ``records`` (the trial log, e.g. ``trial_log.iter_trials(store)`` with
    ``total=len(trial_ids)``) for the convergence curve, and shows each training example's most influenced test
    examples over its whole row, so every interval shown equals what ``raymem estimates`` / ``pairs`` report."""
    check_out_dir(out_dir)
    mem = report.mem_table(counts, bars)
    if data.original_train_labels is not None:
        train = _labels(data.train_labels, "train_labels")
        flipped = train != _labels(data.original_train_labels, "original_train_labels")[: train.size]
        mem = mem.append_column("label_flipped", pa.array(flipped[counts.rows]))
    pairs = report.pairs_table(counts, bars, selected)
    curve = None
    if records is not None:
        curve = convergence_curve(records, counts.n_train, counts.n_test, bars, total=total)
    return paper_figures(out_dir, Shown(mem, pairs, counts=counts, convergence=curve), data, layout, bars)


def _examples_table(copies, top: pa.Table, k: int, memorization: _Memorization, data: RunData) -> pa.Table:
    """One row per (figure row, shown test example): exactly what influence.png shows."""
    by_train: dict[int, list[dict]] = {}
    for item in top.to_pylist():
        by_train.setdefault(int(item["train_index"]), []).append(item)
    rows = []
    for copy, chosen in enumerate(copies):
        for position, i in enumerate(chosen.tolist()):
            row = copy * len(chosen) + position
            shown = sorted(by_train.get(i, []), key=lambda x: x["rank"])[:k]
            for item in shown:
                j = int(item["test_index"])
                rows.append({
                    "row": row, "copy": copy, "position": position, "train_index": i, "rank": int(item["rank"]),
                    "test_index": j, "infl": item["infl"], "infl_lo": item["infl_lo"], "infl_hi": item["infl_hi"],
                    "mem": float(memorization.value[i]), "mem_lo": float(memorization.lo[i]),
                    "mem_hi": float(memorization.hi[i]),
                    "train_label": int(data.train_labels[i]), "test_label": int(data.test_labels[j]),
                })
    return pa.Table.from_pylist(rows, schema=EXAMPLES_SCHEMA)


def _train_caption(i, memorization: _Memorization, data: RunData) -> tuple[str, str]:
    class_names, original = data.class_names, data.original_train_labels
    label = _name(data.train_labels[i], class_names)
    if memorization.flipped[i]:
        was = f", was {_name(original[i], class_names)}" if original[i] != data.train_labels[i] else ""
        return f"#{i} {label} (flipped{was})", "#c0392b"
    return f"#{i} {label}", "black"


def _memorized_figure(out, shown: np.ndarray, klass: int, memorization: _Memorization, data: RunData) -> None:
    class_size = int(np.sum(data.train_labels == klass))
    above = int(np.sum(memorization.value[data.train_labels == klass] >= formulas.PAPER_MIN_MEM))
    plt = _pyplot()
    count = max(1, shown.size)
    cols = min(8, count)
    nrows = math.ceil(count / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(1.9 * cols, 2.1 * nrows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), shown.tolist()):
        ax.axis("on")
        _show(ax, data.train_images[i])
        caption, color = _train_caption(i, memorization, data)
        mem = _interval(memorization.value[i], memorization.lo[i], memorization.hi[i])
        ax.set_title(f"{caption}\nmem {mem}", fontsize=7, color=color)
    fig.suptitle(
        f"class {_name(klass, data.class_names)}: the {shown.size} most memorized of {class_size} training examples "
        f"({above} with mem >= {formulas.PAPER_MIN_MEM:g})", fontsize=9)
    plots.save_figure(fig, out)


def _influence_figure(out, examples: pa.Table, n_copies: int, k: int, memorization: _Memorization,
                      data: RunData) -> None:
    """One panel per copy, side by side (as the supplement prints one figure per copy): each panel has a
    row per position, a training example then its ``k`` most influenced test examples."""
    plt = _pyplot()
    shown = examples.to_pylist()
    by_row: dict[int, list[dict]] = {}
    for item in shown:
        by_row.setdefault(item["row"], []).append(item)
    per_copy = max(r["position"] for r in shown) + 1 if shown else 1
    width_ratios = []
    for c in range(n_copies):
        width_ratios += [1.0] * (1 + k) + ([0.3] if c < n_copies - 1 else [])
    fig = plt.figure(figsize=(1.75 * len(width_ratios), 2.0 * per_copy + 0.9))
    grid = fig.add_gridspec(per_copy, len(width_ratios), width_ratios=width_ratios)
    for row, items in sorted(by_row.items()):
        first = items[0]
        i, column0 = first["train_index"], first["copy"] * (k + 2)
        ax = fig.add_subplot(grid[first["position"], column0])
        _show(ax, data.train_images[i])
        caption, color = _train_caption(i, memorization, data)
        ax.set_title(f"train {caption}\nmem {_interval(first['mem'], first['mem_lo'], first['mem_hi'])}",
                     fontsize=7, color=color)
        ax.set_ylabel(f"row {row}", fontsize=7)
        for item in items:
            ax = fig.add_subplot(grid[first["position"], column0 + item["rank"]])
            _show(ax, data.test_images[item["test_index"]])
            ax.set_title(f"test #{item['test_index']} {_name(item['test_label'], data.class_names)}\n"
                         f"infl {_interval(item['infl'], item['infl_lo'], item['infl_hi'])}", fontsize=7)
    fig.suptitle(
        f"memorized training examples (left of each panel) and their {k} most influenced test examples\n"
        f"{n_copies} panels of {per_copy} training examples evenly spaced by highest influence (supplement, section D)",
        fontsize=9)
    plots.save_figure(fig, out)


def _histogram_figure(out, infl: np.ndarray, influenced_by: dict) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if infl.size:
        low = min(float(infl.min()), formulas.PAPER_MIN_INFL)
        ax.hist(infl, bins=np.linspace(low, 1.0, 35), color="#4c72b0")
        counts_text = " / ".join(str(v) for v in influenced_by.values())
        ks = " / ".join(str(k) for k in influenced_by)
        ax.set_title(f"{infl.size} selected pairs\ntest examples influenced by {ks} "
                     f"training examples: {counts_text}", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no high-influence pairs selected", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("influence estimate")
    ax.set_ylabel("pairs")
    plots.save_figure(fig, out)


def _convergence_figure(out, curve: pa.Table) -> None:
    plt = _pyplot()
    c = {name: curve.column(name).to_numpy(zero_copy_only=False) for name in curve.column_names}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(c["trials"], c["median_halfwidth"], marker="o", label="median")
    if "max_halfwidth" in c:
        axes[0].plot(c["trials"], c["max_halfwidth"], marker=".", linestyle="--", label="max")
    axes[0].set_ylabel("mem interval half-width")
    axes[0].legend(fontsize=8)
    axes[1].plot(c["trials"], c["certified"], marker="o", label=f"certified (lower end >= {formulas.PAPER_MIN_MEM:g})")
    if "estimated_above" in c:
        axes[1].plot(c["trials"], c["estimated_above"], marker=".", linestyle="--",
                     label=f"estimate >= {formulas.PAPER_MIN_MEM:g}")
    axes[1].set_ylabel("training examples")
    axes[1].legend(fontsize=8)
    jac = c["split_jaccard"].astype(np.float64)
    ok = ~np.isnan(jac)
    axes[2].plot(c["trials"][ok], jac[ok], marker="o", color="#dd8452")
    axes[2].set_ylim(0, 1.05)
    axes[2].set_ylabel(f"split-half Jaccard (mem >= {formulas.PAPER_MIN_MEM:g})")
    for ax in axes:
        ax.set_xlabel("trials")
    fig.suptitle("convergence (replayed from the trial log)", fontsize=10)
    plots.save_figure(fig, out)


# ---- several runs against a reference (Figs. C.2 / C.3) ------------------------------------------

def mean_test_accuracy(counts: Counts) -> float | None:
    """Mean test accuracy of the run's models: sum of T_j over trials x test examples (None without trials)."""
    if counts.trials == 0 or counts.n_test == 0:
        return None
    return float(counts.all.test_hits.sum() / (counts.trials * counts.n_test))


def legend_label(name: str, info: Mapping | None) -> str:
    """The legend entry of a run: ``name: architecture (N pairs, acc X%)`` with what ``info`` holds."""
    info = dict(info or {})
    label = f"{name}: {info['architecture']}" if info.get("architecture") else str(name)
    extra = []
    if info.get("pairs") is not None:
        extra.append(f"{int(info['pairs'])} pairs")
    if info.get("test_accuracy") is not None:
        extra.append(f"acc {float(info['test_accuracy']):.1%}")
    return f"{label} ({', '.join(extra)})" if extra else label


def comparison_figure(
    reference: str,
    curves: Mapping[str, pa.Table],
    out: str | Path,
    *,
    legend: Mapping[str, Mapping] | None = None,
    title: str = "",
) -> Path:
    """Jaccard and mean |difference| against the threshold, mem (top) and infl (bottom), one curve per run.

    reference: the name of the run every other is compared with. curves: {run name: the table
    ``paper.compare.compare_runs(reference_counts, run_counts)`` returns (columns quantity,
    threshold, jaccard, mean_abs_diff)}, in legend order. legend: {run name: {"architecture": str,
    "pairs": int, "test_accuracy": float}} (each optional; the reference's entry goes in the title).
    The file is checked first and written atomically; returns its path.
    """
    out = check_output_path(out, "--figure")
    if not curves:
        raise RaymemError("compare needs at least one run besides the reference to draw; name two or more runs.")
    for name, table in curves.items():
        missing = [c for c in CURVE_COLUMNS if c not in table.column_names]
        if missing:
            raise RaymemError(f"the consistency table of run {name} lacks {', '.join(missing)}; "
                              "pass what compare_runs returns.")
    legend = legend or {}
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for name, table in curves.items():
        rows = table.to_pylist()
        label = legend_label(name, legend.get(name))
        for r, quantity in enumerate(("mem", "infl")):
            sel = sorted((x for x in rows if x["quantity"] == quantity), key=lambda x: x["threshold"])
            th = [x["threshold"] for x in sel]
            diff = [np.nan if x["mean_abs_diff"] is None else x["mean_abs_diff"] for x in sel]
            jac = [np.nan if x["jaccard"] is None else x["jaccard"] for x in sel]
            axes[r][0].plot(th, diff, marker="o", label=label)
            axes[r][1].plot(th, jac, marker="o", label=label)
    for r, quantity in enumerate(("mem", "infl")):
        axes[r][0].set_ylabel(f"{quantity}: mean |difference|")
        axes[r][1].set_ylabel(f"{quantity}: Jaccard")
        axes[r][1].set_ylim(0, 1.05)
        for ax in axes[r]:
            ax.set_xlabel(f"threshold on {quantity}"
                          + (f" (with mem >= {formulas.PAPER_MIN_MEM:g})" if quantity == "infl" else ""))
    axes[0][1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title or f"consistency against {legend_label(reference, legend.get(reference))}", fontsize=10)
    return plots.save_figure(fig, out)
