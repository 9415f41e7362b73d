"""Random-effects meta-analysis of ``(yi, vi)``, the second of the two pooling steps.

One function, :func:`random_effects`, shaped like metafor's ``rma(yi, vi, method, test)``
and statsmodels' ``combine_effects``: it returns a frozen
:class:`RandomEffectsResult` whose ``to_frame()`` gives tidy rows (random-effects
and fixed-effect models side by side).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

__all__ = ["RandomEffectsResult", "random_effects", "moderator_test", "METAFOR_TEST", "ESTIMATORS", "TESTS", "FRAME_COLUMNS"]

ESTIMATORS = ("REML", "DL", "PM")
TESTS = ("knha", "knha_adhoc", "z")
# lacrima's CI method -> metafor's rma(test = ...)
METAFOR_TEST = {"knha": "knha", "knha_adhoc": "adhoc", "z": "z"}
# Fewer studies than this and no prediction interval is given (see Notes of random_effects).
PI_MIN_K = 3

FRAME_COLUMNS = (
    "model", "method", "test", "level", "k", "estimate", "se", "ci_low", "ci_high",
    "statistic", "df", "p_value", "pi_low", "pi_high", "tau2", "tau2_ci_low", "tau2_ci_high",
    "tau", "i2", "h2", "q", "q_df", "q_p", "converged", "note",
)


@dataclass(frozen=True)
class RandomEffectsResult:
    """Random-effects (and fixed-effect) pooled estimate on the scale of ``yi``.

    Attributes
    ----------
    estimate, se, ci_low, ci_high : float
        Random-effects estimate, its standard error (Knapp-Hartung when
        ``test = "knha"``) and the confidence interval at ``level``.
    statistic, df, p_value : float
        Test of estimate = 0: t on ``df = k - 1`` for ``knha``, z (``df`` NaN) for ``z``.
    pi_low, pi_high : float
        Prediction interval for the true effect in a new study (NaN when
        ``k < 3``, see ``note``).
    tau2, tau2_ci_low, tau2_ci_high, tau : float
        Between-study variance, its Q-profile confidence interval and its square root.
    i2, h2 : float
        I-squared (percent) and H-squared (Higgins & Thompson 2002, metafor's general form).
    q, q_df, q_p : float
        Cochran's Q, its degrees of freedom ``k - 1`` and its chi-square p value.
    fe_estimate, fe_se, fe_ci_low, fe_ci_high, fe_statistic, fe_p_value : float
        Fixed-effect (inverse-variance) estimate with a z test and normal CI.
    k : int
        Number of studies pooled.
    method, test : str
        tau2 estimator (``REML``, ``DL``, ``PM``) and CI method (``knha``, ``z``).
    level : float
        Confidence level of every interval.
    converged : bool
        Whether the tau2 estimator converged (always True for DL).
    note : str
        Plain-language explanation of anything not estimated (empty when all is).
    """

    estimate: float
    se: float
    ci_low: float
    ci_high: float
    statistic: float
    df: float
    p_value: float
    pi_low: float
    pi_high: float
    tau2: float
    tau2_ci_low: float
    tau2_ci_high: float
    tau: float
    i2: float
    h2: float
    q: float
    q_df: float
    q_p: float
    fe_estimate: float
    fe_se: float
    fe_ci_low: float
    fe_ci_high: float
    fe_statistic: float
    fe_p_value: float
    k: int
    method: str
    test: str
    level: float
    converged: bool
    note: str

    def to_frame(self) -> pd.DataFrame:
        """Two tidy rows, ``model`` = ``random`` then ``fixed``; columns ``FRAME_COLUMNS``.

        The fixed row has ``tau2 = 0`` by definition, no prediction interval, no I2/H2
        (those describe the random-effects model) and the same Q, which is a
        fixed-effect statistic in both.
        """
        d = asdict(self)
        random = {c: d.get(c) for c in FRAME_COLUMNS if c != "model"}
        random["model"] = "random"
        nan = float("nan")
        fixed = dict(random, model="fixed", method="FE", test="z", estimate=self.fe_estimate,
                     se=self.fe_se, ci_low=self.fe_ci_low, ci_high=self.fe_ci_high,
                     statistic=self.fe_statistic, df=nan, p_value=self.fe_p_value,
                     pi_low=nan, pi_high=nan, tau2=0.0, tau2_ci_low=nan, tau2_ci_high=nan,
                     tau=0.0, i2=nan, h2=nan, converged=True, note="")
        return pd.DataFrame([random, fixed], columns=list(FRAME_COLUMNS))


def _q_generalised(tau2: float, yi: np.ndarray, vi: np.ndarray) -> float:
    """Generalised Q: sum of (y - mu(tau2))^2 / (v + tau2); decreasing in tau2."""
    w = 1.0 / (vi + tau2)
    mu = np.sum(w * yi) / np.sum(w)
    return float(np.sum(w * (yi - mu) ** 2))


def _solve_q(target: float, yi: np.ndarray, vi: np.ndarray) -> float:
    """tau2 >= 0 at which the generalised Q equals ``target`` (0 when Q(0) is below it)."""
    f = lambda t: _q_generalised(t, yi, vi) - target  # noqa: E731
    if f(0.0) <= 0:
        return 0.0
    hi = max(1.0, 10 * float(np.var(yi)) + float(np.max(vi)))
    # Q(tau2) falls to 0 as tau2 grows, so a bracket always exists; widen until found.
    for _ in range(200):
        if f(hi) < 0:
            break
        hi *= 10
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-14, rtol=1e-12, maxiter=500))


def _tau2_dl(yi: np.ndarray, vi: np.ndarray) -> float:
    w = 1.0 / vi
    q = _q_generalised(0.0, yi, vi)
    c = np.sum(w) - np.sum(w**2) / np.sum(w)
    return max(0.0, (q - (len(yi) - 1)) / c) if c > 0 else 0.0


def _reml_loglik(tau2: float, yi: np.ndarray, vi: np.ndarray, x: np.ndarray) -> float:
    """Restricted log-likelihood of ``yi ~ x`` (metafor's ``ll`` for REML)."""
    w = 1.0 / (vi + tau2)
    a = x.T @ (w[:, None] * x)
    b = np.linalg.solve(a, x.T @ (w * yi))
    return float(-0.5 * (len(yi) - x.shape[1]) * np.log(2 * np.pi)
                 - 0.5 * np.sum(np.log(vi + tau2)) - 0.5 * np.linalg.slogdet(a)[1]
                 - 0.5 * np.sum(w * (yi - x @ b) ** 2))


# Fisher scoring runs until tau2 changes by at most this (metafor's ``threshold``; its
# default 1e-5 can stop up to ~1e-5 short of the maximiser, so every REML reference is
# metafor refitted with control = list(threshold = 1e-12, maxiter = 1000)).
REML_THRESHOLD = 1e-12
REML_MAXITER = 1000


def _tau2_reml(yi: np.ndarray, vi: np.ndarray, x: np.ndarray | None = None,
               max_iter: int = REML_MAXITER, tol: float = REML_THRESHOLD) -> tuple[float, bool]:
    """The REML maximiser of tau2: metafor's Fisher scoring, run to convergence.

    ``rma.uni(method = "REML")``'s iteration (the start ``max(0, HE)``;
    ``adj = (Y'PPY - tr P) / tr(PP)`` halved while ``tau2 + adj < 0``) until tau2 changes
    by at most ``tol``; then the boundary is checked: where the restricted likelihood at
    tau2 = 0 is at least that at the end point (the iteration approaching 0 by halvings),
    tau2 is exactly 0. So tau2 is the maximiser to ~1e-12, interior or on the boundary,
    whatever threshold a tool's default stops at. ``x`` is the design (default: intercept
    only, the plain random-effects model). With ``P = W - W X A^-1 X' W``, ``A = X'WX``,
    the traces need only p x p matrices: ``tr P = sum w - tr(A^-1 X'W^2 X)``,
    ``tr PP = sum w^2 - 2 tr(A^-1 X'W^3 X) + tr((A^-1 X'W^2 X)^2)``, never a k x k matrix.
    """
    k = len(yi)
    x = np.ones((k, 1)) if x is None else x
    p = x.shape[1]
    ols = np.linalg.lstsq(x, yi, rcond=None)[0]
    tr_pv = np.sum(vi) - np.trace(np.linalg.solve(x.T @ x, x.T @ (vi[:, None] * x)))
    tau2 = max(0.0, float(np.sum((yi - x @ ols) ** 2) - tr_pv) / (k - p))
    converged = False
    for _ in range(max_iter):
        w = 1.0 / (vi + tau2)
        a_inv = np.linalg.inv(x.T @ (w[:, None] * x))
        py = w * (yi - x @ (a_inv @ (x.T @ (w * yi))))
        b2 = a_inv @ (x.T @ ((w ** 2)[:, None] * x))
        tr_p = np.sum(w) - np.trace(b2)
        tr_pp = (np.sum(w ** 2) - 2 * np.trace(a_inv @ (x.T @ ((w ** 3)[:, None] * x)))
                 + np.trace(b2 @ b2))
        adj = (np.sum(py ** 2) - tr_p) / tr_pp if tr_pp > 0 else 0.0
        if not np.isfinite(adj):
            adj = 0.0
        while tau2 + adj < 0:
            adj /= 2
        old, tau2 = tau2, float(tau2 + adj)
        if abs(old - tau2) <= tol:
            converged = True
            break
    if tau2 > 0 and _reml_loglik(0.0, yi, vi, x) >= _reml_loglik(tau2, yi, vi, x):
        tau2 = 0.0
    return max(0.0, tau2), converged


def moderator_test(yi, vi, moderator, test: str = "knha") -> dict[str, float]:
    """Test of a two-level moderator in a mixed-effects meta-regression (REML).

    Parameters
    ----------
    yi, vi : array_like
        Effect sizes and sampling variances, as for :func:`random_effects`.
    moderator : array_like
        One label per study with exactly two distinct values (e.g. the site's role,
        ``original`` or ``replication``); the first in sorted order is the reference.
    test : {"knha", "knha_adhoc", "z"}
        As in :func:`random_effects`.

    Returns
    -------
    dict
        ``qm``, ``qm_df`` (numerator df, 1), ``qm_df2`` (denominator df ``k - 2`` for
        the F test of ``knha``/``knha_adhoc``; NaN for the chi-square of ``z``),
        ``qm_p``, ``estimate`` (difference of the second level from the first),
        ``tau2`` (residual). All NaN when fewer than 3 studies or not two levels.

    Notes
    -----
    metafor's ``rma(yi, vi, mods = ~ moderator, method = "REML", test = test)`` with
    ``test`` ``"knha"``, ``"adhoc"`` or ``"z"``: ``QM = b^2 / Var(b)``; under
    Knapp-Hartung ``Var(b)`` is scaled by ``s^2 = sum w e^2 / (k - 2)`` (by
    ``max(1, s^2)`` under the ad hoc rule) and ``QM`` is F(1, k - 2); under ``z`` it
    is chi-square(1).
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    y, v = _validate(yi, vi)
    labels = np.asarray(moderator).astype(str)
    levels = np.unique(labels)
    nan = float("nan")
    out = {"qm": nan, "qm_df": nan, "qm_df2": nan, "qm_p": nan, "estimate": nan, "tau2": nan}
    if len(labels) != len(y) or len(levels) != 2 or len(y) < 3:
        return out
    x = np.column_stack([np.ones(len(y)), (labels == levels[1]).astype(float)])
    tau2, _ = _tau2_reml(y, v, x)
    w = 1.0 / (v + tau2)
    vb = np.linalg.inv(x.T @ (w[:, None] * x))
    b = vb @ (x.T @ (w * y))
    k, p = x.shape
    if test == "z":
        qm = b[1] ** 2 / vb[1, 1]
        return dict(out, qm=float(qm), qm_df=1.0, qm_p=float(stats.chi2.sf(qm, 1)),
                    estimate=float(b[1]), tau2=tau2)
    s2 = float(np.sum(w * (y - x @ b) ** 2) / (k - p))
    if test == "knha_adhoc":
        s2 = max(1.0, s2)
    qm = b[1] ** 2 / (s2 * vb[1, 1])
    return dict(out, qm=float(qm), qm_df=1.0, qm_df2=float(k - p),
                qm_p=float(stats.f.sf(qm, 1, k - p)), estimate=float(b[1]), tau2=tau2)


def _tau2_pm(yi: np.ndarray, vi: np.ndarray) -> float:
    return _solve_q(len(yi) - 1, yi, vi)


def _validate(yi, vi) -> tuple[np.ndarray, np.ndarray]:
    y = np.atleast_1d(np.asarray(yi, dtype=float))
    v = np.atleast_1d(np.asarray(vi, dtype=float))
    if y.ndim != 1 or v.ndim != 1 or y.shape != v.shape:
        raise ValueError(f"yi and vi must be 1-d of equal length, got {y.shape} and {v.shape}")
    if y.size == 0:
        raise ValueError("no studies to pool: yi is empty")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(v))):
        raise ValueError("yi and vi must be finite; drop studies with missing effects first")
    if np.any(v <= 0):
        raise ValueError("every sampling variance vi must be positive")
    return y, v


def random_effects(yi, vi, method: str = "REML", test: str = "knha", level: float = 0.95,
                   max_iter: int = REML_MAXITER, tol: float = REML_THRESHOLD) -> RandomEffectsResult:
    """Random-effects meta-analysis with a fixed-effect estimate beside it.

    Parameters
    ----------
    yi : array_like
        Effect sizes on the pooling scale (Fisher z, Hedges' g, log odds ratio ...).
    vi : array_like
        Their sampling variances, all positive.
    method : {"REML", "DL", "PM"}, default "REML"
        tau2 estimator: restricted maximum likelihood, DerSimonian-Laird, Paule-Mandel.
    test : {"knha", "knha_adhoc", "z"}, default "knha"
        Hartung-Knapp-Sidik-Jonkman t on ``k - 1`` df (metafor ``test = "knha"``); the
        same with the ad hoc truncation ``s^2 = max(1, s^2)`` (Knapp & Hartung 2003;
        metafor ``test = "adhoc"``); or the normal (Wald) z (``test = "z"``).
    level : float, default 0.95
        Level of the confidence, prediction and tau2 intervals.
    max_iter, tol : int, float
        Iteration limit and convergence threshold on tau2 for REML (metafor's
        ``control = list(maxiter, threshold)``; see Notes).

    Returns
    -------
    RandomEffectsResult
        Every field documented on the class; ``to_frame()`` gives rows ``random`` and
        ``fixed`` with columns ``FRAME_COLUMNS``.

    Notes
    -----
    With :math:`w_i = 1/(v_i + \\hat\\tau^2)`, the estimate is
    :math:`\\hat\\mu = \\sum w_i y_i / \\sum w_i`. The Knapp-Hartung standard error is
    :math:`\\sqrt{\\sum w_i (y_i - \\hat\\mu)^2 / ((k-1) \\sum w_i)}` (Hartung & Knapp
    2001; Sidik & Jonkman 2002), untruncated as in metafor's ``test = "knha"``.
    DL: :math:`\\max(0, (Q - (k-1)) / (\\sum w - \\sum w^2 / \\sum w))` with
    :math:`w = 1/v` (DerSimonian & Laird 1986). PM solves
    :math:`\\sum w_i (y_i - \\hat\\mu)^2 = k - 1` (Paule & Mandel 1982). REML uses
    Fisher scoring on the restricted log-likelihood (Viechtbauer 2005), metafor's step for
    step (Hedges start, step halving at 0) but run to the maximiser (threshold 1e-12),
    and exactly 0 where the maximiser is on the boundary: metafor's default threshold
    (1e-5) can stop up to ~1e-5 short in tau2, so the references are metafor refitted with
    ``control = list(threshold = 1e-12, maxiter = 1000)``.
    The tau2 interval is the Q-profile interval: the tau2 values where the
    generalised Q equals the chi-square(k-1) quantiles (Viechtbauer 2007).
    :math:`I^2 = 100\\,\\hat\\tau^2 / (\\hat\\tau^2 + s^2)` and
    :math:`H^2 = (\\hat\\tau^2 + s^2) / s^2` with the typical within-study variance
    :math:`s^2 = (k-1) \\sum w / ((\\sum w)^2 - \\sum w^2)`, :math:`w = 1/v`
    (Higgins & Thompson 2002), as metafor reports them. The prediction interval is
    :math:`\\hat\\mu \\pm c \\sqrt{SE^2 + \\hat\\tau^2}` with :math:`c` the t(k-1)
    quantile under ``knha`` and the normal one under ``z``, metafor's
    ``predict.rma``; Higgins, Thompson & Spiegelhalter (2009) use t(k-2) instead.

    Small k, the documented rule (no crash, no unexplained NaN; ``note`` says it):

    - k = 1: the estimate is the single study's with its normal CI (random and fixed
      coincide); tau2, I2, H2, Q's p and the prediction interval are not estimable.
    - k = 2: everything is estimated (t on 1 df under ``knha``, very wide) except the
      prediction interval, left blank because two studies cannot support one.

    References
    ----------
    DerSimonian, R., & Laird, N. (1986). Controlled Clinical Trials, 7, 177-188.
    Hartung, J., & Knapp, G. (2001). Statistics in Medicine, 20, 3875-3889.
    Viechtbauer, W. (2005). Journal of Educational and Behavioral Statistics, 30, 261-293.
    Viechtbauer, W. (2007). Statistics in Medicine, 26, 37-52.
    Viechtbauer, W. (2010). Conducting meta-analyses in R with the metafor package.
    Journal of Statistical Software, 36(3).

    Examples
    --------
    >>> res = random_effects([0.1, 0.3, 0.2], [0.01, 0.02, 0.015], method="DL", test="z")
    >>> round(res.estimate, 4), res.k
    (0.1769, 3)
    """
    if method not in ESTIMATORS:
        raise ValueError(f"method must be one of {ESTIMATORS}, got {method!r}")
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be strictly between 0 and 1, got {level}")
    y, v = _validate(yi, vi)
    k = y.size
    nan = float("nan")
    z_crit = float(stats.norm.ppf((1 + level) / 2))

    # Fixed effect: inverse-variance weights, z test.
    w_fe = 1.0 / v
    fe = float(np.sum(w_fe * y) / np.sum(w_fe))
    fe_se = float(np.sqrt(1.0 / np.sum(w_fe)))
    fe_z = fe / fe_se
    fe_p = float(2 * stats.norm.sf(abs(fe_z)))
    q = _q_generalised(0.0, y, v)

    if k == 1:
        return RandomEffectsResult(
            estimate=fe, se=fe_se, ci_low=fe - z_crit * fe_se, ci_high=fe + z_crit * fe_se,
            statistic=fe_z, df=nan, p_value=fe_p, pi_low=nan, pi_high=nan,
            tau2=nan, tau2_ci_low=nan, tau2_ci_high=nan, tau=nan, i2=nan, h2=nan,
            q=0.0, q_df=0.0, q_p=nan,
            fe_estimate=fe, fe_se=fe_se, fe_ci_low=fe - z_crit * fe_se,
            fe_ci_high=fe + z_crit * fe_se, fe_statistic=fe_z, fe_p_value=fe_p,
            k=1, method=method, test="z", level=level, converged=True,
            note="k = 1: a single study, so its own estimate with a normal CI; tau2, I2, H2, "
                 "the Q test and the prediction interval are not estimable",
        )

    converged = True
    if method == "DL":
        tau2 = _tau2_dl(y, v)
    elif method == "PM":
        tau2 = _tau2_pm(y, v)
    else:
        tau2, converged = _tau2_reml(y, v, max_iter=max_iter, tol=tol)

    w = 1.0 / (v + tau2)
    mu = float(np.sum(w * y) / np.sum(w))
    if test in ("knha", "knha_adhoc"):
        s2 = float(np.sum(w * (y - mu) ** 2) / (k - 1))
        if test == "knha_adhoc":
            s2 = max(1.0, s2)  # metafor's test = "adhoc": never narrower than the z interval
        se = float(np.sqrt(s2 / np.sum(w)))
        df = float(k - 1)
        crit = float(stats.t.ppf((1 + level) / 2, df))
        dist_sf = lambda s: 2 * stats.t.sf(abs(s), df)  # noqa: E731
    else:
        se = float(np.sqrt(1.0 / np.sum(w)))
        df = nan
        crit = z_crit
        dist_sf = lambda s: 2 * stats.norm.sf(abs(s))  # noqa: E731
    if se > 0:
        statistic = mu / se
        p_value = float(dist_sf(statistic))
    else:
        # Identical effects: the KH standard error is 0, the test is degenerate.
        statistic = float(np.sign(mu) * np.inf) if mu != 0 else 0.0
        p_value = 0.0 if mu != 0 else 1.0

    alpha = 1 - level
    tau2_lo = _solve_q(float(stats.chi2.ppf(1 - alpha / 2, k - 1)), y, v)
    tau2_hi = _solve_q(float(stats.chi2.ppf(alpha / 2, k - 1)), y, v)

    s2 = (k - 1) * np.sum(w_fe) / (np.sum(w_fe) ** 2 - np.sum(w_fe**2))
    i2 = float(100 * tau2 / (tau2 + s2))
    h2 = float((tau2 + s2) / s2)

    notes = []
    if k < PI_MIN_K:
        pi_low = pi_high = nan
        notes.append(f"k = {k}: no prediction interval (needs at least {PI_MIN_K} studies)")
    else:
        half = crit * np.sqrt(se**2 + tau2)
        pi_low, pi_high = mu - half, mu + half
    if not converged:
        notes.append(f"REML did not converge in {max_iter} iterations; tau2 is the last iterate")

    return RandomEffectsResult(
        estimate=mu, se=se, ci_low=mu - crit * se, ci_high=mu + crit * se,
        statistic=float(statistic), df=df, p_value=p_value,
        pi_low=float(pi_low), pi_high=float(pi_high),
        tau2=float(tau2), tau2_ci_low=tau2_lo, tau2_ci_high=tau2_hi, tau=float(np.sqrt(tau2)),
        i2=i2, h2=h2, q=q, q_df=float(k - 1), q_p=float(stats.chi2.sf(q, k - 1)),
        fe_estimate=fe, fe_se=fe_se, fe_ci_low=fe - z_crit * fe_se, fe_ci_high=fe + z_crit * fe_se,
        fe_statistic=fe_z, fe_p_value=fe_p,
        k=k, method=method, test=test, level=level, converged=converged, note="; ".join(notes),
    )
