"""Counts in, answers out: the tables and summaries every reader (CLI, actor, notebook) returns.

Each function turns a ``Counts`` into an Arrow table or a JSON-able dict by calling the formulas
(``formulas``), the error bars (one :class:`~raymem.estimator.bars.Bars` per read) and the selections
(``selection``); nothing here re-derives any of them. The read's choices arrive as checked objects
(``Bars``, ``PairSelection``, ``StatusQuestions``), so each argument is checked once, where it is made.
Tables are ``pyarrow.Table`` so polars, pandas and Parquet read them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from raymem.errors import RaymemError
from raymem.estimator import bounds, formulas, selection, stopping
from raymem.estimator import fdr as fdr_module
from raymem.estimator.bars import Bars
from raymem.estimator.counts import Counts, VectorCounts

DEFAULT_DELTA = bounds.DEFAULT_DELTA
#: The interval method every reader uses unless told otherwise (valid at every look).
DEFAULT_METHOD = bounds.DEFAULT_METHOD
#: Half-width of the memorization interval a user typically wants before stopping.
DEFAULT_TARGET_HALFWIDTH = 0.1
#: Thresholds at which split-half consistency is reported (the paper's mem threshold among them).
SPLIT_HALF_THRESHOLDS = (0.25, 0.5)
#: The false discovery rate at which status counts the pairs that pass (key "pairs_fdr_0.1").
STATUS_FDR = 0.1


@dataclass(frozen=True)
class PairSelection:
    """Which pairs a pairs read returns: the paper's rule (infl >= min_infl, mem >= min_mem), or with ``fdr`` the
    pairs whose influence exceeds min_infl at that false discovery rate (among training examples with
    mem >= min_mem)."""

    min_infl: float = formulas.PAPER_MIN_INFL
    min_mem: float = formulas.PAPER_MIN_MEM
    fdr: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "min_infl", bounds.check_threshold(self.min_infl, "min_infl", "0.15"))
        object.__setattr__(self, "min_mem", bounds.check_threshold(self.min_mem, "min_mem", "0.25"))
        if self.fdr is not None:
            object.__setattr__(self, "fdr", bounds.check_fdr(self.fdr))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StatusQuestions:
    """What a status read answers besides the widths: the target half-width to extrapolate the trials needed to,
    the stopping criteria to judge, the FDR at which to count passing pairs (None: skip it; it needs the pair
    matrix) and the memorization threshold examples are certified above."""

    target_halfwidth: float = DEFAULT_TARGET_HALFWIDTH
    until_halfwidth: float | None = None
    until_jaccard: float | None = None
    pairs_fdr: float | None = STATUS_FDR
    certify_threshold: float = formulas.PAPER_MIN_MEM

    def __post_init__(self):
        object.__setattr__(self, "target_halfwidth", bounds.check_halfwidth(self.target_halfwidth, "target_halfwidth"))
        if self.until_halfwidth is not None:
            object.__setattr__(self, "until_halfwidth", bounds.check_halfwidth(self.until_halfwidth, "until_halfwidth"))
        if self.until_jaccard is not None:
            object.__setattr__(self, "until_jaccard", bounds.check_jaccard(self.until_jaccard, "until_jaccard"))
        if self.pairs_fdr is not None:
            object.__setattr__(self, "pairs_fdr", bounds.check_fdr(self.pairs_fdr, "pairs_fdr"))
        object.__setattr__(self, "certify_threshold",
                           bounds.check_threshold(self.certify_threshold, "certify_threshold", "0.25"))

    def to_dict(self) -> dict:
        return asdict(self)


def mem_intervals(v: VectorCounts, bars: Bars, n_family: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the memorization difference for every row of ``v``, members of a family of ``n_family``."""
    return bars.difference(v.in_hits, v.n_in, v.out_hits, v.n_out, n_family)


def mem_table(counts: Counts, bars: Bars = Bars()) -> pa.Table:
    """One row per training example: mem, its interval (mem_lo, mem_hi), Hoeffding's beside it, its counts."""
    v = counts.all
    lo, hi = mem_intervals(v, bars, counts.n_train)
    h_lo, h_hi = mem_intervals(v, bars.using("hoeffding"), counts.n_train)
    return pa.table({
        "train_index": np.arange(counts.row_start, counts.row_stop, dtype=np.int64),
        "mem": v.memorization(),
        "mem_lo": lo,
        "mem_hi": hi,
        "mem_hoeffding_lo": h_lo,
        "mem_hoeffding_hi": h_hi,
        "p_in": formulas.conditional_rate(v.in_hits, v.n_in),
        "p_out": formulas.conditional_rate(v.out_hits, v.n_out),
        "n_in": v.n_in,
        "n_out": v.n_out,
        "in_hits": v.in_hits,
        "out_hits": v.out_hits,
    })


def infl_intervals(counts: Counts, bars: Bars, h_in, n_in, n_out, test_hits) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the influence of pairs with these counts, members of the family of the estimated pairs: the one
    way every pair interval is made (pairs, influence, the paper's figures)."""
    h_in = np.asarray(h_in)
    return bars.difference(h_in, n_in, np.asarray(test_hits) - h_in, n_out, counts.pair_family)


def high_influence_pairs(counts: Counts, mem: np.ndarray, *, min_infl: float = formulas.PAPER_MIN_INFL,
                         min_mem: float = formulas.PAPER_MIN_MEM) -> dict[str, np.ndarray]:
    """``selection.high_influence_pairs`` over every block of the counts' pair counts (the full matrix, or one
    block per class in class scope), with global train_index / test_index, sorted by train then test index.

    mem: memorization of the counts' rows (``counts.all.memorization()``).
    """
    v = counts.all
    parts = []
    for block in counts.pair_blocks():
        r = block.local_rows
        found = selection.high_influence_pairs(block.h, v.n_in[r], v.n_out[r], v.test_hits[block.cols], mem[r],
                                               min_infl=min_infl, min_mem=min_mem)
        found["train_index"] = block.rows[found["train_index"]]
        found["test_index"] = block.cols[found["test_index"]]
        parts.append(found)
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return selection.high_influence_pairs(np.zeros((0, 0), np.float32), [], [], [], [])
    found = {k: np.concatenate([p[k] for p in parts]) for k in selection.PAIR_FIELDS}
    order = np.lexsort((found["test_index"], found["train_index"]))
    return {k: a[order] for k, a in found.items()}


def _fdr_pvalues(counts: Counts, found: dict, mem: np.ndarray, selected: PairSelection, bars: Bars,
                 n_hypotheses: int | None) -> tuple[np.ndarray, int]:
    """(p-values of the pairs in `found`, m) for the FDR step-up over the pair hypotheses.

    m: the pairs the scope estimates whose training example has mem >= min_mem (full scope: those rows x
    n_test; class scope: each such row x the test examples of its class), unless n_hypotheses is given.
    """
    v = counts.all
    m = int(n_hypotheses) if n_hypotheses is not None else counts.pair_hypotheses(mem >= selected.min_mem)
    p = fdr_module.pair_pvalues(found["h_in"], found["n_in"], found["n_out"], v.test_hits[found["test_index"]],
                                selected.min_infl, method=bars.method, fdr=selected.fdr, n_hypotheses=m,
                                plan=bars.plan, tuning_family=counts.pair_family)
    return p, m


def pairs_table(counts: Counts, bars: Bars = Bars(), selected: PairSelection = PairSelection(), *,
                n_hypotheses: int | None = None, step_up: bool = True) -> pa.Table:
    """High-influence pairs of ``selected`` with an interval for each pair (by ``bars``).

    With ``selected.fdr=Q``: only the pairs whose influence exceeds min_infl at false discovery rate Q (among all
    pairs whose training example has mem >= min_mem; see ``raymem.estimator.fdr``), with a ``q_value`` column.
    n_hypotheses: the number of hypotheses m when this Counts holds only some rows (a shard): pass the
    total over all shards (default: the pairs the scope estimates on this Counts' rows passing the filter).
    step_up: False returns every candidate with its ``p_value`` instead (what each pair shard sends), for one
    :func:`fdr_step_up` over the candidates of all shards: exactly the unsharded answer.

    Class scope: only pairs whose training and test example share a label are estimated, so only those
    are reported (and counted in m); simultaneous bands cover the ``counts.pair_family`` estimated pairs.
    """
    v = counts.all
    mem = v.memorization()
    found = high_influence_pairs(counts, mem, min_infl=selected.min_infl, min_mem=selected.min_mem)
    cols = found["test_index"]
    lo, hi = infl_intervals(counts, bars, found["h_in"], found["n_in"], found["n_out"], v.test_hits[cols])
    columns = {
        "train_index": found["train_index"].astype(np.int64),
        "test_index": cols.astype(np.int64),
        "infl": found["infl"],
        "infl_lo": lo,
        "infl_hi": hi,
        "mem": mem[found["train_index"] - counts.row_start],
        "n_in": found["n_in"].astype(np.int64),
        "n_out": found["n_out"].astype(np.int64),
    }
    if selected.fdr is None:
        return pa.table(columns)
    p_values, m = _fdr_pvalues(counts, found, mem, selected, bars, n_hypotheses)
    candidates = pa.table({**columns, "p_value": p_values.astype(np.float64)})
    return fdr_step_up(candidates, selected.fdr, m, bars.method) if step_up else candidates


def fdr_step_up(candidates: pa.Table, fdr: float, n_hypotheses: int, method: str) -> pa.Table:
    """The pairs of ``candidates`` (a pairs table with ``p_value``) selected by the step-up at rate ``fdr``
    over ``n_hypotheses`` hypotheses, in their order, with ``q_value`` instead of ``p_value``."""
    p = candidates.column("p_value").to_numpy()
    rejected, q = fdr_module.step_up(p, fdr, n_hypotheses, method)
    kept = candidates.filter(pa.array(rejected)).drop_columns(["p_value"])
    return kept.append_column("q_value", pa.array(q[rejected].astype(np.float64)))


def pairs_passing_fdr(counts: Counts, bars: Bars, fdr: float = STATUS_FDR, *,
                      n_hypotheses: int | None = None) -> int:
    """How many pairs pass at false discovery rate `fdr` (what ``pairs --fdr`` would select)."""
    selected = PairSelection(fdr=fdr)
    mem = counts.all.memorization()
    found = high_influence_pairs(counts, mem, min_infl=selected.min_infl, min_mem=selected.min_mem)
    p, m = _fdr_pvalues(counts, found, mem, selected, bars, n_hypotheses)
    rejected, _ = fdr_module.step_up(p, selected.fdr, m, bars.method)
    return int(np.count_nonzero(rejected))


def influence_table(counts: Counts, test_index: int, bars: Bars = Bars(), *, top: int = 10) -> pa.Table:
    """The ``top`` training examples with the largest influence on test example ``test_index``.

    In class scope its candidates are the training examples of its class (the only pairs estimated).
    """
    if not 0 <= test_index < counts.n_test:
        raise RaymemError(f"test_index {test_index} is outside the run's test set 0..{counts.n_test - 1}; "
                          "pick one in range.", parameter="test_index")
    if top < 1:
        raise RaymemError(f"top {top} must be at least 1.", parameter="top")
    v = counts.all
    train_index, column = counts.pair_column(test_index)
    local = train_index - counts.row_start
    found = selection.top_influencers(column, v.n_in[local], v.n_out[local], v.test_hits[test_index], top)
    found["train_index"] = train_index[found["train_index"]]
    rows = found["train_index"] - counts.row_start
    lo, hi = infl_intervals(counts, bars, found["h_in"], v.n_in[rows], v.n_out[rows], v.test_hits[test_index])
    return pa.table({
        "rank": np.arange(1, len(rows) + 1, dtype=np.int64),
        "train_index": found["train_index"].astype(np.int64),
        "test_index": np.full(len(rows), test_index, dtype=np.int64),
        "infl": found["infl"],
        "infl_lo": lo,
        "infl_hi": hi,
        "mem": v.memorization()[rows],
    })


def influenced_table(counts: Counts, train_index: int, bars: Bars = Bars(), *, top: int = 10) -> pa.Table:
    """The ``top`` test examples that training example ``train_index`` influences most (the other way round from
    :func:`influence_table`, with the same formula and intervals): ties by test index.

    In class scope its candidates are the test examples of its class (the only pairs estimated).
    """
    if not counts.row_start <= train_index < counts.row_stop:
        raise RaymemError(f"train_index {train_index} is outside the run's training set "
                          f"{counts.row_start}..{counts.row_stop - 1}; pick one in range.", parameter="train_index")
    if top < 1:
        raise RaymemError(f"top {top} must be at least 1.", parameter="top")
    v = counts.all
    r = train_index - counts.row_start
    test_index, row = counts.pair_row(train_index)
    n_in, n_out = v.n_in[r:r + 1], v.n_out[r:r + 1]
    infl = formulas.influence(np.asarray(row)[None, :], n_in, v.test_hits[test_index], n_out)[0]
    chosen = np.lexsort((test_index, -infl))[:top]
    h_in = np.asarray(row)[chosen]
    lo, hi = infl_intervals(counts, bars, h_in, np.repeat(n_in, chosen.size), np.repeat(n_out, chosen.size),
                            v.test_hits[test_index[chosen]])
    return pa.table({
        "rank": np.arange(1, chosen.size + 1, dtype=np.int64),
        "train_index": np.full(chosen.size, train_index, dtype=np.int64),
        "test_index": test_index[chosen].astype(np.int64),
        "infl": infl[chosen],
        "infl_lo": lo,
        "infl_hi": hi,
        "mem": np.repeat(v.memorization()[r], chosen.size),
    })


def canary_recall(mem: np.ndarray, flipped: np.ndarray) -> dict:
    """Share of flipped-label examples among the top-|flipped| training examples by memorization."""
    count = int(flipped.sum())
    if count == 0:
        return {"count": 0, "recall": None, "chance": None}
    top = np.argsort(-mem, kind="stable")[:count]
    return {
        "count": count,
        "recall": float(flipped[top].mean()),
        "chance": float(count / len(mem)),
    }


def convergence_summary(counts: Counts, bars: Bars = Bars(), questions: StatusQuestions = StatusQuestions(), *,
                        subset_size: int, n_hypotheses: int | None = None) -> dict:
    """Should the run stop? Error-bar widths, certified examples, split-half consistency, more trials needed,
    the stopping criteria asked (each met or not, its value and target) and, when the counts hold the pair
    matrix, how many pairs pass at false discovery rate ``questions.pairs_fdr`` (key ``pairs_fdr_<Q>``).

    until_halfwidth is judged on the anytime bars whatever the method shown (those stay valid when a run stops
    because of what they show).
    """
    v = counts.all
    lo, hi = mem_intervals(v, bars, counts.n_train)
    half = (hi - lo) / 2
    median_half = float(np.median(half)) if half.size else math.nan
    more = None
    if counts.trials:
        more = stopping.more_trials_needed(v, questions.target_halfwidth, bars, n_family=counts.n_train,
                                           current_median=median_half)
    threshold = questions.certify_threshold
    summary = {
        "trials_done": counts.trials,
        "n_train": counts.n_train,
        "n_test": counts.n_test,
        "subset_size": subset_size,
        "method": bars.method,
        "planned_trials": bars.plan.trials,
        "delta": bars.delta,
        "simultaneous": bars.simultaneous,
        "mem": {
            "median_halfwidth": median_half,
            "max_halfwidth": float(np.max(half)) if half.size else math.nan,
            "certify_threshold": threshold,
            "estimated_above": int(np.sum(v.memorization() >= threshold)),
            "certified": int(np.sum(lo >= threshold)),
            "target_halfwidth": questions.target_halfwidth,
            "more_trials_needed": more,
        },
        "lemma21_rms_bound": bounds.lemma21_rms_bound(counts.trials, subset_size, counts.n_train),
        "split_half": {"mem": split_half(counts)},
    }
    criteria = _stopping_criteria(counts, bars, questions, median_half)
    if criteria:
        summary["stopping"] = {**criteria, "all_met": stopping.all_met(criteria)}
    fdr = questions.pairs_fdr
    if fdr is not None and counts.tracks_pairs and counts.trials:
        summary[f"pairs_fdr_{fdr:g}"] = pairs_passing_fdr(counts, bars, fdr, n_hypotheses=n_hypotheses)
    return summary


def split_half(counts: Counts) -> dict:
    """Jaccard and mean |difference| of the estimates from the even vs. the odd trials, per threshold."""
    split = {}
    even_mem, odd_mem = counts.even.memorization(), counts.odd.memorization()
    for theta in SPLIT_HALF_THRESHOLDS:
        c = selection.jaccard_and_mean_difference(even_mem, odd_mem, theta)
        split[f"{theta:g}"] = {k: (None if isinstance(x, float) and math.isnan(x) else x) for k, x in c.items()}
    return split


def _stopping_criteria(counts: Counts, bars: Bars, questions: StatusQuestions, median_half: float) -> dict:
    criteria = {}
    if questions.until_halfwidth is not None:
        if bars.method in bounds.ANYTIME_METHODS:
            anytime_median = median_half
        elif counts.n_train:
            a_lo, a_hi = mem_intervals(counts.all, bars.using("anytime"), counts.n_train)
            anytime_median = float(np.median((a_hi - a_lo) / 2))
        else:
            anytime_median = math.nan
        criteria["until_halfwidth"] = stopping.halfwidth_criterion(anytime_median, questions.until_halfwidth)
    if questions.until_jaccard is not None:
        criteria["until_jaccard"] = stopping.jaccard_criterion(counts, questions.until_jaccard)
    return criteria
