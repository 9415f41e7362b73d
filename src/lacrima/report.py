"""Run outputs: tidy CSVs, exports, provenance, manifest and the self-contained HTML reports.

This module renders (Jinja) and writes; the numbers come formatted from ``lacrima.apa``,
counts hidden by ``lacrima.disclosure``, and tables built by ``lacrima.tables``.

A run writes ``reports/<run_id>/``, then publishes it (``catalog.publish_report``: the
pointer ``reports/latest.json``, and locally the link ``reports/latest``):

- ``report.html``: the comparison report (verdicts, flow, descriptives, one forest plot per
  pooled effect, methods, provenance), with inline CSS and inline SVG, no network;
- ``site-<code>.html``: one page per site (its flow, descriptives and every analysis);
- ``results.csv``, ``replication.csv``, ``heterogeneity.csv`` (one row per pooled effect,
  :func:`lacrima.pooling.heterogeneity`), ``participant_flow.csv``, ``descriptives.csv``
  (counts 1-4 suppressed as the report shows them: ``<5``, with complementary ``(s)``),
  ``invariance.csv`` (measurement invariance across sites), ``provenance.json``;
- ``restricted/``: what must not leave the analysts (row-level data and exact counts):
  ``restricted/data/<site>.csv`` and ``.sav``, ``restricted/analysis_ready.parquet``,
  ``restricted/participant_flow.csv`` and ``restricted/descriptives.csv`` (exact counts),
  the A3 cell counts per site;
- ``manifest.json``: every file of this run with its size and SHA-256.

Everything outside ``restricted/`` may be shared: copy the run folder without ``restricted/``
(``RESTRICTED``) and send it on. The manifest is the run's own list: the pages link only to
files in it. Every link is relative, so the folder opens where it is copied.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from typing import Any, Iterable, Mapping

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from lacrima import catalog
from lacrima.analysis import base_method
from lacrima.apa import fmt, fmt_ci, fmt_df, fmt_p, is_missing, p_text
from lacrima.disclosure import (count_cell, fmt_n, group_cells, shareable_descriptives,
                                shareable_flow)
from lacrima.exports import spss_bytes, stacked_parquet_bytes, to_csv_bytes
from lacrima.meta.effects import FROM_SCALE, TO_SCALE
from lacrima.plots import ORIGINAL_MARK, ForestCanvas, axis_limits, forest_svg, site_style
from lacrima.pooling import POOLED_ANALYSES, pool_details, site_weights
from lacrima.privacy import MIN_CELL
from lacrima.replication import small_k_note
from lacrima.results import Comparison, RunOutputs, SiteAnalysis
from lacrima.storage import Storage
from lacrima.study import Site, Study
from lacrima.tables import (BOUNDED, CONTINGENCY_COUNTS, FIXED_METHOD, METRICS, SCALE_NAMES,
                            contingency_counts, covariates_label, descriptives_frame,
                            effect_anchor, effect_label, flow_frame, heterogeneity_frame,
                            metric_notes,
                            replication_frame, replication_summary, side_name,
                            site_effect_table, sites_by_role, variable_label, verdict_table,
                            with_test_used)
from lacrima.vocabulary import POOLED, POOLED_METHODS, RESULTS_COLUMNS

MANIFEST = catalog.MANIFEST
REPORT = "report.html"

# Per-site tests shown beside a pooled effect (lacrima.analysis conventions): the name
# readers know, and whether the estimate is bounded by 1 (no leading zero in APA style).
_ROBUST = {"welch": ("Welch t (mean difference)", False),
           "mann_whitney_u": ("Mann-Whitney U (rank-biserial r)", True),
           "pearson_chi2": ("\u03c7\u00b2 (Cram\u00e9r's V)", True),
           "fisher_exact": ("Fisher's exact test (odds ratio)", False)}


# ---------------------------------------------------------------------------
# HTML pieces
# ---------------------------------------------------------------------------

@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("lacrima", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals["vclass"] = lambda v: {"replicated": "v-replicated", "not replicated": "v-not",
                                       "inconclusive": "v-inconclusive"}.get(v, "")
    return env


def _html_table(frame: pd.DataFrame, first_left: int = 1, caption: str = "") -> Markup:
    """An HTML table in its scrolling container (``div.scroll``: a table wider than the
    screen scrolls inside it, its first column sticky); cell text is escaped, the first
    ``first_left`` columns align left."""
    esc = jinja2.utils.markupsafe.escape
    head = "".join(f'<th{" class=l" if i < first_left else ""}>{esc(c)}</th>'
                   for i, c in enumerate(frame.columns))
    body = []
    # Rows from per-column lists (the same Python values itertuples yields): itertuples
    # over Arrow-backed text columns costs about 1 ms per table, and a 125-site report
    # renders over 1,500 tables.
    columns = [frame.iloc[:, j].tolist() for j in range(frame.shape[1])]
    for row in zip(*columns) if columns else [()] * len(frame):
        cells = "".join(f'<td{" class=l" if i < first_left else ""}>'
                        f'{esc("" if _missing_cell(v) else v)}</td>' for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return Markup(f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
                  f"<tbody>{''.join(body)}</tbody></table></div>")


def _missing_cell(v) -> bool:
    return v is None or (not isinstance(v, str) and pd.isna(v))


def _identity(v):
    return v


def _pooled_lines(detail: pd.Series | None, fixed: pd.Series | None, ipd: pd.DataFrame,
                  analysis: str, scale: str) -> list[str]:
    """Heterogeneity and IPD sentences for one effect; ``detail`` is on the pooling ``scale``
    (``lacrima.meta.effects``), ``fixed`` (a results.csv row) back on the effect's own."""
    lz = analysis not in BOUNDED
    back = FROM_SCALE.get(scale, _identity)
    lines = []
    if detail is not None:
        est = back(detail["estimate"])
        ci = fmt_ci(back(detail["ci_low"]), back(detail["ci_high"]), leading_zero=lz)
        pi = fmt_ci(back(detail["pi_low"]), back(detail["pi_high"]), leading_zero=lz)
        tau2_ci = fmt_ci(detail["tau2_ci_low"], detail["tau2_ci_high"], 3)
        lines.append(
            f"Random effects ({detail['method']}, {detail['test']}; k = {int(detail['k'])}): "
            f"{fmt(est, leading_zero=lz)} {ci}, "
            f"{p_text(detail['p_value'])}; 95% PI "
            f"{pi or 'not given (k < 3)'}.")
        lines.append(
            f"Heterogeneity: \u03c4\u00b2 = {fmt(detail['tau2'], 3)} "
            f"{tau2_ci}, \u03c4 = {fmt(detail['tau'], 3)}, "
            f"I\u00b2 = {fmt(detail['i2'], 1)}%, H\u00b2 = {fmt(detail['h2'])}, "
            f"Q({fmt(detail['q_df'], 0)}) = {fmt(detail['q'])}, {p_text(detail['q_p'])}.")
        if isinstance(detail.get("note"), str) and detail["note"]:
            lines.append(f"Note: {detail['note']}")
        lines += _interval_warnings(detail if fixed is None else
                                    pd.concat([detail, pd.Series({
                                        "fe_ci_low": _on_scale(fixed, scale, "ci_low"),
                                        "fe_ci_high": _on_scale(fixed, scale, "ci_high")})]))
    if fixed is not None:
        lines.append(f"Fixed effect: {fmt(fixed['estimate'], leading_zero=lz)} "
                     f"{fmt_ci(fixed['ci_low'], fixed['ci_high'], leading_zero=lz)}.")
    for _, r in ipd.iterrows():
        if r["analysis"] == "ipd_interaction":
            m = re.search(r"df2=(\d+)", str(r["method"]))
            df2 = m.group(1) if m else "?"
            lines.append(f"IPD x-by-site interaction: F({fmt(r['df'], 0)}, {df2}) = "
                         f"{fmt(r['statistic'])}, {p_text(r['p_value'])}.")
        elif r["analysis"] == "mixed_model":
            problems = re.search(r"\[(.*)\]", str(r["method"]))
            lines.append(f"Mixed model pooled slope: {fmt(r['estimate'])} "
                         f"{fmt_ci(r['ci_low'], r['ci_high'])}, {p_text(r['p_value'])}"
                         + (f" ({problems.group(1)})." if problems else "."))
    return lines


def _on_scale(fixed: pd.Series, scale: str, column: str) -> float:
    """A fixed-effect limit of a results.csv row back on the pooling scale (where the
    random-effects detail lives)."""
    return float(TO_SCALE.get(scale, _identity)(float(fixed[column])))


def _interval_warnings(detail: pd.Series | None) -> list[str]:
    """Plain warnings about a pooled effect's intervals (small-k pooling)."""
    if detail is None or not detail.get("k") or detail["k"] < 2:
        return []
    out = []
    if "fe_ci_high" in detail and _reads_fixed_ci(detail["ci_low"], detail["ci_high"],
                                                  detail["fe_ci_low"], detail["fe_ci_high"]):
        out.append("Warning: the random-effects CI is narrower than the fixed-effect CI "
                   "(untruncated Knapp-Hartung with few sites); read the wider one.")
    if detail["k"] <= 3:
        out.append(f"With k = {int(detail['k'])} sites, \u03c4\u00b2 (and I\u00b2, the "
                   "prediction interval) is uninformative: it cannot distinguish no "
                   "heterogeneity from a lot.")
    return out


def _reads_fixed_ci(re_low: float, re_high: float, fe_low: float, fe_high: float) -> bool:
    """True when the report tells the reader to use the fixed-effect CI: the random-effects
    CI is the narrower (untruncated Knapp-Hartung with few sites, tau2 near 0). The limits
    are on the pooling scale, where both intervals are symmetric; the warning beside the
    effect and its forest plot's diamond both follow this one rule."""
    width_re, width_fe = re_high - re_low, fe_high - fe_low
    return bool(np.isfinite(width_fe) and np.isfinite(width_re) and width_re < width_fe)


def _families(comparison: Comparison, study: Study, sites: list[Site]) -> list[dict[str, Any]]:
    """Every family with its effects: forest plot, per-site table, heterogeneity, replication.

    An effect's ``svg`` and a family's ``plots`` name their plots by key (the effect's
    anchor, as :func:`forest_plots` draws them) until :func:`_with_plots` puts the SVGs in.
    """
    results = comparison.results
    per_site = results[results["site"] != POOLED]
    details = comparison.details
    if details is None:
        details = pool_details(per_site, study)
    per_site = per_site.assign(base=per_site["method"].map(base_method))
    pooled = results[results["site"] == POOLED]
    details_by_key = {(r["family"], r["x"], r["y"], r["covariates"], r["model"]): r
                      for _, r in details.iterrows()}
    countries = {s.code: s.country for s in sites}
    replication = comparison.replication
    # Each effect's pooled and replication rows, looked up by key rather than filtered
    # out of the whole frame once per effect (row order within a key is kept).
    effect_key = ["family", "x", "y", "covariates"]
    empty_pooled = pooled.iloc[0:0]
    pooled_by_effect = dict(tuple(pooled.groupby(effect_key, sort=False)))
    rep_by_effect = {}
    if replication is not None and len(replication):
        rep_by_effect = dict(tuple(replication.groupby(["effect", "x", "y", "covariates"],
                                                       sort=False)))
    empty_rep = replication.iloc[0:0] if replication is not None else pd.DataFrame()
    per_site_by_family = dict(tuple(per_site.groupby("family", sort=False)))
    out = []
    for fam in study.families:
        fid = fam["id"]
        rows = per_site_by_family.get(fid, per_site.iloc[0:0])
        effects = []
        main = rows[rows["base"].isin(POOLED_METHODS.values())]
        for (x, y, cov), grp in main.groupby(["x", "y", "covariates"], sort=False):
            analysis = str(grp["analysis"].iloc[0])
            eff_pooled = pooled_by_effect.get((fid, x, y, cov), empty_pooled)
            meta = eff_pooled[eff_pooled["analysis"] == "meta_analysis"]
            re_row = meta[meta["method"].astype(str) != FIXED_METHOD]
            fe_row = meta[meta["method"].astype(str) == FIXED_METHOD]
            prow = re_row.iloc[0] if len(re_row) else None
            detail = details_by_key.get((fid, x, y, cov, "random"))
            scale = detail["scale"] if detail is not None else "identity"
            title = effect_label(study, x, y, cov)
            anchor = effect_anchor(fid, x, y, cov)
            spearman = rows[(rows["analysis"] == "spearman") & (rows["x"] == x) & (rows["y"] == y)]
            ipd = eff_pooled[eff_pooled["analysis"].isin(["ipd_interaction", "mixed_model"])]
            lines = _pooled_lines(detail if prow is not None else None,
                                  fe_row.iloc[0] if len(fe_row) else None, ipd, analysis,
                                  scale)
            rep = pd.DataFrame()
            if replication is not None and len(replication):
                rep = rep_by_effect.get((fid, x, y, cov), empty_rep)
            rep_frame = replication_frame(rep, countries)
            effects.append({
                "anchor": anchor, "title": title, "svg": anchor,
                "family": fid, "x": x, "y": y, "covariates": cov,
                "pooled": prow is not None,
                "table": _html_table(with_test_used(site_effect_table(grp, analysis, spearman),
                                                    analysis, rows, x, y)),
                "lines": lines,
                "replication": _html_table(rep_frame, first_left=2) if len(rep_frame) else "",
            })
        extra = _family_extra(fam, rows, study)
        out.append({"id": fid, "label": fam.get("label", fid), "effects": effects, **extra})
    return out


def _family_extra(fam: Mapping[str, Any], rows: pd.DataFrame, study: Study) -> dict[str, Any]:
    """Unpooled results of a family: robustness tests, regression coefficients."""
    kind = fam.get("kind")
    plots, tables = [], []
    if kind == "regression":
        coef = rows[rows["base"] == "ols_hc3"]
        std = rows[rows["base"] == "ols_hc3_standardized"]
        plots = [effect_anchor(fam["id"], str(term), str(fam.get("y", "")), "beta")
                 for term in std["x"].unique()]
        if len(coef):
            table = coef[["site", "x", "n", "estimate", "ci_low", "ci_high", "statistic",
                          "p_value"]]
            beta = dict(zip(zip(std["site"], std["x"]), std["estimate"]))
            r2 = dict(zip(rows.loc[rows["base"] == "ols_r2", "site"],
                          rows.loc[rows["base"] == "ols_r2", "estimate"]))
            tables.append(_html_table(pd.DataFrame({
                "Site": table["site"].to_numpy(),
                "Term": [variable_label(study, t) for t in table["x"]],
                "n": [fmt_n(v) for v in table["n"]], "B": [fmt(v) for v in table["estimate"]],
                "95% CI": [fmt_ci(a, b) for a, b in zip(table["ci_low"], table["ci_high"])],
                "t (HC3)": [fmt(v) for v in table["statistic"]],
                "p": [fmt_p(v) for v in table["p_value"]],
                "\u03b2": [fmt(beta.get((s, t))) for s, t in zip(table["site"], table["x"])],
                "R\u00b2 of the model": [fmt(r2.get(s), leading_zero=False) for s in table["site"]],
            }), first_left=2))
    robust = rows[rows["base"].isin(list(_ROBUST))]
    if len(robust):
        bounded = [_ROBUST[b][1] for b in robust["base"]]
        tables.append(_html_table(pd.DataFrame({
            "Site": robust["site"].to_numpy(),
            "Test (estimate)": [_ROBUST[b][0] for b in robust["base"]],
            "n": [fmt_n(v) for v in robust["n"]],
            "Estimate": [fmt(v, leading_zero=not b) for v, b in zip(robust["estimate"], bounded)],
            "95% CI": [fmt_ci(lo, hi, leading_zero=not b)
                       for lo, hi, b in zip(robust["ci_low"], robust["ci_high"], bounded)],
            "Statistic": [fmt(v) for v in robust["statistic"]],
            "df": [fmt_df(v) for v in robust["df"]], "p": [fmt_p(v) for v in robust["p_value"]],
        }), first_left=2, caption="Tests beside the pooled effect (per site, not pooled)"))
    return {"plots": plots, "tables": tables}


def _provenance_tables(prov: Mapping[str, Any]) -> dict[str, Markup]:
    general = pd.DataFrame({"Item": ["Run id", "Created (UTC)", "Git commit", "Plan file",
                                     "Plan SHA-256", "Python", "Comparison key"],
                            "Value": [prov.get("run_id", ""), prov.get("created_at", ""),
                                      prov.get("git_commit", "") or "(not a git checkout)",
                                      prov.get("plan", {}).get("path", ""),
                                      prov.get("plan", {}).get("sha256", ""),
                                      prov.get("python", ""), prov.get("comparison_key", "")]})
    site_rows = []
    for code, s in prov.get("sites", {}).items():
        inp = prov.get("inputs", {}).get(code, {})
        site_rows.append({"Site": code, "Role": s.get("role", ""),
                          "site.toml SHA-256": s.get("site_sha256", ""),
                          "Codebook SHA-256": s.get("codebook_sha256", ""),
                          "Input batches (SHA-256)": " ".join(inp.get("batches", [])),
                          "Analysis reused": "yes" if inp.get("reused") else "no"})
    packages = pd.DataFrame({"Package": list(prov.get("packages", {})),
                             "Version": [v or "not installed"
                                         for v in prov.get("packages", {}).values()]})
    sites = pd.DataFrame(site_rows)
    return {"general": _html_table(general, first_left=2),
            "sites": _html_table(sites, first_left=len(sites.columns)),
            "packages": _html_table(packages, first_left=2)}


_CONDITIONS = {"same_direction": "same direction", "significant": "replication p < \u03b1",
               "in_pi": "inside the prediction interval",
               "not_in_pi": "outside the prediction interval",
               "opposite_significant": "significant in the opposite direction",
               "original_significant": "the original p < \u03b1",
               "larger_same_direction": "larger than the original in the same direction"}


def _verdict_rules(study: Study) -> list[str]:
    """The configured verdict rules in words (``[replication] verdicts``)."""
    out = []
    for rule in study.section("replication").get("verdicts", ()):
        conditions = rule.get("all", rule.get("any", ()))
        words = [_CONDITIONS.get(c, c.replace("_", " ")) for c in conditions]
        cond = (" and " if "all" in rule else " or ").join(words)
        out.append(f"\u201c{rule['verdict']}\u201d when {cond}")
    return out


def _common(study: Study, sites: list[Site], run_id: str, prov: Mapping[str, Any],
            files: Iterable[str]) -> dict[str, Any]:
    files = set(files)
    return {"title": report_title(study, sites), "run_id": run_id,
            "created_at": prov.get("created_at", ""), "min_cell": MIN_CELL,
            "site_pages": [(s.code, s.country, f"site-{s.code}.html") for s in sites
                           if f"site-{s.code}.html" in files],
            "downloads": sorted(f for f in files if not f.endswith(".html")
                                and not f.startswith(f"{RESTRICTED}/")),
            "restricted": RESTRICTED}


def report_title(study: Study, sites: Iterable[Site]) -> str:
    """The study's name and its sites counted by role, e.g. ``"... (5 sites: 2 original,
    3 replication)"``; every site of the study counts, with data or not yet."""
    sites = list(sites)
    roles = [s.role for s in sites]
    by_role = ", ".join(f"{roles.count(r)} {r}" for r in dict.fromkeys(sorted(roles)))
    word = "site" if len(sites) == 1 else "sites"
    return f"{study.raw['study']['name']} ({len(sites)} {word}: {by_role})"


def forest_plots(comparison: Comparison, study: Study, sites: list[Site],
                 families: Iterable[str] | None = None) -> dict[str, str]:
    """Every forest plot of the comparison report, drawn: plot key -> inline SVG.

    Parameters
    ----------
    comparison : Comparison
    study : Study
    sites : list of Site
        Every site of the study; those with estimates in ``comparison`` are plotted.
    families : iterable of str, optional
        Only these plan families (a task's share); default every family.

    Returns
    -------
    dict
        One entry per pooled effect (key: its anchor, ``effect_anchor``) and per
        standardised coefficient of a regression family (key: ``effect_anchor(family, term,
        y, "beta")``), as :func:`render_report` places them.

    Notes
    -----
    The plots of one family share one x axis (:func:`lacrima.plots.axis_limits`). Each
    pooled effect's diamond spans the interval the report tells the reader to use: the
    random-effects CI, or the fixed-effect CI where that is wider (:func:`_reads_fixed_ci`).
    Pure and independent of the rest of the report, so a task runner can draw the plots in
    parallel with the report's other work (``flows/pipeline.py``); matplotlib is used
    through ``Figure`` only (``lacrima.plots``), safe in threads and processes.
    """
    results = comparison.results
    wanted = None if families is None else set(families)
    if wanted is not None:
        results = results[results["family"].isin(wanted)]
    per_site = results[results["site"] != POOLED]
    per_site = per_site.assign(base=per_site["method"].map(base_method))
    pooled = results[(results["site"] == POOLED) & (results["analysis"] == "meta_analysis")]
    key_cols = ["family", "x", "y", "covariates"]
    # the first random-effects row of each effect (the diamond) and its fixed-effect twin
    fe_mask = pooled["method"].astype(str) == FIXED_METHOD
    random = {k: g.iloc[0] for k, g in pooled[~fe_mask].groupby(key_cols, sort=False)}
    fixed = {k: g.iloc[0] for k, g in pooled[fe_mask].groupby(key_cols, sort=False)}
    weights = site_weights(per_site, study, pooled)
    weight_of = dict(zip(zip(*(weights[c] for c in key_cols), weights["site"]),
                         weights["weight"]))
    present = set(per_site["site"])
    styles = site_style([s.code for s in sites])
    originals = {s.code for s in sites_by_role(study, [s for s in sites if s.code in present])[1]}
    columns = ["site", "estimate", "ci_low", "ci_high", "n"]
    out = {}
    for fam in study.families:
        fid = fam["id"]
        if wanted is not None and fid not in wanted:
            continue
        rows = per_site[per_site["family"] == fid]
        main = rows[rows["base"].isin(POOLED_METHODS.values())]
        plots = []          # (anchor, site rows, pooled, forest_svg keywords), then drawn
        for (x, y, cov), grp in main.groupby(["x", "y", "covariates"], sort=False):
            analysis = str(grp["analysis"].iloc[0])
            site_rows = grp[columns].assign(
                weight=[weight_of.get((fid, x, y, cov, s), np.nan) for s in grp["site"]])
            plots.append((effect_anchor(fid, x, y, cov), site_rows,
                          _diamond(random.get((fid, x, y, cov)), fixed.get((fid, x, y, cov)),
                                   analysis),
                          {"title": effect_label(study, x, y, cov),
                           "xlabel": SCALE_NAMES.get(analysis, "estimate")
                           + (" (log scale)" if analysis == "chi_square" else ""),
                           "metric": METRICS.get(analysis, "Estimate"),
                           "bounded": analysis in BOUNDED,
                           "null": 1.0 if analysis == "chi_square" else 0.0,
                           "log_scale": analysis == "chi_square"}))
        if fam.get("kind") == "regression":
            std = rows[rows["base"] == "ols_hc3_standardized"]
            for term, grp in std.groupby("x", sort=False):
                plots.append((effect_anchor(fid, str(term), str(fam.get("y", "")), "beta"),
                              grp[columns], None,
                              {"title": f"{variable_label(study, str(term))}: standardised "
                                        "coefficient",
                               "xlabel": "standardised \u03b2", "metric": "\u03b2",
                               "show_title": True}))
        # one axis per family (and per kind of scale, should a family mix them)
        by_axis: dict[bool, list] = {}
        for _, site_rows, diamond, kw in plots:
            by_axis.setdefault(kw.get("log_scale", False), []).extend(
                [*zip(site_rows["ci_low"], site_rows["ci_high"]),
                 *zip(site_rows["estimate"], site_rows["estimate"]),
                 *([(diamond["ci_low"], diamond["ci_high"]),
                    (diamond["pi_low"], diamond["pi_high"])] if diamond is not None else [])])
        canvases = {log: ForestCanvas(log) for log in by_axis}
        for anchor, site_rows, diamond, kw in plots:
            log = kw.get("log_scale", False)
            xlim = axis_limits(by_axis[log], 1.0 if log else 0.0, log)
            out[anchor] = forest_svg(site_rows, diamond, styles=styles, originals=originals,
                                     salt=anchor, xlim=xlim, canvas=canvases[log], **kw)
    return out


def _diamond(re_row: pd.Series | None, fe_row: pd.Series | None,
             analysis: str) -> dict[str, Any] | None:
    """What a forest plot draws for a pooled effect: the random-effects estimate, the
    interval the report tells the reader to use, and the prediction interval."""
    if re_row is None:
        return None
    out = {c: re_row[c] for c in ("estimate", "ci_low", "ci_high", "pi_low", "pi_high")}
    out["label"] = "Pooled (RE)"
    if fe_row is not None:
        to = TO_SCALE.get(POOLED_ANALYSES.get(analysis, ("", "identity"))[1], _identity)
        if _reads_fixed_ci(*(float(to(float(r[c]))) for r in (re_row, fe_row)
                             for c in ("ci_low", "ci_high"))):
            out.update(ci_low=fe_row["ci_low"], ci_high=fe_row["ci_high"],
                       note="diamond: the fixed-effect CI, wider than the Hartung-Knapp CI")
    return out


def _with_plots(families: list[dict[str, Any]], plots: Mapping[str, str]) -> list[dict[str, Any]]:
    """``families`` with the drawn SVGs in place of their plot keys."""
    return [{**fam, "plots": [Markup(plots[k]) for k in fam.get("plots", ())],
             "effects": [{**e, "svg": Markup(plots[e["svg"]])} for e in fam["effects"]]}
            for fam in families]


def run_invariance(storage: Storage, analyses: list[SiteAnalysis],
                   study: Study) -> tuple[pd.DataFrame, list[str]]:
    """``invariance.plan_invariance`` of the run's sites, fitted only when its inputs changed.

    The sites' rows are read from the store only when the sites are few enough for the fit
    (``[invariance] max_sites``). The fits are stored under the digest of what they read
    (``invariance.inputs_digest``, ``catalog.invariance_key``) and read back while that is
    unchanged: a change of the plan elsewhere, or of a site's other answers, refits nothing.
    """
    from lacrima import invariance  # scipy: paid by a report only

    few = len(analyses) <= int(study.section("invariance").get("max_sites", 12))
    data = {a.site: catalog.site_data(storage, a.site, a.input_key) if few else None
            for a in analyses}
    digest = invariance.inputs_digest(study, data) if few else None
    if digest is None:
        return invariance.plan_invariance(study, data)
    key = catalog.invariance_key(digest)
    if storage.exists(key):
        return invariance.fits_from_bytes(storage.read_bytes(key))
    fits, notes = invariance.plan_invariance(study, data)
    storage.write_bytes(key, invariance.fits_bytes(fits, notes), if_absent=True)
    return fits, notes


INVARIANCE_MODELS = {"configural": "Configural (same factors)",
                     "metric": "Metric (equal loadings)",
                     "scalar": "Scalar (equal loadings and intercepts)",
                     "partial_metric": "Partial metric (loadings freed)",
                     "partial_scalar": "Partial scalar"}


def invariance_section(fits: pd.DataFrame, notes: list[str], study: Study) -> dict[str, Any]:
    """Table and one conclusion per scale for "Are the scales comparable across sites?"."""
    rows, conclusions = [], []
    for scale, group in fits.groupby("scale", sort=False):
        for f in group.itertuples(index=False):
            freed = f.freed.replace("@", " at ").replace(";", ", ") if f.freed else ""
            rows.append({
                "Scale": _label_scale(study, scale), "Model": INVARIANCE_MODELS.get(f.model, f.model)
                + (f" ({freed} free)" if freed else ""),
                "χ² (df)": f"{fmt(f.chi2)} ({fmt_df(f.df)})", "p": fmt_p(f.p),
                "CFI": fmt(f.cfi, 3, False), "RMSEA [90% CI]": f"{fmt(f.rmsea, 3, False)} "
                f"{fmt_ci(f.rmsea_low, f.rmsea_high, 3, False)}",
                "SRMR": fmt(f.srmr, 3, False), "Δχ² (Δdf)": "" if is_missing(f.chi2_diff)
                else f"{fmt(f.chi2_diff)} ({fmt_df(f.df_diff)})", "Δp": fmt_p(f.p_diff),
                "ΔCFI": fmt(f.delta_cfi, 3, False), "ΔRMSEA": fmt(f.delta_rmsea, 3, False),
                "Holds": "" if f.holds is None or is_missing(f.holds)
                else ("yes" if f.holds else "no"),
            })
        steps = group.set_index("model")
        label = _label_scale(study, scale)
        metric = group[group["model"].isin(["metric", "partial_metric"])].iloc[-1]
        partial = "" if metric["model"] == "metric" else (
            "partial metric invariance once the loading of "
            + metric["freed"].replace("@", " at ").replace(";", ", ") + " is free; ")
        if not metric["holds"]:
            text = "loadings differ across sites (metric invariance fails" \
                   + (", also with the loadings freed above" if partial else "") \
                   + "): the factors do not mean the same everywhere; compare correlations " \
                   "with care"
        elif steps.loc["scalar", "holds"]:
            text = partial + ("scalar invariance holds: loadings and intercepts are equal "
                              "across sites" if not partial else "the intercepts are equal")
        elif group["model"].iloc[-1] == "partial_scalar" and bool(group["holds"].iloc[-1]):
            freed = ", ".join(v.replace("@", " at ") for v in group["freed"].iloc[-1].split(";")
                              if not v.endswith("(loading)"))
            text = partial + f"partial scalar invariance once {freed} is free (its " \
                   "intercept differs there): correlations are comparable, mean differences " \
                   "on that item are not"
        else:
            text = partial + "loadings are equal (metric invariance) but intercepts differ " \
                   "beyond what freeing a few allows: correlations are comparable, means are not"
        conclusions.append(f"{label}: {text}.")
    return {"table": _html_table(pd.DataFrame(rows), first_left=2) if rows else None,
            "conclusions": conclusions, "notes": notes}


def _label_scale(study: Study, scale: str) -> str:
    """A scale's name in the report: ``[invariance] labels``, else its score name."""
    return str(study.section("invariance").get("labels", {}).get(scale, scale))


def render_report(run_id: str, analyses: list[SiteAnalysis], comparison: Comparison, study: Study,
                  sites: list[Site], prov: dict, files: Iterable[str] | None = None,
                  plots: Mapping[str, str] | None = None,
                  invariance: tuple[pd.DataFrame, list[str]] | None = None) -> str:
    """The self-contained comparison report (inline CSS and SVG, no network).

    Parameters
    ----------
    run_id : str
    analyses : list of SiteAnalysis
    comparison : Comparison
    study : Study
    sites : list of Site
        Every site of the study (their order fixes each site's colour).
    prov : dict
        ``steps.provenance`` of the run.
    files : iterable of str, optional
        Run-relative names of the files written with the report; only these are linked.
        Default: the site pages of the analysed sites.
    plots : mapping of str to str, optional
        :func:`forest_plots` of the comparison, drawn earlier (in parallel, by the flow).
        Default: drawn here.
    invariance : (DataFrame, list of str), optional
        ``invariance.plan_invariance`` of the run; the section is left out without it.

    Returns
    -------
    str
        The HTML document. Sections, in order: ``summary``, ``flow``, ``descriptives``,
        ``invariance`` (when given), ``families`` (one ``family-<id>`` per plan family), ``methods``, ``provenance``.

    Notes
    -----
    Numbers follow APA style (7th ed.): two decimals, no leading zero for r, alpha and p,
    p below .001 as ``< .001``. Counts from 1 to 4 are shown as ``<5`` (protocol section 8).
    """
    present = {a.site for a in analyses}
    if files is None:
        files = [f"site-{c}.html" for c in present]
    styles = site_style([s.code for s in sites])
    analysed = [s for s in sites if s.code in present]
    rep_sites, origs = sites_by_role(study, analysed)
    verdicts = verdict_table(comparison, study, analysed)
    head, counts, pairs = replication_summary(comparison.replication)
    headline_ok = bool(head) and bool(origs)
    rep_cfg = study.section("replication")
    configured_reps = sites_by_role(study, sites)[0]
    countries = {s.code: s.country for s in sites}
    sections = [("summary", "Verdicts"), ("flow", "Participant flow"),
                ("descriptives", "Descriptives"),
                *([("invariance", "Invariance")] if invariance is not None else []),
                ("families", "Analyses"),
                ("methods", "Methods"), ("provenance", "Provenance")]
    ctx = _common(study, sites, run_id, prov, files)
    return _env().get_template("report.html.j2").render(
        **ctx, sections=sections,
        site_codes=[a.site for a in analyses],
        site_legend=[(s.code, s.country, s.role, styles[s.code][0]) for s in sites
                     if s.code in present],
        replication_sites=rep_sites, originals=origs, verdicts=verdicts.to_dict("records"),
        headline=side_name(head, len(rep_sites), "replication") if head else "",
        verdict_columns=[(f"verdict_{o.code}", f"{o.code} ({o.country})") for o in origs]
        + ([(f"verdict_{POOLED}", f"pooled originals (k = {len(origs)})")] if len(origs) > 1 else []),
        has_covariates=bool((verdicts["covariates"] != "").any()),
        verdict_counts=[(label + (f" ({countries[o]})" if o in countries else ""), text)
                        for o, label, text in counts], pair_counts=pairs,
        awaiting=[s for s in configured_reps if s.code not in present],
        without_data=[s for s in sites if s.code not in present],
        verdict_p="Holm-adjusted" if rep_cfg.get("verdict_p", "raw") == "holm" else "raw",
        flow_table=_html_table(flow_frame(analyses)),
        descriptives_table=_html_table(descriptives_frame(analyses, study)),
        families=_with_plots(_families(comparison, study, analysed),
                             forest_plots(comparison, study, sites) if plots is None else plots),
        metric_notes=metric_notes(verdicts["metric"]) if len(verdicts) else [],
        verdict_rules=_verdict_rules(study), replication_cfg=study.section("replication"),
        small_k_note=small_k_note(comparison.replication, study) if headline_ok else "",
        pooling_cfg=study.section("pooling"), k_sites=len(analyses),
        provenance=_provenance_tables(prov), original_mark=ORIGINAL_MARK,
        invariance=None if invariance is None else invariance_section(*invariance, study))


def _site_descriptives(a: SiteAnalysis, study: Study) -> tuple[Markup, Markup]:
    d = a.descriptives
    num = d[d["mean"].notna() | (d["count"].isna() & d["n"].notna())]
    numeric = pd.DataFrame({
        "Variable": [variable_label(study, v) for v in num["variable"]],
        "Subset": num["subset"].astype(str).to_numpy(),
        "n": [fmt_n(v) for v in num["n"]], "M": [fmt(v) for v in num["mean"]],
        "SD": [fmt(v) for v in num["sd"]], "Min": [fmt(v) for v in num["min"]],
        "Max": [fmt(v) for v in num["max"]], "% missing": [fmt(v, 1) for v in num["pct_missing"]],
    })
    cat = d[d["count"].notna()]
    categorical = pd.DataFrame({
        "Variable": [variable_label(study, v) for v in cat["variable"]],
        "Level": cat["level"].astype(str).to_numpy(),
        "n (%)": _categorical_cells(cat),
    })
    return _html_table(numeric, first_left=2), _html_table(categorical, first_left=2)


def _categorical_cells(cat: pd.DataFrame) -> list[str]:
    """``n (%)`` per level; the levels of each variable (and subset) suppressed as one group."""
    cells = [""] * len(cat)
    keys = cat["variable"].astype(str) + "|" + cat["subset"].astype(str)
    for _, idx in pd.Series(range(len(cat))).groupby(keys.to_numpy(), sort=False):
        pos = idx.tolist()
        counts = [float(cat["count"].iloc[i]) for i in pos]
        shown = group_cells(counts, lambda j: count_cell(counts[j],
                                                           cat["percent"].iloc[pos[j]]))
        for i, text in zip(pos, shown):
            cells[i] = text
    return cells


def _site_analyses(a: SiteAnalysis, study: Study) -> list[dict[str, Any]]:
    out = []
    res = a.results.copy()
    res["covariates"] = res["covariates"].fillna("").astype(str)
    # Split by family once (row order kept), not one boolean filter per family: at 125
    # sites that is thousands of full-frame comparisons per report.
    by_family = dict(tuple(res.groupby("family", sort=False)))
    for fam_id in [f["id"] for f in study.families] + ["reliability"]:
        rows = by_family.get(fam_id)
        if rows is None or not len(rows):
            continue
        label = (study.family(fam_id).get("label", fam_id) if fam_id != "reliability"
                 else "Reliability (Cronbach's \u03b1, Feldt interval)")
        table = pd.DataFrame({
            "Analysis": rows["analysis"].astype(str).to_numpy(),
            "x": [variable_label(study, v) for v in rows["x"].astype(str)],
            "y": [variable_label(study, v) if v else "" for v in rows["y"].fillna("").astype(str)],
            "Controlling for": [covariates_label(study, c) for c in rows["covariates"]],
            "Method": rows["method"].astype(str).to_numpy(),
            "n": [fmt_n(v) for v in rows["n"]],
            "Estimate": [fmt(v, leading_zero=an not in BOUNDED and an != "reliability")
                         for v, an in zip(rows["estimate"], rows["analysis"])],
            "95% CI": [fmt_ci(lo, hi, leading_zero=an not in BOUNDED and an != "reliability")
                       for lo, hi, an in zip(rows["ci_low"], rows["ci_high"], rows["analysis"])],
            "Statistic": [fmt(v) for v in rows["statistic"]],
            "df": [fmt_df(v) for v in rows["df"]],
            "p": [fmt_p(v) for v in rows["p_value"]],
            "p (Holm)": [fmt_p(v) for v in rows["p_adjusted"]],
        })
        out.append({"id": fam_id, "label": label, "table": _html_table(table, first_left=5)})
    return out


def render_site_page(analysis: SiteAnalysis, site: Site, study: Study,
                     downloads: Iterable[str] = ()) -> str:
    """One site's page: its flow, full descriptives and every analysis, all per site.

    Parameters
    ----------
    analysis : SiteAnalysis
    site : Site
    study : Study
    downloads : iterable of str
        Run-relative names of the site's own exports (``restricted/data/<site>.csv``, ...):
        named as text, never linked (a shared folder has no ``restricted/``).

    Returns
    -------
    str
        HTML document with sections ``flow``, ``descriptives``, ``analyses``; it links back
        to ``report.html``.

    Notes
    -----
    The page depends on the site's analysis alone (it names the analysis' input key, not
    the run), so it is written once per input key and reused by every later run while the
    site's data, codebook and plan are unchanged (``site_outputs``).
    """
    numeric, categorical = _site_descriptives(analysis, study)
    return _env().get_template("site.html.j2").render(
        title=str(study.raw["study"]["name"]), min_cell=MIN_CELL, site=site,
        input_key=analysis.input_key[:12], n_batches=len(analysis.batches),
        flow_table=_html_table(flow_frame([analysis])),
        numeric_table=numeric, categorical_table=categorical,
        families=_site_analyses(analysis, study), own_files=list(downloads),
        restricted=RESTRICTED)


RESTRICTED = "restricted"
"""Sub-folder of a run folder for what may not be shared: row-level data and exact counts."""

def restricted_readme(run_id: str, names: Iterable[str]) -> bytes:
    """``restricted/README.txt``: what the folder holds, file by file, and why it stays behind.

    Parameters
    ----------
    run_id : str
    names : iterable of str
        Run-relative names of the run's files; those under ``restricted/`` are listed.

    Returns
    -------
    bytes
        UTF-8 text. The shareable pages name these files as text and never link to them,
        so a folder shared without ``restricted/`` has no dead link.
    """
    inside = sorted(n[len(RESTRICTED) + 1:] for n in names if n.startswith(f"{RESTRICTED}/"))
    rows = [n for n in inside if n.startswith("data/") or n.endswith(".parquet")]
    counts = [n for n in inside if n not in rows and n != "README.txt"]
    lines = [f"Restricted outputs of lacrima run {run_id}: do not share.", "",
             "Row-level data (one row per participant, pseudonymised IDs), in this folder:",
             *[f"  {n}" for n in rows], "",
             f"Exact counts (counts 1-{MIN_CELL - 1} not suppressed), in this folder:",
             *[f"  {n}" for n in counts], "",
             "Everything outside this folder may be shared: there, counts "
             f"1-{MIN_CELL - 1} show as <{MIN_CELL}",
             "(and (s) where a hidden count could be worked out from a total), as in "
             "report.html.",
             "report.html and the site pages name these files but do not link to them: share "
             "the run",
             "folder without this one and no link in it is dead."]
    return ("\n".join(lines) + "\n").encode()


def site_files(analysis: SiteAnalysis, data: pd.DataFrame, site: Site,
               study: Study) -> dict[str, bytes]:
    """A site's own outputs: ``restricted/data/<site>.csv`` and ``.sav`` (row-level data), and
    ``site-<site>.html``.

    ``data`` is the site's analysis-ready frame (``catalog.site_data``).
    """
    files = {f"{RESTRICTED}/data/{site.code}.csv": to_csv_bytes(data),
             f"{RESTRICTED}/data/{site.code}.sav": spss_bytes(data, study, site)}
    files[f"site-{site.code}.html"] = render_site_page(analysis, site, study, list(files)).encode()
    return files


OUTPUTS_VERSION = 2
"""Version of a site's own outputs (page, exports): part of their store key.

Bump it by hand when what ``site_files`` writes changes (templates, exports, labels): every
site's outputs are then made again on the next run; until then they are reused while the
site's input key is unchanged.
"""


def site_outputs_ready(storage: Storage, site: str, input_key: str) -> bool:
    """True when ``site_outputs`` of this site's input key (this version) are all stored."""
    prefix = catalog.site_outputs_prefix(site, input_key, OUTPUTS_VERSION)
    return storage.exists(f"{prefix}/files.json")


def site_outputs(storage: Storage, analysis: SiteAnalysis, site: Site, study: Study,
                 data: pd.DataFrame | None = None) -> dict[str, tuple[str, str, int]]:
    """Write a site's own outputs (``site_files``) once per input key; where they are, by name.

    Parameters
    ----------
    storage : Storage
    analysis : SiteAnalysis
    site : Site
    study : Study
    data : DataFrame, optional
        The site's analysis-ready rows when the caller has them (a fresh analysis); else
        they are read from the store, and only if the outputs are not stored yet.

    Returns
    -------
    dict
        Run-relative name -> (store key under ``results/<site>/<input_key>/outputs-<version>/``,
        SHA-256 hex, size in bytes): what the run's manifest lists for the copy.

    Notes
    -----
    Called from each site's task, so pages and SPSS files are made in parallel across
    sites and only for sites whose input changed; the run's report copies them.
    ``files.json`` (name -> SHA-256 and size) is written last: its presence means the set
    is complete.
    """
    prefix = catalog.site_outputs_prefix(analysis.site, analysis.input_key, OUTPUTS_VERSION)
    index = f"{prefix}/files.json"
    if storage.exists(index):
        listed = json.loads(storage.read_bytes(index))
    else:
        if data is None:
            data = catalog.site_data(storage, analysis.site, analysis.input_key)
        files = site_files(analysis, data, site, study)
        for name, blob in files.items():
            storage.write_bytes(f"{prefix}/{name}", blob, if_absent=True)
        listed = {name: [hashlib.sha256(blob).hexdigest(), len(blob)]
                  for name, blob in sorted(files.items())}
        storage.write_bytes(index, json.dumps(listed).encode(), if_absent=True)
    return {name: (f"{prefix}/{name}", sha, size) for name, (sha, size) in listed.items()}


# ---------------------------------------------------------------------------
# Writing a run
# ---------------------------------------------------------------------------

def write_outputs(storage: Storage, run_id: str, analyses: list[SiteAnalysis],
                  comparison: Comparison, study: Study, sites: list[Site], prov: dict,
                  plots: Mapping[str, str] | None = None) -> RunOutputs:
    """Write every output of a run under ``reports/<run_id>/``, then publish it as the latest.

    Parameters
    ----------
    storage : Storage
        Holds each analysis' entry under its input key (``catalog.save_site_analysis``):
        the sites' rows are read from there, one site at a time.
    run_id : str
    analyses : list of SiteAnalysis
    comparison : Comparison
    study : Study
    sites : list of Site
    prov : dict
    plots : mapping of str to str, optional
        :func:`forest_plots` of ``comparison``, when drawn already; else drawn here.

    Returns
    -------
    RunOutputs
        ``files`` lists the run-relative names written, as ``manifest.json`` does.

    Notes
    -----
    A site's page and exports come from ``site_outputs`` (written once per input key by the
    site's task, copied here). Each file is written to the run folder (create-if-absent: a
    run never overwrites another's files); then ``catalog.publish_report`` writes the
    manifest and, last, the pointer ``reports/latest.json``, so the latest report is always
    one whole run.
    """
    prefix = catalog.report_prefix(run_id)
    results = comparison.results.copy()
    results["run_id"] = run_id
    results = results.reindex(columns=list(RESULTS_COLUMNS))
    flow = pd.concat([a.flow.to_frame() for a in analyses], ignore_index=True)
    descr = pd.concat([a.descriptives for a in analyses], ignore_index=True)
    listed: dict[str, tuple[str, int]] = {}

    def put(name: str, data: bytes) -> None:
        storage.write_bytes(f"{prefix}/{name}", data, if_absent=True)
        listed[name] = hashlib.sha256(data).hexdigest(), len(data)

    def copy(name: str, key: str, sha: str, size: int) -> None:
        # a site's stored output, as put() would write it, without its bytes passing here
        storage.copy(key, f"{prefix}/{name}", if_absent=True)
        listed[name] = sha, size

    put("results.csv", to_csv_bytes(results))
    put("replication.csv", to_csv_bytes(comparison.replication))
    put("heterogeneity.csv", to_csv_bytes(heterogeneity_frame(comparison, study, sites)))
    put("participant_flow.csv", to_csv_bytes(shareable_flow(flow)))
    put("descriptives.csv", to_csv_bytes(shareable_descriptives(descr)))
    put(f"{RESTRICTED}/participant_flow.csv", to_csv_bytes(flow))
    put(f"{RESTRICTED}/descriptives.csv", to_csv_bytes(descr))
    invariance = run_invariance(storage, analyses, study)
    put("invariance.csv", to_csv_bytes(invariance[0]))
    put("provenance.json", json.dumps(prov, indent=2, default=str).encode())
    by_code = {s.code: s for s in sites}
    pages = {}
    for a in analyses:
        if a.site not in by_code:
            put(f"{RESTRICTED}/data/{a.site}.csv",
                to_csv_bytes(catalog.site_data(storage, a.site, a.input_key)))
            continue
        for name, (key, sha, size) in site_outputs(storage, a, by_code[a.site], study).items():
            copy(name, key, sha, size)
        pages[a.site] = f"site-{a.site}.html"
    # The stored Parquet files, stacked table by table (never every site's rows as frames).
    parquet = stacked_parquet_bytes([storage.read_bytes(catalog.site_data_key(a.site, a.input_key))
                                     for a in analyses], study)
    put(f"{RESTRICTED}/analysis_ready.parquet", parquet)
    # Exact cell counts (1-4 not suppressed): restricted, beside the row-level data.
    put(CONTINGENCY_COUNTS, to_csv_bytes(contingency_counts(parquet, study)))
    readme = f"{RESTRICTED}/README.txt"
    put(readme, restricted_readme(run_id, [*listed, readme]))
    put(REPORT, render_report(run_id, analyses, comparison, study, sites, prov,
                              [*listed, REPORT, MANIFEST], plots, invariance).encode())
    catalog.publish_report(storage, run_id, listed)     # last: the report is now the latest
    key = f"{prefix}/{REPORT}"
    local = storage.local_path(key)
    return RunOutputs(run_id, prefix, key, str(local) if local else f"{storage.location}/{key}",
                      files=tuple(sorted([*listed, MANIFEST])), site_pages=pages)
