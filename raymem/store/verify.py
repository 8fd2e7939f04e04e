"""Checking a run's files: every trial file's checksum and columns, run.json and the labels; damaged trial files
set aside in ``RUN/quarantine/``.

A trial file damaged after it was written (a bit flip, a truncated upload) is caught by its checksum on every read,
which skips it with a warning (``trial_log.iter_trials``). :func:`verify_run` lists every such file at once;
:func:`quarantine` moves the damaged trial files out of the log, so the log no longer holds those trial ids and the
next ``raymem run`` trains exactly them again (which it also does, setting the file aside itself, without this).
run.json and labels.parquet are never moved: a run without them is no run; they are reported, to restore from a
copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from raymem.errors import RaymemError
from raymem.store.run_info import LABELS_FILE, read_labels, read_run_info
from raymem.store.storage import RunStore
from raymem.store.trial_log import QUARANTINE_DIR, DamagedTrialFile, read_trial, set_aside, trial_ids

__all__ = ["QUARANTINE_DIR", "Damage", "VerifyReport", "quarantine", "verify_run"]

@dataclass(frozen=True)
class Damage:
    """One damaged file: its store-relative ``path``, the ``trial_id`` it held (None for run.json or the labels)
    and what is wrong with it."""

    path: str
    trial_id: int | None
    problem: str


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_run` found: files ``checked``, the ``damaged`` ones, the ones moved to quarantine."""

    checked: int
    damaged: tuple[Damage, ...]
    quarantined: tuple[str, ...] = ()

    @property
    def whole(self) -> bool:
        """Whether every file checked is intact."""
        return not self.damaged

    def to_dict(self) -> dict:
        """The report as JSON-able values (``raymem verify --json``)."""
        return {"checked": self.checked, "whole": self.whole, "quarantined": list(self.quarantined),
                "damaged": [{"path": d.path, "trial_id": d.trial_id, "problem": d.problem} for d in self.damaged]}


def verify_run(store: RunStore) -> VerifyReport:
    """Check run.json, labels.parquet (when present) and every trial file of the run at ``store``.

    Raises:
        RaymemError: the directory holds no readable run.json (nothing else can be checked without it).
    """
    info = read_run_info(store)
    damaged, checked = [], 1
    if store.exists(LABELS_FILE):
        checked += 1
        try:
            read_labels(store)
        except RaymemError as exc:
            damaged.append(Damage(LABELS_FILE, None, str(exc)))
    for trial_id in trial_ids(store):
        checked += 1
        try:
            read_trial(store, trial_id, info)
        except DamagedTrialFile as exc:
            damaged.append(Damage(exc.relpath, exc.trial_id, exc.problem))
    return VerifyReport(checked, tuple(damaged))


def quarantine(store: RunStore, report: VerifyReport) -> VerifyReport:
    """Move the damaged trial files of ``report`` to ``RUN/quarantine/``; return the report with them listed."""
    moved = [set_aside(store, damage.path) for damage in report.damaged if damage.trial_id is not None]
    return VerifyReport(report.checked, report.damaged, tuple(moved))
