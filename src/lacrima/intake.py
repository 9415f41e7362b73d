"""Intake: landing -> raw (immutable, content-addressed) -> curated | quarantine.

A drop is accepted whole or quarantined whole. The same bytes uploaded twice are processed
once (the raw key is their SHA-256). A batch may replace an earlier one only when the upload
says so explicitly (metadata ``replaces``). The pipeline never overwrites or deletes data.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import pandas as pd

from lacrima import catalog
from lacrima.catalog import (ACCEPTED, QUARANTINED, SUPERSEDED, WITHDRAWN, BatchRecord, batches,
                             read_landing_index)
from lacrima.findings import DropError, Finding
from lacrima.i18n import msg
from lacrima.privacy import pseudonymise
from lacrima.storage import NotRegularFile, Storage, parquet_frame, sha256_bytes, write_json
from lacrima.study import Site, Study
from lacrima.validate import ValidationReport, run_suite_many, validate_drop

log = logging.getLogger("lacrima.intake")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file name fit for display and metadata: base name only, odd characters replaced."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    return (_SAFE.sub("_", base).strip("._") or "drop")[:120]


def local_name(name: str) -> str:
    """The name a drop is read under in a temporary folder: its own (``safe_name``: no path
    parts, no odd characters), so findings name the file the data manager sent."""
    name = safe_name(name)
    return PurePosixPath(name).stem + extension(name)


def extension(name: str) -> str:
    suffix = PurePosixPath(safe_name(name)).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix or "") else ".bin"


@dataclass(frozen=True)
class IntakeResult:
    site: str
    seen: int
    accepted: tuple[str, ...] = ()
    quarantined: tuple[str, ...] = ()
    skipped_duplicates: int = 0
    reports: tuple[ValidationReport, ...] = field(default=(), repr=False)
    records_new: int = 0       # records the accepted drops brought that the site never held
    records_held: int = 0      # records they held that the site already had, unchanged
    counts: tuple[RecordCounts | None, ...] = field(default=(), repr=False)  # per report

    @property
    def changed(self) -> bool:
        return bool(self.accepted)

    @property
    def record_counts(self) -> dict[str, dict]:
        """Batch -> its records ``new``, ``already_held`` (unchanged), ``changed`` and
        ``withdrawn`` (None: not read)."""
        return {r.sha256: {"new": c and c.new, "already_held": c and c.already_held,
                           "changed": c and c.changed, "withdrawn": c and c.withdrawn}
                for r, c in zip(self.reports, self.counts or [None] * len(self.reports))}


@dataclass(frozen=True)
class RecordCounts:
    """A read drop's records against the site's register, as its summary says it: new (never
    held), already held unchanged, changed (a correction's changed records, or ID clashes) and
    withdrawn (people who withdrew consent: left out)."""

    new: int
    already_held: int
    changed: int
    withdrawn: int = 0


def resolve_batch(storage: Storage, site: str, ref: str) -> BatchRecord:
    """A batch of ``site`` by SHA-256 prefix (at least 8 characters) or original file name."""
    matches = [r for r in batches(storage, site)
               if (len(ref) >= 8 and r.sha256.startswith(ref)) or r.original_name == safe_name(ref)]
    if len(matches) != 1:
        raise LookupError(f"batch {ref!r} of site {site}: {len(matches)} matches in the ledger "
                          "(give a SHA-256 prefix of 8+ characters; see `lacrima status`)")
    return matches[0]


def _quarantine(storage: Storage, site: str, sha: str, data: bytes, name: str,
                report: ValidationReport, lang: str = "") -> str:
    """Keep a quarantined drop with its report (JSON in English; HTML in the site's language)."""
    from lacrima.dropreport import render_html

    prefix = catalog.quarantine_prefix(site, sha)
    storage.write_bytes(f"{prefix}/{name}", data, if_absent=True)
    write_json(storage, f"{prefix}/report.json", report.to_dict())
    storage.write_bytes(f"{prefix}/report.html", render_html(report, lang).encode())
    return prefix


def read_and_validate(path: Path, site: Site, study: Study, key: bytes, name: str, sha: str,
                      size_mb: float = 0.0):
    """Read a native drop and validate it. Returns (report, canonical frame or None).

    Never raises for bad data: an unreadable file becomes a report with one finding. The
    drop's records are checked against the site's register by intake (:func:`split_records`,
    :func:`clash_findings`), not here.
    """
    report, drop, codebook = _read(Path(path).read_bytes(), site, study, key, name, sha, size_mb)
    if drop is None:
        return report, None
    return validate_drop(drop, study, codebook, site.code, name, sha), drop.frame


def _read(data: bytes, site: Site, study: Study, key: bytes, name: str, sha: str,
          size_mb: float = 0.0):
    """Read a native drop and pseudonymise its IDs: (None, drop, codebook), or, when the file
    cannot be read, (report with its findings, None, codebook). Never raises for bad data."""
    from lacrima.codebook import load_codebook
    from lacrima.native import read_drop_bytes

    codebook = load_codebook(site)
    max_mb = float(study.section("validation").get("max_file_mb", 200))
    if size_mb > max_mb:
        f = Finding("file_too_large", f"{name} is {size_mb:.0f} MB; drops up to {max_mb:.0f} MB are read",
                    expected=f"at most {max_mb:.0f} MB", found=f"{size_mb:.0f} MB")
        return ValidationReport(site.code, name, sha, 0, (f,)), None, codebook
    try:
        drop = read_drop_bytes(data, local_name(name), site, study)
    except DropError as err:
        findings = err.findings or (Finding(err.check, f"{name}: {err.message}"),)
        return ValidationReport(site.code, name, sha, 0, tuple(findings)), None, codebook
    frame = drop.frame.copy()
    ids, bad = codebook.normalise_ids(frame["participant_id"])
    findings = drop.findings
    if bad:
        rows = tuple(int(drop.row_numbers[i]) for i in bad)
        native = codebook.native_name("participant_id")
        findings += (Finding("id_pattern",
                             msg("{n} participant ID(s) in column {column} of {file} do not fit "
                                 "the site's ID pattern", n=len(rows), column=repr(native),
                                 file=name),
                             columns=(native,), rows=rows,
                             expected=msg("IDs matching {pattern}", pattern=codebook.id_pattern),
                             found=msg("{n} ID(s) of another shape", n=len(rows)),
                             fix=msg("correct these IDs (or delete rows that are not "
                                     "participants), and upload the corrected file")),)
    ids.index = frame.index
    frame["participant_id"] = ids.where(ids.isna(), pseudonymise(site.code, ids.fillna(""), key))
    frame["site"] = site.code
    return None, replace(drop, frame=frame, findings=findings), codebook


def ingest_site(storage: Storage, site: Site, study: Study, key: bytes,
                now: datetime | None = None) -> IntakeResult:
    """Process every new object in ``landing/<site>/``: the one-site case of :func:`ingest_sites`.

    Returns
    -------
    IntakeResult
        Counts of drops seen, accepted, quarantined and skipped as already processed.
    """
    return ingest_sites(storage, [site], study, key, now)[0]


@dataclass(frozen=True)
class _Pending:
    """A new drop of one site, kept in raw and read (not yet validated or stored)."""

    site: Site
    landing_key: str
    data: bytes
    sha: str
    meta: dict
    name: str
    raw_key: str
    codebook: object
    unreadable: ValidationReport | None   # the report when the file could not be read
    drop: object                          # the read drop (IDs pseudonymised), else None


@dataclass(frozen=True)
class _SiteScan:
    """One site's landing zone against its ledger: the new drops, in listing order."""

    site: Site
    seen: int
    skipped: int
    pending: tuple[_Pending, ...]
    index: dict
    index_changed: bool


def ingest_sites(storage: Storage, sites, study: Study, key: bytes,
                 now: datetime | None = None) -> list[IntakeResult]:
    """Process every new object in the landing zones of a group of sites, validating at once.

    Parameters
    ----------
    storage : Storage
    sites : sequence of Site
        Distinct sites; each drop is processed only under the site whose landing zone it
        came from.
    study : Study
    key : bytes
        Pseudonymisation key: IDs are replaced before anything reaches curated.
    now : datetime, optional
        Clock for the ledger (tests pass a fixed one).

    Returns
    -------
    list of IntakeResult
        One per site, in the order of ``sites``: what ``ingest_site`` gives for each alone
        (the same ledger, raw, curated, quarantine and landing index too).

    Notes
    -----
    Three steps. Each site's new drops are kept in raw and read (``_scan``); the Great
    Expectations suite then runs once over all readable drops of the group
    (``run_suite_many``: its cost is per call, not per row); last, site by site and drop by
    drop in listing order as ``ingest_site`` always did, each drop's records are checked
    against the site's register (:func:`split_records`: held, new or changed; a later drop
    sees an earlier one's records), completion, and curated or quarantined with its ledger
    entry. All the group's pending
    drops are held in memory between the steps: callers pass groups of sites, not all.
    What one GX run for the group saves: ``bench/notes.md``.
    """
    sites = list(sites)
    codes = [s.code for s in sites]
    if len(set(codes)) != len(codes):
        raise ValueError(f"ingest_sites takes each site once, got {codes}")
    now = now or datetime.now(timezone.utc)
    stamp = now.isoformat(timespec="seconds")
    catalog.check_key(storage, key)         # before any drop is read
    scans = [_scan(storage, site, study, key, stamp) for site in sites]
    readable = [p for scan in scans for p in scan.pending
                if p.drop is not None and len(p.drop.frame)]
    found = run_suite_many([p.drop.frame for p in readable], study,
                           [p.drop.row_numbers for p in readable],
                           [p.codebook for p in readable])
    suites = {id(p): f for p, f in zip(readable, found)}
    results = []
    fingerprint = catalog.key_fingerprint(key)
    for scan in scans:
        accepted, quarantined, reports, counts = [], [], [], []
        reg = catalog.read_register(storage, scan.site.code, study.variables)
        for p in scan.pending:
            report, reg, count = _process(storage, study, p, stamp, suites.get(id(p)), reg,
                                          fingerprint)
            reports.append(report)
            counts.append(count)
            (accepted if report.valid else quarantined).append(p.sha)
        if accepted:
            mark_fixed(storage, scan.site.code, reg)
        if scan.index_changed:
            catalog.write_landing_index(storage, scan.site.code, scan.index)
        taken = [c for r, c in zip(reports, counts) if r.valid and c is not None]
        results.append(IntakeResult(scan.site.code, scan.seen, tuple(accepted),
                                    tuple(quarantined), scan.skipped, tuple(reports),
                                    sum(c.new for c in taken), sum(c.already_held for c in taken),
                                    tuple(counts)))
    return results


def mark_fixed(storage: Storage, site: str, reg: dict) -> list[str]:
    """Mark each open quarantined batch of ``site`` whose records the register now holds in
    an accepted batch as fixed by that batch (``fixed_by``); the batches marked.

    A quarantined drop keeps the pseudonyms of the records it would have brought (new or
    changed) with the batch holding each then (``catalog.quarantine_records_key``); it is
    fixed when every one of them is held, accepted or withdrawn, by another batch. An
    unreadable drop, or one that brought nothing, stays open.
    """
    marked = []
    for rec in batches(storage, site):
        key = catalog.quarantine_records_key(site, rec.sha256)
        if rec.state != QUARANTINED or rec.fixed_by or not storage.exists(key):
            continue
        people = json.loads(storage.read_bytes(key))
        held = [reg.get(p) for p in people]
        # held by another batch than when it was quarantined: a record the old batch still
        # holds (the other side of an id_clash) is not fixed until a correction replaces it
        if not held or any(e is None or e.state not in (ACCEPTED, WITHDRAWN)
                           or e.batch == people[p] for p, e in zip(people, held)):
            continue
        by = max({e.batch for e in held}, key=[e.batch for e in held].count)
        catalog.write_batch(storage, replace(rec, fixed_by=by))
        marked.append(rec.sha256)
    return marked


def _scan(storage: Storage, site: Site, study: Study, key: bytes, stamp: str) -> _SiteScan:
    """The site's new landing objects: each kept in raw and read; unchanged ones skipped.

    A correction a run left half done (its intent not marked done) is finished first.
    """
    finish_intents(storage, site.code, study)
    records = {r.sha256: r for r in batches(storage, site.code)}
    known = set(records)
    index = read_landing_index(storage, site.code)
    pending, skipped, index_changed = [], 0, False
    landing = catalog.landing_drops(storage, site.code)
    for obj in landing:
        seen = index.get(obj.key)
        if seen and seen["etag"] == obj.etag and seen["sha256"] in known:
            skipped += 1                  # unchanged object already processed: not even read
            continue
        try:
            data = storage.read_bytes(obj.key)
        except NotRegularFile as err:     # replaced by a link since the listing: never read
            log.warning("not reading %s", err)
            skipped += 1
            continue
        sha = sha256_bytes(data)
        index[obj.key] = {"etag": obj.etag, "sha256": sha}
        index_changed = True
        if sha in known and not _resent_as_correction(storage, obj.key, records.get(sha)):
            skipped += 1
            continue
        known.add(sha)
        pending.append(_keep_and_read(storage, site, study, key, obj.key, data, sha, stamp))
    return _SiteScan(site, len(landing), skipped, tuple(pending), index, index_changed)


def _resent_as_correction(storage: Storage, landing_key: str, rec: BatchRecord | None) -> bool:
    """A quarantined batch sent again with ``--replaces``, as its id_clash finding asks.

    The same bytes are otherwise processed once; this is the one case where they are
    processed again, because the data manager has now said which batch they correct.
    """
    return (rec is not None and rec.state == QUARANTINED and not rec.replaces
            and bool(storage.metadata(landing_key).get("replaces")))


def _keep_and_read(storage: Storage, site: Site, study: Study, key: bytes, landing_key: str,
                   data: bytes, sha: str, stamp: str) -> _Pending:
    """Keep one new drop in raw, then read it (IDs pseudonymised)."""
    meta = storage.metadata(landing_key)
    name = safe_name(meta.get("original_name") or landing_key.rsplit("/", 1)[-1])
    raw_key = catalog.raw_key(site.code, sha, extension(name))
    storage.write_bytes(raw_key, data, if_absent=True, metadata={
        "site": site.code, "original_name": name, "uploader": meta.get("uploader", ""),
        "sha256": sha, "received_at": stamp})
    unreadable, drop, codebook = _read(data, site, study, key, name, sha, size_mb=len(data) / 1e6)
    return _Pending(site, landing_key, data, sha, meta, name, raw_key, codebook, unreadable, drop)


def _process(storage: Storage, study: Study, p: _Pending, stamp: str, suite,
             reg: dict, key_fingerprint: str
             ) -> tuple[ValidationReport, dict, RecordCounts | None]:
    """Validate one read drop, split its records against the site's register, then curate
    or quarantine it and write its ledger entry. ``suite``: its findings from the group's
    batched GX run. Returns the report, the register after this drop and the drop's record
    counts (None when it could not be read)."""
    site, sha, meta, name, data = p.site, p.sha, p.meta, p.name, p.data
    replaced, extra = None, ()
    if meta.get("replaces"):
        try:
            replaced = current_batch(storage, site.code, meta["replaces"])
        except LookupError as err:
            extra = (Finding("replaces", str(err), expected="a current (accepted) batch",
                             found=safe_name(meta["replaces"])),)
    if p.drop is None:
        report, frame, split = p.unreadable, None, None
    else:
        report = validate_drop(p.drop, study, p.codebook, site.code, name, sha, suite=suite)
        frame = p.drop.frame
        split = split_records(frame, reg, study.variables, sha,
                              replaced.sha256 if replaced else "")
        extra += clash_findings(storage, split, frame, p.drop.row_numbers, p.codebook, study)
    if extra:
        report = replace(report, findings=report.findings + extra)
    c = None if split is None else split.counts()
    counts = c and RecordCounts(c["new"], c["unchanged"], c["changed"], c["withdrawn"])
    rec = dict(site=site.code, sha256=sha, original_name=name, raw_key=p.raw_key,
               received_at=stamp,
               processed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
               rows=report.n_rows, uploader=meta.get("uploader", ""),
               replaces=replaced.sha256 if replaced else "",
               identifying_dropped=report.identifying_dropped, key_fingerprint=key_fingerprint)
    if report.valid and frame is not None:
        reg = catalog.register_arrivals(reg, sha, frame["participant_id"].dropna())
        new = frame[split.new].reset_index(drop=True)
        curated_key = catalog.curated_key(site.code, sha)
        storage.write_bytes(curated_key, catalog.frame_bytes(new), if_absent=True)
        batch = BatchRecord(state=ACCEPTED, curated_key=curated_key, records_new=len(new),
                            records_held=split.held, **rec)
        if replaced is not None:
            # Two ledger changes and the register, as one intent: written first, applied,
            # marked done; a run that finds it not done finishes it (finish_intents).
            intent = {"kind": "correction", "batch": batch.to_dict(), "replaces": replaced.sha256}
            catalog.write_intent(storage, site.code, intent)
            reg = _apply_correction(storage, site.code, intent, study, reg)
            catalog.mark_done(storage, site.code, intent)
        else:
            # Register first: a crash before the ledger entry leaves records no accepted
            # batch owns (ignored), and the rerun processes the drop again to the same end.
            reg = catalog.register_batch(reg, sha, new, study.variables)
            catalog.write_register(storage, site.code, reg)
            catalog.write_batch(storage, batch)
    else:
        qkey = _quarantine(storage, site.code, sha, data, name, report, site.language)
        if split is not None:
            # The people whose records it would have brought (new or changed; not those held
            # unchanged), with the batch holding each now ("" when none): it is fixed once
            # other batches hold them all.
            ids = frame["participant_id"]
            changed = {i for i, _ in split.changed}
            people = {str(ids.iloc[i]): (reg[ids.iloc[i]].batch if ids.iloc[i] in reg else "")
                      for i in range(len(frame)) if pd.notna(ids.iloc[i])
                      and (split.new[i] or i in changed)}
            write_json(storage, catalog.quarantine_records_key(site.code, sha), people)
        reason = "; ".join(sorted({f.check for f in report.errors}))
        catalog.write_batch(storage, BatchRecord(state=QUARANTINED, reason=reason,
                                                 quarantine_key=qkey, **rec))
    return report, reg, counts


def _apply_correction(storage: Storage, site: str, intent: dict, study: Study, reg: dict) -> dict:
    """Apply a correction intent: register, the new batch accepted, the old one superseded.

    Every step is idempotent, so an intent interrupted anywhere is finished by applying it
    again from the start.
    """
    batch = BatchRecord.from_dict(intent["batch"])
    frame = parquet_frame(storage.read_bytes(batch.curated_key))
    reg = catalog.register_batch(reg, batch.sha256, frame, study.variables,
                                 replaces=intent["replaces"])
    catalog.write_register(storage, site, reg)
    catalog.write_batch(storage, batch)
    old = BatchRecord.from_dict(json.loads(storage.read_bytes(
        catalog.ledger_key(site, intent["replaces"]))))
    catalog.write_batch(storage, replace(old, state=SUPERSEDED, superseded_by=batch.sha256))
    return reg


def finish_intents(storage: Storage, site: str, study: Study) -> int:
    """Finish every correction of ``site`` a run started and did not mark done; how many."""
    intents = catalog.open_intents(storage, site)
    for intent in intents:
        reg = catalog.read_register(storage, site, study.variables)
        _apply_correction(storage, site, intent, study, reg)
        catalog.mark_done(storage, site, intent)
    return len(intents)


def current_batch(storage: Storage, site: str, ref: str) -> BatchRecord:
    """The batch ``ref`` names, if it is current (accepted): what a correction may replace.

    Raises
    ------
    LookupError
        When no single batch matches, or it is not current: a superseded batch names the
        batch that superseded it (correct that one instead).
    """
    rec = resolve_batch(storage, site, ref)
    if rec.state == SUPERSEDED:
        raise LookupError(f"batch {rec.sha256[:12]} of site {site} was already superseded by "
                          f"{rec.superseded_by[:12]}: send the correction with "
                          f"--replaces {rec.superseded_by[:12]}")
    if rec.state != ACCEPTED:
        raise LookupError(f"batch {rec.sha256[:12]} of site {site} is {rec.state}, not a current "
                          "batch: only an accepted batch can be replaced")
    return rec


@dataclass(frozen=True)
class RecordSplit:
    """A drop's records against the site's register (see :func:`split_records`)."""

    new: list[bool]                    # per row: stored by this drop (new or corrected)
    held: int                          # rows the site holds already, unchanged
    withdrawn: int                     # rows of people who withdrew consent: left out
    changed: tuple[tuple[int, str], ...]   # (row position, holding batch) of changed records
    corrected: int = 0                 # of ``new``: held by the replaced batch, answers changed
    kept: int = 0                      # of ``new``: held by the replaced batch, unchanged

    def counts(self) -> dict[str, int]:
        """What the drop does to the site's records, as its summary says it: ``new`` (never
        held), ``changed`` (a correction's changed records), ``unchanged`` (held already,
        the same answers) and ``withdrawn`` (people who withdrew consent: left out)."""
        return {"new": sum(self.new) - self.corrected - self.kept,
                "changed": self.corrected + len(self.changed),
                "unchanged": self.held + self.kept, "withdrawn": self.withdrawn}


def split_records(frame: pd.DataFrame, reg: dict, variables, batch: str,
                  replaces: str = "") -> RecordSplit:
    """Split a drop's records into held unchanged, new, changed and withdrawn.

    A record is new when the register does not hold its participant, holds them in a
    superseded batch, in ``replaces`` (the batch a correction replaces) or in ``batch``
    itself (a drop processed again after a crash). Its cost is the drop's rows, each one
    dictionary look-up: the site's earlier batches are not read.
    """
    new, held, withdrawn, changed, corrected, kept = [], 0, 0, [], 0, 0
    for i, (pid, fp) in enumerate(zip(frame["participant_id"],
                                      catalog.fingerprints(frame, variables))):
        e = None if pd.isna(pid) else reg.get(pid)
        if e is None or e.state == SUPERSEDED or e.batch in (batch, replaces):
            new.append(e is None or e.state != WITHDRAWN)
            withdrawn += e is not None and e.state == WITHDRAWN
            if e is not None and e.state == ACCEPTED and replaces and e.batch == replaces:
                kept += e.fingerprint == fp
                corrected += e.fingerprint != fp
            continue
        new.append(False)
        if e.state == WITHDRAWN:
            withdrawn += 1
        elif e.fingerprint == fp:
            held += 1
        else:
            changed.append((i, e.batch))
    return RecordSplit(new, held, withdrawn, tuple(changed), corrected, kept)


# Changed records described one by one in a quarantine report; the rest in one finding.
_CLASHES_SHOWN = 25


def clash_findings(storage: Storage, split: RecordSplit, frame: pd.DataFrame, row_numbers,
                   codebook, study: Study) -> tuple[Finding, ...]:
    """One ``id_clash`` per changed record: its row, the columns that differ, held and new values.

    Reads only the batches holding the changed records. Text answers are not quoted.
    """
    if not split.changed:
        return ()
    from lacrima.validate import _native

    variables = study.variables
    names = list(variables)
    shown = split.changed[:_CLASHES_SHOWN]
    held_rows = {}
    for batch in sorted({b for _, b in shown}):
        key = catalog.ledger_key(frame["site"].iloc[0], batch)
        old = parquet_frame(storage.read_bytes(json.loads(storage.read_bytes(key))["curated_key"]))
        held_rows[batch] = old.set_index("participant_id", drop=False)
    # Both sides of every shown record in one pass each, not a pass per record (bench/notes.md).
    pids = frame["participant_id"].iloc[[i for i, _ in shown]]
    new_text = catalog.canonical_records(frame.iloc[[i for i, _ in shown]], variables)
    held_text = catalog.canonical_records(pd.concat(
        [held_rows[b].loc[[pid]].iloc[:1] for pid, (_, b) in zip(pids, shown)],
        ignore_index=True), variables)
    out = []
    for (i, batch), ours, theirs in zip(shown, map(json.loads, new_text),
                                        map(json.loads, held_text)):
        diff = [k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b]

        def show(values, k):
            text = variables[names[k]].get("type") in ("string", "text")
            return f"{_native(codebook, names[k])}={'(text)' if text else json.dumps(values[k])}"
        cols = tuple(_native(codebook, names[k]) for k in diff)
        row = int(row_numbers[i])
        out.append(Finding(
            "id_clash", f"row {row}: this participant was already accepted for this site "
            f"(batch {batch[:12]}) with other answers in {len(diff)} column(s); send a correction "
            f"with `lacrima upload --replaces {batch[:12]}`",
            columns=cols, rows=(row,),
            expected="held: " + ", ".join(show(theirs, k) for k in diff[:5]),
            found="new: " + ", ".join(show(ours, k) for k in diff[:5]),
            fix=(f"if the new answers are right, send this file as a correction: `lacrima "
                 f"upload FILE --site {frame['site'].iloc[0]} --replaces {batch[:12]}`; "
                 "else correct this row to the held answers")))
    rest = split.changed[_CLASHES_SHOWN:]
    if rest:
        rows = tuple(int(row_numbers[i]) for i, _ in rest)
        out.append(Finding("id_clash", f"{len(rows)} more participant(s) were already accepted "
                           "for this site with different answers",
                           columns=(_native(codebook, "participant_id"),), rows=rows,
                           expected="new IDs, or identical answers for a re-sent record",
                           found=f"{len(rows)} more changed record(s)"))
    return tuple(out)


class UploadRefused(ValueError):
    """A file the run would refuse for its size or type: never put in the landing zone.

    ``finding`` says why (``check`` as the run's report names it, ``expected``, ``found``).
    """

    def __init__(self, finding: Finding):
        self.finding = finding
        super().__init__(finding.message)


def max_upload_bytes(study: Study) -> int:
    """The largest drop a run reads (``[validation] max_file_mb``), in bytes: what an upload
    that streams (the portal) stops reading at."""
    return int(float(study.section("validation").get("max_file_mb", 200)) * 1e6)


def upload_refusal(site: Site, study: Study, name: str, size: int | None = None,
                   head: bytes = b"") -> Finding | None:
    """Why the run would refuse a file before reading its rows, or None: the one check that
    ``lacrima upload`` and the portal make before a byte is copied.

    Parameters
    ----------
    site, study
    name : str
        The file's name as sent (its extension says its type).
    size : int, optional
        Its size in bytes, when known (a streamed upload checks the type first, then stops
        reading at :func:`max_upload_bytes`).
    head : bytes
        Its first bytes, when known: an encrypted or legacy (.xls) workbook is refused.

    Returns
    -------
    Finding or None
        ``file_too_large``, ``empty_file``, ``unexpected_format`` (an extension the site's
        codebook does not declare) or ``encrypted_file``, each with what to do.
    """
    from lacrima.codebook import load_codebook

    shown = safe_name(name)
    max_mb = max_upload_bytes(study) / 1e6
    if size is not None and size / 1e6 > max_mb:
        mb, top = f"{size / 1e6:.0f}", f"{max_mb:.0f}"
        return Finding("file_too_large",
                       msg("{file} is {size} MB; drops up to {max} MB are read: split the "
                           "export (by date, say) and send each part", file=shown, size=mb,
                           max=top),
                       expected=msg("at most {max} MB", max=top), found=f"{mb} MB")
    if size == 0:
        return Finding("empty_file", msg("{file} is empty (0 bytes): export it again",
                                         file=shown),
                       expected=msg("a non-empty file"), found="0 bytes")
    codebook = load_codebook(site)
    if codebook.format_for(shown) is None:
        accepted = ", ".join(e for f in codebook.formats for e in f.extensions)
        suffix = PurePosixPath(shown).suffix or "-"
        return Finding("unexpected_format",
                       msg("{file}: site {site} sends {formats} files, not {suffix}: export it "
                           "as one of those", file=shown, site=site.code, formats=accepted,
                           suffix=suffix),
                       expected=accepted, found=suffix)
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return Finding("encrypted_file",
                       msg("{file} is a password-protected (encrypted) workbook or a legacy .xls "
                           "file: remove the password and save it as .xlsx", file=shown),
                       expected=msg("an unencrypted .xlsx"),
                       found=msg("an encrypted workbook or an .xls file"))
    return None


def upload(storage: Storage, site: Site, path: Path, uploader: str = "",
           replaces: str = "", study: Study | None = None) -> str:
    """Put a file into ``landing/<site>/`` with its checksum and metadata; returns the key.

    The landing name carries the content hash, so two different files with the same name never
    overwrite each other. ``replaces`` marks an explicit correction of an earlier batch.
    ``study``: the plan whose limits apply (default: ``load_study()``).

    Raises
    ------
    UploadRefused
        A file the run would refuse for its size or type (:func:`upload_refusal`), before
        anything but its first bytes is read, and before anything is copied.
    """
    from lacrima.study import load_study

    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    refused = upload_refusal(site, study or load_study(), path.name, path.stat().st_size, head)
    if refused is not None:
        raise UploadRefused(refused)
    data = path.read_bytes()
    sha = sha256_bytes(data)
    name = safe_name(Path(path).name)
    if replaces:
        # Fail early on an unknown or superseded batch; record its full SHA-256 (ASCII,
        # unambiguous later). Its own landing key: the same bytes sent earlier without
        # --replaces keep theirs.
        replaces = current_batch(storage, site.code, replaces).sha256
    key = catalog.landing_key(site.code, sha, name, replaces)
    storage.write_bytes(key, data, if_absent=True, metadata={
        "site": site.code, "original_name": name, "uploader": safe_name(uploader) if uploader else "",
        "sha256": sha, "replaces": replaces})
    return key


def landing_counts(storage: Storage, site: Site) -> tuple[int, int]:
    """Landing objects of a site, and how many are new or changed since the last run.

    Cheap: one listing compared with the landing index; reads no drop.
    """
    index = read_landing_index(storage, site.code)
    listing = catalog.landing_drops(storage, site.code)
    return len(listing), sum(1 for obj in listing
                             if index.get(obj.key, {}).get("etag") != obj.etag)


def rekey(storage: Storage, sites, study: Study, old_key: bytes, new_key: bytes,
          now: datetime | None = None) -> dict:
    """Re-pseudonymise every stored record under ``new_key``, as one audited operation.

    Each batch with curated records is read again from raw to map its pseudonyms under the
    old key to those under the new one; curated files, the register and withdrawals are
    rewritten under the new pseudonyms, each batch's ledger entry and the store's key record
    name the new key. Steps: the new curated files (new keys, nothing overwritten), then an
    intent (``ledger/_rekey/<stamp>.json``) listing every change, then the changes, then the
    intent marked done, then the old curated files deleted. An interrupted rekey is finished
    by running it again with the same two keys.

    Returns
    -------
    dict
        The ledger entry: ``from`` and ``to`` key fingerprints, ``at``, batches per site.

    Notes
    -----
    A person whose rows were purged from raw (``withdraw --purge-raw``) cannot be mapped:
    their withdrawal stays under the old pseudonym and the entry lists how many.
    """
    old_fp, new_fp = catalog.key_fingerprint(old_key), catalog.key_fingerprint(new_key)
    if old_fp == new_fp:
        raise catalog.KeyCustodyError("the new key is the one the store is made under: "
                                      "nothing to do")
    intent = catalog.open_rekey(storage)
    if intent is not None and (intent["from"], intent["to"]) != (old_fp, new_fp):
        raise catalog.KeyCustodyError(
            f"a rekey from key {intent['from'][:8]} to {intent['to'][:8]} was interrupted: run "
            "`lacrima rekey` again with those two keys to finish it")
    if intent is None:
        catalog.check_key(storage, old_key)
        intent = _plan_rekey(storage, sites, study, old_key, new_key, now)
        catalog.write_rekey(storage, intent)
    for change in intent["writes"]:
        storage.write_bytes(change["key"], storage.read_bytes(change["from"])
                            if "from" in change else change["data"].encode())
    for key in intent["deletes_before"]:
        storage.delete(key)
    write_json(storage, catalog.KEY_FILE, {"fingerprint": new_fp, "demo": False})
    catalog.mark_rekey_done(storage, intent)
    for key in intent["deletes"]:
        storage.delete(key)
    return {k: v for k, v in intent.items() if k not in ("writes", "deletes", "deletes_before")}


def _plan_rekey(storage, sites, study, old_key, new_key, now) -> dict:
    """Every change a rekey makes, with its new curated files already written."""
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    new_fp = catalog.key_fingerprint(new_key)
    writes, deletes, deletes_before, counts, unmapped = [], [], [], {}, 0
    for site in sites:
        recs = batches(storage, site.code)
        if not recs:
            continue
        mapping = {}
        for r in recs:
            if r.curated_key and storage.exists(r.raw_key):
                ids = catalog.raw_ids(storage, site, study, r.raw_key)
                if ids is not None:
                    mapping.update(zip(pseudonymise(site.code, ids, old_key),
                                       pseudonymise(site.code, ids, new_key)))
        for r in recs:
            new_rec = replace(r, key_fingerprint=new_fp)
            if r.curated_key:
                frame = parquet_frame(storage.read_bytes(r.curated_key))
                mapped = frame["participant_id"].map(mapping)
                if mapped.isna().any():
                    raise RuntimeError(
                        f"batch {r.sha256[:12]} of site {site.code}: {int(mapped.isna().sum())} "
                        "stored record(s) have no ID in the batch's raw file; rekey stopped, "
                        "nothing changed")
                key = catalog.curated_key(site.code, r.sha256, new_fp[:8])
                storage.write_bytes(key, catalog.frame_bytes(frame.assign(participant_id=mapped)),
                                    if_absent=True)
                deletes.append(r.curated_key)
                new_rec = replace(new_rec, curated_key=key)
            writes.append({"key": catalog.ledger_key(site.code, r.sha256),
                           "data": json.dumps(new_rec.to_dict(), indent=2, sort_keys=True)})
        reg = catalog.read_register(storage, site.code, study.variables)
        unmapped += sum(1 for p in reg if p not in mapping)
        reg = {mapping.get(p, p): e for p, e in reg.items()}
        writes.append({"key": catalog.register_key(site.code),
                       "data": catalog.register_bytes(site.code, reg)})
        for w in catalog.withdrawals(storage, site.code):
            moved = {**w, "pseudonym": mapping.get(w["pseudonym"], w["pseudonym"])}
            if moved["pseudonym"] != w["pseudonym"]:
                deletes_before.append(catalog.withdrawal_key(site.code, w["pseudonym"]))
            writes.append({"key": catalog.withdrawal_key(site.code, moved["pseudonym"]),
                           "data": json.dumps(moved, indent=2, sort_keys=True)})
        counts[site.code] = len(recs)
    # the old withdrawal files go before the key record changes (a rerun rewrites them all)
    deletes_before = [k for k in deletes_before if k not in {w["key"] for w in writes}]
    return {"kind": "rekey", "from": catalog.key_fingerprint(old_key), "to": new_fp,
            "at": stamp, "batches": counts, "unmapped_people": unmapped,
            "writes": writes, "deletes": deletes, "deletes_before": deletes_before}


class UnknownParticipant(ValueError):
    """A withdrawal of an ID the site's register has never held (a typo, or not sent yet)."""


def id_rule(codebook) -> str:
    """How a site's IDs are normalised before they are compared, in a data manager's words."""
    rule = "IDs compared without surrounding spaces, digits as numbers (00017 = 17)"
    return rule + (f", fitting {codebook.id_pattern}" if codebook.id_pattern else "")


def withdraw(storage: Storage, site: Site, study: Study, key: bytes, participant_id: str,
             reason: str = "", purge_raw: bool = False, now: datetime | None = None,
             not_yet_received: bool = False) -> dict:
    """Record that a participant withdrew consent; optionally purge them from raw.

    The withdrawal is a ledger entry by pseudonym (never the ID), written first; the
    register then marks the person withdrawn, so curated data and every later output leave
    them out and a later export that still holds them does not bring them back.

    Parameters
    ----------
    participant_id : str
        The ID as the site knows it (normalised by the codebook, then pseudonymised).
    reason : str
        Kept in the ledger entry only; never in curated data, reports or logs.
    purge_raw : bool
        Also replace every raw file (and quarantined or landed copy) holding the person by
        a redacted copy, delete the originals, and rewrite curated files without them
        (:func:`purge_person`).

    Returns
    -------
    dict
        The ledger entry: ``pseudonym``, ``site``, ``at``, ``held`` (whether the site had
        a record of them), ``purged`` (files replaced).

    not_yet_received : bool
        The site has not sent the person's record yet: record the withdrawal all the same
        (a later export holding them will not bring them in). Without it, an ID the
        register has never held is refused (a typo must not be recorded as a withdrawal).

    Raises
    ------
    UnknownParticipant
        The register has never held the ID and ``not_yet_received`` is not set. The message
        names no other ID: only how many records the site holds and how IDs are normalised.
        Also an ID that does not fit the codebook's ``id_pattern`` (whatever
        ``not_yet_received`` says).
    ValueError
        A blank ID.
    """
    from lacrima.codebook import load_codebook

    catalog.check_key(storage, key)
    codebook = load_codebook(site)
    ids = participant_ids(site, participant_id)
    pseudonym = pseudonymise(site.code, ids, key).iloc[0]
    reg = catalog.read_register(storage, site.code, study.variables)
    old = reg.get(pseudonym)
    if old is None and not not_yet_received:
        held = sum(1 for e in reg.values() if e.state == ACCEPTED)
        raise UnknownParticipant(
            f"site {site.code} holds no record of this ID ({held} record(s) held; "
            f"{id_rule(codebook)}): check the ID, or add --not-yet-received if the site has "
            "not sent their record yet")
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    entry = {"pseudonym": pseudonym, "site": site.code, "at": stamp, "reason": reason,
             "held": bool(old and old.batch), "purged": []}
    prior = [w for w in catalog.withdrawals(storage, site.code) if w["pseudonym"] == pseudonym]
    if prior:
        entry = {**prior[0], "purged": prior[0].get("purged", [])}
    catalog.write_withdrawal(storage, site.code, entry)
    reg[pseudonym] = catalog.Entry(old.fingerprint if old else "", old.batch if old else "",
                                   WITHDRAWN)
    catalog.write_register(storage, site.code, reg)
    if purge_raw:
        entry["purged"] = entry["purged"] + purge_person(storage, site, study, key,
                                                         str(ids.iloc[0]), pseudonym)
        catalog.write_withdrawal(storage, site.code, entry)
    return entry


def purge_person(storage: Storage, site: Site, study: Study, key: bytes, normalised_id: str,
                 pseudonym: str) -> list[dict]:
    """Remove one person from every stored file of their site (the audited exception).

    Raw files holding them are replaced by a redacted copy (new key, ledger entry updated)
    and the originals deleted; a quarantined copy is overwritten by the redacted one; a
    landing object with the original bytes is deleted; curated files and the site's cached
    analyses (``results/<site>/``) holding the pseudonym are rewritten or deleted. Returns
    what was replaced, for the ledger entry.
    """
    from lacrima.codebook import load_codebook
    from lacrima.native import read_drop_bytes
    from lacrima.redact import redact

    codebook = load_codebook(site)
    done = []
    index = read_landing_index(storage, site.code)
    for rec in batches(storage, site.code):
        if not storage.exists(rec.raw_key):
            continue
        data = storage.read_bytes(rec.raw_key)
        try:
            drop = read_drop_bytes(data, f"drop{PurePosixPath(rec.raw_key).suffix}", site, study)
        except DropError:
            continue
        ids, _ = codebook.normalise_ids(drop.frame["participant_id"])
        rows = {int(drop.row_numbers[i]) for i, v in enumerate(ids) if v == normalised_id}
        if not rows:
            continue
        clean = redact(data, rec.original_name, codebook, rows)
        new_key = catalog.redacted_raw_key(site.code, rec.sha256, sha256_bytes(clean),
                                           extension(rec.original_name))
        storage.write_bytes(new_key, clean, metadata=storage.metadata(rec.raw_key))
        catalog.write_batch(storage, replace(rec, raw_key=new_key))
        if rec.quarantine_key and storage.exists(f"{rec.quarantine_key}/{rec.original_name}"):
            storage.write_bytes(f"{rec.quarantine_key}/{rec.original_name}", clean)
        for landing, seen in index.items():
            if seen.get("sha256") == rec.sha256 and storage.exists(landing):
                storage.delete(landing)
        storage.delete(rec.raw_key)
        done.append({"batch": rec.sha256, "removed": rec.raw_key, "now": new_key,
                     "rows": len(rows)})
    for rec in batches(storage, site.code):
        if rec.curated_key and storage.exists(rec.curated_key):
            frame = parquet_frame(storage.read_bytes(rec.curated_key))
            if (frame["participant_id"] == pseudonym).any():
                storage.write_bytes(rec.curated_key, catalog.frame_bytes(
                    frame[frame["participant_id"] != pseudonym].reset_index(drop=True)))
    for obj in storage.list(catalog.results_prefix(site.code)):
        if obj.key.endswith("/data.parquet"):
            frame = parquet_frame(storage.read_bytes(obj.key))
            if (frame["participant_id"] == pseudonym).any():
                prefix = obj.key.rsplit("/", 1)[0]
                for cached in storage.list(prefix):
                    storage.delete(cached.key)
    return done


def check_file(path: Path, site: Site, study: Study, name: str = "") -> tuple[ValidationReport, bool]:
    """Validate a drop without storing anything: what ``lacrima check`` and the portal's
    check do. Returns the report and whether the file could be read at all.

    ``name``: the name the data manager gave the file (default: the path's); findings name it.
    Only the shape of IDs matters for a check, so the public demo key pseudonymises them
    (the real key never needs to be where a check runs).
    """
    from lacrima.privacy import DEMO_KEY

    data = Path(path).read_bytes()
    name = safe_name(name or Path(path).name)
    report, frame = read_and_validate(path, site, study, DEMO_KEY, name, sha256_bytes(data),
                                      size_mb=len(data) / 1e6)
    return report, frame is not None


def already_sent(storage: Storage, site: str, sha: str) -> str:
    """The batch or landing key that already holds these bytes for ``site`` ("" if none):
    the same file sent twice is processed once, so a second send stores nothing."""
    if catalog.storage_has_batch(storage, site, sha):
        return catalog.ledger_key(site, sha)
    return next((o.key for o in storage.list(catalog.landing_prefix(site))
                 if o.key.rsplit("/", 1)[-1].startswith(f"{sha[:12]}-")), "")


def participant_ids(site: Site, participant_id: str) -> pd.Series:
    """One ID as the site knows it, normalised by the codebook (a one-row Series).

    Raises
    ------
    ValueError
        A blank ID.
    UnknownParticipant
        An ID that does not fit the codebook's ``id_pattern`` (named by the rule, not by
        any other ID).
    """
    from lacrima.codebook import load_codebook

    codebook = load_codebook(site)
    ids, bad = codebook.normalise_ids(pd.Series([participant_id], dtype="str"))
    if ids.isna().iloc[0] or not str(ids.iloc[0]):
        raise ValueError(f"the participant ID given is blank (site {site.code})")
    if bad:
        raise UnknownParticipant(f"the participant ID does not fit the IDs of site {site.code} "
                                 f"({id_rule(codebook)}): check the ID")
    return ids
