"""Every kind of bad drop of issue 4, end to end: `lacrima check` exit code and message, and
through intake the raw file is kept byte for byte (quarantined whole when invalid).

The reader's own tests (test_native.py) pin each finding's details; here each kind goes
through the data manager's paths.
"""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import openpyxl
import pytest
from typer.testing import CliRunner

from lacrima import catalog, intake
from flows.cli import app
from lacrima.storage import LocalStorage, sha256_bytes
from lacrima.study import load_site
from lacrima.synth import write_drop

N = 30
KEY = b"bad-input-test-key"


@pytest.fixture(scope="module")
def clean(study, tmp_path_factory):
    base = tmp_path_factory.mktemp("clean")
    return {
        "us": write_drop(load_site("us"), study, base / "us.csv", n=N, seed=5),
        "it": write_drop(load_site("it"), study, base / "it.xlsx", n=N, seed=5),
        "il": write_drop(load_site("il"), study, base / "il.sav", n=N, seed=5),
    }


def _rows(path):
    return list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")))


def _write(path, rows, encoding="utf-8-sig", delimiter=","):
    buf = io.StringIO(newline="")
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def _edit_us(clean, out, fn):
    rows = _rows(clean["us"])
    fn(rows, rows[0].index)
    return _write(out, rows)


def _drop_column(rows, k):
    for r in rows:
        del r[k]


def _non_crier_row(rows, col):
    return next(i for i in range(3, len(rows)) if rows[i][col("Q7")] == "No")


def _xlsx(clean, out, fn):
    wb = openpyxl.load_workbook(clean["it"])
    fn(wb.active)
    wb.save(out)
    return out


# kind -> (site, file name, builder(clean, path) -> path, exit code, checks any of)
CASES = {
    "empty file": ("us", "empty.csv", lambda c, p: (p.write_bytes(b""), p)[1], 2, {"empty_file"}),
    "header only": ("us", "header.csv", lambda c, p: _write(p, _rows(c["us"])[:3]), 2,
                    {"no_data_rows"}),
    "binary garbage": ("il", "garbage.sav", lambda c, p: (p.write_bytes(
        np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()), p)[1], 2,
        {"unreadable_sav", "binary_file"}),
    "truncated xlsx": ("it", "cut.xlsx", lambda c, p: (p.write_bytes(
        c["it"].read_bytes()[:2000]), p)[1], 2, {"unreadable_workbook"}),
    "password-protected xlsx": ("it", "locked.xlsx", lambda c, p: (p.write_bytes(
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(4088)), p)[1], 2, {"encrypted_file"}),
    "wrong encoding": ("us", "cp1252.csv", lambda c, p: _write(
        p, [r[:] for r in _rows(c["us"])][:3] + [[*_rows(c["us"])[3][:-1], "café – naïve"]],
        encoding="cp1252"), 2, {"bad_encoding"}),
    "missing column": ("us", "missing.csv", lambda c, p: _edit_us(
        c, p, lambda rows, col: _drop_column(rows, col("Q14_3"))), 1, {"missing_columns"}),
    "renamed column": ("it", "renamed.xlsx", lambda c, p: _xlsx(
        c, p, lambda ws: setattr(ws.cell(row=1, column=7), "value", "Sesso")), 1,
        {"missing_columns"}),
    "duplicated IDs": ("us", "dupes.csv", lambda c, p: _edit_us(
        c, p, lambda rows, col: rows[4].__setitem__(col("ResponseId"), rows[3][col("ResponseId")])),
        1, {"unique_ids"}),
    "labels outside the codebook": ("it", "labels.xlsx", lambda c, p: _xlsx(
        c, p, lambda ws: setattr(ws.cell(row=3, column=7), "value", "Forse")), 1,
        {"unknown_labels"}),
    "out-of-range codes": ("us", "range.csv", lambda c, p: _edit_us(
        c, p, lambda rows, col: rows[5].__setitem__(col("Q3"), "150")), 1, {"value_range"}),
    "episode answers from non-criers": ("us", "episode.csv", lambda c, p: _edit_us(
        c, p, lambda rows, col: rows[_non_crier_row(rows, col)].__setitem__(col("Q9_1"), "Moderately")),
        1, {"episode_blank_for_non_criers"}),
    "future dates": ("us", "future.csv", lambda c, p: _edit_us(
        c, p, lambda rows, col: rows[3].__setitem__(col("RecordedDate"), "2099-01-01 10:00:00")),
        1, {"future_dates"}),
    "dates in the wrong format": ("us", "dates.csv", lambda c, p: _edit_us(
        c, p, lambda rows, col: rows[3].__setitem__(col("RecordedDate"), "01/31/2024 10:00")),
        1, {"bad_dates"}),
    "formula-like cells": ("us", "formula.csv", lambda c, p: _edit_us(
        c, p, lambda rows, col: rows[3].__setitem__(col("Q4"), "=cmd|' /C calc'!A0")), 1,
        {"formula_cells"}),
    "file for the wrong site": ("us", "italian.xlsx", lambda c, p: shutil.copy(c["it"], p) and p, 1,
                                {"unexpected_format", "missing_columns"}),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_check_exit_code_and_report(kind, clean, tmp_path):
    site, name, build, code, checks = CASES[kind]
    path = build(clean, tmp_path / name)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["check", str(path), "--site", site, "--report", str(report)])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    found = {f["check"] for f in json.loads(report.read_text())["findings"] if f["severity"] == "error"}
    assert found & checks, f"{kind}: expected one of {checks}, got {found}"
    assert all(f["message"] for f in json.loads(report.read_text())["findings"])


@pytest.mark.parametrize("kind", list(CASES))
def test_intake_keeps_the_raw_file_and_quarantines_it_whole(kind, clean, study, tmp_path):
    site, name, build, _, checks = CASES[kind]
    path = build(clean, tmp_path / name)
    data = path.read_bytes()
    storage = LocalStorage(tmp_path / "store")
    # Put in the landing zone as `aws s3 cp` or SFTP would: `lacrima upload` refuses some
    # of these before copying (test_upload_refuses_what_the_run_would_refuse).
    storage.write_bytes(f"landing/{site}/{name}", data)
    res = intake.ingest_site(storage, load_site(site), study, KEY)
    sha = sha256_bytes(data)
    assert res.quarantined == (sha,) and not res.accepted
    (raw,) = storage.list(f"raw/{site}")
    assert storage.read_bytes(raw.key) == data
    assert storage.read_bytes(f"quarantine/{site}/{sha}/{intake.safe_name(name)}") == data
    assert not storage.list(f"curated/{site}")
    (rec,) = catalog.batches(storage, site)
    assert rec.state == "quarantined" and set(rec.reason.split("; ")) & checks


def test_warnings_only_are_accepted_bom_semicolon_extra_and_identifying_columns(clean, study, tmp_path):
    """BOM missing, semicolons, an extra column and an identifying column: read, reported, accepted."""
    rows = _rows(clean["us"])
    for i, r in enumerate(rows):
        r.append("Notes" if i == 0 else "")
        r.append("Phone number" if i == 0 else ("555-0100" if i > 2 else ""))
    path = _write(tmp_path / "semi.csv", rows, encoding="utf-8", delimiter=";")
    storage = LocalStorage(tmp_path / "store")
    intake.upload(storage, load_site("us"), path)
    res = intake.ingest_site(storage, load_site("us"), study, KEY)
    assert res.accepted and not res.quarantined
    (report,) = res.reports
    warned = {f.check for f in report.findings}
    assert {"delimiter", "unexpected_columns", "identifying_columns"} <= warned
    assert "Phone number" in report.identifying_dropped
    text = "".join(storage.read_bytes(o.key).decode("latin-1") for o in storage.list("curated"))
    assert "555-0100" not in text


def test_ids_clashing_with_an_accepted_batch(clean, study, tmp_path):
    storage = LocalStorage(tmp_path / "store")
    us = load_site("us")
    intake.upload(storage, us, clean["us"])
    assert intake.ingest_site(storage, us, study, KEY).accepted
    changed = _edit_us(clean, tmp_path / "again.csv",
                       lambda rows, col: rows[3].__setitem__(col("Q3"), str(int(rows[3][col("Q3")]) + 1)))
    intake.upload(storage, us, changed)
    res = intake.ingest_site(storage, us, study, KEY)
    assert res.quarantined and {f.check for f in res.reports[0].errors} == {"id_clash"}
    assert storage.read_bytes(next(o.key for o in storage.list("raw/us")
                                   if sha256_bytes(changed.read_bytes()) in o.key)) == changed.read_bytes()


def test_huge_file_is_refused_unread_but_kept(clean, study, tmp_path, monkeypatch):
    sites = tmp_path / "sites"
    shutil.copytree(study.path.parent, sites)
    toml = sites / "study.toml"
    toml.write_text(toml.read_text().replace("max_file_mb = 200", "max_file_mb = 0.001"))
    monkeypatch.setenv("LACRIMA_SITES", str(sites))
    from lacrima.study import load_study

    small_study = load_study()
    result = CliRunner().invoke(app, ["check", str(clean["us"]), "--site", "us"])
    assert result.exit_code == 2 and "file_too_large" in result.output
    storage = LocalStorage(tmp_path / "store")
    us = load_site("us")
    # `lacrima upload` refuses it before copying (nothing lands, nothing is kept) ...
    result = CliRunner().invoke(app, ["upload", str(clean["us"]), "--site", "us",
                                      "--storage", str(tmp_path / "store")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "not uploaded (file_too_large)" in said, said
    assert "drops up to 0 MB are read" in said and not storage.list("")
    # ... and a run given it another way (aws s3 cp, SFTP) refuses it unread, keeping it.
    storage.write_bytes("landing/us/big.csv", clean["us"].read_bytes())
    res = intake.ingest_site(storage, us, small_study, KEY)
    assert res.quarantined
    assert storage.read_bytes(storage.list("raw/us")[0].key) == clean["us"].read_bytes()


@pytest.mark.parametrize("kind", ["empty file", "password-protected xlsx",
                                  "file for the wrong site"])
def test_upload_refuses_what_the_run_would_refuse(kind, clean, study, tmp_path):
    # Before: `lacrima upload` copied anything (a 300 MB CSV the run then refused, and kept).
    site, name, build, _, checks = CASES[kind]
    path = build(clean, tmp_path / name)
    storage = LocalStorage(tmp_path / "store")
    with pytest.raises(intake.UploadRefused) as err:
        intake.upload(storage, load_site(site), path)
    assert err.value.finding.check in checks and name in str(err.value)
    assert not storage.list("")                       # nothing copied
    result = CliRunner().invoke(app, ["upload", str(path), "--site", site,
                                      "--storage", str(tmp_path / "store")])
    assert result.exit_code == 2 and f"not uploaded ({err.value.finding.check})" in result.output
    assert "Traceback" not in result.output and not storage.list("")
    # the portal's check, before it reads a streamed file: type from the name, size limit
    assert intake.upload_refusal(load_site(site), study, name) == (
        err.value.finding if err.value.finding.check == "unexpected_format" else None)
    assert intake.max_upload_bytes(study) == 200_000_000


@pytest.mark.parametrize("name", ["../../etc/passwd.csv", "a/b\\c.csv", "drop (1) – é;#.csv"])
def test_file_names_with_separators_or_odd_characters_stay_inside_the_store(name, clean, study,
                                                                             tmp_path):
    src = tmp_path / "src.csv"
    shutil.copy(clean["us"], src)
    storage = LocalStorage(tmp_path / "store")
    key = intake.upload(storage, load_site("us"), src)
    storage.write_bytes(key.rsplit("/", 1)[0] + "/" + intake.safe_name(name), src.read_bytes())
    intake.ingest_site(storage, load_site("us"), study, KEY)
    for obj in storage.list(""):
        assert (tmp_path / "store").resolve() in (tmp_path / "store" / obj.key).resolve().parents
    assert all(".." not in o.key and "\\" not in o.key for o in storage.list(""))
