"""Odd S3 stores (issue 11, item 10): folder objects, keys with empty segments, and stores
that cannot work (no such bucket, credentials refused, endpoint refused).

Before: a zero-byte ``landing/it/`` (what the S3 console's "Create folder" makes) made
``status`` crash with a traceback and every ``run`` fail after its retries; a store that could
not work took minutes of retries to say so.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time

import pytest
from typer.testing import CliRunner

from s3util import SLOW_DOWN
from s3util import s3, s3_endpoint  # noqa: F401  (fixtures)

from lacrima import intake
from flows.cli import app
from lacrima.study import load_site

KEY = b"test-key"


def own_output(text: str) -> str:
    """The command's output without Prefect's "--- Logging error ---" blocks: a log handler an
    earlier in-process run bound to its (since closed) stream reports there, not this command."""
    return re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", text, flags=re.S)


def lacrima(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in own_output(result.output)
    return result


@pytest.fixture
def it_drop(tmp_path, study):
    from lacrima.synth import write_drop

    return write_drop(load_site("it"), study, tmp_path / "it", n=20, seed=2)


def test_folder_objects_and_empty_segments_are_ignored_with_a_warning(s3, it_drop, study, caplog):
    site = load_site("it")
    key = intake.upload(s3.storage, site, it_drop)
    raw = s3.storage.client
    for odd in ("lacrima/landing/it/", "lacrima/landing/", "lacrima/landing/it//stray.csv"):
        raw.put_object(Bucket=s3.bucket, Key=odd, Body=b"" if odd.endswith("/") else b"a,b\n")
    with caplog.at_level(logging.WARNING, logger="lacrima.storage"):
        listed = [o.key for o in s3.storage.list("landing/it")]
    assert listed == [key]
    said = [r.getMessage() for r in caplog.records if r.name == "lacrima.storage"]
    assert sum("landing/it/: a folder marker" in m for m in said) == 1
    assert sum("landing/it//stray.csv: a key with an empty segment" in m for m in said) == 1
    assert len(said) == 2                           # landing/ is outside landing/it/
    res = lacrima("status", "--json")
    assert res.exit_code == 0, res.output
    recs = json.loads(res.stdout)
    assert [(r["site"], r["state"]) for r in recs] == [("it", "landed")]
    # What a run does with the landing zone: plan, then ingest.
    from lacrima.steps import plan_site

    assert (plan_site(s3.storage, site).landed, plan_site(s3.storage, site).pending) == (1, 1)
    result = intake.ingest_site(s3.storage, site, study, KEY)
    assert len(result.accepted) == 1 and not result.quarantined


def _timed(*args):
    """The result, its output on one line (the console wraps at 80 columns), seconds taken."""
    start = time.monotonic()
    res = lacrima(*args)
    return res, " ".join(own_output(res.output).split()), time.monotonic() - start


@pytest.mark.parametrize("command", [["status"], ["run", "--demo"]])
def test_no_such_bucket_exits_2_in_one_line_at_once(s3, monkeypatch, command):
    monkeypatch.setenv("LACRIMA_STORAGE", f"s3://{s3.bucket}-absent/lacrima")
    res, said, took = _timed(*command)
    assert res.exit_code == 2 and "no such bucket" in said, res.output
    assert said.count("error:") == 1 and took < 10


def test_refused_credentials_exit_2_without_retries(s3):
    s3.proxy.inject((403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not "
                     "exist in our records."), method="HEAD")
    res, said, took = _timed("status")
    assert res.exit_code == 2 and "access refused" in said, res.output
    assert s3.proxy.served == [("HEAD", "InvalidAccessKeyId", 403)] and took < 10


def test_a_refused_endpoint_exits_2_in_seconds(s3, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]        # closed again below: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    for command in (["status"], ["run", "--demo"]):
        res, said, took = _timed(*command)
        assert res.exit_code == 2 and "cannot connect" in said, res.output
        assert took < 15


def test_a_throttled_check_is_not_an_error(s3):
    s3.proxy.inject(SLOW_DOWN, method="HEAD")
    res = lacrima("status", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == [], res.output
