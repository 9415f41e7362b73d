"""Work handed to a worker process while the caller goes on, drawn back in if the worker is late.

A report at consortium scale draws dozens of forest plots and stacks every site's rows into
one Parquet file while it also formats tables and writes files, all under one GIL. An
:class:`Offload` sends such independent calls to one spawned worker process (the second core
is otherwise idle then) and gives each result back by handle; a call the worker has not
started when its result is wanted runs in the caller instead, and a call the worker failed
on (or could no longer take) is run again here, so a worker never makes the caller slower by
more than its start, nor its results different.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable


class Offload:
    """Calls run by one worker process, or here; results by handle.

    Parameters
    ----------
    worker : bool
        Start a worker (if this process may: not a daemon, more than one core). Without
        one, every call runs in :meth:`results`, in submission order.
    warm : str, optional
        A module the worker imports as soon as it starts, while the caller goes on.

    Examples
    --------
    >>> with Offload(worker=False) as work:
    ...     handle = work.submit(pow, 2, 10)
    ...     work.results()[handle]
    1024
    """

    def __init__(self, worker: bool = False, warm: str | None = None):
        self._pool = None
        if worker and _may_start_processes():
            self._pool = _take_started() or _new_pool(warm)
        self._calls: list[tuple[Callable, tuple, dict, Any]] = []
        self._done: dict[int, Any] = {}
        self.failed: list[str] = []       # what the worker could not do (then done here)

    @property
    def has_worker(self) -> bool:
        return self._pool is not None

    def submit(self, fn: Callable, *args, **kwargs) -> int:
        """Queue ``fn(*args, **kwargs)`` (picklable: a module-level function); its handle."""
        future = None
        if self._pool is not None:
            try:
                future = self._pool.submit(fn, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the worker is gone: this call runs here
                self._failed(fn, exc)
        self._calls.append((fn, args, kwargs, future))
        return len(self._calls) - 1

    def result(self, handle: int) -> Any:
        """One call's result: the worker's if it has started it, else computed here now."""
        if handle not in self._done:
            fn, args, kwargs, future = self._calls[handle]
            if future is not None and not future.cancel():
                try:
                    self._done[handle] = future.result()
                    return self._done[handle]
                except Exception as exc:  # noqa: BLE001 - the worker failed: the same call here
                    self._failed(fn, exc)
            self._done[handle] = fn(*args, **kwargs)
        return self._done[handle]

    def _failed(self, fn: Callable, exc: BaseException) -> None:
        import logging

        what = f"{getattr(fn, '__qualname__', fn)}: {type(exc).__name__}: {exc}"
        self.failed.append(what)
        logging.getLogger(__name__).warning("worker process could not run %s; run here instead",
                                            what)

    def results(self) -> list[Any]:
        """Every call's result, by handle; calls the worker has not started run here,
        from the last one backwards, while the worker goes on from the front."""
        order = reversed(range(len(self._calls))) if self._pool else range(len(self._calls))
        for handle in order:
            self.result(handle)
        return [self._done[h] for h in range(len(self._calls))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Offload":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _new_pool(warm: str | None):
    import importlib
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    with _main_module_hidden():
        # the worker starts on the first submit, and imports while the caller goes on
        pool.submit(importlib.import_module, warm or __name__)
    return pool


_started: list = []          # at most one worker started ahead (start_worker), not yet taken


def start_worker(warm: str | None = None) -> bool:
    """Start a worker now for the next ``Offload(worker=True)`` of this process to take.

    A worker takes ~0.6 s to start and import; a caller that knows a little ahead that it
    will offload work (a flow that will write a report) starts it here, so that the start
    overlaps the work before. Returns whether one was started (not when this process may
    not start processes, or one is waiting already). :func:`stop_worker` ends an unused one.
    """
    if _started or not _may_start_processes():
        return False
    _started.append(_new_pool(warm))
    return True


def stop_worker() -> None:
    """End a worker started by :func:`start_worker` that no Offload took."""
    while _started:
        _started.pop().shutdown(wait=False, cancel_futures=True)


def _take_started():
    try:
        return _started.pop()
    except IndexError:
        return None


@contextmanager
def _main_module_hidden():
    """Start processes that do not import the caller's ``__main__``.

    A spawned process re-runs the parent's main script (or re-imports its ``-m`` module, e.g.
    Prefect's engine) before it does anything: a script without a ``__main__`` guard would
    run twice, and a heavy main module would delay the worker by seconds. The worker needs
    only the modules of the calls it is sent, so the main module is replaced by an empty one
    while it starts.
    """
    import sys
    import types

    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _may_start_processes() -> bool:
    import multiprocessing

    return (os.cpu_count() or 1) > 1 and not multiprocessing.current_process().daemon
