"""lacrima.stats.groups against R (t.test, wilcox.test, chisq.test, fisher.test, metafor), scipy
and the Borenstein et al. (2009) worked example."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.stats.contingency import association

from lacrima.stats import (
    TwoByTwo, chi_square_2x2, fisher_exact_2x2, hedges_g, hedges_g_from_stats, mann_whitney,
    odds_ratio_woolf, welch_t,
)

REF = json.loads((Path(__file__).parent / "reference" / "stats_reference.json").read_text())
GRP = REF["groups"]
G1, G2 = np.array(GRP["g1"]), np.array(GRP["g2"])

EST = 1e-10       # closed-form estimates vs R, double precision
PVAL = 1e-9       # p values
EXACT_CI = 1e-2   # R fisher.test finds the conditional MLE and its interval with uniroot() at its
                  # default tol (.Machine$double.eps^0.25): R is only good to ~3 digits, so the
                  # tail-probability check below pins our bounds precisely instead
Z95 = stats.norm.ppf(0.975)


def test_welch_matches_r_t_test():
    # t.test(g1, g2, var.equal = FALSE, conf.level = 0.95)
    est = welch_t(G1, G2)
    assert est.estimate == pytest.approx(GRP["welch_diff"], abs=EST)
    assert (est.ci_low, est.ci_high) == pytest.approx(GRP["welch_ci"], abs=EST)
    assert est.statistic == pytest.approx(GRP["welch_t"], abs=EST)
    assert est.df == pytest.approx(GRP["welch_df"], abs=EST)
    assert est.p_value == pytest.approx(GRP["welch_p"], abs=PVAL)
    assert est.n == G1.size + G2.size


def test_welch_matches_scipy_ttest_ind():
    ref = stats.ttest_ind(G1, G2, equal_var=False)
    ci = ref.confidence_interval(confidence_level=0.9)
    est = welch_t(G1, G2, level=0.9)
    assert est.statistic == pytest.approx(ref.statistic, abs=EST)
    assert est.df == pytest.approx(ref.df, abs=EST)
    assert est.p_value == pytest.approx(ref.pvalue, abs=PVAL)
    assert (est.ci_low, est.ci_high) == pytest.approx((ci.low, ci.high), abs=EST)


def test_hedges_g_borenstein_worked_example():
    # Borenstein, Hedges, Higgins & Rothstein (2009), Introduction to Meta-Analysis, ch. 4:
    # means 103/100, SD 5.5/4.5, n 50/50 -> d = 0.5970, Vd = 0.0418, J = 0.9923, g = 0.5924,
    # Vg = J^2 Vd = 0.0411 (checked by hand here; the brief's "Vg 0.0418" is the book's Vd).
    est = hedges_g_from_stats(103, 5.5, 50, 100, 4.5, 50)
    assert round(est.estimate, 4) == 0.5924
    sp = np.sqrt((49 * 5.5 ** 2 + 49 * 4.5 ** 2) / 98)
    d = 3 / sp
    vd = 1 / 50 + 1 / 50 + d ** 2 / 200
    j_approx = 1 - 3 / (4 * 98 - 1)
    assert (round(d, 4), round(vd, 4), round(j_approx, 4)) == (0.5970, 0.0418, 0.9923)
    assert round(j_approx ** 2 * vd, 4) == 0.0411
    # ours is the large-sample variance with g plugged in (metafor's default), 0.0418 here
    assert round(est.se ** 2, 4) == 0.0418


def test_hedges_g_matches_metafor_escalc():
    # metafor::escalc('SMD', m1i = 103, sd1i = 5.5, n1i = 50, m2i = 100, sd2i = 4.5, n2i = 50)
    est = hedges_g_from_stats(103, 5.5, 50, 100, 4.5, 50)
    assert est.estimate == pytest.approx(GRP["borenstein_yi"], abs=EST)
    assert est.se ** 2 == pytest.approx(GRP["borenstein_vi"], abs=EST)
    # escalc('SMD', m1i = mean(g1), sd1i = sd(g1), n1i = length(g1), ...) on raw data
    raw = hedges_g(G1, G2)
    assert raw.estimate == pytest.approx(GRP["smd_yi"], abs=EST)
    assert raw.se ** 2 == pytest.approx(GRP["smd_vi"], abs=EST)


def test_hedges_g_se_is_recoverable_from_the_symmetric_interval():
    est = hedges_g(G1, G2, level=0.95)
    assert (est.ci_high - est.ci_low) / (2 * Z95) == pytest.approx(est.se, rel=1e-12)
    assert est.ci_high - est.estimate == pytest.approx(est.estimate - est.ci_low, rel=1e-12)


def test_mann_whitney_matches_r_and_scipy():
    # wilcox.test(g1, g2, exact = FALSE, correct = TRUE): W is the U of g1
    est = mann_whitney(G1, G2)
    assert est.statistic == GRP["wilcox_w"]
    assert est.p_value == pytest.approx(GRP["wilcox_p"], abs=PVAL)
    ref = stats.mannwhitneyu(G1, G2, alternative="two-sided")
    assert est.statistic == ref.statistic and est.p_value == pytest.approx(ref.pvalue, abs=PVAL)


def test_rank_biserial_is_favourable_minus_unfavourable_pairs():
    est = mann_whitney(G1, G2)
    diff = np.sign(G1[:, None] - G2[None, :])
    assert est.estimate == pytest.approx(diff.mean(), abs=EST)
    assert mann_whitney([5, 6, 7], [1, 2, 3]).estimate == 1.0


def test_group_comparisons_with_a_tiny_group_are_explained():
    for fn in (welch_t, hedges_g):
        est = fn([1.0, 2.0, 3.0], [2.0, np.nan])
        assert not est.estimable and est.n == 4 and "at least 2" in est.note
    assert "zero variance" in welch_t([2, 2, 2], [2, 2]).note
    assert "all values are equal" in mann_whitney([2, 2, 2], [2, 2]).note
    assert not mann_whitney([], [1.0, 2.0]).estimable


@pytest.mark.parametrize("name", ["large", "small", "zero"])
def test_chi_square_matches_r_and_scipy(name):
    # chisq.test(tab, correct = FALSE)
    case = REF["tables"][name]
    table = TwoByTwo.from_counts(case["table"])
    est = chi_square_2x2(table)
    assert est.statistic == pytest.approx(case["chi2"], abs=EST)
    assert est.p_value == pytest.approx(case["chi2_p"], abs=PVAL)
    chi2, p, dof, _ = stats.chi2_contingency(table.as_array(), correction=False)
    assert (est.statistic, est.p_value, est.df) == pytest.approx((chi2, p, dof), abs=EST)
    assert est.estimate == pytest.approx(association(table.as_array(), method="cramer"), abs=EST)


@pytest.mark.parametrize("name", ["large", "small", "zero"])
def test_odds_ratio_woolf_matches_r_hand_calculation(name):
    # exp(log(a d / (b c)) +/- qnorm(0.975) sqrt(sum 1/cells)), Haldane 0.5 when a cell is 0
    case = REF["tables"][name]
    est = odds_ratio_woolf(TwoByTwo.from_counts(case["table"]))
    assert est.estimate == pytest.approx(case["woolf_or"], rel=EST)
    assert (est.ci_low, est.ci_high) == pytest.approx(case["woolf_ci"], rel=EST)
    # log-scale SE recoverable from the interval (pooling relies on it)
    se = (np.log(est.ci_high) - np.log(est.ci_low)) / (2 * Z95)
    assert se == pytest.approx(est.se, rel=1e-12)


def test_odds_ratio_haldane_keeps_zero_cells_finite():
    est = odds_ratio_woolf(TwoByTwo(12, 0, 5, 3))
    assert est.estimate == pytest.approx((12.5 * 3.5) / (0.5 * 5.5), rel=EST)
    assert np.isfinite(est.ci_high)


@pytest.mark.parametrize("name", ["large", "small", "zero"])
def test_fisher_exact_matches_r_fisher_test(name):
    # fisher.test(tab, conf.level = 0.95): conditional MLE odds ratio, exact CI, p
    case = REF["tables"][name]
    table = TwoByTwo.from_counts(case["table"])
    est = fisher_exact_2x2(table)
    assert est.p_value == pytest.approx(case["fisher_p"], abs=PVAL)
    assert est.p_value == pytest.approx(stats.fisher_exact(table.as_array()).pvalue, abs=PVAL)
    # jsonlite writes R's Inf as the string "Inf"; float() reads it back
    ref_or, ref_lo, ref_hi = (float(v) for v in (case["fisher_or"], *case["fisher_ci"]))
    assert est.estimate == pytest.approx(ref_or, rel=EXACT_CI)
    assert est.ci_low == pytest.approx(ref_lo, rel=EXACT_CI)
    assert est.ci_high == pytest.approx(ref_hi, rel=EXACT_CI)
    # exact-interval definition: at the bounds the noncentral hypergeometric tail is 2.5%
    a, b, c, d = table.a, table.b, table.c, table.d
    dist = lambda odds: stats.nchypergeom_fisher(table.n, a + c, a + b, odds)  # noqa: E731
    assert dist(est.ci_low).sf(a - 1) == pytest.approx(0.025, abs=1e-6)
    if np.isfinite(est.ci_high):
        assert dist(est.ci_high).cdf(a) == pytest.approx(0.025, abs=1e-6)


def test_tables_with_an_empty_margin_are_explained_and_bad_cells_raise():
    empty = TwoByTwo(5, 3, 0, 0)
    for fn in (chi_square_2x2, odds_ratio_woolf, fisher_exact_2x2):
        est = fn(empty)
        assert not est.estimable and "empty" in est.note and est.n == 8
    with pytest.raises(ValueError, match="count"):
        TwoByTwo(1, -1, 2, 3)
    with pytest.raises(ValueError, match="2x2"):
        TwoByTwo.from_counts([[1, 2, 3], [4, 5, 6]])
    assert TwoByTwo(9, 1, 3, 4).expected().min() < 5
