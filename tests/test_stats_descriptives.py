"""Numeric and categorical descriptives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lacrima.stats import DESCRIPTIVE_COLUMNS, describe_categorical, describe_numeric


def test_numeric_summary_by_hand():
    s = pd.Series([4, 2, pd.NA, 6, pd.NA], dtype="Int64")
    d = describe_numeric(s, "age")
    assert (d.n, d.mean, d.min, d.max, d.pct_missing) == (3, 4.0, 2.0, 6.0, 40.0)
    assert d.sd == pytest.approx(2.0)   # sqrt(((4-4)^2 + (2-4)^2 + (6-4)^2) / 2)
    frame = d.to_frame()
    assert set(frame.columns) <= set(DESCRIPTIVE_COLUMNS) and frame.loc[0, "variable"] == "age"


def test_numeric_edge_cases():
    one = describe_numeric([3.0], "x")
    assert one.n == 1 and one.mean == 3.0 and np.isnan(one.sd)
    none = describe_numeric([np.nan, np.nan], "x")
    assert none.n == 0 and none.pct_missing == 100.0 and np.isnan(none.mean)


def test_categorical_counts_and_percent_of_non_missing():
    s = pd.Series(["woman", "man", "woman", pd.NA, "another"], dtype="str")
    rows = describe_categorical(s, ["woman", "man", "another"], "gender")
    assert [r.level for r in rows] == ["woman", "man", "another"]
    assert [r.count for r in rows] == [2, 1, 1]
    assert [r.percent for r in rows] == [50.0, 25.0, 25.0]
    assert all(r.n == 4 and r.pct_missing == 20.0 for r in rows)


def test_boolean_levels_are_written_lower_case():
    s = pd.Series([True, True, False, pd.NA], dtype="boolean")
    rows = describe_categorical(s, [True, False], "cried")
    assert [(r.level, r.count) for r in rows] == [("true", 2), ("false", 1)]
    assert rows[0].percent == pytest.approx(200 / 3)
