"""Selecting pairs and examples from the estimates, and comparing two sets of estimates.

- high_influence_pairs: the paper's high-influence pairs (infl >= 0.15 and mem >= 0.25, section 2),
  read from the count matrix H_in without ever forming the full influence matrix.
- top_influencers: the k training examples with the largest influence on one test example.
- jaccard_and_mean_difference / consistency_curve: supplement Eq. 4 and the Jaccard similarity
  below it (Fig. C.2), for memorization vectors or influence matrices.

The point estimates always come from raymem.estimator.formulas.
"""

from __future__ import annotations

import numpy as np

from raymem.errors import RaymemError
from raymem.estimator.formulas import PAPER_MIN_INFL, PAPER_MIN_MEM, influence, pair_influence

PAIR_FIELDS = ("train_index", "test_index", "infl", "h_in", "n_in", "n_out")


def _check_rows(name: str, array: np.ndarray, rows: int) -> None:
    """Raise RaymemError unless `array` is one value per training row."""
    if array.shape != (rows,):
        raise RaymemError(f"{name} must hold one value per training row ({rows}), got shape {array.shape}; "
                          "pass counts from the same run and shard.")


def high_influence_pairs(
    h_in,
    n_in,
    n_out,
    test_hits,
    mem,
    *,
    min_infl: float = PAPER_MIN_INFL,
    min_mem: float = PAPER_MIN_MEM,
    row_offset: int = 0,
    chunk_rows: int = 1024,
) -> dict[str, np.ndarray]:
    """Return the pairs (i, j) with mem[i] >= min_mem and infl[i, j] >= min_infl, with their counts.

    h_in: (rows, n_test) counts (any numeric dtype, e.g. float32 or a memory map); n_in, n_out, mem:
    (rows,); test_hits: (n_test,). Only rows that pass the memorization threshold are read, in
    chunks of `chunk_rows` rows, so memory stays bounded. `row_offset` is added to train_index (a
    shard holding rows [a, b) passes a).

    Returns a dict of equal-length 1-D arrays sorted by train_index then test_index:
    train_index, test_index (int64), infl (float64), h_in, n_in, n_out (int64 counts of each
    selected cell, so intervals can be computed for just those cells).
    """
    if not hasattr(h_in, "ndim"):
        h_in = np.asarray(h_in)  # arrays and memory maps are used as they are, without a copy
    if h_in.ndim != 2:
        raise RaymemError(f"the pair count matrix must be 2-D (rows x test examples), got shape {h_in.shape}.")
    rows, n_test = h_in.shape
    n_in, n_out, mem = np.asarray(n_in), np.asarray(n_out), np.asarray(mem)
    test_hits = np.asarray(test_hits)
    for name, array in (("n_in", n_in), ("n_out", n_out), ("mem", mem)):
        _check_rows(name, array, rows)
    if test_hits.shape != (n_test,):
        raise RaymemError(f"test_hits must hold one count per test example ({n_test}), got shape {test_hits.shape}.")
    if int(chunk_rows) < 1:
        raise RaymemError(f"chunk_rows must be at least 1 (got {chunk_rows}).")

    selected_rows = np.flatnonzero(mem >= min_mem)
    pieces: dict[str, list[np.ndarray]] = {field: [] for field in PAIR_FIELDS}
    for start in range(0, selected_rows.size, int(chunk_rows)):
        chunk = selected_rows[start:start + int(chunk_rows)]
        block = np.asarray(h_in[chunk])
        local_row, test_index = np.nonzero(_candidates(block, n_in[chunk], n_out[chunk], test_hits, min_infl))
        h = block[local_row, test_index]
        infl = pair_influence(h, n_in[chunk][local_row], test_hits[test_index], n_out[chunk][local_row])
        keep = infl >= min_infl  # the exact test, on the few candidates only
        local_row, test_index, h, infl = local_row[keep], test_index[keep], h[keep], infl[keep]
        row = chunk[local_row]  # nonzero is row-major: sorted by row, then column
        pieces["train_index"].append(row.astype(np.int64) + int(row_offset))
        pieces["test_index"].append(test_index.astype(np.int64))
        pieces["infl"].append(infl)
        pieces["h_in"].append(np.rint(h).astype(np.int64))
        pieces["n_in"].append(n_in[row].astype(np.int64))
        pieces["n_out"].append(n_out[row].astype(np.int64))

    empty_dtypes = {"infl": np.float64}
    return {
        field: (np.concatenate(parts) if parts else np.zeros(0, dtype=empty_dtypes.get(field, np.int64)))
        for field, parts in pieces.items()
    }


#: Slack of the float32 pre-test, far above its rounding error and far below one count.
_CANDIDATE_SLACK = 1e-2


def _candidates(block, n_in, n_out, test_hits, min_infl: float) -> np.ndarray:
    """Cells that may have infl >= min_infl: a cheap float32 superset of the exact selection.

    For a row with samples on both sides, infl = h/n_in - (T - h)/n_out >= θ is linear in h:
    h >= (θ + T/n_out) / (1/n_in + 1/n_out). Rows with an empty term keep every cell (the exact
    test decides); they are rare once a run has a few trials.
    """
    n_in = np.asarray(n_in, dtype=np.float64)
    n_out = np.asarray(n_out, dtype=np.float64)
    regular = (n_in > 0) & (n_out > 0)
    inv_in = np.where(regular, 1.0 / np.where(regular, n_in, 1.0), 0.0)
    inv_out = np.where(regular, 1.0 / np.where(regular, n_out, 1.0), 0.0)
    scale = np.where(regular, 1.0 / np.where(regular, inv_in + inv_out, 1.0), 0.0)
    offset = (min_infl * scale - _CANDIDATE_SLACK).astype(np.float32)
    slope = (inv_out * scale).astype(np.float32)
    threshold = offset[:, None] + slope[:, None] * np.asarray(test_hits, dtype=np.float32)[None, :]
    threshold[~regular] = -np.inf
    return block >= threshold


def top_influencers(h_in_column, n_in, n_out, test_hits_j, k: int, row_offset: int = 0) -> dict[str, np.ndarray]:
    """Return the k training examples with the largest influence on one test example j.

    h_in_column, n_in, n_out: (rows,); test_hits_j: T_j. Returns a dict of arrays of length
    min(k, rows): train_index (int64, row + row_offset), infl (float64), h_in (int64), ordered by
    influence descending, ties broken by train_index ascending.
    """
    column = np.asarray(h_in_column)
    if column.ndim != 1:
        raise RaymemError(f"the pair counts of one test example must be 1-D, got shape {column.shape}.")
    rows = column.shape[0]
    n_in, n_out = np.asarray(n_in), np.asarray(n_out)
    _check_rows("n_in", n_in, rows)
    _check_rows("n_out", n_out, rows)
    k = int(k)
    if k < 0:
        raise RaymemError(f"the number of top influencers must be non-negative (got {k}).")
    k = min(k, rows)

    infl = influence(column[:, None], n_in, np.asarray([test_hits_j]), n_out)[:, 0]
    if k == 0:
        chosen = np.zeros(0, dtype=np.int64)
    else:
        negated = -infl
        kth_value = negated[np.argpartition(negated, k - 1)[k - 1]]
        above = np.flatnonzero(negated < kth_value)
        tied = np.flatnonzero(negated == kth_value)[: k - above.size]  # flatnonzero is ascending
        candidates = np.concatenate([above, tied])
        chosen = candidates[np.lexsort((candidates, negated[candidates]))]
    return {
        "train_index": chosen.astype(np.int64) + int(row_offset),
        "infl": infl[chosen],
        "h_in": np.rint(column[chosen]).astype(np.int64),
    }


def _eligible_mask(eligible, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Return `eligible` as a boolean array of `shape`; a per-row mask is spread across the columns."""
    if eligible is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(eligible, dtype=bool)
    if mask.shape != shape[: mask.ndim]:
        raise RaymemError(f"{name} of shape {mask.shape} does not match the estimates of shape {shape}; "
                          "pass one flag per estimate or one per row.")
    return np.broadcast_to(mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim)), shape)


def jaccard_and_mean_difference(values_a, values_b, threshold: float, eligible_a=None, eligible_b=None) -> dict:
    """Compare two estimates of the same quantities at one threshold (supplement Eq. 4 and below it).

    I_a = {x : a[x] >= threshold and eligible_a[x]}, I_b likewise. Returns a dict:
    jaccard = |I_a & I_b| / |I_a | I_b|, mean_abs_diff = mean of |a - b| over I_a | I_b, and the
    set sizes size_a, size_b, size_union (ints). When the union is empty both jaccard and
    mean_abs_diff are NaN: an empty union says nothing about agreement.

    values_a, values_b: arrays of the same shape (mem vectors, influence matrices, ...).
    eligible_a, eligible_b: optional boolean masks of that shape, or of its leading axes (e.g.
    one flag per training row, mem >= 0.25, spread across the test columns of an influence matrix).
    """
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape:
        raise RaymemError(f"the two estimates to compare have different shapes {a.shape} and {b.shape}; "
                          "compare estimates of the same examples.")
    in_a = (a >= threshold) & _eligible_mask(eligible_a, a.shape, "eligible_a")
    in_b = (b >= threshold) & _eligible_mask(eligible_b, b.shape, "eligible_b")
    union = in_a | in_b
    size_union = int(np.count_nonzero(union))
    if size_union == 0:
        jaccard = mean_abs_diff = float("nan")
    else:
        jaccard = int(np.count_nonzero(in_a & in_b)) / size_union
        mean_abs_diff = float(np.mean(np.abs(a[union] - b[union])))
    return {
        "jaccard": jaccard,
        "mean_abs_diff": mean_abs_diff,
        "size_a": int(np.count_nonzero(in_a)),
        "size_b": int(np.count_nonzero(in_b)),
        "size_union": size_union,
    }


def consistency_curve(values_a, values_b, thresholds, eligible_a=None, eligible_b=None) -> list[dict]:
    """Return jaccard_and_mean_difference at each threshold (the paper's Fig. C.2), each dict with its "threshold"."""
    return [
        {"threshold": float(threshold),
         **jaccard_and_mean_difference(values_a, values_b, threshold, eligible_a, eligible_b)}
        for threshold in thresholds
    ]
