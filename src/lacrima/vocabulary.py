"""One column vocabulary, used by code, expectations and reports alike.

The tidy estimates table (``RESULTS_COLUMNS``) is the contract between per-site and
cross-site work: pooling is recomputed from it without touching any site's data.
"""

from __future__ import annotations

RESULTS_COLUMNS: tuple[str, ...] = (
    "run_id", "family", "analysis", "site", "x", "y", "covariates", "n", "estimate",
    "ci_low", "ci_high", "statistic", "df", "p_value", "p_adjusted", "method", "k",
    "tau2", "i2", "q", "q_p", "pi_low", "pi_high",
)

ANALYSES: tuple[str, ...] = (
    "correlation", "spearman", "partial_correlation", "t_test", "mann_whitney",
    "chi_square", "fisher_exact", "regression", "reliability", "meta_analysis",
    "ipd_interaction", "mixed_model",
)

REPLICATION_COLUMNS: tuple[str, ...] = (
    "effect", "x", "y", "covariates", "original_site", "replication_site", "k_original",
    "k_replication", "r_original", "n_original", "p_original", "original_significant",
    "r_replication", "n_replication", "p_replication", "p_replication_holm", "pi_low",
    "pi_high", "in_pi", "same_direction", "larger_same_direction", "p_difference", "r33",
    "p_small_telescope", "p_sceptical", "verdict_p", "verdict",
)

FLOW_COLUMNS: tuple[str, ...] = ("site", "step", "reason", "label", "n")

# The per-site estimate each pooled analysis is pooled on and compared by (lacrima.analysis
# conventions: ``method`` of its rows). Spearman rows and robustness tests are deliberately
# absent: they are reported per site, never pooled.
POOLED_METHODS: dict[str, str] = {
    "correlation": "pearson", "partial_correlation": "pearson_partial",
    "t_test": "hedges_g", "chi_square": "odds_ratio",
}

POOLED = "pooled"
COVARIATE_SEPARATOR = "+"


def covariate_names(covariates: str | None) -> list[str]:
    """The names in a ``covariates`` cell (joined by ``COVARIATE_SEPARATOR``); none for blank.

    Examples
    --------
    >>> covariate_names("age+gender"), covariate_names("")
    (['age', 'gender'], [])
    """
    return [c for c in covariates.split(COVARIATE_SEPARATOR) if c] if covariates else []


def blank_covariates(frame):
    """A copy of ``frame`` whose ``covariates`` are text, blank (never missing) for none.

    Effects are keyed by ``family, x, y, covariates``; a missing set and an empty one must
    be one key. The library's own frames are made this way; functions that accept results
    from elsewhere (``pooling``, ``replication``) pass them through this once.
    """
    return frame.assign(covariates=frame["covariates"].fillna("").astype(str))
