"""The portal as one application: ``create_app`` puts the store, the plan and the sites behind
the token API (``api``) and the pages (``pages``), both built on ``app``'s guard, sessions and
rendering; ``serving`` runs it with uvicorn in a thread (tests, the bench, screenshots)."""

from __future__ import annotations

import os
import secrets
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from itsdangerous import URLSafeTimedSerializer

from flows.portal import api, pages
from flows.portal.app import (CSRF, Limiter, Portal, Refused, identify, language_of, page,
                              temp_folder)
from lacrima import people
from lacrima.i18n import msg


def warm_up(p: Portal) -> float:
    """Check one small synthetic drop so Great Expectations, pandas and the readers are
    imported and the GX context and suite are built before the first person checks a file.
    Returns the seconds it took."""
    from lacrima.intake import check_file
    from lacrima.synth import write_drop

    start = time.perf_counter()
    site = next(iter(p.sites.values()))
    with temp_folder() as tmp:
        check_file(write_drop(site, p.study, Path(tmp) / "warm", n=20, seed=1), site, p.study)
    return time.perf_counter() - start


def create_app(storage_location: str | None = None, public_url: str = "", demo: bool = False,
               warm: bool = True, limiter: Limiter | None = None,
               max_bytes: int | None = None, key: bytes | None = None) -> FastAPI:
    """The portal over the store at ``storage_location`` (else LACRIMA_STORAGE, else ./data).

    ``warm``: check a synthetic drop at start-up (Great Expectations imported once per
    process). ``demo``: withdrawals use the public demo key (a demo store); ``key``: the
    pseudonym key they use (default: ``LACRIMA_PSEUDONYM_KEY`` or ``_FILE``, read when used).
    """
    from lacrima.storage import open_storage
    from lacrima.study import load_sites, load_study

    from lacrima.intake import max_upload_bytes as plan_max_bytes

    storage = open_storage(storage_location)
    study = load_study()
    secret = os.environ.get("LACRIMA_PORTAL_SECRET") or people.session_secret(storage)
    p = Portal(storage, study, {s.code: s for s in load_sites()},
               public_url.rstrip("/"), demo, URLSafeTimedSerializer(secret, salt="session"),
               limiter or Limiter(), max_bytes or plan_max_bytes(study), key)

    @asynccontextmanager
    async def lifespan(app):
        if warm:
            from starlette.concurrency import run_in_threadpool
            await run_in_threadpool(warm_up, p)
        yield

    app = FastAPI(title="lacrima portal", lifespan=lifespan,
                  description="Check, send and follow a site's drops; read the study's reports. "
                              "API calls take `Authorization: Bearer TOKEN` "
                              "(`lacrima portal token SITE`).")
    app.state.portal = p

    @app.middleware("http")
    async def csrf_cookie(request: Request, call_next):
        token = request.cookies.get(CSRF) or secrets.token_urlsafe(24)
        request.state.csrf = token
        response = await call_next(request)
        if CSRF not in request.cookies:
            response.set_cookie(CSRF, token, httponly=True, samesite="lax", secure=p.secure,
                                path="/")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc.message)}, status_code=exc.status)
        if exc.status == 401:
            return RedirectResponse(f"/signin?next={request.url.path}", status_code=303)
        return page(request, "message.html.j2", None, status=exc.status,
                    lang=language_of(request, identify(request)), title=msg("Not possible"),
                    message=exc.message)

    @app.exception_handler(OSError)
    async def store_failed(request: Request, exc: OSError):
        # The store failed after its retries (S3 down, a full disk): one sentence, no traceback.
        return await refused(request, Refused(503, msg("the study's store cannot be reached "
                                                  "just now: nothing was changed; try again "
                                                  "later")))

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True}

    app.include_router(api.router)
    app.include_router(pages.router)
    return app




@contextmanager
def serving(application: FastAPI, host: str = "127.0.0.1"):
    """Run ``application`` with uvicorn in a thread on a free port; yields its base URL.
    For tests, the benchmark and screenshots: the real server, not a test transport."""
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(application, host=host, port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120       # a warm start checks a drop first
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the portal did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
