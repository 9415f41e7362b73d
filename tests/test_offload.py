"""lacrima.offload.Offload: calls run by a worker process give what they give here, whatever
becomes of the worker, and starting it never runs the caller's script again."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd

from lacrima.offload import Offload
from lacrima.plots import forest_svg, site_style


def _rows(k: int) -> pd.DataFrame:
    est = np.linspace(-0.4, 0.6, k)
    return pd.DataFrame({"site": [f"s{i:03d}" for i in range(k)], "estimate": est,
                         "ci_low": est - 0.2, "ci_high": est + 0.2, "n": 100})


POOLED = {"estimate": 0.3, "ci_low": 0.2, "ci_high": 0.4, "pi_low": 0.1, "pi_high": 0.5}


def test_a_worker_draws_the_same_plots():
    styles = site_style([f"s{i:03d}" for i in range(60)])
    calls = [(_rows(k), POOLED, f"effect {k}", "Pearson r", styles) for k in (3, 45, 60)]
    here = [forest_svg(*c, salt=str(i)) for i, c in enumerate(calls)]
    with Offload(worker=True) as work:
        assert work.has_worker
        handles = [work.submit(forest_svg, *c, salt=str(i)) for i, c in enumerate(calls)]
        by_worker = [work._calls[h][3].result(timeout=60) for h in handles]   # the worker's own
        assert by_worker == here and work.results() == here


def test_calls_the_worker_has_not_started_run_here():
    with Offload(worker=False) as work:
        assert not work.has_worker
        handle = work.submit(pow, 3, 4)
        assert work.results()[handle] == 81
    with Offload(worker=True) as work:
        handles = [work.submit(pow, 2, k) for k in range(200)]
        assert work.results() == [2 ** k for k in range(200)]
        assert [work.result(h) for h in handles[:3]] == [1, 2, 4]


def test_calls_a_broken_worker_left_run_here():
    with Offload(worker=True) as work:
        first = work.submit(pow, 2, 5)
        work._calls[first][3].result(timeout=60)
        for process in list(work._pool._processes.values()):
            process.kill()                               # the worker dies
            process.join()
        later = work.submit(forest_svg, _rows(2), None, "effect", "r", site_style(["s000", "s001"]))
        done = work.results()
    assert done[first] == 32
    assert done[later] == forest_svg(_rows(2), None, "effect", "r", site_style(["s000", "s001"]))


def test_a_worker_does_not_run_the_callers_script_again(tmp_path):
    # A script without a __main__ guard: a spawned process would run it again from the top.
    script = tmp_path / "script.py"
    script.write_text(
        f"with open({str(tmp_path / 'ran')!r}, 'a') as fh: fh.write('x')\n"
        "from lacrima.offload import Offload\n"
        "with Offload(worker=True) as work:\n"
        "    h = work.submit(pow, 2, 3)\n"
        "    assert work._calls[h][3].result(timeout=60) == 8   # done by the worker\n")
    done = subprocess.run([sys.executable, str(script)], env=dict(os.environ, MPLBACKEND="Agg"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "ran").read_text() == "x"


def test_a_worker_started_ahead_is_taken_by_the_next_offload():
    from lacrima import offload

    assert offload.start_worker(warm="lacrima.plots")
    assert not offload.start_worker()                  # one waits already
    waiting = offload._started[0]
    with Offload(worker=True) as work:
        assert work._pool is waiting and not offload._started
        handle = work.submit(pow, 2, 2)
        assert work.results()[handle] == 4
    assert offload.start_worker()
    offload.stop_worker()
    assert not offload._started
