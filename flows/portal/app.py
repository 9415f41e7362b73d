"""The portal application: who is asking, the one guard every route declares, CSRF, sessions,
sign-in limits and uploads streamed to a temporary file with the size limit enforced.

Every route but the few in :data:`PUBLIC` declares ``Depends(guard(ACTION))``, which asks
:func:`lacrima.people.allowed` (person, site of the path, action): 401 for nobody (a page
redirects to the sign-in), 403 for anyone else's site. ``tests/test_portal_api.py`` walks the
application's routes and tries each as nobody and as another site's person.
"""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer

from lacrima import i18n, people
from lacrima.i18n import N_, Msg, msg
from lacrima.people import Person

SESSION, CSRF = "lacrima_session", "lacrima_csrf"
SESSION_SECONDS = 8 * 3600
# Routes anyone may open: signing in, an invite link, the API's description.
PUBLIC = frozenset({"/signin", "/invite/{token}", "/docs", "/docs/oauth2-redirect", "/redoc",
                    "/openapi.json", "/healthz"})
# The portal's own templates, then the library's (the finding cards, _cards.html.j2, are the
# quarantine report's: one markup for both).
TEMPLATES = Jinja2Templates(env=jinja2.Environment(autoescape=True, loader=jinja2.ChoiceLoader([
    jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
    jinja2.PackageLoader("lacrima", "templates")])))
# A batch's state as a page says it (message ids: translated where shown).
STATES = {"accepted": N_("accepted"), "quarantined": N_("quarantined"),
          "superseded": N_("superseded"), "landed": N_("waiting for the next run")}


def _template_globals():
    from lacrima.dropreport import rows_note
    from lacrima.findings import format_columns, format_rows

    TEMPLATES.env.globals.update(rows_note=rows_note, rows=format_rows, columns=format_columns,
                                 states=STATES)


_template_globals()


class Refused(Exception):
    """A request the portal turns down: status and one sentence saying why and what to do."""

    def __init__(self, status: int, message: str | Msg):
        super().__init__(str(message))
        # The API answers in English (``str``); a page says it in its language.
        self.status, self.message = status, message


class Limiter:
    """Failed sign-ins per account and per address, in this process's memory only (never
    stored or logged): past ``per_account`` (or ``per_address``) failures within ``window``
    seconds, sign-in is refused (429) until the oldest failure leaves the window."""

    def __init__(self, per_account: int = 5, per_address: int = 20, window: float = 900.0):
        self.limits = {"account": per_account, "address": per_address}
        self.window = window
        self._failures: dict[tuple[str, str], deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key, now):
        q = self._failures[key]
        while q and q[0] < now - self.window:
            q.popleft()
        return q

    def wait(self, account: str, address: str) -> float:
        """Seconds until this account at this address may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            waits = [q[0] + self.window - now for kind, value in
                     (("account", account), ("address", address))
                     if len(q := self._recent((kind, value), now)) >= self.limits[kind]]
        return max(waits, default=0.0)

    def failed(self, account: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (("account", account), ("address", address)):
                self._recent(key, now).append(now)


@dataclass
class Portal:
    """What every request of one application shares."""

    storage: object
    study: object
    sites: dict
    public_url: str
    demo: bool
    signer: URLSafeTimedSerializer
    limiter: Limiter = field(default_factory=Limiter)
    max_bytes: int = 0          # the largest file taken (the plan's max_file_mb)
    key: bytes | None = None    # the pseudonym key for withdrawals (None: as a run finds it)

    @property
    def secure(self) -> bool:
        return self.public_url.startswith("https://")


def portal(request: Request) -> Portal:
    return request.app.state.portal


# --------------------------------------------------------------------------- identity


def identify(request: Request) -> Person | None:
    """Who is asking: a token (``Authorization: Bearer``) on the API, a session cookie on
    pages. The API never takes a cookie, so no page can be made to call it (CSRF)."""
    p = portal(request)
    if request.url.path.startswith("/api/"):
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return people.token_person(p.storage, token.strip()) if scheme.lower() == "bearer" else None
    raw = request.cookies.get(SESSION)
    if not raw:
        return None
    try:
        data = p.signer.loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:            # altered, or older than SESSION_SECONDS
        return None
    person = people.account(p.storage, str(data.get("a", "")))
    if person is None or not person.active or person.epoch != data.get("e"):
        return None                 # revoked, or the password was set again since
    return person


def guard(action: str):
    """The dependency every non-public route declares: the person, if ``allowed`` to do
    ``action`` on the path's ``{site}`` (else 401 / 403)."""
    def check(request: Request) -> Person:
        person = identify(request)
        site = request.path_params.get("site")
        if person is None:
            raise Refused(401, "sign in first" if not request.url.path.startswith("/api/")
                          else "a valid token is needed: Authorization: Bearer TOKEN")
        if not people.allowed(person, site, action):
            raise Refused(403, msg("this is not yours to open") if site is None
                          else msg("site {site} is not yours to open", site=site))
        if site is not None and site not in portal(request).sites:
            raise Refused(404, msg("no site {site}", site=repr(site)))
        return person
    check.lacrima_action = action
    return check


def csrf_token(request: Request) -> str:
    """The page's CSRF token: the value of the CSRF cookie (set by the middleware)."""
    return request.state.csrf


def require_csrf(request: Request, fields: dict) -> None:
    """A form posted without this browser's CSRF token is refused (403)."""
    sent = fields.get("csrf") or request.headers.get("x-csrf-token", "")
    if not sent or not secrets.compare_digest(str(sent), request.cookies.get(CSRF, "")):
        raise Refused(403, msg("this form has expired or did not come from the portal: "
                               "reload the page and send it again"))


def start_session(response, p: Portal, person: Person) -> None:
    value = p.signer.dumps({"a": people.session_id(person), "e": person.epoch})
    response.set_cookie(SESSION, value, max_age=SESSION_SECONDS, httponly=True,
                        samesite="lax", secure=p.secure, path="/")


# --------------------------------------------------------------------------- uploads


@dataclass
class Upload:
    """A streamed multipart form: its text fields and its one file (in a temp folder)."""

    fields: dict
    path: Path | None
    name: str
    size: int


async def read_upload(request: Request, limit: int, folder: Path) -> Upload:
    """Stream a ``multipart/form-data`` body: text fields into a dict, the part named
    ``file`` into ``folder/upload.part``, refusing (413) as soon as more than ``limit``
    bytes of it have arrived. The client's file name is only returned, never a path."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in opts:
        raise Refused(415, "send the file as multipart/form-data in the field 'file'")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + 65536:
        raise Refused(413, f"the file is larger than the {limit / 1e6:.0f} MB a drop may be")
    fields: dict = {}
    state = {"headers": {}, "field": b"", "value": b"", "name": None, "fh": None,
             "buf": bytearray(), "filename": "", "size": 0, "path": None}

    def on_part_begin():
        state.update(headers={}, name=None, fh=None, buf=bytearray())

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].lower()] = state["value"]
        state.update(field=b"", value=b"")

    def on_headers_finished():
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == "file" and b"filename" in disp and state["path"] is None:
            state["filename"] = disp[b"filename"].decode("utf-8", "replace")
            state["path"] = folder / "upload.part"
            state["fh"] = open(state["path"], "wb")

    def on_part_data(data, start, end):
        chunk = data[start:end]
        if state["fh"] is not None:
            state["size"] += len(chunk)
            if state["size"] > limit:
                raise Refused(413, f"the file is larger than the {limit / 1e6:.0f} MB a drop "
                              "may be")
            state["fh"].write(chunk)
        else:
            state["buf"] += chunk
            if len(state["buf"]) > 65536:
                raise Refused(413, f"form field {state['name'][:40]!r} is too long")

    def on_part_end():
        if state["fh"] is not None:
            state["fh"].close()
            state["fh"] = None
        elif state["name"] and state["name"] != "file":
            fields[state["name"]] = state["buf"].decode("utf-8", "replace")

    parser = MultipartParser(opts[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except Refused:
        raise
    except Exception as err:   # noqa: BLE001 - a malformed body is a bad request, not a crash
        raise Refused(400, f"the form could not be read ({type(err).__name__})") from None
    finally:
        if state["fh"] is not None:
            state["fh"].close()
    return Upload(fields, state["path"], state["filename"], state["size"])


def temp_folder():
    """A temporary folder for one upload, removed when the request ends."""
    return tempfile.TemporaryDirectory(prefix="lacrima-portal-")


# --------------------------------------------------------------------------- the application


def language_of(request: Request, person: Person | None, site: str = "") -> str:
    """The language a page is shown in (docs/portal.md, "Languages"): a site's person reads
    every page in the ``language`` of their site's site.toml; a coordinator reads English
    (the study's working language), on a site's pages too; before signing in, an invite link
    is in the invited site's language (``site``) and the sign-in page in the first language
    of the browser's Accept-Language that has a catalog. English is the fallback."""
    sites = portal(request).sites
    if person is not None:
        return i18n.language(sites[person.site].language
                             if person.role == "site" and person.site in sites else "en")
    if site in sites:
        return i18n.language(sites[site].language)
    for part in request.headers.get("accept-language", "").split(","):
        code = part.split(";")[0].strip()
        if code and (i18n.language(code) != "en" or code.lower().startswith("en")):
            return i18n.language(code)
    return "en"


def page(request: Request, template: str, person: Person | None, status: int = 200,
         lang: str = "", **context) -> HTMLResponse:
    """A page in its language (``language_of``; ``lang`` to say it), with the CSRF token.
    A context value that is a message (``Msg``: an error, a title) is rendered in it."""
    lang = lang or language_of(request, person, context.get("site", ""))
    tr = i18n.translator(lang)
    context = {k: v.render(tr) if isinstance(v, Msg) else v for k, v in context.items()}
    from lacrima.dropreport import SEVERITY
    return TEMPLATES.TemplateResponse(request, template, {
        "person": person, "csrf": csrf_token(request), "lang": lang,
        "dir": i18n.direction(lang), "_": tr.gettext, "iso": i18n.isolator(lang),
        "local": lambda f: f.localized(lang, isolate=True, channel="portal"),
        "severity": lambda s: tr.gettext(SEVERITY.get(s, s)), **context},
        status_code=status)
