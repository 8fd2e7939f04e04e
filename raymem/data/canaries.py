"""Canaries: flip a fraction of training labels so the run has examples it must memorize."""

from __future__ import annotations

import numpy as np

#: Salt so the canary draw differs from every trial's subset draw of the same run seed.
CANARY_SALT = 0x5EED_CA7A


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """Return a copy of ``labels`` with round(fraction * n) of them moved to another class (reproducible)."""
    labels = np.asarray(labels).astype(np.int64).copy()
    count = int(round(fraction * len(labels)))
    if count == 0:
        return labels
    rng = np.random.default_rng([int(seed), CANARY_SALT])
    chosen = rng.choice(len(labels), size=count, replace=False)
    labels[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=count)) % num_classes
    return labels
