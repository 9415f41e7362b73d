"""lacrima.ipd: interaction F test and mixed model on stacked synthetic sites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lacrima import vocabulary as voc
from lacrima.ipd import (_crit_values, _gls_parts, _reml_criterion, _reml_fit, _site_moments,
                         _sums, interaction_test, ipd_models, mixed_slope)

SLOPE_TOL = 0.1  # planted slope, n = 600: its SE is about 0.04


def _pair(slopes, n=200, seed=1):
    rng = np.random.default_rng(seed)
    parts = []
    for i, b in enumerate(slopes):
        x = rng.normal(0, 1, n)
        parts.append(pd.DataFrame({"x": x, "y": 1.0 + 0.3 * i + b * x + rng.normal(0, 1, n),
                                   "site": f"s{i}"}))
    return pd.concat(parts, ignore_index=True)


def test_f_test_matches_residual_sums_of_squares():
    data = _pair([0.5, 0.2, 0.6])
    res = interaction_test(data)
    # Second implementation: least squares by hand on the two design matrices.
    dummies = pd.get_dummies(data["site"], drop_first=True).to_numpy(float)
    x = data[["x"]].to_numpy()
    ones = np.ones((len(data), 1))
    reduced = np.hstack([ones, x, dummies])
    full = np.hstack([reduced, x * dummies])
    rss = [np.sum((data["y"] - m @ np.linalg.lstsq(m, data["y"], rcond=None)[0]) ** 2)
           for m in (reduced, full)]
    df1, df2 = 2, len(data) - 6
    f = ((rss[0] - rss[1]) / df1) / (rss[1] / df2)
    assert res["statistic"] == pytest.approx(f, rel=1e-9)
    assert res["p_value"] == pytest.approx(stats.f.sf(f, df1, df2), rel=1e-9)
    assert res["df"] == 2 and res["k"] == 3 and res["method"] == f"ols_interaction_F(df2={df2})"


def test_heterogeneous_slopes_are_detected():
    assert interaction_test(_pair([0.5, 0.5, -0.5]))["p_value"] < 1e-6


def test_mixed_model_recovers_planted_slope():
    res = mixed_slope(_pair([0.5, 0.5, 0.5], seed=3))
    assert res["estimate"] == pytest.approx(0.5, abs=SLOPE_TOL)
    assert res["ci_low"] < res["estimate"] < res["ci_high"]
    assert res["method"].startswith("mixedlm_reml")
    assert res["n"] == 600 and res["k"] == 3


def test_mixed_model_states_problems_plainly():
    # Identical slopes and intercepts: the random-effect variances sit on the boundary.
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, 300)
    data = pd.DataFrame({"x": x, "y": 0.4 * x + rng.normal(0, 1, 300),
                         "site": np.repeat(["a", "b", "c"], 100)})
    res = mixed_slope(data)
    assert np.isfinite(res["estimate"]) or "failed" in res["method"]
    if res["method"] not in ("mixedlm_reml", "mixedlm_reml_intercept_only"):
        assert "[" in res["method"]  # a warning or failure reason is written out


def _stacked(study):
    rng = np.random.default_rng(11)
    frames = []
    for site, b in (("us", 0.4), ("it", 0.4), ("il", -0.3)):
        n = 150
        cried = rng.random(n) < 0.8
        frame = pd.DataFrame({"site": site, "cried_in_therapy": pd.array(cried, dtype="boolean")})
        for fam in ("H1", "H2", "H3", "H4"):
            for x in study.family(fam)["x"]:
                frame[x] = pd.array(rng.integers(1, 6, n), dtype="Int64")
        frame["change"] = 3 + b * (frame["after_in_control"].astype(float) - 3) + rng.normal(0, 1, n)
        frame["alliance"] = rng.normal(3.5, 0.6, n)
        frame["discomfort_tears"] = pd.array(rng.integers(1, 6, n), dtype="Int64")
        frame["understood_better"] = pd.array(rng.integers(1, 6, n), dtype="Int64")
        frame.loc[~cried, "after_relaxed"] = pd.NA
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["change"] = out["change"].astype("Float64")
    out.loc[3, "change"] = pd.NA
    return out


def test_ipd_models_table(study):
    stacked = _stacked(study)
    before = stacked.copy()
    table = ipd_models(stacked, study, run_id="run-7")
    pd.testing.assert_frame_equal(stacked, before)
    assert list(table.columns) == list(voc.RESULTS_COLUMNS)
    pairs = sum(len(study.family(f)["x"]) * len(study.family(f)["y"])
                for f in study.section("ipd")["families"])
    assert len(table) == 2 * pairs
    assert set(table["analysis"]) == {"ipd_interaction", "mixed_model"}
    assert (table["site"] == voc.POOLED).all() and (table["run_id"] == "run-7").all()
    row = table[(table["x"] == "after_in_control") & (table["analysis"] == "ipd_interaction")].iloc[0]
    assert row["p_value"] < 1e-3  # planted: Israel's slope has the other sign
    assert row["k"] == 3
    n_criers = int(stacked.loc[stacked["cried_in_therapy"], "change"].notna().sum())
    assert row["n"] == n_criers  # criers subset, missing change dropped


def test_missing_column_is_named(study):
    with pytest.raises(ValueError, match="criers column"):
        ipd_models(pd.DataFrame({"site": ["us"]}), study)


def test_interaction_test_equals_statsmodels_formula_fits():
    """Second implementation: statsmodels OLS with one dummy per site (what the sums replace)."""
    import statsmodels.formula.api as smf

    from lacrima.ipd import interaction_test

    rng = np.random.default_rng(42)
    frames = []
    for i, slope in enumerate([0.2, 0.5, -0.1, 0.3]):
        x = rng.normal(size=40 + 10 * i)
        frames.append(pd.DataFrame({"x": x, "y": 1 + i + slope * x + rng.normal(size=len(x)),
                                    "site": f"s{i}"}))
    flat = pd.DataFrame({"x": [2.0] * 6, "y": rng.normal(size=6), "site": "flat"})
    for data in (pd.concat(frames, ignore_index=True), pd.concat([*frames, flat], ignore_index=True)):
        full = smf.ols("y ~ x * C(site)", data=data).fit()
        reduced = smf.ols("y ~ x + C(site)", data=data).fit()
        f, p, df_diff = full.compare_f_test(reduced)
        got = interaction_test(data)
        assert got["statistic"] == pytest.approx(f, rel=1e-9)
        assert got["p_value"] == pytest.approx(p, rel=1e-7)
        assert got["df"] == df_diff
        assert got["estimate"] == pytest.approx(reduced.params["x"], rel=1e-10)
        lo, hi = reduced.conf_int().loc["x"]
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((lo, hi), rel=1e-9)
        assert got["method"] == f"ols_interaction_F(df2={int(full.df_resid)})"


# Agreement with statsmodels where its optimum is interior and well conditioned: the same
# REML optimum up to the two optimizers' precision (slope differs by ~1e-6, tau2 by ~1e-4
# relative); the CI limits differ by ~1e-4 because statsmodels takes the slope's SE from
# the observed information of all parameters, we from the GLS covariance
# sigma2 (X'V^-1 X)^-1 (the same quantity as the fixed-effect block when the variance
# parameters are known).
MIXED_SLOPE_TOL = 1e-5
MIXED_CI_TOL = 5e-4
MIXED_TAU2_REL = 1e-3


def test_mixed_model_matches_statsmodels_mixedlm_interior():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(22)
    slopes = 0.5 + rng.normal(0, 0.3, 8)   # real slope heterogeneity: tau2 away from 0
    data = _pair(list(slopes), n=80, seed=22)
    res = mixed_slope(data)
    # reference: smf.mixedlm("y ~ x", data, groups=data["site"], re_formula="~x").fit(reml=True)
    ref = smf.mixedlm("y ~ x", data, groups=data["site"], re_formula="~x").fit(reml=True)
    lo, hi = ref.conf_int().loc["x"]
    assert res["estimate"] == pytest.approx(ref.fe_params["x"], abs=MIXED_SLOPE_TOL)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((lo, hi), abs=MIXED_CI_TOL)
    assert res["tau2"] == pytest.approx(ref.cov_re.loc["x", "x"], rel=MIXED_TAU2_REL)
    assert res["method"] == "mixedlm_reml"


@pytest.fixture(params=["small", pytest.param("demo", marks=pytest.mark.slow)])
def planned_sites(request):
    """``(memory_sites, study)``: the demo's sites in memory under the small plan
    (tests/smallplan.py: the mixed models of one family, a tenth of the fits) or the demo's."""
    if request.param == "small":
        return request.getfixturevalue("small_memory_sites"), \
            request.getfixturevalue("small_plan").study
    return request.getfixturevalue("memory_sites"), request.getfixturevalue("study")


def test_models_from_per_site_sums_equal_the_models_on_stacked_rows(planned_sites):
    # What the pooled step does (each site hands on its sums, never its rows) against the
    # stacked data: the same rows and numbers, summed in the same order.
    from lacrima.ipd import ipd_from_moments

    memory_sites, study = planned_sites

    analyses = [a for a, _ in memory_sites.values()]
    stacked = pd.concat([data for _, data in memory_sites.values()], ignore_index=True)
    per_site = pd.concat([a.moments for a in analyses], ignore_index=True)
    assert set(per_site["site"]) == {a.site for a in analyses}
    from_sums = ipd_from_moments(per_site, study)
    on_rows = ipd_models(stacked, study)
    assert len(from_sums) > 0
    pd.testing.assert_frame_equal(from_sums, on_rows, check_exact=False, rtol=1e-9)
    # Second implementation of one site's sums: the rows themselves.
    row = per_site[(per_site["site"] == analyses[0].site)].iloc[0]
    fam = study.family(row["family"])
    d = memory_sites[analyses[0].site][1]
    if fam.get("subset") == "criers":
        d = d[d[study.section("analysis")["criers"]].astype("boolean").fillna(False).astype(bool)]
    pair = d[[row["x"], row["y"]]].apply(pd.to_numeric, errors="coerce").astype(float).dropna()
    assert row["n"] == len(pair)
    assert row["sxy"] == pytest.approx(float((pair[row["x"]] * pair[row["y"]]).sum()), rel=1e-12)


# ---- lme4 reference (tests/reference/ipd_reference.R -> .json; rows in ipd_cases.csv) ----

_REF_DIR = Path(__file__).parent / "reference"
LME4 = json.loads((_REF_DIR / "ipd_reference.json").read_text())["cases"]
# lme4's best (three optimizers, eight more starts, a bobyqa polish; ipd_reference.R) and
# lacrima's optimum agree in the REML criterion to ~1e-11 absolute (1e-13 relative), lacrima's
# never higher. Where the criterion is flat (singular fits, two sites) a change of 1e-12 in it
# moves theta by ~1e-5, so the slope's CI limits and p agree to 2e-5 relative (lme4's best
# is the higher criterion there, so the difference is lme4's stopping point, not lacrima's).
TOL_LME4 = 1e-6
TOL_LME4_FLAT = 2e-5
# A sample of the cases: demo pairs at the plan's seed and held-out seed 7, variances on the
# boundary, five sites, two sites, near-singular ones, and the held-out subsets where the
# optimiser before issue 23 stopped short of lme4's optimum (by 0.036, 0.13 and 2e-4).
LME4_CASES = ["demo_H1_after_sad_change", "demo_H2_therapist_support_alliance",
              "demo_H4_attachment_avoidance_understood_better", "seed7_H1_after_relaxed_change",
              "flat_3sites", "flat_slope_3sites", "varied_5sites", "k2_flat", "k2_varied",
              "near_singular_k3", "near_singular_k2",
              "heldout_k2_il_us_H1_after_happy_change",
              "heldout_k2_il_us_H3_felt_vulnerable_alliance",
              "heldout_k2_il_it_half_H4_attachment_anxiety_understood_better"]


@pytest.fixture(scope="module")
def lme4_rows():
    return pd.read_csv(_REF_DIR / "ipd_cases.csv")


@pytest.mark.parametrize("name", LME4_CASES)
def test_mixed_model_matches_lme4(name, lme4_rows):
    ref = LME4[name]["slope"]  # the lme4 call is ref["call"]; see ipd_reference.R
    data = lme4_rows.loc[lme4_rows["case"] == name, ["x", "y", "site"]]
    res = mixed_slope(data)
    assert res["method"].startswith("mixedlm_reml") and "intercept_only" not in res["method"]
    for key in ("estimate", "ci_low", "ci_high", "p_value"):
        assert res[key] == pytest.approx(ref[key], rel=TOL_LME4_FLAT, abs=1e-12), key
    # tau2 relative to the residual variance (a variance at 0 is ~1e-17 in lme4, 0 here)
    assert res["tau2"] == pytest.approx(ref["tau2"], rel=TOL_LME4_FLAT, abs=TOL_LME4 * ref["sigma2"])
    assert res["statistic"] == pytest.approx(ref["statistic"], rel=TOL_LME4_FLAT)
    # the global optimum: never above lme4's best of all its optimizers and starts, and equal
    # to it to 1e-6 relative (here to ~1e-13)
    moments = _site_moments(_sums(data))
    theta, converged = _reml_fit(moments, 2)
    assert converged
    crit = _reml_criterion(theta, *moments)
    assert crit <= ref["reml_criterion"] + 1e-9
    assert crit == pytest.approx(ref["reml_criterion"], rel=TOL_LME4)
    # the singular-fit label is lme4's isSingular(fit, tol = 1e-4) on the fitted theta, and a
    # singular fit with both variances positive is not called "estimated as 0"
    on_boundary = "boundary" in res["method"] or "singular" in res["method"]
    assert on_boundary == ref["singular"]
    ref_theta = np.array(ref["theta"])
    if ref["singular"] and min(ref["tau2_intercept"], ref["tau2"]) > 1e-6 * ref["sigma2"]:
        assert "covariance singular" in res["method"] and "estimated as 0" not in res["method"]
    assert (theta[[0, 2]] < 1e-4).any() == (ref_theta[[0, 2]] < 1e-4).any()


def test_the_old_optimiser_missed_the_held_out_optima(lme4_rows):
    # The held-out cases are the ones the reference is for: lme4's best lies 2e-4 to 0.13 below
    # where the optimiser before issue 23 stopped (its criterion, recorded when the cases were
    # made: 309.29109, 380.78997, 257.90017), and lacrima now reaches lme4's best.
    stopped = {"heldout_k2_il_us_H1_after_happy_change": 309.29109,
               "heldout_k2_il_us_H3_felt_vulnerable_alliance": 380.78997,
               "heldout_k2_il_it_half_H4_attachment_anxiety_understood_better": 257.90017}
    for name, old in stopped.items():
        ref = LME4[name]["slope"]
        assert ref["reml_criterion"] < old - 1e-4
        data = lme4_rows.loc[lme4_rows["case"] == name, ["x", "y", "site"]]
        moments = _site_moments(_sums(data))
        theta, _ = _reml_fit(moments, 2)
        assert _reml_criterion(theta, *moments) == pytest.approx(ref["reml_criterion"], abs=1e-9)


def test_intercept_only_model_matches_lme4(lme4_rows):
    name = "demo_H1_after_relaxed_change"
    ref = LME4[name]["intercept_only"]
    data = lme4_rows.loc[lme4_rows["case"] == name, ["x", "y", "site"]]
    moments = _site_moments(_sums(data))
    theta, _ = _reml_fit(moments, 1)
    fe, qf, xvx, _ = _gls_parts(theta, *moments[:3])
    se = np.sqrt(qf / (moments[3] - 2) * np.linalg.inv(xvx)[1, 1])
    assert fe[1] == pytest.approx(ref["estimate"], abs=TOL_LME4)
    assert se == pytest.approx(ref["se"], abs=TOL_LME4)
    assert _reml_criterion(theta, *moments) <= ref["reml_criterion"] + 1e-9


def test_boundary_label_is_relative_to_the_residual_variance():
    # The same data in units 1000 times smaller: every variance shrinks by 1e6, the
    # relative rule (theta) does not move, so neither does the label.
    rng = np.random.default_rng(21)
    parts = []
    for i, (a, b) in enumerate(((1.0, 0.2), (1.6, 0.5), (0.4, 0.8))):
        x = rng.normal(0, 1, 150)
        parts.append(pd.DataFrame({"x": x, "y": a + b * x + rng.normal(0, 1, 150), "site": f"s{i}"}))
    data = pd.concat(parts, ignore_index=True)
    small = data.assign(y=data["y"] / 1000)
    big, tiny = mixed_slope(data), mixed_slope(small)
    assert tiny["tau2"] < 0.01  # the old absolute rule would have called this "boundary"
    assert big["method"] == tiny["method"] == "mixedlm_reml"
    assert tiny["estimate"] == pytest.approx(big["estimate"] / 1000, rel=1e-5)


@pytest.mark.parametrize("q", [1, 2])
def test_closed_form_criterion_is_the_matrix_one(q):
    # _crit_values (elementwise 2 x 2 algebra over N thetas x k sites, what the starts and
    # line searches use) against _gls_parts (stacked matrix products): the same REMLcrit,
    # inside, on the boundary (a zero diagonal of theta) and at Psi = 0, to the rounding of
    # a criterion of a few hundred.
    rng = np.random.default_rng(26)
    data = _pair([0.1, 0.5, 0.3, -0.2, 0.9], n=40, seed=26)
    moments = _site_moments(_sums(data))
    thetas = np.abs(rng.normal(size=(60, 3))) * rng.choice([0.0, 0.05, 1.0, 4.0], size=(60, 3))
    thetas[:, 1] = rng.normal(size=60) * rng.choice([0.0, 1.0], size=60)
    thetas = np.vstack([thetas, np.zeros(3)])[:, :3 if q == 2 else 1]
    got = _crit_values(thetas, *moments)
    n = moments[3]
    for theta, value in zip(thetas, got):
        _, qf, xvx, logdet = _gls_parts(theta, *moments[:3])
        want = logdet + np.log(np.linalg.det(xvx)) + (n - 2) * (1 + np.log(2 * np.pi * qf / (n - 2)))
        assert value == pytest.approx(want, rel=1e-12, abs=0)
        assert value == pytest.approx(_reml_criterion(theta, *moments), rel=1e-12, abs=0)
