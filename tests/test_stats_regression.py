"""lacrima.stats.regression against R lm + sandwich::vcovHC(type = 'HC3') and statsmodels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from lacrima.stats import ols_hc3

REF_FILE = Path(__file__).parent / "reference" / "stats_reference.json"
REF = json.loads(REF_FILE.read_text())["regression"]
DATA = pd.DataFrame(REF["data"])
NAMES = ["p1", "p2", "p3"]

EST = 1e-9    # coefficients and SEs vs R: same sandwich formula, double precision
PVAL = 1e-9


@pytest.fixture(scope="module")
def fit():
    return ols_hc3(DATA["y"], DATA[NAMES].to_numpy(), NAMES)


def test_coefficients_match_r_coeftest_hc3(fit):
    # fit <- lm(y ~ p1 + p2 + p3, d)
    # lmtest::coeftest(fit, vcov. = sandwich::vcovHC(fit, type = 'HC3'))
    # lmtest::coefci(fit, vcov. = sandwich::vcovHC(fit, type = 'HC3'))
    assert fit.terms == ("Intercept", *NAMES)
    got = np.array([[e.estimate, e.se, e.statistic, e.p_value, e.ci_low, e.ci_high]
                    for e in fit.coefficients])
    ref = np.column_stack([REF["b"], REF["se"], REF["t"], REF["p"], REF["ci_low"], REF["ci_high"]])
    np.testing.assert_allclose(got[:, [0, 1, 2, 4, 5]], ref[:, [0, 1, 2, 4, 5]], atol=EST)
    np.testing.assert_allclose(got[:, 3], ref[:, 3], atol=PVAL)
    assert all(e.df == REF["df_resid"] == 36 for e in fit.coefficients)
    assert fit.r2.estimate == pytest.approx(REF["r2"], abs=EST)
    assert fit.n == 40


def test_standardized_match_r_on_scaled_data(fit):
    # zfit <- lm(y ~ p1 + p2 + p3, as.data.frame(scale(d))) with the same HC3 coeftest/coefci
    got = np.array([[e.estimate, e.se, e.p_value, e.ci_low, e.ci_high] for e in fit.standardized])
    ref = np.column_stack([REF["beta"], REF["beta_se"], REF["beta_p"], REF["beta_ci_low"],
                           REF["beta_ci_high"]])
    np.testing.assert_allclose(got, ref, atol=EST)
    # beta_j = b_j sd(x_j) / sd(y)
    b = np.array([e.estimate for e in fit.coefficients[1:]])
    beta = b * DATA[NAMES].std().to_numpy() / DATA["y"].std()
    np.testing.assert_allclose([e.estimate for e in fit.standardized], beta, atol=EST)


def test_hc3_matches_hand_sandwich_and_statsmodels(fit):
    x = sm.add_constant(DATA[NAMES].to_numpy())
    y = DATA["y"].to_numpy()
    bread = np.linalg.inv(x.T @ x)
    b = bread @ x.T @ y
    e = y - x @ b
    h = np.einsum("ij,jk,ik->i", x, bread, x)
    meat = x.T @ (x * (e ** 2 / (1 - h) ** 2)[:, None])
    se = np.sqrt(np.diag(bread @ meat @ bread))
    np.testing.assert_allclose([c.se for c in fit.coefficients], se, rtol=1e-10)
    ref = sm.OLS(y, x).fit(cov_type="HC3", use_t=True)
    np.testing.assert_allclose([c.statistic for c in fit.coefficients], ref.tvalues, rtol=1e-10)
    # t(df_resid), not the normal: the CI half-width uses the t quantile
    c = fit.coefficients[1]
    assert c.ci_high - c.estimate == pytest.approx(stats.t.ppf(0.975, 36) * c.se, rel=1e-10)


def test_to_frame_lists_b_beta_and_r2():
    frame = ols_hc3(DATA["y"], DATA[NAMES].to_numpy(), NAMES).to_frame()
    assert list(frame["method"]) == ["ols_hc3"] * 4 + ["ols_hc3_standardized"] * 3 + ["ols_r2"]
    assert list(frame["term"]) == ["Intercept", *NAMES, *NAMES, "R2"]


def test_listwise_deletion_counts_complete_cases():
    d = DATA.copy()
    d.loc[[0, 3], "p2"] = np.nan
    d.loc[7, "y"] = np.nan
    res = ols_hc3(d["y"], d[NAMES].to_numpy(), NAMES)
    ref = ols_hc3(DATA["y"].drop([0, 3, 7]), DATA[NAMES].drop([0, 3, 7]).to_numpy(), NAMES)
    assert res.n == 37
    assert res.coefficients[2].estimate == pytest.approx(ref.coefficients[2].estimate, abs=EST)


def test_degenerate_models_are_explained_not_raised():
    few = ols_hc3(DATA["y"][:5], DATA[NAMES].to_numpy()[:5], NAMES)
    assert few.note and "fewer than 6" in few.note
    assert all(np.isnan(c.estimate) and not c.estimable for c in few.coefficients)
    assert len(few.to_frame()) == 8
    x = DATA[NAMES].to_numpy().copy()
    x[:, 2] = 2 * x[:, 0]
    assert "collinear" in ols_hc3(DATA["y"], x, NAMES).note
    x = DATA[NAMES].to_numpy().copy()
    x[:, 1] = 1.0
    assert "zero variance" in ols_hc3(DATA["y"], x, NAMES).note


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="names"):
        ols_hc3(DATA["y"], DATA[NAMES].to_numpy(), ["p1"])
    with pytest.raises(ValueError, match="rows"):
        ols_hc3(DATA["y"][:10], DATA[NAMES].to_numpy(), NAMES)
