"""Synthetic drops: the seeded model recovers its configured truth; native files are realistic.

Reference values are the configured true values in sites/study.toml [synthetic] (protocol
section 9 table) and sites/il/site.toml (after_in_control .05), and closed forms named
where used.
"""

from __future__ import annotations

import json
import re

import numpy as np
import openpyxl
import pandas as pd
import pyreadstat
import pytest

from lacrima.native import read_drop
from lacrima.study import load_site
from lacrima.synth import (
    discretise, item_validity, score_validity, simulate, thresholds, write_drop,
)

R_TOL = 0.03          # item-score r at >= 20,000 criers: the tolerance (SE of r is ~.007)
D_TOL = 0.05          # Cohen d at n = 24,500: SE ~.016, latent shift linearised (seed 11: .520)
SHARE_TOL = 0.02      # proportions at n = 24,500 (SE ~ .003)
AGE_TOL = 0.3         # age mean and SD in years
VALIDITY_TOL = 0.005  # analytic attenuation vs Monte Carlo at n = 400,000

LARGE_N = 24_500      # gives >= 20,000 criers at the configured crying shares (~.83)


def scores(frame: pd.DataFrame, study) -> pd.DataFrame:
    """Scores the model targets, straight from the plan's item lists (complete data)."""
    f = frame.astype({c: "float64" for c in frame.columns if str(frame[c].dtype) == "Int64"})
    out = pd.DataFrame(index=f.index)
    out["change"] = f[list(study.scores["change"]["items"])].mean(axis=1)
    out["alliance"] = f[list(study.scores["alliance"]["items"])].mean(axis=1)
    out["attachment_security"] = f["rq_secure"]
    return pd.concat([f, out], axis=1)


@pytest.fixture(scope="module", params=["us", "il"])
def large(request, study):
    site = load_site(request.param)
    return site, scores(simulate(site, study, LARGE_N, 11), study)


def test_planted_item_score_correlations_recovered(study, large):
    site, frame = large
    config = site.synthetic(study)
    criers = frame[frame["cried_in_therapy"].astype(bool)]
    assert len(criers) >= 20_000
    for section, score in (("r_change", "change"), ("r_alliance", "alliance"),
                           ("r_security", "attachment_security")):
        for item, true_r in config[section].items():
            observed = criers[item].corr(criers[score])
            assert observed == pytest.approx(true_r, abs=R_TOL), (site.code, item, score)


def test_israel_has_the_heterogeneous_effect(study, large):
    site, frame = large
    criers = frame[frame["cried_in_therapy"].astype(bool)]
    r = criers["after_in_control"].corr(criers["change"])
    # sites/il/site.toml: .05; study.toml default: .30.
    assert r == pytest.approx(0.05 if site.code == "il" else 0.30, abs=R_TOL)


def test_alliance_change_and_crier_difference(study, large):
    site, frame = large
    config = site.synthetic(study)
    r = frame["alliance"].corr(frame["change"])
    assert r == pytest.approx(config["alliance_change_r"], abs=R_TOL)
    cried = frame["cried_in_therapy"].astype(bool)
    a, b = frame.loc[cried, "change"], frame.loc[~cried, "change"]
    pooled = np.sqrt(((len(a) - 1) * a.var() + (len(b) - 1) * b.var()) / (len(a) + len(b) - 2))
    d = (a.mean() - b.mean()) / pooled
    assert d == pytest.approx(config["criers_minus_noncriers_change_d"], abs=D_TOL)


def test_demographics_follow_the_configuration(study, large):
    site, frame = large
    config = site.synthetic(study)
    shares = frame["gender"].value_counts(normalize=True)
    for gender, share in config["gender_share"].items():
        assert shares[gender] == pytest.approx(share, abs=SHARE_TOL)
        cried = frame.loc[frame["gender"] == gender, "cried_in_therapy"].astype(float).mean()
        assert cried == pytest.approx(config["cried_share"][gender], abs=SHARE_TOL + 0.01)
    # Published US sample: mean 30.33, SD 11.1 (Katz et al. 2024).
    assert frame["age"].mean() == pytest.approx(config["age_mean"], abs=AGE_TOL)
    assert frame["age"].std() == pytest.approx(config["age_sd"], abs=AGE_TOL)
    assert frame["age"].between(18, 80).all()
    assert 1 - frame["attention_check"].astype(float).mean() == pytest.approx(0.03, abs=0.01)


def test_item_validity_of_a_median_split():
    # Point-biserial r of a median split of a normal variable: sqrt(2 / pi) = 0.7979
    # (Cohen 1983, "The cost of dichotomization").
    assert item_validity(np.array([0.0])) == pytest.approx(np.sqrt(2 / np.pi), abs=1e-12)


@pytest.mark.parametrize("loading, k", [(0.7, 12), (0.6, 16), (0.5, 3)])
def test_score_validity_matches_monte_carlo(loading, k):
    rng = np.random.default_rng(3)
    n = 400_000
    t = rng.standard_normal(n)
    latent = loading * t[:, None] + np.sqrt(1 - loading**2) * rng.standard_normal((n, k))
    items = discretise(latent, thresholds(5))
    mc = np.corrcoef(items.mean(axis=1), t)[0, 1]
    assert score_validity(thresholds(5), loading, k) == pytest.approx(mc, abs=VALIDITY_TOL)


@pytest.mark.parametrize("code", ["us", "it", "il"])
def test_simulate_structure(study, code):
    site = load_site(code)
    frame = simulate(site, study, 300, 1)
    assert list(frame.columns) == ["site", *study.variables]
    criers = frame["cried_in_therapy"].astype(bool)
    episode = list(study.variables_in("episode"))
    assert frame.loc[~criers, episode].isna().all().all()
    assert frame.loc[criers, episode].notna().all().all()
    assert (frame.loc[~criers, "cry_sessions"] == 0).all()
    assert (frame.loc[criers, "cry_sessions"] >= 1).all()
    assert frame["consent"].all() and frame["in_therapy"].all()
    assert frame["participant_id"].is_unique
    for var, meta in study.variables.items():
        if "valid" in meta:
            lo, hi = meta["valid"]
            assert frame[var].dropna().between(lo, hi).all(), var
        if "levels" in meta:
            assert set(frame[var].dropna()) <= set(meta["levels"]), var


def test_same_seed_same_frame_other_seed_other_frame(study):
    site = load_site("it")
    pd.testing.assert_frame_equal(simulate(site, study, 50, 9), simulate(site, study, 50, 9))
    assert not simulate(site, study, 50, 9).equals(simulate(site, study, 50, 10))


@pytest.mark.parametrize("code, pattern", [
    ("us", r"R_[0-9A-Za-z]{15}"), ("it", r"IT-\d{4}"), ("il", r"\d+"),
])
def test_id_shapes_and_offsets(study, code, pattern):
    site = load_site(code)
    first = simulate(site, study, 30, 1)["participant_id"]
    second = simulate(site, study, 30, 1, id_offset=30)["participant_id"]
    assert all(re.fullmatch(pattern, x) for x in [*first, *second])
    assert not set(first) & set(second)
    if code == "it":
        assert first.iloc[0] == "IT-0001" and second.iloc[0] == "IT-0031"


@pytest.mark.parametrize("code, fmt", [("us", None), ("it", "csv"), ("il", None)])
def test_same_seed_byte_identical(study, tmp_path, code, fmt):
    site = load_site(code)
    a = write_drop(site, study, tmp_path / "a", n=25, seed=4, format=fmt)
    b = write_drop(site, study, tmp_path / "b", n=25, seed=4, format=fmt)
    c = write_drop(site, study, tmp_path / "c", n=25, seed=5, format=fmt)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_same_seed_same_workbook_cells(study, tmp_path):
    site = load_site("it")
    cells = []
    for name in ("a.xlsx", "b.xlsx"):
        wb = openpyxl.load_workbook(write_drop(site, study, tmp_path / name, n=25, seed=4))
        cells.append([list(r) for r in wb.active.iter_rows(values_only=True)])
    assert cells[0] == cells[1]


@pytest.mark.parametrize("code, n", [("us", 124), ("it", 106), ("il", 100)])
def test_default_n_is_the_published_n(study, tmp_path, code, n):
    site = load_site(code)
    path = write_drop(site, study, tmp_path)
    assert path.parent == tmp_path and path.name.startswith(f"{code}_synthetic_n{n}_")
    assert read_drop(path, site, study).n_rows == n


def test_qualtrics_export_shape(study, tmp_path):
    path = write_drop(load_site("us"), study, tmp_path / "us.csv", n=10, seed=2)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    lines = raw.decode("utf-8-sig").split("\r\n")
    names = lines[0].split(",")
    assert names[:17] == [
        "StartDate", "EndDate", "Status", "IPAddress", "Progress", "Duration (in seconds)",
        "Finished", "RecordedDate", "ResponseId", "RecipientLastName", "RecipientFirstName",
        "RecipientEmail", "ExternalReference", "LocationLatitude", "LocationLongitude",
        "DistributionChannel", "UserLanguage",
    ]
    assert "Q14_12" in names
    third = pd.read_csv(path, header=None, skiprows=2, nrows=1, encoding="utf-8-sig")
    third = third.iloc[0].tolist()
    assert json.loads(third[names.index("Q14_1")]) == {"ImportId": "QID14_1"}
    first = pd.read_csv(path, header=0, skiprows=[1, 2], encoding="utf-8-sig", dtype=str)
    assert first["RecordedDate"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
    wai = {"Seldom", "Sometimes", "Fairly often", "Very often", "Always"}
    assert set(first["Q14_1"].dropna()) <= wai
    assert first["IPAddress"].str.fullmatch(r"(192\.0\.2|198\.51\.100|203\.0\.113)\.\d+").all()


def test_spss_metadata(study, tmp_path):
    path = write_drop(load_site("il"), study, tmp_path / "il.sav", n=10, seed=2)
    _, meta = pyreadstat.read_sav(str(path), metadataonly=True, user_missing=True)
    assert meta.variable_value_labels["gender"] == {1.0: "אישה", 2.0: "גבר", 3.0: "אחר"}
    assert meta.column_names_to_labels["age"] == "גיל"
    assert meta.missing_ranges["wai1"] == [{"lo": 99.0, "hi": 99.0}]
    assert meta.missing_ranges["age"] == [{"lo": 999.0, "hi": 999.0}]


def test_negative_arguments_are_refused(study):
    with pytest.raises(ValueError, match="n must be at least 1"):
        simulate(load_site("us"), study, 0, 1)
    with pytest.raises(ValueError, match="id_offset"):
        simulate(load_site("us"), study, 5, 1, id_offset=-1)


def test_wrong_extension_for_the_site_is_refused(study, tmp_path):
    with pytest.raises(ValueError, match=r"site 'us' sends qualtrics_csv files \(\.csv\)"):
        write_drop(load_site("us"), study, tmp_path / "us.xlsx", n=5, seed=1)
