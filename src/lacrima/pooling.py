"""Pool the per-site estimates across sites (protocol section 7, first point).

The tidy per-site table (``vocabulary.RESULTS_COLUMNS``) is the only input: pooling is
recomputed from it without touching any site's data. Each pooled effect gets two rows,
``method = "<estimator>+<test>"`` (random effects, e.g. ``REML+knha``) and
``method = "FE"`` (fixed effect), both with ``site = "pooled"`` and
``analysis = "meta_analysis"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lacrima import vocabulary as voc
from lacrima.meta.effects import FROM_SCALE, fisher_z, from_symmetric_ci
from lacrima.meta.rma import FRAME_COLUMNS, METAFOR_TEST, TESTS, moderator_test, random_effects
from lacrima.stats.adjust import adjust_pvalues
from lacrima.study import Study

__all__ = ["pool_estimates", "pool_details", "heterogeneity", "pooling_settings", "site_weights",
           "HETEROGENEITY_COLUMNS", "EFFECT_KEY", "POOLED_ANALYSES"]

EFFECT_KEY = ("family", "analysis", "x", "y", "covariates")

# The scale each pooled per-site estimate is pooled on (lacrima.meta.effects).
_SCALE = {"pearson": "fisher_z", "pearson_partial": "fisher_z", "hedges_g": "identity",
          "odds_ratio": "log"}
# analysis -> (per-site method, pooling scale), for the analyses of vocabulary.POOLED_METHODS.
POOLED_ANALYSES = {a: (m, _SCALE[m]) for a, m in voc.POOLED_METHODS.items()}

# A single site is not a pooled estimate (sites/study.toml [pooling], k = 1 rule).
MIN_K_POOLED = 2

DETAIL_COLUMNS = EFFECT_KEY + ("scale", "n", "sites") + FRAME_COLUMNS


@dataclass(frozen=True)
class _EffectInput:
    key: tuple
    scale: str
    yi: np.ndarray
    vi: np.ndarray
    n: float
    sites: tuple[str, ...]


def _numeric(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").astype(float).to_numpy()


def _effect_inputs(site_results: pd.DataFrame, study: Study) -> list[_EffectInput]:
    missing = [c for c in EFFECT_KEY + ("site", "n", "estimate", "ci_low", "ci_high", "method")
               if c not in site_results.columns]
    if missing:
        raise ValueError(f"site results lack columns {missing}; expected vocabulary.RESULTS_COLUMNS")
    families = tuple(study.section("pooling").get("families", ()))
    level = study.level
    rows = voc.blank_covariates(site_results.loc[
        site_results["family"].isin(families)
        & site_results["analysis"].isin(tuple(POOLED_ANALYSES))
        & (site_results["site"] != voc.POOLED)
    ])
    out = []
    for key, grp in rows.groupby(list(EFFECT_KEY), sort=True, dropna=False):
        analysis = key[1]
        method, scale = POOLED_ANALYSES[analysis]
        grp = grp.loc[grp["method"] == method].sort_values("site")
        est = _numeric(grp, "estimate")
        n = _numeric(grp, "n")
        if scale == "fisher_z":
            ok = np.isfinite(est) & np.isfinite(n) & (np.abs(est) < 1)
            g = len(voc.covariate_names(key[4]))
            ok &= n - 3 - g > 0
            if not ok.any():
                continue
            yi, vi = fisher_z(est[ok], n[ok], g)
        else:
            lo, hi = _numeric(grp, "ci_low"), _numeric(grp, "ci_high")
            ok = np.isfinite(est) & np.isfinite(lo) & np.isfinite(hi) & (hi > lo)
            if scale == "log":
                ok &= (est > 0) & (lo > 0)
            if not ok.any():
                continue
            yi, vi = from_symmetric_ci(est[ok], lo[ok], hi[ok], level, log=scale == "log")
        out.append(_EffectInput(key=tuple(key), scale=scale, yi=yi, vi=vi,
                                n=float(np.nansum(n[ok])), sites=tuple(grp["site"].to_numpy()[ok])))
    return out


def pooling_settings(study: Study) -> tuple[str, str]:
    """tau2 estimator and CI method: ``[pooling] method`` and ``ci`` (``test`` is the old name)."""
    cfg = study.section("pooling")
    ci = str(cfg.get("ci", "knha"))
    if ci not in TESTS:
        raise ValueError(f"sites/study.toml [pooling] ci = {ci!r}: must be one of {TESTS} "
                         "(metafor's test = \"knha\", \"adhoc\", \"z\")")
    return str(cfg.get("method", "REML")), ci


def pool_details(site_results: pd.DataFrame, study: Study) -> pd.DataFrame:
    """Full random- and fixed-effect results per effect, on the pooling scale.

    Parameters
    ----------
    site_results : DataFrame
        Per-site tidy rows (``vocabulary.RESULTS_COLUMNS``) from all sites.
    study : Study
        The study plan; ``[pooling]`` gives the families, estimator and test.

    Returns
    -------
    DataFrame
        Columns ``DETAIL_COLUMNS``: the effect key (family, analysis, x, y, covariates),
        ``scale`` (``fisher_z``, ``identity`` for Hedges' g, ``log`` for the odds
        ratio), ``n`` (total), ``sites`` (codes joined with "+"), then
        :data:`lacrima.meta.rma.FRAME_COLUMNS` (estimate, se, CI, test, prediction
        interval, tau2 with its Q-profile CI, tau, I2, H2, Q, convergence, note) for
        ``model = random`` and ``model = fixed``. Effects with a single site are
        included here with the k = 1 note, for the report to show why they are not pooled.

    Notes
    -----
    Estimates stay on the pooling scale here; :func:`pool_estimates` back-transforms.
    """
    method, test = pooling_settings(study)
    frames = []
    for eff in _effect_inputs(site_results, study):
        res = random_effects(eff.yi, eff.vi, method=method, test=test, level=study.level)
        frame = res.to_frame()
        for col, val in zip(EFFECT_KEY, eff.key):
            frame[col] = val
        frame["scale"] = eff.scale
        frame["n"] = eff.n
        frame["sites"] = "+".join(eff.sites)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(DETAIL_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(DETAIL_COLUMNS)]


def _run_id(site_results: pd.DataFrame) -> str:
    if "run_id" not in site_results.columns:
        return ""
    ids = site_results["run_id"].dropna().astype(str).unique()
    return str(ids[0]) if len(ids) == 1 else ""


def pool_estimates(site_results: pd.DataFrame, study: Study,
                   details: pd.DataFrame | None = None) -> pd.DataFrame:
    """Pooled estimate of every correlation, partial correlation, Hedges' g and odds ratio.

    Parameters
    ----------
    site_results : DataFrame
        Per-site tidy rows (``vocabulary.RESULTS_COLUMNS``). Used: correlation rows
        (method ``pearson``), partial correlation rows (``pearson_partial``; the number
        of covariates is the count of names in ``covariates``), ``t_test`` rows
        (``hedges_g`` with a symmetric normal CI) and ``chi_square`` rows
        (``odds_ratio`` with a CI symmetric on the log scale), of the families in
        ``study.section("pooling")["families"]``. Rows with a missing estimate are skipped.
    study : Study
        The study plan (``[pooling]``: families, ``method``, ``test``; ``[study].level``).
    details : DataFrame, optional
        :func:`pool_details` of the same rows, when the caller has it already.

    Returns
    -------
    DataFrame
        Columns exactly ``vocabulary.RESULTS_COLUMNS``, two rows per pooled effect:

        - ``method = "<method>+<test>"`` (e.g. ``REML+knha``): random-effects estimate,
          CI and prediction interval back-transformed (r for correlations via tanh, g
          as is, odds ratio via exp); ``statistic``/``df``/``p_value`` the t test on
          k - 1 df (``df`` blank under ``test = "z"``); ``tau2`` on the pooling scale
          (Fisher z, g or log OR); ``i2`` in percent; ``q``/``q_p`` Cochran's Q test.
        - ``method = "FE"``: fixed-effect estimate and normal CI back-transformed, its z
          test (``df`` blank), ``tau2 = 0``, the same ``q``/``q_p``; no prediction
          interval or I2.

        Both: ``site = "pooled"``, ``analysis = "meta_analysis"``, the effect's family, x,
        y, covariates; ``k`` sites pooled; ``n`` their total n; ``p_adjusted`` Holm
        within family, separately for random-effects and fixed-effect rows (the
        per-site convention of protocol section 6 applied to the pooled site).

    Notes
    -----
    k = 1: no row (a single site is not a pooled estimate; ``pool_details`` keeps it
    with a note). k = 2: pooled, prediction interval blank. The estimator and
    formulas are those of :func:`lacrima.meta.rma.random_effects`; Fisher z uses
    variance 1/(n - 3 - g) for g covariates.

    References
    ----------
    Borenstein, M., Hedges, L. V., Higgins, J. P. T., & Rothstein, H. R. (2009).
    Introduction to meta-analysis. Wiley. (Chapter 6: correlations via Fisher z.)
    """
    if details is None:
        details = pool_details(site_results, study)
    method, test = pooling_settings(study)
    rows = []
    for rec in details.to_dict("records"):
        if rec["k"] < MIN_K_POOLED:
            continue
        back = FROM_SCALE[rec["scale"]]
        rows.append({
            "run_id": _run_id(site_results), "family": rec["family"],
            "analysis": "meta_analysis", "site": voc.POOLED, "x": rec["x"], "y": rec["y"],
            "covariates": rec["covariates"], "n": rec["n"],
            "estimate": float(back(rec["estimate"])), "ci_low": float(back(rec["ci_low"])),
            "ci_high": float(back(rec["ci_high"])), "statistic": rec["statistic"],
            "df": rec["df"], "p_value": rec["p_value"], "p_adjusted": np.nan,
            "method": f"{method}+{test}" if rec["model"] == "random" else "FE",
            "k": rec["k"], "tau2": rec["tau2"], "i2": rec["i2"], "q": rec["q"],
            "q_p": rec["q_p"], "pi_low": float(back(rec["pi_low"])),
            "pi_high": float(back(rec["pi_high"])),
        })
    out = pd.DataFrame(rows, columns=list(voc.RESULTS_COLUMNS))
    if out.empty:
        return out
    for _, idx in out.groupby(["family", "method"]).groups.items():
        p = out.loc[idx, "p_value"].astype(float)
        ok = p.notna()
        if ok.any():
            # lacrima's Holm: statsmodels' multipletests runs gc.collect() on every call
            # (about 0.15 s each, 14 families x models), for the same arithmetic.
            out.loc[p[ok].index, "p_adjusted"] = adjust_pvalues(p[ok].to_numpy(), "holm")
    return out


HETEROGENEITY_COLUMNS = EFFECT_KEY + (
    "scale", "k", "n", "sites", "tau2_method", "ci_method", "metafor_test", "level",
    "fe_estimate", "fe_ci_low", "fe_ci_high",
    "re_estimate", "re_ci_low", "re_ci_high", "re_statistic", "re_df", "re_p_value",
    "pi_low", "pi_high",
    "tau2", "tau2_ci_low", "tau2_ci_high", "tau", "tau_ci_low", "tau_ci_high",
    "i2", "i2_ci_low", "i2_ci_high", "h2", "h2_ci_low", "h2_ci_high",
    "q", "q_df", "q_p",
    "role_k_original", "role_qm", "role_qm_df", "role_qm_df2", "role_qm_p",
    "re_ci_narrower_than_fe", "tau2_uninformative", "note",
)
# With this few studies tau2 (and I2, the prediction interval) say next to nothing.
TAU2_UNINFORMATIVE_K = 3


def _i2_h2(tau2: np.ndarray, vi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """I2 (percent) and H2 at tau2, with metafor's typical within-study variance."""
    w = 1.0 / vi
    s2 = (len(vi) - 1) * w.sum() / (w.sum() ** 2 - (w ** 2).sum())
    tau2 = np.asarray(tau2, dtype=float)
    return 100 * tau2 / (tau2 + s2), (tau2 + s2) / s2


def heterogeneity(site_results: pd.DataFrame, study: Study,
                  roles: dict[str, str]) -> pd.DataFrame:
    """One row per pooled effect (k >= 2): every heterogeneity statistic, as Many Labs 2 exports.

    Parameters
    ----------
    site_results : DataFrame
        Per-site tidy rows, as for :func:`pool_estimates`.
    study : Study
        ``[pooling]`` families, ``method`` and ``ci``; ``[study].level``.
    roles : dict
        Site code -> role (``original`` / ``replication``), for the moderator test.

    Returns
    -------
    DataFrame
        Columns ``HETEROGENEITY_COLUMNS``. Estimates and their intervals (fixed effect,
        random effects, prediction interval) are on the effect's own scale, as in
        results.csv: r for correlations (back from Fisher z), Hedges' g, the odds ratio
        (back from the log); ``scale`` names the pooling scale, on which ``tau2``, ``tau``
        and their Q-profile intervals are given (as results.csv's ``tau2``). I2 (percent)
        and H2 with the intervals implied by tau2's. Q, its df and p. ``role_*``: the
        test of original vs replication sites as a moderator (``role_qm`` F(1, k - 2)
        under Knapp-Hartung, chi-square(1) under ``z``; blank when k < 3 or one role
        only). ``re_ci_narrower_than_fe``: the random-effects CI is narrower than the
        fixed-effect one (possible under untruncated Knapp-Hartung at small k).
        ``tau2_uninformative``: k <= 3.

    Notes
    -----
    metafor: ``rma(yi, vi, method, test)``, ``rma(yi, vi, method = "FE")``,
    ``confint(., type = "QP")``, ``predict(.)``, ``rma(yi, vi, mods = ~ role, ...)``
    (tests/reference/meta_reference.R, cases ``hetero_*``).
    """
    method, ci = pooling_settings(study)
    rows = []
    for eff in _effect_inputs(site_results, study):
        if len(eff.yi) < MIN_K_POOLED:
            continue
        res = random_effects(eff.yi, eff.vi, method=method, test=ci, level=study.level)
        back = FROM_SCALE[eff.scale]
        site_roles = [roles.get(s, "") for s in eff.sites]
        mod = moderator_test(eff.yi, eff.vi, site_roles, test=ci)
        i2_ci, h2_ci = _i2_h2(np.array([res.tau2_ci_low, res.tau2_ci_high]), eff.vi)
        rows.append({
            **dict(zip(EFFECT_KEY, eff.key)), "scale": eff.scale, "k": res.k, "n": eff.n,
            "sites": "+".join(eff.sites), "tau2_method": method, "ci_method": ci,
            "metafor_test": METAFOR_TEST[ci], "level": study.level,
            "fe_estimate": float(back(res.fe_estimate)), "fe_ci_low": float(back(res.fe_ci_low)),
            "fe_ci_high": float(back(res.fe_ci_high)),
            "re_estimate": float(back(res.estimate)), "re_ci_low": float(back(res.ci_low)),
            "re_ci_high": float(back(res.ci_high)), "re_statistic": res.statistic,
            "re_df": res.df, "re_p_value": res.p_value,
            "pi_low": float(back(res.pi_low)), "pi_high": float(back(res.pi_high)),
            "tau2": res.tau2, "tau2_ci_low": res.tau2_ci_low, "tau2_ci_high": res.tau2_ci_high,
            "tau": res.tau, "tau_ci_low": float(np.sqrt(res.tau2_ci_low)),
            "tau_ci_high": float(np.sqrt(res.tau2_ci_high)),
            "i2": res.i2, "i2_ci_low": float(i2_ci[0]), "i2_ci_high": float(i2_ci[1]),
            "h2": res.h2, "h2_ci_low": float(h2_ci[0]), "h2_ci_high": float(h2_ci[1]),
            "q": res.q, "q_df": res.q_df, "q_p": res.q_p,
            "role_k_original": sum(r == study.role_names[1] for r in site_roles),
            "role_qm": mod["qm"], "role_qm_df": mod["qm_df"], "role_qm_df2": mod["qm_df2"],
            "role_qm_p": mod["qm_p"],
            # compared on the pooling scale, where both intervals are symmetric
            "re_ci_narrower_than_fe": bool(res.ci_high - res.ci_low < res.fe_ci_high - res.fe_ci_low),
            "tau2_uninformative": bool(res.k <= TAU2_UNINFORMATIVE_K),
            "note": res.note,
        })
    return pd.DataFrame(rows, columns=list(HETEROGENEITY_COLUMNS))


def site_weights(site_results: pd.DataFrame, study: Study, pooled: pd.DataFrame) -> pd.DataFrame:
    """Each site's weight in its effect's random-effects estimate, in percent.

    Parameters
    ----------
    site_results : DataFrame
        Per-site tidy rows, as for :func:`pool_estimates`.
    study : Study
    pooled : DataFrame
        :func:`pool_estimates` of the same rows (its random-effects rows give tau2).

    Returns
    -------
    DataFrame
        ``EFFECT_KEY`` + ``site``, ``weight``: one row per site of each pooled effect,
        the weights of an effect summing to 100.

    Notes
    -----
    :math:`w_i = 1/(v_i + \\hat\\tau^2)` on the pooling scale, as a percentage of their
    sum: metafor's ``weights(rma(yi, vi, method, test))`` (tests/test_pooling.py).
    """
    random = pooled[(pooled["site"] == voc.POOLED) & (pooled["method"].astype(str) != "FE")]
    tau2 = dict(zip(zip(random["family"], random["x"], random["y"],
                        random["covariates"].fillna("").astype(str)), random["tau2"]))
    rows = []
    for eff in _effect_inputs(site_results, study):
        key = dict(zip(EFFECT_KEY, eff.key))
        t2 = tau2.get((key["family"], key["x"], key["y"], key["covariates"]))
        if t2 is None or not np.isfinite(t2):
            continue
        w = 1.0 / (eff.vi + t2)
        rows += [{**key, "site": s, "weight": float(p)}
                 for s, p in zip(eff.sites, 100 * w / w.sum())]
    return pd.DataFrame(rows, columns=[*EFFECT_KEY, "site", "weight"])
