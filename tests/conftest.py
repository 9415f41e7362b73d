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
