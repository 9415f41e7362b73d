"""Which text a spreadsheet would run as a formula, and how it is made inert.

One rule for both ends: intake flags such cells in a drop (``native``), and every CSV the
platform writes prefixes them with ``'`` (``pipeline.to_csv_bytes``), so a cell that passed
intake as data is never escaped on the way out, and one that is escaped was flagged.
"""

from __future__ import annotations

import re

# OWASP "CSV injection": cells beginning with these are formulas in Excel and LibreOffice
# (a tab or carriage return first hides one from the eye).
TRIGGERS = "=+-@\t\r"
# A signed number (-3, +4,5) is data, not a formula.
NUMBER = re.compile(r"^[+-]?\d+(?:[.,]\d+)?$")


def looks_like_formula(text: str) -> bool:
    """True for text a spreadsheet would evaluate: it starts with ``=``, ``+``, ``-``, ``@``,
    a tab or a carriage return, is more than that one character, and is not a signed number.

    Examples
    --------
    >>> [looks_like_formula(t) for t in ("=1+1", "@SUM(A1)", "-2+3", "\\t=1", "hello")]
    [True, True, True, True, False]
    >>> [looks_like_formula(t) for t in ("-3", "+4,5", "-", "")]
    [False, False, False, False]
    """
    return len(text) > 1 and text[0] in TRIGGERS and not NUMBER.match(text)


def escape_formula(value):
    """``value`` with a leading ``'`` when it is formula-like text; anything else unchanged.

    Examples
    --------
    >>> escape_formula("=HYPERLINK(\\"x\\")"), escape_formula("-0.5"), escape_formula(3)
    ('\\'=HYPERLINK("x")', '-0.5', 3)
    """
    return "'" + value if isinstance(value, str) and looks_like_formula(value) else value
