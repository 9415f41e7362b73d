"""Forest plots (matplotlib, Agg) as inline SVG, for self-contained report pages.

One figure per effect: each site's estimate and confidence interval, the pooled
random-effects diamond with its prediction interval, original studies marked. Figures are
built on :class:`matplotlib.figure.Figure` directly, never through pyplot, so rendering
keeps no global state and is safe from the flow's worker threads and processes
(``report.forest_plots``, drawn by their own tasks).
"""

from __future__ import annotations

import functools
import hashlib
import html
import io
import re
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from lacrima.apa import fmt, fmt_ci

# One colour per site, used everywhere (Okabe-Ito: colour-blind safe). Each site also gets
# its own marker so that sites stay apart when printed in greyscale.
_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F7F00", "#000000")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_POOLED_COLOR = "#333333"
# Layout in inches; text 12 pt: the report's 16 px body text when the SVG is shown at its
# own size. The cap: at 125 sites a plot stays one screen/page tall; beyond _MAX_LABELLED
# sites the per-site labels are left to the table beside the plot.
_FONT_PT = 12
_ROW_IN = 0.3
_PLOT_IN = 2.7
_GAP_IN = 0.2
_PAD_IN = 0.08
_AXIS_IN = 0.62
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


class ForestCanvas:
    """One matplotlib Figure and Axes, reused for several forest plots on one kind of x axis.

    Making an Axes and its tick artists is about a third of a plot's cost; the plots of one
    family share their axis, so ``report.forest_plots`` draws them on one canvas, cleared
    between plots. A canvas is used by one thread at a time (each task draws its own
    families on its own canvases).

    Parameters
    ----------
    log_scale : bool
        A log x axis (odds ratios), with plain-number ticks.
    """

    def __init__(self, log_scale: bool = False):
        from matplotlib.figure import Figure

        self.log_scale = log_scale
        self.fig = Figure()
        self.fig.patch.set_visible(False)      # transparent: the page's own background shows
        self.ax = ax = self.fig.add_axes((0, 0, 1, 1))
        if log_scale:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            # Plain numbers (0.5, 1, 2, 10), not powers of ten: readers of odds ratios expect them.
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_visible(False)
        ax.spines[["top", "right", "left"]].set_visible(False)
        ax.tick_params(axis="x", labelsize=_FONT_PT, length=4)

    def clear(self, size_in: tuple[float, float], axes_rect: tuple[float, float, float, float]):
        """The figure and axes, emptied of the last plot's artists, at a new size; the axis
        (scale, ticks, formatters) is kept."""
        ax = self.ax
        for artist in [*ax.lines, *ax.patches, *ax.collections, *ax.texts]:
            artist.remove()
        self.fig.texts.clear()
        self.fig.set_size_inches(*size_in)
        ax.set_position(axes_rect)
        return self.fig, ax


@functools.lru_cache(maxsize=4096)
def _text_in(text: str, bold: bool = False) -> float:
    """Width of ``text`` in inches at ``_FONT_PT`` in matplotlib's default font (FreeType
    directly: a fraction of a millisecond, where laying out a Text artist costs more)."""
    from matplotlib.font_manager import FontProperties, findfont, get_font

    font = get_font(findfont(FontProperties(size=_FONT_PT, weight="bold" if bold else "normal")))
    font.set_size(_FONT_PT, 72)
    font.set_text(text, 0.0)
    return font.get_width_height()[0] / 64 / 72


def axis_limits(intervals: Iterable[tuple[float, float]], null: float = 0.0,
                log_scale: bool = False) -> tuple[float, float]:
    """One x range for several forest plots (a family's): every interval and the null inside.

    Parameters
    ----------
    intervals : iterable of (low, high)
        Every interval the plots draw (sites' CIs, pooled CIs, prediction intervals);
        missing ends are skipped.
    null : float
        The value of no effect, always inside the range.
    log_scale : bool
        Limits for a log axis (odds ratios): padded by a factor, not a difference.

    Returns
    -------
    (float, float)
        The limits, padded by 4% of the range on each side (on the log scale for a log axis).
    """
    ends = [null]
    for lo, hi in intervals:
        ends += [float(v) for v in (lo, hi) if _finite(v) and (not log_scale or float(v) > 0)]
    ends = np.log(ends) if log_scale else np.asarray(ends)
    lo, hi = float(ends.min()), float(ends.max())
    pad = 0.04 * (hi - lo) if hi > lo else 0.5
    lo, hi = lo - pad, hi + pad
    return (float(np.exp(lo)), float(np.exp(hi))) if log_scale else (lo, hi)


def forest_svg(site_rows: pd.DataFrame, pooled: pd.Series | Mapping | None, title: str,
               xlabel: str, styles: dict[str, tuple[str, str]],
               originals: set[str] | frozenset[str] = frozenset(), null: float = 0.0,
               log_scale: bool = False, salt: str = "", *,
               xlim: tuple[float, float] | None = None, metric: str = "Estimate",
               bounded: bool = False, show_title: bool = False,
               canvas: ForestCanvas | None = None) -> str:
    """A forest plot as an SVG string (text kept as text, no external references).

    Parameters
    ----------
    site_rows : DataFrame
        One row per site: ``site``, ``estimate``, ``ci_low``, ``ci_high``, ``n`` and,
        for a pooled effect, ``weight`` (percent of the random-effects weight).
    pooled : Series or mapping or None
        The pooled row: ``estimate``, ``ci_low`` and ``ci_high`` (the interval the diamond
        spans: the one the report tells the reader to use), ``pi_low``, ``pi_high``, and
        optionally ``label`` (the row's name, default ``"Pooled (RE)"``) and ``note`` (a
        footnote, e.g. why the diamond is not the random-effects CI). ``None`` draws the
        sites only.
    title : str
        The figure's name: the SVG's ``<title>``; drawn above the plot with ``show_title``.
    xlabel : str
        The x-axis label (the effect's scale, e.g. ``"Pearson r"``).
    styles : dict
        ``site_style`` of the run.
    originals : set of str
        Codes of the original studies, marked with a dagger and a filled marker.
    null : float
        Value of no effect, drawn as a dotted vertical line (0, or 1 for odds ratios).
    log_scale : bool
        Log x axis (odds ratios).
    salt : str
        Makes the SVG's internal ids unique when several plots share one HTML page.
    xlim : (float, float), optional
        The x range (:func:`axis_limits` of a family's plots: one axis for all of them);
        default: this plot's own intervals.
    metric : str
        Short name of the estimate for the column header (``"r"``, ``"g"``, ``"OR"``).
    bounded : bool
        The estimate cannot exceed 1 (r): written without the leading zero (APA).
    show_title : bool
        Draw ``title`` above the plot (a plot without a heading beside it).
    canvas : ForestCanvas, optional
        Draw on this canvas (of the same ``log_scale``), cleared first: the plots of one
        family drawn on one canvas cost a third less. Default: a canvas of its own.

    Returns
    -------
    str
        ``<svg ...>...</svg>`` without the XML prologue, ready to inline at its own size.

    Notes
    -----
    The layout of a paper's forest plot: the sites' names (and n) on the left, each
    site's estimate and CI drawn and written out on the right with its weight; below,
    the pooled estimate as a diamond and the prediction interval as a line on its own
    row (Riley, Higgins & Deeks 2011, BMJ 342:d549). Text is 12 pt, drawn at its own
    size (1 pt = 4/3 CSS px): 16 px, the report's body text. Height grows with the number
    of sites up to a cap; beyond ``_MAX_LABELLED`` sites their rows are left unlabelled
    (the table beside the plot names them).
    """
    import matplotlib
    from matplotlib.markers import MarkerStyle
    from matplotlib.transforms import blended_transform_factory

    if canvas is None:
        canvas = ForestCanvas(log_scale)
    elif canvas.log_scale != log_scale:
        raise ValueError(f"a canvas with log_scale={canvas.log_scale} cannot draw a plot "
                         f"with log_scale={log_scale}")

    rows = site_rows.reset_index(drop=True)
    k = len(rows)
    has_pooled = pooled is not None and _finite(pooled.get("estimate"), pooled.get("ci_low"),
                                                  pooled.get("ci_high"))
    labelled = k <= _MAX_LABELLED
    estimates = pd.to_numeric(rows["estimate"], errors="coerce").to_numpy(dtype=float)
    lows = pd.to_numeric(rows["ci_low"], errors="coerce").to_numpy(dtype=float)
    highs = pd.to_numeric(rows["ci_high"], errors="coerce").to_numpy(dtype=float)
    weights = (pd.to_numeric(rows["weight"], errors="coerce").to_numpy(dtype=float)
               if "weight" in rows else np.full(k, np.nan))
    show_weight = has_pooled and np.isfinite(weights).any()
    codes = rows["site"].astype(str).tolist()

    def number(v) -> str:
        return fmt(v, leading_zero=not bounded)

    def est_ci(est, lo, hi) -> str:
        return f"{number(est)} {fmt_ci(lo, hi, leading_zero=not bounded)}".strip()

    # Text of every row: (label, estimate [CI], weight)
    site_text = []
    if labelled:
        for i, code in enumerate(codes):
            n = rows["n"].iloc[i]
            n_txt = str(int(n)) if pd.notna(n) else "?"
            mark = ORIGINAL_MARK if code in originals else ""
            site_text.append((f"{code}{mark} ({n_txt})", est_ci(estimates[i], lows[i], highs[i]),
                              f"{weights[i]:.1f}%" if np.isfinite(weights[i]) else ""))
    pooled_text = []
    notes = []
    if has_pooled:
        est, lo, hi = (float(pooled["estimate"]), float(pooled["ci_low"]), float(pooled["ci_high"]))
        label = str(pooled.get("label") or "Pooled (RE)")
        note = pooled.get("note")
        if isinstance(note, str) and note:
            label += "*"
            notes.append(f"* {note}")
        pooled_text.append((label, est_ci(est, lo, hi), "100%" if show_weight else ""))
        has_pi = _finite(pooled.get("pi_low"), pooled.get("pi_high"))
        pi_txt = (fmt_ci(pooled["pi_low"], pooled["pi_high"], leading_zero=not bounded)
                  if has_pi else "none (k < 3)")
        pooled_text.append(("95% PI", pi_txt, ""))
    if originals & set(codes):
        notes.append(f"{ORIGINAL_MARK} original study (filled marker); (n) analysed")
    elif labelled:
        notes.append("(n) analysed")
    header = ("Site (n)" if labelled else f"Sites (k = {k}; names in the table)",
              f"{metric} [95% CI]", "Weight" if show_weight else "")
    texts = [header, *site_text, *pooled_text]

    # Widths (inches) from the widest text of each column, measured with the font itself.
    def width(column: int) -> float:
        return max((_text_in(t[column], bold=t is header) for t in texts), default=0.0)

    left_w = max(width(0), 0.6) + _GAP_IN
    est_w = width(1) + _GAP_IN
    weight_w = width(2) + _GAP_IN if show_weight else 0.0
    fig_w = max(_PAD_IN + left_w + _PLOT_IN + est_w + weight_w,
                max((_text_in(n) for n in notes), default=0.0)) + _PAD_IN
    # Heights (inches), top-down: title, header row, site rows, pooled rows, x axis, notes.
    title_h = _ROW_IN * 1.2 if show_title else 0.0
    site_h = _ROW_IN if labelled else min(_ROW_IN, max(0.05, (_MAX_HEIGHT_IN - 4) / max(k, 1)))
    rows_h = _ROW_IN + k * site_h + (_ROW_IN * 0.4 + 2 * _ROW_IN if has_pooled else 0.0)
    notes_h = len(notes) * _ROW_IN
    fig_h = _PAD_IN + title_h + rows_h + _AXIS_IN + notes_h + _PAD_IN
    plot_x0 = _PAD_IN + left_w
    fig, ax = canvas.clear((fig_w, fig_h), (plot_x0 / fig_w, (_PAD_IN + notes_h + _AXIS_IN) / fig_h,
                                            _PLOT_IN / fig_w, rows_h / fig_h))
    # y in inches below the top of the rows: row centres
    y_header = -_ROW_IN / 2
    ys = -(_ROW_IN + (np.arange(k) + 0.5) * site_h)
    y_pooled = -(_ROW_IN + k * site_h + _ROW_IN * 0.4 + _ROW_IN / 2)
    y_pi = y_pooled - _ROW_IN
    ax.set_ylim(-rows_h, 0)
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
            ax.plot(seg_x, seg_y, color=colour, lw=1.6, solid_capstyle="butt")
    marker_size = 8.0 if labelled else 3.0          # points
    groups: dict[tuple[str, str, bool], list[int]] = {}
    for i, code in enumerate(codes):
        if np.isfinite(estimates[i]):
            marker = styles.get(code, ("#555555", "o"))[1]
            groups.setdefault((colours[i], marker, code in originals), []).append(i)
    for (colour, marker, original), idx in groups.items():
        # Originals are filled, replications hollow: readable without colour.
        ax.plot(estimates[idx], ys[idx], ls="none",
                marker=MarkerStyle(marker, joinstyle="round"), ms=marker_size,
                mec=colour, mfc=colour if original else "white", mew=1.6, zorder=3)
    bottom_rows = -(_ROW_IN + k * site_h)
    if has_pooled:
        ax.fill([lo, est, hi, est], [y_pooled, y_pooled + 0.11, y_pooled, y_pooled - 0.11],
                color=_POOLED_COLOR)
        if has_pi:
            pi = [float(pooled["pi_low"]), float(pooled["pi_high"])]
            ax.plot(pi, [y_pi, y_pi], color=_POOLED_COLOR, lw=1.6, solid_capstyle="butt")
            ax.vlines(pi, y_pi - 0.07, y_pi + 0.07, color=_POOLED_COLOR, lw=1.6)
        bottom_rows = y_pi - _ROW_IN / 2
    ax.vlines(null, bottom_rows, -_ROW_IN, color="#888888", lw=0.9, ls=":")
    if xlim is None:
        xlim = axis_limits([*zip(lows, highs), *zip(estimates, estimates),
                            *([(lo, hi), (pooled.get("pi_low"), pooled.get("pi_high"))]
                              if has_pooled else [])], null, log_scale)
    ax.set_xlim(*xlim)
    ax.spines["bottom"].set_bounds(*xlim)
    ax.set_xlabel(xlabel, fontsize=_FONT_PT)
    # The text columns: x in figure inches, y in the rows' inches.
    to_fig = blended_transform_factory(fig.dpi_scale_trans, ax.transData)
    col_x = (_PAD_IN, plot_x0 + _PLOT_IN + est_w, plot_x0 + _PLOT_IN + est_w + weight_w)
    row_ys = [y_header, *(ys if labelled else []), *([y_pooled, y_pi] if has_pooled else [])]
    for (label, est_txt, weight_txt), y in zip(texts, row_ys):
        bold = "bold" if y == y_header else "normal"
        for x, text, ha in zip(col_x, (label, est_txt, weight_txt), ("left", "right", "right")):
            if text:
                fig.text(x, y, text, transform=to_fig, ha=ha, va="center", fontsize=_FONT_PT,
                         fontweight=bold, color="#1d1d1d")
    for i, note in enumerate(notes):
        fig.text(_PAD_IN / fig_w, (_PAD_IN + (len(notes) - 1 - i + 0.5) * _ROW_IN) / fig_h, note,
                 va="center", fontsize=_FONT_PT, color="#444444")
    if show_title:
        fig.text(_PAD_IN / fig_w, 1 - (_PAD_IN + title_h / 2) / fig_h, title, va="center",
                 fontsize=_FONT_PT, fontweight="bold")
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt or title}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return _inline(buf.getvalue(), title)


def _inline(svg: str, title: str = "") -> str:
    """The SVG element alone, for inlining in HTML: no prologue, no metadata, no namespaces.

    The HTML parser puts an inline ``<svg>`` in the SVG namespace itself, so the namespace
    URLs (and matplotlib's Dublin Core metadata) are dropped: the page then names no
    http(s) address at all, which the report tests check.
    """
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", svg, count=3)
    if title:               # the figure's accessible name, as a screen reader or tooltip gives it
        head = svg.index(">") + 1
        svg = f"{svg[:head]}\n <title>{html.escape(title)}</title>{svg[head:]}"
    return svg
