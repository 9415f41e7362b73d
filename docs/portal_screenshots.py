"""Screenshots of the site portal for docs/portal.md, in headless Chromium at 1280 and 390 px.

    PYTHONPATH=src:. .venv/bin/python docs/portal_screenshots.py [OUT_DIR]

Builds a demo store in a temporary folder (a clean drop per site, a broken one for us, a
report), serves the portal over it and photographs what a data manager and a coordinator see:
site us in English, site it in Italian (a workbook with a misspelt answer and a totals row)
and site il in Hebrew, right to left (a messy export).
"""

from __future__ import annotations

import sys
import time
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from flows.portal.server import create_app, serving
from lacrima import intake, people, report, steps
from lacrima.privacy import DEMO_KEY
from lacrima.storage import LocalStorage
from lacrima.study import load_sites, load_study
from lacrima.synth import write_drop

PASSWORD = "demo password 2026"


def store_with_history(folder: Path) -> tuple[LocalStorage, Path]:
    study, sites = load_study(), load_sites()
    storage = LocalStorage(folder / "store")
    us = next(s for s in sites if s.code == "us")
    for s in sites:
        intake.upload(storage, s, write_drop(s, study, folder / s.code), uploader="demo")
    broken = write_drop(us, study, folder / "broken", n=60, seed=7, id_offset=700_000, mess=True)
    intake.upload(storage, us, broken, uploader="demo")
    intake.ingest_sites(storage, sites, study, DEMO_KEY)
    analyses = [steps.site_step(storage, s, study) for s in sites]
    comparison = steps.compare_sites(analyses, study, list(sites))
    prov = steps.provenance("run-1", analyses, study, list(sites))
    report.write_outputs(storage, "run-1", analyses, comparison, study, list(sites), prov)
    return storage, broken


def broken_italian(folder: Path) -> Path:
    """The Italian data manager's broken workbook of the tests (tests/test_portal_i18n.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_portal_i18n import broken_italian as build

    return build(folder / "dati.xlsx", n=40)


def check(driver, url, site, path, name):
    driver.get(f"{url}/sites/{site}/upload")
    driver.find_element(By.ID, "file").send_keys(str(path))
    driver.find_element(By.ID, "check").click()
    WebDriverWait(driver, 60).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, ".finding")))
    time.sleep(1)                   # the page scrolls to the findings
    driver.save_screenshot(name)


def sign_in(driver, url, link):
    driver.delete_all_cookies()
    driver.get(f"{url}/invite/{link}")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "password2").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form.card button").click()
    WebDriverWait(driver, 30).until(ec.url_matches(r"/(sites/\w+|coordinator)$"))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    with tempfile.TemporaryDirectory() as tmp:
        storage, broken = store_with_history(Path(tmp))
        italian = broken_italian(Path(tmp))
        il = next(s for s in load_sites() if s.code == "il")
        hebrew = write_drop(il, load_study(), Path(tmp) / "il-broken", n=40, seed=9,
                            id_offset=700_000, mess=True)
        with serving(create_app(str(storage.root), demo=True, warm=False)) as url:
            for width, height, suffix in ((1280, 1000, ""), (390, 1600, "-390")):
                driver.set_window_size(width, height)
                _, link = people.invite(storage, f"dm{width}@example.org", "us")
                sign_in(driver, url, link)
                driver.save_screenshot(str(out / f"portal-home{suffix}.png"))
                check(driver, url, "us", broken, str(out / f"portal-check{suffix}.png"))
                _, link = people.invite(storage, f"dm{width}@example.it", "it")
                sign_in(driver, url, link)
                check(driver, url, "it", italian, str(out / f"portal-check-it{suffix}.png"))
                _, link = people.invite(storage, f"dm{width}@example.il", "il")
                sign_in(driver, url, link)
                driver.save_screenshot(str(out / f"portal-home-he{suffix}.png"))
                check(driver, url, "il", hebrew, str(out / f"portal-check-he{suffix}.png"))
                if width > 1000:
                    _, link = people.invite(storage, "coord@example.org", "", role="coordinator")
                    sign_in(driver, url, link)
                    driver.save_screenshot(str(out / "portal-coordinator.png"))
    driver.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
