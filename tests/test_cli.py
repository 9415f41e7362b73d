"""The data managers' commands: ``lacrima check``, ``upload`` and ``status``.

Exit codes (issue 4): 0 valid, 1 invalid data, 2 usage error or unreadable file; never a
Python traceback. upload and status run against S3 (moto server mode, tests/s3util.py).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from s3util import run_aws
from s3util import s3, s3_endpoint  # noqa: F401  (fixtures)

from lacrima import catalog, intake
from flows.cli import app

KEY = b"test-key"
N = 40


@pytest.fixture(scope="module")
def drops(tmp_path_factory, study, sites):
    from lacrima.synth import write_drop

    by = {s.code: s for s in sites}
    out = tmp_path_factory.mktemp("clidrops")
    bad = out / "bad"
    bad.mkdir()
    (bad / "empty.csv").write_bytes(b"")
    (bad / "garbage.xlsx").write_bytes(b"PK\x03\x04 this is not a workbook")
    (bad / "export.sav").write_bytes(b"$FL2 not really spss")
    return SimpleNamespace(
        us=write_drop(by["us"], study, out / "us", n=N, seed=3),
        # Same IDs (they do not depend on the seed), different answers: a correction.
        us_fixed=write_drop(by["us"], study, out / "us_fixed", n=N, seed=4),
        us_messy=write_drop(by["us"], study, out / "us_messy", n=N, seed=5, mess=True),
        it=write_drop(by["it"], study, out / "it", n=N, seed=3),
        bad=bad)


def lacrima(*args: str):
    """Run the CLI in-process; fail on any exception other than the exit itself."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"lacrima {' '.join(map(str, args))} raised {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    return result


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------

def test_check_valid_drop_exits_0_and_writes_a_json_report(drops, tmp_path):
    out = tmp_path / "report.json"
    res = lacrima("check", drops.us, "--site", "us", "--report", out)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["valid"] and rep["n_rows"] == N and rep["sha256"] == _sha(drops.us)


def test_check_invalid_drop_exits_1_with_findings_a_data_manager_can_act_on(drops, tmp_path):
    out = tmp_path / "report.html"
    res = lacrima("check", drops.us_messy, "--site", "us", "--report", out)
    assert res.exit_code == 1, res.output
    assert f"INVALID, {N} rows" in res.output
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "unique_ids" in html and "value_range" in html and "episode_blank_for_non_criers" in html
    # The e-mails planted in the identifying column are named as a column, never shown.
    emails = {line.split("@")[0].rsplit(",", 1)[-1] for line in
              drops.us_messy.read_text(encoding="utf-8-sig").splitlines() if "@example.org" in line}
    assert emails and not any(e in res.output or e in html for e in emails)


@pytest.mark.parametrize("name, site", [("empty.csv", "us"), ("garbage.xlsx", "it"),
                                        ("export.sav", "us")])
def test_check_unreadable_or_wrong_format_file_exits_2(drops, name, site):
    res = lacrima("check", drops.bad / name, "--site", site)
    assert res.exit_code == 2, res.output


@pytest.mark.parametrize("args, message", [
    (["check", "/nonexistent/drop.csv", "--site", "us"], "no such file"),
    (["check", "{us}", "--site", "xx"], "xx"),
    (["check", "{us}"], "--site"),
    (["check", "{us}", "--site", "us", "--report", "/nonexistent/dir/r.json"], "cannot write"),
])
def test_check_usage_errors_exit_2_with_a_message(drops, args, message):
    res = lacrima(*[a.format(us=drops.us) for a in args])
    assert res.exit_code == 2 and message in res.output, res.output


@pytest.mark.process
def test_check_as_a_real_process_prints_no_traceback(drops):
    """The installed entry point, not only the in-process runner: stderr stays clean."""
    proc = subprocess.run([sys.executable, "-m", "flows", "check",
                           str(drops.bad / "garbage.xlsx"), "--site", "it"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ----------------------------------------------------------------------------------------------
# upload and status on S3
# ----------------------------------------------------------------------------------------------

def _status(*args) -> list[dict]:
    res = lacrima("status", "--json", *args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_correction_needs_replaces_and_then_supersedes_the_batch(s3, drops, study, sites):
    us = next(s for s in sites if s.code == "us")
    first, fixed = _sha(drops.us), _sha(drops.us_fixed)

    res = lacrima("upload", drops.us, "--site", "us", "--uploader", "dm_us")
    assert res.exit_code == 0 and res.stdout.strip().startswith("landing/us/"), res.output
    assert [(r["sha256"], r["state"]) for r in _status("--site", "us")] == [(first, "landed")]
    assert intake.ingest_site(s3.storage, us, study, KEY).accepted == (first,)

    # Same IDs, other answers, no --replaces: quarantined, and told how to correct.
    assert lacrima("upload", drops.us_fixed, "--site", "us").exit_code == 0
    assert intake.ingest_site(s3.storage, us, study, KEY).quarantined == (fixed,)
    report = json.loads(s3.storage.read_bytes(f"quarantine/us/{fixed}/report.json"))
    clash = [f for f in report["findings"] if f["check"] == "id_clash"]
    assert clash and "--replaces" in clash[0]["message"]

    # The same file again, now saying which batch it corrects: processed again, and accepted.
    res = lacrima("upload", drops.us_fixed, "--site", "us", "--replaces", first[:12])
    assert res.exit_code == 0, res.output
    assert s3.storage.metadata(res.stdout.strip())["replaces"] == first
    assert intake.ingest_site(s3.storage, us, study, KEY).accepted == (fixed,)

    states = {r["sha256"]: r for r in _status("--site", "us")}
    assert states[first]["state"] == "superseded" and states[first]["superseded_by"] == fixed
    assert states[fixed]["state"] == "accepted" and states[fixed]["replaces"] == first
    curated = catalog.curated_frame(s3.storage, "us")
    import io

    import pandas as pd
    only_fixed = pd.read_parquet(io.BytesIO(s3.storage.read_bytes(f"curated/us/{fixed}.parquet")))
    pd.testing.assert_frame_equal(curated, only_fixed.sort_values("participant_id",
                                                                  ignore_index=True))
    # Nothing was deleted: the first batch's raw and curated copies are still there.
    assert s3.storage.exists(f"raw/us/{first}.csv")
    assert s3.storage.exists(f"curated/us/{first}.parquet")
    s3.proxy.reset()
    table = lacrima("status", "--site", "us", "--batches")
    assert table.exit_code == 0 and "superseded" in table.output and s3.url in table.output
    # Processed landing objects are known by their listing ETag: status downloads none of them.
    assert not [r.key for r in s3.proxy.requests if r.method == "GET" and "/landing/" in r.key]


def test_replaces_an_unknown_batch_is_refused_before_anything_lands(s3, drops):
    res = lacrima("upload", drops.us, "--site", "us", "--replaces", "deadbeefdeadbeef")
    assert res.exit_code == 2 and "deadbeefdeadbeef" in res.output and "status" in res.output
    assert s3.storage.list("landing") == []


def test_status_shows_aws_cli_uploads_waiting_for_the_next_run(s3, drops):
    res = run_aws(["s3", "cp", str(drops.it), f"{s3.url}/landing/it/"], s3.env)
    assert res.returncode == 0, res.stderr
    (rec,) = _status()
    assert (rec["site"], rec["sha256"], rec["state"], rec["original_name"]) == (
        "it", _sha(drops.it), "landed", drops.it.name)
    # Not yet processed, so status had to read it to know its SHA-256.
    assert [r.key for r in s3.proxy.requests if r.method == "GET" and "/landing/" in r.key] == [
        f"lacrima/landing/it/{drops.it.name}"]
    assert [r["sha256"] for r in _status("--site", "it")] == [_sha(drops.it)]
    assert _status("--site", "us") == []


def test_status_and_upload_on_an_unreachable_store_exit_2_without_a_traceback(s3, drops,
                                                                              monkeypatch):
    monkeypatch.setenv("LACRIMA_STORAGE", f"s3://{s3.bucket}-absent/lacrima")
    for args, said in ((["status"], "no such bucket"),
                       (["upload", drops.us, "--site", "us"], "NoSuchBucket")):
        res = lacrima(*args)
        assert res.exit_code == 2 and said in res.output, res.output
    monkeypatch.setenv("LACRIMA_STORAGE", "s3://")
    res = lacrima("status")
    assert res.exit_code == 2 and "s3://bucket/prefix" in res.output


# ----------------------------------------------------------------------------------------------
# the Prefect API of a run: a configured one as is, else one ephemeral server
# ----------------------------------------------------------------------------------------------

_EARLY_API = """
import sys
from flows.cli import _start_api
_start_api()()
if "prefect.server.api.server" not in sys.modules:
    print("none")
    sys.exit()
from prefect import get_client
from prefect.server.api.server import SubprocessASGIServer
servers = [s for s in SubprocessASGIServer._instances.values() if s.running]
try:
    # the flow's own client reaches that same server: no second one is started
    same = bool(servers) and str(get_client(sync_client=True).api_url).rstrip("/") == \\
        servers[0].api_url
    print(len(servers), same)
finally:
    for s in list(SubprocessASGIServer._instances.values()):
        s.stop()
"""


def _early_api(tmp_path, **env):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")} | env
    env |= {"PREFECT_HOME": str(tmp_path / "home"),
            # as `lacrima run` sets it (flows.cli._quiet_prefect): a busy machine is slow
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    # files, not pipes: a server left behind must not hold the test's pipe open
    with out.open("w") as o, err.open("w") as e:
        code = subprocess.run([sys.executable, "-c", _EARLY_API], stdout=o, stderr=e,
                              timeout=300, env=env).returncode
    assert code == 0, err.read_text()[-2000:]
    return out.read_text().strip().splitlines()[-1]


def test_a_configured_prefect_api_is_used_as_is_and_no_server_is_started(tmp_path):
    # lacrima run starts the API while the flow's modules load (flows.cli._start_api); with
    # PREFECT_API_URL set it starts nothing (nothing listens there: nothing is contacted)
    assert _early_api(tmp_path, PREFECT_API_URL="http://127.0.0.1:9/api") == "none"


@pytest.mark.prefect
def test_without_a_configured_api_one_ephemeral_server_is_started_and_used(tmp_path):
    assert _early_api(tmp_path) == "1 True"
