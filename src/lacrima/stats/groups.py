"""Two-group comparisons and 2x2 tables.

Group 1 is always the group of interest (criers; the first row level): mean
differences are group 1 minus group 2 and odds ratios are the odds of the column
event in row 1 over row 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats
from scipy.stats.contingency import odds_ratio as _scipy_odds_ratio

from lacrima.stats import Estimate, as_float_array, check_level, not_estimable

MIN_GROUP_N = 2  # a group needs two cases for a variance


def _groups(x1, x2) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_float_array(x1, "x1"), as_float_array(x2, "x2")
    return a[~np.isnan(a)], b[~np.isnan(b)]


def _group_problem(a: np.ndarray, b: np.ndarray) -> str:
    if a.size < MIN_GROUP_N or b.size < MIN_GROUP_N:
        return f"group sizes {a.size} and {b.size}; each group needs at least {MIN_GROUP_N}"
    return ""


def welch_t(x1, x2, level: float = 0.95) -> Estimate:
    """Welch's unequal-variance t test of mean(x1) - mean(x2).

    Parameters
    ----------
    x1, x2 : array-like of float
        Outcome in group 1 (e.g. criers) and group 2; NaN dropped.
    level : float
        Confidence level of the interval for the difference.

    Returns
    -------
    Estimate
        ``method="welch"``; ``estimate`` mean difference; ``se``; interval
        ``diff +/- t_{df} se``; ``statistic`` t; ``df`` Welch-Satterthwaite; ``p_value``.

    Notes
    -----
    ``se = sqrt(s1^2/n1 + s2^2/n2)``,
    ``df = se^4 / ((s1^2/n1)^2/(n1-1) + (s2^2/n2)^2/(n2-1))`` (Welch 1947), as
    ``scipy.stats.ttest_ind(equal_var=False)``.

    References
    ----------
    Welch, B. L. (1947). The generalization of "Student's" problem when several
    different population variances are involved. Biometrika, 34, 28-35.
    """
    level = check_level(level)
    a, b = _groups(x1, x2)
    n = a.size + b.size
    problem = _group_problem(a, b)
    if problem:
        return not_estimable("welch", n, problem, level)
    v1, v2 = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = np.sqrt(v1 + v2)
    if se == 0:
        return not_estimable("welch", n, "zero variance in both groups", level)
    diff = float(a.mean() - b.mean())
    df = (v1 + v2) ** 2 / (v1 ** 2 / (a.size - 1) + v2 ** 2 / (b.size - 1))
    t = diff / se
    crit = stats.t.ppf(0.5 + level / 2, df)
    return Estimate("welch", n, diff, float(se), float(diff - crit * se), float(diff + crit * se),
                    float(t), float(df), float(2 * stats.t.sf(abs(t), df)), level)


def hedges_g_from_stats(mean1: float, sd1: float, n1: int, mean2: float, sd2: float, n2: int,
                        level: float = 0.95) -> Estimate:
    """Hedges' g from group summaries, with a normal-theory interval.

    Parameters
    ----------
    mean1, sd1, n1, mean2, sd2, n2 : float
        Mean, standard deviation (n - 1 denominator) and size of each group.
    level : float
        Confidence level.

    Returns
    -------
    Estimate
        ``method="hedges_g"``; ``estimate`` g; ``se``; ``ci_low``/``ci_high`` =
        ``g -/+ z se``; ``df = n1 + n2 - 2`` (of the pooled SD); no test.

    Notes
    -----
    ``d = (mean1 - mean2) / s_p`` with ``s_p^2 = ((n1-1) sd1^2 + (n2-1) sd2^2)/(n1+n2-2)``;
    ``g = J d`` with the exact correction
    ``J = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2))``, ``m = n1 + n2 - 2`` (Hedges 1981);
    ``se = sqrt(1/n1 + 1/n2 + g^2 / (2 (n1 + n2)))``, the large-sample variance with g
    plugged in (Hedges & Olkin 1985, eq. 5.15; metafor ``escalc("SMD")`` default).
    The interval is symmetric, so ``se = (ci_high - ci_low) / (2 z_{(1+level)/2})`` exactly.
    Borenstein et al. (2009, ch. 4) use ``J^2 (1/n1 + 1/n2 + d^2/(2(n1+n2)))`` instead;
    the two agree to about 1% at these sample sizes.

    References
    ----------
    Hedges, L. V. (1981). Distribution theory for Glass's estimator of effect size and
    related estimators. Journal of Educational Statistics, 6(2), 107-128.
    Hedges, L. V., & Olkin, I. (1985). Statistical methods for meta-analysis. Academic Press.

    Examples
    --------
    >>> est = hedges_g_from_stats(103, 5.5, 50, 100, 4.5, 50)   # Borenstein et al. 2009, ch. 4
    >>> round(est.estimate, 4)
    0.5924
    """
    level = check_level(level)
    n = int(n1 + n2)
    if n1 < MIN_GROUP_N or n2 < MIN_GROUP_N:
        return not_estimable("hedges_g", n, f"group sizes {n1} and {n2}; each group needs at "
                             f"least {MIN_GROUP_N}", level)
    m = n1 + n2 - 2
    sp = np.sqrt(((n1 - 1) * sd1 ** 2 + (n2 - 1) * sd2 ** 2) / m)
    if sp == 0:
        return not_estimable("hedges_g", n, "zero variance in both groups", level)
    j = np.exp(special.gammaln(m / 2) - 0.5 * np.log(m / 2) - special.gammaln((m - 1) / 2))
    g = float(j * (mean1 - mean2) / sp)
    se = float(np.sqrt(1 / n1 + 1 / n2 + g * g / (2 * (n1 + n2))))
    z = stats.norm.ppf(0.5 + level / 2)
    return Estimate("hedges_g", n, g, se, float(g - z * se), float(g + z * se), df=float(m),
                    level=level)


def hedges_g(x1, x2, level: float = 0.95) -> Estimate:
    """Hedges' g of group 1 minus group 2 from raw data; see :func:`hedges_g_from_stats`."""
    a, b = _groups(x1, x2)
    if a.size < MIN_GROUP_N or b.size < MIN_GROUP_N:
        return not_estimable("hedges_g", a.size + b.size, _group_problem(a, b), check_level(level))
    return hedges_g_from_stats(a.mean(), a.std(ddof=1), a.size, b.mean(), b.std(ddof=1), b.size,
                               level)


def mann_whitney(x1, x2) -> Estimate:
    """Mann-Whitney U test with the rank-biserial correlation as effect size.

    Parameters
    ----------
    x1, x2 : array-like of float
        Outcome in group 1 and group 2; NaN dropped.

    Returns
    -------
    Estimate
        ``method="mann_whitney_u"``; ``estimate`` the rank-biserial correlation
        ``r_rb = 2 U1 / (n1 n2) - 1`` (positive when group 1 tends to be higher);
        ``statistic`` U1 (U of group 1); two-sided ``p_value`` from
        ``scipy.stats.mannwhitneyu`` (exact without ties for small samples, otherwise
        normal approximation with tie and continuity correction). No interval.

    Notes
    -----
    ``U1 = R1 - n1 (n1 + 1) / 2`` with R1 the rank sum of group 1 (Mann & Whitney 1947);
    ``r_rb`` is Kerby's (2014) simple difference formula, the proportion of favourable
    minus unfavourable pairs, on the same -1..1 scale as the other correlations.

    References
    ----------
    Kerby, D. S. (2014). The simple difference formula: an approach to teaching
    nonparametric correlation. Comprehensive Psychology, 3, 11.IT.3.1.
    """
    a, b = _groups(x1, x2)
    n = a.size + b.size
    if a.size < 1 or b.size < 1:
        return not_estimable("mann_whitney_u", n, f"group sizes {a.size} and {b.size}; "
                             "each group needs at least 1", 0.95)
    if np.ptp(np.concatenate([a, b])) == 0:
        return not_estimable("mann_whitney_u", n, "all values are equal", 0.95)
    res = stats.mannwhitneyu(a, b, alternative="two-sided")
    u1 = float(res.statistic)
    return Estimate("mann_whitney_u", n, 2 * u1 / (a.size * b.size) - 1, statistic=u1,
                    p_value=float(res.pvalue))


@dataclass(frozen=True)
class TwoByTwo:
    """A 2x2 table: rows are the two levels compared, columns event yes / no.

    Parameters
    ----------
    a, b : int
        Row 1 with / without the event.
    c, d : int
        Row 2 with / without the event.
    """

    a: int
    b: int
    c: int
    d: int

    def __post_init__(self):
        for name in ("a", "b", "c", "d"):
            v = getattr(self, name)
            if v < 0 or int(v) != v:
                raise ValueError(f"cell {name} of a 2x2 table must be a count >= 0, got {v}")

    @classmethod
    def from_counts(cls, table) -> "TwoByTwo":
        """From ``[[a, b], [c, d]]``."""
        arr = np.asarray(table)
        if arr.shape != (2, 2):
            raise ValueError(f"a 2x2 table is needed, got shape {arr.shape}")
        return cls(*(int(v) for v in arr.ravel()))

    def as_array(self) -> np.ndarray:
        return np.array([[self.a, self.b], [self.c, self.d]])

    @property
    def n(self) -> int:
        return self.a + self.b + self.c + self.d

    def expected(self) -> np.ndarray:
        """Expected counts under independence, ``row total * column total / n``."""
        t = self.as_array()
        return np.outer(t.sum(axis=1), t.sum(axis=0)) / max(self.n, 1)

    def empty_margin(self) -> bool:
        t = self.as_array()
        return bool((t.sum(axis=1) == 0).any() or (t.sum(axis=0) == 0).any())

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.as_array(), index=["row1", "row2"], columns=["event", "no_event"])


def chi_square_2x2(table: TwoByTwo) -> Estimate:
    """Pearson chi-square test of independence (no continuity correction), Cramer's V.

    Returns
    -------
    Estimate
        ``method="pearson_chi2"``; ``estimate`` Cramer's V (unsigned); ``statistic``
        chi-square; ``df = 1``; ``p_value``. Not estimable when a margin is empty.

    Notes
    -----
    ``chi2 = sum (O - E)^2 / E``; ``V = sqrt(chi2 / (n (min(r, c) - 1))) = sqrt(chi2 / n)``
    for a 2x2 table (Cramer 1946), as
    ``scipy.stats.chi2_contingency(table, correction=False)``.
    """
    if table.empty_margin():
        return not_estimable("pearson_chi2", table.n, "a row or column of the table is empty", 0.95)
    obs, exp = table.as_array(), table.expected()
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    return Estimate("pearson_chi2", table.n, float(np.sqrt(chi2 / table.n)), statistic=chi2,
                    df=1.0, p_value=float(stats.chi2.sf(chi2, 1)))


def odds_ratio_woolf(table: TwoByTwo, level: float = 0.95) -> Estimate:
    """Sample odds ratio ``(a d) / (b c)`` with Woolf's log-scale interval.

    Returns
    -------
    Estimate
        ``method="odds_ratio"``; ``estimate`` OR; ``se`` SE of log OR;
        ``ci_low``/``ci_high`` = ``exp(log OR -/+ z se)``. No test here (the analysis
        reports the chi-square p beside it). Not estimable when a margin is empty.

    Notes
    -----
    ``se(log OR) = sqrt(1/a + 1/b + 1/c + 1/d)`` (Woolf 1955). When any cell is 0,
    0.5 is added to every cell first (Haldane 1956), so OR and SE stay finite.
    The interval is symmetric on the log scale:
    ``se = (log ci_high - log ci_low) / (2 z_{(1+level)/2})`` exactly.

    References
    ----------
    Woolf, B. (1955). On estimating the relation between blood group and disease.
    Annals of Human Genetics, 19, 251-253.
    Haldane, J. B. S. (1956). The estimation and significance of the logarithm of a
    ratio of frequencies. Annals of Human Genetics, 20, 309-311.
    """
    level = check_level(level)
    if table.empty_margin():
        return not_estimable("odds_ratio", table.n, "a row or column of the table is empty", level)
    cells = table.as_array().astype(float).ravel()
    if (cells == 0).any():
        cells = cells + 0.5
    a, b, c, d = cells
    log_or = np.log(a * d / (b * c))
    se = float(np.sqrt((1 / cells).sum()))
    z = stats.norm.ppf(0.5 + level / 2)
    return Estimate("odds_ratio", table.n, float(np.exp(log_or)), se,
                    float(np.exp(log_or - z * se)), float(np.exp(log_or + z * se)), level=level)


def fisher_exact_2x2(table: TwoByTwo, level: float = 0.95) -> Estimate:
    """Fisher's exact test with the conditional maximum-likelihood odds ratio.

    Returns
    -------
    Estimate
        ``method="fisher_exact"``; ``estimate`` the conditional MLE of the odds ratio
        with its exact interval (as R ``fisher.test``); two-sided ``p_value``
        (``scipy.stats.fisher_exact``: sum of tables no more probable than the observed).

    Notes
    -----
    The conditional OR, not the sample OR, is the estimate that belongs to the exact
    test (Fisher 1935; scipy.stats.contingency.odds_ratio(kind="conditional")).
    """
    level = check_level(level)
    if table.empty_margin():
        return not_estimable("fisher_exact", table.n, "a row or column of the table is empty",
                             level)
    arr = table.as_array()
    p = float(stats.fisher_exact(arr).pvalue)
    res = _scipy_odds_ratio(arr, kind="conditional")
    ci = res.confidence_interval(confidence_level=level)
    return Estimate("fisher_exact", table.n, float(res.statistic), ci_low=float(ci.low),
                    ci_high=float(ci.high), p_value=p, level=level)
