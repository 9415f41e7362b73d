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


@pytest.fixture(scope="session")
def memory_analyses(study, sites):
    """The demo's per-site analyses built in memory (synthetic canonical data at the published N).

    Same steps as ``pipeline.analyse_site_data`` without intake and storage, which report
    tests do not need (tests/test_pipeline.py covers them): seconds instead of half a minute.
    """
    from lacrima import analysis, pipeline, scoring, synth
    from lacrima.privacy import pseudonymise
    from lacrima.vocabulary import RESULTS_COLUMNS

    analyses = []
    for s in sites:
        frame = synth.simulate(s, study, s.published_n, seed=study.raw["study"]["seed"])
        frame["participant_id"] = pseudonymise(s.code, frame["participant_id"], b"test-key")
        data, flow = scoring.analysis_ready(frame, study, s.code)
        results = analysis.analyse_site(data, study, s.code).reindex(columns=list(RESULTS_COLUMNS))
        descr = analysis.describe_site(data, study, s.code)
        analyses.append(pipeline.SiteAnalysis(s.code, f"key-{s.code}", (f"batch-{s.code}",), data,
                                              flow, results, descr))
    return analyses


@pytest.fixture
def report_worker(monkeypatch):
    """Reports made in this test use a worker process even for 3 sites; the list of the
    ``lacrima.offload.Offload`` objects they made (to check what the worker did)."""
    from lacrima import offload, report

    made = []
    real = offload.Offload.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(report, "WORKER_FROM_SITES", 1)
    monkeypatch.setattr(offload.Offload, "__init__", spy)
    return made
