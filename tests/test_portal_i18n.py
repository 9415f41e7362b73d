"""Issue 22 item 8 for the portal: a site's person reads every page in the ``language`` of
their site (Italian for ``it``, Hebrew right to left for ``il``); the finding cards are the
quarantine report's, and their "what to do" ends in the page's action, not a command. The
token API's JSON stays English.
"""

from __future__ import annotations

import html as html_module
import shutil

import openpyxl
import pytest
from fastapi.testclient import TestClient

from flows.portal.server import create_app
from lacrima import catalog, intake, people
from lacrima.i18n import msg, translator
from lacrima.privacy import DEMO_KEY
from lacrima.storage import LocalStorage
from lacrima.synth import write_drop
from test_portal_api import signed_in      # a person invited, password set, signed in



@pytest.fixture(scope="module")
def store(tmp_path_factory, ingested_demo):
    root = tmp_path_factory.mktemp("portal-i18n") / "store"
    shutil.copytree(ingested_demo.root, root)
    return LocalStorage(root)


@pytest.fixture(scope="module")
def app(store):
    return create_app(str(store.root), demo=True, warm=False)


def broken_italian(path, n: int = 12, id_offset: int = 700_000):
    """An Italian workbook at ``path`` with a misspelt answer ("Doona") and a "Totale" row under
    the data: what the Italian data manager of these tests (and docs/portal.md's screenshots)
    checks."""
    from lacrima.study import load_site, load_study

    write_drop(load_site("it"), load_study(), path, n=n, seed=5, id_offset=id_offset)
    wb = openpyxl.load_workbook(path)
    ws = wb["Dati"]
    names = [c.value for c in ws[1]]
    ws.cell(row=3, column=names.index("Genere") + 1, value="Doona")
    ws.append(["Totale"])
    wb.save(path)
    return path


@pytest.fixture(scope="module")
def broken_it(tmp_path_factory):
    return broken_italian(tmp_path_factory.mktemp("it") / "dati.xlsx")


def text(r) -> str:
    return html_module.unescape(r.text)


def test_an_italian_site_reads_its_home_in_italian(app, store):
    client = signed_in(app, store, "dm.it@example.org", "it")
    r = client.get("/sites/it")
    assert r.status_code == 200
    assert '<html lang="it" dir="ltr">' in r.text
    for words in ("Centro it", "Controlla e invia un file", "Lotti", "partecipanti presenti",
                  "Esci", "accettato"):
        assert words in text(r), words
    for words in ("Check and send a file", "Batches", "participants held", "Sign out"):
        assert words not in text(r), words
    # a coordinator reads the same page in English (docs/portal.md, "Languages")
    coordinator = signed_in(app, store, "coord@example.org", "us", role="coordinator")
    page = coordinator.get("/sites/it")
    assert '<html lang="en" dir="ltr">' in page.text and "Check and send a file" in page.text


def test_an_italian_check_reads_in_italian_and_ends_in_the_pages_action(app, store, broken_it):
    client = signed_in(app, store, "check.it@example.org", "it")
    form = client.get("/sites/it/upload")
    assert "Trascinate qui il file" in form.text and "Controlla" in form.text
    r = client.post("/sites/it/check", data={"csrf": client.cookies["lacrima_csrf"]},
                    files={"file": ("dati.xlsx", broken_it.read_bytes())},
                    headers={"X-Fragment": "1"})
    assert r.status_code == 200
    page = text(r)
    assert 'class="finding error"' in r.text and "Cosa fare" in page
    assert "una riga di totali o di riepilogo ('Totale')" in page
    assert "'Doona' (forse 'Donna'?)" in page
    assert "in questa pagina: Controlla, poi Invia" in page
    # the portal never tells a data manager to run a command
    assert "lacrima upload" not in page and "--site" not in page
    assert "What to do" not in page and "non_participant_rows" in page   # check names stay
    # nothing was stored by the check; the API answers the same file in English
    token = people.new_token(store, "it")[1]
    api = TestClient(app).post("/api/v1/sites/it/check",
                               headers={"Authorization": f"Bearer {token}"},
                               files={"file": ("dati.xlsx", broken_it.read_bytes())})
    data = api.json()
    assert api.status_code == 200 and not data["valid"]
    fixes = " ".join(f["fix"] for f in data["findings"])
    assert "lacrima upload FILE --site it" in fixes and "Cosa" not in api.text
    assert "partecipanti" not in api.text


def test_a_file_the_site_does_not_send_is_refused_in_the_pages_language(app, store, tokens_it):
    # intake.upload_refusal, the check lacrima upload makes: its words in Italian in the page,
    # in English in the API (whose JSON stays English).
    client = signed_in(app, store, "type.it@example.org", "it")
    r = client.post("/sites/it/check", data={"csrf": client.cookies["lacrima_csrf"]},
                    files={"file": ("dati.pdf", b"%PDF-1.4")}, headers={"X-Fragment": "1"})
    assert r.status_code == 200
    assert "il centro it invia file .xlsx" in text(r) and "non .pdf" in text(r)
    api = TestClient(app).post("/api/v1/sites/it/drops", headers=tokens_it,
                               files={"file": ("dati.pdf", b"%PDF-1.4")})
    assert api.status_code == 415 and "site it sends .xlsx" in api.json()["detail"]


@pytest.fixture(scope="module")
def tokens_it(store):
    return {"Authorization": f"Bearer {people.new_token(store, 'it')[1]}"}


def test_a_quarantined_batch_page_reads_in_italian(app, store, study, sites, broken_it):
    """The stored report.json keeps each text's message id, so the batch page of a quarantined
    drop is in the site's language as a fresh check is."""
    it = next(s for s in sites if s.code == "it")
    intake.upload(store, it, broken_it, study=study)
    (result,) = [r for r in intake.ingest_sites(store, [it], study, DEMO_KEY)]
    sha = intake.sha256_bytes(broken_it.read_bytes())
    assert sha in result.quarantined
    client = signed_in(app, store, "batch.it@example.org", "it")
    page = client.get(f"/sites/it/batches/{sha[:12]}")
    assert page.status_code == 200
    shown = text(page)
    assert "in quarantena" in shown and "Cosa fare" in shown
    assert "una riga di totali o di riepilogo ('Totale')" in shown
    assert "lacrima upload" not in shown
    assert catalog.batches(store, "it")


def test_a_hebrew_site_reads_right_to_left(app, store):
    client = signed_in(app, store, "dm.il@example.org", "il")
    r = client.get("/sites/il")
    assert r.status_code == 200 and '<html lang="he" dir="rtl">' in r.text
    assert "בדיקה ושליחה של קובץ" in r.text and "Check and send a file" not in r.text
    form = client.get("/sites/il/withdraw")
    assert 'dir="rtl"' in form.text and "רישום ביטול הסכמה" in form.text
    # another site's page is refused in the person's own language
    refused = client.get("/sites/it")
    assert refused.status_code == 403
    said = msg("site {site} is not yours to open", site="it").render(translator("he"))
    assert said in refused.text


def test_the_sign_in_page_follows_the_browser(app):
    r = TestClient(app).get("/signin", headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"})
    assert '<html lang="de" dir="ltr">' in r.text and "Anmelden" in r.text
    r = TestClient(app).get("/signin", headers={"Accept-Language": "fr-FR,en;q=0.8"})
    assert '<html lang="en" dir="ltr">' in r.text and "Sign in" in r.text
