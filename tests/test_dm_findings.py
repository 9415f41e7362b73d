"""Issue 13, point 1-2: findings a data manager can act on, read at 80 columns.

Each test edits a clean synthetic drop the way a site's tool or a person would, then reads
the check's output (terminal, JSON, HTML) as the data manager does.
"""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from flows.cli import app
from lacrima.dropreport import print_report, render_html
from lacrima.intake import read_and_validate
from lacrima.privacy import DEMO_KEY
from lacrima.study import load_site
from lacrima.synth import write_drop

N = 30


@pytest.fixture(scope="module")
def clean_us(study, tmp_path_factory):
    return write_drop(load_site("us"), study, tmp_path_factory.mktemp("dm") / "us.csv", n=N, seed=7)


def _edit(src, dst, fn):
    rows = list(csv.reader(io.StringIO(src.read_bytes().decode("utf-8-sig"), newline="")))
    fn(rows, rows[0].index)
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    dst.write_bytes(buf.getvalue().encode("utf-8-sig"))
    return dst


def _check(path, tmp_path, site="us"):
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["check", str(path), "--site", site, "--report", str(out)])
    assert "Traceback" not in res.output
    return res, json.loads(out.read_text())


def _report(path, study, site="us"):
    rep, _ = read_and_validate(path, load_site(site), study, DEMO_KEY, path.name, "0" * 64)
    return rep


def test_finding_names_the_file_native_column_value_and_fix(clean_us, study, tmp_path):
    path = _edit(clean_us, tmp_path / "US export March.csv",
                 lambda rows, col: rows[5].__setitem__(col("Q14_3"), "7"))
    res, rep = _check(path, tmp_path)
    assert res.exit_code == 1
    f = next(f for f in rep["findings"] if f["check"] == "value_range")
    assert f["columns"] == ["Q14_3"] and f["rows"] == [6]     # 3 header rows: 6th line
    assert "Q14_3 [wai_03]" in f["message"] and f["found"].endswith(": 7")
    assert f["fix"] and f["fix"] != f["message"]
    assert "drop.csv" not in json.dumps(rep) and rep["file"] == "US_export_March.csv"
    html = render_html(_report(path, study))
    assert "Q14_3 [wai_03]" in html and "1 answer(s) not on the scale: 7" in html and f["fix"] in html


def test_free_text_in_a_label_column_is_not_echoed(clean_us, study, tmp_path):
    secret = "Mario Rossi mrossi@ex.it"
    path = _edit(clean_us, tmp_path / "gender.csv",
                 lambda rows, col: rows[4].__setitem__(col("Q4"), secret))
    res, rep = _check(path, tmp_path)
    f = next(f for f in rep["findings"] if f["check"] == "unknown_labels")
    assert f["rows"] == [5] and "not shown" in f["found"]
    for text in (json.dumps(rep), res.output, render_html(_report(path, study))):
        assert "Mario" not in text and "mrossi" not in text


def test_a_near_label_made_of_the_codebooks_words_is_shown(clean_us, tmp_path):
    path = _edit(clean_us, tmp_path / "near.csv", lambda rows, col: rows[4].__setitem__(col("Q4"), "man?"))
    _, rep = _check(path, tmp_path)
    f = next(f for f in rep["findings"] if f["check"] == "unknown_labels")
    assert "'man?'" in f["found"]


def test_escape_codes_in_a_header_never_reach_the_terminal_or_report(clean_us, tmp_path):
    def add_column(rows, col):
        rows[0].append("Notes\x1b[2J\x1b]0;owned\x07")
        for r in rows[1:]:
            r.append("x")
    path = _edit(clean_us, tmp_path / "ansi.csv", add_column)
    res, rep = _check(path, tmp_path)
    assert "\x1b" not in res.output and "\x07" not in res.output
    assert "\x1b" not in json.dumps(rep, ensure_ascii=False)
    assert any("Notes" in c for f in rep["findings"] for c in f["columns"])


def test_a_dash_answer_in_an_ignored_column_is_not_a_formula(clean_us, tmp_path):
    def add_column(rows, col):
        rows[0].append("Comments")
        for r in rows[1:]:
            r.append("- felt heard, thanks")
    path = _edit(clean_us, tmp_path / "comments.csv", add_column)
    res, rep = _check(path, tmp_path)
    assert res.exit_code == 0, res.output
    assert "formula_cells" not in {f["check"] for f in rep["findings"]}


def test_a_clean_file_says_so_in_one_line(clean_us, study):
    console = Console(width=80, record=True, color_system=None)
    print_report(_report(clean_us, study), console)
    text = console.export_text()
    assert text == "us.csv (us): valid: no problems found, 30 rows\n"      # one line (issue 22)
    # the identifying columns the codebook lists are removed as designed: said with --verbose
    # (and in the JSON), not a problem
    console = Console(width=80, record=True, color_system=None)
    print_report(_report(clean_us, study), console, verbose=True)
    text = console.export_text()
    assert "identifying column(s)" in text and "WARNING" not in text


def _words(text):
    return re.findall(r"\S+", text)


@pytest.mark.parametrize("width", [80, 160])
def test_check_output_breaks_no_word(clean_us, study, tmp_path, width):
    def spoil(rows, col):
        rows[5][col("Q14_3")] = "7"
        rows[4][col("Q4")] = "Prefer to self-describe?"
        rows[6][col("ResponseId")] = rows[7][col("ResponseId")]
    rep = _report(_edit(clean_us, tmp_path / "spoilt.csv", spoil), study)
    console = Console(width=width, record=True, color_system=None)
    print_report(rep, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    if width < 120:            # the list layout: every word of every finding whole on a line
        printed = set(_words(text))
        for f in rep.findings:
            # info notes (identifying columns removed as designed) only with --verbose
            shown = () if f.severity == "info" else (f.message, f.expected, f.found, f.fix)
            for field in shown:
                assert set(_words(field)) <= printed, field
    assert "Q14_3" in text and "[wai_03]" in text
