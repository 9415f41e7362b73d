"""lacrima.replication: published/package values, hand-worked examples and the verdict rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from lacrima import vocabulary as voc
from lacrima.replication import (
    GOLDEN_RATIO, difference_p, evaluate_verdict, patil_interval, r33, replication_table,
    sceptical_p, small_telescope_p,
)
from lacrima.study import load_sites

TOL_P = 1e-12      # p values recomputed from closed forms
TOL_R = 1e-6       # correlations from closed forms written to 7 digits


# ReplicationSuccess tests/testthat/test-pSceptical.R ("numeric test for pSceptical(): 2"):
#   pSceptical(zo = seq(-4, 4, 2), zr = zr, c = 0.05, alternative = alt, type = "nominal")
PACKAGE_GRID = {
    ("one.sided", -4): [0.000149544079762546, 0.0236343314115514, 0.5, 0.976365668588449,
                        0.999850455920237],
    ("one.sided", -2): [0.0236343314115514, 0.0352998069509419, 0.5, 0.964700193049058,
                        0.976365668588449],
    ("one.sided", 0): [0.5] * 5,
    ("two.sided", -4): [0.000299088159525091, 0.0472686628231029, 1, 0.0472686628231029,
                        0.000299088159525091],
    ("two.sided", -2): [0.0472686628231029, 0.0705996139018838, 1, 0.0705996139018838,
                        0.0472686628231029],
}


@pytest.mark.parametrize("alt, zr", sorted(PACKAGE_GRID))
def test_sceptical_nominal_matches_replicationsuccess_tests(alt, zr):
    got = [sceptical_p(zo, zr, 0.05, alt, "nominal") for zo in (-4, -2, 0, 2, 4)]
    np.testing.assert_allclose(got, PACKAGE_GRID[(alt, zr)], atol=1e-12)


def test_sceptical_nominal_package_examples():
    # test-pSceptical.R "numeric test 1": expected 0.083 and 0.05 with tol = 0.01.
    assert sceptical_p(np.sqrt(12.19), np.sqrt(3.99), 1, "two.sided", "nominal") == \
        pytest.approx(0.083, abs=0.01)
    assert sceptical_p(2.33, 2.33, 1, "one.sided", "nominal") == pytest.approx(0.05, abs=0.01)


def test_sceptical_golden_is_recalibrated_by_sqrt_phi():
    # pSceptical(..., type = "golden") uses z_S * sqrt(phi), phi = (1 + sqrt(5)) / 2.
    zo, zr, c = 2.5, 2.0, 1.5
    z_nominal = stats.norm.isf(sceptical_p(zo, zr, c, "two.sided", "nominal") / 2)
    golden = sceptical_p(zo, zr, c, "one.sided", "golden")
    assert golden == pytest.approx(stats.norm.sf(z_nominal * np.sqrt(GOLDEN_RATIO)), abs=TOL_P)


def test_golden_level_minimum_relative_effect_size():
    # Held, Micheloud & Pawel (2022): with an original just significant at one-sided
    # 0.025, success (golden p_S <= 0.025) needs a relative effect size
    # d = (zr / zo) / sqrt(c) of at least sqrt(phi) when c = 1, and d_min falls toward 1
    # as the replication grows (c -> infinity).
    zo = stats.norm.isf(0.025)

    def d_min(c):
        zr = optimize.brentq(lambda z: sceptical_p(zo, z, c) - 0.025, 0.01, 80, xtol=1e-12)
        return zr / zo / np.sqrt(c)

    assert d_min(1.0) == pytest.approx(np.sqrt(GOLDEN_RATIO), abs=1e-8)
    assert 1.0 < d_min(100.0) < 1.01
    assert d_min(2.0) > d_min(10.0)


def test_patil_interval_worked_example():
    # r_o = .30, n_o = 106, n_r = 124 (Italy's and the US published n):
    # atanh(.3) = 0.3095196; se = sqrt(1/103 + 1/121) = 0.1340642;
    # tanh(0.3095196 -/+ 1.959964 * 0.1340642) = 0.0467246, 0.5170321
    # (python3: math.tanh(math.atanh(.3) -/+ 1.959963984540054 * math.sqrt(1/103 + 1/121)))
    lo, hi = patil_interval(0.30, 106, 124)
    assert (lo, hi) == pytest.approx((0.0467246, 0.5170321), abs=TOL_R)
    lo_g, hi_g = patil_interval(0.30, 106, 124, g=3)  # wider with 3 covariates
    assert lo_g < lo and hi_g > hi


def test_difference_test_worked_example():
    # z = (atanh(.3) - atanh(.1)) / sqrt(1/103 + 1/121) = 1.5603294; p = 2 * (1 - pnorm(z))
    p = difference_p(0.30, 106, 0.10, 124)
    assert p == pytest.approx(2 * stats.norm.sf(1.5603294), abs=1e-7)
    assert difference_p(0.2, 80, 0.2, 300) == pytest.approx(1.0, abs=TOL_P)


def test_r33_has_33_percent_power():
    r = r33(103)
    delta = np.arctanh(r) * np.sqrt(100)
    zc = stats.norm.isf(0.025)
    assert stats.norm.cdf(delta - zc) + stats.norm.cdf(-delta - zc) == pytest.approx(0.33, abs=1e-10)
    # The one-tailed closed form tanh((z_.975 + qnorm(.33)) / sqrt(n - 3)) = 0.1508504
    # ignores the far tail, so it is a hair larger.
    assert r == pytest.approx(0.1508504, abs=2e-4) and r < 0.1508504
    assert r33(103, sign=-1) == -r


def test_small_telescope_direction():
    r_33 = r33(103)
    # A replication r of 0 with n = 124: z = (0 - atanh(r33)) * sqrt(121), p = pnorm(z).
    assert small_telescope_p(0.0, 124, r_33) == pytest.approx(
        stats.norm.cdf(-np.arctanh(r_33) * 11), abs=TOL_P)
    # Mirrored for negative effects: same p for the mirrored question.
    assert small_telescope_p(-0.05, 124, -r_33) == pytest.approx(
        small_telescope_p(0.05, 124, r_33), abs=TOL_P)


def _rows():
    def row(family, site, x, r, n, p, analysis="correlation", method="pearson", cov=""):
        base = {c: np.nan for c in voc.RESULTS_COLUMNS}
        base.update(family=family, analysis=analysis, site=site, x=x, y="change", covariates=cov,
                    n=n, estimate=r, p_value=p, method=method, run_id="r")
        return base

    out = []
    # replicated: same direction, significant, inside both intervals
    for site, r, n, p in (("it", 0.35, 100, 1e-3), ("il", 0.30, 95, 3e-3), ("us", 0.33, 124, 2e-4)):
        out.append(row("H1", site, "after_relaxed", r, n, p))
    # not replicated: significant in the opposite direction
    for site, r, n, p in (("it", 0.30, 100, 1e-3), ("il", 0.30, 95, 3e-3), ("us", -0.25, 124, 5e-3)):
        out.append(row("H1", site, "after_in_control", r, n, p))
    # inconclusive: small, not significant, inside the interval
    for site, r, n, p in (("it", 0.15, 100, 0.13), ("il", 0.10, 95, 0.33), ("us", 0.12, 124, 0.18)):
        out.append(row("H1", site, "after_happy", r, n, p))
    # A1 partial correlation with p missing for the US (recomputed from r)
    for site, r, n, p in (("it", 0.25, 100, 0.01), ("il", 0.20, 95, 0.05), ("us", 0.22, 124, np.nan)):
        out.append(row("A1", site, "after_relaxed", r, n, p, "partial_correlation",
                       "pearson_partial", "alliance"))
    # spearman rows and an effect missing in the US are ignored
    out.append(row("H1", "us", "after_sad", -0.1, 124, 0.2, "spearman", "spearman"))
    out.append(row("H1", "it", "after_sad", -0.1, 100, 0.3))
    return pd.DataFrame(out, columns=list(voc.RESULTS_COLUMNS))


def test_replication_table(study):
    rows = _rows()
    before = rows.copy()
    table = replication_table(rows, study, load_sites())
    pd.testing.assert_frame_equal(rows, before)  # input untouched
    assert list(table.columns) == list(voc.REPLICATION_COLUMNS)
    assert len(table) == 8  # 4 effects x 2 original sites
    assert set(table["replication_site"]) == {"us"} and set(table["original_site"]) == {"it", "il"}
    verdict = table.set_index(["x", "covariates", "original_site"])["verdict"]
    assert verdict[("after_relaxed", "", "it")] == "replicated"
    assert verdict[("after_in_control", "", "it")] == "not replicated"
    assert verdict[("after_happy", "", "il")] == "inconclusive"
    a1 = table[(table["effect"] == "A1") & (table["original_site"] == "it")].iloc[0]
    # g = 1 covariate: PI variance 1/(100 - 4) + 1/(124 - 4)
    lo, hi = patil_interval(0.25, 100, 124, g=1)
    assert (a1["pi_low"], a1["pi_high"]) == pytest.approx((lo, hi), abs=TOL_P)
    # US p recomputed: t = .22 sqrt(121 / (1 - .22^2)) on 121 df, well below .05
    assert a1["verdict"] == "replicated"
    assert (table["p_sceptical"].between(0, 1)).all()


def test_verdict_rules_are_configuration():
    rules = [{"verdict": "strict", "all": ["significant", "same_direction"]},
             {"verdict": "other", "any": ["in_pi", "not_in_pi"]}]
    cond = {"same_direction": True, "significant": False, "in_pi": True,
            "opposite_significant": False, "not_in_pi": False}
    assert evaluate_verdict(cond, rules) == "other"
    assert evaluate_verdict(dict(cond, significant=True), rules) == "strict"
    assert evaluate_verdict(cond, [{"verdict": "x", "all": ["not_in_pi"]}]) == "unclassified"
    with pytest.raises(ValueError, match="unknown"):
        evaluate_verdict(cond, [{"verdict": "x", "all": ["huge"]}])


def test_needs_exactly_one_replication_site(study):
    sites = [s for s in load_sites() if s.role != "replication"]
    with pytest.raises(ValueError, match="exactly one site with role"):
        replication_table(_rows(), study, sites)
