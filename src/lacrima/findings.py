"""Validation findings: what a data manager needs to fix a drop."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from lacrima.i18n import N_, Msg

FINDING_COLUMNS = ("check", "severity", "message", "columns", "rows", "expected", "found", "fix")

# ANSI escape sequences (CSI ... final byte, OSC ... BEL/ST) and any other control character.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")

# What a data manager does about each kind of finding when the check gives no more precise
# advice. Every fix ends in the same step: upload the corrected file (a new batch).
FIXES = {
    "missing_columns": N_("re-export the file with every column of the codebook, named as the "
                          "codebook names them, and upload it"),
    "duplicate_columns": N_("remove or rename the repeated column in the export, and upload it"),
    "unknown_labels": N_("correct these cells to one of the allowed answers (or re-export with "
                         "choice text, not numeric codes), and upload the corrected file"),
    "non_numeric": N_("correct these cells to whole numbers, or leave them blank, and upload the "
                      "corrected file"),
    "bad_dates": N_("correct these dates to the expected format, and upload the corrected file"),
    "future_dates": N_("correct these dates (a typo in the year?), and upload the corrected file"),
    "formula_cells": N_("replace the formulas with their values (copy, paste as values), and upload "
                        "the corrected file"),
    "value_range": N_("correct the values in these rows, or blank them if unknown, and upload the "
                      "corrected file"),
    "allowed_codes": N_("correct these cells to one of the allowed values, and upload the "
                        "corrected file"),
    "episode_blank_for_non_criers": N_("these participants did not cry in therapy: blank their "
                                       "episode answers (or correct the crying answer), and upload "
                                       "the corrected file"),
    "non_participant_rows": N_("delete these rows in your own tool (totals, notes, repeated "
                               "headers, anything below the data), so the sheet holds one header "
                               "row and one row per participant, and upload the corrected file"),
    "ids_present": N_("fill in the missing participant IDs, and upload the corrected file"),
    "unique_ids": N_("give each participant one row (remove repeated rows or fix mistyped IDs), and "
                     "upload the corrected file"),
    "completion": N_("check that the items of every completion score were exported, and upload "
                     "a complete file"),
    "id_clash": N_("if these records were corrected on purpose, upload the file as a correction of "
                   "the batch that holds them (`lacrima upload FILE --site SITE --replaces BATCH`; "
                   "`lacrima status` lists batches); else fix the IDs"),
    "identifying_columns": N_("nothing to do for this drop; leave identifying columns out of future "
                              "exports"),
    "unexpected_columns": N_("nothing to do if the columns are meant to be there; tell the "
                             "coordinator if one of them should be read"),
}

# Where a fix is read decides its last step. A finding's ``fix`` (its JSON, the terminal, the
# quarantine report file) names the command (`lacrima upload FILE --site SITE`); in the portal
# the same fix ends in the page's own action. A fix made from a message id with an ``upload``
# parameter gets PORTAL_UPLOAD as that parameter; a fix id in PORTAL_FIXES is swapped for its
# portal id (the same parameters); a fix of plain text that names a command is replaced by its
# check's PORTAL_FIXES entry.
CHANNELS = ("terminal", "portal")
PORTAL_UPLOAD = N_("on this page: Check, then Send")
PORTAL_FIXES = {
    FIXES["id_clash"]: N_("if these records were corrected on purpose, send the file on this page "
                          "as a correction of the batch that holds them (choose that batch under "
                          "'This file corrects'); else fix the IDs"),
    "id_clash": N_("if the new answers are right, send this file on this page as a correction "
                   "(choose the batch it corrects under 'This file corrects'); else correct the "
                   "answers in your own tool and check the file again"),
    "if the file is from site {other}, check and upload it with --site {other}; else send the "
    "export of site {site}": N_("if the file is from site {other}, the data manager of site "
                                "{other} sends it; else send the export of site {site} here"),
}


def printable(text) -> str:
    """Text safe to print: ANSI escape sequences and control characters from a file removed.

    Parameters
    ----------
    text : object
        Anything that ends up on a terminal, in a report or a log (column names from a
        file's header, file names, messages quoting them).

    Returns
    -------
    str
        ``str(text)`` without escape sequences, C0/C1 control characters or bidirectional
        overrides; newlines and tabs become spaces.

    Examples
    --------
    >>> printable("Q7" + chr(27) + "[31m" + chr(9) + "red")
    'Q7 red'
    """
    text = _ANSI.sub("", str(text)).replace("\t", " ").replace("\n", " ").replace("\r", " ")
    return _CONTROL.sub("", text)


def column_label(native: str, canonical: str = "") -> str:
    """A column as the data manager knows it, with the study's name in brackets when it differs.

    >>> column_label("Q7", "cried_in_therapy")
    'Q7 [cried_in_therapy]'
    >>> column_label("age", "age")
    'age'
    """
    return f"{native} [{canonical}]" if canonical and canonical != native else str(native)


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
    severity : {"error", "warning", "info"}
        Errors quarantine the drop; warnings are reported and the drop is accepted; info
        says what intake did as designed (identifying columns the codebook lists, removed).
    fix : str
        What to do about it, concretely; when empty, the check's general advice
        (``FIXES``) is given.

    Notes
    -----
    Every text field is passed through ``printable`` when the finding is made: column
    names and file names come from the file and may carry escape sequences.
    """

    check: str
    message: str
    columns: tuple[str, ...] = ()
    rows: tuple[int, ...] = ()
    expected: str = ""
    found: str = ""
    severity: str = "error"
    fix: str = ""
    texts: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        texts = dict(self.texts)
        for name in ("message", "expected", "found", "fix"):
            value = getattr(self, name)
            if isinstance(value, Msg):           # a message id: kept to render it translated
                texts[name] = value
            object.__setattr__(self, name, printable(value))
        object.__setattr__(self, "texts", tuple(sorted(texts.items())))
        object.__setattr__(self, "columns", tuple(printable(c) for c in self.columns))
        if not self.fix:
            object.__setattr__(self, "fix", FIXES.get(self.check, ""))

    def localized(self, language: str | None = None, isolate: bool = False,
                  channel: str = "terminal") -> dict[str, str]:
        """``message``, ``expected``, ``found`` and ``fix`` in ``language`` (English fallback).

        Texts made from a message id are rendered from it; a constant text (a check's
        general advice) is looked up as it is; anything else stays as written. ``isolate``
        (HTML): in a right-to-left language each value is a Unicode bidi isolate.
        ``channel``: where the fix is read (``CHANNELS``): ``portal`` ends it in the page's
        action instead of a command (see ``PORTAL_FIXES``).
        """
        from lacrima.i18n import RTL, isolator, language as _language, translator

        tr = translator(language)
        isolated = isolator(language)
        texts = dict(self.texts)
        fix = self.fix
        if channel == "portal":
            if "fix" in texts:
                m = texts["fix"]
                texts["fix"] = Msg(PORTAL_FIXES.get(m.msgid, m.msgid), tuple(
                    (k, Msg(PORTAL_UPLOAD) if k == "upload" else v) for k, v in m.params))
            elif fix in PORTAL_FIXES:
                fix = PORTAL_FIXES[fix]
            elif "`lacrima " in fix:
                fix = PORTAL_FIXES.get(self.check, "")
        if isolate and _language(language) in RTL:
            def leaf(v):
                return isolated(printable(v))
        else:
            leaf = printable
        return {name: texts[name].render(tr, leaf) if name in texts
                else (tr.gettext(value) if value else "")
                for name in ("message", "expected", "found", "fix")
                for value in (fix if name == "fix" else getattr(self, name),)}

    def to_dict(self) -> dict:
        out = {
            "check": self.check, "severity": self.severity, "message": self.message,
            "columns": list(self.columns), "rows": list(self.rows),
            "expected": self.expected, "found": self.found, "fix": self.fix,
        }
        if "message" in dict(self.texts):
            out["message_id"] = dict(self.texts)["message"].msgid
        if self.texts:
            out["texts"] = {name: m.to_dict() for name, m in self.texts}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        """The finding ``to_dict`` wrote, with its message ids (``texts``) when it has them,
        so a stored report is shown in a site's language as the fresh one is."""
        texts = tuple((name, Msg.from_dict(m)) for name, m in (d.get("texts") or {}).items()
                      if name in ("message", "expected", "found", "fix"))
        return cls(check=d["check"], message=d.get("message", ""),
                   columns=tuple(d.get("columns", ())), rows=tuple(d.get("rows", ())),
                   expected=d.get("expected", ""), found=d.get("found", ""),
                   severity=d.get("severity", "error"), fix=d.get("fix", ""), texts=texts)


@dataclass(frozen=True)
class DropError(Exception):
    """A drop that cannot be read at all (empty, binary garbage, wrong encoding ...)."""

    check: str
    message: str
    findings: tuple[Finding, ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "message", printable(self.message))

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


def format_columns(columns, limit: int = 12) -> str:
    """'Q1, Q2, Q3 (+59 more)' for a long column list (the finding's JSON lists them all)."""
    columns = list(columns)
    head = ", ".join(str(c) for c in columns[:limit])
    return head + (f" (+{len(columns) - limit} more)" if len(columns) > limit else "")


def format_rows(rows, limit: int = 20) -> str:
    """'3, 7, 12 (+40 more)' for a long row list."""
    rows = list(rows)
    head = ", ".join(str(r) for r in rows[:limit])
    return head + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")
