"""A validation report a data manager can act on: self-contained HTML, JSON and the terminal.

The three carry the same content per finding: severity, check, the native column (the
study's name in brackets), the rows as the site's tool counts them, what was expected, what
was found (offending numbers and answer codes, never free text or IDs) and what to do.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from lacrima.findings import format_columns, format_rows, printable
from lacrima.validate import ValidationReport

if TYPE_CHECKING:
    import jinja2

# Below this width the findings are listed one block each; at or above it, one table.
WIDE = 120
ROWS_NOTE = {
    ".csv": "rows as a spreadsheet shows the file: header rows count (the first answer of a "
            "Qualtrics export is row 4, of a one-header CSV row 2)",
    ".xlsx": "rows as Excel or LibreOffice numbers them on the sheet (row 1 is the header)",
    ".sav": "case numbers as SPSS shows them in Data View (the first case is 1)",
}


def rows_note(file_name: str) -> str:
    """How the rows of a finding are counted, for this kind of file."""
    suffix = "." + file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    return ROWS_NOTE.get(suffix, "rows as the file's own tool numbers them")


@cache
def _env() -> jinja2.Environment:
    import jinja2   # only for an HTML report: `lacrima check` prints to the terminal

    env = jinja2.Environment(loader=jinja2.PackageLoader("lacrima", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals["rows"] = format_rows
    env.globals["columns"] = format_columns
    env.globals["rows_note"] = rows_note
    return env


def render_html(report: ValidationReport) -> str:
    """One self-contained HTML page (inline CSS, autoescaped: cell text is never markup)."""
    return _env().get_template("validation.html.j2").render(r=report)


def problems(report: ValidationReport) -> list:
    """Findings to act on or look at: errors and warnings (not ``info``)."""
    return [f for f in report.findings if f.severity != "info"]


def headline(report: ValidationReport) -> str:
    """One line: the file, its site, the verdict and the count of rows."""
    name = printable(report.file_name)
    if report.valid and not problems(report):
        return f"{name} ({report.site}): valid: no problems found, {report.n_rows} rows"
    if report.valid:
        return (f"{name} ({report.site}): valid, {report.n_rows} rows, "
                f"{len(problems(report))} warning(s)")
    return (f"{name} ({report.site}): INVALID, {report.n_rows} rows, "
            f"{len(report.errors)} error(s) to fix before it is accepted")


def rich_table(report: ValidationReport):
    """The findings as one rich Table (wide terminals)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=headline(report), show_lines=True, title_justify="left")
    for col in ("severity", "check", "column", "rows", "problem", "expected", "found",
                "what to do"):
        table.add_column(col, overflow="fold", no_wrap=col in ("severity", "check"))
    for f in problems(report):
        # Text(), not str: cell text from a drop is never read as rich markup
        table.add_row(*(Text(v) for v in (f.severity, f.check, format_columns(f.columns),
                                          format_rows(f.rows), f.message, f.expected, f.found,
                                          f.fix)))
    return table


def notes(report: ValidationReport):
    """What intake did as designed (``info``: identifying columns removed), one Text each."""
    from rich.text import Text

    return [Text(f.message, style="dim") for f in report.findings if f.severity == "info"]


def rich_list(report: ValidationReport, verbose: bool = False):
    """The findings as one block each (narrow terminals): words wrap, never break.

    Errors come first; each block is a two-column grid, so a wrapped value stays indented
    under its own label. The ``info`` notes only when ``verbose``.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts = [Text(headline(report), style="bold")]
    parts += notes(report) if verbose else []
    for f in sorted(problems(report), key=lambda f: f.severity != "error"):
        style = "red" if f.severity == "error" else "yellow"
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True, justify="right")
        grid.add_column(overflow="fold")
        grid.add_row(Text(f.severity.upper(), style=f"bold {style}"), Text(f.check, style="bold"))
        for label, value in (("column", format_columns(f.columns)), ("rows", format_rows(f.rows)),
                             ("problem", f.message), ("expected", f.expected),
                             ("found", f.found), ("what to do", f.fix)):
            if value:
                grid.add_row(label, Text(value))
        parts += [Text(""), grid]
    if any(f.rows for f in report.findings):
        parts += [Text(""), Text(f"Rows: {rows_note(report.file_name)}.", style="dim")]
    return Group(*parts)


def print_report(report: ValidationReport, console, verbose: bool = False) -> None:
    """Print the report on ``console``: a list when narrower than ``WIDE``, else a table.

    A clean file is one line. What intake did as designed (identifying columns the codebook
    lists, removed unread) is printed only when ``verbose``; the JSON always holds it.
    """
    from rich.text import Text

    if not problems(report):
        console.print(Text(headline(report), style="green"))
        for note in notes(report) if verbose else []:
            console.print(note)
    elif console.width < WIDE:
        console.print(rich_list(report, verbose))
    else:
        console.print(rich_table(report))
        for note in notes(report) if verbose else []:
            console.print(note)


def site_contact(site) -> dict:
    """Who is told about a site's quarantined drops: ``[site.contact]`` of its site.toml.

    Parameters
    ----------
    site : lacrima.study.Site

    Returns
    -------
    dict
        ``webhook`` (an https URL that receives a JSON POST) and/or ``email`` (one address or
        a list); empty when the site names no contact.

    Raises
    ------
    ValueError
        When the contact is not a table of those keys (a configuration error).
    """
    contact = dict(site.raw.get("site", {}).get("contact", {}))
    unknown = set(contact) - {"webhook", "email"}
    if unknown:
        raise ValueError(f"{site.folder / 'site.toml'}: [site.contact] takes webhook and email, "
                         f"not {', '.join(sorted(unknown))}")
    if isinstance(contact.get("email"), str):
        contact["email"] = [contact["email"]]
    return {k: v for k, v in contact.items() if v}


def quarantine_notice(drop: dict) -> tuple[str, str]:
    """Subject and body of the message a site's contact gets about a quarantined drop.

    ``drop`` is one entry of a run's ``drops`` (``steps.drop_outcomes``). The message names
    the file, its batch, the failed checks and counts, and the report's path; never a
    participant's value (the report itself says which rows and cells).
    """
    subject = f"lacrima: {printable(drop['file'])} from site {drop['site']} was quarantined"
    body = "\n".join([
        f"The file {printable(drop['file'])} (site {drop['site']}, batch {drop['batch'][:12]}, "
        f"{drop['rows']} rows) was not accepted: {drop['errors']} check(s) failed "
        f"({', '.join(drop['checks'])}).",
        "None of its records were used; the file is kept unchanged.",
        f"Report (rows, columns and what to do): {drop['report']}",
        f"Fix the file in your own tool, then upload it: "
        f"lacrima upload FILE --site {drop['site']}",
    ])
    return subject, body


def failure_notice(run: str, error: str, log: str = "") -> tuple[str, str]:
    """Subject and body of the message the operator gets when a run fails."""
    body = f"The lacrima run {run} failed: {printable(error)[:500]}"
    return f"lacrima: run {run} failed", body + (f"\nLog: {log}" if log else "")
