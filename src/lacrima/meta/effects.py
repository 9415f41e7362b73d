"""Effect sizes with their sampling variances, the first of the two pooling steps.

Each function returns ``(yi, vi)`` as float arrays, like metafor's ``escalc``: the
effect on the scale on which it is pooled and its sampling variance. Pooling
(:func:`lacrima.meta.rma.random_effects`) takes nothing else.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

__all__ = [
    "fisher_z", "hedges_g", "log_odds_ratio", "from_symmetric_ci", "z_critical",
    "TO_SCALE", "FROM_SCALE",
]


def _identity(values):
    return values


# Each pooling scale (``fisher_z`` for r, ``log`` for the odds ratio, ``identity`` for g),
# the way onto it and the way back, as metafor's ``transf`` argument does (tanh for z).
TO_SCALE = {"fisher_z": np.arctanh, "identity": _identity, "log": np.log}
FROM_SCALE = {"fisher_z": np.tanh, "identity": _identity, "log": np.exp}


def _as_float(name: str, values) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=float))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-d sequence, got shape {arr.shape}")
    return arr


def z_critical(level: float) -> float:
    """Two-sided normal critical value for a confidence level (1.959964 at 0.95)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be strictly between 0 and 1, got {level}")
    return float(stats.norm.ppf((1 + level) / 2))


def fisher_z(r, n, covariates=0) -> tuple[np.ndarray, np.ndarray]:
    """Fisher z of a (partial) correlation and its sampling variance.

    Parameters
    ----------
    r : float or array_like
        Pearson correlations, or partial correlations, each in (-1, 1).
    n : int or array_like
        Number of pairs each correlation was computed on.
    covariates : int or array_like, default 0
        Number of covariates partialled out (``g``); 0 for a plain correlation.

    Returns
    -------
    yi : ndarray
        ``atanh(r)``.
    vi : ndarray
        ``1 / (n - 3 - g)``.

    Notes
    -----
    :math:`z = \\tanh^{-1}(r)` is approximately normal with variance
    :math:`1/(n - 3 - g)` (Fisher 1924 for partial correlations; Olkin & Finn 1995),
    the protocol's section 7 formula. metafor 3.8's ``ZPCOR`` uses ``1/(n - g - 2)``
    instead; the difference is one degree of freedom.

    References
    ----------
    Fisher, R. A. (1924). The distribution of the partial correlation coefficient.
    Metron, 3, 329-332.

    Examples
    --------
    >>> yi, vi = fisher_z(0.3, 103)
    >>> round(float(yi[0]), 4), float(vi[0])
    (0.3095, 0.01)
    """
    r_arr, n_arr = np.broadcast_arrays(_as_float("r", r), _as_float("n", n))
    g_arr = np.broadcast_to(_as_float("covariates", covariates), r_arr.shape)
    if np.any(np.abs(r_arr) >= 1):
        raise ValueError("every correlation must lie strictly between -1 and 1")
    denom = n_arr - 3 - g_arr
    if np.any(denom <= 0):
        raise ValueError(
            "n - 3 - covariates must be positive for the Fisher-z variance; "
            f"got n = {n_arr.tolist()}, covariates = {g_arr.tolist()}"
        )
    return np.arctanh(r_arr), 1.0 / denom


def hedges_g(m1, sd1, n1, m2, sd2, n2) -> tuple[np.ndarray, np.ndarray]:
    """Hedges' g (bias-corrected standardised mean difference, group 1 minus group 2).

    Parameters
    ----------
    m1, sd1, n1 : float or array_like
        Mean, standard deviation and size of group 1.
    m2, sd2, n2 : float or array_like
        The same for group 2.

    Returns
    -------
    yi : ndarray
        ``J * (m1 - m2) / s_pooled``.
    vi : ndarray
        ``1/n1 + 1/n2 + yi**2 / (2 (n1 + n2))``.

    Notes
    -----
    With :math:`m = n_1 + n_2 - 2`, the exact correction is
    :math:`J = \\Gamma(m/2) / (\\sqrt{m/2}\\,\\Gamma((m-1)/2))` (Hedges 1981), and the
    large-sample variance is metafor's ``escalc(measure = "SMD")`` default
    (Hedges & Olkin 1985, eq. 5.15 with g in place of delta).

    References
    ----------
    Hedges, L. V. (1981). Distribution theory for Glass's estimator of effect size
    and related estimators. Journal of Educational Statistics, 6(2), 107-128.
    """
    m1, sd1, n1, m2, sd2, n2 = np.broadcast_arrays(*(
        _as_float(k, v) for k, v in
        (("m1", m1), ("sd1", sd1), ("n1", n1), ("m2", m2), ("sd2", sd2), ("n2", n2))
    ))
    if np.any(n1 < 2) or np.any(n2 < 2):
        raise ValueError("each group needs at least 2 observations for Hedges' g")
    if np.any(sd1 < 0) or np.any(sd2 < 0):
        raise ValueError("standard deviations must be non-negative")
    m = n1 + n2 - 2
    s_pooled = np.sqrt(((n1 - 1) * sd1**2 + (n2 - 1) * sd2**2) / m)
    if np.any(s_pooled == 0):
        raise ValueError("the pooled standard deviation is zero: g is undefined")
    # log-gamma keeps J finite for large groups where gamma() overflows.
    j = np.exp(special.gammaln(m / 2) - np.log(np.sqrt(m / 2)) - special.gammaln((m - 1) / 2))
    yi = j * (m1 - m2) / s_pooled
    vi = 1 / n1 + 1 / n2 + yi**2 / (2 * (n1 + n2))
    return yi, vi


def log_odds_ratio(a, b, c, d, add: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Log odds ratio of a 2x2 table and its Woolf variance.

    Parameters
    ----------
    a, b : float or array_like
        Row 1: events and non-events.
    c, d : float or array_like
        Row 2: events and non-events.
    add : float, default 0.5
        Added to every cell of a table that has a zero cell (metafor's default
        ``add = 1/2, to = "only0"``), so the log odds ratio is finite.

    Returns
    -------
    yi : ndarray
        ``log(a d / (b c))``.
    vi : ndarray
        ``1/a + 1/b + 1/c + 1/d`` (Woolf 1955).

    References
    ----------
    Woolf, B. (1955). On estimating the relation between blood group and disease.
    Annals of Human Genetics, 19(4), 251-253.
    """
    a, b, c, d = np.broadcast_arrays(*(_as_float(k, v) for k, v in
                                       (("a", a), ("b", b), ("c", c), ("d", d))))
    cells = np.stack([a, b, c, d])
    if np.any(cells < 0):
        raise ValueError("cell counts must be non-negative")
    cells = np.where(np.any(cells == 0, axis=0), cells + add, cells)
    a, b, c, d = cells
    return np.log(a * d / (b * c)), 1 / a + 1 / b + 1 / c + 1 / d


def from_symmetric_ci(estimate, ci_low, ci_high, level: float,
                      log: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Recover ``(yi, vi)`` from an estimate and a normal CI symmetric on the pooled scale.

    Parameters
    ----------
    estimate, ci_low, ci_high : float or array_like
        Point estimate and confidence limits as reported.
    level : float
        Confidence level of the interval.
    log : bool, default False
        The interval is symmetric on the log scale (odds ratios): take logs first.

    Returns
    -------
    yi : ndarray
        The estimate (its log when ``log``).
    vi : ndarray
        ``((ci_high - ci_low) / (2 z_{(1+level)/2}))**2``.
    """
    est, lo, hi = np.broadcast_arrays(_as_float("estimate", estimate),
                                      _as_float("ci_low", ci_low), _as_float("ci_high", ci_high))
    if log:
        if np.any(est <= 0) or np.any(lo <= 0) or np.any(hi <= 0):
            raise ValueError("ratio estimates and their limits must be positive to take logs")
        est, lo, hi = np.log(est), np.log(lo), np.log(hi)
    if np.any(hi < lo):
        raise ValueError("ci_high is below ci_low")
    se = (hi - lo) / (2 * z_critical(level))
    return est, se**2
