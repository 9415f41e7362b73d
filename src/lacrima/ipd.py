"""Individual-participant-data models on the stacked sites (protocol section 7, second point).

For every (x, y) pair of the families in ``study.section("ipd")["families"]``:

- OLS ``y ~ x * C(site)`` against ``y ~ x + C(site)``: the F test of the x-by-site
  interaction is the heterogeneity test (rows ``analysis = "ipd_interaction"``);
- mixed model ``y ~ x`` with a random intercept and a random slope of x by site, fitted
  by REML (lme4's criterion and parametrisation, computed from per-site sums), for the
  pooled slope (rows ``analysis = "mixed_model"``). The random-slope variance is often
  on the boundary; every such problem or failure is written into ``method`` rather than
  hidden.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

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
    """Random-effects covariance relative to the residual variance, from theta.

    theta is lme4's: the lower Cholesky factor packed by columns (``l11`` or
    ``l11, l21, l22``), so ``Psi = L L'``. ``theta`` may carry leading batch axes.
    """
    return _chol(theta) @ np.swapaxes(_chol(theta), -1, -2)


def _chol(theta: np.ndarray) -> np.ndarray:
    """The lower factor L of theta (``... x q x q``)."""
    theta = np.asarray(theta, dtype=float)
    q = 1 if theta.shape[-1] == 1 else 2
    low = np.zeros(theta.shape[:-1] + (q, q))
    rows, cols = np.tril_indices(q)
    low[..., rows, cols] = theta
    return low


def _inv_logdet(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse and log-determinant of a stack of 1 x 1 or 2 x 2 matrices, in closed form.

    ``numpy.linalg`` on stacks of tiny matrices costs more in call overhead than in
    arithmetic; the likelihood is evaluated many times per fit.
    """
    if a.shape[-1] == 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            return 1.0 / a, np.log(a[..., 0, 0])
    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    inv = np.empty_like(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        inv[..., 0, 0], inv[..., 1, 1] = a[..., 1, 1] / det, a[..., 0, 0] / det
        inv[..., 0, 1], inv[..., 1, 0] = -a[..., 0, 1] / det, -a[..., 1, 0] / det
        return inv, np.log(det)


def _gls_parts(theta: np.ndarray, xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray):
    """GLS pieces at ``theta``: fixed effects, ``r'V^-1 r``, ``X'V^-1 X``, ``log|I + Z'Z Psi|``.

    Within site j, ``V_j = I + Z_j Psi Z_j'`` (in units of the residual variance) with
    ``Z_j`` the first q columns of ``X_j``. By Woodbury, ``V_j^-1 = I - Z_j M_j Z_j'``
    with ``M_j = Psi (I + Z_j'Z_j Psi)^-1``, so every quantity needs only the site's
    cross-products, never its rows, and stays finite when ``Psi`` is singular (where
    inverting ``Psi`` itself, as statsmodels does, loses all precision). The last item is
    summed over sites (``log|L|^2`` in lme4's notation).
    """
    fe, qf, xvx, logdet, _ = _parts(np.asarray(theta, dtype=float)[None], xtx, xty, yty)
    if not np.isfinite(logdet[0]):
        raise np.linalg.LinAlgError("I + Z'Z Psi is singular")
    return fe[0], float(qf[0]), xvx[0], float(logdet[0])


def _parts(thetas: np.ndarray, xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray):
    """:func:`_gls_parts` for a batch of thetas (``N x len(theta)``), and what the gradient needs.

    Arrays are ``N x k x ...`` (N thetas, k sites); returns ``fe`` (N x 2), ``qf`` (N),
    ``xvx`` (N x 2 x 2), ``logdet`` (N) and ``(B, psi)`` with ``B_j = (I + Z_j'Z_j Psi)^-1``.
    """
    psi = _psi(thetas)[:, None]                       # N x 1 x q x q
    q = psi.shape[-1]
    zz, zx, zy = xtx[:, :q, :q], xtx[:, :q, :], xty[:, :q]
    inner = np.eye(q) + zz @ psi                       # N x k x q x q
    b, logdet = _inv_logdet(inner)
    m = psi @ b
    xz_m = np.swapaxes(zx, -1, -2) @ m                 # N x k x 2 x q
    xvx = (xtx - xz_m @ zx).sum(axis=1)
    xvy = (xty - (xz_m @ zy[..., None])[..., 0]).sum(axis=1)
    yvy = (yty - (zy[:, None, :] @ m @ zy[..., None])[..., 0, 0]).sum(axis=1)
    h = _inv_logdet(xvx)[0]
    fe = (h @ xvy[..., None])[..., 0]
    qf = yvy - np.sum(fe * xvy, axis=-1)
    return fe, qf, xvx, logdet.sum(axis=1), (b, psi, h)


def _crit_values(thetas: np.ndarray, xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray,
                 n: float) -> np.ndarray:
    """lme4's REML criterion at each of N thetas, in closed form over ``N x k`` arrays.

    The same quantities as :func:`_parts` (Woodbury, per-site cross-products), written out
    entry by entry for the symmetric 2 x 2 blocks: a stack of tiny matrix products costs
    numpy a call per matrix, this a handful of elementwise operations on N x k arrays
    (a line search evaluates ~160 thetas at once). With ``A_j = X_j'X_j``, ``c_j = X_j'y_j``,
    ``Psi = L L'`` and ``M_j = Psi (I + A_j Psi)^-1``: ``X'V^-1 X = sum_j A_j - A_j M_j A_j``,
    ``X'V^-1 y = sum_j c_j - A_j M_j c_j``, ``y'V^-1 y = sum_j y_j'y_j - c_j' M_j c_j``.
    The random intercept alone (q = 1) is theta ``(l11, 0, 0)``: ``Psi = [[l11^2, 0], [0, 0]]``
    gives exactly its ``I + A Psi``, ``M`` and so its criterion.
    """
    thetas = np.asarray(thetas, dtype=float)
    l11 = thetas[:, 0, None]
    l21, l22 = ((thetas[:, 1, None], thetas[:, 2, None]) if thetas.shape[1] == 3
                else (np.zeros_like(l11), np.zeros_like(l11)))
    p00, p01, p11 = l11 * l11, l11 * l21, l21 * l21 + l22 * l22           # N x 1
    a00, a01, a11 = xtx[None, :, 0, 0], xtx[None, :, 0, 1], xtx[None, :, 1, 1]  # 1 x k
    c0, c1 = xty[None, :, 0], xty[None, :, 1]
    # I + A Psi and its determinant
    i00, i01 = 1 + a00 * p00 + a01 * p01, a00 * p01 + a01 * p11
    i10, i11 = a01 * p00 + a11 * p01, 1 + a01 * p01 + a11 * p11
    det = i00 * i11 - i01 * i10
    # M = Psi (I + A Psi)^-1, symmetric
    m00, m01, m11 = (p00 * i11 - p01 * i10) / det, (p01 * i00 - p00 * i01) / det, \
        (p11 * i00 - p01 * i01) / det
    # W = A M
    w00, w01 = a00 * m00 + a01 * m01, a00 * m01 + a01 * m11
    w10, w11 = a01 * m00 + a11 * m01, a01 * m01 + a11 * m11
    x00 = (a00 - (w00 * a00 + w01 * a01)).sum(axis=1)
    x01 = (a01 - (w00 * a01 + w01 * a11)).sum(axis=1)
    x11 = (a11 - (w10 * a01 + w11 * a11)).sum(axis=1)
    v0 = (c0 - (w00 * c0 + w01 * c1)).sum(axis=1)
    v1 = (c1 - (w10 * c0 + w11 * c1)).sum(axis=1)
    yvy = (yty[None, :] - (m00 * c0 * c0 + 2 * m01 * c0 * c1 + m11 * c1 * c1)).sum(axis=1)
    logdet = np.log(det).sum(axis=1)
    det_x = x00 * x11 - x01 * x01
    fe0, fe1 = (x11 * v0 - x01 * v1) / det_x, (x00 * v1 - x01 * v0) / det_x
    qf = yvy - (fe0 * v0 + fe1 * v1)
    dof = n - xtx.shape[1]
    crit = logdet + np.log(det_x) + dof * (1 + np.log(2 * np.pi * qf / dof))
    return np.where(np.isfinite(crit) & (qf > 0) & (det_x > 0), crit, np.inf)


# From this many thetas at once (the starts and the line searches: ~80% of a fit's time at
# 125 sites) the criterion is evaluated in closed form (:func:`_crit_values`); fewer (the
# current point, its Newton step and the gradient's differences) by :func:`_parts`, which
# the gradient needs anyway. The two agree to ~1e-13 relative; keeping the Newton steps on
# the matrix form leaves every non-singular fit of the golden runs unchanged to the bit.
BATCH = 8


def _crit_batch(thetas: np.ndarray, xtx, xty, yty, n: float, gradient: bool = False):
    """lme4's REML criterion (``REMLcrit``, -2 restricted log-likelihood) at each theta.

    Profiled over the fixed effects and the residual variance, as lme4 does (Bates et al.
    2015, eq. 42): ``log|I + Z'Z Psi| + log|X'V^-1 X| + (n - p)(1 + log(2 pi r'V^-1 r / (n - p)))``
    summed over sites, so the value can be compared with lme4's own number; ``inf`` where
    it is not finite (``BATCH`` or more thetas without the gradient: :func:`_crit_values`).
    With ``gradient``, also its gradient in theta
    (N x len(theta)): with ``B_j = (I + A_j Psi)^-1``, ``A_j = Z_j'Z_j``, ``C_j = B_j Z_j'X_j``,
    ``u_j = B_j Z_j'(y_j - X_j beta)``, the criterion's differential is ``tr(G dPsi)`` with
    ``G = sum_j [B_j A_j - C_j (X'V^-1 X)^-1 C_j' - (n - p) u_j u_j' / r'V^-1 r]``, and
    ``dPsi = dL L' + L dL'`` gives ``(G + G') L`` for the factor's entries.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if len(thetas) >= BATCH and not gradient:
            return _crit_values(thetas, xtx, xty, yty, n)
        fe, qf, xvx, logdet, (b, psi, h) = _parts(thetas, xtx, xty, yty)
        det_x = xvx[:, 0, 0] * xvx[:, 1, 1] - xvx[:, 0, 1] * xvx[:, 1, 0]
        dof = n - xtx.shape[1]
        crit = logdet + np.log(det_x) + dof * (1 + np.log(2 * np.pi * qf / dof))
        crit = np.where(np.isfinite(crit) & (qf > 0) & (det_x > 0), crit, np.inf)
        if not gradient:
            return crit
        q = psi.shape[-1]
        zz, zx, zy = xtx[:, :q, :q], xtx[:, :q, :], xty[:, :q]
        c = b @ zx                                                # N x k x q x 2
        u = (b @ (zy - (zx @ fe[:, None, :, None])[..., 0])[..., None])[..., 0]  # N x k x q
        g = (b @ zz - c @ h[:, None] @ np.swapaxes(c, -1, -2)
             - (dof / qf)[:, None, None, None] * (u[..., :, None] * u[..., None, :])).sum(axis=1)
        grad_l = (g + np.swapaxes(g, -1, -2)) @ _chol(thetas)
        rows, cols = np.tril_indices(q)
        return crit, np.where(np.isfinite(crit)[:, None], grad_l[:, rows, cols], np.nan)


def _reml_criterion(theta: np.ndarray, xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray,
                    n: float) -> float:
    """lme4's REML criterion at one theta (see :func:`_crit_batch`)."""
    return float(_crit_batch(np.asarray(theta, dtype=float)[None], xtx, xty, yty, n)[0])


def _theta_bounds(q: int) -> list[tuple[float | None, float | None]]:
    """lme4's bounds on its theta (the packed lower Cholesky factor): 0 on the diagonal."""
    rows, cols = np.tril_indices(q)
    return [(0.0, None) if r == c else (None, None) for r, c in zip(rows, cols)]


# lme4's convergence check (``lmerControl(check.conv.grad = .makeCC("warning", tol = 2e-3))``):
# the largest absolute gradient of the REML criterion over the free parameters.
GRAD_TOL = 2e-3
# lme4's isSingular(fit, tol = 1e-4): a diagonal element of theta below this is on the boundary.
SINGULAR_TOL = 1e-4
# A local minimum whose criterion is within this of the best one is the same optimum
# (rounding of a criterion of a few hundred); the best is kept.
SAME_OPTIMUM = 1e-9


def _starts(q: int, xtx: np.ndarray) -> np.ndarray:
    """Starting thetas: lme4's (``Psi = I``), then a grid of interior points and of points
    on each face of the boundary (``l11 = 0``, ``l22 = 0``), the slope's scale set by the
    spread of x (a relative SD of the slope ``s / sd(x)``)."""
    sizes = np.array([0.02, 0.2, 2.0])
    if q == 1:
        return np.concatenate([[1.0], sizes, [0.0]])[:, None]
    n = xtx[:, 0, 0].sum()
    mean_x = xtx[:, 0, 1].sum() / n
    sd_x = np.sqrt(max(xtx[:, 1, 1].sum() / n - mean_x ** 2, 1e-12))
    out = [(1.0, 0.0, 1.0)]
    for a in sizes:
        for s in sizes / sd_x:
            for r in (-0.9, 0.0, 0.9):
                out.append((a, r * s, s * np.sqrt(1 - r * r)))   # interior
            out += [(a, s, 0.0), (a, -s, 0.0)]                  # slope = multiple of intercept
        out.append((a, 0.0, 0.0))                               # no slope variance
    for s in sizes / sd_x:
        out.append((0.0, 0.0, s))                               # no intercept variance
    out.append((0.0, 0.0, 0.0))
    return np.array(out)


_LENGTHS = 2.0 ** -np.arange(0, 40)


def _descend(crit, x: np.ndarray, lower: np.ndarray, max_iter: int = 200) -> tuple[np.ndarray, float]:
    """Projected Newton descent of ``crit`` (batched criterion and gradient) from ``x``.

    Each step tries, in one batched evaluation, the Newton direction on the free
    parameters (the Hessian from differences of the analytic gradient, its eigenvalues
    taken in absolute value), the steepest descent and, where the Hessian has negative
    curvature, both senses of that eigenvector, each at 40 halving lengths, clipped to the
    bounds; the lowest point wins. A parameter at its bound of 0 whose gradient pushes it
    there stays fixed, except l11 = 0, where theta is mirrored to ``(0, -l21, l22)`` (the
    same Psi, whose gradient in l11 has the other sign). So a stationary point that is not a minimum (a zero diagonal of theta
    where the criterion falls on moving inward: there its gradient is exactly 0) is left,
    and at a minimum the step converges quadratically to the rounding of the criterion.
    """
    f, g = crit(x[None], gradient=True)
    f, g = float(f[0]), g[0]
    d = len(x)
    for _ in range(max_iter):
        if d == 3 and x[0] <= 0 and g[0] > 0 and x[1] != 0:
            # l11 = 0: theta and its mirror (0, -l21, l22) are the same Psi, and the
            # mirror's gradient in l11 (2 G12 l21) has the other sign: step inward from it.
            x = x * np.array([1.0, -1.0, 1.0])
            f, g = crit(x[None], gradient=True)
            f, g = float(f[0]), g[0]
        free = ~((x <= lower) & (g > 0))
        if not free.any():
            break
        h = 1e-6 * np.maximum(1.0, np.abs(x))
        _, gh = crit(x + np.diag(h), gradient=True)
        hess = (gh - g) / h[:, None]
        hess = 0.5 * (hess + hess.T)
        w, v = np.linalg.eigh(hess[np.ix_(free, free)])
        gf = g[free]
        floor = 1e-10 * max(1.0, float(np.abs(w).max()))
        dirs = [-(v @ ((v.T @ gf) / np.maximum(np.abs(w), floor)))]
        gn = float(np.linalg.norm(gf))
        if gn > 0:
            dirs.append(-gf / gn)
        if w[0] < 0:
            dirs += [v[:, 0], -v[:, 0]]
        steps = np.zeros((len(dirs), d))
        steps[:, free] = dirs
        # Near a minimum (positive curvature) the full Newton step is taken when it descends;
        # otherwise every direction at every length, in one batch.
        newton = np.maximum(x + steps[0], lower)[None]
        fn = crit(newton) if w[0] > 0 else np.array([np.inf])
        if fn[0] < f:
            cand, fc = newton, fn
        else:
            cand = x + (_LENGTHS[None, :, None] * steps[:, None, :]).reshape(-1, d)
            cand = np.maximum(cand, lower)
            fc = crit(cand)
        i = int(np.argmin(fc))
        if not fc[i] < f:
            break
        moved = float(np.max(np.abs(cand[i] - x)))
        x = cand[i]
        f, g = crit(x[None], gradient=True)
        f, g = float(f[0]), g[0]
        if moved < 1e-13:
            break
    return x, f


def _reml_fit(moments: tuple, q: int) -> tuple[np.ndarray, bool]:
    """Global REML optimum of theta, the relative Cholesky factor of ``Psi`` (q = 2: ``~x``;
    q = 1: ``~1``).

    Parametrised and bounded as lme4's theta (diagonal >= 0), so an optimum on the boundary
    is reached exactly rather than approached. The criterion, profiled over the fixed
    effects and the residual variance (so theta is all there is to optimise), is evaluated
    at every start of :func:`_starts` at once, interior and boundary ones; :func:`_descend`
    then runs from lme4's start and from the best three others, and the lowest end wins. A
    last check confirms that no start had a lower criterion than that optimum (a descent
    is run from any that had). Returns theta and whether it passes lme4's gradient check.
    """
    xtx, xty, yty, n = moments
    lower = np.array([0.0 if b[0] == 0.0 else -np.inf for b in _theta_bounds(q)])

    def crit(thetas, gradient=False):
        return _crit_batch(thetas, xtx, xty, yty, n, gradient=gradient)

    starts = _starts(q, xtx)
    crit0 = crit(starts)
    if not np.any(np.isfinite(crit0)):
        raise np.linalg.LinAlgError("the REML likelihood is not finite at any start")
    order = [i for i in np.argsort(crit0, kind="stable") if np.isfinite(crit0[i])]
    first = ([0] if np.isfinite(crit0[0]) else []) + [i for i in order if i != 0][:3]
    ends = [_descend(crit, starts[i], lower) for i in first]
    best_x, best_f = min(ends, key=lambda e: e[1])
    # The final check: no start lies below the optimum found.
    for i in np.flatnonzero(crit0 < best_f - SAME_OPTIMUM):
        x, f = _descend(crit, starts[i], lower)
        if f < best_f:
            best_x, best_f = x, f
    _, g = crit(best_x[None], gradient=True)
    g = g[0]
    at_bound = best_x <= lower
    converged = bool(np.all(np.where(at_bound, g > -GRAD_TOL, np.abs(g) < GRAD_TOL)))
    return best_x, converged


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
    Abo-Zaid 2010 on one-stage IPD meta-analysis), as
    ``lme4::lmer(y ~ x + (x | site), REML = TRUE)``: the same profiled REML criterion
    (``REMLcrit``; Bates, Maechler, Bolker & Walker 2015, JSS 67(1)), the same
    parameter theta (relative Cholesky factor, diagonal bounded below by 0), computed from
    per-site sums of squares and cross-products via Woodbury, never from the rows: at 125
    sites one evaluation costs ~0.15 ms, a line search's 160 thetas ~2 ms
    (:func:`_crit_values`), a fit ~60 ms. The optimum is lme4's or better (see
    :func:`_reml_fit`); tests/reference/ipd_reference.R holds the lme4 calls and values.
    The slope's variance is lme4's ``vcov``, :math:`\hat\sigma^2 (X'V^{-1}X)^{-1}` with
    :math:`\hat\sigma^2 = r'V^{-1}r / (n - 2)`; interval and test are Wald (normal),
    ``confint(fit, method = "Wald")`` and ``2 * pnorm(-abs(z))``. Problems written into
    ``method`` follow lme4's relative rules: a random-effect standard deviation below
    1e-4 of the residual one is "on the boundary (estimated as 0)", a zero diagonal of
    theta otherwise "singular" (correlation +-1) (``isSingular(fit, tol = 1e-4)``); a
    gradient above 2e-3 at the end is "did not converge" (``check.conv.grad``).
    """
    return _mixed_from_sums(_sums(data), level)


def _boundary_notes(theta: np.ndarray) -> list[str]:
    """Plain words for a fit on the boundary, by lme4's relative rule (``isSingular``).

    A variance whose standard deviation relative to the residual one is below
    ``SINGULAR_TOL`` is "on the boundary (estimated as 0)"; a diagonal element of theta
    below it with both variances positive is a correlation of +-1 ("singular").
    """
    psi_sd = np.sqrt(np.diag(_psi(theta)))
    diag = theta[[0]] if len(theta) == 1 else theta[[0, 2]]
    notes = []
    if np.any(psi_sd < SINGULAR_TOL):
        notes.append(_BOUNDARY)
    elif np.any(diag < SINGULAR_TOL):
        notes.append(_SINGULAR)
    return notes


def _mixed_from_sums(s: np.ndarray, level: float) -> dict[str, Any]:
    base = {"n": int(s[:, 0].sum()), "k": len(s), "df": np.nan}
    moments = _site_moments(s)
    reasons: list[str] = []
    for q, label in ((2, "mixedlm_reml"), (1, "mixedlm_reml_intercept_only")):
        try:
            theta, converged = _reml_fit(moments, q)
            fe, qf, xvx, _ = _gls_parts(theta, *moments[:3])
            scale = qf / (moments[3] - 2)
            se = float(np.sqrt(scale * _inv_logdet(xvx)[0][1, 1]))
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
        notes += _boundary_notes(theta)
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
    criers_col = study.section("analysis")["criers"]
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
