"""Comparing two estimates: two runs (supplement Eq. 4 and Fig. C.2), or a run against released pairs.

Released pairs (the paper's ``*_high_infl_pairs_*.npz``: arrays ``tr_idx, tt_idx, infl, mem``) hold only
the selected pairs, so against them raymem reports the Jaccard similarity of the two pair sets and how
far the run's own estimates lie from the released values on the released pairs. The same layout is what
``export_pairs_npz`` writes, so a run's pairs can be handed to anyone using the paper's files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from raymem.errors import RaymemError
from raymem.estimator import formulas, selection
from raymem.estimator.counts import Counts
from raymem.estimator.files import load_npz, require_integer_indices, write_atomic

PAIRS_NPZ_KEYS = ("tr_idx", "tt_idx", "infl", "mem")
#: Thresholds of the paper's consistency plots (Fig. C.2).
MEM_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
INFL_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)


def _mem(counts: Counts) -> np.ndarray:
    return counts.all.memorization()


def _infl_rows(counts: Counts, rows: np.ndarray) -> np.ndarray:
    v = counts.all
    return formulas.influence(counts.pairs_ready()[rows], v.n_in[rows], v.test_hits, v.n_out[rows])


def compare_runs(a: Counts, b: Counts, *, min_mem: float = formulas.PAPER_MIN_MEM,
                 mem_thresholds=MEM_THRESHOLDS, infl_thresholds=INFL_THRESHOLDS) -> pa.Table:
    """Consistency curves of two runs over the same examples: one row per (quantity, threshold).

    Influence sets carry the paper's extra constraint mem >= min_mem; only rows eligible in either run
    can enter a set, so only those rows' influence is formed.
    """
    if (a.n_train, a.n_test) != (b.n_train, b.n_test):
        raise RaymemError(
            f"the runs have {a.n_train}x{a.n_test} and {b.n_train}x{b.n_test} examples; compare runs on the same data set."
        )
    mem_a, mem_b = _mem(a), _mem(b)
    rows = []
    for c in selection.consistency_curve(mem_a, mem_b, mem_thresholds):
        rows.append({"quantity": "mem", **c})
    eligible = np.flatnonzero((mem_a >= min_mem) | (mem_b >= min_mem))
    infl_a, infl_b = _infl_rows(a, eligible), _infl_rows(b, eligible)
    for c in selection.consistency_curve(infl_a, infl_b, infl_thresholds,
                                         eligible_a=mem_a[eligible] >= min_mem, eligible_b=mem_b[eligible] >= min_mem):
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
    """Jaccard of the run's pair set with the released one, and the run's estimates on the released pairs."""
    tr, tt = released["tr_idx"], released["tt_idx"]
    if tr.size and (tr.min() < 0 or tr.max() >= counts.n_train or tt.min() < 0 or tt.max() >= counts.n_test):
        raise RaymemError(
            f"{source} indexes examples beyond this run's {counts.n_train} training / {counts.n_test} test examples; "
            "compare it with a run on the same data set in its original order."
        )
    v = counts.all
    mem = _mem(counts)
    found = selection.high_influence_pairs(counts.pairs_ready(), v.n_in, v.n_out, v.test_hits, mem,
                                           min_infl=min_infl, min_mem=min_mem)
    ours = set(zip(found["train_index"].tolist(), found["test_index"].tolist()))
    theirs = set(zip(tr.tolist(), tt.tolist()))
    union = ours | theirs
    h_in = counts.pairs_ready()[tr, tt]
    our_infl = formulas.pair_influence(h_in, v.n_in[tr], v.test_hits[tt], v.n_out[tr])
    return {
        "pairs_run": len(ours),
        "pairs_released": len(theirs),
        "pairs_common": len(ours & theirs),
        "jaccard": len(ours & theirs) / len(union) if union else None,
        "infl_mean_abs_diff_on_released": float(np.mean(np.abs(our_infl - released["infl"]))) if tr.size else None,
        "mem_mean_abs_diff_on_released": float(np.mean(np.abs(mem[tr] - released["mem"]))) if tr.size else None,
    }


def export_pairs_npz(pairs: pa.Table, out: str | Path) -> str:
    """Write a pairs table in the paper's released layout (``tr_idx, tt_idx, infl, mem``), atomically."""
    arrays = dict(tr_idx=pairs.column("train_index").to_numpy().astype(np.int64),
                  tt_idx=pairs.column("test_index").to_numpy().astype(np.int64),
                  infl=pairs.column("infl").to_numpy().astype(np.float64),
                  mem=pairs.column("mem").to_numpy().astype(np.float64))
    return write_atomic(out, lambda buffer: np.savez(buffer, **arrays), "--npz")
