"""Cronbach's alpha and Feldt's interval against R psych::alpha and the ANOVA identity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lacrima.stats import cronbach_alpha

REF_FILE = Path(__file__).parent / "reference" / "stats_reference.json"
REF = json.loads(REF_FILE.read_text())["alpha"]
ITEMS = np.array(REF["items"], dtype=float)

EST = 1e-10   # alpha and bounds: closed forms, double precision


def test_alpha_and_feldt_ci_match_psych():
    # psych::alpha(as.data.frame(items))$total$raw_alpha and $feldt$lower.ci / $upper.ci
    est = cronbach_alpha(ITEMS)
    assert est.estimate == pytest.approx(REF["alpha"], abs=EST)
    assert est.ci_low == pytest.approx(REF["feldt_low"], abs=EST)
    assert est.ci_high == pytest.approx(REF["feldt_high"], abs=EST)
    assert est.n == 50 and est.method == "cronbach_alpha_feldt"


def test_tiny_example_matches_psych_printout():
    # psych::alpha(data.frame(a = c(1,2,3,4,5), b = c(2,2,4,4,5), c = c(2,3,3,5,4))) prints
    # "95% confidence boundaries (Feldt): lower 0.64 alpha 0.93 upper 0.99"
    est = cronbach_alpha(np.array([[1, 2, 2], [2, 2, 3], [3, 4, 3], [4, 4, 5], [5, 5, 4]]))
    got = (round(est.ci_low, 2), round(est.estimate, 2), round(est.ci_high, 2))
    assert got == (0.64, 0.93, 0.99)


def test_alpha_is_the_anova_consistency_icc_and_feldt_uses_its_f():
    # Feldt, Woodruff & Salih (1987): 1 - alpha = MS_error / MS_subjects; the bounds are
    # 1 - (1 - alpha) F_{1-a/2} and 1 - (1 - alpha) F_{a/2} on (n-1, (n-1)(k-1)) df.
    n, k = ITEMS.shape
    grand = ITEMS.mean()
    ss_rows = k * ((ITEMS.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((ITEMS.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((ITEMS - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows, ms_err = ss_rows / (n - 1), ss_err / ((n - 1) * (k - 1))
    alpha = 1 - ms_err / ms_rows
    est = cronbach_alpha(ITEMS, level=0.9)
    assert est.estimate == pytest.approx(alpha, abs=EST)
    df1, df2 = n - 1, (n - 1) * (k - 1)
    assert est.ci_low == pytest.approx(1 - (1 - alpha) * stats.f.ppf(0.95, df1, df2), abs=EST)
    assert est.ci_high == pytest.approx(1 - (1 - alpha) * stats.f.ppf(0.05, df1, df2), abs=EST)


def test_incomplete_rows_are_dropped():
    items = ITEMS.copy()
    items[[1, 4], [0, 5]] = np.nan
    est = cronbach_alpha(items)
    assert est.n == 48
    assert est.estimate == pytest.approx(cronbach_alpha(np.delete(ITEMS, [1, 4], axis=0)).estimate)


def test_degenerate_and_bad_input():
    assert "fewer than 3" in cronbach_alpha(ITEMS[:2]).note
    assert "zero variance" in cronbach_alpha(np.ones((10, 4))).note
    with pytest.raises(ValueError, match="at least 2 items"):
        cronbach_alpha(ITEMS[:, :1])
    with pytest.raises(ValueError, match="2-d"):
        cronbach_alpha(ITEMS[:, 0])
