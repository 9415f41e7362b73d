"""A validation report a data manager can act on: self-contained HTML, JSON and a terminal table."""

from __future__ import annotations

from functools import cache

import jinja2

from lacrima.findings import format_rows
from lacrima.validate import ValidationReport


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("lacrima", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals["rows"] = format_rows
    return env


def render_html(report: ValidationReport) -> str:
    """One self-contained HTML page (inline CSS, autoescaped: cell text is never markup)."""
    return _env().get_template("validation.html.j2").render(r=report)


def rich_table(report: ValidationReport):
    """The findings as a rich Table for the terminal."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{report.file_name} ({report.site}): "
                        f"{'valid' if report.valid else 'INVALID'}, {report.n_rows} rows",
                  show_lines=True)
    for col in ("severity", "check", "columns", "rows", "expected", "found", "message"):
        table.add_column(col, overflow="fold", no_wrap=col in ("severity", "check"))
    for f in report.findings:
        # Text(), not str: cell text from a drop is never read as rich markup
        table.add_row(*(Text(v) for v in (f.severity, f.check, ", ".join(f.columns),
                                          format_rows(f.rows), f.expected, f.found, f.message)))
    return table
