"""The paper's figures: written and non-empty on digits, the examples shown equal an independent
implementation of the supplement's selection rule, the Fig. C.1 counts of the released pairs, bad input."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from raymem.estimator.bars import Bars
from raymem.paper import figures
from raymem.errors import RaymemError
from raymem.paper import compare, shown_examples
from raymem.estimator import formulas, report
from raymem.estimator.counts import Counts
from raymem.estimator.convergence_curves import checkpoints, convergence_curve

DATA_KEYS = ("train_labels", "test_labels", "original_train_labels", "train_images", "test_images", "class_names")
SHOWN_KEYS = ("mem", "pairs", "counts", "top_influenced", "convergence")
LAYOUT_KEYS = ("klass", "max_memorized", "n_test_examples")


def draw(out, **given):
    """``figures.paper_figures`` with its inputs given by name (the test cases read better so)."""
    data = figures.RunData(**{k: given[k] for k in DATA_KEYS if k in given})
    shown = figures.Shown(**{k: given[k] for k in SHOWN_KEYS if k in given})
    layout = figures.Layout(**{k: given[k] for k in LAYOUT_KEYS if k in given})
    return figures.paper_figures(out, shown, data, layout)


def draw_counts(out, counts, bars=None, records=None, **given):
    """``figures.figures_for_counts`` with its inputs given by name."""
    data = figures.RunData(**{k: given[k] for k in DATA_KEYS if k in given})
    return figures.figures_for_counts(out, counts, data, bars or Bars(), records=records)

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"  # the released pairs (shared/reference)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- an independent implementation of the supplement's rule (section D), plain Python ----------

def reference_selection(train_index, infl, n_copies=3, n_egs=5):
    best = {}
    for i, x in zip(list(train_index), list(infl)):
        best[int(i)] = max(best.get(int(i), -math.inf), float(x))
    ordered = sorted(best, key=lambda i: (-best[i], i))  # highest influence first, ties by index
    count = len(ordered)
    if count == 0:
        return []
    base = [int(k * (count - n_copies) / (n_egs - 1)) if count >= n_copies else 0 for k in range(n_egs)]
    return [[ordered[min(max(b + c, 0), count - 1)] for b in base] for c in range(n_copies)]


def reference_influenced_by(test_index):
    per_test = {}
    for j in list(test_index):
        per_test[int(j)] = per_test.get(int(j), 0) + 1
    result = {}
    for k in per_test.values():
        result[k] = result.get(k, 0) + 1
    return dict(sorted(result.items()))


# ---- a run on digits with planted memorization and influence ----------------------------------

@pytest.fixture(scope="module")
def digits():
    from raymem.data.datasets import load_dataset

    return load_dataset("digits", None)


def planted_trials(y_train, y_test, t=80, seed=0):
    """Trials where 12 training examples (two per class 0..5) are memorized and each drives 1-3 test examples."""
    rng = np.random.default_rng(seed)
    n, n_test = y_train.size, y_test.size
    memorized = np.concatenate([np.flatnonzero(y_train == c)[:2] for c in range(6)])
    planted = []
    for k, i in enumerate(memorized):
        same = np.flatnonzero(y_test == y_train[i])
        planted += [(int(i), int(j)) for j in same[2 * k % len(same):][: 1 + k % 3]]
    m = int(round(0.7 * n))
    records = []
    for k in range(t):
        mask = np.zeros(n, bool)
        mask[rng.permutation(n)[:m]] = True
        train_ok = rng.random(n) < 0.95
        train_ok[memorized] = mask[memorized] & (rng.random(memorized.size) < 0.95)
        test_ok = rng.random(n_test) < 0.9
        for i, j in planted:
            test_ok[j] = rng.random() < (0.95 if mask[i] else 0.05)
        records.append(SimpleNamespace(trial_id=k, mask=mask, train_correct=train_ok, test_correct=test_ok))
    return records, memorized, planted


@pytest.fixture(scope="module")
def digits_run(digits):
    records, memorized, planted = planted_trials(digits.y_train, digits.y_test)
    counts = Counts.empty(digits.n_train, digits.n_test, batch_size=32)
    for r in records:
        counts.add(r.trial_id, r.mask, r.train_correct, r.test_correct)
    counts.flush()
    original = digits.y_train.copy()
    flipped_label = digits.y_train.copy()
    flipped_label[memorized[0]] = (flipped_label[memorized[0]] + 1) % 10  # a canary of class 1 (was 0)
    return SimpleNamespace(records=records, counts=counts, memorized=memorized, planted=planted,
                           train_labels=flipped_label, original=original)


def png_ok(path: Path) -> bool:
    data = Path(path).read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_every_figure_is_written_and_shows_the_supplement_selection(tmp_path, digits, digits_run):
    out = tmp_path / "figs"
    summary = draw_counts(
        out, digits_run.counts, train_labels=digits_run.train_labels, test_labels=digits.y_test,
        original_train_labels=digits_run.original, records=digits_run.records,
        train_images=digits.x_train, test_images=digits.x_test,
    )
    assert summary["skipped"] == {}
    assert set(summary["written"]) == set(figures.OUTPUT_FILES)
    for name in figures.OUTPUT_FILES:
        assert (out / name).stat().st_size > 0
        if name.endswith(".png"):
            assert png_ok(out / name), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    pairs = report.pairs_table(digits_run.counts)
    assert pairs.num_rows >= len(digits_run.planted) - 2
    found = set(zip(pairs.column("train_index").to_pylist(), pairs.column("test_index").to_pylist()))
    assert len(found & set(digits_run.planted)) >= len(digits_run.planted) - 2  # the planted pairs are selected

    # The rows shown are the supplement's rule, implemented independently.
    expect = reference_selection(pairs.column("train_index").to_pylist(), pairs.column("infl").to_pylist())
    shown = pq.read_table(out / figures.INFLUENCE_EXAMPLES)
    assert shown.schema.names[:3] == ["row", "copy", "position"]
    by_row = {}
    for r in shown.to_pylist():
        by_row.setdefault(r["row"], []).append(r)
    assert sorted(by_row) == list(range(15))
    assert [by_row[r][0]["train_index"] for r in range(15)] == [i for copy in expect for i in copy]
    assert summary["influence_rows"] == [i for copy in expect for i in copy]

    # Each row shows the 4 most influenced test examples over the whole row of the influence matrix.
    v = digits_run.counts.all
    full = formulas.influence(digits_run.counts.pairs_ready(), v.n_in, v.test_hits, v.n_out)
    mem = formulas.memorization(v.in_hits, v.n_in, v.out_hits, v.n_out)
    for row, items in by_row.items():
        i = items[0]["train_index"]
        best = sorted(range(digits.n_test), key=lambda j: (-full[i, j], j))[:4]
        assert [x["test_index"] for x in items] == best
        assert [x["rank"] for x in items] == [1, 2, 3, 4]
        for x in items:
            assert x["infl"] == pytest.approx(full[i, x["test_index"]])
            assert x["infl_lo"] <= x["infl"] <= x["infl_hi"]
            assert x["mem"] == pytest.approx(mem[i])
            assert x["test_label"] == digits.y_test[x["test_index"]]

    assert summary["influenced_by"] == reference_influenced_by(pairs.column("test_index").to_pylist())
    # memorized.png shows the default class: most training examples with mem >= 0.25, sorted by mem.
    above = np.bincount(digits_run.train_labels[mem >= 0.25], minlength=10)
    assert summary["class"] == int(np.argmax(above))
    members = [i for i in range(digits.n_train) if digits_run.train_labels[i] == summary["class"]]
    assert summary["memorized_shown"] == sorted(members, key=lambda i: (-mem[i], i))[:figures.DEFAULT_MAX_MEMORIZED]


def test_an_explicit_class_and_pairs_only_rows(tmp_path, digits, digits_run):
    counts = digits_run.counts
    mem = report.mem_table(counts)
    pairs = report.pairs_table(counts)
    summary = draw(
        tmp_path, mem=mem, pairs=pairs, train_labels=digits_run.train_labels, test_labels=digits.y_test,
        train_images=digits.x_train[..., 0], test_images=digits.x_test[..., 0], klass=3, max_memorized=5,
    )
    assert summary["class"] == 3 and len(summary["memorized_shown"]) == 5
    assert all(digits_run.train_labels[i] == 3 for i in summary["memorized_shown"])
    # Without counts, a row shows the training example's selected pairs only, by influence.
    shown = pq.read_table(tmp_path / figures.INFLUENCE_EXAMPLES).to_pylist()
    pair_set = set(zip(pairs.column("train_index").to_pylist(), pairs.column("test_index").to_pylist()))
    assert shown and all((r["train_index"], r["test_index"]) in pair_set for r in shown)
    assert png_ok(tmp_path / figures.INFLUENCE_PNG) and png_ok(tmp_path / figures.MEMORIZED_PNG)


def test_a_run_without_images_writes_what_it_can(tmp_path, digits, digits_run):
    counts = digits_run.counts
    summary = draw(
        tmp_path / "out", mem=report.mem_table(counts), pairs=report.pairs_table(counts),
        train_labels=digits.y_train, test_labels=digits.y_test,
        convergence=convergence_curve(digits_run.records, counts.n_train, counts.n_test),
    )
    assert set(summary["skipped"]) == {figures.MEMORIZED_PNG, figures.INFLUENCE_PNG}
    assert all("images" in reason for reason in summary["skipped"].values())
    assert summary["written"] == [figures.INFLUENCE_EXAMPLES, figures.INFLUENCE_HIST_PNG, figures.CONVERGENCE_PNG]
    assert png_ok(tmp_path / "out" / figures.INFLUENCE_HIST_PNG) and png_ok(tmp_path / "out" / figures.CONVERGENCE_PNG)
    assert summary["class"] is None


def test_no_pairs_and_no_trials(tmp_path, digits):
    counts = Counts.empty(digits.n_train, digits.n_test)
    summary = draw(
        tmp_path, mem=report.mem_table(counts), pairs=report.pairs_table(counts),
        train_labels=digits.y_train, test_labels=digits.y_test,
        train_images=digits.x_train, test_images=digits.x_test,
    )
    assert set(summary["skipped"]) == {figures.INFLUENCE_PNG, figures.CONVERGENCE_PNG}
    assert summary["influenced_by"] == {} and summary["pairs"] == 0
    assert png_ok(tmp_path / figures.INFLUENCE_HIST_PNG) and png_ok(tmp_path / figures.MEMORIZED_PNG)
    assert pq.read_table(tmp_path / figures.INFLUENCE_EXAMPLES).num_rows == 0


@pytest.mark.parametrize("klass", [10, -1, 2.5, "three"])
def test_unknown_class_names_the_range_and_writes_nothing(tmp_path, digits, digits_run, klass):
    counts = digits_run.counts
    out = tmp_path / "figs"
    with pytest.raises(RaymemError, match=r"class .* --class in 0\.\.9"):
        draw(out, mem=report.mem_table(counts), pairs=report.pairs_table(counts),
                              train_labels=digits.y_train, test_labels=digits.y_test,
                              train_images=digits.x_train, test_images=digits.x_test, klass=klass)
    assert not out.exists()


def test_bad_inputs_raise_before_writing(tmp_path, digits, digits_run):
    counts = digits_run.counts
    mem, pairs = report.mem_table(counts), report.pairs_table(counts)
    args = dict(mem=mem, pairs=pairs, train_labels=digits.y_train, test_labels=digits.y_test)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(RaymemError, match="is a file"):
        draw(a_file, **args)
    with pytest.raises(RaymemError, match="does not exist"):
        draw(tmp_path / "no" / "such", **args)
    out = tmp_path / "figs"
    with pytest.raises(RaymemError, match="train_images holds 5 images"):
        draw(out, **args, train_images=digits.x_train[:5])
    with pytest.raises(RaymemError, match="not images"):
        draw(out, **args, train_images=digits.x_train.reshape(digits.n_train, -1))
    with pytest.raises(RaymemError, match="lacks the columns infl"):
        draw(out, **{**args, "pairs": pairs.drop(["infl"])})
    with pytest.raises(RaymemError, match="beyond"):
        draw(out, **{**args, "test_labels": digits.y_test[:3]})
    assert not out.exists()


# ---- the selection rule and the Fig. C.1 counts -------------------------------------------------

@pytest.mark.parametrize("name, expect", [
    ("cifar100", {1: 774, 2: 101, 3: 13}),
    ("imagenet", {1: 1298, 2: 150, 3: 13, 4: 1}),
])
def test_influenced_by_counts_reproduce_the_supplement(name, expect):
    with np.load(REFERENCE / f"{name}_high_infl_pairs_infl0.15_mem0.25.npz", allow_pickle=False) as z:
        tr, tt, infl = z["tr_idx"], z["tt_idx"], z["infl"]
    assert shown_examples.influenced_by_counts(tt) == expect
    assert reference_influenced_by(tt) == expect
    table = shown_examples.influenced_by_table(tt)
    assert dict(zip(table.column("influenced_by").to_pylist(), table.column("test_examples").to_pylist())) == expect
    # The selection rule on the released pairs equals the independent implementation.
    got = [c.tolist() for c in shown_examples.select_training_rows(tr, infl)]
    assert got == reference_selection(tr, infl)
    assert all(len(c) == 5 and len(set(c)) == 5 for c in got)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 6, 7, 13, 100])
def test_selection_rule_on_few_training_examples(count):
    rng = np.random.default_rng(count)
    tr = np.repeat(np.arange(count) * 7, 3)
    infl = rng.choice([0.2, 0.3, 0.5], tr.size)  # many ties
    got = [c.tolist() for c in shown_examples.select_training_rows(tr, infl)]
    assert got == reference_selection(tr, infl)
    assert len(got) == 3 and all(len(c) == 5 for c in got)
    assert shown_examples.select_training_rows([], []) == []


def test_selection_rule_matches_the_printed_code_when_there_are_no_ties():
    rng = np.random.default_rng(5)
    tr = rng.integers(0, 500, 300)
    infl = rng.random(300)
    idx_train_selected = np.unique(tr)
    max_infl_of_train_selected = np.array([infl[tr == i].max() for i in idx_train_selected])
    # The supplement's code, verbatim except np.int -> int.
    n_copies, n_egs = 3, 5
    idx_sort_selected = np.argsort(-max_infl_of_train_selected)
    base_idx = np.linspace(0, len(idx_train_selected) - n_copies, n_egs).astype(int)
    printed = [[idx_train_selected[idx_sort_selected[x + i_copy]] for x in base_idx] for i_copy in range(n_copies)]
    assert [c.tolist() for c in shown_examples.select_training_rows(tr, infl)] == [[int(i) for i in c] for c in printed]


# ---- convergence --------------------------------------------------------------------------------

def test_convergence_curve_ends_at_the_status_summary(digits_run):
    counts = digits_run.counts
    curve = convergence_curve(iter(digits_run.records), counts.n_train, counts.n_test, total=len(digits_run.records))
    trials = curve.column("trials").to_pylist()
    assert trials == checkpoints(80).tolist() and trials[-1] == 80 and 10 <= len(trials) <= 20
    summary = report.convergence_summary(counts, subset_size=int(round(0.7 * counts.n_train)))
    last = curve.to_pylist()[-1]
    assert last["median_halfwidth"] == pytest.approx(summary["mem"]["median_halfwidth"])
    assert last["certified"] == summary["mem"]["certified"]
    assert last["estimated_above"] == summary["mem"]["estimated_above"]
    assert last["split_jaccard"] == pytest.approx(summary["split_half"]["mem"]["0.25"]["jaccard"])
    # A prefix equals the counts of the first k trials.
    k = trials[3]
    prefix = Counts.empty(counts.n_train, counts.n_test, with_pairs=False)
    for r in digits_run.records[:k]:
        prefix.add(r.trial_id, r.mask, r.train_correct, r.test_correct)
    lo, hi = report.mem_intervals(prefix.all, Bars(), counts.n_train)
    assert curve.to_pylist()[3]["median_halfwidth"] == pytest.approx(float(np.median((hi - lo) / 2)))
    assert np.all(np.diff(curve.column("median_halfwidth").to_numpy()) < 0.05)  # shrinks (up to noise)
    with pytest.raises(RaymemError, match="total="):
        convergence_curve(iter(digits_run.records), counts.n_train, counts.n_test)


# ---- several runs against a reference -----------------------------------------------------------

def test_comparison_figure(tmp_path, digits, digits_run):
    a = digits_run.counts
    records, *_ = planted_trials(digits.y_train, digits.y_test, t=60, seed=1)
    b = Counts.empty(digits.n_train, digits.n_test)
    for r in records:
        b.add(r.trial_id, r.mask, r.train_correct, r.test_correct)
    curves = {"b": compare.compare_runs(a, b), "a-again": compare.compare_runs(a, a)}
    legend = {name: {"architecture": arch, "pairs": report.pairs_table(c).num_rows,
                     "test_accuracy": figures.mean_test_accuracy(c)}
              for name, arch, c in (("a", "cnn", a), ("b", "mlp", b), ("a-again", "cnn", a))}
    out = figures.comparison_figure("a", curves, tmp_path / "cmp.png", legend=legend)
    assert png_ok(out)
    assert figures.legend_label("b", legend["b"]).startswith("b: mlp (")
    assert figures.mean_test_accuracy(a) == pytest.approx(np.mean([r.test_correct.mean() for r in digits_run.records]))
    with pytest.raises(RaymemError, match="lacks jaccard"):
        figures.comparison_figure("a", {"b": curves["b"].drop(["jaccard"])}, tmp_path / "x.png")
    with pytest.raises(RaymemError, match="does not exist"):
        figures.comparison_figure("a", curves, tmp_path / "missing" / "x.png")
    with pytest.raises(RaymemError, match="at least one run"):
        figures.comparison_figure("a", {}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
