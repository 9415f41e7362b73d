"""Any number of original and replication sites (the Many Labs design), and sites without data.

End to end through the library (intake, analysis, comparison, report; no Prefect): a
consortium of 2 originals x 3 replications cloned from the real sites, a replication site
that has sent nothing yet, and a run before any replication site has data.

The shape of a consortium (pairs, counts, pooled sides, the report's headings) does not depend
on the plan's size: the fast tier runs it under the small plan (tests/smallplan.py), the full
suite under the demo's plan too (``slow``).
"""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flows import artifacts
from lacrima import intake, report, steps, tables
from lacrima.consortium import make_consortium, write_consortium_drops
from lacrima.plots import site_style
from lacrima.storage import LocalStorage
from lacrima.study import load_sites, load_study
from lacrima.vocabulary import POOLED, REPLICATION_COLUMNS

KEY = b"test-key"


def _run(storage, study, sites, drops, run_id="run-1"):
    """Land the drops there are, then the pipeline's steps as a run takes them."""
    for s in sites:
        if s.code in drops:
            intake.upload(storage, s, drops[s.code], uploader="test")
    for s in sites:
        intake.ingest_site(storage, s, study, KEY)
    analyses = [a for a in (steps.site_step(storage, s, study, outputs=False) for s in sites) if a]
    comparison = steps.compare_sites(analyses, study, list(sites))
    prov = steps.provenance(run_id, analyses, study, list(sites))
    outputs = report.write_outputs(storage, run_id, analyses, comparison, study, list(sites), prov)
    html = storage.read_bytes(f"reports/{run_id}/report.html").decode()
    rep = pd.read_csv(io.BytesIO(storage.read_bytes(f"reports/{run_id}/replication.csv")),
                      keep_default_na=False)
    return comparison, outputs, html, rep


def _replicated_effects(study) -> int:
    """Correlation effects the plan's replication families hold (x by y by covariate set)."""
    families = [study.family(f) for f in study.section("replication")["families"]]
    return sum(len(f["x"]) * len(f["y"]) * max(1, len(f.get("covariate_sets", ())))
               for f in families if f["kind"] in ("correlation", "partial_correlation"))


def test_the_demo_plan_replicates_42_correlation_effects(study):
    assert _replicated_effects(study) == 42


@pytest.fixture(scope="module", params=["small", pytest.param("demo", marks=pytest.mark.slow)])
def plan_root(request):
    """The sites root the consortium is cloned from: the small plan's, or the demo's own."""
    return request.getfixturevalue("small_plan").root if request.param == "small" else None


@pytest.fixture(scope="module")
def consortium(tmp_path_factory, plan_root):
    """2 originals x 3 replications, 70 participants each; replication r3 sends nothing."""
    root = tmp_path_factory.mktemp("many") / "sites"
    made = make_consortium(root, 6, n=70, templates=("us", "us", "it", "us", "il", "us"),
                           replications=4, source=plan_root)
    drops = write_consortium_drops(root, tmp_path_factory.mktemp("drops"), text_formats=True)
    silent = "us006"                      # a replication site that has not sent data yet
    drops.pop(silent)
    return root, made, drops, silent


@pytest.fixture(scope="module")
def many_run(consortium, tmp_path_factory):
    root, _, drops, _ = consortium
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LACRIMA_SITES", str(root))
        study, sites = load_study(root), load_sites(root)
        storage = LocalStorage(tmp_path_factory.mktemp("store"))
        return (*_run(storage, study, sites, drops), study, sites)


def test_consortium_has_the_roles_asked_for(consortium):
    _, made, _, _ = consortium
    roles = made.to_frame().set_index("code")["role"]
    assert sorted(roles[roles == "replication"].index) == ["us001", "us002", "us004", "us006"]
    assert sorted(roles[roles == "original"].index) == ["il005", "it003"]


def test_every_pair_of_sides_is_assessed(many_run, consortium):
    comparison, _, _, rep, study, _ = many_run
    _, _, _, silent = consortium
    assert list(rep.columns) == list(REPLICATION_COLUMNS)
    pairs = set(zip(rep["replication_site"], rep["original_site"]))
    reps, origs = ["us001", "us002", "us004"], ["il005", "it003"]
    assert pairs == ({(r, o) for r in reps for o in origs} | {(POOLED, o) for o in origs}
                     | {(POOLED, POOLED)})
    assert silent not in set(rep["replication_site"])           # no data: skipped
    # One row per effect and pair: the plan's correlation effects (42 in the demo's) x 9 pairs.
    assert len(rep) == len(rep.drop_duplicates(["effect", "x", "y", "covariates",
                                                "replication_site", "original_site"]))
    n_effects = len(rep.drop_duplicates(["effect", "x", "y", "covariates"]))
    assert n_effects == _replicated_effects(study) and len(rep) == n_effects * 9
    pooled = rep[rep["replication_site"] == POOLED]
    assert set(pooled["k_replication"]) == {3}
    assert set(rep.loc[rep["original_site"] == POOLED, "k_original"]) == {2}
    assert rep["verdict"].isin(["replicated", "inconclusive", "not replicated"]).all()


def test_pooled_replication_side_is_the_pooled_estimate_of_the_replication_sites(many_run):
    comparison, _, _, rep, study, sites = many_run
    from lacrima.pooling import pool_details

    per_site = comparison.results[comparison.results["site"] != POOLED]
    reps = per_site[per_site["site"].isin(["us001", "us002", "us004"])]
    details = pool_details(reps, study)
    # k = 3 replication sites: pooled by fixed effect under the plan's pooled_side = "auto"
    # (sites/README.md, "Pooling few replications"): the inverse-variance estimate, z test.
    assert study.section("replication").get("pooled_side", "auto") == "auto"
    details = details[details["model"] == "fixed"].fillna({"covariates": ""})
    mine = rep[(rep["replication_site"] == POOLED) & (rep["original_site"] == POOLED)]
    merged = mine.merge(details, left_on=["effect", "x", "y", "covariates"],
                        right_on=["family", "x", "y", "covariates"])
    assert len(merged) == len(mine) == _replicated_effects(study)
    assert (merged["k_replication"] == 3).all()
    assert np.allclose(merged["r_replication"], np.tanh(merged["estimate"]), atol=1e-12, rtol=0)
    # The p of the z test with the inverse-variance se, 1 / sqrt(sum 1 / v_i).
    rows = reps[reps["method"].isin(["pearson", "pearson_partial"])].fillna({"covariates": ""})
    for _, m in merged.iterrows():
        sub = rows[(rows["family"] == m["effect"]) & (rows["x"] == m["x"])
                   & (rows["y"] == m["y"]) & (rows["covariates"] == m["covariates"])]
        g = len([c for c in m["covariates"].split("+") if c])
        vi = 1 / (sub["n"].astype(float) - 3 - g)
        se = np.sqrt(1 / np.sum(1 / vi))
        assert m["se"] == pytest.approx(se, rel=1e-12)
        assert m["p_replication"] == pytest.approx(2 * stats.norm.sf(abs(m["estimate"]) / se),
                                                   abs=1e-12)


def test_report_counts_sites_and_lists_the_one_without_data(many_run, consortium):
    _, _, html, rep, study, sites = many_run
    _, _, _, silent = consortium
    title = re.search(r"<h1>([^<]*)</h1>", html).group(1)
    assert title.endswith("(6 sites: 2 original, 4 replication)")
    listed = re.search(r'<p id="sites-without-data">([^<]*)</p>', html).group(1)
    assert f"{silent} (" in listed and "replication" in listed
    header = html[html.index('id="verdict-table"'):]
    header = header[:header.index("</thead>")]
    for o in ("it003", "il005"):
        assert f"pooled replications (k = 3) vs {o} (" in header
    assert "pooled replications (k = 3) vs pooled originals (k = 2)" in header
    summary = html[html.index('<section id="summary"'):html.index('id="verdict-table"')]
    assert "each replication site vs each original site (6 pairs)" in summary
    # every pair appears in the effects' own tables (rows name both sides)
    # against it003 and il005
    assert html.count("<td class=l>us002 (") == 2 * _replicated_effects(study)


def test_a_joining_site_keeps_the_others_colours(consortium):
    root, *_ = consortium
    codes = [s.code for s in load_sites(root)]
    before = site_style([c for c in codes if c != "us006"])
    assert {c: site_style(codes)[c] for c in before} == before


def test_before_any_replication_data_the_report_holds_the_originals(small_plan, demo_drops,
                                                                    tmp_path):
    # Which sections a report without replication data shows does not depend on the plan's
    # size: the small plan (tests/smallplan.py), with the demo's drops of the originals.
    study, sites = small_plan.study, small_plan.sites
    storage = LocalStorage(tmp_path / "store")
    originals = {c: p for c, p in demo_drops.items() if c != "us"}
    comparison, outputs, html, rep = _run(storage, study, sites, originals)
    assert rep.empty and list(rep.columns) == list(REPLICATION_COLUMNS)
    assert re.search(r'<p id="verdicts-await">Verdicts await the replication sites: us \(',
                     html)
    assert 'id="sites-without-data">Sites without accepted data yet' in html
    # The originals are pooled and shown; the verdict columns are blank.
    pooled = comparison.results[comparison.results["site"] == POOLED]
    assert len(pooled) and set(pooled["k"].dropna()) == {2}
    table = tables.verdict_table(comparison, study, sites)
    assert not [c for c in table.columns if c.startswith("verdict_")] or \
        (table.filter(like="verdict_") == "").all().all()
    assert set(outputs.site_pages) == {"it", "il"}
    assert "No replication assessment in this run" in artifacts.verdict_markdown(rep, study)
