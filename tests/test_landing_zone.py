"""The landing zone takes only what a site sent (issue 24, item 1).

Before: ``ln -s /etc/passwd landing/us/passwd.csv`` and a run copied ``/etc/passwd`` into
``raw/us/`` and ``quarantine/us/`` and echoed its first line in the site-readable quarantine
report; a link to another site's file was ingested as the linking site's drop; a file in a
sub-folder was read (20 new participants) while ``status`` said it was not. Now a run reads a
regular file directly in ``landing/<site>/`` and nothing else, on a local folder and on S3,
and ``status`` lists everything else with what to do.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s3util import s3, s3_endpoint  # noqa: F401  (fixtures)

from flows.cli import app
from lacrima import catalog, intake
from lacrima.status import misplaced
from lacrima.storage import LocalStorage, NotRegularFile
from lacrima.study import load_site
from lacrima.synth import write_drop

KEY = b"landing-zone-test-key-0123"
SECRET = Path("/etc/passwd")


def _files(root: Path, *zones: str) -> dict[str, bytes]:
    """Every regular file under the given zones of a local store (links not followed)."""
    out = {}
    for zone in zones:
        for dirpath, _, names in os.walk(root / zone):
            for n in names:
                p = Path(dirpath) / n
                if p.is_file() and not p.is_symlink():
                    out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


@pytest.fixture
def hostile(tmp_path, study, sites):
    """A store whose ``landing/us/`` holds one real upload and every kind of thing that is not
    a drop of ``us``: links to /etc/passwd, to another site's file and to a folder, a FIFO,
    and a good ``us`` drop in a sub-folder."""
    by = {s.code: s for s in sites}
    store = LocalStorage(tmp_path / "store")
    intake.upload(store, by["us"], write_drop(by["us"], study, tmp_path / "us", n=20, seed=1))
    it_key = intake.upload(store, by["it"], write_drop(by["it"], study, tmp_path / "it", n=20,
                                                        seed=2))
    us = tmp_path / "store" / "landing" / "us"
    (us / "passwd.csv").symlink_to(SECRET)
    (us / "fromit.xlsx").symlink_to(Path("..") / "it" / it_key.rsplit("/", 1)[-1])
    (us / "itfolder").symlink_to(Path("..") / "it", target_is_directory=True)
    os.mkfifo(us / "pipe.csv")
    (us / "sub").mkdir()
    nested = write_drop(by["us"], study, tmp_path / "nested", n=20, seed=3, id_offset=500)
    shutil.copy(nested, us / "sub" / "nested.csv")
    return store, by, (tmp_path / "store" / it_key).read_bytes()


def test_links_fifos_and_sub_folders_are_never_read(hostile, study, sites, small_plan):
    store, by, it_bytes = hostile
    results = {r.site: r for r in intake.ingest_sites(store, list(sites), study, KEY)}
    us = results["us"]
    assert (us.seen, len(us.accepted), us.quarantined) == (1, 1, ())
    assert len(results["it"].accepted) == 1
    assert catalog.participants_held(store, "us") == 20      # not 40: the nested file is not read
    # Nothing of /etc/passwd anywhere a run writes; the Italian file only under it/.
    secret = SECRET.read_bytes()
    first_line = secret.splitlines()[0].split(b":")[0] + b":"
    written = _files(store.root, "raw", "quarantine", "curated", "ledger", "register")
    assert written and not [k for k, v in written.items() if secret[:64] in v or first_line in v]
    assert not [k for k, v in written.items() if v == it_bytes and not k.startswith("raw/it/")]
    assert not (store.root / "quarantine").exists()
    # ... nor in any report: a whole report of the store, under the small plan.
    from lacrima import report, steps

    st, small_sites = small_plan.study, list(small_plan.sites)
    analyses = [a for a in (steps.site_step(store, s, st, outputs=False) for s in small_sites) if a]
    comparison = steps.compare_sites(analyses, st, small_sites)
    report.write_outputs(store, "r1", analyses, comparison, st, small_sites,
                         steps.provenance("r1", analyses, st, small_sites))
    reports = _files(store.root, "reports", "results")
    assert any(k.endswith("report.html") for k in reports)
    assert not [k for k, v in reports.items() if first_line in v or secret[:64] in v]


def test_a_local_read_never_follows_a_link(hostile):
    store, _, _ = hostile
    # Listed: the upload and the nested regular file; no link, FIFO or linked folder.
    listed = [o.key for o in store.list("landing/us")]
    assert len(listed) == 2 and listed[1] == "landing/us/sub/nested.csv", listed
    (store.root / "landing" / "us" / "etc").symlink_to("/etc", target_is_directory=True)
    for name in ("passwd.csv", "fromit.xlsx", "pipe.csv", "etc/passwd"):
        with pytest.raises(NotRegularFile):
            store.read_bytes(f"landing/us/{name}")
        with pytest.raises(NotRegularFile):
            store.download(f"landing/us/{name}", store.root.parent / "out")
        assert not store.exists(f"landing/us/{name}")
    with pytest.raises(NotRegularFile):
        store.copy("landing/us/passwd.csv", "raw/us/x.csv")
    assert not (store.root / "raw").exists()
    # The drops a run reads: the one upload.
    assert [o.key for o in catalog.landing_drops(store, "us")] == listed[:1]


def test_status_lists_each_link_fifo_and_sub_folder_with_what_to_do(hostile):
    store, _, _ = hostile
    found = {w["key"]: w for w in misplaced(store, ["il", "it", "us"])}
    assert set(found) == {"landing/us/passwd.csv", "landing/us/fromit.xlsx",
                          "landing/us/itfolder", "landing/us/pipe.csv",
                          "landing/us/sub/nested.csv"}
    assert "symbolic link to a file" in found["landing/us/passwd.csv"]["problem"]
    assert "symbolic link to a folder" in found["landing/us/itfolder"]["problem"]
    assert "not a regular file" in found["landing/us/pipe.csv"]["problem"]
    assert "sub-folder" in found["landing/us/sub/nested.csv"]["problem"]
    assert all("--site us" in w["fix"] for w in found.values())
    res = CliRunner().invoke(app, ["status", "--storage", str(store.root)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.count("wrong place:") == 5
    assert "root:" not in res.output
    # only the two uploads wait for the next run; links, FIFO and nested file do not
    res = CliRunner().invoke(app, ["status", "--storage", str(store.root), "--json"])
    assert sorted(r["site"] for r in json.loads(res.stdout)) == ["it", "us"]


def test_a_linked_site_folder_is_not_read(tmp_path, study, sites):
    by = {s.code: s for s in sites}
    store = LocalStorage(tmp_path / "store")
    intake.upload(store, by["it"], write_drop(by["it"], study, tmp_path / "it", n=20, seed=2))
    (tmp_path / "store" / "landing" / "us").symlink_to("it", target_is_directory=True)
    assert catalog.landing_drops(store, "us") == []
    [us] = intake.ingest_sites(store, [by["us"]], study, KEY)
    assert (us.seen, us.accepted) == (0, ())
    assert [w["key"] for w in misplaced(store, ["il", "it", "us"])] == ["landing/us"]


@pytest.mark.s3
def test_on_s3_sub_folders_and_odd_keys_are_not_read_and_each_is_named(s3, study, tmp_path,
                                                                        caplog):
    site = load_site("it")
    good = intake.upload(s3.storage, site, write_drop(site, study, tmp_path / "a", n=20, seed=2))
    nested = write_drop(site, study, tmp_path / "b", n=20, seed=3, id_offset=500).read_bytes()
    raw = s3.storage.client
    odd = {"lacrima/landing/it/sub/nested.csv": nested,
           "lacrima/landing/it/../us/dotdot.csv": nested,
           "lacrima/landing/it/": b"", "lacrima/landing/it//stray.csv": nested,
           "lacrima/landing/it/.hidden.csv": nested}
    for key, body in odd.items():
        raw.put_object(Bucket=s3.bucket, Key=key, Body=body)
    with caplog.at_level(logging.WARNING):
        drops = [o.key for o in catalog.landing_drops(s3.storage, "it")]
    assert drops == [good]
    said = " | ".join(r.getMessage() for r in caplog.records)
    assert "landing/it/../us/dotdot.csv: a key with a '.' or '..' segment" in said
    assert "landing/it/: a folder marker" in said
    assert "landing/it//stray.csv: a key with an empty segment" in said
    assert "landing/it/sub/nested.csv: in a sub-folder" in said
    assert "landing/it/.hidden.csv: a hidden file" in said
    [result] = intake.ingest_sites(s3.storage, [site], study, KEY)
    assert (result.seen, len(result.accepted)) == (1, 1)
    assert catalog.participants_held(s3.storage, "it") == 20
    found = {w["key"]: w["problem"] for w in misplaced(s3.storage, ["il", "it", "us"])}
    assert set(found) == {k[len("lacrima/"):] for k in odd}
    assert "'..' segment" in found["landing/it/../us/dotdot.csv"]
    assert "folder marker" in found["landing/it/"]
    assert "sub-folder" in found["landing/it/sub/nested.csv"]
