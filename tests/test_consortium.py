"""Synthetic consortia: K site folders cloned from the real sites, usable as a sites root."""

import pytest
from typer.testing import CliRunner

from lacrima.codebook import load_codebook
from lacrima.consortium import make_consortium, site_code, write_consortium_drops
from lacrima.native import read_drop
from lacrima.study import load_site, load_sites, load_study, sites_root


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    return make_consortium(tmp_path_factory.mktemp("c") / "sites", 5, n=30)


def test_clones_are_sites_with_one_replication_site(five):
    sites = load_sites(five.root)
    assert [s.code for s in sites] == ["il003", "it002", "it005", "us001", "us004"]
    assert [s.role for s in sites].count("replication") == 1
    assert load_site("us001", five.root).role == "replication"
    assert {s.published_n for s in sites} == {30}
    frame = five.to_frame()
    assert list(frame.columns) == ["code", "template", "role", "n"] and len(frame) == 5
    assert dict(zip(frame["code"], frame["template"]))["it005"] == "it"


def test_clone_keeps_its_templates_codebook_and_synthetic_model(five):
    plan = load_study(sites_root())
    clone, template = load_site("il003", five.root), load_site("il", sites_root())
    book, original = load_codebook(clone), load_codebook(template)
    assert book.site == "il003" and book.id_column == original.id_column
    assert book.columns == original.columns
    # Israel's planted heterogeneity (site.toml [synthetic.r_change]) travels with its clones.
    assert clone.synthetic(plan)["r_change"]["after_in_control"] == \
        template.synthetic(plan)["r_change"]["after_in_control"] == 0.05
    assert load_study(five.root).sha256 == plan.sha256


def test_drops_are_written_in_each_clones_native_format_and_read_back(five, tmp_path):
    drops = write_consortium_drops(five.root, tmp_path, n=12, sites=("il003", "it002", "us001"))
    assert {c: p.suffix for c, p in drops.items()} == {"il003": ".sav", "it002": ".xlsx", "us001": ".csv"}
    study = load_study(five.root)
    for code, path in drops.items():
        drop = read_drop(path, load_site(code, five.root), study)
        assert len(drop.frame) == 12, code


def test_text_formats_and_distinct_seeds(five, tmp_path):
    drops = write_consortium_drops(five.root, tmp_path, n=10, sites=("it002", "it005"),
                                   text_formats=True)
    assert {p.suffix for p in drops.values()} == {".csv"}
    # Site i uses seed + i, so two clones of one template do not send the same answers.
    assert drops["it002"].name.split("seed")[1] != drops["it005"].name.split("seed")[1]


def test_site_codes_are_padded_to_the_consortium_size():
    assert site_code("us", 1, 5) == "us001"
    assert site_code("it", 42, 1000) == "it0042"


def test_bad_requests_say_what_was_wrong(tmp_path):
    with pytest.raises(ValueError, match="at least 2 sites"):
        make_consortium(tmp_path / "a", 1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        make_consortium(tmp_path / "b", 3)
    with pytest.raises(ValueError, match="no replication site"):
        make_consortium(tmp_path / "c", 3, templates=("it", "il"))


def test_cli_synth_sites_writes_a_consortium(tmp_path):
    from flows.cli import app

    result = CliRunner().invoke(app, ["synth", "--sites", "3", "--n", "8", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"LACRIMA_SITES={tmp_path / 'sites'}" in result.output
    assert [s.code for s in load_sites(tmp_path / "sites")] == ["il003", "it002", "us001"]
    assert sorted(p.name for p in (tmp_path / "drops").iterdir()) == ["il003", "it002", "us001"]


def test_cli_synth_needs_exactly_one_of_site_and_sites(tmp_path):
    from flows.cli import app

    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "either --site" in result.output


def test_several_replication_sites(tmp_path):
    made = make_consortium(tmp_path / "a", 4, n=20, replications=2)
    roles = made.to_frame().set_index("code")["role"].to_dict()
    assert roles == {"us001": "replication", "it002": "original", "il003": "original",
                     "us004": "replication"}
    with pytest.raises(ValueError, match="at least one original"):
        make_consortium(tmp_path / "b", 3, replications=3)
    with pytest.raises(ValueError, match="asked for 3 replication"):
        make_consortium(tmp_path / "c", 5, replications=3)     # only us001 and us004


def test_cli_synth_sites_with_several_replications(tmp_path):
    from flows.cli import app

    result = CliRunner().invoke(app, ["synth", "--sites", "5", "--replications", "3", "--n", "8",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    roles = {s.code: s.role for s in load_sites(tmp_path / "sites")}
    assert roles == {"us001": "replication", "us002": "replication", "us003": "replication",
                     "it004": "original", "il005": "original"}
    bad = CliRunner().invoke(app, ["synth", "--sites", "3", "--replications", "3",
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "at least one original" in bad.output
