"""Pure table builders: tidy results in, display or shareable tables out (DataFrame to DataFrame).

Nothing here renders HTML or writes a file: the report (``lacrima.report``) lays these tables
out, the run writes the CSVs. Numbers are formatted by ``lacrima.apa``, counts hidden by
``lacrima.disclosure``; effects are named by the plan's labels.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lacrima.analysis import base_method
from lacrima.apa import fmt, fmt_ci, fmt_df, fmt_p, is_missing
from lacrima.disclosure import count_cell, fmt_n, group_cells
from lacrima.pooling import POOLED_ANALYSES, heterogeneity
from lacrima.replication import site_roles
from lacrima.stats import TwoByTwo
from lacrima.study import Site, Study
from lacrima.vocabulary import POOLED, POOLED_METHODS, covariate_names

if TYPE_CHECKING:
    from lacrima.results import Comparison, SiteAnalysis

# How each pooled analysis's estimate is named, and which are bounded by 1 (APA writes
# them without the leading zero: r, alpha, p); others keep it.
SCALE_NAMES = {"correlation": "Pearson r", "partial_correlation": "partial r",
               "t_test": "Hedges' g", "chi_square": "odds ratio"}
# The short name of each pooled estimate (forest plot columns, the verdict table's metric).
METRICS = {"correlation": "r", "partial_correlation": "partial r", "t_test": "g",
           "chi_square": "OR"}
# How an estimate on each pooling scale (lacrima.pooling.POOLED_ANALYSES) was pooled, in words.
_POOLED_AS = {"fisher_z": "pooled as Fisher z, back-transformed",
              "log": "pooled as log {metric}, back-transformed", "identity": "pooled as is"}
BOUNDED = {"correlation", "partial_correlation", "spearman"}
# ``method`` of a pooled row's fixed-effect twin (lacrima.pooling).
FIXED_METHOD = "FE"

# Exact 2x2 counts per site of every contingency family (A3). Not shareable (cells of 1-4
# are not suppressed), so it sits with the row-level data under restricted/.
CONTINGENCY_COUNTS = "restricted/contingency_2x2_counts_by_site.csv"
CONTINGENCY_COUNT_COLUMNS = ("family", "site", "row", "row_level", "column", "n_event",
                             "n_no_event", "n", "min_expected", "test_used")


def variable_label(study: Study, name: str) -> str:
    """The plan's label of a variable or score; the name itself when the plan has none."""
    if name in study.variables:
        return str(study.variables[name].get("label", name))
    if name in study.scores:
        return str(study.scores[name].get("label", name))
    return name


def covariates_label(study: Study, covariates: str) -> str:
    """A covariate set (names joined by ``vocabulary.COVARIATE_SEPARATOR``) as labels."""
    return ", ".join(variable_label(study, c) for c in covariate_names(covariates))


def effect_label(study: Study, x: str, y: str, covariates: str = "") -> str:
    """Readable name of an effect from the plan's variable and score labels.

    Examples
    --------
    >>> from lacrima.study import load_study
    >>> effect_label(load_study(), "after_happy", "change")
    'After crying: happy × Client-reported change (CTSCM-R)'
    """
    text = f"{variable_label(study, x)} \u00d7 {variable_label(study, y)}"
    if covariates:
        text += f" | controlling for {covariates_label(study, covariates)}"
    return text


def effect_anchor(family: str, x: str, y: str, covariates: str = "") -> str:
    """HTML id of an effect's figure: lowercase letters, digits and dashes."""
    raw = "-".join(p for p in ("effect", family, x, y, covariates) if p)
    return re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")


def _key(frame: pd.DataFrame) -> pd.Series:
    return frame["family"].astype(str) + "|" + frame["x"].astype(str) + "|" + \
        frame["y"].astype(str) + "|" + frame["covariates"].astype(str)


def pooled_effects(results: pd.DataFrame) -> pd.DataFrame:
    """The random-effects pooled rows of a results table, one per effect.

    Parameters
    ----------
    results : DataFrame
        ``RESULTS_COLUMNS`` rows; pooled rows have ``site == "pooled"`` and
        ``analysis == "meta_analysis"``, two per effect (random effects and ``"FE"``).

    Returns
    -------
    DataFrame
        The random-effects rows, in the table's order.
        :func:`verdict_table` puts them in the plan's order.
    """
    pooled = results[(results["site"] == POOLED) & (results["analysis"] == "meta_analysis")
                     & (results["method"].astype(str) != FIXED_METHOD)]
    return pooled.reset_index(drop=True)


def sites_by_role(study: Study, sites: Iterable[Site]) -> tuple[list[Site], list[Site]]:
    """The replication sites and the original sites among ``sites``, each in code order."""
    sites = list(sites)
    by_code = {s.code: s for s in sites}
    reps, origs = site_roles(study, sites)
    return [by_code[c] for c in reps], [by_code[c] for c in origs]


def headline_side(replication_sites: list[Site]) -> str | None:
    """The replication side the verdict summary leads with.

    The replication site when there is one; the pooled replication sites
    (``vocabulary.POOLED``) when there are several; ``None`` without one.
    """
    if not replication_sites:
        return None
    return replication_sites[0].code if len(replication_sites) == 1 else POOLED


def verdict_table(comparison: Comparison, study: Study, sites: Iterable[Site]) -> pd.DataFrame:
    """One row per pooled effect: pooled estimate, replication estimate and verdicts.

    Parameters
    ----------
    comparison : Comparison
        Results (per site and pooled) and the replication table.
    study : Study
    sites : iterable of Site
        Their roles name the replication sites and the originals (those with estimates
        in ``comparison.results`` count).

    Returns
    -------
    DataFrame
        Columns ``family, x, y, covariates, anchor, label, x_label, y_label, cov_label,
        scale, metric, k, pooled, i2, replication``, one ``verdict_<original code>`` per original
        site and, with two or more originals, ``verdict_pooled`` (against the pooled
        originals). ``scale`` names the estimate (``SCALE_NAMES``), ``metric`` is its short
        name (``METRICS``: r, partial r, g, OR; :func:`metric_notes` says how each was
        pooled). ``pooled`` is the formatted random-effects estimate with its interval;
        ``replication`` and the verdicts are those of the headline replication side
        (:func:`headline_side`: the replication site, or the pooled replication sites when
        there are several); verdicts are blank for effects outside ``[replication]
        families`` (A2, A3 are pooled, not assessed). Every other pair of sides is in
        ``replication.csv`` and in each effect's section of the report.
    """
    per_site = comparison.results[comparison.results["site"] != POOLED]
    # Only sites with estimates have verdicts: one still without data is no column.
    present = set(per_site["site"].astype(str))
    rep_sites, origs = sites_by_role(study, [s for s in sites if s.code in present])
    head = headline_side(rep_sites)
    pooled = pooled_effects(comparison.results)
    rep_rows = {}
    if head is not None and head != POOLED:
        mine = per_site[(per_site["site"] == head)
                        & (per_site["method"].isin(POOLED_METHODS.values()))]
        rep_rows = dict(zip(_key(mine), mine["estimate"]))
    verdicts: dict[tuple[str, str], str] = {}
    replication = comparison.replication
    if replication is not None and len(replication) and head is not None:
        mine = replication[replication["replication_site"].astype(str) == head]
        rk = (mine["effect"].astype(str) + "|" + mine["x"].astype(str) + "|"
              + mine["y"].astype(str) + "|" + mine["covariates"].astype(str))
        for k, o, v, r in zip(rk, mine["original_site"], mine["verdict"], mine["r_replication"]):
            verdicts[(k, str(o))] = str(v)
            rep_rows.setdefault(k, r)          # the pooled replication estimate
    columns_o = [o.code for o in origs] + ([POOLED] if len(origs) > 1 else [])
    # The plan's order (families, then x, y and covariate sets as listed), which is the
    # order the per-site analysis writes its rows in; the pooled table is sorted by name.
    main = per_site[per_site["method"].map(base_method).isin(POOLED_METHODS.values())]
    plan_order = {k: i for i, k in enumerate(dict.fromkeys(_key(main)))}
    pooled = pooled.assign(_order=_key(pooled).map(plan_order).fillna(len(plan_order)))
    pooled = pooled.sort_values("_order", kind="stable").reset_index(drop=True)
    rows = []
    for key, (_, r) in zip(_key(pooled), pooled.iterrows()):
        analysis = _analysis_of(per_site, r)
        lz = analysis not in BOUNDED
        row = {"family": r["family"], "x": r["x"], "y": r["y"], "covariates": r["covariates"],
               "anchor": effect_anchor(r["family"], r["x"], r["y"], r["covariates"]),
               "label": effect_label(study, r["x"], r["y"], r["covariates"]),
               "x_label": variable_label(study, r["x"]), "y_label": variable_label(study, r["y"]),
               "cov_label": covariates_label(study, r["covariates"]),
               "scale": SCALE_NAMES.get(analysis, "estimate"),
               "metric": METRICS.get(analysis, "estimate"),
               "k": int(r["k"]) if pd.notna(r["k"]) else 0,
               "pooled": f"{fmt(r['estimate'], leading_zero=lz)} "
                         f"{fmt_ci(r['ci_low'], r['ci_high'], leading_zero=lz)}",
               "i2": fmt(r["i2"], 0) + ("%" if pd.notna(r["i2"]) else ""),
               "replication": fmt(rep_rows.get(key), leading_zero=lz)}
        for o in columns_o:
            row[f"verdict_{o}"] = verdicts.get((key, o), "")
        rows.append(row)
    columns = ["family", "x", "y", "covariates", "anchor", "label", "x_label", "y_label",
               "cov_label", "scale", "metric", "k", "pooled", "i2",
               "replication", *[f"verdict_{o}" for o in columns_o]]
    return pd.DataFrame(rows, columns=columns)


def metric_notes(metrics: Iterable[str]) -> list[str]:
    """What each metric of a verdict table is and how it was pooled, in the table's order.

    Examples
    --------
    >>> metric_notes(["r", "g", "r"])
    ['r: Pearson r, pooled as Fisher z, back-transformed', "g: Hedges' g, pooled as is"]
    """
    out = []
    for metric in dict.fromkeys(metrics):
        analysis = next((a for a, m in METRICS.items() if m == metric), None)
        if analysis is None:
            continue
        scale = POOLED_ANALYSES[analysis][1]
        out.append(f"{metric}: {SCALE_NAMES[analysis]}, "
                   + _POOLED_AS[scale].format(metric=metric))
    return out


def _analysis_of(per_site: pd.DataFrame, pooled_row: pd.Series) -> str:
    """The per-site analysis a pooled row pools (its family's kind decides)."""
    m = per_site[(per_site["family"] == pooled_row["family"]) & (per_site["x"] == pooled_row["x"])
                 & (per_site["y"] == pooled_row["y"])
                 & per_site["method"].isin(POOLED_METHODS.values())]
    return str(m["analysis"].iloc[0]) if len(m) else ""


def side_name(code: str, k: Any, role: str) -> str:
    """A side of a replication pair in words: its site code, or the pooled sites of a role."""
    if code == POOLED:
        return f"pooled {role}s (k = {int(k)})" if not is_missing(k) else f"pooled {role}s"
    return code


def _verdict_counts(rows: pd.DataFrame) -> str:
    """``"27 replicated (5 on an original with p >= alpha), 4 not replicated (2 larger, same
    direction), ..."``: each verdict's count, with the context a reader needs to weigh it."""
    verdicts = rows["verdict"].astype(str)
    weak = ~rows["original_significant"].astype(bool) if "original_significant" in rows else None
    larger = rows["larger_same_direction"].astype(bool) if "larger_same_direction" in rows else None
    parts = []
    for v, n in verdicts.value_counts().items():
        notes = []
        if weak is not None and (k := int((weak & (verdicts == v)).sum())) and v == "replicated":
            notes.append(f"{k} on an original with p \u2265 \u03b1")
        if larger is not None and (k := int((larger & (verdicts == v)).sum())) and v != "replicated":
            notes.append(f"{k} larger than the original, same direction")
        parts.append(f"{n} {v}" + (f" ({'; '.join(notes)})" if notes else ""))
    return ", ".join(parts)


def replication_summary(replication: pd.DataFrame
                        ) -> tuple[str | None, list[tuple[str, str, str]], str]:
    """What the verdict summaries lead with, from the replication table alone.

    Returns
    -------
    (str or None, list of (str, str, str), str)
        The headline replication side (the pooled replication sites when the table has
        them, else its one replication site; ``None`` for an empty table); one
        ``(original side, label, counts)`` per original side the headline is compared with
        (label ``"<headline> vs <original>"``); and, when there are several replication sites,
        the verdict counts over every replication site x original site pair (else "").
    """
    if replication is None or replication.empty:
        return None, [], ""
    reps = replication["replication_site"].astype(str)
    head = POOLED if (reps == POOLED).any() else reps.iloc[0]
    mine = replication[reps == head]
    head_name = side_name(head, mine["k_replication"].iloc[0] if "k_replication" in mine
                          else None, "replication")
    lines = []
    for o, grp in mine.groupby(mine["original_site"].astype(str), sort=False):
        k = grp["k_original"].iloc[0] if "k_original" in grp else None
        lines.append((o, f"{head_name} vs {side_name(o, k, 'original')}", _verdict_counts(grp)))
    pairs = ""
    site_pairs = replication[(reps != POOLED) & (replication["original_site"].astype(str) != POOLED)]
    if head == POOLED and len(site_pairs):
        n_pairs = len(site_pairs.drop_duplicates(["replication_site", "original_site"]))
        pairs = (f"each replication site vs each original site ({n_pairs} pairs): "
                 f"{_verdict_counts(site_pairs)}")
    return head, lines, pairs


def flow_frame(analyses: list[SiteAnalysis]) -> pd.DataFrame:
    """Participant flow side by side: one row per step, one column per site.

    Parameters
    ----------
    analyses : list of SiteAnalysis

    Returns
    -------
    DataFrame
        ``Step`` (the plan's exclusion labels between "Records received" and "Analysed")
        and one column per site code with display counts, 1-4 shown as ``<5``.
    """
    parts = [a.flow.to_frame() for a in analyses]
    if not parts:
        return pd.DataFrame(columns=["Step"])
    flow = pd.concat(parts, ignore_index=True)
    order = list(dict.fromkeys(zip(flow["step"], flow["reason"], flow["label"])))
    # A step only some sites have (withdrew consent) stays between received and analysed.
    order.sort(key=lambda k: {"received": 0, "excluded": 1}.get(k[0], 2))
    out = pd.DataFrame({"Step": [lab for _, _, lab in order]})
    for a in analyses:
        mine = a.flow.to_frame()
        counts = dict(zip(zip(mine["step"], mine["reason"], mine["label"]), mine["n"]))
        cells = {k: fmt_n(counts.get(k)) for k in order}
        # The exclusions sum to received minus analysed: suppress them as one group.
        excluded = [k for k in order if k[0] == "excluded" and k in counts]
        cells.update(zip(excluded, group_cells([counts[k] for k in excluded],
                                               lambda i: fmt_n(counts[excluded[i]]))))
        out[a.site] = [cells[k] for k in order]
    return out


def descriptives_frame(analyses: list[SiteAnalysis], study: Study) -> pd.DataFrame:
    """Sample descriptives side by side, formatted for the report.

    Parameters
    ----------
    analyses : list of SiteAnalysis
        Their ``descriptives`` (``DESCRIPTIVE_COLUMNS``) and reliability rows are used.
    study : Study
        Labels, ``[descriptives]`` (the variables shown as M (SD) and per level), the
        criers variable, scores and reliability scores.

    Returns
    -------
    DataFrame
        ``Characteristic`` and one column per site: analysed N; M (SD) of each
        ``[descriptives] mean_sd`` variable; n (%) per level of each ``levels`` variable
        and of criers (counts 1-4 shown as ``<5`` with the percent hidden);
        M (SD) of every scored scale; Cronbach's alpha [95% CI] per reliability score.
    """
    if not analyses:
        return pd.DataFrame(columns=["Characteristic"])
    criers = str(study.section("analysis")["criers"])
    shown = study.section("descriptives")
    rows: list[tuple[str, dict[str, str]]] = []

    def add(label: str, by_site: dict[str, str]) -> None:
        rows.append((label, by_site))

    add("Analysed, N", {a.site: fmt_n(a.flow.analysed) for a in analyses})
    # Lookup tables of every site from one pass over all their descriptives: per site and
    # per cell, pandas filtering was most of this table's time at 125 sites.
    m_sd_of, level_of = _lookups(analyses)

    def m_sd(site: str, variable: str) -> str:
        hit = m_sd_of.get((site, variable))
        return "" if hit is None else f"{fmt(hit[0])} ({fmt(hit[1])})"

    def level_count(site: str, variable: str, level: str) -> tuple[float, float]:
        return level_of.get((site, variable, level), (np.nan, np.nan))

    for var in shown.get("mean_sd", ()):
        add(f"{variable_label(study, var)}, M (SD)", {a.site: m_sd(a.site, var) for a in analyses})
    for var in shown.get("levels", ()):
        # Levels of a variable sum to N: each site's levels are suppressed as one group.
        levels = list(study.variables.get(var, {}).get("levels", ()))
        level_cells = {}
        for a in analyses:
            pairs = [level_count(a.site, var, level) for level in levels]
            level_cells[a.site] = group_cells([c for c, _ in pairs],
                                              lambda i, pairs=pairs: count_cell(*pairs[i]))
        for i, level in enumerate(levels):
            add(f"{variable_label(study, var)}: {level}, n (%)",
                {code: cells[i] for code, cells in level_cells.items()})
    criers_cells = {}
    for a in analyses:
        pairs = [level_count(a.site, criers, v) for v in ("true", "false")]
        criers_cells[a.site] = group_cells([c for c, _ in pairs],
                                           lambda i, pairs=pairs: count_cell(*pairs[i]))[0]
    add(f"{variable_label(study, criers)}, n (%)", criers_cells)
    for label, by_site in _rates_by_level_rows(analyses, study, criers, level_count):
        add(label, by_site)
    for score, spec in study.scores.items():
        if spec.get("kind") == "not_equal":
            continue
        add(f"{spec.get('label', score)}, M (SD)", {a.site: m_sd(a.site, score) for a in analyses})
    alphas = {a.site: _alphas(a.results) for a in analyses}
    for score in study.section("reliability").get("scores", ()):
        cells = {}
        for a in analyses:
            r = alphas[a.site].get(score)
            if r is not None:
                cells[a.site] = (f"{fmt(r[0], leading_zero=False)} "
                                 f"{fmt_ci(r[1], r[2], leading_zero=False)}")
        add(f"Cronbach's \u03b1 [95% CI], {variable_label(study, score)}", cells)
    columns = {"Characteristic": [lab for lab, _ in rows]}
    columns.update({a.site: [cells.get(a.site, "") for _, cells in rows] for a in analyses})
    return pd.DataFrame(columns)


def _rates_by_level_rows(analyses: list[SiteAnalysis], study: Study, criers: str,
                         level_count: Callable[[str, str, str], tuple[float, float]]
                         ) -> list[tuple[str, dict[str, str]]]:
    """Crying rate, n (%), in each level of a contingency family's row variable that its
    test leaves out (the ``another`` gender group, "reported descriptively");
    ``level_count(site, variable, level)`` gives a descriptives row's (count, percent)."""
    out = []
    for fam in study.families:
        if fam.get("kind") != "contingency" or fam["column"] != criers:
            continue
        row_var = fam["row"]
        for level in study.variables.get(row_var, {}).get("levels", ()):
            if level in fam["row_levels"]:
                continue
            variable = f"{criers} ({row_var} = {level})"
            cells = {}
            for a in analyses:
                pairs = [level_count(a.site, variable, v) for v in ("true", "false")]
                cells[a.site] = group_cells([c for c, _ in pairs],
                                            lambda i, pairs=pairs: count_cell(*pairs[i]))[0]
            out.append((f"{variable_label(study, criers)} among "
                        f"{variable_label(study, row_var)}: {level} "
                        "(not in the A3 test), n (%)".replace("A3", fam["id"]), cells))
    return out


def _lookups(analyses: list[SiteAnalysis]
             ) -> tuple[dict[tuple[str, str], tuple[float, float]],
                        dict[tuple[str, str, str], tuple[float, float]]]:
    """Two lookups over every site's descriptives: (site, variable) -> (M, SD), from the
    ``all`` subset else the first row; (site, variable, level) -> (count, percent), first row."""
    d = pd.concat([a.descriptives.assign(site=a.site) for a in analyses], ignore_index=True)
    num = d[d["mean"].notna()]
    num = num.iloc[np.argsort((num["subset"] != "all").to_numpy(), kind="stable")]
    num = num.drop_duplicates(["site", "variable"])
    cat = d[d["count"].notna()]
    cat = cat.assign(variable=cat["variable"].astype(str), level=cat["level"].astype(str))
    cat = cat.drop_duplicates(["site", "variable", "level"])
    return (dict(zip(zip(num["site"], num["variable"]),
                     zip(num["mean"].astype(float), num["sd"].astype(float)))),
            dict(zip(zip(cat["site"], cat["variable"], cat["level"]),
                     zip(cat["count"].astype(float), cat["percent"].astype(float)))))


def _alphas(results: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """score -> (alpha, CI low, CI high) of a site's reliability rows, first row of each."""
    r = results[results["analysis"] == "reliability"].drop_duplicates("x")
    return dict(zip(r["x"], zip(r["estimate"], r["ci_low"], r["ci_high"])))


def site_effect_table(rows: pd.DataFrame, analysis: str, spearman: pd.DataFrame) -> pd.DataFrame:
    """Per-site rows of one effect, formatted for the table beside its forest plot."""
    lz = analysis not in BOUNDED
    scale = SCALE_NAMES.get(analysis, "estimate")
    out = pd.DataFrame({
        "Site": rows["site"].astype(str).to_numpy(),
        "n": [fmt_n(v) for v in rows["n"]],
        scale: [fmt(v, leading_zero=lz) for v in rows["estimate"]],
        "95% CI": [fmt_ci(a, b, leading_zero=lz) for a, b in zip(rows["ci_low"], rows["ci_high"])],
        "p": [fmt_p(v) for v in rows["p_value"]],
    })
    if analysis in ("correlation", "partial_correlation"):
        out["p (Holm)"] = [fmt_p(v) for v in rows["p_adjusted"]]
    if analysis == "correlation" and len(spearman):
        rho = dict(zip(spearman["site"].astype(str), spearman["estimate"]))
        out["Spearman \u03c1"] = [fmt(rho.get(s), leading_zero=False) for s in out["Site"]]
    if analysis == "t_test":
        out.insert(2, "t", [fmt(v) for v in rows["statistic"]])
        out.insert(3, "df", [fmt_df(v) for v in rows["df"]])
    if analysis == "chi_square":
        out.insert(2, "\u03c7\u00b2(1)", [fmt(v) for v in rows["statistic"]])
    return out


def with_test_used(table: pd.DataFrame, analysis: str, family_rows: pd.DataFrame,
                    x: str, y: str) -> pd.DataFrame:
    """A contingency table's per-site rows say which test applies and give its p: Fisher's
    exact test where an expected count is below 5 (a ``fisher_exact`` row exists), else
    the chi-square. Other analyses: unchanged."""
    if analysis != "chi_square" or not len(table):
        return table
    fisher = family_rows[(family_rows["analysis"] == "fisher_exact") & (family_rows["x"] == x)
                         & (family_rows["y"] == y)]
    fisher_p = dict(zip(fisher["site"].astype(str), fisher["p_value"]))
    chi_p = dict(zip(table["Site"], table["p"]))
    out = table.copy()
    out["Test"] = ["Fisher's exact (expected count < 5)" if s in fisher_p else "\u03c7\u00b2"
                   for s in out["Site"]]
    out["p (test used)"] = [fmt_p(fisher_p[s]) if s in fisher_p else chi_p[s] for s in out["Site"]]
    return out


def contingency_counts(parquet: bytes, study: Study) -> pd.DataFrame:
    """The 2x2 table of every contingency family at every site, from the stacked data.

    Parameters
    ----------
    parquet : bytes
        ``analysis_ready.parquet`` of the run (the sites' analysis-ready rows, ``site``).
    study : Study

    Returns
    -------
    DataFrame
        ``CONTINGENCY_COUNT_COLUMNS``: per family, site and row level (the two tested,
        in plan order) the counts with (``n_event``) and without the column event among
        rows where it is known; ``min_expected`` of the site's 2x2 and ``test_used``
        (``fisher_exact`` when it is below 5, else ``pearson_chi2``), as the analysis
        chose (lacrima.analysis._contingency).
    """
    fams = [f for f in study.families if f.get("kind") == "contingency"]
    if not fams:
        return pd.DataFrame(columns=list(CONTINGENCY_COUNT_COLUMNS))
    names = set(pq.ParquetFile(pa.BufferReader(parquet)).schema_arrow.names)
    cols = sorted({"site"} | {c for f in fams for c in (f["row"], f["column"])} & names)
    data = pq.read_table(pa.BufferReader(parquet), columns=cols).to_pandas()
    site_codes = sorted(data["site"].dropna().unique())
    rows = []
    for fam in fams:
        if fam["row"] not in data.columns or fam["column"] not in data.columns:
            continue
        event = data[fam["column"]].astype("boolean")
        known = event.notna()
        # (site, level, event) -> rows, counted once for every site
        counts = pd.DataFrame({"site": data["site"], "level": data[fam["row"]].astype("str"),
                               "event": event})[known].groupby(["site", "level", "event"]).size()
        counts = {key: int(n) for key, n in counts.items()}
        for site in site_codes:
            cells = [(lev, counts.get((site, str(lev), True), 0),
                      counts.get((site, str(lev), False), 0)) for lev in fam["row_levels"]]
            table = TwoByTwo.from_counts([[yes, no] for _, yes, no in cells])
            # the analysis's rule (lacrima.analysis._contingency); no row known: no test
            min_exp = float(table.expected().min()) if table.n else np.nan
            for lev, yes, no in cells:
                rows.append({"family": fam["id"], "site": str(site), "row": fam["row"],
                             "row_level": lev, "column": fam["column"], "n_event": yes,
                             "n_no_event": no, "n": yes + no, "min_expected": min_exp,
                             "test_used": "fisher_exact" if min_exp < 5 else "pearson_chi2"})
    return pd.DataFrame(rows, columns=list(CONTINGENCY_COUNT_COLUMNS))


def heterogeneity_frame(comparison: Comparison, study: Study, sites: list[Site]) -> pd.DataFrame:
    """``heterogeneity.csv``: :func:`lacrima.pooling.heterogeneity` of the run's per-site rows,
    with each site's role (original / replication) for the moderator test."""
    per_site = comparison.results[comparison.results["site"] != POOLED]
    return heterogeneity(per_site, study, {s.code: s.role for s in sites})


def replication_frame(rep: pd.DataFrame, countries: Mapping[str, str]) -> pd.DataFrame:
    """An effect's rows of ``replication.csv`` formatted for its section of the report: one
    row per pair of sides, a site named with its country, a pooled side with its k."""
    if rep is None or not len(rep):
        return pd.DataFrame()

    def side(code, k, role):
        if code == POOLED:
            return side_name(str(code), k, role)
        return f"{code} ({countries.get(code, code)})"

    yes = lambda v: "yes" if v else "no"  # noqa: E731
    return pd.DataFrame({
        "Replication": [side(c, k, "replication")
                        for c, k in zip(rep["replication_site"], rep["k_replication"])],
        "Original": [side(c, k, "original")
                     for c, k in zip(rep["original_site"], rep["k_original"])],
        "r original (n)": [f"{fmt(r, leading_zero=False)} ({fmt_n(n)})"
                           for r, n in zip(rep["r_original"], rep["n_original"])],
        "p original": [fmt_p(v) for v in rep["p_original"]],
        "r replication (n)": [f"{fmt(r, leading_zero=False)} ({fmt_n(n)})"
                              for r, n in zip(rep["r_replication"], rep["n_replication"])],
        "p replication": [fmt_p(v) for v in rep["p_replication"]],
        "p (Holm)": [fmt_p(v) for v in rep["p_replication_holm"]],
        "95% PI": [fmt_ci(a, b, leading_zero=False) for a, b in zip(rep["pi_low"], rep["pi_high"])],
        "In PI": [yes(v) for v in rep["in_pi"]],
        "Same direction": [yes(v) for v in rep["same_direction"]],
        "Larger, same direction": [yes(v) for v in rep["larger_same_direction"]],
        "p difference": [fmt_p(v) for v in rep["p_difference"]],
        "r33": [fmt(v, leading_zero=False) for v in rep["r33"]],
        "p small telescope": [fmt_p(v) for v in rep["p_small_telescope"]],
        "p sceptical": [fmt_p(v) for v in rep["p_sceptical"]],
        "Verdict": rep["verdict"].astype(str).to_numpy(),
    })
