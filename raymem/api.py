"""raymem's library API: what the CLI calls, and what a notebook can call too.

A *run* is named either by a directory / URI (``runs/demo``, ``s3://bucket/runs/demo``) or by a
name under a storage root (``demo`` with ``storage="runs"``; the default root is
``$RAYMEM_STORAGE`` or ``./runs``). Readers ask the run's live accumulator actor when a Ray
cluster holding it is reachable, and otherwise rebuild the same counts from the trial log.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from raymem.errors import RaymemError
from raymem.estimator import formulas, report
from raymem.estimator.counts import Counts
from raymem.estimator.records import TrialRecord
from raymem.estimator.run_files import RunInfo, new_run_info, read_labels, read_run_info, write_labels, write_run_info
from raymem.estimator.storage import RunStore, run_location, validate_run_name
from raymem.estimator.trial_log import iter_trials, write_trial
from raymem.estimator.view import RunView

STORAGE_ENV = "RAYMEM_STORAGE"
DEFAULT_STORAGE = "runs"


def default_storage() -> str:
    return os.environ.get(STORAGE_ENV, DEFAULT_STORAGE)


def run_uri(run: str, storage: str | None = None) -> str:
    """Return the run directory of ``run``: itself if it is a path or URI, else ``storage/run``."""
    if "://" in run or "/" in run or os.sep in run or run in (".", "..") or Path(run).is_dir():
        return run
    return run_location(storage or default_storage(), validate_run_name(run))


def open_store(run: str, storage: str | None = None) -> RunStore:
    return RunStore.open(run_uri(run, storage))


# ---- ingest ------------------------------------------------------------------------------

def load_bool_npy(path: str | Path, what: str) -> np.ndarray:
    """Load a 2-D boolean .npy file without pickle; RaymemError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "does not exist"
        raise RaymemError(f"{what} file {path} {problem}; pass the path of a .npy file.")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RaymemError(f"{what} file {path} is not a plain .npy array ({reason}); save it with numpy.save from a bool array.") from None
    except OSError as exc:
        raise RaymemError(f"{what} file {path} could not be read as .npy ({exc}); save it with numpy.save.") from None
    if not isinstance(array, np.ndarray):  # an .npz archive loads as an open NpzFile
        getattr(array, "close", lambda: None)()
        raise RaymemError(f"{what} file {path} is an .npz archive, not a .npy array; save one array with numpy.save.")
    if array.dtype != np.bool_:
        raise RaymemError(f"{what} file {path} holds dtype {array.dtype}, not bool; save it with array.astype(bool).")
    if array.ndim != 2:
        raise RaymemError(f"{what} file {path} has shape {array.shape}; it must be 2-D (trials, examples).")
    return array


def ingest(
    run_dir: str,
    masks: np.ndarray,
    train_correct: np.ndarray,
    test_correct: np.ndarray,
    *,
    name: str | None = None,
    train_labels: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
) -> RunInfo:
    """Make a run from external results: bool arrays (t, n), (t, n) and (t, n_test), one row per trial.

    Everything is validated before anything is written; the run directory must not hold a run yet.
    """
    for what, a in (("masks", masks), ("train-correct", train_correct), ("test-correct", test_correct)):
        if a.dtype != np.bool_ or a.ndim != 2:
            raise RaymemError(f"--{what} must be a 2-D bool array, got {a.dtype} with shape {a.shape}.")
    t, n = masks.shape
    if train_correct.shape != (t, n):
        raise RaymemError(
            f"--train-correct has shape {train_correct.shape} but --masks has {masks.shape}; both must be (trials, n_train)."
        )
    if test_correct.shape[0] != t:
        raise RaymemError(
            f"--test-correct has {test_correct.shape[0]} trials but --masks has {t}; every file needs one row per trial."
        )
    if t == 0 or n == 0 or test_correct.shape[1] == 0:
        raise RaymemError("the ingested arrays are empty; pass at least one trial, one training and one test example.")
    store = RunStore.open(run_dir)
    if store.exists("run.json"):
        raise RaymemError(f"{store.uri} already holds a run; pick a new directory for the ingested results.")
    sizes = masks.sum(axis=1)
    info = new_run_info(
        name=name or Path(run_dir.rstrip("/")).name or "ingested",
        n_train=n,
        n_test=int(test_correct.shape[1]),
        subset_size=int(round(float(sizes.mean()))),
        seed=0,
        config={"trials": t, "subset_ratio": float(sizes.mean() / n)},
        fingerprint={},
        source="ingest",
    )
    write_run_info(store, info)
    if train_labels is not None and test_labels is not None:
        write_labels(store, train_labels, test_labels)
    for k in range(t):
        write_trial(store, TrialRecord(
            run_id=info.run_id, trial_id=k, seed=0,
            mask=masks[k], train_correct=train_correct[k], test_correct=test_correct[k],
            metadata={"source": "ingest"},
        ))
    return info


# ---- reading -----------------------------------------------------------------------------

def counts_from_log(store: RunStore, info: RunInfo, *, with_pairs: bool = True, rows=None, batch_size: int = 256) -> Counts:
    """Recompute the counts from the trial log (the source of truth)."""
    counts = Counts.empty(info.n_train, info.n_test, rows=rows, with_pairs=with_pairs, batch_size=batch_size)
    for record in iter_trials(store):
        if record.run_id != info.run_id:
            raise RaymemError(
                f"{store.uri}/trials holds trial {record.trial_id} of another run ({record.run_id}); remove that file."
            )
        counts.add(record.trial_id, record.mask, record.train_correct, record.test_correct)
    counts.flush()
    return counts


def flipped_labels(store: RunStore) -> np.ndarray | None:
    """Bool mask of training examples whose label was flipped (canaries), or None."""
    labels = read_labels(store)
    if labels is None:
        return None
    train, _test, original = labels
    flipped = train != original
    return flipped if flipped.any() else None


def offline_view(store: RunStore, *, with_pairs: bool = True) -> RunView:
    info = read_run_info(store)
    return RunView(info, counts_from_log(store, info, with_pairs=with_pairs), flipped_labels(store), source="log")


class LiveOrLog:
    """Answers from the run's live accumulator when reachable, else from the trial log."""

    def __init__(self, run: str, storage: str | None = None, address: str | None = None, with_pairs: bool = True):
        self.store = open_store(run, storage)
        self.info = read_run_info(self.store)
        self.actor = _find_live_accumulator(self.store, self.info, address)
        self._view = None if self.actor is not None else offline_view(self.store, with_pairs=with_pairs)

    def call(self, method: str, **kwargs):
        if self.actor is not None:
            import ray

            return ray.get(getattr(self.actor, method).remote(**kwargs))
        return getattr(self._view, method)(**kwargs)


def _find_live_accumulator(store: RunStore, info: RunInfo, address: str | None):
    """Return the run's accumulator handle if a reachable cluster holds it, else None."""
    from raymem.runner.cluster_connect import keep_on_loopback, read_live_address

    address = address or os.environ.get("RAY_ADDRESS") or read_live_address(store)
    if not address:
        return None
    if address.startswith("127.0.0.1:"):
        keep_on_loopback()
    from raymem.actors.accumulator import find_accumulator

    return find_accumulator(info, address)


def estimates(run: str, *, storage=None, address=None, delta: float = report.DEFAULT_DELTA, simultaneous: bool = False) -> pa.Table:
    """One row per training example: mem, its interval, and its counts."""
    return LiveOrLog(run, storage, address, with_pairs=False).call("mem_table", delta=delta, simultaneous=simultaneous)


def pairs(
    run: str, *, storage=None, address=None,
    min_infl: float = formulas.PAPER_MIN_INFL, min_mem: float = formulas.PAPER_MIN_MEM,
    delta: float = report.DEFAULT_DELTA, simultaneous: bool = False,
) -> pa.Table:
    """High-influence pairs with their intervals."""
    return LiveOrLog(run, storage, address).call(
        "pairs_table", min_infl=min_infl, min_mem=min_mem, delta=delta, simultaneous=simultaneous
    )


def influence(run: str, test_index: int, *, storage=None, address=None, top: int = 10,
              delta: float = report.DEFAULT_DELTA, simultaneous: bool = False) -> pa.Table:
    """The top influencers of one test example."""
    return LiveOrLog(run, storage, address).call(
        "influence_table", test_index=test_index, top=top, delta=delta, simultaneous=simultaneous
    )


def status(run: str, *, storage=None, address=None, delta: float = report.DEFAULT_DELTA, simultaneous: bool = False,
           target_halfwidth: float = report.DEFAULT_TARGET_HALFWIDTH) -> dict:
    """Trials counted and the convergence summary."""
    return LiveOrLog(run, storage, address, with_pairs=False).call(
        "status", delta=delta, simultaneous=simultaneous, target_halfwidth=target_halfwidth
    )


def compare(run: str, other: str, *, storage=None, min_infl: float = formulas.PAPER_MIN_INFL,
            min_mem: float = formulas.PAPER_MIN_MEM):
    """Compare a run with another run (a pyarrow table of consistency curves, supplement Fig. C.2)
    or with released pairs in the paper's .npz layout (a dict). Both are read from their trial logs."""
    from raymem.estimator import compare as comparing

    counts = offline_view(open_store(run, storage)).counts
    if other.endswith(".npz"):
        released = comparing.load_pairs_npz(other)
        return comparing.compare_with_released(counts, released, min_infl=min_infl, min_mem=min_mem, source=other)
    other_counts = offline_view(open_store(other, storage)).counts
    return comparing.compare_runs(counts, other_counts, min_mem=min_mem)


def stop(run: str, *, storage=None, address=None) -> bool:
    """Stop the run's live accumulator (its counts can always be rebuilt from the log). True if one was stopped."""
    store = open_store(run, storage)
    info = read_run_info(store)
    actor = _find_live_accumulator(store, info, address)
    if actor is None:
        return False
    import ray

    ray.get(actor.stop_shards.remote())  # detached pair shards would outlive their accumulator
    ray.kill(actor, no_restart=True)
    return True
