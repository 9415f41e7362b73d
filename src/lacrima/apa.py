"""Numbers as APA style (7th edition) writes them: decimals (section 6.36), leading zeros (6.44).

Blank for missing, a typographic minus, no ``-0.00``; quantities bounded by 1 (r, alpha, p)
without the zero before the decimal point.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

MINUS = "\u2212"


def is_missing(x) -> bool:
    """True for None, NaN, infinities and anything that is not a number."""
    if x is None:
        return True
    if isinstance(x, (float, int)) and not isinstance(x, bool):
        return not math.isfinite(x)          # fast path: numpy floats are floats too
    try:
        return bool(pd.isna(x)) or not np.isfinite(float(x))
    except (TypeError, ValueError):
        return True


def fmt(x, digits: int = 2, leading_zero: bool = True) -> str:
    """APA-style number: fixed decimals, typographic minus, blank for missing.

    Parameters
    ----------
    x : float or None
    digits : int
        Decimal places.
    leading_zero : bool
        False for quantities that cannot exceed 1 in absolute value (r, alpha, p), which
        APA writes without the zero before the decimal point (.35, not 0.35).

    Returns
    -------
    str

    Examples
    --------
    >>> fmt(0.3456), fmt(-0.3456, leading_zero=False), fmt(float("nan"))
    ('0.35', '−.35', '')
    """
    if is_missing(x):
        return ""
    text = f"{float(x):.{digits}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]          # no "-0.00"
    if not leading_zero and text.lstrip("-").startswith("0."):
        text = text.replace("0.", ".", 1)
    return text.replace("-", MINUS)


def fmt_p(p) -> str:
    """APA p value: three decimals without leading zero, ``< .001`` below.

    Examples
    --------
    >>> fmt_p(0.0004), fmt_p(0.04321), fmt_p(1.0)
    ('< .001', '.043', '1.000')
    """
    if is_missing(p):
        return ""
    return "< .001" if p < 0.001 else fmt(p, 3, leading_zero=False)


def p_text(p) -> str:
    """``p = .043`` or ``p < .001`` (APA), blank for missing.

    Examples
    --------
    >>> p_text(0.0004), p_text(0.2), p_text(None)
    ('p < .001', 'p = .200', '')
    """
    text = fmt_p(p)
    return "" if not text else (f"p {text}" if text.startswith("<") else f"p = {text}")


def fmt_ci(low, high, digits: int = 2, leading_zero: bool = True) -> str:
    """``[low, high]`` in APA style; blank when either end is missing.

    Examples
    --------
    >>> fmt_ci(-0.11, 0.31, leading_zero=False), fmt_ci(0.1, float("nan"))
    ('[−.11, .31]', '')
    """
    if is_missing(low) or is_missing(high):
        return ""
    return f"[{fmt(low, digits, leading_zero)}, {fmt(high, digits, leading_zero)}]"


def fmt_df(df) -> str:
    """Degrees of freedom: whole numbers without decimals, Welch-type df with one.

    Examples
    --------
    >>> fmt_df(28.0), fmt_df(27.46)
    ('28', '27.5')
    """
    if is_missing(df):
        return ""
    return str(int(round(df))) if abs(df - round(df)) < 1e-9 else fmt(df, 1)

