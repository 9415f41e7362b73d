"""Forest plots (matplotlib, Agg) as inline SVG, for self-contained report pages.

One figure per effect: each site's estimate and confidence interval, the pooled
random-effects diamond with its prediction interval, original studies marked. Figures are
built on :class:`matplotlib.figure.Figure` directly, never through pyplot, so rendering
keeps no global state and is safe from the flow's worker threads and processes
(``report.forest_plots``, drawn by their own tasks).
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Mapping

import numpy as np
import pandas as pd

# One colour per site, used everywhere (Okabe-Ito: colour-blind safe). Each site also gets
# its own marker so that sites stay apart when printed in greyscale.
_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F7F00", "#000000")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_POOLED_COLOR = "#333333"
_WIDTH_IN = 6.4
# Rows per inch, and the cap: at 125 sites a plot stays one screen/page tall; beyond
# _MAX_LABELLED sites the per-site labels are left to the table beside the plot.
_ROW_IN = 0.32
_MAX_HEIGHT_IN = 11.0
_MAX_LABELLED = 40

ORIGINAL_MARK = "\u2020"   # dagger after an original study's label


def site_style(sites: list[str]) -> dict[str, tuple[str, str]]:
    """Colour and marker per site code, each fixed by the site's code alone.

    Parameters
    ----------
    sites : list of str
        Site codes; every plot of a run uses the same mapping so a site keeps its colour
        across pages.

    Returns
    -------
    dict
        ``code -> (hex colour, matplotlib marker)``.

    Notes
    -----
    The first 8 bytes of SHA-256(code), as an integer h, pick colour ``h mod 8`` and marker
    ``(h div 8) mod 8``: a site's style never depends on which other sites exist, so a site
    that joins (or leaves) recolours no one, in this run or the next. Two sites may share a
    colour (1 in 8) or, rarely, colour and marker (1 in 64); the plots name every site on
    its row, so colour is never the only way to tell sites apart. The study's three sites
    (us, it, il) differ in both.
    """
    out = {}
    for s in sites:
        h = int.from_bytes(hashlib.sha256(str(s).encode()).digest()[:8], "big")
        out[s] = (_PALETTE[h % len(_PALETTE)], _MARKERS[(h // len(_PALETTE)) % len(_MARKERS)])
    return out


def _finite(*values) -> bool:
    return all(v is not None and pd.notna(v) and np.isfinite(float(v)) for v in values)


def forest_svg(site_rows: pd.DataFrame, pooled: pd.Series | Mapping | None, title: str,
               xlabel: str, styles: dict[str, tuple[str, str]],
               originals: set[str] | frozenset[str] = frozenset(), null: float = 0.0,
               log_scale: bool = False, salt: str = "") -> str:
    """A forest plot as an SVG string (text kept as text, no external references).

    Parameters
    ----------
    site_rows : DataFrame
        One row per site: ``site``, ``estimate``, ``ci_low``, ``ci_high``, ``n``.
    pooled : Series or mapping or None
        The pooled random-effects row (``estimate``, ``ci_low``, ``ci_high``, ``pi_low``,
        ``pi_high``); ``None`` draws the sites only.
    title, xlabel : str
        Plot title and x-axis label (the effect's scale, e.g. ``"Pearson r"``).
    styles : dict
        ``site_style`` of the run.
    originals : set of str
        Codes of the original studies, marked with a dagger.
    null : float
        Value of no effect, drawn as a dotted vertical line (0, or 1 for odds ratios).
    log_scale : bool
        Log x axis (odds ratios).
    salt : str
        Makes the SVG's internal ids unique when several plots share one HTML page.

    Returns
    -------
    str
        ``<svg ...>...</svg>`` without the XML prologue, ready to inline.

    Notes
    -----
    Rows are drawn top-down in the order given; the pooled diamond spans the confidence
    interval of the random-effects estimate and the dashed line its prediction interval
    (Riley, Higgins & Deeks 2011, BMJ 342:d549). Height grows with the number of sites up
    to a cap so that a 125-site run still renders in bounded time and size.
    """
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.markers import MarkerStyle

    rows = site_rows.reset_index(drop=True)
    k = len(rows)
    has_pooled = pooled is not None and _finite(pooled.get("estimate"), pooled.get("ci_low"),
                                                  pooled.get("ci_high"))
    n_rows = k + (2 if has_pooled else 0)
    height = min(_MAX_HEIGHT_IN, 1.3 + _ROW_IN * n_rows)
    labelled = k <= _MAX_LABELLED
    fig = Figure(figsize=(_WIDTH_IN, height))
    ax = fig.add_subplot()
    top = k + (1.5 if has_pooled else 0)
    ticks, labels = [], []
    estimates = pd.to_numeric(rows["estimate"], errors="coerce").to_numpy(dtype=float)
    lows = pd.to_numeric(rows["ci_low"], errors="coerce").to_numpy(dtype=float)
    highs = pd.to_numeric(rows["ci_high"], errors="coerce").to_numpy(dtype=float)
    marker_size = 36 if labelled else 9          # area in points squared, as scatter's s
    codes = rows["site"].astype(str).tolist()
    ys = top - np.arange(k, dtype=float)
    colours = [styles.get(c, ("#555555", "o"))[0] for c in codes]
    has_ci = np.isfinite(estimates) & np.isfinite(lows) & np.isfinite(highs)
    # One artist per colour (or marker group), not one per site: a Line2D with NaN breaks is
    # written to the SVG as one <path> and its markers as one <defs> entry plus <use>s, where
    # a collection with per-item colours writes (and styles) every item separately.
    if has_ci.any():
        by_colour: dict[str, list[int]] = {}
        for i in np.flatnonzero(has_ci):
            by_colour.setdefault(colours[i], []).append(i)
        for colour, idx in by_colour.items():
            # x: lo, hi, NaN per site; butt caps, as hlines (a LineCollection) draws them
            seg_x = np.column_stack([lows[idx], highs[idx], np.full(len(idx), np.nan)]).ravel()
            seg_y = np.repeat(ys[idx], 3)
            ax.plot(seg_x, seg_y, color=colour, lw=1.4, solid_capstyle="butt")
    groups: dict[tuple[str, str, bool], list[int]] = {}
    for i, code in enumerate(codes):
        if np.isfinite(estimates[i]):
            marker = styles.get(code, ("#555555", "o"))[1]
            groups.setdefault((colours[i], marker, code in originals), []).append(i)
    for (colour, marker, original), idx in groups.items():
        # Originals are filled, replications hollow: readable without colour. Marker size is
        # the scatter size's square root (points); round joins, as a scatter's edges have.
        ax.plot(estimates[idx], ys[idx], ls="none",
                marker=MarkerStyle(marker, joinstyle="round"), ms=marker_size ** 0.5,
                mec=colour, mfc=colour if original else "white", mew=1.4, zorder=3)
    if labelled:
        for i, code in enumerate(codes):
            n = rows["n"].iloc[i]
            n_txt = str(int(n)) if pd.notna(n) else "?"
            ticks.append(ys[i])
            labels.append(f"{code}{ORIGINAL_MARK if code in originals else ''} (n = {n_txt})")
    if has_pooled:
        y = 0.5
        est, lo, hi = (float(pooled["estimate"]), float(pooled["ci_low"]), float(pooled["ci_high"]))
        if _finite(pooled.get("pi_low"), pooled.get("pi_high")):
            # Just under the diamond, with end ticks: visible even when no wider than the CI.
            pi = [float(pooled["pi_low"]), float(pooled["pi_high"])]
            ax.plot(pi, [y - 0.42, y - 0.42], color=_POOLED_COLOR, lw=1.1, ls=(0, (4, 2)),
                    label="95% prediction interval")
            ax.vlines(pi, y - 0.52, y - 0.32, color=_POOLED_COLOR, lw=1.1)
        ax.fill([lo, est, hi, est], [y, y + 0.3, y, y - 0.3], color=_POOLED_COLOR,
                label="pooled (random effects)")
        ticks.append(y)
        labels.append("Pooled RE")
    ax.axvline(null, color="#888888", lw=0.8, ls=":")
    if log_scale:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        # Plain numbers (0.5, 1, 2, 10), not powers of ten: readers of odds ratios expect them.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(ticks, labels, fontsize=8 if labelled else 7)
    if not labelled:
        ax.set_ylabel(f"Sites (k = {k}; labels in the table)")
    else:
        ax.set_ylabel("Site")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9.5)
    ax.set_ylim(-0.2 if has_pooled else 0.3, top + 0.7)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(axis="x", labelsize=8)
    if originals & set(rows["site"].astype(str)):
        ax.text(0.99, 0.01, f"{ORIGINAL_MARK} original study (filled marker)",
                transform=fig.transFigure, ha="right", va="bottom", fontsize=7, color="#444444")
    fig.subplots_adjust(left=0.26 if labelled else 0.12, right=0.97,
                        bottom=min(0.45, 0.62 / height), top=1 - min(0.3, 0.42 / height))
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt or title}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return _inline(buf.getvalue())


def _inline(svg: str) -> str:
    """The SVG element alone, for inlining in HTML: no prologue, no metadata, no namespaces.

    The HTML parser puts an inline ``<svg>`` in the SVG namespace itself, so the namespace
    URLs (and matplotlib's Dublin Core metadata) are dropped: the page then names no
    http(s) address at all, which the report tests check.
    """
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    return re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", svg, count=3)
