"""No identifying value from a drop reaches curated data, reports, the ledger or the logs.

Synthetic drops for every site carry identifying columns with distinctive values (names,
e-mails, phone numbers, IP addresses, coordinates) and raw IDs. The whole pipeline runs on them
(intake, analysis, pooling, report; plain ``src`` calls as in tests/test_pipeline.py), with every
log record at DEBUG and stdout/stderr captured. Then every object under curated/, reports/ and
ledger/, and every quarantine report (report.json, report.html), is decoded to text (parquet via
pandas) and searched for each of those values. The quarantined original files are, of course,
kept as sent and are not searched; the scanner is shown to find the values in the raw drops.
The site portal is then used over a copy of that store (every page of each site, checks and
sends of the same drops, a withdrawal by raw ID, the coordinator's pages): its pages, API
answers, accounts and audit log are searched too.

The fast tier runs it under the small plan (tests/smallplan.py: every kind of analysis, table
and section, fewer effects): which values could leak depends on the kinds of output, not on
how many effects each holds. The full suite runs it under the demo's plan too (``slow``).

Israel's IDs are plain integers (1, 2, ...): they cannot be told apart from other numbers in a
text search, so for il only the identifying values planted by the messy drop are searched.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lacrima import intake, report, steps
from lacrima.storage import LocalStorage

KEY = b"test-key"
N = 60      # per site: enough for every family of the plan; the published N only costs time
SYLLABLES = ("vel", "kar", "oth", "zub", "mir", "qua", "dex", "lon", "tri", "bex", "ysh", "orn")


def _fake_names(rng: np.random.Generator, n: int) -> list[str]:
    """Invented three-syllable names (e.g. 'Velkaroth'): no chance of meeting one in a report."""
    return ["".join(rng.choice(SYLLABLES, 3)).capitalize() + str(k) for k in range(n)]


def _plant_us(path, rng) -> None:
    """Fill the Qualtrics recipient columns synth leaves blank: names, e-mail, reference."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    col = {name: i for i, name in enumerate(rows[0])}
    data = rows[3:]                          # three Qualtrics header rows
    first, last = _fake_names(rng, len(data)), _fake_names(rng, len(data))
    for row, f, l in zip(data, first, last):
        row[col["RecipientFirstName"]] = f
        row[col["RecipientLastName"]] = l
        row[col["RecipientEmail"]] = f"{f}.{l}@example.org".lower()
        row[col["ExternalReference"]] = f"CRM-{l.upper()}"
    with open(path, "w", encoding="utf-8-sig", newline="") as fh:
        csv.writer(fh).writerows(rows)


def _plant_it(path, rng) -> None:
    """Add the identifying columns an Italian export may carry (Nome, Cognome, Email, ...)."""
    import openpyxl

    wb = openpyxl.load_workbook(path)
    ws = wb.active
    n = ws.max_row - 1
    first, last = _fake_names(rng, n), _fake_names(rng, n)
    values = {"Nome": first, "Cognome": last,
              "Email": [f"{f}.{l}@example.it".lower() for f, l in zip(first, last)],
              "Telefono": [f"+39 333 {int(x):07d}" for x in rng.integers(0, 10**7, n)],
              "Indirizzo IP": [f"198.51.100.{int(x)}" for x in rng.integers(1, 255, n)]}
    start = ws.max_column + 1
    for j, (name, vals) in enumerate(values.items()):
        ws.cell(row=1, column=start + j, value=name)
        for i, v in enumerate(vals):
            ws.cell(row=2 + i, column=start + j, value=v)
    wb.save(path)


def _identifying(site: str, path) -> dict[str, set[str]]:
    """The identifying values and raw IDs in a drop, read without lacrima (pandas only)."""
    if site == "us":
        frame = pd.read_csv(path, encoding="utf-8-sig", skiprows=[1, 2], dtype=str)
        cols = {"id": ["ResponseId"], "name": ["RecipientFirstName", "RecipientLastName"],
                "email": ["RecipientEmail"], "other": ["ExternalReference"],
                "ip": ["IPAddress"], "coordinate": ["LocationLatitude", "LocationLongitude"]}
    elif site == "it":
        frame = pd.read_excel(path, dtype=str)
        cols = {"id": ["ID"], "name": ["Nome", "Cognome"], "email": ["Email"],
                "other": ["Telefono"], "ip": ["Indirizzo IP"]}
    else:
        import pyreadstat

        frame = pyreadstat.read_sav(str(path))[0]
        cols = {"email": ["email"], "name": ["name"], "other": ["phone"]}
    out = {}
    for kind, names in cols.items():
        vals = set()
        for name in names:
            if name in frame.columns:
                vals |= {str(v).strip() for v in frame[name].dropna() if str(v).strip()}
        out[kind] = vals
    return out


def _pattern(values) -> re.Pattern:
    # Whole values only: '41.2345' must not match inside '141.23456'.
    alts = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9.])(?:{alts})(?![A-Za-z0-9])")


def _text(storage, key: str) -> str:
    data = storage.read_bytes(key)
    if key.endswith(".parquet"):
        frame = pd.read_parquet(io.BytesIO(data))
        return " ".join(map(str, frame.columns)) + "\n" + frame.to_csv(index=False)
    return data.decode("utf-8", errors="replace")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()} "
                          f"{record.exc_text or ''}")


@pytest.fixture(scope="module", params=["small", pytest.param("demo", marks=pytest.mark.slow)])
def scanned(request, tmp_path_factory):
    from lacrima.synth import write_drop

    if request.param == "small":
        study, sites = request.getfixturevalue("small_plan").study, \
            request.getfixturevalue("small_plan").sites
    else:
        study, sites = request.getfixturevalue("study"), request.getfixturevalue("sites")
    folder = tmp_path_factory.mktemp("privacy")
    rng = np.random.default_rng(20240601)
    drops = {}
    for s in sites:
        clean = write_drop(s, study, folder / "clean" / s.code, n=N)
        if s.code == "us":
            _plant_us(clean, rng)
        elif s.code == "it":
            _plant_it(clean, rng)
        # A second, messy batch with fresh IDs: quarantined, with a planted e-mail column.
        # (Not for it, whose clean drop already carries every identifying column: each drop
        # costs a validation, and this file should stay fast.)
        messy = None if s.code == "it" else write_drop(
            s, study, folder / "messy" / s.code, n=N, seed=11, mess=True, id_offset=500)
        drops[s.code] = (clean, messy)

    values: dict[str, set[str]] = {}
    for code, paths in drops.items():
        for p in filter(None, paths):
            for kind, vals in _identifying(code, p).items():
                values.setdefault(kind, set()).update(vals)

    storage = LocalStorage(folder / "store")
    handler, root = _Records(), logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            for s in sites:
                for p in filter(None, drops[s.code]):
                    intake.upload(storage, s, p, uploader="dm")
            intakes = {s.code: intake.ingest_site(storage, s, study, KEY) for s in sites}
            analyses = [steps.site_step(storage, s, study, outputs=False) for s in sites]
            comparison = steps.compare_sites(analyses, study, list(sites))
            prov = steps.provenance("scan", analyses, study, list(sites))
            report.write_outputs(storage, "scan", analyses, comparison, study, list(sites), prov)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    logs = "\n".join(handler.lines) + "\n" + out.getvalue() + "\n" + err.getvalue()
    return SimpleNamespace(storage=storage, drops=drops, values=values, intakes=intakes,
                           logs=logs, n_log_records=len(handler.lines), sites=sites)


def _scanned_keys(storage) -> list[str]:
    keys = [o.key for zone in ("curated", "reports", "ledger") for o in storage.list(zone)]
    keys += [o.key for o in storage.list("quarantine")
             if o.key.rsplit("/", 1)[-1] in ("report.json", "report.html")]
    return keys


def test_the_run_covers_every_zone_that_must_stay_clean(scanned):
    sites = scanned.sites
    """The scan is only as good as what it reads: accepted and quarantined drops, a full report."""
    for s in sites:
        res = scanned.intakes[s.code]
        messy = scanned.drops[s.code][1] is not None
        assert len(res.accepted) == 1 and len(res.quarantined) == messy, res.reports
    keys = _scanned_keys(scanned.storage)
    for prefix in ("curated/us/", "curated/it/", "curated/il/", "ledger/us/",
                   "reports/scan/results.csv", "reports/scan/report.html",
                   "reports/scan/restricted/data/us.csv", "reports/latest.json"):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert sum(k.endswith("/report.json") for k in keys) == 2
    # Every planted kind is really there to be found.
    for kind in ("id", "name", "email", "other", "ip", "coordinate"):
        assert len(scanned.values[kind]) >= 20, kind


def test_the_scanner_finds_the_values_where_they_are(scanned):
    """Positive control: the same search finds every value in the source drops themselves."""
    us_clean, _ = scanned.drops["us"]
    text = us_clean.read_text(encoding="utf-8-sig")
    found = {m.group(0) for m in _pattern(set().union(*scanned.values.values())).finditer(text)}
    us = _identifying("us", us_clean)
    assert set().union(*us.values()) <= found


@pytest.mark.parametrize("kind", ["id", "name", "email", "other", "ip", "coordinate"])
def test_no_identifying_value_in_curated_reports_ledger_or_quarantine_reports(scanned, kind):
    pattern = _pattern(scanned.values[kind])
    leaks = {}
    for key in _scanned_keys(scanned.storage):
        hits = sorted({m.group(0) for m in pattern.finditer(_text(scanned.storage, key))})
        if hits:
            leaks[key] = hits[:3]
    assert not leaks, f"{kind} values found: {leaks}"


@pytest.mark.parametrize("kind", ["id", "name", "email", "other", "ip", "coordinate"])
def test_no_identifying_value_in_the_logs(scanned, kind):
    hits = sorted({m.group(0) for m in _pattern(scanned.values[kind]).finditer(scanned.logs)})
    assert not hits, f"{kind} values in {scanned.n_log_records} log records or output: {hits[:3]}"


def test_quarantined_originals_are_kept_as_sent(scanned):
    """What is not scanned is the data manager's own file, kept byte for byte."""
    for code, (_, messy) in scanned.drops.items():
        if messy is None:
            continue
        (sha,) = scanned.intakes[code].quarantined
        kept = scanned.storage.read_bytes(f"quarantine/{code}/{sha}/{messy.name}")
        assert kept == messy.read_bytes()


# --------------------------------------------------------------------------- the portal

PORTAL_EMAILS = ("dm.{code}@portal.example.org", "coordinator@portal.example.org")


@pytest.fixture(scope="module")
def portal_seen(scanned, tmp_path_factory):
    """The portal over a copy of the scanned store, used as people would: each site's data
    manager opens every page of their site (quarantined batches' cards included), checks and
    sends a messy drop through the pages and the API, and withdraws a person by their raw ID;
    a coordinator opens every coordinator page. Returns every page and API answer as text,
    with the store's accounts and audit log."""
    import shutil

    from fastapi.testclient import TestClient

    from flows.portal.server import create_app
    from lacrima import catalog, people

    root = tmp_path_factory.mktemp("privacy-portal") / "store"
    shutil.copytree(scanned.storage.root, root, symlinks=True)
    storage = LocalStorage(root)
    app = create_app(str(root), warm=False, key=KEY)
    texts: dict[str, str] = {}

    def session(email, site, role="site"):
        _, link = people.invite(storage, email, site, role=role)
        client = TestClient(app)
        texts[f"invite {email}"] = client.get(f"/invite/{link}").text
        client.post(f"/invite/{link}", data={"csrf": client.cookies["lacrima_csrf"],
                                             "password": "p" * 12, "password2": "p" * 12})
        return client

    ids = sorted(_identifying("us", scanned.drops["us"][0])["id"])
    for s in scanned.sites:
        client = session(PORTAL_EMAILS[0].format(code=s.code), s.code)
        csrf = client.cookies["lacrima_csrf"]
        token = people.new_token(storage, s.code)[1]
        clean, messy = scanned.drops[s.code]
        for path in filter(None, (messy, clean)):
            files = {"file": (path.name, path.read_bytes())}
            texts[f"check page {path}"] = client.post(
                f"/sites/{s.code}/check", data={"csrf": csrf}, files=files).text
            texts[f"check api {path}"] = client.post(
                f"/api/v1/sites/{s.code}/check", files=files,
                headers={"Authorization": f"Bearer {token}"}).text
        texts[f"send {s.code}"] = client.post(
            f"/sites/{s.code}/drops", data={"csrf": csrf},
            files={"file": (clean.name, clean.read_bytes() + b"\n")}).text
        if s.code == "us":
            step2 = client.post("/sites/us/withdraw", data={
                "csrf": csrf, "step": "1", "participant_id": ids[0], "reason": "asked"})
            check = step2.text.split('name="check" value="')[1].split('"')[0]
            texts["withdraw us"] = client.post("/sites/us/withdraw", data={
                "csrf": csrf, "step": "2", "check": check, "participant_id_again": ids[0],
                "confirm": "yes"}).text
        pages = [f"/sites/{s.code}", f"/sites/{s.code}/upload", f"/sites/{s.code}/withdraw"]
        pages += [f"/sites/{s.code}/batches/{r.sha256[:12]}"
                  for r in catalog.batches(storage, s.code)]
        for path in pages:
            texts[path] = client.get(path).text
        texts[f"status {s.code}"] = client.get(
            f"/api/v1/sites/{s.code}/status", headers={"Authorization": f"Bearer {token}"}).text
    coordinator = session(PORTAL_EMAILS[1], "", role="coordinator")
    for path in ("/coordinator", "/audit", "/reports/scan"):
        texts[path] = coordinator.get(path).text
    stored = {o.key: _text(storage, o.key) for zone in ("people", "audit")
              for o in storage.list(zone)}
    return SimpleNamespace(texts=texts, stored=stored, withdrawn=ids[0])


def test_the_portal_scan_covers_pages_accounts_and_audit(portal_seen):
    texts, stored = portal_seen.texts, portal_seen.stored
    assert any("finding error" in t for k, t in texts.items() if k.startswith("check page"))
    assert "Withdrawal recorded" in texts["withdraw us"]
    assert any(k.startswith("people/accounts/") for k in stored)
    actions = {json.loads(t)["action"] for k, t in stored.items() if k.startswith("audit/")}
    assert {"invite", "set_password", "send", "withdraw", "token"} <= actions


@pytest.mark.parametrize("kind", ["id", "name", "email", "other", "ip", "coordinate"])
def test_no_identifying_value_in_the_portals_pages_accounts_or_audit(scanned, portal_seen, kind):
    pattern = _pattern(scanned.values[kind])
    leaks = {}
    for where, text in {**portal_seen.texts, **portal_seen.stored}.items():
        hits = sorted({m.group(0) for m in pattern.finditer(text)})
        if hits:
            leaks[where] = hits[:3]
    assert not leaks, f"{kind} values found: {leaks}"


def test_the_portal_users_email_addresses_stay_in_their_accounts(portal_seen):
    emails = [e.format(code=c) for e in PORTAL_EMAILS for c in ("us", "it", "il")]
    for where, text in {**portal_seen.texts, **portal_seen.stored}.items():
        if where.startswith("people/accounts/"):
            continue
        assert not [e for e in emails if e in text], where
