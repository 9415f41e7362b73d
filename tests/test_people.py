"""The portal's people as store state: accounts, invites, tokens, the audit log, allowed()."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from lacrima import people
from lacrima.people import Person, PeopleError, allowed
from lacrima.storage import LocalStorage

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    return LocalStorage(tmp_path / "store")


def _all_text(store) -> str:
    return "\n".join(store.read_bytes(o.key).decode() for o in store.list(""))


def test_invite_sets_password_once_and_keeps_only_hashes(store):
    person, token = people.invite(store, "Anna.Rossi@Example.it", "it", now=T0)
    assert person.role == "site" and person.site == "it" and person.id.startswith("p-")
    assert people.invite_account(store, token).id == person.id
    assert people.sign_in(store, "anna.rossi@example.it", "") is None   # no password yet
    people.accept_invite(store, token, "correct horse battery", now=T0)
    with pytest.raises(PeopleError, match="used already"):
        people.accept_invite(store, token, "another password!", now=T0)
    assert people.sign_in(store, " ANNA.rossi@example.it", "correct horse battery").id == person.id
    assert people.sign_in(store, "anna.rossi@example.it", "wrong password") is None
    assert people.sign_in(store, "nobody@example.it", "correct horse battery") is None
    text = _all_text(store)
    assert token not in text and "correct horse battery" not in text
    acc = json.loads(store.read_bytes(next(o.key for o in store.list("people/accounts"))))
    assert acc["password"].startswith("$argon2id$")
    # The accounts live in the people zone, never in a report folder.
    assert all(o.key.startswith(("people/", "audit/")) for o in store.list(""))


def test_invite_expires_after_seven_days_and_short_passwords_are_refused(store):
    _, token = people.invite(store, "a@example.org", "us", now=T0)
    with pytest.raises(PeopleError, match="at least"):
        people.accept_invite(store, token, "short", now=T0)
    with pytest.raises(PeopleError, match="expired"):
        people.accept_invite(store, token, "long enough password",
                             now=T0 + timedelta(days=7, seconds=1))
    people.accept_invite(store, token, "long enough password", now=T0 + timedelta(days=6))


def test_one_invite_link_opened_twice_at_once_sets_one_password(store):
    _, token = people.invite(store, "b@example.org", "il", now=T0)

    def use(pw):
        try:
            return people.accept_invite(store, token, pw, now=T0)
        except PeopleError:
            return None
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(use, [f"password number {i}" for i in range(8)]))
    winners = [i for i, r in enumerate(results) if r is not None]
    assert len(winners) == 1
    assert people.sign_in(store, "b@example.org", f"password number {winners[0]}")


def test_revoke_ends_sign_in_and_the_open_links(store):
    _, token = people.invite(store, "c@example.org", "us", now=T0)
    people.accept_invite(store, token, "a good long password", now=T0)
    _, token2 = people.invite(store, "c@example.org", "us", now=T0)
    revoked = people.revoke(store, "C@example.org", by="p-admin", now=T0)
    assert not revoked.active
    assert people.sign_in(store, "c@example.org", "a good long password") is None
    with pytest.raises(PeopleError):
        people.accept_invite(store, token2, "a good long password", now=T0)
    with pytest.raises(PeopleError, match="no account"):
        people.revoke(store, "nobody@example.org")


def test_a_revocation_while_the_password_is_being_set_is_not_overwritten(store, monkeypatch):
    # accept_invite reads the account, then writes it back with the password: a revocation
    # written in between must win (before: the write put revoked_at back to "").
    person, token = people.invite(store, "late@example.org", "us", now=T0)
    real = store.read_tagged
    raced = []

    def revoke_in_between(key):
        got = real(key)
        if key.startswith("people/accounts/") and not raced:
            raced.append(key)
            people.revoke(store, "late@example.org", now=T0)
        return got

    monkeypatch.setattr(store, "read_tagged", revoke_in_between)
    with pytest.raises(PeopleError, match="changed meanwhile"):
        people.accept_invite(store, token, "long enough password", now=T0)
    monkeypatch.undo()
    assert raced
    assert people.sign_in(store, "late@example.org", "long enough password") is None
    assert json.loads(store.read_bytes(raced[0]))["revoked_at"]


def test_tokens_are_stored_as_their_hash_and_revocable(store):
    tok, secret = people.new_token(store, "it", note="nightly REDCap", now=T0)
    assert people.token_person(store, secret).id == tok.id
    assert people.token_person(store, secret + "x") is None
    assert secret not in _all_text(store)
    people.revoke(store, tok.id)
    assert people.token_person(store, secret) is None
    assert [p.kind for p in people.users(store)] == ["token"]


def test_audit_is_append_only_and_names_no_email(store):
    person, token = people.invite(store, "d@example.org", "it", by="cli", now=T0)
    people.accept_invite(store, token, "a good long password", now=T0)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: people.record(store, person.id, "send", "it", f"b{i}", now=T0),
                      range(40)))
    log = people.audit_log(store)
    assert len(log) == 42            # invite, set_password and 40 sends at the same second
    assert sorted(e["batch"] for e in log if e["action"] == "send") == sorted(
        f"b{i}" for i in range(40))
    assert "d@example.org" not in json.dumps(log)
    assert {e["site"] for e in people.audit_log(store, "us")} == set()
    assert len(people.audit_log(store, "it", limit=5)) == 5


@pytest.mark.parametrize("person, site, action, expected", [
    (Person("p", "site", "it"), "it", "view", True),
    (Person("p", "site", "it"), "it", "withdraw", True),
    (Person("p", "site", "it"), "us", "view", False),
    (Person("p", "site", "it"), "us", "send", False),
    (Person("p", "site", "it"), None, "reports", False),
    (Person("p", "site", "it"), "it", "audit", False),
    (Person("p", "site", "it", revoked_at="x"), "it", "view", False),
    (Person("p", "coordinator", ""), "us", "send", True),
    (Person("p", "coordinator", ""), None, "audit", True),
    (Person("t", "site", "us", kind="token"), "us", "send", True),
    (Person("t", "site", "us", kind="token"), None, "reports", False),
    (None, "it", "view", False),
    (None, None, "reports", False),
])
def test_allowed(person, site, action, expected):
    assert allowed(person, site, action) is expected


def test_allowed_refuses_an_unknown_action():
    with pytest.raises(ValueError):
        allowed(Person("p", "coordinator", ""), None, "delete_everything")
