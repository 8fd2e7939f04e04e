"""Counts in, answers out: the tables and summaries every reader (CLI, actor, notebook) returns.

Each function turns a ``Counts`` into an Arrow table or a JSON-able dict by calling the formulas
(``formulas``), the error bars (``bounds``) and the selections (``selection``); nothing here
re-derives any of them. Tables are ``pyarrow.Table`` so polars, pandas and Parquet read them.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from raymem.errors import RaymemError
from raymem.estimator import bounds, formulas, selection, stopping
from raymem.estimator import fdr as fdr_module
from raymem.estimator.counts import Counts, VectorCounts
from raymem.estimator.per_distinct import per_distinct
from raymem.estimator.joint_bounds import Plan

DEFAULT_DELTA = 0.05
#: The interval method every reader uses unless told otherwise (valid at every look).
DEFAULT_METHOD = bounds.DEFAULT_METHOD
#: Half-width of the memorization interval a user typically wants before stopping.
DEFAULT_TARGET_HALFWIDTH = 0.1
#: Thresholds at which split-half consistency is reported (the paper's mem threshold among them).
SPLIT_HALF_THRESHOLDS = (0.25, 0.5)
#: The false discovery rate at which status counts the pairs that pass (key "pairs_fdr_0.1").
STATUS_FDR = 0.1


def plan_of(planned_trials=None, subset_ratio=None, delta: float = DEFAULT_DELTA) -> Plan:
    """The plan the anytime bars are tuned to: planned trials and subset ratio (defaults: the paper's 2000
    trials at ratio 0.7) and the nominal delta (also for simultaneous bands, which then nest around the others)."""
    return Plan.of(planned_trials, subset_ratio, math.log(1.0 / bounds.check_delta(delta)))


def difference_interval_per_distinct_counts(hits_in, n_in, hits_out, n_out, delta: float,
                                            method: str = DEFAULT_METHOD, plan: Plan | None = None):
    """Return bounds.difference_interval for every entry, evaluating it once per distinct tuple of counts."""
    bounds.check_delta(delta)
    bounds.check_method(method)
    return per_distinct(lambda a, b, c, d: bounds.difference_interval(a, b, c, d, delta, method=method, plan=plan),
                        hits_in, n_in, hits_out, n_out)


def mem_intervals(v: VectorCounts, delta: float, n_family: int, simultaneous: bool, method: str = DEFAULT_METHOD,
                  plan: Plan | None = None):
    """Return (lo, hi) of the memorization difference for every row of ``v``."""
    d = bounds.family_delta(delta, n_family, simultaneous)
    return difference_interval_per_distinct_counts(v.in_hits, v.n_in, v.out_hits, v.n_out, d, method=method, plan=plan)


def mem_table(counts: Counts, *, delta: float = DEFAULT_DELTA, simultaneous: bool = False, method: str = DEFAULT_METHOD,
              planned_trials: int | None = None, subset_ratio: float | None = None) -> pa.Table:
    """One row per training example: mem, its interval by `method` (mem_lo, mem_hi), Hoeffding's beside it, its counts."""
    bounds.check_method(method)
    plan = plan_of(planned_trials, subset_ratio, delta)
    v = counts.all
    lo, hi = mem_intervals(v, delta, counts.n_train, simultaneous, method=method, plan=plan)
    h_lo, h_hi = mem_intervals(v, delta, counts.n_train, simultaneous, method="hoeffding")
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


def _infl_intervals(h_in, n_in, n_out, test_hits, delta, method, plan):
    return difference_interval_per_distinct_counts(h_in, n_in, test_hits - h_in, n_out, delta, method=method, plan=plan)


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


def _fdr_selection(counts: Counts, found: dict, mem: np.ndarray, *, min_infl: float, min_mem: float, fdr: float,
                   method: str, plan: Plan, n_hypotheses: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(kept mask over `found`, q-values of the kept ones, m) of the FDR step-up over the pair hypotheses."""
    p, m = _fdr_pvalues(counts, found, mem, min_infl=min_infl, min_mem=min_mem, fdr=fdr, method=method, plan=plan,
                        n_hypotheses=n_hypotheses)
    rejected, q = fdr_module.step_up(p, fdr, m, method)
    return rejected, q[rejected], m


def _fdr_pvalues(counts: Counts, found: dict, mem: np.ndarray, *, min_infl: float, min_mem: float, fdr: float,
                 method: str, plan: Plan, n_hypotheses: int | None) -> tuple[np.ndarray, int]:
    """(p-values of the pairs in `found`, m) for the FDR step-up over the pair hypotheses.

    m: the pairs the scope estimates whose training example has mem >= min_mem (full scope: those rows x
    n_test; class scope: each such row x the test examples of its class), unless n_hypotheses is given.
    """
    v = counts.all
    m = int(n_hypotheses) if n_hypotheses is not None else counts.pair_hypotheses(mem >= min_mem)
    p = fdr_module.pair_pvalues(found["h_in"], found["n_in"], found["n_out"], v.test_hits[found["test_index"]], min_infl,
                                method=method, fdr=fdr, n_hypotheses=m, plan=plan,
                                tuning_family=counts.pair_family)
    return p, m


def pairs_table(
    counts: Counts,
    *,
    min_infl: float = formulas.PAPER_MIN_INFL,
    min_mem: float = formulas.PAPER_MIN_MEM,
    delta: float = DEFAULT_DELTA,
    simultaneous: bool = False,
    method: str = DEFAULT_METHOD,
    planned_trials: int | None = None,
    subset_ratio: float | None = None,
    fdr: float | None = None,
    n_hypotheses: int | None = None,
    step_up: bool = True,
) -> pa.Table:
    """High-influence pairs (infl >= min_infl and mem >= min_mem) with an interval for each pair (by `method`).

    With ``fdr=Q``: only the pairs whose influence exceeds min_infl at false discovery rate Q (among all pairs
    whose training example has mem >= min_mem; see ``raymem.estimator.fdr``), with a ``q_value`` column.
    n_hypotheses: the number of hypotheses m when this Counts holds only some rows (a shard): pass the
    total over all shards (default: the pairs the scope estimates on this Counts' rows passing the filter).
    step_up: False returns every candidate with its ``p_value`` instead (what each pair shard sends), for one
    :func:`fdr_step_up` over the candidates of all shards: exactly the unsharded answer.

    Class scope: only pairs whose training and test example share a label are estimated, so only those
    are reported (and counted in m); simultaneous bands cover the ``counts.pair_family`` estimated pairs.
    """
    min_infl = bounds.check_threshold(min_infl, "--min-infl", "0.15")
    min_mem = bounds.check_threshold(min_mem, "--min-mem", "0.25")
    bounds.check_delta(delta)
    bounds.check_method(method)
    if fdr is not None:
        fdr = bounds.check_fdr(fdr)
    plan = plan_of(planned_trials, subset_ratio, delta)
    v = counts.all
    mem = v.memorization()
    found = high_influence_pairs(counts, mem, min_infl=min_infl, min_mem=min_mem)
    p_values = None
    if fdr is not None:
        p_values, m = _fdr_pvalues(counts, found, mem, min_infl=min_infl, min_mem=min_mem, fdr=fdr, method=method,
                                   plan=plan, n_hypotheses=n_hypotheses)
    rows = found["train_index"] - counts.row_start
    cols = found["test_index"]
    d = bounds.family_delta(delta, counts.pair_family, simultaneous)
    lo, hi = _infl_intervals(found["h_in"], found["n_in"], found["n_out"], v.test_hits[cols], d, method, plan)
    columns = {
        "train_index": found["train_index"].astype(np.int64),
        "test_index": cols.astype(np.int64),
        "infl": found["infl"],
        "infl_lo": lo,
        "infl_hi": hi,
        "mem": mem[rows],
        "n_in": found["n_in"].astype(np.int64),
        "n_out": found["n_out"].astype(np.int64),
    }
    if p_values is None:
        return pa.table(columns)
    candidates = pa.table({**columns, "p_value": p_values.astype(np.float64)})
    return fdr_step_up(candidates, fdr, m, method) if step_up else candidates


def fdr_step_up(candidates: pa.Table, fdr: float, n_hypotheses: int, method: str) -> pa.Table:
    """The pairs of ``candidates`` (a pairs table with ``p_value``) selected by the step-up at rate ``fdr``
    over ``n_hypotheses`` hypotheses, in their order, with ``q_value`` instead of ``p_value``."""
    p = candidates.column("p_value").to_numpy()
    rejected, q = fdr_module.step_up(p, fdr, n_hypotheses, method)
    kept = candidates.filter(pa.array(rejected)).drop_columns(["p_value"])
    return kept.append_column("q_value", pa.array(q[rejected].astype(np.float64)))


def pairs_passing_fdr(counts: Counts, fdr: float = STATUS_FDR, *, min_infl: float = formulas.PAPER_MIN_INFL,
                      min_mem: float = formulas.PAPER_MIN_MEM, method: str = DEFAULT_METHOD,
                      plan: Plan | None = None, n_hypotheses: int | None = None) -> int:
    """How many pairs pass at false discovery rate `fdr` (what ``pairs --fdr`` would select)."""
    fdr = bounds.check_fdr(fdr)
    v = counts.all
    mem = v.memorization()
    found = high_influence_pairs(counts, mem, min_infl=min_infl, min_mem=min_mem)
    kept, _, _ = _fdr_selection(counts, found, mem, min_infl=min_infl, min_mem=min_mem, fdr=fdr, method=method,
                                plan=plan or Plan(), n_hypotheses=n_hypotheses)
    return int(np.count_nonzero(kept))


def influence_table(
    counts: Counts, test_index: int, *, top: int = 10, delta: float = DEFAULT_DELTA, simultaneous: bool = False,
    method: str = DEFAULT_METHOD, planned_trials: int | None = None, subset_ratio: float | None = None,
) -> pa.Table:
    """The ``top`` training examples with the largest influence on test example ``test_index``.

    In class scope its candidates are the training examples of its class (the only pairs estimated).
    """
    if not 0 <= test_index < counts.n_test:
        raise RaymemError(f"--test-index {test_index} is outside the run's test set 0..{counts.n_test - 1}; pick one in range.")
    if top < 1:
        raise RaymemError(f"--top {top} must be at least 1.")
    bounds.check_method(method)
    plan = plan_of(planned_trials, subset_ratio, delta)
    v = counts.all
    train_index, column = counts.pair_column(test_index)
    local = train_index - counts.row_start
    found = selection.top_influencers(column, v.n_in[local], v.n_out[local], v.test_hits[test_index], top)
    found["train_index"] = train_index[found["train_index"]]
    rows = found["train_index"] - counts.row_start
    d = bounds.family_delta(delta, counts.pair_family, simultaneous)
    lo, hi = _infl_intervals(found["h_in"], v.n_in[rows], v.n_out[rows], v.test_hits[test_index], d, method, plan)
    return pa.table({
        "rank": np.arange(1, len(rows) + 1, dtype=np.int64),
        "train_index": found["train_index"].astype(np.int64),
        "test_index": np.full(len(rows), test_index, dtype=np.int64),
        "infl": found["infl"],
        "infl_lo": lo,
        "infl_hi": hi,
        "mem": v.memorization()[rows],
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


def convergence_summary(
    counts: Counts,
    *,
    subset_size: int,
    delta: float = DEFAULT_DELTA,
    simultaneous: bool = False,
    certify_threshold: float = formulas.PAPER_MIN_MEM,
    target_halfwidth: float = DEFAULT_TARGET_HALFWIDTH,
    method: str = DEFAULT_METHOD,
    planned_trials: int | None = None,
    until_halfwidth: float | None = None,
    until_jaccard: float | None = None,
    pairs_fdr: float | None = STATUS_FDR,
    n_hypotheses: int | None = None,
) -> dict:
    """Should the run stop? Error-bar widths, certified examples, split-half consistency, more trials needed,
    the stopping criteria given (each met or not, its value and target) and, when the counts hold the pair
    matrix, how many pairs pass at false discovery rate ``pairs_fdr`` (key ``pairs_fdr_<Q>``).

    The bars are the method's (default "anytime"); planned_trials tunes the anytime mixture (default: the
    paper's 2000); until_halfwidth is judged on the anytime bars whatever the method shown.
    """
    bounds.check_delta(delta)
    bounds.check_method(method)
    target_halfwidth = bounds.check_target_halfwidth(target_halfwidth)
    certify_threshold = bounds.check_threshold(certify_threshold, "--certify-threshold", "0.25")
    if until_halfwidth is not None:
        until_halfwidth = bounds.check_until_halfwidth(until_halfwidth)
    if until_jaccard is not None:
        until_jaccard = bounds.check_until_jaccard(until_jaccard)
    if pairs_fdr is not None:
        pairs_fdr = bounds.check_fdr(pairs_fdr)
    ratio = subset_size / counts.n_train if 0 < subset_size < counts.n_train else None
    plan = plan_of(planned_trials, ratio, delta)
    v = counts.all
    lo, hi = mem_intervals(v, delta, counts.n_train, simultaneous, method=method, plan=plan)
    half = (hi - lo) / 2
    mem = v.memorization()
    median_half = float(np.median(half)) if half.size else math.nan
    split = {}
    even_mem, odd_mem = counts.even.memorization(), counts.odd.memorization()
    for theta in SPLIT_HALF_THRESHOLDS:
        c = selection.jaccard_and_mean_difference(even_mem, odd_mem, theta)
        split[f"{theta:g}"] = {k: (None if isinstance(x, float) and math.isnan(x) else x) for k, x in c.items()}
    more = None
    if counts.trials:
        more = stopping.more_trials_needed(v, target_halfwidth, delta=delta, method=method, n_family=counts.n_train,
                                           simultaneous=simultaneous, plan=plan, current_median=median_half)
    criteria = {}
    if until_halfwidth is not None:
        if method in bounds.ANYTIME_METHODS:
            anytime_median = median_half
        elif half.size:
            a_lo, a_hi = mem_intervals(v, delta, counts.n_train, simultaneous, method="anytime", plan=plan)
            anytime_median = float(np.median((a_hi - a_lo) / 2))
        else:
            anytime_median = math.nan
        criteria["until_halfwidth"] = stopping.halfwidth_criterion(anytime_median, until_halfwidth)
    if until_jaccard is not None:
        criteria["until_jaccard"] = stopping.jaccard_criterion(counts, until_jaccard)
    summary = {
        "trials_done": counts.trials,
        "n_train": counts.n_train,
        "n_test": counts.n_test,
        "subset_size": subset_size,
        "method": method,
        "planned_trials": plan.trials,
        "delta": delta,
        "simultaneous": simultaneous,
        "mem": {
            "median_halfwidth": median_half,
            "max_halfwidth": float(np.max(half)) if half.size else math.nan,
            "certify_threshold": certify_threshold,
            "estimated_above": int(np.sum(mem >= certify_threshold)),
            "certified": int(np.sum(lo >= certify_threshold)),
            "target_halfwidth": target_halfwidth,
            "more_trials_needed": more,
        },
        "lemma21_rms_bound": bounds.lemma21_rms_bound(counts.trials, subset_size, counts.n_train),
        "split_half": {"mem": split},
    }
    if criteria:
        summary["stopping"] = {**criteria, "all_met": stopping.all_met(criteria)}
    if pairs_fdr is not None and counts.tracks_pairs and counts.trials:
        summary[f"pairs_fdr_{pairs_fdr:g}"] = pairs_passing_fdr(counts, pairs_fdr, method=method, plan=plan,
                                                                n_hypotheses=n_hypotheses)
    return summary
