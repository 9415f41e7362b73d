"""The S3 backend against a real HTTP S3 endpoint: moto in server mode, on loopback.

Every request goes through ``FaultProxy`` (tests/s3util.py), which forwards to moto and, when
a test asks, answers requests itself with the errors S3 sends when it throttles (503 SlowDown)
or fails transiently (500 InternalError, 503 ServiceUnavailable). boto3 and the AWS CLI find
the endpoint through ``AWS_ENDPOINT_URL_S3``, exactly as they would find MinIO or AWS.
"""

from __future__ import annotations

import base64
import hashlib
import json
from types import SimpleNamespace

import pytest

from s3util import INTERNAL_ERROR, SERVICE_UNAVAILABLE, SLOW_DOWN, run_aws
from s3util import s3, s3_endpoint  # noqa: F401  (fixtures)

from lacrima.storage import LocalStorage, S3Storage, StorageError, open_storage

pytestmark = pytest.mark.s3

KEY = b"test-key"


def _raw_client():
    import boto3
    return boto3.client("s3")


# ----------------------------------------------------------------------------------------------
# The storage interface on S3
# ----------------------------------------------------------------------------------------------

def test_endpoint_refuses_to_overwrite_with_412(s3):
    """The premise of S3Storage's conditional writes: If-None-Match: * is honoured (moto 5.2.5)."""
    from botocore.exceptions import ClientError

    client, key = _raw_client(), "lacrima/raw/us/probe.csv"
    client.put_object(Bucket=s3.bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as err:
        client.put_object(Bucket=s3.bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert err.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() == b"first"


def test_conditional_write_never_overwrites_and_keeps_metadata(s3):
    st = s3.storage
    meta = {"site": "us", "uploader": "dm_us", "original_name": "export_2024-05.csv"}
    assert st.write_bytes("raw/us/abc.csv", b"one", metadata=meta, if_absent=True)
    assert not st.write_bytes("raw/us/abc.csv", b"two", metadata={"site": "it"}, if_absent=True)
    assert st.read_bytes("raw/us/abc.csv") == b"one"
    assert st.metadata("raw/us/abc.csv") == meta
    assert st.exists("raw/us/abc.csv") and not st.exists("raw/us/other.csv")


def test_copy_is_server_side_or_create_if_absent(s3):
    st = s3.storage
    st.write_bytes("results/us/k/page.html", b"page")
    assert st.copy("results/us/k/page.html", "reports/r1/site-us.html", if_absent=True)
    assert not st.copy("results/us/k/page.html", "reports/r1/site-us.html", if_absent=True)
    st.write_bytes("results/us/k2/page.html", b"new page")
    assert st.copy("results/us/k2/page.html", "reports/latest/site-us.html")
    assert st.copy("results/us/k/page.html", "reports/latest/site-us.html")      # replaces
    assert st.read_bytes("reports/r1/site-us.html") == b"page"
    assert st.read_bytes("reports/latest/site-us.html") == b"page"
    with pytest.raises(StorageError):
        st.copy("results/us/missing.html", "reports/latest/x.html")


def test_writes_carry_their_sha256_checksum(s3):
    """S3 checks the body against x-amz-checksum-sha256 (moto does not, so check what is sent)."""
    sent = []
    s3.storage.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **kw: sent.append(dict(request.headers)))
    data = b"participant,answer\n1,5\n"
    s3.storage.write_bytes("raw/us/x.csv", data, if_absent=True)
    (headers,) = sent
    want = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert headers["x-amz-checksum-sha256"].decode() == want
    assert headers["If-None-Match"].decode() == "*"


def test_same_key_layout_as_the_local_folder(s3, tmp_path):
    keys = ["landing/us/0a1b-export.csv", "raw/us/0a1b.csv", "ledger/us/0a1b.json",
            "curated/us/0a1b.parquet", "reports/r1/results.csv"]
    local = LocalStorage(tmp_path / "local")
    for st in (local, s3.storage):
        for k in keys:
            st.write_bytes(k, k.encode(), metadata={"site": "us"}, if_absent=True)
    for prefix in ("", "landing", "landing/us", "raw/", "reports/r1", "nothing"):
        assert [o.key for o in s3.storage.list(prefix)] == [o.key for o in local.list(prefix)]
    assert [o.key for o in s3.storage.list("")] == sorted(keys)
    assert [o.size for o in s3.storage.list("raw")] == [len(b"raw/us/0a1b.csv")]
    # The prefix is the store's root: nothing is written outside it.
    listed = _raw_client().list_objects_v2(Bucket=s3.bucket)["Contents"]
    assert all(o["Key"].startswith("lacrima/") for o in listed)


def test_download_to_a_local_path(s3, tmp_path):
    s3.storage.write_bytes("raw/il/a.sav", b"\x00\x01binary", if_absent=True)
    out = s3.storage.download("raw/il/a.sav", tmp_path / "a.sav")
    assert out.read_bytes() == b"\x00\x01binary"
    assert s3.storage.local_path("raw/il/a.sav") is None


def test_open_storage_chooses_s3_from_the_environment(s3):
    st = open_storage()
    assert isinstance(st, S3Storage)
    assert (st.bucket, st.prefix, st.location) == (s3.bucket, "lacrima", s3.url)


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix"])
def test_bad_s3_url_is_a_clear_error(url):
    with pytest.raises(ValueError, match="expected s3://bucket/prefix"):
        S3Storage(url, client=object())


def test_non_ascii_metadata_is_refused_before_sending(s3):
    with pytest.raises(ValueError, match="not ASCII"):
        s3.storage.write_bytes("raw/it/x.xlsx", b"x", metadata={"original_name": "città.xlsx"})
    assert not s3.storage.exists("raw/it/x.xlsx")


def test_missing_bucket_is_a_storage_error_not_a_botocore_trace(s3):
    st = S3Storage(f"s3://{s3.bucket}-absent/lacrima")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        st.list("landing")
    with pytest.raises(OSError, match="NoSuchBucket"):     # StorageError is an OSError
        st.write_bytes("raw/us/a.csv", b"a")


def test_missing_key_read_names_the_key(s3):
    with pytest.raises(StorageError, match=r"lacrima/raw/us/none\.csv.*NoSuchKey"):
        s3.storage.read_bytes("raw/us/none.csv")


# ----------------------------------------------------------------------------------------------
# Throttling and 5xx answers, survived by botocore's standard-mode retries
# ----------------------------------------------------------------------------------------------

def test_every_operation_survives_throttling_and_server_errors(s3, tmp_path):
    st, proxy = s3.storage, s3.proxy
    proxy.inject(SLOW_DOWN, INTERNAL_ERROR, method="PUT")
    assert st.write_bytes("raw/us/a.csv", b"abc", metadata={"site": "us"}, if_absent=True)
    proxy.inject(SERVICE_UNAVAILABLE, method="HEAD")
    assert st.exists("raw/us/a.csv")
    proxy.inject(SLOW_DOWN, method="HEAD")
    assert st.metadata("raw/us/a.csv") == {"site": "us"}
    proxy.inject(INTERNAL_ERROR, method="GET")
    assert st.read_bytes("raw/us/a.csv") == b"abc"
    proxy.inject(SLOW_DOWN, method="GET")                  # ListObjectsV2 is a GET
    assert [o.key for o in st.list("raw")] == ["raw/us/a.csv"]
    proxy.inject(SERVICE_UNAVAILABLE, method="GET")
    assert st.download("raw/us/a.csv", tmp_path / "a.csv").read_bytes() == b"abc"
    proxy.inject(SLOW_DOWN, method="PUT")
    # Still refused after a retry: the retried request is as conditional as the first.
    assert not st.write_bytes("raw/us/a.csv", b"xyz", if_absent=True)
    assert proxy.pending() == 0
    assert [code for _, code, _ in proxy.served] == [
        "SlowDown", "InternalError", "ServiceUnavailable", "SlowDown", "InternalError",
        "SlowDown", "ServiceUnavailable", "SlowDown"]
    assert st.read_bytes("raw/us/a.csv") == b"abc"


def test_retry_of_a_write_whose_answer_was_lost_keeps_the_object(s3):
    """A conditional write lands, its answer is lost: the retry gets 412, nothing is overwritten."""
    s3.proxy.inject(INTERNAL_ERROR, method="PUT", after=True)
    assert not s3.storage.write_bytes("raw/us/b.csv", b"bytes", if_absent=True)
    assert s3.proxy.forwarded == 2 and s3.proxy.served == [("PUT", "InternalError", 500)]
    assert s3.storage.read_bytes("raw/us/b.csv") == b"bytes"


def test_faults_beyond_the_retry_budget_raise_a_clear_storage_error(s3):
    import boto3
    from botocore.config import Config

    # Two attempts in all, so the test does not wait through eight backoffs.
    client = boto3.client("s3", config=Config(retries={"total_max_attempts": 2,
                                                       "mode": "standard"}))
    st = S3Storage(s3.url, client=client)
    s3.proxy.inject(SLOW_DOWN, SLOW_DOWN, method="PUT")
    with pytest.raises(StorageError,
                       match=r"write s3://.*/lacrima/raw/us/c\.csv: SlowDown.*HTTP 503"):
        st.write_bytes("raw/us/c.csv", b"c", if_absent=True)
    assert not st.exists("raw/us/c.csv")


# ----------------------------------------------------------------------------------------------
# Intake on S3: boto3 and AWS CLI uploads, quarantine, duplicates, corrections, status
# ----------------------------------------------------------------------------------------------

N = 40      # small drops: these tests are about storage, not statistics


@pytest.fixture(scope="module")
def drops(tmp_path_factory, study, sites):
    from lacrima.synth import write_drop

    by = {s.code: s for s in sites}
    out = tmp_path_factory.mktemp("s3drops")
    return SimpleNamespace(
        us=write_drop(by["us"], study, out / "us", n=N, seed=3),
        # Same IDs (they do not depend on the seed), different answers: a correction.
        us_fixed=write_drop(by["us"], study, out / "us_fixed", n=N, seed=4),
        it=write_drop(by["it"], study, out / "it", n=N, seed=3),
        it_messy=write_drop(by["it"], study, out / "it_messy", n=N, seed=5, mess=True))


def _site(sites, code):
    return next(s for s in sites if s.code == code)


def _aws_cp(s3, path, site):
    res = run_aws(["s3", "cp", str(path), f"{s3.url}/landing/{site}/"], s3.env)
    assert res.returncode == 0, res.stderr
    return f"landing/{site}/{path.name}"


def test_boto3_and_aws_cli_uploads_are_processed_alike_despite_faults(s3, drops, study, sites,
                                                                      tmp_path):
    from lacrima import catalog, intake

    st, us, it = s3.storage, _site(sites, "us"), _site(sites, "it")
    us_key = intake.upload(st, us, drops.us, uploader="dm_us")
    it_key = _aws_cp(s3, drops.it, "it")
    assert [o.key for o in st.list("landing")] == sorted([it_key, us_key])
    # Throttling and server errors on every kind of request while intake runs.
    s3.proxy.inject(SLOW_DOWN, method="GET")
    s3.proxy.inject(SERVICE_UNAVAILABLE, method="HEAD")
    s3.proxy.inject(INTERNAL_ERROR, method="PUT")
    res = {code: intake.ingest_site(st, _site(sites, code), study, KEY) for code in ("us", "it")}
    assert s3.proxy.pending() == 0 and len(s3.proxy.served) == 3
    for code, path in (("us", drops.us), ("it", drops.it)):
        assert len(res[code].accepted) == 1 and not res[code].quarantined, res[code].reports
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        assert res[code].accepted == (sha,)
        raw = f"raw/{code}/{sha}{path.suffix}"
        assert st.read_bytes(raw) == path.read_bytes()
        meta = st.metadata(raw)
        assert (meta["site"], meta["original_name"], meta["sha256"]) == (code, path.name, sha)
        (rec,) = catalog.batches(st, code)
        assert (rec.state, rec.rows, rec.raw_key) == ("accepted", N, raw)
        assert st.exists(f"curated/{code}/{sha}.parquet")
    assert st.metadata(f"raw/us/{res['us'].accepted[0]}.csv")["uploader"] == "dm_us"
    # Nothing was moved or deleted: landing still holds both uploads as sent.
    assert [o.key for o in st.list("landing")] == sorted([it_key, us_key])
    _assert_never_overwrites_or_deletes(s3.proxy.requests)

    # The AWS CLI upload gets exactly the processing of a `lacrima upload` (here: locally).
    local = LocalStorage(tmp_path / "local")
    intake.upload(local, it, drops.it)
    intake.ingest_site(local, it, study, KEY)
    import pandas as pd
    pd.testing.assert_frame_equal(catalog.curated_frame(st, "it"), catalog.curated_frame(local, "it"))
    (a,), (b,) = catalog.batches(st, "it"), catalog.batches(local, "it")
    same = ("sha256", "state", "original_name", "raw_key", "rows", "curated_key", "reason",
            "identifying_dropped")
    assert {k: getattr(a, k) for k in same} == {k: getattr(b, k) for k in same}


def test_quarantine_keeps_the_file_and_the_same_bytes_are_processed_once(s3, drops, study, sites,
                                                                       tmp_path):
    from lacrima import catalog, intake

    st, it = s3.storage, _site(sites, "it")
    # A name as Italian Excel users save them: a space and an accented letter. S3 keys take
    # it as is; everything lacrima derives from it (metadata, quarantine key) is ASCII.
    sent = tmp_path / "esportazione città.xlsx"
    sent.write_bytes(drops.it_messy.read_bytes())
    assert _aws_cp(s3, sent, "it") in [o.key for o in st.list("landing/it")]
    res = intake.ingest_site(st, it, study, KEY)
    assert res.quarantined and not res.accepted
    sha = res.quarantined[0]
    prefix = f"quarantine/it/{sha}"
    assert st.read_bytes(f"{prefix}/esportazione_citt_.xlsx") == drops.it_messy.read_bytes()
    assert st.metadata(f"raw/it/{sha}.xlsx")["original_name"] == "esportazione_citt_.xlsx"
    report = json.loads(st.read_bytes(f"{prefix}/report.json"))
    assert not report["valid"] and {f["check"] for f in report["findings"]} >= {"unique_ids"}
    assert st.read_bytes(f"{prefix}/report.html").startswith(b"<!")
    assert not st.list("curated/it")
    (rec,) = catalog.batches(st, "it")
    assert rec.state == "quarantined" and "unique_ids" in rec.reason

    # The same bytes again, through lacrima upload under another name: seen, not processed.
    again = drops.it_messy.with_name("resent.xlsx")
    again.write_bytes(drops.it_messy.read_bytes())
    intake.upload(st, it, again, uploader="dm_it")
    res2 = intake.ingest_site(st, it, study, KEY)
    assert (res2.seen, res2.skipped_duplicates, res2.accepted, res2.quarantined) == (2, 2, (), ())
    assert len(catalog.batches(st, "it")) == 1
    # the file, report.json, report.html and records.json (the pseudonyms it held: "fixed by")
    assert len(st.list("quarantine/it")) == 4
    _assert_never_overwrites_or_deletes(s3.proxy.requests)


def _assert_never_overwrites_or_deletes(requests):
    """On the wire: no DELETE at all, and every write of landing, raw, curated or a quarantined
    original by lacrima (not by the AWS CLI, the data manager's own tool) is conditional."""
    assert requests and not [r.path for r in requests if r.method == "DELETE"]
    ours = [r for r in requests if r.method == "PUT" and r.key.startswith("lacrima/")
            and not r.headers.get("user-agent", "").startswith("aws-cli/")]
    immutable = [r for r in ours if r.key.split("/")[1] in ("landing", "raw", "curated")
                 or (r.key.split("/")[1] == "quarantine"
                     and r.key.rsplit("/", 1)[-1] not in ("report.json", "report.html",
                                                          "records.json"))]
    assert immutable
    unconditional = [r.key for r in immutable if r.headers.get("if-none-match") != "*"]
    assert not unconditional, unconditional


def test_object_bodies_never_reach_debug_logs(s3, caplog):
    """botocore logs every request's parameters at DEBUG: a drop's bytes must not be among them."""
    import logging

    secret = b"R_7Hx2Lq9ZpWm4Ty1,jane.doe@example.org,192.0.2.77,41.8781,-87.6298\n"
    with caplog.at_level(logging.DEBUG):
        s3.storage.write_bytes("raw/us/secret.csv", secret, if_absent=True)
        s3.storage.write_bytes("ledger/us/x.json", secret)
        assert s3.storage.read_bytes("raw/us/secret.csv") == secret
    assert any(r.name.startswith("botocore") for r in caplog.records)   # DEBUG was on
    for value in ("R_7Hx2Lq9ZpWm4Ty1", "jane.doe@example.org", "192.0.2.77", "41.8781"):
        assert value not in caplog.text
