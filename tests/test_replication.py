"""lacrima.replication: published/package values, hand-worked examples and the verdict rule."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from lacrima import vocabulary as voc
from lacrima.replication import (
    GOLDEN_RATIO, assess_replication, difference_p, evaluate_verdict, patil_interval, r33, replication_table,
    sceptical_p, small_telescope_p,
)
from lacrima.study import load_site, load_sites

TOL_P = 1e-12      # p values recomputed from closed forms
TOL_R = 1e-6       # correlations from closed forms written to 7 digits
TOL_PWR = 1e-12    # r33: R's uniroot steps taken exactly; the JSON keeps 15 digits
TOL_P_R = 1e-12    # p values from R written with 15 significant digits
TOL_POOLED = 1e-9  # pooled sides: lacrima.meta.rma takes metafor's REML steps

REFERENCE = json.loads((Path(__file__).parent / "reference" / "replication_reference.json").read_text())


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


def test_r33_is_pwr_r_test_to_the_last_digits():
    # tests/reference/replication_reference.R: pwr.r.test(n = n - g, sig.level = .05,
    # power = 1/3)$r for each case (the call is in the JSON beside each value). The JSON
    # holds 15 significant digits; lacrima takes R's uniroot steps, so it agrees to 1e-12.
    for case in REFERENCE["r33"]:
        got = r33(case["n"], case["g"], case.get("alpha", 0.05), case.get("power", 1 / 3))
        assert got == pytest.approx(case["r33"], abs=TOL_PWR), case["call"]
    assert r33(103, sign=-1) == -r33(103)
    assert np.isnan(r33(5, g=2))          # pwr.r.test refuses n < 4


def test_r33_solves_pwrs_power_equation():
    # Not R's numbers this time: pwr's power formula at lacrima's r33 is 1/3 to within
    # uniroot's tolerance (.Machine$double.eps^0.25 in r), and the Fisher-z/normal
    # approximation lacrima used before is off by more than that.
    n = 106
    r = r33(n)
    t = stats.t.isf(0.025, n - 2)
    zc = np.arctanh(np.sqrt(t**2 / (t**2 + n - 2)))
    zr = np.arctanh(r) + r / (2 * (n - 1))
    power = stats.norm.cdf((zr - zc) * np.sqrt(n - 3)) + stats.norm.cdf((-zr - zc) * np.sqrt(n - 3))
    assert power == pytest.approx(1 / 3, abs=1e-4)
    old = np.tanh(optimize.brentq(
        lambda d: stats.norm.cdf(d - 1.959964) + stats.norm.cdf(-d - 1.959964) - 1 / 3, 0, 40)
        / np.sqrt(n - 3))
    assert abs(old - r) > 2e-4          # 5.7e-4 here; up to .06 at small n


def test_small_telescope_p_matches_r():
    for case in REFERENCE["small_telescope"]:
        r_33 = r33(case["n_original"], case["g"], sign=np.sign(case["r_original"]))
        assert r_33 == pytest.approx(case["r33"], abs=TOL_PWR), case["call"]
        p = small_telescope_p(case["r_replication"], case["n_replication"], r_33, case["g"])
        assert p == pytest.approx(case["p_small_telescope"], abs=TOL_P_R), case["call"]


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
    assert len(table) == 12  # 4 effects x (2 original sites + the pooled originals)
    assert set(table["replication_site"]) == {"us"}
    assert set(table["original_site"]) == {"it", "il", voc.POOLED}
    assert (table.loc[table["original_site"] == voc.POOLED, "k_original"] == 2).all()
    assert (table.loc[table["original_site"] != voc.POOLED, "k_original"] == 1).all()
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
    sites_only = table[table["original_site"] != voc.POOLED]
    assert (sites_only["p_sceptical"].between(0, 1)).all()
    # Verdict context: the original's own p, the replication's raw p (here recomputed:
    # t = .22 sqrt(121 / (1 - .22^2)) on 121 df) and which p the rule read.
    assert a1["p_original"] == 0.01 and bool(a1["original_significant"])
    t = 0.22 * np.sqrt(121 / (1 - 0.22**2))
    assert a1["p_replication"] == pytest.approx(2 * stats.t.sf(t, 121), abs=TOL_P)
    assert set(table["verdict_p"]) == {"raw"}
    happy = table.set_index(["x", "original_site"]).loc[("after_happy", "il")]
    assert not happy["original_significant"] and happy["p_original"] == 0.33
    # .12 against .10, same sign: larger in the same direction; against .15 it is not.
    assert bool(happy["larger_same_direction"])
    assert not table.set_index(["x", "original_site"]).loc[("after_happy", "it"),
                                                          "larger_same_direction"]


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


def test_no_replication_site_gives_an_empty_table_not_an_error(study):
    sites = [s for s in load_sites() if s.role != "replication"]
    table = replication_table(_rows(), study, sites)
    assert table.empty and list(table.columns) == list(voc.REPLICATION_COLUMNS)
    # A replication site in the plan without estimates yet: the same.
    no_us = _rows()
    table = replication_table(no_us[no_us["site"] != "us"], study, load_sites())
    assert table.empty


def test_a_role_outside_the_closed_set_is_an_error(study, tmp_path):
    odd = [dataclasses.replace(s, role="replicaton") if s.code == "us" else s for s in load_sites()]
    with pytest.raises(ValueError, match=r"site 'us' has role 'replicaton'"):
        replication_table(_rows(), study, odd)
    folder = tmp_path / "de"
    folder.mkdir()
    text = (load_site("us").folder / "site.toml").read_text().replace(
        'role = "replication"', 'role = "copy"')
    (folder / "site.toml").write_text(text)
    with pytest.raises(ValueError, match=r"site.toml: .*role.*'copy' is not a (site )?role"):
        load_site("de", tmp_path)


def test_the_plan_schema_knows_the_verdict_conditions_and_options():
    from lacrima import contract
    from lacrima.replication import CONDITIONS, VERDICT_P

    assert contract.VERDICT_CONDITIONS == CONDITIONS
    assert set(VERDICT_P) == set(contract.Replication.model_fields["verdict_p"].annotation.__args__)


def _many_sites(case, family="H1", x="after_relaxed", cov=""):
    """2 originals x 3 replications of one effect (tests/reference pooled cases)."""
    inp = case["input"]
    us, it = load_site("us"), load_site("it")
    sites = ([dataclasses.replace(it, code=f"o{i + 1}") for i in range(len(inp["orig_r"]))]
             + [dataclasses.replace(us, code=f"r{i + 1}") for i in range(len(inp["rep_r"]))])
    analysis, method = (("partial_correlation", "pearson_partial") if cov
                        else ("correlation", "pearson"))
    rows = []
    for s, r, n in zip(sites, inp["orig_r"] + inp["rep_r"], inp["orig_n"] + inp["rep_n"]):
        base = {c: np.nan for c in voc.RESULTS_COLUMNS}
        base.update(family=family, analysis=analysis, site=s.code, x=x, y="change",
                    covariates=cov, n=n, estimate=r, p_value=np.nan, method=method, run_id="r")
        rows.append(base)
    return pd.DataFrame(rows, columns=list(voc.RESULTS_COLUMNS)), sites


@pytest.mark.parametrize("name, family, cov", [("correlation", "H1", ""),
                                               ("agreeing", "H1", ""),
                                               ("partial", "A1", "alliance+attachment_anxiety")])
def test_pooled_sides_match_metafor(study, name, family, cov):
    # tests/reference/replication_reference.R: with [replication] pooled_side = "re" each role
    # pooled with rma(yi = atanh(r), vi = 1/(n - 3 - g), method = "REML", test = "adhoc",
    # control = list(threshold = 1e-12, maxiter = 1000)): REML and Hartung-Knapp as [pooling]
    # says, the se never below the Wald one ("agreeing": two originals .30 and .31, whose
    # untruncated Hartung-Knapp se is 0.005, not 0.071).
    case = REFERENCE["pooled"][name]
    study = _with_pooled_side(study, "re")
    rows, sites = _many_sites(case, family, cov=cov)
    table = replication_table(rows, study, sites)
    # 3 x 2 site pairs, the pooled replications against each original, and against the
    # pooled originals.
    assert len(table) == 3 * 2 + 2 + 1
    pairs = list(zip(table["replication_site"], table["original_site"]))
    assert pairs[:6] == [(r, o) for r in ("r1", "r2", "r3") for o in ("o1", "o2")]
    assert pairs[6:] == [(voc.POOLED, "o1"), (voc.POOLED, "o2"), (voc.POOLED, voc.POOLED)]
    pooled_rep = case["pooled_replication"]
    vs = table[table["replication_site"] == voc.POOLED].reset_index(drop=True)
    assert (vs["r_replication"] == vs["r_replication"].iloc[0]).all()
    assert vs["r_replication"].iloc[0] == pytest.approx(np.tanh(pooled_rep["estimate"]), abs=TOL_POOLED)
    assert vs["p_replication"].iloc[0] == pytest.approx(pooled_rep["p"], abs=TOL_POOLED)
    assert list(vs["k_replication"]) == [3, 3, 3] and list(vs["k_original"]) == [1, 1, 2]
    expected = case["pooled_replication_vs_original"] + [case["pooled_replication_vs_pooled_original"]]
    for (_, got), want in zip(vs.iterrows(), expected):
        for col in ("pi_low", "pi_high", "p_difference", "r33", "p_small_telescope"):
            assert got[col] == pytest.approx(want[col], abs=TOL_POOLED), (name, col)
    po = case["pooled_original"]
    assert vs["r_original"].iloc[2] == pytest.approx(np.tanh(po["estimate"]), abs=TOL_POOLED)
    assert vs["p_original"].iloc[2] == pytest.approx(po["p"], abs=TOL_POOLED)
    # Site pairs are the single-site assessment, whatever else is in the table.
    one = replication_table(rows[rows["site"].isin(["o1", "o2", "r2"])], study,
                            [s for s in sites if s.code in ("o1", "o2", "r2")])
    mine = table[table["replication_site"] == "r2"].reset_index(drop=True)
    pd.testing.assert_frame_equal(one[one["original_site"] != voc.POOLED].reset_index(drop=True),
                                  mine)


def _with_pooled_side(study, how):
    return dataclasses.replace(study, raw={**study.raw, "replication": {
        **study.raw["replication"], "pooled_side": how}})


@pytest.mark.parametrize("name, family, cov, how", [
    ("correlation", "H1", "", "auto"), ("correlation", "H1", "", "fe"),
    ("partial", "A1", "alliance+attachment_anxiety", "auto")])
def test_few_sites_pool_by_fixed_effect(study, name, family, cov, how):
    # pooled_side = "auto" (the plan's default) with 3 replications and 2 originals, or "fe":
    # each role pooled with rma(yi = atanh(r), vi = 1/(n - 3 - g), method = "FE")
    # (replication_reference.R, "pooled_fe").
    assert study.section("replication")["pooled_side"] == "auto"
    case = REFERENCE["pooled_fe"][name]
    rows, sites = _many_sites(case, family, cov=cov)
    table = replication_table(rows, _with_pooled_side(study, how), sites)
    vs = table[table["replication_site"] == voc.POOLED].reset_index(drop=True)
    pooled_rep, po = case["pooled_replication"], case["pooled_original"]
    assert vs["r_replication"].iloc[0] == pytest.approx(np.tanh(pooled_rep["estimate"]), abs=TOL_POOLED)
    assert vs["p_replication"].iloc[0] == pytest.approx(pooled_rep["p"], abs=TOL_POOLED)
    assert vs["r_original"].iloc[2] == pytest.approx(np.tanh(po["estimate"]), abs=TOL_POOLED)
    expected = case["pooled_replication_vs_original"] + [case["pooled_replication_vs_pooled_original"]]
    for (_, got), want in zip(vs.iterrows(), expected):
        for col in ("pi_low", "pi_high", "p_difference", "r33", "p_small_telescope"):
            assert got[col] == pytest.approx(want[col], abs=TOL_POOLED), (name, col)


def test_two_replication_sites_give_the_fixed_effect_verdicts(study):
    # The case: a second replication site joined. Under the Hartung-Knapp t on 1 df
    # (critical value 12.7) no pooled replication could be significant, so no effect could be
    # "replicated"; pooled by fixed effect (the default for k <= 3) the pooled side is as
    # significant as the two sites together are. Reference: rma(..., method = "FE") per role.
    case = REFERENCE["pooled_fe"]["two_replications"]
    rows, sites = _many_sites(case)
    table = replication_table(rows, study, sites)
    pooled = table[table["replication_site"] == voc.POOLED].reset_index(drop=True)
    assert list(pooled["k_replication"]) == [2, 2, 2] and list(pooled["k_original"]) == [1, 1, 2]
    assert pooled["p_replication"].iloc[0] == pytest.approx(case["pooled_replication"]["p"],
                                                            abs=TOL_POOLED)
    # the verdict is the plan's rule on those numbers: .26 vs .35/.28/.33, same direction,
    # p = 1.7e-5, inside every prediction interval
    want = [assess_replication("H1", "after_relaxed", "change", "", o, voc.POOLED,
                               row["r_original"], row["n_original"], row["r_replication"],
                               row["n_replication"], row["p_replication"],
                               study.section("replication"), p_original=row["p_original"],
                               p_replication_holm=row["p_replication_holm"],
                               var_original=None if o != voc.POOLED else case["pooled_original"]["se"] ** 2,
                               var_replication=case["pooled_replication"]["se"] ** 2,
                               k_original=row["k_original"], k_replication=2).verdict
            for o, (_, row) in zip(pooled["original_site"], pooled.iterrows())]
    assert list(pooled["verdict"]) == want == ["replicated"] * 3
    # the same plan with random effects on both sides: the collapse the issue describes
    re = replication_table(rows, _with_pooled_side(study, "re"), sites)
    re_pooled = re[re["replication_site"] == voc.POOLED]
    assert (re_pooled["p_replication"] > 0.05).all() and "replicated" not in set(re_pooled["verdict"])
    # and the report's sentence next to the verdicts says so
    from lacrima.replication import small_k_note
    note = small_k_note(table, study)
    assert "pooled replication side pools k = 2 sites by fixed effect" in note
    assert "pooled original side pools k = 2 sites by fixed effect" in note
    assert "t on 1 df" in small_k_note(re, _with_pooled_side(study, "re"))


def test_site_order_does_not_change_the_table(study):
    rows, sites = _many_sites(REFERENCE["pooled"]["correlation"])
    a = replication_table(rows, study, sites)
    b = replication_table(rows.iloc[::-1].reset_index(drop=True), study, sites[::-1])
    pd.testing.assert_frame_equal(a, b)


def test_holm_p_is_reported_and_can_drive_the_verdict():
    # Two effects of one family at one site: the Holm p is the row's p_adjusted.
    settings = {"alpha": 0.05, "verdicts": [
        {"verdict": "replicated", "all": ["same_direction", "significant", "in_pi"]},
        {"verdict": "inconclusive", "all": ["in_pi"]}]}
    args = ("H1", "a", "b", "", "it", "us", 0.25, 106, 0.20, 124, 0.03)
    raw = assess_replication(*args, settings, p_replication_holm=0.06, p_original=0.01)
    holm = assess_replication(*args, dict(settings, verdict_p="holm"),
                              p_replication_holm=0.06, p_original=0.01)
    assert (raw.verdict, raw.verdict_p) == ("replicated", "raw")
    assert (holm.verdict, holm.verdict_p) == ("inconclusive", "holm")
    assert raw.p_replication_holm == holm.p_replication_holm == 0.06
    assert raw.pi_low == holm.pi_low and raw.r33 == holm.r33
    with pytest.raises(ValueError, match=r"verdict_p = 'bonferroni'"):
        assess_replication(*args, dict(settings, verdict_p="bonferroni"))


def test_new_conditions_can_be_used_in_rules():
    rules = [{"verdict": "stronger", "all": ["larger_same_direction", "not_in_pi"]},
             {"verdict": "no original effect", "any": ["original_significant"]},
             {"verdict": "other", "any": ["in_pi", "not_in_pi"]}]
    big = assess_replication("H1", "a", "b", "", "it", "us", 0.10, 106, 0.60, 124, 1e-6,
                             {"verdicts": rules}, p_original=0.3)
    assert big.larger_same_direction and not big.in_pi and big.verdict == "stronger"
