"""The run plan: one function decides what a run does, and every command asks it (issue 21).

``lacrima.runplan.plan`` is called by ``lacrima run`` (before Prefect), by the pipeline flow
(under the lease, and again after its ingest) and by the landing sweep; none of them decides
with the pieces (``steps.plan_site``, ``site_keys``, ``sites_to_analyse``, ``needs_report``).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lacrima import intake, runplan
from lacrima.privacy import DEMO_KEY
from lacrima.results import SitePlan
from lacrima.steps import RunContext
from lacrima.storage import LocalStorage

REPO = Path(__file__).resolve().parents[1]
PIECES = ("plan_site", "site_keys", "sites_to_analyse", "needs_report", "choose_runner")


@pytest.fixture
def spy(monkeypatch):
    """Every call of ``runplan.plan``, whoever makes it, with the plan it returned."""
    calls, real = [], runplan.plan

    def recording(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]
    monkeypatch.setattr(runplan, "plan", recording)
    return calls


def test_a_store_moves_from_drops_waiting_to_a_report_due_to_nothing_new(
        tmp_path, study, sites, demo_drops, ingested_demo, demo_run):
    landed = LocalStorage(tmp_path / "store")
    for s in sites:
        intake.upload(landed, s, demo_drops[s.code])
    waiting = runplan.plan(landed, sites, study)
    assert waiting.ingest == tuple(s.code for s in sites) and waiting.pending == len(sites)
    assert waiting.drops == tuple(SitePlan(s.code, 1, 1) for s in sites)
    assert (waiting.input_keys, waiting.report, waiting.nothing_new) == ((), False, False)

    due = runplan.plan(LocalStorage(ingested_demo.root), sites, study)   # ingested, no report
    assert (due.ingest, due.report, due.reuse) == ((), True, ())
    assert due.analyse == tuple(s.code for s in sites)
    assert [c for c, _, _ in due.input_keys] == [s.code for s in sites]

    done = runplan.plan(demo_run.storage, sites, study)        # reported from these inputs
    assert done.nothing_new and (done.analyse, done.reuse) == ((), ())
    assert done.keys == due.keys
    assert done.describe() == "nothing new since the latest report"
    with pytest.raises(dataclasses.FrozenInstanceError):
        done.report = True


def test_the_runner_asked_for_wins_and_auto_follows_the_work(study, sites, ingested_demo):
    store = LocalStorage(ingested_demo.root)
    assert runplan.plan(store, sites, study).runner == "thread"
    assert runplan.plan(store, sites, study, "auto").runner == "thread"
    assert runplan.plan(store, sites, study, "dask").runner == "dask"


def test_lacrima_run_plans_once_and_answers_nothing_new_without_prefect(
        tmp_path, monkeypatch, spy, demo_run, sites):
    from flows.cli import app

    shutil.copytree(demo_run.storage.root, tmp_path / "store")
    for name in ("PREFECT_HOME", "PREFECT_LOGGING_SETTINGS_PATH", "LACRIMA_RUN_LOG",
                 "PREFECT_LOGGING_HANDLERS_FILE_FILENAME",
                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
        monkeypatch.setenv(name, str(tmp_path / name))
    res = CliRunner().invoke(app, ["run", "--demo", "--storage", str(tmp_path / "store")])
    assert res.exit_code == 0, res.output
    assert "nothing new since the latest report" in res.output
    assert len(spy) == 1 and spy[0].nothing_new


def test_the_flow_and_the_sweep_ask_the_plan(tmp_path, spy, study, sites, ingested_demo):
    from flows.deployments import count_pending
    from flows.pipeline import plan_run

    store = tmp_path / "store"
    shutil.copytree(ingested_demo.root, store)
    ctx = RunContext(LocalStorage(store), study, tuple(sites), DEMO_KEY, True)
    assert plan_run.fn(ctx) is spy[-1] and spy[-1].report
    assert count_pending.fn(str(store)) == 0 and len(spy) == 2


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            for n in ast.walk(tree) if isinstance(n, ast.Call)}


@pytest.mark.parametrize("module", ["cli", "pipeline", "deployments"])
def test_the_app_layer_decides_nothing_itself(module):
    # The CLI, the flow and the served deployments call the plan, never its pieces.
    calls = _calls(REPO / "flows" / f"{module}.py")
    assert "plan" in calls
    assert not calls & set(PIECES), calls & set(PIECES)


def test_the_pieces_are_put_together_in_the_plan_only():
    callers = {p.name for p in (REPO / "src" / "lacrima").rglob("*.py")
               if re.search(r"\b(needs_report|sites_to_analyse)\(", p.read_text())
               and p.name != "steps.py"}
    assert callers == {"runplan.py"}
