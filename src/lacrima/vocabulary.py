"""One column vocabulary, used by code, expectations and reports alike.

The tidy estimates table (``RESULTS_COLUMNS``) is the contract between per-site and
cross-site work: pooling is recomputed from it without touching any site's data.
"""

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

POOLED = "pooled"
COVARIATE_SEPARATOR = "+"
