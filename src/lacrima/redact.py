"""Redacted copies of native drops: the same file without some participants' rows.

Used by ``lacrima withdraw --purge-raw`` (the one audited exception to immutable raw). Each
format is rewritten with the library that reads it: text with :mod:`csv` in the codebook's
encoding and delimiter, workbooks with openpyxl (rows deleted in place, everything else kept),
SPSS files with pyreadstat (variable labels, value labels and user-missing ranges kept).
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

from lacrima.codebook import Codebook, FileFormat


def redact(data: bytes, name: str, codebook: Codebook, rows: set[int]) -> bytes:
    """``data`` without the given rows.

    Parameters
    ----------
    data : bytes
        A native drop the site's codebook reads.
    name : str
        Its file name (the extension chooses the format).
    codebook : Codebook
    rows : set of int
        Rows as ``NativeDrop.row_numbers`` gives them: the spreadsheet row (header rows
        included) of a text file or workbook, the case number (from 1) of an SPSS file.

    Returns
    -------
    bytes
        The redacted file, in the same format.
    """
    fmt = codebook.format_for(name)
    if fmt is None:
        raise ValueError(f"{name}: not a file type site {codebook.site!r} sends")
    if fmt.kind == "xlsx":
        return _xlsx(data, fmt, rows)
    if fmt.kind == "sav":
        return _sav(data, rows)
    return _text(data, fmt, rows)


def _text(data: bytes, fmt: FileFormat, rows: set[int]) -> bytes:
    for encoding in fmt.encodings or ("utf-8-sig",):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise ValueError(f"cannot decode the file as {', '.join(fmt.encodings)}")
    bom = text.startswith("\ufeff")
    text = text.lstrip("\ufeff")
    first = text.split("\n", 1)[0]
    delimiter = fmt.delimiter if fmt.delimiter in first else max(",;\t|", key=first.count)
    records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    kept = [r for k, r in enumerate(records) if k + 1 not in rows]
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows(kept)
    out = buf.getvalue()
    return (("\ufeff" if bom and not encoding.endswith("-sig") else "") + out).encode(encoding)


def _xlsx(data: bytes, fmt: FileFormat, rows: set[int]) -> bytes:
    import openpyxl

    wb = openpyxl.load_workbook(io.BytesIO(data))
    ws = wb[fmt.sheet] if fmt.sheet and fmt.sheet in wb.sheetnames else wb[wb.sheetnames[0]]
    for r in sorted(rows, reverse=True):
        ws.delete_rows(r)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _sav(data: bytes, rows: set[int]) -> bytes:
    import pyreadstat

    with tempfile.TemporaryDirectory(prefix="lacrima-redact-") as tmp:
        src, dst = Path(tmp) / "in.sav", Path(tmp) / "out.sav"
        src.write_bytes(data)
        frame, meta = pyreadstat.read_sav(str(src), user_missing=True)
        frame = frame.drop(index=[r - 1 for r in rows if 0 < r <= len(frame)])
        pyreadstat.write_sav(frame.reset_index(drop=True), str(dst),
                             column_labels=meta.column_names_to_labels,
                             variable_value_labels=meta.variable_value_labels,
                             missing_ranges=meta.missing_ranges,
                             variable_measure=meta.variable_measure)
        return dst.read_bytes()
