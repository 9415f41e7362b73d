"""A run's decisions and its plots as plain functions, without Prefect (lacrima.steps, report)."""

from __future__ import annotations

import pandas as pd
import pytest

from lacrima import report, steps


@pytest.mark.parametrize("n, requested, chosen", [
    (0, None, "thread"), (3, None, "thread"), (steps.PROCESSES_FROM_SITES - 1, "auto", "thread"),
    (steps.PROCESSES_FROM_SITES, None, "process"), (1000, None, "process"),
    (1000, "thread", "thread"), (3, "process", "process"), (3, "dask", "dask")])
def test_the_runner_follows_the_work_unless_one_is_asked_for(n, requested, chosen):
    assert steps.choose_runner(n, requested) == chosen


def test_reused_and_fresh_analyses_are_merged_in_plan_order(sites, memory_analyses):
    shuffled = list(reversed(memory_analyses))[:2]
    merged = steps.in_site_order(sites, shuffled)
    assert [a.site for a in merged] == [s.code for s in sites if s.code in
                                        {a.site for a in shuffled}]


def test_family_groups_cover_every_family_once(study):
    ids = [f["id"] for f in study.families]
    for n in (1, 2, 3, len(ids), len(ids) + 5):
        groups = steps.family_groups(study, n)
        assert len(groups) == min(n, len(ids)) and all(groups)
        assert sorted(i for g in groups for i in g) == sorted(ids)


@pytest.fixture(scope="module")
def comparison(study, sites, memory_analyses):
    from lacrima.pooling import pool_estimates
    from lacrima.replication import replication_table
    from lacrima.results import Comparison
    from lacrima.vocabulary import RESULTS_COLUMNS

    per_site = pd.concat([a.results for a in memory_analyses], ignore_index=True)
    results = pd.concat([per_site, pool_estimates(per_site, study).reindex(
        columns=list(RESULTS_COLUMNS))], ignore_index=True)
    return Comparison(results, replication_table(per_site, study, list(sites)))


def test_forest_plots_are_exactly_the_plots_the_report_places(comparison, study, sites):
    plots = report.forest_plots(comparison, study, list(sites))
    families = report._families(comparison, study, list(sites))
    placed = ([e["svg"] for f in families for e in f["effects"]]
              + [k for f in families for k in f.get("plots", ())])
    assert len(placed) == len(set(placed)) and set(placed) == set(plots)
    assert all(svg.lstrip().startswith("<svg") for svg in plots.values())
    # A task's share: drawing the families in groups gives the same plots, byte for byte.
    parts = {}
    for group in steps.family_groups(study, 3):
        parts |= report.forest_plots(comparison, study, list(sites), group)
    assert parts == plots
