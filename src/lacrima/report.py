"""Run outputs: tidy CSVs, exports, provenance, manifest and the self-contained HTML reports.

A run writes ``reports/<run_id>/`` and copies it to ``reports/latest/``:

- ``report.html``: the comparison report (verdicts, flow, descriptives, one forest plot per
  pooled effect, methods, provenance), with inline CSS and inline SVG, no network;
- ``site-<code>.html``: one page per site (its flow, descriptives and every analysis);
- ``results.csv``, ``replication.csv``, ``heterogeneity.csv`` (one row per pooled effect,
  :func:`lacrima.pooling.heterogeneity`), ``participant_flow.csv``, ``descriptives.csv``,
  ``provenance.json``; ``data/<site>.csv`` and ``data/<site>.sav``; ``analysis_ready.parquet``;
- ``manifest.json``: every file of this run with its size and SHA-256.

Storage never deletes, so ``reports/latest/`` may still hold a file an older run wrote and
this one did not (a site that has since left, say). The manifest is the run's own list: the
pages link only to files in it, and a reader of ``latest/`` trusts the manifest, not a
listing of the folder. Every link is relative, so the folder opens where it is copied.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Iterable, Mapping

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from lacrima.pipeline import Comparison, SiteAnalysis, to_csv_bytes
from lacrima.offload import Offload
from lacrima.plots import ORIGINAL_MARK, forest_svg, site_style
from lacrima.privacy import MIN_CELL, suppress_small
from lacrima.storage import Storage
from lacrima.study import Site, Study
from lacrima.vocabulary import COVARIATE_SEPARATOR, POOLED, RESULTS_COLUMNS

MINUS = "\u2212"
MANIFEST = "manifest.json"
REPORT = "report.html"

# Per-site method of each pooled analysis (lacrima.analysis conventions) and how it is shown.
_MAIN_METHOD = {"correlation": "pearson", "partial_correlation": "pearson_partial",
                "t_test": "hedges_g", "chi_square": "odds_ratio"}
_SCALE = {"correlation": "Pearson r", "partial_correlation": "partial r",
          "t_test": "Hedges' g", "chi_square": "odds ratio"}
# Quantities bounded by 1 lose their leading zero in APA style (r, alpha, p); others keep it.
_BOUNDED = {"correlation", "partial_correlation", "spearman"}
_FIXED_METHOD = "FE"
# Per-site tests shown beside a pooled effect (lacrima.analysis conventions): the name
# readers know, and whether the estimate is bounded by 1 (no leading zero in APA style).
_ROBUST = {"welch": ("Welch t (mean difference)", False),
           "mann_whitney_u": ("Mann-Whitney U (rank-biserial r)", True),
           "pearson_chi2": ("\u03c7\u00b2 (Cram\u00e9r's V)", True),
           "fisher_exact": ("Fisher's exact test (odds ratio)", False)}


@dataclass(frozen=True)
class RunOutputs:
    """Where a run's outputs went.

    ``files`` are the run-relative names of every file written (the manifest's list);
    ``site_pages`` maps a site code to its page's run-relative name.
    """

    run_id: str
    prefix: str            # storage key prefix of the run's folder
    report_key: str
    location: str          # human location of report.html (a path or s3:// URL)
    files: tuple[str, ...] = ()
    site_pages: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Number formatting (APA 7th edition, section 6.36: decimals; 6.44: leading zeros)
# ---------------------------------------------------------------------------

def _missing(x) -> bool:
    if x is None:
        return True
    if isinstance(x, (float, int)) and not isinstance(x, bool):
        return not math.isfinite(x)          # fast path: numpy floats are floats too
    try:
        return bool(pd.isna(x)) or not np.isfinite(float(x))
    except (TypeError, ValueError):
        return True


def fmt(x, digits: int = 2, leading_zero: bool = True) -> str:
    """APA-style number: fixed decimals, typographic minus, blank for missing.

    Parameters
    ----------
    x : float or None
    digits : int
        Decimal places.
    leading_zero : bool
        False for quantities that cannot exceed 1 in absolute value (r, alpha, p), which
        APA writes without the zero before the decimal point (.35, not 0.35).

    Returns
    -------
    str

    Examples
    --------
    >>> fmt(0.3456), fmt(-0.3456, leading_zero=False), fmt(float("nan"))
    ('0.35', '−.35', '')
    """
    if _missing(x):
        return ""
    text = f"{float(x):.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]          # no "-0.00"
    if not leading_zero:
        text = re.sub(r"^(-?)0\.", r"\1.", text)
    return text.replace("-", MINUS)


def fmt_p(p) -> str:
    """APA p value: three decimals without leading zero, ``< .001`` below.

    Examples
    --------
    >>> fmt_p(0.0004), fmt_p(0.04321), fmt_p(1.0)
    ('< .001', '.043', '1.000')
    """
    if _missing(p):
        return ""
    return "< .001" if p < 0.001 else fmt(p, 3, leading_zero=False)


def p_text(p) -> str:
    """``p = .043`` or ``p < .001`` (APA), blank for missing."""
    text = fmt_p(p)
    return "" if not text else (f"p {text}" if text.startswith("<") else f"p = {text}")


def fmt_ci(low, high, digits: int = 2, leading_zero: bool = True) -> str:
    """``[low, high]`` in APA style; blank when either end is missing."""
    if _missing(low) or _missing(high):
        return ""
    return f"[{fmt(low, digits, leading_zero)}, {fmt(high, digits, leading_zero)}]"


def fmt_df(df) -> str:
    """Degrees of freedom: whole numbers without decimals, Welch-type df with one."""
    if _missing(df):
        return ""
    return str(int(round(df))) if abs(df - round(df)) < 1e-9 else fmt(df, 1)


SECONDARY_MARK = "(s)"


def hidden_cells(counts: list[float]) -> list[bool]:
    """Which counts of one group to hide so that no count from 1 to 4 can be worked out.

    Parameters
    ----------
    counts : list of float
        The counts of one group whose total is shown elsewhere (exclusion reasons of a
        site, whose sum is received minus analysed; gender levels, which sum to N).

    Returns
    -------
    list of bool
        True for primary cells (1 to ``MIN_CELL - 1``) and, when exactly one cell is
        primary, for the smallest other cell too: a single hidden cell is the total
        minus the shown ones (complementary suppression, Hundepool et al. 2012,
        *Statistical Disclosure Control*, section 7.2).

    Examples
    --------
    >>> hidden_cells([0, 0, 0, 1, 0])
    [True, False, False, True, False]
    >>> hidden_cells([12, 3, 2])
    [False, True, True]
    """
    hide = [not _missing(c) and 0 < c < MIN_CELL for c in counts]
    if sum(hide) == 1 and len(counts) > 1:
        rest = [i for i, h in enumerate(hide) if not h and not _missing(counts[i])]
        if rest:
            hide[min(rest, key=lambda i: counts[i])] = True
    return hide


def _group_cells(counts: list[float], show) -> list[str]:
    """Display cells of one group: ``show(i)`` for shown cells, ``<5`` for primary and
    ``(s)`` for complementary suppression."""
    return [("" if _missing(c) else f"<{MIN_CELL}" if 0 < c < MIN_CELL else SECONDARY_MARK)
            if hidden else show(i)
            for i, (c, hidden) in enumerate(zip(counts, hidden_cells(counts)))]


def fmt_n(n) -> str:
    """A count for display, suppressed below the small-cell limit (protocol section 8)."""
    return suppress_small(n) if not _missing(n) else ""


# ---------------------------------------------------------------------------
# Labels and effect keys
# ---------------------------------------------------------------------------

def _label(study: Study, name: str) -> str:
    if name in study.variables:
        return str(study.variables[name].get("label", name))
    if name in study.scores:
        return str(study.scores[name].get("label", name))
    return name


def _cov_label(study: Study, covariates: str) -> str:
    return ", ".join(_label(study, c) for c in covariates.split(COVARIATE_SEPARATOR) if c)


def effect_label(study: Study, x: str, y: str, covariates: str = "") -> str:
    """Readable name of an effect from the plan's variable and score labels.

    Examples
    --------
    >>> from lacrima.study import load_study
    >>> effect_label(load_study(), "after_happy", "change")
    'After crying: happy × Client-reported change (CTSCM-R)'
    """
    text = f"{_label(study, x)} \u00d7 {_label(study, y)}"
    return text + (f" | controlling for {_cov_label(study, covariates)}" if covariates else "")


def effect_anchor(family: str, x: str, y: str, covariates: str = "") -> str:
    """HTML id of an effect's figure: lowercase letters, digits and dashes."""
    raw = "-".join(p for p in ("effect", family, x, y, covariates) if p)
    return re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")


def _key(frame: pd.DataFrame) -> pd.Series:
    cov = frame["covariates"].fillna("").astype(str) if "covariates" in frame else ""
    return frame["family"].astype(str) + "|" + frame["x"].astype(str) + "|" + \
        frame["y"].astype(str) + "|" + cov


def _base(method) -> str:
    return str(method).split(";")[0].strip() if isinstance(method, str) else ""


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
        The random-effects rows, in the table's order, with ``covariates`` blank-filled.
        :func:`verdict_table` puts them in the plan's order.
    """
    pooled = results[(results["site"] == POOLED) & (results["analysis"] == "meta_analysis")
                     & (results["method"].astype(str) != _FIXED_METHOD)].copy()
    pooled["covariates"] = pooled["covariates"].fillna("").astype(str)
    return pooled.reset_index(drop=True)


def _roles(study: Study, sites: Iterable[Site]) -> tuple[Site | None, list[Site]]:
    cfg = study.section("replication")
    sites = list(sites)
    reps = [s for s in sites if s.role == cfg.get("replication_site_role", "replication")]
    origs = [s for s in sites if s.role == cfg.get("original_site_role", "original")]
    return (reps[0] if len(reps) == 1 else None), sorted(origs, key=lambda s: s.code)


def verdict_table(comparison: Comparison, study: Study, sites: Iterable[Site]) -> pd.DataFrame:
    """One row per pooled effect: pooled estimate, replication estimate and verdicts.

    Parameters
    ----------
    comparison : Comparison
        Results (per site and pooled) and the replication table.
    study : Study
    sites : iterable of Site
        Their roles name the replication site and the originals.

    Returns
    -------
    DataFrame
        Columns ``family, x, y, covariates, anchor, label, x_label, y_label, cov_label,
        scale, k, pooled, i2, replication`` and one ``verdict_<original code>`` per original
        site. ``pooled`` is
        the formatted random-effects estimate with its interval, ``replication`` the
        replication site's estimate; verdicts are blank for effects outside
        ``[replication] families`` (A2, A3 are pooled, not assessed).
    """
    rep_site, origs = _roles(study, sites)
    pooled = pooled_effects(comparison.results)
    per_site = comparison.results[comparison.results["site"] != POOLED]
    rep_rows = {}
    if rep_site is not None:
        mine = per_site[(per_site["site"] == rep_site.code)
                        & (per_site["method"].isin(_MAIN_METHOD.values()))]
        rep_rows = dict(zip(_key(mine), mine["estimate"]))
    verdicts: dict[tuple[str, str], str] = {}
    replication = comparison.replication
    if replication is not None and len(replication):
        rk = (replication["effect"].astype(str) + "|" + replication["x"].astype(str) + "|"
              + replication["y"].astype(str) + "|"
              + replication["covariates"].fillna("").astype(str))
        for k, o, v in zip(rk, replication["original_site"], replication["verdict"]):
            verdicts[(k, o)] = str(v)
    # The plan's order (families, then x, y and covariate sets as listed), which is the
    # order the per-site analysis writes its rows in; the pooled table is sorted by name.
    main = per_site[per_site["method"].map(_base).isin(_MAIN_METHOD.values())]
    plan_order = {k: i for i, k in enumerate(dict.fromkeys(_key(main)))}
    pooled = pooled.assign(_order=_key(pooled).map(plan_order).fillna(len(plan_order)))
    pooled = pooled.sort_values("_order", kind="stable").reset_index(drop=True)
    rows = []
    for key, (_, r) in zip(_key(pooled), pooled.iterrows()):
        analysis = _analysis_of(per_site, r)
        lz = analysis not in _BOUNDED
        row = {"family": r["family"], "x": r["x"], "y": r["y"], "covariates": r["covariates"],
               "anchor": effect_anchor(r["family"], r["x"], r["y"], r["covariates"]),
               "label": effect_label(study, r["x"], r["y"], r["covariates"]),
               "x_label": _label(study, r["x"]), "y_label": _label(study, r["y"]),
               "cov_label": _cov_label(study, r["covariates"]),
               "scale": _SCALE.get(analysis, "estimate"),
               "k": int(r["k"]) if pd.notna(r["k"]) else 0,
               "pooled": f"{fmt(r['estimate'], leading_zero=lz)} "
                         f"{fmt_ci(r['ci_low'], r['ci_high'], leading_zero=lz)}",
               "i2": fmt(r["i2"], 0) + ("%" if pd.notna(r["i2"]) else ""),
               "replication": fmt(rep_rows.get(key), leading_zero=lz)}
        for o in origs:
            row[f"verdict_{o.code}"] = verdicts.get((key, o.code), "")
        rows.append(row)
    columns = ["family", "x", "y", "covariates", "anchor", "label", "x_label", "y_label",
               "cov_label", "scale", "k", "pooled", "i2",
               "replication", *[f"verdict_{o.code}" for o in origs]]
    return pd.DataFrame(rows, columns=columns)


def _analysis_of(per_site: pd.DataFrame, pooled_row: pd.Series) -> str:
    """The per-site analysis a pooled row pools (its family's kind decides)."""
    m = per_site[(per_site["family"] == pooled_row["family"]) & (per_site["x"] == pooled_row["x"])
                 & (per_site["y"] == pooled_row["y"])
                 & per_site["method"].isin(_MAIN_METHOD.values())]
    return str(m["analysis"].iloc[0]) if len(m) else ""


def verdict_markdown(replication: pd.DataFrame, study: Study | None = None) -> str:
    """The verdict summary as Markdown (for the Prefect UI's markdown artifact).

    Parameters
    ----------
    replication : DataFrame
        ``vocabulary.REPLICATION_COLUMNS`` rows.
    study : Study, optional
        When given, effects are named by the plan's labels; otherwise by variable names.

    Returns
    -------
    str
        A count of verdicts per original site, then one table row per effect with the
        verdict against each original site.

    Examples
    --------
    >>> rep = pd.DataFrame({"effect": ["H2"], "x": ["a"], "y": ["b"], "covariates": [""],
    ...                     "original_site": ["it"], "replication_site": ["us"],
    ...                     "verdict": ["replicated"]})
    >>> print(verdict_markdown(rep))  # doctest: +NORMALIZE_WHITESPACE
    ## Replication verdicts (us against it)
    <BLANKLINE>
    - **us vs it**: 1 replicated
    <BLANKLINE>
    | Family | Effect | us vs it |
    |---|---|---|
    | H2 | a × b | replicated |
    """
    if replication is None or replication.empty:
        return "## Replication verdicts\n\nNo replication assessment in this run.\n"
    originals = list(dict.fromkeys(replication["original_site"].astype(str)))
    rep = ", ".join(dict.fromkeys(replication["replication_site"].astype(str)))
    lines = [f"## Replication verdicts ({rep} against {', '.join(originals)})", ""]
    for o in originals:
        counts = replication.loc[replication["original_site"] == o, "verdict"].value_counts()
        text = ", ".join(f"{n} {v}" for v, n in counts.items())
        lines.append(f"- **{rep} vs {o}**: {text}")
    lines += ["", "| Family | Effect | " + " | ".join(f"{rep} vs {o}" for o in originals) + " |",
              "|---|---|" + "---|" * len(originals)]
    cov = replication["covariates"].fillna("").astype(str)
    for (fam, x, y, c), grp in replication.groupby([replication["effect"], replication["x"],
                                                    replication["y"], cov], sort=False):
        name = (effect_label(study, x, y, c) if study is not None
                else f"{x} \u00d7 {y}" + (f" | {c}" if c else ""))
        verdicts = dict(zip(grp["original_site"].astype(str), grp["verdict"].astype(str)))
        cells = " | ".join(verdicts.get(o, "") for o in originals)
        lines.append(f"| {fam} | {name.replace('|', '/')} | {cells} |")
    return "\n".join(lines) + "\n"


def run_markdown(summary: Mapping[str, Any], replication_md: str) -> str:
    """The Prefect UI's run summary: the run's counts, then the verdict Markdown.

    Parameters
    ----------
    summary : mapping
        ``pipeline.summarise`` of the run (run_id, accepted, quarantined, report ...).
    replication_md : str
        :func:`verdict_markdown` of the run's replication table.

    Returns
    -------
    str
    """
    head = [f"# lacrima run {summary.get('run_id', '')}", "",
            f"- drops accepted: {summary.get('accepted', 0)}, quarantined: "
            f"{summary.get('quarantined', 0)}, skipped as duplicates: "
            f"{summary.get('skipped_duplicates', 0)}",
            f"- sites analysed: {', '.join(summary.get('sites_analysed', [])) or 'none'}"]
    if summary.get("report"):
        head.append(f"- report: `{summary['report']}`")
    return "\n".join(head) + "\n\n" + replication_md


def report_link(location: str) -> str:
    """A URL for a report location: URLs (``s3://``, ``https://``) kept, a path as ``file://``."""
    from pathlib import Path

    if re.match(r"^[a-z][a-z0-9+.-]*://", location):
        return location
    return Path(location).resolve().as_uri()


def artifact_key(text: str) -> str:
    """``text`` in Prefect's artifact-key form: lowercase letters, digits and dashes.

    Examples
    --------
    >>> artifact_key("Lacrima Verdicts_us")
    'lacrima-verdicts-us'
    """
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not key:
        raise ValueError(f"{text!r} has no letter or digit to make an artifact key from")
    return key


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
    """An HTML table; cell text is escaped, the first ``first_left`` columns align left."""
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
    return Markup(f"<table>{cap}<thead><tr>{head}</tr></thead>"
                  f"<tbody>{''.join(body)}</tbody></table>")


def _missing_cell(v) -> bool:
    return v is None or (not isinstance(v, str) and pd.isna(v))


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
    out = pd.DataFrame({"Step": [lab for _, _, lab in order]})
    for a in analyses:
        mine = a.flow.to_frame()
        counts = dict(zip(zip(mine["step"], mine["reason"], mine["label"]), mine["n"]))
        cells = {k: fmt_n(counts.get(k)) for k in order}
        # The exclusions sum to received minus analysed: suppress them as one group.
        excluded = [k for k in order if k[0] == "excluded" and k in counts]
        cells.update(zip(excluded, _group_cells([counts[k] for k in excluded],
                                                lambda i: fmt_n(counts[excluded[i]]))))
        out[a.site] = [cells[k] for k in order]
    return out


def _count_cell(count: float, percent: float) -> str:
    """``n (%)``; below the small-cell limit the count shows as ``<5`` and the percent is hidden."""
    if _missing(count):
        return ""
    if 0 < count < MIN_CELL:
        return f"<{MIN_CELL}"
    return f"{int(count)} ({fmt(percent, 1)}%)"


def descriptives_frame(analyses: list[SiteAnalysis], study: Study) -> pd.DataFrame:
    """Sample descriptives side by side, formatted for the report.

    Parameters
    ----------
    analyses : list of SiteAnalysis
        Their ``descriptives`` (``DESCRIPTIVE_COLUMNS``) and reliability rows are used.
    study : Study
        Labels, gender levels, the criers variable, scores and reliability scores.

    Returns
    -------
    DataFrame
        ``Characteristic`` and one column per site: analysed N; age M (SD); n (%) per
        gender level and of criers (counts 1-4 shown as ``<5`` with the percent hidden);
        M (SD) of every scored scale; Cronbach's alpha [95% CI] per reliability score.
    """
    if not analyses:
        return pd.DataFrame(columns=["Characteristic"])
    criers = str(study.section("analysis").get("criers", "cried_in_therapy"))
    gender_levels = list(study.variables.get("gender", {}).get("levels", ()))
    rows: list[tuple[str, dict[str, str]]] = []

    def add(label: str, by_site: dict[str, str]) -> None:
        rows.append((label, by_site))

    add("Analysed, N", {a.site: fmt_n(a.flow.analysed) for a in analyses})
    # One lookup table per site, built once: at 125 sites, filtering the descriptives per
    # cell was a quarter of the report's time.
    m_sd_of = {a.site: _means(a.descriptives) for a in analyses}
    level_of = {a.site: _levels(a.descriptives) for a in analyses}

    def m_sd(site: str, variable: str) -> str:
        hit = m_sd_of[site].get(variable)
        return "" if hit is None else f"{fmt(hit[0])} ({fmt(hit[1])})"

    def level_count(site: str, variable: str, level: str) -> tuple[float, float]:
        return level_of[site].get((variable, level), (np.nan, np.nan))

    add(f"{_label(study, 'age')}, M (SD)", {a.site: m_sd(a.site, "age") for a in analyses})
    # Levels of a variable sum to N: each site's levels are suppressed as one group.
    gender_cells = {}
    for a in analyses:
        pairs = [level_count(a.site, "gender", level) for level in gender_levels]
        gender_cells[a.site] = _group_cells([c for c, _ in pairs],
                                            lambda i, pairs=pairs: _count_cell(*pairs[i]))
    for i, level in enumerate(gender_levels):
        add(f"{_label(study, 'gender')}: {level}, n (%)",
            {code: cells[i] for code, cells in gender_cells.items()})
    criers_cells = {}
    for a in analyses:
        pairs = [level_count(a.site, criers, v) for v in ("true", "false")]
        criers_cells[a.site] = _group_cells([c for c, _ in pairs],
                                            lambda i, pairs=pairs: _count_cell(*pairs[i]))[0]
    add(f"{_label(study, criers)}, n (%)", criers_cells)
    for label, by_site in _rates_by_level_rows(analyses, study, criers):
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
        add(f"Cronbach's \u03b1 [95% CI], {_label(study, score)}", cells)
    columns = {"Characteristic": [lab for lab, _ in rows]}
    columns.update({a.site: [cells.get(a.site, "") for _, cells in rows] for a in analyses})
    return pd.DataFrame(columns)


def _rates_by_level_rows(analyses: list[SiteAnalysis], study: Study,
                         criers: str) -> list[tuple[str, dict[str, str]]]:
    """Crying rate, n (%), in each level of a contingency family's row variable that its
    test leaves out (the ``another`` gender group, "reported descriptively")."""
    out = []
    for fam in study.families:
        if fam.get("kind") != "contingency" or fam["column"] != criers:
            continue
        row_var = fam["row"]
        for level in study.variables.get(row_var, {}).get("levels", ()):
            if level in fam["row_levels"]:
                continue
            cells = {}
            for a in analyses:
                d = a.descriptives
                hit = d[d["variable"] == f"{criers} ({row_var} = {level})"]
                pairs = [tuple(hit.loc[hit["level"] == v, ["count", "percent"]].astype(float)
                               .iloc[0]) if (hit["level"] == v).any() else (np.nan, np.nan)
                         for v in ("true", "false")]
                cells[a.site] = _group_cells([c for c, _ in pairs],
                                             lambda i, pairs=pairs: _count_cell(*pairs[i]))[0]
            out.append((f"{_label(study, criers)} among {_label(study, row_var)}: {level} "
                        "(not in the A3 test), n (%)".replace("A3", fam["id"]), cells))
    return out


def _means(d: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """variable -> (M, SD) of a site's descriptives: the ``all`` subset, else the first row."""
    num = d[d["mean"].notna()]
    num = num.iloc[np.argsort((num["subset"] != "all").to_numpy(), kind="stable")]
    num = num.drop_duplicates("variable")
    return dict(zip(num["variable"], zip(num["mean"].astype(float), num["sd"].astype(float))))


def _levels(d: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float]]:
    """(variable, level) -> (count, percent) of a site's descriptives, first row of each."""
    cat = d[d["count"].notna()]
    keys = list(zip(cat["variable"].astype(str), cat["level"].astype(str)))
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for key, c, p in zip(keys, cat["count"].astype(float), cat["percent"].astype(float)):
        out.setdefault(key, (c, p))
    return out


def _alphas(results: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """score -> (alpha, CI low, CI high) of a site's reliability rows, first row of each."""
    r = results[results["analysis"] == "reliability"].drop_duplicates("x")
    return dict(zip(r["x"], zip(r["estimate"], r["ci_low"], r["ci_high"])))


def _site_table(rows: pd.DataFrame, analysis: str, spearman: pd.DataFrame) -> pd.DataFrame:
    """Per-site rows of one effect, formatted for the table beside its forest plot."""
    lz = analysis not in _BOUNDED
    scale = _SCALE.get(analysis, "estimate")
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


def _with_test_used(table: pd.DataFrame, analysis: str, family_rows: pd.DataFrame,
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


def _fe_scale(fixed: pd.Series, back, column: str) -> float:
    """A fixed-effect limit of a results.csv row back on the pooling scale (where the
    random-effects detail lives), by inverting ``back``."""
    inverse = {np.tanh: np.arctanh, np.exp: np.log}.get(back)
    value = float(fixed[column])
    return float(inverse(value)) if inverse is not None else value


def _pooled_lines(detail: pd.Series | None, fixed: pd.Series | None, ipd: pd.DataFrame,
                  analysis: str, back) -> list[str]:
    """Heterogeneity and IPD sentences for one effect."""
    lz = analysis not in _BOUNDED
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
                                        "fe_ci_low": _fe_scale(fixed, back, "ci_low"),
                                        "fe_ci_high": _fe_scale(fixed, back, "ci_high")})]))
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


# Exact 2x2 counts per site of every contingency family (A3). Not shareable (cells of 1-4
# are not suppressed), so it sits with the row-level data under data/.
CONTINGENCY_COUNTS = "data/restricted_contingency_2x2_counts_by_site.csv"
CONTINGENCY_COUNT_COLUMNS = ("family", "site", "row", "row_level", "column", "n_event",
                             "n_no_event", "n", "min_expected", "test_used")


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
    import pyarrow.parquet as pq

    fams = [f for f in study.families if f.get("kind") == "contingency"]
    if not fams:
        return pd.DataFrame(columns=list(CONTINGENCY_COUNT_COLUMNS))
    names = set(pq.ParquetFile(pa_buffer(parquet)).schema_arrow.names)
    cols = sorted({"site"} | {c for f in fams for c in (f["row"], f["column"])} & names)
    data = pq.read_table(pa_buffer(parquet), columns=cols).to_pandas()
    rows = []
    for fam in fams:
        if fam["row"] not in data.columns or fam["column"] not in data.columns:
            continue
        event = data[fam["column"]].astype("boolean")
        level = data[fam["row"]].astype("str")
        for site, idx in data.groupby("site", sort=True).groups.items():
            cells = []
            for lev in fam["row_levels"]:
                mask = (level.loc[idx] == str(lev)).fillna(False) & event.loc[idx].notna()
                yes = int((mask & event.loc[idx].fillna(False)).sum())
                cells.append((lev, yes, int(mask.sum()) - yes))
            table = np.array([[c[1], c[2]] for c in cells], dtype=float)
            total = table.sum()
            expected = (np.outer(table.sum(axis=1), table.sum(axis=0)) / total
                        if total else np.full((2, 2), np.nan))
            min_exp = float(np.nanmin(expected)) if total else np.nan
            for lev, yes, no in cells:
                rows.append({"family": fam["id"], "site": str(site), "row": fam["row"],
                             "row_level": lev, "column": fam["column"], "n_event": yes,
                             "n_no_event": no, "n": yes + no, "min_expected": min_exp,
                             "test_used": "fisher_exact" if min_exp < 5 else "pearson_chi2"})
    return pd.DataFrame(rows, columns=list(CONTINGENCY_COUNT_COLUMNS))


def pa_buffer(data: bytes):
    """Bytes as a file pyarrow reads without a copy."""
    import pyarrow as pa

    return pa.BufferReader(data)


def heterogeneity_frame(comparison: Comparison, study: Study, sites: list[Site]) -> pd.DataFrame:
    """``heterogeneity.csv``: :func:`lacrima.pooling.heterogeneity` of the run's per-site rows,
    with each site's role (original / replication) for the moderator test."""
    from lacrima.pooling import heterogeneity

    per_site = comparison.results[comparison.results["site"] != POOLED]
    return heterogeneity(per_site, study, {s.code: s.role for s in sites})


def _interval_warnings(detail: pd.Series | None) -> list[str]:
    """Plain warnings about a pooled effect's intervals (issue 16: small-k pooling)."""
    if detail is None or not detail.get("k") or detail["k"] < 2:
        return []
    out = []
    width_re = detail["ci_high"] - detail["ci_low"]
    width_fe = detail["fe_ci_high"] - detail["fe_ci_low"] if "fe_ci_high" in detail else np.nan
    if np.isfinite(width_fe) and width_re < width_fe:
        out.append("Warning: the random-effects CI is narrower than the fixed-effect CI "
                   "(untruncated Knapp-Hartung with few sites); read the wider one.")
    if detail["k"] <= 3:
        out.append(f"With k = {int(detail['k'])} sites, \u03c4\u00b2 (and I\u00b2, the "
                   "prediction interval) is uninformative: it cannot distinguish no "
                   "heterogeneity from a lot.")
    return out


def _replication_frame(rep: pd.DataFrame, countries: Mapping[str, str]) -> pd.DataFrame:
    if rep is None or not len(rep):
        return pd.DataFrame()
    return pd.DataFrame({
        "Original": [f"{o} ({countries.get(o, o)})" for o in rep["original_site"]],
        "r original (n)": [f"{fmt(r, leading_zero=False)} ({fmt_n(n)})"
                           for r, n in zip(rep["r_original"], rep["n_original"])],
        "r replication (n)": [f"{fmt(r, leading_zero=False)} ({fmt_n(n)})"
                              for r, n in zip(rep["r_replication"], rep["n_replication"])],
        "95% PI": [fmt_ci(a, b, leading_zero=False) for a, b in zip(rep["pi_low"], rep["pi_high"])],
        "In PI": ["yes" if v else "no" for v in rep["in_pi"]],
        "Same direction": ["yes" if v else "no" for v in rep["same_direction"]],
        "p difference": [fmt_p(v) for v in rep["p_difference"]],
        "r33": [fmt(v, leading_zero=False) for v in rep["r33"]],
        "p small telescope": [fmt_p(v) for v in rep["p_small_telescope"]],
        "p sceptical": [fmt_p(v) for v in rep["p_sceptical"]],
        "Verdict": rep["verdict"].astype(str).to_numpy(),
    })


def _families(comparison: Comparison, study: Study, sites: list[Site],
              styles: dict[str, tuple[str, str]], work: Offload) -> list[dict[str, Any]]:
    """Every family with its effects: forest plot, per-site table, heterogeneity, replication.

    Plots are submitted to ``work``: an effect's ``svg`` and a family's ``plots`` hold
    handles until :func:`_with_plots` puts the drawn SVGs in.
    """
    from lacrima.pooling import pool_details

    results = comparison.results
    per_site = results[results["site"] != POOLED].copy()
    per_site["covariates"] = per_site["covariates"].fillna("").astype(str)
    per_site["base"] = per_site["method"].map(_base)
    pooled = results[results["site"] == POOLED].copy()
    pooled["covariates"] = pooled["covariates"].fillna("").astype(str)
    details = comparison.details
    if details is None:
        details = pool_details(per_site.drop(columns=["base"]), study)
    details = details.copy()
    if len(details):
        details["covariates"] = details["covariates"].fillna("").astype(str)
    details_by_key = {(r["family"], r["x"], r["y"], r["covariates"], r["model"]): r
                      for _, r in details.iterrows()}
    backs = {"fisher_z": np.tanh, "identity": lambda v: v, "log": np.exp}
    originals = {s.code for s in sites if s.role == study.section("replication").get(
        "original_site_role", "original")}
    countries = {s.code: s.country for s in sites}
    replication = comparison.replication
    if replication is not None and len(replication):
        replication = replication.copy()
        replication["covariates"] = replication["covariates"].fillna("").astype(str)
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
        main = rows[rows["base"].isin(_MAIN_METHOD.values())]
        for (x, y, cov), grp in main.groupby(["x", "y", "covariates"], sort=False):
            analysis = str(grp["analysis"].iloc[0])
            eff_pooled = pooled_by_effect.get((fid, x, y, cov), empty_pooled)
            meta = eff_pooled[eff_pooled["analysis"] == "meta_analysis"]
            re_row = meta[meta["method"].astype(str) != _FIXED_METHOD]
            fe_row = meta[meta["method"].astype(str) == _FIXED_METHOD]
            prow = re_row.iloc[0] if len(re_row) else None
            detail = details_by_key.get((fid, x, y, cov, "random"))
            scale = detail["scale"] if detail is not None else "identity"
            title = effect_label(study, x, y, cov)
            anchor = effect_anchor(fid, x, y, cov)
            svg = work.submit(forest_svg, grp[["site", "estimate", "ci_low", "ci_high", "n"]], prow,
                             title if len(title) < 90 else title[:87] + "...",
                             _SCALE.get(analysis, "estimate"), styles, originals,
                             null=1.0 if analysis == "chi_square" else 0.0,
                             log_scale=analysis == "chi_square", salt=anchor)
            spearman = rows[(rows["analysis"] == "spearman") & (rows["x"] == x) & (rows["y"] == y)]
            ipd = eff_pooled[eff_pooled["analysis"].isin(["ipd_interaction", "mixed_model"])]
            lines = _pooled_lines(detail if prow is not None else None,
                                  fe_row.iloc[0] if len(fe_row) else None, ipd, analysis,
                                  backs.get(scale, lambda v: v))
            rep = pd.DataFrame()
            if replication is not None and len(replication):
                rep = rep_by_effect.get((fid, x, y, cov), empty_rep)
            rep_frame = _replication_frame(rep, countries)
            effects.append({
                "anchor": anchor, "title": title, "svg": svg,
                "family": fid, "x": x, "y": y, "covariates": cov,
                "pooled": prow is not None,
                "table": _html_table(_with_test_used(_site_table(grp, analysis, spearman),
                                                     analysis, rows, x, y)),
                "lines": lines,
                "replication": _html_table(rep_frame) if len(rep_frame) else "",
            })
        extra = _family_extra(fam, rows, study, styles, originals, work)
        out.append({"id": fid, "label": fam.get("label", fid), "effects": effects, **extra})
    return out


def _family_extra(fam: Mapping[str, Any], rows: pd.DataFrame, study: Study,
                  styles: dict[str, tuple[str, str]], originals: set[str],
                  work: Offload) -> dict[str, Any]:
    """Unpooled results of a family: robustness tests, regression coefficients."""
    kind = fam.get("kind")
    plots, tables = [], []
    if kind == "regression":
        coef = rows[rows["base"] == "ols_hc3"]
        std = rows[rows["base"] == "ols_hc3_standardized"]
        for term, grp in std.groupby("x", sort=False):
            anchor = effect_anchor(fam["id"], str(term), str(fam.get("y", "")), "beta")
            plots.append(work.submit(
                forest_svg, grp[["site", "estimate", "ci_low", "ci_high", "n"]], None,
                f"{_label(study, str(term))}: standardised coefficient",
                "standardised \u03b2", styles, originals, salt=anchor))
        if len(coef):
            table = coef[["site", "x", "n", "estimate", "ci_low", "ci_high", "statistic",
                          "p_value"]]
            beta = dict(zip(zip(std["site"], std["x"]), std["estimate"]))
            r2 = dict(zip(rows.loc[rows["base"] == "ols_r2", "site"],
                          rows.loc[rows["base"] == "ols_r2", "estimate"]))
            tables.append(_html_table(pd.DataFrame({
                "Site": table["site"].to_numpy(), "Term": [_label(study, t) for t in table["x"]],
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
               "opposite_significant": "significant in the opposite direction"}


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
    return {"title": str(study.raw["study"]["name"]), "run_id": run_id,
            "created_at": prov.get("created_at", ""), "min_cell": MIN_CELL,
            "site_pages": [(s.code, s.country, f"site-{s.code}.html") for s in sites
                           if f"site-{s.code}.html" in files],
            "downloads": sorted(f for f in files if not f.endswith(".html"))}


# From this many sites a report's forest plots and stacked Parquet file are made by a worker
# process (lacrima.offload): at 125 sites they take ~1.9 s and a worker starts in ~0.6 s;
# at 3 sites the plots take ~0.4 s in all.
WORKER_FROM_SITES = 40


def start_worker(n_sites: int) -> bool:
    """Start the report's worker process ahead, when a report of ``n_sites`` will use one.

    A flow that will write a report calls this before its analyses, so the worker has
    started (~0.6 s) by the time the report needs it. Returns whether one was started.
    """
    from lacrima import offload

    return n_sites >= WORKER_FROM_SITES and offload.start_worker(warm="lacrima.plots")


def stop_worker() -> None:
    """End a worker :func:`start_worker` started that no report took."""
    from lacrima import offload

    offload.stop_worker()


def report_families(comparison: Comparison, study: Study, sites: list[Site], present: set[str],
                    work: Offload | None = None) -> tuple[list[dict[str, Any]], Offload]:
    """The report's family sections, their forest plots submitted to ``work``.

    ``sites``: every site of the study (their order fixes the colours); ``present``: the codes
    of the analysed ones. Default ``work``: plots drawn in this process when asked for.
    """
    work = work or Offload()
    styles = site_style([s.code for s in sites])
    return _families(comparison, study, [s for s in sites if s.code in present], styles,
                     work), work


def _with_plots(families: list[dict[str, Any]], work: Offload) -> list[dict[str, Any]]:
    """``families`` with the drawn SVGs in place of their plot handles."""
    done = work.results()
    return [{**fam, "plots": [Markup(done[h]) for h in fam.get("plots", ())],
             "effects": [{**e, "svg": Markup(done[e["svg"]])} for e in fam["effects"]]}
            for fam in families]


def render_report(run_id: str, analyses: list[SiteAnalysis], comparison: Comparison, study: Study,
                  sites: list[Site], prov: dict, files: Iterable[str] | None = None,
                  plotted: tuple[list[dict[str, Any]], Offload] | None = None) -> str:
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
        ``pipeline.provenance`` of the run.
    files : iterable of str, optional
        Run-relative names of the files written with the report; only these are linked.
        Default: the site pages of the analysed sites.
    plotted : (families, Offload), optional
        :func:`report_families` made earlier, its plots drawn meanwhile (``write_outputs``).
        Default: made and drawn here.

    Returns
    -------
    str
        The HTML document. Sections, in order: ``summary``, ``flow``, ``descriptives``,
        ``families`` (one ``family-<id>`` per plan family), ``methods``, ``provenance``.

    Notes
    -----
    Numbers follow APA style (7th ed.): two decimals, no leading zero for r, alpha and p,
    p below .001 as ``< .001``. Counts from 1 to 4 are shown as ``<5`` (protocol section 8).
    """
    present = {a.site for a in analyses}
    if files is None:
        files = [f"site-{c}.html" for c in present]
    styles = site_style([s.code for s in sites])
    rep_site, origs = _roles(study, [s for s in sites if s.code in present])
    verdicts = verdict_table(comparison, study, [s for s in sites if s.code in present])
    sections = [("summary", "Verdicts"), ("flow", "Participant flow"),
                ("descriptives", "Descriptives"), ("families", "Analyses"),
                ("methods", "Methods"), ("provenance", "Provenance")]
    ctx = _common(study, sites, run_id, prov, files)
    return _env().get_template("report.html.j2").render(
        **ctx, sections=sections,
        site_codes=[a.site for a in analyses],
        site_legend=[(s.code, s.country, s.role, styles[s.code][0]) for s in sites
                     if s.code in present],
        replication_site=rep_site, originals=origs, verdicts=verdicts.to_dict("records"),
        has_covariates=bool((verdicts["covariates"] != "").any()),
        verdict_counts=[(o, ", ".join(f"{n} {v}" for v, n in verdicts[f"verdict_{o.code}"]
                                      .replace("", np.nan).dropna().value_counts().items()))
                        for o in origs],
        flow_table=_html_table(flow_frame(analyses)),
        descriptives_table=_html_table(descriptives_frame(analyses, study)),
        families=_with_plots(*(plotted or report_families(comparison, study, sites, present))),
        verdict_rules=_verdict_rules(study), replication_cfg=study.section("replication"),
        pooling_cfg=study.section("pooling"), k_sites=len(analyses),
        provenance=_provenance_tables(prov), original_mark=ORIGINAL_MARK)


def _site_descriptives(a: SiteAnalysis, study: Study) -> tuple[Markup, Markup]:
    d = a.descriptives
    num = d[d["mean"].notna() | (d["count"].isna() & d["n"].notna())]
    numeric = pd.DataFrame({
        "Variable": [_label(study, v) for v in num["variable"]],
        "Subset": num["subset"].astype(str).to_numpy(),
        "n": [fmt_n(v) for v in num["n"]], "M": [fmt(v) for v in num["mean"]],
        "SD": [fmt(v) for v in num["sd"]], "Min": [fmt(v) for v in num["min"]],
        "Max": [fmt(v) for v in num["max"]], "% missing": [fmt(v, 1) for v in num["pct_missing"]],
    })
    cat = d[d["count"].notna()]
    categorical = pd.DataFrame({
        "Variable": [_label(study, v) for v in cat["variable"]],
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
        shown = _group_cells(counts, lambda j: _count_cell(counts[j],
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
            "x": [_label(study, v) for v in rows["x"].astype(str)],
            "y": [_label(study, v) if v else "" for v in rows["y"].fillna("").astype(str)],
            "Controlling for": [_cov_label(study, c) for c in rows["covariates"]],
            "Method": rows["method"].astype(str).to_numpy(),
            "n": [fmt_n(v) for v in rows["n"]],
            "Estimate": [fmt(v, leading_zero=an not in _BOUNDED and an != "reliability")
                         for v, an in zip(rows["estimate"], rows["analysis"])],
            "95% CI": [fmt_ci(lo, hi, leading_zero=an not in _BOUNDED and an != "reliability")
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
        Run-relative names of the site's own exports (``data/<site>.csv``, ...) to link.

    Returns
    -------
    str
        HTML document with sections ``flow``, ``descriptives``, ``analyses``; it links back
        to ``report.html`` and to the site's own exports.

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
        families=_site_analyses(analysis, study), own_downloads=list(downloads))


def site_files(analysis: SiteAnalysis, data: pd.DataFrame, site: Site,
               study: Study) -> dict[str, bytes]:
    """A site's own outputs: ``data/<site>.csv``, ``data/<site>.sav`` and ``site-<site>.html``.

    ``data`` is the site's analysis-ready frame (``pipeline.load_site_data``).
    """
    from lacrima.exports import spss_bytes

    files = {f"data/{site.code}.csv": to_csv_bytes(data),
             f"data/{site.code}.sav": spss_bytes(data, study, site)}
    files[f"site-{site.code}.html"] = render_site_page(analysis, site, study, list(files)).encode()
    return files


@cache
def outputs_version() -> str:
    """Hash of the code and templates that write a site's outputs: part of their store key."""
    from pathlib import Path

    import lacrima.exports

    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for path in [Path(__file__), Path(lacrima.exports.__file__),
                 *sorted((here / "templates").glob("*.j2"))]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _site_outputs_prefix(a: SiteAnalysis) -> str:
    return f"results/{a.site}/{a.input_key}/outputs-{outputs_version()}"


def site_outputs_ready(storage: Storage, analysis: SiteAnalysis) -> bool:
    """True when ``site_outputs`` of this analysis (input key, code version) are all stored."""
    return storage.exists(f"{_site_outputs_prefix(analysis)}/files.json")


def site_outputs(storage: Storage, analysis: SiteAnalysis, site: Site,
                 study: Study) -> dict[str, tuple[str, str, int]]:
    """Write a site's own outputs (``site_files``) once per input key; where they are, by name.

    Parameters
    ----------
    storage : Storage
    analysis : SiteAnalysis
        With its ``input_key``; light or not (the rows are read from the store if needed).
    site : Site
    study : Study

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
    from lacrima.pipeline import load_site_data

    prefix = _site_outputs_prefix(analysis)
    index = f"{prefix}/files.json"
    if storage.exists(index):
        listed = json.loads(storage.read_bytes(index))
    else:
        files = site_files(analysis, load_site_data(storage, analysis), site, study)
        for name, data in files.items():
            storage.write_bytes(f"{prefix}/{name}", data, if_absent=True)
        listed = {name: [hashlib.sha256(data).hexdigest(), len(data)]
                  for name, data in sorted(files.items())}
        storage.write_bytes(index, json.dumps(listed).encode(), if_absent=True)
    return {name: (f"{prefix}/{name}", sha, size) for name, (sha, size) in listed.items()}


# ---------------------------------------------------------------------------
# Writing a run
# ---------------------------------------------------------------------------

def manifest(run_id: str, files: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
    """The run's file list.

    Parameters
    ----------
    run_id : str
    files : mapping of str to (str, int)
        Run-relative name -> (SHA-256 hex, size in bytes) of its content.

    Returns
    -------
    dict
        ``{"run_id": ..., "files": [{"name", "bytes", "sha256"}, ...]}`` sorted by name.
    """
    return {"run_id": run_id,
            "files": [{"name": n, "bytes": size, "sha256": sha}
                      for n, (sha, size) in sorted(files.items())]}


def write_outputs(storage: Storage, run_id: str, analyses: list[SiteAnalysis],
                  comparison: Comparison, study: Study, sites: list[Site], prov: dict) -> RunOutputs:
    """Write every output of a run under ``reports/<run_id>/`` and copy it to ``reports/latest/``.

    Parameters
    ----------
    storage : Storage
    run_id : str
    analyses : list of SiteAnalysis
        Full or light (``SiteAnalysis.light``): the rows of a light analysis are read from
        the store one site at a time, so the run never holds every site's rows at once.
    comparison : Comparison
    study : Study
    sites : list of Site
    prov : dict

    Returns
    -------
    RunOutputs
        ``files`` lists the run-relative names written, as ``manifest.json`` does.

    Notes
    -----
    A site's page and exports come from ``site_outputs`` (written once per input key by the
    site's task, copied here) or, for an analysis without a key (in memory), are made here.
    Each file is written to the run folder (create-if-absent: a run never overwrites
    another's files) and then to ``latest/`` (overwritten); ``manifest.json`` is written last
    in both, so a reader who sees the new manifest sees every file it lists. From
    ``WORKER_FROM_SITES`` sites on, a worker process (``lacrima.offload``) stacks the sites'
    rows and draws the forest plots meanwhile.
    """
    from lacrima.exports import stacked_parquet_bytes
    from lacrima.pipeline import load_site_data, stacked_site_data

    with Offload(worker=len(analyses) >= WORKER_FROM_SITES, warm="lacrima.plots") as work:
        # Queued first, so that a worker starts on it while the plots are being queued. Light
        # analyses (no rows in hand) go as themselves: the worker reads the rows from the store.
        if work.has_worker and all(a.data is None for a in analyses):
            stacked = work.submit(stacked_site_data, storage.location,
                                  [(a.site, a.input_key) for a in analyses], study)
        else:
            stacked = work.submit(stacked_parquet_bytes,
                                  [load_site_data(storage, a, as_parquet=True) for a in analyses],
                                  study)
        plotted = report_families(comparison, study, sites, {a.site for a in analyses}, work)
        return _write_outputs(storage, run_id, analyses, comparison, study, sites, prov,
                              plotted, stacked)


def _write_outputs(storage: Storage, run_id: str, analyses: list[SiteAnalysis],
                   comparison: Comparison, study: Study, sites: list[Site], prov: dict,
                   plotted: tuple[list[dict[str, Any]], Offload], stacked: int) -> RunOutputs:
    from lacrima.pipeline import load_site_data

    results = comparison.results.copy()
    results["run_id"] = run_id
    results = results.reindex(columns=list(RESULTS_COLUMNS))
    flow = pd.concat([a.flow.to_frame() for a in analyses], ignore_index=True)
    descr = pd.concat([a.descriptives for a in analyses], ignore_index=True)
    listed: dict[str, tuple[str, int]] = {}

    def put(name: str, data: bytes) -> None:
        storage.write_bytes(f"reports/{run_id}/{name}", data, if_absent=True)
        storage.write_bytes(f"reports/latest/{name}", data)
        listed[name] = hashlib.sha256(data).hexdigest(), len(data)

    def copy(name: str, key: str, sha: str, size: int) -> None:
        # a site's stored output, as put() would write it, without its bytes passing here
        storage.copy(key, f"reports/{run_id}/{name}", if_absent=True)
        storage.copy(key, f"reports/latest/{name}")
        listed[name] = sha, size

    put("results.csv", to_csv_bytes(results))
    put("replication.csv", to_csv_bytes(comparison.replication))
    put("heterogeneity.csv", to_csv_bytes(heterogeneity_frame(comparison, study, sites)))
    put("participant_flow.csv", to_csv_bytes(flow))
    put("descriptives.csv", to_csv_bytes(descr))
    put("provenance.json", json.dumps(prov, indent=2, default=str).encode())
    by_code = {s.code: s for s in sites}
    pages = {}
    for a in analyses:
        if a.site not in by_code:
            put(f"data/{a.site}.csv", to_csv_bytes(load_site_data(storage, a)))
            continue
        if a.input_key:
            for name, (key, sha, size) in site_outputs(storage, a, by_code[a.site], study).items():
                copy(name, key, sha, size)
        else:
            for name, data in site_files(a, a.data, by_code[a.site], study).items():
                put(name, data)
        pages[a.site] = f"site-{a.site}.html"
    parquet = plotted[1].result(stacked)
    put("analysis_ready.parquet", parquet)
    # Exact cell counts (1-4 not suppressed): restricted, beside the row-level data.
    put(CONTINGENCY_COUNTS, to_csv_bytes(contingency_counts(parquet, study)))
    put(REPORT, render_report(run_id, analyses, comparison, study, sites, prov,
                              [*listed, REPORT, MANIFEST], plotted).encode())
    body = json.dumps(manifest(run_id, listed), indent=2).encode()
    storage.write_bytes(f"reports/{run_id}/{MANIFEST}", body, if_absent=True)
    storage.write_bytes(f"reports/latest/{MANIFEST}", body)
    key = f"reports/{run_id}/{REPORT}"
    local = storage.local_path(key)
    return RunOutputs(run_id, f"reports/{run_id}", key,
                      str(local) if local else f"{storage.location}/{key}",
                      files=tuple(sorted([*listed, MANIFEST])), site_pages=pages)
