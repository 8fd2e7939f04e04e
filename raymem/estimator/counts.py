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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from raymem.errors import RaymemError

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
        z = lambda k: np.zeros(k, dtype=np.int64)  # noqa: E731
        return cls(0, z(rows), z(rows), z(rows), z(n_test))

    @property
    def n_out(self) -> np.ndarray:
        return self.trials - self.n_in

    @property
    def out_hits(self) -> np.ndarray:
        return self.total_hits - self.in_hits

    def add(self, mask: np.ndarray, train_correct: np.ndarray, test_correct: np.ndarray) -> None:
        """Count one trial (mask and train_correct already sliced to this object's rows)."""
        self.trials += 1
        self.n_in += mask
        self.in_hits += mask & train_correct
        self.total_hits += train_correct
        self.test_hits += test_correct

    def plus(self, other: "VectorCounts") -> "VectorCounts":
        return VectorCounts(
            self.trials + other.trials,
            self.n_in + other.n_in,
            self.in_hits + other.in_hits,
            self.total_hits + other.total_hits,
            self.test_hits + other.test_hits,
        )

    def minus(self, other: "VectorCounts") -> "VectorCounts":
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
    buffer as one matrix product. Readers of ``h_in`` call ``flush`` first (``pairs_ready``).
    """

    n_train: int
    n_test: int
    row_start: int
    row_stop: int
    all: VectorCounts
    even: VectorCounts
    h_in: np.ndarray | None  # float32 (rows, n_test), None when pairs are not tracked
    batch_size: int = 64
    trial_ids: set[int] = field(default_factory=set)
    #: False: ``add`` never applies the buffer itself (it grows instead); the owner applies it with
    #: ``take_pending`` / ``drop_pending`` (the accumulator does it on a thread of its own).
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
    ) -> "Counts":
        """Return zero counts for training rows ``rows`` (default: all of them)."""
        start, stop = rows if rows is not None else (0, n_train)
        if not (0 <= start <= stop <= n_train):
            raise ValueError(f"row slice {start}:{stop} is outside 0:{n_train}")
        if batch_size < 1:
            raise RaymemError(f"batch size {batch_size} must be at least 1.")
        nrows = stop - start
        h_in = np.zeros((nrows, n_test), dtype=np.float32) if with_pairs else None
        return cls(
            n_train, n_test, start, stop,
            VectorCounts.zeros(nrows, n_test), VectorCounts.zeros(nrows, n_test),
            h_in, batch_size,
        )

    # ---- shape facts -------------------------------------------------------------------
    @property
    def rows(self) -> slice:
        return slice(self.row_start, self.row_stop)

    @property
    def trials(self) -> int:
        return self.all.trials

    @property
    def odd(self) -> VectorCounts:
        return self.all.minus(self.even)

    @property
    def pending(self) -> int:
        """Trials counted in the vectors whose pair update is still buffered."""
        return self._pending_count

    # ---- updates -----------------------------------------------------------------------
    def add(self, trial_id: int, mask: np.ndarray, train_correct: np.ndarray, test_correct: np.ndarray) -> bool:
        """Count one trial given full-width bool arrays; return False if its id was already counted."""
        trial_id = int(trial_id)
        if trial_id in self.trial_ids:
            return False
        mask = np.asarray(mask, dtype=bool)
        train_correct = np.asarray(train_correct, dtype=bool)
        test_correct = np.asarray(test_correct, dtype=bool)
        if mask.shape != (self.n_train,) or train_correct.shape != (self.n_train,) or test_correct.shape != (self.n_test,):
            raise RaymemError(
                f"trial {trial_id} has shapes mask {mask.shape}, train {train_correct.shape}, test {test_correct.shape} "
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
        if self.h_in is not None:
            if self._pending_masks is None:
                self._pending_masks = np.empty((self.batch_size, self.row_stop - self.row_start), dtype=np.float32)
                self._pending_test = np.empty((self.batch_size, self.n_test), dtype=np.float32)
            elif self._pending_count == len(self._pending_masks):  # only without auto_flush: grow the buffer
                self._pending_masks = np.concatenate([self._pending_masks, np.empty_like(self._pending_masks)])
                self._pending_test = np.concatenate([self._pending_test, np.empty_like(self._pending_test)])
            self._pending_masks[self._pending_count] = rows_mask
            self._pending_test[self._pending_count] = test_correct
            self._pending_count += 1
            if self.auto_flush and self._pending_count >= self.batch_size:
                self.flush()
        return True

    def add_many(self, trial_ids, masks, train_correct, test_correct) -> int:
        """Count a stack of trials (rows of each array); return how many were new."""
        return sum(
            self.add(k, m, c, d) for k, m, c, d in zip(trial_ids, masks, train_correct, test_correct)
        )

    def flush(self) -> None:
        """Apply buffered pair updates as one matrix product per row chunk."""
        count = self._pending_count
        if count == 0 or self.h_in is None:
            return
        add_outer_products(self.h_in, self._pending_masks[:count], self._pending_test[:count])
        self._pending_count = 0

    def take_pending(self) -> tuple[np.ndarray, np.ndarray]:
        """Return copies of the buffered (masks, test correctness) rows; the buffer keeps them until ``drop_pending``."""
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

    def pairs_ready(self) -> np.ndarray:
        """Flush, then return the pair matrix (raise if this Counts does not track pairs)."""
        if self.h_in is None:
            raise RaymemError("this run was counted without the pair matrix (influence); rebuild it with pairs enabled.")
        self.flush()
        return self.h_in

    # ---- combining ---------------------------------------------------------------------
    def merge(self, other: "Counts") -> "Counts":
        """Return the counts of the union of two disjoint sets of trials over the same rows."""
        if (self.n_train, self.n_test, self.row_start, self.row_stop) != (
            other.n_train, other.n_test, other.row_start, other.row_stop
        ):
            raise ValueError("merge needs counts over the same rows of the same run")
        overlap = self.trial_ids & other.trial_ids
        if overlap:
            raise ValueError(f"merge needs disjoint trials; both hold {sorted(overlap)[:5]}")
        h_in = None
        if self.h_in is not None and other.h_in is not None:
            h_in = self.pairs_ready() + other.pairs_ready()
        return Counts(
            self.n_train, self.n_test, self.row_start, self.row_stop,
            self.all.plus(other.all), self.even.plus(other.even), h_in, self.batch_size,
            self.trial_ids | other.trial_ids,
        )

    @staticmethod
    def concat_rows(parts: list["Counts"]) -> "Counts":
        """Join counts of the same trials over adjacent row slices into one (e.g. gathered shards)."""
        if not parts:
            raise ValueError("concat_rows needs at least one part")
        parts = sorted(parts, key=lambda c: (c.row_start, c.row_stop))  # an empty slice a:a goes before a:b
        first = parts[0]
        for a, b in zip(parts, parts[1:]):
            if a.row_stop != b.row_start:
                raise ValueError(f"row slices {a.row_start}:{a.row_stop} and {b.row_start}:{b.row_stop} are not adjacent")
            if a.trial_ids != b.trial_ids:
                raise ValueError("concat_rows needs slices that counted the same trials")

        def join(vs: list[VectorCounts]) -> VectorCounts:
            return VectorCounts(
                vs[0].trials,
                np.concatenate([v.n_in for v in vs]),
                np.concatenate([v.in_hits for v in vs]),
                np.concatenate([v.total_hits for v in vs]),
                vs[0].test_hits.copy(),
            )

        with_pairs = all(p.h_in is not None for p in parts)
        h_in = np.concatenate([p.pairs_ready() for p in parts]) if with_pairs else None
        return Counts(
            first.n_train, first.n_test, first.row_start, parts[-1].row_stop,
            join([p.all for p in parts]), join([p.even for p in parts]), h_in, first.batch_size,
            set(first.trial_ids),
        )


def add_outer_products(h_in: np.ndarray, masks: np.ndarray, correct: np.ndarray, chunk_rows: int = UPDATE_CHUNK_ROWS) -> None:
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
