"""SPSS and Parquet exports: values survive the round trip, labels come from plan and codebook."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lacrima import exports
from lacrima.codebook import load_codebook


@pytest.fixture(scope="module")
def site_data(study, sites):
    """Analysis-ready synthetic data per site (scored, excluded, pseudonymised), and a stand-in
    for ``SiteAnalysis`` carrying it."""
    from types import SimpleNamespace

    from lacrima import scoring, synth
    from lacrima.privacy import pseudonymise

    out = {}
    for s in sites:
        frame = synth.simulate(s, study, 60, seed=11)
        frame["participant_id"] = pseudonymise(s.code, frame["participant_id"], b"test-key")
        data, _ = scoring.analysis_ready(frame, study, s.code)
        out[s.code] = SimpleNamespace(site=s.code, data=data)
    return out


def _read_sav(data: bytes):
    import pyreadstat

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.sav"
        path.write_bytes(data)
        return pyreadstat.read_sav(str(path))


@pytest.fixture(scope="module")
def savs(site_data, study, sites):
    return {s.code: _read_sav(exports.spss_bytes(site_data[s.code].data, study, s)) for s in sites}


def test_sav_round_trip_keeps_every_row_column_and_value(site_data, savs, study):
    for code, (frame, _) in savs.items():
        data = site_data[code].data
        assert list(frame.columns) == list(data.columns) and len(frame) == len(data)
        for col in data.columns:
            src = data[col]
            if pd.api.types.is_bool_dtype(src):
                expected = src.astype("boolean").map({True: 1.0, False: 0.0}).astype(float)
                np.testing.assert_array_equal(frame[col].to_numpy(float),
                                              expected.to_numpy(float, na_value=np.nan))
            elif pd.api.types.is_numeric_dtype(src):
                # float64 on both sides: SPSS numerics are doubles, so values are exact.
                np.testing.assert_array_equal(frame[col].to_numpy(float),
                                              pd.to_numeric(src).to_numpy(float, na_value=np.nan))
        assert frame["participant_id"].str.fullmatch(rf"{code}-[0-9a-f]{{16}}").all()
        assert (pd.to_datetime(frame["completed_at"]).dt.date
                == pd.to_datetime(data["completed_at"]).dt.date).all()


def test_sav_categories_are_coded_in_plan_order(site_data, savs, study):
    for code, (frame, meta) in savs.items():
        codes = exports.category_codes(study, "gender")
        assert codes == {"woman": 1, "man": 2, "another": 3}   # sites/study.toml gender levels
        expected = site_data[code].data["gender"].astype(object).map(codes).astype(float)
        np.testing.assert_array_equal(frame["gender"].to_numpy(float), expected.to_numpy(float))


def test_sav_variable_labels_come_from_the_plan(savs, study):
    for _, (_, meta) in savs.items():
        labels = meta.column_names_to_labels
        assert labels["after_relaxed"] == study.variables["after_relaxed"]["label"]
        assert labels["alliance"] == study.scores["alliance"]["label"]
        assert labels["age"] == "Age (years)"                   # sites/study.toml [variables] age


def test_sav_value_labels_are_each_sites_own_answer_text(savs, sites):
    for s in sites:
        _, meta = savs[s.code]
        codebook = load_codebook(s)
        wai = codebook.scale_of("wai_01")
        assert meta.variable_value_labels["wai_01"] == {
            float(v): lab for v, lab in zip(wai.values, wai.labels)}
        gender = codebook.scale_of("gender")
        assert meta.variable_value_labels["gender"][1.0] == gender.label_of("woman")
    # sites/it/codebook.toml [scales.gender] and sites/us/codebook.toml [scales.wai]:
    assert savs["it"][1].variable_value_labels["gender"][1.0] == "Donna"
    assert savs["us"][1].variable_value_labels["wai_01"][5.0] == "Always"


def test_sav_booleans_are_one_and_zero_with_labels(savs):
    _, meta = savs["us"]
    assert meta.variable_value_labels["cried_in_therapy"] == {1.0: "Yes", 0.0: "No"}
    # Several answers mean "failed" on the attention item: no single text, plain words instead.
    assert meta.variable_value_labels["attention_check"] == {1.0: "true", 0.0: "false"}


def test_sav_measure_levels_follow_the_plans_variable_types(site_data, savs, study):
    """Read back by pyreadstat (ReadStat, as SPSS reads the dictionary): no level is unknown."""
    expected_by_type = {"bool": "nominal", "category": "nominal", "string": "nominal",
                        "likert": "ordinal", "integer": "scale", "date": "scale"}
    for code, (frame, meta) in savs.items():
        levels = meta.variable_measure
        assert set(levels) == set(frame.columns)
        assert "unknown" not in levels.values()
        seen = set()
        for col in frame.columns:
            kind = study.variables.get(col, {}).get("type")
            if kind is not None:
                assert levels[col] == expected_by_type[kind], (code, col, kind)
                seen.add(kind)
        assert seen == set(expected_by_type)          # every type of the plan is exercised
        # scores: a mean or sum of items is scale; a true/false score nominal
        assert levels["change"] == levels["alliance"] == levels["attachment_anxiety"] == "scale"
        assert levels["insecure"] == "nominal" and levels["site"] == "nominal"
        assert (levels["after_happy"], levels["gender"], levels["age"]) == \
            ("ordinal", "nominal", "scale")


def test_export_does_not_change_its_input(site_data, study, sites):
    data = site_data["il"].data
    before = data.copy()
    exports.spss_bytes(data, study, next(s for s in sites if s.code == "il"))
    pd.testing.assert_frame_equal(before, data)


def test_a_column_name_spss_cannot_hold_is_refused(site_data, study, sites):
    data = site_data["us"].data.assign(**{"x" * 65: 1.0})
    with pytest.raises(exports.ExportError, match="64-byte"):
        exports.spss_bytes(data, study, next(s for s in sites if s.code == "us"))


@pytest.mark.parametrize("stored", [False, True], ids=["frames", "parquet-bytes"])
def test_parquet_holds_the_stacked_data_types_and_labels(site_data, study, stored):
    analyses = list(site_data.values())
    # Site by site (one row group each), from frames or stored Parquet bytes: the same table
    # pd.concat gives, dtypes included.
    buf = {a.site: io.BytesIO() for a in analyses}
    for a in analyses:
        a.data.to_parquet(buf[a.site], index=False)
    frames = [buf[a.site].getvalue() if stored else a.data for a in analyses]
    blob = exports.stacked_parquet_bytes(frames, study)
    back = pd.read_parquet(io.BytesIO(blob))
    expected = pd.concat([a.data for a in analyses], ignore_index=True)
    pd.testing.assert_frame_equal(back, expected)
    import pyarrow.parquet as pq
    assert pq.ParquetFile(io.BytesIO(blob)).num_row_groups == len(analyses)
    assert set(back["site"]) == set(site_data)
    labels = json.loads(pq.read_schema(io.BytesIO(blob)).metadata[b"lacrima.labels"])
    assert labels["change"] == study.scores["change"]["label"]
    assert labels["participant_id"] == "Participant ID"


def test_parquet_unifies_columns_a_site_lacks_or_leaves_blank(site_data, study):
    # One site without a column and another with it all blank: the union keeps the
    # column with the type of the sites that have values, as pd.concat would.
    a, b = [x.data for x in list(site_data.values())[:2]]
    a = a.drop(columns=["age"])
    b = b.assign(age=pd.Series([pd.NA] * len(b), dtype="Float64"))
    expected = pd.concat([a, b], ignore_index=True)
    for items in ([a, b], [f.to_parquet(index=False) for f in (a, b)]):
        blob = exports.stacked_parquet_bytes(items, study)
        back = pd.read_parquet(io.BytesIO(blob))
        pd.testing.assert_frame_equal(back, expected)
