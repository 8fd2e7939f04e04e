"""Counts shared by the threads of an actor: absorbs never wait for a read, reads see a consistent state.

The accumulator (and each pair shard) runs as a threaded Ray actor (``max_concurrency``): a ``pairs``
read at the CIFAR-100 shape takes seconds, and every finished trial waiting behind it would hold its
GPU. :class:`LiveCounts` wraps the actor's :class:`Counts` so that:

- **absorbs** only take the lock for the O(n) vector update and the copy of the trial into the pair
  buffer (``Counts.add`` with ``auto_flush`` off); they never apply the pair update themselves;
- a **flusher thread** applies the buffer to the pair matrix (one matrix product of the buffered
  trials) when ``batch_size`` trials wait, outside the lock, and only while no read holds the matrix;
- a **read** takes a snapshot under the lock: copies of the vectors and the trial ids (O(n)), and for
  pair reads the live pair matrix *pinned*: the read first applies whatever is buffered (so the matrix
  holds exactly the snapshot's trials), then the flusher leaves the matrix alone until the read ends.
  Trials absorbed meanwhile are counted in the vectors and wait in the buffer; the snapshot is the
  state after some prefix of the absorbs, never a mix.

Lock order and invariants (all under ``_cond``'s lock): the pair matrix changes only while
``_flushing`` is True, which is set only when ``_pins == 0``; ``_pins`` rises only when
``_flushing`` is False and the buffer is empty. So a pinned matrix is stable and equals the counts
of the snapshot's trials.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from raymem.estimator.counts import Counts, VectorCounts

#: Rows of the pair matrix per product in the flusher: a (rows x n_test) float32 buffer reused for every
#: chunk (CIFAR-100: 20 MB), small enough that no chunk allocates fresh pages.
FLUSH_CHUNK_ROWS = 512


def add_outer_products_gil_free(h_in: np.ndarray, masks: np.ndarray, correct: np.ndarray,
                                chunk_rows: int = FLUSH_CHUNK_ROWS) -> None:
    """In place: h_in += masks.T @ correct, chunk by chunk with numpy, which releases the GIL in both the
    product and the addition (SciPy's in-place sgemm, ``counts.add_outer_products``, holds the GIL for the
    whole product: a CIFAR-100 flush would stop every other thread of the actor for about a second)."""
    if not len(masks) or not h_in.size:
        return
    buffer = np.empty((min(chunk_rows, h_in.shape[0]), h_in.shape[1]), dtype=np.float32)
    masks_t = np.ascontiguousarray(np.asarray(masks, dtype=np.float32).T)  # (rows, B)
    correct = np.asarray(correct, dtype=np.float32)
    for start in range(0, h_in.shape[0], chunk_rows):
        stop = min(start + chunk_rows, h_in.shape[0])
        out = buffer[: stop - start]
        np.matmul(masks_t[start:stop], correct, out=out)
        np.add(h_in[start:stop], out, out=h_in[start:stop])


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(1)


def _copy_vectors(v: VectorCounts) -> VectorCounts:
    return VectorCounts(v.trials, v.n_in.copy(), v.in_hits.copy(), v.total_hits.copy(), v.test_hits.copy())


class LiveCounts:
    """Thread-safe front of one :class:`Counts`; see the module docstring."""

    def __init__(self, counts: Counts, *, background_flush: bool = True):
        self.counts = counts
        # Full scope: the big matrix is updated on a thread of its own. Class scope: the blocks are small
        # (ImageNet: 256 MB in all) and each absorb updates them in place as Counts always does.
        counts.auto_flush = counts.layout is not None
        self._cond = threading.Condition()
        self._pins = 0
        self._flushing = False
        self._closed = False
        self.flushes = 0
        self._flusher = None
        if counts.h_in is not None and background_flush:
            self._flusher = threading.Thread(target=self._flush_loop, name="raymem-pair-flusher", daemon=True)
            self._flusher.start()

    # ---- writes --------------------------------------------------------------------------
    def add(self, trial_id: int, mask, train_correct, test_correct) -> bool:
        """Count a trial (idempotent by id); return True when it was new."""
        with self._cond:
            added = self.counts.add(trial_id, mask, train_correct, test_correct)
            if added and self.counts.pending >= self.counts.batch_size:
                self._cond.notify_all()
            return added

    def __contains__(self, trial_id: int) -> bool:
        with self._cond:
            return int(trial_id) in self.counts.trial_ids

    @property
    def trials(self) -> int:
        with self._cond:
            return self.counts.trials

    @property
    def pending(self) -> int:
        with self._cond:
            return self.counts.pending

    def trial_ids(self) -> set[int]:
        with self._cond:
            return set(self.counts.trial_ids)

    def flush(self) -> int:
        """Apply every buffered pair update now (waiting for a flush in progress); return the trials counted."""
        with self._cond:
            self._drain_locked()
            return self.counts.trials

    # ---- reads ---------------------------------------------------------------------------
    @contextmanager
    def snapshot(self, pairs: bool = False):
        """Yield a consistent ``Counts`` copy; with ``pairs`` it shares the live pair matrix, pinned until exit."""
        pinned = pairs and self.counts.h_in is not None
        with self._cond:
            if pinned:
                self._drain_locked()
                self._pins += 1
            c = self.counts
            blocks = None
            if pairs and c.pair_storage is not None:  # class scope: a copy of the (small) blocks
                c.flush()
                blocks = c.pair_storage.copy()
            snap = Counts(c.n_train, c.n_test, c.row_start, c.row_stop, _copy_vectors(c.all), _copy_vectors(c.even),
                          c.h_in if pinned else None, c.batch_size, set(c.trial_ids), layout=c.layout,
                          pair_storage=blocks)
        try:
            yield snap
        finally:
            if pinned:
                with self._cond:
                    self._pins -= 1
                    self._cond.notify_all()

    def close(self) -> None:
        """Stop the flusher thread (buffered updates stay buffered; ``flush`` still applies them)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---- the pair matrix update ----------------------------------------------------------
    def _drain_locked(self) -> None:
        """With the lock held: wait for a running flush, then apply the buffer until it is empty."""
        while self._flushing or self.counts.pending:
            if self._flushing or self._pins:
                self._cond.wait()
            else:
                self._apply_locked()

    def _apply_locked(self) -> None:
        """With the lock held, no pin and no flush running: apply the buffered rows, outside the lock."""
        masks, tests = self.counts.take_pending()
        self._flushing = True
        self._cond.release()
        try:
            with _one_blas_thread():  # leave the other cores to absorbs and reads
                add_outer_products_gil_free(self.counts.h_in, masks, tests)
        finally:
            self._cond.acquire()
            self._flushing = False
            self._cond.notify_all()
        self.counts.drop_pending(len(masks))  # only after the product succeeded: a failure keeps them buffered
        self.flushes += 1

    def _flush_loop(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._pins and not self._flushing and self.counts.pending >= self.counts.batch_size:
                    try:
                        self._apply_locked()
                    except Exception:  # e.g. MemoryError: the rows stay buffered; reads apply them (and raise)
                        self._cond.wait(timeout=5.0)
                else:
                    self._cond.wait(timeout=1.0)
