"""Shared fixtures: synthetic runs whose true memorization and influence are known, and a brute-force counter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest


@dataclass
class SyntheticRun:
    """Trial outcomes drawn from a known model, one row per trial."""

    trial_ids: np.ndarray      # int64 (t,)
    masks: np.ndarray          # bool (t, n): example i in trial k's subset (exactly m per trial)
    train_correct: np.ndarray  # bool (t, n)
    test_correct: np.ndarray   # bool (t, n_test)
    subset_size: int
    true_mem: np.ndarray       # float64 (n,): p_in - p_out
    true_infl: np.ndarray      # float64 (n, n_test): exact, including the small effect of fixed-size subsets
    memorized: np.ndarray      # int64 indices with p_in = 0.95, p_out = 0.1
    planted: list              # (i, j) pairs: test j correct w.p. 0.9 if i trained on, else 0.1


def make_synthetic_run(seed: int, n: int = 30, n_test: int = 20, t: int = 40, ratio: float = 0.7,
                       memorized=(), planted=(), trial_ids=None) -> SyntheticRun:
    """Return a SyntheticRun: size-m subsets, train correctness by p_in / p_out, test correctness by planted pairs.

    Examples not in ``memorized`` have p_in = p_out (true mem 0). A test example j of a planted pair (i, j) is
    correct w.p. 0.9 when i is in the subset, else 0.1; other test examples have a fixed rate of their own.
    """
    rng = np.random.default_rng(seed)
    m = int(round(ratio * n))
    memorized = np.asarray(sorted(memorized), dtype=np.int64)
    p_out = rng.uniform(0.2, 0.9, n)
    p_in = p_out.copy()
    p_in[memorized], p_out[memorized] = 0.95, 0.1
    masks = np.zeros((t, n), dtype=bool)
    for k in range(t):
        masks[k, rng.permutation(n)[:m]] = True
    train_correct = rng.random((t, n)) < np.where(masks, p_in, p_out)
    test_rate = np.tile(rng.uniform(0.2, 0.9, n_test), (t, 1))
    true_infl = np.zeros((n, n_test))
    for i, j in planted:
        test_rate[:, j] = np.where(masks[:, i], 0.9, 0.1)
        true_infl[:, j] = -(0.9 - 0.1) / (n - 1)  # i' in J makes i in J slightly less likely (m fixed)
        true_infl[i, j] = 0.9 - 0.1
    test_correct = rng.random((t, n_test)) < test_rate
    ids = np.arange(t, dtype=np.int64) if trial_ids is None else np.asarray(trial_ids, dtype=np.int64)
    return SyntheticRun(ids, masks, train_correct, test_correct, m, p_in - p_out, true_infl, memorized, list(planted))


def brute_force_counts(masks, train_correct, test_correct, keep=None) -> dict:
    """Count trials (rows) with plain Python loops; ``keep`` selects rows (bool (t,), default all)."""
    t, n = masks.shape
    n_test = test_correct.shape[1]
    c = {"trials": 0, "n_in": np.zeros(n, np.int64), "in_hits": np.zeros(n, np.int64),
         "total_hits": np.zeros(n, np.int64), "test_hits": np.zeros(n_test, np.int64),
         "h_in": np.zeros((n, n_test), np.int64)}
    for k in range(t):
        if keep is not None and not keep[k]:
            continue
        c["trials"] += 1
        for i in range(n):
            c["total_hits"][i] += int(train_correct[k, i])
            if masks[k, i]:
                c["n_in"][i] += 1
                c["in_hits"][i] += int(train_correct[k, i])
                for j in range(n_test):
                    c["h_in"][i, j] += int(test_correct[k, j])
        for j in range(n_test):
            c["test_hits"][j] += int(test_correct[k, j])
    return c


@pytest.fixture
def synthetic_run():
    """The make_synthetic_run factory."""
    return make_synthetic_run


@pytest.fixture
def brute_counts():
    """The brute_force_counts function."""
    return brute_force_counts


@pytest.fixture(scope="session")
def tf():
    """TensorFlow, imported only by the tests that need it."""
    import tensorflow

    return tensorflow


@pytest.fixture(scope="session")
def tfds(tf):
    """TensorFlow Datasets (for ``tfds.testing.mock_data``)."""
    import tensorflow_datasets

    return tensorflow_datasets


@pytest.fixture
def isolated_ray(monkeypatch):
    """A test that starts Ray gets its own Ray temp dir, never attaches to another cluster on the machine,
    and has its Ray shut down afterwards."""
    import tempfile

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="rmt", dir="/tmp"))
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
