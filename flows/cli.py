"""The ``lacrima`` command line: data managers (check, upload, status), operators (run, serve),
analysts and developers (synth, demo, expectations).

Exit codes: 0 success / valid, 1 invalid data, 2 usage error, unreadable input or a store
that cannot be reached, 3 another run holds the store (``lacrima.lease``).
Bad data never produces a Python traceback.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from flows.terminal import console, fail as _fail, open_store as _open_store
from flows.terminal import reachable as _reachable, site as _site

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="lacrima: three-site replication data platform.")

@app.command()
def synth(site: Optional[str] = typer.Option(None, help="site code, e.g. us (one drop)"),
          sites: Optional[int] = typer.Option(None, "--sites",
                                              help="K: a synthetic consortium of K sites instead"),
          replications: int = typer.Option(1, "--replications",
                                           help="with --sites: how many of the K are replication sites"),
          n: Optional[int] = typer.Option(None, help="participants (default: the site's published N)"),
          seed: Optional[int] = typer.Option(None, help="random seed (default: the plan's seed); "
                                             "also chooses the participant IDs"),
          first_id: Optional[int] = typer.Option(None, "--first-id",
                                                 help="number IDs from N (continue a site's numbering)"),
          out: Path = typer.Option(..., help="output file or folder"),
          mess: bool = typer.Option(False, help="add realistic mess (blanks, bad codes, duplicates...)")):
    """Write a synthetic drop in the site's native format, or a whole consortium (--sites K).

    With --sites K, OUT/sites holds K site folders cloned from the real sites (point
    LACRIMA_SITES at it) and OUT/drops one drop per site; --replications R makes R of them
    replication sites (the Many Labs design), the others originals.
    """
    from lacrima.study import load_study
    from lacrima.synth import write_drop
    if (site is None) == (sites is None):
        _fail("give either --site CODE (one drop) or --sites K (a consortium)")
    if sites is not None:
        from lacrima.consortium import make_consortium, write_consortium_drops
        if mess or first_id is not None:
            _fail("--mess and --first-id apply to one site's drop (--site), not to a consortium")
        try:
            # Replication clones first (of us, the replication template), then it and il in
            # turn: one replication gives the default us, it, il cycle.
            made = make_consortium(out / "sites", sites, n, replications=replications,
                                   templates=("us",) * max(1, replications) + ("it", "il"))
        except (ValueError, FileExistsError) as err:
            _fail(str(err))
        write_consortium_drops(made.root, out / "drops", n, seed, workers=min(4, os.cpu_count() or 1))
        typer.echo(f"export LACRIMA_SITES={made.root}")
        return
    from lacrima.synth import seed_id_offset
    try:
        offset = seed_id_offset(seed, first_id)
    except ValueError as err:
        _fail(str(err))
    path = write_drop(_site(site), load_study(), out, n=n, seed=seed, mess=mess, id_offset=offset)
    typer.echo(str(path))


@app.command()
def check(file: Path = typer.Argument(..., help="the drop to validate"),
          site: str = typer.Option(..., help="site code"),
          report: Optional[Path] = typer.Option(None, help="write the report here (.html or .json)"),
          verbose: bool = typer.Option(False, "--verbose", help="also say what intake does as "
                                       "designed (identifying columns removed unread)")):
    """Validate a drop locally without uploading it (a clean file is one line)."""
    from lacrima.dropreport import print_report, render_html
    from lacrima.intake import check_file
    from lacrima.study import load_study

    s = _site(site)
    if not file.is_file():
        _fail(f"{file}: no such file")
    try:
        rep, readable = check_file(file, s, load_study())
    except OSError as err:
        _fail(f"{file}: cannot read ({err.strerror})")
    print_report(rep, Console(highlight=False), verbose, s.language)
    if report:
        text = render_html(rep, s.language) if report.suffix.lower() in (".html", ".htm") else \
            json.dumps(rep.to_dict(), indent=2)
        try:
            report.write_text(text)
        except OSError as err:
            _fail(f"{report}: cannot write the report ({err.strerror})")
        console.print(f"report written to {report}", markup=False)
    if not readable:
        # check_file says unreadable exactly when the file could not be read at all
        # (wrong type, too large, damaged, binary, bad encoding...): exit 2, not 1.
        raise typer.Exit(2)
    raise typer.Exit(0 if rep.valid else 1)


@app.command()
def upload(file: Path = typer.Argument(..., help="the drop to upload"),
           site: str = typer.Option(..., help="site code"),
           replaces: str = typer.Option("", help="batch (SHA-256 prefix) this file corrects"),
           uploader: str = typer.Option("", help="who uploads (recorded as metadata)"),
           storage_at: Optional[str] = typer.Option(None, "--storage",
                                                    help="storage root (default: LACRIMA_STORAGE or ./data)")):
    """Put a drop into the site's landing zone."""
    from lacrima import intake

    s = _site(site)
    if not file.is_file():
        _fail(f"{file}: no such file")
    storage = _open_store(storage_at)
    try:
        key = intake.upload(storage, s, file, uploader=uploader, replaces=replaces)
    except intake.UploadRefused as err:         # what the run would refuse: nothing copied
        _fail(f"not uploaded ({err.finding.check}): {err}")
    except LookupError as err:
        _fail(str(err))
    except OSError as err:          # unreadable file, or the store failed after its retries
        _fail(f"upload to {storage.location} failed: {err}")
    typer.echo(key)


@app.command()
def status(site: Optional[str] = typer.Option(None, help="only this site"),
           storage: Optional[str] = typer.Option(None, help="storage root (default: LACRIMA_STORAGE or ./data)"),
           batches: bool = typer.Option(False, "--batches", help="also list every batch"),
           as_json: bool = typer.Option(False, "--json", help="print every batch as JSON"),
           report: Optional[str] = typer.Option(None, "--report", metavar="BATCH",
                                                help="print the findings of one batch (SHA-256 "
                                                     "prefix or file name), as `check` does")):
    """Per site: batches, participants held, last drop, files waiting, quarantined files with
    their reason (or the batch that fixed them), and files in the wrong place with what to do.

    With --report BATCH: that batch's findings (exit 0 accepted, 1 quarantined)."""
    from rich.table import Table
    from rich.text import Text

    from lacrima.catalog import participants_held, unfinished_reports
    from lacrima.runplan import plan
    from lacrima.status import misplaced, site_status, status_records
    from lacrima.study import load_sites, load_study, site_codes

    if site:
        _site(site)
    store = _reachable(_open_store(storage))
    if report:
        _print_batch_report(store, site, report)
        return
    codes = [site] if site else list(site_codes())
    try:
        recs = status_records(store, site, site_codes())
        wrong = [] if site else misplaced(store, site_codes())
        summaries = [site_status(c, recs, participants_held(store, c)) for c in codes]
        unfinished = [] if site else unfinished_reports(store)
        # What the next run would do (the run plan), for the whole store only
        todo = None if site or as_json else plan(store, load_sites(), load_study())
    except OSError as err:          # the store failed after its retries
        _fail(f"status of {store.location} failed: {err}")
    except (ValueError, KeyError) as err:      # a broken site folder: `lacrima sites check`
        _fail(f"cannot plan the next run: {err}")
    if as_json:
        typer.echo(json.dumps(recs, indent=2))
        return
    out = Console(highlight=False)
    out.print(Text(f"Store {store.location}", style="bold"))
    for s in summaries:
        line = (f"{s['site']}: {s['batches']} batch(es), {s['participants']} participant(s) "
                f"held, last drop {s['last_drop'][:10] or 'never'}, {s['pending']} file(s) "
                "waiting for the next run")
        out.print(Text(line))
        for q in s["quarantined"]:
            out.print(Text(f"    quarantined: {q['file']} (batch {q['batch']}): {q['reason']}; "
                           f"`lacrima status --site {s['site']} --report {q['batch']}` says why",
                           style="red"))
        for q in s["fixed"]:
            out.print(Text(f"    fixed by {q['fixed_by']}: {q['file']} (batch {q['batch']}, "
                           f"was quarantined for {q['reason']})", style="dim"))
    for w in wrong:
        out.print(Text(f"wrong place: {w['key']}: {w['problem']}. {w['fix']}", style="yellow"))
    for run_id in unfinished:
        out.print(Text(f"unfinished report: reports/{run_id}/ has no manifest (a run was killed "
                       "while writing it; never published); the next run removes it",
                       style="yellow"))
    if todo is not None:
        out.print(Text(f"next run: {todo.describe()}"))
    if batches and out.width < 120:          # one line per batch: words wrap, never break
        out.print(Text("Batches", style="bold"))
        for r in recs:
            reason = r.get("reason") or (f"superseded by {r['superseded_by'][:12]}"
                                         if r.get("superseded_by") else "")
            out.print(Text(f"  {r['site']} {r['sha256'][:12]} {r['state']}"
                           f"{' ' + str(r['rows']) + ' rows' if r['rows'] != '' else ''}"
                           f"{' ' + r['received_at'][:10] if r['received_at'] else ''} "
                           f"{r['original_name']}{': ' + reason if reason else ''}"))
    elif batches:
        table = Table(title="Batches", title_justify="left")
        for col in ("site", "batch", "state", "rows", "received", "file", "reason"):
            table.add_column(col, overflow="fold", no_wrap=col in ("batch", "state"))
        for r in recs:
            table.add_row(*(Text(str(v)) for v in (
                r["site"], r["sha256"][:12], r["state"], r["rows"], r["received_at"][:10],
                r["original_name"], r.get("reason") or
                (f"superseded by {r['superseded_by'][:12]}" if r.get("superseded_by") else ""))))
        out.print(table)


def _print_batch_report(store, site: Optional[str], ref: str) -> None:
    """`lacrima status --report BATCH`: the batch's findings as `lacrima check` prints them."""
    from lacrima.dropreport import print_report
    from lacrima.status import batch_report
    from lacrima.study import site_codes

    found = []
    for code in [site] if site else site_codes():
        try:
            found.append(batch_report(store, code, ref))
        except LookupError as err:
            error = err
    if not found:
        _fail(str(error) if site else f"batch {ref!r}: no batch of any site matches (give a "
              "SHA-256 prefix of 8+ characters or the file's name; see `lacrima status "
              "--batches`)")
    if len(found) > 1:
        _fail(f"batch {ref!r} matches batches of {len(found)} sites: add --site")
    rec, rep = found[0]
    out = Console(highlight=False)
    if rep is None:
        from rich.text import Text
        out.print(Text(f"{rec.original_name} ({rec.site}, batch {rec.sha256[:12]}): {rec.state}, "
                       f"{rec.rows} rows; only a quarantined batch keeps its report"))
        return
    from lacrima.study import load_site
    print_report(rep, out, lang=load_site(rec.site).language)
    if rec.fixed_by:
        out.print(f"Fixed by batch {rec.fixed_by[:12]}, which holds its records.",
                  markup=False)
    raise typer.Exit(1)


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _prefect_home() -> None:
    """Prefect's database and settings live in the project (``.prefect``), wherever the
    command is run from; an explicit PREFECT_HOME (as the Makefile sets) is kept."""
    os.environ.setdefault("PREFECT_HOME", str(PROJECT_ROOT / ".prefect"))


def _quiet_prefect(verbose: bool, run_id: str) -> Path:
    """Send Prefect's logs (and every library's) to a log file; with ``verbose``, also to the
    terminal. Must run before prefect is first imported: it reads its logging setup then.
    Returns the log file's path."""
    _prefect_home()
    logs = Path(os.environ["PREFECT_HOME"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"run-{run_id}.log"
    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(PROJECT_ROOT / "flows" / "logging.yml"))
    os.environ["PREFECT_LOGGING_HANDLERS_FILE_FILENAME"] = str(path)
    os.environ["LACRIMA_RUN_LOG"] = str(path)
    # Prefect's default (20 s) is too short for the ephemeral server on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if verbose:
        os.environ["PREFECT_LOGGING_ROOT_HANDLERS"] = "console,file"
    return path


def _preflight(storage: Optional[str], demo: bool):
    """Key, store, plan and sites, checked before anything starts Prefect (one line, exit 2).

    The key and the store come first and need no pandas, so a missing key is told at once.
    The store is opened and the key checked against it here, once. Returns the run context.
    """
    _check_config()
    from lacrima.privacy import MissingKeyError, pseudonym_key
    from lacrima.storage import open_storage

    try:
        pseudonym_key(demo=demo)
        store = open_storage(storage)
        store.check()           # no such bucket, refused credentials, endpoint: no retries
    except MissingKeyError as err:
        _fail(str(err))
    except (ValueError, OSError) as err:          # a bad storage URL, an unreachable store
        _fail(f"store {storage or os.environ.get('LACRIMA_STORAGE') or './data'}: {err}")
    from lacrima.catalog import KeyCustodyError
    from lacrima.steps import prepare_run
    try:
        return prepare_run(store, demo=demo)      # refuses a key that does not fit the store
    except KeyCustodyError as err:
        _fail(str(err))
    except (ValueError, KeyError, OSError) as err:   # site files, an unreadable plan
        _fail(str(err.args[0]) if isinstance(err, KeyError) else str(err))


def _plan(ctx, runner: str):
    """The run plan (``lacrima.runplan.plan``) before Prefect starts; exit 2 when the store
    cannot be read."""
    from lacrima.runplan import plan

    try:
        return plan(ctx.storage, ctx.sites, ctx.study, runner)
    except OSError as err:          # the store failed after its retries
        _fail(f"cannot read the store {ctx.storage.location}: {err}")


BUSY = 3       # exit code: another run holds the store's lease


@contextmanager
def _exclusive(store, what: str):
    """Hold the store's lease (``lacrima.lease``, renewed) while a command changes its state;
    exit 3 naming the holder when another run or command holds it."""
    from contextlib import ExitStack

    from lacrima import lease
    with ExitStack() as stack:
        try:
            stack.enter_context(lease.hold(store, f"{lease.default_owner()} {what}"))
        except lease.LeaseHeld as err:
            _fail(str(err), BUSY)
        except OSError as err:
            _fail(f"cannot take the lease of {store.location}: {err}")
        yield


def _start_api():
    """Have the Prefect API ready while the flow's modules load; returns a wait for it.

    In a thread, ``prefect.get_client`` makes Prefect's own choice: a configured
    ``PREFECT_API_URL`` is used as is (nothing started), otherwise Prefect's one ephemeral
    server of this process starts (a process-wide singleton: the flow, and ``share_api`` for
    worker processes, get that same server). Its start-up (a process of its own, seconds)
    then overlaps the import of the flow, the statistics and Prefect in this one. The wait
    raises what the start raised (a server that did not come up): the run fails then, as
    it would have at the flow's first call, and never starts a second server.
    """
    import threading

    from prefect.settings import PREFECT_API_URL
    if not PREFECT_API_URL.value():
        # The module Prefect's client starts its ephemeral server from (it loads the whole
        # server API), imported here first: in the thread it would only contend for the GIL
        # with the imports below, and the server's process would start after both.
        import prefect.server.api.server  # noqa: F401
    failed: list[BaseException] = []

    def start():
        try:
            from prefect import get_client
            get_client(sync_client=True)
        except Exception as err:       # noqa: BLE001 - raised by the wait, in the run
            failed.append(err)

    thread = threading.Thread(target=start, name="prefect-api", daemon=True)
    thread.start()

    def wait():
        thread.join()
        if failed:
            raise failed[0]
    return wait


def _run(storage: Optional[str], demo: bool, runner: str = "auto",
         dask_address: Optional[str] = None, verbose: bool = False, wait: float = 0.0,
         ctx=None):
    """Check (unless the command did: ``ctx``), plan, and only when there is work, run the
    flow with a progress display."""
    ctx = ctx or _preflight(storage, demo)
    from lacrima.steps import new_run_id

    run_id = new_run_id()
    log_file = _quiet_prefect(verbose, run_id)
    todo = _plan(ctx, runner)
    if todo.nothing_new:            # answered without starting Prefect
        from lacrima.steps import summarise

        return summarise(run_id, todo.drops, [], [], None, sorted(todo.keys),
                         location=ctx.storage.location)
    api_ready = _start_api()
    from lacrima.lease import LeaseLost
    with _progress(len(ctx.sites), verbose):
        try:
            from flows.pipeline import run_pipeline
            api_ready()         # never two servers: the flow starts once the one is up
            summary = run_pipeline(storage_location=storage, demo=demo, runner=todo.runner,
                                   dask_address=dask_address, run_id=run_id, wait=wait)
        except LeaseLost as err:
            _fail(str(err), BUSY)
        except Exception as err:        # noqa: BLE001 - one line and the log, never a traceback
            logging.getLogger("lacrima").exception("run %s failed", run_id)
            _fail(f"run {run_id} failed: {err} (details in {log_file})", 1)
    if summary.busy:                # another run holds the store: it changed nothing here
        _fail(summary.busy, BUSY)
    return replace(summary, log=str(log_file))


class _ProgressHandler(logging.Handler):
    """Feeds ``lacrima.progress`` records (``pipeline.progress``) to a rich progress bar."""

    def __init__(self, bar, task):
        super().__init__(logging.INFO)
        self.bar, self.task = bar, task

    def emit(self, record):
        done, total = getattr(record, "done", None), getattr(record, "total", None)
        self.bar.update(self.task, description=getattr(record, "stage", record.getMessage()),
                        **({"completed": done, "total": total} if total else {}))


@contextmanager
def _progress(n_sites: int, verbose: bool):
    """A one-line progress display on the terminal (stage, sites done of total) for a run."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    logger = logging.getLogger("lacrima.progress")
    if verbose or not console.is_terminal:
        yield
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("sites"), console=console,
                  transient=True) as bar:
        task = bar.add_task("starting", total=n_sites, completed=0)
        handler = _ProgressHandler(bar, task)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)


def _check_config(sites_dir: Optional[Path] = None) -> None:
    """Refuse a broken plan or site folder before anything heavy (Prefect, pandas) is imported.

    One line per problem on stderr, exit 2; the same checks as ``lacrima sites check``.
    """
    from lacrima.contract import check_sites
    problems = check_sites(sites_dir)
    if problems:
        for p in problems:
            typer.echo(f"config: {p}", err=True)    # one unwrapped line per problem
        _fail(f"{len(problems)} configuration problem(s); nothing was run")


@app.command()
def run(as_json: bool = typer.Option(False, "--json", help="print a JSON summary as the last line"),
        storage: Optional[str] = typer.Option(None, help="storage root (default: LACRIMA_STORAGE or ./data)"),
        demo: bool = typer.Option(False, help="synthetic data: allow the public demo pseudonym key"),
        runner: str = typer.Option("auto", help="task runner: auto (default: threads for a few "
                                                "sites to analyse, processes for many), thread, "
                                                "process or dask"),
        dask_address: Optional[str] = typer.Option(None, help="address of an existing Dask scheduler"),
        verbose: bool = typer.Option(False, "--verbose", "-v",
                                     help="show Prefect's task logs (always in the run's log file)"),
        wait: float = typer.Option(0.0, help="seconds to wait while another run holds the store "
                                             "(then exit 3)")):
    """Run the pipeline now: new drops in, a report out (ephemeral Prefect API, or PREFECT_API_URL).

    Key, plan, sites and store are checked first, and a run with nothing new answers
    without starting Prefect. One run at a time per store. Exit 0 when the run finished
    (quarantined drops included), 1 when it failed, 2 on a usage or configuration error or
    an unreachable store, 3 when another run holds the store (named in the message).
    """
    if runner not in ("auto", "thread", "process", "dask"):
        _fail(f"--runner {runner!r}: expected auto, thread, process or dask")
    _print_summary(_run(storage, demo, runner, dask_address, verbose, wait), as_json)


def drop_line(d: dict) -> str:
    """One line per drop: site, file, outcome, record counts, rows, and where to read why."""
    from lacrima.findings import printable

    counts = ", ".join(f"{d[k]} {label}" for k, label in
                       (("new", "new"), ("changed", "changed"), ("already_held", "unchanged"),
                        ("withdrawn", "withdrawn (left out)"))
                       if d.get(k) is not None and (d[k] or k != "withdrawn"))
    head = f"{d['site']}  {printable(d['file'])}  {d['outcome']}"
    if d["outcome"] == "quarantined":
        return (f"{head}: {d['errors']} error(s) ({', '.join(d['checks'])}); "
                f"report: {d['report']}")
    return f"{head}: {counts or str(d['rows']) + ' rows'}" + (
        f", {d['warnings']} warning(s)" if d.get("warnings") else "")


def _print_summary(summary, as_json: bool):
    """A run's ``RunSummary`` on the terminal, or as one JSON line."""
    if as_json:
        typer.echo(json.dumps(summary.to_dict()))
        return
    if summary.nothing_new:
        console.print("nothing new since the latest report: no report written", markup=False)
    console.print(f"run {summary.run_id}: {summary.accepted} accepted ({summary.records_new} "
                  f"new records, {summary.records_held} already held), "
                  f"{summary.quarantined} quarantined, "
                  f"{summary.skipped_duplicates} already processed", markup=False)
    for d in summary.drops:
        console.print("  " + drop_line(d), markup=False, highlight=False, soft_wrap=True)
    if summary.log:
        console.print(f"log: {summary.log}", markup=False, highlight=False, soft_wrap=True)
    typer.echo(f"report: {summary.report}" if summary.report else "no report written")


@app.command()
def serve(cron: str = typer.Option("0 2 * * *", help="nightly schedule (cron, server time zone)"),
          sweep_minutes: float = typer.Option(5.0, help="minutes between landing-zone sweeps"),
          storage: Optional[str] = typer.Option(None, help="storage root"),
          demo: bool = typer.Option(False, help="synthetic data: allow the public demo key")):
    """Register the nightly and sweep deployments on the Prefect server and serve them."""
    _check_config()
    if not os.environ.get("PREFECT_API_URL"):
        _fail("schedules need a Prefect server: start one with `prefect server start` and set "
              "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    from flows.deployments import serve_forever
    serve_forever(cron=cron, sweep_minutes=sweep_minutes, storage_location=storage, demo=demo)


@app.command()
def demo(storage: Optional[str] = typer.Option(None, help="storage root (default ./data, "
                                                 "whatever LACRIMA_STORAGE says)"),
         as_json: bool = typer.Option(False, "--json")):
    """Synthetic drops for every site into the landing zone, then one pipeline run.

    Writes to ./data unless --storage says otherwise (never LACRIMA_STORAGE: that names the
    real store), and refuses a store holding batches made under a real key.
    """
    storage = storage or "data"
    ctx = _preflight(storage, True)     # refuses a store holding batches made under a real key
    from lacrima import intake
    from lacrima.synth import write_drop

    with tempfile.TemporaryDirectory(prefix="lacrima-demo-") as tmp:
        for s in ctx.sites:
            path = write_drop(s, ctx.study, Path(tmp) / s.code)
            key = intake.upload(ctx.storage, s, path, uploader="demo")
            # soft_wrap: a storage key is never broken over two lines
            console.print(f"synthetic drop for {s.code}: {key}", markup=False, soft_wrap=True)
    _print_summary(_run(storage, True, "auto", None, False, 0.0, ctx), as_json)


@app.command()
def withdraw(participant_id: str = typer.Argument(..., help="the ID as the site knows it"),
             site: str = typer.Option(..., help="site code"),
             reason: str = typer.Option("", help="kept in the ledger entry only"),
             purge_raw: bool = typer.Option(False, "--purge-raw",
                                            help="also replace every raw file holding the person "
                                                 "by a redacted copy and delete the original"),
             not_yet_received: bool = typer.Option(
                 False, "--not-yet-received",
                 help="the site has not sent this person's record yet: record the withdrawal "
                      "anyway (else an ID the store never held is refused, exit 1)"),
             storage: Optional[str] = typer.Option(None, help="storage root "
                                                   "(default: LACRIMA_STORAGE or ./data)")):
    """Record a participant's withdrawal of consent: every later output leaves them out.

    Recorded in the ledger by pseudonym; the ID is never stored or printed. A later export
    that still holds the person does not bring them back. See README, "Withdrawal of consent".
    """
    from lacrima import intake
    from lacrima.catalog import KeyCustodyError
    from lacrima.privacy import MissingKeyError, pseudonym_key
    from lacrima.study import load_study

    s = _site(site)
    store = _open_store(storage)
    with _exclusive(store, "withdraw"):
        try:
            entry = intake.withdraw(store, s, load_study(), pseudonym_key(), participant_id,
                                    reason=reason, purge_raw=purge_raw,
                                    not_yet_received=not_yet_received)
        except intake.UnknownParticipant as err:
            _fail(str(err), 1)
        except (MissingKeyError, KeyCustodyError, ValueError) as err:
            _fail(str(err))
        except OSError as err:
            _fail(f"withdrawal in {store.location} failed: {err}")
    held = "held a record of them" if entry["held"] else "held no record of them yet"
    console.print(f"withdrawal recorded for site {site} as {entry['pseudonym']} (the site "
                  f"{held}); {len(entry['purged'])} raw file(s) redacted", markup=False)


@app.command()
def rekey(new_key_file: Path = typer.Option(..., help="file holding the new pseudonymisation key"),
          storage: Optional[str] = typer.Option(None, help="storage root "
                                                "(default: LACRIMA_STORAGE or ./data)"),
          as_json: bool = typer.Option(False, "--json", help="print the ledger entry as JSON")):
    """Re-pseudonymise every stored record under a new key, as one audited operation.

    The current key comes from LACRIMA_PSEUDONYM_KEY or LACRIMA_PSEUDONYM_KEY_FILE, as for
    a run; afterwards point those at the new key. An interrupted rekey is finished by
    running the same command again.
    """
    from lacrima import intake
    from lacrima.catalog import KeyCustodyError
    from lacrima.privacy import MissingKeyError, check_key_strength, pseudonym_key
    from lacrima.study import load_sites, load_study

    store = _open_store(storage)
    with _exclusive(store, "rekey"):
        try:
            old = pseudonym_key()
            new = check_key_strength(new_key_file.read_bytes().strip(), str(new_key_file))
            entry = intake.rekey(store, load_sites(), load_study(), old, new)
        except OSError as err:
            _fail(f"rekey of {store.location} failed: {err}")
        except (MissingKeyError, KeyCustodyError, RuntimeError) as err:
            _fail(str(err))
    if as_json:
        typer.echo(json.dumps(entry))
        return
    console.print(f"rekeyed {sum(entry['batches'].values())} batch(es) of "
                  f"{len(entry['batches'])} site(s) to key {entry['to'][:8]}: point "
                  "LACRIMA_PSEUDONYM_KEY or LACRIMA_PSEUDONYM_KEY_FILE at the new key now",
                  markup=False)


@app.command()
def expectations(write: bool = typer.Option(False, help="regenerate expectations/ from the plan")):
    """Check (or regenerate) the Great Expectations suite against the study plan."""
    from lacrima.study import load_study
    from lacrima.validate import EXPECTATIONS_DIR, SUITE_NAME, suite_dict, write_suite

    study = load_study()
    if write:
        typer.echo(str(write_suite(study)))
        return
    path = EXPECTATIONS_DIR / f"{SUITE_NAME}.json"
    if not path.exists() or json.loads(path.read_text()) != suite_dict(study):
        _fail(f"{path} is out of date with {study.path}: run `make expectations`", 1)
    typer.echo(f"{path} matches the plan")


sites_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The plan and the site folders: check them, "
                        "draft a new site from its survey tool.")
app.add_typer(sites_app, name="sites")


@sites_app.command("check")
def sites_check(sites: Optional[Path] = typer.Option(None, "--sites",
                                                     help="sites folder (default: LACRIMA_SITES or ./sites)")):
    """Lint the plan and every site folder: one line per problem; exit 0 clean, 1 findings."""
    from lacrima.contract import check_sites
    from lacrima.study import sites_root
    root = sites or sites_root()
    problems = check_sites(root)
    for p in problems:
        typer.echo(str(p))
    if problems:
        console.print(f"{len(problems)} problem(s) in {root}", markup=False, highlight=False)
        raise typer.Exit(1)
    console.print(f"{root}: plan and site folders are consistent", markup=False, highlight=False)


@sites_app.command("new")
def sites_new(code: str = typer.Argument(..., help="code of the new site (its folder name), e.g. de"),
              from_redcap: Optional[Path] = typer.Option(None, "--from-redcap",
                                                         help="REDCap data dictionary (.csv)"),
              from_qualtrics: Optional[Path] = typer.Option(None, "--from-qualtrics",
                                                            help="Qualtrics survey file (.qsf)"),
              from_spss: Optional[Path] = typer.Option(None, "--from-spss", help="SPSS data file (.sav)"),
              sites: Optional[Path] = typer.Option(None, "--sites", help="sites folder"),
              role: str = typer.Option("replication", help="original or replication"),
              country: str = typer.Option("", help="country, e.g. Germany"),
              language: str = typer.Option("", help="language of labels: en, it, he or de"),
              published_n: Optional[int] = typer.Option(None, "--published-n", min=1,
                                                        help="published (or planned) sample size"),
              mapping_sheet: Optional[Path] = typer.Option(
                  None, "--mapping-sheet",
                  help="also write this sheet (.csv) to pair the fields in a spreadsheet")):
    """Draft sites/CODE/ (site.toml, codebook.toml) from the site's survey tool.

    Then `lacrima sites check` lists what is left to a person (the TODOs). With
    --mapping-sheet, fill in its study_variable column and run
    `lacrima sites apply-mapping FILE.csv`. Exit 0 written, 2 refused."""
    from lacrima.onboarding import OnboardingError, draft_site
    from lacrima.study import sites_root
    given = [(k, v) for k, v in (("redcap", from_redcap), ("qualtrics", from_qualtrics),
                                 ("spss", from_spss)) if v is not None]
    if len(given) != 1:
        _fail("give exactly one of --from-redcap, --from-qualtrics, --from-spss")
    tool, source = given[0]
    try:
        folder, todo = draft_site(code, tool, source, sites or sites_root(), role=role,
                                  country=country, language=language, published_n=published_n,
                                  mapping_sheet=mapping_sheet)
    except OnboardingError as err:
        _fail(str(err))
    typer.echo(str(folder))
    if mapping_sheet is not None:
        typer.echo(str(mapping_sheet))
        console.print("fill in column study_variable where a suggestion is wrong or missing,"
                      " then:", markup=False, highlight=False)
        typer.echo(f"  lacrima sites apply-mapping {mapping_sheet}", err=True)
        return
    console.print(f"draft written; {todo} TODO(s) left to a person: run `lacrima sites check`",
                  markup=False, highlight=False)


@sites_app.command("apply-mapping")
def sites_apply_mapping(sheet: Path = typer.Argument(..., help="the filled-in mapping sheet (.csv)"),
                        sites: Optional[Path] = typer.Option(None, "--sites", help="sites folder")):
    """Write sites/CODE/codebook.toml from a mapping sheet `lacrima sites new
    --mapping-sheet` wrote. One line per problem (file, row, column, value) and nothing
    written: exit 1; refused (no sheet, a hand-edited codebook): exit 2."""
    from lacrima.onboarding import MappingError, OnboardingError, apply_mapping
    from lacrima.study import sites_root
    try:
        book, todo = apply_mapping(sheet, sites or sites_root())
    except MappingError as err:
        for line in err.lines:
            typer.echo(line, err=True)
        _fail(f"{len(err.lines)} problem(s) in {sheet}; nothing written", 1)
    except OnboardingError as err:
        _fail(str(err))
    typer.echo(str(book))
    console.print(f"codebook written; {todo} TODO(s) left: run `lacrima sites check`",
                  markup=False, highlight=False)


@sites_app.command("iam-policy")
def sites_iam_policy(site: str = typer.Argument(..., help="site code, e.g. it"),
                     storage: Optional[str] = typer.Option(
                         None, help="the S3 store (default: LACRIMA_STORAGE), s3://bucket/prefix")):
    """Print the IAM policy (JSON) for SITE's data manager on the S3 store: write only
    landing/SITE/, read only SITE's quarantine reports. See README, "Site isolation on S3"."""
    from lacrima.iam import site_policy
    from lacrima.storage import parse_s3_url

    _site(site)
    location = storage or os.environ.get("LACRIMA_STORAGE") or ""
    if not location.startswith("s3://"):
        _fail(f"an IAM policy is for an S3 store (s3://bucket/prefix); the store is "
              f"{location or './data'!r}: give --storage s3://...")
    try:
        bucket, prefix = parse_s3_url(location)
    except ValueError as err:
        _fail(str(err))
    typer.echo(json.dumps(site_policy(bucket, prefix, site), indent=2))


from flows.portal.cli import app as portal_app  # noqa: E402

app.add_typer(portal_app, name="portal")


def main():
    _prefect_home()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    app()


if __name__ == "__main__":
    main()
