"""Synthetic drops in each site's native format (protocol section 9).

``simulate`` draws the canonical frame from a seeded latent model whose true values
are configuration (``sites/study.toml`` [synthetic], with ``sites/<code>/site.toml``
overrides); ``write_drop`` encodes it in the site's native format via its codebook
(Qualtrics CSV, Italian workbook or CSV, SPSS .sav) and optionally plants mess.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import optimize, stats

from lacrima.codebook import TEXT_KINDS, Codebook, FileFormat, load_codebook
from lacrima.native import canonical_series
from lacrima.study import Site, Study

CATEGORY_PROBS: Mapping[int, tuple[float, ...]] = {
    5: (0.08, 0.17, 0.30, 0.28, 0.17),
    7: (0.05, 0.08, 0.14, 0.22, 0.23, 0.17, 0.11),
}
"""Marginal answer shares at the latent mean (mildly left-skewed, as clinical ratings are)."""

TARGETS: Mapping[str, str] = {
    "r_change": "change", "r_alliance": "alliance", "r_security": "attachment_security",
}
"""Sections of [synthetic] holding item-score correlations, and the score each refers to."""

ATTENTION_FAIL_SHARE = 0.03
AGE_LIMITS = (18, 80)
FIRST_DATE = dt.date(2023, 9, 1)
DATE_SPAN_DAYS = 300
GAUSS_HERMITE_NODES = 80
ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# --------------------------------------------------------------------------- latent model


def thresholds(n_categories: int) -> np.ndarray:
    """Normal thresholds giving ``CATEGORY_PROBS[n_categories]`` at the latent mean."""
    probs = np.asarray(CATEGORY_PROBS[n_categories])
    return stats.norm.ppf(np.cumsum(probs)[:-1])


def discretise(z: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Category 1..K of each latent value (K = len(thr) + 1)."""
    return 1 + (np.asarray(z)[..., None] > thr).sum(axis=-1)


def item_validity(thr: np.ndarray) -> float:
    """corr(f(Z), Z) for a standard normal Z cut at ``thr``.

    Notes
    -----
    With f(Z) = 1 + sum_k 1{Z > tau_k}, cov(f(Z), Z) = sum_k phi(tau_k) (Stein's
    lemma) and var f(Z) follows from the category probabilities; this is the
    discretisation attenuation of a Likert item (Olsson, Drasgow & Dorans 1982,
    the polyserial correlation).
    """
    c1 = stats.norm.pdf(thr).sum()
    return float(c1 / np.sqrt(_category_var(thr)))


def score_validity(thr: np.ndarray, loadings: np.ndarray, corr: np.ndarray) -> float:
    """corr(mean of k discretised items, T) for jointly normal latent items.

    Parameters
    ----------
    thr : numpy.ndarray
        Thresholds of each item, shape (k, K - 1) (or (K - 1,) shared by all items);
        an item's intercept nu moves its thresholds to ``thr - nu``.
    loadings : numpy.ndarray
        corr(Y_j, T) of each standard normal latent item Y_j with the standard normal T.
    corr : numpy.ndarray
        (k, k) correlations of the latent items.

    Notes
    -----
    With f(Y) = 1 + sum_a 1{Y > tau_a}, cov(f(Y_j), T) = corr(Y_j, T) sum_a phi(tau_ja)
    (Stein's lemma) and cov(f(Y_i), f(Y_j)) = sum_ab [Phi2(tau_ia, tau_jb; r_ij) -
    Phi(tau_ia) Phi(tau_jb)], the bivariate-normal orthant sums behind the polychoric
    correlation (Olsson 1979); this is the discretisation attenuation of a Likert
    scale score (Olsson, Drasgow & Dorans 1982).
    """
    loadings = np.asarray(loadings, dtype=float)
    k = len(loadings)
    thr = np.broadcast_to(np.asarray(thr, dtype=float), (k, np.shape(thr)[-1]))
    cov_t = loadings * stats.norm.pdf(thr).sum(axis=1)
    var = np.array([[_category_var(thr[i]) if i == j else 0.0 for j in range(k)]
                    for i in range(k)])
    pairs: dict[tuple, float] = {}
    for i in range(k):
        for j in range(i + 1, k):
            key = (tuple(thr[i]), tuple(thr[j]), round(float(corr[i, j]), 12))
            if key not in pairs:
                pairs[key] = _category_cov(thr[i], thr[j], float(corr[i, j]))
            var[i, j] = var[j, i] = pairs[key]
    return float(cov_t.sum() / np.sqrt(var.sum()))


def _category_cov(thr_i: np.ndarray, thr_j: np.ndarray, r: float) -> float:
    a, b = np.meshgrid(thr_i, thr_j, indexing="ij")
    points = np.column_stack([a.ravel(), b.ravel()])
    joint = stats.multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, r], [r, 1.0]]).cdf(points)
    independent = stats.norm.cdf(points[:, 0]) * stats.norm.cdf(points[:, 1])
    return float((np.atleast_1d(joint) - independent).sum())


def _category_var(thr: np.ndarray) -> float:
    cdf = np.concatenate([[0.0], stats.norm.cdf(thr), [1.0]])
    p = np.diff(cdf)
    cats = np.arange(1, len(p) + 1)
    mean = (p * cats).sum()
    return float((p * (cats - mean) ** 2).sum())


def simulate(site: Site, study: Study, n: int, seed: int, *, id_offset: int = 0) -> pd.DataFrame:
    """Draw one synthetic canonical frame for ``site``.

    Parameters
    ----------
    site : lacrima.study.Site
    study : lacrima.study.Study
    n : int
        Participants (rows), at least 1.
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives the same frame.
    id_offset : int
        IDs are numbered from ``id_offset + 1`` so a later batch gets fresh IDs.

    Returns
    -------
    pandas.DataFrame
        ``site`` and every canonical variable, with the dtypes ``read_drop`` returns
        (Int64, boolean, datetime64[ns], str).

    Notes
    -----
    Latent model (all N(0, 1) unless noted). Alliance T_a and change T_c correlate
    rho; attachment security T_s is independent. Non-criers have T_c shifted down by
    d / v_change. Items follow the factor model of [synthetic.items] (``item_model``):
    WAI_j = cut(nu_j + l F_k + sqrt(1 - l^2) e) with F_k = sqrt(r_s) T_a + sqrt(1 - r_s) u_k
    for its subscale k (task, bond, goal correlating r_s), CTSC_j = cut(nu_j + l T_c + ...),
    rq_secure = cut7(T_s). Each episode item with a configured r to score S is
    cut(nu + r* T_S + sqrt(1 - r*^2) (k P + sqrt(1 - k^2) e)) with P the factor of its
    after-crying scale (k its loading there) and r* = r / (v_item * v_S), where v_item =
    ``item_validity`` and v_S = ``score_validity`` (corr of the observed score with
    its latent), so that the *observed* item-score r matches the configured r: the
    latent r is disattenuated for discretisation (Olsson, Drasgow & Dorans 1982) and
    for the score's unreliability (Spearman 1904). rho = r_ac * sqrt(1 + p(1 - p) d^2)
    / (v_a v_c) so the r of the observed scores over everyone, where criers (share
    p) are shifted by d, equals the configured r_ac. Age is drawn from a normal
    truncated to 18-80 whose truncated mean and SD are the configured ones.

    Examples
    --------
    >>> from lacrima.study import load_site, load_study
    >>> frame = simulate(load_site("it"), load_study(), n=3, seed=1)
    >>> frame["participant_id"].tolist()
    ['IT-0001', 'IT-0002', 'IT-0003']
    >>> str(frame["wai_01"].dtype), str(frame["completed_at"].dtype)
    ('Int64', 'datetime64[ns]')
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if id_offset < 0:
        raise ValueError(f"id_offset must be >= 0, got {id_offset}")
    codebook = load_codebook(site)
    config = site.synthetic(study)
    variables = study.variables
    rng = np.random.default_rng(seed)
    thr5, thr7 = thresholds(5), thresholds(7)
    model = item_model(site, study)
    validity = {s: score_validity(thr5 - m["intercepts"][:, None], m["t_loadings"], m["corr"])
                for s, m in model.items() if s in ("alliance", "change")}
    validity["attachment_security"] = item_validity(thr7)

    genders = list(config["gender_share"])
    shares = np.array([config["gender_share"][g] for g in genders], dtype=float)
    cried_share = config["cried_share"]
    p_cry = float(sum(config["gender_share"][g] * cried_share[g] for g in genders) / shares.sum())
    d = float(config["criers_minus_noncriers_change_d"])
    rho = float(config["alliance_change_r"]) * np.sqrt(1 + p_cry * (1 - p_cry) * d**2)
    rho /= validity["alliance"] * validity["change"]
    _check_r(rho, "alliance_change_r (latent)")

    # The order of draws is fixed so a seed means the same data whatever the config.
    gender = np.array(genders)[rng.choice(len(genders), size=n, p=shares / shares.sum())]
    cried = rng.random(n) < np.array([cried_share[g] for g in gender])
    age = np.round(
        _truncated_normal(float(config["age_mean"]), float(config["age_sd"]), rng.random(n))
    )
    z = rng.standard_normal((n, 3))
    t_alliance = z[:, 0]
    shift = np.where(cried, 0.0, d / validity["change"])
    t_change = rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1] - shift
    t_security = z[:, 2]
    latent = {"alliance": t_alliance, "change": t_change, "attachment_security": t_security}

    out: dict[str, Any] = {}
    for score in ("alliance", "change"):
        m = model[score]
        # Factor k = sqrt(r) T + sqrt(1 - r) u_k: subscales correlate r and T is their
        # common part, the latent the configured correlations refer to.
        unique = rng.standard_normal((n, len(m["factors"])))
        factors = (np.sqrt(m["factor_r"]) * latent[score][:, None]
                   + np.sqrt(1 - m["factor_r"]) * unique)
        noise = rng.standard_normal((n, len(m["items"])))
        lam = m["loadings"]
        y = m["intercepts"] + lam * factors[:, m["factor_of"]] + np.sqrt(1 - lam**2) * noise
        cats = discretise(y, thr5)
        for j, var in enumerate(m["items"]):
            out[var] = cats[:, j]
    rq_noise = rng.standard_normal((n, 3))
    rq_latent = {
        "rq_secure": t_security,
        "rq_fearful": -0.5 * t_security + np.sqrt(0.75) * rq_noise[:, 0],
        "rq_preoccupied": -0.3 * t_security + np.sqrt(0.91) * rq_noise[:, 1],
        "rq_dismissing": -0.3 * t_security + np.sqrt(0.91) * rq_noise[:, 2],
    }
    for var, lat in rq_latent.items():
        out[var] = discretise(lat, thr7)
    best_levels = np.array(variables["rq_best"]["levels"])
    # Prototype order in the plan is secure, fearful, preoccupied, dismissing.
    out["rq_best"] = best_levels[np.argmax(np.column_stack(list(rq_latent.values())), axis=1)]

    targets = {}
    for section, score in TARGETS.items():
        for var, r in config.get(section, {}).items():
            targets[var] = (score, float(r))
    episode = study.variables_in("episode")
    episode_scales = [s for s in model if s not in ("alliance", "change")]
    scale_factor = dict(zip(episode_scales, rng.standard_normal((len(episode_scales), n))))
    episode_noise = rng.standard_normal((n, len(episode)))
    for j, var in enumerate(episode):
        nu = _intercepts(config, site.code).get(var, 0.0)
        residual = episode_noise[:, j]
        scale = next((s for s in episode_scales if var in model[s]["items"]), None)
        if scale is not None:
            # The item's part not explained by its target score loads on the scale's own
            # factor, so the scale has a common factor (alpha) and the item-score r holds.
            kappa = float(model[scale]["loadings"][model[scale]["items"].index(var)])
            residual = kappa * scale_factor[scale] + np.sqrt(1 - kappa**2) * residual
        if var in targets:
            score, r = targets[var]
            r_latent = r / (item_validity(thr5 - nu) * validity[score])
            _check_r(r_latent, f"{var} with {score} (latent)")
            x = r_latent * latent[score] + np.sqrt(1 - r_latent**2) * residual
        else:
            x = residual
        out[var] = np.where(cried, discretise(nu + x, thr5), 0)

    cry_frequency = discretise(rng.standard_normal(n), thr7)
    months = np.clip(np.round(np.exp(rng.normal(np.log(14), 0.8, n))), 0, 600)
    sessions = np.where(cried, 1 + rng.poisson(3, n), 0)
    attention = rng.random(n) >= ATTENTION_FAIL_SHARE
    days = rng.integers(0, DATE_SPAN_DAYS, n)

    values: dict[str, list[Any]] = {
        "participant_id": participant_ids(codebook, n, id_offset),
        "completed_at": [pd.Timestamp(FIRST_DATE) + pd.Timedelta(days=int(x)) for x in days],
        "consent": [True] * n,
        "in_therapy": [True] * n,
        "attention_check": [bool(x) for x in attention],
        "age": [int(x) for x in age],
        "gender": [str(g) for g in gender],
        "therapy_months": [int(x) for x in months],
        "cry_frequency_life": [int(x) for x in cry_frequency],
        "cried_in_therapy": [bool(x) for x in cried],
        "cry_sessions": [int(x) for x in sessions],
    }
    for var in episode:
        values[var] = [int(x) if c else None for x, c in zip(out[var], cried)]
    for var in (*model["alliance"]["items"], *model["change"]["items"], *rq_latent):
        values[var] = [int(x) for x in out[var]]
    values["rq_best"] = [str(x) for x in out["rq_best"]]

    frame = {"site": canonical_series([site.code] * n, "str")}
    for var, meta in variables.items():
        if var not in values:
            raise ValueError(
                f"the synthetic model does not generate {var!r}, which the plan defines")
        frame[var] = canonical_series(values[var], meta["type"])
    return pd.DataFrame(frame)


def _truncated_normal(mean: float, sd: float, u: np.ndarray) -> np.ndarray:
    """Quantiles ``u`` of a normal truncated to ``AGE_LIMITS`` whose *truncated* mean and SD
    are ``mean`` and ``sd`` (the published sample moments), not those of the parent.

    Notes
    -----
    The parent (mu, sigma) solve E[X | lo < X < hi] = mean and SD[X | lo < X < hi] = sd
    with the moments of ``scipy.stats.truncnorm``; clipping instead would shift the
    mean up (a sample cannot be younger than 18).
    """
    lo, hi = AGE_LIMITS

    def moments(params: np.ndarray) -> np.ndarray:
        mu, log_sigma = params
        sigma = np.exp(log_sigma)
        a, b = (lo - mu) / sigma, (hi - mu) / sigma
        m, v = stats.truncnorm.stats(a, b, loc=mu, scale=sigma, moments="mv")
        return np.array([float(m) - mean, np.sqrt(float(v)) - sd])

    mu, log_sigma = optimize.fsolve(moments, x0=np.array([mean, np.log(sd)]), xtol=1e-10)
    sigma = float(np.exp(log_sigma))
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    return stats.truncnorm.ppf(u, a, b, loc=mu, scale=sigma)


def _check_r(r: float, what: str) -> None:
    if not -1 < r < 1:
        raise ValueError(f"synthetic model: {what} = {r:.3f} is outside (-1, 1); the configured "
                         "correlation cannot be reached after discretisation")


def item_model(site: Site, study: Study) -> dict[str, dict[str, Any]]:
    """The item factor model of each scale in ``[synthetic.items]`` for ``site``.

    Returns
    -------
    dict
        Per scale (a plan score name): ``items`` (list), ``factors`` (subscale names, or
        the scale itself), ``factor_of`` (each item's factor index), ``factor_r``
        (correlation between the subscale factors), ``loadings`` and ``intercepts``
        (arrays over items), ``t_loadings`` (each latent item's correlation with the
        scale's latent T = loading * sqrt(factor_r)) and ``corr`` (latent item
        correlations).
    """
    config = site.synthetic(study)
    spec = config.get("items", {})
    intercepts = _intercepts(config, site.code)
    out = {}
    for scale, loading in spec.get("loading", {}).items():
        if scale not in study.scores or "items" not in study.scores[scale]:
            raise ValueError(f"[synthetic.items] loading names {scale!r}, which is not a "
                             "plan score with items")
        items = list(study.scores[scale]["items"])
        subscales = list(spec.get("subscales", {}).get(scale, [])) or [scale]
        factor_of = []
        for var in items:
            owners = [k for k, sub in enumerate(subscales) if var in study.scores[sub]["items"]]
            if len(owners) != 1:
                raise ValueError(f"[synthetic.items] subscales of {scale!r}: item {var!r} is "
                                 f"in {len(owners)} of {subscales}, expected exactly one")
            factor_of.append(owners[0])
        factor_r = float(spec.get("subscale_r", {}).get(scale, 1.0))
        lam = np.full(len(items), float(loading))
        same = np.equal.outer(factor_of, factor_of)
        corr = np.outer(lam, lam) * np.where(same, 1.0, factor_r)
        np.fill_diagonal(corr, 1.0)
        out[scale] = {
            "items": items, "factors": subscales, "factor_of": np.array(factor_of),
            "factor_r": factor_r, "loadings": lam,
            "intercepts": np.array([intercepts.get(v, 0.0) for v in items]),
            "t_loadings": lam * np.sqrt(factor_r), "corr": corr,
        }
    for scale in ("alliance", "change"):
        if scale not in out:
            raise ValueError(f"[synthetic.items] loading has no entry for {scale!r}")
    return out


def _intercepts(config: Mapping[str, Any], code: str) -> dict[str, float]:
    """Latent item intercepts of this site: [synthetic.intercepts] plus the planted
    non-invariance shift when [synthetic.noninvariance] names this site."""
    out = {k: float(v) for k, v in config.get("intercepts", {}).items()}
    planted = config.get("noninvariance", {})
    if planted.get("site") == code:
        item = planted["item"]
        out[item] = out.get(item, 0.0) + float(planted["intercept_shift"])
    return out


def participant_ids(codebook: Codebook, n: int, id_offset: int = 0) -> list[str]:
    """IDs number id_offset + 1 .. id_offset + n in the site's ID shape (codebook [ids]).

    ``kind = "sequence"`` formats ``template`` with ``n``; ``kind = "random"`` derives
    ``prefix`` + ``length`` alphanumerics from a hash of (site, number), so IDs are
    unique across batches that use different offsets and do not depend on the seed.
    """
    ids = codebook.ids
    kind = ids.get("kind", "sequence")
    numbers = range(id_offset + 1, id_offset + n + 1)
    if kind == "sequence":
        template = ids.get("template", "{n}")
        out = [template.format(n=k) for k in numbers]
    elif kind == "random":
        length = int(ids.get("length", 15))
        out = [ids.get("prefix", "") + _hash_id(f"{codebook.site}:{k}", length) for k in numbers]
    else:
        raise ValueError(
            f"codebook {codebook.path}: [ids] kind {kind!r} is not 'sequence' or 'random'")
    if len(set(out)) != len(out):
        raise ValueError(f"synthetic IDs of site {codebook.site!r} collide; lengthen [ids] length")
    return out


# IDs a seed's block of numbers may use: seed k numbers from (k mod 1000) * 100,000 + 1, so
# synthetic batches of up to 100,000 people under different seeds never share an ID (and
# numeric IDs stay within SPSS's 8-digit F8.0 format).
ID_BLOCK = 100_000


def seed_id_offset(seed: int | None, first_id: int | None = None) -> int:
    """``id_offset`` for a synthetic drop: IDs from ``first_id`` on, else a block per seed.

    ``first_id`` continues a site's numbering (``lacrima synth --first-id N``); without
    it a seed gives its own IDs (``--seed``), so two synthetic batches with different seeds
    are different people, not the same people with other answers. No seed: IDs from 1.

    Examples
    --------
    >>> seed_id_offset(None), seed_id_offset(3), seed_id_offset(3, first_id=41)
    (0, 300000, 40)
    """
    if first_id is not None:
        if first_id < 1:
            raise ValueError(f"first ID {first_id}: IDs are numbered from 1")
        return first_id - 1
    return 0 if seed is None else (int(seed) % 1000) * ID_BLOCK


def _hash_id(key: str, length: int) -> str:
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=32).digest(), "big")
    chars = []
    for _ in range(length):
        digest, k = divmod(digest, len(ID_ALPHABET))
        chars.append(ID_ALPHABET[k])
    return "".join(chars)


# --------------------------------------------------------------------------- native encoding


def write_drop(site: Site, study: Study, out: Path, n: int | None = None, seed: int | None = None,
               mess: bool = False, id_offset: int = 0, *, format: str | None = None) -> Path:
    """Write a synthetic drop in the site's native format.

    Parameters
    ----------
    site, study
        The site and the plan.
    out : Path
        File to write, or an existing folder (or a path without extension) to write
        ``<site>_synthetic_n<N>_seed<S><ext>`` into.
    n : int, optional
        Participants; default the site's published N (us 124, it 106, il 100).
    seed : int, optional
        Default: the plan's ``[study] seed``.
    mess : bool
        Plant realistic mess: blank items, an out-of-range code, a duplicated ID, a
        fake e-mail in an identifying column, episode answers from a non-crier and an
        answer label not in the codebook (codebook ``[synthetic]`` says where).
    id_offset : int
        First ID number minus one, so a second batch uses fresh IDs.
    format : str, optional
        Format kind to write (e.g. ``"csv"`` for Italy's CSV variant); default the
        site's first ``[[formats]]``.

    Returns
    -------
    Path
        The file written.

    Notes
    -----
    The same arguments give a byte-identical CSV or .sav (the .sav creation stamp is
    fixed) and identical workbook cell values.
    """
    codebook = load_codebook(site)
    codebook.check_against(study)
    n = int(site.published_n if n is None else n)
    seed = int(study.raw["study"]["seed"] if seed is None else seed)
    fmt = codebook.primary_format(format)
    frame = simulate(site, study, n, seed, id_offset=id_offset)
    if mess:
        frame = _mess_canonical(frame, study, np.random.default_rng([seed, 2]))
    table = _encode(frame, codebook, study, fmt, np.random.default_rng([seed, 1]))
    if mess:
        _mess_native(table, codebook, np.random.default_rng([seed, 3]))
    path = _target(Path(out), site.code, n, seed, fmt)
    if path.suffix.lower() not in fmt.extensions:
        raise ValueError(f"site {site.code!r} sends {fmt.kind} files "
                         f"({', '.join(fmt.extensions)}); cannot write one as {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt.kind in TEXT_KINDS:
        _write_csv(table, codebook, fmt, path)
    elif fmt.kind == "xlsx":
        _write_xlsx(table, codebook, fmt, path, study)
    else:
        _write_sav(table, codebook, study, path)
    return path


def _target(out: Path, code: str, n: int, seed: int, fmt: FileFormat) -> Path:
    if out.is_dir() or not out.suffix:
        return out / f"{code}_synthetic_n{n}_seed{seed}{fmt.extensions[0]}"
    return out


def _mess_canonical(frame: pd.DataFrame, study: Study, rng: np.random.Generator) -> pd.DataFrame:
    frame = frame.copy()
    n = len(frame)
    items = list(study.variables_in("wai")) + list(study.variables_in("ctsc"))
    for row in rng.choice(n, size=min(3, n), replace=False):
        frame.loc[int(row), items[int(rng.integers(len(items)))]] = pd.NA
    wai = study.variables_in("wai")
    if wai:
        high = int(study.variables[wai[2 % len(wai)]].get("valid", (1, 5))[1])
        frame.loc[int(rng.integers(n)), wai[2 % len(wai)]] = high + 2
    if n >= 2:
        frame.loc[1, "participant_id"] = frame.loc[0, "participant_id"]
    non_criers = np.flatnonzero(~frame["cried_in_therapy"].fillna(True).to_numpy(dtype=bool))
    episode = study.variables_in("episode")
    if len(non_criers) and episode:
        row = int(non_criers[0])
        frame.loc[row, episode[0]] = 3
        frame.loc[row, episode[-1]] = 2
    return frame


def _mess_native(table: dict[str, list[Any]], codebook: Codebook, rng: np.random.Generator) -> None:
    n = len(next(iter(table.values())))
    ident = codebook.synthetic.get("mess_identifying_column")
    if ident:
        table[ident] = [f"client{int(k):05d}@example.org" for k in rng.integers(0, 100000, n)]
    unknown = codebook.synthetic.get("mess_unknown_label")
    if unknown and unknown["column"] in table:
        table[unknown["column"]][int(rng.integers(n))] = unknown["value"]


def _column_order(codebook: Codebook) -> list[str]:
    order = [c for c in codebook.file_order]
    order += [s.column for s in codebook.columns.values() if s.column not in order]
    order += [e.column for e in codebook.extra_columns if e.column not in order]
    return order


def _encode(frame: pd.DataFrame, codebook: Codebook, study: Study, fmt: FileFormat,
            rng: np.random.Generator) -> dict[str, list[Any]]:
    """Canonical frame -> native columns (python values, None for blank), in file order."""
    n = len(frame)
    labels = fmt.values == "labels"
    text = fmt.kind in TEXT_KINDS
    # Time of day and survey duration: the tool's metadata, not canonical data.
    seconds = rng.integers(8 * 3600, 22 * 3600, n)
    duration = rng.integers(600, 2400, n)
    ended = [None if pd.isna(d) else d + pd.Timedelta(seconds=int(s))
             for d, s in zip(frame["completed_at"], seconds)]
    native: dict[str, list[Any]] = {}
    by_column = {spec.column: spec for spec in codebook.columns.values()}
    for column in _column_order(codebook):
        spec = by_column.get(column)
        if spec is None:
            extra = next(e for e in codebook.extra_columns if e.column == column)
            native[column] = _fake(extra.synth, ended, duration, fmt, rng)
            continue
        vtype = study.variables[spec.canonical]["type"]
        scale = codebook.scale_of(spec.canonical)
        cells = []
        for k, v in enumerate(frame[spec.canonical].tolist()):
            if v is None or v is pd.NA or (not isinstance(v, str) and pd.isna(v)):
                cells.append(None)
            elif vtype == "date":
                cells.append(_date_cell(ended[k], fmt))
            elif vtype == "string":
                cells.append(float(int(v)) if spec.numeric and not labels else str(v))
            elif scale is not None and scale.has_value(_py(v)):
                cells.append(scale.label_of(_py(v)) if labels else float(scale.code_of(_py(v))))
            elif vtype in ("integer", "likert"):
                cells.append(str(int(v)) if text else int(v) if labels else float(v))
            else:
                cells.append(str(v))
        native[column] = cells
    return native


def _date_cell(stamp: pd.Timestamp, fmt: FileFormat) -> Any:
    """Text in the codebook's format (CSV), a date (SPSS) or a midnight datetime (Excel)."""
    if fmt.kind in TEXT_KINDS:
        return stamp.strftime(fmt.date_format)
    if fmt.kind == "sav":
        return stamp.date()
    return stamp.normalize().to_pydatetime()


def _py(v: Any) -> Any:
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def _fake(kind: str, ended: list, duration: np.ndarray, fmt: FileFormat,
          rng: np.random.Generator) -> list:
    n = len(ended)
    if kind.startswith("constant:"):
        return [kind.split(":", 1)[1]] * n
    if kind == "end_datetime":
        return [e.strftime(fmt.date_format) if e is not None else None for e in ended]
    if kind == "start_datetime":
        return [None if e is None else (e - pd.Timedelta(seconds=int(d))).strftime(fmt.date_format)
                for e, d in zip(ended, duration)]
    if kind == "duration":
        return [str(int(d)) for d in duration]
    if kind == "ip":
        # RFC 5737 documentation ranges: never a real address.
        nets = ("192.0.2", "198.51.100", "203.0.113")
        net, host = rng.integers(0, 3, n), rng.integers(1, 255, n)
        return [f"{nets[int(a)]}.{int(b)}" for a, b in zip(net, host)]
    if kind == "latitude":
        return [f"{x:.4f}" for x in rng.uniform(25.0, 48.0, n)]
    if kind == "longitude":
        return [f"{x:.4f}" for x in rng.uniform(-122.0, -71.0, n)]
    if kind == "blank":
        return [None] * n
    raise ValueError(f"unknown synth kind {kind!r} for an extra column")


def _header_rows(codebook: Codebook, fmt: FileFormat, columns: list[str]) -> list[list[str]]:
    """Names row, then (Qualtrics) question text and ``{"ImportId": ...}`` rows."""
    described = {spec.column: spec for spec in codebook.columns.values()}
    described.update({e.column: e for e in codebook.extra_columns})
    rows = [list(columns)]
    if fmt.header_rows >= 2:
        rows.append([(described[c].text if c in described else "") or c for c in columns])
    if fmt.header_rows >= 3:
        third = []
        for c in columns:
            imp = (described[c].import_id if c in described else "") or c
            third.append(imp if imp.startswith("{")
                         else json.dumps({"ImportId": imp}, separators=(",", ":")))
        rows.append(third)
    return rows


def _write_csv(table: dict[str, list[Any]], codebook: Codebook, fmt: FileFormat,
               path: Path) -> None:
    columns = list(table)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter=fmt.delimiter, lineterminator="\r\n",
                        quoting=csv.QUOTE_MINIMAL)
    for row in _header_rows(codebook, fmt, columns):
        writer.writerow(row)
    for k in range(len(table[columns[0]])):
        writer.writerow(["" if table[c][k] is None else _text(table[c][k], fmt) for c in columns])
    path.write_bytes(buf.getvalue().encode(fmt.write_encoding))


def _text(v: Any, fmt: FileFormat) -> str:
    if isinstance(v, float):
        s = str(int(v)) if v.is_integer() else repr(v)
        return s.replace(".", fmt.decimal)
    return str(v)


def _write_xlsx(table: dict[str, list[Any]], codebook: Codebook, fmt: FileFormat, path: Path,
                study: Study) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = fmt.sheet or "Sheet1"
    columns = list(table)
    for row in _header_rows(codebook, fmt, columns):
        ws.append(row)
    for k in range(len(table[columns[0]])):
        ws.append([table[c][k] for c in columns])
    excel_date = re.sub(r"%([dmY])", lambda m: EXCEL_DATE_TOKENS[m.group(1)], fmt.date_format)
    dates = {codebook.columns[v].column for v, meta in study.variables.items()
             if meta["type"] == "date"}
    for j, c in enumerate(columns, start=1):
        if c in dates:
            for r in range(fmt.header_rows + 1, ws.max_row + 1):
                ws.cell(row=r, column=j).number_format = excel_date
    # Fixed document times keep repeated writes alike (openpyxl stamps "now" otherwise).
    wb.properties.created = wb.properties.modified = dt.datetime(2024, 1, 1)
    wb.save(path)


EXCEL_DATE_TOKENS = {"d": "DD", "m": "MM", "Y": "YYYY"}
SAV_STAMP_OFFSET = 92   # creation date (9 bytes) then time (8 bytes) in the .sav header record


def _write_sav(table: dict[str, list[Any]], codebook: Codebook, study: Study, path: Path) -> None:
    import pyreadstat

    by_column = {spec.column: spec for spec in codebook.columns.values()}
    data = {}
    for c, cells in table.items():
        spec = by_column.get(c)
        vtype = study.variables[spec.canonical]["type"] if spec else "string"
        if vtype == "date":
            data[c] = pd.Series(cells, dtype="object")
        elif spec is not None and (spec.numeric or vtype != "string"):
            data[c] = pd.Series([np.nan if v is None else float(v) for v in cells], dtype="float64")
        else:
            data[c] = pd.Series(["" if v is None else str(v) for v in cells], dtype="object")
    df = pd.DataFrame(data)
    labels, value_labels, missing, formats = {}, {}, {}, {}
    for c in df.columns:
        spec = by_column.get(c)
        if spec is None:
            continue
        labels[c] = spec.text or None
        scale = codebook.scale_of(spec.canonical)
        if scale is not None:
            # Unlabelled scale points ("2", "3") get no SPSS value label, as in real files.
            value_labels[c] = {float(code): lab
                               for code, lab in zip(scale.native_codes, scale.labels)
                               if not lab.isdigit()}
        codes = sorted(set(spec.missing_codes) | set(scale.missing_codes if scale else ()))
        if codes:
            missing[c] = [float(x) for x in codes[:3]]
        if df[c].dtype == "float64":
            formats[c] = "F8.0" if spec.canonical == "participant_id" else "F3.0"
    pyreadstat.write_sav(df, str(path), column_labels=labels, variable_value_labels=value_labels,
                         missing_ranges=missing, variable_format=formats)
    _fix_sav_stamp(path)


def _fix_sav_stamp(path: Path) -> None:
    """Overwrite the header's creation date/time so equal data give equal bytes."""
    with open(path, "r+b") as fh:
        fh.seek(SAV_STAMP_OFFSET)
        stamp = fh.read(17)
        if re.fullmatch(rb"\d\d \w{3} \d\d\d\d:\d\d:\d\d", stamp):
            fh.seek(SAV_STAMP_OFFSET)
            fh.write(b"01 Jan 2400:00:00")
