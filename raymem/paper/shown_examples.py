"""What the paper shows from the selected high-influence pairs (supplement, sections C and D).

- select_training_rows: the supplement's rule for choosing, without cherry-picking, which memorized
  training examples the influence figures show (section D prints its code; implemented exactly here).
- top_influenced: for each of those training examples, its most influenced test examples (the other
  images of a row of Figs. D.5-D.9), with intervals.
- influenced_by_counts: how many test examples are influenced by 1, 2, 3, ... selected training
  examples (section C, under Fig. C.1: CIFAR-100 774/101/13, ImageNet 1,298/150/13/1).
- default_class / class_members: the class a memorization figure (Fig. D.4) shows.

numpy and pyarrow only; the point estimates and intervals come from ``formulas`` and ``report``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raymem.errors import RaymemError
from raymem.estimator import formulas, report
from raymem.estimator.bars import Bars
from raymem.estimator.counts import Counts

#: The supplement's choice: 3 copies ("consecutive sets") of 5 evenly spaced training examples.
N_COPIES = 3
N_EXAMPLES = 5
#: Test examples shown beside each training example (Figs. D.5-D.9).
N_TEST_EXAMPLES = 4


def max_influence_per_training_example(train_index, infl) -> tuple[np.ndarray, np.ndarray]:
    """Return (idx_train_selected, max_infl_of_train_selected) of the selected pairs.

    idx_train_selected: the distinct training indices of the pairs, ascending (np.unique);
    max_infl_of_train_selected[k]: the highest influence training example idx_train_selected[k]
    has on a test example among the pairs.
    """
    train_index = np.asarray(train_index, dtype=np.int64)
    infl = np.asarray(infl, dtype=np.float64)
    if train_index.shape != infl.shape or train_index.ndim != 1:
        raise RaymemError(
            f"the pairs' train_index {train_index.shape} and infl {infl.shape} must be 1-D of one length; "
            "pass the columns of one pairs table."
        )
    idx_train_selected, inverse = np.unique(train_index, return_inverse=True)
    max_infl = np.full(idx_train_selected.size, -np.inf)
    np.maximum.at(max_infl, inverse.ravel(), infl)
    return idx_train_selected, max_infl


def select_training_rows(train_index, infl, *, n_copies: int = N_COPIES, n_egs: int = N_EXAMPLES) -> list[np.ndarray]:
    """Return the training examples the influence figure shows: ``n_copies`` arrays of ``n_egs`` indices.

    The supplement's code (section D), with ``np.int`` (gone from numpy) written as ``int``::

        idx_sort_selected = np.argsort(-max_infl_of_train_selected)
        base_idx = np.linspace(0, len(idx_train_selected) - n_copies, n_egs).astype(int)
        for i_copy in range(n_copies):
            idxs_to_depict = [idx_train_selected[idx_sort_selected[x + i_copy]] for x in base_idx]

    where idx_train_selected are the distinct training examples of the selected pairs (ascending) and
    max_infl_of_train_selected their highest influence on a test example. Two choices the printed code
    leaves open: ties in the highest influence keep ascending training index (a stable sort), and
    with fewer than ``n_copies`` training examples (where the printed code would index from the end of
    the list) every base position is 0 and copies past the end repeat the last example. Copies may
    repeat an example when few are selected, exactly as the printed code does. No pairs: an empty list.
    """
    idx_train_selected, max_infl = max_influence_per_training_example(train_index, infl)
    n_copies, n_egs = int(n_copies), int(n_egs)
    if n_copies < 1 or n_egs < 1:
        raise RaymemError(f"the selection needs at least one copy and one example per copy (got {n_copies}, {n_egs}).")
    count = idx_train_selected.size
    if count == 0:
        return []
    idx_sort_selected = np.argsort(-max_infl, kind="stable")
    base_idx = np.linspace(0, max(count - n_copies, 0), n_egs).astype(int)
    copies = []
    for i_copy in range(n_copies):
        positions = np.clip(base_idx + i_copy, 0, count - 1)
        copies.append(idx_train_selected[idx_sort_selected[positions]].astype(np.int64))
    return copies


def influenced_by_counts(test_index) -> dict[int, int]:
    """Return {k: number of test examples influenced by exactly k selected training examples}, k ascending.

    ``test_index``: the test column of each selected pair (one entry per pair). The supplement reports
    these under Fig. C.1 (CIFAR-100: {1: 774, 2: 101, 3: 13}). json.dumps writes the keys as strings.
    """
    test_index = np.asarray(test_index, dtype=np.int64).ravel()
    if test_index.size == 0:
        return {}
    _, per_test = np.unique(test_index, return_counts=True)
    k, how_many = np.unique(per_test, return_counts=True)
    return {int(a): int(b) for a, b in zip(k, how_many)}


def influenced_by_table(test_index) -> pa.Table:
    """influenced_by_counts as a table: columns ``influenced_by`` and ``test_examples`` (int64)."""
    found = influenced_by_counts(test_index)
    return pa.table({
        "influenced_by": pa.array(list(found), type=pa.int64()),
        "test_examples": pa.array(list(found.values()), type=pa.int64()),
    })


def top_influenced_from_pairs(pairs: pa.Table, train_indices, k: int = N_TEST_EXAMPLES) -> pa.Table:
    """The ``k`` most influenced test examples of each training example, among the rows of ``pairs``.

    Used when the run's pair counts are not at hand (only the selected pairs): then a row of the figure
    shows only test examples of selected pairs. Columns: train_index, rank (1..), test_index, infl,
    infl_lo, infl_hi; influence descending, ties by test index ascending.
    """
    wanted = np.unique(np.asarray(train_indices, dtype=np.int64))
    tr = pairs.column("train_index").to_numpy().astype(np.int64)
    keep = np.isin(tr, wanted)
    tr = tr[keep]
    tt = pairs.column("test_index").to_numpy().astype(np.int64)[keep]
    infl = pairs.column("infl").to_numpy().astype(np.float64)[keep]
    lo = _column_or(pairs, "infl_lo", np.nan)[keep]
    hi = _column_or(pairs, "infl_hi", np.nan)[keep]
    order = np.lexsort((tt, -infl, tr))
    tr, tt, infl, lo, hi = tr[order], tt[order], infl[order], lo[order], hi[order]
    start = np.searchsorted(tr, tr, side="left")
    rank = np.arange(tr.size) - start + 1
    take = rank <= int(k)
    return _top_table(tr[take], rank[take], tt[take], infl[take], lo[take], hi[take])


def top_influenced_from_counts(counts: Counts, train_indices, bars: Bars = Bars(), k: int = N_TEST_EXAMPLES, *,
                               test_columns=None) -> pa.Table:
    """The ``k`` most influenced test examples of each training example, over its whole row of the pair matrix.

    This is what the paper's figures show ("4 most influenced examples in the test set"). Intervals are
    ``report.infl_intervals`` by ``bars``: for a pair the pairs table also lists, the same interval.
    ``test_columns`` (optional bool (n_test,) or callable train_index -> bool (n_test,))
    limits the candidates, e.g. to test examples of the training example's class. In class scope the
    candidates are the test examples of the training example's class (the only pairs estimated).
    Columns as :func:`top_influenced_from_pairs`.
    """
    wanted = np.unique(np.asarray(train_indices, dtype=np.int64))
    if wanted.size and (wanted.min() < counts.row_start or wanted.max() >= counts.row_stop):
        raise RaymemError(
            f"training examples {wanted.min()}..{wanted.max()} are outside the counted rows "
            f"{counts.row_start}..{counts.row_stop - 1}; pass counts of the whole run."
        )
    v = counts.all
    pieces = []
    for i in wanted:
        r = int(i) - counts.row_start
        estimated_cols, row = counts.pair_row(int(i))
        row = np.asarray(row, dtype=np.float64)
        infl = formulas.pair_influence(row, v.n_in[r], v.test_hits[estimated_cols], v.n_out[r])
        allowed = np.ones(estimated_cols.size, dtype=bool)
        if test_columns is not None:
            allowed = np.asarray(test_columns(int(i)) if callable(test_columns) else test_columns, dtype=bool)
            allowed = allowed[estimated_cols]
        pos = np.flatnonzero(allowed)
        pos = pos[np.lexsort((estimated_cols[pos], -infl[pos]))][: int(k)]
        cols = estimated_cols[pos]
        h = np.rint(row[pos]).astype(np.int64)
        lo, hi = report.infl_intervals(counts, bars, h, np.full(cols.size, v.n_in[r]), np.full(cols.size, v.n_out[r]),
                                       v.test_hits[cols])
        pieces.append((np.full(cols.size, i, dtype=np.int64), np.arange(1, cols.size + 1), cols, infl[pos], lo, hi))
    if not pieces:
        return _top_table(*(np.zeros(0, dtype=t) for t in (np.int64, np.int64, np.int64, float, float, float)))
    return _top_table(*(np.concatenate(parts) for parts in zip(*pieces)))


def _column_or(table: pa.Table, name: str, fill: float) -> np.ndarray:
    if name in table.column_names:
        return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
    return np.full(table.num_rows, fill)


def _top_table(tr, rank, tt, infl, lo, hi) -> pa.Table:
    return pa.table({
        "train_index": np.asarray(tr, dtype=np.int64),
        "rank": np.asarray(rank, dtype=np.int64),
        "test_index": np.asarray(tt, dtype=np.int64),
        "infl": np.asarray(infl, dtype=np.float64),
        "infl_lo": np.asarray(lo, dtype=np.float64),
        "infl_hi": np.asarray(hi, dtype=np.float64),
    })


def class_range_error(klass, num_classes: int) -> RaymemError:
    """The error for a ``--class`` that is not a class of the run."""
    return RaymemError(f"class {klass} is not a class of this run; pick --class in 0..{num_classes - 1}.")


def default_class(mem, train_labels, num_classes: int | None = None, threshold: float = formulas.PAPER_MIN_MEM) -> int:
    """The class with the most training examples with mem >= threshold (ties: the smaller class).

    When no example reaches the threshold: the class of the most memorized training example.
    """
    mem = np.asarray(mem, dtype=np.float64)
    labels = np.asarray(train_labels, dtype=np.int64)
    if mem.size == 0:
        raise RaymemError("the run has no training examples to show.")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    above = np.bincount(labels[mem >= threshold], minlength=num_classes)
    if above.max() > 0:
        return int(np.argmax(above))
    return int(labels[np.lexsort((np.arange(mem.size), -mem))[0]])


def class_members(klass, mem, train_labels, num_classes: int | None = None) -> np.ndarray:
    """Training indices of class ``klass`` sorted by memorization (descending, ties by index).

    RaymemError naming the class and the valid range when ``klass`` is not a class of the run.
    """
    labels = np.asarray(train_labels, dtype=np.int64)
    mem = np.asarray(mem, dtype=np.float64)
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    try:
        c = int(klass)
        valid = c == klass and 0 <= c < num_classes
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise class_range_error(klass, num_classes)
    members = np.flatnonzero(labels == c)
    if members.size == 0:
        raise RaymemError(f"class {c} has no training examples in this run; "
                          f"pick another --class in 0..{num_classes - 1}.")
    return members[np.lexsort((members, -mem[members]))]
