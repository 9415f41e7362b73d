"""Deployments: a nightly schedule and a landing-zone sweep that runs only when drops are new.

Schedules fire only on a real Prefect server (``prefect server start``); ``lacrima serve`` runs
both deployments in one long-lived process.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import flow, get_run_logger, serve, task
from prefect.cache_policies import NO_CACHE

from flows.pipeline import IO_RETRIES, lacrima_pipeline
from lacrima import intake, pipeline

NIGHTLY_CRON = "0 2 * * *"
SWEEP_MINUTES = 5


@task(name="count-pending-drops", cache_policy=NO_CACHE, timeout_seconds=300, **IO_RETRIES)
def count_pending(storage_location: str | None) -> int:
    ctx = pipeline.prepare_run(storage_location, demo=True)   # counting reads no participant data
    return sum(intake.pending_drops(ctx.storage, s) for s in ctx.sites)


@flow(name="lacrima-landing-sweep")
def landing_sweep(storage_location: str | None = None, demo: bool = False) -> dict:
    """Start the pipeline only when some landing zone holds a new or changed drop."""
    pending = count_pending(storage_location)
    if not pending:
        get_run_logger().info("no new drops: nothing to do")
        return {"pending": 0, "started": False}
    summary = lacrima_pipeline(storage_location=storage_location, demo=demo)
    return {"pending": pending, "started": True, "run": summary}


def build_deployments(cron: str = NIGHTLY_CRON, sweep_minutes: float = SWEEP_MINUTES,
                      storage_location: str | None = None, demo: bool = False):
    params = {"storage_location": storage_location, "demo": demo}
    nightly = lacrima_pipeline.to_deployment(name="nightly", cron=cron, parameters=params,
                                             tags=["lacrima"])
    sweep = landing_sweep.to_deployment(name="landing-sweep",
                                        interval=timedelta(minutes=sweep_minutes),
                                        parameters=params, tags=["lacrima"])
    return nightly, sweep


def serve_forever(**kwargs) -> None:
    serve(*build_deployments(**kwargs))
