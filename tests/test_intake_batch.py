"""``ingest_sites`` over a group of sites stores exactly what ``ingest_site`` one by one does."""

import io
import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from lacrima import catalog, intake
from lacrima.codebook import load_codebook
from lacrima.storage import LocalStorage
from lacrima.synth import write_drop

KEY = b"intake-batch-test-key"
N = 30
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def rounds(tmp_path_factory, study, sites):
    """Two rounds of uploads per site: (site, path, corrects the accepted batch?) each."""
    folder = tmp_path_factory.mktemp("drops")
    first, second = [], []
    for s in sites:
        d = folder / s.code
        d.mkdir()
        first.append((s, write_drop(s, study, d / "a", n=N, seed=1), False))
        # Same IDs, other answers: an ID clash with whichever of the two is processed first.
        first.append((s, write_drop(s, study, d / "b", n=N, seed=2), False))
        first.append((s, write_drop(s, study, d / "c", n=N, seed=3, id_offset=500, mess=True), False))
        # unreadable, under the site's own extension (`upload` refuses another type)
        garbage = d / f"garbage{load_codebook(s).formats[0].extensions[0]}"
        garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 900, dtype=np.uint8).tobytes())
        first.append((s, garbage, False))
        second.append((s, write_drop(s, study, d / "d", n=N, seed=4, id_offset=1000), False))
        # A correction of the batch the first round accepted (``--replaces``).
        second.append((s, write_drop(s, study, d / "e", n=N, seed=5, id_offset=2000), True))
    return first, second


def _upload(storage, items):
    for site, path, corrects in items:
        ref = ""
        if corrects:
            ref, = (r.sha256 for r in catalog.batches(storage, site.code)
                    if r.state == catalog.ACCEPTED)
        intake.upload(storage, site, path, uploader="t", replaces=ref)


def _run(root, rounds, sites, study, batched):
    storage = LocalStorage(root)
    results = []
    for items in rounds:
        _upload(storage, items)
        if batched:
            results.append(intake.ingest_sites(storage, sites, study, KEY, now=NOW))
        else:
            results.append([intake.ingest_site(storage, s, study, KEY, now=NOW) for s in sites])
    return storage, results


def _state(storage, sites):
    """Everything intake leaves behind, without clocks and local change markers."""
    keys = [o.key for o in storage.list("")]
    ledger = [{k: v for k, v in r.to_dict().items() if k != "processed_at"}
              for r in catalog.batches(storage)]
    index = {s.code: {k: v["sha256"] for k, v in catalog.read_landing_index(storage, s.code).items()}
             for s in sites}
    raw = {k: storage.read_bytes(k) for k in keys if k.startswith("raw/")}
    reports = {k: json.loads(storage.read_bytes(k)) for k in keys
               if k.startswith("quarantine/") and k.endswith("report.json")}
    curated = {k: pd.read_parquet(io.BytesIO(storage.read_bytes(k)))
               for k in keys if k.startswith("curated/")}
    return keys, ledger, index, raw, reports, curated


@pytest.fixture(scope="module")
def both(tmp_path_factory, rounds, sites, study):
    one = _run(tmp_path_factory.mktemp("one") / "store", rounds, sites, study, batched=False)
    many = _run(tmp_path_factory.mktemp("many") / "store", rounds, sites, study, batched=True)
    return one, many


def test_batched_intake_gives_the_same_results(both):
    (_, one), (_, many) = both
    assert many == one                       # IntakeResult objects, reports included


def test_batched_intake_stores_the_same_things(both, sites):
    (s1, _), (s2, _) = both
    keys1, ledger1, index1, raw1, reports1, curated1 = _state(s1, sites)
    keys2, ledger2, index2, raw2, reports2, curated2 = _state(s2, sites)
    assert keys2 == keys1
    assert ledger2 == ledger1
    assert index2 == index1
    assert raw2 == raw1
    assert reports2 == reports1
    assert curated2.keys() == curated1.keys()
    for k in curated1:
        pd.testing.assert_frame_equal(curated2[k], curated1[k])
    for s in sites:
        pd.testing.assert_frame_equal(catalog.curated_frame(s2, s.code),
                                      catalog.curated_frame(s1, s.code))


def test_the_mix_exercises_clashes_bad_drops_and_corrections(both, sites):
    # what makes the equality above telling: within one site a later drop's ID-clash check
    # sees an earlier drop of the same run; bad, unreadable and correcting drops are in it
    (_, one), _ = both
    first, second = one
    for res in first:
        assert res.seen == 4 and len(res.accepted) == 1 and len(res.quarantined) == 3
        checks = {f.check for r in res.reports for f in r.errors}
        assert "id_clash" in checks
        assert len(checks) >= 3, checks
    for res in second:
        assert res.skipped_duplicates == 4 and len(res.accepted) == 2
    (s1, _), _ = both
    assert any(r.state == catalog.SUPERSEDED for r in catalog.batches(s1))


def test_each_site_once(tmp_path, sites, study):
    with pytest.raises(ValueError, match="each site once"):
        intake.ingest_sites(LocalStorage(tmp_path), [sites[0], sites[0]], study, KEY)
