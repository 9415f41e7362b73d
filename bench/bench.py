"""``make bench`` (``python -m bench``): lacrima timed as a user runs it, against a lean floor.

Every time is the wall time of one command in a process of its own, as typed at a shell:
``lacrima run`` (default runner, chosen by the work; the ephemeral Prefect API unless
``PREFECT_API_URL`` names a server), ``lacrima check``, and the yardsticks:

- the **floor**, ``../shared/bench/floor.py`` (beside the repository; ``--floor`` names another):
  the plan's core per-site statistics and REML pooling written with numpy/scipy/statsmodels
  only, no lacrima code, run on the analysis-ready CSVs of the run just timed
  (``reports/<run>/restricted/data/<site>.csv``). Nothing of it is copied here; when it is
  absent the bench says so and the targets against it are not judged;
- ``python -m bench.bare``: the same statistics through lacrima's own kernels
  (``bench/bare.py``), the second, labelled line: lacrima's overhead over its own kernels;
- ``python -c "import great_expectations"`` for ``lacrima check``.

Peak memory is that of the command's whole process tree, sampled every 0.1 s.

Scenarios, all in one run (``--scenarios`` picks some, ``--quick`` makes them tiny):

- ``3x``: the three real sites at their published N: ``lacrima run``, drop to report; the floor;
- ``125x120``: a synthetic consortium (``--mid-sites`` x ``--mid-n``): ``lacrima run``,
  drop to report; the floor and the bare statistics on the data it analysed; ``lacrima run``
  again with nothing new; one new drop at one site, then ``lacrima run``;
- ``check``: ``lacrima check`` of the US site's drop at its published N (124 rows), and the
  import of Great Expectations;
- ``cumulative``: 24 monthly cumulative exports of one 1,000-participant site (intake);
- ``dask``: ``lacrima run --runner dask`` at sites x 1,000 for each size of ``--dask-sites``;
- ``portal``: ``lacrima portal serve`` (warm, as started by a user): its API's check of the
  same 124-row drop against ``lacrima check`` of it in this run, and 20 concurrent uploads
  (distinct drops of the three sites, each with its site's token), p95 of their answers.

Each command but the Dask ones runs ``--repeats`` times (the full runs on fresh copies of
the landed store; each yardstick right after the command it measures) and the tables show the
median. The targets of issue 26 are ratios within this one run (:func:`evaluate_targets`).
Writes ``results.json`` and ``results.md``; the stage times of the previous ``results.json``
in the same folder are carried over as "before".
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_KEY = "bench-key-not-secret"
SCENARIOS = ("3x", "125x120", "check", "cumulative", "dask", "portal")
# Sizes of a full benchmark and of --quick (every scenario at a tiny size, for development).
FULL = {"mid_sites": 125, "mid_n": 120, "dask_sites": "100,250,1000", "dask_n": 1000,
        "repeats": 3, "months": 24, "export_n": 1000}
QUICK = {"mid_sites": 10, "mid_n": 30, "dask_sites": "4,8", "dask_n": 30,
         "repeats": 1, "months": 3, "export_n": 100}
CHECK_SITE = "us"       # its published N is the 124-row drop of the check target
GB3_MB = 3072
FLOOR = REPO.parent / "shared" / "bench" / "floor.py"
"""The independent floor: ``../shared/bench/floor.py`` from the repository root (as in CI)."""
IMPORT_GX = (sys.executable, "-c", "import great_expectations")


# --------------------------------------------------------------------------- one command


@dataclass(frozen=True)
class Timed:
    """One command: wall seconds, peak memory of its process tree, its JSON summary if any."""

    seconds: float
    peak_rss_mb: float
    summary: dict = field(default_factory=dict)


@functools.cache          # one command for the whole run, even if the venv is reinstalled
def lacrima_command() -> tuple[str, ...]:
    """The ``lacrima`` script beside this interpreter, as a user types it.

    ``python -m flows`` (the same ``main``) when the script is missing or older than the
    command line's move to ``flows.cli``.
    """
    script = Path(sys.executable).parent / "lacrima"
    if script.is_file() and "from flows.cli import main" in script.read_text(errors="replace"):
        return (str(script),)
    return (sys.executable, "-m", "flows")


def user_env(work: Path, sites_root: Path | None = None) -> dict:
    """The environment of a user's shell: this one, with the bench's key, sites and Prefect home.

    A configured ``PREFECT_API_URL`` is kept (then runs use that server); otherwise ``lacrima
    run`` starts the ephemeral API, as it does for a user.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LACRIMA_")}
    env |= {"LACRIMA_PSEUDONYM_KEY": BENCH_KEY, "PREFECT_HOME": str(work / "prefect-home")}
    if sites_root is not None:
        env["LACRIMA_SITES"] = str(sites_root)
    return env


def _tree_rss(proc) -> int:
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a child may exit between listing and reading
                pass
    except Exception:  # noqa: BLE001 - the command itself has exited
        pass
    return total


def timed(cmd: list[str], env: dict, json_summary: bool = False) -> Timed:
    """Run ``cmd`` from the repository and time it; a failing command stops the benchmark.

    With ``json_summary`` the last line of its output is read as JSON (``lacrima run --json``).
    """
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak, stop = [0], threading.Event()

    def sample():
        try:
            ps = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(ps))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{err[-3000:]}")
    summary = json.loads(out.strip().splitlines()[-1]) if json_summary else {}
    # which work the run did and its seconds per stage; lists of sites as counts
    summary = {k: len(v) if isinstance(v, list) else v for k, v in summary.items()
               if k in ("accepted", "quarantined", "nothing_new", "report", "sites_recomputed",
                        "sites_reused", "seconds")}
    return Timed(round(seconds, 3), round(peak[0] / 2**20, 1), summary)


def _expect(ok: bool, what: str, t: Timed) -> None:
    # A run that did other work than the scenario means would time the wrong thing.
    if not ok:
        raise RuntimeError(f"{what}; the run said: {json.dumps(t.summary)[:2000]}")


def _run(store: Path, *options: str) -> list[str]:
    return [*lacrima_command(), "run", "--json", "--storage", str(store), *options]


def run_data(t: Timed) -> Path:
    """The analysis-ready CSVs of the run ``t`` timed: ``reports/<run>/restricted/data/``."""
    return Path(t.summary["report"]).parent / "restricted" / "data"


def floor_runs(floor: Path | None, t: Timed, env: dict) -> dict | None:
    """The floor on the data of the run ``t``, as a whole process; None without a floor."""
    if floor is None:
        return None
    return asdict(timed([sys.executable, str(floor), str(run_data(t))], env))


def find_floor(path: Path | None = None) -> Path | None:
    """The floor script (``path``, else ``FLOOR``), or None when it is absent."""
    path = path or FLOOR
    return path if path.is_file() else None


# --------------------------------------------------------------------------- scenarios


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _land(store: Path, sites, drops: dict[str, Path]) -> None:
    from lacrima import intake
    from lacrima.storage import LocalStorage

    for s in sites:
        intake.upload(LocalStorage(store), s, drops[s.code], uploader="bench")


def _copy(landed: Path, store: Path) -> Path:
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(landed, store)
    return store


def real_sites(work: Path, repeats: int, floor: Path | None = None) -> dict:
    """``lacrima run`` of the three real sites at their published N, drop to report; the floor.

    One untimed run first: it creates the Prefect home's database, once, as a user's
    first run does. The floor runs right after each full run, on that run's data.
    """
    from lacrima.consortium import write_consortium_drops
    from lacrima.study import load_sites, sites_root

    base = _fresh(work / "3x")
    root = sites_root()
    sites = load_sites(root)
    _land(base / "landed", sites, write_consortium_drops(root, base / "drops"))
    env = user_env(work, root)
    timed(_run(_copy(base / "landed", base / "warm-up")), env, True)
    runs, floors = [], []
    for i in range(repeats):
        t = timed(_run(_copy(base / "landed", base / f"store-{i}")), env, True)
        _expect(t.summary.get("accepted") == len(sites), "3x: not every drop accepted", t)
        runs.append(asdict(t))
        floors.append(floor_runs(floor, t, env))
    return {"sites": len(sites), "n_per_site": round(statistics.mean(s.published_n for s in sites)),
            "full": runs, "floor": [f for f in floors if f is not None]}


def consortium_runs(work: Path, k: int, n: int, repeats: int,
                    floor: Path | None = None) -> dict:
    """A consortium of ``k`` x ``n``: full run, floor, bare statistics, nothing new, one new drop.

    Per repeat, on a fresh copy of the landed store: ``lacrima run`` (drop to report), the
    floor and the bare statistics on the analysis-ready data of that run, ``lacrima run``
    again (nothing new), then a second drop of the first site and ``lacrima run``.
    """
    from bench.bare import write_ready
    from lacrima.consortium import make_consortium, write_consortium_drops
    from lacrima.storage import LocalStorage
    from lacrima.study import load_sites, load_study

    base = _fresh(work / f"{k}x{n}")
    root = make_consortium(base / "sites", k, n).root
    study, sites = load_study(root), load_sites(root)
    # Workbooks take seconds each to write and read: at 100 sites and more, sites that
    # also send CSV (Italy's clones) send CSV.
    text = k >= 100
    drops = write_consortium_drops(root, base / "drops", n, text_formats=text, workers=2)
    one = sites[0]
    second = write_consortium_drops(root, base / "drops-2", n, seed=7, id_offset=10**6,
                                    sites=(one.code,), text_formats=text)
    _land(base / "landed", sites, drops)
    env = user_env(work, root)
    bare = [sys.executable, "-m", "bench.bare", str(base / "ready"), "--sites", str(root)]
    out = {"sites": k, "n_per_site": n, "text_formats": text, "new_drop_site": one.code,
           "full": [], "floor": [], "bare": [], "nothing_new": [], "one_new_drop": []}
    for i in range(repeats):
        store = _copy(base / "landed", base / f"store-{i}")
        full = timed(_run(store), env, True)
        _expect(full.summary.get("accepted") == k, f"{k}x{n}: {k} drops not all accepted", full)
        if i == 0:
            write_ready(LocalStorage(store), study, sites, base / "ready")
        # right after the full run, so both see the machine in the same state
        if floor is not None:
            out["floor"].append(floor_runs(floor, full, env))
        out["bare"].append(asdict(timed(bare, env)))
        same = timed(_run(store), env, True)
        _expect(bool(same.summary.get("nothing_new")), f"{k}x{n}: the rerun found work", same)
        _land(store, [one], second)
        new = timed(_run(store), env, True)
        _expect(new.summary.get("accepted") == 1, f"{k}x{n}: the new drop was not accepted", new)
        for name, t in (("full", full), ("nothing_new", same), ("one_new_drop", new)):
            out[name].append(asdict(t))
        shutil.rmtree(store)
    shutil.rmtree(base / "drops", ignore_errors=True)
    return out


def check_runs(work: Path, repeats: int) -> dict:
    """``lacrima check`` of the US site's synthetic drop at its published N, each time followed
    by ``python -c "import great_expectations"`` (its yardstick)."""
    from lacrima.study import load_site, load_study
    from lacrima.synth import write_drop

    site = load_site(CHECK_SITE)
    drop = write_drop(site, load_study(), _fresh(work / "check") / CHECK_SITE)
    cmd = [*lacrima_command(), "check", str(drop), "--site", CHECK_SITE]
    runs, gx = [], []
    for _ in range(repeats):
        runs.append(asdict(timed(cmd, user_env(work))))
        gx.append(asdict(timed(list(IMPORT_GX), user_env(work))))
    return {"site": CHECK_SITE, "rows": site.published_n, "runs": runs, "import_gx": gx}


def portal_runs(work: Path, repeats: int, uploads: int = 20) -> dict:
    """The portal as a site uses it: a warm API check of the 124-row US drop (after one
    untimed check) against ``lacrima check`` of the same file, and ``uploads`` concurrent
    uploads of distinct drops from the three sites (wall time of each answer)."""
    import asyncio
    import socket
    import urllib.request

    import httpx

    from lacrima import people
    from lacrima.storage import LocalStorage
    from lacrima.study import load_site, load_sites, load_study
    from lacrima.synth import write_drop

    base = _fresh(work / "portal")
    study, site = load_study(), load_site(CHECK_SITE)
    drop = write_drop(site, study, base / "check" / CHECK_SITE)
    sites = load_sites()
    drops = [(s.code, write_drop(s, study, base / f"up{k}" / s.code, n=60, seed=k + 1))
             for k in range(uploads) for s in [sites[k % len(sites)]]]
    store = LocalStorage(base / "store")
    tokens = {s.code: people.new_token(store, s.code, note="bench")[1] for s in sites}
    cli = [asdict(timed([*lacrima_command(), "check", str(drop), "--site", CHECK_SITE],
                        user_env(work))) for _ in range(repeats)]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([*lacrima_command(), "portal", "serve", "--storage", str(store.root),
                               "--port", str(port)], env=user_env(work), cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError(f"the portal did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.2)
        start_seconds = time.perf_counter() - started

        def check() -> float:
            t = time.perf_counter()
            r = httpx.post(f"{url}/api/v1/sites/{CHECK_SITE}/check", timeout=120,
                           headers={"Authorization": f"Bearer {tokens[CHECK_SITE]}"},
                           files={"file": (drop.name, drop.read_bytes())})
            if r.status_code != 200:
                raise RuntimeError(f"API check answered {r.status_code}: {r.text[:500]}")
            return round(time.perf_counter() - t, 3)

        check()                 # untimed: the first request of a process
        api = [check() for _ in range(max(repeats, 5))]

        async def one(client, code, path):
            t = time.perf_counter()
            r = await client.post(f"/api/v1/sites/{code}/drops", files={
                "file": (path.name, path.read_bytes())},
                headers={"Authorization": f"Bearer {tokens[code]}"})
            if r.status_code != 201:
                raise RuntimeError(f"upload answered {r.status_code}: {r.text[:500]}")
            return round(time.perf_counter() - t, 3)

        async def all_uploads():
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                return await asyncio.gather(*(one(client, c, p) for c, p in drops))

        up = asyncio.run(all_uploads())
    finally:
        server.terminate()
        server.wait(30)
    landed = len(store.list("landing"))
    if landed != uploads:
        raise RuntimeError(f"{uploads} uploads answered 201 but {landed} files landed")
    ordered = sorted(up)
    return {"site": CHECK_SITE, "rows": site.published_n, "start_seconds": round(start_seconds, 1),
            "cli_check": cli, "api_check": api, "uploads": up,
            "uploads_p95": ordered[max(0, -(-95 * len(ordered) // 100) - 1)]}


def dask_runs(work: Path, ladder: list[int], n: int) -> list[dict]:
    """``lacrima run --runner dask`` once at each number of sites of ``ladder``, ``n`` a site."""
    from lacrima.consortium import make_consortium, write_consortium_drops
    from lacrima.study import load_sites

    out = []
    for k in ladder:
        base = _fresh(work / f"{k}x{n}-dask")
        root = make_consortium(base / "sites", k, n).root
        drops = write_consortium_drops(root, base / "drops", n, text_formats=k >= 100, workers=2)
        _land(base / "store", load_sites(root), drops)
        shutil.rmtree(base / "drops")
        t = timed(_run(base / "store", "--runner", "dask"), user_env(work, root), True)
        _expect(t.summary.get("accepted") == k, f"dask {k}x{n}: {k} drops not all accepted", t)
        out.append({"sites": k, "n_per_site": n, "run": asdict(t)})
        shutil.rmtree(base)
        print(f"dask {k} x {n}: {t.seconds:.0f} s", file=sys.stderr, flush=True)
    return out


def cumulative_exports(work: Path, months: int = 24, n: int = 1000, growth: int = 10,
                       code: str = "us") -> dict:
    """Intake seconds of each of ``months`` cumulative exports of one site (issue 11).

    Export m holds the site's first ``n + growth * (m - 1)`` records, as a Qualtrics or
    REDCap export does: everything so far, a few new. Each is compared with the site's
    register only, so the 24th should cost about what the first does (target: at most 2x),
    not grow with the batches held.

    Returns
    -------
    dict
        ``seconds`` per month, ``first``, ``last``, ``ratio`` (last / first) and what the
        last export brought (``records_new``, ``records_held``).

    Notes
    -----
    The first intake of a process also pays one-off imports and Great Expectations'
    set-up, so it is taken twice: the first time untimed.
    """
    import csv
    import io

    from lacrima import intake
    from lacrima.storage import LocalStorage
    from lacrima.study import load_site, load_study
    from lacrima.synth import write_drop

    study, site = load_study(), load_site(code)
    folder = _fresh(work / "cumulative")
    full = write_drop(site, study, folder / "all", n=n + growth * (months - 1), seed=1)
    rows = list(csv.reader(io.StringIO(full.read_bytes().decode("utf-8-sig"))))
    header, body = rows[:3], rows[3:]
    storage, key = LocalStorage(folder / "store"), BENCH_KEY.encode()
    intake.upload(LocalStorage(folder / "warm"), site, full)       # one-off costs, untimed
    intake.ingest_site(LocalStorage(folder / "warm"), site, study, key)
    seconds, last = [], None
    for m in range(months):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerows(header + body[:n + growth * m])
        path = folder / f"export-{m + 1:02d}.csv"
        path.write_bytes(buf.getvalue().encode("utf-8-sig"))
        intake.upload(storage, site, path)
        start = time.perf_counter()
        last = intake.ingest_site(storage, site, study, key)
        seconds.append(round(time.perf_counter() - start, 3))
        if not last.accepted:
            raise RuntimeError(f"export {m + 1} was quarantined: {last.reports[0].errors[:2]}")
    shutil.rmtree(folder)
    return {"months": months, "n": n, "growth": growth, "seconds": seconds,
            "first": seconds[0], "last": seconds[-1], "ratio": round(seconds[-1] / seconds[0], 2),
            "records_new": last.records_new, "records_held": last.records_held}


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One target of issue 26: what was measured, and met (True/False) or not judged (None)."""

    name: str
    measured: str
    met: bool | None


def median_seconds(runs: list[dict]) -> float:
    """Median wall seconds of repeated runs (``Timed`` as dicts)."""
    return statistics.median(r["seconds"] for r in runs)


NO_FLOOR = "not measured: the floor (../shared/bench/floor.py) is absent"


def _ratio(name: str, runs: list[dict], base: list[dict], goal: float) -> Target:
    """``runs`` over ``base`` (medians), met when at most ``goal``; not judged without ``base``."""
    if not base:
        return Target(name, NO_FLOOR, None)
    a, b = median_seconds(runs), median_seconds(base)
    return Target(name, f"{a:.1f} s / {b:.1f} s = {a / b:.2f}x", a / b <= goal)


def evaluate_targets(m: dict) -> list[Target]:
    """The targets of issue 26 from one run's measurements (``results.json``'s form).

    Scenarios missing from ``m`` are left out; linearity needs three Dask sizes. The overhead
    over lacrima's own kernels (``bench.bare``) is shown as a line of its own, not judged.
    """
    out = []
    mid, three = m.get("consortium"), m.get("3x")
    if mid:
        size = f"{mid['sites']} x {mid['n_per_site']}"
        out.append(_ratio(f"{size}: `lacrima run`, drop to report, at most 3x the floor",
                          mid["full"], mid.get("floor", []), 3))
    if three:
        out.append(_ratio(f"three real sites: `lacrima run`, drop to report, at most 6x the floor",
                          three["full"], three.get("floor", []), 6))
    if mid:
        full = median_seconds(mid["full"])
        new, same = median_seconds(mid["one_new_drop"]), median_seconds(mid["nothing_new"])
        out += [Target(f"one new drop at one of {mid['sites']} sites at most 0.2x the full run "
                       f"of the same {mid['sites']}",
                       f"{new:.1f} s / {full:.1f} s = {new / full:.2f}x", new / full <= 0.2),
                Target(f"{size}: `lacrima run` with nothing new at most 2% of the full run",
                       f"{same:.2f} s = {100 * same / full:.1f}%", same / full <= 0.02)]
    if m.get("check"):
        c = m["check"]
        out.append(_ratio(f"`lacrima check` of a {c['rows']}-row drop at most 1.3x "
                          "`python -c \"import great_expectations\"`",
                          c["runs"], c.get("import_gx", []), 1.3))
    if m.get("portal"):
        p = m["portal"]
        api, cli = statistics.median(p["api_check"]), median_seconds(p["cli_check"])
        out += [Target(f"portal: a warm API check of the {p['rows']}-row drop at most 1 s and "
                       "at most 0.2x `lacrima check` of it",
                       f"{api:.2f} s / {cli:.2f} s = {api / cli:.2f}x",
                       api <= 1.0 and api / cli <= 0.2),
                Target(f"portal: {len(p['uploads'])} concurrent uploads, p95 under 2 s",
                       f"p95 {p['uploads_p95']:.2f} s (slowest {max(p['uploads']):.2f} s)",
                       p["uploads_p95"] < 2.0)]
    if m.get("dask"):
        biggest = max(m["dask"], key=lambda d: d["sites"] * d["n_per_site"])
        peak = max(d["run"]["peak_rss_mb"] for d in m["dask"])
        out.append(Target(f"Dask, {biggest['sites']:,} x {biggest['n_per_site']:,}: peak memory "
                          "of the process tree under 3 GB", f"{peak:,.0f} MB", peak < GB3_MB))
        points = sorted((d["sites"], d["run"]["seconds"]) for d in m["dask"])
        out.append(Target("Dask: time linear in sites (seconds = a + b x sites, largest miss "
                          "of the line at most 10%)", *linear_fit(points)) if len(points) >= 3
                   else Target("Dask: time linear in sites", "needs three sizes", None))
    if m.get("cumulative"):
        c = m["cumulative"]
        out.append(Target(f"a site's monthly cumulative exports: export {c['months']} at most "
                          "1.2x the first",
                          f"{c['last']:.2f} s / {c['first']:.2f} s = {c['ratio']:.2f}x",
                          c["ratio"] <= 1.2))
    if mid and mid.get("bare"):
        full, bare = median_seconds(mid["full"]), median_seconds(mid["bare"])
        out.append(Target(f"{size}: overhead over lacrima's own kernels (`lacrima run` / "
                          "`python -m bench.bare`; shown, not a target)",
                          f"{full:.1f} s / {bare:.1f} s = {full / bare:.2f}x", None))
    return out


def linear_fit(points: list[tuple[int, float]], tolerance: float = 0.10) -> tuple[str, bool]:
    """Least-squares line through (sites, seconds); linear when every point is within ``tolerance``.

    Returns the text shown in the targets table (intercept, seconds per added site, the
    largest relative miss) and whether the largest miss is within ``tolerance``. Seconds
    *per site* would call a run with fixed start-up costs "not linear" at every size.
    """
    import numpy as np

    k, y = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    b, a = np.polyfit(k, y, 1)
    miss = float(np.max(np.abs(y - (a + b * k)) / y))
    return (f"a = {a:.1f} s, b = {b:.3f} s per site, largest miss {100 * miss:.1f}% "
            f"(sites {', '.join(str(int(x)) for x in k)})", miss <= tolerance)


# --------------------------------------------------------------------------- the page


def _row(scenario: str, command: str, runs: list[dict]) -> str:
    every = ", ".join(f"{r['seconds']:.2f}" for r in runs)
    peaks = [r["peak_rss_mb"] for r in runs if r.get("peak_rss_mb") is not None]
    peak = f"{max(peaks):,.0f}" if peaks else "-"      # an answer of a server: no process of its own
    return f"| {scenario} | {command} | {median_seconds(runs):.2f} | {every} | {peak} |"


STAGES = ("plan", "intake", "analysis", "pooling", "report", "artifacts")


def run_stages(m: dict) -> dict[str, dict]:
    """Seconds per stage (``lacrima run --json``) of the median full run of each scenario."""
    out = {}
    for key, label in (("3x", "three real sites"), ("consortium", None)):
        scenario = m.get(key)
        if not scenario or not scenario.get("full"):
            continue
        runs = sorted(scenario["full"], key=lambda r: r["seconds"])
        median_run = runs[(len(runs) - 1) // 2]
        label = label or f"{scenario['sites']} x {scenario['n_per_site']}"
        out[label] = {"seconds": median_run["seconds"],
                      "stages": median_run["summary"].get("seconds") or {}}
    return out


def _stage_rows(when: str, stages: dict[str, dict]) -> list[str]:
    rows = []
    for label, run in stages.items():
        cells = [f"{run['stages'][k]:.1f}" if k in run["stages"] else "" for k in STAGES]
        rows.append(f"| {label} | {when} | {run['seconds']:.1f} | {' | '.join(cells)} |")
    return rows


def to_markdown(meta: dict, m: dict, targets: list[Target], before: dict | None = None) -> str:
    """``bench/results.md``: the targets, then every command timed, the stages, then notes.

    ``before``: ``{"date", "commit", "stages"}`` of the previous results (their stage times
    are shown beside this run's).
    """
    met = {True: "yes", False: "**no**", None: "n/a"}
    floor = meta.get("floor")
    out = ["# lacrima benchmark", "",
           f"Measured {meta['date']} at commit {meta['commit']} on {meta['host_cpu']}, "
           f"{meta['cores']} cores, {meta['memory_gb']} GB RAM, Python {meta['python']}. "
           f"Produced by `make bench` (`{meta['argv']}`).", "",
           "Every time is the wall time of one command in its own process, as a user runs it: "
           f"`lacrima` is `{meta['lacrima']}`, default runner (chosen by the work: threads "
           f"for fewer than 40 sites to analyse, processes from 40), {meta['prefect_api']}. "
           "The floor is an independent lean implementation of the plan's core per-site "
           "statistics and REML pooling (numpy, scipy, statsmodels; no lacrima code), "
           + (f"`{floor}`, " if floor else "**absent on this machine**, ")
           + "run on the analysis-ready CSVs of the run just timed "
           "(`reports/<run>/restricted/data/<site>.csv`). `python -m bench.bare` computes the "
           "same statistics through lacrima's own kernels: the ratio to it is lacrima's overhead "
           "over its own kernels, shown but not a target. "
           f"Median of {meta['repeats']} run(s), full runs on fresh copies of the landed store, "
           "each yardstick right after the command it measures, after one untimed run (the "
           "Prefect home's database is made once, as on a user's first run); peak memory is "
           "that of the command's whole process tree.", ""]
    if meta.get("quick"):
        out += ["**Quick mode** (`--quick`): every scenario at a tiny size, to show the "
                "benchmark works; the targets are not judged at their sizes here.", ""]
    if not floor:
        out += [f"**The floor is absent** ({NO_FLOOR.split(': ', 1)[1]}): the targets against "
                "it are not judged.", ""]
    out += ["## Targets (issue 26)", "", "| target | measured | met |", "|---|---|---|"]
    out += [f"| {t.name} | {t.measured} | {met[t.met]} |" for t in targets]
    out += ["", "## Commands", "",
            "| scenario | command | median (s) | runs (s) | peak memory (MB) |",
            "|---|---|---|---|---|"]
    if m.get("3x"):
        three = f"3 real sites (mean N {m['3x']['n_per_site']})"
        out.append(_row(three, "`lacrima run`, drop to report", m["3x"]["full"]))
        if m["3x"].get("floor"):
            out.append(_row(three, "floor", m["3x"]["floor"]))
    if m.get("consortium"):
        c = m["consortium"]
        size = f"{c['sites']} x {c['n_per_site']}"
        out.append(_row(size, "`lacrima run`, drop to report", c["full"]))
        if c.get("floor"):
            out.append(_row(size, "floor", c["floor"]))
        out += [_row(size, "`python -m bench.bare`, lacrima's own kernels", c["bare"]),
                _row(size, "`lacrima run`, nothing new", c["nothing_new"]),
                _row(size, f"`lacrima run`, one new drop (site {c['new_drop_site']})",
                     c["one_new_drop"])]
    if m.get("check"):
        rows = f"{m['check']['rows']} rows ({m['check']['site']})"
        out.append(_row(rows, "`lacrima check`", m["check"]["runs"]))
        if m["check"].get("import_gx"):
            out.append(_row(rows, '`python -c "import great_expectations"`',
                            m["check"]["import_gx"]))
    if m.get("portal"):
        p = m["portal"]
        out.append(_row(f"{p['rows']} rows ({p['site']})", "`lacrima check`, same run",
                        p["cli_check"]))
        out.append(_row(f"{p['rows']} rows ({p['site']})", "portal API check, warm",
                        [{"seconds": s, "peak_rss_mb": None} for s in p["api_check"]]))
        out.append(_row(f"{len(p['uploads'])} concurrent", "portal API uploads, each answer",
                        [{"seconds": s, "peak_rss_mb": None} for s in p["uploads"]]))
    for d in m.get("dask", []):
        out.append(_row(f"{d['sites']:,} x {d['n_per_site']:,}", "`lacrima run --runner dask`",
                        [d["run"]]))
    stages = run_stages(m)
    if stages:
        out += ["", "## Stages of the full runs", "",
                "Seconds per stage of the median full run (`lacrima run --json`); the rest of "
                "the wall time is process start, imports, configuration checks and the Prefect "
                "API.", "",
                "| scenario | run | wall (s) | " + " | ".join(STAGES) + " |",
                "|---|---|---|" + "---|" * len(STAGES)]
        if before and before.get("stages"):
            out += _stage_rows(f"before ({before['date'][:10]}, {before['commit']})",
                               before["stages"])
        out += _stage_rows(f"this run ({meta['date'][:10]}, {meta['commit']})", stages)
    if m.get("cumulative"):
        c = m["cumulative"]
        out += ["", "## Cumulative exports", "",
                f"{c['months']} monthly cumulative exports of one site ({c['n']:,} participants, "
                f"{c['growth']} more a month), intake seconds of each: "
                + ", ".join(f"{s:.2f}" for s in c["seconds"])
                + f". The last brought {c['records_new']} new records and {c['records_held']:,} "
                "already held."]
    notes = list(meta.get("notes", []))
    if m.get("consortium", {}).get("text_formats"):
        notes.append("At 100 sites and more, sites that also send CSV (Italy's clones) sent "
                     "CSV, not xlsx.")
    if notes:
        out += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(out) + "\n"


def previous_results(path: Path) -> dict | None:
    """Date, commit and stage times of an earlier ``results.json`` (the "before"), if readable."""
    try:
        old = json.loads(path.read_text())
        meta, m = old["machine"], old["measurements"]
        if meta.get("quick"):
            return None
        return {"date": meta["date"], "commit": meta["commit"], "stages": run_stages(m)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return sha + (" with uncommitted changes" if dirty.strip() else "")


def machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": _commit(), "host_cpu": cpu, "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="every scenario at a tiny size (development); writes to --work "
                         "unless --out is given")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    ap.add_argument("--skip-dask", action="store_true", help="leave out the Dask ladder")
    ap.add_argument("--mid-sites", type=int, help="sites of the 125x120 scenario")
    ap.add_argument("--mid-n", type=int, help="participants a site of the 125x120 scenario")
    ap.add_argument("--dask-sites", help="the Dask ladder: sites at each size, e.g. 100,250,1000")
    ap.add_argument("--dask-n", type=int, help="participants a site on Dask")
    ap.add_argument("--repeats", type=int, help="runs of each command (the tables show the median)")
    ap.add_argument("--out", type=Path, help="where results.md and results.json go "
                                             "(default: bench/)")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--floor", type=Path, help="the independent floor script (default: "
                                               "../shared/bench/floor.py from the repository)")
    ap.add_argument("--note", action="append", default=[], help="a line for the Notes section")
    args = ap.parse_args(argv)
    size = {k: getattr(args, k) if getattr(args, k, None) is not None else v
            for k, v in (QUICK if args.quick else FULL).items()}
    wanted = set(args.scenarios.split(",")) - ({"dask"} if args.skip_dask else set())
    if wanted - set(SCENARIOS):
        ap.error(f"--scenarios: unknown {', '.join(sorted(wanted - set(SCENARIOS)))}")
    out_dir = args.out or (args.work if args.quick else REPO / "bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    api = os.environ.get("PREFECT_API_URL")
    floor = find_floor(args.floor)
    if floor is None:
        print(f"bench: the independent floor is absent (looked for {args.floor or FLOOR}): "
              "lacrima is timed, the targets against the floor are not judged",
              file=sys.stderr, flush=True)
    meta = machine() | {
        "argv": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "lacrima": " ".join(lacrima_command()),
        "prefect_api": f"the Prefect server at {api}" if api else "the ephemeral Prefect API",
        "repeats": size["repeats"], "quick": args.quick, "notes": list(args.note),
        "floor": str(floor) if floor else None}
    before = previous_results(out_dir / "results.json")
    m: dict = {}

    def save():
        targets = evaluate_targets(m)
        (out_dir / "results.json").write_text(json.dumps(
            {"machine": meta, "measurements": m, "targets": [asdict(t) for t in targets],
             "before": before},
            indent=2) + "\n")
        (out_dir / "results.md").write_text(to_markdown(meta, m, targets, before))

    # scenario -> (its key in the measurements, how to measure it)
    steps = {"3x": ("3x", lambda: real_sites(args.work, size["repeats"], floor)),
             "125x120": ("consortium", lambda: consortium_runs(
                 args.work, size["mid_sites"], size["mid_n"], size["repeats"], floor)),
             "check": ("check", lambda: check_runs(args.work, size["repeats"])),
             "portal": ("portal", lambda: portal_runs(args.work, size["repeats"])),
             "cumulative": ("cumulative", lambda: cumulative_exports(
                 args.work, size["months"], size["export_n"])),
             "dask": ("dask", lambda: dask_runs(
                 args.work, [int(x) for x in size["dask_sites"].split(",")], size["dask_n"]))}
    for scenario in (s for s in SCENARIOS if s in wanted):
        print(f"bench: {scenario}", file=sys.stderr, flush=True)
        key, measure = steps[scenario]
        try:
            m[key] = measure()
        except RuntimeError as err:         # a command failed: what it said, no traceback
            print(f"bench: {scenario} failed: {err}", file=sys.stderr)
            save()
            return 1
        save()
    save()
    print((out_dir / "results.md").read_text())
    return 0
