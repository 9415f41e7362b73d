"""Validation findings: what a data manager needs to fix a drop."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

FINDING_COLUMNS = ("check", "severity", "message", "columns", "rows", "expected", "found")


@dataclass(frozen=True)
class Finding:
    """One failed check on one drop.

    Parameters
    ----------
    check : str
        Machine name of the check (``missing_columns``, ``value_range`` ...).
    message : str
        One sentence a data manager can act on. Never contains a row's values.
    columns : tuple of str
        Column names as the data manager knows them (the native names of the drop).
    rows : tuple of int
        Row numbers as the data manager sees them: the spreadsheet row, header rows
        included (the first Qualtrics answer is row 4, a workbook or CSV starts at row 2),
        and the case number from 1 for SPSS files (see sites/README.md).
    expected, found : str
        What the check wanted and what it saw (a description, never identifying values).
    severity : {"error", "warning"}
        Errors quarantine the drop; warnings are reported and the drop is accepted.
    """

    check: str
    message: str
    columns: tuple[str, ...] = ()
    rows: tuple[int, ...] = ()
    expected: str = ""
    found: str = ""
    severity: str = "error"

    def to_dict(self) -> dict:
        return {
            "check": self.check, "severity": self.severity, "message": self.message,
            "columns": list(self.columns), "rows": list(self.rows),
            "expected": self.expected, "found": self.found,
        }


@dataclass(frozen=True)
class DropError(Exception):
    """A drop that cannot be read at all (empty, binary garbage, wrong encoding ...)."""

    check: str
    message: str
    findings: tuple[Finding, ...] = field(default=())

    def __str__(self) -> str:
        return self.message


def findings_frame(findings) -> pd.DataFrame:
    """Tidy table of findings, one row each (rows shortened for display)."""
    rows = []
    for f in findings:
        d = f.to_dict()
        d["columns"] = ", ".join(d["columns"])
        d["rows"] = format_rows(f.rows)
        rows.append(d)
    return pd.DataFrame(rows, columns=list(FINDING_COLUMNS))


def format_rows(rows, limit: int = 20) -> str:
    """'3, 7, 12 (+40 more)' for a long row list."""
    rows = list(rows)
    head = ", ".join(str(r) for r in rows[:limit])
    return head + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")
