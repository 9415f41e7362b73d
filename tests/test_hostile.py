"""Hostile and odd files (issue 11, item 10): what a drop may expand to is bounded.

A few-KB .xlsx declaring a sheet of a million rows by 16,384 columns, a deflate bomb inside
the workbook container, too many rows, a huge cell: each is refused with a clear message
(file, check, row or column, limit and what was found), exit 2 from ``lacrima check``, and
bounded memory (peak RSS of the ``check`` process, measured with ``os.wait4``).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lacrima import native
from lacrima.codebook import load_codebook
from lacrima.findings import DropError
from lacrima.study import load_site

REPO = Path(__file__).resolve().parents[1]
# Peak resident memory of `lacrima check` on a bomb, above the same command on a clean 5-row
# drop (its imports alone peak near 600 MB). Without the bounds the dimension bomb grows until
# the machine runs out (billions of padded cells); with them it reads a few rows.
EXTRA_MB = 150


@pytest.fixture(scope="module")
def it_drop(tmp_path_factory, study):
    from lacrima.synth import write_drop

    return write_drop(load_site("it"), study, tmp_path_factory.mktemp("it") / "it", n=5, seed=1)


def _rewrite_sheet(src: Path, dst: Path, edit, extra: dict | None = None) -> Path:
    """Copy a workbook, passing its first sheet's XML through ``edit``; add ``extra`` parts."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = edit(data.decode()).encode()
            zout.writestr(info.filename, data)
        for name, (mb, chunk) in (extra or {}).items():
            with zout.open(name, "w", force_zip64=True) as fh:
                for _ in range(mb):
                    fh.write(chunk)
    return dst


def dimension_bomb(src: Path, dst: Path, dimension: bool = True) -> Path:
    """A workbook whose sheet declares (or reaches) A1:XFD1048576: one extra cell, a few KB."""
    def edit(xml: str) -> str:
        if dimension:
            xml = re.sub(r'<dimension ref="[^"]*"\s*/>', '<dimension ref="A1:XFD1048576"/>', xml)
        else:
            xml = re.sub(r'<dimension ref="[^"]*"\s*/>', "", xml)
        far = '<row r="1048576"><c r="XFD1048576" t="n"><v>1</v></c></row>'
        return xml.replace("</sheetData>", far + "</sheetData>")
    return _rewrite_sheet(src, dst, edit)


def deflate_bomb(src: Path, dst: Path, mb: int) -> Path:
    """A workbook carrying ``mb`` MB of zeros as one part (a few MB compressed)."""
    return _rewrite_sheet(src, dst, lambda xml: xml,
                          {"xl/media/padding.bin": (mb, bytes(1 << 20))})


def _read(path: Path, site: str, limits: native.Limits = native.Limits()):
    codebook = load_codebook(load_site(site))
    return native._read_table(path, codebook, limits)


def test_a_sheet_declaring_a_million_rows_is_refused_before_its_cells_are_read(it_drop, tmp_path):
    bomb = dimension_bomb(it_drop, tmp_path / "bomb.xlsx")
    assert bomb.stat().st_size < 20_000
    with pytest.raises(DropError) as err:
        _read(bomb, "it")
    assert err.value.check == "too_many_rows"
    f = err.value.findings[0]
    assert "bomb.xlsx" in f.message and "1,048,576 rows" in f.message
    assert f.found == "1,048,576 rows declared" and f.expected == f"at most {native.MAX_ROWS:,} data rows"


def test_a_far_cell_without_declared_dimensions_stops_reading_at_the_bound(it_drop, tmp_path):
    bomb = dimension_bomb(it_drop, tmp_path / "far.xlsx", dimension=False)
    with pytest.raises(DropError) as err:
        _read(bomb, "it", native.Limits(rows=50, columns=60))
    assert err.value.check in ("too_many_rows", "too_many_columns")


def test_a_deflate_bomb_is_refused_by_its_uncompressed_size(it_drop, tmp_path):
    bomb = deflate_bomb(it_drop, tmp_path / "deflate.xlsx", native.MAX_EXPANDED_MB + 1)
    assert bomb.stat().st_size < 5e6
    with pytest.raises(DropError) as err:
        _read(bomb, "it")
    assert err.value.check == "expands_too_much"
    assert f"{native.MAX_EXPANDED_MB:,} MB uncompressed" in err.value.findings[0].expected


def test_the_bounds_leave_an_ordinary_workbook_alone(it_drop):
    table = _read(it_drop, "it", native.Limits(rows=5, columns=200))
    assert len(table.rows) == 5


def test_too_many_rows_in_a_csv_are_refused_naming_the_row(tmp_path):
    site = load_site("us")
    fmt = load_codebook(site).formats[0]
    header = "\n".join(",".join(f"c{i}" for i in range(3)) for _ in range(fmt.header_rows))
    path = tmp_path / "many.csv"
    path.write_text(header + "\n" + "1,2,3\n" * 11)
    with pytest.raises(DropError) as err:
        _read(path, "us", native.Limits(rows=10))
    assert err.value.check == "too_many_rows"
    assert err.value.findings[0].rows == (fmt.header_rows + 11,)


@pytest.mark.parametrize("length", [native.MAX_CELL_CHARS + 1, 200_000])
def test_a_huge_cell_is_refused_naming_row_and_column_never_its_text(tmp_path, length):
    site = load_site("us")
    fmt = load_codebook(site).formats[0]
    header = "\n".join("a,b,c" for _ in range(fmt.header_rows))
    path = tmp_path / "cell.csv"
    path.write_text(header + "\n1,2,3\n1," + "x" * length + ",3\n")
    with pytest.raises(DropError) as err:
        _read(path, "us")
    f = err.value.findings[0]
    assert f.check == "cell_too_long" and f.rows == (fmt.header_rows + 2,)
    assert "xxxx" not in f.message


def test_limits_come_from_the_plan(study):
    limits = native.Limits.from_study(study)
    v = study.section("validation")
    assert limits.rows == v.get("max_rows", native.MAX_ROWS)
    assert limits.expanded_mb == v.get("max_expanded_mb", native.MAX_EXPANDED_MB)


def _check_peak(path: Path, site: str) -> tuple[int, str, float]:
    """Run ``lacrima check`` as a process: exit code, stderr+stdout, peak RSS in MB."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    proc = subprocess.Popen([sys.executable, "-m", "flows", "check", str(path), "--site", site],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = io.BytesIO()
    out.write(proc.stdout.read())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out.getvalue().decode(errors="replace"), usage.ru_maxrss / 1024


@pytest.fixture(scope="module")
def clean_peak(it_drop):
    code, out, peak = _check_peak(it_drop, "it")
    assert code == 0, out
    return peak


@pytest.mark.process
@pytest.mark.parametrize("kind", ["dimension", "deflate"])
def test_check_refuses_a_bomb_with_exit_2_in_bounded_memory(it_drop, tmp_path, kind, clean_peak):
    bomb = (dimension_bomb(it_drop, tmp_path / "bomb.xlsx") if kind == "dimension" else
            deflate_bomb(it_drop, tmp_path / "bomb.xlsx", native.MAX_EXPANDED_MB + 1))
    code, out, peak = _check_peak(bomb, "it")
    said = " ".join(out.split())
    assert code == 2, out
    assert "Traceback" not in out and "bomb.xlsx" in said
    assert ("too_many_rows" if kind == "dimension" else "expands_too_much") in said
    assert peak < clean_peak + EXTRA_MB, f"peak {peak:.0f} MB, clean drop {clean_peak:.0f} MB"
