"""The authors' formats, both ways (Feldman & Zhang 2020; numpy only, never unpickled).

Out: :func:`export_fz` writes a run in the layout of the authors' released estimates
(``cifar100_infl_matrix.npz`` on their project page):

- ``tr_mem`` float64 (n_train,): memorization of every training example;
- ``tr_labels`` int64 (n_train,), ``tt_labels`` int64 (n_test,);
- for every class c: ``tr_classidx_{c}`` / ``tt_classidx_{c}`` int64, the training / test indices of
  class c (ascending), and ``infl_matrix_class{c}`` float32 (len(tr_classidx_c), len(tt_classidx_c)):
  the influence of each training example of class c on each test example of class c.

In: two layouts of trial results, each returned as (masks, train_correct, test_correct) bool arrays of
shapes (t, n_train), (t, n_train), (t, n_test), ready for ``raymem.api.ingest``:

- ``fz-aux`` (:func:`read_fz_aux`): the authors' released training runs
  (google-research/heldout-influence-estimation): a directory with one subdirectory per run (one
  subset ratio's folder, e.g. ``cifar100-inception/0.7``), each holding ``aux_arrays.npz`` with
  ``subsample_idx`` (the training indices the run trained on), ``correctness_train`` with
  ``index_train`` (correctness on those examples and their training indices), ``correctness_removed``
  with ``index_removed`` (the held-out training examples) and ``correctness_test`` with ``index_test``.
  All seven keys are required; ``index_train`` and ``index_removed`` together must list every training
  example once, ``index_train`` must be the same set as ``subsample_idx``. Runs are trials in the
  natural order of their folder names (``2`` before ``10``); folders starting with ``.`` are ignored.
- ``npz`` (:func:`read_npz_trials`): one archive with ``trainset_mask`` (t, n_train),
  ``trainset_correctness`` (t, n_train) and ``testset_correctness`` (t, n_test), bool (or 0/1 integers).

Index maps. The authors' ImageNet indices follow their own ordering of the examples (their tfrecord
files), not tfds's; their project page lists file name -> index. An index map is an int array
``index_map[k]`` = the tfds index of the example at position k of the authors' order (a permutation of
0..n-1). Every function here takes ``train_index_map`` / ``test_index_map``: readers move the authors'
columns to tfds order, :func:`export_fz` writes in the authors' order, :func:`read_fz` reads it back
into tfds order. :func:`load_index_map` reads one from ``.npy`` (training map) or ``.npz`` (keys
``train`` and/or ``test``). CIFAR-100 and MNIST need none: the authors used tfds's order there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raymem.errors import RaymemError
from raymem.estimator import formulas, selection
from raymem.estimator.counts import Counts
from raymem.store.safe_files import NpzArchive, load_npy, write_atomic

AUX_FILE = "aux_arrays.npz"
AUX_KEYS = ("subsample_idx", "correctness_train", "index_train", "correctness_removed", "index_removed",
            "correctness_test", "index_test")
NPZ_TRIAL_KEYS = ("trainset_mask", "trainset_correctness", "testset_correctness")
FZ_KEYS = ("tr_mem", "tr_labels", "tt_labels")
_CLASS_KEY = re.compile(r"infl_matrix_class(\d+)")


# ---- small helpers ---------------------------------------------------------------------------

def _as_bool(array: np.ndarray, path: Path, key: str) -> np.ndarray:
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer) and np.all((array == 0) | (array == 1)):
        return array.astype(bool)
    raise RaymemError(f"{path} key {key} holds {array.dtype} values that are not 0/1; save it as a bool array.")


def _as_index(array: np.ndarray, path: Path, key: str, n: int) -> np.ndarray:
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise RaymemError(f"{path} key {key} must be a 1-D integer index array, "
                          f"got {array.dtype} with shape {array.shape}.")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= n):
        raise RaymemError(f"{path} key {key} holds indices outside 0..{n - 1}; it must index the {n} examples.")
    return array


def check_index_map(index_map, n: int, what: str = "index map") -> np.ndarray | None:
    """Return ``index_map`` as int64 after checking it is a permutation of 0..n-1 (None passes through)."""
    if index_map is None:
        return None
    m = np.asarray(index_map)
    if m.shape != (n,) or not np.issubdtype(m.dtype, np.integer):
        raise RaymemError(f"the {what} has shape {m.shape} and dtype {m.dtype}; it must be {n} integers, "
                          "the tfds index of each position in the authors' order.")
    m = m.astype(np.int64)
    if not np.array_equal(np.sort(m), np.arange(n)):
        raise RaymemError(f"the {what} is not a permutation of 0..{n - 1}; each tfds index must appear exactly once.")
    return m


def load_index_map(path: str | Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Read an index map file: ``.npy`` (the training map) or ``.npz`` with ``train`` and/or ``test``.

    Returns (train_map, test_map), either None when absent; check them with :func:`check_index_map`
    (the functions that take them do).
    """
    path = Path(path)
    hint = "a .npy int array (training examples) or a .npz with int arrays train and/or test"
    if path.suffix == ".npy":
        return load_npy(path, "--index-map"), None
    with NpzArchive(path, "--index-map", f"pass {hint}") as z:
        if "train" not in z.files and "test" not in z.files:
            raise RaymemError(f"{path} lacks the key train (and test); pass {hint}.")
        train = z.array("train") if "train" in z.files else None
        test = z.array("test") if "test" in z.files else None
    return train, test


def _to_tfds_columns(array: np.ndarray, index_map: np.ndarray | None) -> np.ndarray:
    """Columns in the authors' order -> tfds order: out[:, index_map[k]] = array[:, k]."""
    if index_map is None:
        return array
    out = np.empty_like(array)
    out[:, index_map] = array
    return out


# ---- out: the released layout ------------------------------------------------------------------

def export_fz(
    counts: Counts,
    train_labels,
    test_labels,
    out: str | Path,
    *,
    train_index_map=None,
    test_index_map=None,
    num_classes: int | None = None,
) -> Path:
    """Write the run's estimates in the authors' released layout (module docstring), atomically; return ``out``.

    counts: the run's counts over all training rows, with the pair matrix. train_labels, test_labels:
    the labels the run used. Index maps (optional): the file is written in the authors' order, so that
    position k holds tfds example index_map[k]. num_classes: default max label + 1 (a class without
    examples gets empty arrays).

    Works on both influence scopes: a class-scope run's blocks are exactly these per-class matrices (its
    labels must be the ones given, else RaymemError), so its file equals that of a full-scope run.
    """
    train = np.asarray(train_labels)
    test = np.asarray(test_labels)
    for what, labels, n in (("train_labels", train, counts.n_train), ("test_labels", test, counts.n_test)):
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise RaymemError(f"{what} has shape {labels.shape} and dtype {labels.dtype}; "
                              f"the run needs {n} integer labels.")
    if (counts.row_start, counts.row_stop) != (0, counts.n_train):
        raise RaymemError("export needs the counts of every training row; gather the run's shards first.")
    train, test = train.astype(np.int64), test.astype(np.int64)
    tr_map = check_index_map(train_index_map, counts.n_train, "training index map")
    tt_map = check_index_map(test_index_map, counts.n_test, "test index map")
    tr_map = np.arange(counts.n_train) if tr_map is None else tr_map
    tt_map = np.arange(counts.n_test) if tt_map is None else tt_map
    classes = int(max(train.max(initial=-1), test.max(initial=-1)) + 1 if num_classes is None else num_classes)
    v = counts.all
    mem = formulas.memorization(v.in_hits, v.n_in, v.out_hits, v.n_out)
    tr_labels_out, tt_labels_out = train[tr_map], test[tt_map]
    arrays = {"tr_mem": mem[tr_map].astype(np.float64), "tr_labels": tr_labels_out, "tt_labels": tt_labels_out}
    for c in range(classes):
        tr_pos = np.flatnonzero(tr_labels_out == c)
        tt_pos = np.flatnonzero(tt_labels_out == c)
        rows, cols = tr_map[tr_pos], tt_map[tt_pos]
        h, estimated = counts.pair_cells(rows[:, None], cols[None, :])
        if not estimated.all():
            raise RaymemError(f"the run counts influence per class of other labels than the ones given (class {c}); "
                              "export it with the labels it was trained with (labels.parquet).")
        block = formulas.influence(h, v.n_in[rows], v.test_hits[cols], v.n_out[rows])
        arrays[f"tr_classidx_{c}"] = tr_pos.astype(np.int64)
        arrays[f"tt_classidx_{c}"] = tt_pos.astype(np.int64)
        arrays[f"infl_matrix_class{c}"] = block.astype(np.float32)
    return write_atomic(out, lambda buffer: np.savez(buffer, **arrays), "--out")


@dataclass
class FzEstimates:
    """Estimates read from the authors' layout, in tfds order."""

    tr_mem: np.ndarray    # float64 (n_train,)
    tr_labels: np.ndarray  # int64 (n_train,)
    tt_labels: np.ndarray  # int64 (n_test,)
    blocks: dict          # class -> (train indices, test indices, infl float32 (len(train), len(test)))


def read_fz(path: str | Path, *, train_index_map=None, test_index_map=None) -> FzEstimates:
    """Read a file in the authors' released layout (theirs or :func:`export_fz`'s) into tfds order."""
    path = Path(path)
    hint = (f"a .npz with {', '.join(FZ_KEYS)} and per class infl_matrix_class{{c}}, "
            "tr_classidx_{c}, tt_classidx_{c}")
    with NpzArchive(path, "estimates file", f"the authors' layout needs {hint}") as z:
        tr_mem = z.array("tr_mem").astype(np.float64)
        tr_labels = z.array("tr_labels")
        tt_labels = z.array("tt_labels")
        n, n_test = tr_mem.shape[0] if tr_mem.ndim == 1 else -1, tt_labels.shape[0] if tt_labels.ndim == 1 else -1
        if tr_mem.ndim != 1 or tr_labels.shape != (n,) or tt_labels.ndim != 1:
            raise RaymemError(f"{path} has tr_mem {tr_mem.shape}, tr_labels {tr_labels.shape}, "
                              f"tt_labels {tt_labels.shape}; "
                              "tr_mem and tr_labels need one entry per training example, "
                              "tt_labels one per test example.")
        tr_map = check_index_map(train_index_map, n, "training index map")
        tt_map = check_index_map(test_index_map, n_test, "test index map")
        blocks = {}
        for key in z.files:
            match = _CLASS_KEY.fullmatch(key)
            if not match:
                continue
            c = int(match.group(1))
            z.require(f"tr_classidx_{c}", f"tt_classidx_{c}")  # each infl_matrix_class{c} needs both
            tr_idx = _as_index(z.array(f"tr_classidx_{c}"), path, f"tr_classidx_{c}", n)
            tt_idx = _as_index(z.array(f"tt_classidx_{c}"), path, f"tt_classidx_{c}", n_test)
            block = z.array(key)
            if block.shape != (tr_idx.size, tt_idx.size):
                raise RaymemError(f"{path} key {key} has shape {block.shape} but tr_classidx_{c} and tt_classidx_{c} "
                                  f"give ({tr_idx.size}, {tt_idx.size}); write the block of exactly those examples.")
            if tr_map is not None:
                tr_idx = tr_map[tr_idx]
            if tt_map is not None:
                tt_idx = tt_map[tt_idx]
            blocks[c] = (tr_idx, tt_idx, block.astype(np.float32))
    if tr_map is not None:
        tr_mem = _to_tfds_columns(tr_mem[None, :], tr_map)[0]
        tr_labels = _to_tfds_columns(tr_labels[None, :], tr_map)[0]
    if tt_map is not None:
        tt_labels = _to_tfds_columns(tt_labels[None, :], tt_map)[0]
    return FzEstimates(tr_mem, tr_labels.astype(np.int64), tt_labels.astype(np.int64), dict(sorted(blocks.items())))


def fz_pairs(fz: FzEstimates, *, min_infl: float = formulas.PAPER_MIN_INFL,
             min_mem: float = formulas.PAPER_MIN_MEM) -> dict[str, np.ndarray]:
    """The high-influence pairs of per-class estimates, in the released pairs layout (tr_idx, tt_idx, infl, mem),
    sorted by training then test index: what ``compare.compare_with_released`` takes."""
    parts = []
    for tr_idx, tt_idx, block in fz.blocks.values():
        a, b = np.nonzero((block >= np.float32(min_infl)) & (fz.tr_mem[tr_idx][:, None] >= min_mem))
        parts.append((tr_idx[a], tt_idx[b], block[a, b].astype(np.float64)))
    if parts:
        tr, tt, infl = (np.concatenate(p) for p in zip(*parts))
    else:
        tr = tt = np.zeros(0, dtype=np.int64)
        infl = np.zeros(0)
    order = np.lexsort((tt, tr))
    return {"tr_idx": tr[order], "tt_idx": tt[order], "infl": infl[order], "mem": fz.tr_mem[tr[order]]}


def compare_with_fz(counts: Counts, fz: FzEstimates, *, min_infl: float = formulas.PAPER_MIN_INFL,
                    min_mem: float = formulas.PAPER_MIN_MEM) -> dict:
    """Compare a run with per-class estimates on the cells those hold (same-class pairs).

    A class-scope run whose labels differ from the file's (e.g. flipped canaries) is compared on the cells
    both hold.

    Returns a dict: mem (Jaccard and mean |difference| at min_mem over all training examples) and infl
    (the same for the high-influence pairs inside the class blocks, Eq. 4 with the mem >= min_mem
    constraint on each side), plus pairs_run / pairs_file / pairs_common.
    """
    if fz.tr_mem.shape != (counts.n_train,) or fz.tt_labels.shape != (counts.n_test,):
        raise RaymemError(f"the estimates file covers {fz.tr_mem.size} training / "
                          f"{fz.tt_labels.size} test examples but "
                          f"the run has {counts.n_train} / {counts.n_test}; compare with a run on the same data set.")
    v = counts.all
    mem = formulas.memorization(v.in_hits, v.n_in, v.out_hits, v.n_out)
    ours, theirs = [], []
    if (counts.row_start, counts.row_stop) != (0, counts.n_train):
        raise RaymemError("comparing with an estimates file needs the counts of every training row; "
                          "gather the run's shards first.")
    for tr_idx, tt_idx, block in fz.blocks.values():
        h, estimated = counts.pair_cells(tr_idx[:, None], tt_idx[None, :])
        run = formulas.influence(h, v.n_in[tr_idx], v.test_hits[tt_idx], v.n_out[tr_idx])
        rows = np.broadcast_to(tr_idx[:, None], estimated.shape)[estimated]
        ours.append(run[estimated])
        theirs.append((block.astype(np.float64)[estimated], fz.tr_mem[rows] >= min_mem, mem[rows] >= min_mem))
    if ours:
        infl_run = np.concatenate(ours)
        infl_file = np.concatenate([b for b, *_ in theirs])
        eligible_file = np.concatenate([e for _, e, _ in theirs])
        eligible_run = np.concatenate([e for _, _, e in theirs])
    else:
        infl_run = infl_file = np.zeros(0)
        eligible_file = eligible_run = np.zeros(0, dtype=bool)
    infl_c = selection.jaccard_and_mean_difference(infl_run, infl_file, min_infl, eligible_run, eligible_file)
    mem_c = selection.jaccard_and_mean_difference(mem, fz.tr_mem, min_mem)
    clean = lambda d: {k: (None if isinstance(x, float) and np.isnan(x) else x) for k, x in d.items()}  # noqa: E731
    return {
        "mem": clean(mem_c),
        "infl": clean(infl_c),
        "pairs_run": infl_c["size_a"],
        "pairs_file": infl_c["size_b"],
        "pairs_common": infl_c["size_a"] + infl_c["size_b"] - infl_c["size_union"],
    }


# ---- in: trial results -------------------------------------------------------------------------

def read_npz_trials(path: str | Path, *, train_index_map=None, test_index_map=None):
    """Read one archive with ``trainset_mask``, ``trainset_correctness``, ``testset_correctness``.

    Returns (masks, train_correct, test_correct): bool arrays (t, n_train), (t, n_train), (t, n_test),
    columns in tfds order (moved by the index maps when given). RaymemError naming the file and key
    when a key is missing, not bool/0-1, or the shapes disagree.
    """
    path = Path(path)
    layout = ("trainset_mask (trials, n_train), trainset_correctness (trials, n_train) "
              "and testset_correctness (trials, n_test) as bool arrays")
    with NpzArchive(path, "--from npz file", f"the npz layout needs {layout}") as z:
        arrays = [_as_bool(z.array(key), path, key) for key in NPZ_TRIAL_KEYS]
    masks, train_ok, test_ok = arrays
    for key, a in zip(NPZ_TRIAL_KEYS, arrays):
        if a.ndim != 2:
            raise RaymemError(f"{path} key {key} has shape {a.shape}; it must be 2-D (trials, examples).")
    if train_ok.shape != masks.shape:
        raise RaymemError(f"{path} key trainset_correctness has shape {train_ok.shape} "
                          f"but trainset_mask has {masks.shape}; "
                          "both must be (trials, n_train).")
    if test_ok.shape[0] != masks.shape[0]:
        raise RaymemError(f"{path} key testset_correctness has {test_ok.shape[0]} trials but trainset_mask has "
                          f"{masks.shape[0]}; every key needs one row per trial.")
    tr_map = check_index_map(train_index_map, masks.shape[1], "training index map")
    tt_map = check_index_map(test_index_map, test_ok.shape[1], "test index map")
    return _to_tfds_columns(masks, tr_map), _to_tfds_columns(train_ok, tr_map), _to_tfds_columns(test_ok, tt_map)


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def fz_aux_runs(directory: str | Path) -> list[Path]:
    """Return the ``aux_arrays.npz`` files of a run directory, one per run subdirectory, in trial order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RaymemError(f"--from fz-aux {directory} is not a directory; "
                          "pass the folder holding one subdirectory per run.")
    subdirs = sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: _natural_key(p.name))
    files = []
    for sub in subdirs:
        aux = sub / AUX_FILE
        if not aux.is_file():
            deeper = next(sub.glob(f"*/{AUX_FILE}"), None)
            hint = (f"it looks like a subset-ratio folder: pass {sub} itself" if deeper is not None
                    else "remove it or pass a folder holding only run subdirectories")
            raise RaymemError(f"--from fz-aux: {sub} has no {AUX_FILE}; {hint}.")
        files.append(aux)
    if not files:
        raise RaymemError(f"--from fz-aux {directory} has no run subdirectories with {AUX_FILE}; "
                          "pass one subset ratio's folder.")
    return files


def _read_aux(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One run's (mask, train_correct, test_correct) in the authors' index order."""
    fix = f"the authors' aux_arrays.npz needs {', '.join(AUX_KEYS)}"
    with NpzArchive(path, "--from fz-aux file", fix) as z:
        raw = {key: z.array(key) for key in AUX_KEYS}
    for split in ("train", "removed", "test"):
        c, i = raw[f"correctness_{split}"], raw[f"index_{split}"]
        if c.ndim != 1 or c.shape != i.shape:
            raise RaymemError(f"{path} key correctness_{split} has shape {c.shape} but index_{split} has {i.shape}; "
                              "both must be 1-D with one entry per example.")
    n = raw["index_train"].size + raw["index_removed"].size
    n_test = raw["index_test"].size
    idx_train = _as_index(raw["index_train"], path, "index_train", n)
    idx_removed = _as_index(raw["index_removed"], path, "index_removed", n)
    idx_test = _as_index(raw["index_test"], path, "index_test", n_test)
    subset = _as_index(raw["subsample_idx"], path, "subsample_idx", n)
    covered = np.zeros(n, dtype=np.int64)
    np.add.at(covered, np.concatenate([idx_train, idx_removed]), 1)
    if not np.all(covered == 1):
        raise RaymemError(f"{path} keys index_train and index_removed do not list each of the {n} "
                          "training examples once; "
                          "export both splits of the full training set.")
    if np.unique(idx_test).size != n_test:
        raise RaymemError(f"{path} key index_test repeats a test example; list each test example once.")
    mask = np.zeros(n, dtype=bool)
    mask[subset] = True
    if np.unique(subset).size != subset.size or not np.array_equal(np.sort(subset), np.sort(idx_train)):
        raise RaymemError(f"{path} key subsample_idx is not the set of index_train (or repeats an index); "
                          "the run's subset must be exactly its train split.")
    train_ok = np.zeros(n, dtype=bool)
    train_ok[idx_train] = _as_bool(raw["correctness_train"], path, "correctness_train")
    train_ok[idx_removed] = _as_bool(raw["correctness_removed"], path, "correctness_removed")
    test_ok = np.zeros(n_test, dtype=bool)
    test_ok[idx_test] = _as_bool(raw["correctness_test"], path, "correctness_test")
    return mask, train_ok, test_ok


def read_fz_aux(directory: str | Path, *, train_index_map=None, test_index_map=None):
    """Read the authors' released training runs (module docstring) as (masks, train_correct, test_correct).

    One trial per run subdirectory, in :func:`fz_aux_runs` order; columns in tfds order (moved by the
    index maps when given). RaymemError naming the file and key on a missing key, a bad index or runs
    of different sizes.
    """
    files = fz_aux_runs(directory)
    masks, train_ok, test_ok = [], [], []
    for path in files:
        m, c, d = _read_aux(path)
        if masks and (m.size, d.size) != (masks[0].size, test_ok[0].size):
            raise RaymemError(f"{path} covers {m.size} training / {d.size} test examples but {files[0]} covers "
                              f"{masks[0].size} / {test_ok[0].size}; pass runs of one data set only.")
        masks.append(m)
        train_ok.append(c)
        test_ok.append(d)
    masks, train_ok, test_ok = np.stack(masks), np.stack(train_ok), np.stack(test_ok)
    tr_map = check_index_map(train_index_map, masks.shape[1], "training index map")
    tt_map = check_index_map(test_index_map, test_ok.shape[1], "test index map")
    return _to_tfds_columns(masks, tr_map), _to_tfds_columns(train_ok, tr_map), _to_tfds_columns(test_ok, tt_map)
