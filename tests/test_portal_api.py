"""The portal's token API and its guards, through FastAPI's TestClient (httpx) and, for the
concurrent uploads, the real server (uvicorn) with httpx's async client.

The store is a copy of the session's analysed demo store (``demo_run``); tokens and accounts
are made through :mod:`lacrima.people`, as ``lacrima portal token`` / ``invite`` do.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import zipfile
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from flows.portal.app import PUBLIC, Limiter
from flows.portal.server import create_app, serving
from lacrima import catalog, intake, people
from lacrima.privacy import DEMO_KEY
from lacrima.storage import LocalStorage
from lacrima.synth import write_drop

PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo_run):
    root = tmp_path_factory.mktemp("portal") / "store"
    shutil.copytree(demo_run.storage.root, root, symlinks=True)
    return LocalStorage(root)


@pytest.fixture(scope="module")
def app(store):
    return create_app(str(store.root), demo=True, warm=False,
                      limiter=Limiter(per_account=3, per_address=50), max_bytes=2_000_000)


@pytest.fixture(scope="module")
def tokens(store):
    return {who: people.new_token(store, site, role=role)[1] for who, site, role in
            (("us", "us", "site"), ("it", "it", "site"), ("coord", "us", "coordinator"))}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def signed_in(app, store, email, site, role="site") -> TestClient:
    """A browser session of a new person: invited, password set, signed in."""
    _, link = people.invite(store, email, site, role=role)
    client = TestClient(app)
    client.get(f"/invite/{link}")
    r = client.post(f"/invite/{link}", data={"csrf": client.cookies["lacrima_csrf"],
                                             "password": PASSWORD, "password2": PASSWORD},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    return client


@pytest.fixture(scope="module")
def drops(tmp_path_factory, study, sites):
    folder = tmp_path_factory.mktemp("portal-drops")
    by = {s.code: s for s in sites}
    return {"clean": write_drop(by["us"], study, folder / "clean", n=30, seed=11),
            "messy": write_drop(by["us"], study, folder / "messy", n=30, seed=12, mess=True),
            "it": write_drop(by["it"], study, folder / "it", n=30, seed=13)}


def test_no_or_a_wrong_token_is_401(app, drops):
    client = TestClient(app)
    files = {"file": ("a.csv", drops["clean"].read_bytes())}
    assert client.post("/api/v1/sites/us/check", files=files).status_code == 401
    assert client.post("/api/v1/sites/us/drops", files=files,
                       headers=bearer("lcr_not-a-token")).status_code == 401
    assert client.get("/api/v1/sites/us/status", headers={"Authorization": "Basic x"}
                      ).status_code == 401


def test_another_sites_token_is_403_and_a_site_token_reads_no_reports(app, tokens, drops):
    client = TestClient(app)
    files = {"file": ("a.csv", drops["clean"].read_bytes())}
    assert client.post("/api/v1/sites/us/check", files=files, headers=bearer(tokens["it"])
                       ).status_code == 403
    assert client.post("/api/v1/sites/us/drops", files=files, headers=bearer(tokens["it"])
                       ).status_code == 403
    assert client.get("/api/v1/sites/us/status", headers=bearer(tokens["it"])).status_code == 403
    assert client.get("/api/v1/reports/latest", headers=bearer(tokens["us"])).status_code == 403


def test_check_answers_the_json_of_lacrima_check_and_stores_nothing(app, store, tokens, drops,
                                                                    tmp_path):
    from flows.cli import app as cli

    before = {o.key for o in store.list("landing")}
    r = TestClient(app).post("/api/v1/sites/us/check", headers=bearer(tokens["us"]),
                             files={"file": (drops["messy"].name, drops["messy"].read_bytes())})
    assert r.status_code == 200
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["check", str(drops["messy"]), "--site", "us",
                                   "--report", str(out)])
    assert res.exit_code == 1, res.output
    assert r.json() == json.loads(out.read_text())
    assert r.json()["valid"] is False and r.json()["findings"]
    assert {o.key for o in store.list("landing")} == before


def test_a_drop_lands_once_and_the_same_bytes_again_are_a_duplicate(app, store, tokens, drops):
    client = TestClient(app)
    data = drops["clean"].read_bytes()
    first = client.post("/api/v1/sites/us/drops", headers=bearer(tokens["us"]),
                        files={"file": ("export.csv", data)})
    assert first.status_code == 201 and first.json()["status"] == "landed"
    assert store.read_bytes(first.json()["key"]) == data
    assert first.json()["key"].startswith("landing/us/")
    again = client.post("/api/v1/sites/us/drops", headers=bearer(tokens["us"]),
                        files={"file": ("renamed.csv", data)})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["sha256"] == first.json()["sha256"]
    assert len([o for o in store.list("landing/us") if first.json()["sha256"][:12] in o.key]) == 1
    sends = [e for e in people.audit_log(store, "us") if e["action"] == "send"]
    assert [e["batch"] for e in sends].count(first.json()["sha256"]) == 1


def test_an_unsafe_file_name_is_made_safe(app, store, tokens, drops):
    data = drops["it"].read_bytes()
    r = TestClient(app).post("/api/v1/sites/it/drops", headers=bearer(tokens["it"]),
                             files={"file": ("../../../etc/\x1b[31mev\x00il\r\n.xlsx", data)})
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    name = key.rsplit("/", 1)[-1]
    assert key == f"landing/it/{name}" and ".." not in key
    assert all(c.isalnum() or c in "._-" for c in name), name
    assert store.read_bytes(key) == data
    assert not (store.root.parent / "etc").exists()


def test_a_file_type_the_site_does_not_read_is_415(app, tokens):
    client = TestClient(app)
    r = client.post("/api/v1/sites/us/drops", headers=bearer(tokens["us"]),
                    files={"file": ("export.pdf", b"%PDF-1.4 ...")})
    assert r.status_code == 415 and ".csv" in r.json()["detail"]
    r = client.post("/api/v1/sites/us/check", headers=bearer(tokens["us"]),
                    content=b"a,b\n1,2\n", )
    assert r.status_code == 415


def test_what_lacrima_upload_refuses_the_portal_refuses_too(app, store, tokens):
    # An encrypted (or legacy .xls) workbook under an .xlsx name: the type is one the site
    # sends, but `lacrima upload` refuses it before copying (intake.upload_refusal), and so
    # does the portal, through the same call; nothing lands.
    client = TestClient(app)
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600)
    r = client.post("/api/v1/sites/it/drops", headers=bearer(tokens["it"]),
                    files={"file": ("export.xlsx", ole)})
    assert r.status_code == 415 and "password" in r.json()["detail"], r.text
    assert not [o for o in store.list("landing/it/") if o.size == len(ole)]


def test_past_the_size_limit_is_413_while_streaming(app, store, tokens):
    """A chunked body (no Content-Length), fed to the application chunk by chunk: refused
    once the limit (2 MB here) is passed, the rest never asked for."""
    boundary = "lacrimaboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode()
    chunks = [head] + [b"x" * 100_000] * 200          # 20 MB
    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        if len(pulled) <= len(chunks):
            return {"type": "http.request", "body": chunks[len(pulled) - 1], "more_body": True}
        return {"type": "http.request", "body": f"\r\n--{boundary}--\r\n".encode(),
                "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/api/v1/sites/us/drops",
             "raw_path": b"/api/v1/sites/us/drops", "query_string": b"", "root_path": "",
             "headers": [(b"authorization", f"Bearer {tokens['us']}".encode()),
                         (b"content-type", f"multipart/form-data; boundary={boundary}".encode())],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}}
    before = {o.key for o in store.list("landing")}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 413 and "2 MB" in json.loads(body)["detail"]
    assert len(pulled) < 40                     # stopped soon after 2 MB, not at 20
    assert {o.key for o in store.list("landing")} == before
    # A declared length past the limit is refused before a byte of the body is read.
    r = TestClient(app).post("/api/v1/sites/us/check", headers=bearer(tokens["us"]),
                             files={"file": ("big.csv", b"x" * 3_000_000)})
    assert r.status_code == 413


def test_status_is_the_sites_part_of_lacrima_status_json(app, store, tokens):
    from flows.cli import app as cli

    r = TestClient(app).get("/api/v1/sites/it/status", headers=bearer(tokens["it"]))
    assert r.status_code == 200
    res = CliRunner().invoke(cli, ["status", "--site", "it", "--json", "--storage",
                                   str(store.root)])
    assert r.json() == json.loads(res.stdout)
    assert {row["site"] for row in r.json()} == {"it"}


def test_a_coordinator_token_reads_the_latest_report_and_its_zip_has_no_restricted(
        app, store, tokens):
    client = TestClient(app)
    r = client.get("/api/v1/reports/latest", headers=bearer(tokens["coord"]))
    assert r.status_code == 200
    latest = r.json()
    assert latest["run_id"] == catalog.latest_run(store)
    assert "report.html" in latest["files"]
    assert not any(n.startswith("restricted") for n in latest["files"])
    page = client.get(latest["files"]["report.html"], headers=bearer(tokens["coord"]))
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    z = client.get(latest["zip"], headers=bearer(tokens["coord"]))
    names = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
    assert f"{latest['run_id']}/report.html" in names
    assert not any("/restricted/" in n for n in names)
    restricted = [o.key for o in store.list(f"reports/{latest['run_id']}/restricted")]
    assert restricted                                  # there is something to keep out
    name = restricted[0].split("/", 2)[2]
    assert client.get(f"/api/v1/reports/{latest['run_id']}/files/{name}",
                      headers=bearer(tokens["coord"])).status_code == 404
    assert client.get("/api/v1/reports/../files/x", headers=bearer(tokens["coord"])
                      ).status_code == 404


# --------------------------------------------------------------------------- every route


def all_routes(routes):
    """Every route, the included routers' too (FastAPI 0.150 includes routers lazily:
    ``app.routes`` holds a branch per router, its routes under ``original_router``)."""
    for r in routes:
        if hasattr(r, "original_router"):
            yield from all_routes(r.original_router.routes)
        else:
            yield r


def _guarded(route: APIRoute) -> str | None:
    return next((getattr(d.call, "lacrima_action", None) for d in route.dependant.dependencies
                 if getattr(d.call, "lacrima_action", None)), None)


def test_every_route_declares_the_guard_or_is_public(app):
    routes = [r for r in all_routes(app.routes) if isinstance(r, APIRoute)]
    assert len(routes) > 15
    unguarded = {r.path for r in routes if _guarded(r) is None}
    assert unguarded <= PUBLIC | {"/", "/signout"}, unguarded


def test_every_route_refuses_nobody_and_another_sites_person(app, store, tokens):
    """Every guarded route of the application (enumerated: a new one is tried too), with
    site ``it`` and an ``it`` batch in its path: nobody gets 401 (pages: to the sign-in),
    a person and a token of ``us`` get 403."""
    batch = catalog.batches(store, "it")[0].sha256[:12]
    run = catalog.latest_run(store)
    values = {"site": "it", "batch": batch, "run": run, "name": "report.html", "token": "x"}
    us_person = signed_in(app, store, "us-person@example.org", "us")
    nobody = TestClient(app)
    tried = 0
    for route in all_routes(app.routes):
        if not isinstance(route, APIRoute) or _guarded(route) is None:
            continue
        path = route.path_format.format(**{k: values[k] for k in route.param_convertors})
        for method in route.methods:
            api = path.startswith("/api/")
            r = nobody.request(method, path, follow_redirects=False)
            assert r.status_code == 401 if api else (
                r.status_code == 303 and r.headers["location"].startswith("/signin")), \
                (method, path, r.status_code)
            if api:
                r = nobody.request(method, path, headers=bearer(tokens["us"]))
            else:
                r = us_person.request(method, path, follow_redirects=False)
            # A site-scoped route of another site, or a coordinator's route: 403.
            assert r.status_code == 403, (method, path, r.status_code)
            tried += 1
    assert tried >= 15


def test_a_coordinator_opens_every_sites_pages(app, store):
    coord = signed_in(app, store, "coord@example.org", "", role="coordinator")
    batch = catalog.batches(store, "it")[0].sha256[:12]
    for path in ("/coordinator", "/audit", "/sites/it", f"/sites/it/batches/{batch}",
                 "/sites/us/upload", f"/reports/{catalog.latest_run(store)}"):
        assert coord.get(path).status_code == 200, path


# --------------------------------------------------------------------------- forms


def test_a_form_without_its_csrf_token_is_refused(app, store, drops):
    client = signed_in(app, store, "csrf@example.org", "us")
    r = client.post("/sites/us/withdraw", data={"participant_id": "R_1", "step": "1"})
    assert r.status_code == 403 and "expired" in r.text
    r = client.post("/sites/us/withdraw", data={"participant_id": "R_1", "step": "1",
                                                "csrf": "forged"})
    assert r.status_code == 403
    before = {o.key for o in store.list("landing")}
    r = client.post("/sites/us/drops", files={"file": ("a.csv", drops["clean"].read_bytes())})
    assert r.status_code == 403
    assert {o.key for o in store.list("landing")} == before
    assert TestClient(app).post("/signin", data={"email": "csrf@example.org",
                                                 "password": PASSWORD}).status_code == 403
    r = client.post("/signout", follow_redirects=False)
    assert r.status_code == 403


def test_sign_in_is_limited_per_account(app, store):
    signed_in(app, store, "limited@example.org", "il")
    client = TestClient(app)
    client.get("/signin")
    form = {"csrf": client.cookies["lacrima_csrf"], "email": "limited@example.org"}
    for _ in range(3):
        assert client.post("/signin", data={**form, "password": "wrong guess"}).status_code == 401
    r = client.post("/signin", data={**form, "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 429 and "Try again" in r.text
    other = signed_in(app, store, "fine@example.org", "il")       # another account: not limited
    assert other.get("/sites/il").status_code == 200


def test_a_revoked_persons_session_ends(app, store):
    client = signed_in(app, store, "leaving@example.org", "it")
    assert client.get("/sites/it").status_code == 200
    people.revoke(store, "leaving@example.org")
    r = client.get("/sites/it", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")


def test_a_withdrawal_through_the_page_is_lacrima_withdraw_and_audited(app, store, study, sites):
    from lacrima.codebook import load_codebook
    from lacrima.native import read_drop

    it = next(s for s in sites if s.code == "it")
    raw = next(r for r in catalog.batches(store, "it") if r.state == catalog.ACCEPTED)
    tmp = Path(store.root).parent / "raw-it.xlsx"
    tmp.write_bytes(store.read_bytes(raw.raw_key))
    pid = str(load_codebook(it).normalise_ids(read_drop(tmp, it, study).frame["participant_id"])[0]
              .iloc[0])
    held = catalog.participants_held(store, "it")
    client = signed_in(app, store, "withdraw@example.org", "it")
    csrf = client.cookies["lacrima_csrf"]
    step2 = client.post("/sites/it/withdraw", data={"csrf": csrf, "step": "1",
                                                    "participant_id": pid, "reason": "asked"})
    assert step2.status_code == 200 and pid not in step2.text
    check = step2.text.split('name="check" value="')[1].split('"')[0]
    wrong = client.post("/sites/it/withdraw", data={
        "csrf": csrf, "step": "2", "check": check, "participant_id_again": pid + "9",
        "confirm": "yes"})
    assert wrong.status_code == 400 and catalog.participants_held(store, "it") == held
    done = client.post("/sites/it/withdraw", data={
        "csrf": csrf, "step": "2", "check": check, "participant_id_again": pid, "confirm": "yes"})
    assert done.status_code == 200 and "Ritiro registrato" in done.text     # site it: Italian
    assert catalog.participants_held(store, "it") == held - 1
    entry = people.audit_log(store, "it", limit=1)[0]
    assert entry["action"] == "withdraw" and pid not in json.dumps(entry)
    assert "asked" not in json.dumps(people.audit_log(store))


# --------------------------------------------------------------------------- concurrency


def test_20_concurrent_uploads_from_5_sites_each_land_and_count_once(tmp_path, monkeypatch,
                                                                     small_plan):
    from lacrima.consortium import make_consortium, write_consortium_drops
    from lacrima.study import load_sites, load_study

    root = tmp_path / "sites"
    make_consortium(root, 5, n=20, templates=("us", "it", "il", "us", "it"), replications=2,
                    source=small_plan.root)
    monkeypatch.setenv("LACRIMA_SITES", str(root))
    drops = [(code, path) for k in range(4)
             for code, path in write_consortium_drops(root, tmp_path / f"d{k}", n=20, seed=k + 1,
                                                      id_offset=10_000 * (k + 1)).items()]
    assert len(drops) == 20 and len({c for c, _ in drops}) == 5
    store = LocalStorage(tmp_path / "store")
    application = create_app(str(store.root), demo=True, warm=False)
    tokens = {c: people.new_token(store, c)[1] for c, _ in drops}

    async def send_all(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post(
                f"/api/v1/sites/{code}/drops", headers=bearer(tokens[code]),
                files={"file": (path.name, path.read_bytes())}) for code, path in drops))

    with serving(application) as url:
        answers = asyncio.run(send_all(url))
    assert [a.status_code for a in answers] == [201] * 20
    for (code, path), a in zip(drops, answers):
        assert a.json()["key"].startswith(f"landing/{code}/")
        assert store.read_bytes(a.json()["key"]) == path.read_bytes()
    assert len(store.list("landing")) == 20
    sites = load_sites(root)
    results = intake.ingest_sites(store, sites, load_study(root), DEMO_KEY)
    assert sum(r.seen for r in results) == 20
    assert sum(len(r.accepted) + len(r.quarantined) for r in results) == 20
    by_site = {r.site: set(r.accepted + r.quarantined) for r in results}
    for (code, _), a in zip(drops, answers):
        assert a.json()["sha256"] in by_site[code]
    again = intake.ingest_sites(store, sites, load_study(root), DEMO_KEY)
    assert sum(len(r.accepted) + len(r.quarantined) for r in again) == 0


def test_a_correction_through_the_page_is_lacrima_upload_replaces(app, store, drops):
    client = signed_in(app, store, "corrects@example.org", "us")
    csrf = client.cookies["lacrima_csrf"]
    batch = next(r for r in catalog.batches(store, "us") if r.state == catalog.ACCEPTED)
    form = client.get(f"/sites/us/upload?replaces={batch.sha256}").text
    assert f'value="{batch.sha256}" selected' in form
    data = drops["clean"].read_bytes() + b"\n"
    r = client.post("/sites/us/drops", data={"csrf": csrf, "replaces": batch.sha256},
                    files={"file": ("fixed.csv", data)}, follow_redirects=False)
    assert r.status_code == 303 and "done=corrected" in r.headers["location"]
    sha = intake.sha256_bytes(data)
    (key,) = [o.key for o in store.list("landing/us") if o.key.rsplit("/", 1)[-1].startswith(
        f"{sha[:12]}-replaces-{batch.sha256[:12]}")]
    assert store.metadata(key)["replaces"] == batch.sha256
    entry = people.audit_log(store, "us", limit=1)[0]
    assert (entry["action"], entry["batch"]) == ("correct", sha)
    r = client.post("/sites/us/drops", data={"csrf": csrf, "replaces": "0" * 12},
                    files={"file": ("fixed2.csv", data + b"\n")})
    assert r.status_code == 409 and "0 matches" in r.text


def test_an_id_of_the_wrong_shape_is_told_before_the_confirmation(app, store, monkeypatch):
    """The page asks the library (``intake.participant_ids``, what ``withdraw`` asks) at the
    first step. No demo site declares an ``id_pattern``, so the refusal is the library's
    own message for a pattern it is given here."""
    def pattern(site, pid):
        raise ValueError(f"the participant ID given is not of the shape R_\\w+ of site {site.code}")
    client = signed_in(app, store, "shape@example.org", "us")
    blank = client.post("/sites/us/withdraw", data={"csrf": client.cookies["lacrima_csrf"],
                                                    "step": "1", "participant_id": "   "})
    assert blank.status_code == 400 and "Give the participant" in blank.text
    monkeypatch.setattr(intake, "participant_ids", pattern)
    r = client.post("/sites/us/withdraw", data={"csrf": client.cookies["lacrima_csrf"],
                                                "step": "1", "participant_id": "12 34"})
    assert r.status_code == 400 and "not of the shape" in r.text
    assert 'name="participant_id_again"' not in r.text


def test_a_store_that_fails_is_503_without_a_traceback(app, store, tokens, monkeypatch):
    def broken(*a, **k):
        raise OSError("endpoint unreachable")
    monkeypatch.setattr(type(store), "list", broken)
    r = TestClient(app).get("/api/v1/sites/us/status", headers=bearer(tokens["us"]))
    assert r.status_code == 503 and "cannot be reached" in r.json()["detail"]
