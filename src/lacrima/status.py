"""What a data manager asks of the store: per site, what is held, what waits, what went wrong.

``site_status`` summarises one site from its ledger and landing zone; ``misplaced`` finds
files a run will never read (``landing/us_export.csv``, ``landing/US/``, sub-folders, hidden
files, symbolic links), each with what to do about it.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from lacrima.catalog import (LANDED, batches, landing_drops, landing_prefix,
                             read_landing_index)
from lacrima.storage import (BROKEN_LINK, DOT_SEGMENT, EMPTY_SEGMENT, FILE_LINK, FOLDER_LINK,
                             FOLDER_MARKER, HIDDEN, SPECIAL)
from lacrima.findings import printable

LANDING = landing_prefix()


# What to do about each kind of entry the store's listing leaves out (Storage.unlisted).
_NOT_FILES = {
    FILE_LINK: "a symbolic link to a file: never read",
    FOLDER_LINK: "a symbolic link to a folder: never read, nor anything in it",
    BROKEN_LINK: "a symbolic link to nothing: never read",
    SPECIAL: "not a regular file (a device, FIFO or socket): never read",
    FOLDER_MARKER: "a folder marker (an empty object named like a folder): not a file",
    EMPTY_SEGMENT: "a key with an empty segment ('//'): never read",
    DOT_SEGMENT: "a key with a '.' or '..' segment: never read",
}


def misplaced(storage, codes) -> list[dict]:
    """Files under ``landing/`` that no run reads, with what to do.

    Parameters
    ----------
    storage : Storage
    codes : iterable of str
        The site codes (lowercase folder names under ``landing/``).

    Returns
    -------
    list of dict
        ``key`` (as stored), ``problem`` and ``fix``, in key order. A drop is read only at
        ``landing/<site>/<file>`` (``catalog.landing_drops``), and only when it is a regular
        file: a file directly in ``landing/``, a folder that is not a site code (``US`` for
        ``us``), a sub-folder of a site's folder, a hidden file (name starting with ``.``), a
        symbolic link, device or FIFO, an S3 folder marker or a key with an empty or ``..``
        segment is flagged.
    """
    codes = set(codes)
    entries = {o.key: "" for o in storage.list(LANDING)}
    entries.update(storage.unlisted(LANDING))
    out = []
    for key, what in sorted(entries.items()):
        parts = PurePosixPath(key).parts[1:]          # below landing/
        name = printable(parts[-1]) if parts else ""
        shown = printable(key)
        site = parts[0] if len(parts) > 1 and parts[0] in codes else "CODE"
        if what == FOLDER_MARKER:
            problem, fix = _NOT_FILES[what], "nothing to do (delete it to silence this line)"
        elif what in _NOT_FILES:
            problem, fix = _NOT_FILES[what], (
                f"delete it; a drop is the file itself, sent with `lacrima upload FILE "
                f"--site {site}`")
        elif what == HIDDEN or any(p.startswith(".") for p in parts):
            problem, fix = "hidden file: not read", (
                "delete it if it is not a drop (editors and Finder leave such files); "
                "else rename it without the leading dot")
        elif len(parts) == 1:
            problem, fix = "not in a site's folder: not read", (
                f"upload it with `lacrima upload {name} --site CODE` (sites: "
                f"{', '.join(sorted(codes))}), then delete {shown}")
        elif parts[0] not in codes:
            near = [c for c in codes if c == parts[0].lower()]
            where = (f"site codes are lowercase: use {LANDING}/{near[0]}/" if near else
                     f"no site {printable(parts[0])!r} (sites: {', '.join(sorted(codes))})")
            problem, fix = f"folder {printable(parts[0])!r} is not a site: not read", (
                f"{where}; `lacrima upload {name} --site CODE` puts it in the right place")
        elif len(parts) > 2:
            problem, fix = "in a sub-folder of the site's folder: not read", (
                f"upload it with `lacrima upload {name} --site {parts[0]}`, then delete {shown}")
        else:
            continue
        out.append({"key": shown, "problem": problem, "fix": fix})
    return out


def site_status(code: str, records: list[dict], participants: int | None) -> dict:
    """One site's summary from its status records (``lacrima status`` rows of that site).

    Returns
    -------
    dict
        ``site``, ``batches`` (accepted, not superseded), ``participants`` (held, as given),
        ``last_drop`` (when the latest batch was received), ``pending`` (files landed that no
        run has processed), ``quarantined`` (open problems: list of ``{file, batch, reason}``),
        ``fixed`` (quarantined batches a later batch holds the records of: ``{file, batch,
        reason, fixed_by}``).
    """
    mine = [r for r in records if r["site"] == code]
    received = [r["received_at"] for r in mine if r.get("received_at")]
    return {
        "site": code,
        "batches": sum(1 for r in mine if r["state"] == "accepted"),
        "participants": participants,
        "last_drop": max(received) if received else "",
        "pending": sum(1 for r in mine if r["state"] == "landed"),
        "quarantined": [{"file": r["original_name"], "batch": r["sha256"][:12],
                         "reason": r.get("reason", "")}
                        for r in mine if r["state"] == "quarantined" and not r.get("fixed_by")],
        "fixed": [{"file": r["original_name"], "batch": r["sha256"][:12],
                   "reason": r.get("reason", ""), "fixed_by": r["fixed_by"][:12]}
                  for r in mine if r["state"] == "quarantined" and r.get("fixed_by")],
    }


def batch_report(storage, site: str, ref: str):
    """The findings of one batch of ``site`` as ``lacrima check`` gave them, and its ledger entry.

    Parameters
    ----------
    storage : Storage
    site : str
    ref : str
        The batch: a SHA-256 prefix (8+ characters) or the file's name (``resolve_batch``).

    Returns
    -------
    tuple
        ``(record, report)``: the batch's ledger entry and its ``ValidationReport`` read back
        from the quarantine folder, or None when the batch was accepted (its findings were
        warnings at most, and no report is kept).

    Raises
    ------
    LookupError
        When ``ref`` names no single batch of the site.
    """
    from lacrima import catalog
    from lacrima.intake import resolve_batch
    from lacrima.storage import read_json
    from lacrima.validate import ValidationReport

    rec = resolve_batch(storage, site, ref)
    key = f"{rec.quarantine_key or catalog.quarantine_prefix(site, rec.sha256)}/report.json"
    if rec.state != "quarantined" or not storage.exists(key):
        return rec, None
    return rec, ValidationReport.from_dict(read_json(storage, key))


def status_records(storage, site: str | None, codes) -> list[dict]:
    """Ledger entries (of ``site``, or of all), then the drops no run has processed yet (state
    ``landed``): what ``lacrima status --json`` and the portal's status show. ``codes``: the
    study's sites, whose landing zones are read when ``site`` is None."""
    from lacrima.storage import sha256_bytes

    recs = [r.to_dict() for r in batches(storage, site)]
    known = {r["sha256"] for r in recs}
    for code in [site] if site else codes:
        index = read_landing_index(storage, code)
        for obj in landing_drops(storage, code):
            seen = index.get(obj.key)
            # Objects a run has already hashed are not downloaded again (S3: every byte costs).
            sha = (seen["sha256"] if seen and seen.get("etag") == obj.etag
                   else sha256_bytes(storage.read_bytes(obj.key)))
            if sha not in known:
                known.add(sha)
                recs.append({"site": code, "sha256": sha, "state": LANDED,
                             "original_name": obj.key.rsplit("/", 1)[-1], "rows": "",
                             "received_at": "", "reason": "waiting for the next run"})
    return recs
