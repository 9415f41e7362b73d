"""Onboarding a REDCap site (issue 22 item 9): a draft a person finishes in minutes.

Identical value sets become one shared scale; yes/no labels are in the site's language;
survey identifiers, names and e-mails are identifying; the pairing of native fields with
study variables is done in a spreadsheet (``sites new --mapping-sheet``, then
``sites apply-mapping``), and a German dictionary becomes a site whose drop is accepted.
"""

from __future__ import annotations

import csv
import io
import shutil
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from lacrima.contract import check_sites
from lacrima.onboarding import (SHEET_COLUMNS, MappingError, OnboardingError, apply_mapping,
                                draft_site)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
DICTIONARY = FIXTURES / "de_redcap_dictionary.csv"
SURVEY = FIXTURES / "de_redcap_survey_dictionary.csv"
"""A REDCap survey project with German field names: most pairings are a person's."""


@pytest.fixture
def root(tmp_path):
    dest = tmp_path / "sites"
    shutil.copytree(REPO / "sites", dest)
    return dest


def read_sheet(path: Path, encoding: str = "utf-8-sig") -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding=encoding), newline="")))


def fill(sheet: Path, pairs: dict, answers: dict, *, excel_de: bool = False) -> list[dict]:
    """Fill column study_variable as a person does in a spreadsheet: ``pairs`` field ->
    study variable, ``answers`` (field, code) -> study value; the rest stays empty (the
    suggestion). ``excel_de``: saved as German Excel saves CSV (";" and Windows-1252)."""
    rows = read_sheet(sheet)
    for r in rows:
        key = (r["native_field"], r["answer_code"])
        r["study_variable"] = answers.get(key, "") if r["answer_code"] else pairs.get(key[0], "")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SHEET_COLUMNS, delimiter=";" if excel_de else ",",
                            lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    sheet.write_bytes(buf.getvalue().encode("cp1252" if excel_de else "utf-8-sig"))
    return rows


def book_of(root: Path, code: str = "de") -> dict:
    return tomllib.loads((root / code / "codebook.toml").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the draft


def test_identical_value_sets_become_one_shared_scale(root):
    draft_site("de", "redcap", DICTIONARY, root, country="Germany", language="de")
    book = book_of(root)
    cols, scales = book["columns"], book["scales"]
    # One scale for the twelve WAI-SR items (not twelve copies), one for the sixteen CTSCM-R.
    assert {cols[f"wai_{k:02d}"]["scale"] for k in range(1, 13)} == {"wai"}
    assert {cols[f"ctsc_{k:02d}"]["scale"] for k in range(1, 17)} == {"ctsc"}
    labelled = [tuple(s["labels"]) + tuple(map(repr, s["values"])) for s in scales.values()]
    assert len(labelled) == len(set(labelled)), "two scales with the same labels and values"
    assert len(scales) == 8    # yes/no, gender, frequency, 5-point emotions, WAI, CTSC, RQ x 2
    assert scales["yes_no"]["labels"] == ["Ja", "Nein"]
    assert cols["cried_in_therapy"]["scale"] == "yes_no"


@pytest.mark.parametrize("language, yes_no", [("de", ["Ja", "Nein"]), ("it", ["Sì", "No"]),
                                              ("he", ["כן", "לא"]), ("en", ["Yes", "No"]),
                                              ("", ["Yes", "No"])])
def test_yes_no_labels_in_the_sites_language(root, language, yes_no):
    draft_site("de", "redcap", DICTIONARY, root, language=language)
    assert book_of(root)["scales"]["yes_no"]["labels"] == yes_no


def test_survey_identifier_names_and_emails_are_identifying(root):
    # vorname, nachname and an e-mail question ("kontakt") carry no "Identifier?" flag and
    # no e-mail validation: their names and questions mark them.
    draft_site("de", "redcap", SURVEY, root, language="de")
    ident = book_of(root)["codebook"]["identifying_columns"]
    assert set(ident) == {"vorname", "nachname", "kontakt", "telefon", "redcap_survey_identifier"}
    assert "kommentar" not in ident    # free text, but not a question about the person


# --------------------------------------------------------------------------- the sheet

SURVEY_PAIRS = {
    # What the person writes in column study_variable: the fields the sheet could not pair.
    "geweint": "cried_in_therapy", "wein_sitzungen": "cry_sessions",
    "weinhaeufigkeit": "cry_frequency_life", "therapie_monate": "therapy_months",
    "nw_entspannt": "after_relaxed", "nw_kontrolle": "after_in_control",
    "nw_gluecklich": "after_happy", "nw_erleichtert": "after_relieved",
    "nw_angespannt": "after_tense", "nw_niedergeschlagen": "after_depressed",
    "nw_traurig": "after_sad", "nw_beschaemt": "after_ashamed",
    "th_mitgefuehl": "therapist_compassion", "th_unterstuetzung": "therapist_support",
    "th_unbehagen": "therapist_discomfort", "verletzlich": "felt_vulnerable",
    "zuversicht_ziele": "more_confident_goals", "besser_verstanden": "understood_better",
    "neues_verstaendnis": "new_understanding", "jenseits_worte": "beyond_words",
    "traenen_unangenehm": "discomfort_tears", "weinintensitaet": "crying_intensity",
    "rq_a": "rq_secure", "rq_b": "rq_fearful", "rq_c": "rq_preoccupied", "rq_d": "rq_dismissing",
    "rq_absatz": "rq_best",
}
ANSWERS = {
    # "Please select 'manchmal'" (code 2): that answer passes, any other fails.
    **{("aufmerksamkeit", str(c)): "true" if c == 2 else "false" for c in range(1, 6)},
    ("rq_absatz", "1"): "secure", ("rq_absatz", "2"): "fearful",
    ("rq_absatz", "3"): "preoccupied", ("rq_absatz", "4"): "dismissing",
}


def test_redcap_dictionary_becomes_an_accepted_site_through_the_mapping_sheet(root, tmp_path):
    from lacrima import intake
    from lacrima.privacy import DEMO_KEY
    from lacrima.storage import LocalStorage
    from lacrima.study import load_site, load_study
    from lacrima.synth import write_drop

    runner = CliRunner()
    sheet = tmp_path / "de-mapping.csv"
    made = runner.invoke(app, ["sites", "new", "de", "--from-redcap", str(SURVEY),
                               "--sites", str(root), "--country", "Germany", "--language", "de",
                               "--published-n", "120", "--mapping-sheet", str(sheet)])
    assert made.exit_code == 0, made.output
    assert f"lacrima sites apply-mapping {sheet}" in made.output
    rows = read_sheet(sheet)
    assert tuple(rows[0]) == SHEET_COLUMNS and not any(r["study_variable"] for r in rows)
    fields = {r["native_field"]: r for r in rows if not r["answer_code"]}
    # Suggestions: certain by name, likely by a German word, identifying by name or question.
    assert (fields["wai_1"]["suggested"], fields["wai_1"]["confidence"]) == ("wai_01", "1.00")
    assert (fields["alter"]["suggested"], fields["alter"]["confidence"]) == ("age", "0.80")
    assert fields["geschlecht"]["suggested"] == "gender"
    assert fields["kontakt"]["suggested"] == "identifying"
    assert not fields["nw_entspannt"]["suggested"]
    # Answers of a stand-alone choice question get rows; a matrix's items do not.
    answers = {(r["native_field"], r["answer_code"]): r for r in rows if r["answer_code"]}
    assert answers[("geschlecht", "1")]["suggested"] == "woman"
    assert ("aufmerksamkeit", "2") in answers and not any(k[0] == "wai_1" for k in answers)
    # Before the person's pass, the draft leaves the pairings as TODOs.
    assert any(p.key == "columns.after_relaxed" for p in check_sites(root))

    fill(sheet, SURVEY_PAIRS, ANSWERS, excel_de=True)
    applied = runner.invoke(app, ["sites", "apply-mapping", str(sheet), "--sites", str(root)])
    assert applied.exit_code == 0, applied.output
    checked = runner.invoke(app, ["sites", "check", "--sites", str(root)])
    assert checked.exit_code == 0, checked.output
    book = book_of(root)
    assert book["columns"]["after_relaxed"]["column"] == "nw_entspannt"
    assert book["scales"]["aufmerksamkeit"]["values"] == [False, True, False, False, False]
    assert book["scales"][book["columns"]["gender"]["scale"]]["values"] == ["woman", "man",
                                                                            "another"]

    study, site = load_study(root), load_site("de", root)
    drop = write_drop(site, study, tmp_path / "drop", n=80, seed=22)
    # What REDCap adds to a survey project's export: the identifier (a name), the form's
    # timestamp and status.
    header, *body = drop.read_text(encoding="utf-8").splitlines()
    drop.write_text("\r\n".join(
        [f"{header},redcap_survey_identifier,fragebogen_timestamp,fragebogen_complete"]
        + [f"{row},Erika Mustermann,2024-03-0{k % 9 + 1} 10:15,2" for k, row in enumerate(body)]
    ) + "\r\n", encoding="utf-8")
    storage = LocalStorage(tmp_path / "store")
    intake.upload(storage, site, drop)
    result = intake.ingest_site(storage, site, study, DEMO_KEY)
    assert result.accepted and not result.quarantined, [
        f.message for r in result.reports for f in r.findings]
    findings = [f for r in result.reports for f in r.findings]
    assert not [f for f in findings if f.severity == "error" or f.check == "unexpected_columns"]
    assert result.records_new == 80
    # The survey identifier (a name) was removed unread, as the codebook lists it.
    removed = [f for f in findings if f.check == "identifying_columns"]
    assert [f.severity for f in removed] == ["info"]
    assert "redcap_survey_identifier" in removed[0].columns


def test_sheet_mistakes_are_one_line_each_and_nothing_is_written(root, tmp_path):
    sheet = tmp_path / "de-mapping.csv"
    draft_site("de", "redcap", SURVEY, root, language="de", published_n=120,
               mapping_sheet=sheet)
    before = (root / "de" / "codebook.toml").read_bytes()
    pairs = {**SURVEY_PAIRS, "alter": "agee", "wein_sitzungen": "cry_frequency_life",
             "verletzlich": ""}
    rows = fill(sheet, pairs, {**ANSWERS, ("rq_absatz", "4"): "dismisive"})
    # A field row pasted twice (the second pairs it again).
    text = sheet.read_text(encoding="utf-8-sig")
    sheet.write_text(text + "rq_a,,,,,rq_secure\r\n", encoding="utf-8-sig")
    row_of = {r["native_field"]: n for n, r in enumerate(rows, start=2) if not r["answer_code"]}
    answer_row = next(n for n, r in enumerate(rows, start=2)
                      if (r["native_field"], r["answer_code"]) == ("rq_absatz", "4"))
    with pytest.raises(MappingError) as err:
        apply_mapping(sheet, root)
    lines = err.value.lines
    assert all("\n" not in line and line.startswith(f"{sheet}: ") for line in lines)
    expected = [
        f"row {row_of['alter']}, column study_variable: 'agee' is not a study variable "
        "(did you mean 'age'?)",
        f"row {row_of['wein_sitzungen']}, column study_variable: 'cry_frequency_life' is paired "
        f"with 'weinhaeufigkeit' in row {row_of['weinhaeufigkeit']} too",
        f"row {len(rows) + 2}, column native_field: 'rq_a' is paired twice: "
        f"row {row_of['rq_a']} is this field too",
        "column study_variable: 'felt_vulnerable' (Moment of genuine vulnerability; likert) "
        "is paired with no field",
        "column study_variable: 'age' (Age (years); integer) is paired with no field",
        # wein_sitzungen was paired with another variable, so its own is left unpaired.
        "column study_variable: 'cry_sessions' (Sessions with crying; integer) is paired with "
        "no field",
        f"row {answer_row}, column study_variable: 'dismisive': answer 'Absatz D' of "
        "'rq_absatz' (rq_best): expected one of secure, fearful, preoccupied, dismissing "
        "(did you mean 'dismissing'?)",
    ]
    for part in expected:
        assert sum(part in line for line in lines) == 1, (part, lines)
    assert len(lines) == len(expected)
    assert (root / "de" / "codebook.toml").read_bytes() == before

    out = CliRunner().invoke(app, ["sites", "apply-mapping", str(sheet), "--sites", str(root)])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.output.count(f"{sheet}: ") >= len(expected)    # each problem on stderr
    said = " ".join(out.output.split())       # the last line is wrapped at the terminal's width
    assert f"{len(expected)} problem(s) in {sheet}; nothing written" in said


def test_apply_mapping_refuses_what_it_cannot_read_or_must_not_overwrite(root, tmp_path):
    sheet = tmp_path / "de.csv"
    draft_site("de", "redcap", SURVEY, root, language="de", published_n=120, mapping_sheet=sheet)
    with pytest.raises(OnboardingError, match="already exists"):
        draft_site("de2", "redcap", SURVEY, root, mapping_sheet=sheet)
    fill(sheet, SURVEY_PAIRS, ANSWERS)
    book = root / "de" / "codebook.toml"
    book.write_text("# my own codebook\n" + book.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(OnboardingError, match="edited by hand"):
        apply_mapping(sheet, root)
    sheet.with_suffix(".json").unlink()
    with pytest.raises(OnboardingError, match="de.json is not beside it"):
        apply_mapping(sheet, root)


# --------------------------------------------------------------------------- the German site


DICTIONARY_PAIRS = {"rq_a": "rq_secure", "rq_b": "rq_fearful", "rq_c": "rq_preoccupied",
                    "rq_d": "rq_dismissing"}
DICTIONARY_ANSWERS = {**ANSWERS, **{("rq_best", k[1]): v for k, v in ANSWERS.items()
                                    if k[0] == "rq_absatz"}}


def onboard(root: Path, tmp_path: Path) -> None:
    """Site de from de_redcap_dictionary.csv through the mapping sheet."""
    sheet = tmp_path / "de-mapping.csv"
    draft_site("de", "redcap", DICTIONARY, root, country="Germany", language="de",
               published_n=120, mapping_sheet=sheet)
    fill(sheet, DICTIONARY_PAIRS, DICTIONARY_ANSWERS)
    apply_mapping(sheet, root)
    assert check_sites(root) == []


def test_redcap_site_from_dictionary_to_analysis(root, tmp_path, memory_analyses, sites):
    from lacrima.analysis import analyse_site
    from lacrima.intake import read_and_validate
    from lacrima.privacy import DEMO_KEY
    from lacrima.replication import replication_table
    from lacrima.scoring import apply_exclusions, score
    from lacrima.study import load_site, load_study
    from lacrima.synth import write_drop
    from lacrima.vocabulary import RESULTS_COLUMNS

    onboard(root, tmp_path)
    book = book_of(root)
    assert book["codebook"]["identifying_columns"] == ["name", "email", "telefon",
                                                       "redcap_survey_identifier"]
    assert book["columns"]["participant_id"]["column"] == "record_id"
    assert {e["column"] for e in book["extra_columns"]} >= {"therapieform___2", "kommentar"}

    study, site = load_study(root), load_site("de", root)
    assert site.role == "replication"
    drop = write_drop(site, study, tmp_path / "drop", n=150, seed=11)
    text = drop.read_text(encoding="utf-8").splitlines()
    added = "redcap_survey_identifier,fragebogen_timestamp,fragebogen_complete"
    text = [f"{row},,,2" if k else f"{row},{added}" for k, row in enumerate(text)]
    drop.write_text("\r\n".join(text) + "\r\n", encoding="utf-8")
    rep, frame = read_and_validate(drop, site, study, DEMO_KEY, drop.name, "0" * 64, size_mb=0.1)
    assert rep.valid, [f.message for f in rep.findings]
    assert not [f for f in rep.findings if f.check == "unexpected_columns"]
    assert len(frame) == 150 and set(frame["gender"].dropna()) <= {"woman", "man", "another"}
    analysed, flow = apply_exclusions(score(frame, study), study, "de")
    results = analyse_site(analysed, study, "de")
    assert set(results["family"]) >= {"H1", "H2", "H3", "H4", "A1", "A2", "A3", "A4"}
    assert results["estimate"].notna().mean() > 0.9
    # The fourth site, a second replication, gets its own verdicts against each original.
    per_site = pd.concat([*(a.results for a in memory_analyses),
                          results.reindex(columns=list(RESULTS_COLUMNS))], ignore_index=True)
    table = replication_table(per_site, study, [*sites, site])
    mine = table[table["replication_site"] == "de"]
    assert set(mine["original_site"]) == {"it", "il"}
    assert len(mine) == len(table[table["replication_site"] == "us"]) > 0
    verdicts = ["replicated", "not replicated", "inconclusive", "unclassified"]
    assert mine["verdict"].isin(verdicts).all()


def test_redcap_labels_export_is_read_by_field_labels(root, tmp_path):
    from lacrima.codebook import load_codebook
    from lacrima.native import read_drop
    from lacrima.study import load_site, load_study
    from lacrima.synth import write_drop

    onboard(root, tmp_path)
    study, site = load_study(root), load_site("de", root)
    raw = write_drop(site, study, tmp_path / "raw", n=30, seed=5)
    header, *rows = raw.read_text(encoding="utf-8").splitlines()
    cb = load_codebook(site)
    label_of = {s.column: s.text for s in (*cb.columns.values(), *cb.extra_columns) if s.text}
    labels = tmp_path / "labels.csv"
    names = next(csv.reader([header]))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow([label_of.get(n, n) for n in names])
    labels.write_text(buf.getvalue() + "\r\n".join(rows) + "\r\n", encoding="utf-8")
    a = read_drop(raw, site, study).to_frame()
    b = read_drop(labels, site, study).to_frame()
    assert not read_drop(labels, site, study).errors
    assert a.equals(b)


def test_hebrew_spss_dictionary_through_the_sheet_gives_site_ils_pairing(root, tmp_path):
    # Site il's own .sav, paired by what sites/il/codebook.toml says: the sheet reaches the
    # same columns and answer values, and the participant ID pairing sets id_column (an
    # SPSS file does not say which column it is).
    il = tomllib.loads((REPO / "sites" / "il" / "codebook.toml").read_text(encoding="utf-8"))
    sheet = tmp_path / "hb.csv"
    draft_site("hb", "spss", FIXTURES / "il_windows1255.sav", root, country="Israel",
               language="he", published_n=100, mapping_sheet=sheet)
    rows = read_sheet(sheet)
    fields = {r["native_field"]: r for r in rows if not r["answer_code"]}
    # Hebrew words of common_labels: consent and gender suggested, their answers valued.
    assert fields["consent"]["suggested"] == "consent" and fields["gender"]["suggested"] == "gender"
    answers = {(r["native_field"], r["answer_code"]): r["suggested"] for r in rows
               if r["answer_code"]}
    assert [answers[("gender", c)] for c in "123"] == ["woman", "man", "another"]
    assert answers[("consent", "1")] == "true"
    pairs = {spec["column"]: canonical for canonical, spec in il["columns"].items()}
    values = {}
    for canonical, spec in il["columns"].items():
        scale = il["scales"].get(spec.get("scale", ""), {})
        if spec["column"] in ("attn", "rq_best"):
            for code, value in zip(scale.get("native_codes", scale.get("values", [])),
                                   scale.get("values", [])):
                values[(spec["column"], str(code))] = str(value).lower()
    fill(sheet, pairs, values)
    apply_mapping(sheet, root)
    assert [p for p in check_sites(root) if "sites/hb/" in p.file] == []
    book = book_of(root, "hb")
    assert book["codebook"]["id_column"] == "id"
    assert {c: s["column"] for c, s in book["columns"].items()} == {
        c: s["column"] for c, s in il["columns"].items()}
    for canonical in ("attention_check", "rq_best", "gender", "consent"):
        mine = book["scales"][book["columns"][canonical]["scale"]]
        theirs = il["scales"][il["columns"][canonical]["scale"]]
        codes = theirs.get("native_codes", theirs["values"])
        assert dict(zip(mine["native_codes"], mine["values"])) == dict(zip(codes,
                                                                           theirs["values"]))
