"""A real Prefect server for the tests that need one (served deployments): ``prefect server start``.

Test infrastructure, so it lives beside the tests, not in the package.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_prefect_server(home: Path, port: int | None = None, timeout: float = 120.0,
                        env: dict | None = None):
    """Run ``prefect server start`` (SQLite under ``home``) on a free local port.

    Yields the API URL (``http://127.0.0.1:<port>/api``). The server is stopped, by its own
    process group, on exit.

    Parameters
    ----------
    home : Path
        ``PREFECT_HOME`` of the server: its SQLite database lives there.
    port : int, optional
        Default: a free port.
    timeout : float
        Seconds to wait for ``/api/health``.
    env : dict, optional
        Extra environment of the server (e.g. a shorter scheduler loop in tests).
    """
    port = port or free_port()
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(home), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false") | (env or {})
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).parent / "prefect"
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}: "
                                   f"see {home}/server.log")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server did not answer {url}/health in {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        log.close()
