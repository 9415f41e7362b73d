"""The token API for sites that script their uploads (``Authorization: Bearer TOKEN``).

Each route calls what the command line calls: a check is ``lacrima check``'s
(:func:`lacrima.intake.check_file`, the JSON of ``--report r.json``), a drop is ``lacrima
upload``'s (:func:`lacrima.intake.upload`), a status is ``lacrima status --json``'s rows.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from flows.portal import app as core
from flows.portal.app import Refused, guard
from lacrima import intake, people
from lacrima.people import Person

router = APIRouter(prefix="/api/v1", tags=["token API"])


async def received(request: Request, site: str, folder: Path) -> core.Upload:
    """The request's file, streamed to ``folder`` under the size limit, of a type the site
    sends (else 413 / 415 / 400)."""
    p = core.portal(request)
    up = await core.read_upload(request, p.max_bytes, folder)
    if up.path is None:
        raise Refused(400, "no file: send it in the multipart field 'file'")
    refused = intake.upload_refusal(p.sites[site], p.study, up.name)
    if refused:
        raise Refused(415, refused.message)
    return up


def check_upload(p: core.Portal, site: str, up: core.Upload):
    """``lacrima check`` of an uploaded file: (report, readable)."""
    return intake.check_file(up.path, p.sites[site], p.study, up.name)


def send_upload(p: core.Portal, site: str, up: core.Upload, person: Person,
                replaces: str = "") -> tuple[dict, bool]:
    """``lacrima upload`` of an uploaded file (a correction with ``replaces``), audited.
    Returns ``{sha256, key, status}`` and whether it was new."""
    from lacrima.storage import sha256_bytes

    sha = sha256_bytes(up.path.read_bytes())
    held = "" if replaces else intake.already_sent(p.storage, site, sha)
    if held:
        return {"sha256": sha, "key": held, "status": "duplicate"}, False
    named = up.path.with_name(intake.local_name(up.name))
    up.path.rename(named)
    up.path = named
    try:
        key = intake.upload(p.storage, p.sites[site], named, uploader=person.id,
                            replaces=replaces, study=p.study)
    except intake.UploadRefused as err:      # the same check as `lacrima upload`: size, type
        raise Refused(413 if err.finding.check == "file_too_large" else 415,
                      err.finding.message) from None
    people.record(p.storage, person.id, "correct" if replaces else "send", site=site,
                  batch=sha, detail=f"replaces {replaces[:12]}" if replaces else "")
    return {"sha256": sha, "key": key, "status": "landed"}, True


@router.post("/sites/{site}/check", summary="Check a drop; nothing is stored")
async def api_check(request: Request, site: str, person: Person = Depends(guard("check"))):
    """200 and the JSON of `lacrima check --report r.json` (`valid`, `findings`, ...)."""
    p = core.portal(request)
    with core.temp_folder() as tmp:
        up = await received(request, site, Path(tmp))
        report, _ = await run_in_threadpool(check_upload, p, site, up)
    return report.to_dict()


@router.post("/sites/{site}/drops", status_code=201, summary="Send a drop to the landing zone")
async def api_drop(request: Request, site: str, person: Person = Depends(guard("send"))):
    """201 `{"sha256", "key", "status": "landed"}`; the same bytes again: 200, `"duplicate"`."""
    p = core.portal(request)
    with core.temp_folder() as tmp:
        up = await received(request, site, Path(tmp))
        try:
            out, new = await run_in_threadpool(send_upload, p, site, up, person)
        except OSError as err:
            raise Refused(503, f"the store could not take the file: {err}") from None
    return JSONResponse(out, status_code=201 if new else 200)


def status_rows(p: core.Portal, site: str) -> list[dict]:
    """That site's rows of ``lacrima status --json``."""
    from lacrima.status import status_records

    return status_records(p.storage, site, list(p.sites))


@router.get("/sites/{site}/status", summary="The site's part of `lacrima status --json`")
def api_status(request: Request, site: str, person: Person = Depends(guard("view"))):
    return status_rows(core.portal(request), site)


def latest_report(p: core.Portal, prefix: str) -> dict | None:
    """The latest report: run id, when published, links to its shareable files and zip."""
    import json

    from lacrima import catalog
    if not p.storage.exists(catalog.LATEST_POINTER):
        return None
    pointer = json.loads(p.storage.read_bytes(catalog.LATEST_POINTER))
    run = pointer["run_id"]
    return {"run_id": run, "published_at": pointer.get("published_at", ""),
            "files": {name: f"{prefix}/reports/{run}/files/{name}"
                      for name in shareable_files(p, run)},
            "zip": f"{prefix}/reports/{run}/shareable.zip"}


def shareable_files(p: core.Portal, run: str) -> list[str]:
    """The run's files that may leave the store: everything but ``restricted/``."""
    from lacrima import catalog
    if not run or "/" in run or run.startswith("."):
        raise Refused(404, f"no report {run!r}")
    prefix = catalog.report_prefix(run) + "/"
    names = [o.key[len(prefix):] for o in p.storage.list(catalog.report_prefix(run))]
    names = [n for n in names if n.split("/")[0] != "restricted"]
    if not names:
        raise Refused(404, f"no report {run!r}")
    return names


def report_file(p: core.Portal, run: str, name: str) -> Response:
    import mimetypes

    from lacrima import catalog
    if name not in shareable_files(p, run):
        raise Refused(404, f"no shareable file {name!r} in report {run}")
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(p.storage.read_bytes(f"{catalog.report_prefix(run)}/{name}"), media_type=kind)


def report_zip(p: core.Portal, run: str) -> Response:
    """The shareable folder as one zip (never ``restricted/``), built in a temporary file."""
    import zipfile

    from fastapi.responses import FileResponse
    from starlette.background import BackgroundTask

    from lacrima import catalog
    names = shareable_files(p, run)
    tmp = core.temp_folder()
    path = Path(tmp.name) / f"lacrima-report-{run}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            zf.writestr(f"{run}/{name}", p.storage.read_bytes(f"{catalog.report_prefix(run)}/{name}"))
    return FileResponse(path, media_type="application/zip", filename=path.name,
                        background=BackgroundTask(tmp.cleanup))


@router.get("/reports/latest", summary="The latest report (coordinators)")
def api_latest(request: Request, person: Person = Depends(guard("reports"))):
    out = latest_report(core.portal(request), "/api/v1")
    if out is None:
        raise Refused(404, "no report has been published yet")
    return out


@router.get("/reports/{run}/files/{name:path}", summary="One shareable file of a report")
def api_report_file(request: Request, run: str, name: str,
                    person: Person = Depends(guard("reports"))):
    return report_file(core.portal(request), run, name)


@router.get("/reports/{run}/shareable.zip", summary="A report's shareable folder as one zip")
def api_report_zip(request: Request, run: str, person: Person = Depends(guard("reports"))):
    return report_zip(core.portal(request), run)
