"""The ``lacrima`` command line: data managers (check, upload, status), operators (run, serve),
analysts and developers (synth, demo, expectations).

Exit codes: 0 success / valid, 1 invalid data, 2 usage error, unreadable input or a store
that cannot be reached, 3 another run holds the store (``lacrima.lease``).
Bad data never produces a Python traceback.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="lacrima: three-site replication data platform.")
console = Console(stderr=True)


def _fail(message: str, code: int = 2):
    from rich.markup import escape

    # Messages quote file names and column lists: '[...]' in them is text, not markup.
    console.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code)


def _storage():
    """The configured store, or a clean usage error (a bad LACRIMA_STORAGE value)."""
    from lacrima.storage import open_storage
    try:
        return open_storage()
    except ValueError as err:
        _fail(str(err))


def _reachable(storage):
    """``storage`` if it can work at all, else exit 2 with one line (no retries: see check)."""
    try:
        storage.check()
    except OSError as err:
        _fail(f"store unavailable: {err}")
    return storage


def _site(code: str):
    from lacrima.study import load_site
    try:
        return load_site(code)
    except KeyError as err:
        _fail(str(err.args[0]))


@app.command()
def synth(site: Optional[str] = typer.Option(None, help="site code, e.g. us (one drop)"),
          sites: Optional[int] = typer.Option(None, "--sites",
                                              help="K: a synthetic consortium of K sites instead"),
          n: Optional[int] = typer.Option(None, help="participants (default: the site's published N)"),
          seed: Optional[int] = typer.Option(None, help="random seed (default: the plan's seed)"),
          out: Path = typer.Option(..., help="output file or folder"),
          mess: bool = typer.Option(False, help="add realistic mess (blanks, bad codes, duplicates...)")):
    """Write a synthetic drop in the site's native format, or a whole consortium (--sites K).

    With --sites K, OUT/sites holds K site folders cloned from the real sites (point
    LACRIMA_SITES at it) and OUT/drops one drop per site.
    """
    from lacrima.study import load_study
    from lacrima.synth import write_drop
    if (site is None) == (sites is None):
        _fail("give either --site CODE (one drop) or --sites K (a consortium)")
    if sites is not None:
        from lacrima.consortium import make_consortium, write_consortium_drops
        if mess:
            _fail("--mess applies to one site's drop (--site), not to a consortium")
        try:
            made = make_consortium(out / "sites", sites, n)
        except (ValueError, FileExistsError) as err:
            _fail(str(err))
        write_consortium_drops(made.root, out / "drops", n, seed, workers=min(4, os.cpu_count() or 1))
        typer.echo(f"export LACRIMA_SITES={made.root}")
        return
    path = write_drop(_site(site), load_study(), out, n=n, seed=seed, mess=mess)
    typer.echo(str(path))


@app.command()
def check(file: Path = typer.Argument(..., help="the drop to validate"),
          site: str = typer.Option(..., help="site code"),
          report: Optional[Path] = typer.Option(None, help="write the report here (.html or .json)")):
    """Validate a drop locally without uploading it."""
    from lacrima.dropreport import render_html, rich_table
    from lacrima.intake import extension, read_and_validate, safe_name
    from lacrima.privacy import DEMO_KEY
    from lacrima.storage import sha256_bytes
    from lacrima.study import load_study

    s = _site(site)
    if not file.is_file():
        _fail(f"{file}: no such file")
    try:
        data = file.read_bytes()
    except OSError as err:
        _fail(f"{file}: cannot read ({err.strerror})")
    name = safe_name(file.name)
    with tempfile.TemporaryDirectory(prefix="lacrima-check-") as tmp:
        path = Path(tmp) / f"drop{extension(name)}"
        path.write_bytes(data)
        # Only the shape of IDs matters for a local check; the key never leaves this process.
        rep, frame = read_and_validate(path, s, load_study(), DEMO_KEY, name, sha256_bytes(data),
                                       size_mb=len(data) / 1e6)
    Console().print(rich_table(rep))
    if report:
        text = render_html(rep) if report.suffix.lower() in (".html", ".htm") else \
            json.dumps(rep.to_dict(), indent=2)
        try:
            report.write_text(text)
        except OSError as err:
            _fail(f"{report}: cannot write the report ({err.strerror})")
        console.print(f"report written to {report}", markup=False)
    if frame is None:
        # read_and_validate gives no frame exactly when the file could not be read at all
        # (wrong type, too large, damaged, binary, bad encoding...): exit 2, not 1.
        raise typer.Exit(2)
    raise typer.Exit(0 if rep.valid else 1)


@app.command()
def upload(file: Path = typer.Argument(..., help="the drop to upload"),
           site: str = typer.Option(..., help="site code"),
           replaces: str = typer.Option("", help="batch (SHA-256 prefix) this file corrects"),
           uploader: str = typer.Option("", help="who uploads (recorded as metadata)")):
    """Put a drop into the site's landing zone."""
    from lacrima import intake

    s = _site(site)
    if not file.is_file():
        _fail(f"{file}: no such file")
    storage = _storage()
    try:
        key = intake.upload(storage, s, file, uploader=uploader, replaces=replaces)
    except LookupError as err:
        _fail(str(err))
    except OSError as err:          # unreadable file, or the store failed after its retries
        _fail(f"upload to {storage.location} failed: {err}")
    typer.echo(key)


@app.command()
def status(site: Optional[str] = typer.Option(None, help="only this site"),
           as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Every batch with its state, rows, date and reason."""
    from rich.table import Table

    if site:
        _site(site)
    storage = _reachable(_storage())
    try:
        recs = _status_records(storage, site)
    except OSError as err:          # the store failed after its retries
        _fail(f"status of {storage.location} failed: {err}")
    if as_json:
        typer.echo(json.dumps(recs, indent=2))
        return
    table = Table(title=f"Batches in {storage.location}")
    for col in ("site", "batch", "state", "rows", "received", "file", "reason"):
        table.add_column(col, overflow="fold")
    for r in recs:
        table.add_row(r["site"], r["sha256"][:12], r["state"], str(r["rows"]), r["received_at"],
                      r["original_name"], r.get("reason") or
                      (f"superseded by {r['superseded_by'][:12]}" if r.get("superseded_by") else ""))
    Console().print(table)


def _status_records(storage, site: Optional[str]) -> list[dict]:
    """Ledger entries, then landing objects no run has processed yet (state ``landed``)."""
    from lacrima.intake import LANDED, batches, read_landing_index
    from lacrima.storage import sha256_bytes

    recs = [r.to_dict() for r in batches(storage, site)]
    known = {r["sha256"] for r in recs}
    indexes: dict[str, dict] = {}
    prefix = f"landing/{site}" if site else "landing"
    for obj in storage.list(prefix):
        code = obj.key.split("/")[1]
        if code not in indexes:
            indexes[code] = read_landing_index(storage, code)
        seen = indexes[code].get(obj.key)
        # Objects a run has already hashed are not downloaded again (S3: every byte costs).
        if seen and seen.get("etag") == obj.etag:
            sha = seen["sha256"]
        else:
            sha = sha256_bytes(storage.read_bytes(obj.key))
        if sha not in known:
            known.add(sha)
            recs.append({"site": code, "sha256": sha, "state": LANDED,
                         "original_name": obj.key.rsplit("/", 1)[-1], "rows": "",
                         "received_at": "", "reason": "waiting for the next run"})
    return recs


BUSY = 3       # exit code: another run holds the store's lease


def _run(storage: Optional[str], demo: bool, runner: str = "thread",
         dask_address: Optional[str] = None, wait: float = 0.0) -> dict:
    from flows.pipeline import run_pipeline
    from lacrima.lease import LeaseLost
    try:
        summary = run_pipeline(storage_location=storage, demo=demo, runner=runner,
                               dask_address=dask_address, wait=wait)
    except LeaseLost as err:
        _fail(str(err), BUSY)
    if summary.get("busy"):
        _fail(summary["busy"], BUSY)
    return summary


@app.command()
def run(as_json: bool = typer.Option(False, "--json", help="print a JSON summary as the last line"),
        storage: Optional[str] = typer.Option(None, help="storage root (default: LACRIMA_STORAGE or ./data)"),
        demo: bool = typer.Option(False, help="synthetic data: allow the public demo pseudonym key"),
        runner: str = typer.Option("thread", help="task runner: thread (default), process or dask"),
        dask_address: Optional[str] = typer.Option(None, help="address of an existing Dask scheduler"),
        wait: float = typer.Option(0.0, help="seconds to wait while another run holds the store "
                                             "(then exit 3)")):
    """Run the pipeline flow now (ephemeral Prefect API, or PREFECT_API_URL).

    One run at a time per store: while another run holds it, exit 3 naming that run.
    """
    from lacrima.privacy import MissingKeyError
    if runner not in ("thread", "process", "dask"):
        _fail(f"--runner {runner!r}: expected thread, process or dask")
    from lacrima.storage import open_storage
    try:
        _reachable(open_storage(storage))
    except ValueError as err:           # a malformed location
        _fail(str(err))
    try:
        summary = _run(storage, demo, runner, dask_address, wait)
    except MissingKeyError as err:
        _fail(str(err))
    _print_summary(summary, as_json)


def _print_summary(summary: dict, as_json: bool):
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        if summary.get("nothing_new"):
            console.print("nothing new since the latest report: no report written", markup=False)
        console.print(f"run {summary['run_id']}: {summary['accepted']} accepted, "
                      f"{summary['quarantined']} quarantined, "
                      f"{summary['skipped_duplicates']} already processed", markup=False)
        typer.echo(f"report: {summary['report']}" if summary["report"] else "no report written")


@app.command()
def serve(cron: str = typer.Option("0 2 * * *", help="nightly schedule (cron, server time zone)"),
          sweep_minutes: float = typer.Option(5.0, help="minutes between landing-zone sweeps"),
          storage: Optional[str] = typer.Option(None, help="storage root"),
          demo: bool = typer.Option(False, help="synthetic data: allow the public demo key")):
    """Register the nightly and sweep deployments on the Prefect server and serve them."""
    if not os.environ.get("PREFECT_API_URL"):
        _fail("schedules need a Prefect server: start one with `prefect server start` and set "
              "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    from flows.deployments import serve_forever
    serve_forever(cron=cron, sweep_minutes=sweep_minutes, storage_location=storage, demo=demo)


@app.command()
def demo(storage: Optional[str] = typer.Option(None, help="storage root (default ./data)"),
         as_json: bool = typer.Option(False, "--json")):
    """Synthetic drops for every site into the landing zone, then one pipeline run."""
    from lacrima import intake
    from lacrima.storage import open_storage
    from lacrima.study import load_sites, load_study
    from lacrima.synth import write_drop

    study, store = load_study(), open_storage(storage)
    with tempfile.TemporaryDirectory(prefix="lacrima-demo-") as tmp:
        for s in load_sites():
            path = write_drop(s, study, Path(tmp) / s.code)
            key = intake.upload(store, s, path, uploader="demo")
            console.print(f"synthetic drop for {s.code}: {key}", markup=False)
    _print_summary(_run(storage, True), as_json)


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


def main():
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    app()


if __name__ == "__main__":
    main()
