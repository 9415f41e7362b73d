"""``lacrima portal ...``: run the site portal and manage who may use it.

Exit codes: 0 done, 2 a usage error (unknown site or role, bad e-mail, unknown person).
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from flows.terminal import fail, open_store, site

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="The site portal: serve it, invite people, make site tokens.")

StorageOpt = Annotated[Optional[str], typer.Option(
    "--storage", help="storage root (default: LACRIMA_STORAGE or ./data)")]
PublicUrlOpt = Annotated[str, typer.Option(
    "--public-url", envvar="LACRIMA_PUBLIC_URL",
    help="the address people open the portal at (e.g. https://portal.example.org); links "
         "in invites and notifications use it")]


def _fail(message: str):
    fail(message)


def _store(location):
    return open_store(location)


def _site_code(code: str) -> str:
    return site(code).code


@app.command()
def serve(host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
          storage: StorageOpt = None, public_url: PublicUrlOpt = "",
          demo: Annotated[bool, typer.Option(help="a demo store: withdrawals use the public "
                                                   "demo key")] = False):
    """Run the portal (uvicorn). Behind a TLS proxy, give --public-url https://...; the
    proxy's X-Forwarded-* headers are trusted from FORWARDED_ALLOW_IPS (default 127.0.0.1)."""
    import uvicorn

    from flows.portal.server import create_app

    location = storage or os.environ.get("LACRIMA_STORAGE")
    try:
        application = create_app(location, public_url=public_url, demo=demo)
    except ValueError as err:
        _fail(str(err))
    typer.echo(f"portal for {application.state.portal.storage.location} at "
               f"{public_url or f'http://{host}:{port}'} (Ctrl-C stops it)", err=True)
    # No access log: it would hold addresses and invite links (the audit log says who did what).
    uvicorn.run(application, host=host, port=port, proxy_headers=True, log_level="warning",
                access_log=False)


def invite_link(public_url: str, token: str) -> str:
    return f"{(public_url or 'http://127.0.0.1:8000').rstrip('/')}/invite/{token}"


@app.command()
def invite(email: Annotated[str, typer.Argument(help="the person's e-mail address")],
           site: Annotated[str, typer.Option(help="their site (for a coordinator: any)")] = "",
           role: Annotated[str, typer.Option(help="site or coordinator")] = "site",
           storage: StorageOpt = None, public_url: PublicUrlOpt = ""):
    """Print a one-time link (valid 7 days) where the person sets a password."""
    from lacrima import people

    if role == "site" and not site:
        _fail("a site person needs --site CODE")
    code = _site_code(site) if site else ""
    try:
        _, token = people.invite(_store(storage), email, code, role=role)
    except people.PeopleError as err:
        _fail(str(err))
    typer.echo(invite_link(public_url, token))


@app.command()
def users(storage: StorageOpt = None):
    """List accounts and tokens: id, kind, role, site, state, e-mail or note."""
    from lacrima import people

    for p in people.users(_store(storage)):
        state = f"revoked {p.revoked_at[:10]}" if p.revoked_at else (
            "active" if p.kind == "token" or p.epoch else "invited")
        typer.echo(f"{p.id}  {p.kind:7}  {p.role:11}  {p.site or '-':4}  {state:18}  "
                   f"{p.email or p.note}")


@app.command()
def revoke(who: Annotated[str, typer.Argument(help="an e-mail address, or a token's id t-...")],
           storage: StorageOpt = None):
    """Revoke an account (its sessions and open invite links end) or a token."""
    from lacrima import people

    try:
        person = people.revoke(_store(storage), who)
    except people.PeopleError as err:
        _fail(str(err))
    typer.echo(f"revoked {person.id}")


@app.command()
def token(site: Annotated[str, typer.Argument(help="the site the token sends for")],
          note: Annotated[str, typer.Option(help="what it is for, e.g. nightly REDCap export")] = "",
          role: Annotated[str, typer.Option(help="site, or coordinator (may also read the "
                                                 "reports)")] = "site",
          storage: StorageOpt = None):
    """Print a new API token once (only its hash is kept): Authorization: Bearer TOKEN."""
    from lacrima import people

    try:
        person, secret = people.new_token(_store(storage), _site_code(site), role=role, note=note)
    except people.PeopleError as err:
        _fail(str(err))
    typer.echo(secret)
    typer.echo(f"token {person.id} for site {site}: shown once, keep it in the script's secrets",
               err=True)
