"""Write invariance_data.csv: the demo's three sites (published Ns) from the synthetic
generator with non-invariance planted at il (wai_04 intercept + 0.8), items only.

Run:  cd /work/wt/<tree> && PYTHONPATH=src python tests/reference/invariance_data.py
The CSV is committed: the lavaan reference (invariance_lavaan.R) and the tests read it,
so a later change to the generator does not move the reference values.
"""

import dataclasses
from pathlib import Path

import pandas as pd

from lacrima.study import _freeze, _thaw, load_site, load_study
from lacrima.synth import simulate


def main() -> None:
    study = load_study()
    raw = _thaw(study.raw)
    raw["synthetic"]["noninvariance"] = {"site": "il", "item": "wai_04", "intercept_shift": 0.8}
    planted = dataclasses.replace(study, raw=_freeze(raw))
    items = [*study.scores["alliance"]["items"], *study.scores["change"]["items"]]
    frames = [simulate(load_site(code), planted, n, 2026)[["site", *items]]
              for code, n in (("us", 124), ("it", 106), ("il", 100))]
    pd.concat(frames, ignore_index=True).to_csv(
        Path(__file__).with_name("invariance_data.csv"), index=False, lineterminator="\n")

    # invariance_data_metric.csv: the same rows with a non-invariant *loading* planted at il:
    # wai_08's deviations from il's mean doubled (its loading and residual SD at il twice the
    # others'), for partial metric invariance (invariance_lavaan.R, "wai_partial_metric").
    d = pd.read_csv(Path(__file__).with_name("invariance_data.csv"))
    d["wai_08"] = d["wai_08"].astype(float)
    il = d["site"] == "il"
    d.loc[il, "wai_08"] = d.loc[il, "wai_08"].mean() + 2.0 * (d.loc[il, "wai_08"] - d.loc[il, "wai_08"].mean())
    d.to_csv(Path(__file__).with_name("invariance_data_metric.csv"), index=False, lineterminator="\n",
             float_format="%.17g")


if __name__ == "__main__":
    main()
