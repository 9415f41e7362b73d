"""Deployments: a nightly schedule and a landing-zone sweep that runs only when drops are new.

Schedules fire only on a real Prefect server (``prefect server start``); ``lacrima serve`` runs
both deployments in one long-lived process.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import flow, get_run_logger, serve, task
from prefect.cache_policies import NO_CACHE

from flows.pipeline import IO_RETRIES, lacrima_pipeline

NIGHTLY_CRON = "0 2 * * *"
SWEEP_MINUTES = 5


@task(name="count-pending-drops", cache_policy=NO_CACHE, timeout_seconds=300, **IO_RETRIES)
def count_pending(storage_location: str | None) -> int:
    from lacrima.runplan import plan
    from lacrima.storage import open_storage
    from lacrima.study import load_sites, load_study

    # The run plan: listings and ledgers, no data file, so no pseudonym key is needed here.
    return plan(open_storage(storage_location), load_sites(), load_study()).pending


@flow(name="lacrima-landing-sweep")
def landing_sweep(storage_location: str | None = None, demo: bool = False) -> dict:
    """Start the pipeline only when some landing zone holds a new or changed drop.

    Returns ``{"pending": n, "started": bool, "run": summary}`` (``run`` only when started).
    """
    pending = count_pending(storage_location)
    if not pending:
        get_run_logger().info("no new drops: nothing to do")
        return {"pending": 0, "started": False}
    summary = lacrima_pipeline(storage_location=storage_location, demo=demo)
    if summary.busy:            # another run holds the store: the next sweep looks again
        return {"pending": pending, "started": False, "busy": summary.busy}
    return {"pending": pending, "started": True, "run": summary.to_dict()}


def build_deployments(cron: str = NIGHTLY_CRON, sweep_minutes: float = SWEEP_MINUTES,
                      storage_location: str | None = None, demo: bool = False):
    """The two deployments: ``nightly`` (cron) and ``landing-sweep`` (every few minutes).

    Both carry tag ``lacrima``; their parameters are the storage location and the demo flag.
    Each runs at most once at a time (``concurrency_limit=1``): a nightly run still going
    when the next is due is queued after it, a sweep due while one runs is dropped. Between
    the two deployments (and any ``lacrima run``) the store's lease keeps one run at a time.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    if sweep_minutes <= 0:
        raise ValueError(f"sweep_minutes must be positive, got {sweep_minutes}")
    params = {"storage_location": storage_location, "demo": demo}
    nightly = lacrima_pipeline.to_deployment(name="nightly", cron=cron, parameters=params,
                                             tags=["lacrima"], concurrency_limit=1)
    sweep = landing_sweep.to_deployment(
        name="landing-sweep", interval=timedelta(minutes=sweep_minutes), parameters=params,
        tags=["lacrima"], concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW))
    return nightly, sweep


def serve_forever(**kwargs) -> None:
    """Register both deployments with the Prefect server and run them until interrupted."""
    serve(*build_deployments(**kwargs))
