"""``make bench``: wall time per stage, peak memory and orchestration overhead at consortium scale.

Writes ``bench/results.json`` and ``bench/results.md``. Scenarios:

- ``3x``: the three real sites at their published N (thread runner);
- ``125x120``: a synthetic consortium of 125 sites x 120 participants (thread runner, the
  default), plus a no-change rerun and a rerun after one new drop at one site;
- ``125x120-process``: the same with ``--runner process`` (Prefect's process pool);
- ``dask``: sites x 1,000 participants on a local Dask cluster, for each size of the ladder
  ``--dask-sites`` (default ``100,250,1000``): a line fitted through the flow times shows
  whether time grows linearly with sites.

For each scenario two runs over the same landed drops, each in its own store:

1. *staged*, in this process, one step after another: intake (read, pseudonymise, store;
   validation timed apart), then :func:`bare_statistics` on the curated data (scoring,
   per-site analysis, pooling) as one plain call, then the report. Its statistics time is the
   *bare* time.
2. *orchestrated*: ``lacrima``'s Prefect flow in a fresh Python process (drop to report)
   against a local Prefect server started here (SQLite), with peak memory of the whole process
   tree (Dask workers included) sampled every 0.1 s.

The ratio reported is orchestrated wall time / bare time. Nothing here imports prefect: the
server is the ``prefect`` command and the flow runs in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
BENCH_KEY = "bench-key-not-secret"


# --------------------------------------------------------------------------- local Prefect server


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_prefect_server(home: Path, port: int | None = None, timeout: float = 120.0,
                        env: dict | None = None):
    """Run ``prefect server start`` (SQLite under ``home``) on a free local port.

    Yields the API URL (``http://127.0.0.1:<port>/api``). The server is stopped, by its own
    process group, on exit.

    Parameters
    ----------
    home : Path
        ``PREFECT_HOME`` of the server: its SQLite database lives there.
    port : int, optional
        Default: a free port.
    timeout : float
        Seconds to wait for ``/api/health``.
    env : dict, optional
        Extra environment of the server (e.g. a shorter scheduler loop in tests).
    """
    port = port or free_port()
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PREFECT_HOME=str(home), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false") | (env or {})
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).parent / "prefect"
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}: see {home}/server.log")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server did not answer {url}/health in {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        log.close()


# --------------------------------------------------------------------------- the bare computation


@dataclass(frozen=True)
class BareTimings:
    """Seconds of the bare in-process statistics, by stage."""

    scoring: float
    analysis: float
    pooling: float

    @property
    def total(self) -> float:
        return self.scoring + self.analysis + self.pooling


def bare_statistics(curated: dict[str, pd.DataFrame], study, sites):
    """Every statistic of a run, in one plain call on curated frames: no store, no Prefect.

    Parameters
    ----------
    curated : dict
        Site code -> curated frame (``lacrima.intake.curated_frame``).
    study, sites
        The plan and the sites.

    Returns
    -------
    (list of SiteAnalysis, Comparison, BareTimings)
    """
    from lacrima.analysis import analyse_site, describe_site
    from lacrima.results import SiteAnalysis
    from lacrima.steps import compare_sites
    from lacrima.scoring import analysis_ready
    from lacrima.vocabulary import RESULTS_COLUMNS

    t0 = time.perf_counter()
    ready = {c: analysis_ready(f, study, c) for c, f in curated.items() if len(f)}
    t1 = time.perf_counter()
    analyses = [SiteAnalysis(c, "", (), data, flow,
                             analyse_site(data, study, c).reindex(columns=list(RESULTS_COLUMNS)),
                             describe_site(data, study, c))
                for c, (data, flow) in ready.items()]
    t2 = time.perf_counter()
    comparison = compare_sites(analyses, study, list(sites))
    t3 = time.perf_counter()
    return analyses, comparison, BareTimings(t1 - t0, t2 - t1, t3 - t2)


# --------------------------------------------------------------------------- scenarios


@dataclass
class ScenarioResult:
    name: str
    sites: int
    n_per_site: int
    runner: str
    drops_seconds: float = float("nan")
    staged: dict = field(default_factory=dict)
    bare_seconds: float = float("nan")
    orchestrated: dict = field(default_factory=dict)
    ratio: float = float("nan")
    reruns: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    repeats: list = field(default_factory=list)     # every repeat's runs (tables: the median)


def _land(storage, sites, drops: dict[str, Path]) -> None:
    from lacrima import intake

    for s in sites:
        intake.upload(storage, s, drops[s.code], uploader="bench")


def staged_run(root: Path, store: Path) -> tuple[dict, float]:
    """The staged in-process run (see module docstring); returns stage seconds and bare seconds."""
    from lacrima import intake, report, steps as pipeline
    from lacrima.storage import LocalStorage
    from lacrima.study import load_sites, load_study

    study, sites = load_study(root), load_sites(root)
    storage = LocalStorage(store)
    key = BENCH_KEY.encode()
    # Validation is timed inside intake by wrapping the two functions intake calls for it:
    # the GX suite over a group's drops, then the per-drop checks.
    spent = {"validation": 0.0}
    originals = {name: getattr(intake, name) for name in ("run_suite_many", "validate_drop")}

    def timed(original):
        def call(*a, **kw):
            t = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                spent["validation"] += time.perf_counter() - t
        return call

    for name, original in originals.items():
        setattr(intake, name, timed(original))
    try:
        t = time.perf_counter()
        for group in pipeline.site_groups(list(sites)):
            intake.ingest_sites(storage, group, study, key)
        ingest = time.perf_counter() - t
    finally:
        for name, original in originals.items():
            setattr(intake, name, original)
    curated = {s.code: intake.curated_frame(storage, s.code) for s in sites}
    analyses, comparison, bare = bare_statistics(curated, study, sites)
    t = time.perf_counter()
    prov = pipeline.provenance("bench", analyses, study, list(sites))
    report.write_outputs(storage, "bench", analyses, comparison, study, list(sites), prov)
    rep = time.perf_counter() - t
    stages = {"intake": ingest - spent["validation"], "validation": spent["validation"],
              "scoring": bare.scoring, "per_site_analysis": bare.analysis,
              "pooling": bare.pooling, "report": rep}
    return {k: round(v, 3) for k, v in stages.items()}, round(bare.total, 3)


def _tree_rss(proc) -> int:
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a child may exit between listing and reading
                pass
    except Exception:  # noqa: BLE001
        pass
    return total


def orchestrated_run(root: Path, store: Path, api_url: str, runner: str = "thread",
                     workers: int | None = None, run_id: str = "bench") -> dict:
    """The Prefect flow, drop to report, in a child process; wall seconds, stages and peak RSS."""
    import psutil

    env = dict(os.environ, LACRIMA_SITES=str(root), PREFECT_API_URL=api_url,
               LACRIMA_PSEUDONYM_KEY=BENCH_KEY, DO_NOT_TRACK="1", MPLBACKEND="Agg",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    cmd = [sys.executable, "-m", "lacrima.bench", "--child", "--storage", str(store),
           "--runner", runner, "--run-id", run_id]
    if workers:
        cmd += ["--workers", str(workers)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak, stop = psutil.Process(proc.pid), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(ps))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"orchestrated run failed ({proc.returncode}):\n{err[-4000:]}")
    child = json.loads(out.strip().splitlines()[-1])
    return {"process_seconds": round(wall, 3), "import_seconds": child["import_seconds"],
            "flow_seconds": child["flow_seconds"], "stages": child["summary"].get("seconds", {}),
            "peak_rss_mb": round(peak[0] / 2**20, 1),
            "summary": {k: v for k, v in child["summary"].items()
                        if k in ("accepted", "quarantined", "skipped_duplicates", "nothing_new",
                                 "report")}
            | {"sites_recomputed": len(child["summary"]["sites_recomputed"]),
               "sites_reused": len(child["summary"]["sites_reused"])}}


def _child(args) -> None:
    t = time.perf_counter()
    from flows.pipeline import run_pipeline
    imported = time.perf_counter() - t
    t = time.perf_counter()
    summary = run_pipeline(storage_location=args.storage, demo=False, runner=args.runner,
                           run_id=args.run_id, workers=args.workers)
    flow_seconds = time.perf_counter() - t
    print(json.dumps({"import_seconds": round(imported, 3), "flow_seconds": round(flow_seconds, 3),
                      "summary": summary}, default=str))


def _median(runs: list[dict], by: str) -> dict:
    """The run whose ``by`` is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r[by])
    return ordered[(len(ordered) - 1) // 2]


def scenario(name: str, work: Path, api_url: str, k: int | None, n: int | None, runner: str,
             reruns: bool = False, staged: bool = True, workers: int | None = None,
             drop_workers: int = 2, repeats: int = 1) -> ScenarioResult:
    """One scenario: make sites (or use the real ones), write drops, staged and orchestrated runs.

    ``repeats``: the orchestrated runs (full run and reruns) are repeated, each on a fresh copy
    of the landed store; the tables show the median run (flow time) and ``repeats`` keeps all.
    """
    from lacrima.consortium import make_consortium, write_consortium_drops
    from lacrima.storage import LocalStorage
    from lacrima.study import load_sites, sites_root

    base = work / name
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    if k is None:
        root = sites_root()
    else:
        root = make_consortium(base / "sites", k, n).root
    sites = load_sites(root)
    res = ScenarioResult(name, len(sites), n or 0, runner)
    t = time.perf_counter()
    # Text formats at scale: workbooks take seconds each to write and read (noted below).
    text = k is not None and k >= 100
    drops = write_consortium_drops(root, base / "drops", n, text_formats=text, workers=drop_workers)
    res.drops_seconds = round(time.perf_counter() - t, 2)
    if text:
        res.notes.append("Sites that also send CSV (Italy's clones) sent CSV, not xlsx.")
    if not n:
        res.n_per_site = int(round(sum(s.published_n for s in sites) / len(sites)))
    _land(LocalStorage(base / "store-orchestrated"), sites, drops)
    if staged:
        _land(LocalStorage(base / "store-staged"), sites, drops)
        res.staged, res.bare_seconds = staged_run(root, base / "store-staged")
    one = sites[0]
    extra = (write_consortium_drops(root, base / "drops-2", n, seed=7, id_offset=10**6,
                                    sites=(one.code,), text_formats=text) if reruns else {})
    for i in range(repeats):
        store = base / f"store-orchestrated-{i}"
        shutil.copytree(base / "store-orchestrated", store)
        runs = {"full": orchestrated_run(root, store, api_url, runner, workers, run_id="full")}
        if reruns:
            full = runs["full"]["flow_seconds"]
            same = orchestrated_run(root, store, api_url, runner, workers, run_id="rerun-same")
            _land(LocalStorage(store), [one], extra)
            new = orchestrated_run(root, store, api_url, runner, workers, run_id="rerun-one-drop")
            runs["no_change"] = same | {"share_of_full": round(same["flow_seconds"] / full, 4)}
            runs["one_new_drop"] = new | {"share_of_full": round(new["flow_seconds"] / full, 4),
                                          "site": one.code}
        res.repeats.append(runs)
        shutil.rmtree(store, ignore_errors=True)
    res.orchestrated = _median([r["full"] for r in res.repeats], "flow_seconds")
    if staged:
        res.ratio = round(res.orchestrated["flow_seconds"] / res.bare_seconds, 2)
    if reruns:
        # each rerun's share is of its own repeat's full run; the median share is shown
        res.reruns = {key: _median([r[key] for r in res.repeats], "share_of_full")
                      for key in ("no_change", "one_new_drop")}
    if repeats > 1:
        res.notes.append(f"{repeats} repeats on fresh copies of the landed store; flow seconds: "
                         + "; ".join(f"{key.replace('_', ' ')} "
                                     + ", ".join(f"{r[key]['flow_seconds']:.1f}" for r in res.repeats)
                                     for key in res.repeats[0]) + "; tables show the median.")
    shutil.rmtree(base / "drops", ignore_errors=True)
    return res



# --------------------------------------------------------------------------- report


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
    set-up, so it is taken twice: the first time untimed (``warm``).
    Measured on the loaded 2-core dev machine (2026-11-29, 1,000 + 10 a month, US CSV):
    exports 2-24 took 5.6-15.2 s each with no trend (24th 11.7 s, 2nd 10.8 s); the first,
    cold, 51 s.
    """
    import csv
    import io

    from lacrima import intake
    from lacrima.storage import LocalStorage
    from lacrima.study import load_site, load_study
    from lacrima.synth import write_drop

    study, site = load_study(), load_site(code)
    folder = work / "cumulative"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
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
    return {"months": months, "n": n, "growth": growth, "seconds": seconds,
            "first": seconds[0], "last": seconds[-1], "ratio": round(seconds[-1] / seconds[0], 2),
            "records_new": last.records_new, "records_held": last.records_held}


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
            "host_cpu": cpu, "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


STAGES = ("import", "intake", "validation", "scoring", "per_site_analysis", "pooling", "report")


def to_markdown(results: list[ScenarioResult], meta: dict, targets: dict) -> str:
    """The tables of ``bench/results.md``."""
    out = ["# lacrima benchmark", "",
           f"Measured {meta['date']} on {meta['host_cpu']}, {meta['cores']} cores, "
           f"{meta['memory_gb']} GB RAM, Python {meta['python']} ({meta['platform']}). "
           "Produced by `make bench` (`python -m lacrima.bench`).", "",
           "## Stage wall times (seconds)", "",
           "Staged = one process, one step after another (intake excludes validation, which is "
           "timed apart; scoring + per-site analysis + pooling is the bare computation). "
           "Orchestrated = the Prefect flow, drop to report, in its own process against a local "
           "Prefect server (SQLite); its stages overlap sites in parallel.", "",
           "| scenario | runner | run | " + " | ".join(STAGES) + " | total |",
           "|---|---|---|" + "---|" * (len(STAGES) + 1)]
    for r in results:
        if r.staged:
            row = [f"{r.staged.get(s, float('nan')):.2f}" if s != "import" else "" for s in STAGES]
            out.append(f"| {r.name} | in-process | staged | " + " | ".join(row)
                       + f" | {sum(r.staged.values()):.2f} |")
        o = r.orchestrated
        st = o.get("stages", {})
        row = [f"{o['import_seconds']:.2f}", f"{st.get('plan', 0) + st.get('intake', 0):.2f}",
               "(in intake)", "(in analysis)", f"{st.get('analysis', float('nan')):.2f}",
               f"{st.get('pooling', float('nan')):.2f}", f"{st.get('report', float('nan')):.2f}"]
        out.append(f"| {r.name} | {r.runner} | orchestrated | " + " | ".join(row)
                   + f" | {o['flow_seconds']:.2f} |")
    out += ["", "## Whole run against the bare computation, and memory", "",
            "| scenario | sites | n per site | drops written (s) | bare statistics (s) | "
            "orchestrated flow (s) | ratio | process incl. import (s) | peak RSS (MB) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        o = r.orchestrated
        out.append(f"| {r.name} | {r.sites} | {r.n_per_site} | {r.drops_seconds:.1f} | "
                   f"{r.bare_seconds:.2f} | {o['flow_seconds']:.2f} | {r.ratio:.2f} | "
                   f"{o['process_seconds']:.2f} | {o['peak_rss_mb']:.0f} |")
    reruns = [r for r in results if r.reruns]
    if reruns:
        out += ["", "## Scheduled reruns", "",
                "| scenario | rerun | flow (s) | share of full run | sites recomputed | "
                "sites reused | report written |", "|---|---|---|---|---|---|---|"]
        for r in reruns:
            for name, x in r.reruns.items():
                out.append(f"| {r.name} | {name.replace('_', ' ')} | {x['flow_seconds']:.2f} | "
                           f"{100 * x['share_of_full']:.1f}% | {x['summary']['sites_recomputed']} | "
                           f"{x['summary']['sites_reused']} | "
                           f"{'no' if x['summary']['report'] is None else 'yes'} |")
    out += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, (measured, met) in targets.items():
        out.append(f"| {name} | {measured} | {'yes' if met else 'no' if met is not None else 'n/a'} |")
    notes = [f"- {r.name}: {n}" for r in results for n in r.notes]
    if meta.get("notes"):
        notes += [f"- {n}" for n in meta["notes"]]
    if notes:
        out += ["", "## Notes", "", *notes]
    return "\n".join(out) + "\n"


def evaluate_targets(results: list[ScenarioResult]) -> dict:
    """Each issue-5 target: a measured text and met / not met / None (information only, shown as n/a)."""
    t = {}
    for mid in (r for r in results if r.reruns):
        who = f"{mid.sites} x {mid.n_per_site}, {mid.runner} runner"
        t[f"{who}: drop to report within 3x the bare computation"] = (
            f"{mid.ratio:.2f}x", mid.ratio <= 3)
        for key, limit, label in (("no_change", 0.05, "no-change rerun at most 5% of the full run"),
                                  ("one_new_drop", 0.15, "one new drop at most 15% of the full run")):
            x = mid.reruns.get(key)
            if x:
                t[f"{who}: {label}"] = (f"{100 * x['share_of_full']:.1f}%",
                                        x["share_of_full"] <= limit)
    dask = [r for r in results if r.runner == "dask"]
    if dask:
        peak = max(r.orchestrated["peak_rss_mb"] for r in dask)
        biggest = max(dask, key=lambda r: r.sites)
        t[f"Dask: peak memory under 4 GB (largest measured: {biggest.sites} x {biggest.n_per_site})"] = (
            f"{peak:.0f} MB", peak < 4096)
        if len(dask) >= 3:
            t["Dask: time linear in sites (flow seconds = a + b x sites, largest miss of the line)"] = \
                linear_fit(sorted((r.sites, r.orchestrated["flow_seconds"]) for r in dask))
        t["1,000 x 1,000 on Dask measured"] = (
            "yes" if any(r.sites >= 1000 and r.n_per_site >= 1000 for r in dask) else "no", None)
    return t


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lacrima.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--storage")
    ap.add_argument("--runner", default="thread")
    ap.add_argument("--run-id", default="bench")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--out", type=Path, default=REPO / "bench")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    ap.add_argument("--scenarios", default="3x,125x120,125x120-process,cumulative,dask",
                    help="comma-separated: 3x, 125x120 (thread runner), 125x120-process, dask, "
                         "cumulative (24 cumulative exports of one site)")
    ap.add_argument("--dask-sites", default="100,250,1000",
                    help="sites for the Dask scenario, or a ladder such as 100,250,500")
    ap.add_argument("--dask-n", type=int, default=1000)
    ap.add_argument("--mid-sites", type=int, default=125)
    ap.add_argument("--mid-n", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=3,
                    help="orchestrated runs per 125-site scenario (the tables show the median)")
    ap.add_argument("--note", action="append", default=[], help="a line for the Notes section")
    ap.add_argument("--keep", action="store_true",
                    help="keep the scenarios already in OUT/results.json (add to them)")
    args = ap.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("LACRIMA_PSEUDONYM_KEY", BENCH_KEY)
    wanted = args.scenarios.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[ScenarioResult] = []
    meta = machine() | {"notes": list(args.note)}
    if args.keep and (args.out / "results.json").exists():
        old = json.loads((args.out / "results.json").read_text())
        results = [ScenarioResult(**s) for s in old["scenarios"]]
        meta["notes"] = old["machine"].get("notes", []) + meta["notes"]
        meta["date"] = f"{old['machine']['date']} and {meta['date']}"

    def save():
        targets = evaluate_targets(results)
        (args.out / "results.json").write_text(json.dumps(
            {"machine": meta, "scenarios": [asdict(r) for r in results],
             "targets": {k: {"measured": m, "met": ok} for k, (m, ok) in targets.items()}},
            indent=2, default=str) + "\n")
        (args.out / "results.md").write_text(to_markdown(results, meta, targets))

    with local_prefect_server(args.work / "prefect-home") as api:
        print(f"prefect server at {api}", file=sys.stderr, flush=True)
        if "3x" in wanted:
            results.append(scenario("3x", args.work, api, None, None, "thread"))
            save()
        if "125x120" in wanted:
            results.append(scenario(f"{args.mid_sites}x{args.mid_n}", args.work, api, args.mid_sites,
                                    args.mid_n, "thread", reruns=True, repeats=args.repeats))
            save()
        if "125x120-process" in wanted:
            results.append(scenario(f"{args.mid_sites}x{args.mid_n}-process", args.work, api,
                                    args.mid_sites, args.mid_n, "process", reruns=True,
                                    repeats=args.repeats))
            save()
        if "cumulative" in wanted:
            c = cumulative_exports(args.work)
            meta["notes"].append(
                f"{c['months']} monthly cumulative exports of a {c['n']:,}-participant site "
                f"(+{c['growth']} a month): intake of the first {c['first']:.2f} s, of the last "
                f"{c['last']:.2f} s ({c['ratio']:.2f}x; target at most 2x)")
            save()
        if "dask" in wanted:
            for k in (int(x) for x in args.dask_sites.split(",")):
                results.append(scenario(f"{k}x{args.dask_n}-dask", args.work, api, k, args.dask_n,
                                        "dask", staged=False, workers=2))
                save()
                print(f"dask {k} x {args.dask_n} done", file=sys.stderr, flush=True)
    save()
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
