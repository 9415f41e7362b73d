"""One run at a time per store: a lease object in the store itself.

A run holds ``locks/run.json`` (owner, start, expiry) while it works and renews it; a second
run waits a bounded time or stops with :class:`LeaseHeld`, naming the holder. A run that dies
stops renewing, so its lease expires and the next run takes it over; a run that died on this
host (same host, boot and pid namespace, process gone) frees it at once.

Both backends give the one primitive needed, a compare-and-swap (``Storage.swap``): locally
an exclusive create (``os.link``) and, to replace an existing lease, a replace under
``flock``; on S3 ``PutObject`` with ``If-None-Match: *`` to create and ``If-Match: <ETag>`` to
replace. Two runs racing for a free or expired lease: exactly one swap succeeds.

Expiry compares the holder's written expiry with this machine's clock: machines sharing an
S3 store must keep their clocks within a small fraction of ``ttl`` (NTP does).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Iterator

from lacrima.catalog import LEASE_KEY, remove_unfinished_reports
from lacrima.storage import Storage

log = logging.getLogger("lacrima.lease")

# Seconds a lease lasts unless renewed; a run renews it every third of that. A crashed run
# blocks the store for at most this long.
LEASE_SECONDS = 600.0
POLL_SECONDS = 5.0


class LeaseHeld(RuntimeError):
    """Another run holds the store's lease (and did not let go within the wait)."""

    def __init__(self, holder: dict, location: str):
        self.holder = holder
        left = max(0, round(holder.get("expires", 0) - time.time()))
        super().__init__(
            f"another run holds {location} ({LEASE_KEY}): {holder.get('owner', '?')}, started "
            f"{_iso(holder.get('started', 0))}, lease expires in {left} s unless renewed; "
            "wait for it to finish (or pass --wait SECONDS)")


class LeaseLost(RuntimeError):
    """This run's lease expired and another run took the store over."""


@dataclass(frozen=True)
class Lease:
    """A held lease: who, since when, until when; ``tag`` is the stored object's version."""

    owner: str
    token: str
    started: float
    expires: float
    released: bool = False
    tag: str = ""
    host: str = ""          # where the holder runs (:func:`this_host`), and its process id
    pid: int = 0

    def body(self) -> bytes:
        record = {k: v for k, v in asdict(self).items() if k != "tag"}
        record["started_at"], record["expires_at"] = _iso(self.started), _iso(self.expires)
        return json.dumps(record, indent=2, sort_keys=True).encode()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def default_owner(run_id: str = "") -> str:
    """``user@host pid N [run R]``: enough for an operator to find the holder."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    who = f"{user}@{socket.gethostname()} pid {os.getpid()}"
    return f"{who} run {run_id}" if run_id else who


def this_host() -> str:
    """Names the process ids this process can see: host name, boot id and pid namespace.

    Two holders with the same value see the same processes, so a holder's process id that is
    gone here is gone (containers sharing a host name but not a pid namespace differ).
    """
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            parts.append(fh.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return "/".join(parts)


def _dead_here(holder: dict) -> bool:
    """Whether the holder ran on this host (:func:`this_host`) and its process is gone."""
    pid = holder.get("pid") or 0
    if not pid or holder.get("host") != this_host() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)             # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:                 # exists, another user's
        return False
    return False


def current(storage: Storage) -> dict | None:
    """The stored lease record (held, expired or released), or ``None`` when there is none."""
    got = storage.read_tagged(LEASE_KEY)
    return json.loads(got[0]) if got else None


def acquire(storage: Storage, owner: str, ttl: float = LEASE_SECONDS, wait: float = 0.0,
            poll: float = POLL_SECONDS) -> Lease:
    """Take the store's lease, waiting up to ``wait`` seconds for a holder to let go.

    Parameters
    ----------
    storage : Storage
    owner : str
        Shown to whoever finds the store busy (:func:`default_owner`).
    ttl : float
        Seconds the lease lasts unless renewed (:func:`renew`).
    wait : float
        Seconds to wait for a held lease; 0 gives up at once.
    poll : float
        Seconds between looks while waiting.

    Returns
    -------
    Lease

    Raises
    ------
    LeaseHeld
        A live lease of another run, still there after ``wait`` seconds.

    Notes
    -----
    A lease is free when released, expired, or held by a process of this host that is gone
    (a run killed on this machine frees the store at once; one on another machine blocks
    it until its lease expires: its process cannot be seen from here).
    """
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    host = this_host()
    while True:
        now = time.time()
        mine = Lease(owner, token, now, now + ttl, host=host, pid=os.getpid())
        got = storage.read_tagged(LEASE_KEY)
        holder = json.loads(got[0]) if got else None
        if holder and holder.get("token") == token:      # our write landed, its answer was lost
            return replace(mine, started=holder["started"], expires=holder["expires"], tag=got[1])
        if (holder is None or holder.get("released") or holder.get("expires", 0) <= now
                or _dead_here(holder)):
            tag = storage.swap(LEASE_KEY, mine.body(), got[1] if got else None)
            if tag is not None:
                return replace(mine, tag=tag)
            continue                                    # someone else moved first: look again
        if time.monotonic() >= deadline:
            raise LeaseHeld(holder, storage.location)
        time.sleep(max(0.0, min(poll, deadline - time.monotonic())))


def renew(storage: Storage, lease: Lease, ttl: float = LEASE_SECONDS) -> Lease:
    """Push the lease's expiry ``ttl`` seconds ahead; :class:`LeaseLost` if it was taken over."""
    new = replace(lease, expires=time.time() + ttl)
    tag = storage.swap(LEASE_KEY, new.body(), lease.tag)
    if tag is None:
        raise LeaseLost(f"the lease on {storage.location} was taken over by another run "
                        f"({(current(storage) or {}).get('owner', '?')}): this run stops")
    return replace(new, tag=tag)


def release(storage: Storage, lease: Lease) -> bool:
    """Let go (the record stays, marked released); False when it was no longer ours."""
    done = replace(lease, released=True, expires=time.time())
    return storage.swap(LEASE_KEY, done.body(), lease.tag) is not None


@dataclass
class HeldLease:
    """What :func:`hold` yields: the lease as last renewed, and whether it was lost."""

    lease: Lease
    lost: threading.Event

    def check(self) -> None:
        """Raise :class:`LeaseLost` when renewal found the lease taken over."""
        if self.lost.is_set():
            raise LeaseLost("this run's lease expired and another run took the store over; "
                            "this run stops before writing its report")


@contextmanager
def hold(storage: Storage, owner: str, ttl: float = LEASE_SECONDS, wait: float = 0.0,
         poll: float = POLL_SECONDS) -> Iterator[HeldLease]:
    """Hold the store's lease for the ``with`` block, renewed every ``ttl / 3`` seconds.

    Raises :class:`LeaseHeld` on entry as :func:`acquire` does. A renewal that fails on a
    store error is retried at the next tick (the lease has two more ticks before it expires);
    one that finds the lease taken over sets ``lost`` (see :meth:`HeldLease.check`).

    Once the lease is taken, run folders a killed run left without a manifest are removed
    (``catalog.remove_unfinished_reports``): only the holder can know nobody writes them.
    """
    held = HeldLease(acquire(storage, owner, ttl, wait, poll), threading.Event())
    try:
        remove_unfinished_reports(storage)
    except OSError as err:          # left for the next holder; never a reason not to run
        log.warning("could not remove an unfinished report folder: %s", err)
    stop = threading.Event()

    def keep():
        while not stop.wait(ttl / 3):
            try:
                held.lease = renew(storage, held.lease, ttl)
            except LeaseLost:
                held.lost.set()
                return
            except OSError:
                continue

    thread = threading.Thread(target=keep, name="lacrima-lease", daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join()
        if not held.lost.is_set():
            try:
                release(storage, held.lease)
            except OSError:
                pass            # the lease expires by itself
