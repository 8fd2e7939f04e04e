"""Which training examples trial k trains on: reproducible from (run seed, trial id)."""

from __future__ import annotations

import numpy as np


def trial_seed(run_seed: int, trial_id: int) -> int:
    """Return the seed trial ``trial_id`` uses for its subset and its training (a 31-bit int)."""
    return int(np.random.SeedSequence([int(run_seed), int(trial_id)]).generate_state(1)[0] & 0x7FFFFFFF)


def subset_mask(run_seed: int, trial_id: int, n_train: int, subset_size: int) -> np.ndarray:
    """Return a bool mask of the uniformly random size-``subset_size`` subset of trial ``trial_id``."""
    rng = np.random.default_rng([int(run_seed), int(trial_id)])
    mask = np.zeros(n_train, dtype=bool)
    mask[rng.choice(n_train, size=subset_size, replace=False)] = True
    return mask
