"""`raymem serve` on a small ingested run: pages fetched over HTTP show what the library reads give."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
from typer.testing import CliRunner

from raymem import api
from raymem.cli import app
from raymem.handle import Run
from raymem.store.trial_log import write_trial
from raymem.store.trial_record import TrialRecord

N, N_TEST, T = 30, 20, 24


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def sim(synthetic_run):
    return synthetic_run(seed=4, n=N, n_test=N_TEST, t=T + 4, memorized=[3, 8], planted=[(3, 5), (8, 11)])


@pytest.fixture
def served(tmp_path, sim):
    run = api.ingest(str(tmp_path / "run"), sim.masks[:T], sim.train_correct[:T], sim.test_correct[:T])
    explorer = api.serve([run.uri], port=0)
    yield run, explorer
    explorer.close()


def get(explorer, path: str, token: str | None = None) -> str:
    request = urllib.request.Request(explorer.url.split("?")[0].rstrip("/") + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def test_the_overview_shows_the_trial_count_and_follows_new_trials(served, sim, monkeypatch):
    run, explorer = served
    page = get(explorer, "/run/0/")
    assert re.search(rf"<span id='trials-done'>{T}</span>", page)
    assert "http-equiv='refresh'" in page and "<svg" in page
    info = run.info
    for k in range(T, T + 4):  # trials land while the page is open
        write_trial(run.store, TrialRecord(run_id=info.run_id, trial_id=k, seed=0, mask=sim.masks[k],
                                           train_correct=sim.train_correct[k], test_correct=sim.test_correct[k]))
    monkeypatch.setattr("raymem.explorer.state.CHECK_SECONDS", 0.0)
    assert f"<span id='trials-done'>{T + 4}</span>" in get(explorer, "/run/0/")
    assert json.loads(get(explorer, "/run/0/api/status"))["trials_done"] == T + 4
    # the new trials were counted into the held view: the reads equal a replay of the whole log
    assert json.loads(get(explorer, "/run/0/api/influence/11")) == run.influence(11).to_pylist()
    assert json.loads(get(explorer, "/run/0/api/memorization?per_page=500&sort=train_index&order=asc"))["rows"] == \
        run.estimates().to_pylist()


def test_the_memorization_page_lists_examples_sorted_by_estimate(served):
    run, explorer = served
    page = get(explorer, "/run/0/memorization?per_page=10")
    shown = [int(i) for i in re.findall(r"<a href='/run/0/train/(\d+)'>", page)]
    mem = run.estimates().column("mem").to_numpy()
    expected = np.lexsort((np.arange(N), -mem))[:10]
    assert shown == expected.tolist()
    assert "No thumbnails: the run was ingested" in page
    rows = json.loads(get(explorer, "/run/0/api/memorization?certified=1&per_page=500"))["rows"]
    assert all(r["mem_lo"] >= 0.25 for r in rows)
    certified = run.estimates().column("mem_lo").to_numpy() >= 0.25
    assert [r["train_index"] for r in rows] == [i for i in np.lexsort((np.arange(N), -mem)) if certified[i]]


def test_example_pages_show_the_influence_reads_and_link_both_ways(served):
    run, explorer = served
    page = get(explorer, "/run/0/test/5")
    expected = run.influence(5, top=10).to_pylist()
    assert json.loads(get(explorer, "/run/0/api/influence/5")) == expected
    for r in expected:  # the page shows each influencer with its interval, linking to its own page
        assert f"<a href='/run/0/train/{r['train_index']}'>" in page
        assert f"[{r['infl_lo']:.4f}, {r['infl_hi']:.4f}]" in page
    train_page = get(explorer, "/run/0/train/3")
    assert "<a href='/run/0/test/5'>" in train_page  # the planted pair, the other way round
    pair = [p for p in run.pairs(min_infl=0.0, min_mem=-1.0).to_pylist() if p["train_index"] == 3
            and p["test_index"] == 5][0]
    influenced = json.loads(get(explorer, "/run/0/api/influenced/3"))
    row = [r for r in influenced if r["test_index"] == 5][0]
    assert (row["infl"], row["infl_lo"], row["infl_hi"]) == (pair["infl"], pair["infl_lo"], pair["infl_hi"])
    assert "Trials" in get(explorer, "/run/0/trials") and "pairs" in get(explorer, "/run/0/pairs?fdr=0.1")


def test_a_token_is_required_when_given(tmp_path, sim):
    run = api.ingest(str(tmp_path / "run"), sim.masks[:T], sim.train_correct[:T], sim.test_correct[:T])
    explorer = api.serve([run.uri], port=0, token="s3cret")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(explorer, "/run/0/")
        assert refused.value.code == 403
        assert "trials-done" in get(explorer, "/run/0/", token="s3cret")
    finally:
        explorer.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::"])
def test_a_non_loopback_address_without_a_token_is_refused(tmp_path, sim, host):
    run = api.ingest(str(tmp_path / "run"), sim.masks[:T], sim.train_correct[:T], sim.test_correct[:T])
    result = CliRunner().invoke(app, ["serve", run.uri, "--host", host, "--port", "0"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--token" in lines[0] and "--host" in lines[0]
    assert Run(run.uri).exists


def test_thumbnails_come_from_the_runs_images(tmp_path, sim, monkeypatch):
    run = api.ingest(str(tmp_path / "run"), sim.masks[:T], sim.train_correct[:T], sim.test_correct[:T])
    rng = np.random.default_rng(0)
    images = (rng.random((N, 8, 8)), rng.integers(0, 255, (N_TEST, 8, 8, 3), dtype=np.uint8), None)
    monkeypatch.setattr(Run, "images", lambda self, data_dir=None: images)
    explorer = api.serve([run.uri], port=0)
    try:
        page = get(explorer, "/run/0/memorization?per_page=5")
        assert page.count("<img class='t'") == 5 and "No thumbnails" not in page
        base = explorer.url.rstrip("/")
        for path in ("/run/0/image/train/4.png", "/run/0/image/test/7.png"):
            with urllib.request.urlopen(base + path, timeout=30) as response:
                assert response.headers["Content-Type"] == "image/png"
                assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/run/0/image/train/999.png", timeout=30)
        assert missing.value.code == 404
    finally:
        explorer.close()


def test_several_runs_are_compared_as_raymem_compare_does(tmp_path, sim, synthetic_run):
    other = synthetic_run(seed=9, n=N, n_test=N_TEST, t=T, memorized=[3], planted=[(3, 5)])
    a = api.ingest(str(tmp_path / "a"), sim.masks[:T], sim.train_correct[:T], sim.test_correct[:T])
    b = api.ingest(str(tmp_path / "b"), other.masks, other.train_correct, other.test_correct)
    explorer = api.serve([a.uri, b.uri], port=0)
    try:
        assert "<a href='/run/1/'>b</a>" in get(explorer, "/") and "/compare" in get(explorer, "/")
        page = get(explorer, "/compare")
        assert "src='data:image/png;base64," in page
        for r in a.compare(b.uri).to_pylist():
            assert (f"<td class='l'>{r['quantity']}</td><td class=''>{r['threshold']:.2f}</td>"
                    f"<td class=''>{r['jaccard']:.4f}</td>") in page
    finally:
        explorer.close()


def test_example_pages_give_the_q_values_of_raymem_pairs_fdr(tmp_path, synthetic_run):
    sim = synthetic_run(seed=4, n=N, n_test=N_TEST, t=400, memorized=[3, 8], planted=[(3, 5), (8, 11)])
    run = api.ingest(str(tmp_path / "run"), sim.masks, sim.train_correct, sim.test_correct)
    explorer = api.serve([run.uri], port=0)
    try:
        selected = run.pairs(fdr=0.1).to_pylist()
        assert {(p["train_index"], p["test_index"]) for p in selected} >= {(3, 5), (8, 11)}
        for p in selected:
            page = get(explorer, f"/run/0/test/{p['test_index']}?fdr=0.1&top=30")
            row = re.search(rf"<a href='/run/0/train/{p['train_index']}'>.*?</tr>", page).group(0)
            assert f"<td class=''>{p['q_value']:.4f}</td></tr>" in row
        assert "q (FDR 0.1)" in get(explorer, "/run/0/train/3?fdr=0.1")
    finally:
        explorer.close()


def test_the_memorization_pages_follow_on_with_the_same_sort_and_filters(served):
    run, explorer = served
    page = get(explorer, "/run/0/memorization?sort=train_index&order=asc&per_page=7&min_mem=-1")
    link = re.search(r"<a href='(/run/0/memorization\?[^']*page=1[^']*)'>next", page).group(1).replace("&amp;", "&")
    shown = [int(i) for i in re.findall(r"<a href='/run/0/train/(\d+)'>", get(explorer, link))]
    assert shown == list(range(7, 14))


def test_a_port_in_use_and_a_missing_run_exit_2_with_one_error_line(tmp_path, sim):
    import socket

    run = api.ingest(str(tmp_path / "run"), sim.masks[:T], sim.train_correct[:T], sim.test_correct[:T])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, named in (([run.uri, "--port", str(port)], "--port"), ([str(tmp_path / "none")], "run.json")):
            result = CliRunner().invoke(app, ["serve", *args])
            assert result.exit_code == 2, result.output
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
            assert "----" not in lines[0]
