"""Holm adjustment against R p.adjust, with properties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacrima.stats import adjust_pvalues

REF = json.loads((Path(__file__).parent / "reference" / "stats_reference.json").read_text())["holm"]
PVAL = 1e-12


def test_holm_matches_r_p_adjust():
    # p.adjust(p, method = 'holm')
    np.testing.assert_allclose(adjust_pvalues(REF["p"], "holm"), REF["adjusted"], atol=PVAL)


def test_missing_p_values_stay_missing_and_do_not_count():
    got = adjust_pvalues([0.01, np.nan, 0.04], "holm")
    assert np.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2]], [0.02, 0.04], atol=PVAL)
    assert np.isnan(adjust_pvalues([np.nan, np.nan])).all()


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown p adjustment"):
        adjust_pvalues([0.1], "hochberg-ish")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adjust_pvalues([1.5])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_holm_never_lowers_p_and_keeps_order(p):
    p = np.array(p)
    adj = adjust_pvalues(p, "holm")
    assert (adj >= p - 1e-15).all() and (adj <= 1).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(adj[order]) >= -1e-15).all()


@pytest.mark.parametrize("seed", range(4))
def test_holm_matches_statsmodels_multipletests(seed):
    # second implementation: statsmodels.stats.multitest.multipletests(p, method="holm");
    # few cases because multipletests runs gc.collect() on every call (slow in a full session)
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 1, 20), rng.uniform(0, 0.01, 5), [0.0, 1.0, 0.5, 0.5]])
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), multipletests(p, method="holm")[1],
                               atol=PVAL)
