"""What a data manager asks of the store: per site, what is held, what waits, what went wrong.

``site_status`` summarises one site from its ledger and landing zone; ``misplaced`` finds
files a run will never read (``landing/us_export.csv``, ``landing/US/``, hidden files), each
with what to do about it.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from lacrima.catalog import landing_prefix
from lacrima.findings import printable

LANDING = landing_prefix()


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
        ``landing/<site>/<file>``: a file directly in ``landing/``, a folder that is not a
        site code (``US`` for ``us``), a sub-folder of a site's folder, or a hidden file
        (name starting with ``.``) is flagged.

    Notes
    -----
    A local store's listing leaves dot-names out (the store keeps its own metadata there),
    so for a local store the landing folder is also walked for hidden files.
    """
    codes = set(codes)
    keys = [o.key for o in storage.list(LANDING)]
    root = storage.local_path(LANDING) if hasattr(storage, "local_path") else None
    if root is not None and root.is_dir():
        keys += [p.relative_to(root.parent).as_posix() for p in root.rglob(".*") if p.is_file()]
    out = []
    for key in sorted(set(keys)):
        parts = PurePosixPath(key).parts[1:]          # below landing/
        name = printable(parts[-1]) if parts else ""
        shown = printable(key)
        if any(p.startswith(".") for p in parts):
            problem, fix = "hidden file: not read", (
                f"delete it if it is not a drop (editors and Finder leave such files); "
                f"else rename it without the leading dot")
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
        run has processed), ``quarantined`` (list of ``{file, batch, reason}``).
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
                        for r in mine if r["state"] == "quarantined"],
    }
