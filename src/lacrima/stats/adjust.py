"""Multiplicity adjustment of p values within a family."""

from __future__ import annotations

import numpy as np

# plan name -> statsmodels multipletests method
METHODS = {"holm": "holm", "bonferroni": "bonferroni", "fdr_bh": "fdr_bh", "none": None}


def adjust_pvalues(p_values, method: str = "holm") -> np.ndarray:
    """Adjust a set of p values for multiplicity.

    Parameters
    ----------
    p_values : array-like of float
        The p values of one family; NaN (a test that could not be run) is kept as
        NaN and does not count towards the family size.
    method : {"holm", "bonferroni", "fdr_bh", "none"}
        As named in ``study.toml [analysis] p_adjust``.

    Returns
    -------
    numpy.ndarray
        Adjusted p values in the input order, capped at 1.

    Notes
    -----
    Holm (1979): sort the m p values ascending, ``p_(i) * (m - i + 1)``, running
    maximum, capped at 1; via ``statsmodels.stats.multitest.multipletests``
    (method ``"holm"``), the same as R ``p.adjust(p, "holm")``.

    References
    ----------
    Holm, S. (1979). A simple sequentially rejective multiple test procedure.
    Scandinavian Journal of Statistics, 6, 65-70.

    Examples
    --------
    >>> adjust_pvalues([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    """
    if method not in METHODS:
        raise ValueError(f"unknown p adjustment {method!r}; expected one of {sorted(METHODS)}")
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    finite = ~np.isnan(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError("p values must lie in [0, 1]")
    out = np.full(p.shape, np.nan)
    if METHODS[method] is None:
        out[finite] = p[finite]
    elif method == "holm" and finite.any():
        out[finite] = _holm(p[finite])
    elif finite.any():
        # imported here: statsmodels.stats pulls in scipy.stats, pandas and statsmodels.tools
        # (about 1.5 s in a fresh process) and only the non-default methods need it
        from statsmodels.stats.multitest import multipletests

        out[finite] = multipletests(p[finite], method=METHODS[method])[1]
    return out


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjustment, the same arithmetic as ``multipletests(method="holm")``.

    statsmodels 0.15 runs ``gc.collect()`` inside its Holm branch (about 0.1 s a call, the
    bulk of a site's analysis time), so the three lines are done here; tests keep checking
    them against statsmodels and R ``p.adjust``.
    """
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.minimum(np.maximum.accumulate(p[order] * np.arange(m, 0, -1)), 1.0)
    out = np.empty(m)
    out[order] = stepped
    return out
