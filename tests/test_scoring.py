"""Scores, exclusions and participant flow (protocol sections 4-5)."""

import numpy as np
import pandas as pd
import pytest

from lacrima.scoring import analysis_ready, score


def _frame(study, n=6, **overrides):
    """A canonical frame with every item present and simple known values."""
    data = {}
    for name, spec in study.variables.items():
        if spec["type"] in ("likert", "integer"):
            data[name] = pd.array([spec["valid"][0] + 1] * n, dtype="Int64")
        elif spec["type"] == "bool":
            data[name] = pd.array([True] * n, dtype="boolean")
        elif spec["type"] == "category":
            data[name] = [spec["levels"][0]] * n
        elif spec["type"] == "date":
            data[name] = pd.to_datetime(["2024-01-01"] * n)
        else:
            data[name] = [f"p{i}" for i in range(n)]
    data["age"] = pd.array([30] * n, dtype="Int64")
    frame = pd.DataFrame(data)
    for k, v in overrides.items():
        frame[k] = v
    return frame


def test_mean_scores_prorate_with_minimum_items(study):
    f = _frame(study, n=3)
    wai = [f"wai_{i:02d}" for i in range(1, 13)]
    f.loc[0, wai] = list(range(1, 6)) + [5] * 7            # full: mean of the 12 values
    f.loc[1, wai[:2]] = pd.NA                              # 10 of 12: still scored
    f.loc[2, wai[:3]] = pd.NA                              # 9 of 12: not scorable
    s = score(f, study)
    assert s.loc[0, "alliance"] == pytest.approx(np.mean(list(range(1, 6)) + [5] * 7))
    assert s.loc[1, "alliance"] == pytest.approx(2.0)
    assert pd.isna(s.loc[2, "alliance"])
    # subscale task = items 1, 2, 10, 12: row 1 has 2 of 4 -> missing
    assert pd.isna(s.loc[1, "alliance_task"])
    assert s.loc[0, "alliance_task"] == pytest.approx(np.mean([1, 2, 5, 5]))


def test_attachment_dimensions_follow_griffin_bartholomew(study):
    f = _frame(study, n=1)
    f.loc[0, ["rq_secure", "rq_fearful", "rq_preoccupied", "rq_dismissing"]] = [6, 2, 3, 5]
    s = score(f, study)
    assert s.loc[0, "attachment_security"] == 6
    assert s.loc[0, "attachment_anxiety"] == (2 + 3) - (6 + 5)
    assert s.loc[0, "attachment_avoidance"] == (2 + 5) - (6 + 3)
    f.loc[0, "rq_dismissing"] = pd.NA
    assert pd.isna(score(f, study).loc[0, "attachment_anxiety"])


def test_insecure_is_forced_choice_not_secure(study):
    f = _frame(study, n=3)
    f["rq_best"] = pd.Series(["secure", "fearful", None], dtype="str")
    s = score(f, study)
    assert s["insecure"].tolist()[:2] == [False, True] and pd.isna(s["insecure"].iloc[2])


def test_score_does_not_mutate_input(study):
    f = _frame(study)
    before = f.copy()
    score(f, study)
    pd.testing.assert_frame_equal(f, before)


def test_exclusions_in_order_each_counted_once(study):
    f = _frame(study, n=7)
    f["consent"] = pd.array([False, True, True, True, True, None, True], dtype="boolean")
    f["in_therapy"] = pd.array([False, False, True, True, True, True, True], dtype="boolean")
    f["age"] = pd.array([15, 30, 16, 40, 40, 40, 40], dtype="Int64")
    f["attention_check"] = pd.array([True, True, True, False, True, True, True], dtype="boolean")
    f.loc[4, [f"ctsc_{i:02d}" for i in range(1, 5)]] = pd.NA   # change unscorable (12 of 16)
    analysed, flow = analysis_ready(f, study, "xx")
    counts = {reason: n for reason, _, n in flow.excluded}
    # row 0 fails consent, therapy and age: counted under consent only; row 5 missing consent
    assert counts == {"no_consent": 2, "not_in_therapy": 1, "under_18": 1,
                      "failed_attention_check": 1, "unscorable": 1}
    assert flow.received == 7 and flow.analysed == 1 == len(analysed)
    table = flow.to_frame()
    assert table["n"].iloc[0] == 7 and table["n"].iloc[-1] == 1
    assert table.loc[table.step == "excluded", "n"].sum() + 1 == 7


def test_named_scores_are_the_full_scores_and_bring_what_they_use(study):
    from dataclasses import replace

    f = _frame(study, n=4)
    f.loc[1, [f"wai_{i:02d}" for i in range(1, 4)]] = pd.NA
    full = score(f, study)
    some = score(f, study, names=("alliance", "change"))
    assert [c for c in some.columns if c not in f.columns] == ["alliance", "change"]
    pd.testing.assert_frame_equal(some, full[list(some.columns)])
    # a score made from another score: asking for it computes both, in plan order
    scores = dict(study.scores)
    scores["alliance_x2"] = {"kind": "linear", "plus": ["alliance", "alliance"], "minus": []}
    plan = replace(study, raw={**study.raw, "scores": scores})
    two = score(f, plan, names=("alliance_x2",))
    assert [c for c in two.columns if c not in f.columns] == ["alliance", "alliance_x2"]
    pd.testing.assert_series_equal(two["alliance_x2"], (2 * full["alliance"]).rename("alliance_x2"))
