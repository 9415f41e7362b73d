"""Helpers for the S3 tests: a real HTTP S3 endpoint (moto's server mode) and a fault proxy.

Everything listens on 127.0.0.1 only, on ports the OS picks.

``FaultProxy`` stands between boto3 (or the AWS CLI) and moto. It forwards every request
unchanged, except that it answers the next requests on its fault list itself, with the error
S3 would send (503 SlowDown when S3 throttles, 500 InternalError, 503 ServiceUnavailable).
That is how the tests prove that botocore's retries (standard mode) carry every I/O through.
"""

from __future__ import annotations

import http.client
import os
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

LOOPBACK = "127.0.0.1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

# The errors S3 really sends for throttling and for transient server faults.
SLOW_DOWN = (503, "SlowDown", "Please reduce your request rate.")
INTERNAL_ERROR = (500, "InternalError", "We encountered an internal error. Please try again.")
SERVICE_UNAVAILABLE = (503, "ServiceUnavailable", "Service is unable to handle request.")


class MotoServer:
    """moto's S3 in server mode on a free loopback port (a real HTTP endpoint)."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.port = port

    def stop(self):
        self._server.stop()


@dataclass
class Fault:
    status: int
    code: str
    message: str
    method: str | None = None       # only requests with this HTTP method, or any
    after: bool = False             # forward first, then answer the fault: a lost answer


@dataclass
class Request:
    """One request as the proxy saw it (headers lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]

    @property
    def key(self) -> str:
        """The object key of a path-style request, without bucket and query."""
        return self.path.split("?", 1)[0].lstrip("/").partition("/")[2]


class FaultProxy:
    """A loopback HTTP proxy in front of an S3 endpoint that injects S3 error answers.

    ``inject(*faults)`` queues faults; each matching incoming request takes the next one and is
    answered with it instead of being forwarded. ``served`` lists the faults sent, ``forwarded``
    counts the requests that reached the endpoint, ``requests`` records every request.
    """

    def __init__(self, upstream: str):
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.faults: list[Fault] = []
        self.served: list[tuple[str, str, int]] = []
        self.requests: list[Request] = []
        self.forwarded = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # answers Expect: 100-continue as S3 does

            def log_message(self, *args):   # quiet: the test output is for assertions
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass                # trailers end with an empty line
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                body = self._body()
                with proxy._lock:
                    proxy.requests.append(Request(self.command, self.path, {
                        k.lower(): v for k, v in self.headers.items()}))
                fault = proxy._take(self.command)
                if fault is None:
                    self._relay(*self._forward(body))
                else:
                    if fault.after:
                        self._forward(body)     # the endpoint acts; its answer is lost
                    self._answer_fault(fault)
                self.close_connection = True

            def _answer_fault(self, fault: Fault):
                payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}'
                           f'</Code><Message>{fault.message}</Message>'
                           f'<RequestId>fault-{uuid.uuid4().hex[:8]}</RequestId></Error>').encode()
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in ("transfer-encoding", "content-length",
                                                "connection", "expect"):
                            conn.putheader(name, value)
                    conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                with proxy._lock:
                    proxy.forwarded += 1
                return resp.status, resp.reason, resp.getheaders(), data

            def _relay(self, status, reason, headers, data):
                self.send_response(status, reason)
                length = str(len(data))
                for name, value in headers:
                    if name.lower() == "content-length":
                        # HEAD answers announce the object's length but carry no body.
                        length = value if self.command == "HEAD" else length
                    elif name.lower() not in ("transfer-encoding", "connection", "server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _take(self, method: str) -> Fault | None:
        with self._lock:
            for i, f in enumerate(self.faults):
                if f.method in (None, method):
                    self.faults.pop(i)
                    self.served.append((method, f.code, f.status))
                    return f
        return None

    def inject(self, *faults: tuple | Fault, method: str | None = None, after: bool = False):
        """Queue faults, given as ``Fault`` or ``(status, code, message)`` tuples.

        ``after=True``: the request still reaches the endpoint, only its answer is replaced.
        """
        with self._lock:
            for f in faults:
                self.faults.append(f if isinstance(f, Fault) else
                                   Fault(*f, method=method, after=after))

    def pending(self) -> int:
        with self._lock:
            return len(self.faults)

    def reset(self):
        with self._lock:
            self.faults.clear()
            self.served.clear()
            self.requests.clear()
            self.forwarded = 0

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()


def aws_env(endpoint: str, home: Path) -> dict[str, str]:
    """Environment for boto3 and the AWS CLI: this endpoint, fake credentials, no user config."""
    return {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_CONFIG_FILE": str(home / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials-absent"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_RETRY_MODE": "standard",
        "AWS_MAX_ATTEMPTS": "8",
    }


def new_bucket(endpoint: str) -> str:
    """A fresh bucket on the endpoint (moto keeps one state per process: no test sees another's)."""
    import boto3

    name = f"lacrima-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(
        Bucket=name)
    return name


def aws_cli() -> str:
    """The AWS CLI installed in the venv beside this Python."""
    import sys

    path = Path(sys.executable).parent / "aws"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the AWS CLI (awscli) is not installed in the venv")
    return str(path)


def run_aws(args: list[str], env: dict[str, str]):
    import subprocess

    full = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    full.update(env)
    return subprocess.run([aws_cli(), *args], env=full, capture_output=True, text=True,
                          timeout=120)


# Fixtures, imported by the test modules that use S3 (``from s3util import s3, s3_endpoint``).

@pytest.fixture(scope="module")
def s3_endpoint():
    """One moto server and one fault proxy in front of it for the whole module."""
    server = MotoServer()
    proxy = FaultProxy(server.url)
    yield SimpleNamespace(server=server, proxy=proxy)
    proxy.stop()
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path):
    """A fresh bucket; boto3 and the AWS CLI pointed at it through the proxy; LACRIMA_STORAGE set.

    Yields a namespace: ``storage`` (S3Storage), ``url`` (s3://bucket/lacrima), ``bucket``,
    ``env`` (the AWS settings, for subprocesses) and ``proxy`` (to inject faults).
    """
    from lacrima.storage import S3Storage

    s3_endpoint.proxy.reset()
    env = aws_env(s3_endpoint.proxy.url, tmp_path)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = new_bucket(s3_endpoint.server.url)
    url = f"s3://{bucket}/lacrima"
    monkeypatch.setenv("LACRIMA_STORAGE", url)
    yield SimpleNamespace(storage=S3Storage(url), url=url, bucket=bucket, env=env,
                          proxy=s3_endpoint.proxy)
    assert s3_endpoint.proxy.pending() == 0, "a test queued faults that no request consumed"
