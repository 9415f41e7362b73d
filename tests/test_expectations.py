"""The committed Great Expectations suite matches the plan, and it catches what it should."""

import json

import pandas as pd

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
    # no value of any row appears in a message
    assert not any("robot" in f.message for f in findings.values())


def test_findings_keep_their_wording_and_counts(study):
    frame = _frame(study)
    frame.loc[1, "cry_sessions"] = 2                # a non-crier with crying sessions
    findings = {f.check + ":" + f.columns[0]: f for f in
                run_suite(frame, study, row_numbers=[11, 12, 13, 14], codebook=_Codebook())}
    # wording as before the long-format suite (GX stores range bounds as floats)
    wai = findings["value_range:N_wai_01"]
    assert (wai.expected, wai.found) == ("values between 1.0 and 5.0", "1 unexpected value(s)")
    assert wai.message == "1 row(s) of column N_wai_01 fail: values between 1.0 and 5.0"
    assert findings["unique_ids:N_participant_id"].found == "2 unexpected value(s)"
    assert findings["allowed_codes:N_gender"].expected == "one of woman, man, another"
    assert findings["episode_blank_for_non_criers:N_after_sad"].expected == (
        "blank when cried_in_therapy is False (episode items are asked of criers only)")
    sessions = findings["value_range:N_cry_sessions"]
    assert sessions.rows == (12,)
    assert sessions.expected == "values between 0.0 and 0.0 when cried_in_therapy == False"
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
