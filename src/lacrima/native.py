"""Read a site's native drop and map it onto the canonical variables.

A drop arrives exactly as the site's own tool wrote it (Qualtrics CSV, Italian
workbook or semicolon CSV, SPSS .sav). ``read_drop`` reads it with the site's codebook
and returns the canonical frame with the row numbers a data manager can find, plus
mapping-level findings. A file that cannot be read at all raises ``DropError``; every
other problem is a ``Finding``, so a bad drop never ends in a traceback.

Row numbers
-----------
``NativeDrop.row_numbers`` and every ``Finding.rows`` use the *spreadsheet row*: the
line number the data manager sees when opening the file in Excel or LibreOffice,
header rows included. For a Qualtrics CSV (three header rows) the first answer is
row 4; for a workbook or CSV with one header row it is row 2; for an SPSS file (no
header rows) it is the case number shown in Data View, starting at 1. In general
``row = header_rows + k`` for the k-th record of data (1-based), blank rows counted.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from lacrima.codebook import Codebook, FileFormat, Scale, load_codebook, normalise_label
from lacrima.findings import DropError, Finding, column_label, findings_frame
from lacrima.formula import looks_like_formula
from lacrima.i18n import Msg, msg
from lacrima.study import Site, Study

IDENTIFYING_NAME = re.compile(
    r"name|nome|e-?mail|^ip$|ip[ _.-]?addr|latitud|longitud|phone|telefon|cellular|mobile"
    r"|address|indirizzo|postcode|zip ?code|birth ?date|^dob$|ssn|social ?security"
    r"|טלפון|כתובת|מייל|דוא\"ל",
    re.IGNORECASE,
)
"""Generic pattern of column names that look identifying, whatever the site.

Applied only to columns the codebook does not map, so a canonical column can never be
dropped by accident; codebooks list their known identifying columns explicitly.
"""

REDCAP_METADATA = re.compile(
    r"^redcap_|_complete$|_timestamp$|___[A-Za-z0-9_]+$"
    # the same columns as a labels export heads them
    r"|\(choice=.*\)$|^Complete\?$|^Survey (Identifier|Timestamp)$"
    r"|^(Event Name|Repeat Instrument|Repeat Instance|Data Access Group)$"
)
"""Columns a REDCap export adds (event, repeat instance, survey identifier, form status and
timestamps, checkbox choices), raw or labels: tool metadata in a ``redcap_csv`` drop unless
mapped."""

DATE_TOKENS = {"%d": "dd", "%m": "mm", "%Y": "yyyy", "%y": "yy", "%H": "HH", "%M": "MM", "%S": "SS"}
SNIFF_BYTES = 1 << 16
DELIMITERS = (",", ";", "\t", "|")
NUMBER = re.compile(r"^[+-]?\d+(?:[.,]\d+)?$")
DEFAULT_FORMATS = {
    # How a file is read when its extension is not one the site sends: enough to list
    # what is missing; the drop is never re-routed to another site.
    "xlsx": FileFormat(kind="xlsx", extensions=(), header_rows=1, values="labels"),
    "sav": FileFormat(kind="sav", extensions=(), header_rows=0, values="codes"),
    "csv": FileFormat(kind="csv", extensions=(), encodings=("utf-8-sig", "cp1252"), header_rows=1),
}


# What one drop may expand to. A few-KB workbook can declare a million-row sheet or hold a
# deflate bomb; a file's size on disk (``max_file_mb``) says nothing of either. Beyond any
# bound the drop is refused unread, and reading stops there, so memory stays bounded.
# Each is configurable in study.toml ``[validation]`` (``max_rows``, ``max_columns``,
# ``max_cell_chars``, ``max_expanded_mb``).
MAX_ROWS = 100_000          # data rows of one drop (a site's whole cumulative export)
MAX_COLUMNS = 500           # a Qualtrics export with every metadata column has ~150
MAX_CELL_CHARS = 32_767     # Excel's own limit for one cell
MAX_EXPANDED_MB = 500       # uncompressed size of an .xlsx container's parts, together


@dataclass(frozen=True)
class Limits:
    """Bounds on what one drop may expand to (see the ``MAX_*`` constants).

    ``from_study`` reads ``max_rows``, ``max_columns``, ``max_cell_chars`` and
    ``max_expanded_mb`` from the plan's ``[validation]`` section, defaulting to the constants.
    """

    rows: int = MAX_ROWS
    columns: int = MAX_COLUMNS
    cell_chars: int = MAX_CELL_CHARS
    expanded_mb: float = MAX_EXPANDED_MB

    @classmethod
    def from_study(cls, study: Study) -> "Limits":
        v = study.section("validation")
        return cls(int(v.get("max_rows", MAX_ROWS)), int(v.get("max_columns", MAX_COLUMNS)),
                   int(v.get("max_cell_chars", MAX_CELL_CHARS)),
                   float(v.get("max_expanded_mb", MAX_EXPANDED_MB)))


def _too_big(check: str, name: str, what: str, limit: str, found: str,
             rows: tuple[int, ...] = (), columns: tuple[str, ...] = ()) -> DropError:
    message = (f"drop {name} {what}; drops up to {limit} are read (study.toml [validation]): "
               "it was not read further")
    return DropError(check, message, (Finding(check, message, columns=columns, rows=rows,
                                              expected=f"at most {limit}", found=found),))


@dataclass(frozen=True)
class NativeDrop:
    """One native drop mapped onto the canonical variables.

    Parameters
    ----------
    frame : pandas.DataFrame
        ``site`` then every canonical variable of the study plan, one row per data row
        of the file. integer/likert -> ``Int64``; bool -> ``boolean``; date ->
        ``datetime64[ns]`` (normalised to midnight); category/string -> ``str``.
        Missing is ``pd.NA``/``NaT``/NaN (``str`` dtype).
    row_numbers : tuple of int
        Spreadsheet row of each frame row (module docstring).
    findings : tuple of Finding
        Mapping-level problems; any ``severity == "error"`` quarantines the drop.
    identifying_dropped : tuple of str
        Native names of identifying columns removed unread (names only, never values).
    n_rows : int
        Number of data rows read.
    source : str
        File name of the drop.
    format : str
        Format kind the file was read as.
    looks_like : str
        The code of another site whose codebook the header fits, when most of this site's
        columns are missing (``looks_like``); its one finding says so, and no value is checked.
    """

    frame: pd.DataFrame = field(repr=False)
    row_numbers: tuple[int, ...]
    findings: tuple[Finding, ...]
    identifying_dropped: tuple[str, ...]
    n_rows: int
    source: str = ""
    format: str = ""
    looks_like: str = ""

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def ok(self) -> bool:
        """True when no finding is an error (the drop may proceed to validation)."""
        return not self.errors

    def to_frame(self) -> pd.DataFrame:
        """The canonical frame with a leading ``row_number`` column (a copy).

        Returns
        -------
        pandas.DataFrame
            ``row_number`` (spreadsheet row, see module notes), ``site`` and the
            canonical variables.
        """
        out = self.frame.copy()
        out.insert(0, "row_number", pd.array(self.row_numbers, dtype="Int64"))
        return out

    def findings_frame(self) -> pd.DataFrame:
        """Tidy findings table (``lacrima.findings.FINDING_COLUMNS``)."""
        return findings_frame(self.findings)


@dataclass
class _Table:
    """Cells as read, before mapping: names row, data rows, spreadsheet row numbers."""

    names: list[str]
    rows: list[list[Any]]
    row_numbers: list[int]
    fmt: FileFormat
    # (data row idx, col idx) -> formula text, never evaluated
    formula_cells: dict[tuple[int, int], str] = field(default_factory=dict)
    declared_missing: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


# --------------------------------------------------------------------------- public


def read_drop_bytes(data: bytes, name: str, site: Site, study: Study, *,
                    today: dt.date | None = None) -> NativeDrop:
    """:func:`read_drop` of a drop held as bytes (from the store or an upload), read under
    ``name``: a safe base name, so that findings name the file the data manager sent.

    The native readers (pyreadstat, openpyxl) take a path: the bytes go to a temporary file,
    deleted once read. The one place a drop in memory is read.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lacrima-drop-") as tmp:
        path = Path(tmp) / (Path(name).name or "drop.bin")
        path.write_bytes(data)
        return read_drop(path, site, study, today=today)


def read_drop(
    path: str | Path, site: Site, study: Study, *, today: dt.date | None = None
) -> NativeDrop:
    """Read one native drop of ``site`` and map it onto the canonical variables.

    Parameters
    ----------
    path : str or Path
        The drop as uploaded (never modified).
    site : lacrima.study.Site
        The site that sent it; its codebook says how to read it.
    study : lacrima.study.Study
        The study plan (canonical variables and their types).
    today : datetime.date, optional
        Reference date for ``future_dates`` (default: today's date).

    Returns
    -------
    NativeDrop

    Raises
    ------
    lacrima.findings.DropError
        When the file cannot be read at all. ``check`` is one of ``missing_file``,
        ``empty_file``, ``no_data_rows``, ``binary_file``, ``bad_encoding``,
        ``encrypted_file``, ``unreadable_workbook``, ``unreadable_sav``,
        ``unreadable_csv``, or, for a drop beyond its :class:`Limits`, ``too_many_rows``,
        ``too_many_columns``, ``cell_too_long``, ``expands_too_much``. The message names
        the file and says what was expected.
    lacrima.codebook.CodebookError
        When the site's codebook itself is inconsistent with the plan.

    Notes
    -----
    Finding checks: ``missing_columns``, ``duplicate_columns``, ``unknown_labels``,
    ``unknown_codes``, ``non_numeric``, ``bad_dates``, ``future_dates``, ``formula_cells``,
    ``ragged_rows``, ``unexpected_format`` (errors); ``unexpected_columns``,
    ``identifying_columns``, ``delimiter``, ``decimal_mark``, ``sheet``,
    ``header_rows`` (warnings).
    Declared missing codes (codebook ``missing_codes`` and SPSS user-missing values)
    become missing; in a ``codes`` file a code its scale does not have is ``unknown_codes``;
    other numeric values pass through (range checks are validation's).
    Formula-like cells are never evaluated: workbooks are read with
    ``openpyxl.load_workbook(data_only=True)`` and a second pass only looks at cell
    types; CSV cells are plain text. Findings never show a participant's values.
    """
    path = Path(path)
    codebook = load_codebook(site)
    codebook.check_against(study)
    table = _read_table(path, codebook, Limits.from_study(study))
    return _map(table, codebook, study, site, path, today or dt.date.today())


# --------------------------------------------------------------------------- reading


def _shown(path: Path) -> str:
    # repr() escapes control characters and quotes odd names unambiguously.
    return repr(path.name)


def _sniff(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "ole"
    if head.startswith(b"$FL2") or head.startswith(b"$FL3"):
        return "sav"
    return "text"


def _read_table(path: Path, codebook: Codebook, limits: Limits = Limits()) -> _Table:
    name = _shown(path)
    if not path.is_file():
        raise DropError("missing_file", f"drop {name} does not exist or is not a file ({path})")
    if path.stat().st_size == 0:
        raise DropError("empty_file", f"drop {name} is empty (0 bytes); expected a "
                        f"{_kinds(codebook)} export from site {codebook.site!r}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    sniffed = _sniff(head)
    findings: list[Finding] = []
    fmt = codebook.format_for(path)
    if fmt is None:
        accepted = ", ".join(e for f in codebook.formats for e in f.extensions)
        if sniffed == "ole":
            _raise_ole(path)
        fmt = DEFAULT_FORMATS["xlsx" if sniffed == "zip" else "sav" if sniffed == "sav" else "csv"]
        findings.append(Finding(
            check="unexpected_format",
            message=(f"drop {name} has extension {path.suffix or '(none)'!r}, but site "
                     f"{codebook.site!r} sends {accepted} files; it was read as {fmt.kind} only to "
                     "list what does not match, and is not re-routed to another site"),
            expected=accepted, found=path.suffix or "no extension",
        ))
    if fmt.kind == "xlsx":
        table = _read_xlsx(path, fmt, sniffed, codebook, limits)
    elif fmt.kind == "sav":
        table = _read_sav(path, fmt, sniffed, limits)
    else:
        table = _read_text(path, fmt, sniffed, codebook, limits)
        if fmt.kind == "redcap_csv":
            _redcap_names(table, codebook)
    table.findings[:0] = findings
    if not any(n for n in table.names):
        raise DropError("empty_file", f"drop {name} has no column names; expected a "
                        f"{_kinds(codebook)} export from site {codebook.site!r}")
    if not table.rows:
        raise DropError("no_data_rows", f"drop {name} has column names but no data rows "
                        f"(expected {fmt.header_rows} header row(s) then one row per participant)")
    return table


def _kinds(codebook: Codebook) -> str:
    return " or ".join(f.kind for f in codebook.formats)


def _raise_ole(path: Path) -> None:
    raise DropError(
        "encrypted_file",
        f"drop {_shown(path)} is a password-protected (encrypted) workbook or a legacy .xls file; "
        "remove the password and save it as .xlsx, then upload again",
    )


def _read_text(path: Path, fmt: FileFormat, sniffed: str, codebook: Codebook,
               limits: Limits = Limits()) -> _Table:
    name = _shown(path)
    if sniffed != "text":
        what = {"zip": "an Excel workbook", "ole": "an encrypted or legacy Excel file",
                "sav": "an SPSS file"}[sniffed]
        raise DropError("binary_file", f"drop {name} should be a {fmt.kind} text file but is "
                        f"{what}; site {codebook.site!r} sends {_kinds(codebook)}")
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DropError("bad_encoding", f"drop {name} is UTF-16 text; expected "
                        f"{' or '.join(fmt.encodings)} (save as 'CSV UTF-8')")
    sample = data[:SNIFF_BYTES]
    if b"\x00" in sample:
        raise DropError("binary_file", f"drop {name} contains binary data (NUL bytes), "
                        f"not {fmt.kind} text")
    text = _decode(data, fmt, name)
    controls = sum(
        1 for ch in text[:SNIFF_BYTES] if unicodedata.category(ch) == "Cc" and ch not in "\r\n\t"
    )
    if controls > max(3, len(text[:SNIFF_BYTES]) // 100):
        raise DropError("binary_file", f"drop {name} is not text ({controls} control characters "
                        f"in its first {min(len(text), SNIFF_BYTES)} characters)")
    text = text.lstrip("\ufeff")
    findings: list[Finding] = []
    delimiter = _delimiter(text, fmt, name, findings)
    records = _bounded_records(text, delimiter, fmt, name, limits)
    if not records:
        raise DropError("empty_file", f"drop {name} holds no text")
    names = [_column_key(c) for c in records[0]]
    header_rows = _qualtrics_header_rows(records, fmt, codebook, name, findings)
    rows, numbers, long_rows = [], [], []
    for idx in range(header_rows, len(records)):
        rec = records[idx]
        if not any(c.strip() for c in rec):
            continue
        if len(rec) > len(names) and any(c.strip() for c in rec[len(names):]):
            long_rows.append(idx + 1)
        cells = [c if c.strip() else None for c in rec[: len(names)]]
        rows.append(cells + [None] * (len(names) - len(cells)))
        numbers.append(idx + 1)   # record k (0-based) is spreadsheet row k + 1
    if long_rows:
        findings.append(Finding(
            check="ragged_rows", rows=tuple(long_rows),
            message=(f"{len(long_rows)} row(s) of {name} have more fields than the header "
                     f"({len(names)}); the columns may be shifted"),
            expected=f"{len(names)} fields per row", found="more fields than column names",
        ))
    return _Table(names=names, rows=rows, row_numbers=numbers, fmt=fmt, findings=findings)


def _bounded_records(text: str, delimiter: str, fmt: FileFormat, name: str,
                     limits: Limits) -> list[list[str]]:
    """The CSV records of ``text``, refused once past ``limits`` (rows, fields, cell length)."""
    most = fmt.header_rows + limits.rows
    records = []
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for rec in reader:
            if len(records) == most:
                raise _too_big("too_many_rows", name, f"has more than {limits.rows:,} data rows",
                               f"{limits.rows:,} data rows", f"more than {limits.rows:,} rows",
                               rows=(reader.line_num,))
            if len(rec) > limits.columns:
                raise _too_big("too_many_columns", name,
                               f"has {len(rec):,} fields in row {reader.line_num}",
                               f"{limits.columns:,} columns", f"{len(rec):,} fields",
                               rows=(reader.line_num,))
            _check_cells(rec, len(records) + 1, name, limits)
            records.append(rec)
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):      # csv's own bound, ~131,000
            raise _too_big("cell_too_long", name, f"has a cell over {csv.field_size_limit():,} "
                           f"characters in row {reader.line_num}",
                           f"{limits.cell_chars:,} characters a cell",
                           f"over {csv.field_size_limit():,} characters",
                           rows=(reader.line_num,)) from None
        raise DropError("unreadable_csv",
                        f"drop {name} is not a readable CSV file ({exc})") from None
    return records


def _check_cells(cells: Iterable[Any], row: int, name: str, limits: Limits,
                 names: list[str] | None = None) -> None:
    for c, v in enumerate(cells):
        if isinstance(v, str) and len(v) > limits.cell_chars:
            column = names[c] if names and c < len(names) else f"column {c + 1}"
            raise _too_big("cell_too_long", name,
                           f"has a cell of {len(v):,} characters (row {row}, {column})",
                           f"{limits.cell_chars:,} characters a cell", f"{len(v):,} characters",
                           rows=(row,), columns=(column,))


def _redcap_names(table: _Table, codebook: Codebook) -> None:
    """A REDCap *labels* export heads its columns with field labels: name them by the codebook.

    A raw export (field names) holds the ID column by name and is left alone. Labels are
    the codebook's ``text`` of each column, compared as answer labels are.
    """
    if _column_key(codebook.id_column) in table.names:
        return
    by_label = {normalise_label(spec.text): spec.column
                for spec in (*codebook.columns.values(), *codebook.extra_columns) if spec.text}
    renamed = [by_label.get(normalise_label(n), n) if n else n for n in table.names]
    if _column_key(codebook.id_column) in renamed:
        table.names[:] = renamed


def _column_key(name: Any) -> str:
    # Excel on macOS may store "Età" decomposed; a header is the same column either way.
    return "" if name is None else unicodedata.normalize("NFC", str(name)).strip()


def _qualtrics_header_rows(records: list[list[str]], fmt: FileFormat, codebook: Codebook, name: str,
                           findings: list[Finding]) -> int:
    """Header rows actually present in a Qualtrics export.

    A current export has names, question text and ``{"ImportId": ...}`` rows. A legacy
    or hand-trimmed export may lack the last one(s); skipping a fixed three rows would
    then silently lose answers, so a row counts as a header only when it holds ImportId
    JSON or mostly repeats the codebook's question texts.
    """
    if fmt.kind != "qualtrics_csv" or fmt.header_rows < 2:
        return fmt.header_rows
    texts = {_column_key(s.column): s.text for s in codebook.columns.values() if s.text}
    texts.update({_column_key(e.column): e.text for e in codebook.extra_columns if e.text})
    names = [_column_key(c) for c in records[0]]

    def is_header(k: int) -> bool:
        if k >= len(records):
            return False
        rec = records[k]
        if any(c.lstrip().startswith('{"ImportId"') for c in rec):
            return True
        pairs = [(texts[n], rec[i]) for i, n in enumerate(names) if n in texts and i < len(rec)]
        return bool(pairs) and 2 * sum(a.strip() == b.strip() for a, b in pairs) >= len(pairs)

    found = 1
    while found < fmt.header_rows and is_header(found):
        found += 1
    if found != fmt.header_rows and len(records) > found:
        findings.append(Finding(
            check="header_rows", severity="warning",
            message=(f"Qualtrics export {name} has {found} header row(s), not {fmt.header_rows} "
                     f"(names, question text, ImportId JSON); data were read from row {found + 1}"),
            expected=f"{fmt.header_rows} header rows", found=f"{found} header row(s)",
        ))
    return found


def _decode(data: bytes, fmt: FileFormat, name: str) -> str:
    first_error: UnicodeDecodeError | None = None
    for enc in fmt.encodings:
        try:
            return data.decode(enc)
        except UnicodeDecodeError as exc:
            first_error = first_error or exc
        except LookupError:
            raise DropError("bad_encoding",
                            f"codebook encoding {enc!r} is unknown (reading {name})") from None
    line = data[: first_error.start].count(b"\n") + 1 if first_error else 0
    raise DropError(
        "bad_encoding",
        f"drop {name} is not in the expected text encoding {' or '.join(fmt.encodings)}: "
        f"undecodable byte on line {line}; export it again as {fmt.encodings[0]}",
    )


def _delimiter(text: str, fmt: FileFormat, name: str, findings: list[Finding]) -> str:
    first = next(iter(text.splitlines()), "")    # a lone "\r" ends a line too
    counts = {}
    for d in DELIMITERS:
        try:
            counts[d] = len(next(csv.reader([first], delimiter=d), []))
        except csv.Error:                         # e.g. a NUL or stray quote: not this one
            counts[d] = 0
    if counts.get(fmt.delimiter, 0) > 1:
        return fmt.delimiter
    best = max(DELIMITERS, key=lambda d: counts[d])
    if counts[best] > 1:
        findings.append(Finding(
            check="delimiter", severity="warning",
            message=(f"drop {name} separates fields with {best!r}, not {fmt.delimiter!r} as the "
                     f"codebook says; it was read with {best!r}"),
            expected=repr(fmt.delimiter), found=repr(best),
        ))
        return best
    return fmt.delimiter


def _check_zip(path: Path, name: str, limits: Limits) -> None:
    """Refuse a container whose parts expand beyond ``limits.expanded_mb`` (a deflate bomb).

    The sizes are those the zip declares; Python's zipfile never inflates a part past its
    declared size (a part that lies fails its CRC check), so the bound holds while reading.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return                      # openpyxl's own reading says what is wrong with it
    if total > limits.expanded_mb * 1e6:
        raise _too_big("expands_too_much", name,
                       f"expands to {total / 1e6:,.0f} MB once uncompressed",
                       f"{limits.expanded_mb:,.0f} MB uncompressed",
                       f"{total / 1e6:,.0f} MB uncompressed")


def _check_sheet_size(ws, name: str, sheet: str, header_rows: int, limits: Limits) -> None:
    """Refuse a sheet whose declared dimensions exceed ``limits`` before reading its cells.

    openpyxl pads every row to the declared width and fills declared empty rows, so a few-KB
    workbook declaring ``A1:XFD1048576`` would otherwise become 17 billion cells.
    """
    rows, cols = ws.max_row, ws.max_column      # from the sheet's <dimension>; None if absent
    if rows is not None and rows > header_rows + limits.rows:
        raise _too_big("too_many_rows", name,
                       f"declares sheet {sheet!r} of {rows:,} rows", f"{limits.rows:,} data rows",
                       f"{rows:,} rows declared")
    if cols is not None and cols > limits.columns:
        raise _too_big("too_many_columns", name,
                       f"declares sheet {sheet!r} of {cols:,} columns", f"{limits.columns:,} columns",
                       f"{cols:,} columns declared")


def _bounded_sheet(ws, name: str, header_rows: int, limits: Limits) -> list[list[Any]]:
    """The sheet's values row by row, trailing blanks dropped, refused once past ``limits``.

    Reading asks openpyxl for one row and one column beyond the bounds, so a sheet without
    (or with false) declared dimensions still stops there.
    """
    most = header_rows + limits.rows
    values = []
    for r in ws.iter_rows(max_row=most + 1, max_col=limits.columns + 1, values_only=True):
        row = list(r)
        while row and row[-1] is None:
            row.pop()
        if len(values) == most and row:
            raise _too_big("too_many_rows", name, f"has more than {limits.rows:,} data rows",
                           f"{limits.rows:,} data rows", f"more than {limits.rows:,} rows",
                           rows=(most + 1,))
        if len(row) > limits.columns:
            raise _too_big("too_many_columns", name,
                           f"has more than {limits.columns:,} columns in row {len(values) + 1}",
                           f"{limits.columns:,} columns", f"more than {limits.columns:,}",
                           rows=(len(values) + 1,))
        _check_cells(row, len(values) + 1, name, limits, [_column_key(v) for v in values[0]]
                     if values else None)
        values.append(row)
    while values and not values[-1]:
        values.pop()
    return values


def _read_xlsx(path: Path, fmt: FileFormat, sniffed: str, codebook: Codebook,
               limits: Limits = Limits()) -> _Table:
    import openpyxl  # heavy; only when a workbook arrives

    name = _shown(path)
    if sniffed == "ole":
        _raise_ole(path)
    if sniffed != "zip":
        raise DropError("unreadable_workbook", f"drop {name} is not an .xlsx workbook (it is not a "
                        "zip container); save it from Excel as .xlsx and upload again")
    _check_zip(path, name, limits)
    findings: list[Finding] = []
    try:
        # data_only=True: cached values only, formulas are never evaluated.
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            ws, sheet = _sheet(wb, fmt)
            _check_sheet_size(ws, name, sheet, fmt.header_rows, limits)
            values = _bounded_sheet(ws, name, fmt.header_rows, limits)
        finally:
            wb.close()
        # Second pass reads cell types only, to find formula cells (never computed).
        wb = openpyxl.load_workbook(path, read_only=True, data_only=False)
        try:
            ws2 = wb[sheet]
            formula_at = {
                (r, c): str(cell.value)
                for r, row in enumerate(ws2.iter_rows(max_row=len(values),
                                                      max_col=limits.columns))
                for c, cell in enumerate(row)
                if getattr(cell, "data_type", None) == "f"
            }
        finally:
            wb.close()
    except DropError:
        raise
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError, TypeError,
            IndexError) as exc:
        raise DropError(
            "unreadable_workbook",
            f"drop {name} could not be read as an .xlsx workbook ({type(exc).__name__}); it may be "
            "truncated or damaged: save it again from Excel and upload again",
        ) from None
    except Exception as exc:  # openpyxl's InvalidFileException and parser errors
        raise DropError(
            "unreadable_workbook",
            f"drop {name} could not be read as an .xlsx workbook ({type(exc).__name__})",
        ) from None
    if fmt.sheet and sheet != fmt.sheet:
        findings.append(Finding(
            check="sheet", severity="warning",
            message=(f"workbook {name} has no sheet {fmt.sheet!r}; the first sheet {sheet!r} "
                     "was read"),
            expected=fmt.sheet, found=sheet,
        ))
    if not values:
        raise DropError("empty_file", f"workbook {name} has an empty sheet {sheet!r}")
    names = [_column_key(v) for v in values[0]]
    while names and not names[-1]:
        names.pop()
    rows, numbers, formulas = [], [], {}
    for idx in range(fmt.header_rows, len(values)):
        cells = [None if (isinstance(v, str) and not v.strip()) else v
                 for v in values[idx][: len(names)]]
        here = {c: formula_at[idx, c] for c in range(len(names)) if (idx, c) in formula_at}
        if all(v is None for v in cells) and not here:
            continue
        k = len(rows)
        formulas.update({(k, c): text for c, text in here.items()})
        rows.append(cells + [None] * (len(names) - len(cells)))
        numbers.append(idx + 1)
    return _Table(names=names, rows=rows, row_numbers=numbers, fmt=fmt, formula_cells=formulas,
                  findings=findings)


def _sheet(wb, fmt: FileFormat):
    if fmt.sheet and fmt.sheet in wb.sheetnames:
        return wb[fmt.sheet], fmt.sheet
    first = wb.sheetnames[0]
    return wb[first], first


def _read_sav(path: Path, fmt: FileFormat, sniffed: str, limits: Limits = Limits()) -> _Table:
    import pyreadstat

    name = _shown(path)
    if sniffed != "sav":
        raise DropError("unreadable_sav",
                        f"drop {name} is not an SPSS .sav file (no $FL2 signature)")
    try:
        # The header alone first: a compressed .sav may declare far more cases than it shows.
        _, head = pyreadstat.read_sav(str(path), metadataonly=True)
    except Exception as exc:  # pyreadstat raises its own error classes for damaged files
        raise DropError("unreadable_sav", f"drop {name} could not be read as an SPSS file "
                        f"({type(exc).__name__}); it may be truncated or damaged") from None
    if (head.number_columns or 0) > limits.columns:
        raise _too_big("too_many_columns", name, f"declares {head.number_columns:,} variables",
                       f"{limits.columns:,} columns", f"{head.number_columns:,} variables")
    if (head.number_rows or 0) > limits.rows:
        raise _too_big("too_many_rows", name, f"declares {head.number_rows:,} cases",
                       f"{limits.rows:,} data rows", f"{head.number_rows:,} cases")
    try:
        candidates = _sav_encodings(path, fmt, pyreadstat)
        # user_missing=True keeps 99/999 visible so declared codes are recognised here.
        # A legacy code page is read as latin1 (every byte kept as one character) and
        # re-decoded here: pyreadstat 1.3.7 shifts names and labels of a windows-1255 file
        # by one character when asked for that encoding (a Hebrew letter lands in front
        # of "id"). row_limit: a header that does not count its cases still stops one
        # past the bound.
        df, meta = pyreadstat.read_sav(str(path), user_missing=True, row_limit=limits.rows + 1,
                                       encoding="latin1" if candidates else None)
    except DropError:
        raise
    except Exception as exc:  # pyreadstat raises its own error classes for damaged files
        raise DropError("unreadable_sav", f"drop {name} could not be read as an SPSS file "
                        f"({type(exc).__name__}); it may be truncated or damaged") from None
    if len(df) > limits.rows:
        raise _too_big("too_many_rows", name, f"has more than {limits.rows:,} cases",
                       f"{limits.rows:,} data rows", f"more than {limits.rows:,} cases")
    if candidates:
        texts = [*map(str, df.columns),
                 *(v for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])
                   for v in df[c].tolist() if isinstance(v, str))]
        fix = _redecoder(_pick_encoding(candidates, texts, name), name)
    else:
        fix = lambda s: s  # noqa: E731  (UTF-8: pyreadstat decodes it right)
    declared = {
        fix(col): [(float(r["lo"]), float(r["hi"])) for r in ranges if _is_number(r.get("lo"))]
        for col, ranges in (meta.missing_ranges or {}).items()
    }
    names = [_column_key(fix(c)) for c in df.columns]
    columns = [[fix(v) if isinstance(v, str) else v for v in df[c].tolist()] for c in df.columns]
    rows = []
    for i in range(len(df)):
        rows.append([_clean_cell(col[i]) for col in columns])
    numbers = [i + 1 for i in range(len(rows))]
    keep = [k for k, r in enumerate(rows) if any(v is not None for v in r)]
    return _Table(names=names, rows=[rows[k] for k in keep], row_numbers=[numbers[k] for k in keep],
                  fmt=fmt, declared_missing=declared)


_UTF8 = {"utf8", "utf-8", "utf-8-sig", "utf_8", "utf_8_sig"}


def _sav_encodings(path: Path, fmt: FileFormat, pyreadstat) -> list[str]:
    """Code pages to try for an SPSS file's text, in order; empty when it is UTF-8 (read as is).

    The file's declared encoding first, then the codebook's non-UTF-8 ``encodings`` (for a
    file that declares none, or declares one wrongly).
    """
    _, meta = pyreadstat.read_sav(str(path), metadataonly=True)
    declared = (meta.file_encoding or "").strip().lower()
    legacy = [e for e in fmt.encodings if e.lower() not in _UTF8]
    if declared in _UTF8 and not legacy:
        return []
    return list(dict.fromkeys(([declared] if declared and declared not in _UTF8 else []) + legacy))


def _pick_encoding(candidates: list[str], texts: list[str], name: str) -> str:
    """The first candidate in which every name and string cell (read as latin1) decodes."""
    for enc in candidates:
        try:
            for text in texts:
                text.encode("latin1").decode(enc)
            return enc
        except (LookupError, UnicodeEncodeError, UnicodeDecodeError):
            continue
    raise DropError("bad_encoding", f"drop {name}: encoding - its names or text do not decode in "
                    f"any encoding tried ({', '.join(candidates)}: the file's declared encoding, "
                    "then the codebook's [[formats]] encodings); set encodings in the codebook to "
                    "the code page the file was saved in")


def _redecoder(encoding: str, name: str):
    def fix(text: str) -> str:
        try:
            return text.encode("latin1").decode(encoding)
        except LookupError:
            raise DropError("bad_encoding", f"drop {name}: encoding {encoding!r} (declared by the "
                            "file or the codebook) is not a known text encoding") from None
        except (UnicodeEncodeError, UnicodeDecodeError):
            raise DropError("bad_encoding", f"drop {name}: encoding - its names or labels do not "
                            f"decode as {encoding!r} (tried the file's declared encoding, then the "
                            "codebook's [[formats]] encodings); set encodings in the codebook "
                            "to the code page the file was saved in") from None
    return fix


def _clean_cell(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, str) and not v.strip():
        return None
    if v is pd.NaT:
        return None
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --------------------------------------------------------------------------- mapping


@dataclass
class _Issues:
    """Problems found in one column, by check: spreadsheet rows and what was found."""

    rows: dict[str, list[int]] = field(default_factory=dict)
    found: dict[str, list[str]] = field(default_factory=dict)
    other_decimal: bool = False

    def add(self, check: str, row: int, found: str = "") -> None:
        self.rows.setdefault(check, []).append(row)
        if found and found not in self.found.setdefault(check, []):
            self.found[check].append(found)


def _map(table: _Table, codebook: Codebook, study: Study, site: Site, path: Path,
         today: dt.date) -> NativeDrop:
    name = _shown(path)
    findings = list(table.findings)
    fmt = table.fmt
    position: dict[str, int] = {}
    duplicated = []
    for i, n in enumerate(table.names):
        if n in position:
            duplicated.append(n)
        else:
            position[n] = i
    mapped = {_column_key(spec.column) for spec in codebook.columns.values()}
    findings += _non_participant_rows(table, codebook, position, name)
    dup_mapped = sorted({d for d in duplicated if d in mapped})
    if dup_mapped:
        findings.append(Finding(
            check="duplicate_columns", columns=tuple(dup_mapped),
            message=(f"drop {name} has column(s) {_names(dup_mapped)} more than once; "
                     "the first was read"),
            expected="each column once", found=f"{len(dup_mapped)} repeated column name(s)",
        ))

    declared_ident = {_column_key(c) for c in codebook.identifying_columns}
    known_extra = {_column_key(c) for c in codebook.extra_names}
    ident_declared, ident_other, unexpected, unexpected_idx = [], [], [], []
    for i, n in enumerate(table.names):
        if n in mapped or position.get(n) != i:
            continue
        if n in declared_ident:
            ident_declared.append(n)
        elif n and IDENTIFYING_NAME.search(n):
            ident_other.append(n)
        elif n in known_extra or (fmt.kind == "redcap_csv" and REDCAP_METADATA.search(n)):
            continue
        elif n or any(r[i] is not None for r in table.rows):
            unexpected.append(n or f"(column {i + 1}, no name)")
            unexpected_idx.append(i)
    if ident_declared:
        findings.append(Finding(
            # As designed (the codebook lists them): information, not a problem to act on.
            check="identifying_columns", severity="info", columns=tuple(ident_declared),
            message=msg("{n} identifying column(s) of {file} listed in the codebook were "
                        "removed unread at intake: {columns}", n=len(ident_declared), file=name,
                        columns=_names(ident_declared)),
            expected=msg("identifying columns never enter curated data"),
            found=msg("columns removed"),
        ))
    if ident_other:
        findings.append(Finding(
            check="identifying_columns", severity="warning", columns=tuple(ident_other),
            message=msg("{n} column(s) of {file} look identifying and are not in the "
                        "codebook; they were removed unread at intake: {columns}",
                        n=len(ident_other), file=name, columns=_names(ident_other)),
            expected=msg("no identifying columns beyond those the codebook lists"),
            found=msg("unexpected identifying column names"),
        ))
    if unexpected:
        findings.append(Finding(
            check="unexpected_columns", severity="warning", columns=tuple(unexpected),
            message=msg("{n} column(s) of {file} are not in the codebook of site {site} and "
                        "were ignored: {columns}", n=len(unexpected), file=name,
                        site=codebook.site, columns=_names(unexpected)),
            expected=msg("only the codebook's columns"),
            found=msg("{n} extra column(s)", n=len(unexpected)),
        ))
    # Ignored columns are not read: nothing in them reaches curated data, so they are not
    # checked for formulas either (a free-text answer "- felt heard" is not a formula problem).
    n = len(table.rows)
    vocabulary = _vocabulary(codebook)
    columns: dict[str, Any] = {"site": pd.Series([site.code] * n, dtype="str")}
    missing = []
    decimal_cols = []
    for var, meta in study.variables.items():
        spec = codebook.columns[var]
        vtype = meta["type"]
        idx = position.get(_column_key(spec.column))
        if idx is None:
            missing.append(spec.column)
            columns[var] = canonical_series([None] * n, vtype)
            continue
        scale = codebook.scale_of(var)
        codes = set(spec.missing_codes) | set(scale.missing_codes if scale else ())
        ranges = table.declared_missing.get(spec.column, [])
        issues = _Issues()
        values = []
        for k, row in enumerate(table.rows):
            cell = row[idx]
            rownum = table.row_numbers[k]
            if (k, idx) in table.formula_cells:
                issues.add("formula_cells", rownum)
                # Neutralised: inert text where text is kept, else missing.
                values.append("'" + table.formula_cells[k, idx] if vtype == "string" else None)
                continue
            values.append(_convert(cell, vtype, scale, fmt, codes, ranges, today, rownum, issues))
        columns[var] = canonical_series(values, vtype)
        if issues.other_decimal:
            decimal_cols.append(spec.column)
        findings.extend(_column_findings(issues, spec.column, name, scale, fmt, today,
                                         canonical=var, vocabulary=vocabulary,
                                         site=site.code))
    other = (looks_like(table.names, site)
             if 2 * len(missing) > len(codebook.columns) else "")
    if other:
        # Another site's export: that is the one thing to say (its columns are all "missing",
        # its header rows and metadata all odd here).
        findings = [f for f in findings if f.check == "unexpected_format"]
        total = len(codebook.columns)
        findings.insert(0, Finding(
            check="missing_columns", columns=tuple(missing),
            message=(msg("none of the {total} columns of site {site} are in {file}: it looks "
                         "like an export of site {other}", total=total, site=codebook.site,
                         file=name, other=other) if len(missing) == total else
                     msg("{n} of the {total} columns of site {site} are missing from {file}: "
                         "it looks like an export of site {other}", n=len(missing),
                         total=total, site=codebook.site, file=name, other=other)),
            expected=msg("the columns of the codebook of site {site}", site=codebook.site),
            found=msg("the columns of the codebook of site {site}", site=other),
            fix=msg("if the file is from site {other}, check and upload it with --site "
                    "{other}; else send the export of site {site}", other=other,
                    site=codebook.site),
        ))
    elif missing:
        findings.insert(0, Finding(
            check="missing_columns", columns=tuple(missing),
            message=msg("{n} expected column(s) are missing from {file} (site {site}): "
                        "{columns}", n=len(missing), file=name, site=codebook.site,
                        columns=_names(missing)),
            expected=msg("columns {columns} as named in the codebook", columns=_names(missing)),
            found=msg("{n} column(s), none with these names", n=len(table.names)),
        ))
    if decimal_cols:
        other = "," if fmt.decimal == "." else "."
        findings.append(Finding(
            check="decimal_mark", severity="warning", columns=tuple(decimal_cols),
            message=(f"numbers in {_names(decimal_cols)} of {name} use {other!r} as the decimal "
                     f"mark, not {fmt.decimal!r} as the codebook says; they were read as decimals"),
            expected=repr(fmt.decimal), found=repr(other),
        ))
    frame = pd.DataFrame(columns)
    return NativeDrop(frame=frame, row_numbers=tuple(table.row_numbers), findings=tuple(findings),
                      identifying_dropped=tuple(ident_declared + ident_other), n_rows=n,
                      source=path.name, format=fmt.kind, looks_like=other)


SUMMARY_WORDS = frozenset({
    "total", "totals", "grand total", "sum", "mean", "average", "avg", "median", "count",
    "sd", "std", "std dev", "totale", "totali", "somma", "media", "mediana", "dev. st.",
    "gesamt", "summe", "mittelwert", "durchschnitt", "anzahl",
    "סה\"כ", "סהכ", "סך הכל", "ממוצע", "חציון",
})
"""What a totals or summary row under the data says in its first cells (any case, a trailing
colon or full stop ignored). Such a word is an answer to no question, so it may be shown."""


def _summary_word(cell: Any) -> str:
    if not isinstance(cell, str):
        return ""
    text = normalise_label(cell).rstrip(":. ")
    return cell.strip() if text in SUMMARY_WORDS else ""


def _non_participant_rows(table: _Table, codebook: Codebook, position: dict[str, int],
                          name: str) -> list[Finding]:
    """Rows that are not participants, removed from ``table`` and named in one error each kind.

    A repeated header row (a second copy of the column names, or of Qualtrics' question text
    and ImportId rows), a totals or summary row ("Totale", "Media", "Total" in the ID column,
    or anywhere on a row without an ID), a note (a row without an ID holding one or two
    cells) and every row below a blank separator row in a spreadsheet or CSV. Counted as
    participants, each would enter the data as a person; as errors, the drop is quarantined
    and the data manager deletes them in their own tool.
    """
    id_at = position.get(_column_key(codebook.id_column))
    texts = {_column_key(s.column): _column_key(s.text)
             for s in (*codebook.columns.values(), *codebook.extra_columns) if s.text}
    kinds: dict[str, list[int]] = {}
    words: list[str] = []
    keep = []
    separator = None
    for k, (row, number) in enumerate(zip(table.rows, table.row_numbers)):
        previous = table.row_numbers[k - 1] if k else table.fmt.header_rows
        if (separator is None and table.fmt.kind != "sav" and number > previous + 1):
            separator = previous + 1
        filled = [(i, c) for i, c in enumerate(row) if c is not None]
        as_text = [(i, _column_key(c)) for i, c in filled if isinstance(c, str)]
        repeats = sum(1 for i, c in as_text if i < len(table.names)
                      and c in (table.names[i], texts.get(table.names[i])))
        blank_id = id_at is not None and row[id_at] is None
        word = _summary_word(row[id_at]) if id_at is not None else ""
        if not word and blank_id:
            word = next((w for _, c in filled if (w := _summary_word(c))), "")
        if filled and (2 * repeats >= len(filled) and repeats >= 2
                       or any(c.startswith('{"ImportId"') for _, c in as_text)):
            kind = "header"
        elif word:
            kind = "summary"
            if word not in words:
                words.append(word)
        elif separator is not None:
            kind = "separator"
        elif blank_id and len(filled) <= 2 and len(table.names) > 4:
            kind = "note"
        else:
            keep.append(k)
            continue
        kinds.setdefault(kind, []).append(number)
    if not kinds:
        return []
    table.rows[:] = [table.rows[k] for k in keep]
    table.row_numbers[:] = [table.row_numbers[k] for k in keep]
    shown = ", ".join(repr(w) for w in words[:3])
    looks = {
        "header": (msg("a repeated header row (the column names again)"),
                   msg("{n} row(s) that look like a repeated header")),
        "summary": (msg("a totals or summary row ({words})", words=shown),
                    msg("{n} row(s) that look like a totals or summary row")),
        "separator": (msg("rows below the blank row {row}, where the data end (notes or a "
                          "second table?)", row=separator),
                      msg("{n} row(s) below a blank row")),
        "note": (msg("a note: no participant ID and only one or two cells filled"),
                 msg("{n} row(s) that look like a note")),
    }
    id_name = codebook.id_column
    out = []
    for kind, rows in kinds.items():
        what, found = looks[kind]
        n = len(rows)
        out.append(Finding(
            check="non_participant_rows", columns=(id_name,), rows=tuple(rows),
            message=msg("{n} row(s) of {file} are not participants: {what}", n=n, file=name,
                        what=what),
            expected=msg("one row per participant under one header row, nothing below the data"),
            found=Msg(found.msgid, (("n", n),))))
    return out


def looks_like(names: Iterable[str], site: Site) -> str:
    """The code of another site whose codebook the header fits, else "".

    A site fits when the header holds at least four in five of its codebook's columns
    (identifying columns aside); the best fit wins. Column names only: no cell is read.
    """
    from lacrima.study import load_sites

    header = {_column_key(n) for n in names if n}
    best, share = "", 0.8
    for other in load_sites(site.folder.parent):
        if other.code == site.code:
            continue
        try:
            book = load_codebook(other)
        except (ValueError, OSError):
            continue
        wanted = {_column_key(spec.column) for spec in book.columns.values()}
        fit = len(wanted & header) / len(wanted) if wanted else 0.0
        if fit >= share:
            best, share = other.code, fit
    return best


def _names(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    head = ", ".join(repr(x) for x in names[:limit])
    return head + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _convert(cell: Any, vtype: str, scale: Scale | None, fmt: FileFormat, codes: set[float],
             ranges: list[tuple[float, float]], today: dt.date, rownum: int,
             issues: _Issues) -> Any:
    """One native cell -> canonical value (None when missing); problems go to ``issues``."""
    if cell is None:
        return None
    if isinstance(cell, str):
        text = cell.strip()
        if not text:
            return None
        if looks_like_formula(text):
            issues.add("formula_cells", rownum)
            # Neutralised: kept as inert text where text is kept, else missing.
            return "'" + text if vtype == "string" else None
    if vtype == "string":
        if _is_number(cell):
            return str(int(cell)) if float(cell).is_integer() else str(cell)
        return str(cell).strip()
    if vtype == "date":
        return _convert_date(cell, fmt, today, rownum, issues)
    number = _as_number(cell, fmt, issues)
    if number is not None and _is_missing_code(number, codes, ranges):
        return None
    if vtype in ("bool", "category"):
        if isinstance(cell, bool) and vtype == "bool":
            return cell
        if scale is not None and isinstance(cell, str):
            try:
                return scale.value_of_label(cell)
            except KeyError:
                pass
        if scale is not None and number is not None:
            try:
                return scale.value_of_code(number)
            except KeyError:
                issues.add("unknown_labels", rownum, f"code {_fmt_number(number)}")
                return None
        if scale is None and vtype == "bool" and number in (0.0, 1.0):
            return bool(number)
        issues.add("unknown_labels", rownum, _label_shown(cell))
        return None
    # integer and likert
    if isinstance(cell, str) and scale is not None:
        try:
            return scale.value_of_label(cell)
        except KeyError:
            if number is None:
                issues.add("unknown_labels", rownum, _label_shown(cell))
                return None
    if number is None:
        issues.add("non_numeric", rownum, "text" if isinstance(cell, str) else _kind_of(cell))
        return None
    if fmt.values == "codes" and scale is not None:
        try:
            return int(scale.value_of_code(number))
        except KeyError:
            # A code the scale does not have (REDCap or SPSS 5 on a 0-4 item): never a value.
            issues.add("unknown_codes", rownum, _fmt_number(number))
            return None
        except (TypeError, ValueError):
            pass
    if not float(number).is_integer():
        issues.add("non_numeric", rownum, "a number with decimals")
        return None
    return int(number)


def _as_number(cell: Any, fmt: FileFormat, issues: _Issues) -> float | None:
    if isinstance(cell, bool):
        return None
    if _is_number(cell):
        return None if math.isnan(float(cell)) else float(cell)
    if isinstance(cell, str):
        text = cell.strip()
        if NUMBER.match(text):
            other = "," if fmt.decimal == "." else "."
            if other in text:
                issues.other_decimal = True
            return float(text.replace(",", "."))
    return None


def _is_missing_code(number: float, codes: set[float], ranges: list[tuple[float, float]]) -> bool:
    return number in codes or any(lo <= number <= hi for lo, hi in ranges)


def _convert_date(cell: Any, fmt: FileFormat, today: dt.date, rownum: int, issues: _Issues):
    if isinstance(cell, (dt.datetime, dt.date, pd.Timestamp)):
        value = pd.Timestamp(cell).normalize()
    elif isinstance(cell, str):
        try:
            value = pd.Timestamp(dt.datetime.strptime(cell.strip(), fmt.date_format)).normalize()
        except ValueError:
            issues.add("bad_dates", rownum, "text in another date format")
            return None
    else:
        what = "a number, not a date" if _is_number(cell) else _kind_of(cell)
        issues.add("bad_dates", rownum, what)
        return None
    if value.date() > today:
        issues.add("future_dates", rownum, "dates after today")
    return value


def _kind_of(cell: Any) -> str:
    """What a cell holds, in a spreadsheet's words (never a Python type name)."""
    if isinstance(cell, bool):
        return "a TRUE/FALSE cell"
    if isinstance(cell, (dt.datetime, dt.date, pd.Timestamp)):
        return "a date"
    if isinstance(cell, dt.time):
        return "a time"
    return "a value of another kind"


def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _label_shown(cell: Any) -> str:
    # The cell's text as found; _shown_labels decides whether it may be shown.
    return str(cell).strip()


_WORD = re.compile(r"\w+")


def _vocabulary(codebook: Codebook) -> frozenset[str]:
    """Every word of every answer label of the codebook, case folded."""
    return frozenset(w for scale in codebook.scales.values() for label in scale.labels
                     for w in _WORD.findall(normalise_label(label)))


def _shown_labels(found: list[str], vocabulary: frozenset[str],
                  scale: Scale | None = None) -> tuple[list[str], int]:
    """Unknown labels that may be echoed, and how many may not.

    A cell of a label column can hold anything a person typed ("Mario Rossi mrossi@ex.it"
    in a gender column). Only numeric codes ("code 4"), text made of the codebook's own
    answer words ("Spesso?", "maschio.") and a near miss of one allowed answer (``near_label``:
    "Allways", shown with "did you mean 'Always'?") are shown; anything else is "a value",
    and the row numbers say where to look.
    """
    shown, hidden = [], 0
    for text in found:
        words = _WORD.findall(normalise_label(text))
        near = near_label(text, scale.labels) if scale is not None else ""
        if text.startswith("code "):
            shown.append(msg("code {code}", code=text[5:]))
        elif near:
            shown.append(msg("{value} (did you mean {label}?)", value=repr(text),
                             label=repr(near)))
        elif words and len(text) <= 40 and set(words) <= vocabulary:
            shown.append(repr(text))
        else:
            hidden += 1
    return shown, hidden


def _joined(items) -> Msg | str:
    """Items (texts or messages) as one comma-separated message, each rendered in turn."""
    items = list(items)
    if not any(isinstance(i, Msg) for i in items):
        return ", ".join(map(str, items))
    return Msg(", ".join(f"{{v{k}}}" for k in range(len(items))),
               tuple((f"v{k}", i) for k, i in enumerate(items)))


def _plain(text: str) -> str:
    """Case folded, accents removed: "Sì" and "si" compare equal."""
    decomposed = unicodedata.normalize("NFKD", normalise_label(text))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _edits(a: str, b: str) -> int:
    """Letters to insert, delete or replace to turn ``a`` into ``b`` (``difflib``'s alignment)."""
    import difflib

    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for op, i1, i2, j1, j2 in ops if op != "equal")


def near_label(text: str, labels) -> str:
    """The one allowed answer ``text`` is a misspelling of, else "".

    Case and accents are free; beyond them one letter for an answer of up to four letters and
    two for a longer one. Text further from every answer, or as near to two of them, could be
    a person's words and is not matched (the caller then hides it).

    Examples
    --------
    >>> near_label("Allways", ["Seldom", "Sometimes", "Always"])
    'Always'
    >>> near_label("si", ["Sì", "No"]), near_label("Womenx", ["Woman", "Man"])
    ('Sì', 'Woman')
    >>> near_label("Ann", ["Woman", "Man"]), near_label("Mario Rossi", ["Maschio", "Femmina"])
    ('', '')
    """
    plain = _plain(text)
    if not plain or len(plain) > 40:
        return ""
    scored = []
    for label in dict.fromkeys(str(x) for x in labels):
        target = _plain(label)
        if not target or target.isdigit():
            continue
        limit = 1 if len(target) <= 4 else 2
        if abs(len(target) - len(plain)) <= limit and (d := _edits(plain, target)) <= limit:
            scored.append((d, label))
    scored.sort()
    if not scored or len(scored) > 1 and scored[1][0] == scored[0][0]:
        return ""
    return scored[0][1]


def _human_date(fmt: str) -> str:
    for token, word in DATE_TOKENS.items():
        fmt = fmt.replace(token, word)
    return fmt


def _column_findings(issues: _Issues, column: str, name: str, scale: Scale | None, fmt: FileFormat,
                     today: dt.date, canonical: str = "", vocabulary: frozenset[str] = frozenset(),
                     site: str = "") -> list[Finding]:
    out = []
    label = column_label(repr(column), canonical)
    for check, rows in issues.rows.items():
        found = issues.found.get(check, [])
        k = len(rows)
        if check == "formula_cells":
            out.append(_formula_finding(column, rows, name))
        elif check == "unknown_labels":
            expected = ", ".join(dict.fromkeys(scale.labels)) if scale else ""
            shown, hidden = _shown_labels(found, vocabulary, scale)
            what = _joined(shown[:5])
            if hidden:
                what = msg("{shown}, {hidden} other value(s), not shown: they may be a "
                           "person's words (see the rows)", shown=what, hidden=hidden) if what \
                    else msg("{hidden} value(s), not shown: they may be a person's words (see "
                             "the rows)", hidden=hidden)
            near = [(t, m) for t in found if scale is not None and not t.startswith("code ")
                    and (m := near_label(t, scale.labels))]
            codes = bool(found) and all(t.startswith("code ") for t in found)
            upload = f"`lacrima upload FILE --site {site}`"
            if codes and fmt.values == "labels":
                how = msg("re-export with choice text (the answer labels), not numeric codes, "
                          "then upload the corrected file ({upload})", upload=upload)
            elif near:
                pairs = ", ".join(f"{t!r} → {m!r}" for t, m in near[:3])
                how = (msg("correct the misspelt answers ({pairs}) in your own tool, then "
                           "upload the corrected file ({upload})", pairs=pairs, upload=upload)
                       if len(near) == len(found) else
                       msg("correct the misspelt answers ({pairs}) and the other cells to one "
                           "of the allowed answers in your own tool, then upload the corrected "
                           "file ({upload})", pairs=pairs, upload=upload))
            else:
                how = msg("correct these cells to one of the allowed answers in your own tool, "
                          "then upload the corrected file ({upload})", upload=upload)
            out.append(Finding(
                check=check, columns=(column,), rows=tuple(rows),
                message=msg("{n} cell(s) in column {column} of {file} hold answers not in the "
                            "codebook: {what}; they were read as missing{hint}", n=k,
                            column=label, file=name, what=what, hint=_codes_hint(found, fmt)),
                expected=(msg("one of: {labels}", labels=expected) if scale else
                          msg("a value from the codebook")),
                found=msg("{n} unknown answer(s): {what}", n=len(found), what=what),
                fix=how if site else "",
            ))
        elif check == "unknown_codes":
            allowed = ", ".join(_fmt_number(float(c)) for c in scale.native_codes
                                if isinstance(c, (int, float)) and not isinstance(c, bool))
            out.append(Finding(
                check=check, columns=(column,), rows=tuple(rows),
                message=msg("{n} cell(s) in column {column} of {file} hold codes not in the "
                            "codebook's scale {scale}: {codes}; they were read as missing",
                            n=k, column=label, file=name, scale=repr(scale.name),
                            codes=", ".join(found[:5])),
                expected=msg("one of the codes: {codes}", codes=allowed),
                found=msg("{n} unknown code(s): {codes}", n=len(found),
                          codes=", ".join(found[:5])),
                fix=(msg("correct these cells to one of the codes {codes} in your own tool, then "
                         "upload the corrected file ({upload})", codes=allowed,
                         upload=f"`lacrima upload FILE --site {site}`") if site else ""),
            ))
        elif check == "non_numeric":
            out.append(Finding(
                check=check, columns=(column,), rows=tuple(rows),
                message=(f"{k} cell(s) in column {label} of {name} are not whole numbers; "
                         "read as missing"),
                expected="a whole number", found=", ".join(found),
            ))
        elif check == "bad_dates":
            out.append(Finding(
                check=check, columns=(column,), rows=tuple(rows),
                message=(f"{k} date(s) in column {label} of {name} are not in the format "
                         f"{_human_date(fmt.date_format)}; read as missing"),
                expected=_human_date(fmt.date_format), found=", ".join(found),
            ))
        elif check == "future_dates":
            out.append(Finding(
                check=check, columns=(column,), rows=tuple(rows),
                message=(f"{k} date(s) in column {label} of {name} lie in the future "
                         f"(after {today:%Y-%m-%d})"),
                expected=f"a date on or before {today:%Y-%m-%d}", found="dates in the future",
            ))
    return out


def _codes_hint(found: list[str], fmt: FileFormat) -> str:
    """Why a labels codebook meets numbers: the export setting, named as the tool names it."""
    if fmt.values != "labels" or not found or not all(f.startswith("code ") for f in found):
        return ""
    if fmt.kind == "qualtrics_csv":
        return ('. The file holds numeric codes where the codebook expects choice text: it was '
                'exported with Qualtrics\' "Use numeric values"; export again with "Use choice '
                'text", or declare values = "codes" with native_codes in the codebook')
    return ('. The file holds numeric codes where the codebook expects answer labels (values = '
            '"labels"): export the labels, or declare values = "codes" with native_codes')


def _formula_finding(column: str, rows: list[int], name: str) -> Finding:
    return Finding(
        check="formula_cells", columns=(column,), rows=tuple(rows),
        message=(f"{len(rows)} cell(s) in column {column!r} of {name} look like spreadsheet "
                 "formulas (start with =, +, -, @); they were not evaluated and were kept only "
                 "as inert text"),
        expected="plain values", found="formula-like cells",
    )


def canonical_series(values: list[Any], vtype: str) -> pd.Series:
    """Canonical dtype for one variable: the one place that decides it.

    Parameters
    ----------
    values : list
        Python values, ``None`` for missing.
    vtype : str
        Variable type from the study plan.

    Returns
    -------
    pandas.Series
        ``Int64`` (integer, likert), ``boolean`` (bool), ``datetime64[ns]`` (date) or
        ``str`` (string, category).
    """
    if vtype in ("integer", "likert"):
        return pd.Series(pd.array(values, dtype="Int64"))
    if vtype == "bool":
        return pd.Series(pd.array(values, dtype="boolean"))
    if vtype == "date":
        return pd.Series([pd.NaT if v is None else v for v in values], dtype="datetime64[ns]")
    return pd.Series(values, dtype="str")
