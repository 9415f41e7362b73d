"""Pearson, Spearman and partial correlations with Fisher-z intervals.

Missing values are dropped pairwise: only the cases complete on the variables of
one correlation are used, and ``n`` reports that number.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from lacrima.stats import Estimate, as_float_array, check_level, not_estimable

MIN_N = 4  # below this Fisher z has no variance (n - 3 <= 0)


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = as_float_array(x, "x"), as_float_array(y, "y")
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    keep = ~(np.isnan(xa) | np.isnan(ya))
    return xa[keep], ya[keep]


def _degenerate(method: str, n: int, min_n: int, level: float,
                *columns: np.ndarray) -> Estimate | None:
    if n < min_n:
        return not_estimable(method, n, f"n = {n}, fewer than {min_n} complete cases", level)
    for col in columns:
        if np.ptp(col) == 0:
            return not_estimable(method, n, "a variable has zero variance", level)
    return None


def _fisher_interval(r: float, se_z: float, level: float) -> tuple[float, float, float]:
    """(se on the z scale, ci_low, ci_high) for ``r`` with Fisher z standard error ``se_z``."""
    zcrit = stats.norm.ppf(0.5 + level / 2)
    # |r| = 1 gives z = +/-inf and a degenerate interval [r, r]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.arctanh(np.clip(r, -1.0, 1.0))
        lo, hi = np.tanh(z - zcrit * se_z), np.tanh(z + zcrit * se_z)
    return float(se_z), float(lo), float(hi)


def _t_from_r(r: float, df: float) -> tuple[float, float]:
    """t statistic and two-sided p for H0: rho = 0, ``t = r sqrt(df / (1 - r^2))``."""
    with np.errstate(divide="ignore"):
        t = r * np.sqrt(df / (1.0 - r * r)) if abs(r) < 1 else np.copysign(np.inf, r)
    return float(t), float(2 * stats.t.sf(abs(t), df))


def pearson(x, y, level: float = 0.95) -> Estimate:
    """Pearson correlation with a Fisher-z confidence interval.

    Parameters
    ----------
    x, y : array-like of float
        Paired observations; pairs with a missing value (NaN) are dropped.
    level : float
        Confidence level of the interval.

    Returns
    -------
    Estimate
        ``method="pearson"``; ``estimate`` r; ``se`` the Fisher-z SE ``1/sqrt(n-3)``;
        ``ci_low``/``ci_high``; ``statistic`` t on ``df = n - 2``; two-sided ``p_value``.
        Not estimable (``note`` set) when n < 4 or a variable is constant.

    Notes
    -----
    ``t = r sqrt((n-2)/(1-r^2))``; CI ``tanh(atanh(r) +/- z_{(1+level)/2} / sqrt(n-3))``
    (Fisher 1921), the interval ``scipy.stats.pearsonr(...).confidence_interval()`` gives.
    The interval is symmetric on the z scale, so ``se`` can be recovered from it.

    References
    ----------
    Fisher, R. A. (1921). On the "probable error" of a coefficient of correlation
    deduced from a small sample. Metron, 1, 3-32.

    Examples
    --------
    >>> est = pearson([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    >>> round(est.estimate, 3), est.n, est.df
    (0.8, 5, 3.0)
    """
    level = check_level(level)
    xa, ya = _pair(x, y)
    n = xa.size
    bad = _degenerate("pearson", n, MIN_N, level, xa, ya)
    if bad is not None:
        return bad
    with np.errstate(all="ignore"):
        # r is scale-free; dividing by the largest |value| keeps tiny variances from underflowing
        r = float(np.corrcoef(xa / np.abs(xa).max(), ya / np.abs(ya).max())[0, 1])
    if not np.isfinite(r):
        # values so close together that their variance underflows
        return not_estimable("pearson", n, "a variable has (numerically) zero variance", level)
    # rounding can put |r| a hair above 1 for (nearly) collinear data
    r = float(np.clip(r, -1.0, 1.0))
    se_z, lo, hi = _fisher_interval(r, 1.0 / np.sqrt(n - 3), level)
    t, p = _t_from_r(r, n - 2)
    return Estimate("pearson", n, r, se_z, lo, hi, t, float(n - 2), p, level)


def spearman(x, y, level: float = 0.95) -> Estimate:
    """Spearman rank correlation with a Fisher-z interval (Bonett-Wright SE).

    Parameters
    ----------
    x, y : array-like of float
        Paired observations; pairs with a missing value are dropped. Ties get
        average ranks.
    level : float
        Confidence level of the interval.

    Returns
    -------
    Estimate
        ``method="spearman"``; ``estimate`` rho; ``se`` on the z scale; interval;
        ``statistic`` t on ``df = n - 2``; ``p_value`` from ``scipy.stats.spearmanr``
        (the same t approximation).

    Notes
    -----
    CI ``tanh(atanh(rho) +/- z_{(1+level)/2} sqrt((1 + rho^2/2)/(n-3)))``: Bonett and
    Wright (2000) showed that this variance keeps Fisher-z intervals for Spearman's rho
    near nominal coverage, where ``1/(n-3)`` is too small.

    References
    ----------
    Bonett, D. G., & Wright, T. A. (2000). Sample size requirements for estimating
    Pearson, Kendall and Spearman correlations. Psychometrika, 65(1), 23-28.
    """
    level = check_level(level)
    xa, ya = _pair(x, y)
    n = xa.size
    bad = _degenerate("spearman", n, MIN_N, level, xa, ya)
    if bad is not None:
        return bad
    res = stats.spearmanr(xa, ya)
    rho = float(res.statistic)
    se_z, lo, hi = _fisher_interval(rho, np.sqrt((1 + rho * rho / 2) / (n - 3)), level)
    t, _ = _t_from_r(rho, n - 2)
    return Estimate("spearman", n, rho, se_z, lo, hi, t, float(n - 2), float(res.pvalue), level)


def partial_correlation(x, y, covariates, level: float = 0.95) -> Estimate:
    """Partial Pearson correlation of x and y controlling for covariates.

    Parameters
    ----------
    x, y : array-like of float
        Paired observations.
    covariates : 2-d array-like of float, shape (n, g)
        The g control variables (a 1-d array is one covariate). Cases missing on
        x, y or any covariate are dropped.
    level : float
        Confidence level.

    Returns
    -------
    Estimate
        ``method="pearson_partial"``; ``estimate`` partial r; ``se`` ``1/sqrt(n-3-g)``
        on the z scale; interval; ``statistic`` t on ``df = n - 2 - g``; ``p_value``.
        Not estimable when ``n - 3 - g < 1``, a variable is constant, or x or y is
        a linear function of the covariates.

    Notes
    -----
    Residual method: x and y are each regressed (least squares, with intercept) on
    the covariates and the partial r is the Pearson r of the residuals.
    ``t = r sqrt((n-2-g)/(1-r^2))``; CI ``tanh(atanh(r) +/- z / sqrt(n-3-g))``
    (Fisher 1924: a partial correlation on g covariates behaves like a simple one on
    n - g cases).

    References
    ----------
    Fisher, R. A. (1924). The distribution of the partial correlation coefficient.
    Metron, 3, 329-332.
    """
    level = check_level(level)
    xa, ya = as_float_array(x, "x"), as_float_array(y, "y")
    z = np.asarray(covariates, dtype=float)
    if z.ndim == 1:
        z = z[:, None]
    if not (xa.shape[0] == ya.shape[0] == z.shape[0]):
        raise ValueError(
            f"x, y and covariates must have the same number of rows, got {xa.shape[0]}, "
            f"{ya.shape[0]} and {z.shape[0]}")
    g = z.shape[1]
    keep = ~(np.isnan(xa) | np.isnan(ya) | np.isnan(z).any(axis=1))
    xa, ya, z = xa[keep], ya[keep], z[keep]
    n = xa.size
    method = "pearson_partial"
    bad = _degenerate(method, n, MIN_N + g, level, xa, ya, *z.T)
    if bad is not None:
        return bad
    design = np.column_stack([np.ones(n), z])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        return not_estimable(method, n, "the covariates are collinear", level)
    coef, *_ = np.linalg.lstsq(design, np.column_stack([xa, ya]), rcond=None)
    resid = np.column_stack([xa, ya]) - design @ coef
    scale = np.sqrt((resid ** 2).sum(axis=0))
    # relative threshold: a residual this small means x or y is explained exactly
    if (scale <= 1e-10 * np.sqrt(n) * np.array([np.std(xa), np.std(ya)])).any():
        return not_estimable(method, n, "x or y is a linear function of the covariates", level)
    r = float(resid[:, 0] @ resid[:, 1] / (scale[0] * scale[1]))
    se_z, lo, hi = _fisher_interval(r, 1.0 / np.sqrt(n - 3 - g), level)
    t, p = _t_from_r(r, n - 2 - g)
    return Estimate(method, n, r, se_z, lo, hi, t, float(n - 2 - g), p, level)
