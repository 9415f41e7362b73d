"""The plan and site folders as a checked contract (issue 12 items 1, 2, 4, 5).

One test per class of configuration mistake: each is a clear one-line problem from
``lacrima sites check`` and a refusal from ``run`` before Prefect is imported. Then a
Qualtrics export made with "Use numeric values", a windows-1255 SPSS file and the drafts of
a Qualtrics and an SPSS site (the REDCap onboarding: test_onboarding.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from lacrima.contract import check_sites

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
DICTIONARY = FIXTURES / "de_redcap_dictionary.csv"
Q99 = ('file_order = ["StartDate",', 'file_order = ["StartDate", "Q99",')


@pytest.fixture
def root(tmp_path):
    """A private copy of the repository's sites folder, to break."""
    dest = tmp_path / "sites"
    shutil.copytree(REPO / "sites", dest)
    return dest


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def lines(root: Path) -> list[str]:
    return [str(p) for p in check_sites(root)]


def test_repository_sites_are_clean():
    assert check_sites(REPO / "sites") == []


# --------------------------------------------------------------------------- one per mistake


def test_misspelt_key_names_file_path_and_suggests(root):
    edit(root / "study.toml", 'families = ["H1", "H2", "H3", "H4", "A1"]\n# Verdict',
         'famillies = ["H1", "H2", "H3", "H4", "A1"]\n# Verdict')
    got = lines(root)
    assert any(line.startswith("sites/study.toml: replication.famillies: unknown key (did you mean "
                               "'families'?)") for line in got), got
    # One mistake, one line: the key it should have been is not reported missing as well.
    assert len(got) == 1


def test_dangling_references(root):
    edit(root / "study.toml", 'families = ["H1", "H2", "H3", "H4", "A1", "A2", "A3"]',
         'families = ["H1", "H2", "H3", "H4", "A9", "A2", "A3"]')
    edit(root / "study.toml", 'y = ["change"]', 'y = ["chnage"]')
    item3 = 'text = "Working Alliance Inventory (short revised) - item 3"'
    edit(root / "us" / "codebook.toml", f'scale = "wai", {item3}', f'scale = "wia", {item3}')
    got = lines(root)
    assert any(line.startswith("sites/study.toml: pooling.families[4]: 'A9' is not a family id "
                               "of the plan") for line in got), got
    assert ("sites/study.toml: families[0] (H1).y: 'chnage' is not a variable or score of the plan "
            "(did you mean 'change'?)") in got
    assert ("sites/us/codebook.toml: columns.wai_03.scale: 'wia' is not a scale of this codebook "
            "(did you mean 'wai'?)") in got


def test_bad_role(root):
    edit(root / "il" / "site.toml", 'role = "original"', 'role = "replicaton"')
    got = lines(root)
    assert len(got) == 1 and got[0].startswith(
        "sites/il/site.toml: site.role: Input should be 'original' or 'replication'; "
        "found 'replicaton'"), got


def test_no_replication_site(root):
    edit(root / "us" / "site.toml", 'role = "replication"', 'role = "original"')
    assert any("no site has role 'replication'" in line for line in lines(root))


def test_bad_rules(root):
    edit(root / "study.toml", '\nrule = "below"', '\nrule = "under"')
    edit(root / "study.toml", '{ verdict = "inconclusive", all = ["in_pi"] }',
         '{ verdict = "inconclusive", all = ["inside_pi"] }')
    got = lines(root)
    assert any(line.startswith("sites/study.toml: exclusions[2]: Input tag 'under' found using "
                               "'rule' does not match any of the expected tags")
               for line in got), got
    assert any(line.startswith("sites/study.toml: replication.verdicts[2].all[0]: Input should be "
                               "'same_direction', 'significant'") and "found 'inside_pi'" in line
               for line in got), got


def test_impossible_values(root):
    edit(root / "study.toml", "level = 0.95", "level = 95")
    edit(root / "study.toml", "min_present = 10", "min_present = 20")
    got = lines(root)
    assert "sites/study.toml: study.level: Input should be less than 1; found 95" in got
    assert "sites/study.toml: scores.alliance.min_present: 20 is more than the 12 items" in got


@pytest.mark.parametrize("mistake, expected", [
    # file_order names a column nothing describes: synth used to stop with a bare StopIteration
    (Q99,
     "sites/us/codebook.toml: codebook.file_order[1]: 'Q99' is neither a mapped column nor an "
     "[[extra_columns]] entry"),
    (('wai_02 = { column = "Q14_2"', 'wai_02 = { column = "Q14_1"'),
     "sites/us/codebook.toml: columns: native column 'Q14_1' is mapped twice"),
    (('rq_best = { column = "Q17"', '# rq_best = { column = "Q17"'),
     "sites/us/codebook.toml: columns.rq_best: missing: every variable of the plan needs a column"),
    (('labels = ["Woman", "Man", "Another gender identity"]', 'labels = ["Woman", "Man"]'),
     "sites/us/codebook.toml: scales.gender: 3 values, 2 labels and 3 native codes"),
    (('values = ["woman", "man", "another"]', 'values = ["woman", "man", "other"]'),
     "sites/us/codebook.toml: scales.gender.values: 'other' cannot be a value of category "
     "variable 'gender'"),
])
def test_codebook_column_rules(root, mistake, expected):
    edit(root / "us" / "codebook.toml", *mistake)
    got = lines(root)
    assert any(line.startswith(expected) for line in got), got


@pytest.mark.parametrize("mistake, expected", [
    (('template = "IT-{n:04d}"', 'template = "IT-0001"'),
     "sites/it/codebook.toml: ids.template: 'IT-0001': expected a template with {n}"),
    (('date_format = "%d/%m/%Y"\ndecimal', 'date_format = "%d/%m"\ndecimal'),
     "sites/it/codebook.toml: formats[0].date_format: '%d/%m' does not read back the dates"),
    (('encodings = ["utf-8-sig", "cp1252"]', 'encodings = ["utf-8-sig", "cp-1252-it"]'),
     "sites/it/codebook.toml: formats[1].encodings: 'cp-1252-it' is not a known text encoding"),
])
def test_codebook_id_and_format_rules(root, mistake, expected):
    edit(root / "it" / "codebook.toml", *mistake)
    got = lines(root)
    assert any(line.startswith(expected) for line in got), got


def test_file_order_without_extra_column_is_a_codebook_error_not_stop_iteration(root, tmp_path):
    from lacrima.codebook import CodebookError
    from lacrima.study import load_site, load_study
    from lacrima.synth import write_drop

    edit(root / "us" / "codebook.toml", *Q99)
    with pytest.raises(CodebookError, match=r"file_order lists \['Q99'\].*\[\[extra_columns\]\]"):
        write_drop(load_site("us", root), load_study(root), tmp_path, n=5)


def test_unknown_role_is_refused_by_the_loader(root):
    from lacrima.study import load_site

    edit(root / "us" / "site.toml", 'role = "replication"', 'role = "replica"')
    with pytest.raises(ValueError, match=r"role = 'replica' is not a role; expected one of "
                                         r"\['original', 'replication'\]"):
        load_site("us", root)


def test_every_problem_is_collected(root):
    edit(root / "study.toml", "level = 0.95", "levle = 0.95")
    edit(root / "il" / "site.toml", 'role = "original"', 'role = "pilot"')
    edit(root / "it" / "codebook.toml", 'values = "labels"\nsheet', 'values = "label"\nsheet')
    files = {line.split(":")[0] for line in lines(root)}
    assert files == {"sites/study.toml", "sites/il/site.toml", "sites/it/codebook.toml"}


# --------------------------------------------------------------------------- the commands


def test_sites_check_command(root):
    runner = CliRunner()
    ok = runner.invoke(app, ["sites", "check", "--sites", str(root)])
    assert ok.exit_code == 0, ok.output
    edit(root / "it" / "site.toml", 'role = "original"', 'role = "originale"')
    bad = runner.invoke(app, ["sites", "check", "--sites", str(root)])
    assert bad.exit_code == 1
    assert "sites/it/site.toml: site.role:" in bad.stdout and "Traceback" not in bad.output


@pytest.mark.process
@pytest.mark.parametrize("command", [["run", "--demo"], ["demo"], ["serve", "--demo"]])
def test_pipeline_commands_refuse_a_broken_configuration_before_prefect(root, tmp_path, command):
    edit(root / "study.toml", '\nrule = "below"', '\nrule = "under"')
    edit(root / "us" / "site.toml", 'role = "replication"', 'role = "replica"')
    probe = ("import sys\nfrom flows.cli import main\nsys.argv = ['lacrima', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
             "print('prefect' in sys.modules, 'pandas' in sys.modules, code)\n")
    env = dict(os.environ, LACRIMA_SITES=str(root), PYTHONPATH=os.pathsep.join(sys.path),
               PREFECT_API_URL="http://127.0.0.1:9/api", LACRIMA_STORAGE=str(tmp_path / "data"))
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=60)
    assert out.stdout.split() == ["False", "False", "2"], (out.stdout, out.stderr)
    problems = [line for line in out.stderr.splitlines() if line.startswith("config:")]
    assert len(problems) == 2 and "Traceback" not in out.stderr
    assert any("sites/us/site.toml: site.role" in p for p in problems)
    assert not (tmp_path / "data").exists()


MISTAKES = {
    "misspelt key": ("study.toml", 'families = ["H1", "H2", "H3", "H4", "A1"]\n# Verdict',
                     'famillies = ["H1", "H2", "H3", "H4", "A1"]\n# Verdict',
                     "sites/study.toml: replication.famillies: unknown key (did you mean "
                     "'families'?)"),
    "dangling reference": ("study.toml", 'y = ["change"]', 'y = ["chnage"]',
                           "sites/study.toml: families[0] (H1).y: 'chnage' is not a variable"),
    "bad role": ("il/site.toml", 'role = "original"', 'role = "replicaton"',
                 "sites/il/site.toml: site.role: Input should be 'original' or 'replication'"),
    "bad rule": ("study.toml", '\nrule = "below"', '\nrule = "under"',
                 "sites/study.toml: exclusions[2]: Input tag 'under' found using 'rule'"),
    "codebook column rule": ("us/codebook.toml", *Q99,
                             "sites/us/codebook.toml: codebook.file_order[1]: 'Q99' is neither"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_run_refuses_each_class_of_mistake(root, tmp_path, monkeypatch, mistake):
    file, old, new, expected = MISTAKES[mistake]
    edit(root / file, old, new)
    monkeypatch.setenv("LACRIMA_SITES", str(root))
    checked = CliRunner().invoke(app, ["sites", "check"])
    first = checked.stdout.splitlines()[0]
    assert checked.exit_code == 1 and first.startswith(expected), checked.output
    refused = CliRunner().invoke(app, ["run", "--demo", "--storage", str(tmp_path / "data")])
    assert refused.exit_code == 2, refused.output
    assert f"config: {checked.stdout.splitlines()[0]}" in refused.output.splitlines()
    assert "Traceback" not in refused.output and not (tmp_path / "data").exists()


# The REDCap onboarding (sites new, the mapping sheet, a German site analysed): test_onboarding.py


# --------------------------------------------------------------------------- native variants


def _numeric_us(root: Path) -> None:
    """Site us as a Qualtrics "Use numeric values" export: codes are the RecodeValues."""
    book = root / "us" / "codebook.toml"
    edit(book, 'header_rows = 3\ndate_format = "%Y-%m-%d %H:%M:%S"\nvalues = "labels"',
         'header_rows = 3\ndate_format = "%Y-%m-%d %H:%M:%S"\nvalues = "codes"')
    for scale, codes in [("yes_no", "[1, 2]"), ("consent", "[1, 2]"), ("gender", "[1, 2, 3]"),
                         ("rq_best", "[1, 2, 3, 4]"), ("attention", "[2, 1, 3, 4, 5]")]:
        text = book.read_text(encoding="utf-8")
        text = re.sub(rf"(\[scales\.{scale}\]\nvalues = .*\nlabels = .*\n)",
                      rf"\1native_codes = {codes}\n", text)
        book.write_text(text, encoding="utf-8")


def test_qualtrics_numeric_export_through_the_codebook(root, tmp_path):
    from lacrima.native import read_drop
    from lacrima.study import load_site, load_study
    from lacrima.synth import write_drop

    study = load_study(root)
    labels_drop = write_drop(load_site("us", root), study, tmp_path / "labels", n=60, seed=4)
    _numeric_us(root)
    assert lines(root) == []
    numeric_root = tmp_path / "numeric_sites"
    shutil.copytree(root, numeric_root)
    shutil.rmtree(root)
    shutil.copytree(REPO / "sites", root)
    numeric_site = load_site("us", numeric_root)
    numeric_drop = write_drop(numeric_site, study, tmp_path / "numeric", n=60, seed=4)
    assert ",Seldom," not in numeric_drop.read_text(encoding="utf-8-sig")
    a = read_drop(labels_drop, load_site("us", root), study)
    b = read_drop(numeric_drop, numeric_site, study)
    assert not a.errors and not b.errors
    assert a.to_frame().equals(b.to_frame())
    # The labels codebook meeting the numeric file names the export setting.
    c = read_drop(numeric_drop, load_site("us", root), study)
    unknown = [f for f in c.errors if f.check == "unknown_labels"]
    assert unknown and all('"Use numeric values"' in f.message and '"Use choice text"' in f.message
                           for f in unknown)


def test_windows_1255_sav_reads_hebrew_names_and_labels():
    """tests/fixtures/il_windows1255.sav: written by PSPP from il_windows1255.sps."""
    import pyreadstat

    from lacrima.native import read_drop
    from lacrima.study import load_site, load_study

    path = FIXTURES / "il_windows1255.sav"
    _, meta = pyreadstat.read_sav(str(path), metadataonly=True)
    assert meta.file_encoding.lower() == "windows-1255"
    assert meta.column_names[0] != "id"      # what pyreadstat alone gives: a shifted name
    drop = read_drop(path, load_site("il"), load_study(), today=dt.date(2026, 1, 1))
    assert not drop.findings, [f.message for f in drop.findings]
    frame = drop.to_frame()
    assert frame["participant_id"].tolist() == [str(i) for i in range(1, 9)]
    assert frame["gender"].notna().all()


def test_sav_encoding_falls_back_and_a_failure_says_what_was_tried():
    from lacrima.findings import DropError
    from lacrima.native import _pick_encoding

    hebrew = ["\u00ee\u00e2\u00e3\u00f8"]    # the windows-1255 bytes of "מגדר", read as latin1
    assert _pick_encoding(["ascii", "windows-1255"], hebrew, "'x.sav'") == "windows-1255"
    with pytest.raises(DropError) as err:
        _pick_encoding(["ascii", "utf-8"], hebrew, "'x.sav'")
    assert err.value.check == "bad_encoding" and "encoding" in str(err.value)
    assert "ascii, utf-8" in str(err.value)


def test_qualtrics_survey_file_draft(root):
    made = CliRunner().invoke(app, ["sites", "new", "fr", "--from-qualtrics",
                                    str(FIXTURES / "fr_survey.qsf"), "--sites", str(root),
                                    "--country", "France", "--language", "fr"])
    assert made.exit_code == 0, made.output
    import tomllib
    book = tomllib.loads((root / "fr" / "codebook.toml").read_text(encoding="utf-8"))
    # Qualtrics' recipient, IP and location metadata are pre-marked identifying, and so is a
    # question validated as an e-mail address.
    assert set(book["codebook"]["identifying_columns"]) == {
        "IPAddress", "RecipientLastName", "RecipientFirstName", "RecipientEmail",
        "ExternalReference", "LocationLatitude", "LocationLongitude", "Q20"}
    cols = book["columns"]
    assert cols["participant_id"]["column"] == "ResponseId"
    assert cols["completed_at"]["column"] == "RecordedDate"
    # Matrix statements are one column each, on the matrix's answer scale (Display text, recodes).
    assert cols["wai_02"] == {"column": "wai_2", "scale": "wai", "import_id": "QID14_2",
                              "text": "Inventaire de l'alliance de travail (WAI-SR) - Énoncé 2"}
    assert book["scales"]["wai"]["labels"][0] == "Rarement"     # one scale for the matrix
    # RecodeValues are the codes a "Use numeric values" export holds.
    assert book["scales"]["in_therapy"]["native_codes"] == [1, 0]
    extras = {e["column"]: e for e in book["extra_columns"]}
    assert extras["Q3"]["text"] == "Quel âge avez-vous (en années) ?" and "StartDate" in extras
    assert any(line.startswith("sites/fr/codebook.toml: columns.age: missing")
               for line in lines(root))


def test_spss_draft_reads_a_legacy_code_page(root):
    made = CliRunner().invoke(app, ["sites", "new", "hb", "--from-spss",
                                    str(FIXTURES / "il_windows1255.sav"),
                                    "--sites", str(root), "--role", "original"])
    assert made.exit_code == 0, made.output
    import tomllib
    book = tomllib.loads((root / "hb" / "codebook.toml").read_text(encoding="utf-8"))
    assert book["formats"][0]["encodings"] == ["windows-1255"]
    assert book["scales"]["gender"]["labels"] == ["אישה", "גבר", "אחר"]
    assert book["scales"]["gender"]["missing_codes"] == [99]
    assert book["columns"]["wai_01"]["column"] == "wai1"
    got = lines(root)
    assert "sites/hb/codebook.toml: codebook.id_column: left to a person: TODO" in got
