"""A run killed mid-intake (SIGKILL, no clean-up) and then run again ends as one clean run (issue 11).

The kill lands between the intake's writes of one drop: after the register, before the
ledger entry (and before the landing index). The rerun must neither lose nor double any
participant: curated data, register and ledger equal a store that was never interrupted.
"""

import csv
import io
import os
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from lacrima import catalog, intake
from lacrima.storage import LocalStorage
from lacrima.synth import write_drop

KEY = "killed-intake-test-key-0123"


def _child(store, site: str, kill_at: str) -> int:
    """Ingest ``site`` in a fresh process that SIGKILLs itself when ``kill_at`` is first called."""
    code = textwrap.dedent(f"""
        import os, signal
        from lacrima import catalog, intake
        from lacrima.storage import LocalStorage
        from lacrima.study import load_site, load_study

        real = getattr(catalog, {kill_at!r})
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        setattr(catalog, {kill_at!r}, die)
        intake.ingest_site(LocalStorage({str(store)!r}), load_site({site!r}), load_study(),
                           {KEY!r}.encode())
    """)
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ),
                          capture_output=True, timeout=600).returncode


@pytest.mark.process
@pytest.mark.parametrize("kill_at", ["write_batch", "write_register", "write_landing_index"])
def test_a_sigkill_mid_intake_then_a_rerun_equals_one_clean_run(tmp_path, study, sites, kill_at):
    us = next(s for s in sites if s.code == "us")
    cumulative = write_drop(us, study, tmp_path / "all", n=45, seed=1)
    rows = list(csv.reader(io.StringIO(cumulative.read_bytes().decode("utf-8-sig"))))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows[:3 + 30])    # Qualtrics: 3 header rows
    first = tmp_path / "first.csv"
    first.write_bytes(buf.getvalue().encode("utf-8-sig"))    # the export a month earlier: 30 of 45
    killed, clean = LocalStorage(tmp_path / "killed"), LocalStorage(tmp_path / "clean")
    for store in (killed, clean):
        intake.upload(store, us, first, uploader="t")
        intake.ingest_site(store, us, study, KEY.encode())
        intake.upload(store, us, cumulative, uploader="t")
    assert _child(tmp_path / "killed", "us", kill_at) == -signal.SIGKILL
    again = intake.ingest_site(killed, us, study, KEY.encode())
    done = intake.ingest_site(clean, us, study, KEY.encode())
    assert not again.quarantined and not done.quarantined, [(f.check, f.message[:300]) for r in again.reports for f in r.errors]
    a, b = catalog.curated_frame(killed, "us"), catalog.curated_frame(clean, "us")
    assert len(b) == 45
    pd.testing.assert_frame_equal(a.sort_values("participant_id").reset_index(drop=True),
                                  b.sort_values("participant_id").reset_index(drop=True))
    assert catalog.read_register(killed, "us") == catalog.read_register(clean, "us")
    assert ([(r.sha256, r.state) for r in catalog.batches(killed, "us")]
            == [(r.sha256, r.state) for r in catalog.batches(clean, "us")])
