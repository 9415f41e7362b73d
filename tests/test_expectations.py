"""The committed Great Expectations suite matches the plan, and it catches what it should."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacrima.study import load_site
from lacrima.synth import simulate
from lacrima.validate import EXPECTATIONS_DIR, SUITE_NAME, long_frame, run_suite, suite_dict


def test_committed_suite_is_generated_from_the_plan(study):
    committed = json.loads((EXPECTATIONS_DIR / f"{SUITE_NAME}.json").read_text())
    assert committed == suite_dict(study), "run `make expectations` after editing sites/study.toml"


def test_suite_covers_every_ranged_and_categorical_variable(study):
    suite = suite_dict(study)
    meta = [e["meta"] for e in suite["expectations"]]
    ranged = {v for m in meta if m["check"] == "value_range" and " when " not in m["expected"]
              for v in m["variables"]}
    assert ranged == {k for k, v in study.variables.items() if "valid" in v}
    coded = {v for m in meta if m["check"] == "allowed_codes" for v in m["variables"]}
    assert coded == {k for k, v in study.variables.items() if v["type"] == "category"}
    episode = {v for m in meta if m["check"] == "episode_blank_for_non_criers"
               for v in m["variables"]}
    assert episode == {k for k, v in study.variables.items() if v.get("group") == "episode"}


def test_each_expectation_selects_exactly_its_variables(study):
    # the row condition is what GX runs, meta is what people read: they must name the same rows
    for e in suite_dict(study)["expectations"]:
        names = e["meta"]["variables"]
        assert e["kwargs"]["row_condition"].startswith(f"variable in {json.dumps(names)}")


def test_one_expectation_per_shared_rule_not_per_variable(study):
    # the speed-up: GX's cost is per expectation; 1-5 Likert items share one range check
    suite = suite_dict(study)
    n_rules = sum(len(e["meta"]["variables"]) for e in suite["expectations"])
    assert n_rules == 77
    assert len(suite["expectations"]) <= 12


class _Codebook:
    def native_name(self, canonical):
        return f"N_{canonical}"


def _frame(study):
    frame = pd.DataFrame({
        "participant_id": ["a", "b", "b", "c"],
        "cried_in_therapy": pd.array([True, False, True, True], dtype="boolean"),
        "wai_01": pd.array([1, 5, 6, None], dtype="Int64"),
        "after_sad": pd.array([2, 3, None, 1], dtype="Int64"),
        "gender": pd.Series(["woman", "man", "robot", None], dtype="str"),
        "cry_sessions": pd.array([3, 0, 2, 1], dtype="Int64"),
    })
    for name in study.variables:
        if name not in frame:
            frame[name] = pd.NA
    return frame


def test_suite_reports_rows_and_native_columns(study):
    frame = _frame(study)
    findings = {f.check + ":" + f.columns[0]: f for f in
                run_suite(frame, study, row_numbers=[11, 12, 13, 14], codebook=_Codebook())}
    assert findings["value_range:N_wai_01"].rows == (13,)
    assert findings["allowed_codes:N_gender"].rows == (13,)
    assert set(findings["unique_ids:N_participant_id"].rows) == {12, 13}
    assert findings["episode_blank_for_non_criers:N_after_sad"].rows == (12,)
    # the offending number of a numeric column is shown; text (it may be anything a person
    # typed) never is
    assert findings["value_range:N_wai_01"].found == "1 value(s) that do not fit: 6"
    assert not any("robot" in f.message + f.found for f in findings.values())


def test_findings_keep_their_wording_and_counts(study):
    frame = _frame(study)
    frame.loc[1, "cry_sessions"] = 2                # a non-crier with crying sessions
    findings = {f.check + ":" + f.columns[0]: f for f in
                run_suite(frame, study, row_numbers=[11, 12, 13, 14], codebook=_Codebook())}
    # whole numbers as whole numbers, the site's words, no Python words (issue 22)
    wai = findings["value_range:N_wai_01"]
    assert (wai.expected, wai.found) == ("whole numbers from 1 to 5", "1 value(s) that do not fit: 6")
    # the native column, the study's name in brackets, the offending value
    assert wai.message == ("1 row(s) of column N_wai_01 [wai_01] fail: whole numbers from 1 "
                           "to 5; found 6")
    assert findings["unique_ids:N_participant_id"].found == "2 row(s) with a repeated participant ID"
    assert findings["allowed_codes:N_gender"].expected == "one of woman, man, another"
    assert findings["episode_blank_for_non_criers:N_after_sad"].expected == (
        "blank when N_cried_in_therapy [cried_in_therapy] is 'No' (episode items are asked of "
        "criers only)")
    sessions = findings["value_range:N_cry_sessions"]
    assert sessions.rows == (12,)
    assert sessions.expected == "0 when N_cried_in_therapy [cried_in_therapy] is 'No'"
    assert set(findings) == {"value_range:N_wai_01", "allowed_codes:N_gender",
                             "unique_ids:N_participant_id", "value_range:N_cry_sessions",
                             "episode_blank_for_non_criers:N_after_sad"}


def test_long_frame_has_one_row_per_participant_and_checked_variable(study):
    frame = _frame(study)
    before = frame.copy()
    long = long_frame(frame, study)
    pd.testing.assert_frame_equal(frame, before)           # input not changed
    checked = {v for e in suite_dict(study)["expectations"] for v in e["meta"]["variables"]}
    assert len(long) == 4 * len(checked)
    wai = long[long["variable"] == "wai_01"]
    assert wai["row"].tolist() == [0, 1, 2, 3]
    assert wai["value_num"].isna().tolist() == [False, False, False, True]
    assert long.loc[long["variable"] == "gender", "value"].tolist() == ["woman", "man", "robot", None]


def _pandas_reference(frame, study):
    """The same rules written directly in pandas: a second implementation to check GX against."""
    out = set()
    criers = study.section("analysis")["criers"]
    non_crier = (frame[criers] == False).fillna(False).to_numpy()   # noqa: E712 (NA is not False)

    def add(check, name, mask):
        rows = tuple(int(i) for i in mask.nonzero()[0])
        if rows:
            out.add((check, name, rows))

    ids = frame["participant_id"]
    add("ids_present", "participant_id", ids.isna().to_numpy())
    add("unique_ids", "participant_id", (ids.notna() & ids.duplicated(keep=False)).to_numpy())
    for name, spec in study.variables.items():
        col, present = frame[name], frame[name].notna().to_numpy()
        if "valid" in spec:
            lo, hi = spec["valid"]
            add("value_range", name, present & ~col.between(lo, hi).fillna(False).to_numpy())
        elif spec["type"] == "category":
            add("allowed_codes", name, present & ~col.isin(spec["levels"]).to_numpy())
        if spec.get("group") == "episode":
            add("episode_blank_for_non_criers", name, present & non_crier)
    sessions = frame["cry_sessions"]
    out_ = (sessions.notna() & (sessions != 0)).fillna(False).to_numpy() & non_crier
    if out_.any():
        # the wide range check and the non-crier check share a name: keep both apart by rows
        out.add(("value_range", "cry_sessions~non_crier", tuple(int(i) for i in out_.nonzero()[0])))
    return out


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), n_bad=st.integers(0, 12))
def test_findings_match_a_pandas_reference(study, seed, n_bad):
    rng = np.random.default_rng(seed)
    frame = simulate(load_site("us"), study, 30, seed)
    ranged = [k for k, v in study.variables.items() if "valid" in v]
    for _ in range(n_bad):                     # out of range, bad codes, answers of non-criers
        row = int(rng.integers(30))
        kind = rng.integers(4)
        if kind == 0:
            frame.loc[row, ranged[int(rng.integers(len(ranged)))]] = int(rng.integers(-5, 700))
        elif kind == 1:
            frame.loc[row, "gender"] = "robot"
        elif kind == 2:
            frame.loc[row, "participant_id"] = frame.loc[(row + 1) % 30, "participant_id"]
        else:
            frame.loc[row, "cried_in_therapy"] = [False, pd.NA][int(rng.integers(2))]
    got = set()
    for f in run_suite(frame, study, list(range(30)), codebook=None):
        column = f.columns[0]
        if f.check == "value_range" and " when " in f.expected:
            column += "~non_crier"
        got.add((f.check, column, f.rows))
    assert got == _pandas_reference(frame, study)


def test_missing_columns_count_as_blank(study):
    # the drop reader fills a missing column with blanks; a bare frame is read the same way
    frame = _frame(study).drop(columns=["wai_01", "cried_in_therapy"])
    findings = run_suite(frame, study, row_numbers=[11, 12, 13, 14], codebook=_Codebook())
    assert {f.check + ":" + f.columns[0] for f in findings} == {
        "allowed_codes:N_gender", "unique_ids:N_participant_id"}


def test_text_in_a_likert_column_is_a_clear_error(study):
    frame = _frame(study)
    frame["wai_02"] = pd.Series(["3", "often", None, "2"], dtype="str")
    with pytest.raises(ValueError, match="'wai_02' must hold numbers"):
        long_frame(frame, study)
