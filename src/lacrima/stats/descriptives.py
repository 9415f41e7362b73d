"""Descriptive summaries: numeric (n, mean, SD, range, % missing) and categorical (counts, %)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from lacrima.stats import as_float_array

# Tidy descriptives table. Numeric rows leave level/count/percent blank; categorical
# rows have one row per level with count and percent of the non-missing cases and
# leave mean/sd/min/max blank. subset names the rows described ("all" or "criers").
DESCRIPTIVE_COLUMNS: tuple[str, ...] = (
    "site", "variable", "subset", "level", "n", "mean", "sd", "min", "max", "pct_missing",
    "count", "percent",
)


@dataclass(frozen=True)
class Description:
    """One descriptive row (see ``DESCRIPTIVE_COLUMNS``; site and subset are added by the caller).

    ``n`` is the number of non-missing values, ``pct_missing`` 100 x missing / total.
    """

    variable: str
    n: int
    pct_missing: float
    level: str = ""
    mean: float = np.nan
    sd: float = np.nan
    min: float = np.nan
    max: float = np.nan
    count: float = np.nan
    percent: float = np.nan

    def to_frame(self) -> pd.DataFrame:
        row = asdict(self)
        return pd.DataFrame([row], columns=[c for c in DESCRIPTIVE_COLUMNS if c in row])


def describe_numeric(values, variable: str) -> Description:
    """n, mean, SD (n - 1 denominator), min, max and percent missing of one variable.

    Parameters
    ----------
    values : array-like of float
        NaN (or pd.NA in a Series) is missing.
    variable : str
        Name written in the row.

    Returns
    -------
    Description
        Mean, SD, min and max are NaN when there are no values (SD also when n = 1);
        ``pct_missing`` is NaN when ``values`` is empty.

    Examples
    --------
    >>> d = describe_numeric([1, 2, 3, float("nan")], "x")
    >>> d.n, d.mean, d.sd, d.pct_missing
    (3, 2.0, 1.0, 25.0)
    """
    arr = as_float_array(values, variable)
    present = arr[~np.isnan(arr)]
    total, n = arr.size, present.size
    pct = 100.0 * (total - n) / total if total else np.nan
    if n == 0:
        return Description(variable, 0, pct)
    sd = float(present.std(ddof=1)) if n > 1 else np.nan
    return Description(variable, n, pct, mean=float(present.mean()), sd=sd,
                       min=float(present.min()), max=float(present.max()))


def describe_categorical(values, levels, variable: str) -> tuple[Description, ...]:
    """Count and percent of each level among the non-missing values.

    Parameters
    ----------
    values : pandas.Series
        Categorical values; missing is ``pd.NA``/``NaN``. Values outside ``levels``
        are counted as present but get no row of their own.
    levels : sequence
        The levels to report, in order (a level with no cases gets count 0).
    variable : str
        Name written in the rows.

    Returns
    -------
    tuple of Description
        One per level: ``level`` as text (``True`` -> ``"true"``), ``n`` the
        non-missing total, ``count``, ``percent`` = 100 count / n, ``pct_missing``.
    """
    s = pd.Series(values)
    present = s.dropna()
    total, n = len(s), len(present)
    pct = 100.0 * (total - n) / total if total else np.nan
    out = []
    for lev in levels:
        count = int((present == lev).sum())
        label = str(lev).lower() if isinstance(lev, (bool, np.bool_)) else str(lev)
        out.append(Description(variable, n, pct, level=label, count=float(count),
                               percent=100.0 * count / n if n else np.nan))
    return tuple(out)
