"""Ordinary least squares with HC3 standard errors, raw and standardised coefficients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lacrima.stats import ESTIMATE_COLUMNS, Estimate, check_level, not_estimable

INTERCEPT = "Intercept"


@dataclass(frozen=True)
class RegressionResult:
    """Coefficients of one OLS fit.

    Parameters
    ----------
    terms : tuple of str
        ``"Intercept"`` then the predictors, in the order given.
    coefficients : tuple of Estimate
        Unstandardised b per term (``method="ols_hc3"``).
    standardized : tuple of Estimate
        Standardised beta per predictor (``method="ols_hc3_standardized"``), no intercept.
    r2 : Estimate
        ``method="ols_r2"``: R-squared, ``df`` residual df.
    n : int
        Complete cases used.
    note : str
        Why the model could not be fitted (empty when it was).
    """

    terms: tuple[str, ...]
    coefficients: tuple[Estimate, ...]
    standardized: tuple[Estimate, ...]
    r2: Estimate
    n: int
    note: str = ""

    def to_frame(self) -> pd.DataFrame:
        """Rows ``term`` + ``ESTIMATE_COLUMNS``: b per term, beta per predictor, then R2."""
        rows = []
        for term, est in zip(self.terms, self.coefficients):
            rows.append({"term": term, **est.to_frame().iloc[0].to_dict()})
        for term, est in zip(self.terms[1:], self.standardized):
            rows.append({"term": term, **est.to_frame().iloc[0].to_dict()})
        rows.append({"term": "R2", **self.r2.to_frame().iloc[0].to_dict()})
        return pd.DataFrame(rows, columns=["term", *ESTIMATE_COLUMNS])


def _fit(y: np.ndarray, x: np.ndarray):
    # imported here, and not via statsmodels.api (1.3 s: tsa, graphics, formula, ...):
    # only a process that fits a regression pays for linear_model (about 0.4 s)
    from statsmodels.regression.linear_model import OLS

    # the constant column first, as sm.add_constant(x, has_constant="add") puts it;
    # use_t: the plan wants t(df_resid) intervals; statsmodels uses the normal for
    # robust covariances unless told otherwise
    design = np.column_stack([np.ones(x.shape[0]), x])
    return OLS(y, design).fit(cov_type="HC3", use_t=True)


def _estimates(fit, method: str, n: int, level: float,
               skip_intercept: bool) -> tuple[Estimate, ...]:
    ci = np.asarray(fit.conf_int(alpha=1 - level))
    params, bse = np.asarray(fit.params), np.asarray(fit.bse)
    tvals, pvals = np.asarray(fit.tvalues), np.asarray(fit.pvalues)
    start = 1 if skip_intercept else 0
    return tuple(
        Estimate(method, n, float(params[i]), float(bse[i]), float(ci[i, 0]), float(ci[i, 1]),
                 float(tvals[i]), float(fit.df_resid), float(pvals[i]), level)
        for i in range(start, params.size))


def ols_hc3(y, x, names, level: float = 0.95) -> RegressionResult:
    """OLS of y on x (with intercept) with HC3 heteroscedasticity-consistent SEs.

    Parameters
    ----------
    y : array-like of float, shape (n,)
        Outcome.
    x : 2-d array-like of float, shape (n, p)
        Predictors. Cases missing on y or any predictor are dropped (listwise).
    names : sequence of str
        The p predictor names, used as term labels.
    level : float
        Confidence level.

    Returns
    -------
    RegressionResult
        b, HC3 SE, interval ``b +/- t_{df_resid} se``, t, ``df = n - p - 1``, p per term;
        standardised betas from the same model fitted to z-scored y and x (sample SD,
        ``ddof=1``) on the same rows, with their own HC3 SEs; R-squared.

    Notes
    -----
    HC3: ``Cov(b) = (X'X)^-1 X' diag(e_i^2 / (1 - h_ii)^2) X (X'X)^-1`` (MacKinnon &
    White 1985), via ``statsmodels OLS(...).fit(cov_type="HC3", use_t=True)``; the
    same as R ``lmtest::coeftest(fit, sandwich::vcovHC(fit, "HC3"))``. HC3 is the
    choice Long & Ervin (2000) recommend for n < 250. Standardised betas are
    ``b_j sd(x_j) / sd(y)``; the standardised intercept is 0 by construction and is
    not reported.

    References
    ----------
    MacKinnon, J. G., & White, H. (1985). Some heteroskedasticity-consistent covariance
    matrix estimators with improved finite sample properties. J. Econometrics, 29, 305-325.
    Long, J. S., & Ervin, L. H. (2000). Using heteroscedasticity consistent standard
    errors in the linear regression model. The American Statistician, 54(3), 217-224.
    """
    level = check_level(level)
    names = tuple(names)
    ya = np.asarray(y, dtype=float)
    xa = np.asarray(x, dtype=float)
    if xa.ndim == 1:
        xa = xa[:, None]
    if xa.shape[1] != len(names):
        raise ValueError(f"{len(names)} names for {xa.shape[1]} predictors")
    if ya.shape[0] != xa.shape[0]:
        raise ValueError(f"y has {ya.shape[0]} rows and x has {xa.shape[0]}")
    keep = ~(np.isnan(ya) | np.isnan(xa).any(axis=1))
    ya, xa = ya[keep], xa[keep]
    n, p = xa.shape
    terms = (INTERCEPT, *names)

    def failed(note: str) -> RegressionResult:
        return RegressionResult(
            terms, tuple(not_estimable("ols_hc3", n, note, level) for _ in terms),
            tuple(not_estimable("ols_hc3_standardized", n, note, level) for _ in names),
            not_estimable("ols_r2", n, note, level), n, note)

    if n < p + 3:
        # p + 1 coefficients and at least 2 residual df, else HC3 is not defined
        return failed(f"n = {n}, fewer than {p + 3} complete cases for {p} predictors")
    if np.ptp(ya) == 0 or (np.ptp(xa, axis=0) == 0).any():
        return failed("the outcome or a predictor has zero variance")
    design = np.column_stack([np.ones(n), xa])
    if np.linalg.matrix_rank(design) < p + 1:
        return failed("the predictors are collinear")
    hat = np.einsum("ij,ji->i", design, np.linalg.pinv(design))
    if (hat > 1 - 1e-10).any():
        return failed("a case has leverage 1, HC3 is undefined")
    raw = _fit(ya, xa)
    zfit = _fit((ya - ya.mean()) / ya.std(ddof=1), (xa - xa.mean(axis=0)) / xa.std(axis=0, ddof=1))
    r2 = Estimate("ols_r2", n, float(raw.rsquared), df=float(raw.df_resid), level=level)
    return RegressionResult(terms, _estimates(raw, "ols_hc3", n, level, False),
                            _estimates(zfit, "ols_hc3_standardized", n, level, True), r2, n)
