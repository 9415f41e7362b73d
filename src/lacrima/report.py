"""Run outputs: tidy CSVs, provenance, analysis-ready data and the self-contained HTML report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import jinja2
from markupsafe import Markup
import numpy as np
import pandas as pd

from lacrima.pipeline import Comparison, SiteAnalysis, to_csv_bytes
from lacrima.plots import forest_svg, site_style
from lacrima.privacy import suppress_small
from lacrima.storage import Storage
from lacrima.study import Site, Study
from lacrima.vocabulary import POOLED, RESULTS_COLUMNS


@dataclass(frozen=True)
class RunOutputs:
    run_id: str
    prefix: str            # storage key prefix of the run's folder
    report_key: str
    location: str          # human location of report.html (a path or s3:// URL)


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("lacrima", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals["vclass"] = lambda v: {"replicated": "v-replicated", "not replicated": "v-not",
                                       "inconclusive": "v-inconclusive"}.get(v, "")
    return env


def fmt(x, digits: int = 2) -> str:
    """APA-style number: fixed digits, leading zero kept, blank for missing."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)) or pd.isna(x):
        return ""
    return f"{x:.{digits}f}"


def fmt_p(p) -> str:
    """APA p value: three decimals, '< .001' below, no leading zero."""
    if p is None or pd.isna(p):
        return ""
    return "< .001" if p < 0.001 else f"{p:.3f}".lstrip("0")


def _html_table(frame: pd.DataFrame) -> Markup:
    """An HTML table of a frame; cell text is escaped, the table markup is trusted."""
    return Markup(frame.to_html(index=False, escape=True, border=0, na_rep=""))


def _flow_table(analyses: list[SiteAnalysis]) -> str:
    parts = [a.flow.to_frame() for a in analyses]
    if not parts:
        return Markup("<p>No site has analysed data yet.</p>")
    flow = pd.concat(parts)
    wide = flow.pivot_table(index=["step", "reason", "label"], columns="site", values="n",
                            aggfunc="sum", sort=False).reset_index()
    wide = wide.drop(columns=["step", "reason"]).rename(columns={"label": "Step"})
    for c in wide.columns[1:]:
        wide[c] = wide[c].map(suppress_small)
    return _html_table(wide)


def _descriptives_table(analyses: list[SiteAnalysis], study: Study) -> str:
    if not analyses:
        return ""
    rows = []
    keep = ["age", *study.score_names()]
    for a in analyses:
        d = a.descriptives
        if "variable" not in d.columns:
            continue
        numeric_rows = d["mean"].notna() if "mean" in d else True
        d = d[d["variable"].isin(keep) & numeric_rows]
        for _, r in d.iterrows():
            rows.append({"site": a.site, "variable": r["variable"],
                         "cell": f"{fmt(r.get('mean'))} ({fmt(r.get('sd'))}), n = {suppress_small(r.get('n'))}"})
    if not rows:
        return ""
    wide = pd.DataFrame(rows).pivot(index="variable", columns="site", values="cell").reindex(keep).dropna(how="all")
    return _html_table(wide.reset_index().rename(columns={"variable": "M (SD)"}))


def _effect_id(row) -> tuple:
    return (row["family"], row["x"], row["y"], row["covariates"] if pd.notna(row["covariates"]) else "")


def _families(results: pd.DataFrame, study: Study, styles, originals) -> list[dict]:
    pooled_all = results[(results["site"] == POOLED) & (results["analysis"] == "meta_analysis")]
    per_site = results[results["site"] != POOLED]
    out = []
    main_method = {"correlation": "pearson", "partial_correlation": "pearson_partial",
                   "t_test": "hedges_g", "chi_square": "odds_ratio"}
    for fam in study.families:
        fid = fam["id"]
        rows = per_site[(per_site["family"] == fid)]
        effects = []
        main = rows[rows["method"].isin(main_method.values())]
        for eid, grp in main.groupby([main["family"], main["x"], main["y"],
                                      main["covariates"].fillna("")], sort=False):
            pooled = pooled_all[(pooled_all["family"] == eid[0]) & (pooled_all["x"] == eid[1])
                                & (pooled_all["y"] == eid[2])
                                & (pooled_all["covariates"].fillna("") == eid[3])]
            pooled_re = pooled[~pooled["method"].astype(str).str.startswith("FE")]
            prow = pooled_re.iloc[0] if len(pooled_re) else None
            method = grp["method"].iloc[0]
            scale = {"hedges_g": "Hedges' g", "odds_ratio": "odds ratio"}.get(method, "r")
            null = 1.0 if method == "odds_ratio" else 0.0
            title = f"{eid[1]} with {eid[2]}" + (f" | {eid[3]}" if eid[3] else "")
            svg = forest_svg(grp[["site", "estimate", "ci_low", "ci_high", "n"]], prow, title,
                             scale, styles, originals, null=null)
            table = pd.DataFrame({
                "site": grp["site"], "n": grp["n"].map(lambda v: "" if pd.isna(v) else int(v)),
                scale: grp["estimate"].map(fmt),
                "95% CI": [f"[{fmt(a)}, {fmt(b)}]" for a, b in zip(grp["ci_low"], grp["ci_high"])],
                "p": grp["p_value"].map(fmt_p), "p (Holm)": grp["p_adjusted"].map(fmt_p)})
            pooled_txt = ""
            if prow is not None:
                pooled_txt = (f"Pooled (k = {int(prow['k'])}): {fmt(prow['estimate'])} "
                              f"[{fmt(prow['ci_low'])}, {fmt(prow['ci_high'])}], "
                              f"PI [{fmt(prow['pi_low'])}, {fmt(prow['pi_high'])}]; "
                              f"τ² = {fmt(prow['tau2'], 3)}, I² = {fmt(prow['i2'], 1)}%, "
                              f"Q = {fmt(prow['q'])}, p = {fmt_p(prow['q_p'])}")
            effects.append({"title": title, "svg": svg, "table": _html_table(table),
                            "pooled": pooled_txt})
        table = ""
        if not effects and len(rows):
            show = rows[["site", "x", "y", "method", "n", "estimate", "ci_low", "ci_high", "p_value"]].copy()
            for c in ("estimate", "ci_low", "ci_high"):
                show[c] = show[c].map(fmt)
            show["p_value"] = show["p_value"].map(fmt_p)
            table = _html_table(show)
        out.append({"id": fid, "label": fam.get("label", fid), "effects": effects, "table": table})
    return out


def _replication_rows(replication: pd.DataFrame) -> tuple[list[dict], list[str]]:
    if replication is None or replication.empty:
        return [], []
    originals = list(dict.fromkeys(replication["original_site"]))
    rows = []
    for (eff, x, y, cov), grp in replication.groupby(
            ["effect", "x", "y", replication["covariates"].fillna("")], sort=False):
        label = f"{eff}: {x} with {y}" + (f" | {cov}" if cov else "")
        rows.append({"label": label, "verdicts": dict(zip(grp["original_site"], grp["verdict"]))})
    return rows, originals


def render_report(run_id: str, analyses: list[SiteAnalysis], comparison: Comparison, study: Study,
                  sites: list[Site], prov: dict) -> str:
    """The self-contained comparison report (inline CSS and SVG, no network)."""
    codes = [a.site for a in analyses]
    styles = site_style([s.code for s in sites])
    originals = {s.code for s in sites if s.role == "original"}
    rep_rows, rep_originals = _replication_rows(comparison.replication)
    sections = [("summary", "Verdicts"), ("flow", "Flow"), ("descriptives", "Descriptives"),
                ("families", "Analyses"), ("methods", "Methods"), ("provenance", "Provenance")]
    return _env().get_template("report.html.j2").render(
        title=study.raw["study"]["name"], run_id=run_id, created_at=prov.get("created_at", ""),
        site_codes=codes, sections=sections, replication_rows=rep_rows, originals=rep_originals,
        flow_table=_flow_table(analyses), descriptives_table=_descriptives_table(analyses, study),
        families=_families(comparison.results, study, styles, originals),
        provenance=json.dumps(prov, indent=2))


def write_outputs(storage: Storage, run_id: str, analyses: list[SiteAnalysis],
                  comparison: Comparison, study: Study, sites: list[Site], prov: dict) -> RunOutputs:
    """Write every output of a run under ``reports/<run_id>/`` and copy it to ``reports/latest/``."""
    results = comparison.results.copy()
    results["run_id"] = run_id
    results = results.reindex(columns=list(RESULTS_COLUMNS))
    flow = pd.concat([a.flow.to_frame() for a in analyses], ignore_index=True)
    descr = pd.concat([a.descriptives for a in analyses], ignore_index=True)
    files: dict[str, bytes] = {
        "results.csv": to_csv_bytes(results),
        "replication.csv": to_csv_bytes(comparison.replication),
        "participant_flow.csv": to_csv_bytes(flow),
        "descriptives.csv": to_csv_bytes(descr),
        "provenance.json": json.dumps(prov, indent=2, default=str).encode(),
        "report.html": render_report(run_id, analyses, comparison, study, sites, prov).encode(),
    }
    for a in analyses:
        files[f"data/{a.site}.csv"] = to_csv_bytes(a.data)
    for name, data in files.items():
        storage.write_bytes(f"reports/{run_id}/{name}", data, if_absent=True)
    for name, data in files.items():
        storage.write_bytes(f"reports/latest/{name}", data)
    key = f"reports/{run_id}/report.html"
    local = storage.local_path(key)
    return RunOutputs(run_id, f"reports/{run_id}", key,
                      str(local) if local else f"{storage.location}/{key}")
