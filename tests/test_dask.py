"""The Dask and process-pool task runners give the same results.csv as Prefect's default thread pool."""

import io
import os

import pandas as pd
import pytest

from lacrima import intake
from lacrima.storage import LocalStorage
from lacrima.synth import write_drop

N = 40
# Relative tolerance for every numeric result: the same code on the same data in another
# process; anything above floating-point noise would be a real difference.
EST_RTOL = 1e-12


def test_unknown_runner_is_refused():
    from flows.pipeline import task_runner

    with pytest.raises(ValueError, match="expected 'thread', 'process' or 'dask'"):
        task_runner("celery")


def test_dask_runner_uses_one_thread_per_worker_process():
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import task_runner

    runner = task_runner("dask", workers=3)
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_kwargs["n_workers"] == 3 and runner.cluster_kwargs["threads_per_worker"] == 1
    assert task_runner("dask", dask_address="tcp://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"


@pytest.mark.prefect
@pytest.mark.dask
def test_dask_and_processes_give_the_same_results_csv_as_the_thread_pool(prefect_harness, tmp_path,
                                                                         study, sites):
    from flows.pipeline import run_pipeline

    drops = {s.code: write_drop(s, study, tmp_path / "drops" / s.code, n=N) for s in sites}
    out = {}
    runners = ("thread", "dask", "process")
    for runner in runners:
        storage = LocalStorage(tmp_path / runner)
        for s in sites:
            intake.upload(storage, s, drops[s.code])
        summary = run_pipeline(storage_location=str(tmp_path / runner), runner=runner,
                               run_id="same", workers=2)
        assert summary.accepted == 3 and sorted(summary.sites_recomputed) == ["il", "it", "us"]
        out[runner] = storage.read_bytes("reports/same/results.csv")
    thread, *others = (pd.read_csv(io.BytesIO(out[r]), keep_default_na=False) for r in runners)
    assert len(thread) > 100 and {"us", "it", "il", "pooled"} <= set(thread["site"])
    for other in others:
        pd.testing.assert_frame_equal(other, thread, check_exact=False, rtol=EST_RTOL)


def test_worker_processes_are_given_this_process_api_not_their_own(monkeypatch):
    """Without a configured API, the address of the one ephemeral server goes into the
    environment spawned workers inherit (each worker used to start a server of its own)."""
    import prefect
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import share_api

    class Client:
        api_url = "http://127.0.0.1:8123/api/"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    started = []
    monkeypatch.setattr(prefect, "get_client",
                        lambda **kw: started.append(kw) or Client())
    # set, then deleted: teardown restores the variable as it was, whatever share_api wrote
    monkeypatch.setenv("PREFECT_API_URL", "")
    monkeypatch.delenv("PREFECT_API_URL")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        share_api()
        assert started == [{"sync_client": True}]
        assert PREFECT_API_URL.value() is None
        assert os.environ["PREFECT_API_URL"] == Client.api_url
        share_api()                         # already shared: no second client
        assert len(started) == 1
    monkeypatch.setenv("PREFECT_API_URL", "http://configured:4200/api")
    share_api()
    assert len(started) == 1 and os.environ["PREFECT_API_URL"] == "http://configured:4200/api"


@pytest.mark.parametrize("runner, address, shared", [
    ("thread", None, False), ("process", None, True), ("dask", None, True),
    ("dask", "tcp://10.0.0.1:8786", False),     # remote workers never see this environment
])
def test_the_api_is_shared_only_with_workers_this_process_spawns(monkeypatch, runner, address,
                                                                 shared):
    import flows.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "share_api", lambda: calls.append("shared"))

    class Flow:
        def __call__(self, **kw):
            return {"run_id": kw["run_id"]}

    monkeypatch.setattr(pipeline.lacrima_pipeline, "with_options", lambda **kw: Flow())
    pipeline.run_pipeline(runner=runner, dask_address=address, run_id="r", workers=2)
    assert calls == (["shared"] if shared else [])
