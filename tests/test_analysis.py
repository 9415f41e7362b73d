"""lacrima.analysis: the plan run on one site, checked row by row against scipy/statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests

from lacrima.analysis import NOT_ESTIMABLE, analyse_site, base_method, describe_site
from lacrima.stats import DESCRIPTIVE_COLUMNS
from lacrima.vocabulary import RESULTS_COLUMNS

EST = 1e-10
PVAL = 1e-9
Z95 = stats.norm.ppf(0.975)


def make_site(study, n=150, seed=7, cried_share=0.8):
    """An analysis-ready frame built from the plan: nullable dtypes, episode items blank
    for non-criers, scores computed as in protocol section 4 (enough for these tests)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    criers = rng.random(n) < cried_share
    cols = {}
    for name, spec in study.variables.items():
        kind = spec["type"]
        if kind in ("likert", "integer"):
            lo, hi = spec["valid"]
            hi = min(hi, lo + 60)
            raw = (lo + hi) / 2 + latent * (hi - lo) / 6 + rng.normal(size=n) * (hi - lo) / 4
            s = pd.array(np.clip(np.round(raw), lo, hi).astype(int), dtype="Int64")
            if spec.get("group") == "episode":
                s[~criers] = pd.NA
            cols[name] = s
        elif kind == "bool":
            cols[name] = pd.array(np.ones(n, bool), dtype="boolean")
        elif kind == "category":
            cols[name] = pd.array(rng.choice(spec["levels"], size=n), dtype="str")
        else:
            cols[name] = pd.array([f"P{i:03d}" for i in range(n)], dtype="str")
    df = pd.DataFrame(cols)
    df[study.section("analysis")["criers"]] = pd.array(criers, dtype="boolean")
    for score, spec in study.scores.items():
        if spec["kind"] == "mean":
            items = df[list(spec["items"])].astype(float)
            ok = items.notna().sum(axis=1) >= spec["min_present"]
            df[score] = items.mean(axis=1).where(ok).astype("Float64")
        elif spec["kind"] == "linear":
            plus = df[list(spec["plus"])].astype(float).sum(axis=1, skipna=False)
            minus = (df[list(spec["minus"])].astype(float).sum(axis=1, skipna=False)
                     if spec["minus"] else 0)
            df[score] = (plus - minus).astype("Int64")
        else:
            df[score] = (df[spec["variable"]] != spec["value"]).astype("boolean")
    return df


def fl(frame, column):
    return frame[column].to_numpy(dtype=float, na_value=np.nan)


@pytest.fixture(scope="module")
def data(study):
    return make_site(study)


@pytest.fixture(scope="module")
def results(data, study):
    return analyse_site(data, study, "us")


def pick(results, **where):
    mask = np.ones(len(results), bool)
    for k, v in where.items():
        mask &= (results[k] == v).to_numpy()
    return results.loc[mask]


def one(results, **where):
    rows = pick(results, **where)
    assert len(rows) == 1, f"expected one row for {where}, got {len(rows)}"
    return rows.iloc[0]


def test_columns_types_and_row_counts(results, study):
    assert tuple(results.columns) == RESULTS_COLUMNS
    assert results["run_id"].isna().all() and (results["site"] == "us").all()
    assert str(results["n"].dtype) == "Int64"
    for col in ("k", "tau2", "i2", "q", "q_p", "pi_low", "pi_high"):
        assert results[col].isna().all()
    counts = results.groupby(["family", "analysis"]).size().to_dict()
    fam = {f["id"]: f for f in study.families}
    for fid in ("H1", "H2", "H3", "H4"):
        pairs = len(fam[fid]["x"]) * len(fam[fid]["y"])
        assert counts[(fid, "correlation")] == counts[(fid, "spearman")] == pairs
    assert counts[("A1", "partial_correlation")] == 8 * 3
    assert counts[("A2", "t_test")] == 2 and counts[("A2", "mann_whitney")] == 1
    assert counts[("A3", "chi_square")] == 2
    assert counts[("A4", "regression")] == 6 + 5 + 1
    assert counts[("reliability", "reliability")] == len(study.section("reliability")["scores"])
    assert not results["method"].str.contains(NOT_ESTIMABLE, regex=False).any()


def test_correlation_rows_use_criers_only_and_match_scipy(results, data):
    criers = data.loc[data["cried_in_therapy"].fillna(False).astype(bool)]
    row = one(results, family="H2", analysis="correlation", x="therapist_support")
    x, y = fl(criers, "therapist_support"), fl(criers, "alliance")
    ok = ~np.isnan(x) & ~np.isnan(y)
    ref = stats.pearsonr(x[ok], y[ok])
    ci = ref.confidence_interval()
    assert row["n"] == ok.sum() < len(data)
    assert row["estimate"] == pytest.approx(ref.statistic, abs=EST)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), abs=EST)
    assert row["p_value"] == pytest.approx(ref.pvalue, abs=PVAL)
    assert (row["y"], row["covariates"], row["method"]) == ("alliance", "", "pearson")
    assert row["df"] == ok.sum() - 2
    sp = one(results, family="H2", analysis="spearman", x="therapist_support")
    assert sp["estimate"] == pytest.approx(stats.spearmanr(x[ok], y[ok]).statistic, abs=EST)
    assert sp["method"] == "spearman"


def test_partial_rows_label_covariates_in_plan_order(results, study):
    sets = study.family("A1")["covariate_sets"]
    labels = set(pick(results, family="A1")["covariates"])
    assert labels == {"+".join(s) for s in sets}
    row = one(results, family="A1", x="after_relaxed",
              covariates="alliance+attachment_anxiety+attachment_avoidance")
    assert row["df"] == row["n"] - 2 - 3 and row["method"] == "pearson_partial"
    se = (np.arctanh(row["ci_high"]) - np.arctanh(row["ci_low"])) / (2 * Z95)
    assert se == pytest.approx(1 / np.sqrt(row["n"] - 3 - 3), rel=1e-12)


def test_holm_within_family_and_analysis(results):
    for fam, analysis in [("H1", "correlation"), ("H1", "spearman"), ("H4", "correlation"),
                          ("A1", "partial_correlation")]:
        rows = pick(results, family=fam, analysis=analysis)
        ref = multipletests(rows["p_value"].to_numpy(), method="holm")[1]
        np.testing.assert_allclose(rows["p_adjusted"].to_numpy(), ref, atol=PVAL)
        assert (rows["p_adjusted"] >= rows["p_value"] - 1e-15).all()
    assert len(pick(results, family="A1")) == 24   # one Holm set of 24
    for fam in ("A2", "A3", "A4", "reliability"):
        assert pick(results, family=fam)["p_adjusted"].isna().all()


def test_group_comparison_rows(results, data):
    g = data["cried_in_therapy"].astype("boolean")
    y = fl(data, "change")
    yes, no = y[g.fillna(False).to_numpy(bool)], y[(~g).fillna(False).to_numpy(bool)]
    ref = stats.ttest_ind(yes, no, equal_var=False)
    welch = one(results, family="A2", method="welch")
    assert (welch["x"], welch["y"]) == ("cried_in_therapy", "change")
    assert welch["estimate"] == pytest.approx(yes.mean() - no.mean(), abs=EST)
    assert welch["statistic"] == pytest.approx(ref.statistic, abs=EST)
    assert welch["p_value"] == pytest.approx(ref.pvalue, abs=PVAL)
    g_row = one(results, family="A2", method="hedges_g")
    assert g_row["statistic"] == welch["statistic"] and g_row["p_value"] == welch["p_value"]
    se = (g_row["ci_high"] - g_row["ci_low"]) / (2 * Z95)
    assert se ** 2 == pytest.approx(1 / yes.size + 1 / no.size + g_row["estimate"] ** 2
                                    / (2 * (yes.size + no.size)), rel=1e-12)
    mw = one(results, family="A2", analysis="mann_whitney")
    assert mw["statistic"] == stats.mannwhitneyu(yes, no).statistic


def test_contingency_rows_exclude_other_levels(results, data):
    known = data["gender"].isin(["woman", "man"])
    sub = data.loc[known]
    # reindex, not .loc: a [True, False] list in .loc is read as a boolean mask
    tab = pd.crosstab(sub["gender"], sub["cried_in_therapy"]).reindex(
        index=["woman", "man"], columns=[True, False], fill_value=0)
    chi2, p, _, _ = stats.chi2_contingency(tab.to_numpy(), correction=False)
    row = one(results, family="A3", method="pearson_chi2")
    assert row["n"] == known.sum() < len(data)
    assert (row["statistic"], row["p_value"]) == pytest.approx((chi2, p), abs=PVAL)
    (a, b), (c, d) = tab.to_numpy()
    orow = one(results, family="A3", method="odds_ratio")
    assert orow["estimate"] == pytest.approx(a * d / (b * c), rel=EST)
    assert orow["p_value"] == row["p_value"]
    assert (orow["x"], orow["y"]) == ("gender", "cried_in_therapy")
    # every expected count is >= 5 here, so no Fisher row
    assert (stats.contingency.expected_freq(tab.to_numpy()) >= 5).all()
    assert pick(results, family="A3", analysis="fisher_exact").empty


def test_fisher_row_appears_only_with_small_expected_counts(study):
    df = make_site(study, n=40, seed=3, cried_share=0.9)
    res = analyse_site(df, study, "it")
    fisher = pick(res, family="A3", analysis="fisher_exact")
    sub = df.loc[df["gender"].isin(["woman", "man"])]
    tab = pd.crosstab(sub["gender"], sub["cried_in_therapy"]).reindex(
        index=["woman", "man"], columns=[True, False], fill_value=0).to_numpy()
    small = (stats.contingency.expected_freq(tab) < 5).any()
    assert small and len(fisher) == 1
    assert fisher.iloc[0]["p_value"] == pytest.approx(stats.fisher_exact(tab).pvalue, abs=PVAL)


def test_regression_rows(results, data, study):
    fam = study.family("A4")
    rows = pick(results, family="A4")
    raw = rows.loc[rows["method"] == "ols_hc3"]
    assert list(raw["x"]) == ["Intercept", *fam["x"]]
    assert (rows["covariates"] == "").all() and (rows["y"] == "change").all()
    std = rows.loc[rows["method"] == "ols_hc3_standardized"]
    assert list(std["x"]) == list(fam["x"])
    r2 = one(results, family="A4", method="ols_r2")
    assert r2["x"] == "R2" and 0 < r2["estimate"] < 1

    criers = data.loc[data["cried_in_therapy"].fillna(False).astype(bool)]
    frame = pd.DataFrame({c: fl(criers, c) for c in ["change", *fam["x"]]}).dropna()
    design = sm.add_constant(frame[list(fam["x"])])
    ref = sm.OLS(frame["change"], design).fit(cov_type="HC3", use_t=True)
    np.testing.assert_allclose(raw["estimate"], ref.params, atol=EST)
    np.testing.assert_allclose(raw["p_value"], ref.pvalues, atol=PVAL)


def test_reliability_rows(results, data, study):
    rows = pick(results, family="reliability")
    assert list(rows["x"]) == list(study.section("reliability")["scores"])
    assert (rows["y"] == "").all() and (rows["method"] == "cronbach_alpha_feldt").all()
    pos = one(results, family="reliability", x="positive_after")
    items = data[list(study.scores["positive_after"]["items"])].dropna()
    assert pos["n"] == len(items)
    x = items.to_numpy(float)
    k = x.shape[1]
    alpha = k / (k - 1) * (1 - x.var(0, ddof=1).sum() / x.sum(1).var(ddof=1))
    assert pos["estimate"] == pytest.approx(alpha, abs=EST)


def test_missing_values_drop_only_the_analyses_that_need_them(data, study, results):
    df = data.copy()
    df.loc[df.index[:10], "therapist_support"] = pd.NA
    res = analyse_site(df, study, "us")
    crier_blanked = df["cried_in_therapy"].iloc[:10].fillna(False).sum()
    before = one(results, family="H2", analysis="correlation", x="therapist_support")["n"]
    after = one(res, family="H2", analysis="correlation", x="therapist_support")["n"]
    assert before - after == crier_blanked > 0
    for fam, x in [("H2", "therapist_compassion"), ("H1", "after_relaxed")]:
        assert one(res, family=fam, analysis="correlation", x=x)["n"] == \
            one(results, family=fam, analysis="correlation", x=x)["n"]


def test_input_is_not_modified(data, study):
    before = data.copy()
    analyse_site(data, study, "us")
    describe_site(data, study, "us")
    pd.testing.assert_frame_equal(data, before)


def test_degenerate_site_gives_explained_rows_not_errors(study):
    df = make_site(study, n=6, seed=1, cried_share=0.5)
    res = analyse_site(df, study, "il")
    assert tuple(res.columns) == RESULTS_COLUMNS
    bad = res.loc[res["method"].str.contains(NOT_ESTIMABLE, regex=False)]
    assert len(bad) > 0
    assert bad["estimate"].isna().all() and bad["n"].notna().all()
    assert set(bad["method"].map(base_method)) <= {
        "pearson", "spearman", "pearson_partial", "welch", "hedges_g", "mann_whitney_u",
        "pearson_chi2", "odds_ratio", "fisher_exact", "ols_hc3", "ols_hc3_standardized",
        "ols_r2", "cronbach_alpha_feldt"}
    h1 = pick(res, family="H1", analysis="correlation")
    assert h1["method"].str.startswith("pearson; not estimable: n = ").all()
    # every estimate that is present has its method plain
    good = res.loc[~res["method"].str.contains(NOT_ESTIMABLE, regex=False)]
    assert good["estimate"].notna().all()


def test_missing_plan_column_raises_clearly(data, study):
    with pytest.raises(KeyError, match="after_relaxed"):
        analyse_site(data.drop(columns=["after_relaxed"]), study, "us")
    with pytest.raises(TypeError, match="DataFrame"):
        analyse_site(data.to_dict(), study, "us")


def test_describe_site(data, study):
    d = describe_site(data, study, "us")
    assert tuple(d.columns) == DESCRIPTIVE_COLUMNS and (d["site"] == "us").all()
    numeric = d.loc[d["level"] == ""]
    assert numeric["variable"].is_unique
    for var in ("age", "wai_01", "ctsc_16", "alliance", "change", "attachment_anxiety",
                "after_sad"):
        assert var in set(numeric["variable"])
    age = one(d, variable="age")
    a = fl(data, "age")
    assert (age["n"], age["mean"], age["sd"], age["min"], age["max"]) == pytest.approx(
        (len(a), a.mean(), a.std(ddof=1), a.min(), a.max()))
    # episode items are described among criers, so blanks of non-criers are not "missing"
    sad = one(d, variable="after_sad")
    assert sad["subset"] == "criers" and sad["pct_missing"] == 0.0
    assert sad["n"] == data["cried_in_therapy"].sum()
    assert one(d, variable="positive_after")["subset"] == "criers"
    gender = d.loc[d["variable"] == "gender"]
    assert list(gender["level"]) == ["woman", "man", "another"]
    assert gender["count"].sum() == len(data) and gender["percent"].sum() == pytest.approx(100)
    cried = one(d, variable="cried_in_therapy", level="true")
    assert cried["percent"] == pytest.approx(100 * data["cried_in_therapy"].mean())
