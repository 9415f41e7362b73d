"""Reading native drops: round trips per site and every kind of broken drop.

Each bad-input test asserts the DropError/Finding check name and that the message
names the file or the column; no test expects anything else to escape read_drop.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import shutil

import numpy as np
import openpyxl
import pandas as pd
import pyreadstat
import pytest

from lacrima.findings import DropError
from lacrima.native import read_drop
from lacrima.study import load_site
from lacrima.synth import simulate, write_drop

SEED = 20240601
N = 40


@pytest.fixture(scope="module")
def sites():
    return {c: load_site(c) for c in ("us", "it", "il")}


@pytest.fixture(scope="module")
def drops(study, sites, tmp_path_factory):
    """One clean synthetic drop per site and format, written once for the module."""
    base = tmp_path_factory.mktemp("drops")
    return {
        "us": write_drop(sites["us"], study, base / "us.csv", n=N, seed=SEED),
        "it": write_drop(sites["it"], study, base / "it.xlsx", n=N, seed=SEED),
        "it_csv": write_drop(sites["it"], study, base / "it.csv", n=N, seed=SEED, format="csv"),
        "il": write_drop(sites["il"], study, base / "il.sav", n=N, seed=SEED),
    }


def checks(drop, severity=None):
    return {f.check for f in drop.findings if severity is None or f.severity == severity}


def finding(drop, check):
    found = [f for f in drop.findings if f.check == check]
    assert found, f"no {check!r} finding among {[f.check for f in drop.findings]}"
    return found[0]


# -- helpers that edit a drop the way a data manager's tools would -------------------------


def read_rows(path, encoding="utf-8-sig", delimiter=","):
    text = path.read_bytes().decode(encoding)
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))


def write_rows(path, rows, encoding="utf-8-sig", delimiter=","):
    buf = io.StringIO(newline="")
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def edit_us(src, dst, fn):
    rows = read_rows(src)
    fn(rows)
    return write_rows(dst, rows)


def edit_xlsx(src, dst, fn):
    wb = openpyxl.load_workbook(src)
    fn(wb.active)
    wb.save(dst)
    return dst


def col(rows, name):
    return rows[0].index(name)


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("key, code", [("us", "us"), ("it", "it"), ("it_csv", "it"), ("il", "il")])
def test_round_trip_equals_simulate(study, sites, drops, key, code):
    drop = read_drop(drops[key], sites[code], study)
    expected = simulate(sites[code], study, N, SEED)
    pd.testing.assert_frame_equal(drop.frame, expected)
    assert drop.ok, [f.message for f in drop.errors]
    assert drop.n_rows == N


@pytest.mark.parametrize("key, code, first_row", [
    ("us", "us", 4), ("it", "it", 2), ("it_csv", "it", 2), ("il", "il", 1),
])
def test_row_numbers_are_spreadsheet_rows(study, sites, drops, key, code, first_row):
    # Qualtrics: 3 header rows, so the first answer is Excel row 4; workbook/CSV row 2;
    # SPSS: case number 1.
    drop = read_drop(drops[key], sites[code], study)
    assert drop.row_numbers == tuple(range(first_row, first_row + N))


def test_frame_dtypes(study, sites, drops):
    frame = read_drop(drops["us"], sites["us"], study).frame
    assert list(frame.columns) == ["site", *study.variables]
    assert frame["wai_01"].dtype == "Int64"
    assert frame["consent"].dtype == "boolean"
    assert frame["completed_at"].dtype == "datetime64[ns]"
    assert (frame["completed_at"] == frame["completed_at"].dt.normalize()).all()
    assert frame["gender"].dtype == "str" and frame["participant_id"].dtype == "str"


def test_qualtrics_identifying_metadata_is_dropped_by_name_only(study, sites, drops):
    drop = read_drop(drops["us"], sites["us"], study)
    assert set(drop.identifying_dropped) == {
        "IPAddress", "RecipientLastName", "RecipientFirstName", "RecipientEmail",
        "ExternalReference", "LocationLatitude", "LocationLongitude"}
    # listed in the codebook: removed as designed, information rather than a warning
    assert finding(drop, "identifying_columns").severity == "info"
    assert "unexpected_columns" not in checks(drop)       # StartDate, Status ... are known metadata
    ips = [r[col(read_rows(drops["us"]), "IPAddress")] for r in read_rows(drops["us"])[3:]]
    text = " ".join(f.message + f.found for f in drop.findings)
    assert not any(ip in text for ip in ips)


# -- unreadable files: DropError -----------------------------------------------------------


def test_empty_file(study, sites, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(DropError) as exc:
        read_drop(path, sites["us"], study)
    assert exc.value.check == "empty_file" and "'empty.csv'" in exc.value.message


def test_header_only(study, sites, drops, tmp_path):
    path = write_rows(tmp_path / "header only.csv", read_rows(drops["us"])[:3])
    with pytest.raises(DropError) as exc:
        read_drop(path, sites["us"], study)
    assert exc.value.check == "no_data_rows" and "header only.csv" in exc.value.message


@pytest.mark.parametrize("code, name, check", [
    ("us", "garbage.csv", "binary_file"),
    ("it", "garbage.xlsx", "unreadable_workbook"),
    ("il", "garbage.sav", "unreadable_sav"),
])
def test_binary_garbage(study, sites, tmp_path, code, name, check):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DropError) as exc:
        read_drop(path, sites[code], study)
    assert exc.value.check == check and name in exc.value.message


def test_truncated_xlsx(study, sites, drops, tmp_path):
    data = drops["it"].read_bytes()
    path = tmp_path / "troncato.xlsx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DropError) as exc:
        read_drop(path, sites["it"], study)
    assert exc.value.check == "unreadable_workbook" and "troncato.xlsx" in exc.value.message


def test_truncated_sav(study, sites, drops, tmp_path):
    data = drops["il"].read_bytes()
    path = tmp_path / "cut.sav"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DropError) as exc:
        read_drop(path, sites["il"], study)
    assert exc.value.check == "unreadable_sav" and "cut.sav" in exc.value.message


def test_password_protected_xlsx(study, sites, tmp_path):
    # Excel saves an encrypted workbook as an OLE2 compound file, whatever the extension.
    path = tmp_path / "protetto.xlsx"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(4088))
    with pytest.raises(DropError) as exc:
        read_drop(path, sites["it"], study)
    assert exc.value.check == "encrypted_file" and "protetto.xlsx" in exc.value.message


def test_wrong_encoding(study, sites, drops, tmp_path):
    rows = read_rows(drops["us"])
    rows[1][col(rows, "Q1")] = "I agree – you’re informed"          # en dash, curly quote
    path = write_rows(tmp_path / "cp1252.csv", rows, encoding="cp1252")
    with pytest.raises(DropError) as exc:
        read_drop(path, sites["us"], study)
    assert exc.value.check == "bad_encoding" and "cp1252.csv" in exc.value.message
    assert "utf-8-sig" in exc.value.message and "line 2" in exc.value.message


def test_utf16_is_an_encoding_error(study, sites, drops, tmp_path):
    path = tmp_path / "unicode.csv"
    path.write_bytes(drops["us"].read_bytes().decode("utf-8-sig").encode("utf-16"))
    with pytest.raises(DropError) as exc:
        read_drop(path, sites["us"], study)
    assert exc.value.check == "bad_encoding" and "UTF-16" in exc.value.message


# -- encodings, BOM, delimiters, decimal marks: read, with a warning when unusual -------------


def test_bom_optional(study, sites, drops, tmp_path):
    no_bom = tmp_path / "no_bom.csv"
    no_bom.write_bytes(drops["us"].read_bytes().removeprefix(b"\xef\xbb\xbf"))
    with_bom = read_drop(drops["us"], sites["us"], study).frame
    assert read_drop(no_bom, sites["us"], study).frame.equals(with_bom)
    # Italian CSV saved as "CSV UTF-8" (with BOM) instead of cp1252: still read.
    rows = read_rows(drops["it_csv"], encoding="cp1252", delimiter=";")
    utf8 = write_rows(tmp_path / "utf8.csv", rows, encoding="utf-8-sig", delimiter=";")
    drop = read_drop(utf8, sites["it"], study)
    assert drop.ok and drop.frame.equals(simulate(sites["it"], study, N, SEED))


def test_semicolon_instead_of_comma(study, sites, drops, tmp_path):
    path = write_rows(tmp_path / "semi.csv", read_rows(drops["us"]), delimiter=";")
    drop = read_drop(path, sites["us"], study)
    f = finding(drop, "delimiter")
    assert f.severity == "warning" and "semi.csv" in f.message and f.found == "';'"
    pd.testing.assert_frame_equal(drop.frame, simulate(sites["us"], study, N, SEED))


def test_decimal_comma(study, sites, drops, tmp_path):
    def edit(rows):
        rows[3][col(rows, "Q3")] = rows[3][col(rows, "Q3")] + ",0"   # "30,0" from a European Excel
        rows[4][col(rows, "Q5")] = "6.5"                            # not a whole number
    drop = read_drop(edit_us(drops["us"], tmp_path / "dec.csv", edit), sites["us"], study)
    f = finding(drop, "decimal_mark")
    assert f.severity == "warning" and f.columns == ("Q3",)
    expected = simulate(sites["us"], study, N, SEED)
    assert drop.frame.loc[0, "age"] == expected.loc[0, "age"]
    bad = finding(drop, "non_numeric")
    assert bad.columns == ("Q5",) and bad.rows == (5,) and bad.severity == "error"
    assert pd.isna(drop.frame.loc[1, "therapy_months"])


# -- columns: missing, renamed, extra, identifying, wrong site ------------------------------


def test_missing_column(study, sites, drops, tmp_path):
    def edit(rows):
        k = col(rows, "Q14_3")
        for r in rows:
            del r[k]
    drop = read_drop(edit_us(drops["us"], tmp_path / "missing.csv", edit), sites["us"], study)
    f = finding(drop, "missing_columns")
    assert f.severity == "error" and f.columns == ("Q14_3",) and "'Q14_3'" in f.message
    assert "wai_03" in drop.frame.columns and drop.frame["wai_03"].isna().all()


def test_renamed_column(study, sites, drops, tmp_path):
    path = edit_xlsx(drops["it"], tmp_path / "rinominato.xlsx",
                     lambda ws: setattr(ws.cell(row=1, column=7), "value", "Sesso"))
    drop = read_drop(path, sites["it"], study)
    assert finding(drop, "missing_columns").columns == ("Genere",)
    unexpected = finding(drop, "unexpected_columns")
    assert unexpected.columns == ("Sesso",) and unexpected.severity == "warning"


def test_extra_column_is_a_warning(study, sites, drops, tmp_path):
    def edit(rows):
        for k, r in enumerate(rows):
            r.append("Notes" if k == 0 else "")
        rows[5][-1] = "called back"
    drop = read_drop(edit_us(drops["us"], tmp_path / "extra.csv", edit), sites["us"], study)
    assert finding(drop, "unexpected_columns").columns == ("Notes",)
    assert drop.ok


@pytest.mark.parametrize("name", ["Phone number", "Client e-mail", "home address"])
def test_unexpected_identifying_column(study, sites, drops, tmp_path, name):
    secret = "maria.rossi@example.org"

    def edit(ws):
        ws.cell(row=1, column=ws.max_column + 1, value=name)
        for r in range(2, ws.max_row + 1):
            ws.cell(row=r, column=ws.max_column, value=secret)
    drop = read_drop(edit_xlsx(drops["it"], tmp_path / "ident.xlsx", edit), sites["it"], study)
    f = finding(drop, "identifying_columns")
    assert f.columns == (name,) and name in f.message and f.severity == "warning"
    assert name in drop.identifying_dropped
    assert all(secret not in (x.message + x.found + x.expected) for x in drop.findings)
    assert not drop.frame.isin([secret]).any().any()


def test_italian_workbook_offered_as_us(study, sites, drops):
    drop = read_drop(drops["it"], sites["us"], study)       # never re-routed to 'it'
    assert finding(drop, "unexpected_format").severity == "error"
    missing = finding(drop, "missing_columns")
    assert "ResponseId" in missing.columns and "Q14_1" in missing.columns
    assert (drop.frame["site"] == "us").all() and drop.frame["wai_01"].isna().all()


def test_us_csv_offered_as_it(study, sites, drops):
    drop = read_drop(drops["us"], sites["it"], study)
    # another site's export: that is the one thing said (issue 22), not its delimiter
    assert drop.looks_like == "us" and [f.check for f in drop.findings] == ["missing_columns"]
    assert "Genere" in finding(drop, "missing_columns").columns


# -- cells: labels, codes, dates, formulas ------------------------------------------------------


def test_labels_outside_the_codebook(study, sites, drops, tmp_path):
    path = edit_xlsx(drops["it"], tmp_path / "etichette.xlsx",
                     lambda ws: setattr(ws.cell(row=4, column=7), "value", "Spesso?"))
    drop = read_drop(path, sites["it"], study)
    f = finding(drop, "unknown_labels")
    assert f.columns == ("Genere",) and f.rows == (4,) and "'Spesso?'" in f.message
    assert pd.isna(drop.frame.loc[2, "gender"])        # spreadsheet row 4 = third data row


def test_sav_code_outside_value_labels_and_user_missing(study, sites, drops, tmp_path):
    df, meta = pyreadstat.read_sav(str(drops["il"]), user_missing=True)
    df.loc[0, "gender"] = 4          # no value label for 4
    df.loc[1, "wai1"] = 99           # declared user-missing
    df.loc[2, "age"] = 999           # user-missing for age (codebook missing_codes)
    df.loc[3, "wai2"] = 6            # not among the scale's native codes 1-5
    path = tmp_path / "edited.sav"
    pyreadstat.write_sav(df, str(path), column_labels=meta.column_names_to_labels,
                         variable_value_labels=meta.variable_value_labels,
                         missing_ranges={**meta.missing_ranges, "age": [999.0]})
    drop = read_drop(path, sites["il"], study)
    f = finding(drop, "unknown_labels")
    assert f.columns == ("gender",) and f.rows == (1,) and "code 4" in f.message
    frame = drop.frame
    assert pd.isna(frame.loc[0, "gender"]) and pd.isna(frame.loc[1, "wai_01"])
    assert pd.isna(frame.loc[2, "age"])
    codes = finding(drop, "unknown_codes")
    assert codes.columns == ("wai2",) and codes.rows == (4,) and "1, 2, 3, 4, 5" in codes.expected
    assert pd.isna(frame.loc[3, "wai_02"])
    assert {f.check for f in drop.errors} == {"unknown_labels", "unknown_codes"}


def test_dates_in_the_wrong_format_or_future(study, sites, drops, tmp_path):
    rows = read_rows(drops["it_csv"], encoding="cp1252", delimiter=";")
    k = col(rows, "Data compilazione")
    rows[1][k] = "2024-03-05"          # ISO instead of dd/mm/yyyy
    rows[2][k] = "31/12/2099"
    path = write_rows(tmp_path / "date.csv", rows, encoding="cp1252", delimiter=";")
    drop = read_drop(path, sites["it"], study, today=dt.date(2025, 1, 1))
    bad = finding(drop, "bad_dates")
    assert bad.rows == (2,) and bad.columns == ("Data compilazione",)
    assert bad.expected == "dd/mm/yyyy"
    future = finding(drop, "future_dates")
    assert future.rows == (3,) and "2025-01-01" in future.message
    assert pd.isna(drop.frame.loc[0, "completed_at"])


def test_formula_cells_in_workbook_are_never_evaluated(study, sites, drops, tmp_path):
    def edit(ws):
        ws.cell(row=2, column=7, value="=cmd|' /C calc'!A0")      # text cell, DDE payload
        ws.cell(row=3, column=6, value="=1+1")                    # a real formula cell
        ws.cell(row=4, column=1, value="=HYPERLINK(\"http://x\")")
    drop = read_drop(edit_xlsx(drops["it"], tmp_path / "formule.xlsx", edit), sites["it"], study)
    found = {f.columns[0]: f for f in drop.findings if f.check == "formula_cells"}
    assert set(found) == {"Genere", "Età", "ID"}
    assert found["Genere"].rows == (2,) and found["Età"].rows == (3,) and found["ID"].rows == (4,)
    assert all(f.severity == "error" for f in found.values())
    frame = drop.frame
    assert pd.isna(frame.loc[0, "gender"]) and pd.isna(frame.loc[1, "age"])     # not 2
    assert frame.loc[2, "participant_id"].startswith("'=")                      # inert text
    assert "cmd" not in " ".join(f.message for f in drop.findings)


def test_formula_cells_in_csv(study, sites, drops, tmp_path):
    def edit(rows):
        rows[3][col(rows, "Q4")] = "@SUM(1+1)*cmd|' /C calc'!A0"
        rows[4][col(rows, "Q3")] = "-2+3"
        rows[5][col(rows, "Q5")] = "-3"        # a negative number is data, not a formula
    drop = read_drop(edit_us(drops["us"], tmp_path / "inject.csv", edit), sites["us"], study)
    found = {f.columns[0]: f.rows for f in drop.findings if f.check == "formula_cells"}
    assert found == {"Q4": (4,), "Q3": (5,)}
    assert drop.frame.loc[2, "therapy_months"] == -3


@pytest.mark.parametrize("name", [
    "drop (copy) 'final' – é #1.csv", "  spaces  .csv", "dati;v2,ok.csv",
])
def test_odd_file_names(study, sites, drops, tmp_path, name):
    path = tmp_path / name
    shutil.copy(drops["us"], path)
    assert read_drop(path, sites["us"], study).frame.equals(simulate(sites["us"], study, N, SEED))
    empty = tmp_path / ("empty " + name)
    empty.write_bytes(b"")
    with pytest.raises(DropError) as exc:
        read_drop(empty, sites["us"], study)
    assert repr(empty.name) in exc.value.message


def test_missing_file(study, sites, tmp_path):
    with pytest.raises(DropError) as exc:
        read_drop(tmp_path / "nowhere.sav", sites["il"], study)
    assert exc.value.check == "missing_file" and "nowhere.sav" in exc.value.message


@pytest.mark.parametrize("code", ["us", "it", "il"])
def test_messy_drop_reads_with_findings(study, sites, tmp_path, code):
    path = write_drop(sites[code], study, tmp_path, n=N, seed=SEED, mess=True)
    drop = read_drop(path, sites[code], study)
    assert "unknown_labels" in checks(drop, "error")
    assert "identifying_columns" in checks(drop)
    frame = drop.frame
    assert frame["participant_id"].duplicated().any()                  # for validation to catch
    if code == "il":                       # codes file: a 7 on a 1-5 scale is not a code
        assert "unknown_codes" in checks(drop, "error")
    else:                                  # numbers in label files: validation's range check
        assert (frame["wai_03"] == 7).any()
    noncrier = frame["cried_in_therapy"] == False  # noqa: E712
    assert frame.loc[noncrier, "after_relaxed"].notna().any()
    assert frame[[c for c in frame if c.startswith(("wai_", "ctsc_"))]].isna().any().any()


def test_qualtrics_export_without_import_id_row_loses_no_answers(study, sites, drops, tmp_path):
    rows = read_rows(drops["us"])
    # names, question text, data: no ImportId row
    path = write_rows(tmp_path / "legacy.csv", rows[:2] + rows[3:])
    drop = read_drop(path, sites["us"], study)
    f = finding(drop, "header_rows")
    assert f.severity == "warning" and "legacy.csv" in f.message
    assert drop.n_rows == N and drop.row_numbers[0] == 3
    pd.testing.assert_frame_equal(drop.frame, simulate(sites["us"], study, N, SEED))


def test_decomposed_unicode_header_is_the_same_column(study, sites, drops, tmp_path):
    path = edit_xlsx(drops["it"], tmp_path / "mac.xlsx",
                     lambda ws: setattr(ws.cell(row=1, column=6), "value", "Eta\u0300"))
    drop = read_drop(path, sites["it"], study)
    assert drop.ok and drop.frame["age"].notna().all()


# -- never a traceback: arbitrary bytes and arbitrary cells ----------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(min_size=0, max_size=600),
       suffix=st.sampled_from([".csv", ".xlsx", ".sav", ".txt", ""]),
       code=st.sampled_from(["us", "it", "il"]))
def test_arbitrary_bytes_never_escape(study, sites, tmp_path, data, suffix, code):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        drop = read_drop(path, sites[code], study)
    except DropError as exc:
        assert exc.check and path.name in exc.message
    else:
        assert drop.n_rows == len(drop.frame) == len(drop.row_numbers)


@FUZZ
@given(cells=st.lists(st.text(max_size=12), min_size=3, max_size=3), row=st.integers(0, N - 1))
def test_arbitrary_cells_become_findings(study, sites, drops, tmp_path, cells, row):
    rows = read_rows(drops["us"])
    for name, value in zip(("Q4", "Q3", "RecordedDate"), cells):
        rows[3 + row][col(rows, name)] = value.replace("\x00", "")
    path = write_rows(tmp_path / "cells.csv", rows)
    drop = read_drop(path, sites["us"], study)
    assert drop.n_rows >= N - 1          # a cell of only line breaks may blank a whole row
    for f in drop.findings:
        assert f.columns and (f.severity in ("warning", "info") or f.rows
                              or f.check == "missing_columns")


def test_carriage_return_inside_the_first_line_is_no_traceback(study, sites, tmp_path):
    # found by test_arbitrary_bytes_never_escape: csv.Error "new-line character seen in
    # unquoted field" escaped the delimiter sniffing
    path = tmp_path / "cr.csv"
    path.write_bytes(b"a\rb,c\n1")
    drop = read_drop(path, sites["us"], study)
    assert "missing_columns" in checks(drop)
