"""Issue 22 item 8: findings, the quarantine report and the notification in the site's language.

The catalogs are gettext .po files (Babel); every message id the code marks (``msg(...)``,
``N_(...)``, ``_("...")`` in templates) has a translation in every language, with the same
placeholders, and translating changes no check's outcome or JSON.
"""

from __future__ import annotations

import html as html_module
import json
import re
import string
from pathlib import Path

import openpyxl
import pytest
from babel.messages.extract import extract
from babel.messages.pofile import read_po
from jinja2.ext import babel_extract

from lacrima import i18n
from lacrima.dropreport import quarantine_notice, render_html
from lacrima.intake import read_and_validate
from lacrima.privacy import DEMO_KEY
from lacrima.study import load_site
from lacrima.synth import write_drop

SRC = Path(i18n.__file__).parent
PORTAL = SRC.parents[1] / "flows" / "portal"
TEMPLATES = (SRC / "templates", PORTAL / "templates")


def _code_ids() -> set[str]:
    """Every message id of the library and the portal: ``msg``/``N_`` in Python (Babel's
    Python extractor), ``_("...")`` in the library's and the portal's templates (Jinja2's
    Babel extractor, which parses the templates as Jinja does)."""
    ids = set()
    for path in [*SRC.rglob("*.py"), *PORTAL.glob("*.py")]:
        with open(path, "rb") as fh:
            ids |= {m[1] for m in extract("python", fh, keywords=i18n.KEYWORDS)}
    for folder in TEMPLATES:
        for path in folder.glob("*.j2"):
            with open(path, "rb") as fh:
                found = list(extract(babel_extract, fh, keywords={"_": None},
                                     options={"extensions": "jinja2.ext.i18n"}))
            assert found or "_(" not in path.read_text(), path
            ids |= {m[1] for m in found}
    return ids


def test_the_extractor_sees_the_portal_pages():
    ids = _code_ids()
    assert {"Check and send a file", "What to do", "on this page: Check, then Send",
            "site {site} is not yours to open", "waiting for the next run"} <= ids


def _fields(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


@pytest.mark.parametrize("lang", [x for x in i18n.LANGUAGES if x != "en"])
def test_every_message_id_has_a_translation_with_the_same_placeholders(lang):
    with open(i18n.po_path(lang), "rb") as fh:
        catalog = read_po(fh, locale=lang)
    translated = {m.id: m.string for m in catalog if m.id}
    ids = _code_ids()
    assert len(ids) > 100
    assert not sorted(ids - set(translated)), "message ids without a translation"
    assert not sorted(set(translated) - ids), "translations of ids the code no longer has"
    for msgid in ids:
        assert translated[msgid].strip(), msgid
        assert _fields(translated[msgid]) == _fields(msgid), (msgid, translated[msgid])
        assert not any(m.fuzzy for m in catalog if m.id == msgid)


def test_unknown_languages_fall_back_to_english():
    assert i18n.translator("fr").gettext("what to do") == "what to do"
    assert i18n.translator("it_IT").gettext("what to do") == "cosa fare"
    assert i18n.direction("he") == "rtl" and i18n.direction("de") == "ltr"


@pytest.fixture(scope="module")
def italian_report(study, tmp_path_factory):
    folder = tmp_path_factory.mktemp("i18n")
    path = write_drop(load_site("it"), study, folder / "dati.xlsx", n=12, seed=5)
    wb = openpyxl.load_workbook(path)
    ws = wb["Dati"]
    names = [c.value for c in ws[1]]
    ws.cell(row=3, column=names.index("Genere") + 1, value="Doona")     # a typo of "Donna"
    ws.append(["Totale"])
    wb.save(path)
    rep, _ = read_and_validate(path, load_site("it"), study, DEMO_KEY, path.name, "0" * 64)
    return rep


def test_an_italian_quarantine_report_reads_in_italian(italian_report):
    html = render_html(italian_report, "it")
    assert '<html lang="it" dir="ltr">' in html
    assert "Rapporto di validazione" in html and "Cosa fare" in html
    text = html_module.unescape(html)
    assert "una riga di totali o di riepilogo ('Totale')" in text
    assert "'Doona' (forse 'Donna'?)" in text
    assert "non sono partecipanti" in html and "What to do" not in html
    # the JSON is the same whatever the language: English texts, stable check names
    data = json.dumps(italian_report.to_dict())
    assert "non_participant_rows" in data and "not participants" in data
    assert "partecipanti" not in data


def test_a_hebrew_report_is_right_to_left(italian_report):
    html = render_html(italian_report, "he")
    assert '<html lang="he" dir="rtl">' in html and "מה לעשות" in html
    english = render_html(italian_report, "en")
    assert '<html lang="en" dir="ltr">' in english and "What to do" in english


def test_the_terminal_report_and_the_notice_follow_the_language(italian_report):
    from rich.console import Console

    from lacrima.dropreport import print_report
    console = Console(width=80, record=True, color_system=None)
    print_report(italian_report, console, lang="de")
    text = console.export_text()
    assert "UNGÜLTIG" in text and "was tun" in text and "non_participant_rows" in text
    drop = {"file": "dati.xlsx", "site": "it", "batch": "a" * 64, "rows": 12, "errors": 2,
            "checks": ["non_participant_rows", "unknown_labels"], "report": "r.html"}
    subject, body = quarantine_notice(drop, "it")
    assert "quarantena" in subject and "lacrima upload FILE --site it" in body
    assert quarantine_notice(drop)[0] == "lacrima: dati.xlsx from site it was quarantined"
    # linked to the batch's page in the portal, the notice ends in that page's step
    _, linked = quarantine_notice({**drop, "report": "https://portal.example.org/sites/it/"
                                   "batches/aaaaaaaaaaaa"}, "it")
    assert "lacrima upload" not in linked and "in quella pagina" in linked
    assert "https://portal.example.org/sites/it/batches/aaaaaaaaaaaa" in linked


def test_translations_change_no_outcome(italian_report):
    for lang in i18n.LANGUAGES:
        local = [f.localized(lang) for f in italian_report.findings]
        assert len(local) == len(italian_report.findings)
        assert all(t["message"] for t in local)


def test_a_fix_is_rendered_for_where_it_is_read(italian_report):
    """The JSON and the terminal name the command; the portal ends the same fix in the page's
    action. A stored report (``to_dict``) keeps the message ids, so it renders the same."""
    from lacrima.findings import Finding

    errors = [f for f in italian_report.findings if f.severity == "error"]
    assert any("lacrima upload FILE --site it" in f.fix for f in errors)
    for f in errors:
        for lang in i18n.LANGUAGES:
            portal = f.localized(lang, channel="portal")["fix"]
            assert portal and "lacrima " not in portal and "--site" not in portal, (lang, portal)
            again = Finding.from_dict(json.loads(json.dumps(f.to_dict())))
            assert again.localized(lang, channel="portal") == f.localized(lang, channel="portal")
            assert again.localized(lang) == f.localized(lang)
    shown = [f.localized("it", channel="portal")["fix"] for f in errors]
    assert any("in questa pagina: Controlla, poi Invia" in t for t in shown)


def test_every_fix_that_names_a_command_has_a_portal_rendering():
    """A message id of the library that tells the person to run a command is either a fix
    whose command is its ``{upload}`` parameter or one that ``PORTAL_FIXES`` renders for the
    portal; else the portal would tell a data manager to run `lacrima upload ... --site`."""
    from lacrima.findings import PORTAL_FIXES

    ids = set()
    for path in SRC.rglob("*.py"):
        with open(path, "rb") as fh:
            ids |= {m[1] for m in extract("python", fh, keywords=i18n.KEYWORDS)}
    commands = {i for i in ids if "lacrima " in i or "--site" in i}
    # the notice of a quarantined drop chooses its own last line (dropreport.quarantine_notice)
    commands.discard("Fix the file in your own tool, then upload it: lacrima upload FILE --site "
                     "{site}")
    assert commands, "the library names no command: this test has nothing to guard"
    assert not sorted(commands - set(PORTAL_FIXES)), "fixes naming a command, with no portal text"
    for portal in (v for k, v in PORTAL_FIXES.items() if k in ids):
        assert "lacrima " not in portal and "--site" not in portal
