"""Run outputs: tidy CSVs, exports, provenance, manifest and the self-contained HTML reports.

A run writes ``reports/<run_id>/``, then publishes it (``catalog.publish_report``: the
manifest, the pointer ``reports/latest.json``, and locally the link ``reports/latest``):

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
import math
import re
from functools import cache
from typing import Any, Iterable, Mapping

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from lacrima import catalog
from lacrima.exports import spss_bytes, stacked_parquet_bytes, to_csv_bytes
from lacrima.plots import ORIGINAL_MARK, forest_svg, site_style
from lacrima.privacy import MIN_CELL, suppress_small
from lacrima.results import Comparison, RunOutputs, SiteAnalysis
from lacrima.storage import Storage
from lacrima.study import Site, Study
from lacrima.vocabulary import COVARIATE_SEPARATOR, POOLED, RESULTS_COLUMNS

MINUS = "\u2212"
MANIFEST = catalog.MANIFEST
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


def _suppressed_group(counts: list[float]) -> list[str]:
    """Counts of one group as shareable text: ``<5`` / ``(s)`` where hidden, else the count."""
    return _group_cells(counts, lambda i: "" if _missing(counts[i]) else str(int(counts[i])))


def shareable_flow(flow: pd.DataFrame) -> pd.DataFrame:
    """``participant_flow.csv`` as it may be shared: the report's suppression, in tidy form.

    Parameters
    ----------
    flow : pandas.DataFrame
        Tidy flow (``site, step, reason, label, n``) with exact counts; not changed.

    Returns
    -------
    pandas.DataFrame
        The same rows; ``n`` as text: counts 1-4 as ``<5`` and, within each site's exclusion
        reasons (whose sum is received minus analysed), one more ``(s)`` where a single hidden
        count could be worked out, exactly as ``flow_frame`` shows them.
    """
    out = flow.copy()
    n = [fmt_n(v) for v in out["n"]]
    for _, idx in out.groupby("site", sort=False).groups.items():
        excluded = [i for i in idx if out.loc[i, "step"] == "excluded"]
        cells = _suppressed_group([float(out.loc[i, "n"]) for i in excluded])
        for i, text in zip(excluded, cells):
            n[out.index.get_loc(i)] = text
    out["n"] = pd.Series(n, index=out.index, dtype="str")
    return out


def shareable_descriptives(descr: pd.DataFrame) -> pd.DataFrame:
    """``descriptives.csv`` as it may be shared: counts 1-4 hidden as the site pages hide them.

    Numeric rows: ``n`` 1-4 as ``<5``. Category rows: the levels of a variable (per site and
    subset) suppressed as one group (``<5``, complementary ``(s)``) and the percent of a
    hidden count left blank, since count = percent x N.
    """
    out = descr.copy()
    n = [fmt_n(v) for v in out["n"]]
    count = ["" if _missing(v) else str(int(v)) for v in out["count"]]
    percent = out["percent"].astype(object).tolist()
    cat = out["count"].notna().to_numpy()
    keys = (out["site"].astype(str) + "|" + out["variable"].astype(str) + "|"
            + out["subset"].astype(str)).to_numpy()
    positions = [i for i in range(len(out)) if cat[i]]
    groups: dict[str, list[int]] = {}
    for i in positions:
        groups.setdefault(keys[i], []).append(i)
    for pos in groups.values():
        cells = _suppressed_group([float(out["count"].iloc[i]) for i in pos])
        for i, text in zip(pos, cells):
            count[i] = text
            if not text.isdigit():
                percent[i] = None
    out["n"] = pd.Series(n, index=out.index, dtype="str")
    out["count"] = pd.Series(count, index=out.index, dtype="str")
    out["percent"] = pd.Series(percent, index=out.index, dtype=float)
    return out


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


def _roles(study: Study, sites: Iterable[Site]) -> tuple[list[Site], list[Site]]:
    """The replication sites and the original sites among ``sites``, each in code order."""
    from lacrima.replication import site_roles

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
        scale, k, pooled, i2, replication``, one ``verdict_<original code>`` per original
        site and, with two or more originals, ``verdict_pooled`` (against the pooled
        originals). ``pooled`` is the formatted random-effects estimate with its interval;
        ``replication`` and the verdicts are those of the headline replication side
        (:func:`headline_side`: the replication site, or the pooled replication sites when
        there are several); verdicts are blank for effects outside ``[replication]
        families`` (A2, A3 are pooled, not assessed). Every other pair of sides is in
        ``replication.csv`` and in each effect's section of the report.
    """
    per_site = comparison.results[comparison.results["site"] != POOLED]
    # Only sites with estimates have verdicts: one still without data is no column.
    present = set(per_site["site"].astype(str))
    rep_sites, origs = _roles(study, [s for s in sites if s.code in present])
    head = headline_side(rep_sites)
    pooled = pooled_effects(comparison.results)
    rep_rows = {}
    if head is not None and head != POOLED:
        mine = per_site[(per_site["site"] == head)
                        & (per_site["method"].isin(_MAIN_METHOD.values()))]
        rep_rows = dict(zip(_key(mine), mine["estimate"]))
    verdicts: dict[tuple[str, str], str] = {}
    replication = comparison.replication
    if replication is not None and len(replication) and head is not None:
        mine = replication[replication["replication_site"].astype(str) == head]
        rk = (mine["effect"].astype(str) + "|" + mine["x"].astype(str) + "|"
              + mine["y"].astype(str) + "|" + mine["covariates"].fillna("").astype(str))
        for k, o, v, r in zip(rk, mine["original_site"], mine["verdict"], mine["r_replication"]):
            verdicts[(k, str(o))] = str(v)
            rep_rows.setdefault(k, r)          # the pooled replication estimate
    columns_o = [o.code for o in origs] + ([POOLED] if len(origs) > 1 else [])
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
        for o in columns_o:
            row[f"verdict_{o}"] = verdicts.get((key, o), "")
        rows.append(row)
    columns = ["family", "x", "y", "covariates", "anchor", "label", "x_label", "y_label",
               "cov_label", "scale", "k", "pooled", "i2",
               "replication", *[f"verdict_{o}" for o in columns_o]]
    return pd.DataFrame(rows, columns=columns)


def _analysis_of(per_site: pd.DataFrame, pooled_row: pd.Series) -> str:
    """The per-site analysis a pooled row pools (its family's kind decides)."""
    m = per_site[(per_site["family"] == pooled_row["family"]) & (per_site["x"] == pooled_row["x"])
                 & (per_site["y"] == pooled_row["y"])
                 & per_site["method"].isin(_MAIN_METHOD.values())]
    return str(m["analysis"].iloc[0]) if len(m) else ""


def _side_name(code: str, k: Any, role: str) -> str:
    """A side of a replication pair in words: its site code, or the pooled sites of a role."""
    if code == POOLED:
        return f"pooled {role}s (k = {int(k)})" if not _missing(k) else f"pooled {role}s"
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
    head_name = _side_name(head, mine["k_replication"].iloc[0] if "k_replication" in mine
                           else None, "replication")
    lines = []
    for o, grp in mine.groupby(mine["original_site"].astype(str), sort=False):
        k = grp["k_original"].iloc[0] if "k_original" in grp else None
        lines.append((o, f"{head_name} vs {_side_name(o, k, 'original')}", _verdict_counts(grp)))
    pairs = ""
    site_pairs = replication[(reps != POOLED) & (replication["original_site"].astype(str) != POOLED)]
    if head == POOLED and len(site_pairs):
        n_pairs = len(site_pairs.drop_duplicates(["replication_site", "original_site"]))
        pairs = (f"each replication site vs each original site ({n_pairs} pairs): "
                 f"{_verdict_counts(site_pairs)}")
    return head, lines, pairs


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
        A count of verdicts per original side for the headline replication side (see
        :func:`replication_summary`), then one table row per effect with its verdict
        against each original side. Every pair of sides is in ``replication.csv``.

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
    head, counts, pairs = replication_summary(replication)
    if head is None:
        return "## Replication verdicts\n\nNo replication assessment in this run.\n"
    mine = replication[replication["replication_site"].astype(str) == head]
    originals = list(dict.fromkeys(mine["original_site"].astype(str)))
    labels = [label for _, label, _ in counts]
    head_name = labels[0].split(" vs ")[0]
    lines = [f"## Replication verdicts ({head_name} against "
             f"{', '.join(label.split(' vs ', 1)[1] for label in labels)})", ""]
    lines += [f"- **{label}**: {text}" for _, label, text in counts]
    if pairs:
        lines.append(f"- {pairs}")
    lines += ["", "| Family | Effect | " + " | ".join(labels) + " |",
              "|---|---|" + "---|" * len(originals)]
    cov = mine["covariates"].fillna("").astype(str)
    for (fam, x, y, c), grp in mine.groupby([mine["effect"], mine["x"], mine["y"], cov],
                                            sort=False):
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
        ``steps.summarise`` of the run (run_id, accepted, quarantined, report ...).
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
    # A step only some sites have (withdrew consent) stays between received and analysed.
    order.sort(key=lambda k: {"received": 0, "excluded": 1}.get(k[0], 2))
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
CONTINGENCY_COUNTS = "restricted/contingency_2x2_counts_by_site.csv"
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

    def side(code, k, role):
        return _side_name(str(code), k, role) if code == POOLED else f"{code} ({countries.get(code, code)})"

    yes = lambda v: "yes" if v else "no"  # noqa: E731
    return pd.DataFrame({
        "Replication": [side(c, k, "replication")
                        for c, k in zip(rep["replication_site"], rep["k_replication"])],
        "Original": [side(c, k, "original") for c, k in zip(rep["original_site"], rep["k_original"])],
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


def _families(comparison: Comparison, study: Study, sites: list[Site]) -> list[dict[str, Any]]:
    """Every family with its effects: forest plot, per-site table, heterogeneity, replication.

    An effect's ``svg`` and a family's ``plots`` name their plots by key (the effect's
    anchor, as :func:`forest_plots` draws them) until :func:`_with_plots` puts the SVGs in.
    """
    from lacrima.pooling import pool_details    # scipy: paid by a report, not by an import

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
                "anchor": anchor, "title": title, "svg": anchor,
                "family": fid, "x": x, "y": y, "covariates": cov,
                "pooled": prow is not None,
                "table": _html_table(_with_test_used(_site_table(grp, analysis, spearman),
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
            "downloads": sorted(f for f in files if not f.endswith(".html"))}


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
    Pure and independent of the rest of the report, so a task runner can draw the plots in
    parallel with the report's other work (``flows/pipeline.py``); matplotlib is used
    through ``Figure`` only (``lacrima.plots``), safe in threads and processes.
    """
    results = comparison.results
    per_site = results[results["site"] != POOLED].copy()
    per_site["covariates"] = per_site["covariates"].fillna("").astype(str)
    per_site["base"] = per_site["method"].map(_base)
    pooled = results[(results["site"] == POOLED) & (results["analysis"] == "meta_analysis")
                     & (results["method"].astype(str) != _FIXED_METHOD)].copy()
    pooled["covariates"] = pooled["covariates"].fillna("").astype(str)
    # the first random-effects row of each effect: the diamond
    random = {k: g.iloc[0] for k, g in pooled.groupby(["family", "x", "y", "covariates"],
                                                      sort=False)}
    present = set(per_site["site"])
    styles = site_style([s.code for s in sites])
    originals = {s.code for s in _roles(study, [s for s in sites if s.code in present])[1]}
    columns = ["site", "estimate", "ci_low", "ci_high", "n"]
    out = {}
    wanted = None if families is None else set(families)
    for fam in study.families:
        fid = fam["id"]
        if wanted is not None and fid not in wanted:
            continue
        rows = per_site[per_site["family"] == fid]
        main = rows[rows["base"].isin(_MAIN_METHOD.values())]
        for (x, y, cov), grp in main.groupby(["x", "y", "covariates"], sort=False):
            analysis = str(grp["analysis"].iloc[0])
            title, anchor = effect_label(study, x, y, cov), effect_anchor(fid, x, y, cov)
            out[anchor] = forest_svg(grp[columns], random.get((fid, x, y, cov)),
                                     title if len(title) < 90 else title[:87] + "...",
                                     _SCALE.get(analysis, "estimate"), styles, originals,
                                     null=1.0 if analysis == "chi_square" else 0.0,
                                     log_scale=analysis == "chi_square", salt=anchor)
        if fam.get("kind") == "regression":
            std = rows[rows["base"] == "ols_hc3_standardized"]
            for term, grp in std.groupby("x", sort=False):
                anchor = effect_anchor(fid, str(term), str(fam.get("y", "")), "beta")
                out[anchor] = forest_svg(grp[columns], None,
                                         f"{_label(study, str(term))}: standardised coefficient",
                                         "standardised \u03b2", styles, originals, salt=anchor)
    return out


def _with_plots(families: list[dict[str, Any]], plots: Mapping[str, str]) -> list[dict[str, Any]]:
    """``families`` with the drawn SVGs in place of their plot keys."""
    return [{**fam, "plots": [Markup(plots[k]) for k in fam.get("plots", ())],
             "effects": [{**e, "svg": Markup(plots[e["svg"]])} for e in fam["effects"]]}
            for fam in families]


def run_invariance(storage: Storage, analyses: list[SiteAnalysis],
                   study: Study) -> tuple[pd.DataFrame, list[str]]:
    """``invariance.plan_invariance`` of the run's sites; their rows are read from the store
    only when the sites are few enough for the fit (``[invariance] max_sites``)."""
    from lacrima.invariance import plan_invariance  # scipy: paid by a report only

    few = len(analyses) <= int(study.section("invariance").get("max_sites", 12))
    return plan_invariance(study, {a.site: catalog.site_data(storage, a.site, a.input_key)
                                   if few else None for a in analyses})


INVARIANCE_MODELS = {"configural": "Configural (same factors)",
                     "metric": "Metric (equal loadings)",
                     "scalar": "Scalar (equal loadings and intercepts)",
                     "partial_scalar": "Partial scalar"}


def invariance_section(fits: pd.DataFrame, notes: list[str]) -> dict[str, Any]:
    """Table and one conclusion per scale for "Are the scales comparable across sites?"."""
    rows, conclusions = [], []
    for scale, group in fits.groupby("scale", sort=False):
        for f in group.itertuples(index=False):
            freed = f.freed.replace("@", " at ").replace(";", ", ") if f.freed else ""
            rows.append({
                "Scale": _label_scale(scale), "Model": INVARIANCE_MODELS.get(f.model, f.model)
                + (f" ({freed} free)" if freed else ""),
                "χ² (df)": f"{fmt(f.chi2)} ({fmt_df(f.df)})", "p": fmt_p(f.p),
                "CFI": fmt(f.cfi, 3, False), "RMSEA [90% CI]": f"{fmt(f.rmsea, 3, False)} "
                f"{fmt_ci(f.rmsea_low, f.rmsea_high, 3, False)}",
                "SRMR": fmt(f.srmr, 3, False), "Δχ² (Δdf)": "" if _missing(f.chi2_diff)
                else f"{fmt(f.chi2_diff)} ({fmt_df(f.df_diff)})", "Δp": fmt_p(f.p_diff),
                "ΔCFI": fmt(f.delta_cfi, 3, False), "ΔRMSEA": fmt(f.delta_rmsea, 3, False),
                "Holds": "" if f.holds is None or _missing(f.holds)
                else ("yes" if f.holds else "no"),
            })
        steps = group.set_index("model")
        label = _label_scale(scale)
        if not steps.loc["metric", "holds"]:
            text = "loadings differ across sites (metric invariance fails): the factors " \
                   "do not mean the same everywhere; compare correlations with care"
        elif steps.loc["scalar", "holds"]:
            text = "scalar invariance holds: loadings and intercepts are equal across sites"
        elif group["model"].iloc[-1] == "partial_scalar" and bool(group["holds"].iloc[-1]):
            freed = group["freed"].iloc[-1].replace("@", " at ").replace(";", ", ")
            text = f"partial scalar invariance once {freed} is free (its intercept differs " \
                   "there): correlations are comparable, mean differences on that item are not"
        else:
            text = "loadings are equal (metric invariance) but intercepts differ beyond " \
                   "what freeing a few allows: correlations are comparable, means are not"
        conclusions.append(f"{label}: {text}.")
    return {"table": _html_table(pd.DataFrame(rows), first_left=2) if rows else None,
            "conclusions": conclusions, "notes": notes}


def _label_scale(scale: str) -> str:
    return {"alliance": "WAI-SR", "change": "CTSCM-R"}.get(scale, scale)


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
    rep_sites, origs = _roles(study, analysed)
    verdicts = verdict_table(comparison, study, analysed)
    head, counts, pairs = replication_summary(comparison.replication)
    rep_cfg = study.section("replication")
    configured_reps = _roles(study, sites)[0]
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
        headline=_side_name(head, len(rep_sites), "replication") if head else "",
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
        verdict_rules=_verdict_rules(study), replication_cfg=study.section("replication"),
        pooling_cfg=study.section("pooling"), k_sites=len(analyses),
        provenance=_provenance_tables(prov), original_mark=ORIGINAL_MARK,
        invariance=None if invariance is None else invariance_section(*invariance))


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


RESTRICTED = "restricted"
"""Sub-folder of a run folder for what may not be shared: row-level data and exact counts."""

RESTRICTED_README = f"""Restricted outputs of a lacrima run: do not share.

This folder holds row-level data (data/<site>.csv and .sav, analysis_ready.parquet) and
exact counts (participant_flow.csv, descriptives.csv with counts 1-{MIN_CELL - 1} shown).
Everything outside this folder may be shared: there, counts 1-{MIN_CELL - 1} show as <{MIN_CELL}
(and (s) where a hidden count could be worked out from a total), as in report.html.
""".encode()


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


OUTPUTS_VERSION = 1
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
    put(f"{RESTRICTED}/README.txt", RESTRICTED_README)
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
    put(REPORT, render_report(run_id, analyses, comparison, study, sites, prov,
                              [*listed, REPORT, MANIFEST], plots, invariance).encode())
    catalog.publish_report(storage, run_id, listed)     # last: the report is now the latest
    key = f"{prefix}/{REPORT}"
    local = storage.local_path(key)
    return RunOutputs(run_id, prefix, key, str(local) if local else f"{storage.location}/{key}",
                      files=tuple(sorted([*listed, MANIFEST])), site_pages=pages)
