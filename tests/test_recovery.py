"""Planted effects recovered at large n through scoring and the per-site analysis plan.

The generator's own tests check item-score correlations on the simulated frame; here the
same truths must come out of ``analysis_ready`` + ``analyse_site`` (criers subset, scores,
exclusions), and Israel's planted heterogeneity must show up in the pooled comparison.
"""

import numpy as np
import pandas as pd
import pytest

from lacrima.analysis import analyse_site
from lacrima.pooling import pool_estimates
from lacrima.scoring import analysis_ready
from lacrima.study import load_site
from lacrima.synth import simulate

N = 6000
R_TOL = 0.05    # sampling SE of r at ~5,000 criers is ~0.013; the generator's calibration adds ~0.03


@pytest.fixture(scope="module")
def large(study):
    out = {}
    for code in ("us", "il"):
        site = load_site(code)
        data, _ = analysis_ready(simulate(site, study, N, seed=11), study, code)
        out[code] = (site, data, analyse_site(data, study, code))
    return out


def _r(results, family, x, y):
    row = results[(results.family == family) & (results.analysis == "correlation")
                  & (results.x == x) & (results.y == y)]
    return float(row["estimate"].iloc[0])


def test_h1_to_h4_correlations_match_the_planted_values(large, study):
    site, _, res = large["us"]
    truth = site.synthetic(study)
    for x, r in truth["r_change"].items():
        assert _r(res, "H1", x, "change") == pytest.approx(r, abs=R_TOL), x
    for x in ("therapist_compassion", "therapist_support"):
        assert _r(res, "H2", x, "alliance") == pytest.approx(truth["r_alliance"][x], abs=R_TOL)
    for x in ("felt_vulnerable", "more_confident_goals"):
        assert _r(res, "H3", x, "alliance") == pytest.approx(truth["r_alliance"][x], abs=R_TOL)
    for y, r in truth["r_security"].items():
        assert _r(res, "H4", "attachment_security", y) == pytest.approx(r, abs=R_TOL)


def test_criers_exceed_non_criers_by_the_planted_d(large, study):
    site, _, res = large["us"]
    g = res[(res.family == "A2") & (res.method == "hedges_g")]["estimate"].iloc[0]
    assert g == pytest.approx(site.synthetic(study)["criers_minus_noncriers_change_d"], abs=0.08)


def test_women_cry_more_often_than_men(large, study):
    site, _, res = large["us"]
    shares = site.synthetic(study)["cried_share"]
    planted_or = (shares["woman"] / (1 - shares["woman"])) / (shares["man"] / (1 - shares["man"]))
    est = res[(res.family == "A3") & (res.method == "odds_ratio")]["estimate"].iloc[0]
    assert np.log(est) == pytest.approx(np.log(planted_or), abs=0.25)


def test_israel_in_control_effect_is_the_heterogeneous_one(large, study):
    res = pd.concat([large["us"][2], large["il"][2]], ignore_index=True)
    assert _r(large["il"][2], "H1", "after_in_control", "change") == pytest.approx(0.05, abs=R_TOL)
    pooled = pool_estimates(res, study)
    re = pooled[(pooled.family == "H1") & (pooled.method != "FE")].set_index("x")
    # I2 of the planted-different effect is far above every effect planted equal at both sites
    others = re.drop(index="after_in_control")["i2"]
    assert re.loc["after_in_control", "i2"] > 90 and (others < 60).all()
