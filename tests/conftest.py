"""Shared fixtures. Telemetry off and Prefect's home in a temp dir before anything imports prefect."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lacrima-prefect-")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("LACRIMA_PSEUDONYM_KEY", "test-key-not-secret")

import pytest  # noqa: E402

from lacrima.study import load_study  # noqa: E402


@pytest.fixture(scope="session")
def study():
    return load_study()


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (starting one takes 5-15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def sites():
    from lacrima.study import load_sites

    return load_sites()


@pytest.fixture(scope="session")
def demo_drops(tmp_path_factory, study, sites):
    """One clean synthetic drop per site in its native format, at the published N."""
    from lacrima.synth import write_drop

    folder = tmp_path_factory.mktemp("drops")
    return {s.code: write_drop(s, study, folder / s.code) for s in sites}
