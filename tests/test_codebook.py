"""Site codebooks: every site maps the whole plan; the schema is data, a new site is a folder."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from lacrima.codebook import CodebookError, load_codebook, normalise_label
from lacrima.native import read_drop
from lacrima.study import load_site, load_sites, load_study, sites_root
from lacrima.synth import simulate, write_drop

SITES = ("us", "it", "il")


@pytest.mark.parametrize("code", SITES)
def test_codebook_maps_every_canonical_variable(study, code):
    cb = load_codebook(load_site(code))
    cb.check_against(study)          # raises when a plan variable is unmapped
    assert set(cb.columns) == set(study.variables)
    assert cb.native_name("participant_id") == cb.id_column
    assert not set(cb.identifying_columns) & {s.column for s in cb.columns.values()}


@pytest.mark.parametrize("code", SITES)
def test_codebook_hash_is_the_file_hash(code):
    site = load_site(code)
    cb = load_codebook(site)
    assert cb.sha256 == hashlib.sha256(site.codebook_path.read_bytes()).hexdigest()


@pytest.mark.parametrize("code, good, bad", [
    ("us", "export.CSV", "export.xlsx"),
    ("it", "dati.xlsx", "dati.sav"),
    ("it", "dati.csv", "dati.xls"),
    ("il", "data.sav", "data.csv"),
])
def test_accepts_by_extension(code, good, bad):
    cb = load_codebook(load_site(code))
    assert cb.accepts(good)
    assert not cb.accepts(bad)


def test_primary_formats_match_the_protocol():
    # Protocol section 2: us Qualtrics CSV, it workbook (plus a CSV variant), il SPSS.
    assert load_codebook(load_site("us")).format == "qualtrics_csv"
    it = load_codebook(load_site("it"))
    assert it.format == "xlsx"
    csv = it.primary_format("csv")
    assert (csv.delimiter, csv.decimal, csv.write_encoding) == (";", ",", "cp1252")
    assert load_codebook(load_site("il")).format == "sav"


def test_scale_lookups_are_data():
    us = load_codebook(load_site("us"))
    assert us.scale_of("wai_01").value_of_label("Fairly often") == 3
    assert us.scale_of("wai_01").label_of(5) == "Always"
    it = load_codebook(load_site("it"))
    assert it.scale_of("consent").value_of_label(" sì ") is True    # case and spaces ignored
    assert it.scale_of("gender").value_of_label("Altro") == "another"
    il = load_codebook(load_site("il"))
    assert il.scale_of("gender").value_of_code(2.0) == "man"
    assert il.scale_of("gender").label_of("woman") == "אישה"
    assert 99.0 in il.scale_of("wai_01").missing_codes
    # Attention item: one passing answer, four failing ones; writing False uses the first.
    att = us.scale_of("attention_check")
    assert att.value_of_label("Sometimes") is True and att.value_of_label("Always") is False
    with pytest.raises(KeyError):
        us.scale_of("wai_01").value_of_label("Sometimes?")


def test_normalise_label_composes_unicode():
    assert normalise_label("Si\u0300") == normalise_label("Sì")


def test_native_name_unknown_variable_says_which():
    cb = load_codebook(load_site("us"))
    with pytest.raises(KeyError, match="no column for canonical variable 'nonsense'"):
        cb.native_name("nonsense")


def _copy_sites(tmp_path):
    root = tmp_path / "sites"
    shutil.copytree(sites_root(), root)
    return root


def test_inconsistent_codebook_is_a_clear_error(tmp_path):
    root = _copy_sites(tmp_path)
    path = root / "us" / "codebook.toml"
    text = path.read_text(encoding="utf-8")
    wai = 'labels = ["Seldom", "Sometimes", "Fairly often", "Very often", "Always"]'
    path.write_text(text.replace(wai, 'labels = ["Seldom", "Sometimes"]'), encoding="utf-8")
    with pytest.raises(CodebookError, match="scale 'wai' has 5 values, 2 labels"):
        load_codebook(load_site("us", root))


def test_unknown_scale_is_a_clear_error(tmp_path):
    root = _copy_sites(tmp_path)
    path = root / "it" / "codebook.toml"
    path.write_text(path.read_text(encoding="utf-8").replace('scale = "genere"', 'scale = "sesso"'),
                    encoding="utf-8")
    with pytest.raises(CodebookError, match="unknown scale 'sesso'"):
        load_codebook(load_site("it", root))


def test_fourth_site_needs_no_code_change(tmp_path):
    """A new folder with site.toml and a codebook is a working site (issue: sites as data)."""
    root = _copy_sites(tmp_path)
    uk = root / "uk"
    uk.mkdir()
    (uk / "site.toml").write_text(
        '[site]\ncode = "uk"\ncountry = "United Kingdom"\nlanguage = "en"\nrole = "replication"\n'
        'published_n = 40\ncodebook = "codebook.toml"\n', encoding="utf-8")
    text = (root / "us" / "codebook.toml").read_text(encoding="utf-8")
    (uk / "codebook.toml").write_text(text.replace('site = "us"', 'site = "uk"'), encoding="utf-8")
    assert [s.code for s in load_sites(root)] == ["il", "it", "uk", "us"]
    site = load_site("uk", root)
    study = load_study(root)
    path = write_drop(site, study, tmp_path / "uk.csv", seed=5)
    drop = read_drop(path, site, study)
    assert drop.ok
    assert (drop.frame["site"] == "uk").all()
    assert drop.n_rows == 40
    assert drop.frame.equals(simulate(site, study, 40, 5))


def test_the_study_plan_travels_to_another_process_as_its_file(study):
    import pickle

    again = pickle.loads(pickle.dumps(study))
    assert again.path == study.path and again.sha256 == study.sha256
    assert again.families == study.families
