"""Comparing two estimates: two runs (supplement Eq. 4 and Fig. C.2), or a run against released pairs.

Released pairs (the paper's ``*_high_infl_pairs_*.npz``: arrays ``tr_idx, tt_idx, infl, mem``) hold only
the selected pairs, so against them raymem reports the Jaccard similarity of the two pair sets and how
far the run's own estimates lie from the released values on the released pairs. The same layout is what
``export_pairs_npz`` writes, so a run's pairs can be handed to anyone using the paper's files.

Influence scope: a class-scope run estimates only same-label pairs, so influence is compared on the pairs
both sides estimate (two full-scope runs: every pair; otherwise the same-label pairs); released pairs
the run does not estimate are left out of the comparison and counted (``released_outside_scope``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from raymem.errors import RaymemError
from raymem.estimator import formulas, report, selection
from raymem.estimator.counts import Counts
from raymem.store.safe_files import load_npz, require_integer_indices, write_atomic

PAIRS_NPZ_KEYS = ("tr_idx", "tt_idx", "infl", "mem")
#: Thresholds of the paper's consistency plots (Fig. C.2).
MEM_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
INFL_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def _mem(counts: Counts) -> np.ndarray:
    return counts.all.memorization()


def _infl_cells(counts: Counts, rows, cols) -> tuple[np.ndarray, np.ndarray]:
    """(infl, estimated) of the pairs (rows, cols) (global indices, broadcast together)."""
    v = counts.all
    local = np.asarray(rows, dtype=np.int64) - counts.row_start
    h, estimated = counts.pair_cells(rows, cols)
    return formulas.pair_influence(h, v.n_in[local], v.test_hits[np.asarray(cols)], v.n_out[local]), estimated


def _common_influence(a: Counts, b: Counts, eligible: np.ndarray):
    """Influence of both runs on the pairs both estimate among the rows ``eligible`` (ascending):
    (infl_a, infl_b, row of each value), flat (class scope on either side) or (rows, n_test) matrices
    (both full). Blocks of the class-scope side bound the memory to its same-label pairs."""
    if a.influence_scope == "full" and b.influence_scope == "full":
        cols = np.arange(a.n_test)[None, :]
        return _infl_cells(a, eligible[:, None], cols)[0], _infl_cells(b, eligible[:, None], cols)[0], eligible
    walk = a if a.influence_scope == "class" else b
    keep = np.zeros(a.n_train, dtype=bool)
    keep[eligible] = True
    parts_a, parts_b, parts_row = [], [], []
    for block in walk.pair_blocks():
        rows = block.rows[keep[block.rows]]
        if rows.size == 0 or block.cols.size == 0:
            continue
        grid_rows, grid_cols = rows[:, None], block.cols[None, :]
        infl_a, est_a = _infl_cells(a, grid_rows, grid_cols)
        infl_b, est_b = _infl_cells(b, grid_rows, grid_cols)
        both = est_a & est_b
        parts_a.append(infl_a[both])
        parts_b.append(infl_b[both])
        parts_row.append(np.broadcast_to(grid_rows, both.shape)[both])
    if not parts_a:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(parts_a), np.concatenate(parts_b), np.concatenate(parts_row)


def compare_runs(a: Counts, b: Counts, *, min_mem: float = formulas.PAPER_MIN_MEM,
                 mem_thresholds=MEM_THRESHOLDS, infl_thresholds=INFL_THRESHOLDS) -> pa.Table:
    """Consistency curves of two runs over the same examples: one row per (quantity, threshold).

    Influence sets carry the paper's extra constraint mem >= min_mem; only rows eligible in either run
    can enter a set, so only those rows' influence is formed. Influence is compared on the pairs both
    runs estimate: all of them for two full-scope runs, the same-label pairs when either has class scope.
    """
    if (a.n_train, a.n_test) != (b.n_train, b.n_test):
        raise RaymemError(
            f"the runs have {a.n_train}x{a.n_test} and {b.n_train}x{b.n_test} examples; "
            "compare runs on the same data set."
        )
    mem_a, mem_b = _mem(a), _mem(b)
    rows = []
    for c in selection.consistency_curve(mem_a, mem_b, mem_thresholds):
        rows.append({"quantity": "mem", **c})
    eligible = np.flatnonzero((mem_a >= min_mem) | (mem_b >= min_mem))
    infl_a, infl_b, row = _common_influence(a, b, eligible)
    for c in selection.consistency_curve(infl_a, infl_b, infl_thresholds,
                                         eligible_a=mem_a[row] >= min_mem, eligible_b=mem_b[row] >= min_mem):
        rows.append({"quantity": "infl", **c})
    return pa.Table.from_pylist(rows)


def load_pairs_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read released pairs (``tr_idx, tt_idx, infl, mem``) without pickle; RaymemError naming what is wrong.

    The indices must be integers (float indices are refused, never truncated).
    """
    data = load_npz(path, "pairs file", PAIRS_NPZ_KEYS)
    for key in ("tr_idx", "tt_idx"):
        data[key] = require_integer_indices(data[key], f"array {key} of pairs file {path}")
    n = len(data["tr_idx"])
    if any(v.shape != (n,) for v in data.values()):
        raise RaymemError(f"pairs file {path} has arrays of different lengths; each must hold one value per pair.")
    return data


def compare_with_released(counts: Counts, released: dict[str, np.ndarray], *, min_infl: float = formulas.PAPER_MIN_INFL,
                          min_mem: float = formulas.PAPER_MIN_MEM, source: str = "pairs file") -> dict:
    """Jaccard of the run's pair set with the released one, and the run's estimates on the released pairs.

    Released pairs the run's scope does not estimate (cross-class pairs against a class-scope run) are left
    out of every number and counted in ``released_outside_scope`` (always 0 for a full-scope run).
    """
    tr, tt = released["tr_idx"], released["tt_idx"]
    if tr.size and (tr.min() < 0 or tr.max() >= counts.n_train or tt.min() < 0 or tt.max() >= counts.n_test):
        raise RaymemError(
            f"{source} indexes examples beyond this run's {counts.n_train} training / {counts.n_test} test examples; "
            "compare it with a run on the same data set in its original order."
        )
    if (counts.row_start, counts.row_stop) != (0, counts.n_train):
        raise RaymemError("comparing with released pairs needs the counts of every training row; "
                          "gather the run's shards first.")
    mem = _mem(counts)
    found = report.high_influence_pairs(counts, mem, min_infl=min_infl, min_mem=min_mem)
    our_infl, estimated = _infl_cells(counts, tr, tt)
    outside = int(np.count_nonzero(~estimated))
    tr, tt, our_infl = tr[estimated], tt[estimated], our_infl[estimated]
    released = {k: np.asarray(a)[estimated] for k, a in released.items() if k in ("infl", "mem")}
    ours = set(zip(found["train_index"].tolist(), found["test_index"].tolist()))
    theirs = set(zip(tr.tolist(), tt.tolist()))
    union = ours | theirs
    return {
        "pairs_run": len(ours),
        "pairs_released": len(theirs),
        "pairs_common": len(ours & theirs),
        "jaccard": len(ours & theirs) / len(union) if union else None,
        "infl_mean_abs_diff_on_released": float(np.mean(np.abs(our_infl - released["infl"]))) if tr.size else None,
        "mem_mean_abs_diff_on_released": float(np.mean(np.abs(mem[tr] - released["mem"]))) if tr.size else None,
        "released_outside_scope": outside,
    }


def export_pairs_npz(pairs: pa.Table, out: str | Path) -> str:
    """Write a pairs table in the paper's released layout (``tr_idx, tt_idx, infl, mem``), atomically."""
    arrays = dict(tr_idx=pairs.column("train_index").to_numpy().astype(np.int64),
                  tt_idx=pairs.column("test_index").to_numpy().astype(np.int64),
                  infl=pairs.column("infl").to_numpy().astype(np.float64),
                  mem=pairs.column("mem").to_numpy().astype(np.float64))
    return write_atomic(out, lambda buffer: np.savez(buffer, **arrays), "--npz")
