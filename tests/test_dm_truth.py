"""Issue 22: findings that tell the truth, tried with the broken drops a data manager makes.

Each test breaks a clean synthetic drop by hand (a totals row under the data, a typo in an
answer, a file sent under the wrong site ...) and reads what the data manager reads.
"""

from __future__ import annotations

import csv
import io
import json

import openpyxl
import pytest
from typer.testing import CliRunner

from flows.cli import app
from lacrima import catalog
from lacrima.intake import read_and_validate
from lacrima.privacy import DEMO_KEY
from lacrima.study import load_site
from lacrima.synth import write_drop

N = 20


@pytest.fixture(scope="module")
def clean(study, tmp_path_factory):
    folder = tmp_path_factory.mktemp("truth")
    return {site: write_drop(load_site(site), study, folder / f"{site}{ext}", n=N, seed=3)
            for site, ext in (("us", ".csv"), ("it", ".xlsx"), ("il", ".sav"))}


def _report(path, study, site):
    rep, _ = read_and_validate(path, load_site(site), study, DEMO_KEY, path.name, "0" * 64)
    return rep


def _edit_csv(src, dst, fn):
    rows = list(csv.reader(io.StringIO(src.read_bytes().decode("utf-8-sig"), newline="")))
    fn(rows, rows[0].index)
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    dst.write_bytes(buf.getvalue().encode("utf-8-sig"))
    return dst


def _edit_xlsx(src, dst, fn):
    wb = openpyxl.load_workbook(src)
    ws = wb["Dati"]
    fn(ws, [c.value for c in ws[1]])
    wb.save(dst)
    return dst


def _check(path, tmp_path, site, *args):
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["check", str(path), "--site", site, "--report", str(out),
                                   *args], env={"COLUMNS": "80"})
    assert "Traceback" not in res.output
    return res, json.loads(out.read_text())


# --------------------------------------------------------------- rows that are not people


def test_italian_workbook_with_a_totals_row_is_refused(clean, study, tmp_path):
    def totals(ws, names):
        last = ws.max_row
        row = ["Totale"] + [None] * (len(names) - 1)
        for j, name in enumerate(names):
            if name and name.startswith("Prima:"):
                row[j] = f"=SUM({openpyxl.utils.get_column_letter(j + 1)}2:" \
                         f"{openpyxl.utils.get_column_letter(j + 1)}{last})"
        ws.append(row)
    path = _edit_xlsx(clean["it"], tmp_path / "dati.xlsx", totals)
    res, rep = _check(path, tmp_path, "it")
    assert res.exit_code == 1 and not rep["valid"]
    (f,) = [f for f in rep["findings"] if f["check"] == "non_participant_rows"]
    assert f["rows"] == [N + 2] and f["severity"] == "error"
    assert "'Totale'" in f["message"] and "totals" in f["message"]
    # the totals row is not also counted as a participant with odd values
    assert rep["n_rows"] == N
    assert not [g for g in rep["findings"] if g["check"] in ("id_pattern", "formula_cells")]


def test_repeated_header_and_rows_below_a_blank_row(clean, study, tmp_path):
    def edit(rows, col):
        rows.insert(10, list(rows[0]))                       # names again, spreadsheet row 11
        rows.append([""] * len(rows[0]))                     # a blank separator
        note = [""] * len(rows[0])
        note[col("Q4")] = "answers of the second wave below"  # free text: never shown
        rows.append(note)
    path = _edit_csv(clean["us"], tmp_path / "us.csv", edit)
    rep = _report(path, study, "us")
    found = {f.found.split(" ", 1)[1]: f for f in rep.errors
             if f.check == "non_participant_rows"}
    assert found["row(s) that look like a repeated header"].rows == (11,)
    assert found["row(s) below a blank row"].rows == (len(list(csv.reader(io.StringIO(
        path.read_bytes().decode("utf-8-sig"))))),)
    assert "second wave" not in json.dumps(rep.to_dict())
    assert rep.n_rows == N


def test_a_note_without_an_id_is_not_a_participant(clean, study, tmp_path):
    def edit(ws, names):
        ws.append(["Dati raccolti a Genova"])   # free text in the ID column: hidden
        ws.append([None, None, "nota del terapeuta"])
    path = _edit_xlsx(clean["it"], tmp_path / "nota.xlsx", edit)
    rep = _report(path, study, "it")
    kinds = {f.found for f in rep.errors}
    assert "2 row(s) that look like a note" not in kinds   # "Dati ..." has an ID-like cell
    rows = sorted(r for f in rep.errors if f.check in ("non_participant_rows", "id_pattern")
                  for r in f.rows)
    assert rows == [N + 2, N + 3]
    assert "Genova" not in json.dumps(rep.to_dict()) and "terapeuta" not in json.dumps(rep.to_dict())


@pytest.mark.parametrize("site", ["us", "it", "il"])
def test_shipped_sites_ids_fit_their_pattern(clean, study, site):
    from lacrima.codebook import load_codebook
    assert load_codebook(load_site(site)).id_pattern
    rep = _report(clean[site], study, site)
    assert not [f for f in rep.findings if f.check in ("id_pattern", "non_participant_rows")]


# --------------------------------------------------------------- what a finding says

PYTHON_WORDS = ("False", "True", "None", "nan", "NaN", "dtype", "NaT", "<NA>", "Int64")


def _no_python_words(rep: dict):
    for f in rep["findings"]:
        text = " ".join(str(f[k]) for k in ("message", "expected", "found", "fix"))
        for word in PYTHON_WORDS:
            assert not __import__("re").search(rf"\b{word}\b", text), (word, text)


def test_a_misspelt_answer_is_shown_with_did_you_mean(clean, study, tmp_path):
    def edit(rows, col):
        rows[4][col("Q14_2")] = "Allways"
        rows[6][col("Q14_2")] = "Mario Rossi mrossi@ex.it"     # a person's words: hidden
        rows[7][col("Q4")] = "Womenx"
    path = _edit_csv(clean["us"], tmp_path / "typo.csv", edit)
    res, rep = _check(path, tmp_path, "us")
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert "'Allways' (did you mean 'Always'?)" in text
    assert "'Womenx' (did you mean 'Woman'?)" in text
    assert "Mario" not in res.output and "mrossi" not in json.dumps(rep)
    (wai,) = [f for f in rep["findings"] if f["columns"] == ["Q14_2"]]
    assert wai["rows"] == [5, 7] and "not shown" in wai["found"]
    (gender,) = [f for f in rep["findings"] if f["columns"] == ["Q4"]]
    # the fix fits a typo: correct the answer, not "re-export with choice text"
    assert "'Womenx' → 'Woman'" in gender["fix"] and "choice text" not in gender["fix"]
    assert max(len(line) for line in res.output.splitlines()) <= 80
    _no_python_words(rep)


def test_label_columns_list_labels_and_a_blank_id_is_a_missing_id(clean, study, tmp_path):
    def edit(rows, col):
        rows[4][col("Q14_3")] = "7"
        rows[5][col("ResponseId")] = ""
    path = _edit_csv(clean["us"], tmp_path / "seven.csv", edit)
    res, rep = _check(path, tmp_path, "us")
    (rng,) = [f for f in rep["findings"] if f["check"] == "value_range"]
    assert "Seldom" in rng["expected"] and "Always" in rng["expected"]
    assert "1.0" not in rng["expected"] + rng["message"] and " 5" not in rng["expected"]
    assert "Always" in rng["fix"]
    (ids,) = [f for f in rep["findings"] if f["check"] == "ids_present"]
    assert "missing participant ID" in ids["found"] and ids["rows"] == [6]
    assert "unexpected" not in ids["found"] + ids["message"]
    _no_python_words(rep)


def test_no_python_words_for_a_non_crier_with_episode_answers(clean, study, tmp_path):
    from lacrima.codebook import load_codebook
    book = load_codebook(load_site("us"))
    cried, episode = book.native_name("cried_in_therapy"), book.native_name("after_sad")

    def edit(rows, col):
        for r in rows[3:]:
            if r[col(cried)] == "No":
                r[col(episode)] = "Moderately"
                break
    path = _edit_csv(clean["us"], tmp_path / "episode.csv", edit)
    res, rep = _check(path, tmp_path, "us")
    (f,) = [f for f in rep["findings"] if f["check"] == "episode_blank_for_non_criers"]
    assert f"{cried} [cried_in_therapy] is 'No'" in f["expected"]
    _no_python_words(rep)


# --------------------------------------------------------------- withdrawal of an unknown ID


def test_withdrawing_an_id_the_store_never_held_is_refused(study, tmp_path):
    from lacrima import catalog, intake
    from lacrima.storage import LocalStorage
    from lacrima.synth import simulate

    us = load_site("us")
    root = tmp_path / "store"
    storage = LocalStorage(root)
    intake.upload(storage, us, write_drop(us, study, tmp_path / "a.csv", n=12, seed=1))
    intake.ingest_site(storage, us, study, b"test-key-not-secret")
    held = simulate(us, study, 12, 1)["participant_id"].tolist()

    def withdraw(*args):
        res = CliRunner().invoke(app, ["withdraw", *args, "--site", "us", "--storage", str(root)],
                                 env={"COLUMNS": "200"})
        assert "Traceback" not in res.output
        return res

    res = withdraw("R_DOESNOTEXIST00")            # one letter short of a Qualtrics ID
    assert res.exit_code == 1 and "R_[0-9A-Za-z]{15}" in res.output
    res = withdraw("R_DOESNOTEXIST000")
    assert res.exit_code == 1
    text = " ".join(res.output.split())          # one message, wrapped at the terminal's width
    assert text.count("error:") == 1 and "12 record(s) held" in text
    assert "--not-yet-received" in text and "00017 = 17" in text
    assert not any(pid in res.output for pid in held)          # no other ID is revealed
    assert not catalog.withdrawals(storage, "us")
    res = withdraw("R_DOESNOTEXIST000", "--not-yet-received")
    assert res.exit_code == 0 and len(catalog.withdrawals(storage, "us")) == 1
    res = withdraw(f"  {held[3]} ")                             # a held ID, spaces trimmed
    assert res.exit_code == 0 and len(catalog.withdrawals(storage, "us")) == 2


# --------------------------------------------------------------- truthful summaries


def test_a_correction_counts_new_changed_unchanged_and_status_closes_the_loop(study, tmp_path):
    from flows.cli import drop_line
    from lacrima import intake, steps
    from lacrima.storage import LocalStorage

    us = load_site("us")
    key = b"test-key-not-secret"
    root = tmp_path / "store"
    storage = LocalStorage(root)
    a = write_drop(us, study, tmp_path / "a.csv", n=12, seed=1)
    intake.upload(storage, us, a)
    intake.ingest_site(storage, us, study, key)
    (first,) = catalog.batches(storage, "us")

    def one_changed(rows, col):
        rows[5][col("Q14_3")] = "Always" if rows[5][col("Q14_3")] != "Always" else "Seldom"
    fixed = _edit_csv(a, tmp_path / "a_fixed.csv", one_changed)
    # sent without --replaces: an id_clash, quarantined
    intake.upload(storage, us, fixed)
    (res,) = [intake.ingest_site(storage, us, study, key)]
    (clash,) = res.quarantined
    # a typo'd file with new people, quarantined, then the same people sent right
    b = write_drop(us, study, tmp_path / "b.csv", n=5, seed=2, id_offset=100)
    typo = _edit_csv(b, tmp_path / "b_typo.csv",
                     lambda rows, col: rows[3].__setitem__(col("Q14_2"), "Allways"))
    intake.upload(storage, us, typo)
    (typo_batch,) = intake.ingest_site(storage, us, study, key).quarantined
    intake.upload(storage, us, b)
    res = intake.ingest_site(storage, us, study, key)
    (line,) = [drop_line(d) for d in steps.drop_outcomes([res])]
    assert "5 new, 0 changed, 0 unchanged" in line
    recs = {r.sha256: r for r in catalog.batches(storage, "us")}
    assert recs[typo_batch].fixed_by == res.accepted[0]
    assert not recs[clash].fixed_by          # its changed record is still the old one
    # a cumulative export (a's people again, unchanged, and 3 new) with a typo in a new row
    e = write_drop(us, study, tmp_path / "e.csv", n=3, seed=4, id_offset=200)
    tail = list(csv.reader(io.StringIO(e.read_bytes().decode("utf-8-sig"), newline="")))[3:]
    cumulative = _edit_csv(a, tmp_path / "cumulative.csv", lambda rows, col: rows.extend(tail))
    bad = _edit_csv(cumulative, tmp_path / "cumulative_typo.csv",
                    lambda rows, col: rows[-1].__setitem__(col("Q14_2"), "Allways"))
    intake.upload(storage, us, bad)
    (bad_batch,) = intake.ingest_site(storage, us, study, key).quarantined
    intake.upload(storage, us, cumulative)
    res = intake.ingest_site(storage, us, study, key)
    assert "3 new, 0 changed, 12 unchanged" in drop_line(steps.drop_outcomes([res])[0])
    recs = {r.sha256: r for r in catalog.batches(storage, "us")}
    assert recs[bad_batch].fixed_by == res.accepted[0] and not recs[clash].fixed_by
    # the correction of one record: 1 changed, 11 unchanged, none new
    intake.upload(storage, us, fixed, replaces=first.sha256[:12])
    res = intake.ingest_site(storage, us, study, key)
    (d,) = steps.drop_outcomes([res])
    assert d["outcome"] == "accepted", d
    assert (d["new"], d["changed"], d["already_held"], d["withdrawn"]) == (0, 1, 11, 0)
    assert "0 new, 1 changed, 11 unchanged" in drop_line(d)

    # status: the fixed batch is no open problem; its report reads as `check` printed it
    def lacrima(*args):
        r = CliRunner().invoke(app, [*args, "--storage", str(root)], env={"COLUMNS": "80"})
        assert "Traceback" not in r.output
        return r
    status = lacrima("status", "--site", "us")
    text = " ".join(status.output.split())
    # the clash batch, sent again with --replaces, is now the accepted correction itself
    assert {r.sha256: r.state for r in catalog.batches(storage, "us")}[clash] == "accepted"
    assert "says why" not in text                  # no open problem: the typo'd file is fixed
    assert text.count("fixed by") == 2 and "b_typo.csv" in text
    shown = lacrima("status", "--site", "us", "--report", typo_batch[:12])
    assert shown.exit_code == 1
    out = " ".join(shown.output.split())
    assert "'Allways' (did you mean 'Always'?)" in out and "Fixed by batch" in out
    shown = lacrima("status", "--report", "nosuchbatch")
    assert shown.exit_code == 2 and "no batch" in shown.output


# --------------------------------------------------------------- what a site's key covers


def test_a_sites_input_key_ignores_its_contact_and_language(tmp_path):
    import shutil

    from lacrima.steps import site_input_key
    from lacrima.storage import LocalStorage
    from lacrima.study import load_study

    root = tmp_path / "sites"
    shutil.copytree(load_site("it").folder.parent, root)
    storage = LocalStorage(tmp_path / "store")

    def key():
        return site_input_key(storage, load_site("it", root), load_study(root))[0]
    before = key()
    toml = root / "it" / "site.toml"
    toml.write_text(toml.read_text().replace('language = "it"', 'language = "en"')
                    + '\n[site.contact]\nemail = ["dm@example.org"]\n')
    assert key() == before
    toml.write_text(toml.read_text().replace('role = "original"', 'role = "replication"'))
    assert key() != before                      # the role is on the site's page
    book = root / "it" / "codebook.toml"
    changed = key()
    book.write_text(book.read_text() + "\n# a comment changes the codebook's bytes\n")
    assert key() != changed


def test_a_clean_qualtrics_file_is_one_line(clean, tmp_path):
    res, rep = _check(clean["us"], tmp_path, "us")
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 0 and lines[0].startswith("us.csv (us): valid")
    assert lines[1].startswith("report written to")       # (--report; the path may wrap)
    assert [f["check"] for f in rep["findings"]] == ["identifying_columns"]   # in the JSON
    res, _ = _check(clean["us"], tmp_path, "us", "--verbose")
    assert "identifying column(s)" in " ".join(res.output.split())


# --------------------------------------------------------------- the wrong site


@pytest.mark.parametrize("sent, checked", [("us", "it"), ("il", "us"), ("it", "il")])
def test_a_file_of_another_site_is_named_as_such(clean, tmp_path, sent, checked):
    res, rep = _check(clean[sent], tmp_path, checked)
    assert res.exit_code == 1
    (f,) = [f for f in rep["findings"] if f["check"] == "missing_columns"]
    assert f"looks like an export of site {sent}" in f["message"]
    assert f"--site {sent}" in f["fix"]
    # that is the one thing said: no ID flagged on every row, no completion, no odd rows
    assert {g["check"] for g in rep["findings"]} <= {"missing_columns", "unexpected_format"}
    # the terminal speaks the language of the site checked against; the command is the same
    assert f"--site {sent}" in " ".join(res.output.split())


def test_a_file_missing_a_few_columns_is_not_another_sites(clean, tmp_path):
    def drop(rows, col):
        at = col("Q14_3")
        for r in rows:
            del r[at]
    path = _edit_csv(clean["us"], tmp_path / "short.csv", drop)
    res, rep = _check(path, tmp_path, "us")
    (f,) = [f for f in rep["findings"] if f["check"] == "missing_columns"]
    assert f["columns"] == ["Q14_3"] and "looks like" not in f["message"]
