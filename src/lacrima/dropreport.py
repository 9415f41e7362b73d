"""A validation report a data manager can act on: self-contained HTML, JSON and the terminal.

The three carry the same content per finding: severity, check, the native column (the
study's name in brackets), the rows as the site's tool counts them, what was expected, what
was found (offending numbers and answer codes, never free text or IDs) and what to do.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from lacrima.findings import format_columns, format_rows, printable
from lacrima.i18n import N_, direction, language as _language, msg, translator
from lacrima.validate import ValidationReport

if TYPE_CHECKING:
    import jinja2

# Below this width the findings are listed one block each; at or above it, one table.
WIDE = 120
ROWS_NOTE = {
    ".csv": N_("rows as a spreadsheet shows the file: header rows count (the first answer of a "
               "Qualtrics export is row 4, of a one-header CSV row 2)"),
    ".xlsx": N_("rows as Excel or LibreOffice numbers them on the sheet (row 1 is the header)"),
    ".sav": N_("case numbers as SPSS shows them in Data View (the first case is 1)"),
}
# The labels of a finding's parts, in the order they are shown.
LABELS = (("column", N_("column")), ("rows", N_("rows")), ("problem", N_("problem")),
          ("expected", N_("expected")), ("found", N_("found")), ("what to do", N_("what to do")))
SEVERITY = {"error": N_("ERROR"), "warning": N_("WARNING"), "info": N_("NOTE")}


def rows_note(file_name: str, lang: str | None = None) -> str:
    """How the rows of a finding are counted, for this kind of file."""
    suffix = "." + file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    return translator(lang).gettext(ROWS_NOTE.get(suffix, N_("rows as the file's own tool "
                                                              "numbers them")))


def _parts(f, lang: str | None) -> dict:
    """A finding's shown parts in ``lang``: label -> text."""
    text = f.localized(lang)
    return {"column": format_columns(f.columns), "rows": format_rows(f.rows),
            "problem": text["message"], "expected": text["expected"], "found": text["found"],
            "what to do": text["fix"]}


@cache
def _env() -> jinja2.Environment:
    import jinja2   # only for an HTML report: `lacrima check` prints to the terminal

    env = jinja2.Environment(loader=jinja2.PackageLoader("lacrima", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals["rows"] = format_rows
    env.globals["columns"] = format_columns
    env.globals["rows_note"] = rows_note
    return env


def render_html(report: ValidationReport, lang: str | None = None) -> str:
    """One self-contained HTML page (inline CSS, autoescaped: cell text is never markup), in
    the site's language ``lang`` (English fallback; ``dir="rtl"`` for Hebrew)."""
    lang = _language(lang)
    return _env().get_template("validation.html.j2").render(
        r=report, lang=lang, dir=direction(lang), _=translator(lang).gettext,
        local=lambda f: f.localized(lang, isolate=True),
        severity=lambda s: translator(lang).gettext(SEVERITY.get(s, s)))


def problems(report: ValidationReport) -> list:
    """Findings to act on or look at: errors and warnings (not ``info``)."""
    return [f for f in report.findings if f.severity != "info"]


def headline(report: ValidationReport, lang: str | None = None) -> str:
    """One line: the file, its site, the verdict and the count of rows."""
    name = printable(report.file_name)
    tr = translator(lang)
    if report.valid and not problems(report):
        line = msg("{file} ({site}): valid: no problems found, {n} rows", file=name,
                   site=report.site, n=report.n_rows)
    elif report.valid:
        line = msg("{file} ({site}): valid, {n} rows, {warnings} warning(s)", file=name,
                   site=report.site, n=report.n_rows, warnings=len(problems(report)))
    else:
        line = msg("{file} ({site}): INVALID, {n} rows, {errors} error(s) to fix before it is "
                   "accepted", file=name, site=report.site, n=report.n_rows,
                   errors=len(report.errors))
    return line.render(tr)


def notes(report: ValidationReport, lang: str | None = None):
    """What intake did as designed (``info``: identifying columns removed), one Text each."""
    from rich.text import Text

    return [Text(f.localized(lang)["message"], style="dim") for f in report.findings
            if f.severity == "info"]


def rich_table(report: ValidationReport, lang: str | None = None):
    """The findings as one rich Table (wide terminals)."""
    from rich.table import Table
    from rich.text import Text

    tr = translator(lang)
    table = Table(title=headline(report, lang), show_lines=True, title_justify="left")
    for key, label in (("severity", N_("severity")), ("check", N_("check")), *LABELS):
        table.add_column(tr.gettext(label), overflow="fold", no_wrap=key in ("severity", "check"))
    for f in problems(report):
        # Text(), not str: cell text from a drop is never read as rich markup
        parts = _parts(f, lang)
        table.add_row(*(Text(v) for v in (tr.gettext(SEVERITY[f.severity]), f.check,
                                          *(parts[k] for k, _ in LABELS))))
    return table


def rich_list(report: ValidationReport, verbose: bool = False, lang: str | None = None):
    """The findings as one block each (narrow terminals): words wrap, never break.

    Errors come first; each block is a two-column grid, so a wrapped value stays indented
    under its own label. The ``info`` notes only when ``verbose``.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    tr = translator(lang)
    parts = [Text(headline(report, lang), style="bold")]
    parts += notes(report, lang) if verbose else []
    for f in sorted(problems(report), key=lambda f: f.severity != "error"):
        style = "red" if f.severity == "error" else "yellow"
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True, justify="right")
        grid.add_column(overflow="fold")
        grid.add_row(Text(tr.gettext(SEVERITY[f.severity]), style=f"bold {style}"),
                     Text(f.check, style="bold"))
        shown = _parts(f, lang)
        for key, label in LABELS:
            if shown[key]:
                grid.add_row(tr.gettext(label), Text(shown[key]))
        parts += [Text(""), grid]
    if any(f.rows for f in report.findings):
        parts += [Text(""), Text(msg("Rows: {note}.", note=rows_note(report.file_name, lang))
                                 .render(tr), style="dim")]
    return Group(*parts)


def print_report(report: ValidationReport, console, verbose: bool = False,
                 lang: str | None = None) -> None:
    """Print the report on ``console`` in ``lang``: a list when narrower than ``WIDE``, else
    a table.

    A clean file is one line. What intake did as designed (identifying columns the codebook
    lists, removed unread) is printed only when ``verbose``; the JSON always holds it.
    """
    from rich.text import Text

    if not problems(report):
        console.print(Text(headline(report, lang), style="green"))
        for note in notes(report, lang) if verbose else []:
            console.print(note)
    elif console.width < WIDE:
        console.print(rich_list(report, verbose, lang))
    else:
        console.print(rich_table(report, lang))
        for note in notes(report, lang) if verbose else []:
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


def quarantine_notice(drop: dict, lang: str | None = None) -> tuple[str, str]:
    """Subject and body of the message a site's contact gets about a quarantined drop, in the
    site's language ``lang`` (English fallback).

    ``drop`` is one entry of a run's ``drops`` (``steps.drop_outcomes``). The message names
    the file, its batch, the failed checks and counts, and the report's path (or the batch's
    page in the portal: then the last step is that page's, not a command); never a
    participant's value (the report itself says which rows and cells).
    """
    tr = translator(lang)
    name = printable(drop["file"])
    subject = msg("lacrima: {file} from site {site} was quarantined", file=name,
                  site=drop["site"]).render(tr)
    body = "\n".join(m.render(tr) for m in (
        msg("The file {file} (site {site}, batch {batch}, {rows} rows) was not accepted: "
            "{errors} check(s) failed ({checks}).", file=name, site=drop["site"],
            batch=drop["batch"][:12], rows=drop["rows"], errors=drop["errors"],
            checks=", ".join(drop["checks"])),
        msg("None of its records were used; the file is kept unchanged."),
        msg("Report (rows, columns and what to do): {report}", report=drop["report"]),
        # the last step fits where the report is read: the portal's page, or the command
        msg("Fix the file in your own tool, then check it and send it again on that page.")
        if str(drop["report"]).startswith(("https://", "http://")) else
        msg("Fix the file in your own tool, then upload it: lacrima upload FILE --site {site}",
            site=drop["site"]),
    ))
    return subject, body


def failure_notice(run: str, error: str, log: str = "") -> tuple[str, str]:
    """Subject and body of the message the operator gets when a run fails."""
    body = f"The lacrima run {run} failed: {printable(error)[:500]}"
    return f"lacrima: run {run} failed", body + (f"\nLog: {log}" if log else "")
