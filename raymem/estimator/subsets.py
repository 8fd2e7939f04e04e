"""Which training examples trial k trains on: reproducible from (run seed, trial id), or its arm's explicit set."""

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


def trial_mask(run: dict, trial_id: int) -> np.ndarray:
    """The mask source of every run: the training mask of trial ``trial_id`` of the run ``run`` describes.

    ``run`` holds ``seed``, ``n_train`` and ``subset_size``; a run of trials on explicit example sets (a marginal
    run, ``raymem.paper.marginal_utility``) also holds ``arm_masks``, bool (arms, n_train): trial k trains row
    ``k % arms``. Otherwise the trial trains its random subset (:func:`subset_mask`). The trials and the
    accumulator that checks their records both call this.
    """
    masks = run.get("arm_masks")
    if masks is not None:
        return np.asarray(masks[int(trial_id) % len(masks)], dtype=bool)
    return subset_mask(run["seed"], trial_id, run["n_train"], run["subset_size"])
