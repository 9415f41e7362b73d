"""lacrima.meta.effects against metafor's escalc (tests/reference/meta_reference.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lacrima.meta import fisher_z, from_symmetric_ci, hedges_g, log_odds_ratio, z_critical

CASES = json.loads((Path(__file__).parent / "reference" / "meta_reference.json").read_text())["cases"]
TOL_YI = 1e-10  # escalc values are exact closed forms; only floating point differs
TOL_VI = 1e-10


def test_fisher_z_matches_escalc_zcor():
    inp = CASES["molloy2014_REML_knha"]["input"]  # escalc(measure = "ZCOR", ri, ni, dat.molloy2014)
    yi, vi = fisher_z(inp["ri"], inp["ni"])
    np.testing.assert_allclose(yi, inp["yi"], atol=TOL_YI)
    np.testing.assert_allclose(vi, inp["vi"], atol=TOL_VI)


def test_partial_fisher_z():
    # escalc(measure = "ZPCOR", ti, ni, mi = g + 1): yi = atanh(partial r). Its vi in
    # metafor 3.8 is 1/(n - g - 2); the protocol's is 1/(n - 3 - g), checked by hand.
    inp = CASES["zpcor_escalc"]["input"]
    yi, vi = fisher_z(inp["ri"], inp["ni"], inp["gi"])
    np.testing.assert_allclose(yi, inp["yi"], atol=1e-9)
    np.testing.assert_allclose(vi, [1 / 100, 1 / 94, 1 / 118], atol=TOL_VI)
    np.testing.assert_allclose(1 / np.asarray(inp["vi"]), np.asarray(inp["ni"]) - 5, atol=1e-9)


def test_hedges_g_matches_escalc_smd():
    inp = CASES["normand1999_smd_REML_knha"]["input"]  # escalc(measure = "SMD", ...)
    yi, vi = hedges_g(inp["m1i"], inp["sd1i"], inp["n1i"], inp["m2i"], inp["sd2i"], inp["n2i"])
    np.testing.assert_allclose(yi, inp["yi"], atol=TOL_YI)
    np.testing.assert_allclose(vi, inp["vi"], atol=TOL_VI)


def test_log_odds_ratio_matches_escalc_or():
    inp = CASES["bcg_or_REML_knha"]["input"]  # escalc(measure = "OR", tpos, tneg, cpos, cneg)
    yi, vi = log_odds_ratio(inp["ai"], inp["bi"], inp["ci"], inp["di"])
    np.testing.assert_allclose(yi, inp["yi"], atol=TOL_YI)
    np.testing.assert_allclose(vi, inp["vi"], atol=TOL_VI)


def test_log_odds_ratio_zero_cell_adds_half():
    yi, vi = log_odds_ratio([0, 5], [10, 5], [5, 5], [5, 5])
    # escalc(measure = "OR", ai = 0, bi = 10, ci = 5, di = 5): log((.5 * 5.5) / (10.5 * 5.5))
    assert yi[0] == pytest.approx(np.log(0.5 * 5.5 / (10.5 * 5.5)), abs=TOL_YI)
    assert vi[0] == pytest.approx(1 / 0.5 + 1 / 10.5 + 2 / 5.5, abs=TOL_VI)
    assert yi[1] == 0.0  # the table without zeros is untouched


def test_from_symmetric_ci_inverts_a_normal_ci():
    z = z_critical(0.95)
    assert z == pytest.approx(1.959963984540054, abs=1e-12)  # scipy.stats.norm.ppf(0.975)
    yi, vi = from_symmetric_ci(0.5, 0.5 - z * 0.2, 0.5 + z * 0.2, 0.95)
    assert vi[0] == pytest.approx(0.04, abs=1e-12)
    yi, vi = from_symmetric_ci(2.0, 2.0 * np.exp(-z * 0.3), 2.0 * np.exp(z * 0.3), 0.95, log=True)
    assert yi[0] == pytest.approx(np.log(2.0)) and vi[0] == pytest.approx(0.09, abs=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: fisher_z(1.0, 50), "between -1 and 1"),
    (lambda: fisher_z(0.2, 5, 2), "n - 3 - covariates"),
    (lambda: hedges_g(1, 1, 1, 0, 1, 10), "at least 2"),
    (lambda: hedges_g(1, 0, 5, 1, 0, 5), "pooled standard deviation is zero"),
    (lambda: log_odds_ratio(-1, 2, 3, 4), "non-negative"),
    (lambda: from_symmetric_ci(1.0, 0.0, 2.0, 0.95, log=True), "positive"),
    (lambda: z_critical(95), "between 0 and 1"),
])
def test_bad_input_says_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()
