"""The committed Great Expectations suite matches the plan, and it catches what it should."""

import json

import pandas as pd

from lacrima.validate import EXPECTATIONS_DIR, SUITE_NAME, run_suite, suite_dict


def test_committed_suite_is_generated_from_the_plan(study):
    committed = json.loads((EXPECTATIONS_DIR / f"{SUITE_NAME}.json").read_text())
    assert committed == suite_dict(study), "run `make expectations` after editing sites/study.toml"


def test_suite_covers_every_ranged_and_categorical_variable(study):
    suite = suite_dict(study)
    ranged = {e["kwargs"]["column"] for e in suite["expectations"]
              if e["type"] == "expect_column_values_to_be_between" and "row_condition" not in e["kwargs"]}
    expected = {k for k, v in study.variables.items() if "valid" in v}
    assert ranged == expected


class _Codebook:
    def native_name(self, canonical):
        return f"N_{canonical}"


def test_suite_reports_rows_and_native_columns(study):
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
    findings = {f.check + ":" + f.columns[0]: f for f in
                run_suite(frame, study, row_numbers=[11, 12, 13, 14], codebook=_Codebook())}
    assert findings["value_range:N_wai_01"].rows == (13,)
    assert findings["allowed_codes:N_gender"].rows == (13,)
    assert set(findings["unique_ids:N_participant_id"].rows) == {12, 13}
    assert findings["episode_blank_for_non_criers:N_after_sad"].rows == (12,)
    # no value of any row appears in a message
    assert not any("robot" in f.message for f in findings.values())
