"""Publishing a report (issue 11, item 1): the latest report is always one whole run.

Before: a run killed while writing its report left ``reports/latest/`` mixing two runs (new
provenance and results, old report.html and manifest), and the next run, reading the new
provenance there, said "nothing new" and never repaired it. Now a run writes its folder,
then its manifest, then the pointer ``reports/latest.json``; ``latest`` and the "anything
new?" check follow the pointer.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from lacrima import catalog, report, steps
from lacrima.results import Comparison
from lacrima.storage import LocalStorage
from s3util import s3, s3_endpoint  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def inputs(small_plan, small_memory_sites, small_store_memory):
    # The pointer's logic does not depend on the report's size: the small plan's reports
    # (tests/smallplan.py) are whole reports of every kind of section, at a fifth of the cost.
    from lacrima.pooling import pool_estimates
    from lacrima.replication import replication_table
    from lacrima.vocabulary import RESULTS_COLUMNS

    study, sites = small_plan.study, list(small_plan.sites)
    analyses = [a for a, _ in small_memory_sites.values()]
    per_site = pd.concat([a.results for a in analyses], ignore_index=True)
    results = pd.concat([per_site, pool_estimates(per_site, study).reindex(
        columns=list(RESULTS_COLUMNS))], ignore_index=True)
    comparison = Comparison(results, replication_table(per_site, study, sites))
    return analyses, comparison, study, sites, small_store_memory


def _write(storage, run_id, inputs, ckey):
    analyses, comparison, study, sites, store_memory = inputs
    store_memory(storage)
    prov = steps.provenance(run_id, analyses, study, sites)
    prov["comparison_key"] = ckey       # stands for new inputs since the previous run
    return report.write_outputs(storage, run_id, analyses, comparison, study, sites, prov)


def _latest_is_exactly(storage, run_id):
    pointer = json.loads(storage.read_bytes(catalog.LATEST_POINTER))
    man = storage.read_bytes(f"reports/{run_id}/manifest.json")
    assert pointer["run_id"] == run_id
    assert pointer["manifest_sha256"] == hashlib.sha256(man).hexdigest()
    names = [f["name"] for f in json.loads(man)["files"]] + ["manifest.json"]
    for name in names:      # the local link: every file, as the run wrote it
        assert storage.read_bytes(f"reports/latest/{name}") == \
            storage.read_bytes(f"reports/{run_id}/{name}"), name
    assert json.loads(storage.read_bytes("reports/latest/provenance.json"))["run_id"] == run_id


def test_a_run_killed_mid_report_leaves_the_previous_report_latest_and_the_next_run_repairs(
        tmp_path, inputs, monkeypatch):
    study = inputs[2]
    storage = LocalStorage(tmp_path)
    _write(storage, "r1", inputs, "K1")
    _latest_is_exactly(storage, "r1")
    assert catalog.last_comparison_key(storage) == "K1"

    # Run r2 (new inputs, K2) dies after its results and provenance but before its report.
    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed while rendering the report")

    monkeypatch.setattr(report, "render_report", die)
    with pytest.raises(KeyboardInterrupt):
        _write(storage, "r2", inputs, "K2")
    monkeypatch.undo()
    assert storage.exists("reports/r2/provenance.json")            # half a run folder
    assert not storage.exists("reports/r2/manifest.json")
    _latest_is_exactly(storage, "r1")                              # never mixed
    assert catalog.last_comparison_key(storage) == "K1"
    # ... so the next run sees inputs newer than the latest report and makes it again.
    inputs_k2 = {"us": "x"}
    monkeypatch.setattr(steps, "comparison_key", lambda keys, study: "K2")
    assert steps.needs_report(storage, inputs_k2, study)
    monkeypatch.undo()

    _write(storage, "r3", inputs, "K2")
    _latest_is_exactly(storage, "r3")
    assert catalog.last_comparison_key(storage) == "K2"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def any_store(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return request.getfixturevalue("s3").storage


def test_a_run_folder_without_manifest_is_named_by_status_and_removed_by_the_next_lease_holder(
        any_store, inputs, monkeypatch):
    # Before: a run killed while writing its report left reports/<run>/ without a manifest
    # for good (restricted data files in it included).
    from typer.testing import CliRunner

    from flows.cli import app
    from lacrima import lease

    storage = any_store
    _write(storage, "r1", inputs, "K1")
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(report, "render_report",
                  lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt("killed")))
        _write(storage, "r2", inputs, "K2")
    assert storage.exists("reports/r2/restricted/analysis_ready.parquet")
    assert catalog.unfinished_reports(storage) == ["r2"]
    res = CliRunner().invoke(app, ["status", "--storage", storage.location])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and "unfinished report: reports/r2/ has no manifest" in said, said
    with lease.hold(storage, "next run"):
        pass
    assert not storage.list("reports/r2") and catalog.unfinished_reports(storage) == []
    if storage.local_path("reports/r2") is not None:
        assert not storage.local_path("reports/r2").exists()
        _latest_is_exactly(storage, "r1")               # the published report is untouched
    assert catalog.latest_run(storage) == "r1" and storage.exists("reports/r1/manifest.json")
    res = CliRunner().invoke(app, ["status", "--storage", storage.location])
    assert "unfinished report" not in res.output


def test_the_local_latest_link_is_replaced_atomically_and_relative(tmp_path, inputs):
    storage = LocalStorage(tmp_path)
    _write(storage, "r1", inputs, "K1")
    _write(storage, "r2", inputs, "K2")
    link = tmp_path / "reports" / "latest"
    assert link.is_symlink() and str(link.readlink()) == "r2"
    assert not list((tmp_path / "reports").glob(".latest-*"))      # no temporary link left
    # Listings see each file once, under its run (the link is not a second copy).
    assert not [o.key for o in storage.list("reports") if o.key.startswith("reports/latest/")]


def test_no_pointer_means_no_latest_report(tmp_path):
    storage = LocalStorage(tmp_path)
    # A provenance file alone (an older layout, or half a run) is not a published report.
    storage.write_bytes("reports/latest/provenance.json", b'{"comparison_key": "K"}')
    assert catalog.latest_run(storage) is None
    assert catalog.last_comparison_key(storage) is None
