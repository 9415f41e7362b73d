"""Site isolation on S3 (issue 11, item 11): ``lacrima sites iam-policy SITE`` under moto's
IAM enforcement.

moto checks no credentials unless ``INITIAL_NO_AUTH_ACTION_COUNT`` is set: the first N
requests go unchecked (here: the bucket, a few objects, the data manager's user, policy and
access key), every later one is authenticated and authorised against IAM policies. A moto
server of its own (a subprocess) keeps that setting and its request count away from the
other S3 tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from lacrima import intake
from flows.cli import app
from lacrima.storage import S3Storage
from lacrima.study import load_site

pytestmark = pytest.mark.s3     # a moto server of its own

BUCKET, PREFIX = "consortium", "lacrima"
SETUP_REQUESTS = 8      # counted below: every request before the data manager's first


def _client(service, url, key="testing", secret="testing"):
    import boto3

    return boto3.client(service, endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)


@pytest.fixture(scope="module")
def enforced():
    """A moto server checking IAM after SETUP_REQUESTS requests; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_REQUESTS)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(20)


def _policy(site: str) -> dict:
    res = CliRunner().invoke(app, ["sites", "iam-policy", site, "--storage",
                                   f"s3://{BUCKET}/{PREFIX}"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def data_manager_it(enforced):
    """Set up (unchecked): bucket, objects of every zone, user dm-it with its policy and key."""
    admin, iam = _client("s3", enforced), _client("iam", enforced)
    admin.create_bucket(Bucket=BUCKET)                                                # 1
    for key in ("raw/it/abc.csv", "curated/it/abc.parquet",                          # 2, 3
                "quarantine/it/q1/report.json", "quarantine/us/q2/report.json"):     # 4, 5
        admin.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=b"{}")
    iam.create_user(UserName="dm-it")                                                 # 6
    iam.put_user_policy(UserName="dm-it", PolicyName="lacrima-site-it",               # 7
                        PolicyDocument=json.dumps(_policy("it")))
    key = iam.create_access_key(UserName="dm-it")["AccessKey"]                        # 8
    return _client("s3", enforced, key["AccessKeyId"], key["SecretAccessKey"])


def _denied(call, *args, **kwargs) -> str:
    with pytest.raises(ClientError) as err:
        call(*args, **kwargs)
    return err.value.response["Error"]["Code"]


def test_checks_are_enforced_after_the_setup(enforced, data_manager_it):
    # The unchecked requests are used up: credentials IAM does not know are refused now.
    assert _denied(_client("s3", enforced).get_object, Bucket=BUCKET,
                   Key=f"{PREFIX}/raw/it/abc.csv") in ("InvalidAccessKeyId", "AccessDenied",
                                                      "InvalidClientTokenId")


def test_the_italian_data_manager_can_upload_to_landing_it(data_manager_it, tmp_path, study):
    from lacrima.synth import write_drop

    site = load_site("it")
    drop = write_drop(site, study, tmp_path / "it", n=10, seed=1)
    store = S3Storage(f"s3://{BUCKET}/{PREFIX}", client=data_manager_it)
    key = intake.upload(store, site, drop, uploader="dm-it")      # lacrima upload, as-is
    assert key.startswith("landing/it/")


def test_but_not_to_another_sites_landing_zone(data_manager_it):
    assert _denied(data_manager_it.put_object, Bucket=BUCKET,
                   Key=f"{PREFIX}/landing/us/drop.csv", Body=b"a,b\n") == "AccessDenied"


@pytest.mark.parametrize("key", ["raw/it/abc.csv", "curated/it/abc.parquet",
                                 "quarantine/us/q2/report.json"])
def test_nor_read_raw_curated_or_another_sites_quarantine(data_manager_it, key):
    assert _denied(data_manager_it.get_object, Bucket=BUCKET,
                   Key=f"{PREFIX}/{key}") == "AccessDenied"


def test_it_reads_its_own_quarantine_reports(data_manager_it):
    body = data_manager_it.get_object(Bucket=BUCKET, Key=f"{PREFIX}/quarantine/it/q1/report.json")
    assert body["Body"].read() == b"{}"


def test_iam_policy_needs_an_s3_store_and_a_known_site():
    runner = CliRunner()
    res = runner.invoke(app, ["sites", "iam-policy", "it", "--storage", "/tmp/folder"])
    assert res.exit_code == 2 and "s3://" in res.output
    res = runner.invoke(app, ["sites", "iam-policy", "zz", "--storage", "s3://b/p"])
    assert res.exit_code == 2
