"""Write ipd_cases.csv: the (x, y, site) rows of the mixed-model reference cases.

Run:  cd tests/reference && PYTHONPATH=../../src python ipd_cases.py
then  Rscript ipd_reference.R  (fits every case with lme4, writes ipd_reference.json).

The rows are frozen here so that the tests do not depend on lacrima's simulator:
- ``demo_<family>_<x>_<y>``: every IPD pair of the demo (synthetic sites at their published
  N, the plan's seed, the criers-only subsets as the plan says), plus the same pairs at two
  other seeds (``seed<k>_...``, data no lacrima default run uses);
- ``flat_*``: identical true slopes and intercepts (the variances on the boundary);
- ``k2_*``: two sites only;
- ``heldout_*``: subsets of the demo's sites (synthetic, at the plan's seed or seed 1 at half
  the published N) where the optimiser before issue 23 stopped short of lme4's REML optimum
  (by 0.036, 0.13 and 2e-4 in the criterion; the true optima are singular with a positive
  intercept variance, which it had labelled "variance on the boundary (estimated as 0)"),
  and ``near_singular_*``: planted data whose optimum is just inside the boundary.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lacrima import scoring, synth
from lacrima.ipd import _criers_mask, _pairs
from lacrima.study import load_sites, load_study


def _demo_cases(seed: int, prefix: str, codes=None, scale: float = 1.0,
                pairs=None) -> list[pd.DataFrame]:
    study = load_study()
    frames = []
    for s in load_sites():
        if codes is not None and s.code not in codes:
            continue
        raw = synth.simulate(s, study, max(20, int(s.published_n * scale)), seed=seed)
        data, _ = scoring.analysis_ready(raw, study, s.code)
        data["site"] = s.code
        frames.append(data)
    stacked = pd.concat(frames, ignore_index=True)
    criers = _criers_mask(stacked, study.section("analysis").get("criers", "cried_in_therapy"))
    out = []
    for family, x, y, only_criers in _pairs(study):
        if pairs is not None and (family, x, y) not in pairs:
            continue
        rows = stacked[criers] if only_criers else stacked
        part = pd.DataFrame({"x": pd.to_numeric(rows[x]).astype(float),
                             "y": pd.to_numeric(rows[y]).astype(float),
                             "site": rows["site"].astype(str)}).dropna()
        part.insert(0, "case", f"{prefix}_{family}_{x}_{y}")
        out.append(part)
    return out


def _planted(name: str, slopes, intercepts, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for i, (b, a) in enumerate(zip(slopes, intercepts)):
        x = rng.integers(1, 6, n).astype(float)
        parts.append(pd.DataFrame({"case": name, "x": x, "y": a + b * x + rng.normal(0, 1, n),
                                   "site": f"s{i}"}))
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    study = load_study()
    cases = _demo_cases(study.raw["study"]["seed"], "demo")
    for seed in (7,):
        cases += _demo_cases(seed, f"seed{seed}")
    cases += [
        _planted("flat_3sites", [0.4] * 3, [1.0] * 3, 100, 5),
        _planted("flat_slope_3sites", [0.4] * 3, [1.0, 1.5, 0.6], 100, 6),
        _planted("varied_5sites", [0.2, 0.5, 0.4, 0.1, 0.6], [1.0, 1.4, 0.7, 1.1, 0.9], 80, 8),
        _planted("k2_flat", [0.3, 0.3], [1.0, 1.0], 120, 9),
        _planted("k2_varied", [0.1, 0.6], [1.0, 1.8], 120, 10),
        _planted("near_singular_k3", [0.40, 0.42, 0.41], [1.0, 1.3, 1.15], 90, 12),
        _planted("near_singular_k2", [0.30, 0.33], [1.0, 1.25], 110, 13),
    ]
    seed = study.raw["study"]["seed"]
    cases += _demo_cases(seed, "heldout_k2_il_us", codes=("il", "us"),
                         pairs={("H1", "after_happy", "change"),
                                ("H3", "felt_vulnerable", "alliance")})
    cases += _demo_cases(1, "heldout_k2_il_it_half", codes=("il", "it"), scale=0.5,
                         pairs={("H4", "attachment_anxiety", "understood_better")})
    pd.concat(cases, ignore_index=True).to_csv("ipd_cases.csv", index=False, float_format="%.17g")


if __name__ == "__main__":
    main()
