"""The benchmark's pure parts: the bare statistics, target evaluation and the results page.

No timing is asserted here: speed is measured by ``make bench`` (bench/results.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.bare import bare_statistics, write_ready
from lacrima.vocabulary import RESULTS_COLUMNS


def test_bare_statistics_are_the_runs_statistics(demo_run, study, sites, tmp_path):
    # The yardstick must compute what a run publishes, on the data the run analysed.
    folder = write_ready(demo_run.storage, study, sites, tmp_path / "ready")
    ready = {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}
    assert sorted(ready) == sorted(s.code for s in sites)
    results, descriptives, replication = bare_statistics(ready, study, sites)
    run = demo_run.comparison.results.reindex(columns=list(RESULTS_COLUMNS))
    keys = ["family", "analysis", "site", "x", "y", "covariates", "method"]
    assert len(results) == len(run)
    got = results.sort_values(keys, ignore_index=True)
    want = run.sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(got[keys].astype(str), want[keys].astype(str))
    for col in ("n", "estimate", "ci_low", "ci_high", "statistic", "df", "p_value", "p_adjusted",
                "k", "tau2", "i2", "q", "q_p", "pi_low", "pi_high"):
        np.testing.assert_allclose(pd.to_numeric(got[col]).to_numpy(float),
                                   pd.to_numeric(want[col]).to_numpy(float),
                                   rtol=1e-9, equal_nan=True, err_msg=col)
    assert len(replication) == len(demo_run.comparison.replication)
    assert set(descriptives["site"]) == {s.code for s in sites}
