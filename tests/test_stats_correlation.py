"""lacrima.stats.correlation against R cor.test / psych::partial.r, scipy and statsmodels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lacrima.stats import partial_correlation, pearson, spearman

REF = json.loads((Path(__file__).parent / "reference" / "stats_reference.json").read_text())
COR = REF["correlation"]
X, Y = np.array(COR["x"]), np.array(COR["y"])
Z = np.column_stack([COR["z1"], COR["z2"]])

EST = 1e-10    # estimates vs R: both double precision, same closed form
PVAL = 1e-9    # p values: R pt() vs scipy t.sf
Z95 = stats.norm.ppf(0.975)


def test_pearson_matches_r_cor_test():
    # cor.test(x, y, method = 'pearson', conf.level = 0.95) in tests/reference/stats_reference.R
    est = pearson(X, Y)
    assert est.estimate == pytest.approx(COR["pearson_r"], abs=EST)
    assert (est.ci_low, est.ci_high) == pytest.approx(COR["pearson_ci"], abs=EST)
    assert est.statistic == pytest.approx(COR["pearson_t"], abs=EST)
    assert est.df == COR["pearson_df"]
    assert est.p_value == pytest.approx(COR["pearson_p"], abs=PVAL)
    assert est.n == 30 and est.method == "pearson" and est.estimable


def test_pearson_matches_scipy_pearsonr_fisher_ci():
    rng = np.random.default_rng(3)
    x = rng.normal(size=57)
    y = 0.6 * x + rng.normal(size=57)
    ref = stats.pearsonr(x, y)
    ci = ref.confidence_interval(confidence_level=0.9)   # scipy's CI is Fisher z
    est = pearson(x, y, level=0.9)
    assert est.estimate == pytest.approx(ref.statistic, abs=EST)
    assert (est.ci_low, est.ci_high) == pytest.approx((ci.low, ci.high), abs=EST)
    assert est.p_value == pytest.approx(ref.pvalue, abs=PVAL)


def test_pearson_drops_incomplete_pairs_only():
    x = np.array([1.0, 2, 3, np.nan, 5, 6, 7])
    y = np.array([2.0, 1, 4, 3, np.nan, 7, 6])
    est = pearson(x, y)
    keep = ~np.isnan(x) & ~np.isnan(y)
    assert est.n == 5
    assert est.estimate == pytest.approx(stats.pearsonr(x[keep], y[keep]).statistic, abs=EST)


def test_fisher_se_is_recoverable_from_the_interval():
    # pooling recovers se = (atanh(hi) - atanh(lo)) / (2 z); it must be exactly 1/sqrt(n-3-g)
    est = pearson(X, Y)
    se = (np.arctanh(est.ci_high) - np.arctanh(est.ci_low)) / (2 * Z95)
    assert se == pytest.approx(1 / np.sqrt(30 - 3), rel=1e-12)
    part = partial_correlation(X, Y, Z)
    se = (np.arctanh(part.ci_high) - np.arctanh(part.ci_low)) / (2 * Z95)
    assert se == pytest.approx(1 / np.sqrt(30 - 3 - 2), rel=1e-12)


def test_spearman_matches_r_and_scipy():
    # cor.test(x, y, method = 'spearman', exact = FALSE): t approximation, as scipy.spearmanr
    est = spearman(X, Y)
    assert est.estimate == pytest.approx(COR["spearman_rho"], abs=EST)
    assert est.p_value == pytest.approx(COR["spearman_p"], abs=PVAL)
    ref = stats.spearmanr(X, Y)
    assert est.estimate == pytest.approx(ref.statistic, abs=EST)
    assert est.method == "spearman" and est.df == 28


def test_spearman_interval_uses_bonett_wright_se():
    # Bonett & Wright (2000): var(atanh rho) = (1 + rho^2 / 2) / (n - 3)
    est = spearman(X, Y)
    rho, n = est.estimate, est.n
    half = Z95 * np.sqrt((1 + rho ** 2 / 2) / (n - 3))
    assert est.ci_low == pytest.approx(np.tanh(np.arctanh(rho) - half), abs=EST)
    assert est.ci_high == pytest.approx(np.tanh(np.arctanh(rho) + half), abs=EST)
    # wider than the Pearson-style 1/sqrt(n-3) interval
    assert est.ci_high - est.ci_low > np.tanh(np.arctanh(rho) + Z95 / np.sqrt(n - 3)) - \
        np.tanh(np.arctanh(rho) - Z95 / np.sqrt(n - 3))


def test_partial_matches_psych_partial_r():
    # psych::partial.r(data.frame(x, y, z1, z2), c(1, 2), c(3, 4))[1, 2] (precision-matrix method)
    est = partial_correlation(X, Y, Z)
    assert est.estimate == pytest.approx(COR["partial_r"], abs=EST)
    assert est.df == 30 - 2 - 2 and est.method == "pearson_partial"


def test_partial_matches_statsmodels_residual_regression_and_t_test():
    rng = np.random.default_rng(11)
    z = rng.normal(size=(80, 3))
    x = z @ [0.5, -0.2, 0.1] + rng.normal(size=80)
    y = 0.3 * x + z @ [0.2, 0.4, -0.3] + rng.normal(size=80)
    ex = sm.OLS(x, sm.add_constant(z)).fit().resid
    ey = sm.OLS(y, sm.add_constant(z)).fit().resid
    est = partial_correlation(x, y, z)
    assert est.estimate == pytest.approx(np.corrcoef(ex, ey)[0, 1], abs=EST)
    # the t of x in y ~ x + z equals the partial-r t on n - 2 - g df
    full = sm.OLS(y, sm.add_constant(np.column_stack([x, z]))).fit()
    assert est.statistic == pytest.approx(full.tvalues[1], rel=1e-9)
    assert est.p_value == pytest.approx(full.pvalues[1], rel=1e-7)


def test_partial_with_one_covariate_as_1d_array_drops_incomplete_rows():
    z = np.array(COR["z1"])
    z[[0, 5]] = np.nan
    est = partial_correlation(X, Y, z)
    keep = ~np.isnan(z)
    ref = partial_correlation(X[keep], Y[keep], z[keep][:, None])
    assert est.n == 28 and est.estimate == pytest.approx(ref.estimate, abs=EST)


@pytest.mark.parametrize("fn", [pearson, spearman])
def test_too_few_cases_is_explained_not_raised(fn):
    est = fn([1.0, 2.0, 3.0, np.nan], [2.0, 1.0, 3.0, 4.0])
    assert not est.estimable and est.n == 3 and "fewer than 4" in est.note
    assert np.isnan(est.estimate) and np.isnan(est.p_value)


def test_zero_variance_and_collinear_covariates_are_explained():
    assert "zero variance" in pearson([1, 1, 1, 1, 1], [1, 2, 3, 4, 5]).note
    z = np.column_stack([X, 2 * X])
    assert "collinear" in partial_correlation(Y, np.array(COR["z1"]), z).note
    assert "linear function" in partial_correlation(2 * X + 1, Y, X).note
    # n - 3 - g must be at least 1
    assert "fewer than 6" in partial_correlation(X[:5], Y[:5], Z[:5]).note


def test_bad_arguments_raise_with_a_message():
    with pytest.raises(ValueError, match="same length"):
        pearson([1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="level"):
        pearson(X, Y, level=95)
    with pytest.raises(ValueError, match="same number of rows"):
        partial_correlation(X, Y, Z[:10])


finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=4, max_size=25))
def test_correlations_are_symmetric_and_intervals_contain_the_estimate(pairs):
    x, y = np.array(pairs).T
    for fn in (pearson, spearman):
        a, b = fn(x, y), fn(y, x)
        assert a.note == b.note
        if a.estimable:
            assert a.estimate == pytest.approx(b.estimate, abs=1e-9)
            assert -1 <= a.estimate <= 1
            assert a.ci_low <= a.estimate + 1e-12 and a.estimate <= a.ci_high + 1e-12
