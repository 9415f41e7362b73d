"""One run at a time per store (issue 11, item 8): the lease in ``lacrima.lease``.

Before the lease, two ``lacrima run`` at once both ingested the same fresh batches and the
second overwrote the ledger (Italy and Israel then quarantined as clashing with themselves).
Here: exactly one of several runs racing for a store wins; a second run changes nothing and
exits 3 naming the holder; a killed run's lease expires and is taken over (at once when the
run was killed on this host, issue 24); on local storage and on S3 (moto server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s3util import s3, s3_endpoint  # noqa: F401  (fixtures)
from test_s3_odd import own_output

from lacrima import lease
from lacrima.storage import LocalStorage

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return request.getfixturevalue("s3").storage


def test_a_second_run_is_refused_naming_the_holder_until_the_first_lets_go(store):
    first = lease.acquire(store, "alice@host-a pid 1 run R1", ttl=60)
    with pytest.raises(lease.LeaseHeld, match="alice@host-a pid 1 run R1") as err:
        lease.acquire(store, "bob@host-b pid 2", ttl=60)
    assert "expires in" in str(err.value) and store.location in str(err.value)
    assert lease.release(store, first)
    second = lease.acquire(store, "bob@host-b pid 2", ttl=60)
    assert lease.current(store)["owner"] == "bob@host-b pid 2"
    assert lease.current(store)["token"] == second.token


def test_a_waiting_run_gets_the_lease_when_the_holder_lets_go(store):
    first = lease.acquire(store, "first", ttl=60)
    threading.Timer(0.5, lease.release, (store, first)).start()
    start = time.monotonic()
    got = lease.acquire(store, "second", ttl=60, wait=10, poll=0.1)
    assert got.owner == "second" and 0.4 < time.monotonic() - start < 5


def test_waiting_is_bounded(store):
    lease.acquire(store, "first", ttl=60)
    start = time.monotonic()
    with pytest.raises(lease.LeaseHeld):
        lease.acquire(store, "second", ttl=60, wait=0.6, poll=0.2)
    assert 0.5 < time.monotonic() - start < 3


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(store):
    old = lease.acquire(store, "crashed", ttl=0.3)
    time.sleep(0.5)
    new = lease.acquire(store, "next", ttl=60)
    assert lease.current(store)["owner"] == "next"
    with pytest.raises(lease.LeaseLost):
        lease.renew(store, old)
    assert not lease.release(store, old)           # cannot release what it no longer holds
    assert lease.current(store)["token"] == new.token


def test_hold_renews_while_the_run_works(store):
    with lease.hold(store, "long run", ttl=0.6) as held:
        time.sleep(1.5)                             # longer than the ttl: renewed meanwhile
        with pytest.raises(lease.LeaseHeld):
            lease.acquire(store, "other", ttl=60)
        held.check()
    assert lease.current(store)["released"]
    lease.acquire(store, "other", ttl=60)


@pytest.mark.parametrize("expired", [False, True])
def test_of_runs_racing_for_a_local_store_exactly_one_wins(tmp_path, expired):
    store = LocalStorage(tmp_path)
    if expired:
        lease.acquire(store, "crashed", ttl=0.01)
        time.sleep(0.05)
    barrier, won, refused = threading.Barrier(8), [], []

    def contend(i):
        barrier.wait()
        try:
            won.append(lease.acquire(store, f"run {i}", ttl=60))
        except lease.LeaseHeld:
            refused.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert lease.current(store)["token"] == won[0].token


def _doomed(store: Path, host: str = "", ttl: float = 600) -> None:
    """A run in a process of its own that takes the lease and is killed (SIGKILL); ``host``:
    the host it says it runs on (default: this one)."""
    code = ("import os, signal, sys; sys.path.insert(0, %r)\n"
            "from lacrima import lease; from lacrima.storage import LocalStorage\n"
            "if %r: lease.this_host = lambda: %r\n"
            "lease.acquire(LocalStorage(%r), 'doomed run', ttl=%r)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n") % (SRC, host, host, str(store), ttl)
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9


@pytest.mark.process
def test_a_run_killed_on_this_host_frees_the_lease_at_once(tmp_path):
    # Before: the next run waited the whole lease (10 minutes) for a process that was gone.
    _doomed(tmp_path / "store")
    st = LocalStorage(tmp_path / "store")
    assert lease.current(st)["owner"] == "doomed run" and not lease.current(st)["released"]
    start = time.monotonic()
    got = lease.acquire(st, "next", ttl=60)
    assert got.owner == "next" and time.monotonic() - start < 5


@pytest.mark.process
def test_a_live_holder_on_this_host_keeps_the_lease_until_it_is_gone(tmp_path):
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from lacrima import lease; from lacrima.storage import LocalStorage\n"
            "lease.acquire(LocalStorage(%r), 'live run', ttl=600); print('held', flush=True)\n"
            "time.sleep(60)\n") % (SRC, str(tmp_path / "store"))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        st = LocalStorage(tmp_path / "store")
        with pytest.raises(lease.LeaseHeld, match="live run"):
            lease.acquire(st, "next", ttl=60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert lease.acquire(st, "next", ttl=60).owner == "next"


@pytest.mark.process
def test_a_run_killed_on_another_host_blocks_until_its_lease_expires(tmp_path):
    _doomed(tmp_path / "store", host="another-host", ttl=2)
    st = LocalStorage(tmp_path / "store")
    assert lease.current(st)["host"] == "another-host"
    with pytest.raises(lease.LeaseHeld, match="doomed run"):
        lease.acquire(st, "next", ttl=60)
    got = lease.acquire(st, "next", ttl=60, wait=10, poll=0.2)
    assert got.owner == "next"


@pytest.fixture
def busy_demo_store(tmp_path, demo_drops, sites, monkeypatch):
    """A store with every site's demo drop landed, whose lease another run holds."""
    from lacrima import intake

    st = LocalStorage(tmp_path / "store")
    for s in sites:
        intake.upload(st, s, demo_drops[s.code])
    holder = lease.acquire(st, "nightly@server pid 4242 run 20261129T020000Z", ttl=300)
    return st, holder


@pytest.mark.prefect     # the run's flow meets the lease inside an ephemeral Prefect server
def test_lacrima_run_on_a_busy_store_exits_3_naming_the_holder_and_changes_nothing(
        busy_demo_store, tmp_path):
    # A process of its own, as an operator runs it (and so that Prefect's log handlers,
    # bound to this run's streams, stay out of the other tests).
    st, holder = busy_demo_store
    before = sorted(o.key for o in st.list(""))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, str(Path(SRC).parent)]),
               PREFECT_HOME=str(tmp_path / "prefect-home"))
    proc = subprocess.run([sys.executable, "-m", "flows", "run", "--demo", "--storage",
                           st.location], env=env, capture_output=True, text=True, timeout=600,
                          cwd=Path(SRC).parent)
    said = " ".join(proc.stderr.split())                     # the console wraps long lines
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "another run holds" in said and "nightly@server pid 4242" in said
    assert "Traceback" not in proc.stderr
    # Nothing the run does under the lease: no raw, curated, batch ledger entry or report.
    # (The preflight's key custody may record the store's key fingerprint, ledger/_key.json.)
    after = sorted(o.key for o in st.list("") if o.key != "ledger/_key.json")
    assert after == before
    assert lease.current(st)["token"] == holder.token


def test_a_run_takes_over_after_the_holder_lets_go_and_releases_when_done(
        busy_demo_store, prefect_harness):
    from flows.pipeline import run_pipeline

    st, holder = busy_demo_store
    threading.Timer(0.5, lease.release, (st, holder)).start()
    summary = run_pipeline(storage_location=st.location, demo=True, wait=30)
    assert summary.accepted == 3 and summary.report
    record = lease.current(st)
    assert record["released"] and f"run {summary.run_id}" in record["owner"]
    assert json.loads(st.read_bytes(lease.LEASE_KEY)) == record


@pytest.mark.parametrize("command", [["withdraw", "1001", "--site", "it"],
                                     ["rekey", "--new-key-file", "KEYFILE"]])
def test_withdraw_and_rekey_wait_for_no_one_on_a_busy_store(tmp_path, command):
    from flows.cli import app

    st = LocalStorage(tmp_path / "store")
    lease.acquire(st, "nightly@server pid 4242", ttl=300)
    keyfile = tmp_path / "new.key"
    keyfile.write_text("a-new-key-long-enough-to-be-accepted-0123456789")
    args = [str(keyfile) if a == "KEYFILE" else a for a in command]
    result = CliRunner().invoke(app, [*args, "--storage", st.location])
    said = " ".join(own_output(result.output).split())
    assert result.exit_code == 3 and "nightly@server pid 4242" in said, result.output
    assert [o.key for o in st.list("")] == [lease.LEASE_KEY]       # nothing else touched
