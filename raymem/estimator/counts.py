"""Count tensors: the sufficient statistics of the estimator, updated from trial outcomes.

Per training row i: ``n_in`` (trials that trained on i), ``in_hits`` (of those, correct on i) and
``total_hits`` (all trials correct on i). Per test example j: ``test_hits`` (T_j). Per pair:
``h_in[i, j]`` (trials that trained on i and are correct on j). With ``t`` trials,
``n_out = t - n_in`` and ``out_hits = total_hits - in_hits``.

The vectors are updated as each trial arrives (cheap, O(n)); the pair matrix is updated in
batches: a buffer of B trials becomes one matrix product ``M_B^T @ C_B`` (float32 accumulation,
exact while counts stay below 2**24). A Counts object may cover only a slice of training rows
(``row_start:row_stop``), for sharding; its test vectors always cover every test example.

The same statistics are also kept for the trials with an even id, so that split-half
consistency (even vs. odd trials) costs no second pass over the log.

Influence scope (``raymem.estimator.influence_scope``): ``full`` keeps ``h_in`` as one (rows, n_test) matrix;
``class`` keeps only the cells whose training and test example share a label, one block per class in
one flat float32 array (``pair_storage``), updated by the same buffered products on each block's
rows and columns. Readers go through the scope-independent accessors (``pair_blocks``,
``pair_cells``, ``pair_column``, ``pair_row``, ``pair_hypotheses``, ``pair_family``), so every read
answers the same way on both scopes, over the cells the scope keeps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from raymem.errors import RaymemError
from raymem.estimator import formulas
from raymem.estimator.influence_scope import DEFAULT_SCOPE, PairBlock, PairLayout, check_scope

#: float32 holds every integer below this exactly; counts must stay under it.
MAX_EXACT_COUNT = 2**24
#: Rows of the pair matrix per matrix product when numpy (not BLAS in place) does the update:
#: bounds the temporary to UPDATE_CHUNK_ROWS x n_test floats.
UPDATE_CHUNK_ROWS = 4096


@dataclass
class VectorCounts:
    """Per-example counts of one set of trials (no pair matrix)."""

    trials: int
    n_in: np.ndarray        # int64 (rows,)
    in_hits: np.ndarray     # int64 (rows,)
    total_hits: np.ndarray  # int64 (rows,)
    test_hits: np.ndarray   # int64 (n_test,)

    @classmethod
    def zeros(cls, rows: int, n_test: int) -> "VectorCounts":
        """Return all-zero counts for ``rows`` training and ``n_test`` test examples."""
        z = lambda k: np.zeros(k, dtype=np.int64)  # noqa: E731
        return cls(0, z(rows), z(rows), z(rows), z(n_test))

    @property
    def n_out(self) -> np.ndarray:
        """Trials whose subset left each training example out: ``trials - n_in``."""
        return self.trials - self.n_in

    @property
    def out_hits(self) -> np.ndarray:
        """Trials that left each example out and were right on it: ``total_hits - in_hits``."""
        return self.total_hits - self.in_hits

    def memorization(self) -> np.ndarray:
        """Return mem per row (float64): formulas.memorization of these counts, the one place it is formed."""
        return formulas.memorization(self.in_hits, self.n_in, self.out_hits, self.n_out)

    def add(self, mask: np.ndarray, train_correct: np.ndarray, test_correct: np.ndarray) -> None:
        """Count one trial (mask and train_correct already sliced to this object's rows)."""
        self.trials += 1
        self.n_in += mask
        self.in_hits += mask & train_correct
        self.total_hits += train_correct
        self.test_hits += test_correct

    def minus(self, other: "VectorCounts") -> "VectorCounts":
        """Return these counts less ``other``'s (e.g. all trials minus the even ones gives the odd ones)."""
        return VectorCounts(
            self.trials - other.trials,
            self.n_in - other.n_in,
            self.in_hits - other.in_hits,
            self.total_hits - other.total_hits,
            self.test_hits - other.test_hits,
        )


@dataclass
class Counts:
    """All counts of a set of trials over training rows ``row_start:row_stop``.

    ``add`` counts a trial (once per trial id) and buffers its pair update; ``flush`` applies the
    buffer as one matrix product (per class block in class scope). Readers call ``flush`` first
    (``pair_blocks``, ``pair_cells``, ... and ``pairs_ready`` for the full matrix do).
    """

    n_train: int
    n_test: int
    row_start: int
    row_stop: int
    all: VectorCounts
    even: VectorCounts
    h_in: np.ndarray | None  # float32 (rows, n_test), None when pairs are not tracked or the scope is "class"
    batch_size: int = 64
    trial_ids: set[int] = field(default_factory=set)
    layout: PairLayout | None = None           # class scope: where each class block lives (None: full scope)
    pair_storage: np.ndarray | None = None     # class scope: float32 (layout.cells,), the blocks back to back
    #: False: ``add`` never applies the buffer itself (it grows instead); the owner applies it with
    #: ``take_pending`` / ``drop_pending`` (the accumulator does it on a thread of its own; full scope only).
    auto_flush: bool = True
    # The pair-update buffer: rows [0, _pending_count) of two float32 arrays allocated on first use,
    # (batch_size, rows) masks and (batch_size, n_test) test correctness. Each add copies its trial in,
    # so callers may reuse their arrays, and flush multiplies the filled rows without stacking.
    _pending_count: int = field(default=0, repr=False)
    _pending_masks: np.ndarray | None = field(default=None, repr=False)
    _pending_test: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def empty(
        cls,
        n_train: int,
        n_test: int,
        *,
        rows: tuple[int, int] | None = None,
        with_pairs: bool = True,
        batch_size: int = 64,
        influence_scope: str = DEFAULT_SCOPE,
        train_labels=None,
        test_labels=None,
    ) -> "Counts":
        """Return zero counts for training rows ``rows`` (default: all of them).

        influence_scope: "full" (every pair) or "class" (only pairs of the same label, one block per
        class); "class" needs ``train_labels`` (n_train,) as trained (canaries flipped) and
        ``test_labels`` (n_test,), else RaymemError. The labels are ignored in full scope.
        """
        start, stop = rows if rows is not None else (0, n_train)
        if not (0 <= start <= stop <= n_train):
            raise ValueError(f"row slice {start}:{stop} is outside 0:{n_train}")
        if batch_size < 1:
            raise RaymemError(f"batch size {batch_size} must be at least 1.")
        check_scope(influence_scope)
        nrows = stop - start
        layout = storage = h_in = None
        if influence_scope == "class":
            layout = PairLayout(train_labels, test_labels, n_train, n_test, start, stop)
            storage = np.zeros(layout.cells, dtype=np.float32) if with_pairs else None
        elif with_pairs:
            h_in = np.zeros((nrows, n_test), dtype=np.float32)
        return cls(
            n_train, n_test, start, stop,
            VectorCounts.zeros(nrows, n_test), VectorCounts.zeros(nrows, n_test),
            h_in, batch_size, layout=layout, pair_storage=storage,
        )

    # ---- shape facts -------------------------------------------------------------------
    @property
    def rows(self) -> slice:
        """The slice of training rows these counts hold (all rows, or one shard's)."""
        return slice(self.row_start, self.row_stop)

    @property
    def trials(self) -> int:
        """Trials counted."""
        return self.all.trials

    @property
    def odd(self) -> VectorCounts:
        """Per-example counts of the odd trial ids (split-half consistency)."""
        return self.all.minus(self.even)

    @property
    def pending(self) -> int:
        """Trials counted in the vectors whose pair update is still buffered."""
        return self._pending_count

    @property
    def influence_scope(self) -> str:
        """"full" (every pair counted) or "class" (only pairs whose two examples share a label)."""
        return "class" if self.layout is not None else "full"

    @property
    def tracks_pairs(self) -> bool:
        """Whether these counts keep pair counts (influence) at all."""
        return self.h_in is not None or self.pair_storage is not None

    @property
    def pair_family(self) -> int:
        """Pairs the scope estimates over the whole run (every row, not only this slice's): n_train x n_test
        in full scope, the same-label cells in class scope. Simultaneous bands and the FDR tuning cover these."""
        return self.layout.family if self.layout is not None else self.n_train * self.n_test

    @property
    def pair_cells_kept(self) -> int:
        """Pair cells these counts hold (this slice's rows only)."""
        if self.layout is not None:
            return self.layout.cells
        return (self.row_stop - self.row_start) * self.n_test

    # ---- updates -----------------------------------------------------------------------
    def add(self, trial_id: int, mask: np.ndarray, train_correct: np.ndarray, test_correct: np.ndarray) -> bool:
        """Count one trial given full-width bool arrays; return False if its id was already counted."""
        trial_id = int(trial_id)
        if trial_id in self.trial_ids:
            return False
        mask = np.asarray(mask, dtype=bool)
        train_correct = np.asarray(train_correct, dtype=bool)
        test_correct = np.asarray(test_correct, dtype=bool)
        if (mask.shape != (self.n_train,) or train_correct.shape != (self.n_train,)
                or test_correct.shape != (self.n_test,)):
            raise RaymemError(
                f"trial {trial_id} has shapes mask {mask.shape}, train {train_correct.shape}, "
                f"test {test_correct.shape} "
                f"but the run has {self.n_train} training and {self.n_test} test examples; "
                "record trials of this run only."
            )
        if self.trials + 1 >= MAX_EXACT_COUNT:
            raise RaymemError(f"a run holds at most {MAX_EXACT_COUNT - 1} trials; start a new run for more.")
        rows_mask = mask[self.rows]
        rows_correct = train_correct[self.rows]
        self.all.add(rows_mask, rows_correct, test_correct)
        if trial_id % 2 == 0:
            self.even.add(rows_mask, rows_correct, test_correct)
        self.trial_ids.add(trial_id)
        if self.tracks_pairs:
            if self.layout is not None:  # class scope: the buffer holds rows and columns grouped by block
                rows_mask, test_correct = rows_mask[self.layout.row_order], test_correct[self.layout.col_order]
            if self._pending_masks is None:
                self._pending_masks = np.empty((self.batch_size, rows_mask.size), dtype=np.float32)
                self._pending_test = np.empty((self.batch_size, test_correct.size), dtype=np.float32)
            elif self._pending_count == len(self._pending_masks):  # only without auto_flush: grow the buffer
                self._pending_masks = np.concatenate([self._pending_masks, np.empty_like(self._pending_masks)])
                self._pending_test = np.concatenate([self._pending_test, np.empty_like(self._pending_test)])
            self._pending_masks[self._pending_count] = rows_mask
            self._pending_test[self._pending_count] = test_correct
            self._pending_count += 1
            if self.auto_flush and self._pending_count >= self.batch_size:
                self.flush()
        return True

    def flush(self) -> None:
        """Apply buffered pair updates as one matrix product per row chunk (per class block in class scope)."""
        count = self._pending_count
        if count == 0 or not self.tracks_pairs:
            return
        masks, test = self._pending_masks[:count], self._pending_test[:count]
        if self.layout is None:
            add_outer_products(self.h_in, masks, test)
        else:
            lay = self.layout
            for b in range(lay.labels.size):
                add_outer_products(lay.block_view(self.pair_storage, b),
                                   masks[:, lay.row_bounds[b]:lay.row_bounds[b + 1]],
                                   test[:, lay.col_bounds[b]:lay.col_bounds[b + 1]])
        self._pending_count = 0

    def take_pending(self) -> tuple[np.ndarray, np.ndarray]:
        """Return copies of the buffered (masks, test correctness) rows of a full-scope matrix; the buffer keeps
        them until ``drop_pending``."""
        count = self._pending_count
        if count == 0 or self.h_in is None:
            return np.empty((0, self.row_stop - self.row_start), np.float32), np.empty((0, self.n_test), np.float32)
        return self._pending_masks[:count].copy(), self._pending_test[:count].copy()

    def drop_pending(self, count: int) -> None:
        """Remove the first ``count`` buffered rows (they were applied to ``h_in`` by the owner)."""
        rest = self._pending_count - count
        if rest < 0:
            raise ValueError(f"cannot drop {count} of {self._pending_count} buffered trials")
        if rest:
            self._pending_masks[:rest] = self._pending_masks[count:self._pending_count]
            self._pending_test[:rest] = self._pending_test[count:self._pending_count]
        self._pending_count = rest

    # ---- pair reads (both scopes) ------------------------------------------------------------
    def _require_pairs(self) -> None:
        if not self.tracks_pairs:
            raise RaymemError("this run was counted without the pair matrix (influence); "
                              "rebuild it with pairs enabled.")

    def pairs_ready(self) -> np.ndarray:
        """Flush, then return the full pair matrix (rows, n_test); scope "full" only (class scope: pair_blocks)."""
        self._require_pairs()
        if self.layout is not None:
            raise RaymemError("these counts keep influence per class (scope 'class'), not the full pair matrix; "
                              "read them with pair_blocks() or pair_cells().")
        self.flush()
        return self.h_in

    def pair_blocks(self) -> list[PairBlock]:
        """Flush, then return the pair counts as blocks: one block of every row and column in full scope,
        one per class in class scope (see ``scope.PairBlock``)."""
        self._require_pairs()
        self.flush()
        if self.layout is None:
            local = np.arange(self.row_stop - self.row_start, dtype=np.int64)
            return [PairBlock(None, local + self.row_start, np.arange(self.n_test, dtype=np.int64), local, self.h_in)]
        return self.layout.blocks(self.pair_storage)

    def _local_rows(self, train_index) -> np.ndarray:
        index = np.asarray(train_index, dtype=np.int64)
        if index.size and (index.min() < self.row_start or index.max() >= self.row_stop):
            raise RaymemError(f"training examples {index.min()}..{index.max()} are outside the counted rows "
                              f"{self.row_start}..{self.row_stop - 1}; pass counts of the whole run.")
        return index - self.row_start

    def pair_cells(self, train_index, test_index) -> tuple[np.ndarray, np.ndarray]:
        """(h_in, estimated) of the pairs (train_index, test_index) (global indices, broadcast together).

        h_in float64 counts; estimated bool: the scope keeps that cell (always in full scope; in class
        scope when the two examples share a label). Cells not estimated read 0.
        """
        self._require_pairs()
        local = self._local_rows(train_index)
        cols = np.asarray(test_index, dtype=np.int64)
        if cols.size and (cols.min() < 0 or cols.max() >= self.n_test):
            raise RaymemError(f"test examples {cols.min()}..{cols.max()} are outside the run's test set "
                              f"0..{self.n_test - 1}.")
        self.flush()
        if self.layout is None:
            local, cols = np.broadcast_arrays(local, cols)
            return self.h_in[local, cols].astype(np.float64), np.ones(local.shape, dtype=bool)
        return self.layout.gather(self.pair_storage, local, cols)

    def pair_column(self, test_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(train_index, h_in) of the training rows whose pair with test example ``test_index`` is estimated
        (every row in full scope, the rows of its class in class scope), train_index ascending."""
        blocks = self.pair_blocks()
        if self.layout is None:
            return blocks[0].rows, blocks[0].h[:, test_index]
        b = int(self.layout.col_block[test_index])
        if b < 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return blocks[b].rows, blocks[b].h[:, self.layout.col_pos[test_index]]

    def pair_row(self, train_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(test_index, h_in) of the test examples whose pair with training example ``train_index`` is
        estimated (every one in full scope, those of its class in class scope), test_index ascending."""
        r = int(self._local_rows([train_index])[0])
        blocks = self.pair_blocks()
        if self.layout is None:
            return blocks[0].cols, blocks[0].h[r]
        b = int(self.layout.row_block[r])
        if b < 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return blocks[b].cols, blocks[b].h[self.layout.row_pos[r]]

    def pair_hypotheses(self, row_mask) -> int:
        """Estimated pairs of the rows of this slice where ``row_mask`` (bool (rows,)) holds: the FDR
        hypothesis count m when row_mask is mem >= min_mem."""
        row_mask = np.asarray(row_mask, dtype=bool)
        if self.layout is None:
            return int(np.count_nonzero(row_mask)) * self.n_test
        return self.layout.hypotheses(row_mask)


def add_outer_products(h_in: np.ndarray, masks: np.ndarray, correct: np.ndarray,
                       chunk_rows: int = UPDATE_CHUNK_ROWS) -> None:
    """In place: h_in += masks.T @ correct (masks (B, rows), correct (B, n_test)); returns None.

    When h_in is a C-contiguous float32 array and SciPy's BLAS is available, one sgemm call with
    beta = 1 accumulates straight into h_in (no temporary, one pass over h_in). Otherwise numpy
    multiplies one chunk of ``chunk_rows`` rows at a time (a temporary of chunk_rows x n_test floats).
    Both are exact: every product and sum is a small integer held exactly in float32.
    """
    sgemm = _blas_sgemm()
    if sgemm is not None and h_in.dtype == np.float32 and h_in.flags.c_contiguous and h_in.size:
        a = np.ascontiguousarray(correct, dtype=np.float32).T  # (n_test, B), Fortran order
        b = np.ascontiguousarray(masks, dtype=np.float32).T    # (rows, B), Fortran order
        target = h_in.T                                        # (n_test, rows), Fortran order: a view of h_in
        result = sgemm(1.0, a, b, beta=1.0, c=target, trans_b=1, overwrite_c=1)
        if not np.shares_memory(result, h_in):  # BLAS worked on a copy: write it back
            target[...] = result
        return
    for start in range(0, h_in.shape[0], chunk_rows):
        stop = min(start + chunk_rows, h_in.shape[0])
        h_in[start:stop] += masks[:, start:stop].T @ correct


@functools.lru_cache(maxsize=1)
def _blas_sgemm():
    """Return SciPy's BLAS sgemm (in-place accumulation), or None when SciPy is not installed."""
    try:
        from scipy.linalg.blas import sgemm
    except ImportError:
        return None
    return sgemm
