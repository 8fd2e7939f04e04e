"""In-trial checkpoints: a trial's training state in the run's storage, so a retried attempt resumes.

A CIFAR-100 ResNet50 trial trains for hours, an ImageNet one for days; on spot nodes an attempt can
die at any epoch. With ``resources.checkpoint_every = E`` (an integer >= 1; None: off) a trial saves, every E epochs,
its model weights (BatchNorm statistics included), its optimizer's variables (momentum and the step
counter, which is the learning-rate schedule's position) and the number of epochs done, under
``RUN/checkpoints/trial-XXXXXXXX/`` through the run's :class:`RunStore` (local, ``s3://``, ``gs://``).

A checkpoint is two files, written in this order, each atomically: ``epoch-EEEEE.npz`` (the arrays;
NumPy's format, read back with ``allow_pickle=False``) and ``epoch-EEEEE.json`` (epochs done, the
npz's SHA-256 and size). Only a checkpoint whose manifest exists and whose arrays match it (checksum,
count and shapes of the model's and optimizer's variables) is used: any later attempt of the trial
resumes from the newest such one; a torn or unreadable one is skipped with a warning (kept in the
trial's metadata, ``checkpoint_warnings``), falling back to an older one or to epoch 0, never failing
the trial. The two newest checkpoints are kept while the trial trains. Once the accumulator has
acknowledged the trial's record the directory is deleted, unless ``resources.keep_models``: then the
final weights stay as ``final.npz`` (+ ``final.json``) beside nothing else.

What resuming does not restore: the order in which tf.data shuffles the remaining epochs (the
pipeline starts from its seed again), so a resumed trial's model differs from an uninterrupted one
the way two seeds differ; the trial's subset, labels and recipe are the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time

import numpy as np

from raymem.store.storage import RunStore

CHECKPOINTS_DIR = "checkpoints"
KEEP_NEWEST = 2
_EPOCH_FILE = re.compile(r"epoch-(\d{5,})\.json")


def trial_dir(trial_id: int) -> str:
    """``checkpoints/trial-00000042``: where trial ``trial_id`` keeps its checkpoints."""
    return f"{CHECKPOINTS_DIR}/trial-{int(trial_id):08d}"


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _optimizer_variables(model) -> list:
    optimizer = model.optimizer
    built = getattr(optimizer, "built", None)  # Keras 3; tf-keras (multi-node groups) marks it `_built`
    if built is False or (built is None and not getattr(optimizer, "_built", False)):
        optimizer.build(model.trainable_variables)
    return list(optimizer.variables)


def check_writable(store: RunStore) -> None:
    """Write and delete a probe file under ``checkpoints/``; raises what the storage raises."""
    probe = f"{CHECKPOINTS_DIR}/.probe-{int(time.time() * 1e6)}"
    store.write_bytes_atomic(probe, b"ok")
    store.delete(probe)


def for_trial(config, run: dict, trial_id: int, *, save: bool = True, agree=None) -> "TrialCheckpoints | None":
    """The checkpoints of trial ``trial_id`` of ``run`` (the dict the driver hands trials), or None when off.

    ``save`` and ``agree``: see :class:`TrialCheckpoints` (the workers of a multi-node group).
    """
    r = config.resources
    if not r.checkpoint_every and not r.keep_models:
        return None
    return TrialCheckpoints(RunStore.open(run["run_uri"]), trial_id, r.checkpoint_every or 0, config.recipe.epochs,
                            save=save, keep_final=r.keep_models, agree=agree)


def finish_quietly(checkpoints: "TrialCheckpoints | None") -> None:
    """``finish`` after the acknowledgement; a failed clean-up leaves files behind but never fails the trial."""
    if checkpoints is None:
        return
    try:
        checkpoints.finish(checkpoints.keep_final)
    except Exception:  # noqa: BLE001 - storage hiccup: the next run's attempt of this trial never comes
        pass


class TrialCheckpoints:
    """Checkpoints of one trial in one run's storage; see the module docstring.

    The workers of a multi-node group (several processes training one model) must all resume from the same
    epoch: ``agree`` is then a broadcast from rank 0 (``ray.train.collective.broadcast_from_rank_zero``).
    Rank 0 (``save=True``) picks the newest usable checkpoint as a single worker does, loads it and sends
    its epoch; the others (``save=False``) receive that epoch and load exactly that checkpoint (failing the
    attempt, which is retried, if they cannot), so no worker starts from another epoch than the group's.
    """

    def __init__(self, store: RunStore, trial_id: int, every: int, epochs: int, *, save: bool = True,
                 keep_final: bool = False, agree=None):
        self.store, self.trial_id, self.every, self.epochs = store, int(trial_id), int(every), int(epochs)
        self.keep_final = keep_final
        self.agree = agree
        self.dir = trial_dir(trial_id)
        self.save_enabled = save  # False on the non-zero ranks of a worker group: they restore, rank 0 saves
        self.warnings: list[str] = []
        self.resumed_from_epoch = 0
        self.saved: list[int] = []

    # ---- resuming ------------------------------------------------------------------------
    def available(self) -> list[int]:
        """Epochs of the checkpoints whose manifest exists, newest first."""
        names = self.store.list(self.dir, ".json")
        return sorted((int(m.group(1)) for m in map(_EPOCH_FILE.fullmatch, names) if m), reverse=True)

    def restore(self, model) -> int:
        """Load the newest complete checkpoint into ``model`` (compiled); return the epochs it had done (0: none).

        With ``agree``: the group's epoch (rank 0's choice), see the class docstring.
        """
        if self.agree is not None:
            # every worker creates its optimizer's variables before anything else: under a multi-worker strategy
            # creating a variable is a collective step, so a worker doing it alone would wait forever
            _optimizer_variables(model)
        if self.agree is not None and not self.save_enabled:   # a follower of a group: rank 0 decides
            epoch = int(self.agree(0))
            if epoch:
                self._load(model, epoch)
            self.resumed_from_epoch = epoch
            return epoch
        epoch = self._restore_newest(model)
        if self.agree is not None:
            self.agree(epoch)
        return epoch

    def _restore_newest(self, model) -> int:
        for epoch in self.available():
            try:
                self._load(model, epoch)
            except Exception as exc:  # torn, truncated, mismatched: never fatal, fall back to an older one
                self.warnings.append(f"checkpoint at epoch {epoch} of trial {self.trial_id} skipped "
                                     f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")
                continue
            self.resumed_from_epoch = epoch
            return epoch
        return 0

    def _load(self, model, epoch: int) -> None:
        stem = f"{self.dir}/epoch-{epoch:05d}"
        manifest = json.loads(self.store.read_bytes(stem + ".json"))
        data = self.store.read_bytes(stem + ".npz")
        if len(data) != manifest["bytes"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
            raise ValueError("its arrays do not match its manifest (size or checksum)")
        if int(manifest["epoch"]) != epoch or int(manifest["trial_id"]) != self.trial_id:
            raise ValueError("its manifest names another epoch or trial")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            weights = [npz[f"w{i}"] for i in range(int(manifest["weights"]))]
            slots = [npz[f"o{i}"] for i in range(int(manifest["optimizer"]))]
        current = model.get_weights()
        variables = _optimizer_variables(model)
        if [w.shape for w in weights] != [w.shape for w in current]:
            raise ValueError("its weights do not fit this model")
        if [tuple(s.shape) for s in slots] != [tuple(v.shape) for v in variables]:
            raise ValueError("its optimizer state does not fit this optimizer")
        model.set_weights(weights)
        for variable, value in zip(variables, slots):
            variable.assign(value)

    # ---- saving --------------------------------------------------------------------------
    def save(self, model, epochs_done: int) -> None:
        """Write the checkpoint after ``epochs_done`` epochs (arrays, then manifest); keep the newest two."""
        if not self.save_enabled:
            return
        weights = model.get_weights()
        slots = [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in _optimizer_variables(model)]
        arrays = {**{f"w{i}": w for i, w in enumerate(weights)}, **{f"o{i}": s for i, s in enumerate(slots)}}
        data = _npz_bytes(arrays)
        stem = f"{self.dir}/epoch-{epochs_done:05d}"
        self.store.write_bytes_atomic(stem + ".npz", data)
        manifest = {"trial_id": self.trial_id, "epoch": int(epochs_done), "weights": len(weights),
                    "optimizer": len(slots), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                    "saved": time.time()}
        self.store.write_bytes_atomic(stem + ".json", json.dumps(manifest).encode())
        self.saved.append(int(epochs_done))
        for old in self.available()[KEEP_NEWEST:]:
            self._delete_epoch(old)

    def save_final(self, model) -> None:
        """Keep the trained model's weights as ``final.npz`` (``--keep-models``)."""
        weights = model.get_weights()
        data = _npz_bytes({f"w{i}": w for i, w in enumerate(weights)})
        self.store.write_bytes_atomic(f"{self.dir}/final.npz", data)
        self.store.write_bytes_atomic(f"{self.dir}/final.json", json.dumps({
            "trial_id": self.trial_id, "epoch": self.epochs, "weights": len(weights), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}).encode())

    def _delete_epoch(self, epoch: int) -> None:
        stem = f"{self.dir}/epoch-{epoch:05d}"
        self.store.delete(stem + ".json")  # manifest first: a half-deleted checkpoint is never "complete"
        self.store.delete(stem + ".npz")

    def finish(self, keep_final: bool) -> None:
        """After the record was acknowledged: delete the epoch checkpoints (and all of it unless ``keep_final``)."""
        for epoch in self.available():
            self._delete_epoch(epoch)
        if not keep_final:
            self.store.delete_dir(self.dir)

    def callback(self, model):
        """A Keras callback that saves every ``every`` epochs (not after the last one: the trial ends there)."""
        from raymem.training.keras_backend import keras

        owner = self

        class _Save(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                done = epoch + 1
                if owner.every > 0 and done % owner.every == 0 and done < owner.epochs:
                    owner.save(model, done)

        return _Save()
