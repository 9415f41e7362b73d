"""Shared fixtures. Telemetry off and Prefect's home in a temp dir before anything imports prefect."""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lacrima-prefect-")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("LACRIMA_PSEUDONYM_KEY", "test-key-not-secret")

import pytest  # noqa: E402

from lacrima.study import load_study  # noqa: E402

# tests/reference/*.py are the scripts that wrote the reference files (run by hand, beside
# their R scripts): never imported by pytest. Importing invariance_data.py for its doctests
# rewrote the committed CSVs, on both xdist workers at once (one read the other's half-written
# file: a KeyError at collection).
collect_ignore = ["reference"]

# A test that uses one of these fixtures starts the service behind it and gets its marker here,
# so it cannot slip into the fast tier (`make test-fast`) by forgetting the marker.
SERVICE_MARKERS = {"prefect_harness": "prefect", "s3_endpoint": "s3"}


@pytest.hookimpl(tryfirst=True)     # before -m deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, marker in SERVICE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


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
def ingested_demo(tmp_path_factory, study, sites, demo_drops):
    """The demo drops uploaded and ingested under ``DEMO_KEY``, once for the whole session
    (one Great Expectations validation of the three drops, shared by the workers).

    Read only: ``root`` is the store's folder, ``intakes`` what ``ingest_sites`` said per site
    (in the order of ``sites``). A test that writes to a store takes a copy (``demo_store``,
    or ``shutil.copytree(root, ...)`` in a module fixture): copying costs milliseconds, intake
    seconds. Checked unchanged at the end of the session.
    """
    from types import SimpleNamespace

    from lacrima import intake
    from lacrima.privacy import DEMO_KEY
    from lacrima.storage import LocalStorage

    def build(folder):
        storage = LocalStorage(folder / "store")
        for s in sites:
            intake.upload(storage, s, demo_drops[s.code])
        return SimpleNamespace(root=folder / "store", key=DEMO_KEY,
                               intakes=intake.ingest_sites(storage, sites, study, DEMO_KEY))

    made = once_per_session(tmp_path_factory, "ingested", build)
    before = _listing(made.root)
    yield made
    assert _listing(made.root) == before, "a test wrote to the shared ingested store: copy it first"


def once_per_session(tmp_path_factory, name: str, build):
    """``build(folder)`` once per test session, shared by every pytest-xdist worker.

    The first worker to ask builds it in a folder all workers see and pickles the value; the
    others wait on a lock and read the pickle (milliseconds, where building the demo's intake
    or run costs seconds to tens of seconds per worker). Only for read-only fixtures.
    """
    import fcntl
    import pickle

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent                  # the session's folder, above each worker's own
    folder, value = base / f"shared-{name}", base / f"shared-{name}.pickle"
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)    # released when the file closes
        if value.exists():
            return pickle.loads(value.read_bytes())
        folder.mkdir(exist_ok=True)
        made = build(folder)
        value.write_bytes(pickle.dumps(made))
        return made


def _listing(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


@pytest.fixture
def demo_store(tmp_path, ingested_demo):
    """A private copy of the session's ingested demo store, to write to."""
    from lacrima.storage import LocalStorage

    shutil.copytree(ingested_demo.root, tmp_path / "store")
    return LocalStorage(tmp_path / "store")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, study, sites, ingested_demo):
    """A copy of the ingested demo store, analysed and reported as run ``run-1``, once for the
    whole session (shared by the workers).

    Read only, like ``ingested_demo``: ``storage``, ``analyses``, ``comparison`` and
    ``outputs`` (what ``report.write_outputs`` returned).
    """
    from types import SimpleNamespace

    from lacrima import report, steps
    from lacrima.storage import LocalStorage

    def build(folder):
        shutil.copytree(ingested_demo.root, folder / "store")
        storage = LocalStorage(folder / "store")
        analyses = [steps.site_step(storage, s, study) for s in sites]
        comparison = steps.compare_sites(analyses, study, list(sites))
        prov = steps.provenance("run-1", analyses, study, list(sites))
        outputs = report.write_outputs(storage, "run-1", analyses, comparison, study,
                                       list(sites), prov)
        return SimpleNamespace(storage=storage, analyses=analyses, comparison=comparison,
                               outputs=outputs)

    made = once_per_session(tmp_path_factory, "run", build)
    before = _listing(made.storage.root)
    yield made
    assert _listing(made.storage.root) == before, "a test wrote to the shared run's store"


@pytest.fixture(scope="session")
def memory_sites(study, sites):
    """The demo's per-site analyses built in memory (synthetic canonical data at the published
    N): ``{code: (SiteAnalysis, analysis-ready rows)}``.

    Same steps as ``steps.site_step`` without intake and storage, which report
    tests do not need (tests/test_pipeline.py covers them): seconds instead of half a minute.
    """
    return sites_in_memory(study, sites)


@pytest.fixture(scope="session")
def small_plan(tmp_path_factory):
    """The demo's sites under a plan cut to one or a few effects of each kind
    (tests/smallplan.py): ``root``, ``study`` and ``sites``. For tests of lifecycle logic,
    whose comparison and report then cost a second instead of ten."""
    from types import SimpleNamespace

    from smallplan import small_plan as make

    root = tmp_path_factory.mktemp("small") / "sites"
    study, sites = make(root)
    return SimpleNamespace(root=root, study=study, sites=sites)


@pytest.fixture(scope="session")
def small_memory_sites(small_plan):
    """``memory_sites`` under the small plan."""
    return sites_in_memory(small_plan.study, small_plan.sites)


def sites_in_memory(study, sites):
    from lacrima import analysis, scoring, synth
    from lacrima.ipd import site_moments
    from lacrima.privacy import pseudonymise
    from lacrima.results import SiteAnalysis
    from lacrima.vocabulary import RESULTS_COLUMNS

    out = {}
    for s in sites:
        frame = synth.simulate(s, study, s.published_n, seed=study.raw["study"]["seed"])
        frame["participant_id"] = pseudonymise(s.code, frame["participant_id"], b"test-key")
        data, flow = scoring.analysis_ready(frame, study, s.code)
        results = analysis.analyse_site(data, study, s.code).reindex(columns=list(RESULTS_COLUMNS))
        out[s.code] = (SiteAnalysis(s.code, f"key-{s.code}", (f"batch-{s.code}",), flow, results,
                                    analysis.describe_site(data, study, s.code),
                                    site_moments(data, study)), data)
    return out


@pytest.fixture(scope="session")
def memory_analyses(memory_sites):
    """The analyses of ``memory_sites``, in site order."""
    return [a for a, _ in memory_sites.values()]


@pytest.fixture(scope="session")
def store_memory(memory_sites):
    """A function that stores the ``memory_sites`` analyses and rows in a store (as a run's
    site step would) and returns the store: a report is written from a store."""
    return storer(memory_sites)


@pytest.fixture(scope="session")
def small_store_memory(small_memory_sites):
    """``store_memory`` for ``small_memory_sites``."""
    return storer(small_memory_sites)


def storer(memory_sites):
    from lacrima import catalog

    def store(storage):
        for a, data in memory_sites.values():
            catalog.save_site_analysis(storage, a, data)
        return storage
    return store
