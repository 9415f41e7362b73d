"""The pipeline flow: plan, ingest, analyse, compare, report, notify.

Each task is a few lines around one ``lacrima`` call and works on a group of sites (at most
16, see ``steps.site_groups``), on a few plan families' plots, or on the pool; never on a row.
Site tasks hand on each site's estimates and IPD sums, not its rows (those stay in the store).
Retries with backoff go on I/O tasks only (listing, intake, report); every task has a timeout.

The flow body executes a run plan (``lacrima.runplan.plan``, made under the store's lease):
the sites it names are ingested; a site whose content key (register, codebook, site file,
plan) has a complete stored entry is read back, not analysed; when no key changed since the
latest report, nothing is analysed and no report is written. Every decision is in the plan,
tested without Prefect.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.artifacts import artifact_key, publish_artifacts, verdict_markdown
from flows.notify import notify_quarantines, notify_run_failure
from lacrima import intake, lease, report, runplan, steps, tables
from lacrima.results import Comparison, RunOutputs, RunSummary, SiteAnalysis
from lacrima.runplan import RunPlan
from lacrima.steps import RunContext
from lacrima.storage import open_storage
from lacrima.study import load_sites, load_study

IO_RETRIES = dict(retries=3, retry_delay_seconds=[2, 8, 30])
# Seconds. Generous: a site's intake at 1,000 participants takes seconds; these catch a hung
# store or a runaway model, not a slow day.
VERDICT_TABLE_KEY = artifact_key("lacrima-verdict-table")
SITE_TIMEOUT = 1800
POOL_TIMEOUT = 3600


class _ThreadTimeoutNotice(logging.Filter):
    """Drop Prefect's per-task notice that a timeout in a worker thread cannot interrupt I/O.

    Every task here has a timeout and runs in a worker thread by default, so the notice would
    repeat for every task of every run. What it says stays true and is documented here: in a
    thread the timeout takes effect when the blocking call returns (the run is then failed);
    on Dask the worker process enforces it the same way.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "running in a worker thread" not in record.getMessage()


def _quiet_thread_timeout_notice() -> None:
    log = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _ThreadTimeoutNotice) for f in log.filters):
        log.addFilter(_ThreadTimeoutNotice())


@task(name="plan-run", cache_policy=NO_CACHE, timeout_seconds=SITE_TIMEOUT, **IO_RETRIES)
def plan_run(ctx: RunContext) -> RunPlan:
    return runplan.plan(ctx.storage, ctx.sites, ctx.study)


@task(name="ingest-sites", cache_policy=NO_CACHE, timeout_seconds=SITE_TIMEOUT, **IO_RETRIES)
def ingest_sites(ctx: RunContext, sites) -> list[intake.IntakeResult]:
    # One Great Expectations run for the group's new drops (its cost is per call, not per
    # row); reading and storing stay per site. Groups run in parallel.
    return intake.ingest_sites(ctx.storage, sites, ctx.study, ctx.pseudonym_key)


@task(name="analyse-sites", cache_policy=NO_CACHE, timeout_seconds=SITE_TIMEOUT)
def analyse_sites(ctx: RunContext, sites, keys) -> list[SiteAnalysis | None]:
    # Per site: analysis (computed, or read back) and its own page and exports; no rows
    # handed on.
    return [steps.site_step(ctx.storage, s, ctx.study, keys[s.code]) for s in sites]


@task(name="compare-sites", cache_policy=NO_CACHE, timeout_seconds=POOL_TIMEOUT)
def compare_sites(ctx: RunContext, analyses) -> Comparison:
    return steps.compare_sites(analyses, ctx.study, list(ctx.sites))


@task(name="draw-forest-plots", cache_policy=NO_CACHE, timeout_seconds=POOL_TIMEOUT)
def draw_plots(ctx: RunContext, comparison, families) -> dict[str, str]:
    return report.forest_plots(comparison, ctx.study, list(ctx.sites), families)


@task(name="write-report", cache_policy=NO_CACHE, timeout_seconds=POOL_TIMEOUT, **IO_RETRIES)
def write_report(ctx: RunContext, run_id: str, analyses, comparison, plots) -> RunOutputs:
    prov = steps.provenance(run_id, analyses, ctx.study, list(ctx.sites))
    return report.write_outputs(ctx.storage, run_id, analyses, comparison, ctx.study,
                                list(ctx.sites), prov, plots)


@task(name="publish-verdict-table", cache_policy=NO_CACHE, timeout_seconds=120, **IO_RETRIES)
def publish_verdict_table(ctx: RunContext, run_id: str, comparison) -> str:
    from prefect.artifacts import create_table_artifact

    table = tables.verdict_table(comparison, ctx.study, ctx.sites)
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    return str(create_table_artifact(table=rows, key=VERDICT_TABLE_KEY,
                                     description=f"Verdict per pooled effect, run {run_id}"))


@task(name="notify-quarantines", cache_policy=NO_CACHE, timeout_seconds=120)
def notify_drops(ctx: RunContext, drops: list[dict]) -> int:
    # Each quarantined drop's site contact is told (webhook and/or e-mail); never raises.
    return notify_quarantines(drops, ctx.sites)


def default_workers() -> int:
    """Threads or worker processes by default: one per core, at least 2, at most 4.

    Per-site work is mostly pandas under the GIL: more threads than cores only slow it down
    (``bench/notes.md``).
    """
    return max(2, min(4, os.cpu_count() or 2))


@flow(name="lacrima-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=default_workers()),
      log_prints=False, on_failure=[notify_run_failure], on_crashed=[notify_run_failure])
def lacrima_pipeline(storage_location: str | None = None, demo: bool = False,
                     run_id: str | None = None, group: int = steps.SITE_GROUP,
                     wait: float = 0.0) -> RunSummary:
    """Drops to report for every site of the sites root (``LACRIMA_SITES`` or ``sites/``).

    ``group``: most sites one intake or analysis task takes (see ``steps.site_groups``).
    ``wait``: seconds to wait for another run holding the store's lease (``lacrima.lease``);
    after that the run stops having changed nothing and returns a summary whose ``busy``
    names the holder (a completed flow run: a busy store is not a failure).
    """
    _quiet_thread_timeout_notice()
    ctx = steps.prepare_run(storage_location, demo=demo)
    run_id = run_id or steps.new_run_id()
    try:
        with lease.hold(ctx.storage, lease.default_owner(run_id), ttl=lease.LEASE_SECONDS,
                        wait=wait) as held:
            return _run(ctx, run_id, group, held)
    except lease.LeaseHeld as err:
        get_run_logger().warning("%s", err)
        return RunSummary(run_id, busy=str(err))


def _run(ctx: RunContext, run_id: str, group: int, held: lease.HeldLease) -> RunSummary:
    """The plan made under the store's lease, executed: ingest, analyse, compare, report, notify.

    Ingesting changes the store, so the analysis follows a plan made after it (planned
    again, never patched); every decision is in ``lacrima.runplan.plan``.
    """
    clock = steps.StageClock()
    with clock("plan"):
        first = todo = plan_run(ctx)
    intakes = []
    if first.ingest:
        with clock("intake"):
            intakes = _by_groups(ingest_sites, ctx, first.sites(ctx.sites, first.ingest), group,
                                 "intake")
        with clock("plan"):
            todo = plan_run(ctx)
    analyses, comparison, outputs = [], None, None
    if todo.report:
        with clock("analysis"):
            # the sites to analyse first, then those read back (~40 ms a site), all in groups
            analyses = steps.in_site_order(ctx.sites, _by_groups(
                analyse_sites, ctx, todo.sites(ctx.sites, todo.analyse)
                + todo.sites(ctx.sites, todo.reuse), group, "analysis", todo.keys))
        with clock("pooling"):
            comparison = compare_sites(ctx, analyses)
        with clock("report"):
            plots = [draw_plots.submit(ctx, comparison, families)
                     for families in steps.family_groups(ctx.study, default_workers())]
            held.check()        # never publish over the run that took the store over
            outputs = write_report(ctx, run_id, analyses, comparison,
                                   {k: svg for p in plots for k, svg in p.result().items()})
    summary = steps.summarise(run_id, first.drops, intakes, analyses, outputs,
                              [] if outputs else sorted(todo.keys), location=ctx.storage.location)
    if outputs is not None:
        with clock("artifacts"):
            publish_artifacts(summary, verdict_markdown(comparison.replication, ctx.study),
                              outputs.location)
            publish_verdict_table(ctx, run_id, comparison)
    if summary.quarantined:
        with clock("notify"):
            notify_drops(ctx, list(summary.drops))
    summary = replace(summary, seconds=clock.seconds)
    get_run_logger().info(
        "run %s: %d accepted, %d quarantined, %d sites recomputed, %d reused, report %s", run_id,
        summary.accepted, summary.quarantined, len(summary.sites_recomputed),
        len(summary.sites_reused), summary.report or "not needed (nothing new)")
    return summary


def _by_groups(task_, ctx: RunContext, sites: list, group: int, stage: str, *args) -> list:
    """``task_`` submitted once per group of ``sites``, results in site order; progress told
    (``steps.progress``) as groups finish."""
    futures = [task_.submit(ctx, g, *args) for g in steps.site_groups(sites, group)]
    out = []
    for f in futures:
        out += f.result()
        steps.progress(stage, len(out), len(sites))
    return [x for x in out if x is not None]


def task_runner(name: str = "thread", dask_address: str | None = None, workers: int = 4):
    """The task runner by name.

    Parameters
    ----------
    name : {"thread", "process", "dask"}
        ``thread``: Prefect's thread pool (default; sites in parallel within one process).
        ``process``: Prefect's process pool of ``workers`` processes on this machine: per-site
        work (pandas, mostly under the GIL) runs truly in parallel, for a start-up cost of
        a few seconds per process.
        ``dask``: prefect-dask's ``DaskTaskRunner``, a local cluster of ``workers`` processes
        (one thread each, so per-site work is not serialised behind the GIL), or the existing
        cluster at ``dask_address``.
    dask_address : str, optional
        Scheduler address (``tcp://host:8786``) of an existing cluster.
    workers : int
        Threads (thread runner) or worker processes (local Dask cluster).
    """
    if name == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if name == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if name == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    raise ValueError(f"unknown runner {name!r}: expected 'thread', 'process' or 'dask'")


def share_api() -> None:
    """Worker processes use this process's Prefect API, not an ephemeral server of their own.

    Without ``PREFECT_API_URL``, Prefect starts an ephemeral API server in the process that
    first needs one, and a spawned worker process (process pool, local Dask cluster) inherits
    no address: each started its own server (memory and seconds of start-up per worker,
    ``bench/notes.md``). Here the
    ephemeral server is started once and its address put in the environment the workers
    inherit. A configured API is left alone; workers of a remote Dask cluster (``dask_address``)
    never see this environment, so :func:`run_pipeline` does not call it for them.
    """
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL"):
        return
    with get_client(sync_client=True) as client:
        os.environ["PREFECT_API_URL"] = str(client.api_url)


def run_pipeline(storage_location: str | None = None, demo: bool = False, runner: str = "auto",
                 dask_address: str | None = None, run_id: str | None = None,
                 workers: int | None = None, wait: float = 0.0) -> RunSummary:
    """Run the pipeline flow now with the chosen task runner (see :func:`task_runner`).

    ``runner="auto"``: the run plan's (``lacrima.runplan.plan``): threads for a few sites
    to analyse, processes for many; planned before the flow starts, from listings and
    ledgers only. The summary's ``busy`` is set when another run holds the store past
    ``wait`` seconds.
    """
    if workers is None:
        workers = default_workers()
    if runner in (None, "auto"):     # `lacrima run` passes the runner its plan chose
        runner = runplan.plan(open_storage(storage_location), load_sites(), load_study()).runner
    if runner != "thread" and not dask_address:     # a remote cluster cannot reach 127.0.0.1
        share_api()
    flow_ = lacrima_pipeline.with_options(task_runner=task_runner(runner, dask_address, workers))
    return flow_(storage_location=storage_location, demo=demo, run_id=run_id, wait=wait)
