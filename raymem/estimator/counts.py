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

from dataclasses import dataclass, field

import numpy as np

from raymem.errors import RaymemError

#: float32 holds every integer below this exactly; counts must stay under it.
MAX_EXACT_COUNT = 2**24
#: Rows of the pair matrix updated per matrix product (bounds the temporary to rows x n_test floats).
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
    _pending_masks: list = field(default_factory=list, repr=False)
    _pending_test: list = field(default_factory=list, repr=False)

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
        return len(self._pending_masks)

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
            self._pending_masks.append(rows_mask)
            self._pending_test.append(test_correct)
            if len(self._pending_masks) >= self.batch_size:
                self.flush()
        return True

    def add_many(self, trial_ids, masks, train_correct, test_correct) -> int:
        """Count a stack of trials (rows of each array); return how many were new."""
        return sum(
            self.add(k, m, c, d) for k, m, c, d in zip(trial_ids, masks, train_correct, test_correct)
        )

    def flush(self) -> None:
        """Apply buffered pair updates as one matrix product per row chunk."""
        if not self._pending_masks or self.h_in is None:
            return
        masks = np.stack(self._pending_masks).astype(np.float32)      # (B, rows)
        correct = np.stack(self._pending_test).astype(np.float32)     # (B, n_test)
        self._pending_masks.clear()
        self._pending_test.clear()
        add_outer_products(self.h_in, masks, correct)

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
        parts = sorted(parts, key=lambda c: c.row_start)
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
    """In place: h_in += masks.T @ correct, one row chunk at a time (bounded temporary memory)."""
    for start in range(0, h_in.shape[0], chunk_rows):
        stop = min(start + chunk_rows, h_in.shape[0])
        h_in[start:stop] += masks[:, start:stop].T @ correct
