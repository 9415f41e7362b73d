"""Internal consistency: Cronbach's alpha with Feldt's confidence interval."""

from __future__ import annotations

import numpy as np
from scipy import stats

from lacrima.stats import Estimate, check_level, not_estimable

MIN_N = 3  # Feldt's F needs n - 1 >= 2 denominator-side cases to be informative


def cronbach_alpha(items, level: float = 0.95) -> Estimate:
    """Cronbach's alpha of k items with Feldt's F-based interval.

    Parameters
    ----------
    items : 2-d array-like of float, shape (n, k)
        Item responses; rows with any missing item are dropped (complete cases).
    level : float
        Confidence level.

    Returns
    -------
    Estimate
        ``method="cronbach_alpha_feldt"``; ``estimate`` alpha; ``ci_low``/``ci_high``;
        ``n`` complete cases. ``statistic``, ``df`` and ``p_value`` are blank: Feldt's
        F has two df, which one column cannot carry, and H0: alpha = 0 is not of interest.

    Notes
    -----
    ``alpha = k/(k-1) (1 - sum_j s_j^2 / s_X^2)`` with s_X^2 the variance of the
    item sum (Cronbach 1951). Feldt: ``(1 - alpha_pop) / (1 - alpha)`` follows
    ``F(n-1, (n-1)(k-1))``, so
    ``ci = [1 - (1-alpha) F_{1-a/2}, 1 - (1-alpha) F_{a/2}]``, ``a = 1 - level``
    (Feldt, Woodruff & Salih 1987, eq. 2; R ``psych::alpha.ci``). Alpha equals the
    consistency intraclass correlation ``(MS_rows - MS_error) / MS_rows`` of the
    subjects x items two-way ANOVA, and ``1/(1-alpha) = MS_rows / MS_error`` is
    Feldt's F.

    References
    ----------
    Cronbach, L. J. (1951). Coefficient alpha and the internal structure of tests.
    Psychometrika, 16, 297-334.
    Feldt, L. S., Woodruff, D. J., & Salih, F. A. (1987). Statistical inference for
    coefficient alpha. Applied Psychological Measurement, 11(1), 93-103.

    Examples
    --------
    >>> est = cronbach_alpha([[1, 2, 2], [2, 2, 3], [3, 4, 3], [4, 4, 5], [5, 5, 4]])
    >>> round(est.estimate, 4)
    0.9286
    """
    level = check_level(level)
    arr = np.asarray(items, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"items must be a 2-d array (cases x items), got shape {arr.shape}")
    k = arr.shape[1]
    if k < 2:
        raise ValueError(f"alpha needs at least 2 items, got {k}")
    arr = arr[~np.isnan(arr).any(axis=1)]
    n = arr.shape[0]
    method = "cronbach_alpha_feldt"
    if n < MIN_N:
        return not_estimable(method, n, f"n = {n}, fewer than {MIN_N} complete cases", level)
    total_var = arr.sum(axis=1).var(ddof=1)
    if total_var == 0:
        return not_estimable(method, n, "the item sum has zero variance", level)
    alpha = float(k / (k - 1) * (1 - arr.var(axis=0, ddof=1).sum() / total_var))
    df1, df2 = n - 1, (n - 1) * (k - 1)
    a = 1 - level
    lo = 1 - (1 - alpha) * stats.f.ppf(1 - a / 2, df1, df2)
    hi = 1 - (1 - alpha) * stats.f.ppf(a / 2, df1, df2)
    return Estimate(method, n, alpha, ci_low=float(lo), ci_high=float(hi), level=level)
