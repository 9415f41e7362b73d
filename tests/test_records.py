"""Records, not files: re-exports, re-sorts and re-saves add only their new records (issue 11).

Each drop is compared record by record with the site's register: records held unchanged are
counted and not stored again, new ones are accepted, changed ones are an ``id_clash`` that
names row, column, held and new value.
"""

import csv
import io

import pandas as pd
import pytest

from lacrima import catalog, intake
from lacrima.codebook import load_codebook
from lacrima.storage import LocalStorage
from lacrima.synth import write_drop

KEY = b"records-test-key-0123456789"


def _site(sites, code):
    return next(s for s in sites if s.code == code)


def _rows(path, header_rows, encoding="utf-8-sig", delimiter=","):
    text = path.read_bytes().decode(encoding)
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    return rows[:header_rows], [r for r in rows[header_rows:] if r]


def _write_rows(path, header, rows, encoding="utf-8-sig", delimiter=","):
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerows(header + rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def _ingest(storage, site, study, path, replaces=""):
    intake.upload(storage, site, path, uploader="t", replaces=replaces)
    return intake.ingest_site(storage, site, study, KEY)


def _only(res):
    (report,) = res.reports
    return report


def test_italy_resaved_as_csv_is_accepted_with_nothing_new(tmp_path, study, sites):
    # What `make demo` run twice and a re-save in Excel do: the same records, other bytes.
    it = _site(sites, "it")
    storage = LocalStorage(tmp_path / "store")
    first = _ingest(storage, it, study, write_drop(it, study, tmp_path / "a", n=20, seed=1))
    before = intake.curated_frame(storage, "it")
    again = _ingest(storage, it, study,
                    write_drop(it, study, tmp_path / "b", n=20, seed=1, format="csv"))
    assert len(first.accepted) == 1 and len(again.accepted) == 1, _only(again).findings
    rec = intake.batches(storage, "it")[-1]
    assert (rec.records_new, rec.records_held) == (0, 20)
    assert again.records_held == 20 and again.records_new == 0
    pd.testing.assert_frame_equal(intake.curated_frame(storage, "it"), before)


def test_cumulative_then_resorted_exports_add_only_new_records(tmp_path, study, sites):
    us = _site(sites, "us")
    storage = LocalStorage(tmp_path / "store")
    a = write_drop(us, study, tmp_path / "a", n=20, seed=1)
    b = write_drop(us, study, tmp_path / "b", n=10, seed=2, id_offset=20)
    header, rows_a = _rows(a, 3)
    _, rows_b = _rows(b, 3)
    cumulative = _write_rows(tmp_path / "cumulative.csv", header, rows_a + rows_b)
    resorted = _write_rows(tmp_path / "resorted.csv", header, (rows_a + rows_b)[::-1])
    assert len(_ingest(storage, us, study, a).accepted) == 1
    res = _ingest(storage, us, study, cumulative)
    assert len(res.accepted) == 1, _only(res).findings
    assert (res.records_new, res.records_held) == (10, 20)
    res = _ingest(storage, us, study, resorted)
    assert len(res.accepted) == 1, _only(res).findings
    assert (res.records_new, res.records_held) == (0, 30)
    curated = intake.curated_frame(storage, "us")
    assert len(curated) == 30 and curated["participant_id"].is_unique
    # each batch stores only the records it brought
    stored = [len(pd.read_parquet(io.BytesIO(storage.read_bytes(r.curated_key))))
              for r in intake.batches(storage, "us")]
    assert sorted(stored) == [0, 10, 20]


def test_a_changed_record_is_a_clash_naming_row_column_held_and_new_value(tmp_path, study, sites):
    us = _site(sites, "us")
    storage = LocalStorage(tmp_path / "store")
    a = write_drop(us, study, tmp_path / "a", n=20, seed=1)
    header, rows = _rows(a, 3)
    col = header[0].index(load_codebook(us).native_name("age"))
    held = rows[4][col]
    rows[4][col] = str(int(held) + 1)
    changed = _write_rows(tmp_path / "changed.csv", header, rows)
    _ingest(storage, us, study, a)
    res = _ingest(storage, us, study, changed)
    assert res.quarantined and not res.accepted
    clashes = [f for f in _only(res).errors if f.check == "id_clash"]
    assert len(clashes) == 1
    (f,) = clashes
    assert f.rows == (3 + 5,)           # three header rows, then the fifth participant
    assert f.columns == ("age",) or load_codebook(us).native_name("age") in f.columns
    assert held in f.expected and str(int(held) + 1) in f.found
    assert len(intake.curated_frame(storage, "us")) == 20


def test_fingerprints_see_missing_as_missing_whatever_the_dtype(study):
    variables = {"participant_id": {"type": "string"}, "age": {"type": "integer"},
                 "when": {"type": "date"}, "x": {"type": "float"}, "ok": {"type": "bool"}}
    a = pd.DataFrame({"participant_id": ["p"], "age": pd.array([pd.NA], "Int64"),
                      "when": pd.to_datetime(["2026-01-02"]), "x": [0.1],
                      "ok": pd.array([pd.NA], "boolean")})
    b = pd.DataFrame({"participant_id": pd.array(["p"], "str"), "age": [float("nan")],
                      "when": ["2026-01-02"], "x": [0.1], "ok": [None]}).astype({"age": object})
    assert catalog.fingerprints(a, variables) == catalog.fingerprints(b, variables)
    assert catalog.canonical_records(a, variables) == ['["p",null,"2026-01-02",0.1,null]']
    c = a.assign(x=[0.1 + 1e-16 * 3])
    assert catalog.fingerprints(c, variables) != catalog.fingerprints(a, variables)
