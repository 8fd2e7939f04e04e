"""`raymem serve` driven in a real headless browser (Debian's Chromium through Selenium; `.ci/run` installs it).

What a person does: open the overview, watch the trial count go up while trials land, open the memorization page,
see the thumbnails load, click an example and read its influences, whose intervals must be the library's. With
RAYMEM_SCREENSHOTS=DIR set, the pages are also saved there as PNGs (the README's screenshots come from this test).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from raymem import api
from raymem.handle import Run
from raymem.store.trial_log import write_trial
from raymem.store.trial_record import TrialRecord

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="Chromium and ChromeDriver are not installed (.ci/run installs them)")

N, N_TEST, T, MORE = 30, 20, 24, 6


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def served(tmp_path, synthetic_run, monkeypatch):
    """A small ingested run, served with digit images as its thumbnails (an ingested run has no loader)."""
    from sklearn.datasets import load_digits

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("raymem.explorer.state.CHECK_SECONDS", 0.0)
    sim = synthetic_run(seed=4, n=N, n_test=N_TEST, t=T + MORE, memorized=[3, 8], planted=[(3, 5), (8, 11)])
    digits = load_digits()
    images = ((digits.images[:N] * 16).astype(np.uint8), (digits.images[N:N + N_TEST] * 16).astype(np.uint8), None)
    monkeypatch.setattr(Run, "images", lambda self, data_dir=None: images)
    run = api.ingest(str(tmp_path / "run"), sim.masks[:T], sim.train_correct[:T], sim.test_correct[:T],
                     train_labels=digits.target[:N], test_labels=digits.target[N:N + N_TEST])
    explorer = api.serve([run.uri], port=0)
    yield run, explorer, sim
    explorer.close()


def shoot(driver, name: str) -> None:
    folder = os.environ.get("RAYMEM_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_a_person_browses_a_run_while_it_trains(browser, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run, explorer, sim = served
    base = explorer.url.split("?")[0].rstrip("/")
    browser.get(base + "/run/0/")
    assert browser.find_element(By.ID, "trials-done").text == str(T)
    shoot(browser, "explorer-overview")

    info = run.info
    for k in range(T, T + MORE):  # trials land while the page stays open; nobody reloads it
        write_trial(run.store, TrialRecord(run_id=info.run_id, trial_id=k, seed=0, mask=sim.masks[k],
                                           train_correct=sim.train_correct[k], test_correct=sim.test_correct[k]))
    WebDriverWait(browser, 30, poll_frequency=0.5).until(
        lambda d: d.find_element(By.ID, "trials-done").text == str(T + MORE))

    browser.get(base + "/run/0/memorization?per_page=10")
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='/run/0/train/']")]
    shown = list(dict.fromkeys(int(href.rstrip("/").rsplit("/", 1)[1]) for href in links))
    mem = run.estimates().column("mem").to_numpy()
    assert shown == np.lexsort((np.arange(N), -mem))[:10].tolist()  # sorted by estimate, as the library reads
    loaded = browser.execute_script(
        "return Array.from(document.querySelectorAll('img.t')).map(i => i.complete && i.naturalWidth > 0);")
    assert len(loaded) == 10 and all(loaded)
    shoot(browser, "explorer-memorization")

    browser.find_element(By.CSS_SELECTOR, "a[href$='/run/0/train/3']").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.rstrip("/").endswith("/run/0/train/3"))
    shoot(browser, "explorer-train-example")
    pairs = {p["test_index"]: p for p in run.pairs(min_infl=-1.0, min_mem=-1.0).to_pylist() if p["train_index"] == 3}
    rows = browser.find_elements(By.CSS_SELECTOR, "tr")
    checked = 0
    for row in rows:
        link = row.find_elements(By.CSS_SELECTOR, "a[href*='/run/0/test/']")
        if not link:
            continue
        j = int(link[0].get_attribute("href").rstrip("/").rsplit("/", 1)[1])
        p = pairs[j]
        assert f"[{p['infl_lo']:.4f}, {p['infl_hi']:.4f}]" in row.text, (j, row.text)
        checked += 1
    assert checked > 0 and 5 in {int(a.get_attribute("href").rsplit("/", 1)[1])
                                 for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='/run/0/test/']")}
