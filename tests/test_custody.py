"""Key custody (issue 11 item 4): the ledger names the key of every batch; a run under another
key, a blank or short key, and demo and real data in one store are refused before any drop is
read; ``lacrima rekey`` moves a store to a new key as one audited operation."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from lacrima import catalog, intake
from flows.cli import app
from lacrima.privacy import DEMO_KEY, MissingKeyError, pseudonym_key
from lacrima.results import RunSummary
from lacrima.storage import LocalStorage
from lacrima.synth import write_drop

KEY = b"test-key-not-secret"        # what conftest puts in LACRIMA_PSEUDONYM_KEY
OTHER = b"another-key-0123456789abcdef"


def lacrima(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    result.text = " ".join(result.output.split())     # rich wraps messages at 80 columns
    return result


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, study, sites):
    """A store with one accepted Italian batch made under the test key."""
    root = tmp_path_factory.mktemp("real") / "store"
    storage = LocalStorage(root)
    it = next(s for s in sites if s.code == "it")
    intake.upload(storage, it, write_drop(it, study, root.parent / "d", n=20, seed=1))
    intake.ingest_site(storage, it, study, KEY)
    return root


@pytest.mark.parametrize("value", ["", "   ", "short-key"])
def test_a_blank_or_short_key_is_refused(monkeypatch, tmp_path, value):
    monkeypatch.setenv("LACRIMA_PSEUDONYM_KEY", value)
    monkeypatch.delenv("LACRIMA_PSEUDONYM_KEY_FILE", raising=False)
    # an empty variable is no key at all; blanks or a short value are a key refused
    with pytest.raises(MissingKeyError, match="at least 16" if value else "no pseudonymisation"):
        pseudonym_key()
    monkeypatch.delenv("LACRIMA_PSEUDONYM_KEY")
    (tmp_path / "key").write_text(value + "\n")
    monkeypatch.setenv("LACRIMA_PSEUDONYM_KEY_FILE", str(tmp_path / "key"))
    with pytest.raises(MissingKeyError, match="LACRIMA_PSEUDONYM_KEY_FILE"):
        pseudonym_key()
    res = lacrima("run", "--storage", tmp_path / "store")
    assert res.exit_code == 2 and "at least 16" in res.text
    assert res.output.count("error:") == 1          # one message (rich wraps it at 80 columns)
    assert not (tmp_path / "store").exists()


def test_the_ledger_names_each_batchs_key_never_the_key(real_store):
    storage = LocalStorage(real_store)
    (rec,) = catalog.batches(storage, "it")
    assert rec.key_fingerprint == catalog.key_fingerprint(KEY)
    assert catalog.store_key(storage)["fingerprint"] == rec.key_fingerprint
    for path in real_store.rglob("*.json"):
        assert KEY.decode() not in path.read_text()


def test_a_run_under_another_key_refuses_before_reading_any_drop(real_store, tmp_path,
                                                                monkeypatch, study, sites):
    import shutil

    shutil.copytree(real_store, tmp_path / "store")
    storage = LocalStorage(tmp_path / "store")
    it = next(s for s in sites if s.code == "it")
    intake.upload(storage, it, write_drop(it, study, tmp_path / "d", n=20, seed=2, id_offset=50))
    before = sorted(o.key for o in storage.list(""))
    monkeypatch.setenv("LACRIMA_PSEUDONYM_KEY", OTHER.decode())
    res = lacrima("run", "--storage", tmp_path / "store")
    assert res.exit_code == 2, res.output
    assert "another pseudonym key" in res.text and "lacrima rekey" in res.text
    with pytest.raises(catalog.KeyCustodyError):
        intake.ingest_site(storage, it, study, OTHER)
    assert sorted(o.key for o in storage.list("")) == before     # nothing read into raw


def test_the_demo_refuses_a_store_holding_real_batches(real_store, tmp_path):
    import shutil

    shutil.copytree(real_store, tmp_path / "store")
    before = sorted(p for p in (tmp_path / "store").rglob("*"))
    for args in (("demo", "--storage", tmp_path / "store"),
                 ("run", "--demo", "--storage", tmp_path / "store")):
        res = lacrima(*args)
        assert res.exit_code == 2, res.output
        assert "real pseudonym key" in res.text
    assert sorted(p for p in (tmp_path / "store").rglob("*")) == before


def test_real_data_is_refused_into_a_demo_store(tmp_path, study, sites):
    storage = LocalStorage(tmp_path / "store")
    it = next(s for s in sites if s.code == "it")
    intake.upload(storage, it, write_drop(it, study, tmp_path / "d", n=20, seed=1))
    intake.ingest_site(storage, it, study, DEMO_KEY)
    assert pseudonym_key(demo=True) == DEMO_KEY       # whatever LACRIMA_PSEUDONYM_KEY says
    with pytest.raises(catalog.KeyCustodyError, match="demo batches"):
        catalog.check_key(storage, KEY)


def test_the_demo_writes_to_data_not_to_the_configured_store(tmp_path, monkeypatch):
    from flows import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LACRIMA_STORAGE", str(tmp_path / "real"))
    seen = {}
    monkeypatch.setattr(cli, "_run", lambda storage, demo, *a: seen.update(storage=storage) or
                        RunSummary("r"))
    assert lacrima("demo").exit_code == 0
    assert seen["storage"] == "data" and (tmp_path / "data" / "landing").is_dir()
    assert not (tmp_path / "real").exists()


def _answers(curated):
    """Curated rows without their pseudonyms, in the order of their answers."""
    answers = curated.drop(columns="participant_id")
    return answers.sort_values(list(answers.columns), ignore_index=True)


def test_rekey_moves_every_record_to_the_new_key_as_one_audited_step(real_store, tmp_path,
                                                                    monkeypatch, study, sites):
    import shutil

    shutil.copytree(real_store, tmp_path / "store")
    storage = LocalStorage(tmp_path / "store")
    before = catalog.curated_frame(storage, "it")
    (tmp_path / "new.key").write_text(OTHER.decode() + "\n")
    res = lacrima("rekey", "--new-key-file", tmp_path / "new.key", "--storage", tmp_path / "store",
                  "--json")
    assert res.exit_code == 0, res.output
    entry = json.loads(res.output.strip().splitlines()[-1])
    assert entry["to"] == catalog.key_fingerprint(OTHER) and entry["batches"] == {"it": 1}
    after = catalog.curated_frame(storage, "it")
    # the same answers under other pseudonyms: exactly those the new key gives
    assert not set(after["participant_id"]) & set(before["participant_id"])
    # (curated rows come in pseudonym order: line them up by their answers)
    pd.testing.assert_frame_equal(_answers(after), _answers(before))
    (rec,) = catalog.batches(storage, "it")
    assert rec.key_fingerprint == entry["to"]
    audit = [json.loads(p.read_text())
             for p in (tmp_path / "store" / "ledger" / "_rekey").glob("*.json")]
    assert [a["done"] for a in audit] == [True] and "writes" not in audit[0]
    assert not any(p.name.startswith(rec.sha256 + ".") for p in
                   (tmp_path / "store" / "curated" / "it").iterdir())    # old pseudonyms gone
    # the old key is now refused, the new one resends the same records as held
    with pytest.raises(catalog.KeyCustodyError):
        catalog.check_key(storage, KEY)
    it = next(s for s in sites if s.code == "it")
    intake.upload(storage, it, write_drop(it, study, tmp_path / "d", n=20, seed=1, format="csv"))
    res = intake.ingest_site(storage, it, study, OTHER)
    assert len(res.accepted) == 1 and (res.records_new, res.records_held) == (0, 20)


def test_a_store_from_before_key_fingerprints_is_checked_against_its_data(real_store, tmp_path):
    import shutil

    shutil.copytree(real_store, tmp_path / "store")
    storage = LocalStorage(tmp_path / "store")
    storage.delete(catalog.KEY_FILE)
    for rec in catalog.batches(storage):      # as the ledger was written before this issue
        catalog.write_batch(storage, rec.__class__(**{**rec.to_dict(), "key_fingerprint": "",
                                                      "identifying_dropped": ()}))
    for key in (DEMO_KEY, OTHER):
        with pytest.raises(catalog.KeyCustodyError):
            catalog.check_key(storage, key)
    catalog.check_key(storage, KEY)
    assert catalog.store_key(storage)["fingerprint"] == catalog.key_fingerprint(KEY)


def test_an_interrupted_rekey_blocks_runs_until_it_is_finished(real_store, tmp_path, monkeypatch,
                                                               study, sites):
    import shutil

    shutil.copytree(real_store, tmp_path / "store")
    storage = LocalStorage(tmp_path / "store")
    before = catalog.curated_frame(storage, "it")
    real = catalog.mark_rekey_done

    def dies(*a, **k):
        raise KeyboardInterrupt("machine died")
    monkeypatch.setattr(catalog, "mark_rekey_done", dies)
    with pytest.raises(KeyboardInterrupt):
        intake.rekey(storage, sites, study, KEY, OTHER)
    monkeypatch.setattr(catalog, "mark_rekey_done", real)
    for key in (KEY, OTHER):
        with pytest.raises(catalog.KeyCustodyError, match="interrupted"):
            catalog.check_key(storage, key)
    with pytest.raises(catalog.KeyCustodyError, match="interrupted"):
        intake.rekey(storage, sites, study, KEY, b"a-third-key-0123456789")
    intake.rekey(storage, sites, study, KEY, OTHER)
    catalog.check_key(storage, OTHER)
    after = catalog.curated_frame(storage, "it")
    assert len(after) == len(before) and not set(after["participant_id"]) & set(before["participant_id"])
