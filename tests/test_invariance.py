"""Measurement invariance across sites: lacrima.invariance against lavaan.

Reference: tests/reference/invariance_lavaan.json, written by invariance_lavaan.R (lavaan
0.6-14, the call of every value in its "call" field) from invariance_data.csv (the demo's
three sites at their published Ns, non-invariance planted at il: wai_04's latent intercept
+ 0.8; invariance_data.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lacrima.invariance import COLUMNS, Fit, compare, invariance, rmsea_ci, to_frame

REFERENCE = Path(__file__).parent / "reference"
FIT_TOL = 1e-4   # CFA fit statistics (issue 16); the fits agree to ~1e-8 at lavaan's optimum
P_TOL = 1e-6     # p values of chi-square (tail areas are flat where p is small)

WAI = {"task": ["wai_01", "wai_02", "wai_10", "wai_12"],
       "bond": ["wai_03", "wai_05", "wai_07", "wai_09"],
       "goal": ["wai_04", "wai_06", "wai_08", "wai_11"]}
CTSC = {"change": [f"ctsc_{j:02d}" for j in range(1, 17)]}


@pytest.fixture(scope="module")
def lavaan():
    return json.loads((REFERENCE / "invariance_lavaan.json").read_text())


@pytest.fixture(scope="module")
def fits():
    data = pd.read_csv(REFERENCE / "invariance_data.csv")
    return {"alliance": to_frame(invariance("alliance", WAI, data)).set_index("model"),
            "change": to_frame(invariance("change", CTSC, data)).set_index("model")}


@pytest.mark.parametrize("scale, model", [
    ("alliance", "configural"), ("alliance", "metric"), ("alliance", "scalar"),
    ("alliance", "partial_scalar"),
    ("change", "configural"), ("change", "metric"), ("change", "scalar"),
])
def test_fit_statistics_match_lavaan(fits, lavaan, scale, model):
    ours, ref = fits[scale].loc[model], lavaan[scale][model]
    assert ours["npar"] == ref["npar"] and ours["df"] == ref["df"]
    for col, key in (("chi2", "chisq"), ("cfi", "cfi"), ("rmsea", "rmsea"),
                     ("rmsea_low", "rmsea.ci.lower"), ("rmsea_high", "rmsea.ci.upper"),
                     ("srmr", "srmr")):
        assert ours[col] == pytest.approx(ref[key], abs=FIT_TOL), (col, ref["call"])
    assert ours["p"] == pytest.approx(ref["pvalue"], abs=P_TOL)
    if "chi2_diff" in ref:
        assert ours["chi2_diff"] == pytest.approx(ref["chi2_diff"], abs=FIT_TOL)
        assert ours["df_diff"] == ref["df_diff"]
        assert ours["p_diff"] == pytest.approx(ref["p_diff"], abs=P_TOL)


def test_planted_noninvariant_item_and_site_are_found(fits, lavaan):
    alliance = fits["alliance"]
    assert alliance.loc["metric", "holds"] and not alliance.loc["scalar", "holds"]
    # Sequential freeing names the planted item at the planted site, in one step.
    assert list(alliance.loc["partial_scalar", ["freed", "holds"]]) == ["wai_04@il", True]
    # lavaan's score test of the scalar model's equality constraints points at the same
    # intercept: its largest statistic is wai_04 ~ 1 in group 1 (il) against group 2.
    best = lavaan["alliance"]["scalar_score_test_max"]
    assert best["lhs_par"].split()[:2] == ["wai_04", "~1"] and best["lhs_par"].endswith("1")
    # CTSCM-R has nothing planted: every step holds and nothing is freed.
    change = fits["change"]
    assert change["holds"].dropna().all() and "partial_scalar" not in change.index


def test_rows_are_tidy(fits):
    frame = fits["alliance"].reset_index()[list(COLUMNS)]
    assert set(fits["alliance"].reset_index().columns) == set(COLUMNS)
    assert frame["compared_with"].tolist() == ["", "configural", "metric", "metric"]
    assert (frame["delta_cfi"].iloc[1:] == frame["cfi"].iloc[1:].to_numpy()
            - frame.set_index("model").loc[frame["compared_with"].iloc[1:], "cfi"].to_numpy()).all()


def test_rmsea_is_zero_below_df_and_its_interval_brackets_it():
    assert rmsea_ci(90.0, 100, 300, 3) == (0.0, 0.0, pytest.approx(rmsea_ci(90.0, 100, 300, 3)[2]))
    point, low, high = rmsea_ci(250.0, 100, 300, 3)
    # sqrt((250/100 - 1) / 300) * sqrt(3), Steiger's multi-group RMSEA.
    assert point == pytest.approx(np.sqrt(1.5 / 300 * 3), abs=1e-12)
    assert low < point < high


def test_step_fails_on_chi2_or_on_cfi_and_rmsea_together():
    base = dict(scale="s", groups=3, n=300, npar=10, p=0.5, rmsea_low=0.0, rmsea_high=0.05,
                srmr=0.05)
    free = Fit(model="metric", chi2=100.0, df=90, cfi=0.990, rmsea=0.020, **base)

    def step(chi2, cfi, rmsea, **kw):
        return compare(Fit(model="scalar", chi2=chi2, df=100, cfi=cfi, rmsea=rmsea, **base),
                       free, **kw).holds

    assert step(110.0, 0.985, 0.025)
    # CFI drop of .011 alone is not enough (Chen 2007 asks RMSEA +.015 with it) ...
    assert step(110.0, 0.979, 0.025)
    # ... both together fail,
    assert not step(110.0, 0.979, 0.036)
    # and a significant chi-square difference (40 on 10 df) fails on its own, unless
    # the plan drops the chi-square test (alpha = 0).
    assert not step(140.0, 0.985, 0.025)
    assert step(140.0, 0.985, 0.025, alpha=0.0)


def test_one_site_is_refused():
    data = pd.read_csv(REFERENCE / "invariance_data.csv")
    with pytest.raises(ValueError, match="at least two sites"):
        invariance("change", CTSC, data[data["site"] == "us"])


def test_plan_leaves_out_sites_too_small_to_fit_and_says_so(study):
    import dataclasses

    from lacrima.invariance import plan_invariance
    from lacrima.study import _freeze, _thaw

    raw = _thaw(study.raw)
    raw["invariance"]["scales"] = {"change": ["change"]}   # one scale keeps the test short
    only_change = dataclasses.replace(study, raw=_freeze(raw))
    data = pd.read_csv(REFERENCE / "invariance_data.csv")
    frames = {code: rows for code, rows in data.groupby("site")}
    frames["il"] = frames["il"].head(16)   # 16 complete rows: no more than CTSCM-R's items
    fits, notes = plan_invariance(only_change, frames)
    assert set(fits["scale"]) == {"change"}
    assert (fits["groups"] == 2).all() and (fits["n"] == 124 + 106).all()
    assert notes == ["change: sites left out (no more complete rows than its 16 items): il."]


def test_plan_does_not_fit_beyond_max_sites(study):
    from lacrima.invariance import plan_invariance

    limit = int(study.section("invariance")["max_sites"])
    # The rows are not even read: the report passes None for each site then.
    fits, notes = plan_invariance(study, {f"s{k}": None for k in range(limit + 1)})
    assert fits.empty and list(fits.columns) == list(COLUMNS)
    assert notes == [f"Not fitted: {limit + 1} sites exceed [invariance] max_sites = {limit} "
                     "(the joint fit grows with the sites)."]


def test_the_score_screen_ranks_the_planted_intercept_first():
    # screen = 1 refits only the candidate with the largest score statistic: it is the
    # one the default screen (5 refits, best chi-square drop kept) chooses too.
    data = pd.read_csv(REFERENCE / "invariance_data.csv")
    fits = to_frame(invariance("alliance", WAI, data, screen=1)).set_index("model")
    assert fits.loc["partial_scalar", "freed"] == "wai_04@il"


def test_a_scale_that_cannot_be_fitted_is_a_note_not_a_failed_run(study):
    import dataclasses

    from lacrima.invariance import plan_invariance
    from lacrima.study import _freeze, _thaw

    raw = _thaw(study.raw)
    raw["invariance"]["scales"] = {"change": ["change"]}
    only_change = dataclasses.replace(study, raw=_freeze(raw))
    data = pd.read_csv(REFERENCE / "invariance_data.csv")
    frames = {code: rows.copy() for code, rows in data.groupby("site")}
    frames["it"]["ctsc_05"] = 3          # everyone at it answers 3: no variance
    fits, notes = plan_invariance(only_change, frames)
    assert fits.empty
    assert notes == ["change: not fitted (site it: the covariance of the 16 items is singular "
                     "(an item without variance, or collinear items))."]


@pytest.fixture(scope="module")
def metric_fits():
    # invariance_data_metric.csv: wai_08's loading planted at il (its deviations doubled),
    # wai_04's intercept as in invariance_data.csv (invariance_data.py)
    data = pd.read_csv(REFERENCE / "invariance_data_metric.csv")
    return to_frame(invariance("alliance", WAI, data)).set_index("model")


@pytest.mark.parametrize("model", ["configural", "metric", "partial_metric", "partial_scalar"])
def test_partial_metric_invariance_matches_lavaan(metric_fits, lavaan, model):
    # invariance_lavaan.R, "alliance_partial_metric": the partial metric model with per-group
    # loading labels (l_wai_08_il free at il, every other loading equal), the partial scalar
    # model keeping it free and freeing wai_04's intercept at il (syntax in the JSON).
    ours, ref = metric_fits.loc[model], lavaan["alliance_partial_metric"][model]
    assert ours["npar"] == ref["npar"] and ours["df"] == ref["df"]
    for col, key in (("chi2", "chisq"), ("cfi", "cfi"), ("rmsea", "rmsea"),
                     ("rmsea_low", "rmsea.ci.lower"), ("rmsea_high", "rmsea.ci.upper"),
                     ("srmr", "srmr")):
        assert ours[col] == pytest.approx(ref[key], abs=FIT_TOL), (col, ref["call"])
    if "chi2_diff" in ref:
        assert ours["chi2_diff"] == pytest.approx(ref["chi2_diff"], abs=FIT_TOL)
        assert ours["df_diff"] == ref["df_diff"]
        assert ours["p_diff"] == pytest.approx(ref["p_diff"], abs=P_TOL)
    if "freed" in ref:
        assert ours["freed"] == ref["freed"]


def test_partial_metric_frees_the_planted_loading_by_its_score_first(metric_fits):
    # The metric step fails; freeing the loading with the largest score statistic (screen = 1:
    # no refits to choose among) is the planted one, and then the step holds.
    assert not metric_fits.loc["metric", "holds"] and metric_fits.loc["partial_metric", "holds"]
    data = pd.read_csv(REFERENCE / "invariance_data_metric.csv")
    one = to_frame(invariance("alliance", WAI, data, screen=1)).set_index("model")
    assert one.loc["partial_metric", "freed"] == "wai_08@il"
    # the scalar step is tested against the partial metric model, the loading kept free
    assert metric_fits.loc["scalar", "compared_with"] == "partial_metric"
    assert metric_fits.loc["scalar", "freed"] == "wai_08@il (loading)"


def test_the_fit_is_stored_by_its_inputs_and_made_again_only_when_they_change(study, tmp_path,
                                                                           monkeypatch):
    # report.run_invariance: fitted once per digest of what the fit reads; a changed item
    # value, a changed setting or a changed site code fits again; a change to anything the
    # fit does not read (another column) reads the stored fit back, equal to a fresh one.
    import dataclasses
    from types import SimpleNamespace

    from lacrima import catalog, invariance as inv, report
    from lacrima.storage import LocalStorage
    from lacrima.study import _freeze, _thaw

    raw = _thaw(study.raw)
    raw["invariance"]["scales"] = {"change": ["change"]}   # one scale keeps the test short
    only_change = dataclasses.replace(study, raw=_freeze(raw))
    storage = LocalStorage(tmp_path / "store")
    data = pd.read_csv(REFERENCE / "invariance_data.csv")
    frames = {code: rows.reset_index(drop=True) for code, rows in data.groupby("site")}
    fitted = []
    plan = inv.plan_invariance
    monkeypatch.setattr(inv, "plan_invariance", lambda *a: fitted.append(1) or plan(*a))

    def run(frames, study=only_change, tag="a"):
        analyses = []
        for code, frame in frames.items():
            storage.write_bytes(catalog.site_data_key(code, tag), catalog.frame_bytes(frame))
            analyses.append(SimpleNamespace(site=code, input_key=tag))
        return report.run_invariance(storage, analyses, study)

    first = run(frames)
    assert len(fitted) == 1 and set(first[0]["scale"]) == {"change"}
    # the same inputs under other site input keys (e.g. the plan changed elsewhere): read back
    other = {c: f.assign(extra_column=1.0) for c, f in frames.items()}
    again = run(other, tag="b")
    assert len(fitted) == 1
    pd.testing.assert_frame_equal(again[0], first[0])
    assert again[1] == first[1]
    assert report.to_csv_bytes(again[0]) == report.to_csv_bytes(first[0])
    assert len(storage.list("invariance")) == 1
    # one item value at one site changed: fitted again, from the new data
    changed = {c: f.copy() for c, f in frames.items()}
    changed["it"].loc[0, "ctsc_05"] += 1
    refit = run(changed, tag="c")
    assert len(fitted) == 2
    assert (refit[0]["chi2"] != first[0]["chi2"]).any()
    # a setting of [invariance] changed: fitted again
    raw["invariance"]["alpha"] = 0.01
    run(frames, study=dataclasses.replace(study, raw=_freeze(raw)))
    assert len(fitted) == 3
    assert len(storage.list("invariance")) == 3
