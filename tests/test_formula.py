"""One formula rule: what intake flags in a drop is what every written CSV escapes."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from lacrima.formula import escape_formula, looks_like_formula
from lacrima.exports import to_csv_bytes

# No carriage return here: pandas writes one unquoted, which splits the row for a reader.
CELLS = ["=1+1", "+SUM(A1:A3)", "-2+3", "@cmd", "\t=1", "=", "-", "+", "",
         "-3", "+4,5", "-0.25", "12", "plain text", "a=b", " =1", "-inf"]


@pytest.mark.parametrize("text", ["=1+1", "+SUM(A1:A3)", "-2+3", "@cmd", "\t=1", "\r=1", "-inf"])
def test_formula_like_text(text):
    assert looks_like_formula(text)
    assert escape_formula(text) == "'" + text


@pytest.mark.parametrize("text", ["-3", "+4,5", "-0.25", "12", "plain text", "a=b", "-", "", "="])
def test_data_is_not_a_formula(text):
    # signed numbers are data; a lone sign is a common "missing" mark, not a formula
    assert not looks_like_formula(text)
    assert escape_formula(text) == text


def test_written_csv_escapes_exactly_what_intake_flags():
    frame = pd.DataFrame({"text": pd.Series(CELLS, dtype="str"), "n": range(len(CELLS))})
    back = pd.read_csv(io.BytesIO(to_csv_bytes(frame)), dtype=str, keep_default_na=False)
    escaped = [got != sent for got, sent in zip(back["text"], CELLS)]
    assert escaped == [looks_like_formula(c) for c in CELLS]
    assert all(got == "'" + sent for got, sent, e in zip(back["text"], CELLS, escaped) if e)
