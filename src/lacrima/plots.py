"""Forest plots (matplotlib, Agg): one per pooled effect, inline SVG for self-contained pages."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

# One colour per site, used everywhere (Okabe-Ito: colour-blind safe, distinct in greyscale
# by marker too).
_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def site_style(sites: list[str]) -> dict[str, tuple[str, str]]:
    return {s: (_PALETTE[i % len(_PALETTE)], _MARKERS[i % len(_MARKERS)]) for i, s in enumerate(sites)}


def forest_svg(site_rows: pd.DataFrame, pooled: pd.Series | None, title: str, xlabel: str,
               styles: dict[str, tuple[str, str]], originals: set[str] = frozenset(),
               null: float = 0.0) -> str:
    """A forest plot as an SVG string.

    ``site_rows`` has site, estimate, ci_low, ci_high, n; ``pooled`` the pooled row (estimate,
    ci, pi). Original studies are marked with an asterisk in the labels.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = site_rows.reset_index(drop=True)
    k = len(rows)
    height = 1.2 + 0.38 * (k + (2 if pooled is not None else 0))
    fig, ax = plt.subplots(figsize=(6.4, height))
    labels = []
    for i, r in rows.iterrows():
        y = k - i + (1 if pooled is not None else 0)
        color, marker = styles.get(r["site"], ("#333333", "o"))
        if np.isfinite(r["estimate"]):
            ax.plot([r["ci_low"], r["ci_high"]], [y, y], color=color, lw=1.6)
            ax.plot(r["estimate"], y, marker=marker, color=color, ms=7, ls="none")
        star = "*" if r["site"] in originals else ""
        labels.append((y, f"{r['site']}{star} (n={int(r['n']) if pd.notna(r['n']) else '?'})"))
    if pooled is not None and np.isfinite(pooled["estimate"]):
        y = 0.6
        est, lo, hi = pooled["estimate"], pooled["ci_low"], pooled["ci_high"]
        ax.fill([lo, est, hi, est], [y, y + 0.25, y, y - 0.25], color="#444444")
        if pd.notna(pooled.get("pi_low")) and pd.notna(pooled.get("pi_high")):
            ax.plot([pooled["pi_low"], pooled["pi_high"]], [y, y], color="#444444", lw=1,
                    ls=(0, (4, 2)))
        labels.append((y, "pooled RE"))
    ax.axvline(null, color="#888888", lw=0.8, ls=":")
    ax.set_yticks([p for p, _ in labels], [t for _, t in labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Site")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, k + (1.6 if pooled is not None else 0.6) + 0.4)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]
