"""Per-site statistics of the analysis plan (protocol section 6), as plain functions.

Every estimator takes plain arrays (``float``, ``NaN`` for missing) and returns a
frozen dataclass with a ``to_frame()``. None of them raises on degenerate data
(too few cases, no variance, one group only): they return an :class:`Estimate`
whose numbers are ``NaN`` and whose ``note`` says why, so a caller can always
write a row that explains itself. They do raise ``ValueError`` for arguments that
are wrong rather than unlucky (mismatched lengths, a level outside (0, 1)).

Intervals on a transformed scale (Fisher z for correlations, log for odds ratios,
identity for Hedges' g) are symmetric normal-theory intervals on that scale, so
the standard error can be recovered exactly from ``ci_low``/``ci_high`` and the
level; pooling relies on this.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

ESTIMATE_COLUMNS: tuple[str, ...] = (
    "method", "n", "estimate", "se", "ci_low", "ci_high", "statistic", "df", "p_value",
    "level", "note",
)


@dataclass(frozen=True)
class Estimate:
    """One estimate with its interval and test.

    Parameters
    ----------
    method : str
        Machine name of the estimator (``pearson``, ``welch``, ``hedges_g`` ...).
    n : int
        Number of cases actually used.
    estimate, se : float
        Point estimate and its standard error on the scale the interval is built
        on (Fisher z for correlations, log for odds ratios); ``NaN`` when the
        estimator has none.
    ci_low, ci_high : float
        Confidence interval at ``level``, on the scale of ``estimate``.
    statistic, df, p_value : float
        Test statistic, its degrees of freedom (``NaN`` for normal or exact tests)
        and the two-sided p value.
    level : float
        Confidence level of the interval.
    note : str
        Empty when the estimate exists; otherwise why it does not (for example
        ``"n = 3, fewer than 4 complete cases"``). Numbers are then ``NaN``.
    """

    method: str
    n: int
    estimate: float = np.nan
    se: float = np.nan
    ci_low: float = np.nan
    ci_high: float = np.nan
    statistic: float = np.nan
    df: float = np.nan
    p_value: float = np.nan
    level: float = 0.95
    note: str = ""

    @property
    def estimable(self) -> bool:
        """True when the estimate exists (``note`` is empty)."""
        return self.note == ""

    def to_frame(self) -> pd.DataFrame:
        """One row with the columns of ``ESTIMATE_COLUMNS``."""
        return pd.DataFrame([asdict(self)], columns=list(ESTIMATE_COLUMNS))


def not_estimable(method: str, n: int, note: str, level: float) -> Estimate:
    """An :class:`Estimate` with every number ``NaN`` and the reason in ``note``."""
    return Estimate(method=method, n=int(n), level=level, note=note)


def check_level(level: float) -> float:
    """Return ``level`` as float; ``ValueError`` unless 0 < level < 1."""
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1 (e.g. 0.95), got {level}")
    return level


def as_float_array(values, name: str) -> np.ndarray:
    """A 1-d float array from a list, array or pandas Series (pd.NA becomes NaN)."""
    if isinstance(values, (pd.Series, pd.Index)):
        arr = values.to_numpy(dtype=float, na_value=np.nan)
    else:
        arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


from lacrima.stats.adjust import adjust_pvalues  # noqa: E402
from lacrima.stats.correlation import partial_correlation, pearson, spearman  # noqa: E402
from lacrima.stats.descriptives import (  # noqa: E402
    DESCRIPTIVE_COLUMNS, describe_categorical, describe_numeric,
)
from lacrima.stats.groups import (  # noqa: E402
    TwoByTwo, chi_square_2x2, fisher_exact_2x2, hedges_g, hedges_g_from_stats,
    mann_whitney, odds_ratio_woolf, welch_t,
)
from lacrima.stats.regression import RegressionResult, ols_hc3  # noqa: E402
from lacrima.stats.reliability import cronbach_alpha  # noqa: E402

__all__ = [
    "DESCRIPTIVE_COLUMNS", "ESTIMATE_COLUMNS", "Estimate", "RegressionResult", "TwoByTwo",
    "adjust_pvalues", "chi_square_2x2", "cronbach_alpha", "describe_categorical",
    "describe_numeric", "fisher_exact_2x2", "hedges_g", "hedges_g_from_stats", "mann_whitney",
    "odds_ratio_woolf", "ols_hc3", "partial_correlation", "pearson", "spearman", "welch_t",
]
