"""Measurement invariance across sites: multi-group CFA (configural, metric, scalar).

Do WAI-SR (task, bond, goal) and CTSCM-R measure the same thing at every site, so that
pooled correlations mean the same in English, Italian and Hebrew? Each scale is fitted as
a multi-group confirmatory factor model by maximum likelihood with a mean structure, in
three nested steps (Meredith 1993; Vandenberg & Lance 2000): configural (same pattern),
metric (equal loadings), scalar (equal loadings and intercepts). When the scalar step
fails, loadings (metric step) and then intercepts (scalar step) are freed one (item, site)
at a time (partial invariance, Byrne, Shavelson & Muthen 1989).

semopy (the maintained SEM library on PyPI) parses each group's model and builds its
matrices and the derivatives of the implied covariance; semopy 2.3 fits groups only
separately (``semopy.multigroup``), so the joint likelihood with parameters shared across
groups, and the mean structure, are assembled here. Estimates and fit statistics follow
lavaan's (``cfa(..., group = "site", estimator = "ML")``, checked in
tests/test_invariance.py against tests/reference/invariance_lavaan.json).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats
from threadpoolctl import threadpool_limits

STEPS = ("configural", "metric", "scalar")
DELTA_CFI = -0.01
DELTA_RMSEA = 0.015
"""A step fails when CFI drops by .01 or more *and* RMSEA rises by .015 or more (Chen
2007, both together for loadings and intercepts; Cheung & Rensvold 2002 for CFI alone), or
when the chi-square difference test is significant."""
RMSEA_LEVEL = 0.90


@dataclass(frozen=True)
class Fit:
    """One multi-group CFA: its fit and its comparison with the less constrained model.

    ``freed`` lists the intercepts left free across sites as ``item@site``;
    ``compared_with`` names the model the ``delta_*``, ``chi2_diff`` columns refer to.
    """

    scale: str
    model: str
    groups: int
    n: int
    npar: int
    chi2: float
    df: int
    p: float
    cfi: float
    rmsea: float
    rmsea_low: float
    rmsea_high: float
    srmr: float
    compared_with: str = ""
    chi2_diff: float = float("nan")
    df_diff: float = float("nan")
    p_diff: float = float("nan")
    delta_cfi: float = float("nan")
    delta_rmsea: float = float("nan")
    holds: bool | None = None
    freed: str = ""


COLUMNS = tuple(Fit.__dataclass_fields__)

VERSION = 1
"""Version of the fitting code: part of :func:`inputs_digest`. Bump it by hand when what
:func:`plan_invariance` returns for the same data changes (estimator, rules, columns): every
stored fit is then made again on the next report."""


# --------------------------------------------------------------------------- the model


def _syntax(factors: Mapping[str, Sequence[str]], labelled: bool) -> str:
    """lavaan/semopy syntax; ``labelled`` names each free loading so groups share it.

    The first item of each factor is its marker (loading fixed to 1), as lavaan does.
    """
    lines = []
    for factor, items in factors.items():
        terms = [items[0]] + [f"l_{v}*{v}" if labelled else v for v in items[1:]]
        lines.append(f"{factor} =~ " + " + ".join(terms))
    return "\n".join(lines)


class _Joint:
    """The multi-group ML discrepancy of one step, over one vector of joint parameters.

    F = sum_g (n_g / N) [log|Sigma_g| + tr(S_g Sigma_g^-1) - log|S_g| - p
    + (m_g - mu_g)' Sigma_g^-1 (m_g - mu_g)], mu_g = nu_g + Lambda_g alpha_g, with S_g the
    covariance with divisor n_g (lavaan's ``likelihood = "normal"``); chi2 = N F_min.
    """

    def __init__(self, factors: Mapping[str, Sequence[str]], data: Mapping[str, np.ndarray],
                 step: str, freed: Sequence[tuple[str, str]] = (),
                 freed_loadings: Sequence[tuple[str, str]] = ()):
        import semopy  # imported here: a heavy import only a report that asks for CFA pays

        self.groups = list(data)
        self.items = [v for items in factors.values() for v in items]
        names: list[str] = []
        index: dict[str, int] = {}

        def slot(name: str, start: float) -> int:
            if name not in index:
                index[name] = len(names)
                names.append(name)
                starts.append(start)
            return index[name]

        starts: list[float] = []
        self.parts = []
        n_total = sum(len(x) for x in data.values())
        for k, (group, x) in enumerate(data.items()):
            if np.linalg.slogdet(np.cov(x, rowvar=False))[0] <= 0:
                raise ValueError(f"site {group}: the covariance of the {len(self.items)} items "
                                 "is singular (an item without variance, or collinear items)")
            model = semopy.Model(_syntax(factors, labelled=step != "configural"))
            frame = pd.DataFrame(x, columns=self.items)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.load(frame)
            observed = list(model.names_lambda[0])
            latent = list(model.names_lambda[1])
            order = [self.items.index(v) for v in observed]
            xs = x[:, order]
            mean = xs.mean(axis=0)
            cov = np.cov(xs, rowvar=False, bias=True)
            logdet_s = np.linalg.slogdet(cov)[1]
            active = [name for name, p in model.parameters.items() if p.active]
            # Unlabelled parameters (residuals, factor (co)variances) belong to one group, and
            # so does a shared loading freed at this site (partial metric invariance).
            own = {f"l_{v}" for v, g in freed_loadings if g == group}
            cov_slots = [slot(f"{group}:{name}" if name.startswith("_")
                              else f"{name}@{group}" if name in own else name,
                              float(model.parameters[name].start)) for name in active]
            nu_slots = []
            for j, v in enumerate(observed):
                shared = step == "scalar" and (v, group) not in set(freed)
                nu_slots.append(slot(f"nu_{v}" if shared else f"nu_{v}@{group}", mean[j]))
            # Factor means: 0 in the first group; free elsewhere once intercepts are equal.
            alpha_slots = [slot(f"alpha_{f}@{group}", 0.0) if step == "scalar" and k > 0
                           else -1 for f in latent]
            # d Sigma / d theta through (Lambda, Psi, Theta): row i holds parameter i's
            # pattern matrices (semopy's mx_diffs), so the gradient is one product.
            if any(diffs[0] is not None for diffs in model.mx_diffs):
                raise ValueError("invariance models are CFAs: no regressions among factors")
            pattern = np.array([np.concatenate([
                (diffs[i] if diffs[i] is not None else np.zeros_like(mx)).ravel()
                for i, mx in ((1, model.mx_lambda), (2, model.mx_psi), (3, model.mx_theta))])
                for diffs in model.mx_diffs])
            self.parts.append({
                "group": group, "model": model, "w": len(x) / n_total, "n": len(x),
                "mean": mean, "cov": cov, "logdet_s": logdet_s,
                "observed": observed, "latent": latent,
                "cov_slots": np.array(cov_slots), "nu_slots": np.array(nu_slots),
                "alpha_slots": np.array(alpha_slots), "pattern": pattern,
            })
        self.names = names
        self.index = index
        self.start = np.array(starts, dtype=float)
        self.n = n_total
        self.p = len(self.items)

    def _pieces(self, part: dict, theta: np.ndarray):
        model = part["model"]
        model.update_matrices(theta[part["cov_slots"]])
        lam, psi = model.mx_lambda, model.mx_psi
        sigma = lam @ psi @ lam.T + model.mx_theta
        alpha = np.array([theta[s] if s >= 0 else 0.0 for s in part["alpha_slots"]])
        mu = theta[part["nu_slots"]] + lam @ alpha
        return sigma, alpha, mu

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """F and its gradient: dF = tr(W dSigma) - 2 (Sigma^-1 d)' dmu with
        W = Sigma^-1 - Sigma^-1 (S + d d') Sigma^-1."""
        total, grad = 0.0, np.zeros_like(theta)
        for part in self.parts:
            f, g = self._part_objective(part, theta)
            if not np.isfinite(f):
                return np.inf, grad
            total += f
            grad += g
        return float(total), grad

    def _part_objective(self, part: dict, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """One group's weighted term of F and its gradient over all of theta."""
        grad = np.zeros_like(theta)
        sigma, alpha, mu = self._pieces(part, theta)
        sign, logdet = np.linalg.slogdet(sigma)
        if sign <= 0:
            return np.inf, grad
        inv = np.linalg.inv(sigma)
        d = part["mean"] - mu
        inv_d = inv @ d
        f = logdet + np.sum(part["cov"] * inv) - part["logdet_s"] - self.p + d @ inv_d
        w = inv - inv @ (part["cov"] + np.outer(d, d)) @ inv
        lam, psi = part["model"].mx_lambda, part["model"].mx_psi
        g_lam = 2 * w @ lam @ psi - 2 * np.outer(inv_d, alpha)
        g_mats = np.concatenate([g_lam.ravel(), (lam.T @ w @ lam).ravel(), w.ravel()])
        np.add.at(grad, part["cov_slots"], part["w"] * (part["pattern"] @ g_mats))
        np.add.at(grad, part["nu_slots"], part["w"] * -2 * inv_d)
        lam_t = lam.T @ inv_d
        for k, s in enumerate(part["alpha_slots"]):
            if s >= 0:
                grad[s] += part["w"] * -2 * lam_t[k]
        return float(part["w"] * f), grad

    def loading_scores(self, theta: np.ndarray) -> dict[tuple[str, str], float]:
        """Chi-square drop from freeing each shared loading at each site, other parameters
        held: ``N g^2 / (2 h)`` with g and h the first and second derivative of that site's
        term of F in the loading (the score / modification-index form, as for intercepts;
        h from a difference of the analytic gradient)."""
        out = {}
        for part in self.parts:
            _, g = self._part_objective(part, theta)
            for name, slot in self.index.items():
                if not name.startswith("l_") or "@" in name or slot not in part["cov_slots"]:
                    continue
                step = 1e-6 * max(1.0, abs(theta[slot]))
                moved = theta.copy()
                moved[slot] += step
                h = (self._part_objective(part, moved)[1][slot] - g[slot]) / step
                if h > 0:
                    out[(name[2:], part["group"])] = float(self.n * g[slot] ** 2 / (2 * h))
        return out

    def fit(self, start: Mapping[str, float] | None = None) -> np.ndarray:
        """ML estimates; ``start`` (estimates of a neighbouring model, by name) warm-starts
        the parameters it names, and a freed intercept ``nu_v@g`` starts at ``nu_v``."""
        x0 = self.start.copy()
        for i, name in enumerate(self.names):
            key = name if name in (start or {}) else name.split("@")[0]
            if start and key in start:
                x0[i] = start[key]
        result = optimize.minimize(self.objective, x0, jac=True, method="L-BFGS-B",
                                   options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-9,
                                            "maxcor": 30})
        if not np.isfinite(result.fun) or (not result.success
                                            and np.abs(result.jac).max() > 1e-5):
            raise RuntimeError(f"the CFA did not converge: {result.message}")
        return result.x

    def intercept_scores(self, theta: np.ndarray) -> dict[tuple[str, str], float]:
        """Chi-square drop from freeing each item's intercept at each site, other
        parameters held: n_g (Sigma_g^-1 d_g)_j^2 / (Sigma_g^-1)_jj.

        The univariate score (modification-index) form of the likelihood ratio, a lower
        bound on the drop once the other parameters move too (Sorbom 1989).
        """
        out = {}
        for part in self.parts:
            sigma, _, mu = self._pieces(part, theta)
            inv = np.linalg.inv(sigma)
            inv_d = inv @ (part["mean"] - mu)
            for j, v in enumerate(part["observed"]):
                out[(v, part["group"])] = float(part["n"] * inv_d[j] ** 2 / inv[j, j])
        return out

    def srmr(self, theta: np.ndarray) -> float:
        """lavaan's SRMR (Bentler): residual covariances and means standardised by the
        observed SDs, root mean square per group, groups weighted by n_g / N."""
        out = 0.0
        for part in self.parts:
            sigma, _, mu = self._pieces(part, theta)
            sd = np.sqrt(np.diag(part["cov"]))
            res = (part["cov"] - sigma) / np.outer(sd, sd)
            low = res[np.tril_indices(self.p)]
            res_mean = (part["mean"] - mu) / sd
            out += part["w"] * np.sqrt((np.sum(low**2) + np.sum(res_mean**2))
                                       / (len(low) + self.p))
        return float(out)

    def baseline_chi2(self) -> float:
        """Independence model per group (free variances and means): N F_b."""
        return float(sum(part["n"] * (np.sum(np.log(np.diag(part["cov"]))) - part["logdet_s"])
                         for part in self.parts))


def rmsea_ci(chi2: float, df: int, n: int, groups: int, level: float = RMSEA_LEVEL):
    """RMSEA and its CI as lavaan computes them: sqrt(max(chi2/df - 1, 0) / N) sqrt(G),
    the bounds from the noncentrality lambda with P(X2 <= chi2 | df, lambda) = (1 +- level)/2
    (Browne & Cudeck 1993; Steiger 1998 for the sqrt(G) of multiple groups).

    Examples
    --------
    R: ``sqrt(uniroot(function(l) pchisq(250, 100, ncp = l) - .95, c(0, 2000))$root
    / (300 * 100)) * sqrt(3)`` = 0.1035726 (lower); .05 gives 0.1415696 (upper).

    >>> [round(v, 4) for v in rmsea_ci(250.0, 100, 300, 3)]
    [0.1225, 0.1036, 0.1416]
    """
    scale = np.sqrt(groups / (n * df))
    point = float(np.sqrt(max(chi2 / df - 1, 0) / n) * np.sqrt(groups))

    def bound(prob: float) -> float:
        if stats.chi2.cdf(chi2, df) < prob:
            return 0.0
        hi = max(chi2, 1.0) * 10
        lam = optimize.brentq(lambda nc: stats.ncx2.cdf(chi2, df, nc) - prob, 1e-12, hi,
                              xtol=1e-12)
        return float(np.sqrt(lam) * scale)

    return point, bound((1 + level) / 2), bound((1 - level) / 2)


def fit_step(scale: str, factors: Mapping[str, Sequence[str]], data: Mapping[str, np.ndarray],
             step: str, freed: Sequence[tuple[str, str]] = (),
             start: Mapping[str, float] | None = None,
             freed_loadings: Sequence[tuple[str, str]] = ()) -> tuple[Fit, dict[str, float]]:
    """Fit one invariance step of one scale.

    Parameters
    ----------
    scale : str
        Name for the output rows.
    factors : mapping
        Factor name -> its items (the first is the marker).
    data : mapping
        Site code -> complete item rows (array n_g x items, columns in ``factors`` order).
    step : {"configural", "metric", "scalar"}
    freed : sequence of (item, site)
        Intercepts left free at that site in the scalar step (partial invariance).
    start : mapping, optional
        Estimates of a neighbouring model by parameter name (warm start).
    freed_loadings : sequence of (item, site)
        Loadings left free at that site in the metric and scalar steps (partial metric
        invariance).

    Returns
    -------
    Fit
        chi2 = N F_ML, df = G p (p + 3) / 2 - free parameters, CFI against the per-group
        independence model, RMSEA with its 90% CI, SRMR.
    dict
        The estimates by parameter name.
    """
    if step not in STEPS:
        raise ValueError(f"invariance step {step!r} is not one of {STEPS}")
    joint = _Joint(factors, data, step, freed, freed_loadings)
    theta = joint.fit(start)
    chi2 = joint.n * joint.objective(theta)[0]
    groups = len(data)
    df = groups * joint.p * (joint.p + 3) // 2 - len(theta)
    chi2_b = joint.baseline_chi2()
    df_b = groups * joint.p * (joint.p - 1) // 2
    denom = max(chi2 - df, chi2_b - df_b, 0.0)
    cfi = 1.0 if denom == 0 else 1 - max(chi2 - df, 0.0) / denom
    rmsea, low, high = rmsea_ci(chi2, df, joint.n, groups)
    name = ("partial_scalar" if freed else "partial_metric" if freed_loadings and step == "metric"
            else step)
    labels = [f"{v}@{g}" for v, g in freed]
    if step == "scalar":
        labels = [f"{v}@{g} (loading)" for v, g in freed_loadings] + labels
    fit = Fit(scale=scale, model=name, groups=groups, n=joint.n, npar=len(theta),
               chi2=float(chi2), df=int(df), p=float(stats.chi2.sf(chi2, df)), cfi=float(cfi),
               rmsea=rmsea, rmsea_low=low, rmsea_high=high, srmr=joint.srmr(theta),
               freed=";".join(labels if step == "scalar" else
                              [f"{v}@{g}" for v, g in freed_loadings]))
    return fit, dict(zip(joint.names, theta.tolist()))


def compare(restricted: Fit, free: Fit, alpha: float = 0.05, delta_cfi: float = DELTA_CFI,
            delta_rmsea: float = DELTA_RMSEA) -> Fit:
    """``restricted`` with its change from ``free``: chi-square difference test, delta
    CFI and delta RMSEA.

    The step holds unless the chi-square difference is significant at ``alpha`` or CFI
    drops by ``-delta_cfi`` or more while RMSEA rises by ``delta_rmsea`` or more (Chen
    2007). ``alpha = 0`` leaves the chi-square test out (it rejects trivial differences
    when the sites are large).
    """
    diff = restricted.chi2 - free.chi2
    ddf = restricted.df - free.df
    p = float(stats.chi2.sf(diff, ddf))
    d_cfi = restricted.cfi - free.cfi
    d_rmsea = restricted.rmsea - free.rmsea
    fails = p < alpha or (d_cfi <= delta_cfi and d_rmsea >= delta_rmsea)
    return Fit(**{**asdict(restricted), "compared_with": free.model, "chi2_diff": diff,
                  "df_diff": ddf, "p_diff": p, "delta_cfi": d_cfi, "delta_rmsea": d_rmsea,
                  "holds": not fails})


def invariance(scale: str, factors: Mapping[str, Sequence[str]], frame: pd.DataFrame,
               group: str = "site", alpha: float = 0.05, max_freed: int = 3,
               delta_cfi: float = DELTA_CFI, delta_rmsea: float = DELTA_RMSEA,
               screen: int = 5) -> list[Fit]:
    """Configural, metric and scalar fits of one scale across sites, then partial scalar.

    Parameters
    ----------
    scale : str
    factors : mapping
        Factor -> items.
    frame : pandas.DataFrame
        One row per participant, the ``group`` column and the items; rows with a missing
        item are left out (listwise, lavaan's default).
    alpha, delta_cfi, delta_rmsea : float
        When a step holds (``compare``).
    max_freed : int
        At most this many intercepts are freed.
    screen : int
        Candidates refitted per freeing, those with the largest score statistics.

    Returns
    -------
    list of Fit
        configural, metric (vs configural) and, when the metric step fails, one
        ``partial_metric`` row per freed loading (each vs configural); scalar (vs the last
        metric row, the freed loadings kept free) and, when the scalar step fails, one
        ``partial_scalar`` row per freed intercept (each vs that metric row).

    Notes
    -----
    Partial invariance by sequential freeing, loadings first (partial metric), then
    intercepts (partial scalar): the ``screen`` (item, site) loadings or intercepts with
    the largest score statistics (``_Joint.loading_scores``, ``_Joint.intercept_scores``:
    the modification index with the other parameters held) are each freed and refitted,
    and the one whose freeing lowers chi-square most is kept (Sorbom 1989), until the step
    holds or ``max_freed`` are free. Freeing is per site, so the row names the site whose item differs; lavaan's
    ``lavTestScore`` on the reference data points at the same intercept.
    """
    items = [v for vs in factors.values() for v in vs]
    complete = frame[[group, *items]].dropna()
    data = {str(g): rows[items].to_numpy(dtype=float)
            for g, rows in complete.groupby(group, sort=True)}
    if len(data) < 2:
        raise ValueError(f"invariance of {scale!r} needs at least two sites with complete "
                         f"{scale} items, got {sorted(data)}")
    rule = (alpha, delta_cfi, delta_rmsea)
    # Tiny matrices: BLAS threads only contend (a fit took 10x longer on a busy machine).
    with threadpool_limits(1):
        configural, _ = fit_step(scale, factors, data, "configural")
        metric_fit, metric_est = fit_step(scale, factors, data, "metric")
        metric = compare(metric_fit, configural, *rule)
        out = [configural, metric]
        loadings: list[tuple[str, str]] = []
        while not metric.holds and len(loadings) < max_freed:
            joint = _Joint(factors, data, "metric", freed_loadings=loadings)
            scores = joint.loading_scores(np.array([metric_est[n] for n in joint.names]))
            ranked = sorted((c for c in scores if c not in loadings), key=lambda c: -scores[c])
            candidates = ranked[:screen]
            if not candidates:
                break
            fits = [fit_step(scale, factors, data, "metric", start=metric_est,
                             freed_loadings=[*loadings, c]) for c in candidates]
            best = int(np.argmin([f.chi2 for f, _ in fits]))
            loadings.append(candidates[best])
            metric = compare(fits[best][0], configural, *rule)
            metric_est = fits[best][1]
            out.append(metric)
        scalar_fit, estimates = fit_step(scale, factors, data, "scalar", start=metric_est,
                                         freed_loadings=loadings)
        current = compare(scalar_fit, metric, *rule)
        out.append(current)
        freed: list[tuple[str, str]] = []
        while not current.holds and len(freed) < max_freed:
            joint = _Joint(factors, data, "scalar", freed, loadings)
            scores = joint.intercept_scores(np.array([estimates[n] for n in joint.names]))
            ranked = sorted((c for c in scores if c not in freed), key=lambda c: -scores[c])
            candidates = ranked[:screen]
            fits = [fit_step(scale, factors, data, "scalar", [*freed, c], estimates, loadings)
                    for c in candidates]
            best = int(np.argmin([f.chi2 for f, _ in fits]))
            freed.append(candidates[best])
            current = compare(fits[best][0], metric, *rule)
            estimates = fits[best][1]
            out.append(current)
    return out


def to_frame(fits: Sequence[Fit]) -> pd.DataFrame:
    """Tidy rows, one per fitted model, columns ``COLUMNS``."""
    return pd.DataFrame([asdict(f) for f in fits], columns=list(COLUMNS))


def _scales(study) -> dict[str, dict[str, list[str]]]:
    """Scale -> factor -> items, from the plan's ``[invariance] scales`` and its scores."""
    return {scale: {sub: list(study.scores[sub]["items"]) for sub in subscales}
            for scale, subscales in study.section("invariance").get("scales", {}).items()}


def inputs_digest(study, data: Mapping[str, pd.DataFrame]) -> str | None:
    """SHA-256 of everything :func:`plan_invariance` reads, or None when it fits nothing.

    The ``[invariance]`` settings, each scale's factors and items, :data:`VERSION`, and per
    site (in ``data``'s order) its code and the values of the scales' items (float64, missing
    included). Two calls with equal digests return equal fits: the digest keys the stored fit
    (``catalog.invariance_key``). None when there are no scales or more sites than
    ``max_sites`` (nothing is fitted then, and the rows are not read).
    """
    cfg = study.section("invariance")
    if not cfg.get("scales") or len(data) > int(cfg.get("max_sites", 12)):
        return None
    scales = _scales(study)
    h = hashlib.sha256(json.dumps({"version": VERSION, "config": cfg, "scales": scales},
                                  sort_keys=True, default=str).encode())
    items = sorted({v for factors in scales.values() for vs in factors.values() for v in vs})
    for code, frame in data.items():
        values = np.ascontiguousarray(frame[items].to_numpy(dtype="float64"))
        h.update(f"\0{code}\0{values.shape}\0".encode())
        h.update(values.tobytes())
    return h.hexdigest()


def fits_bytes(fits: pd.DataFrame, notes: list[str]) -> bytes:
    """``plan_invariance``'s answer as JSON, every value exact (floats round-trip)."""
    rows = [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
            for r in fits.to_dict("records")]
    return json.dumps({"fits": rows, "notes": notes}).encode()


def fits_from_bytes(blob: bytes) -> tuple[pd.DataFrame, list[str]]:
    """The inverse of :func:`fits_bytes`: the same frame (``to_frame``'s columns) and notes."""
    stored = json.loads(blob)
    return pd.DataFrame(stored["fits"], columns=list(COLUMNS)), list(stored["notes"])


def plan_invariance(study, data: Mapping[str, pd.DataFrame]) -> tuple[pd.DataFrame, list[str]]:
    """Every scale of the plan's ``[invariance]`` across the sites in ``data``.

    Parameters
    ----------
    study : lacrima.study.Study
        ``[invariance]``: ``scales`` (scale -> the plan scores that are its factors),
        ``alpha``, ``delta_cfi``, ``delta_rmsea``, ``max_freed``, ``max_sites``.
    data : mapping
        Site code -> its analysis-ready rows (the scale items are read).

    Returns
    -------
    (pandas.DataFrame, list of str)
        ``to_frame`` rows of every scale, and notes for the report: sites left out (fewer
        complete rows than the scale has items, so its covariance matrix is singular) and
        scales not fitted.
    """
    cfg = study.section("invariance")
    fits: list[Fit] = []
    notes: list[str] = []
    if not cfg.get("scales"):
        return to_frame(fits), notes
    if len(data) > int(cfg.get("max_sites", 12)):
        notes.append(f"Not fitted: {len(data)} sites exceed [invariance] max_sites = "
                     f"{cfg.get('max_sites', 12)} (the joint fit grows with the sites).")
        return to_frame(fits), notes
    for scale, factors in _scales(study).items():
        items = [v for vs in factors.values() for v in vs]
        frames, left_out = [], []
        for code, frame in data.items():
            rows = frame[items].dropna()
            if len(rows) <= len(items):
                left_out.append(code)
            else:
                frames.append(rows.astype("float64").assign(site=code))
        if left_out:
            notes.append(f"{scale}: sites left out (no more complete rows than its "
                         f"{len(items)} items): {', '.join(sorted(left_out))}.")
        if len(frames) < 2:
            notes.append(f"{scale}: not fitted (fewer than two sites with enough rows).")
            continue
        try:
            fits += invariance(scale, factors, pd.concat(frames, ignore_index=True),
                               alpha=float(cfg.get("alpha", 0.05)),
                               max_freed=int(cfg.get("max_freed", 3)),
                               delta_cfi=float(cfg.get("delta_cfi", DELTA_CFI)),
                               delta_rmsea=float(cfg.get("delta_rmsea", DELTA_RMSEA)))
        except (ValueError, RuntimeError) as exc:
            # One scale that cannot be fitted must not stop the run's report.
            notes.append(f"{scale}: not fitted ({exc}).")
    return to_frame(fits), notes
