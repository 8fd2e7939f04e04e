"""Waiting out a full storage: a trial whose result could not be written is trained again once space is back.

The accumulator writes each trial's file before it acknowledges the trial; on a full storage the write fails
(``StorageFull``, nothing half-written), the trial is not counted, and its task fails. The driver must neither
spend one of the trial's ``max_attempts`` on that (the trial did nothing wrong) nor keep training trials whose
results cannot be kept: it says which storage is full and probes it until a write succeeds, then goes on.
"""

from __future__ import annotations

import time
from typing import Callable

from raymem.store.storage import RunStore, StorageFull

__all__ = ["PROBE_FILE", "SpaceWaiter", "innermost_cause", "storage_full_cause"]

#: The file a probe writes (and deletes) in the run directory to see whether the storage has space again.
PROBE_FILE = ".raymem-space-probe"


def innermost_cause(exc: BaseException | None, kind: type) -> BaseException | None:
    """The innermost error of type ``kind`` behind ``exc``, or None.

    Ray raises a task's error as an instance of both RayTaskError and the error's class, with the original as
    ``cause``, and a trial task wraps the accumulator's: the innermost one holds the plain message.
    """
    found = None
    while exc is not None:
        if isinstance(exc, kind):
            found = exc
        cause = getattr(exc, "cause", None)
        exc = cause if cause is not exc else None
    return found


def storage_full_cause(exc: BaseException) -> StorageFull | None:
    """The StorageFull behind ``exc``, or None when the failure was something else."""
    return innermost_cause(exc, StorageFull)


class SpaceWaiter:
    """``waiter(error, trial_ids)``: note that the storage is full and block until a probe write succeeds.

    Args:
        store: the run directory (the probe is written there, as big as ``probe_bytes``).
        note: prints one line for a person (the progress display's ``note``).
        interval: seconds between probes.
    """

    def __init__(self, store: RunStore, note: Callable[[str], None], *, interval: float = 10.0,
                 probe_bytes: int = 1 << 20, sleep: Callable[[float], None] = time.sleep):
        self.store, self.note, self.interval = store, note, interval
        self.probe_bytes, self.sleep = probe_bytes, sleep
        self.waits = 0

    def __call__(self, error: StorageFull, trial_ids: list[int]) -> None:
        self.waits += 1
        shown = ", ".join(str(k) for k in trial_ids)
        self.note(f"raymem: {error} Trial {shown} is not counted and will be trained again once space is back; "
                  f"checking every {self.interval:g} s.")
        while not self._has_space():
            self.sleep(self.interval)
        self.note(f"raymem: {self.store.uri} has space again; training goes on.")

    def _has_space(self) -> bool:
        try:
            self.store.write_bytes_atomic(PROBE_FILE, bytes(self.probe_bytes))
        except StorageFull:
            return False
        self.store.delete(PROBE_FILE)
        return True
