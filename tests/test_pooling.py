"""lacrima.pooling: per-site tidy rows in, pooled tidy rows out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lacrima import vocabulary as voc
from lacrima.meta import fisher_z, random_effects
from lacrima.pooling import pool_details, pool_estimates, site_weights

CASES = json.loads((Path(__file__).parent / "reference" / "meta_reference.json").read_text())["cases"]
Z975 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)
TOL_EST = 1e-10           # same arithmetic, two routes


def _row(**kw):
    base = {c: np.nan for c in voc.RESULTS_COLUMNS}
    base.update(run_id="run-1", covariates="", p_adjusted=np.nan, k=np.nan)
    base.update(kw)
    return base


def _site_rows():
    rows = []
    sites = ("il", "it", "us")
    # H2: three sites, r and n from the first three Molloy et al. (2014) studies.
    molloy = CASES["molloy2014_REML_knha"]["input"]
    for site, r, n in zip(sites, molloy["ri"][:3], molloy["ni"][:3]):
        rows.append(_row(family="H2", analysis="correlation", site=site, x="therapist_support",
                         y="alliance", n=n, estimate=r, method="pearson", p_value=0.01))
        rows.append(_row(family="H2", analysis="spearman", site=site, x="therapist_support",
                         y="alliance", n=n, estimate=r, method="spearman", p_value=0.01))
    # A1: partial correlations with two covariates, one site has no estimate.
    for site, r, n in zip(sites, (0.2, 0.3, np.nan), (100, 106, 124)):
        rows.append(_row(family="A1", analysis="partial_correlation", site=site, x="after_relaxed",
                         y="change", covariates="attachment_anxiety+attachment_avoidance", n=n,
                         estimate=r, method="pearson_partial", p_value=0.04))
    # H3: only one site, so no pooled row (k = 1 rule).
    rows.append(_row(family="H3", analysis="correlation", site="us", x="felt_vulnerable",
                     y="alliance", n=124, estimate=0.1, method="pearson", p_value=0.2))
    # A2: Hedges' g with symmetric normal CIs (se 0.2, 0.25, 0.3).
    for site, g, se in zip(sites, (0.4, 0.6, 0.5), (0.2, 0.25, 0.3)):
        rows.append(_row(family="A2", analysis="t_test", site=site, x="cried_in_therapy", y="change",
                         n=100, estimate=g, ci_low=g - Z975 * se, ci_high=g + Z975 * se,
                         method="hedges_g", p_value=0.03))
    # A3: odds ratios with Woolf CIs symmetric on the log scale.
    for site, orr, se in zip(sites, (2.0, 3.0, 1.5), (0.4, 0.5, 0.45)):
        rows.append(_row(family="A3", analysis="chi_square", site=site, x="gender",
                         y="cried_in_therapy", n=90, estimate=orr,
                         ci_low=orr * np.exp(-Z975 * se), ci_high=orr * np.exp(Z975 * se),
                         method="odds_ratio", p_value=0.05))
    return pd.DataFrame(rows, columns=list(voc.RESULTS_COLUMNS))


def test_columns_and_conventions(study):
    out = pool_estimates(_site_rows(), study)
    assert list(out.columns) == list(voc.RESULTS_COLUMNS)
    assert set(out["site"]) == {voc.POOLED}
    assert set(out["analysis"]) == {"meta_analysis"}
    assert set(out["method"]) == {"REML+knha", "FE"}
    # Two rows (random, fixed) for each of H2, A1, A2, A3; H3 (k = 1) and spearman absent.
    assert sorted(out["family"]) == sorted(["H2", "A1", "A2", "A3"] * 2)
    assert (out["run_id"] == "run-1").all()


def test_correlations_pooled_on_z_and_back_transformed(study):
    out = pool_estimates(_site_rows(), study)
    row = out[(out["family"] == "H2") & (out["method"] == "REML+knha")].iloc[0]
    # metafor: rma(yi, vi, data = escalc("ZCOR", ri, ni, data = dat.molloy2014)[1:3, ], test = "knha")
    ref = CASES["molloy2014_k3_REML_knha"]
    assert row["k"] == 3 and row["n"] == sum(CASES["molloy2014_REML_knha"]["input"]["ni"][:3])
    # tanh of metafor's pooled z (its tau2 2.7e-6 vs our 0: see test_meta_rma).
    assert row["estimate"] == pytest.approx(np.tanh(ref["estimate"]), abs=2e-4)
    assert row["ci_low"] == pytest.approx(np.tanh(ref["ci_low"]), abs=2e-4)
    assert row["q"] == pytest.approx(ref["q"], abs=1e-8)
    assert row["df"] == 2
    assert row["pi_low"] < row["ci_low"] + 1e-12


def test_partial_correlation_uses_g_covariates_and_skips_missing(study):
    out = pool_estimates(_site_rows(), study)
    row = out[(out["family"] == "A1") & (out["method"] == "REML+knha")].iloc[0]
    yi, vi = fisher_z([0.2, 0.3], [100, 106], 2)
    np.testing.assert_allclose(vi, [1 / 95, 1 / 101])
    res = random_effects(yi, vi)
    assert row["k"] == 2 and row["n"] == 206
    assert row["estimate"] == pytest.approx(np.tanh(res.estimate), abs=TOL_EST)
    assert np.isnan(row["pi_low"]) and np.isnan(row["pi_high"])  # k = 2 rule


def test_hedges_g_and_odds_ratio(study):
    out = pool_estimates(_site_rows(), study)
    g = out[(out["family"] == "A2") & (out["method"] == "FE")].iloc[0]
    w = 1 / np.array([0.2, 0.25, 0.3]) ** 2
    assert g["estimate"] == pytest.approx(np.sum(w * [0.4, 0.6, 0.5]) / np.sum(w), abs=TOL_EST)
    assert g["tau2"] == 0.0
    orow = out[(out["family"] == "A3") & (out["method"] == "FE")].iloc[0]
    w = 1 / np.array([0.4, 0.5, 0.45]) ** 2
    pooled_log = np.sum(w * np.log([2.0, 3.0, 1.5])) / np.sum(w)
    assert orow["estimate"] == pytest.approx(np.exp(pooled_log), rel=1e-10)
    se = np.sqrt(1 / np.sum(w))
    assert orow["ci_high"] == pytest.approx(np.exp(pooled_log + Z975 * se), rel=1e-10)


def test_site_order_does_not_change_pooling(study):
    rows = _site_rows()
    a = pool_estimates(rows, study)
    b = pool_estimates(rows.sample(frac=1.0, random_state=7).reset_index(drop=True), study)
    key = ["family", "method"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_input_is_not_mutated(study):
    rows = _site_rows()
    before = rows.copy()
    pool_estimates(rows, study)
    pd.testing.assert_frame_equal(rows, before)


def test_details_keep_single_site_effects_with_a_note(study):
    det = pool_details(_site_rows(), study)
    h3 = det[det["family"] == "H3"]
    assert len(h3) == 2 and (h3["k"] == 1).all()
    assert "k = 1" in h3.loc[h3["model"] == "random", "note"].iloc[0]
    h2 = det[(det["family"] == "H2") & (det["model"] == "random")].iloc[0]
    assert h2["tau2_ci_low"] <= h2["tau2"] <= h2["tau2_ci_high"]
    assert h2["sites"] == "il+it+us"


def test_holm_within_family(study):
    rows = _site_rows()
    extra = rows[(rows["family"] == "H2") & (rows["analysis"] == "correlation")].copy()
    extra["x"] = "therapist_compassion"
    extra["estimate"] = [0.01, -0.02, 0.0]
    out = pool_estimates(pd.concat([rows, extra], ignore_index=True), study)
    re = out[(out["family"] == "H2") & (out["method"] == "REML+knha")]
    p = np.sort(re["p_value"].to_numpy())
    adj = re.set_index("p_value").loc[p, "p_adjusted"].to_numpy()
    # Holm with two tests: min(1, 2 p_(1)), max(that, p_(2)).
    assert adj[0] == pytest.approx(min(1, 2 * p[0]))
    assert adj[1] == pytest.approx(max(adj[0], p[1]))


def test_missing_columns_are_named(study):
    with pytest.raises(ValueError, match="lack columns"):
        pool_estimates(pd.DataFrame({"family": ["H1"]}), study)


# ---- heterogeneity.csv against metafor (meta_reference.R, cases "hetero_*") ----

HETERO = sorted(k for k in CASES if k.startswith("hetero_"))
_CI_OF = {"knha": "knha", "adhoc": "knha_adhoc", "z": "z"}
HETERO_COLUMNS = ("fe_estimate", "fe_ci_low", "fe_ci_high", "re_estimate", "re_ci_low",
                  "re_ci_high", "re_p_value", "pi_low", "pi_high", "tau2", "tau2_ci_low",
                  "tau2_ci_high", "tau", "tau_ci_low", "tau_ci_high", "i2", "i2_ci_low",
                  "i2_ci_high", "h2", "h2_ci_low", "h2_ci_high", "q", "q_df", "q_p",
                  "role_qm", "role_qm_df", "role_qm_p")


_TAU2_DEPENDENT = {"re_estimate", "re_ci_low", "re_ci_high", "re_p_value", "pi_low", "pi_high",
                   "tau2", "tau", "i2", "h2"}


def _with_ci(study, ci):
    import dataclasses

    return dataclasses.replace(study, raw={**study.raw, "pooling": {**study.raw["pooling"], "ci": ci}})


def _hetero_rows(case):
    """Per-site rows whose pooling inputs are the case's yi, vi: Hedges' g rows with a
    symmetric CI of half-width z * sqrt(vi), so every case goes through one route."""
    inp = case["input"]
    sites = [f"s{i}" for i in range(len(inp["yi"]))]
    rows = [_row(family="A2", analysis="t_test", site=s, x="cried_in_therapy", y="change", n=100,
                 estimate=y, ci_low=y - Z975 * np.sqrt(v), ci_high=y + Z975 * np.sqrt(v),
                 method="hedges_g", p_value=0.5)
            for s, y, v in zip(sites, inp["yi"], inp["vi"])]
    return pd.DataFrame(rows, columns=list(voc.RESULTS_COLUMNS)), dict(zip(sites, inp["role"]))


@pytest.mark.parametrize("name", HETERO)
def test_heterogeneity_matches_metafor(name, study):
    from lacrima.pooling import HETEROGENEITY_COLUMNS, heterogeneity

    case = CASES[name]  # the metafor calls are case["call"]
    rows, roles = _hetero_rows(case)
    got = heterogeneity(rows, _with_ci(study, _CI_OF[case["test"]]), roles)
    assert list(got.columns) == list(HETEROGENEITY_COLUMNS) and len(got) == 1
    row = got.iloc[0]
    assert row["k"] == case["k"] and row["metafor_test"] == case["test"]
    tight = case.get("tight")  # metafor refitted with control = list(threshold = 1e-12, ...)
    for col in HETERO_COLUMNS:
        want = case[col]
        # REML is the converged maximiser; metafor's default threshold 1e-5 stops ~1e-6
        # short, so the tau2-dependent columns are compared with metafor's tight refit
        # (tight["call"]) to 1e-8, and with its default output only to 2e-5 (loose: that is
        # metafor's stopping rule, not an error). Everything else (FE, Q, Q-profile limits,
        # the moderator test, itself fitted at the tight threshold), to 1e-8.
        tol = 1e-8
        if col in _TAU2_DEPENDENT and case["tau2"] > 0:
            assert row[col] == pytest.approx(tight[col], abs=1e-8, rel=1e-8), col
            tol = 2e-5
        if want is None:  # chi-square QM under z has no second df
            assert np.isnan(row[col]), col
        else:
            assert row[col] == pytest.approx(want, abs=tol, rel=tol), col
    if case["role_qm_df2"] is not None:
        assert row["role_qm_df2"] == case["role_qm_df2"]
    narrower = case["re_ci_high"] - case["re_ci_low"] < case["fe_ci_high"] - case["fe_ci_low"]
    assert bool(row["re_ci_narrower_than_fe"]) == narrower
    assert bool(row["tau2_uninformative"]) == (case["k"] <= 3)


def test_plan_ci_option_is_checked(study):
    rows, roles = _hetero_rows(CASES["hetero_k3_knha"])
    from lacrima.pooling import heterogeneity

    with pytest.raises(ValueError, match=r"\[pooling\] ci = 'hksj'"):
        heterogeneity(rows, _with_ci(study, "hksj"), roles)
    pooled = pool_estimates(rows, _with_ci(study, "knha_adhoc"))
    assert set(pooled["method"]) == {"REML+knha_adhoc", "FE"}


def test_role_names_come_from_the_plan(study, sites):
    """The plan may name the roles the other way round ([replication] *_site_role): every
    role lookup reads it through one place (Study.role_names)."""
    import dataclasses

    from lacrima.pooling import heterogeneity
    from lacrima.replication import site_roles

    assert study.role_names == ("replication", "original")
    swapped = dataclasses.replace(study, raw={**study.raw, "replication": {
        **study.raw["replication"], "replication_site_role": "original",
        "original_site_role": "replication"}})
    assert swapped.role_names == ("original", "replication")
    assert site_roles(swapped, sites) == site_roles(study, sites)[::-1]
    rows, roles = _hetero_rows(CASES["hetero_k3_knha"])
    k_original = sum(r == "original" for r in roles.values())
    assert heterogeneity(rows, study, roles)["role_k_original"].iloc[0] == k_original
    assert heterogeneity(rows, swapped, roles)["role_k_original"].iloc[0] == len(roles) - k_original


# metafor 4.x:
#   ctl <- list(threshold = 1e-12, maxiter = 1000)   # converged REML (metafor's default
#                                                     # threshold stops at tau2 ~ 1e-5 here)
#   d <- escalc("ZCOR", ri = c(0.187, 0.162, 0.34), ni = c(109, 749, 55))
#   weights(rma(yi, vi, data = d, method = "REML", test = "knha", control = ctl))
#     (tau2 = 2.4e-13: the maximiser is on the boundary, so the weights are the FE ones)
#   weights(rma(yi = c(0.4, 0.6, 0.5), vi = c(0.2, 0.25, 0.3)^2, method = "REML", test = "knha",
#               control = ctl))
WEIGHTS_R = {"H2": [11.725663718303126, 82.522123891510773, 5.752212390186092],
             "A2": [47.97441364605544, 30.70362473347548, 21.32196162046909]}
TOL_WEIGHT = 1e-6          # percent; tau2 is REML-converged to well below this effect


def test_site_weights_match_metafor(study):
    rows = _site_rows()
    w = site_weights(rows, study, pool_estimates(rows, study))
    for family, expected in WEIGHTS_R.items():
        mine = w[w["family"] == family].sort_values("site")
        assert mine["site"].tolist() == ["il", "it", "us"]
        assert mine["weight"].to_numpy() == pytest.approx(expected, abs=TOL_WEIGHT)
    # every pooled effect's weights sum to 100; A1's site without an estimate has none
    assert w.groupby(["family", "x", "y", "covariates"])["weight"].sum().to_numpy() == \
        pytest.approx(100.0)
    assert set(w.loc[w["family"] == "A1", "site"]) == {"il", "it"}
    assert "H3" not in set(w["family"])          # k = 1: not pooled, no weights
