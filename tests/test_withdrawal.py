"""Withdrawal of consent (issue 11 item 7): recorded by pseudonym, left out of curated data and
every later output, not brought back by a later export; ``--purge-raw`` redacts raw files."""

import io

import pandas as pd
import pytest
from typer.testing import CliRunner

from lacrima import catalog, intake, steps
from flows.cli import app
from lacrima.codebook import load_codebook
from lacrima.privacy import pseudonymise
from lacrima.storage import LocalStorage
from lacrima.synth import simulate, write_drop

KEY = b"test-key-not-secret"        # what conftest puts in LACRIMA_PSEUDONYM_KEY


def lacrima(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def _site(sites, code):
    return next(s for s in sites if s.code == code)


def _pseudonym(code, raw_id):
    return pseudonymise(code, pd.Series([raw_id]), KEY).iloc[0]


def test_a_withdrawn_person_leaves_every_later_output_and_does_not_come_back(
        tmp_path, study, sites):
    it = _site(sites, "it")
    root = tmp_path / "store"
    storage = LocalStorage(root)
    a = write_drop(it, study, tmp_path / "a", n=15, seed=1)
    intake.upload(storage, it, a)
    intake.ingest_site(storage, it, study, KEY)
    gone = simulate(it, study, 15, 1)["participant_id"].iloc[2]          # "IT-0003"
    res = lacrima("withdraw", gone, "--site", "it", "--reason", "asked by phone",
                  "--storage", root)
    assert res.exit_code == 0, res.output
    assert gone not in res.output and "held a record" in " ".join(res.output.split())
    pid = _pseudonym("it", gone)
    assert pid not in set(catalog.curated_frame(storage, "it")["participant_id"])
    # a cumulative export still holding the person: accepted with its new people only
    cumulative = write_drop(it, study, tmp_path / "b", n=25, seed=1)
    intake.upload(storage, it, cumulative)
    res = intake.ingest_site(storage, it, study, KEY)
    (report,) = res.reports
    curated = catalog.curated_frame(storage, "it")
    assert pid not in set(curated["participant_id"]) and len(curated) == 14 + res.records_new
    a_flow = steps.site_step(storage, it, study, outputs=False).flow
    assert a_flow.excluded[0] == ("withdrew_consent", "Withdrew consent", 1)
    assert a_flow.received == len(curated) + 1
    # the ID is nowhere in the ledger or register; raw is untouched without --purge-raw
    for path in (root / "ledger").rglob("*.json"):
        assert gone not in path.read_text()
    assert (root / "register" / "it.json").read_text().count(pid) == 1
    (w,) = catalog.withdrawals(storage, "it")
    assert w["pseudonym"] == pid and w["held"] and not w["purged"]


def test_cumulative_records_changed_for_a_withdrawn_person_are_not_a_clash(tmp_path, study, sites):
    it = _site(sites, "it")
    storage = LocalStorage(tmp_path / "store")
    intake.upload(storage, it, write_drop(it, study, tmp_path / "a", n=15, seed=1))
    intake.ingest_site(storage, it, study, KEY)
    intake.withdraw(storage, it, study, KEY, " IT-0003 ")
    intake.upload(storage, it, write_drop(it, study, tmp_path / "b", n=15, seed=2))  # all changed
    (report,) = intake.ingest_site(storage, it, study, KEY).reports
    rows = {r for f in report.errors if f.check == "id_clash" for r in f.rows}
    assert len(rows) == 14 and 4 not in rows                 # row 4 holds IT-0003


@pytest.mark.parametrize("code", ["il", "it"])
def test_purge_raw_replaces_each_raw_file_by_a_redacted_copy(tmp_path, study, sites, code):
    site = _site(sites, code)
    root = tmp_path / "store"
    storage = LocalStorage(root)
    first = write_drop(site, study, tmp_path / "a", n=12, seed=1)
    intake.upload(storage, site, first)
    intake.ingest_site(storage, site, study, KEY)
    gone = simulate(site, study, 12, 1)["participant_id"].iloc[4]
    (before,) = catalog.batches(storage, code)
    res = lacrima("withdraw", gone, "--site", code, "--purge-raw", "--storage", root)
    assert res.exit_code == 0, res.output
    (after,) = catalog.batches(storage, code)
    assert not storage.exists(before.raw_key) and storage.exists(after.raw_key)
    assert after.raw_key != before.raw_key and after.sha256 == before.sha256
    assert not storage.list(f"landing/{code}")          # the landed original is gone too
    # the redacted copy reads as the same drop without the person
    from lacrima.native import read_drop

    path = tmp_path / f"redacted{first.suffix}"
    path.write_bytes(storage.read_bytes(after.raw_key))
    drop = read_drop(path, site, study)
    ids, _ = load_codebook(site).normalise_ids(drop.frame["participant_id"])
    kept = simulate(site, study, 12, 1)["participant_id"].drop(index=4).tolist()
    assert ids.tolist() == kept
    original = read_drop(first, site, study).frame.drop(index=4).reset_index(drop=True)
    pd.testing.assert_frame_equal(drop.frame.drop(columns="participant_id"),
                                  original.drop(columns="participant_id"))
    stored = pd.read_parquet(io.BytesIO(storage.read_bytes(after.curated_key)))
    assert _pseudonym(code, str(ids.iloc[0])) in set(stored["participant_id"])
    assert _pseudonym(code, gone) not in set(stored["participant_id"]) and len(stored) == 11
    (w,) = catalog.withdrawals(storage, code)
    assert w["purged"] == [{"batch": before.sha256, "removed": before.raw_key,
                            "now": after.raw_key, "rows": 1}]
