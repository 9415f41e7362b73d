"""The portal's pages: signing in, a site's home, check and send, a batch's report, a
correction, a withdrawal; for coordinators every site, the reports and the audit log.

Each route declares its guard (``Depends(guard(ACTION))``) or is in ``app.PUBLIC``; each
form carries the CSRF token; each change goes through the library function the command line
calls and is appended to the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from flows.portal import api
from flows.portal import app as core
from flows.portal.app import Refused, guard, page, require_csrf
from lacrima import catalog, intake, people
from lacrima.i18n import msg
from lacrima.people import Person

router = APIRouter(include_in_schema=False)

# What a page says after a redirect: a fixed message id (its text is in site.html.j2), never
# text from the request.
DONE = ("sent", "corrected", "duplicate", "withdrawn", "withdrawn_unheld")


async def form_fields(request: Request) -> dict:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def home_of(person: Person) -> str:
    return "/coordinator" if person.role == "coordinator" else f"/sites/{person.site}"


# --------------------------------------------------------------------------- signing in


@router.get("/")
def root(request: Request):
    person = core.identify(request)
    return redirect(home_of(person) if person else "/signin")


@router.get("/signin")
def signin_form(request: Request, next: str = ""):
    return page(request, "signin.html.j2", None, next=next)


@router.post("/signin")
async def signin(request: Request):
    p = core.portal(request)
    fields = await form_fields(request)
    require_csrf(request, fields)
    email, address = fields.get("email", "").strip().lower(), request.client.host if request.client else "?"
    wait = p.limiter.wait(email, address)
    if wait > 0:
        return page(request, "signin.html.j2", None, status=429, next=fields.get("next", ""),
                    error=msg("Too many attempts. Try again in {n} minute(s).",
                              n=max(1, round(wait / 60))))
    person = await run_in_threadpool(people.sign_in, p.storage, email, fields.get("password", ""))
    if person is None:
        p.limiter.failed(email, address)
        return page(request, "signin.html.j2", None, status=401, next=fields.get("next", ""),
                    error=msg("The e-mail address or the password is wrong."))
    target = fields.get("next", "")
    response = redirect(target if target.startswith("/") and not target.startswith("//")
                        else home_of(person))
    core.start_session(response, p, person)
    return response


@router.post("/signout")
async def signout(request: Request):
    require_csrf(request, await form_fields(request))
    response = redirect("/signin")
    response.delete_cookie(core.SESSION, path="/")
    return response


@router.get("/invite/{token}")
def invite_form(request: Request, token: str):
    p = core.portal(request)
    try:
        person = people.invite_account(p.storage, token)
    except people.PeopleError as err:
        return page(request, "message.html.j2", None, status=404, title=msg("Invite link"),
                    message=str(err))
    return page(request, "invite.html.j2", None, invited=person, token=token,
                minimum=people.MIN_PASSWORD, site=person.site)


@router.post("/invite/{token}")
async def invite_accept(request: Request, token: str):
    p = core.portal(request)
    fields = await form_fields(request)
    require_csrf(request, fields)
    error = ""
    if fields.get("password", "") != fields.get("password2", ""):
        error = msg("The two passwords differ.")
    else:
        try:
            person = await run_in_threadpool(people.accept_invite, p.storage, token,
                                             fields.get("password", ""))
        except people.PeopleError as err:
            error = str(err)
    if error:
        try:
            invited = people.invite_account(p.storage, token)
        except people.PeopleError as err:
            return page(request, "message.html.j2", None, status=400, title=msg("Invite link"),
                        message=str(err))
        return page(request, "invite.html.j2", None, status=400, invited=invited, token=token,
                    minimum=people.MIN_PASSWORD, error=error, site=invited.site)
    response = redirect(home_of(person))
    core.start_session(response, p, person)
    return response


# --------------------------------------------------------------------------- a site


def _rows(p: core.Portal, site: str) -> list[dict]:
    return [{**r, "short": r["sha256"][:12]} for r in api.status_rows(p, site)]


@router.get("/sites/{site}")
def site_home(request: Request, site: str, done: str = "",
              person: Person = Depends(guard("view"))):
    from lacrima.status import site_status
    p = core.portal(request)
    rows = _rows(p, site)
    summary = site_status(site, rows, catalog.participants_held(p.storage, site))
    return page(request, "site.html.j2", person, site=site, rows=list(reversed(rows)),
                summary=summary, done=done if done in DONE else "")


@router.get("/sites/{site}/upload")
def upload_form(request: Request, site: str, replaces: str = "",
                person: Person = Depends(guard("send"))):
    p = core.portal(request)
    current = [r for r in _rows(p, site) if r["state"] == catalog.ACCEPTED]
    return page(request, "upload.html.j2", person, site=site, current=current,
                replaces=replaces, formats=_formats(p, site))


def _formats(p: core.Portal, site: str) -> str:
    from lacrima.codebook import load_codebook
    return ", ".join(e for f in load_codebook(p.sites[site]).formats for e in f.extensions)


@router.post("/sites/{site}/check")
async def check(request: Request, site: str, person: Person = Depends(guard("check"))):
    p = core.portal(request)
    fragment = request.headers.get("x-fragment") == "1"
    with core.temp_folder() as tmp:
        up = await core.read_upload(request, p.max_bytes, Path(tmp))
        require_csrf(request, up.fields)
        if up.path is None:
            raise Refused(400, msg("choose a file first"))
        refused = intake.upload_refusal(p.sites[site], p.study, up.name)
        if refused:
            report, message = None, dict(refused.texts)["message"]     # in the page's language
        else:
            report, _ = await run_in_threadpool(api.check_upload, p, site, up)
            message = ""
    context = dict(site=site, report=report, message=message)
    if fragment:
        return page(request, "_check.html.j2", person, **context)
    current = [r for r in _rows(p, site) if r["state"] == catalog.ACCEPTED]
    return page(request, "upload.html.j2", person, current=current, replaces="",
                formats=_formats(p, site), **context)


@router.post("/sites/{site}/drops")
async def send(request: Request, site: str, person: Person = Depends(guard("send"))):
    p = core.portal(request)
    with core.temp_folder() as tmp:
        up = await core.read_upload(request, p.max_bytes, Path(tmp))
        require_csrf(request, up.fields)
        replaces = up.fields.get("replaces", "").strip()
        if replaces and not people.allowed(person, site, "correct"):
            raise Refused(403, msg("corrections of site {site} are not yours to send", site=site))
        if up.path is None:
            raise Refused(400, msg("choose a file first"))
        refused = intake.upload_refusal(p.sites[site], p.study, up.name)
        if refused:
            raise Refused(415, dict(refused.texts)["message"])
        try:
            out, new = await run_in_threadpool(api.send_upload, p, site, up, person, replaces)
        except LookupError as err:
            raise Refused(409, str(err)) from None
    done = "duplicate" if not new else "corrected" if replaces else "sent"
    return redirect(f"/sites/{site}?done={done}#b-{out['sha256'][:12]}")


@router.get("/sites/{site}/batches/{batch}")
def batch_page(request: Request, site: str, batch: str,
               person: Person = Depends(guard("view"))):
    p = core.portal(request)
    hits = [r for r in _rows(p, site) if len(batch) >= 8 and r["sha256"].startswith(batch)]
    if len(hits) != 1:
        raise Refused(404, msg("no batch {batch} of site {site}", batch=repr(batch[:64]),
                               site=site))
    rec = hits[0]
    report = None
    key = f"{catalog.quarantine_prefix(site, rec['sha256'])}/report.json"
    if rec["state"] == catalog.QUARANTINED and p.storage.exists(key):
        report = _stored_report(json.loads(p.storage.read_bytes(key)))
    return page(request, "batch.html.j2", person, site=site, rec=rec, report=report)


@router.get("/sites/{site}/withdraw")
def withdraw_form(request: Request, site: str, person: Person = Depends(guard("withdraw"))):
    return page(request, "withdraw.html.j2", person, site=site, step=1)


@router.post("/sites/{site}/withdraw")
async def withdraw(request: Request, site: str, person: Person = Depends(guard("withdraw"))):
    p = core.portal(request)
    fields = await form_fields(request)
    require_csrf(request, fields)
    reason = fields.get("reason", "")[:500]
    if fields.get("step") != "2":
        pid = fields.get("participant_id", "").strip()
        if not pid:
            return page(request, "withdraw.html.j2", person, status=400, site=site, step=1,
                        error=msg("Give the participant's ID as your site knows it."))
        try:
            intake.participant_ids(p.sites[site], pid)       # its shape, before confirming
        except ValueError as err:
            return page(request, "withdraw.html.j2", person, status=400, site=site, step=1,
                        error=f"{str(err)[0].upper()}{str(err)[1:]}: nothing was recorded.")
        # The confirmation asks for the ID again and carries only a keyed hash of the first
        # one: a participant's ID is never written back into a page.
        return page(request, "withdraw.html.j2", person, site=site, step=2, reason=reason,
                    check=_id_check(p, site, pid))
    pid = fields.get("participant_id_again", "").strip()
    if (not pid or not hmac.compare_digest(_id_check(p, site, pid), fields.get("check", ""))
            or fields.get("confirm") != "yes"):
        return page(request, "withdraw.html.j2", person, status=400, site=site, step=2,
                    reason=reason, check=fields.get("check", ""),
                    error=msg("The ID differs from the one given first, or the box is not "
                              "ticked: nothing was recorded."))
    entry = await run_in_threadpool(_withdraw, p, site, pid, reason)
    people.record(p.storage, person.id, "withdraw", site=site)
    return redirect(f"/sites/{site}?done={'withdrawn' if entry['held'] else 'withdrawn_unheld'}")


def _stored_report(data: dict):
    """A quarantine folder's ``report.json`` as the report it was, its findings with their
    message ids, so the page shows them in its language as a fresh check does."""
    from dataclasses import replace

    from lacrima.findings import Finding
    from lacrima.validate import ValidationReport

    report = ValidationReport.from_dict(data)
    return replace(report, findings=tuple(Finding.from_dict(f) for f in data["findings"]))


def _id_check(p: core.Portal, site: str, pid: str) -> str:
    key = p.signer.secret_keys[-1]
    return hmac.new(key, f"withdraw\0{site}\0{pid}".encode(), hashlib.sha256).hexdigest()


def _withdraw(p: core.Portal, site: str, pid: str, reason: str) -> dict:
    """``lacrima withdraw``: under the store's lease, with the store's key."""
    from lacrima import lease
    from lacrima.catalog import KeyCustodyError
    from lacrima.privacy import MissingKeyError, pseudonym_key

    try:
        with lease.hold(p.storage, f"{lease.default_owner()} portal withdraw"):
            return intake.withdraw(p.storage, p.sites[site], p.study,
                                   p.key or pseudonym_key(demo=p.demo), pid,
                                   reason=reason)
    except lease.LeaseHeld:
        raise Refused(409, msg("a run is working on the store: nothing was recorded; try "
                               "again in a few minutes")) from None
    except ValueError as err:           # a blank ID, or one of another shape
        raise Refused(400, str(err)) from None
    except (MissingKeyError, KeyCustodyError):
        raise Refused(503, msg("the portal cannot record withdrawals now (its pseudonym key is "
                               "not set up): tell the coordinator")) from None


# --------------------------------------------------------------------------- coordinators


def _runs(p: core.Portal) -> list[str]:
    """Runs with a complete report folder (their manifest written), newest first."""
    runs = [o.key.split("/")[1] for o in p.storage.list("reports")
            if o.key.count("/") == 2 and o.key.endswith(f"/{catalog.MANIFEST}")]
    return sorted(runs, reverse=True)


@router.get("/coordinator")
def coordinator(request: Request, person: Person = Depends(guard("reports"))):
    from lacrima.status import site_status
    p = core.portal(request)
    statuses = [site_status(c, api.status_rows(p, c), catalog.participants_held(p.storage, c))
                for c in p.sites]
    return page(request, "coordinator.html.j2", person, statuses=statuses,
                latest=api.latest_report(p, ""), runs=_runs(p))


@router.get("/reports/{run}")
def report_page(request: Request, run: str, person: Person = Depends(guard("reports"))):
    p = core.portal(request)
    return page(request, "run.html.j2", person, run=run, files=api.shareable_files(p, run),
                latest=catalog.latest_run(p.storage) == run)


@router.get("/reports/{run}/files/{name:path}")
def report_file(request: Request, run: str, name: str,
                person: Person = Depends(guard("reports"))):
    return api.report_file(core.portal(request), run, name)


@router.get("/reports/{run}/shareable.zip")
def report_zip(request: Request, run: str, person: Person = Depends(guard("reports"))):
    return api.report_zip(core.portal(request), run)


@router.get("/audit")
def audit(request: Request, person: Person = Depends(guard("audit"))):
    p = core.portal(request)
    return page(request, "audit.html.j2", person, entries=people.audit_log(p.storage, limit=500))

