"""Individual-participant-data models on the stacked sites (protocol section 7, second point).

For every (x, y) pair of the families in ``study.section("ipd")["families"]``:

- OLS ``y ~ x * C(site)`` against ``y ~ x + C(site)``: the F test of the x-by-site
  interaction is the heterogeneity test (rows ``analysis = "ipd_interaction"``);
- mixed model ``y ~ x`` with a random intercept and a random slope of x by site, fitted
  by REML (statsmodels ``MixedLM``'s likelihood, computed from per-site sums), for the
  pooled slope (rows ``analysis = "mixed_model"``). The random-slope variance is often
  on the boundary; every such problem or failure is written into ``method`` rather than
  hidden.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from lacrima import vocabulary as voc
from lacrima.study import Study

__all__ = ["ipd_models", "ipd_from_moments", "site_moments", "interaction_test", "mixed_slope"]

MIN_SITES = 2
MIN_ROWS_PER_SITE = 3  # an intercept, a slope and one residual degree of freedom per site


def _float(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


# Problems of a mixed-model fit, in the words statsmodels' MixedLM warnings were shortened
# to (so methods read the same as in earlier runs).
_BOUNDARY = "random-effect variance on the boundary (estimated as 0)"
_SINGULAR = "random-effect covariance singular"
# Error messages, shortened to the fact a reader needs.
_PLAIN = (
    ("boundary of the parameter space", "random-effect variance on the boundary (estimated as 0)"),
    ("covariance is singular", "random-effect covariance singular"),
    ("not positive definite", "Hessian not positive definite"),
    ("failed to converge", "optimizer did not converge at first try"),
    ("Gradient optimization failed", "optimizer failed"),
)
_DROP = ("Retrying MixedLM optimization", "trying a different optimizer")


def _short(messages: list[str]) -> str:
    seen: list[str] = []
    for m in messages:
        text = str(m).strip().split("\n")[0].rstrip(".")
        if not text or any(d in text for d in _DROP):
            continue
        text = next((plain for key, plain in _PLAIN if key in text), text[:80])
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def interaction_test(data: pd.DataFrame, level: float = 0.95) -> dict[str, Any]:
    """F test of the x-by-site interaction and the common within-site slope.

    Parameters
    ----------
    data : DataFrame
        Columns ``x``, ``y`` (float) and ``site`` (str), no missing values.
    level : float
        Confidence level of the slope's interval.

    Returns
    -------
    dict
        ``estimate``, ``ci_low``, ``ci_high``: slope of x in ``y ~ x + C(site)``;
        ``statistic``, ``df``, ``p_value``: F of the interaction with numerator df
        ``k - 1`` (denominator df ``n - 2k``); ``n``, ``k``.

    Notes
    -----
    Nested-model F test: :math:`F = ((RSS_0 - RSS_1)/(k-1)) / (RSS_1/(n-2k))`, with
    :math:`RSS_1` from ``y ~ x * C(site)`` and :math:`RSS_0` from ``y ~ x + C(site)``
    (the same numbers as statsmodels ``OLSResults.compare_f_test`` on the two formula
    fits; Cooper & Patall 2009 on IPD heterogeneity). Both models are computed from
    per-site centred sums of squares and cross-products, never from a design matrix with
    one dummy per site: at 1,000 sites x 1,000 rows that matrix alone would be 16 GB.
    Within site :math:`s`, :math:`RSS_{1,s} = S_{yy,s} - S_{xy,s}^2 / S_{xx,s}`; the common
    slope is :math:`b = \sum S_{xy} / \sum S_{xx}` with
    :math:`RSS_0 = \sum S_{yy} - (\sum S_{xy})^2 / \sum S_{xx}` on ``n - k - 1`` df.
    A site whose x does not vary has no slope of its own (one parameter fewer, as a
    rank-deficient design would count it).
    """
    return _interaction_from_sums(_sums(data), level)


_SUMS = ("n", "sx", "sy", "sxx", "sxy", "syy")


def _sums(data: pd.DataFrame) -> np.ndarray:
    """Per-site raw sums of a pair frame: k x 6 array of ``n, sum x, sum y, sum x^2, sum xy, sum y^2``."""
    codes, names = pd.factorize(data["site"].to_numpy())
    return _bincount_sums(codes, len(names), data["x"].to_numpy(float), data["y"].to_numpy(float))


def _bincount_sums(codes: np.ndarray, k: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``_SUMS`` per site code 0..k-1 of complete (x, y) pairs: k x 6 (a site without pairs: zeros)."""
    return np.column_stack([np.bincount(codes, minlength=k).astype(float)]
                           + [np.bincount(codes, weights=w, minlength=k)
                              for w in (x, y, x * x, x * y, y * y)])


def _interaction_from_sums(s: np.ndarray, level: float) -> dict[str, Any]:
    n_s, sx, sy = s[:, 0], s[:, 1], s[:, 2]
    sxx = s[:, 3] - sx ** 2 / n_s
    sxy = s[:, 4] - sx * sy / n_s
    syy = s[:, 5] - sy ** 2 / n_s
    # a site whose x is constant (up to rounding) has no slope of its own
    flat = sxx <= 1e-12 * np.maximum(s[:, 3], 1.0)
    k, n = len(n_s), float(n_s.sum())
    rss1 = float(np.sum(np.where(flat, syy, syy - sxy ** 2 / np.where(flat, 1.0, sxx))))
    sxx_tot, sxy_tot = float(sxx[~flat].sum()), float(sxy[~flat].sum())
    slope = sxy_tot / sxx_tot
    rss0 = float(syy.sum()) - sxy_tot ** 2 / sxx_tot
    df1 = n - (2 * k - int(flat.sum()))
    df0 = n - k - 1
    df_diff = df0 - df1
    f = ((rss0 - rss1) / df_diff) / (rss1 / df1)
    se = np.sqrt(rss0 / df0 / sxx_tot)
    half = stats.t.ppf(0.5 + level / 2, df0) * se
    return {"estimate": slope, "ci_low": slope - half, "ci_high": slope + half,
            "statistic": float(f), "df": float(df_diff), "p_value": float(stats.f.sf(f, df_diff, df1)),
            "n": int(n), "k": int(k), "method": f"ols_interaction_F(df2={int(df1)})"}


def _site_moments(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-site cross-products of ``X = [1, x]`` and ``y`` from :func:`_sums`: ``X'X`` (k x 2 x 2), ``X'y``, ``y'y``, n."""
    xtx = np.empty((len(s), 2, 2))
    xtx[:, 0, 0], xtx[:, 0, 1], xtx[:, 1, 0], xtx[:, 1, 1] = s[:, 0], s[:, 1], s[:, 1], s[:, 3]
    return xtx, np.stack([s[:, 2], s[:, 4]], axis=1), s[:, 5], float(s[:, 0].sum())


def _psi(theta: np.ndarray) -> np.ndarray:
    """Random-effects covariance relative to the residual variance, from its packed Cholesky factor."""
    q = 1 if len(theta) == 1 else 2
    chol = np.zeros((q, q))
    chol[np.tril_indices(q)] = theta
    return chol @ chol.T


def _gls_parts(theta: np.ndarray, xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray):
    """GLS pieces at ``theta``: fixed effects, ``r'V^-1 r``, ``X'V^-1 X`` and ``I + Z'Z Psi`` per site.

    Within site j, ``V_j = I + Z_j Psi Z_j'`` (in units of the residual variance) with
    ``Z_j`` the first q columns of ``X_j``. By Woodbury, ``V_j^-1 = I - Z_j M_j Z_j'``
    with ``M_j = Psi (I + Z_j'Z_j Psi)^-1``, so every quantity needs only the site's
    cross-products, never its rows, and stays finite when ``Psi`` is singular (where
    inverting ``Psi`` itself, as statsmodels does, loses all precision).
    """
    psi = _psi(theta)
    q = len(psi)
    inner = np.eye(q) + xtx[:, :q, :q] @ psi
    m = psi @ np.linalg.inv(inner)
    xz_m = xtx[:, :, :q] @ m
    xvx = (xtx - xz_m @ xtx[:, :q, :]).sum(axis=0)
    xvy = (xty - np.einsum("kij,kj->ki", xz_m, xty[:, :q])).sum(axis=0)
    yvy = float((yty - np.einsum("ki,kij,kj->k", xty[:, :q], m, xty[:, :q])).sum())
    fe = np.linalg.solve(xvx, xvy)
    return fe, yvy - fe @ xvy, xvx, inner


def _neg_reml(theta: np.ndarray, xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray,
              n: float) -> float:
    """Minus the profile REML log-likelihood per observation (up to a constant)."""
    try:
        _, qf, xvx, inner = _gls_parts(theta, xtx, xty, yty)
    except np.linalg.LinAlgError:
        return np.inf
    if not qf > 0:
        return np.inf
    return ((n - 2) * np.log(qf) + np.linalg.slogdet(inner)[1].sum()
            + np.linalg.slogdet(xvx)[1]) / (2 * n)


def _reml_fit(moments: tuple, q: int) -> tuple[np.ndarray, bool]:
    """REML optimum of the packed Cholesky factor of ``Psi`` (q = 2: ``~x``; q = 1: ``~1``).

    L-BFGS-B from statsmodels' own start (``Psi = I``) and from a small ``Psi``; the
    better end point is kept. Returns the factor and whether the optimizer converged.
    """
    best = None
    tril = np.tril_indices(q)
    for start in (np.eye(q)[tril], 0.1 * np.eye(q)[tril]):
        res = optimize.minimize(_neg_reml, start, args=moments, method="L-BFGS-B")
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise np.linalg.LinAlgError("the REML likelihood is not finite at any start")
    return best.x, bool(best.success)


def mixed_slope(data: pd.DataFrame, level: float = 0.95) -> dict[str, Any]:
    """Pooled slope of x from a mixed model with random intercept and slope by site.

    Parameters
    ----------
    data : DataFrame
        Columns ``x``, ``y`` (float) and ``site`` (str), no missing values.
    level : float
        Confidence level of the slope's Wald interval.

    Returns
    -------
    dict
        ``estimate``, ``ci_low``, ``ci_high``, ``statistic`` (z), ``p_value`` of the
        fixed slope; ``tau2``: variance of the random slope across sites; ``n``, ``k``;
        ``method``: ``mixedlm_reml`` with any problem appended in brackets, or
        ``mixedlm_reml_intercept_only`` with the reason when the random-slope model
        failed or did not converge (then ``tau2`` is NaN), or ``mixedlm_reml [failed: ...]``
        with missing estimates.

    Notes
    -----
    :math:`y_{ij} = (\\beta_0 + u_{0j}) + (\\beta_1 + u_{1j}) x_{ij} + e_{ij}`,
    :math:`(u_{0j}, u_{1j}) \\sim N(0, \\sigma^2 \\Psi)`, fitted by REML (Riley, Lambert &
    Abo-Zaid 2010 on one-stage IPD meta-analysis). The likelihood is statsmodels
    ``MixedLM``'s profile REML likelihood (fixed effects and :math:`\\sigma^2` profiled
    out, :math:`\\Psi` through its Cholesky factor), computed from per-site sums of
    squares and cross-products via Woodbury: one evaluation costs microseconds at any
    number of sites, where statsmodels loops over sites in Python (about 1.5 s per model
    at 125 sites). The slope's variance is :math:`\\hat\\sigma^2 (X'V^{-1}X)^{-1}`, the
    interval and test are Wald (normal), as in statsmodels. The problems written into
    ``method`` follow statsmodels' rules: a random-effect variance below 0.01 is "on the
    boundary"; a :math:`\\Psi` with smallest eigenvalue at most 1e-8 of its largest is
    "singular".
    """
    return _mixed_from_sums(_sums(data), level)


def _mixed_from_sums(s: np.ndarray, level: float) -> dict[str, Any]:
    base = {"n": int(s[:, 0].sum()), "k": len(s), "df": np.nan}
    moments = _site_moments(s)
    reasons: list[str] = []
    for q, label in ((2, "mixedlm_reml"), (1, "mixedlm_reml_intercept_only")):
        try:
            theta, converged = _reml_fit(moments, q)
            fe, qf, xvx, _ = _gls_parts(theta, *moments[:3])
            scale = qf / (moments[3] - 2)
            se = float(np.sqrt(scale * np.linalg.inv(xvx)[1, 1]))
            if not np.isfinite(se):
                raise np.linalg.LinAlgError("the slope's standard error is not finite")
        except (np.linalg.LinAlgError, ValueError) as err:
            reasons.append(f"random slope dropped, {label} failed: {_short([str(err)])}")
            continue
        notes = []
        if not converged:
            if q == 2:
                # A non-converged random-slope fit is not reported; the simpler model is.
                reasons.append(f"random slope dropped, {label} did not converge")
                continue
            notes.append("NOT CONVERGED")
        cov_re = scale * _psi(theta)
        eig = np.linalg.eigvalsh(cov_re)
        if eig[0] <= 1e-8 * max(eig[-1], 0.0):
            notes.append(_SINGULAR)
        if np.min(np.abs(np.diag(cov_re))) < 0.01:
            notes.append(_BOUNDARY)
        note = "; ".join(reasons + notes)
        slope = float(fe[1])
        half = stats.norm.ppf(0.5 + level / 2) * se
        z = slope / se
        return dict(base, estimate=slope, ci_low=slope - half, ci_high=slope + half,
                    statistic=z, p_value=float(2 * stats.norm.sf(abs(z))),
                    tau2=float(cov_re[1, 1]) if q == 2 else np.nan,
                    method=f"{label} [{note}]" if note else label)
    return dict(base, estimate=np.nan, ci_low=np.nan, ci_high=np.nan, statistic=np.nan,
                p_value=np.nan, tau2=np.nan, method=f"mixedlm_reml [{'; '.join(reasons)}]")


def _criers_mask(stacked: pd.DataFrame, column: str) -> pd.Series:
    if column not in stacked.columns:
        raise ValueError(f"stacked data lack the criers column {column!r}")
    return stacked[column].astype("boolean").fillna(False).astype(bool)


def _pairs(study: Study):
    """(family id, x, y, criers only) of every IPD pair, in plan order."""
    for family_id in study.section("ipd").get("families", ()):
        fam = study.family(family_id)
        for x in fam["x"]:
            for y in fam["y"]:
                yield family_id, x, y, fam.get("subset") == "criers"


MOMENT_COLUMNS = ("family", "x", "y", "site", *_SUMS)


def site_moments(frame: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Per-site sums of every IPD pair: all the IPD models need from a site's rows.

    Parameters
    ----------
    frame : DataFrame
        Analysis-ready data of one site or several (``site`` column), as for
        :func:`ipd_models`.
    study : Study

    Returns
    -------
    DataFrame
        ``MOMENT_COLUMNS``: one row per (family, x, y, site) with the complete pairs' count
        ``n`` and the sums ``sx, sy, sxx, sxy, syy`` (sites in order of first appearance;
        a site without a complete pair has no row). A few hundred bytes per site, so a
        site task can hand them on instead of its rows and the pooled step never stacks
        the sites (:func:`ipd_from_moments`).

    Notes
    -----
    Every column is converted to float once and each pair's sums are ``numpy.bincount``
    over site codes: about 1 ms for a site of 120 rows and 18 pairs.
    """
    criers_col = study.section("analysis").get("criers", "cried_in_therapy")
    if "site" not in frame.columns:
        raise ValueError("stacked data lack column 'site' needed by the IPD models")
    codes, names = pd.factorize(frame["site"].astype(str).to_numpy())
    k = len(names)
    floats: dict[str, np.ndarray] = {}

    def column(name: str) -> np.ndarray:
        if name not in floats:
            if name not in frame.columns:
                raise ValueError(f"stacked data lack column {name!r} needed by the IPD models")
            floats[name] = _float(frame[name])
        return floats[name]

    pairs = list(_pairs(study))
    criers = (_criers_mask(frame, criers_col).to_numpy()
              if any(only for *_, only in pairs) else None)
    parts = []
    for family_id, x, y, only_criers in pairs:
        xv, yv = column(x), column(y)
        ok = ~(np.isnan(xv) | np.isnan(yv))
        if only_criers:
            ok &= criers
        sums = _bincount_sums(codes[ok], k, xv[ok], yv[ok])
        present = sums[:, 0] > 0
        part = pd.DataFrame(sums[present], columns=list(_SUMS))
        part.insert(0, "site", names[present])
        part.insert(0, "y", y)
        part.insert(0, "x", x)
        part.insert(0, "family", family_id)
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(MOMENT_COLUMNS))
    return pd.concat(parts, ignore_index=True).reindex(columns=list(MOMENT_COLUMNS))


def ipd_from_moments(moments: pd.DataFrame, study: Study, run_id: str = "") -> pd.DataFrame:
    """The IPD models from per-site sums (:func:`site_moments` of every site, concatenated).

    Same rows as :func:`ipd_models` on the stacked data; see there.
    """
    cfg = study.section("ipd")
    level = study.level
    rows = []
    groups = {k: g for k, g in moments.groupby(["family", "x", "y"], sort=False)}
    for family_id, x, y, _ in _pairs(study):
        g = groups.get((family_id, x, y))
        if g is None:
            continue
        # Sites too small for their own slope cannot enter an interaction model.
        g = g[g["n"] >= MIN_ROWS_PER_SITE]
        if g["site"].nunique() < MIN_SITES:
            continue
        sums = g[list(_SUMS)].to_numpy(dtype=float)
        common = {"run_id": run_id, "family": family_id, "site": voc.POOLED, "x": x,
                  "y": y, "covariates": "", "p_adjusted": np.nan}
        rows.append(dict(common, analysis="ipd_interaction", **_interaction_from_sums(sums, level)))
        if cfg.get("mixed_model", True):
            rows.append(dict(common, analysis="mixed_model", **_mixed_from_sums(sums, level)))
    return pd.DataFrame(rows, columns=list(voc.RESULTS_COLUMNS))


def ipd_models(stacked: pd.DataFrame, study: Study, run_id: str = "") -> pd.DataFrame:
    """IPD interaction tests and mixed models for every (x, y) of the IPD families.

    Parameters
    ----------
    stacked : DataFrame
        The sites' analysis-ready frames concatenated, with ``site`` and the canonical
        variables and scores (nullable Int64/Float64 columns are fine).
    study : Study
        The plan: ``[ipd]`` families and ``mixed_model``; each family's ``x``, ``y`` and
        ``subset``; ``[analysis].criers``; ``[study].level``.
    run_id : str, default ""
        Written into the ``run_id`` column.

    Returns
    -------
    DataFrame
        Columns ``vocabulary.RESULTS_COLUMNS``, ``site = "pooled"``, per (family, x, y):

        - ``analysis = "ipd_interaction"``: ``estimate``/``ci_low``/``ci_high`` the
          common within-site slope of x (``y ~ x + C(site)``, raw units);
          ``statistic`` F of the interaction, ``df`` its numerator df (k - 1; the
          denominator df is in ``method`` as ``df2``), ``p_value`` its p; ``k`` sites; ``n``.
        - ``analysis = "mixed_model"`` (when ``mixed_model`` is true): fixed slope of x
          with Wald CI and z test (``df`` blank); ``tau2`` the random-slope variance;
          ``method`` names the model and states any convergence problem.

        Pairs with fewer than two sites of at least three complete rows are skipped.
    """
    return ipd_from_moments(site_moments(stacked, study), study, run_id)
