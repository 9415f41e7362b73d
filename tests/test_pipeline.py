"""The walking skeleton end to end: native drops -> intake -> analysis -> pooled report.

Plain ``src`` calls first (fast), then the Prefect flow under the session harness.
"""

import csv
import io
import json

import pandas as pd
import pytest

from lacrima import catalog, intake
from lacrima.storage import LocalStorage
from lacrima.vocabulary import RESULTS_COLUMNS

KEY = b"test-key"


def _land_all(storage, sites, drops):
    for s in sites:
        intake.upload(storage, s, drops[s.code], uploader="test")


@pytest.fixture(scope="module")
def completed_run(ingested_demo, demo_run):
    return (demo_run.storage, ingested_demo.intakes, demo_run.analyses, demo_run.comparison,
            demo_run.outputs)


def test_every_clean_drop_is_accepted(completed_run, sites):
    _, intakes, *_ = completed_run
    for res in intakes:
        assert res.accepted and not res.quarantined, [r.to_dict() for r in res.reports]


def test_results_csv_has_the_exact_header_and_all_sites(completed_run):
    storage, *_ = completed_run
    text = storage.read_bytes("reports/run-1/results.csv").decode()
    header = next(csv.reader(io.StringIO(text)))
    assert tuple(header) == RESULTS_COLUMNS
    res = pd.read_csv(io.StringIO(text), keep_default_na=False)
    assert {"us", "it", "il", "pooled"} <= set(res["site"])
    assert set(res["analysis"]) >= {"correlation", "spearman", "partial_correlation", "t_test",
                                    "chi_square", "meta_analysis"}
    assert (res["run_id"] == "run-1").all()


def test_latest_is_a_copy_of_the_run(completed_run):
    storage, *_ = completed_run
    for name in ("results.csv", "report.html", "participant_flow.csv", "provenance.json"):
        assert storage.read_bytes(f"reports/latest/{name}") == storage.read_bytes(f"reports/run-1/{name}")


def test_analysis_ready_data_carries_pseudonyms_only(completed_run, demo_drops, sites):
    storage, _, analyses, *_ = completed_run
    for a in analyses:
        data = pd.read_csv(io.BytesIO(storage.read_bytes(f"reports/run-1/restricted/data/{a.site}.csv")))
        assert data["participant_id"].str.fullmatch(rf"{a.site}-[0-9a-f]{{16}}").all()
        assert len(data) == a.flow.analysed


def test_provenance_names_inputs_plan_and_versions(completed_run, study):
    storage, _, analyses, *_ = completed_run
    prov = json.loads(storage.read_bytes("reports/run-1/provenance.json"))
    assert prov["plan"]["sha256"] == study.sha256
    assert set(prov["inputs"]) == {a.site for a in analyses}
    assert prov["packages"]["pandas"] and prov["sites"]["us"]["codebook_sha256"]


def test_same_file_twice_is_processed_once(demo_store, ingested_demo, study, sites, demo_drops,
                                           tmp_path):
    storage = demo_store
    us = next(s for s in sites if s.code == "us")
    renamed = tmp_path / "again.csv"
    renamed.write_bytes(demo_drops["us"].read_bytes())
    intake.upload(storage, us, renamed)
    res = intake.ingest_site(storage, us, study, ingested_demo.key)
    assert res.skipped_duplicates == res.seen and not res.accepted and not res.quarantined
    assert len([r for r in catalog.batches(storage, "us")]) == 1


def test_messy_drop_is_quarantined_whole_with_a_report(study, sites, tmp_path):
    from lacrima.synth import write_drop

    storage = LocalStorage(tmp_path / "store")
    it = next(s for s in sites if s.code == "it")
    path = write_drop(it, study, tmp_path / "messy", mess=True, seed=7)
    intake.upload(storage, it, path)
    res = intake.ingest_site(storage, it, study, KEY)
    assert res.quarantined and not res.accepted
    sha = res.quarantined[0]
    assert storage.exists(f"quarantine/it/{sha}/{path.name}")
    assert storage.read_bytes(f"quarantine/it/{sha}/{path.name}") == path.read_bytes()
    rep = json.loads(storage.read_bytes(f"quarantine/it/{sha}/report.json"))
    assert not rep["valid"] and all(f["check"] and f["message"] for f in rep["findings"])
    assert any(f["rows"] for f in rep["findings"]) and any(f["columns"] for f in rep["findings"])
    assert not storage.list("curated/it")
    (rec,) = catalog.batches(storage, "it")
    assert rec.state == "quarantined" and rec.reason


@pytest.mark.prefect
def test_flow_runs_end_to_end_under_prefect(prefect_harness, tmp_path, sites, demo_drops):
    from flows.pipeline import lacrima_pipeline

    storage = LocalStorage(tmp_path / "store")
    _land_all(storage, sites, demo_drops)
    summary = lacrima_pipeline(storage_location=str(tmp_path / "store"), demo=True, run_id="r1")
    assert summary.accepted == 3 and summary.quarantined == 0
    assert sorted(summary.sites_analysed) == ["il", "it", "us"]
    assert summary.report.endswith("reports/r1/report.html")
    again = lacrima_pipeline(storage_location=str(tmp_path / "store"), demo=True, run_id="r2")
    assert again.skipped_duplicates == 3 and again.accepted == 0


def test_pooled_rows_and_replication_cover_every_effect_of_the_plan(completed_run, study):
    """Every planned effect is pooled, and assessed against each original site."""
    storage, *_ = completed_run
    res = pd.read_csv(io.BytesIO(storage.read_bytes("reports/run-1/results.csv")),
                      keep_default_na=False)
    rep = pd.read_csv(io.BytesIO(storage.read_bytes("reports/run-1/replication.csv")),
                      keep_default_na=False)
    pooled = res[res.site == "pooled"]
    for fam_id in study.section("pooling")["families"]:
        fam = study.family(fam_id)
        if fam["kind"] == "correlation":
            expected = {(x, y, "") for x in fam["x"] for y in fam["y"]}
        elif fam["kind"] == "partial_correlation":
            expected = {(x, y, "+".join(c)) for x in fam["x"] for y in fam["y"]
                        for c in fam["covariate_sets"]}
        else:
            expected = None
        got = {tuple(r) for r in pooled[pooled.family == fam_id][["x", "y", "covariates"]].values}
        if expected is None:
            assert got, fam_id
            continue
        assert got == expected, fam_id
        if fam_id in study.section("replication")["families"]:
            for original in ("it", "il"):
                sub = rep[(rep.effect == fam_id) & (rep.original_site == original)]
                assert {tuple(r) for r in sub[["x", "y", "covariates"]].values} == expected
                assert sub["verdict"].isin(["replicated", "inconclusive", "not replicated"]).all()
