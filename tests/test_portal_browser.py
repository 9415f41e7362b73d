"""A site's data manager in a real browser (headless Chromium driven by Selenium): from an
invite link to a checked, sent and accepted drop, the quarantine cards of a broken one, and a
withdrawal with its confirmation. The portal runs in uvicorn over a copy of the ingested demo
store; the run in between is the library's intake (as tests/test_pipeline.py calls it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from flows.portal.server import create_app, serving
from lacrima import catalog, intake, people
from lacrima.privacy import DEMO_KEY
from lacrima.storage import LocalStorage
from lacrima.synth import write_drop

CHROMIUM = os.environ.get("LACRIMA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LACRIMA_CHROMEDRIVER", "/usr/bin/chromedriver")
PASSWORD = "tears in therapy 2026"

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} missing: run `make system-deps` (Debian chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def portal(tmp_path_factory, ingested_demo):
    root = tmp_path_factory.mktemp("portal-browser") / "store"
    shutil.copytree(ingested_demo.root, root)
    store = LocalStorage(root)
    with serving(create_app(str(root), demo=True, warm=False)) as url:
        yield store, url


def wait_for(driver, css, timeout=60):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def test_a_data_manager_checks_sends_sees_accepted_and_withdraws(browser, portal, study, sites,
                                                                 tmp_path):
    from selenium.webdriver.common.by import By

    store, url = portal
    us = next(s for s in sites if s.code == "us")
    broken = write_drop(us, study, tmp_path / "broken", n=40, seed=21, id_offset=900_000,
                        mess=True)
    fixed = write_drop(us, study, tmp_path / "fixed", n=40, seed=21, id_offset=900_000)
    _, link = people.invite(store, "dm.us@example.org", "us")

    # The invite link: set a password, and be signed in on the site's home.
    browser.get(f"{url}/invite/{link}")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == us.language
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "password2").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.card button").click()
    wait_for(browser, ".stats")
    assert browser.current_url.endswith("/sites/us")

    # Check the broken file: the page shows the findings as cards, nothing is stored.
    landing = {o.key for o in store.list("landing")}
    browser.get(f"{url}/sites/us/upload")
    browser.find_element(By.ID, "file").send_keys(str(broken))
    browser.find_element(By.ID, "check").click()
    card = wait_for(browser, ".finding.error")
    expected, _ = intake.check_file(broken, us, study)
    first = next(f for f in expected.findings if f.severity == "error")
    assert first.check in browser.find_element(By.ID, "findings").text
    assert card.find_element(By.CSS_SELECTOR, ".fix").text
    assert {o.key for o in store.list("landing")} == landing

    # The fixed file: checked clean, then sent.
    browser.find_element(By.ID, "file").clear()
    browser.find_element(By.ID, "file").send_keys(str(fixed))
    browser.find_element(By.ID, "check").click()
    wait_for(browser, "#ready")
    browser.find_element(By.ID, "send").click()
    done = wait_for(browser, "#done")
    assert "File sent" in done.text
    sha = intake.sha256_bytes(fixed.read_bytes())
    row = browser.find_element(By.ID, f"b-{sha[:12]}")
    assert "waiting for the next run" in row.text

    # The run takes it in; the home page says accepted, with its new records.
    (result,) = [r for r in intake.ingest_sites(store, sites, study, DEMO_KEY) if r.site == "us"]
    assert sha in result.accepted
    browser.refresh()
    row = wait_for(browser, f"#b-{sha[:12]}")
    assert "accepted" in row.text and "40" in row.text

    # Withdraw one of the people the file held: the ID, a confirmation, a reason.
    from lacrima.codebook import load_codebook
    codebook = load_codebook(us)
    frame = pd.read_csv(fixed, skiprows=[1, 2], dtype=str)
    native = codebook.native_name("participant_id")
    pid = frame[native].iloc[0]
    held = catalog.participants_held(store, "us")
    browser.get(f"{url}/sites/us/withdraw")
    browser.find_element(By.ID, "participant_id").send_keys(pid)
    browser.find_element(By.ID, "reason").send_keys("asked by e-mail")
    browser.find_element(By.ID, "next").click()
    wait_for(browser, "#participant_id_again")
    assert pid not in browser.page_source
    browser.find_element(By.ID, "participant_id_again").send_keys(pid)
    browser.find_element(By.ID, "confirm").click()
    browser.find_element(By.ID, "withdraw").click()
    assert "Withdrawal recorded" in wait_for(browser, "#done").text
    assert catalog.participants_held(store, "us") == held - 1
    assert [e["action"] for e in people.audit_log(store, "us", limit=3)] == [
        "withdraw", "send", "set_password"]


def test_an_italian_data_manager_reads_the_check_in_italian_and_cannot_open_another_site(
        browser, portal, study, sites, tmp_path):
    """Site ``it`` (language = "it" in its site.toml): the check of a broken workbook (a
    misspelt answer, a totals row) is read in Italian in the page, and ends in the page's
    action, not a command; every page of site ``us`` is refused, in Italian."""
    from selenium.webdriver.common.by import By

    from lacrima.i18n import msg, translator
    from test_portal_i18n import broken_italian

    store, url = portal
    broken = broken_italian(tmp_path / "dati.xlsx", id_offset=800_000)
    _, link = people.invite(store, "dm.it@example.org", "it")
    browser.delete_all_cookies()
    browser.get(f"{url}/invite/{link}")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "it"
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "password2").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.card button").click()
    wait_for(browser, ".stats")
    assert "Controlla e invia un file" in browser.find_element(By.TAG_NAME, "main").text

    browser.get(f"{url}/sites/it/upload")
    browser.find_element(By.ID, "file").send_keys(str(broken))
    browser.find_element(By.ID, "check").click()
    wait_for(browser, ".finding.error")
    shown = browser.find_element(By.ID, "findings").text
    assert "una riga di totali o di riepilogo ('Totale')" in shown
    assert "COSA FARE" in shown.upper() and "in questa pagina: Controlla, poi Invia" in shown
    assert "lacrima upload" not in shown and "What to do" not in shown
    assert "il file andrebbe in quarantena" in browser.find_element(By.ID, "send-note").text

    it_ = translator("it")
    refusals = (msg("site {site} is not yours to open", site="us").render(it_),
                msg("this is not yours to open").render(it_))
    batch = catalog.batches(store, "us")[0].sha256[:12]
    for path in ("/sites/us", f"/sites/us/batches/{batch}", "/sites/us/upload",
                 "/sites/us/withdraw", "/coordinator", "/audit"):
        browser.get(url + path)
        main = browser.find_element(By.TAG_NAME, "main").text
        assert any(r in main for r in refusals), (path, main)
