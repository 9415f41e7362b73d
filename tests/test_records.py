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
    before = catalog.curated_frame(storage, "it")
    again = _ingest(storage, it, study,
                    write_drop(it, study, tmp_path / "b", n=20, seed=1, format="csv"))
    assert len(first.accepted) == 1 and len(again.accepted) == 1, _only(again).findings
    # the second batch by its SHA-256: two batches received in the same second sort by hash
    rec = next(r for r in catalog.batches(storage, "it") if r.sha256 == again.accepted[0])
    assert (rec.records_new, rec.records_held) == (0, 20)
    assert again.records_held == 20 and again.records_new == 0
    pd.testing.assert_frame_equal(catalog.curated_frame(storage, "it"), before)


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
    curated = catalog.curated_frame(storage, "us")
    assert len(curated) == 30 and curated["participant_id"].is_unique
    # each batch stores only the records it brought
    stored = [len(pd.read_parquet(io.BytesIO(storage.read_bytes(r.curated_key))))
              for r in catalog.batches(storage, "us")]
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
    # what to do names the site and the batch that holds the record
    first = catalog.batches(storage, "us")[0].sha256
    assert f"--site us --replaces {first[:12]}" in f.fix
    assert len(catalog.curated_frame(storage, "us")) == 20


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


def test_spss_ids_sent_as_zero_padded_strings_are_the_same_people(tmp_path, study, sites):
    import pyreadstat

    il = _site(sites, "il")
    storage = LocalStorage(tmp_path / "store")
    a = write_drop(il, study, tmp_path / "a", n=15, seed=1)
    frame, meta = pyreadstat.read_sav(str(a), user_missing=True)
    id_col = load_codebook(il).native_name("participant_id")
    frame[id_col] = [f" {int(v):05d}" for v in frame[id_col]]     # "00001" and a blank
    strings = tmp_path / "strings.sav"
    pyreadstat.write_sav(frame, str(strings), column_labels=meta.column_names_to_labels,
                         variable_value_labels=meta.variable_value_labels,
                         missing_ranges=meta.missing_ranges)
    assert len(_ingest(storage, il, study, a).accepted) == 1
    res = _ingest(storage, il, study, strings)
    assert len(res.accepted) == 1, _only(res).findings
    assert (res.records_new, res.records_held) == (0, 15)
    assert len(catalog.curated_frame(storage, "il")) == 15


def test_an_id_not_fitting_the_codebooks_pattern_is_an_error(tmp_path, study, sites):
    import shutil

    from lacrima.storage import sha256_bytes
    from lacrima.study import load_site

    root = tmp_path / "sites"
    shutil.copytree(_site(sites, "it").codebook_path.parents[1], root)
    book = root / "it" / "codebook.toml"
    # the shipped pattern (IT-\\d{4,}) made stricter: four digits exactly
    book.write_text(book.read_text().replace('id_pattern = "IT-\\\\d{4,}"',
                                             'id_pattern = "IT-\\\\d{4}"', 1))
    it = load_site("it", root)
    path = write_drop(it, study, tmp_path / "a", n=12, seed=1, format="csv")
    header, rows = _rows(path, 1, "cp1252", ";")
    col = header[0].index("ID")
    rows[2][col], rows[6][col] = "IT-12", "  IT-0099 "     # wrong shape; blanks are trimmed
    bad = _write_rows(tmp_path / "bad.csv", header, rows, "cp1252", ";")
    report, frame = intake.read_and_validate(bad, it, study, KEY, "bad.csv",
                                             sha256_bytes(bad.read_bytes()))
    (f,) = [f for f in report.errors if f.check == "id_pattern"]
    assert f.rows == (4,) and f.columns == ("ID",) and "IT-\\d{4}" in f.expected


@pytest.fixture(scope="module")
def corrected(tmp_path_factory, study, sites):
    """Italy: batch A accepted, then C (same people, other answers) accepted as its correction."""
    folder = tmp_path_factory.mktemp("corr")
    it = _site(sites, "it")
    storage = LocalStorage(folder / "store")
    a = write_drop(it, study, folder / "a", n=12, seed=1)
    c = write_drop(it, study, folder / "c", n=12, seed=2)
    d = write_drop(it, study, folder / "d", n=12, seed=3)
    _ingest(storage, it, study, a)
    (ra,) = catalog.batches(storage, "it")
    res = _ingest(storage, it, study, c, replaces=ra.sha256[:12])
    assert len(res.accepted) == 1, _only(res).findings
    return folder / "store", ra.sha256, res.accepted[0], d


def test_a_second_correction_of_a_superseded_batch_is_refused_naming_its_successor(
        corrected, tmp_path, study, sites):
    import shutil

    root, a, c, d = corrected
    shutil.copytree(root, tmp_path / "store")
    storage = LocalStorage(tmp_path / "store")
    it = _site(sites, "it")
    with pytest.raises(LookupError, match=f"superseded by {c[:12]}"):
        intake.upload(storage, it, d, replaces=a[:12])
    # the same, landed by other means (aws s3 cp with metadata): quarantined, nothing lost
    storage.write_bytes(f"landing/it/{d.name}", d.read_bytes(),
                        metadata={"original_name": d.name, "replaces": a})
    res = intake.ingest_site(storage, it, study, KEY)
    (f,) = [f for f in _only(res).errors if f.check == "replaces"]
    assert c[:12] in f.message
    assert {r.sha256: r.state for r in catalog.batches(storage, "it")}[c] == "accepted"


def test_a_crash_between_a_corrections_writes_is_finished_by_the_next_run(
        tmp_path, study, sites, monkeypatch):
    from lacrima import catalog

    it = _site(sites, "it")
    storage = LocalStorage(tmp_path / "store")
    a = write_drop(it, study, tmp_path / "a", n=12, seed=1)
    c = write_drop(it, study, tmp_path / "c", n=12, seed=2)
    _ingest(storage, it, study, a)
    (ra,) = catalog.batches(storage, "it")
    intake.upload(storage, it, c, replaces=ra.sha256)
    real, calls = catalog.write_batch, []

    def dies_on_the_second_ledger_write(st, rec):
        calls.append(rec.sha256)
        if len(calls) == 2:
            raise KeyboardInterrupt("machine died")
        real(st, rec)
    monkeypatch.setattr(catalog, "write_batch", dies_on_the_second_ledger_write)
    with pytest.raises(KeyboardInterrupt):
        intake.ingest_site(storage, it, study, KEY)
    monkeypatch.setattr(catalog, "write_batch", real)
    # half done: the correction is accepted, the old batch not yet superseded
    assert {r.state for r in catalog.batches(storage, "it")} == {"accepted"}
    res = intake.ingest_site(storage, it, study, KEY)
    states = {r.sha256: r.state for r in catalog.batches(storage, "it")}
    assert states[ra.sha256] == "superseded" and list(states.values()).count("accepted") == 1
    assert not catalog.open_intents(storage, "it")
    curated = catalog.curated_frame(storage, "it")
    (rc,) = [r for r in catalog.batches(storage, "it") if r.state == "accepted"]
    held = pd.read_parquet(io.BytesIO(storage.read_bytes(rc.curated_key)))
    # the corrected values win, each once (curated rows in pseudonym order)
    pd.testing.assert_frame_equal(curated, held.sort_values("participant_id", ignore_index=True))
    assert res.skipped_duplicates >= 1


def test_a_code_outside_the_scales_native_codes_is_an_error(tmp_path, study, sites):
    # A REDCap-style scale stored as 0-4 for values 1-5: a 5 is no answer at all (on
    # today's code it passed as the value 5, inside the valid range).
    import shutil

    import pyreadstat

    from lacrima.native import read_drop
    from lacrima.study import load_site

    root = tmp_path / "sites"
    shutil.copytree(_site(sites, "il").codebook_path.parents[1], root)
    book = root / "il" / "codebook.toml"
    text = book.read_text()
    head = "[scales.wai]\nvalues = [1, 2, 3, 4, 5]\n"
    assert head in text
    book.write_text(text.replace(head, head + "native_codes = [0, 1, 2, 3, 4]\n", 1))
    il = load_site("il", root)
    path = write_drop(il, study, tmp_path / "a", n=10, seed=1)
    frame, meta = pyreadstat.read_sav(str(path), user_missing=True)
    col = load_codebook(il).native_name("wai_01")
    assert set(frame[col].dropna()) <= {0, 1, 2, 3, 4}
    frame.loc[[2, 6], col] = 5
    bad = tmp_path / "bad.sav"
    pyreadstat.write_sav(frame, str(bad), column_labels=meta.column_names_to_labels,
                         variable_value_labels=meta.variable_value_labels,
                         missing_ranges=meta.missing_ranges)
    drop = read_drop(bad, il, study)
    (f,) = [f for f in drop.findings if f.check == "unknown_codes"]
    assert f.severity == "error" and f.columns == (col,) and f.rows == (3, 7)
    assert f.expected == "one of the codes: 0, 1, 2, 3, 4" and "5" in f.found
    assert drop.frame["wai_01"].isna().tolist()[2] and drop.frame["wai_01"].isna().tolist()[6]


def test_synth_seed_changes_the_ids_and_first_id_continues_the_numbering(tmp_path, study, sites):
    from typer.testing import CliRunner

    from flows.cli import app
    from lacrima.native import read_drop

    def ids(*args):
        out = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        res = CliRunner().invoke(app, ["synth", "--site", "it", "--n", "5", "--out", str(out),
                                       *map(str, args)])
        assert res.exit_code == 0, res.output
        drop = read_drop(next(out.iterdir()), _site(sites, "it"), study)
        return drop.frame["participant_id"].tolist()

    one, two = ids("--seed", 1), ids("--seed", 2)
    assert not set(one) & set(two)
    assert ids("--seed", 1) == one
    assert ids("--seed", 2, "--first-id", 6) == [f"IT-{k:04d}" for k in range(6, 11)]
    res = CliRunner().invoke(app, ["synth", "--site", "it", "--first-id", "0", "--out",
                                   str(tmp_path / "x")])
    assert res.exit_code == 2 and "numbered from 1" in res.output
