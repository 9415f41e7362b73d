"""Disclosure control of shareable outputs (protocol section 8): counts 1-4 never shown.

A count from 1 to ``MIN_CELL - 1`` shows as ``<5`` (primary suppression); within a group
whose total is shown elsewhere, one more cell shows as ``(s)`` when a single hidden count
could be worked out from the total (complementary suppression). The report, the site pages
and the shareable CSVs (``participant_flow.csv``, ``descriptives.csv``) all hide counts
through these functions, so a count hidden in one is hidden in all.
"""

from __future__ import annotations

import pandas as pd

from lacrima.apa import fmt, is_missing
from lacrima.privacy import MIN_CELL, suppress_small

SECONDARY_MARK = "(s)"


def hidden_cells(counts: list[float]) -> list[bool]:
    """Which counts of one group to hide so that no count from 1 to 4 can be worked out.

    Parameters
    ----------
    counts : list of float
        The counts of one group whose total is shown elsewhere (exclusion reasons of a
        site, whose sum is received minus analysed; gender levels, which sum to N).

    Returns
    -------
    list of bool
        True for primary cells (1 to ``MIN_CELL - 1``) and, when exactly one cell is
        primary, for the smallest other cell too: a single hidden cell is the total
        minus the shown ones (complementary suppression, Hundepool et al. 2012,
        *Statistical Disclosure Control*, section 7.2).

    Examples
    --------
    >>> hidden_cells([0, 0, 0, 1, 0])
    [True, False, False, True, False]
    >>> hidden_cells([12, 3, 2])
    [False, True, True]
    """
    hide = [not is_missing(c) and 0 < c < MIN_CELL for c in counts]
    if sum(hide) == 1 and len(counts) > 1:
        rest = [i for i, h in enumerate(hide) if not h and not is_missing(counts[i])]
        if rest:
            hide[min(rest, key=lambda i: counts[i])] = True
    return hide


def group_cells(counts: list[float], show) -> list[str]:
    """Display cells of one group: ``show(i)`` for shown cells, ``<5`` for primary and
    ``(s)`` for complementary suppression."""
    return [("" if is_missing(c) else f"<{MIN_CELL}" if 0 < c < MIN_CELL else SECONDARY_MARK)
            if hidden else show(i)
            for i, (c, hidden) in enumerate(zip(counts, hidden_cells(counts)))]


def suppressed_group(counts: list[float]) -> list[str]:
    """Counts of one group as shareable text: ``<5`` / ``(s)`` where hidden, else the count."""
    return group_cells(counts, lambda i: "" if is_missing(counts[i]) else str(int(counts[i])))


def shareable_flow(flow: pd.DataFrame) -> pd.DataFrame:
    """``participant_flow.csv`` as it may be shared: the report's suppression, in tidy form.

    Parameters
    ----------
    flow : pandas.DataFrame
        Tidy flow (``site, step, reason, label, n``) with exact counts; not changed.

    Returns
    -------
    pandas.DataFrame
        The same rows; ``n`` as text: counts 1-4 as ``<5`` and, within each site's exclusion
        reasons (whose sum is received minus analysed), one more ``(s)`` where a single hidden
        count could be worked out, exactly as ``tables.flow_frame`` shows them.
    """
    out = flow.copy()
    n = [fmt_n(v) for v in out["n"]]
    for _, idx in out.groupby("site", sort=False).groups.items():
        excluded = [i for i in idx if out.loc[i, "step"] == "excluded"]
        cells = suppressed_group([float(out.loc[i, "n"]) for i in excluded])
        for i, text in zip(excluded, cells):
            n[out.index.get_loc(i)] = text
    out["n"] = pd.Series(n, index=out.index, dtype="str")
    return out


def shareable_descriptives(descr: pd.DataFrame) -> pd.DataFrame:
    """``descriptives.csv`` as it may be shared: counts 1-4 hidden as the site pages hide them.

    Numeric rows: ``n`` 1-4 as ``<5``. Category rows: the levels of a variable (per site and
    subset) suppressed as one group (``<5``, complementary ``(s)``) and the percent of a
    hidden count left blank, since count = percent x N.
    """
    out = descr.copy()
    n = [fmt_n(v) for v in out["n"]]
    count = ["" if is_missing(v) else str(int(v)) for v in out["count"]]
    percent = out["percent"].astype(object).tolist()
    cat = out["count"].notna().to_numpy()
    keys = (out["site"].astype(str) + "|" + out["variable"].astype(str) + "|"
            + out["subset"].astype(str)).to_numpy()
    positions = [i for i in range(len(out)) if cat[i]]
    groups: dict[str, list[int]] = {}
    for i in positions:
        groups.setdefault(keys[i], []).append(i)
    for pos in groups.values():
        cells = suppressed_group([float(out["count"].iloc[i]) for i in pos])
        for i, text in zip(pos, cells):
            count[i] = text
            if not text.isdigit():
                percent[i] = None
    out["n"] = pd.Series(n, index=out.index, dtype="str")
    out["count"] = pd.Series(count, index=out.index, dtype="str")
    out["percent"] = pd.Series(percent, index=out.index, dtype=float)
    return out


def fmt_n(n) -> str:
    """A count for display, suppressed below the small-cell limit (protocol section 8).

    Examples
    --------
    >>> fmt_n(0), fmt_n(4), fmt_n(5), fmt_n(None)
    ('0', '<5', '5', '')
    """
    return suppress_small(n) if not is_missing(n) else ""

def count_cell(count: float, percent: float) -> str:
    """``n (%)``; below the small-cell limit the count shows as ``<5`` and the percent is hidden.

    Examples
    --------
    >>> count_cell(12, 40.0), count_cell(3, 10.0)
    ('12 (40.0%)', '<5')
    """
    if is_missing(count):
        return ""
    if 0 < count < MIN_CELL:
        return f"<{MIN_CELL}"
    return f"{int(count)} ({fmt(percent, 1)}%)"

