"""Influence scope: which cells of the n_train x n_test pair matrix a run counts.

- ``full``: every cell (training example i, test example j). CIFAR-100: 50,000 x 10,000 = 2 GB of
  float32 counts; ImageNet: 1.28M x 50,000 = 256 GB, which needs pair shards.
- ``class``: only the cells whose training and test example have the same label, kept as one block
  per class ``H_c[train rows of label c, test columns of label c]`` (the layout in which Feldman &
  Zhang released their influence estimates). ImageNet: ~1,281 x 50 cells per class, ~64M cells
  (~256 MB) in all, so its pair counts fit one ordinary process. Cross-class cells are simply not
  estimated: every pair read of a class-scope run reports only same-class pairs, and the influencers
  of a test example are the training examples of its class.

The labels are the run's training labels as trained (canaries flipped) and its test labels
(``labels.parquet``). :class:`PairLayout` places the blocks of one Counts (all training rows, or a
pair shard's row slice) in one flat float32 array; :func:`pair_count_bytes` says how big that is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raymem.errors import RaymemError

INFLUENCE_SCOPES = ("full", "class")
DEFAULT_SCOPE = "full"
#: Bytes of one pair count (``Counts`` keeps them as float32).
PAIR_COUNT_BYTES = 4


def check_scope(scope, where: str = "--influence-scope") -> str:
    """Return ``scope`` if it is an influence scope; RaymemError naming ``where`` otherwise."""
    if scope not in INFLUENCE_SCOPES:
        raise RaymemError(f"{where} {scope!r} is not an influence scope; use one of {', '.join(INFLUENCE_SCOPES)}.")
    return scope


def scope_of_config(config, where: str = "run.json") -> str:
    """The influence scope a stored run config asks for: ``estimator.influence_scope``, else a top-level
    ``influence_scope``, else "full" (the default scope)."""
    if not isinstance(config, dict):
        return DEFAULT_SCOPE
    section = config.get("estimator")
    scope = section.get("influence_scope") if isinstance(section, dict) else None
    if scope is None:
        scope = config.get("influence_scope")
    return DEFAULT_SCOPE if scope is None else check_scope(scope, f"{where}: influence_scope")


def check_labels(train_labels, test_labels, n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the labels as int64 arrays of shapes (n_train,), (n_test,); RaymemError when missing or misshapen."""
    if train_labels is None or test_labels is None:
        raise RaymemError(
            "influence scope 'class' needs the run's training and test labels (labels.parquet), and this run has none; "
            "record the labels (e.g. ingest with train_labels/test_labels) or use influence scope 'full'."
        )
    out = []
    for what, labels, n in (("training", train_labels, n_train), ("test", test_labels, n_test)):
        array = np.asarray(labels)
        if array.shape != (n,) or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
            raise RaymemError(f"the {what} labels have shape {array.shape} and dtype {array.dtype} but the run has "
                              f"{n} {what} examples; pass one integer label per example for influence scope 'class'.")
        out.append(array.astype(np.int64))
    return out[0], out[1]


def class_cells(train_labels, test_labels) -> int:
    """Same-label cells: sum over classes c of (training examples of c) x (test examples of c)."""
    train = np.asarray(train_labels, dtype=np.int64)
    test = np.asarray(test_labels, dtype=np.int64)
    classes, train_sizes = np.unique(train, return_counts=True)
    test_classes, test_sizes = np.unique(test, return_counts=True)
    _, a, b = np.intersect1d(classes, test_classes, assume_unique=True, return_indices=True)
    return int(np.sum(train_sizes[a].astype(np.int64) * test_sizes[b].astype(np.int64)))


def pair_cells(scope: str, n_train: int, n_test: int, *, train_labels=None, test_labels=None,
               num_classes: int | None = None, rows: tuple[int, int] | None = None) -> int:
    """Cells of the pair counts of ``scope`` over training rows ``rows`` (default: all ``n_train``).

    full: rows x n_test. class: the same-label cells of the given labels (exact); without labels,
    ``num_classes`` gives the estimate for balanced classes, rows x n_test / num_classes.
    """
    check_scope(scope)
    start, stop = (0, int(n_train)) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= start <= stop <= int(n_train):
        raise RaymemError(f"row slice {start}:{stop} is outside 0:{n_train}.")
    if scope == "full":
        return (stop - start) * int(n_test)
    if train_labels is not None and test_labels is not None:
        train, test = check_labels(train_labels, test_labels, n_train, n_test)
        return class_cells(train[start:stop], test)
    if num_classes is None or int(num_classes) < 1:
        raise RaymemError("the pair counts of influence scope 'class' depend on the labels; pass the run's labels "
                          "or its number of classes.")
    return int(round((stop - start) * int(n_test) / int(num_classes)))


def pair_count_bytes(scope: str, n_train: int, n_test: int, *, train_labels=None, test_labels=None,
                     num_classes: int | None = None, rows: tuple[int, int] | None = None) -> int:
    """Bytes of the float32 pair counts of ``scope`` (see :func:`pair_cells`; ``rows``: one pair shard's slice),
    without the update buffer (pair_batch x (rows + n_test) float32 more).

    ImageNet (1,281,167 x 50,000, 1,000 classes): full 256.2 GB, class 256.2 MB.
    """
    return PAIR_COUNT_BYTES * pair_cells(scope, n_train, n_test, train_labels=train_labels,
                                         test_labels=test_labels, num_classes=num_classes, rows=rows)


@dataclass(frozen=True)
class PairBlock:
    """One block of pair counts: training rows ``rows`` (global indices, ascending) x test columns ``cols``
    (ascending); ``h`` (len(rows), len(cols)) float32 counts. ``label`` is the block's class (None: the
    full matrix); ``local_rows`` are ``rows`` less the Counts' first row (indices into its vectors)."""

    label: int | None
    rows: np.ndarray
    cols: np.ndarray
    local_rows: np.ndarray
    h: np.ndarray


class PairLayout:
    """Where the same-label blocks of one Counts (training rows ``row_start:row_stop``) live.

    Blocks are ordered by label; block c holds the rows of label c in the slice (ascending) by the
    test columns of label c (ascending), in one flat float32 array at ``cell_offsets[c]``, row-major.
    Only classes with at least one row in the slice and one test example get a block.
    The update buffer holds each trial's mask in ``row_order`` (rows grouped by block) and its test
    correctness in ``col_order``, so that block c's part of a buffer is the contiguous range
    ``row_bounds[c]:row_bounds[c + 1]`` (``col_bounds`` for the columns).

    ``family``: the same-label cells over every training row of the run (not only this slice), the
    family of pairs that simultaneous bands and the FDR tuning cover, fixed before any trial is seen.
    """

    def __init__(self, train_labels, test_labels, n_train: int, n_test: int, row_start: int, row_stop: int):
        train, test = check_labels(train_labels, test_labels, n_train, n_test)
        self.train_labels, self.test_labels = train, test
        self.family = class_cells(train, test)  # over every row of the run: see the class docstring
        self.row_start, self.row_stop = int(row_start), int(row_stop)
        local = train[self.row_start:self.row_stop]
        row_classes, row_sizes = np.unique(local, return_counts=True)
        col_classes, col_sizes = np.unique(test, return_counts=True)
        labels, a, b = np.intersect1d(row_classes, col_classes, assume_unique=True, return_indices=True)
        self.labels = labels.astype(np.int64)
        kept_rows = np.isin(local, labels)
        kept_cols = np.isin(test, labels)
        # rows of the slice that have a block, grouped by label (a stable sort keeps them ascending)
        rows = np.flatnonzero(kept_rows)
        self.row_order = rows[np.argsort(local[rows], kind="stable")].astype(np.int64)
        cols = np.flatnonzero(kept_cols)
        self.col_order = cols[np.argsort(test[cols], kind="stable")].astype(np.int64)
        self.row_sizes = row_sizes[a].astype(np.int64)
        self.col_sizes = col_sizes[b].astype(np.int64)
        self.row_bounds = np.concatenate([[0], np.cumsum(self.row_sizes)]).astype(np.int64)
        self.col_bounds = np.concatenate([[0], np.cumsum(self.col_sizes)]).astype(np.int64)
        self.cell_offsets = np.concatenate([[0], np.cumsum(self.row_sizes * self.col_sizes)]).astype(np.int64)
        # per local row / test column: its block (-1: none) and its position inside the block
        self.row_block = np.full(local.size, -1, dtype=np.int64)
        self.row_block[self.row_order] = np.repeat(np.arange(self.labels.size), self.row_sizes)
        self.row_pos = np.zeros(local.size, dtype=np.int64)
        self.row_pos[self.row_order] = np.arange(self.row_order.size) - np.repeat(self.row_bounds[:-1], self.row_sizes)
        self.col_block = np.full(test.size, -1, dtype=np.int64)
        self.col_block[self.col_order] = np.repeat(np.arange(self.labels.size), self.col_sizes)
        self.col_pos = np.zeros(test.size, dtype=np.int64)
        self.col_pos[self.col_order] = np.arange(self.col_order.size) - np.repeat(self.col_bounds[:-1], self.col_sizes)

    @property
    def cells(self) -> int:
        """Cells of this slice's blocks (the length of the flat storage)."""
        return int(self.cell_offsets[-1])

    def block_view(self, storage: np.ndarray, b: int) -> np.ndarray:
        """Block ``b`` of ``storage`` (the flat array) as a C-contiguous (rows, cols) view."""
        return storage[self.cell_offsets[b]:self.cell_offsets[b + 1]].reshape(int(self.row_sizes[b]),
                                                                              int(self.col_sizes[b]))

    def blocks(self, storage: np.ndarray) -> list[PairBlock]:
        """Every block over ``storage``, with its global row and column indices."""
        out = []
        for b, label in enumerate(self.labels.tolist()):
            local_rows = self.row_order[self.row_bounds[b]:self.row_bounds[b + 1]]
            cols = self.col_order[self.col_bounds[b]:self.col_bounds[b + 1]]
            out.append(PairBlock(int(label), local_rows + self.row_start, cols, local_rows,
                                 self.block_view(storage, b)))
        return out

    def hypotheses(self, local_row_mask: np.ndarray) -> int:
        """Same-label cells of the local rows where ``local_row_mask`` holds."""
        chosen = np.asarray(local_row_mask, dtype=bool) & (self.row_block >= 0)
        return int(np.sum(self.col_sizes[self.row_block[chosen]]))

    def gather(self, storage: np.ndarray, local_rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """(counts, estimated) of the cells (local_rows, cols) (broadcast together): counts float64 (0 where
        the cell is not estimated), estimated bool (the two examples share a label that has a block)."""
        local_rows, cols = np.broadcast_arrays(np.asarray(local_rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))
        row_block = self.row_block[local_rows]
        estimated = (row_block >= 0) & (row_block == self.col_block[cols])
        values = np.zeros(local_rows.shape, dtype=np.float64)
        if estimated.any():
            rb = row_block[estimated]
            rp, cp = self.row_pos[local_rows[estimated]], self.col_pos[cols[estimated]]
            values[estimated] = storage[self.cell_offsets[rb] + rp * self.col_sizes[rb] + cp]
        return values, estimated
