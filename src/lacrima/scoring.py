"""Scores, exclusions and participant flow (protocol sections 4 and 5), driven by the plan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lacrima.study import Study
from lacrima.vocabulary import FLOW_COLUMNS


def score(frame: pd.DataFrame, study: Study, names: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Add every score of ``study.scores`` (or only ``names``) to a copy of ``frame``.

    Parameters
    ----------
    frame : DataFrame
        Canonical variables of one or more participants.
    study : Study
        The plan; its ``[scores]`` table defines each score.
    names : tuple of str, optional
        Only these scores, and the scores they are computed from (validation needs two of
        the plan's scores to check a drop's completion).

    Returns
    -------
    DataFrame
        ``frame`` plus one column per score: ``mean`` scores as Float64 (missing when fewer than
        ``min_present`` items are present), ``linear`` scores as Float64 (missing when any term is
        missing), ``not_equal`` scores as boolean.

    Notes
    -----
    Prorated means follow the usual rule for short scales: the mean of the items present, scored
    only when at least ``min_present`` items are present (WAI-SR 10 of 12, CTSCM-R 13 of 16).
    Scores are computed in plan order, so a score may use an earlier one.
    """
    out = frame.copy()
    wanted = _with_inputs(study, names) if names is not None else None
    for name, spec in study.scores.items():
        if wanted is not None and name not in wanted:
            continue
        kind = spec["kind"]
        if kind == "mean":
            items = out[list(spec["items"])].apply(pd.to_numeric).astype("Float64")
            present = items.notna().sum(axis=1)
            out[name] = items.mean(axis=1, skipna=True).where(present >= spec["min_present"])
            out[name] = out[name].astype("Float64")
        elif kind == "linear":
            plus = out[list(spec["plus"])].astype("Float64").sum(axis=1, skipna=False)
            minus = (out[list(spec["minus"])].astype("Float64").sum(axis=1, skipna=False)
                     if spec["minus"] else 0)
            out[name] = (plus - minus).astype("Float64")
        elif kind == "not_equal":
            col = out[spec["variable"]]
            out[name] = (col != spec["value"]).astype("boolean").where(col.notna(), pd.NA)
        else:
            raise ValueError(f"score {name!r}: unknown kind {kind!r} in {study.path} "
                             "(expected mean, linear or not_equal)")
    return out


def _with_inputs(study: Study, names) -> set[str]:
    """``names`` and every score they are computed from (a score uses only earlier ones)."""
    wanted = set(names)
    for name, spec in reversed(list(study.scores.items())):
        if name in wanted:
            wanted |= {v for key in ("items", "plus", "minus") for v in spec.get(key, ())}
            wanted.add(spec.get("variable", name))
    return wanted & set(study.scores)


@dataclass(frozen=True)
class Flow:
    """Participant flow of one site: received, excluded per reason (in order), analysed."""

    site: str
    received: int
    excluded: tuple[tuple[str, str, int], ...]   # (reason, label, n)
    analysed: int

    def to_frame(self) -> pd.DataFrame:
        rows = [(self.site, "received", "", "Records received", self.received)]
        rows += [(self.site, "excluded", r, label, n) for r, label, n in self.excluded]
        rows.append((self.site, "analysed", "", "Analysed", self.analysed))
        return pd.DataFrame(rows, columns=list(FLOW_COLUMNS))


def _excluded_mask(data: pd.DataFrame, rule: dict) -> pd.Series:
    kind = rule["rule"]
    if kind == "not_true":
        return ~data[rule["variable"]].astype("boolean").fillna(False).astype(bool)
    if kind == "below":
        return (pd.to_numeric(data[rule["variable"]]) < rule["value"]).fillna(False).astype(bool)
    if kind == "missing_any":
        return data[list(rule["variables"])].isna().any(axis=1)
    raise ValueError(f"exclusion {rule['reason']!r}: unknown rule {kind!r} "
                     "(expected not_true, below or missing_any)")


def apply_exclusions(scored: pd.DataFrame, study: Study, site: str) -> tuple[pd.DataFrame, Flow]:
    """Apply the plan's exclusions in order; each participant is counted under the first reason.

    Returns the analysed participants (a new frame) and the participant flow.
    """
    keep = pd.Series(True, index=scored.index)
    excluded = []
    for rule in study.exclusions:
        hit = _excluded_mask(scored, rule) & keep
        excluded.append((rule["reason"], rule["label"], int(hit.sum())))
        keep &= ~hit
    analysed = scored.loc[keep].reset_index(drop=True)
    return analysed, Flow(site, len(scored), tuple(excluded), int(keep.sum()))


def analysis_ready(frame: pd.DataFrame, study: Study, site: str) -> tuple[pd.DataFrame, Flow]:
    """Score then exclude: the analysis-ready data of one site and its participant flow."""
    return apply_exclusions(score(frame, study), study, site)


def numeric(series: pd.Series) -> np.ndarray:
    """Float array with NaN for missing, the form the statistics functions take."""
    return pd.to_numeric(series, errors="coerce").astype("Float64").to_numpy(dtype=float, na_value=np.nan)
