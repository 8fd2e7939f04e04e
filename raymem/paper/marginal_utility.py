"""The marginal-utility experiment (supplement, section C): trials on explicit example sets.

S_h is the set of training examples of a finished influence run's high-influence pairs and S'_h the test
examples they influence. A *marginal run* retrains that run's recipe on three **arms**:

- ``full``: the whole training set S;
- ``without_high_influence``: S minus S_h;
- ``without_random``: S minus R, R a uniformly random set of |S_h| training examples (the control), drawn
  from all of S with the marginal run's seed (:func:`random_removal`; it may overlap S_h).

Trial id k trains arm ``ARMS[k % 3]`` (replicate ``k // 3``): the arms interleave, so a run stopped early
holds about as many models of each, and raising K (``--trials``) adds trials 3K, 3K+1, ... without moving
any trial to another arm. A trial's mask is its arm's set, never a random subset; its training seed is
``trial_seed(run seed, k)`` as in any run. The sets are fixed when the marginal run is created and stored in
the run directory (:data:`SETS_FILE`; its sha256 is in run.json), so the run resumes on exactly the same
sets even when the source run has gained trials since.

Accuracies: each model's accuracy on the whole test set and on S'_h; per arm the mean over its models with a
two-sided Student-t interval (:func:`t_interval`), and per drop (full minus an arm) Welch's interval
(:func:`welch_interval`). The estimand is the expected accuracy, over the randomness of training, of a model
trained on the arm's set, on this (fixed) test set: the K models are i.i.d. draws of it, so the t-interval
over models is the interval for it. Pooling the K x |S'_h| predictions into one binomial count would treat
predictions of one model on different examples, and of different models on the same example, as
independent; they are not (the paper reports mean +- std over 100 models for the same reason).
"""

from __future__ import annotations

import hashlib
import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

from raymem.errors import RaymemError
from raymem.store.run_info import RunInfo
from raymem.store.storage import RunStore

KIND = "marginal"
ARMS = ("full", "without_high_influence", "without_random")
#: The arm a trial trains: ``ARMS[trial_id % len(ARMS)]``.
TRIAL_TO_ARM = "arm = ARMS[trial_id % 3], replicate = trial_id // 3"
SETS_FILE = "marginal-sets.parquet"
#: The stored sets: training examples removed by the two reduced arms, and the influenced test examples.
SET_NAMES = ("high_influence", "random", "influenced_test")
SETS_SCHEMA = pa.schema([("set", pa.string()), ("index", pa.int64())])
#: Second word of the random control's seed sequence (``[seed, RANDOM_STREAM, 1]``): three words, so it never
#: coincides with a trial's subset stream ``[seed, trial_id]``.
RANDOM_STREAM = 0x6D617267  # "marg"


def arm_of(trial_id: int) -> int:
    """Index into :data:`ARMS` of the arm trial ``trial_id`` trains."""
    return int(trial_id) % len(ARMS)


def trial_ids(per_arm: int) -> list[int]:
    """The trial ids of a marginal run with ``per_arm`` models per arm: 0 .. 3*per_arm - 1."""
    return list(range(len(ARMS) * int(per_arm)))


def random_removal(seed: int, n_train: int, size: int) -> np.ndarray:
    """The control's removed set: ``size`` distinct training indices drawn uniformly from 0..n_train-1 (sorted),
    reproducible from the marginal run's ``seed``."""
    if not 0 <= size <= n_train:
        raise RaymemError(f"cannot remove {size} of {n_train} training examples; the set to remove is too large.")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), RANDOM_STREAM, 1]))
    return np.sort(rng.choice(n_train, size=size, replace=False)).astype(np.int64)


def high_influence_sets(train_index, test_index) -> tuple[np.ndarray, np.ndarray]:
    """(S_h, S'_h): the distinct training and test indices of the selected pairs, sorted (int64)."""
    return (np.unique(np.asarray(train_index, dtype=np.int64)), np.unique(np.asarray(test_index, dtype=np.int64)))


def make_sets(train_index, test_index, *, n_train: int, seed: int) -> dict[str, np.ndarray]:
    """The stored sets of a new marginal run: S_h, R (random, |R| = |S_h|) and S'_h."""
    s_h, s_h_test = high_influence_sets(train_index, test_index)
    return {"high_influence": s_h, "random": random_removal(seed, n_train, len(s_h)), "influenced_test": s_h_test}


def arm_masks(n_train: int, sets: dict[str, np.ndarray]) -> np.ndarray:
    """bool (3, n_train): row a is the training set of arm ``ARMS[a]`` (``subsets.trial_mask`` picks row k % 3)."""
    masks = np.ones((len(ARMS), n_train), dtype=bool)
    masks[1, sets["high_influence"]] = False
    masks[2, sets["random"]] = False
    return masks


def sets_digest(sets: dict[str, np.ndarray]) -> str:
    """sha256 of the sets (name, length and int64 little-endian indices of each, in SET_NAMES order)."""
    digest = hashlib.sha256(b"raymem-marginal-sets-v1")
    for name in SET_NAMES:
        values = np.asarray(sets[name], dtype="<i8")
        digest.update(name.encode("ascii") + b"\0" + len(values).to_bytes(8, "little") + values.tobytes())
    return digest.hexdigest()


def write_sets(store: RunStore, sets: dict[str, np.ndarray]) -> str:
    """Write :data:`SETS_FILE` atomically; return its digest (:func:`sets_digest`) for run.json."""
    names = np.concatenate([np.array([name] * len(sets[name]), dtype=object) for name in SET_NAMES])
    index = np.concatenate([np.asarray(sets[name], dtype=np.int64) for name in SET_NAMES])
    buffer = io.BytesIO()
    pq.write_table(pa.table({"set": names, "index": index}, schema=SETS_SCHEMA), buffer, compression="zstd")
    store.write_bytes_atomic(SETS_FILE, buffer.getvalue())
    return sets_digest(sets)


def read_sets(store: RunStore, info: RunInfo) -> dict[str, np.ndarray]:
    """The sets of marginal run ``info``, checked (ranges, distinct, |R| = |S_h|, digest in run.json)."""
    where = store.location(SETS_FILE)

    def fail(problem: str) -> RaymemError:
        return RaymemError(f"{where} is invalid ({problem}); it defines the marginal run's arms: restore it, or "
                           "delete the marginal run and start it again.")

    if info.kind != KIND:
        raise RaymemError(f"run {info.name} is not a marginal run (kind {info.kind!r}); it has no example sets.")
    if not store.exists(SETS_FILE):
        raise fail("missing")
    try:
        table = store.read_parquet(SETS_FILE)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise fail(f"unreadable Parquet: {exc}") from exc
    if not table.schema.equals(SETS_SCHEMA, check_metadata=False) or table.column("index").null_count:
        raise fail(f"schema {table.schema.names}, expected {SETS_SCHEMA.names} without nulls")
    names = np.asarray(table.column("set").to_pylist(), dtype=object)
    index = table.column("index").to_numpy()
    sets = {}
    for name, bound in (("high_influence", info.n_train), ("random", info.n_train), ("influenced_test", info.n_test)):
        values = index[names == name]
        if values.size and (values.min() < 0 or values.max() >= bound):
            raise fail(f"{name} holds an index outside 0..{bound - 1}")
        if np.unique(values).size != values.size:
            raise fail(f"{name} lists an index twice")
        sets[name] = np.sort(values).astype(np.int64)
    if set(names.tolist()) - set(SET_NAMES):
        raise fail(f"unknown sets {sorted(set(names.tolist()) - set(SET_NAMES))}")
    if len(sets["random"]) != len(sets["high_influence"]):
        raise fail("the random set is not the size of the high-influence set")
    if info.design.get("sets_sha256") not in (None, sets_digest(sets)):
        raise fail("its content does not match the sha256 recorded in run.json")
    return sets


def read_arm_masks(store: RunStore, info: RunInfo) -> np.ndarray:
    """:func:`arm_masks` of marginal run ``info`` from its stored sets."""
    return arm_masks(info.n_train, read_sets(store, info))


def mask_source(store: RunStore, info: RunInfo) -> dict:
    """What ``subsets.trial_mask`` needs for the trials of run ``info``: its seed and sizes, and for a marginal run
    its arm sets (``arm_masks``). The driver hands it to the trials; the accumulator checks records against it."""
    run = {"seed": info.seed, "n_train": info.n_train, "subset_size": info.subset_size}
    if info.kind == KIND:
        run["arm_masks"] = read_arm_masks(store, info)
    return run


# ---- accuracies and their intervals ---------------------------------------------------------

def t_interval(values, delta: float = 0.05) -> dict:
    """Mean of ``values`` (one accuracy per model) with its two-sided 1-delta Student-t interval, clipped to [0, 1].

    Returns ``{"mean", "lo", "hi", "std", "models"}``; with fewer than 2 models ``lo``/``hi``/``std`` are None
    (a spread needs two models).
    """
    values = np.asarray(values, dtype=np.float64)
    k = values.size
    if k == 0:
        return {"mean": None, "lo": None, "hi": None, "std": None, "models": 0}
    mean = float(values.mean())
    if k < 2:
        return {"mean": mean, "lo": None, "hi": None, "std": None, "models": 1}
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(1 - delta / 2, k - 1)) * std / math.sqrt(k)
    return {"mean": mean, "lo": max(0.0, mean - half), "hi": min(1.0, mean + half), "std": std, "models": int(k)}


def welch_interval(a, b, delta: float = 0.05) -> dict:
    """mean(a) - mean(b) with Welch's two-sided 1-delta interval (independent samples, unequal variances).

    Returns ``{"drop", "lo", "hi"}`` (clipped to [-1, 1]); ``lo``/``hi`` are None unless both samples have at
    least 2 values.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return {"drop": None, "lo": None, "hi": None}
    drop = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return {"drop": drop, "lo": None, "hi": None}
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return {"drop": drop, "lo": drop, "hi": drop}
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(stats.t.ppf(1 - delta / 2, df)) * se
    return {"drop": drop, "lo": max(-1.0, drop - half), "hi": min(1.0, drop + half)}


def _scaled(interval: dict, factor: float) -> dict:
    return {k: (None if v is None else v * factor) for k, v in interval.items()}


def summarize(trial_ids, test_correct: np.ndarray, influenced_test: np.ndarray, *, sets: dict | None = None,
              n_train: int | None = None, delta: float = 0.05) -> dict:
    """The marginal-utility report of some trials: per arm the accuracy on the whole test set and on S'_h
    (mean over its models, t-interval), and per reduced arm the drop from ``full`` (Welch interval).

    Args:
        trial_ids: int (t,): the trials (their arm is ``arm_of``).
        test_correct: bool (t, n_test): each trial's correctness on every test example.
        influenced_test: S'_h, test indices.
        sets, n_train: when given, the sizes of S_h and R and each arm's training-set size are reported.

    Returns:
        ``{"full", "without_high_influence", "without_random", "drops", "sizes", "interval"}`` (JSON-able).
    """
    ids = np.asarray(trial_ids, dtype=np.int64)
    correct = np.asarray(test_correct, dtype=bool).reshape(len(ids), -1)
    influenced = np.asarray(influenced_test, dtype=np.int64)
    n_test = correct.shape[1]
    test_acc = correct.mean(axis=1) if n_test else np.zeros(len(ids))
    infl_acc = correct[:, influenced].mean(axis=1) if influenced.size else np.full(len(ids), np.nan)
    arms = np.asarray([arm_of(k) for k in ids], dtype=np.int64)
    per_arm = {}
    accs = {}
    for a, arm in enumerate(ARMS):
        chosen = arms == a
        accs[arm] = (test_acc[chosen], infl_acc[chosen])
        per_arm[arm] = {
            "models": int(chosen.sum()),
            "trial_ids": ids[chosen].tolist(),
            "test": t_interval(test_acc[chosen], delta),
            "influenced": t_interval(infl_acc[chosen], delta) if influenced.size else None,
        }
    drops = {}
    share = influenced.size / n_test if n_test else 0.0
    for arm in ARMS[1:]:
        on_influenced = welch_interval(accs["full"][1], accs[arm][1], delta) if influenced.size else None
        drops[arm] = {
            "test": welch_interval(accs["full"][0], accs[arm][0], delta),
            "influenced": on_influenced,
            # the drop on S'_h weighted by |S'_h| / n_test: its share of the whole test-set drop (supplement C)
            "influenced_contribution": _scaled(on_influenced, share) if on_influenced else None,
        }
    sizes = {"n_test": int(n_test), "influenced_test": int(influenced.size)}
    if sets is not None and n_train is not None:
        s_h, r = sets["high_influence"], sets["random"]
        sizes.update({
            "n_train": int(n_train),
            "high_influence_train": int(len(s_h)),
            "random_removed": int(len(r)),
            "random_overlap_with_high_influence": int(np.intersect1d(s_h, r).size),
        })
        for arm, removed in zip(ARMS, (0, len(s_h), len(r))):
            per_arm[arm]["train_size"] = int(n_train - removed)
    few = min(p["models"] for p in per_arm.values())
    interval = {
        "kind": "student-t over the models of an arm (drops: Welch)",
        "confidence": 1 - delta,
        "estimand": "expected accuracy, over training randomness, of a model trained on the arm's set, on this "
                    "test set (and on S'_h)",
    }
    if few < 2:
        interval["note"] = "an arm has fewer than 2 models: its interval needs at least 2 (raise --trials)"
    return {**per_arm, "drops": drops, "sizes": sizes, "interval": interval}


def report_from_log(store: RunStore, info: RunInfo, *, delta: float = 0.05) -> dict:
    """:func:`summarize` over every trial in marginal run ``info``'s log, with the run's design."""
    from raymem.store.trial_log import iter_trials

    sets = read_sets(store, info)
    ids, rows = [], []
    for record in iter_trials(store, info=info):
        ids.append(record.trial_id)
        rows.append(record.test_correct)
    correct = np.stack(rows) if rows else np.zeros((0, info.n_test), dtype=bool)
    summary = summarize(ids, correct, sets["influenced_test"], sets=sets, n_train=info.n_train, delta=delta)
    design = info.design
    return {
        "run": info.name,
        "run_dir": store.uri,
        "source_run": design.get("source_run"),
        "source_run_id": design.get("source_run_id"),
        "selection": design.get("selection"),
        "trials_per_arm": design.get("trials_per_arm"),
        "trials_done": len(ids),
        **summary,
    }
