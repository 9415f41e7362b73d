"""The pipeline flow: ingest each site's new drops, analyse each site, compare, report.

Each task is a few lines around one ``lacrima`` call. Retries go on I/O tasks only.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from lacrima import intake, pipeline, report
from lacrima.pipeline import RunContext

IO_RETRIES = dict(retries=3, retry_delay_seconds=[2, 8, 30])


@task(name="ingest-site", cache_policy=NO_CACHE, timeout_seconds=1800, **IO_RETRIES)
def ingest_site(ctx: RunContext, site) -> intake.IntakeResult:
    return intake.ingest_site(ctx.storage, site, ctx.study, ctx.key)


@task(name="analyse-site", cache_policy=NO_CACHE, timeout_seconds=1800)
def analyse_site(ctx: RunContext, site) -> pipeline.SiteAnalysis | None:
    return pipeline.analyse_site_data(ctx.storage, site, ctx.study)


@task(name="compare-sites", cache_policy=NO_CACHE, timeout_seconds=1800)
def compare_sites(ctx: RunContext, analyses) -> pipeline.Comparison:
    return pipeline.compare_sites(analyses, ctx.study, list(ctx.sites))


@task(name="write-report", cache_policy=NO_CACHE, timeout_seconds=1800, **IO_RETRIES)
def write_report(ctx: RunContext, run_id: str, analyses, comparison) -> report.RunOutputs:
    prov = pipeline.provenance(run_id, analyses, ctx.study, list(ctx.sites))
    return report.write_outputs(ctx.storage, run_id, analyses, comparison, ctx.study,
                                list(ctx.sites), prov)


@flow(name="lacrima-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=False)
def lacrima_pipeline(storage_location: str | None = None, demo: bool = False,
                     run_id: str | None = None) -> dict:
    """Drops to report for every site under ``sites/``."""
    ctx = pipeline.prepare_run(storage_location, demo=demo)
    run_id = run_id or pipeline.new_run_id()
    intakes = [ingest_site.submit(ctx, s) for s in ctx.sites]
    futures = [analyse_site.submit(ctx, s, wait_for=[i]) for s, i in zip(ctx.sites, intakes)]
    analyses = [a for a in (f.result() for f in futures) if a is not None]
    outputs = None
    if pipeline.needs_report(ctx.storage, analyses, ctx.study):
        comparison = compare_sites(ctx, analyses)
        outputs = write_report(ctx, run_id, analyses, comparison)
    summary = pipeline.summarise(run_id, [i.result() for i in intakes], analyses, outputs)
    get_run_logger().info("run %s: %d accepted, %d quarantined, report %s", run_id,
                          summary["accepted"], summary["quarantined"], summary["report"])
    return summary


def task_runner(name: str = "thread", dask_address: str | None = None, workers: int = 4):
    """The task runner by name: Prefect's thread pool (default) or Dask (local cluster or address)."""
    if name == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if name == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    raise ValueError(f"unknown runner {name!r}: expected 'thread' or 'dask'")


def run_pipeline(storage_location: str | None = None, demo: bool = False, runner: str = "thread",
                 dask_address: str | None = None, run_id: str | None = None) -> dict:
    """Run the pipeline flow now with the chosen task runner."""
    flow_ = lacrima_pipeline.with_options(task_runner=task_runner(runner, dask_address))
    return flow_(storage_location=storage_location, demo=demo, run_id=run_id)
