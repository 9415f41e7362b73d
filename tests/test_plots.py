"""lacrima.plots.forest_svg: every site is drawn (interval and marker) in the SVG it returns."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from lacrima.plots import forest_svg, site_style

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}href"


def _parse(svg: str) -> ET.Element:
    # forest_svg drops the namespace declarations (the HTML parser supplies them); put them
    # back so that ElementTree can read the document
    return ET.fromstring(svg.replace("<svg", '<svg xmlns="http://www.w3.org/2000/svg" '
                                     'xmlns:xlink="http://www.w3.org/1999/xlink"', 1))


def _plot_marks(el: ET.Element, segments: list, uses: list) -> None:
    """Horizontal segments and marker uses outside the axis ticks and the spines."""
    if re.match(r"[xy]tick_|patch_", el.get("id", "")):
        return
    if el.tag == SVG + "path" and el.get("d"):
        for x0, y0, x1, y1 in re.findall(
                r"M ([-0-9.e]+) ([-0-9.e]+) \s*L ([-0-9.e]+) ([-0-9.e]+)(?=\s*(?:M|$))",
                el.get("d").strip()):
            if y0 == y1 and x0 != x1:
                segments.append((float(x0), float(x1), float(y0)))
    if el.tag == SVG + "use" and el.get(XLINK):
        uses.append((float(el.get("x")), float(el.get("y")), el.get(XLINK), el.get("style", "")))
    for child in el:
        _plot_marks(child, segments, uses)


def _rows(k: int) -> pd.DataFrame:
    est = np.linspace(-0.4, 0.6, k)
    rows = pd.DataFrame({"site": [f"s{i:03d}" for i in range(k)], "estimate": est,
                         "ci_low": est - 0.2, "ci_high": est + 0.1 + np.linspace(0, 0.3, k),
                         "n": 100})
    rows.loc[1, "ci_low"] = np.nan       # no interval: the marker alone
    return rows


@pytest.mark.parametrize("k", [3, 40, 125])
def test_every_site_has_its_interval_and_marker(k):
    rows = _rows(k)
    styles = site_style(rows["site"].tolist())
    segments, uses = [], []
    _plot_marks(_parse(forest_svg(rows, None, "t", "Pearson r", styles, {"s000"})), segments, uses)
    # one horizontal interval per site with a CI, each on its own row
    assert len(segments) == k - 1
    assert len({round(y, 3) for _, _, y in segments}) == k - 1
    # one marker per site, the sites top-down in the order given, one row apart
    assert len(uses) == k
    ys = np.array([y for _, y, _, _ in uses])
    order = np.argsort([x for x, _, _, _ in uses])        # estimates increase with the row
    assert (np.diff(ys[order]) > 0).all()
    # each interval's marker lies on it, inside it; the interval widths keep their order
    for x0, x1, y in segments:
        on_row = [x for x, uy, _, _ in uses if abs(uy - y) < 1e-6]
        assert len(on_row) == 1 and x0 < on_row[0] < x1
    widths = [x1 - x0 for x0, x1, _ in sorted(segments, key=lambda s: s[2])]   # top-down
    assert widths == sorted(widths)


def test_hollow_and_filled_markers():
    rows = _rows(8)
    styles = site_style(rows["site"].tolist())
    svg = forest_svg(rows, None, "t", "x", styles, {"s000", "s003"})
    root = _parse(svg)
    fills = {}
    for g in root.iter(SVG + "g"):
        for path in g.findall(SVG + "defs/" + SVG + "path"):
            fills[path.get("id")] = path.get("style", "")
    segments, uses = [], []
    _plot_marks(root, segments, uses)
    by_row = sorted(uses, key=lambda u: u[1])             # top-down: s000, s001, ...
    for i, (_, _, href, style) in enumerate(by_row):
        css = (style or fills.get(href.lstrip("#"), "")).lower()
        colour = styles[f"s{i:03d}"][0].lower()
        assert f"stroke: {colour}" in css
        assert ("fill: " + colour if i in (0, 3) else "fill: #ffffff") in css

