"""Replication assessment: every replication site against every original site, per effect.

Protocol section 7, third point (the Many Labs design: any number of sites of either role).
For every correlation and partial correlation of the families in
``study.section("replication")["families"]``: same direction and significance, the
Patil-Peng-Leek prediction interval, the z test of the difference, small telescopes,
Held's sceptical p value, and a verdict by the configured rule; each replication site
against each original, and the pooled replication sites against each original and against
the pooled originals (pooled as ``lacrima.pooling`` pools: the plan's ``[pooling]``
estimator and test).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

from lacrima import vocabulary as voc
from lacrima.meta.effects import fisher_z
from lacrima.meta.rma import random_effects
from lacrima.pooling import pooling_settings
from lacrima.stats.adjust import adjust_pvalues
from lacrima.study import ROLES, Site, Study

__all__ = [
    "pooled_side_model", "pooled_side_words", "small_k_note", "SMALL_K",
    "replication_table", "assess_replication", "ReplicationAssessment", "patil_interval",
    "difference_p", "r33", "small_telescope_p", "sceptical_p", "CONDITIONS", "VERDICT_P",
]

# The analyses assessed for replication (correlations, on the Fisher z scale) and their
# per-site method.
ANALYSES = {a: voc.POOLED_METHODS[a] for a in ("correlation", "partial_correlation")}
CONDITIONS = ("same_direction", "significant", "in_pi", "opposite_significant", "not_in_pi",
              "original_significant", "larger_same_direction")
# Which replication p value the ``significant`` condition reads ([replication] verdict_p).
VERDICT_P = ("raw", "holm")
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


def r33(n_original: float, g: int = 0, alpha: float = 0.05, power: float = 1 / 3,
        sign: float = 1.0) -> float:
    """The correlation the original study had ``power`` to detect (small telescopes).

    Parameters
    ----------
    n_original : float
        Sample size of the original (partial) correlation.
    g : int, default 0
        Covariates partialled out: the calculation runs on ``n_original - g``.
    alpha : float, default 0.05
        Two-sided significance level of the original test.
    power : float, default 1/3
        Simonsohn's 33% (``[replication] small_telescope_power``).
    sign : float, default 1
        Direction of the original effect; r33 points the same way.

    Returns
    -------
    float
        ``sign * pwr::pwr.r.test(n = n_original - g, sig.level = alpha, power = power)$r``;
        NaN when ``n_original - g < 4`` (pwr refuses fewer than 4 observations).

    Notes
    -----
    pwr 1.3-0's two-sided power of a correlation test with n observations, as its code has it:
    critical :math:`r_c = \\sqrt{t^2/(t^2 + n - 2)}` with :math:`t = t_{1-\\alpha/2}(n-2)`,
    :math:`z_r = \\tanh^{-1}(r) + r/(2(n-1))` (the bias term of the Fisher z of r),
    power :math:`= \\Phi((z_r - \\tanh^{-1} r_c)\\sqrt{n-3}) +
    \\Phi((-z_r - \\tanh^{-1} r_c)\\sqrt{n-3})`. ``pwr.r.test`` solves power(r) = ``power``
    with ``uniroot`` over (1e-10, 1 - 1e-10) at R's default tolerance
    (``.Machine$double.eps^0.25``, about 1.2e-4 in r); :func:`_r_uniroot` takes the same
    steps as R's ``zeroin`` so the value is pwr's to the last digits, not merely the root
    to within uniroot's tolerance (the exact root differs from pwr's by up to 3e-5).
    For a partial correlation the calculation runs on n - g, as the test of a partial
    correlation has n - 2 - g degrees of freedom.

    References
    ----------
    Simonsohn, U. (2015). Small telescopes: Detectability and the evaluation of
    replication results. Psychological Science, 26(5), 559-569.
    Champely, S. (2020). pwr: Basic functions for power analysis (R package 1.3-0).

    Examples
    --------
    >>> round(r33(106), 6)    # pwr.r.test(n = 106, sig.level = .05, power = 1/3)$r
    0.148912
    """
    if not alpha < power < 1:
        raise ValueError(f"power must lie between alpha ({alpha}) and 1, got {power}")
    n = float(n_original) - g
    if not (n >= 4 and np.isfinite(n)):
        return float("nan")
    return float((np.sign(sign) or 1.0) * _pwr_r(n, float(alpha), float(power)))


@functools.lru_cache(maxsize=4096)
def _pwr_r(n: float, alpha: float, power: float) -> float:
    """``pwr.r.test(n, sig.level = alpha, power = power)$r`` (two-sided), memoised.

    It depends on n, alpha and power only, so it is solved once per sample size rather
    than once per original-replication comparison (thousands at 125 sites).
    """
    ttt = -special.stdtrit(n - 2, alpha / 2)          # qt(alpha/2, n - 2, lower = FALSE)
    zrc = np.arctanh(np.sqrt(ttt**2 / (ttt**2 + n - 2)))
    root = np.sqrt(n - 3)

    def excess(r: float) -> float:
        zr = np.arctanh(r) + r / (2 * (n - 1))
        return float(_norm_cdf((zr - zrc) * root) + _norm_cdf((-zr - zrc) * root) - power)

    return _r_uniroot(excess, 1e-10, 1 - 1e-10)


_EPS = float(np.finfo(float).eps)


def _r_uniroot(f, lower: float, upper: float, tol: float = _EPS ** 0.25,
               maxiter: int = 1000) -> float:
    """R's ``uniroot(f, c(lower, upper))$root``: Brent's method step for step as R takes it.

    R's ``uniroot`` calls ``zeroin`` (Brent 1973, the netlib algorithm as R's
    ``src/library/stats/src/zeroin.c`` has it) with ``f.lower``, ``f.upper`` evaluated
    first and an absolute tolerance ``tol``; each iteration's own tolerance is
    ``2 eps |b| + tol / 2``. scipy's ``brentq`` is the same method but takes other steps,
    so its answer differs from R's by up to the tolerance; pwr's documented numbers are R's.

    References
    ----------
    Brent, R. P. (1973). Algorithms for minimization without derivatives, chapter 4.
    Prentice-Hall.
    """
    a, b = lower, upper
    fa, fb = f(a), f(b)
    if fa == 0:
        return a
    if fb == 0:
        return b
    if (fa > 0) == (fb > 0):
        raise ValueError(f"f({lower}) and f({upper}) have the same sign: no root between them")
    c, fc = a, fa
    for _ in range(maxiter + 1):
        prev_step = b - a
        if abs(fc) < abs(fb):          # b is the best approximation so far
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol_act = 2 * _EPS * abs(b) + tol / 2
        new_step = (c - b) / 2
        if abs(new_step) <= tol_act or fb == 0:
            return b
        if abs(prev_step) >= tol_act and abs(fa) > abs(fb):
            cb = c - b
            if a == c:                 # two distinct points: secant
                t1 = fb / fa
                p, q = cb * t1, 1.0 - t1
            else:                      # inverse quadratic interpolation
                q, t1, t2 = fa / fc, fb / fc, fb / fa
                p = t2 * (cb * q * (q - t1) - (b - a) * (t1 - 1.0))
                q = (q - 1.0) * (t1 - 1.0) * (t2 - 1.0)
            if p > 0:
                q = -q
            else:
                p = -p
            if p < 0.75 * cb * q - abs(tol_act * q) / 2 and p < abs(prev_step * q / 2):
                new_step = p / q
        if abs(new_step) < tol_act:
            new_step = tol_act if new_step > 0 else -tol_act
        a, fa = b, fb
        b += new_step
        fb = f(b)
        if (fb > 0 and fc > 0) or (fb < 0 and fc < 0):
            c, fc = a, fa
    raise ValueError(f"no root found in {maxiter} iterations")


def small_telescope_p(r_replication: float, n_replication: float, r_33: float, g: int = 0,
                      var_replication: float | None = None) -> float:
    """One-sided p of H0: rho = r33 against rho closer to 0 than r33 (Simonsohn 2015).

    Notes
    -----
    For a positive r33 the alternative is rho < r33:
    :math:`p = \\Phi((\\tanh^{-1} r_r - \\tanh^{-1} r_{33}) / \\sqrt{v_r})` with
    :math:`v_r = 1/(n_r - 3 - g)` (or ``var_replication``, the variance of a pooled
    replication estimate on the Fisher-z scale); for a negative r33 the test is mirrored
    (alternative rho > r33), so a small p always means the replication effect is smaller
    than one the original could have detected. NaN when r33 is.
    """
    if not np.isfinite(r_33):
        return float("nan")
    v = _var_z(n_replication, g) if var_replication is None else var_replication
    z = (np.arctanh(r_replication) - np.arctanh(r_33)) / np.sqrt(v)
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
    _check_sceptical_level(level_type)
    if not (np.isfinite(zo) and np.isfinite(zr) and np.isfinite(c) and c >= 0):
        raise ValueError(f"zo, zr must be finite and c >= 0, got zo={zo}, zr={zr}, c={c}")
    zo, zr, c = (np.array([float(v)]) for v in (zo, zr, c))
    return float(_sceptical_p(zo, zr, c, alternative, level_type)[0])


def _check_sceptical_level(level_type: str) -> None:
    if level_type not in ("golden", "nominal"):
        raise ValueError(f"sceptical level {level_type!r} is not implemented; "
                         "use 'golden' or 'nominal'")


def _sceptical_p(zo: np.ndarray, zr: np.ndarray, c: np.ndarray, alternative: str,
                 level_type: str) -> np.ndarray:
    """:func:`sceptical_p` over arrays of finite ``zo``, ``zr``, ``c >= 0`` (the caller checks)."""
    # Squares by libm's pow, as Python and numpy scalars take x**2: an array's x**2 is x * x
    # (or a SIMD pow), which differs from it in the last bit for about 1 x in 1,000 (e.g.
    # 3.4045540725735473), and that bit reached the table's p_sceptical.
    zo2, zr2 = np.float_power(zo, 2), np.float_power(zr, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z2h = 2 / (1 / zo2 + 1 / zr2)
        z2a = (zo2 + zr2) / 2
        z2 = np.where(c == 1, z2h / 2, (np.sqrt(z2a * (z2a + (c - 1) * z2h)) - z2a) / (c - 1))
        # zo or zr = 0: the harmonic mean of squares is 0, no evidence for replication success.
        z_s = np.where((zo == 0) | (zr == 0), 0.0, np.sqrt(z2))
    if level_type == "golden":
        z_s = z_s * np.sqrt(GOLDEN_RATIO)
    p = 2 * _norm_sf(z_s)
    if alternative == "one.sided":
        p = np.where(np.sign(zo) == np.sign(zr), p / 2, 1 - p / 2)
    return p


@dataclass(frozen=True)
class ReplicationAssessment:
    """One effect, one original side against one replication side (fields = REPLICATION_COLUMNS).

    A side is a site or the pooled sites of one role (``voc.POOLED``, with ``k`` > 1).
    """

    effect: str
    x: str
    y: str
    covariates: str
    original_site: str
    replication_site: str
    k_original: int
    k_replication: int
    r_original: float
    n_original: float
    p_original: float
    original_significant: bool
    r_replication: float
    n_replication: float
    p_replication: float
    p_replication_holm: float
    pi_low: float
    pi_high: float
    in_pi: bool
    same_direction: bool
    larger_same_direction: bool
    p_difference: float
    r33: float
    p_small_telescope: float
    p_sceptical: float
    verdict_p: str
    verdict: str

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(self)], columns=list(voc.REPLICATION_COLUMNS))


def _conditions(same_direction, significant, in_pi, original_significant=False, larger=False):
    """The verdict conditions (``CONDITIONS``), elementwise over arrays of booleans."""
    return {
        "same_direction": same_direction, "significant": significant, "in_pi": in_pi,
        "opposite_significant": significant & ~same_direction, "not_in_pi": ~in_pi,
        "original_significant": original_significant, "larger_same_direction": larger,
    }


def _check_rules(rules: Sequence[Mapping[str, Any]], conditions) -> None:
    for rule in rules:
        names = list(rule.get("all", ())) + list(rule.get("any", ()))
        unknown = [c for c in names if c not in conditions]
        if unknown or not names or "verdict" not in rule:
            raise ValueError(
                f"verdict rule {dict(rule)!r} is malformed: needs 'verdict' and 'all' or 'any' "
                f"over {sorted(conditions)}; unknown: {unknown}"
            )


def _verdicts(conditions: Mapping[str, np.ndarray], rules: Sequence[Mapping[str, Any]],
              size: int) -> np.ndarray:
    """:func:`evaluate_verdict` for ``size`` pairs at once (conditions are boolean arrays)."""
    _check_rules(rules, conditions)
    out = np.full(size, "unclassified", dtype=object)
    open_ = np.ones(size, dtype=bool)          # no rule has held yet
    for rule in rules:
        holds = np.ones(size, dtype=bool)
        for c in rule.get("all", ()):
            holds &= conditions[c]
        if "any" in rule:
            any_ = np.zeros(size, dtype=bool)
            for c in rule["any"]:
                any_ |= conditions[c]
            holds &= any_
        out[open_ & holds] = str(rule["verdict"])
        open_ &= ~holds
    return out


def evaluate_verdict(conditions: Mapping[str, bool], rules: Sequence[Mapping[str, Any]]) -> str:
    """First rule whose conditions hold (``all``: every one; ``any``: at least one).

    Raises ``ValueError`` for a rule naming an unknown condition or neither ``all`` nor
    ``any``; returns ``"unclassified"`` when no rule matches.
    """
    return str(_verdicts({c: np.array([bool(v)]) for c, v in conditions.items()}, rules, 1)[0])


def verdict_p_choice(settings: Mapping[str, Any]) -> str:
    """``[replication] verdict_p``: which replication p the ``significant`` condition reads.

    ``"raw"`` (default, the protocol's rule) or ``"holm"`` (Holm-adjusted within the
    family, per replication site, as protocol section 6 adjusts every site's p values).
    """
    choice = str(settings.get("verdict_p", "raw"))
    if choice not in VERDICT_P:
        raise ValueError(f"[replication] verdict_p = {choice!r}: expected one of {list(VERDICT_P)}")
    return choice


def assess_replication(effect: str, x: str, y: str, covariates: str, original_site: str,
                       replication_site: str, r_original: float, n_original: float,
                       r_replication: float, n_replication: float, p_replication: float,
                       settings: Mapping[str, Any], *, p_original: float = float("nan"),
                       p_replication_holm: float = float("nan"),
                       var_original: float | None = None, var_replication: float | None = None,
                       k_original: int = 1, k_replication: int = 1) -> ReplicationAssessment:
    """Assess one effect (see :func:`replication_table` for every quantity).

    ``settings`` is ``study.section("replication")``: alpha, pi_level,
    small_telescope_power, sceptical_level, verdict_p and verdicts. ``var_original``,
    ``var_replication``: variance of the Fisher z of a pooled side (default 1/(n - 3 - g),
    a single site's); ``p_original``: the original's raw p (for ``original_significant``).
    """
    g = len(voc.covariate_names(covariates))
    v_o = _var_z(n_original, g) if var_original is None else float(var_original)
    v_r = _var_z(n_replication, g) if var_replication is None else float(var_replication)
    one = {name: np.array([float(v)]) for name, v in (
        ("r_original", r_original), ("n_original", n_original), ("p_original", p_original),
        ("v_original", v_o), ("r_replication", r_replication), ("p_replication", p_replication),
        ("p_replication_holm", p_replication_holm), ("v_replication", v_r), ("g", g))}
    cols = _assess(**one, pooled_original=np.array([var_original is not None]),
                   settings=settings)
    return ReplicationAssessment(
        effect=effect, x=x, y=y, covariates=covariates, original_site=original_site,
        replication_site=replication_site, k_original=int(k_original),
        k_replication=int(k_replication), n_replication=float(n_replication),
        **{name: (v.tolist()[0] if isinstance(v, np.ndarray) else v)
           for name, v in cols.items()})


def _assess(r_original, n_original, p_original, v_original, pooled_original, r_replication,
            p_replication, p_replication_holm, v_replication, g,
            settings: Mapping[str, Any]) -> dict[str, Any]:
    """Every column of the comparison that is computed, for arrays of pairs of sides at once.

    ``v_*`` are the Fisher-z variances of the sides (1/(n - 3 - g) for a site),
    ``pooled_original`` marks a pooled original side, ``g`` the covariates partialled out.
    Each quantity is the formula of the scalar function it is named after
    (:func:`patil_interval`, :func:`difference_p`, :func:`r33`, :func:`small_telescope_p`,
    :func:`sceptical_p`), elementwise.
    """
    alpha = float(settings.get("alpha", 0.05))
    power = float(settings.get("small_telescope_power", 1 / 3))
    if not alpha < power < 1:
        raise ValueError(f"power must lie between alpha ({alpha}) and 1, got {power}")
    level_type = str(settings.get("sceptical_level", "golden"))
    _check_sceptical_level(level_type)
    choice = verdict_p_choice(settings)
    v_o, v_r = v_original, v_replication
    z_o, z_r = np.arctanh(r_original), np.arctanh(r_replication)
    with np.errstate(divide="ignore", invalid="ignore"):
        # patil_interval and difference_p, with the variances of the two sides
        half = _norm_ppf((1 + float(settings.get("pi_level", 0.95))) / 2) * np.sqrt(v_o + v_r)
        lo, hi = np.tanh(z_o - half), np.tanh(z_o + half)
        in_pi = (lo <= r_replication) & (r_replication <= hi)
        same = (np.sign(r_original) == np.sign(r_replication)) & (r_original != 0)
        larger = same & (np.abs(r_replication) > np.abs(r_original))
        significant = (p_replication if choice == "raw" else p_replication_holm) < alpha
        original_significant = p_original < alpha
        p_difference = 2 * _norm_sf(np.abs((z_o - z_r) / np.sqrt(v_o + v_r)))
        # r33: a pooled original enters small telescopes with the n its pooled variance
        # stands for (a zero Hartung-Knapp variance, identical originals, stands for no
        # finite n: r33 NaN). pwr's r depends on n only: solved once per distinct n.
        n_power = np.where(pooled_original, np.where(v_o > 0, 1.0 / v_o + 3 + g, np.inf),
                           n_original) - g
        r_33 = np.full(len(n_power), np.nan)
        ok = (n_power >= 4) & np.isfinite(n_power)
        values, where = np.unique(n_power[ok], return_inverse=True)
        r_33[ok] = np.array([_pwr_r(float(n), alpha, power) for n in values])[where]
        r_33 = np.where(r_original < 0, -1.0, 1.0) * r_33
        # small_telescope_p, mirrored for a negative r33
        z_t = (z_r - np.arctanh(r_33)) / np.sqrt(v_r)
        p_small = np.where(np.isfinite(r_33), _norm_cdf(np.where(r_33 >= 0, z_t, -z_t)), np.nan)
        # sceptical p: a pooled side of identical sites can have a zero HK variance
        both = (v_o > 0) & (v_r > 0)
        p_s = np.full(len(both), np.nan)
        p_s[both] = _sceptical_p((z_o / np.sqrt(v_o))[both], (z_r / np.sqrt(v_r))[both],
                                 (v_o / v_r)[both], "one.sided", level_type)
    verdict = _verdicts(_conditions(same, significant, in_pi, original_significant, larger),
                        settings.get("verdicts", ()), len(same))
    return dict(r_original=r_original, n_original=n_original, p_original=p_original,
                original_significant=original_significant, r_replication=r_replication,
                p_replication=p_replication, p_replication_holm=p_replication_holm,
                pi_low=lo, pi_high=hi, in_pi=in_pi, same_direction=same,
                larger_same_direction=larger, p_difference=p_difference, r33=r_33,
                p_small_telescope=p_small, p_sceptical=p_s, verdict_p=choice, verdict=verdict)


def _correlation_p(r: float, n: float, g: int) -> float:
    df = n - 2 - g
    t = r * np.sqrt(df / (1 - r**2))
    return float(2 * special.stdtr(df, -abs(t)))    # stats.t.sf(|t|, df), as scipy computes it


# A side pooling at most this many sites is "few" ([replication] pooled_side = "auto": fixed
# effect). With k = 2 or 3 the Hartung-Knapp interval uses t on 1 or 2 df (critical values
# 12.7 and 4.3) and tau2 is barely estimable, so no pooled replication could be significant;
# see sites/README.md ("Pooling few replications") for the literature.
SMALL_K = 3
POOLED_SIDE = ("re", "fe", "auto")


def pooled_side_model(cfg: Mapping[str, Any], k: int) -> str:
    """``"fe"`` or ``"re"``: how a side pooling ``k`` sites is pooled (``[replication] pooled_side``)."""
    how = str(cfg.get("pooled_side", "auto"))
    if how not in POOLED_SIDE:
        raise ValueError(f"sites/study.toml [replication] pooled_side = {how!r}: must be one of "
                         f"{POOLED_SIDE}")
    return ("fe" if k <= SMALL_K else "re") if how == "auto" else how


def pooled_side_words(cfg: Mapping[str, Any], k: int, method: str, test: str) -> str:
    """The model of a side pooling ``k`` sites in words, with its test's df."""
    if pooled_side_model(cfg, k) == "fe":
        return "fixed effect (inverse-variance weights, z test: no df)"
    if test == "z":
        return f"random effects ({method} tau2, z test: no df)"
    return (f"random effects ({method} tau2, Hartung-Knapp ad hoc SE, t on {k - 1} df: "
            f"critical value {stats.t.ppf(0.975, k - 1):.2f})")


def _pooled_side(r: np.ndarray, n: np.ndarray, g: int, method: str, test: str, level: float,
                 model: str) -> tuple[float, float, float, float]:
    """The sites of one role pooled as ``lacrima.pooling`` pools a correlation.

    ``model`` (:func:`pooled_side_model`) ``"fe"``: the fixed-effect (inverse-variance)
    estimate with its z test, metafor's ``rma(yi, vi, method = "FE")``. ``"re"``: the
    ``[pooling]`` random-effects model; under ``ci = "knha"`` with ``knha_adhoc``: Knapp and
    Hartung's (2003) ad hoc standard error, never below the random-effects Wald one
    (metafor's ``test = "adhoc"``), with the t test on k - 1 df. The untruncated Hartung-Knapp standard
    error shrinks towards 0 when two or three sites agree more closely than their sampling
    variances lead one to expect (0.005 against a Wald 0.071 for r = .30 and .31 at n = 100
    and 97): a pooled side would then be far more precise than any of its sites, and every
    prediction interval around it too narrow.

    Returns the side's r (back-transformed), total n, p and Fisher-z variance.
    """
    yi, vi = fisher_z(r, n, g)
    res = random_effects(yi, vi, method=method, test="knha_adhoc" if test == "knha" else test,
                         level=level)
    est, se, p = ((res.fe_estimate, res.fe_se, res.fe_p_value) if model == "fe"
                  else (res.estimate, res.se, res.p_value))
    return float(np.tanh(est)), float(sum(n.tolist())), float(p), float(se) ** 2


def small_k_note(replication: pd.DataFrame, study: Study) -> str:
    """What the report says next to the verdicts when a side pools at most ``SMALL_K`` sites.

    One sentence per role whose pooled side has 2 to ``SMALL_K`` sites in ``replication``
    (:func:`replication_table`): k, the model and its df; empty when none has.
    """
    cfg = study.section("replication")
    method, test = pooling_settings(study)
    out = []
    for role, col, site_col in (("replication", "k_replication", "replication_site"),
                                ("original", "k_original", "original_site")):
        if replication.empty:
            break
        ks = sorted({int(k) for k in replication.loc[replication[site_col] == voc.POOLED, col]
                     if 2 <= k <= SMALL_K})
        for k in ks:
            out.append(f"The pooled {role} side pools k = {k} sites by "
                       f"{pooled_side_words(cfg, k, method, test)}.")
    return " ".join(out)


def site_roles(study: Study, sites: Sequence[Site]) -> tuple[list[str], list[str]]:
    """Codes of the replication and of the original sites (each sorted).

    The roles are the closed set ``study.ROLES``; ``[replication] replication_site_role``
    and ``original_site_role`` name which is which (default ``"replication"`` and
    ``"original"``). A site with any other role is an error naming the site and its role.
    """
    rep_role, orig_role = study.role_names
    bad = [(s.code, s.role) for s in sites if s.role not in (rep_role, orig_role)]
    if bad:
        raise ValueError(
            "site role not in the closed set {" + ", ".join(sorted({rep_role, orig_role, *ROLES}))
            + "}: " + ", ".join(f"site {c!r} has role {r!r}" for c, r in bad)
            + " (sites/<code>/site.toml [site] role)")
    return (sorted(s.code for s in sites if s.role == rep_role),
            sorted(s.code for s in sites if s.role == orig_role))


def replication_table(site_results: pd.DataFrame, study: Study, sites: Sequence[Site]) -> pd.DataFrame:
    """Replication of every correlation effect: each replication side against each original side.

    Parameters
    ----------
    site_results : DataFrame
        Per-site tidy rows (``vocabulary.RESULTS_COLUMNS``); used are ``correlation``
        (method ``pearson``) and ``partial_correlation`` (``pearson_partial``) rows of
        the families in ``study.section("replication")["families"]``.
    study : Study
        The plan; ``[replication]`` gives roles, alpha, pi_level, small_telescope_power,
        sceptical_level, verdict_p and the ordered verdict rules; ``[pooling]`` the
        estimator and CI method of the pooled sides.
    sites : sequence of Site
        Any number with ``replication_site_role`` and with ``original_site_role``
        (a site without estimates is skipped; no replication site gives no row).

    Returns
    -------
    DataFrame
        Columns exactly ``vocabulary.REPLICATION_COLUMNS``. Per effect (family, x, y,
        covariates), rows for these pairs of sides that have estimates:

        1. each replication site against each original site;
        2. the pooled replication sites (``replication_site = "pooled"``, when two or
           more have an estimate) against each original site;
        3. the pooled replication sites, or the only one, against the pooled originals
           (``original_site = "pooled"``, when two or more originals have an estimate).

        Columns:

        - ``effect``: the family id; with x, y and covariates it names the effect.
        - ``k_original``, ``k_replication``: sites on each side (1 for a site).
        - ``r_original``, ``n_original``, ``p_original`` (raw, two-sided),
          ``original_significant`` (``p_original < alpha``); ``r_replication``,
          ``n_replication``, ``p_replication`` (raw) and ``p_replication_holm``
          (Holm within the family, per replication side). A pooled side has the
          back-transformed pooled estimate (``pooled_side``), the total n and the pooled test's p.
        - ``pi_low``, ``pi_high``, ``in_pi``: Patil-Peng-Leek interval at ``pi_level``
          (variance 1/(n-3-g) of a site, the squared standard error of a pooled side)
          and whether the replication r is inside.
        - ``same_direction``: the two r have the same sign; ``larger_same_direction``:
          and the replication's is larger in absolute value (a "not replicated" verdict
          with this flag is a stronger effect, not a failure to find one).
        - ``p_difference``: two-sided z test of equal correlations.
        - ``r33``, ``p_small_telescope``: Simonsohn's r33 as ``pwr.r.test(n_o - g,
          alpha, small_telescope_power)`` computes it (a pooled original: n_o = 1/v + 3 + g
          from its variance v) and the one-sided test of the replication r against it.
        - ``p_sceptical``: Held's one-sided sceptical p, recalibrated at the golden
          level (ReplicationSuccess ``pSceptical(zo, zr, c, "one.sided", "golden")``)
          with z = atanh(r) / sqrt(v) and c = v_o / v_r.
        - ``verdict_p``: which replication p the rule read (``raw`` or ``holm``).
        - ``verdict``: the first configured rule that holds, over the conditions
          ``same_direction``, ``significant`` (the ``verdict_p`` p < alpha), ``in_pi``,
          ``opposite_significant`` (significant, other direction), ``not_in_pi``,
          ``original_significant`` and ``larger_same_direction``.

    Notes
    -----
    A site's raw p is its row's ``p_value``; when missing it is recomputed from r with the
    t test on n - 2 - g df. Pooled sides are pooled on Fisher z with variance
    1/(n - 3 - g) by ``[replication] pooled_side`` (:func:`pooled_side_model`; default
    ``"auto"``: fixed effect, metafor ``rma(..., method = "FE")``, for a side of at most
    ``SMALL_K`` sites; random effects above, as ``lacrima.pooling`` pools (``[pooling]
    method`` and ``ci``, e.g. REML with the Hartung-Knapp test on k - 1 df), the
    Hartung-Knapp standard error in its ad hoc form (never below the Wald one;
    ``ci = "knha_adhoc"``, metafor ``rma(..., test = "adhoc")``, see :func:`_pooled_side`));
    their ``p_replication_holm`` adjusts the pooled p values of the family's effects together.

    Every pair of sides is a row of arrays and each column is computed for all rows at once
    (:func:`_assess`, the scalar functions' formulas elementwise; pwr's r33 solved once per
    distinct n): 146,412 rows (40 replication x 85 original sites, 42 effects) in about 0.3 s.
    """
    cfg = study.section("replication")
    verdict_p_choice(cfg)
    reps, originals = site_roles(study, sites)
    families = tuple(cfg.get("families", ()))
    method, test = pooling_settings(study)

    rows = voc.blank_covariates(site_results.loc[
        site_results["family"].isin(families)
        & site_results["analysis"].isin(tuple(ANALYSES))
        & (site_results["method"] == site_results["analysis"].map(ANALYSES))
    ])
    for col in ("estimate", "n", "p_value", "p_adjusted"):
        rows[col] = pd.to_numeric(rows[col], errors="coerce").astype(float)
    rows = rows[rows["estimate"].notna() & rows["n"].notna() & (rows["estimate"].abs() < 1)]
    if not reps or rows.empty:
        return pd.DataFrame(columns=list(voc.REPLICATION_COLUMNS))

    # The sides with estimates: per effect, a site's first row with n - 3 - g > 0, the
    # replication sites first, each role by code; then the pooled side of each role.
    key = ["family", "x", "y", "covariates"]
    rank = {**{c: i for i, c in enumerate(reps)},
            **{c: len(reps) + i for i, c in enumerate(originals)}}
    n_cov = {c: len(voc.covariate_names(c)) for c in rows["covariates"].unique()}
    rows = rows.assign(_g=rows["covariates"].map(n_cov), _rank=rows["site"].map(rank))
    rows = rows[(rows["n"] - 3 - rows["_g"] > 0) & rows["_rank"].notna()]
    rows = rows.drop_duplicates(key + ["site"]).sort_values(key + ["_rank"], kind="stable")
    if rows.empty:
        return pd.DataFrame(columns=list(voc.REPLICATION_COLUMNS))
    code = rows["site"].to_numpy(dtype=object)
    r, n = rows["estimate"].to_numpy(dtype=float), rows["n"].to_numpy(dtype=float)
    g = rows["_g"].to_numpy(dtype=np.int64)
    p = rows["p_value"].to_numpy(dtype=float).copy()
    p_holm = rows["p_adjusted"].to_numpy(dtype=float)
    for i in np.flatnonzero(np.isnan(p)):          # a missing p: the t test of r on n - 2 - g df
        p[i] = _correlation_p(float(r[i]), float(n[i]), int(g[i]))
    is_rep = (rows["_rank"] < len(reps)).to_numpy()
    key_values = [rows[c].to_numpy(dtype=object) for c in key]
    changed = np.logical_or.reduce([v[1:] != v[:-1] for v in key_values])
    starts = np.flatnonzero(np.r_[True, changed])
    ends = np.r_[starts[1:], len(rows)]

    # Pooled sides go after the sites in one table of sides; pairs are indices into it.
    pooled: list[tuple] = []        # (k, r, n, p, var, g) of each pooled side
    pooled_rep_of: dict[str, list[int]] = {}     # family -> its pooled replication sides
    rep_at, orig_at, effect_at = [], [], []
    for lo, hi in zip(starts, ends):
        n_rep = int(is_rep[lo:hi].sum())
        if n_rep == 0 or n_rep == hi - lo:
            continue
        reps_i, origs_i = np.arange(lo, lo + n_rep), np.arange(lo + n_rep, hi)
        at_rep, at_orig = [np.repeat(reps_i, len(origs_i))], [np.tile(origs_i, len(reps_i))]
        side_of = {}
        for role, idx in (("rep", reps_i), ("orig", origs_i)):
            if len(idx) > 1:
                side_of[role] = len(code) + len(pooled)
                pooled.append((len(idx), *_pooled_side(r[idx], n[idx], int(g[lo]), method, test,
                                                       study.level,
                                                       pooled_side_model(cfg, len(idx))),
                               g[lo]))
        if "rep" in side_of:
            at_rep.append(np.full(len(origs_i), side_of["rep"]))
            at_orig.append(origs_i)
            pooled_rep_of.setdefault(key_values[0][lo], []).append(side_of["rep"])
        if "orig" in side_of:
            at_rep.append([side_of.get("rep", reps_i[0])])
            at_orig.append([side_of["orig"]])
        rep_at += at_rep
        orig_at += at_orig
        effect_at.append(np.full(sum(len(a) for a in at_rep), lo))
    if not rep_at:
        return pd.DataFrame(columns=list(voc.REPLICATION_COLUMNS))
    rep_at, orig_at = np.concatenate(rep_at), np.concatenate(orig_at)
    effect_at = np.concatenate(effect_at)

    k_p, r_p, n_p, p_p, var_p, g_p = (np.array(c) for c in zip(*pooled)) if pooled else [[]] * 6
    side = {
        "code": np.concatenate([code, np.full(len(pooled), voc.POOLED, dtype=object)]),
        "k": np.concatenate([np.ones(len(code), dtype=np.int64),
                             np.asarray(k_p, dtype=np.int64)]),
        "r": np.concatenate([r, np.asarray(r_p, dtype=float)]),
        "n": np.concatenate([n, np.asarray(n_p, dtype=float)]),
        "p": np.concatenate([p, np.asarray(p_p, dtype=float)]),
        "p_holm": np.concatenate([p_holm, np.full(len(pooled), np.nan)]),
        "var": np.concatenate([1.0 / (n - 3 - g), np.asarray(var_p, dtype=float)]),
        "pooled": np.r_[np.zeros(len(code), dtype=bool), np.ones(len(pooled), dtype=bool)],
        "g": np.concatenate([g, np.asarray(g_p, dtype=np.int64)]),
    }
    # Holm within the family for the pooled replication side, as for any site's p values.
    for idx in pooled_rep_of.values():
        side["p_holm"][idx] = adjust_pvalues(side["p"][idx], "holm")

    cols = _assess(side["r"][orig_at], side["n"][orig_at], side["p"][orig_at],
                   side["var"][orig_at], side["pooled"][orig_at], side["r"][rep_at],
                   side["p"][rep_at], side["p_holm"][rep_at], side["var"][rep_at],
                   side["g"][rep_at].astype(float), settings=cfg)
    out = {c: v[effect_at] for c, v in zip(("effect", "x", "y", "covariates"), key_values)}
    out.update(original_site=side["code"][orig_at], replication_site=side["code"][rep_at],
               k_original=side["k"][orig_at], k_replication=side["k"][rep_at],
               n_replication=side["n"][rep_at], **cols)
    return pd.DataFrame(out, columns=list(voc.REPLICATION_COLUMNS))
