"""The pipeline flow: plan, ingest new drops, analyse each site, compare, report.

Each task is a few lines around one ``lacrima`` call and works on a group of sites (at most
16, see ``pipeline.site_groups``) or on the pool, never on a row or an item. Site tasks hand on
each site's estimates and IPD sums, not its rows. Retries with backoff go on I/O tasks only
(listing, intake, report); every task has a timeout.

Incremental: a site with no new landing object is not ingested; a site whose content key
(accepted batches, codebook, site file, plan) is unchanged reuses its stored results (the
sites the latest report used are read in one go, ``pipeline.reusable_analyses``); when no
key changed at all since the latest report, nothing is analysed and no report is written.
"""

from __future__ import annotations

import logging
import os

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.artifacts import artifact_key, publish_artifacts, verdict_markdown
from flows.notify import notify_quarantines, notify_run_failure
from lacrima import intake, lease, pipeline, report, tables
from lacrima.pipeline import RunContext

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
def plan_run(ctx: RunContext) -> list[pipeline.SitePlan]:
    return [pipeline.plan_site(ctx.storage, s) for s in ctx.sites]


@task(name="ingest-sites", cache_policy=NO_CACHE, timeout_seconds=SITE_TIMEOUT, **IO_RETRIES)
def ingest_sites(ctx: RunContext, sites) -> list[intake.IntakeResult]:
    # One Great Expectations run for the group's new drops (its cost is per call, not per
    # row); reading and storing stay per site. Groups run in parallel.
    return intake.ingest_sites(ctx.storage, sites, ctx.study, ctx.key)


@task(name="site-keys", cache_policy=NO_CACHE, timeout_seconds=SITE_TIMEOUT, **IO_RETRIES)
def site_keys(ctx: RunContext) -> dict:
    return pipeline.site_keys(ctx.storage, ctx.sites, ctx.study)


@task(name="reuse-unchanged-sites", cache_policy=NO_CACHE, timeout_seconds=SITE_TIMEOUT,
      **IO_RETRIES)
def reusable_analyses(ctx: RunContext, keys) -> dict[str, pipeline.SiteAnalysis]:
    # Unchanged sites' estimates in three reads, from what the latest report was made of.
    return pipeline.reusable_analyses(ctx.storage, keys)


@task(name="analyse-sites", cache_policy=NO_CACHE, timeout_seconds=SITE_TIMEOUT)
def analyse_sites(ctx: RunContext, sites, keys) -> list[pipeline.SiteAnalysis | None]:
    # Per site: analysis (computed or reused) and its own page and exports; no rows handed on.
    return [pipeline.site_step(ctx.storage, s, ctx.study, keys[s.code]) for s in sites]


@task(name="compare-sites", cache_policy=NO_CACHE, timeout_seconds=POOL_TIMEOUT)
def compare_sites(ctx: RunContext, analyses) -> pipeline.Comparison:
    return pipeline.compare_sites(analyses, ctx.study, list(ctx.sites))


@task(name="write-report", cache_policy=NO_CACHE, timeout_seconds=POOL_TIMEOUT, **IO_RETRIES)
def write_report(ctx: RunContext, run_id: str, analyses, comparison) -> report.RunOutputs:
    prov = pipeline.provenance(run_id, analyses, ctx.study, list(ctx.sites))
    return report.write_outputs(ctx.storage, run_id, analyses, comparison, ctx.study,
                                list(ctx.sites), prov)


@task(name="save-pooled-inputs", cache_policy=NO_CACHE, timeout_seconds=POOL_TIMEOUT, **IO_RETRIES)
def save_pooled_inputs(ctx: RunContext, analyses) -> str:
    return pipeline.save_pooled_inputs(ctx.storage, analyses, ctx.study)


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

    Per-site work is mostly pandas under the GIL: on 2 cores, 4 threads took 49 s for the
    125 x 120 analyses that 2 threads did in 36 s and one in 33 s (profiled 2026-11-22).
    """
    return max(2, min(4, os.cpu_count() or 2))


@flow(name="lacrima-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=default_workers()),
      log_prints=False, on_failure=[notify_run_failure], on_crashed=[notify_run_failure])
def lacrima_pipeline(storage_location: str | None = None, demo: bool = False,
                     run_id: str | None = None, group: int = pipeline.SITE_GROUP,
                     wait: float = 0.0) -> dict:
    """Drops to report for every site of the sites root (``LACRIMA_SITES`` or ``sites/``).

    ``group``: most sites one intake or analysis task takes (see ``pipeline.site_groups``).
    ``wait``: seconds to wait for another run holding the store's lease (``lacrima.lease``);
    after that the run stops having changed nothing and returns ``{"run_id", "busy"}``, the
    message naming the holder (a completed flow run: a busy store is not a failure).
    """
    _quiet_thread_timeout_notice()
    ctx = pipeline.prepare_run(storage_location, demo=demo)
    run_id = run_id or pipeline.new_run_id()
    try:
        with lease.hold(ctx.storage, lease.default_owner(run_id), ttl=lease.LEASE_SECONDS,
                        wait=wait) as held:
            return _pipeline(ctx, run_id, group, held)
    except lease.LeaseHeld as err:
        get_run_logger().warning("%s", err)
        return {"run_id": run_id, "busy": str(err)}


def _pipeline(ctx: RunContext, run_id: str, group: int, held: lease.HeldLease) -> dict:
    """The run itself, under the store's lease."""
    logger = get_run_logger()
    clock = pipeline.StageClock()
    with clock("plan"):
        plans = plan_run(ctx)
    with clock("intake"):
        todo = [s for s, p in zip(ctx.sites, plans) if p.pending]
        futures = [ingest_sites.submit(ctx, g) for g in pipeline.site_groups(todo, group)]
        intakes = []
        for f in futures:
            intakes += f.result()
            pipeline.progress("intake", len(intakes), len(todo))
        keys = site_keys(ctx)
    outputs, analyses, unchanged = None, [], []
    if not pipeline.needs_report(ctx.storage, {c: k for c, (k, _) in keys.items()}, ctx.study):
        unchanged = sorted(keys)
        logger.info("nothing new since the latest report: no site analysed, no report written")
    else:
        # The report's worker process (many sites) starts now, to be ready when needed.
        report.start_worker(len(keys))
        try:
            with clock("analysis"):
                kept = reusable_analyses(ctx, keys)
                keyed = [s for s in ctx.sites if s.code in keys and s.code not in kept]
                futures = [analyse_sites.submit(ctx, g, {s.code: keys[s.code] for s in g})
                           for g in pipeline.site_groups(keyed, group)]
                done = 0
                for f in futures:
                    got = f.result()
                    done += len(got)
                    kept |= {a.site: a for a in got if a is not None}
                    pipeline.progress("analysis", done, len(keyed))
                analyses = [kept[s.code] for s in ctx.sites if s.code in kept]
            with clock("pooling"):
                comparison = compare_sites(ctx, analyses)
            with clock("report"):
                held.check()        # never publish over the run that took the store over
                saved = save_pooled_inputs.submit(ctx, analyses)    # beside the report
                outputs = write_report(ctx, run_id, analyses, comparison)
                saved.result()
        finally:
            report.stop_worker()                # one the report did not take (a failure)
    summary = pipeline.summarise(run_id, plans, intakes, analyses, outputs, unchanged,
                                 location=ctx.storage.location)
    if outputs is not None:
        with clock("artifacts"):
            publish_artifacts(summary, verdict_markdown(comparison.replication, ctx.study),
                              outputs.location)
            publish_verdict_table(ctx, run_id, comparison)
    if summary["quarantined"]:
        with clock("notify"):
            notify_drops(ctx, summary["drops"])
    summary["seconds"] = clock.seconds
    logger.info("run %s: %d accepted, %d quarantined, %d sites recomputed, %d reused, report %s",
                run_id, summary["accepted"], summary["quarantined"],
                len(summary["sites_recomputed"]), len(summary["sites_reused"]), summary["report"])
    return summary


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


def run_pipeline(storage_location: str | None = None, demo: bool = False, runner: str = "thread",
                 dask_address: str | None = None, run_id: str | None = None,
                 workers: int | None = None, wait: float = 0.0) -> dict:
    """Run the pipeline flow now with the chosen task runner (see :func:`task_runner`).

    Returns ``{"run_id", "busy"}`` when another run holds the store past ``wait`` seconds.
    """
    if workers is None:
        workers = default_workers()
    flow_ = lacrima_pipeline.with_options(task_runner=task_runner(runner, dask_address, workers))
    return flow_(storage_location=storage_location, demo=demo, run_id=run_id, wait=wait)
