"""Incremental work keyed on content: unchanged sites are reused, the pool reruns when any changes.

Plain ``src`` calls first; then the flow three times under the session Prefect harness:
first run, a run with nothing new, a run after one new drop at one site.
"""

import dataclasses
import json
import pickle
import re

import pandas as pd
import pytest

from lacrima import catalog, intake, report, steps
from lacrima.runplan import plan
from lacrima.privacy import DEMO_KEY
from lacrima.results import SitePlan
from lacrima.storage import LocalStorage
from lacrima.synth import write_drop

N = 40                          # small sites: every analysis still runs, quickly


@pytest.fixture(scope="module")
def small_drops(tmp_path_factory, study, sites):
    folder = tmp_path_factory.mktemp("small")
    return {s.code: write_drop(s, study, folder / s.code, n=N) for s in sites}


def _second_drop(study, site, folder):
    # Fresh IDs (id_offset) and another seed: a new batch, not a re-send.
    return write_drop(site, study, folder, n=N, seed=99, id_offset=10_000)


@pytest.fixture()
def ingested(demo_store):
    # The session's ingested demo store (tests/conftest.py), a copy per test.
    return demo_store


def test_plan_counts_pending_drops_from_listings(tmp_path, ingested, sites, small_drops):
    us = next(s for s in sites if s.code == "us")
    assert steps.plan_site(LocalStorage(tmp_path / "empty"), us) == SitePlan("us", 0, 0)
    assert steps.plan_site(ingested, us) == SitePlan("us", 1, 0)    # one drop, ingested
    intake.upload(ingested, us, small_drops["us"])
    assert steps.plan_site(ingested, us) == SitePlan("us", 2, 1)
    assert steps.plan_site(ingested, us).to_frame().to_dict("records") == [
        {"site": "us", "landed": 2, "pending": 1}]


def test_second_analysis_is_reused_from_the_content_key(ingested, study, sites):
    it = next(s for s in sites if s.code == "it")
    first = steps.site_step(ingested, it, study, outputs=False)
    again = steps.site_step(ingested, it, study, outputs=False)
    assert not first.reused and again.reused
    assert again.input_key == first.input_key
    assert ingested.exists(f"results/it/{first.input_key}/flow.json")
    pd.testing.assert_frame_equal(again.results, first.results)
    pd.testing.assert_frame_equal(again.descriptives, first.descriptives)
    assert again.flow == first.flow


def test_a_new_batch_changes_only_its_sites_key(ingested, study, sites, tmp_path):
    before = {c: k for c, (k, _) in steps.site_keys(ingested, sites, study).items()}
    il = next(s for s in sites if s.code == "il")
    intake.upload(ingested, il, _second_drop(study, il, tmp_path / "il2"))
    res = intake.ingest_site(ingested, il, study, DEMO_KEY)
    assert res.accepted, [r.to_dict() for r in res.reports]
    after = steps.site_keys(ingested, sites, study)
    assert after["il"][0] != before["il"] and len(after["il"][1]) == 2
    assert {c: after[c][0] for c in ("us", "it")} == {c: before[c] for c in ("us", "it")}
    # The cross-site key moves with any site's key, and not with the order of the sites.
    assert steps.comparison_key(before, study) != steps.comparison_key(
        {c: k for c, (k, _) in after.items()}, study)
    assert steps.comparison_key(dict(reversed(list(before.items()))), study) == \
        steps.comparison_key(before, study)


def test_unchanged_sites_are_reused_from_their_stored_entries_as_stored(ingested, study, sites):
    keys = steps.site_keys(ingested, sites, study)
    assert steps.sites_to_analyse(ingested, sites, keys) == ([], list(sites))   # none stored
    analyses = [steps.site_step(ingested, s, study) for s in sites]
    reuse, todo = steps.sites_to_analyse(ingested, sites, keys)
    assert reuse == list(sites) and todo == []
    for a, b in zip(analyses, [steps.site_step(ingested, s, study, keys[s.code]) for s in reuse]):
        assert b.reused and not a.reused
        assert (b.input_key, b.batches, b.flow) == (a.input_key, a.batches, a.flow)
        for name in ("results", "descriptives", "moments"):   # the same frames, dtypes and all
            pd.testing.assert_frame_equal(getattr(b, name), getattr(a, name))
    # A site whose key changed, or whose own outputs are gone, is analysed again instead.
    changed = dict(keys, us=("0" * 64, keys["us"][1]))
    assert [s.code for s in steps.sites_to_analyse(ingested, sites, changed)[1]] == ["us"]
    it = next(a for a in analyses if a.site == "it")
    ingested.local_path(f"results/it/{it.input_key}/outputs-{report.OUTPUTS_VERSION}/files.json"
                        ).unlink()
    assert [s.code for s in steps.sites_to_analyse(ingested, sites, keys)[1]] == ["it"]
    # the run plan's decision needs no Prefect and reads no data file: existence checks only
    todo = plan(ingested, sites, study)
    assert (todo.analyse, todo.reuse, todo.report, todo.runner) == (
        ("it",), tuple(s.code for s in sites if s.code != "it"), True, "thread")


def test_input_key_moves_with_codebook_site_file_and_plan_but_not_a_re_sent_drop(
        ingested, study, sites, demo_drops, tmp_path):
    us = next(s for s in sites if s.code == "us")
    key, accepted = steps.site_input_key(ingested, us, study)
    assert re.fullmatch("[0-9a-f]{64}", key) and steps.site_input_key(ingested, us, study) == (
        key, accepted)
    assert accepted == tuple(r.sha256 for r in catalog.batches(ingested, "us"))
    # The same export sent again under another name brings nothing: same key.
    again = tmp_path / "again.csv"
    again.write_bytes(demo_drops["us"].read_bytes())
    intake.upload(ingested, us, again)
    res = intake.ingest_site(ingested, us, study, DEMO_KEY)
    assert res.skipped_duplicates == res.seen and not res.accepted
    assert steps.site_input_key(ingested, us, study) == (key, accepted)
    # One byte more in the codebook file (a comment), another role on the site file (shown on
    # the site's page) or another plan: new key. The site file's contact or language: not.
    codebook = tmp_path / "codebook.toml"
    codebook.write_bytes(us.codebook_path.read_bytes() + b"\n# edited\n")
    moved = {steps.site_input_key(ingested, dataclasses.replace(us, codebook_path=codebook),
                                     study)[0],
             steps.site_input_key(ingested, dataclasses.replace(us, role="other"), study)[0],
             steps.site_input_key(ingested, us, dataclasses.replace(study, sha256="0" * 64))[0]}
    assert len(moved) == 3 and key not in moved
    assert steps.site_input_key(ingested, dataclasses.replace(us, sha256="0" * 64,
                                                              language="he"), study)[0] == key


def test_no_report_is_needed_when_the_latest_was_made_from_the_same_inputs(ingested_demo, demo_run,
                                                                           study):
    # demo_run: the ingested demo store (no report yet) after one report of the same inputs
    keys = {a.site: a.input_key for a in demo_run.analyses}
    assert steps.needs_report(LocalStorage(ingested_demo.root), keys, study)
    reported = demo_run.storage
    assert catalog.last_comparison_key(reported) == steps.comparison_key(keys, study)
    assert not steps.needs_report(reported, keys, study)
    assert not steps.needs_report(reported, {}, study)


def test_run_context_pickles_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("LACRIMA_PSEUDONYM_KEY", "test-key-not-secret")
    ctx = steps.prepare_run(str(tmp_path / "store"))
    blob = pickle.dumps(ctx)
    assert ctx.pseudonym_key not in blob                 # the secret never travels with a task
    back = pickle.loads(blob)
    assert back.storage.location == ctx.storage.location and back.pseudonym_key == ctx.pseudonym_key
    assert [s.code for s in back.sites] == [s.code for s in ctx.sites]


def test_stage_clock_adds_up_repeated_stages():
    clock = steps.StageClock()
    for _ in range(2):
        with clock("intake"):
            pass
    assert set(clock.seconds) == {"intake"} and clock.seconds["intake"] >= 0


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


@pytest.mark.prefect
def test_flow_reuses_unchanged_sites_and_reruns_the_pool(prefect_harness, tmp_path, study, sites,
                                                         small_drops):
    from flows.pipeline import lacrima_pipeline

    store = tmp_path / "store"
    storage = LocalStorage(store)
    for s in sites:
        intake.upload(storage, s, small_drops[s.code])
    # other flow runs in the same harness publish under the same keys: count from here
    before = len(_artifacts("lacrima-verdict-table"))
    first = lacrima_pipeline(storage_location=str(store), run_id="r1")
    assert sorted(first.sites_recomputed) == ["il", "it", "us"] and not first.sites_reused
    assert first.report.endswith("reports/r1/report.html")

    tables = _artifacts("lacrima-verdict-table")
    assert len(tables) == before + 1 and all(t.type == "table" for t in tables)
    assert _artifacts("lacrima-verdicts") and _artifacts("lacrima-report")

    # Nothing new: no site analysed, no report, no new artifact, says so.
    same = lacrima_pipeline(storage_location=str(store), run_id="r2")
    assert len(_artifacts("lacrima-verdict-table")) == before + 1
    assert same.nothing_new and same.report is None
    assert same.sites_recomputed == () and same.sites_reused == ("il", "it", "us")
    assert same.skipped_duplicates == 3 and same.accepted == 0
    assert "analysis" not in same.seconds
    assert not storage.list("reports/r2")

    # One new drop at Italy: Italy and the pool are recomputed, the others reused.
    it = next(s for s in sites if s.code == "it")
    intake.upload(storage, it, _second_drop(study, it, tmp_path / "it2"))
    new = lacrima_pipeline(storage_location=str(store), run_id="r3")
    assert new.accepted == 1 and new.sites_recomputed == ("it",)
    assert new.sites_reused == ("il", "us") and not new.nothing_new
    # one reuse path: the per-site entries, no second copy of the estimates
    assert {o.key.split("/")[1] for o in storage.list("results/")} == {"il", "it", "us"}
    assert new.report.endswith("reports/r3/report.html")
    res = pd.read_csv(storage.local_path("reports/r3/results.csv"), keep_default_na=False)
    n_it = res.loc[(res["site"] == "it") & (res["analysis"] == "correlation"), "n"].astype(float)
    assert n_it.max() > N        # Italy's estimates now use both batches
    old = pd.read_csv(storage.local_path("reports/r1/results.csv"), keep_default_na=False)
    pd.testing.assert_frame_equal(                       # reused sites give identical rows
        res[res["site"] == "us"].drop(columns="run_id").reset_index(drop=True),
        old[old["site"] == "us"].drop(columns="run_id").reset_index(drop=True))
    # Site pages and exports: written once per input key by the site's task and copied,
    # so an unchanged site's files are the same bytes; the changed site's are new.
    for name in ("site-us.html", "restricted/data/us.sav", "restricted/data/us.csv"):
        assert storage.read_bytes(f"reports/r3/{name}") == storage.read_bytes(f"reports/r1/{name}")
    assert (storage.read_bytes("reports/r3/restricted/data/it.csv")
            != storage.read_bytes("reports/r1/restricted/data/it.csv"))
    outputs = [o.key for o in storage.list("results/us/") if "/outputs-" in o.key]
    assert sum(k.endswith("/files.json") for k in outputs) == 1
    # copied site files are listed in the manifest with the hash and size of what was copied
    import hashlib
    listed = json.loads(storage.read_bytes("reports/r3/manifest.json"))["files"]
    assert {f["name"] for f in listed} >= {"site-us.html", "restricted/data/us.sav",
                                           "restricted/data/it.csv"}
    for f in listed:
        data = storage.read_bytes(f"reports/r3/{f['name']}")
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (f["sha256"], f["bytes"]), f["name"]


def test_site_step_writes_outputs_once_and_keeps_the_rows_in_the_store(ingested, study, sites):
    from lacrima.scoring import analysis_ready
    from lacrima.storage import parquet_frame

    us = next(s for s in sites if s.code == "us")
    first = steps.site_step(ingested, us, study)
    assert not first.reused
    written = {o.key: o for o in ingested.list("results/us/") if "/outputs-" in o.key}
    assert {k.rsplit("/", 1)[1] for k in written} == {"files.json", "site-us.html", "us.csv", "us.sav"}
    again = steps.site_step(ingested, us, study)
    assert again.reused and again.input_key == first.input_key
    assert {o.key: o for o in ingested.list("results/us/") if "/outputs-" in o.key} == written
    # The rows stay in the store, under the analysis' key: the analysis-ready rows as Parquet
    # keeps them.
    data, _ = analysis_ready(catalog.curated_frame(ingested, "us"), study, "us")
    pd.testing.assert_frame_equal(catalog.site_data(ingested, "us", again.input_key),
                                  parquet_frame(catalog.frame_bytes(data)))


def test_analysis_ready_parquet_stacks_every_sites_stored_rows(demo_run):
    from lacrima.storage import parquet_frame

    storage = demo_run.storage
    stacked = parquet_frame(storage.read_bytes("reports/run-1/restricted/analysis_ready.parquet"))
    rows = [catalog.site_data(storage, a.site, a.input_key) for a in demo_run.analyses]
    assert len(stacked) == sum(len(r) for r in rows) > 0
    assert stacked["participant_id"].tolist() == [p for r in rows
                                                  for p in r["participant_id"].tolist()]
