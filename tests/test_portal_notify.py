"""With the portal's address set, a quarantine notice links to the batch's page there."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flows import notify

DROP = {"site": "it", "file": "marzo.xlsx", "batch": "3f9c2a" + "0" * 58,
        "outcome": "quarantined", "rows": 106, "errors": 1, "warnings": 0,
        "checks": ["unknown_labels"], "report": "data/quarantine/it/3f9c2a/report.html"}


@pytest.fixture
def outbox(monkeypatch):
    sent = []
    monkeypatch.setattr(notify, "send", lambda contact, subject, body: sent.append(body) or 1)
    monkeypatch.setattr(notify, "site_contact", lambda site: {"webhook": "https://h.example/x"})
    return sent


def test_the_notice_links_to_the_batch_page_in_the_portal(outbox, monkeypatch):
    monkeypatch.setenv("LACRIMA_PUBLIC_URL", "https://portal.example.org/")
    assert notify.notify_quarantines([DROP], [SimpleNamespace(code="it", language="en")]) == 1
    assert "https://portal.example.org/sites/it/batches/3f9c2a000000" in outbox[0]
    assert "data/quarantine" not in outbox[0]


def test_without_a_portal_the_notice_names_the_report_path(outbox, monkeypatch):
    monkeypatch.delenv("LACRIMA_PUBLIC_URL", raising=False)
    notify.notify_quarantines([DROP], [SimpleNamespace(code="it", language="en")])
    assert "data/quarantine/it/3f9c2a/report.html" in outbox[0]


def test_the_link_opens_the_batch_page(tmp_path, demo_store):
    """The link's path is the portal's batch route (a signed-in coordinator gets the page)."""
    from fastapi.testclient import TestClient

    from flows.portal.server import create_app
    from lacrima import catalog, people

    batch = catalog.batches(demo_store, "it")[0].sha256
    path = notify.portal_link("it", batch, "http://testserver").removeprefix("http://testserver")
    app = create_app(str(demo_store.root), warm=False)
    _, link = people.invite(demo_store, "c@example.org", "", role="coordinator")
    client = TestClient(app)
    client.get(f"/invite/{link}")
    client.post(f"/invite/{link}", data={"csrf": client.cookies["lacrima_csrf"],
                                         "password": "x" * 12, "password2": "x" * 12})
    r = client.get(path)
    assert r.status_code == 200 and batch[:12] in r.text
