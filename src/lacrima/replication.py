"""Replication assessment: the replication site against each original site, per effect.

Protocol section 7, third point. For every correlation and partial correlation of the
families in ``study.section("replication")["families"]``: same direction and
significance, the Patil-Peng-Leek prediction interval, the z test of the difference,
small telescopes, Held's sceptical p value, and a verdict by the configured rule.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from lacrima import vocabulary as voc
from lacrima.study import Site, Study

__all__ = [
    "replication_table", "assess_replication", "ReplicationAssessment", "patil_interval",
    "difference_p", "r33", "small_telescope_p", "sceptical_p", "CONDITIONS",
]

ANALYSES = {"correlation": "pearson", "partial_correlation": "pearson_partial"}
CONDITIONS = ("same_direction", "significant", "in_pi", "opposite_significant", "not_in_pi")
GOLDEN_RATIO = (1 + np.sqrt(5)) / 2

# The normal distribution through the ufuncs scipy.stats.norm itself uses (cdf = ndtr,
# sf(x) = ndtr(-x), ppf = ndtri): the same numbers without the ~50 us of argument checking
# per call that made the table take seconds at 125 sites (5,208 pairs, several calls each).
_norm_cdf = special.ndtr
_norm_ppf = special.ndtri


def _norm_sf(x):
    return special.ndtr(-x)


def _var_z(n: float, g: int) -> float:
    denom = n - 3 - g
    if not denom > 0:
        raise ValueError(f"n - 3 - g must be positive for a Fisher-z variance, got n = {n}, g = {g}")
    return 1.0 / denom


def patil_interval(r_original: float, n_original: float, n_replication: float, g: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Prediction interval for the replication correlation (Patil, Peng & Leek 2016).

    Parameters
    ----------
    r_original : float
        Original (partial) correlation.
    n_original, n_replication : float
        Sample sizes of the two studies.
    g : int, default 0
        Number of covariates partialled out (both studies).
    level : float, default 0.95
        Prediction level.

    Returns
    -------
    (float, float)
        Limits on the r scale.

    Notes
    -----
    :math:`\\tanh\\big(\\tanh^{-1}(r_o) \\pm z_{(1+level)/2}
    \\sqrt{1/(n_o-3-g) + 1/(n_r-3-g)}\\big)`.

    References
    ----------
    Patil, P., Peng, R. D., & Leek, J. T. (2016). What should researchers expect when
    they replicate studies? Perspectives on Psychological Science, 11(4), 539-544.
    """
    half = _norm_ppf((1 + level) / 2) * np.sqrt(_var_z(n_original, g) + _var_z(n_replication, g))
    z = np.arctanh(r_original)
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def difference_p(r_original: float, n_original: float, r_replication: float,
                 n_replication: float, g: int = 0) -> float:
    """Two-sided p of the z test that two independent correlations are equal.

    Notes
    -----
    :math:`z = (\\tanh^{-1} r_o - \\tanh^{-1} r_r) / \\sqrt{1/(n_o-3-g) + 1/(n_r-3-g)}`
    (Fisher 1921; Cohen, Cohen, West & Aiken 2003, section 2.8).
    """
    se = np.sqrt(_var_z(n_original, g) + _var_z(n_replication, g))
    z = (np.arctanh(r_original) - np.arctanh(r_replication)) / se
    return float(2 * _norm_sf(abs(z)))


def r33(n_original: float, g: int = 0, alpha: float = 0.05, power: float = 0.33,
        sign: float = 1.0) -> float:
    """The correlation the original study had ``power`` to detect (small telescopes).

    Notes
    -----
    Solves :math:`\\Phi(\\delta - z_{1-\\alpha/2}) + \\Phi(-\\delta - z_{1-\\alpha/2}) = power`
    for :math:`\\delta = \\tanh^{-1}(r)\\sqrt{n_o - 3 - g}` (two-sided test at ``alpha``,
    Fisher-z approximation), and returns ``sign * tanh(delta / sqrt(n_o - 3 - g))`` so
    r33 points in the original's direction (Simonsohn 2015).

    References
    ----------
    Simonsohn, U. (2015). Small telescopes: Detectability and the evaluation of
    replication results. Psychological Science, 26(5), 559-569.
    """
    if not alpha < power < 1:
        raise ValueError(f"power must lie between alpha ({alpha}) and 1, got {power}")
    delta = _r33_delta(float(alpha), float(power))
    return float(np.sign(sign) * np.tanh(delta * np.sqrt(_var_z(n_original, g))))


@functools.lru_cache(maxsize=64)
def _r33_delta(alpha: float, power: float) -> float:
    """The noncentrality with ``power`` at two-sided ``alpha``: the root :func:`r33` needs.

    It depends on ``alpha`` and ``power`` only, not on the study, so it is solved once
    per pair rather than once per original-replication comparison (thousands at 125 sites).
    """
    zc = stats.norm.isf(alpha / 2)
    f = lambda d: stats.norm.cdf(d - zc) + stats.norm.cdf(-d - zc) - power  # noqa: E731
    return optimize.brentq(f, 0.0, 40.0, xtol=1e-14)


def small_telescope_p(r_replication: float, n_replication: float, r_33: float, g: int = 0) -> float:
    """One-sided p of H0: rho = r33 against rho closer to 0 than r33 (Simonsohn 2015).

    Notes
    -----
    For a positive r33 the alternative is rho < r33:
    :math:`p = \\Phi((\\tanh^{-1} r_r - \\tanh^{-1} r_{33})\\sqrt{n_r - 3 - g})`; for a
    negative r33 the test is mirrored (alternative rho > r33), so a small p always means
    the replication effect is smaller than one the original could have detected.
    """
    z = (np.arctanh(r_replication) - np.arctanh(r_33)) / np.sqrt(_var_z(n_replication, g))
    return float(_norm_cdf(z if r_33 >= 0 else -z))


def sceptical_p(zo: float, zr: float, c: float, alternative: str = "one.sided",
                level_type: str = "golden") -> float:
    """Held's sceptical p value.

    Parameters
    ----------
    zo, zr : float
        z statistics (estimate / standard error) of the original and the replication.
    c : float
        Variance ratio ``se_o**2 / se_r**2`` (about ``n_r / n_o``).
    alternative : {"one.sided", "two.sided"}, default "one.sided"
        One-sided in the direction of the original estimate, or two-sided.
    level_type : {"golden", "nominal"}, default "golden"
        ``golden``: recalibrated with the golden ratio (Held, Micheloud & Pawel 2022);
        ``nominal``: uncalibrated (Held 2020).

    Returns
    -------
    float
        The sceptical p value, comparable with an ordinary p value at the same level.

    Notes
    -----
    Follows ReplicationSuccess::pSceptical (version 1.3). With :math:`z_A^2` and
    :math:`z_H^2` the arithmetic and harmonic means of :math:`z_o^2` and :math:`z_r^2`,
    :math:`z_S^2 = z_H^2/2` when c = 1, else
    :math:`z_S^2 = (\\sqrt{z_A^2 (z_A^2 + (c-1) z_H^2)} - z_A^2)/(c-1)` (Held 2020).
    Golden: :math:`z_S \\sqrt{\\varphi}` with :math:`\\varphi = (1+\\sqrt5)/2`. Two-sided
    :math:`p = 2(1-\\Phi(z))`; one-sided: half that when :math:`z_o` and :math:`z_r` have
    the same sign, else one minus half.

    References
    ----------
    Held, L. (2020). A new standard for the analysis and design of replication studies.
    JRSS A, 183(2), 431-448.
    Held, L., Micheloud, C., & Pawel, S. (2022). The assessment of replication success
    based on relative effect size. Annals of Applied Statistics, 16, 706-720.
    """
    if alternative not in ("one.sided", "two.sided"):
        raise ValueError(f"alternative must be 'one.sided' or 'two.sided', got {alternative!r}")
    if level_type not in ("golden", "nominal"):
        raise ValueError(f"sceptical level {level_type!r} is not implemented; use 'golden' or 'nominal'")
    if not (np.isfinite(zo) and np.isfinite(zr) and np.isfinite(c) and c >= 0):
        raise ValueError(f"zo, zr must be finite and c >= 0, got zo={zo}, zr={zr}, c={c}")
    if zo == 0 or zr == 0:
        # The harmonic mean of squares is 0: no evidence at all for replication success.
        z_s = 0.0
    else:
        z2h = 2 / (1 / zo**2 + 1 / zr**2)
        z2a = (zo**2 + zr**2) / 2
        z2 = z2h / 2 if c == 1 else (np.sqrt(z2a * (z2a + (c - 1) * z2h)) - z2a) / (c - 1)
        z_s = float(np.sqrt(z2))
    if level_type == "golden":
        z_s *= np.sqrt(GOLDEN_RATIO)
    p = 2 * _norm_sf(z_s)
    if alternative == "one.sided":
        p = p / 2 if np.sign(zo) == np.sign(zr) else 1 - p / 2
    return float(p)


@dataclass(frozen=True)
class ReplicationAssessment:
    """One effect, one original site against the replication site (fields = REPLICATION_COLUMNS)."""

    effect: str
    x: str
    y: str
    covariates: str
    original_site: str
    replication_site: str
    r_original: float
    n_original: float
    r_replication: float
    n_replication: float
    pi_low: float
    pi_high: float
    in_pi: bool
    same_direction: bool
    p_difference: float
    r33: float
    p_small_telescope: float
    p_sceptical: float
    verdict: str

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(self)], columns=list(voc.REPLICATION_COLUMNS))


def _conditions(same_direction: bool, significant: bool, in_pi: bool) -> dict[str, bool]:
    return {
        "same_direction": same_direction, "significant": significant, "in_pi": in_pi,
        "opposite_significant": significant and not same_direction, "not_in_pi": not in_pi,
    }


def evaluate_verdict(conditions: Mapping[str, bool], rules: Sequence[Mapping[str, Any]]) -> str:
    """First rule whose conditions hold (``all``: every one; ``any``: at least one).

    Raises ``ValueError`` for a rule naming an unknown condition or neither ``all`` nor
    ``any``; returns ``"unclassified"`` when no rule matches.
    """
    for rule in rules:
        names = list(rule.get("all", ())) + list(rule.get("any", ()))
        unknown = [c for c in names if c not in conditions]
        if unknown or not names or "verdict" not in rule:
            raise ValueError(
                f"verdict rule {dict(rule)!r} is malformed: needs 'verdict' and 'all' or 'any' "
                f"over {sorted(conditions)}; unknown: {unknown}"
            )
        ok_all = all(conditions[c] for c in rule.get("all", ()))
        ok_any = any(conditions[c] for c in rule["any"]) if "any" in rule else True
        if ok_all and ok_any:
            return str(rule["verdict"])
    return "unclassified"


def assess_replication(effect: str, x: str, y: str, covariates: str, original_site: str,
                       replication_site: str, r_original: float, n_original: float,
                       r_replication: float, n_replication: float, p_replication: float,
                       settings: Mapping[str, Any]) -> ReplicationAssessment:
    """Assess one effect (see :func:`replication_table` for every quantity).

    ``settings`` is ``study.section("replication")``: alpha, pi_level,
    small_telescope_power, sceptical_level and verdicts.
    """
    g = len([c for c in covariates.split(voc.COVARIATE_SEPARATOR) if c]) if covariates else 0
    alpha = float(settings.get("alpha", 0.05))
    lo, hi = patil_interval(r_original, n_original, n_replication, g,
                            float(settings.get("pi_level", 0.95)))
    in_pi = bool(lo <= r_replication <= hi)
    same = bool(np.sign(r_original) == np.sign(r_replication) and r_original != 0)
    significant = bool(p_replication < alpha)
    r_33 = r33(n_original, g, alpha, float(settings.get("small_telescope_power", 0.33)),
               sign=np.sign(r_original) or 1.0)
    v_o, v_r = _var_z(n_original, g), _var_z(n_replication, g)
    p_s = sceptical_p(np.arctanh(r_original) / np.sqrt(v_o), np.arctanh(r_replication) / np.sqrt(v_r),
                      v_o / v_r, "one.sided", str(settings.get("sceptical_level", "golden")))
    verdict = evaluate_verdict(_conditions(same, significant, in_pi), settings.get("verdicts", ()))
    return ReplicationAssessment(
        effect=effect, x=x, y=y, covariates=covariates, original_site=original_site,
        replication_site=replication_site, r_original=float(r_original),
        n_original=float(n_original), r_replication=float(r_replication),
        n_replication=float(n_replication), pi_low=lo, pi_high=hi, in_pi=in_pi,
        same_direction=same,
        p_difference=difference_p(r_original, n_original, r_replication, n_replication, g),
        r33=r_33, p_small_telescope=small_telescope_p(r_replication, n_replication, r_33, g),
        p_sceptical=p_s, verdict=verdict,
    )


def _correlation_p(r: float, n: float, g: int) -> float:
    df = n - 2 - g
    t = r * np.sqrt(df / (1 - r**2))
    return float(2 * special.stdtr(df, -abs(t)))    # stats.t.sf(|t|, df), as scipy computes it


def replication_table(site_results: pd.DataFrame, study: Study, sites: Sequence[Site]) -> pd.DataFrame:
    """Replication of every correlation effect, replication site against each original.

    Parameters
    ----------
    site_results : DataFrame
        Per-site tidy rows (``vocabulary.RESULTS_COLUMNS``); used are ``correlation``
        (method ``pearson``) and ``partial_correlation`` (``pearson_partial``) rows of
        the families in ``study.section("replication")["families"]``.
    study : Study
        The plan; ``[replication]`` gives roles, alpha, pi_level, small_telescope_power,
        sceptical_level and the ordered verdict rules.
    sites : sequence of Site
        Exactly one with role ``replication_site_role``, any number with
        ``original_site_role``.

    Returns
    -------
    DataFrame
        Columns exactly ``vocabulary.REPLICATION_COLUMNS``, one row per (effect,
        original site) where both sites have an estimate:

        - ``effect``: the family id; with x, y and covariates it names the effect.
        - ``r_original``, ``n_original``, ``r_replication``, ``n_replication``.
        - ``pi_low``, ``pi_high``, ``in_pi``: Patil-Peng-Leek interval at ``pi_level``
          (variance 1/(n-3-g) for g covariates) and whether the replication r is inside.
        - ``same_direction``: the two r have the same sign.
        - ``p_difference``: two-sided z test of equal correlations.
        - ``r33``, ``p_small_telescope``: Simonsohn's r33 (two-sided ``alpha``,
          ``small_telescope_power``) and the one-sided test of the replication r
          against it.
        - ``p_sceptical``: Held's one-sided sceptical p, recalibrated at the golden
          level (ReplicationSuccess ``pSceptical(zo, zr, c, "one.sided", "golden")``)
          with z = atanh(r) sqrt(n-3-g) and c = (n_r-3-g)/(n_o-3-g).
        - ``verdict``: the first configured rule that holds, over the conditions
          ``same_direction``, ``significant`` (replication raw p < alpha),
          ``in_pi``, ``opposite_significant`` (significant, other direction),
          ``not_in_pi``.

    Notes
    -----
    The replication p value is the row's raw (not Holm-adjusted) ``p_value``; when it
    is missing it is recomputed from r with the t test on n - 2 - g df.
    """
    cfg = study.section("replication")
    rep_role = cfg.get("replication_site_role", "replication")
    orig_role = cfg.get("original_site_role", "original")
    replicators = [s for s in sites if s.role == rep_role]
    if len(replicators) != 1:
        raise ValueError(f"expected exactly one site with role {rep_role!r}, found "
                         f"{[s.code for s in replicators]}")
    rep = replicators[0].code
    originals = sorted(s.code for s in sites if s.role == orig_role)
    families = tuple(cfg.get("families", ()))

    rows = site_results.loc[
        site_results["family"].isin(families)
        & site_results["analysis"].isin(tuple(ANALYSES))
        & (site_results["method"] == site_results["analysis"].map(ANALYSES))
    ].copy()
    rows["covariates"] = rows["covariates"].fillna("").astype(str)
    for col in ("estimate", "n", "p_value"):
        rows[col] = pd.to_numeric(rows[col], errors="coerce").astype(float)
    rows = rows[rows["estimate"].notna() & rows["n"].notna() & (rows["estimate"].abs() < 1)]

    out = []
    key = ["family", "x", "y", "covariates"]
    for (family, x, y, cov), grp in rows.groupby(key, sort=True):
        # site -> (estimate, n, p): the first row per site, looked up without pandas indexing
        by_site = {}
        for site, r, n, p in zip(grp["site"], grp["estimate"], grp["n"], grp["p_value"]):
            by_site.setdefault(site, (r, n, p))
        if rep not in by_site:
            continue
        r_r, n_r, p_r = by_site[rep]
        g = len([c for c in cov.split(voc.COVARIATE_SEPARATOR) if c]) if cov else 0
        if not n_r - 3 - g > 0:
            continue
        if np.isnan(p_r):
            p_r = _correlation_p(r_r, n_r, g)
        for orig in originals:
            if orig not in by_site or not by_site[orig][1] - 3 - g > 0:
                continue
            r_o, n_o, _ = by_site[orig]
            a = assess_replication(family, x, y, cov, orig, rep, r_o, n_o, r_r, n_r, p_r, cfg)
            out.append(vars(a))      # scalar fields: asdict's deep copy is not needed
    return pd.DataFrame(out, columns=list(voc.REPLICATION_COLUMNS))
