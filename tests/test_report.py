"""The comparison report and the run's files: every pooled effect plotted and in the verdict
table, sections in order, APA numbers, small cells suppressed, no IDs, manifest, site pages."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re

import pandas as pd
import pytest

from flows import artifacts
from lacrima import apa, disclosure, report, tables
from lacrima.plots import forest_svg, site_style
from lacrima.storage import LocalStorage
from lacrima.vocabulary import POOLED

SECTIONS = ("summary", "flow", "descriptives", "invariance", "families", "methods",
            "provenance")


@pytest.fixture(scope="module")
def report_inputs(study, sites, memory_analyses):
    """The demo's inputs in memory, compared without the IPD models (3-4 s of MixedLM fits;
    tests/test_report_browser.py renders the full comparison and checks the IPD lines)."""
    from lacrima import steps
    from lacrima.results import Comparison
    from lacrima.pooling import pool_estimates
    from lacrima.replication import replication_table
    from lacrima.vocabulary import RESULTS_COLUMNS

    analyses = memory_analyses
    per_site = pd.concat([a.results for a in analyses], ignore_index=True)
    results = pd.concat([per_site, pool_estimates(per_site, study).reindex(
        columns=list(RESULTS_COLUMNS))], ignore_index=True)
    comparison = Comparison(results, replication_table(per_site, study, list(sites)))
    prov = steps.provenance("run-1", analyses, study, list(sites))
    return analyses, comparison, study, list(sites), prov


@pytest.fixture(scope="module")
def run(tmp_path_factory, report_inputs, store_memory):
    analyses, comparison, study, sites, prov = report_inputs
    storage = store_memory(LocalStorage(tmp_path_factory.mktemp("store")))
    # A latest/ folder of copies an older version left: moved aside (never deleted), not linked.
    storage.write_bytes("reports/latest/data/gone.csv", b"old,run\n")
    frames_before = [a.results.copy() for a in analyses], comparison.results.copy()
    outputs = report.write_outputs(storage, "run-1", analyses, comparison, study, sites, prov)
    html = storage.read_bytes("reports/run-1/report.html").decode()
    return storage, outputs, html, frames_before


def _pooled_keys(storage) -> set[tuple[str, str, str, str]]:
    res = pd.read_csv(io.BytesIO(storage.read_bytes("reports/run-1/results.csv")),
                      keep_default_na=False)
    pooled = res[(res["site"] == POOLED) & (res["analysis"] == "meta_analysis")]
    return set(zip(pooled["family"], pooled["x"], pooled["y"], pooled["covariates"]))


def _keys(html: str, tag_pattern: str) -> list[tuple[str, str, str, str]]:
    pat = (tag_pattern + r' data-family="([^"]*)" data-x="([^"]*)" data-y="([^"]*)"'
           r' data-covariates="([^"]*)"')
    return [tuple(m) for m in re.findall(pat, html)]


def test_every_pooled_effect_has_its_forest_plot(run):
    storage, _, html, _ = run
    pooled = _pooled_keys(storage)
    assert len(pooled) == 44          # 18 correlations, 24 partial, A2 and A3 in the current plan
    # Split the page at each effect block; each block must open with a figure holding an SVG.
    blocks = re.split(r'(?=<div class="effect")', html)[1:]
    plotted = {}
    for block in blocks:
        (key,) = _keys(block[:600], r'<div class="effect" id="[^"]*"')
        plotted[key] = re.search(r'<figure class="forest"><svg[^>]*>.*?</svg>', block, re.S)
    assert pooled <= set(plotted)
    assert all(plotted[k] is not None for k in pooled)


def test_every_pooled_effect_has_one_row_in_the_verdict_table(run):
    storage, _, html, _ = run
    table = html[html.index('id="verdict-table"'):]
    table = table[:table.index("</table>")]
    rows = _keys(table, "<tr")
    assert len(rows) == len(set(rows))
    assert set(rows) == _pooled_keys(storage)


def test_summary_counts_each_verdict_per_original(run):
    storage, _, html, _ = run
    rep = pd.read_csv(io.BytesIO(storage.read_bytes("reports/run-1/replication.csv")))
    summary = html[html.index('<section id="summary"'):html.index('id="verdict-table"')]
    for original, grp in rep.groupby("original_site"):
        line = re.search(rf"<li><b>us vs {original} [^<]*</b>: ([^<]*)</li>", summary).group(1)
        bare = re.sub(r" \([^)]*\)", "", line)         # the counts without their context
        assert bare == ", ".join(f"{n} {v}" for v, n in grp["verdict"].value_counts().items())
        # the context of each count: replicated on a non-significant original, and
        # not replicated (or inconclusive) by a larger effect in the same direction
        weak = int((~grp["original_significant"] & (grp["verdict"] == "replicated")).sum())
        assert (f"{weak} on an original with p \u2265 \u03b1" in line) == (weak > 0)
        larger = int((grp["larger_same_direction"] & (grp["verdict"] == "not replicated")).sum())
        if larger:
            assert re.search(rf"\d+ not replicated \({larger} larger than the original", line)


def test_verdict_cells_are_the_replication_table(report_inputs):
    analyses, comparison, study, sites, _ = report_inputs
    table = tables.verdict_table(comparison, study, sites)
    rep = comparison.replication.fillna({"covariates": ""})
    assert len(rep) == 126            # 42 correlation effects x (2 originals + pooled originals)
    for _, r in rep.iterrows():
        row = table[(table["family"] == r["effect"]) & (table["x"] == r["x"])
                    & (table["y"] == r["y"]) & (table["covariates"] == r["covariates"])]
        assert row[f"verdict_{r['original_site']}"].tolist() == [r["verdict"]]
    # A2 and A3 are pooled but outside [replication] families: no verdict, still a row.
    assert (table.loc[table["family"].isin(["A2", "A3"]), "verdict_it"] == "").all()
    # Rows follow the plan: H1 first, A3 last.
    assert table["family"].iloc[0] == "H1" and table["family"].iloc[-1] == "A3"


def test_sections_in_the_order_of_the_issue(run, study):
    _, _, html, _ = run
    positions = [html.index(f'<section id="{s}"') for s in SECTIONS]
    assert positions == sorted(positions)
    for fam in study.families:
        assert f'<section id="family-{fam["id"]}"' in html
    # A4 is not pooled: one standardised-coefficient forest plot per predictor instead.
    a4 = html[html.index('id="family-A4"'):html.index('id="methods"')]
    assert a4.count("<svg") == len(study.family("A4")["x"])


def test_invariance_csv_and_its_section(run):
    storage, outputs, html, _ = run
    inv = pd.read_csv(io.BytesIO(storage.read_bytes("reports/run-1/invariance.csv")),
                      keep_default_na=False)
    assert "invariance.csv" in outputs.files
    for scale in ("alliance", "change"):
        rows = inv[inv["scale"] == scale]
        assert rows["model"].tolist()[:3] == ["configural", "metric", "scalar"]
        assert (rows["groups"] == 3).all()
        # Nested steps: each adds constraints, so df and chi-square never go down.
        assert rows["df"].is_monotonic_increasing or rows["model"].iloc[-1] == "partial_scalar"
    section = html[html.index('<section id="invariance"'):html.index('<section id="families"')]
    assert "Are the scales comparable across sites?" in section
    assert section.count("<li>") == 2 and "WAI-SR:" in section and "CTSCM-R:" in section


def test_report_names_no_participant_and_no_network_address(run, memory_sites):
    storage, outputs, html, _ = run
    pages = [html] + [storage.read_bytes(f"reports/run-1/{p}").decode()
                      for p in outputs.site_pages.values()]
    for _, data in memory_sites.values():
        ids = set(data["participant_id"])
        assert ids
        for page in pages:
            assert not any(i in page for i in ids)
    for page in pages:
        assert "http://" not in page and "https://" not in page
        assert "<script" not in page and "<link" not in page


def test_flow_and_descriptives_suppress_cells_below_five(report_inputs):
    analyses, _, study, _, _ = report_inputs
    a = analyses[0]
    reason, label, _ = a.flow.excluded[0]
    flow = dataclasses.replace(a.flow, excluded=((reason, label, 3),) + a.flow.excluded[1:])
    descr = a.descriptives.copy()
    another = (descr["variable"] == "gender") & (descr["level"] == "another")
    descr.loc[another, "count"] = 2
    descr.loc[another, "percent"] = 2.02
    small = dataclasses.replace(a, flow=flow, descriptives=descr)
    f = tables.flow_frame([small])
    assert f.loc[f["Step"] == label, a.site].tolist() == ["<5"]
    # Exclusions sum to received minus analysed (both shown): one more count is hidden, so
    # the small one cannot be worked out; the cells shown still hold the true counts.
    excluded = f[~f["Step"].isin(["Records received", "Analysed"])][a.site].tolist()
    assert excluded.count("<5") + excluded.count(disclosure.SECONDARY_MARK) >= 2
    d = tables.descriptives_frame([small], study)
    cells = dict(zip(d["Characteristic"], d[a.site]))
    assert cells["Gender identity: another, n (%)"] == "<5"    # no count, no percent
    assert disclosure.SECONDARY_MARK in (cells["Gender identity: man, n (%)"],
                                     cells["Gender identity: woman, n (%)"])
    assert disclosure.fmt_n(0) == "0" and disclosure.fmt_n(5) == "5" and disclosure.fmt_n(4) == "<5"


def test_complementary_suppression_hides_a_second_cell_only_when_needed():
    assert disclosure.hidden_cells([10, 3, 40]) == [True, True, False]    # 3 = total - 10 - 40
    assert disclosure.hidden_cells([2, 3, 40]) == [True, True, False]     # two hidden already
    assert disclosure.hidden_cells([10, 20, 40]) == [False, False, False]
    assert disclosure.hidden_cells([3]) == [True]


def test_apa_number_formats():
    # APA Publication Manual, 7th ed., sections 6.36 (decimals) and 6.44 (leading zeros):
    # r = .35, p = .043, p < .001, M = 0.56; a true minus sign.
    assert apa.fmt(0.3456, leading_zero=False) == ".35"
    assert apa.fmt(-0.3456, leading_zero=False) == "\u2212.35"
    assert apa.fmt(0.5612) == "0.56" and apa.fmt(12.3456, 1) == "12.3"
    assert apa.fmt(-0.001) == "0.00"              # no negative zero
    assert apa.fmt(float("nan")) == "" and apa.fmt(None) == ""
    assert apa.fmt_p(0.04321) == ".043" and apa.fmt_p(0.0004) == "< .001"
    assert apa.fmt_p(0.001) == ".001"
    assert apa.p_text(0.0004) == "p < .001" and apa.p_text(0.2) == "p = .200"
    assert apa.fmt_ci(-0.11, 0.31, leading_zero=False) == "[\u2212.11, .31]"
    assert apa.fmt_ci(0.1, float("nan")) == ""
    assert apa.fmt_df(90.0) == "90" and apa.fmt_df(18.63) == "18.6"   # t(90), Welch t(18.6)


def test_manifest_lists_exactly_the_run_files_and_latest_links_only_those(run):
    storage, outputs, html, _ = run
    man = json.loads(storage.read_bytes("reports/run-1/manifest.json"))
    written = {o.key.removeprefix("reports/run-1/") for o in storage.list("reports/run-1")}
    assert {f["name"] for f in man["files"]} | {"manifest.json"} == written
    assert set(outputs.files) == written
    for f in man["files"]:
        data = storage.read_bytes(f"reports/run-1/{f['name']}")
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
        assert storage.read_bytes(f"reports/latest/{f['name']}") == data
    assert storage.read_bytes("reports/latest/manifest.json") == \
        storage.read_bytes("reports/run-1/manifest.json")
    # The old folder of copies is kept aside; latest/ is now exactly the run.
    assert storage.exists("reports/latest-until-run-1/data/gone.csv")
    assert not storage.exists("reports/latest/data/gone.csv")
    assert json.loads(storage.read_bytes("reports/latest.json"))["manifest_sha256"] == \
        hashlib.sha256(storage.read_bytes("reports/run-1/manifest.json")).hexdigest()
    assert "gone.csv" not in html
    links = [h for h in re.findall(r'href="([^"#][^"]*)"', html)]
    assert links and set(links) <= written


def test_site_pages_are_linked_and_hold_every_site_result(run, report_inputs):
    storage, outputs, html, _ = run
    analyses = report_inputs[0]
    assert set(outputs.site_pages) == {a.site for a in analyses}
    for a in analyses:
        page_name = outputs.site_pages[a.site]
        assert f'href="{page_name}"' in html
        page = storage.read_bytes(f"reports/run-1/{page_name}").decode()
        for section in ("flow", "descriptives", "analyses"):
            assert f'<section id="{section}"' in page
        analyses_part = page[page.index('<section id="analyses"'):]
        assert analyses_part.count("<tr>") - analyses_part.count("<thead>") == len(a.results)
        assert 'href="report.html"' in page
        # the site's row-level exports are named, as text: the page does not link into restricted/
        assert f"<code>restricted/data/{a.site}.sav</code>" in page
        assert "href=\"restricted/" not in page


def test_the_shareable_folder_has_no_dead_link(run):
    """Issue 23 point 6: share the run folder without restricted/ and every link still opens."""
    storage, outputs, html, _ = run
    shared = {f for f in outputs.files if not f.startswith(f"{report.RESTRICTED}/")}
    pages = {"report.html": html} | {
        name: storage.read_bytes(f"reports/run-1/{name}").decode()
        for name in outputs.site_pages.values()}
    assert len(pages) == 4
    for name, page in pages.items():
        links = re.findall(r'(?:href|src)\s*=\s*"([^"#][^"]*)"', page)
        assert links, name
        assert [h for h in links if "restricted" in h] == [], name
        assert set(links) <= shared, (name, set(links) - shared)
    # where the row-level files are: the restricted README lists each one
    readme = storage.read_bytes("reports/run-1/restricted/README.txt").decode()
    inside = [f[len("restricted/"):] for f in outputs.files if f.startswith("restricted/")]
    assert len(inside) >= 10 and "do not share" in readme
    for f in inside:
        if f != "README.txt":
            assert f"  {f}\n" in readme, f
    assert "  data/us.sav" in readme.split("Exact counts")[0]       # under row-level data
    assert "  participant_flow.csv" in readme.split("Exact counts")[1]


def test_inputs_are_not_mutated(run, report_inputs):
    _, _, _, (site_before, results_before) = run
    analyses, comparison, *_ = report_inputs
    for before, a in zip(site_before, analyses):
        pd.testing.assert_frame_equal(before, a.results)
    pd.testing.assert_frame_equal(results_before, comparison.results)


def test_verdict_markdown_counts_and_rows(report_inputs):
    _, comparison, study, _, _ = report_inputs
    rep = comparison.replication
    md = artifacts.verdict_markdown(rep, study)
    table_rows = [line for line in md.splitlines()
                  if line.startswith("| ") and "Family" not in line]
    n_effects = len(rep.drop_duplicates(["effect", "x", "y", "covariates"]))
    assert len(table_rows) == n_effects
    for original in rep["original_site"].unique():
        counts = rep.loc[rep["original_site"] == original, "verdict"].value_counts()
        name = "pooled originals (k = 2)" if original == POOLED else original
        line = next(line for line in md.splitlines() if f"vs {name}**" in line)
        for verdict, n in counts.items():
            assert f"{n} {verdict}" in line
    assert "No replication" in artifacts.verdict_markdown(rep.iloc[0:0])


def test_forest_plot_for_125_sites_stays_bounded():
    codes = [f"s{i:03d}" for i in range(125)]
    rows = pd.DataFrame({"site": codes, "estimate": 0.3, "ci_low": 0.1, "ci_high": 0.5, "n": 100})
    pooled = pd.Series({"estimate": 0.3, "ci_low": 0.25, "ci_high": 0.35, "pi_low": 0.1,
                        "pi_high": 0.5})
    svg = forest_svg(rows, pooled, "125 sites", "Pearson r", site_style(codes), {"s000"})
    height_pt = float(re.search(r'height="([0-9.]+)pt"', svg).group(1))
    assert height_pt <= 11.0 * 72          # the plot height cap, in points (its time: make bench)
    # every site still drawn: one horizontal interval segment per site (the intervals of
    # one colour share a <path>, so <path> elements no longer count sites)
    assert len(re.findall(r"M [0-9.]+ ([0-9.]+) \s*L [0-9.]+ \1 ", svg)) >= 125
    assert "Pearson r" in svg and "Sites (k = 125" in svg


def test_site_styles_differ_by_colour_and_marker():
    styles = site_style(["us", "it", "il"])
    assert len({c for c, _ in styles.values()}) == 3
    assert len({m for _, m in styles.values()}) == 3    # greyscale: markers alone tell sites apart
    many = site_style([f"s{i:03d}" for i in range(200)])
    assert len({c for c, _ in many.values()}) == 8 and len({m for _, m in many.values()}) == 8


def test_a_site_that_joins_recolours_no_one():
    before = site_style(["il", "it", "us"])
    after = site_style(["de", "il", "it", "us", "aa"])      # "de" and "aa" sort first
    assert {c: after[c] for c in before} == before
    assert site_style(["us", "it", "il"]) == before         # order does not matter either


def test_publish_artifacts_sends_verdicts_and_report_link(monkeypatch, report_inputs, tmp_path):
    from prefect.client.schemas.actions import ArtifactCreate

    from lacrima.results import RunSummary

    sent = {}
    monkeypatch.setattr(artifacts, "create_markdown_artifact",
                        lambda **kw: sent.setdefault("markdown", kw) and "md-id")
    monkeypatch.setattr(artifacts, "create_link_artifact",
                        lambda **kw: sent.setdefault("link", kw) and "link-id")
    _, comparison, study, _, _ = report_inputs
    md = artifacts.verdict_markdown(comparison.replication, study)
    location = tmp_path / "reports" / "r1" / "report.html"
    summary = RunSummary("r1", accepted=3, sites_analysed=("il", "it", "us"),
                         report=str(location))
    ids = artifacts.publish_artifacts.fn(summary, md, str(location))
    assert ids == {"markdown": "md-id", "link": "link-id"}
    assert sent["markdown"]["markdown"].endswith(md)
    assert "accepted: 3" in sent["markdown"]["markdown"]
    assert sent["link"]["link"] == location.as_uri()
    for kw in sent.values():
        ArtifactCreate(key=kw["key"])      # Prefect's own key rule accepts it
        assert re.fullmatch(r"[a-z0-9-]+", kw["key"])
    assert artifacts.report_link("s3://bucket/reports/r1/report.html").startswith("s3://")
    with pytest.raises(ValueError, match="artifact key"):
        artifacts.artifact_key("__")


def test_heterogeneity_csv_has_one_row_per_pooled_effect_and_the_report_warns(run):
    storage, outputs, html, _ = run
    het = pd.read_csv(io.BytesIO(storage.read_bytes("reports/run-1/heterogeneity.csv")),
                      keep_default_na=False)
    assert "heterogeneity.csv" in outputs.files
    keys = set(zip(het["family"], het["x"], het["y"], het["covariates"]))
    assert len(keys) == len(het) and keys == _pooled_keys(storage)
    res = pd.read_csv(io.BytesIO(storage.read_bytes("reports/run-1/results.csv")),
                      keep_default_na=False)
    re_rows = res[(res["site"] == POOLED) & (res["method"] == "REML+knha")]
    merged = het.merge(re_rows, on=["family", "x", "y", "covariates"])
    # the same pooled estimate and tau2 as results.csv, on the same (effect's own) scale
    assert (merged["re_estimate"].astype(float) - merged["estimate"].astype(float)).abs().max() < 1e-12
    assert (merged["tau2_x"].astype(float) - merged["tau2_y"].astype(float)).abs().max() < 1e-12
    assert (het["ci_method"] == "knha").all() and (het["metafor_test"] == "knha").all()
    # three sites, one original: the role moderator test is on F(1, 1)
    assert (het["role_qm_df2"].astype(float) == 1).all()
    narrower = int((het["re_ci_narrower_than_fe"].astype(str) == "True").sum())
    assert html.count("random-effects CI is narrower than the fixed-effect CI") == narrower
    assert html.count("is uninformative: it cannot distinguish") == len(het)


def test_contingency_counts_are_restricted_and_match_the_a3_rows(run, report_inputs):
    storage, outputs, html, _ = run
    analyses, comparison, study, _, _ = report_inputs
    name = tables.CONTINGENCY_COUNTS
    assert name.startswith(f"{report.RESTRICTED}/") and name in outputs.files
    counts = pd.read_csv(io.BytesIO(storage.read_bytes(f"reports/run-1/{name}")))
    res = comparison.results
    for site, grp in counts.groupby("site"):
        # the per-site chi-square row counts the same participants
        chi = res[(res["site"] == site) & (res["method"] == "pearson_chi2")]
        assert int(grp["n"].sum()) == int(chi["n"].iloc[0])
        assert list(grp["row_level"]) == ["woman", "man"]
        has_fisher = ((res["site"] == site) & (res["analysis"] == "fisher_exact")).any()
        assert set(grp["test_used"]) == {"fisher_exact" if has_fisher else "pearson_chi2"}
        # Woolf odds ratio from these counts (no zero cell here) is the results' one
        (a, b), (c, d) = grp[["n_event", "n_no_event"]].to_numpy()
        orr = res[(res["site"] == site) & (res["method"] == "odds_ratio")]["estimate"].iloc[0]
        assert orr == pytest.approx(a * d / (b * c), rel=1e-12)
    # the main A3 table names the test used and the crying rate of 'another' is described
    assert "p (test used)" in html
    assert "among Gender identity: another (not in the A3 test)" in html


def test_artifact_text_examples_run():
    """flows/ is outside the doctest paths: its examples run here."""
    import doctest

    result = doctest.testmod(artifacts, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2 and result.failed == 0


def test_two_replication_sites_state_the_small_k_pooling_next_to_the_verdicts(report_inputs):
    # Issue 23: Israel joins as a second replication site (the US is the other, Italy the
    # original). The pooled replication side has k = 2: the report says how it is pooled
    # (fixed effect by the plan's default pooled_side = "auto") right below the verdict counts,
    # and the verdicts against Italy are the replication table's under that model.
    from lacrima.replication import replication_table
    from lacrima.results import Comparison

    analyses, comparison, study, sites, prov = report_inputs
    two = [dataclasses.replace(s, role="replication") if s.code == "il" else s for s in sites]
    per_site = comparison.results[comparison.results["site"] != POOLED]
    rep = replication_table(per_site, study, two)
    pooled = rep[rep["replication_site"] == POOLED]
    assert len(pooled) and (pooled["k_replication"] == 2).all()
    html = report.render_report("run-2", analyses, Comparison(comparison.results, rep), study,
                                two, prov)
    summary = html[html.index('<section id="summary">'):html.index('id="verdict-table"')]
    note = re.search(r'<p class="note" id="small-k">([^<]*)', summary)
    assert note and "pooled replication side pools k = 2 sites by fixed effect" in note.group(1)
    assert "no df" in note.group(1)
    table = tables.verdict_table(Comparison(comparison.results, rep), study, two)
    for _, r in pooled.fillna({"covariates": ""}).iterrows():
        row = table[(table["family"] == r["effect"]) & (table["x"] == r["x"])
                    & (table["y"] == r["y"]) & (table["covariates"] == r["covariates"])]
        assert row[f"verdict_{r['original_site']}"].tolist() == [r["verdict"]]
    # not the collapse of the Hartung-Knapp t on 1 df: some pooled replication is significant
    assert (pooled["p_replication"] < 0.05).any()


def _effect_svgs(html: str) -> dict[tuple[str, str], str]:
    """(family, anchor) -> the forest plot SVG of each effect section."""
    out = {}
    for block in re.split(r'(?=<div class="effect")', html)[1:]:
        m = re.match(r'<div class="effect" id="([^"]*)" data-family="([^"]*)"', block)
        svg = re.search(r'<figure class="forest">(<svg.*?</svg>)', block, re.S)
        out[(m.group(2), m.group(1))] = (svg.group(1), block)
    return out


def _x_ticks(svg: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The x tick labels and the distances between ticks (SVG units) of one plot."""
    ticks = re.findall(r'<g id="xtick_\d+">.*?<use [^>]*x="([0-9.]+)".*?<text [^>]*>([^<]*)</text>',
                       svg, re.S)
    xs = [float(x) for x, _ in ticks]
    return tuple(t for _, t in ticks), tuple(round(b - a, 3) for a, b in zip(xs, xs[1:]))


def test_forest_plots_share_one_axis_per_family_and_write_estimates_and_weights(run, study):
    """Issue 23 point 5: a paper's forest plot."""
    _, _, html, _ = run
    svgs = _effect_svgs(html)
    assert len(svgs) == 44
    by_family: dict[str, set] = {}
    for (family, _), (svg, _) in svgs.items():
        by_family.setdefault(family, set()).add(_x_ticks(svg))
        # the columns: estimate [95% CI] and weight, every site and the pooled rows
        assert re.search(r">(r|partial r|g|OR) \[95% CI\]</text>", svg)
        assert svg.count("%</text>") == 3 + 1              # three sites' weights, and 100%
        assert ">95% PI</text>" in svg and ">Site (n)</text>" in svg
        assert set(re.findall(r"font-size: ([0-9.]+)px", svg)) == {"12"}   # 12 pt = 16 px
    # one x axis per family: the same ticks at the same spacing in every plot of the family
    assert all(len(axes) == 1 for axes in by_family.values()), by_family
    assert len(by_family) == len(study.section("pooling")["families"])


def test_the_diamond_spans_the_interval_the_report_says_to_read(run):
    """Where the section warns that the random-effects CI is the narrower and says to read the
    wider one, the plot draws the fixed-effect CI (marked *); elsewhere the random-effects CI."""
    _, _, html, _ = run
    warned = 0
    for (_, anchor), (svg, block) in _effect_svgs(html).items():
        says_wider = "read the wider one" in block
        fixed = re.search(r"Fixed effect: ([^<]*?)\.</li>", block).group(1)
        pooled_row = re.search(r">Pooled \(RE\)(\*?)</text>.*?<text [^>]*>([^<]*)</text>",
                               svg, re.S)
        assert (pooled_row.group(1) == "*") == says_wider, anchor
        assert ("diamond: the fixed-effect CI" in svg) == says_wider, anchor
        drawn_ci = pooled_row.group(2).split(" ", 1)[1]
        random_ci = re.search(r"Random effects \([^)]*\): \S+ (\[[^\]]*\])", block).group(1)
        assert drawn_ci == (fixed.split(" ", 1)[1] if says_wider else random_ci), anchor
        warned += says_wider
    assert warned >= 1, "no effect warns in the demo: the check would be blind"
