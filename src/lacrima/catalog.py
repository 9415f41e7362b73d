"""The catalog: the one owner of storage keys, the ledger and the per-site participant register.

Zones and their keys (the same on a local folder and on S3)::

    landing/<site>/<name>                 what data managers upload
    raw/<site>/<sha256>.<ext>             immutable, content-addressed copy of every drop
    curated/<site>/<sha256>.parquet       the records a batch brought (new or corrected)
    quarantine/<site>/<sha256>/           original file + validation report of rejected drops
    ledger/<site>/<sha256>.json           state of each batch (accepted, quarantined, superseded)
    ledger/<site>/_landing-index.json     landing key -> {etag, sha256} a run has hashed
    ledger/<site>/_intent-<sha256>.json   a correction: written first, then marked done
    ledger/<site>/_withdrawn-<pseudonym>.json   a withdrawal of consent
    ledger/_key.json                      fingerprint of the pseudonym key the store is made under
    ledger/_rekey/<stamp>.json            a rekey: intent first, then its audit entry (done)
    register/<site>.json                  pseudonym -> (fingerprint, batch, state)
    results/<site>/<input_key>/           a site's analysis: its rows, estimates, flow
    results/<site>/<input_key>/outputs-<version>/   its page and exports, once per version
    invariance/<digest>.json              the invariance fits of one set of inputs
    reports/<run_id>/                     a run's report folder, manifest.json written last
    reports/latest.json                   pointer to the latest whole report (written last)
    reports/latest                        local stores: a link to that folder
    locks/run.json                        the lease of the run holding the store
    people/accounts/<email-sha256>.json   a portal account (argon2id password hash, role, site)
    people/invites/<token-sha256>.json    a one-time invite link (used once, expires)
    people/tokens/<token-sha256>.json     a site's API token (only its SHA-256 is kept)
    audit/<YYYY-MM-DD>/<stamp>-<rand>.json  one audit entry each, created once, never replaced

Other modules ask this one for keys; none builds them. Ledger files whose name starts with
``_`` are not batches.

A record is one participant's answers. Its canonical form (:func:`canonical_records`) lists
every canonical variable in plan order: missing is ``null`` (never NaN or ""), integers as
integers, floats as shortest round-trip, booleans ``true``/``false``, dates ``YYYY-MM-DD``,
categories and text as their canonical value. Its fingerprint is the SHA-256 of that form
(without the ID, the register's key), so
two records hold the same answers exactly when their fingerprints are equal, whatever file
type, row order or pandas dtype they came through.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from typing import Mapping

import pandas as pd

from lacrima.results import SiteAnalysis
from lacrima.scoring import Flow
from lacrima.storage import ObjectInfo, Storage, parquet_frame, read_json, write_json
from lacrima.study import Site, Study

ACCEPTED, QUARANTINED, SUPERSEDED, LANDED, WITHDRAWN = (
    "accepted", "quarantined", "superseded", "landed", "withdrawn")

log = logging.getLogger("lacrima.catalog")

KEY_FILE = "ledger/_key.json"
_KEY_LABEL = b"lacrima pseudonym key fingerprint v1"


# --------------------------------------------------------------------------- keys


def landing_prefix(site: str | None = None) -> str:
    return f"landing/{site}" if site else "landing"


def landing_drops(storage: Storage, site: str) -> list[ObjectInfo]:
    """The drops of a site: the files directly in ``landing/<site>/``, in key order.

    The one answer to "what will a run read?". A file in a sub-folder
    (``landing/<site>/sub/x.csv``) or with a hidden name (``.x.csv``) is never read, on any
    store (a warning names it; ``lacrima status`` lists it with what to do); the store's
    listing already leaves out what is not a regular file (a symbolic link, device or FIFO
    in a local folder; an S3 folder marker or a key with an empty or ``..`` segment).
    """
    out = []
    for obj in storage.list(landing_prefix(site)):
        name = obj.key[len(landing_prefix(site)) + 1:]
        if "/" in name or name.startswith("."):
            log.warning("not reading %s: %s", obj.key, "in a sub-folder of the site's folder"
                        if "/" in name else "a hidden file")
            continue
        out.append(obj)
    return out


def landing_key(site: str, sha: str, name: str, replaces: str = "") -> str:
    """The landing name carries the content hash (and the batch a correction replaces)."""
    if replaces:
        return f"landing/{site}/{sha[:12]}-replaces-{replaces[:12]}-{name}"
    return f"landing/{site}/{sha[:12]}-{name}"


def raw_key(site: str, sha: str, ext: str) -> str:
    return f"raw/{site}/{sha}{ext}"


def curated_key(site: str, sha: str, tag: str = "") -> str:
    """``tag``: a key fingerprint prefix, for batches re-pseudonymised by ``rekey``."""
    return f"curated/{site}/{sha}{'-' + tag if tag else ''}.parquet"


def quarantine_prefix(site: str, sha: str | None = None) -> str:
    """A quarantined batch's folder (its file and reports); the site's, without ``sha``."""
    return f"quarantine/{site}/{sha}" if sha else f"quarantine/{site}"


def quarantine_records_key(site: str, sha: str) -> str:
    """The pseudonyms a quarantined drop held (never IDs): to see when a later batch fixes it."""
    return f"{quarantine_prefix(site, sha)}/records.json"


def ledger_prefix(site: str | None = None) -> str:
    return f"ledger/{site}" if site else "ledger"


def ledger_key(site: str, sha: str) -> str:
    return f"ledger/{site}/{sha}.json"


def landing_index_key(site: str) -> str:
    """The landing index: landing key -> {etag, sha256} of every object a run has hashed."""
    return f"ledger/{site}/_landing-index.json"


def intent_key(site: str, sha: str) -> str:
    return f"ledger/{site}/_intent-{sha}.json"


def withdrawal_key(site: str, pseudonym: str) -> str:
    return f"ledger/{site}/_withdrawn-{pseudonym}.json"


def redacted_raw_key(site: str, sha: str, redacted_sha: str, ext: str) -> str:
    """A raw file with a withdrawn person's rows removed (``withdraw --purge-raw``)."""
    return f"raw/{site}/{sha}-redacted-{redacted_sha[:12]}{ext}"


def register_key(site: str) -> str:
    return f"register/{site}.json"


def results_prefix(site: str, input_key: str | None = None) -> str:
    """Cached analyses of a site: ``results/<site>/<input_key>/`` (all of them without a key)."""
    return f"results/{site}/{input_key}" if input_key else f"results/{site}"


def site_data_key(site: str, input_key: str) -> str:
    """A site's analysis-ready rows, stored beside its analysis."""
    return f"{results_prefix(site, input_key)}/data.parquet"


def site_outputs_prefix(site: str, input_key: str, version: int) -> str:
    """A site's page and exports for one input key, made by output format ``version``."""
    return f"{results_prefix(site, input_key)}/outputs-{version}"


def invariance_key(digest: str) -> str:
    """The invariance fits made from the inputs whose digest is ``digest``
    (``invariance.inputs_digest``: settings, items, each site's item values)."""
    return f"invariance/{digest}.json"


def report_prefix(run_id: str) -> str:
    return f"reports/{run_id}"


# The published report: a small pointer written last, after every file of the run folder.
LATEST_POINTER = "reports/latest.json"
LATEST_FOLDER = "reports/latest"
MANIFEST = "manifest.json"

# The lease of the one run that may change the store (lacrima.lease).
LEASE_KEY = "locks/run.json"

# The portal's people (lacrima.people): never inside a report folder. Objects are named by
# a hash (of the e-mail, of the token), so a key names no person and a token's key is no token.
PEOPLE = "people"
AUDIT = "audit"


def account_key(email_hash: str) -> str:
    return f"{PEOPLE}/accounts/{email_hash}.json"


def invite_key(token_hash: str) -> str:
    return f"{PEOPLE}/invites/{token_hash}.json"


def token_key(token_hash: str) -> str:
    return f"{PEOPLE}/tokens/{token_hash}.json"


SESSION_SECRET = f"{PEOPLE}/session-secret.json"


def audit_key(at: str, nonce: str) -> str:
    """One audit entry: its day's folder, then the time and a random suffix (created once)."""
    return f"{AUDIT}/{at[:10]}/{at.replace(':', '').replace('+', 'Z')}-{nonce}.json"


# --------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class BatchRecord:
    """The ledger entry of one batch (one distinct file) of one site.

    ``records_new``: records the batch brought (new, or corrected); ``records_held``: records
    it held that the site already had, unchanged (-1: written before records were counted).
    ``key_fingerprint``: :func:`key_fingerprint` of the pseudonym key it was made under.
    ``fixed_by``: of a quarantined batch, the later batch that holds all of its records.
    """

    site: str
    sha256: str
    state: str
    original_name: str
    raw_key: str
    received_at: str
    processed_at: str
    rows: int = 0
    reason: str = ""
    uploader: str = ""
    replaces: str = ""
    superseded_by: str = ""
    identifying_dropped: tuple[str, ...] = ()
    curated_key: str = ""
    quarantine_key: str = ""
    records_new: int = -1
    records_held: int = 0
    key_fingerprint: str = ""
    fixed_by: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["identifying_dropped"] = list(self.identifying_dropped)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BatchRecord":
        d = dict(d)
        d["identifying_dropped"] = tuple(d.get("identifying_dropped", ()))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _ledger_json(storage: Storage, site: str | None, special: str = ""):
    """Ledger files of one site (or all): batches (``special=""``) or ``_<special>-*`` files.

    A name or folder starting with ``_`` is never a batch (``_key.json``, ``_rekey/``...).
    """
    for obj in storage.list(ledger_prefix(site)):
        parts = obj.key.split("/")[1:]
        if not parts[-1].endswith(".json"):
            continue
        if (parts[-1].startswith(f"_{special}-") if special
                else not any(p.startswith("_") for p in parts)):
            yield read_json(storage, obj.key)


def batches(storage: Storage, site: str | None = None) -> list[BatchRecord]:
    """Every batch in the ledger (of one site, or all), oldest first."""
    recs = [BatchRecord.from_dict(d) for d in _ledger_json(storage, site) if "sha256" in d]
    return sorted(recs, key=lambda r: (r.site, r.received_at, r.sha256))


def storage_has_batch(storage: Storage, site: str, sha: str) -> bool:
    """Whether the ledger holds batch ``sha`` of ``site`` (one existence check)."""
    return storage.exists(ledger_key(site, sha))


def write_batch(storage: Storage, rec: BatchRecord) -> None:
    write_json(storage, ledger_key(rec.site, rec.sha256), rec.to_dict())


def withdrawals(storage: Storage, site: str) -> list[dict]:
    """The site's withdrawals of consent (``pseudonym``, ``at``, ``reason``), oldest first."""
    return sorted(_ledger_json(storage, site, "withdrawn"), key=lambda d: (d["at"], d["pseudonym"]))


def write_withdrawal(storage: Storage, site: str, entry: dict) -> None:
    write_json(storage, withdrawal_key(site, entry["pseudonym"]), entry)


def withdrawn_received(storage: Storage, site: str) -> int:
    """People who withdrew consent and of whom the site has sent a record, before or after
    the withdrawal: the register names a batch for them (:func:`register_arrivals`), or the
    withdrawal found one (``held``)."""
    held = {w["pseudonym"] for w in withdrawals(storage, site) if w.get("held")}
    if storage.exists(register_key(site)):
        held |= {p for p, e in read_register(storage, site).items()
                 if e.state == WITHDRAWN and e.batch}
    return len(held)


def read_landing_index(storage: Storage, site: str) -> dict:
    key = landing_index_key(site)
    return json.loads(storage.read_bytes(key)) if storage.exists(key) else {}


def write_landing_index(storage: Storage, site: str, index: dict) -> None:
    write_json(storage, landing_index_key(site), index)


# --------------------------------------------------------------------------- records


def _canonical_column(series: pd.Series, kind: str) -> list:
    """One column as JSON-ready Python values: None for missing, the type's one form."""
    values = series.astype(object).where(series.notna(), None).tolist()
    if kind in ("integer", "likert"):
        conv = int
    elif kind == "float":
        conv = float           # json writes repr(): the shortest text that round-trips
    elif kind == "bool":
        conv = bool
    elif kind == "date":
        def conv(v):
            return (v.date() if isinstance(v, datetime) else
                    v if isinstance(v, date) else pd.Timestamp(v).date()).isoformat()
    else:
        conv = str
    return [None if v is None else conv(v) for v in values]


def canonical_records(frame: pd.DataFrame, variables: Mapping[str, Mapping]) -> list[str]:
    """The canonical form of each row of ``frame`` (JSON text), in row order.

    Parameters
    ----------
    frame : pandas.DataFrame
        Canonical (read and typed) rows; a variable the frame lacks is missing.
    variables : mapping
        The plan's variables (``Study.variables``), in plan order, each with its ``type``.

    Examples
    --------
    >>> v = {"id": {"type": "string"}, "age": {"type": "integer"}, "ok": {"type": "bool"}}
    >>> canonical_records(pd.DataFrame({"id": ["a"], "age": pd.array([None], "Int64"),
    ...                                 "ok": pd.array([True], "boolean")}), v)
    ['["a",null,true]']
    """
    columns = [_canonical_column(frame[name], spec.get("type", "string")) if name in frame
               else [None] * len(frame) for name, spec in variables.items()]
    return [json.dumps(list(row), separators=(",", ":"), ensure_ascii=False)
            for row in zip(*columns)] if columns else ["[]"] * len(frame)


def fingerprints(frame: pd.DataFrame, variables: Mapping[str, Mapping]) -> list[str]:
    """SHA-256 (hex) of each row's canonical answers: equal exactly when the answers are.

    The participant ID is left out: it is the register's key, and a pseudonym changes
    with the key (``rekey``) while the answers do not.
    """
    answers = {k: v for k, v in variables.items() if k != "participant_id"}
    return [hashlib.sha256(t.encode()).hexdigest() for t in canonical_records(frame, answers)]


# --------------------------------------------------------------------------- register


@dataclass(frozen=True)
class Entry:
    """A participant of a site in the register: where their current record is."""

    fingerprint: str
    batch: str
    state: str      # accepted (current), superseded (its batch was replaced), withdrawn


def read_register(storage: Storage, site: str, variables: Mapping[str, Mapping] | None = None
                  ) -> dict[str, Entry]:
    """Pseudonym -> :class:`Entry` of every participant the site has sent.

    A store made before the register existed has none: it is built from the accepted
    batches (the first batch holding a pseudonym wins, as curated data did then), which
    needs ``variables``; the next intake writes it.
    """
    key = register_key(site)
    if storage.exists(key):
        reg = {p: Entry(*e) for p, e in read_json(storage, key)["records"].items()}
        return _with_withdrawals(storage, site, reg)
    reg: dict[str, Entry] = {}
    for rec in batches(storage, site):
        if rec.state != ACCEPTED or not rec.curated_key or variables is None:
            continue
        frame = parquet_frame(storage.read_bytes(rec.curated_key))
        for pid, fp in zip(frame["participant_id"], fingerprints(frame, variables)):
            reg.setdefault(pid, Entry(fp, rec.sha256, ACCEPTED))
    return _with_withdrawals(storage, site, reg)


def _with_withdrawals(storage: Storage, site: str, reg: dict[str, Entry]) -> dict[str, Entry]:
    # The ledger's withdrawals are the record; the register follows them (a withdrawal
    # interrupted before its register write still holds).
    for w in withdrawals(storage, site):
        old = reg.get(w["pseudonym"])
        if old is None or old.state != WITHDRAWN:
            reg[w["pseudonym"]] = Entry(old.fingerprint if old else "",
                                        old.batch if old else "", WITHDRAWN)
    return reg


def register_bytes(site: str, reg: Mapping[str, Entry]) -> str:
    records = {p: [e.fingerprint, e.batch, e.state] for p, e in sorted(reg.items())}
    return json.dumps({"site": site, "records": records}, separators=(",", ":"))


def write_register(storage: Storage, site: str, reg: Mapping[str, Entry]) -> None:
    storage.write_bytes(register_key(site), register_bytes(site, reg).encode())


def register_batch(reg: dict[str, Entry], batch: str, frame: pd.DataFrame,
                   variables: Mapping[str, Mapping], replaces: str = "") -> dict[str, Entry]:
    """The register after accepting ``batch`` whose stored records are ``frame``.

    The records of ``replaces`` (a corrected batch) that are still current become
    superseded first; withdrawn participants stay withdrawn. Idempotent: applying the same
    batch twice gives the same register (what finishing an interrupted correction relies on).
    """
    out = dict(reg)
    if replaces:
        for pid, e in reg.items():
            if e.batch == replaces and e.state == ACCEPTED:
                out[pid] = Entry(e.fingerprint, e.batch, SUPERSEDED)
    for pid, fp in zip(frame["participant_id"], fingerprints(frame, variables)):
        if out.get(pid, Entry("", "", "")).state != WITHDRAWN:
            out[pid] = Entry(fp, batch, ACCEPTED)
    return out


def register_arrivals(reg: dict[str, Entry], batch: str, pseudonyms) -> dict[str, Entry]:
    """The register after ``batch`` brought records of people who had withdrawn before any
    record of them arrived: they stay withdrawn (their answers are not kept), and the register
    now names the batch, so the participant flow counts them as received, as it counts a
    person who withdrew after their records arrived."""
    out = dict(reg)
    for pid in pseudonyms:
        e = out.get(pid)
        if e is not None and e.state == WITHDRAWN and not e.batch:
            out[pid] = Entry("", batch, WITHDRAWN)
    return out


def current_by_batch(reg: Mapping[str, Entry]) -> dict[str, set[str]]:
    """Batch -> the participants whose current record is the one that batch brought."""
    out: dict[str, set[str]] = {}
    for pid, e in reg.items():
        if e.state == ACCEPTED:
            out.setdefault(e.batch, set()).add(pid)
    return out


def participants_held(storage: Storage, site: str) -> int:
    """People whose current record the site holds (withdrawn and superseded ones left out):
    one read of the register, not of the curated data."""
    if not storage.exists(register_key(site)):
        return len(curated_frame(storage, site))
    return sum(1 for e in read_register(storage, site).values() if e.state == ACCEPTED)


def curated_frame(storage: Storage, site: str) -> pd.DataFrame:
    """The site's curated data: each participant's current record once, withdrawn people left
    out, in pseudonym order.

    Reads the accepted batches' curated files and keeps, from each, the rows the register
    says are current in it (a store without a register yet: every row, the first batch
    holding a participant winning).
    """
    current = (current_by_batch(read_register(storage, site))
               if storage.exists(register_key(site)) else None)
    frames = []
    for rec in batches(storage, site):
        if rec.state != ACCEPTED or not rec.curated_key:
            continue
        frame = parquet_frame(storage.read_bytes(rec.curated_key))
        if current is not None:
            frame = frame[frame["participant_id"].isin(current.get(rec.sha256, ()))]
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    data = pd.concat(frames, ignore_index=True)
    # In pseudonym order: the same records give the same rows in the same order whatever
    # batches and row orders brought them, so every float sum (and an optimiser's path) over
    # them, and every output, is byte-identical (issue 24).
    data = data.drop_duplicates(subset=["participant_id"], keep="first")
    return data.sort_values("participant_id", kind="stable").reset_index(drop=True)


def frame_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


# --------------------------------------------------------------------------- key custody


def key_fingerprint(key: bytes) -> str:
    """HMAC-SHA256 of a fixed label under the pseudonym key: names the key, never reveals it."""
    return hmac.new(key, _KEY_LABEL, hashlib.sha256).hexdigest()[:32]


def register_digest(storage: Storage, site: str) -> str:
    """SHA-256 of the site's register file ("" when it has none): changes iff its records do."""
    key = register_key(site)
    return hashlib.sha256(storage.read_bytes(key)).hexdigest() if storage.exists(key) else ""


def store_key(storage: Storage) -> dict | None:
    """The store's key record (``fingerprint``, ``demo``), or None for a store without batches."""
    return read_json(storage, KEY_FILE) if storage.exists(KEY_FILE) else None


class KeyCustodyError(RuntimeError):
    """The pseudonym key does not fit the store (another key, or demo and real key mixed)."""


def check_key(storage: Storage, key: bytes) -> None:
    """Refuse a key other than the one the store was made under; claim a fresh store for it.

    Raises
    ------
    KeyCustodyError
        With one line saying what to do.
    """
    from lacrima.privacy import DEMO_KEY

    fp, demo = key_fingerprint(key), key == DEMO_KEY
    interrupted = open_rekey(storage)
    if interrupted is not None:
        raise KeyCustodyError(
            f"a rekey of {storage.location} from key {interrupted['from'][:8]} to "
            f"{interrupted['to'][:8]} was interrupted: run `lacrima rekey` again with those two "
            "keys to finish it")
    held = store_key(storage)
    if held is None:
        # A store from before the key file: its batches name their keys, if any (a store
        # older still names none, and is claimed by the first key that runs on it).
        recs = batches(storage)
        fps = {r.key_fingerprint for r in recs if r.key_fingerprint}
        unnamed = [r for r in recs
                   if r.state == ACCEPTED and r.curated_key and not r.key_fingerprint]
        if fps <= {fp} and (fps or not unnamed or _made_under(storage, unnamed[0], key)):
            write_json(storage, KEY_FILE, {"fingerprint": fp, "demo": demo}, if_absent=True)
            return
        other = sorted(fps - {fp})[0] if fps - {fp} else "unknown"
        held = {"fingerprint": other, "demo": other == key_fingerprint(DEMO_KEY)
                or (other == "unknown" and not demo and _made_under(storage, unnamed[0], DEMO_KEY))}
    if held["fingerprint"] == fp:
        return
    if demo:
        raise KeyCustodyError(
            f"{storage.location} holds batches made under a real pseudonym key: the demo "
            "(public key, synthetic data) never writes into it; give the demo its own store "
            "(--storage DIR)")
    if held.get("demo"):
        raise KeyCustodyError(
            f"{storage.location} holds demo batches (public key, synthetic data): real data "
            "never goes into a demo store; use another --storage")
    raise KeyCustodyError(
        f"{storage.location} was made under another pseudonym key (fingerprint "
        f"{held['fingerprint'][:8]}, this key {fp[:8]}): set the key the store was made under, "
        "or move the store to the new key with `lacrima rekey`")


# --------------------------------------------------------------------------- intents


def _made_under(storage: Storage, rec: BatchRecord, key: bytes) -> bool:
    """Whether a batch from before key fingerprints were kept was pseudonymised under ``key``:
    its raw IDs, pseudonymised under ``key``, are the pseudonyms its curated file holds."""
    from lacrima.privacy import pseudonymise
    from lacrima.study import load_site, load_study

    if not storage.exists(rec.raw_key):
        return False
    ids = raw_ids(storage, load_site(rec.site), load_study(), rec.raw_key)
    held = set(parquet_frame(storage.read_bytes(rec.curated_key))["participant_id"])
    return ids is not None and bool(set(pseudonymise(rec.site, ids, key)) & held)


def raw_ids(storage: Storage, site: Site, study: Study, raw_key: str) -> pd.Series | None:
    """The normalised IDs of a raw drop (not pseudonymised), or None for an unreadable file."""
    from pathlib import PurePosixPath

    # Imported here: reading native files (pyreadstat, openpyxl) is paid only by a rekey
    # or an old store's key check, never by the commands that only list keys.
    from lacrima.codebook import load_codebook
    from lacrima.findings import DropError
    from lacrima.native import read_drop_bytes

    try:
        drop = read_drop_bytes(storage.read_bytes(raw_key),
                               f"drop{PurePosixPath(raw_key).suffix or '.bin'}", site, study)
    except DropError:
        return None
    ids, _ = load_codebook(site).normalise_ids(drop.frame["participant_id"])
    return ids.dropna()


def write_intent(storage: Storage, site: str, intent: dict) -> None:
    write_json(storage, intent_key(site, intent["batch"]["sha256"]), {**intent, "done": False})


def mark_done(storage: Storage, site: str, intent: dict) -> None:
    write_json(storage, intent_key(site, intent["batch"]["sha256"]), {**intent, "done": True})


def rekey_key(stamp: str) -> str:
    return f"ledger/_rekey/{stamp.replace(':', '')}.json"


def write_rekey(storage: Storage, intent: dict) -> None:
    write_json(storage, rekey_key(intent["at"]), {**intent, "done": False})


def mark_rekey_done(storage: Storage, intent: dict) -> None:
    # The audit entry keeps what was done, not the copies of the files it wrote.
    kept = {k: v for k, v in intent.items() if k not in ("writes", "deletes", "deletes_before")}
    write_json(storage, rekey_key(intent["at"]), {**kept, "done": True})


def open_rekey(storage: Storage) -> dict | None:
    """A rekey that was started and not marked done, if any."""
    return next((d for d in (read_json(storage, o.key) for o in storage.list("ledger/_rekey"))
                 if not d.get("done")), None)


def open_intents(storage: Storage, site: str) -> list[dict]:
    """Intents written and not marked done: a run died between their steps."""
    return [d for d in _ledger_json(storage, site, "intent") if not d.get("done")]


# --------------------------------------------------------------------------- site analyses

_SITE_FRAMES = ("results", "descriptives", "moments")


def save_site_analysis(storage: Storage, a: SiteAnalysis, data: pd.DataFrame) -> SiteAnalysis:
    """Store a site's analysis and its analysis-ready rows under its input key.

    Returns the analysis with its frames as read back from Parquet, so a fresh analysis and
    a reused one are the same frames (Parquet settles dtypes, e.g. an all-missing text
    column). ``flow.json`` is written last: its presence means the entry is complete.
    """
    prefix = results_prefix(a.site, a.input_key)
    storage.write_bytes(site_data_key(a.site, a.input_key), frame_bytes(data), if_absent=True)
    back = {}
    for name in _SITE_FRAMES:
        blob = frame_bytes(getattr(a, name))
        storage.write_bytes(f"{prefix}/{name}.parquet", blob, if_absent=True)
        back[name] = parquet_frame(blob)
    flow = {"site": a.flow.site, "received": a.flow.received, "analysed": a.flow.analysed,
            "excluded": [list(e) for e in a.flow.excluded]}
    storage.write_bytes(f"{prefix}/flow.json", json.dumps(flow).encode(), if_absent=True)
    return SiteAnalysis(a.site, a.input_key, a.batches, a.flow, back["results"],
                        back["descriptives"], back["moments"], a.reused)


def site_analysis_stored(storage: Storage, site: str, input_key: str) -> bool:
    """True when the analysis of ``site`` under ``input_key`` is stored whole (its ``flow.json``,
    written last, exists); an existence check only."""
    return storage.exists(f"{results_prefix(site, input_key)}/flow.json")


def load_site_analysis(storage: Storage, site: str, input_key: str,
                       batches: tuple[str, ...]) -> SiteAnalysis | None:
    """The stored analysis of ``site`` under ``input_key``, or None when there is none (complete)."""
    if not site_analysis_stored(storage, site, input_key):
        return None
    prefix = results_prefix(site, input_key)
    rec = json.loads(storage.read_bytes(f"{prefix}/flow.json"))
    flow = Flow(rec["site"], rec["received"], tuple(tuple(e) for e in rec["excluded"]),
                rec["analysed"])
    frames = [parquet_frame(storage.read_bytes(f"{prefix}/{name}.parquet"))
              for name in _SITE_FRAMES]
    return SiteAnalysis(site, input_key, batches, flow, *frames, reused=True)


def site_data(storage: Storage, site: str, input_key: str) -> pd.DataFrame:
    """A site's analysis-ready rows, as stored with its analysis."""
    return parquet_frame(storage.read_bytes(site_data_key(site, input_key)))


# --------------------------------------------------------------------------- reports


def manifest(run_id: str, files: Mapping[str, tuple[str, int]]) -> dict:
    """A run's file list.

    Parameters
    ----------
    run_id : str
    files : mapping of str to (str, int)
        Run-relative name -> (SHA-256 hex, size in bytes) of its content.

    Returns
    -------
    dict
        ``{"run_id": ..., "files": [{"name", "bytes", "sha256"}, ...]}`` sorted by name.
    """
    return {"run_id": run_id,
            "files": [{"name": n, "bytes": size, "sha256": sha}
                      for n, (sha, size) in sorted(files.items())]}


def publish_report(storage: Storage, run_id: str, files: Mapping[str, tuple[str, int]]) -> None:
    """Make ``reports/<run_id>/`` the latest report: its manifest, the pointer, the local link.

    Parameters
    ----------
    storage : Storage
    run_id : str
        A run whose every file is written.
    files : mapping of str to (str, int)
        Run-relative name -> (SHA-256 hex, size) of every file written: the manifest's list.

    Notes
    -----
    Order: ``manifest.json`` (create-if-absent), then the pointer ``reports/latest.json``
    (``run_id``, ``manifest_sha256``, ``published_at``): one small object replaced in one
    write, so a reader sees the previous report or this one, never a mix; a run killed
    before it leaves the previous report as latest, and the next run, finding the latest
    report's inputs differ from its own, makes it again.

    On a local store ``reports/latest`` is also a symbolic link to the run folder, replaced
    atomically (a new link renamed over the old), for people browsing the folder. A
    ``reports/latest/`` folder of copies left by an older version is moved aside to
    ``reports/latest-until-<run_id>/`` (never deleted). S3 has no atomic way to replace a
    set of objects, so there the pointer alone says which run is latest.
    """
    import os

    body = json.dumps(manifest(run_id, files), indent=2).encode()
    storage.write_bytes(f"{report_prefix(run_id)}/{MANIFEST}", body, if_absent=True)
    pointer = {"run_id": run_id, "manifest_sha256": hashlib.sha256(body).hexdigest(),
               "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    storage.write_bytes(LATEST_POINTER, json.dumps(pointer, indent=2, sort_keys=True).encode())
    link = storage.local_path(LATEST_FOLDER)
    if link is None:
        return
    if link.is_dir() and not link.is_symlink():
        link.rename(link.with_name(f"latest-until-{run_id}"))
    tmp = link.with_name(f".latest-{run_id}.tmp")
    if tmp.is_symlink():
        tmp.unlink()                    # ours, from a run killed between these two lines
    os.symlink(run_id, tmp)             # relative: the folder still works where it is copied
    os.replace(tmp, link)


def unfinished_reports(storage: Storage) -> list[str]:
    """Run ids of folders under ``reports/`` without their manifest: runs killed while writing
    their report (:func:`publish_report` writes the manifest after every other file).

    ``reports/latest`` (the local link) and ``reports/latest-until-*`` (copies moved aside by
    an older version) are not run folders.
    """
    runs, whole = set(), set()
    for obj in storage.list("reports"):
        parts = obj.key.split("/")
        if len(parts) < 3 or parts[1] == "latest" or parts[1].startswith("latest-until-"):
            continue
        runs.add(parts[1])
        if parts[2:] == [MANIFEST]:
            whole.add(parts[1])
    return sorted(runs - whole)


def remove_unfinished_reports(storage: Storage) -> list[str]:
    """Delete every run folder :func:`unfinished_reports` finds; their run ids.

    Only for the holder of the store's lease (``lacrima.lease.hold`` calls it): no other run
    can be writing a report then. Such a folder was never published (the pointer names a
    folder only after its manifest) and the next run makes its report again.
    """
    import shutil

    gone = unfinished_reports(storage)
    for run_id in gone:
        for obj in storage.list(report_prefix(run_id)):
            storage.delete(obj.key)
        folder = storage.local_path(report_prefix(run_id))
        if folder is not None and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)           # the empty folders a local store leaves
        log.warning("removed reports/%s: a run was killed while writing it (no manifest); "
                    "it was never published", run_id)
    return gone


def latest_run(storage: Storage) -> str | None:
    """The run id of the latest published report (``reports/latest.json``), if any."""
    if not storage.exists(LATEST_POINTER):
        return None
    return json.loads(storage.read_bytes(LATEST_POINTER))["run_id"]


def last_comparison_key(storage: Storage) -> str | None:
    """The comparison key of the latest published report, if any."""
    run_id = latest_run(storage)
    if run_id is None:
        return None
    prov = json.loads(storage.read_bytes(f"{report_prefix(run_id)}/provenance.json"))
    return prov.get("comparison_key")
