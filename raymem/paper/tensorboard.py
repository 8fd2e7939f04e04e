"""TensorBoard event files of a run under ``RUN/tensorboard/``: its convergence as scalars, its models' test accuracy
as a histogram, one step per update (step = trials counted).

The numbers are those of ``raymem status`` (:meth:`RunView.status`, the one reader) at that trial count, with pairs
left out (an FDR count per update would cost a pairs read each time): the median and max memorization half-width,
the certified count, the split-half Jaccard at the paper's threshold. Beside them, from the trials' own records:
trials per hour (over the last :data:`RATE_WINDOW` finish times, as the accumulator's progress) and the mean test
accuracy (``figures.mean_test_accuracy``: sum of T_j over trials x test examples, the mean of per-trial accuracies).

One process writes a run's events: the driver as trials land (:class:`LiveEvents`, at most one update every
:data:`MIN_SECONDS`), or ``raymem tensorboard RUN`` replaying the log of a run no driver holds (:func:`replay`,
which replaces what was there, so TensorBoard never shows two histories of one run).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from raymem.errors import RaymemError
from raymem.estimator import formulas
from raymem.estimator.bars import Bars
from raymem.estimator.log_replay import empty_counts, flipped_labels
from raymem.estimator.report import StatusQuestions
from raymem.estimator.run_view import RunView
from raymem.store.run_info import read_run_info
from raymem.store.storage import RunStore

__all__ = ["TENSORBOARD_DIR", "DEFAULT_EVERY", "MIN_SECONDS", "RATE_WINDOW", "SCALAR_TAGS", "QUESTIONS",
           "HISTOGRAM_TAG", "IMAGE_TAG", "IMAGE_EVERY", "memorized_grid", "update_scalars", "trials_per_hour",
           "histogram_buckets", "logdir_of", "EventWriter", "replay", "LiveEvents"]

TENSORBOARD_DIR = "tensorboard"
#: Trials per update when a log is replayed.
DEFAULT_EVERY = 10
#: A live run writes at most one update per this many seconds (and one at the end).
MIN_SECONDS = 5.0
#: Finish times the throughput is measured over (the accumulator's window).
RATE_WINDOW = 50
#: What a status read per update answers: the widths and split halves, no pairs.
QUESTIONS = StatusQuestions(pairs_fdr=None)
SCALAR_TAGS = ("mem/median_halfwidth", "mem/max_halfwidth", "mem/certified", "split_half/jaccard",
               "trials_per_hour", "test_accuracy/mean")
HISTOGRAM_TAG = "test_accuracy/per_trial"
HISTOGRAM_BINS = 30
IMAGE_TAG = "memorized/top_examples"
#: The memorized-examples grid is written every this many updates (and at the last): images are large.
IMAGE_EVERY = 10
#: Examples in the grid (the most memorized by estimate, ties by index), in rows of :data:`GRID_COLUMNS`.
GRID_EXAMPLES, GRID_COLUMNS = 16, 4


def trials_per_hour(finished: Sequence[float]) -> float | None:
    """Trials per hour over the last :data:`RATE_WINDOW` finish times (unix seconds); None with fewer than two."""
    times = sorted(float(t) for t in finished if t is not None)[-RATE_WINDOW:]
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0]) * 3600.0


def update_scalars(status: dict, accuracies: Sequence[float], finished: Sequence[float]) -> dict[str, float]:
    """The scalars of one update: from ``status`` (a status dict of the run at that trial count) and the per-trial
    test accuracies and finish times of the trials it counts. A value the run cannot give (a NaN, no finish times
    in an ingested log) is left out."""
    mem = status["mem"]
    split = status["split_half"]["mem"][f"{formulas.PAPER_MIN_MEM:g}"]
    values = {
        "mem/median_halfwidth": mem["median_halfwidth"],
        "mem/max_halfwidth": mem["max_halfwidth"],
        "mem/certified": mem["certified"],
        "split_half/jaccard": split.get("jaccard"),
        "trials_per_hour": trials_per_hour(finished),
        "test_accuracy/mean": float(np.mean(accuracies)) if len(accuracies) else None,
    }
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


def logdir_of(store: RunStore) -> str:
    """``RUN/tensorboard`` as a path TensorFlow writes to: local run directories (and gs://) only."""
    if store.uri.startswith("gs://"):
        return store.location(TENSORBOARD_DIR)
    if "://" in store.uri:
        raise RaymemError(f"{store.uri} is not a local or gs:// run directory, and TensorFlow writes event files "
                          "there only; replay a local copy of the run.")
    return store.path(TENSORBOARD_DIR)


def _tensorflow():
    """TensorFlow on the CPU: a driver on a GPU head node must not take the GPUs its trials use."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # already initialized in this process: its devices stay as they are
        pass
    return tf


def _plugin_metadata(plugin: str, data_class: int):
    """What TensorBoard's ``scalars`` / ``histograms`` plugins read a summary by (their version-0 metadata)."""
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin),
                                       data_class=data_class)


def histogram_buckets(values: Sequence[float], bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """(bins, 3) of (left edge, right edge, count): the tensor TensorBoard's histograms plugin draws."""
    values = np.asarray(values, np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:  # one value: one bucket around it
        return np.array([[low - 0.5e-3, high + 0.5e-3, float(values.size)]])
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


def _unit(image: np.ndarray) -> np.ndarray:
    """One image in [0, 1], RGB, scaled as ``raymem figures`` shows it (uint8 as is, other inputs stretched)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.dtype == np.uint8:
        a = a.astype(np.float64) / 255.0
    else:
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:  # normalised inputs: stretch this image to [0, 1]
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a[..., :3]


def memorized_grid(images: np.ndarray, mem: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): the :data:`GRID_EXAMPLES` training examples of highest estimated memorization, tiled
    :data:`GRID_COLUMNS` a row with a one-pixel white gap (NaN estimates last)."""
    mem = np.where(np.isnan(mem), -np.inf, np.asarray(mem, np.float64))
    chosen = np.lexsort((np.arange(mem.size), -mem))[:GRID_EXAMPLES]
    tiles = [_unit(images[i]) for i in chosen]
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // GRID_COLUMNS)
    grid = np.ones((rows * (h + 1) - 1, GRID_COLUMNS * (w + 1) - 1, 3))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, GRID_COLUMNS)
        grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tile
    return np.round(grid * 255).astype(np.uint8)


class EventWriter:
    """One event file of a run's TensorBoard directory (one writer per process, so none other writes it).

    Summaries go through ``tf.summary.write`` with the plugins' metadata rather than ``tf.summary.scalar``, which
    needs the ``tensorboard`` package installed where the driver runs (TensorFlow 2.21 no longer brings it).
    """

    def __init__(self, logdir: str):
        from tensorflow.core.framework import summary_pb2

        self.tf = _tensorflow()
        self.writer = self.tf.summary.create_file_writer(logdir)
        self.scalar_metadata = _plugin_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
        self.histogram_metadata = _plugin_metadata("histograms", summary_pb2.DATA_CLASS_TENSOR)
        self.image_metadata = _plugin_metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)
        self.steps: list[int] = []

    def write(self, step: int, scalars: dict[str, float], accuracies: Sequence[float]) -> None:
        tf = self.tf
        with tf.device("/cpu:0"), self.writer.as_default(step=int(step)):
            for tag, value in scalars.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), metadata=self.scalar_metadata)
            if len(accuracies):
                tf.summary.write(HISTOGRAM_TAG, tf.constant(histogram_buckets(accuracies), tf.float64),
                                 metadata=self.histogram_metadata)
        self.writer.flush()
        self.steps.append(int(step))

    def write_image(self, step: int, grid: np.ndarray) -> None:
        """An RGB uint8 image, as TensorBoard's images plugin reads it: [width, height, PNG bytes]."""
        tf = self.tf
        with tf.device("/cpu:0"), self.writer.as_default(step=int(step)):
            png = tf.io.encode_png(tf.constant(grid))
            tensor = tf.stack([tf.constant(str(grid.shape[1])), tf.constant(str(grid.shape[0])), png])
            tf.summary.write(IMAGE_TAG, tensor, metadata=self.image_metadata)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _record_accuracy(record) -> float:
    """A trial's test accuracy: what its model recorded (``raymem trials``), else the share of test examples its
    record marks correct (the same number; ingested trials record none)."""
    recorded = record.metadata.get("test_accuracy")
    return float(recorded) if recorded is not None else float(np.mean(record.test_correct))


def replay(store: RunStore, *, every: int = DEFAULT_EVERY, bars: Bars | None = None,
           records: Iterable | None = None, images: np.ndarray | None = None) -> dict:
    """Write ``RUN/tensorboard/`` from the trial log: one update every ``every`` trials and one at the last,
    replacing the events there. The caller makes sure no driver writes them (``Run.tensorboard`` does).
    ``images`` (the training images, where the run has them) adds the memorized-examples grid every
    :data:`IMAGE_EVERY` updates and at the last.

    Returns:
        ``{"logdir", "steps": [trial counts written], "tags": [scalar tags]}``.
    """
    from raymem.store.trial_log import iter_trials, trial_ids

    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise RaymemError(f"every {every!r} must be a whole number of trials >= 1.", parameter="every")
    info = read_run_info(store)
    logdir = logdir_of(store)
    counts = empty_counts(store, info, with_pairs=False)
    view = RunView(info, counts, flipped_labels(store), source="log")
    bars = bars or view.bars()
    total = len(trial_ids(store))
    store.delete_dir(TENSORBOARD_DIR)  # a replay is the whole history: an older one would show beside it
    writer = EventWriter(logdir)
    accuracies, finished = [], []
    try:
        for record in records if records is not None else iter_trials(store, info=info):
            if record.run_id != info.run_id:
                raise RaymemError(f"{store.uri}/trials holds trial {record.trial_id} of another run "
                                  f"({record.run_id}); remove that file.")
            if not counts.add(record.trial_id, record.mask, record.train_correct, record.test_correct):
                continue
            accuracies.append(_record_accuracy(record))
            finished.append(record.metadata.get("finished"))
            if counts.trials % every == 0 or counts.trials == total:
                status = view.status(bars, QUESTIONS)
                writer.write(counts.trials, update_scalars(status, accuracies, finished), accuracies)
                if images is not None and (len(writer.steps) % IMAGE_EVERY == 1 or counts.trials == total):
                    writer.write_image(counts.trials, memorized_grid(images, counts.all.memorization()))
    finally:
        writer.close()
    return {"logdir": logdir, "steps": writer.steps, "tags": list(SCALAR_TAGS)}


class LiveEvents:
    """The driver's writer: told which trials landed, it writes an update (a status read of the live counts) at
    most every ``min_seconds``, and the last one on :meth:`close`.

    Args:
        store: the run directory.
        read_status: a status read of the live counts with :data:`QUESTIONS` (the accumulator's).
        min_seconds: the least time between two updates.
        images, read_mem: the training images and a read of the live memorization estimates: with both, the
            memorized-examples grid every :data:`IMAGE_EVERY` updates and at the last.
    """

    def __init__(self, store: RunStore, read_status: Callable[[], dict], *, min_seconds: float = MIN_SECONDS,
                 clock: Callable[[], float] = time.monotonic, images: np.ndarray | None = None,
                 read_mem: Callable[[], np.ndarray] | None = None):
        from raymem.store.trial_metadata import trial_table

        self.store, self.read_status, self.min_seconds, self.clock = store, read_status, min_seconds, clock
        self.images, self.read_mem = images, read_mem
        self.logdir = logdir_of(store)
        table = trial_table(store)  # the trials counted before this driver started (metadata only)
        self.accuracies = [a for a in table.column("test_accuracy").to_pylist() if a is not None]
        self.finished = [t.timestamp() for t in table.column("finished").to_pylist() if t is not None]
        self.writer: EventWriter | None = None
        self.last = -math.inf
        self.pending = False

    def landed(self, trial_ids: Iterable[int]) -> None:
        """Trials ``trial_ids`` were counted: note their accuracy and finish time, and write if it is time."""
        from raymem.store.trial_metadata import trial_metadata

        for k in trial_ids:
            metadata = trial_metadata(self.store, int(k)) or {}
            if metadata.get("test_accuracy") is not None:
                self.accuracies.append(float(metadata["test_accuracy"]))
            if metadata.get("finished") is not None:
                self.finished.append(float(metadata["finished"]))
            self.pending = True
        if self.pending and self.clock() - self.last >= self.min_seconds:
            self._write()

    def _write(self, last: bool = False) -> None:
        status = self.read_status()
        if self.writer is None:
            self.writer = EventWriter(self.logdir)
        self.writer.write(status["trials_done"], update_scalars(status, self.accuracies, self.finished),
                          self.accuracies)
        if self.images is not None and self.read_mem is not None and (last or len(self.writer.steps) % IMAGE_EVERY
                                                                      == 1):
            self.writer.write_image(status["trials_done"], memorized_grid(self.images, self.read_mem()))
        self.last, self.pending = self.clock(), False

    def close(self) -> None:
        """Write what landed since the last update, and close the event file."""
        if self.pending:
            self._write(last=True)
        if self.writer is not None:
            self.writer.close()
