"""The command line's way of speaking: one console on stderr, one line and an exit code for a
problem. Shared by ``flows/cli.py`` and the portal's commands (``flows/portal/cli.py``)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def fail(message: str, code: int = 2):
    from rich.markup import escape

    # Messages quote file names and column lists: '[...]' in them is text, not markup.
    # soft_wrap: the terminal wraps the line, so a file path copied from it stays whole
    console.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False,
                  soft_wrap=True)
    raise typer.Exit(code)


def reachable(storage):
    """``storage`` if it can work at all, else exit 2 with one line (no retries: see check)."""
    try:
        storage.check()
    except OSError as err:
        fail(f"store unavailable: {err}")
    return storage


def site(code: str):
    from lacrima.study import load_site
    try:
        return load_site(code)
    except KeyError as err:
        fail(str(err.args[0]))
    except ValueError as err:       # a site.toml that breaks the contract (e.g. an unknown role)
        fail(str(err))


def open_store(location: Optional[str]):
    """The store at ``location`` (else LACRIMA_STORAGE, else ./data), or a clean usage error."""
    from lacrima.storage import open_storage
    try:
        return open_storage(location)
    except ValueError as err:
        fail(str(err))
