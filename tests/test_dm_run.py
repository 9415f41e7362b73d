"""Issue 13, points 3-5: what a run tells, who is told, and what happens before Prefect.

The pre-Prefect paths run the real command in a fresh interpreter and report which modules
it loaded: a refusal or a no-change answer must not have imported Prefect (no server start).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lacrima import catalog, intake, steps
from flows.cli import app
from lacrima.status import misplaced
from lacrima.storage import LocalStorage, write_json
from lacrima.study import load_site, load_sites, load_study

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys
from flows.cli import main
sys.argv = ["lacrima", *sys.argv[1:]]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
import os
print(json.dumps({"code": code, "prefect": "prefect" in sys.modules,
                  "pandas": "pandas" in sys.modules, "home": os.environ.get("PREFECT_HOME")}))
"""


def _probe(*args, env=None, cwd=None):
    """Run `lacrima ARGS` in a fresh interpreter; its exit code, output and loaded modules."""
    full = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}     # None: unset
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         env=full, timeout=300, cwd=cwd)
    return json.loads(res.stdout.strip().splitlines()[-1]), res


@pytest.mark.process
def test_missing_key_is_refused_before_anything_heavy_loads(tmp_path):
    env = {k: None for k in ("LACRIMA_PSEUDONYM_KEY", "LACRIMA_PSEUDONYM_KEY_FILE")}   # unset
    got, res = _probe("run", "--storage", str(tmp_path / "store"), env=env)
    assert got["code"] == 2 and not got["prefect"] and not got["pandas"]
    assert "Traceback" not in res.stderr and "no pseudonymisation key" in res.stderr
    assert res.stderr.strip().startswith("error:")


@pytest.mark.process
def test_a_bad_store_is_refused_before_prefect(tmp_path):
    got, res = _probe("run", "--demo", "--storage", "s3://", env={})
    assert got["code"] == 2 and not got["prefect"] and "Traceback" not in res.stderr


@pytest.mark.process
def test_a_run_with_nothing_new_answers_without_prefect(tmp_path, study, demo_store):
    storage = demo_store            # ingested under DEMO_KEY, which `run --demo` uses
    sites = load_sites()
    keys = steps.site_keys(storage, sites, study)
    # The latest published report was made from exactly these inputs.
    write_json(storage, "reports/r0/provenance.json", {
        "comparison_key": steps.comparison_key({c: k for c, (k, _) in keys.items()}, study)})
    catalog.publish_report(storage, "r0", {})
    # run from elsewhere, without the Makefile's PREFECT_HOME: Prefect's home is the project's
    got, res = _probe("run", "--demo", "--json", "--storage", storage.location,
                      env={"PREFECT_HOME": None}, cwd=tmp_path)
    assert got["code"] == 0 and not got["prefect"], res.stderr
    assert got["home"] == str(ROOT / ".prefect")
    summary = json.loads(res.stdout.strip().splitlines()[-2])
    assert summary["nothing_new"] and summary["report"] is None and summary["drops"] == []
    assert sorted(summary["sites_reused"]) == ["il", "it", "us"]


def test_status_flags_files_in_the_wrong_place(tmp_path, demo_drops):
    storage = LocalStorage(tmp_path / "store")
    intake.upload(storage, load_site("us"), demo_drops["us"])
    landing = tmp_path / "store" / "landing"
    (landing / "US").mkdir()
    shutil.copy(demo_drops["us"], landing / "us_export.csv")
    shutil.copy(demo_drops["us"], landing / "US" / "export.csv")
    (landing / "us" / ".~lock.export.csv#").write_text("lock")
    found = {w["key"]: w for w in misplaced(storage, ["il", "it", "us"])}
    assert set(found) == {"landing/us_export.csv", "landing/US/export.csv",
                          "landing/us/.~lock.export.csv#"}
    assert "--site CODE" in found["landing/us_export.csv"]["fix"]
    assert "landing/us/" in found["landing/US/export.csv"]["fix"]
    res = CliRunner().invoke(app, ["status", "--storage", str(tmp_path / "store"), "--json"])
    recs = json.loads(res.stdout)
    # only the upload in the right place waits for the next run; the others are not "waiting"
    assert [(r["site"], r["state"]) for r in recs] == [("us", "landed")]
    res = CliRunner().invoke(app, ["status", "--storage", str(tmp_path / "store")])
    assert res.exit_code == 0 and res.output.count("wrong place:") == 3
    assert "us: 0 batch(es), 0 participant(s) held, last drop never, 1 file(s)" in " ".join(
        res.output.split())


def test_progress_records_drive_the_progress_display():
    from rich.console import Console
    from rich.progress import Progress

    from flows.cli import _ProgressHandler

    bar = Progress(console=Console(file=io.StringIO()))
    task = bar.add_task("starting", total=3, completed=0)
    handler = _ProgressHandler(bar, task)
    logger = logging.getLogger(steps.PROGRESS_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        steps.progress("intake", 2, 3)
        assert (bar.tasks[0].description, bar.tasks[0].completed) == ("intake", 2)
        with steps.StageClock()("analysis"):
            pass
        assert bar.tasks[0].description == "analysis"
    finally:
        logger.removeHandler(handler)


# -- notifications ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webhook():
    """A local HTTP receiver on 127.0.0.1: every POSTed JSON body, in order."""
    got = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()


@pytest.fixture
def smtp(monkeypatch):
    """A local SMTP server (aiosmtpd) on 127.0.0.1: every message received."""
    from aiosmtpd.controller import Controller

    got = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got.append(envelope)
            return "250 OK"

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("LACRIMA_SMTP", f"127.0.0.1:{port}")
    monkeypatch.setenv("LACRIMA_SMTP_MODE", "insecure")
    yield got
    controller.stop()


@pytest.fixture
def sites_with_contact(tmp_path, webhook, monkeypatch):
    """A copy of sites/ where site it names a webhook and an e-mail contact."""
    root = tmp_path / "sites"
    shutil.copytree(ROOT / "sites", root)
    toml = root / "it" / "site.toml"
    toml.write_text(toml.read_text() + f'\n[site.contact]\nwebhook = "{webhook[0]}"\n'
                                       'email = "dm@it.example"\n')
    monkeypatch.setenv("LACRIMA_SITES", str(root))
    return root


def test_the_site_file_schema_knows_the_contact():
    from pydantic import ValidationError

    from lacrima.contract import SiteFile

    base = {"code": "it", "country": "Italy", "language": "it", "role": "original",
            "published_n": 100}
    ok = SiteFile.model_validate({"site": {**base, "contact": {
        "webhook": "https://hooks.example.org/x", "email": ["dm@it.example"]}}})
    assert ok.site.contact.webhook == "https://hooks.example.org/x"
    for bad in ({"phone": "123"}, {"email": "not an address"}, {"webhook": "ftp://x"}):
        with pytest.raises(ValidationError):
            SiteFile.model_validate({"site": {**base, "contact": bad}})


SECRET = "Mario Rossi mrossi@ex.it"


def _spoilt_it(clean, out):
    import openpyxl
    wb = openpyxl.load_workbook(clean)
    ws = wb.active
    col = [c.value for c in ws[1]].index("Genere") + 1
    ws.cell(row=3, column=col, value=SECRET)          # free text in a label column
    wb.save(out)
    return out


def test_a_quarantined_drop_notifies_the_sites_contact(tmp_path, sites_with_contact, webhook,
                                                       smtp, demo_drops):
    from flows.notify import notify_quarantines

    root = sites_with_contact
    drops = [{"site": "it", "file": "marzo.xlsx", "batch": "3f9c2a" + "0" * 58,
              "outcome": "quarantined", "rows": 106, "errors": 1, "warnings": 0,
              "checks": ["unknown_labels"], "report": "data/quarantine/it/3f9c2a/report.html"},
             {"site": "us", "file": "ok.csv", "batch": "1" * 64, "outcome": "accepted",
              "rows": 124, "errors": 0, "warnings": 0, "checks": [], "report": None}]
    assert notify_quarantines(drops, load_sites(root)) == 2
    (hook,) = webhook[1]
    assert "marzo.xlsx" in hook["subject"] and "unknown_labels" in hook["text"]
    assert "quarantena" in hook["subject"]            # the site's language (issue 22)
    assert "data/quarantine/it/3f9c2a/report.html" in hook["text"]
    (mail,) = smtp
    assert mail.rcpt_tos == ["dm@it.example"]
    assert b"marzo.xlsx" in mail.content and b"report.html" in mail.content


def test_a_failed_run_notifies_the_operator(webhook, smtp, monkeypatch):
    from flows.notify import notify_run_failure

    monkeypatch.setenv("LACRIMA_OPERATOR_WEBHOOK", webhook[0])
    monkeypatch.setenv("LACRIMA_OPERATOR_EMAIL", "ops@example.org")

    class State:
        message = "Flow run encountered an exception: store unreachable"

    class FlowRun:
        name = "clever-otter"

    notify_run_failure(None, FlowRun(), State())
    assert "clever-otter" in webhook[1][0]["subject"] and "unreachable" in webhook[1][0]["text"]
    assert smtp and smtp[0].rcpt_tos == ["ops@example.org"]


def test_an_undeliverable_notification_does_not_fail(monkeypatch):
    from flows.notify import send

    assert send({"webhook": f"http://127.0.0.1:{_free_port()}/none"}, "s", "b") == 0
    # an SMTP server that is not there: counted as not sent, not raised
    monkeypatch.setenv("LACRIMA_SMTP", f"127.0.0.1:{_free_port()}")
    monkeypatch.setenv("LACRIMA_SMTP_MODE", "insecure")
    assert send({"email": ["dm@site.example"]}, "s", "b") == 0


@pytest.mark.prefect
def test_run_lists_each_drop_and_tells_the_site(prefect_harness, tmp_path, sites_with_contact,
                                                webhook, smtp, demo_drops, monkeypatch):
    for var in ("PREFECT_HOME", "PREFECT_LOGGING_SETTINGS_PATH", "LACRIMA_RUN_LOG",
                "PREFECT_LOGGING_HANDLERS_FILE_FILENAME",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
        monkeypatch.setenv(var, os.environ.get(var, ""))      # restored after the test
    store = tmp_path / "store"
    storage = LocalStorage(store)
    sites = {s.code: s for s in load_sites(sites_with_contact)}
    intake.upload(storage, sites["us"], demo_drops["us"])
    bad = _spoilt_it(demo_drops["it"], tmp_path / "it_marzo.xlsx")
    intake.upload(storage, sites["it"], bad)
    res = CliRunner().invoke(app, ["run", "--demo", "--json", "--storage", str(store)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    by_site = {d["site"]: d for d in summary["drops"]}
    assert by_site["us"]["outcome"] == "accepted" and by_site["us"]["report"] is None
    it = by_site["it"]
    assert (it["outcome"], it["file"]) == ("quarantined", "it_marzo.xlsx")
    assert "unknown_labels" in it["checks"]
    assert it["new"] is None and by_site["us"]["new"] == 124     # a quarantined drop adds none
    assert it["report"].endswith(f"quarantine/it/{it['batch']}/report.html")
    assert Path(it["report"]).is_file()
    (hook,) = webhook[1]
    assert "it_marzo.xlsx" in hook["subject"] and it["report"] in hook["text"]
    assert smtp and smtp[0].rcpt_tos == ["dm@it.example"]
    everything = json.dumps(summary) + json.dumps(hook) + smtp[0].content.decode(errors="replace")
    assert "Mario" not in everything and "mrossi" not in everything
    assert "Mario" not in Path(it["report"]).read_text()
