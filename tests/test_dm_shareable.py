"""Issue 13, point 6: a run folder splits what may be shared from what may not (restricted/)."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from lacrima import tables
from lacrima.privacy import MIN_CELL

COUNT = ("n", "count", "n_original", "n_replication")


@pytest.fixture(scope="module")
def run_folder(demo_run):
    return demo_run.storage, demo_run.outputs, demo_run.analyses


def _csv(storage, name):
    return pd.read_csv(io.BytesIO(storage.read_bytes(f"reports/run-1/{name}")), dtype=str,
                       keep_default_na=False)


def test_no_count_1_to_4_in_any_shareable_csv(run_folder):
    storage, out, _ = run_folder
    shareable = [f for f in out.files if f.endswith(".csv") and not f.startswith("restricted/")]
    assert {"participant_flow.csv", "descriptives.csv", "results.csv"} <= set(shareable)
    for name in shareable:
        table = _csv(storage, name)
        for col in (c for c in table.columns if c in COUNT):
            small = [v for v in table[col] if v.replace(".0", "").isdigit()
                     and 0 < int(float(v)) < MIN_CELL]
            assert not small, f"{name}: {col} shows {small}"
    # the exact counts exist, restricted: the demo has exclusions of 1, 3 and 4 people
    exact = _csv(storage, "restricted/participant_flow.csv")
    assert any(0 < int(v) < MIN_CELL for v in exact["n"])


def test_shareable_flow_shows_what_the_report_shows(run_folder):
    storage, _, analyses = run_folder
    shared = _csv(storage, "participant_flow.csv")
    shown = tables.flow_frame(analyses).set_index("Step")
    for row in shared.itertuples():
        assert row.n == shown.loc[row.label, row.site], (row.site, row.label)


def test_row_level_data_and_exports_sit_under_restricted(run_folder):
    storage, out, _ = run_folder
    for name in out.files:
        if not name.startswith("restricted/") and (name.endswith((".sav", ".parquet"))
                                                   or name.startswith("data/")):
            pytest.fail(f"{name} is row-level data outside restricted/")
    assert {"restricted/analysis_ready.parquet", "restricted/data/us.sav",
            "restricted/data/us.csv", "restricted/README.txt"} <= set(out.files)
    assert "do not share" in storage.read_bytes("reports/run-1/restricted/README.txt").decode()
