"""The analysis plan (protocol section 6) run on one site's analysis-ready data.

:func:`analyse_site` walks ``study.families`` and ``[reliability]`` of
``sites/study.toml`` and writes the tidy estimates table (``RESULTS_COLUMNS``), the
contract with pooling and reporting; :func:`describe_site` writes the descriptives.
Every variable name comes from the plan; nothing here knows a site.

Conventions of the estimates table
----------------------------------
- ``family``, ``site``, ``x``, ``y``; ``covariates`` are names joined with ``"+"`` in the
  plan's order (``""`` when none). Intervals are at ``study.level``. ``run_id`` and the
  pooling columns (``k``, ``tau2``, ``i2``, ``q``, ``q_p``, ``pi_low``, ``pi_high``) are blank.
- Missing values are dropped per analysis (pairwise for correlations, complete cases on
  the variables of a model otherwise); ``n`` is the number of cases actually used.
- correlation families: ``analysis="correlation"``, ``method="pearson"`` and beside it
  ``analysis="spearman"``, ``method="spearman"`` (estimate rho, Bonett-Wright interval).
- partial_correlation: ``analysis="partial_correlation"``, ``method="pearson_partial"``,
  one row per x, y and covariate set.
- group_comparison: ``analysis="t_test"`` rows ``method="welch"`` (mean difference group
  true minus group false) and ``method="hedges_g"`` (g with its normal interval; statistic,
  df and p are the Welch test's); ``analysis="mann_whitney"``, ``method="mann_whitney_u"``
  (estimate the rank-biserial r, statistic U of the true group). x is the group
  variable, y the outcome.
- contingency: ``analysis="chi_square"`` rows ``method="pearson_chi2"`` (estimate
  Cramer's V, statistic chi-square without continuity correction, df 1) and
  ``method="odds_ratio"`` (odds of the column being true in the first row level over
  the second, Woolf interval, Haldane 0.5 when a cell is 0; statistic, df and p are the
  chi-square's); ``analysis="fisher_exact"`` only when an expected count is below 5.
  Levels of the row variable not in ``row_levels`` are left out. x is the row
  variable, y the column variable.
- regression: ``analysis="regression"``, y the outcome, ``covariates=""``; x is the term:
  ``method="ols_hc3"`` for every coefficient including ``"Intercept"``,
  ``method="ols_hc3_standardized"`` for every predictor, and one row ``x="R2"``,
  ``method="ols_r2"`` (estimate R-squared, df residual df).
- reliability: ``family="reliability"``, ``analysis="reliability"``, x the score, y ``""``,
  ``method="cronbach_alpha_feldt"``; n complete cases on the items; statistic, df, p blank.
- ``p_adjusted``: Holm (``[analysis] p_adjust``) within each correlation and
  partial-correlation family per site, separately for each ``analysis``: the Pearson rows
  of H1 are one set, its Spearman rows another, and all x by covariate-set rows of A1
  (24 with the current plan) one set, because A1 is one family in the protocol. Other
  families are single tests or (A4) not adjusted by the plan: ``p_adjusted`` is blank.
- Pooling recovers standard errors from the intervals, which are symmetric on the
  pooling scale: Fisher z for correlations, identity for Hedges' g, log for odds ratios.

Degenerate data
---------------
An analysis that cannot be estimated (too few cases, zero variance, one group or an
empty table margin) never raises: its row is written with ``n`` and every number blank
(NaN), and ``method`` reads ``"<method>; not estimable: <reason>"``, for example
``"pearson; not estimable: n = 3, fewer than 4 complete cases"``. Consumers that select
rows by ``method == "pearson"`` therefore skip it; ``base_method`` recovers the name.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from lacrima.stats import (
    DESCRIPTIVE_COLUMNS, Estimate, TwoByTwo, adjust_pvalues, chi_square_2x2, cronbach_alpha,
    describe_categorical, describe_numeric, fisher_exact_2x2, hedges_g, mann_whitney,
    odds_ratio_woolf, ols_hc3, partial_correlation, pearson, spearman, welch_t,
)
from lacrima.study import Study
from lacrima.vocabulary import COVARIATE_SEPARATOR, RESULTS_COLUMNS

NOT_ESTIMABLE = "; not estimable: "
# kinds whose p values the plan adjusts within family (protocol section 6)
ADJUSTED_KINDS = ("correlation", "partial_correlation")
# the plan's group marking items asked only of criers (study.toml [variables] comment)
EPISODE_GROUP = "episode"
SUBSET_ALL = "all"
SUBSET_CRIERS = "criers"

_STRING_COLUMNS = ("family", "analysis", "site", "x", "y", "covariates", "method")
_COUNT_COLUMNS = ("n", "k")


def base_method(method: str) -> str:
    """The method name without a ``"; not estimable: ..."`` suffix."""
    return str(method).split(NOT_ESTIMABLE, 1)[0]


def _row(family: str, analysis: str, site: str, x: str, y: str, covariates: str,
         est: Estimate, **override: Any) -> dict:
    method = est.method if est.estimable else f"{est.method}{NOT_ESTIMABLE}{est.note}"
    row = {
        "family": family, "analysis": analysis, "site": site, "x": x, "y": y,
        "covariates": covariates, "n": est.n, "estimate": est.estimate, "ci_low": est.ci_low,
        "ci_high": est.ci_high, "statistic": est.statistic, "df": est.df,
        "p_value": est.p_value, "p_adjusted": np.nan, "method": method,
    }
    if est.estimable:
        row.update(override)
    return row


def _require(data: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in dict.fromkeys(columns) if c not in data.columns]
    if missing:
        raise KeyError(f"{what} needs column(s) {missing}, absent from the analysis-ready data "
                       f"(has {len(data.columns)} columns)")


def _num(data: pd.DataFrame, column: str) -> np.ndarray:
    # the boundary: nullable Int64/Float64/boolean -> float with NaN for missing
    return pd.to_numeric(data[column]).to_numpy(dtype=float, na_value=np.nan)


def _truth(data: pd.DataFrame, column: str) -> np.ndarray:
    """Rows where a boolean column is True (missing counts as not True)."""
    return data[column].astype("boolean").to_numpy(dtype=bool, na_value=False)


def _subset(data: pd.DataFrame, family: Mapping[str, Any], study: Study) -> pd.DataFrame:
    subset = family.get("subset")
    if subset is None:
        return data
    if subset != SUBSET_CRIERS:
        raise ValueError(f"family {family['id']}: unknown subset {subset!r}; "
                         f"expected {SUBSET_CRIERS!r} or none")
    criers = study.section("analysis")["criers"]
    _require(data, [criers], f"family {family['id']} (subset {subset})")
    return data.loc[_truth(data, criers)]


def _correlation(data, fam, study, site, level):
    robust = study.section("analysis").get("robustness_correlation", "spearman")
    if robust != "spearman":
        raise ValueError(f"robustness_correlation {robust!r} is not implemented; "
                         "expected 'spearman'")
    _require(data, [*fam["x"], *fam["y"]], f"family {fam['id']}")
    sub = _subset(data, fam, study)
    for x in fam["x"]:
        for y in fam["y"]:
            xv, yv = _num(sub, x), _num(sub, y)
            yield _row(fam["id"], "correlation", site, x, y, "", pearson(xv, yv, level))
            yield _row(fam["id"], "spearman", site, x, y, "", spearman(xv, yv, level))


def _partial(data, fam, study, site, level):
    sets = fam["covariate_sets"]
    _require(data, [*fam["x"], *fam["y"], *(c for s in sets for c in s)], f"family {fam['id']}")
    sub = _subset(data, fam, study)
    for covs in sets:
        z = np.column_stack([_num(sub, c) for c in covs])
        label = COVARIATE_SEPARATOR.join(covs)
        for x in fam["x"]:
            for y in fam["y"]:
                est = partial_correlation(_num(sub, x), _num(sub, y), z, level)
                yield _row(fam["id"], "partial_correlation", site, x, y, label, est)


def _group_comparison(data, fam, study, site, level):
    group, outcome = fam["group"], fam["outcome"]
    _require(data, [group, outcome], f"family {fam['id']}")
    sub = _subset(data, fam, study)
    g = sub[group].astype("boolean")
    y = _num(sub, outcome)
    yes = g.to_numpy(dtype=bool, na_value=False)
    no = (~g).to_numpy(dtype=bool, na_value=False)
    welch = welch_t(y[yes], y[no], level)
    test = {"statistic": welch.statistic, "df": welch.df, "p_value": welch.p_value}
    yield _row(fam["id"], "t_test", site, group, outcome, "", welch)
    yield _row(fam["id"], "t_test", site, group, outcome, "", hedges_g(y[yes], y[no], level),
               **test)
    yield _row(fam["id"], "mann_whitney", site, group, outcome, "", mann_whitney(y[yes], y[no]))


def _contingency(data, fam, study, site, level):
    row_var, col_var = fam["row"], fam["column"]
    levels = list(fam["row_levels"])
    if len(levels) != 2:
        raise ValueError(f"family {fam['id']}: row_levels must name 2 levels, got {levels}")
    _require(data, [row_var, col_var], f"family {fam['id']}")
    sub = _subset(data, fam, study)
    rows = sub[row_var].astype("str").to_numpy(dtype=object, na_value=None)
    col = sub[col_var].astype("boolean")
    event = col.to_numpy(dtype=bool, na_value=False)
    known = col.notna().to_numpy()
    counts = [[int(((rows == lev) & known & event).sum()),
               int(((rows == lev) & known & ~event).sum())] for lev in levels]
    table = TwoByTwo.from_counts(counts)
    chi2 = chi_square_2x2(table)
    test = {"statistic": chi2.statistic, "df": chi2.df, "p_value": chi2.p_value}
    yield _row(fam["id"], "chi_square", site, row_var, col_var, "", chi2)
    yield _row(fam["id"], "chi_square", site, row_var, col_var, "", odds_ratio_woolf(table, level),
               **test)
    if (table.expected() < 5).any():
        yield _row(fam["id"], "fisher_exact", site, row_var, col_var, "",
                   fisher_exact_2x2(table, level))


def _regression(data, fam, study, site, level):
    cov_type = fam.get("cov_type", "HC3")
    if cov_type != "HC3":
        raise ValueError(f"family {fam['id']}: cov_type {cov_type!r} is not implemented; "
                         "expected 'HC3'")
    y, xs = fam["y"], list(fam["x"])
    _require(data, [y, *xs], f"family {fam['id']}")
    sub = _subset(data, fam, study)
    res = ols_hc3(_num(sub, y), np.column_stack([_num(sub, x) for x in xs]), xs, level)
    for term, est in zip(res.terms, res.coefficients):
        yield _row(fam["id"], "regression", site, term, y, "", est)
    for term, est in zip(res.terms[1:], res.standardized):
        yield _row(fam["id"], "regression", site, term, y, "", est)
    yield _row(fam["id"], "regression", site, "R2", y, "", res.r2)


_RUNNERS: dict[str, Callable] = {
    "correlation": _correlation,
    "partial_correlation": _partial,
    "group_comparison": _group_comparison,
    "contingency": _contingency,
    "regression": _regression,
}


def _reliability(data, study, site, level):
    section = study.section("reliability")
    ci = section.get("ci", "feldt")
    if ci != "feldt":
        raise ValueError(f"[reliability] ci {ci!r} is not implemented; expected 'feldt'")
    for score in section.get("scores", ()):
        if score not in study.scores or "items" not in study.scores[score]:
            raise KeyError(f"[reliability] score {score!r} is not a mean score with items "
                           "in [scores]")
        items = list(study.scores[score]["items"])
        _require(data, items, f"reliability of {score}")
        est = cronbach_alpha(np.column_stack([_num(data, c) for c in items]), level)
        yield _row("reliability", "reliability", site, score, "", "", est)


def _tidy(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[c for c in RESULTS_COLUMNS])
    frame["run_id"] = pd.Series(pd.NA, index=frame.index, dtype="object")
    for c in _STRING_COLUMNS:
        frame[c] = frame[c].astype("str")
    for c in _COUNT_COLUMNS:
        frame[c] = frame[c].astype("Int64")
    for c in RESULTS_COLUMNS:
        if c not in _STRING_COLUMNS and c not in _COUNT_COLUMNS and c != "run_id":
            frame[c] = frame[c].astype(float)
    return frame.reset_index(drop=True)


def _adjust(frame: pd.DataFrame, study: Study) -> pd.DataFrame:
    method = study.section("analysis").get("p_adjust", "holm")
    adjusted = {f["id"] for f in study.families if f["kind"] in ADJUSTED_KINDS}
    out = frame.copy()
    sets = out.loc[out["family"].isin(adjusted)].groupby(["family", "analysis"]).groups
    for idx in sets.values():
        out.loc[idx, "p_adjusted"] = adjust_pvalues(out.loc[idx, "p_value"].to_numpy(), method)
    return out


def analyse_site(data: pd.DataFrame, study: Study, site: str) -> pd.DataFrame:
    """Run every family of the plan and the reliability analyses on one site.

    Parameters
    ----------
    data : pandas.DataFrame
        Analysis-ready data of one site: one row per analysed participant, canonical
        variables and scores (nullable dtypes; missing is ``pd.NA``). Not modified.
    study : Study
        The plan (``load_study()``); families, subsets, covariates, level and the
        p adjustment all come from it.
    site : str
        Site code written in the ``site`` column.

    Returns
    -------
    pandas.DataFrame
        Exactly ``vocabulary.RESULTS_COLUMNS``, one row per estimate; row conventions
        are in this module's docstring. ``n`` and ``k`` are Int64, text columns ``str``,
        ``run_id`` is ``pd.NA``.

    Raises
    ------
    KeyError
        A variable the plan needs is not a column of ``data``.
    ValueError
        The plan asks for a family kind, subset or method this module does not implement.

    Notes
    -----
    Estimators and their references are in :mod:`lacrima.stats`.
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    level = study.level
    rows: list[dict] = []
    for fam in study.families:
        runner = _RUNNERS.get(fam["kind"])
        if runner is None:
            raise ValueError(f"family {fam['id']}: unknown kind {fam['kind']!r}; "
                             f"expected one of {sorted(_RUNNERS)}")
        rows.extend(runner(data, fam, study, site, level))
    rows.extend(_reliability(data, study, site, level))
    return _adjust(_tidy(rows), study)[list(RESULTS_COLUMNS)]


def _criers_only(study: Study) -> set[str]:
    """Variables asked only of criers, and scores built only from such variables."""
    only = {v for v, spec in study.variables.items() if spec.get("group") == EPISODE_GROUP}
    for name, spec in study.scores.items():
        parts = [*spec.get("items", ()), *spec.get("plus", ()), *spec.get("minus", ())]
        if parts and all(p in only for p in parts):
            only.add(name)
    return only


def _rates_by_row_level(data: pd.DataFrame, study: Study, criers_col: str) -> list[pd.DataFrame]:
    """The contingency families' column (crying) within every level of their row variable,
    those left out of the test (``another`` gender: "reported descriptively") included.

    Rows ``variable`` = ``"<column> (<row> = <level>)"`` (so variable and level stay a
    unique key), ``subset`` = ``"<row>=<level>"``.
    """
    frames = []
    for fam in study.families:
        if fam.get("kind") != "contingency" or fam["column"] not in data.columns \
                or fam["row"] not in data.columns:
            continue
        row_var, col_var = fam["row"], fam["column"]
        values = data[row_var].astype("str")
        for level in study.variables.get(row_var, {}).get("levels", fam["row_levels"]):
            rows = data.loc[(values == str(level)).fillna(False).to_numpy(dtype=bool)]
            name = f"{col_var} ({row_var} = {level})"
            for d in describe_categorical(rows[col_var].astype("boolean"), [True, False], name):
                frames.append(d.to_frame().assign(subset=f"{row_var}={level}"))
    return frames


def describe_site(data: pd.DataFrame, study: Study, site: str) -> pd.DataFrame:
    """Descriptives of one site: every item, integer variable and score; categorical shares.

    Parameters
    ----------
    data : pandas.DataFrame
        Analysis-ready data of one site (as for :func:`analyse_site`). Not modified.
    study : Study
        The plan: variable types and levels, scores, the criers column.
    site : str
        Site code written in the ``site`` column.

    Returns
    -------
    pandas.DataFrame
        Columns ``stats.DESCRIPTIVE_COLUMNS``. Numeric rows (``level`` ""): every
        ``likert`` and ``integer`` variable (so every item and age) and every numeric
        score, in plan order, with n, mean, SD, min, max and percent missing. Categorical
        rows (``mean``..``max`` blank): one per level of every ``category`` variable
        (gender, RQ forced choice), of the criers column (``"true"``/``"false"``, giving
        the percent who cried) and of every boolean score, with count and percent of the
        non-missing. Episode items (and scores made only of them) are asked only of
        criers, so they are described among criers (``subset="criers"``; ``pct_missing``
        among criers); everything else over all analysed participants (``subset="all"``).
        Last, the contingency families' column within each level of their row variable
        (the crying rate by gender, ``another`` included):
        ``variable="cried_in_therapy (gender = another)"``, ``subset="gender=another"``.
        Cell counts are not suppressed here: small-cell suppression is the report's job.
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    criers_col = study.section("analysis")["criers"]
    only = _criers_only(study)
    numeric = [v for v, spec in study.variables.items() if spec["type"] in ("likert", "integer")]
    numeric += [s for s, spec in study.scores.items() if spec["kind"] in ("mean", "linear")]
    categorical: list[tuple[str, list]] = [
        (v, list(spec["levels"])) for v, spec in study.variables.items()
        if spec["type"] == "category"]
    categorical.append((criers_col, [True, False]))
    categorical += [(s, [True, False]) for s, spec in study.scores.items()
                    if spec["kind"] == "not_equal"]
    _require(data, [*numeric, *(v for v, _ in categorical)], "describe_site")
    criers = data.loc[_truth(data, criers_col)]

    frames = []
    for var in numeric:
        subset, rows = (SUBSET_CRIERS, criers) if var in only else (SUBSET_ALL, data)
        frames.append(describe_numeric(_num(rows, var), var).to_frame().assign(subset=subset))
    for var, levels in categorical:
        subset, rows = (SUBSET_CRIERS, criers) if var in only else (SUBSET_ALL, data)
        values = rows[var].astype("boolean") if levels == [True, False] else rows[var]
        for d in describe_categorical(values, levels, var):
            frames.append(d.to_frame().assign(subset=subset))
    frames += _rates_by_row_level(data, study, criers_col)
    out = pd.concat(frames, ignore_index=True).assign(site=site)
    out = out[list(DESCRIPTIVE_COLUMNS)]
    for c in ("site", "variable", "subset", "level"):
        out[c] = out[c].astype("str")
    out["n"] = out["n"].astype("Int64")
    return out
