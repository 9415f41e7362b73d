"""The portal's people: accounts, invites, site tokens, the audit log and who may do what.

State that lives for months, kept in the store beside the ledger (keys from
:mod:`lacrima.catalog`, never in a report folder) and written with the store's atomic writes:

- an **account** per person (``people/accounts/<sha256 of the e-mail>.json``): role, site,
  the password as an argon2id hash, when it was set, when the account was revoked;
- an **invite** per one-time link (``people/invites/<sha256 of the token>.json``): the
  account it sets a password for, its expiry (7 days), and whether it was used. Using it is
  a compare-and-swap on that object, so two tabs opening one link set one password;
- a **token** per script that uploads for a site (``people/tokens/<sha256 of the token>.json``):
  tokens carry 256 random bits, so a plain SHA-256 is enough (a slow hash adds nothing);
- the **audit log**: one object per action (``audit/<day>/<time>-<random>.json``) created once
  and never replaced, so two writers never lose each other's line. An entry says who (the
  person's id, never an e-mail), when, what, which site and batch; no participant value.

:func:`allowed` is the one decision of who may do what; every route of the portal asks it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

from lacrima import catalog
from lacrima.storage import Storage, read_json, write_json

ROLES = ("site", "coordinator")
# What a person may do with one site's data (a site person: only their own site) ...
SITE_ACTIONS = frozenset({"view", "check", "send", "correct", "withdraw"})
# ... and what only a coordinator may do (across sites; ``site`` is None or any site).
COORDINATOR_ACTIONS = frozenset({"reports", "audit", "people"})
INVITE_DAYS = 7
MIN_PASSWORD = 10


class PeopleError(ValueError):
    """A request about people that cannot be met (unknown, expired, used, too short...)."""


@dataclass(frozen=True)
class Person:
    """Someone (an account) or something (a site's token) the portal acts for.

    ``id`` is what the audit log names (``p-...`` for an account, ``t-...`` for a token);
    ``email`` is kept only in the account and shown only by ``lacrima portal users``.
    ``epoch`` changes when the password is set again: sessions made before it end.
    """

    id: str
    role: str
    site: str
    kind: str = "account"
    email: str = ""
    note: str = ""
    created_at: str = ""
    epoch: str = ""
    revoked_at: str = ""

    @property
    def active(self) -> bool:
        return not self.revoked_at


def allowed(person: Person | None, site: str | None, action: str) -> bool:
    """Whether ``person`` may do ``action`` on ``site`` (None: not about one site).

    A coordinator may do everything; a site's person (or token) only the site actions
    (:data:`SITE_ACTIONS`) on their own site. Nobody without an active identity may do
    anything. ``restricted/`` report files are no action at all: the portal never serves them.

    Examples
    --------
    >>> it = Person("p-1", "site", "it")
    >>> allowed(it, "it", "send"), allowed(it, "us", "view"), allowed(it, None, "audit")
    (True, False, False)
    >>> allowed(Person("p-2", "coordinator", ""), "us", "withdraw"), allowed(None, "it", "view")
    (True, False)
    """
    if person is None or not person.active:
        return False
    if action not in SITE_ACTIONS | COORDINATOR_ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if person.role == "coordinator":
        return True
    return person.role == "site" and action in SITE_ACTIONS and site == person.site


# --------------------------------------------------------------------------- hashing


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def normal_email(email: str) -> str:
    email = email.strip().lower()
    if "@" not in email or len(email) > 254 or any(c.isspace() for c in email):
        raise PeopleError(f"{email!r} is not an e-mail address")
    return email


def _hasher():
    from argon2 import PasswordHasher   # argon2id with the library's current parameters

    return PasswordHasher()


def _now(now: datetime | None) -> str:
    return (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- accounts


def _person(d: dict) -> Person:
    return Person(**{k: v for k, v in d.items() if k in Person.__dataclass_fields__})


def _account(storage: Storage, email: str) -> dict | None:
    key = catalog.account_key(_sha(normal_email(email)))
    return read_json(storage, key) if storage.exists(key) else None


def account(storage: Storage, email_hash: str) -> Person | None:
    """The account whose e-mail hashes to ``email_hash`` (what a session names), if any."""
    if len(email_hash) != 64 or not all(c in "0123456789abcdef" for c in email_hash):
        return None
    key = catalog.account_key(email_hash)
    return _person(read_json(storage, key)) if storage.exists(key) else None


def session_id(person: Person) -> str:
    """What a session cookie names: the account's e-mail hash (not the e-mail)."""
    return _sha(person.email)


def invite(storage: Storage, email: str, site: str, role: str = "site", by: str = "cli",
           now: datetime | None = None) -> tuple[Person, str]:
    """Create (or renew) an account and a one-time link token that sets its password.

    Returns the person and the link's token (shown once; only its hash is stored). An
    existing account keeps its id; a revoked one is active again once the link is used.
    """
    if role not in ROLES:
        raise PeopleError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    email, stamp = normal_email(email), _now(now)
    old = _account(storage, email)
    rec = {"id": old["id"] if old else f"p-{secrets.token_hex(6)}", "role": role,
           "site": site if role == "site" else "", "kind": "account", "email": email,
           "created_at": old["created_at"] if old else stamp, "epoch": "",
           "revoked_at": old.get("revoked_at", "") if old else "", "password": ""}
    if old:
        rec.update(password=old.get("password", ""), epoch=old.get("epoch", ""))
    write_json(storage, catalog.account_key(_sha(email)), rec)
    token = secrets.token_urlsafe(32)
    expires = ((now or datetime.now(timezone.utc)) + timedelta(days=INVITE_DAYS)).isoformat(
        timespec="seconds")
    write_json(storage, catalog.invite_key(_sha(token)),
               {"account": _sha(email), "expires": expires, "used": False}, if_absent=True)
    person = _person(rec)
    record(storage, by, "invite", site=person.site, detail=f"{person.id} as {role}", now=now)
    return person, token


def invite_account(storage: Storage, token: str, now: datetime | None = None) -> Person:
    """The account an unused, unexpired invite token is for (raises :class:`PeopleError`)."""
    return _open_invite(storage, token, now)[0]


def _open_invite(storage: Storage, token: str, now: datetime | None):
    got = storage.read_tagged(catalog.invite_key(_sha(token))) if token else None
    if got is None:
        raise PeopleError("this invite link is not known: ask the coordinator for a new one")
    inv = json.loads(got[0])
    if inv["used"]:
        raise PeopleError("this invite link was used already: sign in, or ask the "
                          "coordinator for a new one")
    if _now(now) > inv["expires"]:
        raise PeopleError("this invite link has expired: ask the coordinator for a new one")
    person = account(storage, inv["account"])
    if person is None:
        raise PeopleError("the account of this invite was removed: ask the coordinator")
    return person, inv, got[1]


def accept_invite(storage: Storage, token: str, password: str,
                  now: datetime | None = None) -> Person:
    """Set the password of an invite's account, using the invite up (once, atomically)."""
    if len(password) < MIN_PASSWORD:
        raise PeopleError(f"the password needs at least {MIN_PASSWORD} characters")
    person, inv, tag = _open_invite(storage, token, now)
    used = json.dumps({**inv, "used": True}, indent=2, sort_keys=True).encode()
    if storage.swap(catalog.invite_key(_sha(token)), used, tag) is None:
        raise PeopleError("this invite link was used already: sign in")
    key = catalog.account_key(inv["account"])
    stamp, hashed = _now(now), _hasher().hash(password)
    rec = _swap_account(storage, key, lambda r: r.update(
        password=hashed, epoch=f"{stamp}-{secrets.token_hex(4)}", revoked_at=""))
    record(storage, person.id, "set_password", site=person.site, now=now)
    return _person(rec)


def _swap_account(storage: Storage, key: str, change) -> dict:
    """Read the record at ``key``, ``change`` it in place and write it back only if nobody
    wrote it meanwhile (compare-and-swap, as the lease does); a write in between (a revocation
    while a password is being set) raises instead of being overwritten."""
    data, tag = storage.read_tagged(key) or (None, None)
    if data is None:
        raise PeopleError("the account was removed: ask the coordinator")
    rec = json.loads(data)
    change(rec)
    if storage.swap(key, json.dumps(rec, indent=2, sort_keys=True).encode(), tag) is None:
        raise PeopleError("the account changed meanwhile (revoked or invited again): "
                          "ask the coordinator for a new link")
    return rec


def sign_in(storage: Storage, email: str, password: str) -> Person | None:
    """The active account of ``email`` if ``password`` is its password, else None."""
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        rec = _account(storage, email)
    except PeopleError:
        return None
    if rec is None or not rec.get("password") or rec.get("revoked_at"):
        _hasher().hash(password)            # the same time for a person who is not there
        return None
    try:
        _hasher().verify(rec["password"], password)
    except (VerificationError, InvalidHashError):
        return None
    return _person(rec)


def users(storage: Storage) -> list[Person]:
    """Every account and token, accounts first, oldest first."""
    found = [_person(read_json(storage, o.key)) for o in storage.list(catalog.PEOPLE)
             if o.key.startswith((f"{catalog.PEOPLE}/accounts/", f"{catalog.PEOPLE}/tokens/"))]
    return sorted(found, key=lambda p: (p.kind, p.created_at, p.id))


def revoke(storage: Storage, who: str, by: str = "cli", now: datetime | None = None) -> Person:
    """Revoke an account (by e-mail) or a token (by its id ``t-...``); kept, marked revoked."""
    if who.startswith("t-"):
        hits = [o.key for o in storage.list(f"{catalog.PEOPLE}/tokens")
                if read_json(storage, o.key)["id"] == who]
    else:
        key = catalog.account_key(_sha(normal_email(who)))
        hits = [key] if storage.exists(key) else []
    if not hits:
        raise PeopleError(f"no account or token {who!r}: see `lacrima portal users`")
    stamp = _now(now)
    rec = _swap_account(storage, hits[0], lambda r: r.update(revoked_at=stamp))
    # Invites of a revoked account are no way back in: its links stop working.
    if rec["kind"] == "account":
        for o in storage.list(f"{catalog.PEOPLE}/invites"):
            inv = read_json(storage, o.key)
            if inv["account"] == hits[0].rsplit("/", 1)[-1][:-5] and not inv["used"]:
                write_json(storage, o.key, {**inv, "used": True})
    person = _person(rec)
    record(storage, by, "revoke", site=person.site, detail=person.id, now=now)
    return person


# --------------------------------------------------------------------------- tokens


def new_token(storage: Storage, site: str, role: str = "site", note: str = "", by: str = "cli",
              now: datetime | None = None) -> tuple[Person, str]:
    """A new API token for ``site`` (printed once by the caller; only its SHA-256 is kept)."""
    if role not in ROLES:
        raise PeopleError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    token = "lcr_" + secrets.token_urlsafe(32)
    rec = {"id": f"t-{secrets.token_hex(6)}", "role": role, "site": site, "kind": "token",
           "note": note[:200], "created_at": _now(now), "revoked_at": ""}
    write_json(storage, catalog.token_key(_sha(token)), rec, if_absent=True)
    person = _person(rec)
    record(storage, by, "token", site=site, detail=person.id, now=now)
    return person, token


def token_person(storage: Storage, token: str) -> Person | None:
    """The active token ``token`` is, or None."""
    if not token or len(token) > 200:
        return None
    key = catalog.token_key(_sha(token))
    if not storage.exists(key):
        return None
    person = _person(read_json(storage, key))
    return person if person.active else None


def session_secret(storage: Storage) -> str:
    """The key that signs the portal's session cookies: made once per store, kept in it, so
    every portal process over the store (and a restart) honours the same sessions."""
    write_json(storage, catalog.SESSION_SECRET, {"secret": secrets.token_urlsafe(48)},
               if_absent=True)
    return read_json(storage, catalog.SESSION_SECRET)["secret"]


# --------------------------------------------------------------------------- audit


def record(storage: Storage, who: str, action: str, site: str = "", batch: str = "",
           detail: str = "", now: datetime | None = None) -> dict:
    """Append one entry to the audit log: who (an id), when, what, which site and batch.

    ``detail`` is for ids and counts (``p-1a2b as site``, ``3 rows``), never for a
    participant's ID, a reason typed by a person or an e-mail address.
    """
    instant = now or datetime.now(timezone.utc)
    entry = {"at": _now(instant), "who": who, "action": action, "site": site, "batch": batch,
             "detail": detail}
    # The key sorts by the microsecond (the log's order), then 32 random bits; taken: draw again.
    while not write_json(storage, catalog.audit_key(instant.isoformat(timespec="microseconds"),
                                                    secrets.token_hex(4)), entry, if_absent=True):
        pass
    return entry


def audit_log(storage: Storage, site: str | None = None, limit: int | None = None) -> list[dict]:
    """Audit entries (of one site, or all), newest first."""
    keys = [o.key for o in storage.list(catalog.AUDIT)]
    out = []
    for key in reversed(keys):
        entry = read_json(storage, key)
        if site is None or entry["site"] == site:
            out.append(entry)
            if limit and len(out) >= limit:
                break
    return out


def to_dict(person: Person) -> dict:
    return asdict(person)
