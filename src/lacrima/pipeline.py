"""The pipeline's steps as plain functions: ingest, analyse each site, compare, write outputs.

``flows/pipeline.py`` wires these into Prefect tasks; a notebook can call them directly::

    storage = open_storage(); study = load_study(); sites = load_sites()
    key = pseudonym_key(demo=True)
    for s in sites: ingest_site(storage, s, study, key)
    analyses = [analyse_site_data(storage, s, study) for s in sites]
    comparison = compare_sites([a for a in analyses if a], study, sites)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from typing import Mapping

import pandas as pd

from lacrima.catalog import withdrawn_received
from lacrima.formula import escape_formula
from lacrima.intake import ACCEPTED, batches, curated_frame
from lacrima.scoring import Flow, analysis_ready
from lacrima.storage import Storage, parquet_frame
from lacrima.study import Site, Study, sha256_file
from lacrima.vocabulary import RESULTS_COLUMNS


@dataclass(frozen=True)
class SiteAnalysis:
    """Everything one site contributes: its analysis-ready data, flow, estimates, descriptives."""

    site: str
    input_key: str                 # SHA-256 over accepted batches, codebook, site file and plan
    batches: tuple[str, ...]       # SHA-256 of the accepted batches used
    data: pd.DataFrame | None = field(repr=False)   # None in a light analysis (see ``light``)
    flow: Flow = field(repr=False)
    results: pd.DataFrame = field(repr=False)
    descriptives: pd.DataFrame = field(repr=False)
    reused: bool = False
    moments: pd.DataFrame | None = field(default=None, repr=False)  # ipd.site_moments

    def ipd_moments(self, study: Study) -> pd.DataFrame:
        """Per-site sums of the IPD pairs (``ipd.site_moments``), from the rows if not kept."""
        if self.moments is not None:
            return self.moments
        from lacrima.ipd import site_moments

        return site_moments(self.data, study)

    def light(self) -> "SiteAnalysis":
        """The same analysis without its rows: what the pooled step and the report need.

        A site task hands this on, so a run at 1,000 sites x 1,000 never holds every site's
        rows in one process; the rows stay in the store (``load_site_data``).
        """
        return replace(self, data=None)


@dataclass(frozen=True)
class Comparison:
    """Cross-site work: every estimate (per site, pooled, IPD) and the replication table."""

    results: pd.DataFrame
    replication: pd.DataFrame
    # pooling.pool_details of the per-site rows (random and fixed effects on the pooling
    # scale): the report shows them; None when not kept (the report then pools again).
    details: pd.DataFrame | None = field(default=None, repr=False)


def site_input_key(storage: Storage, site: Site, study: Study) -> tuple[str, tuple[str, ...]]:
    """Content key of a site's analysis: changes iff its accepted data, codebook, site file or plan do.

    Parameters
    ----------
    storage : Storage
    site : Site
    study : Study

    Returns
    -------
    (str, tuple of str)
        The key (hex SHA-256) and the SHA-256 of each accepted batch, sorted.

    Notes
    -----
    key = SHA-256(register hash | codebook file hash | site file hash | plan hash), where the
    register (``catalog.register_digest``) says which record of which batch is each
    participant's current one: it changes with new or corrected records, a withdrawal or a
    rekey, and not with a re-export that brought nothing new. A store without a register
    (made before it existed) uses the accepted batch hashes, sorted, instead. Every part is
    a hash of file bytes, never of a pickled frame, so the key is stable across Python,
    pandas and platform versions. Reads only the site's ledger and register: no data file
    is opened. The batches returned are those whose records are in use (a re-export that
    brought nothing is left out).
    """
    from lacrima.catalog import register_digest

    accepted = tuple(sorted(r.sha256 for r in batches(storage, site.code)
                            if r.state == ACCEPTED and r.records_new != 0))
    register = register_digest(storage, site.code) if accepted else ""
    h = hashlib.sha256()
    # The codebook's file hash is what Codebook.sha256 holds; hashing the file skips parsing it.
    for part in ((register,) if register else accepted) + (
            sha256_file(site.codebook_path), site.sha256, study.sha256):
        h.update(part.encode())
    return h.hexdigest(), accepted


@dataclass(frozen=True)
class SitePlan:
    """What a run has to do for one site, from listings only (no data file is read)."""

    site: str
    landed: int        # objects in the site's landing zone
    pending: int       # of which new or changed since the last run

    def to_frame(self) -> pd.DataFrame:
        """One row: ``site``, ``landed``, ``pending``."""
        return pd.DataFrame([vars(self)], columns=["site", "landed", "pending"])


def plan_site(storage: Storage, site: Site) -> SitePlan:
    """Count a site's landing objects and those a run has not processed yet.

    Parameters
    ----------
    storage : Storage
    site : Site

    Returns
    -------
    SitePlan
        ``landed`` objects under ``landing/<site>/`` and ``pending``, those whose listing entry
        (ETag) is not in the site's landing index (see ``intake.landing_counts``).

    Notes
    -----
    One listing, no download: on S3 this is what makes a sweep every few minutes cheap.
    """
    from lacrima.intake import landing_counts

    return SitePlan(site.code, *landing_counts(storage, site))


def site_keys(storage: Storage, sites, study: Study) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Input key and accepted batches of every site that has accepted data.

    Parameters
    ----------
    storage : Storage
    sites : iterable of Site
    study : Study

    Returns
    -------
    dict
        Site code -> ``(input_key, accepted batch hashes)`` as :func:`site_input_key` gives
        them; sites without an accepted batch are left out.
    """
    out = {}
    for s in sites:
        key, accepted = site_input_key(storage, s, study)
        if accepted:
            out[s.code] = (key, accepted)
    return out


def analyse_site_data(storage: Storage, site: Site, study: Study,
                      key: tuple[str, tuple[str, ...]] | None = None,
                      light: bool = False) -> SiteAnalysis | None:
    """Score, exclude and analyse one site's curated data; ``None`` when it has none yet.

    Results are kept under ``results/<site>/<input_key>/`` and reused while the site's accepted
    batches, codebook, site file and plan are unchanged (the key is a SHA-256 of those, never of
    pickled frames). ``key`` is the site's ``site_input_key`` when the caller has it already.
    ``light``: read a reused analysis without its rows (``data`` is ``None``); a fresh one
    keeps the rows it was just computed from.
    """
    key, accepted = key or site_input_key(storage, site, study)
    if not accepted:
        return None
    cached = load_site_analysis(storage, site.code, key, accepted, light=light)
    if cached is not None:
        return cached
    from lacrima.analysis import analyse_site, describe_site
    from lacrima.ipd import site_moments

    data, flow = analysis_ready(curated_frame(storage, site.code), study, site.code)
    flow = with_withdrawals(flow, withdrawn_received(storage, site.code))
    results = analyse_site(data, study, site.code).reindex(columns=list(RESULTS_COLUMNS))
    result = SiteAnalysis(site.code, key, accepted, data, flow, results,
                          describe_site(data, study, site.code), moments=site_moments(data, study))
    frames = save_site_analysis(storage, result)
    # Hand on the frames as stored, so a fresh analysis and a reused one are the same frames
    # (parquet settles dtypes, e.g. an all-missing text column), whichever a run gets.
    return replace(result, **frames)


WITHDREW = ("withdrew_consent", "Withdrew consent")


def with_withdrawals(flow: Flow, withdrawn: int) -> Flow:
    """The participant flow with people who withdrew consent counted as received, then
    excluded first ("withdrew consent"); unchanged when nobody withdrew.

    Examples
    --------
    >>> with_withdrawals(Flow("it", 10, (("age", "Too young", 1),), 9), 2).excluded[0]
    ('withdrew_consent', 'Withdrew consent', 2)
    """
    if not withdrawn:
        return flow
    return Flow(flow.site, flow.received + withdrawn, ((*WITHDREW, withdrawn), *flow.excluded),
                flow.analysed)


def site_step(storage: Storage, site: Site, study: Study,
              key: tuple[str, tuple[str, ...]] | None = None) -> SiteAnalysis | None:
    """One site's whole share of a run: its analysis (computed or reused) and its own outputs.

    The site's page and exports (``report.site_outputs``) are written here, once per input
    key, so they are made in parallel across sites and only when the site changed. Returns
    the light analysis (no rows): what the pooled step and the report need.
    """
    from lacrima.report import site_outputs

    analysis = analyse_site_data(storage, site, study, key, light=True)
    if analysis is None:
        return None
    site_outputs(storage, analysis, site, study)    # rows from the store only if not in hand
    return analysis.light()


# Sites per task, at most: an intake task validates its group's drops in one GX run (~0.1 s
# a run instead of ~0.1 s a drop; at 1,000 rows a drop, 16 drops are ~1,000,000 long rows),
# and an analysis task saves Prefect's per-task bookkeeping (~35 ms a task at 125 sites).
SITE_GROUP = 16


def site_groups(sites: list, most: int = SITE_GROUP, spread: int = 8) -> list[list]:
    """Consecutive groups of sites for tasks: ``spread`` groups or more, ``most`` sites at most.

    Three sites give three groups of one (each site its own task, in parallel); 125 give
    8 groups of 16; 1,000 give 63 groups of 16. An empty list gives no group.

    Examples
    --------
    >>> [len(g) for g in site_groups(list(range(20)))]
    [3, 3, 3, 3, 3, 3, 2]
    """
    import math

    size = max(1, min(most, math.ceil(len(sites) / spread)))
    return [sites[i:i + size] for i in range(0, len(sites), size)]


_CACHE_FRAMES = ("data", "results", "descriptives", "moments")
_LIGHT_FRAMES = _CACHE_FRAMES[1:]


def _cache_prefix(site: str, key: str) -> str:
    from lacrima.catalog import results_prefix

    return results_prefix(site, key)


def save_site_analysis(storage: Storage, a: SiteAnalysis) -> dict[str, pd.DataFrame]:
    """Store a site's analysis under its content key; returns its frames as read back."""
    prefix = _cache_prefix(a.site, a.input_key)
    back = {}
    for name in _CACHE_FRAMES:
        buf = io.BytesIO()
        getattr(a, name).to_parquet(buf, index=False)
        storage.write_bytes(f"{prefix}/{name}.parquet", buf.getvalue(), if_absent=True)
        back[name] = parquet_frame(buf.getvalue())
    # written last: its presence means the entry is complete
    storage.write_bytes(f"{prefix}/flow.json", json.dumps(_flow_record(a.flow)).encode(),
                        if_absent=True)
    return back


def _flow_record(flow: Flow) -> dict:
    return {"site": flow.site, "received": flow.received, "analysed": flow.analysed,
            "excluded": [list(e) for e in flow.excluded]}


def _flow_from(record: dict) -> Flow:
    return Flow(record["site"], record["received"], tuple(tuple(e) for e in record["excluded"]),
                record["analysed"])


def load_site_analysis(storage: Storage, site: str, key: str, accepted: tuple[str, ...],
                       light: bool = False) -> SiteAnalysis | None:
    """A stored analysis of ``site`` under ``key``, or ``None`` when there is none (complete).

    ``light``: leave the rows in the store (``data`` is ``None``; see ``SiteAnalysis.light``).
    """
    prefix = _cache_prefix(site, key)
    if not (storage.exists(f"{prefix}/flow.json") and storage.exists(f"{prefix}/moments.parquet")):
        return None     # absent, or stored before per-site IPD sums were kept: recompute
    flow = _flow_from(json.loads(storage.read_bytes(f"{prefix}/flow.json")))
    frames = {name: parquet_frame(storage.read_bytes(f"{prefix}/{name}.parquet"))
              for name in (_LIGHT_FRAMES if light else _CACHE_FRAMES)}
    return SiteAnalysis(site, key, accepted, frames.get("data"), flow, frames["results"],
                        frames["descriptives"], reused=True, moments=frames["moments"])


# The light analyses one comparison was made from, kept together (see save_pooled_inputs).
from lacrima.catalog import POOLED as _POOLED  # noqa: E402  (the catalog names every zone)
_PART = "_lacrima_site"


def save_pooled_inputs(storage: Storage, analyses: list[SiteAnalysis], study: Study) -> str:
    """Keep the light analyses a comparison is made from together, under its comparison key.

    Writes ``results/_pooled/<comparison_key>/``: ``results``, ``descriptives`` and
    ``moments`` of every site stacked in one Parquet file each, and ``sites.json`` (input
    key, accepted batches and participant flow per site; written last, so its presence
    means the entry is complete). Returns the comparison key.

    Notes
    -----
    A copy for speed, not a source: the next run takes its unchanged sites from here in
    three reads (:func:`reusable_analyses`) instead of three small Parquet files per site
    (at 125 sites about 1 s of decoding, most of a one-drop rerun's analysis stage). The
    per-site entries under ``results/<site>/<input_key>/`` stay what a site's analysis is
    read from otherwise.
    """
    key = comparison_key({a.site: a.input_key for a in analyses}, study)
    prefix = f"{_POOLED}/{key}"
    if storage.exists(f"{prefix}/sites.json"):
        return key
    for name in _LIGHT_FRAMES:
        stacked = pd.concat([getattr(a, name).assign(**{_PART: a.site}) for a in analyses],
                            ignore_index=True)
        buf = io.BytesIO()
        stacked.to_parquet(buf, index=False)
        storage.write_bytes(f"{prefix}/{name}.parquet", buf.getvalue(), if_absent=True)
    sites = {a.site: {"input_key": a.input_key, "batches": list(a.batches),
                      "flow": _flow_record(a.flow)} for a in analyses}
    storage.write_bytes(f"{prefix}/sites.json", json.dumps(sites).encode(), if_absent=True)
    return key


def reusable_analyses(storage: Storage, keys: Mapping[str, tuple[str, tuple[str, ...]]]
                      ) -> dict[str, SiteAnalysis]:
    """Light analyses of the sites unchanged since the latest report, read in one go.

    Parameters
    ----------
    storage : Storage
    keys : mapping
        Site code -> ``(input_key, accepted batches)`` of this run (:func:`site_keys`).

    Returns
    -------
    dict
        Site code -> light ``SiteAnalysis`` (``reused``) for every site whose input key is
        the one the latest report used and whose own outputs (``report.site_outputs``) are
        in the store; empty when the latest report left no pooled inputs
        (:func:`save_pooled_inputs`). The other sites go through :func:`site_step`.
    """
    from lacrima.report import site_outputs_ready

    last = last_comparison_key(storage)
    prefix = f"{_POOLED}/{last}"
    if last is None or not storage.exists(f"{prefix}/sites.json"):
        return {}
    stored = json.loads(storage.read_bytes(f"{prefix}/sites.json"))
    same = {site: entry for site, entry in stored.items()
            if site in keys and keys[site][0] == entry["input_key"]}
    if not same:
        return {}
    frames = {}
    for name in _LIGHT_FRAMES:
        stacked = parquet_frame(storage.read_bytes(f"{prefix}/{name}.parquet"))
        empty = stacked.iloc[:0].drop(columns=_PART)
        parts = {site: part.drop(columns=_PART).reset_index(drop=True)
                 for site, part in stacked.groupby(_PART, sort=False) if site in same}
        frames[name] = {site: parts.get(site, empty) for site in same}
    out = {site: SiteAnalysis(site, e["input_key"], tuple(e["batches"]), None,
                              _flow_from(e["flow"]), frames["results"][site],
                              frames["descriptives"][site], reused=True,
                              moments=frames["moments"][site])
           for site, e in same.items()}
    return {site: a for site, a in out.items() if site_outputs_ready(storage, a)}


def load_site_data(storage: Storage, a: SiteAnalysis, as_parquet: bool = False) -> pd.DataFrame | bytes:
    """A site's analysis-ready rows: kept in ``a`` or read from the store under its key.

    ``as_parquet``: the stored Parquet file's bytes when the rows are not kept in ``a``.
    """
    if a.data is not None:
        return a.data
    blob = storage.read_bytes(_data_key(a.site, a.input_key))
    return blob if as_parquet else parquet_frame(blob)


def _data_key(site: str, key: str) -> str:
    return f"{_cache_prefix(site, key)}/data.parquet"


def stacked_site_data(location: str, keys: list[tuple[str, str]], study: Study) -> bytes:
    """``exports.stacked_parquet_bytes`` of the sites' stored rows, read from the store at ``location``.

    ``keys``: (site, input key) of each site, in site order. For a worker process (the
    report's): it opens the store itself, so the rows of every site never pass through the
    caller (at 1,000 sites x 1,000 that is some 200 MB of Parquet), and it is sent the keys
    alone, not the analyses.
    """
    from lacrima.exports import stacked_parquet_bytes
    from lacrima.storage import open_storage

    storage = open_storage(location)
    return stacked_parquet_bytes([storage.read_bytes(_data_key(site, key)) for site, key in keys],
                                 study)


def comparison_key(input_keys: Mapping[str, str], study: Study) -> str:
    """Content key of the cross-site step: the sites' input keys and the plan.

    ``input_keys`` maps site code to its ``site_input_key``; order does not matter.
    """
    h = hashlib.sha256(study.sha256.encode())
    for site in sorted(input_keys):
        h.update(f"{site}:{input_keys[site]}".encode())
    return h.hexdigest()


# The published report: a small pointer written last, after every file of the run folder.
LATEST_POINTER = "reports/latest.json"
LATEST_FOLDER = "reports/latest"


def latest_run(storage: Storage) -> str | None:
    """The run id of the latest published report (``reports/latest.json``), if any."""
    if not storage.exists(LATEST_POINTER):
        return None
    return json.loads(storage.read_bytes(LATEST_POINTER))["run_id"]


def publish_report(storage: Storage, run_id: str, manifest: bytes) -> None:
    """Make ``reports/<run_id>/`` the latest report: write the pointer, then the local link.

    Parameters
    ----------
    storage : Storage
    run_id : str
        A run whose folder is complete, its manifest written last.
    manifest : bytes
        The run's ``manifest.json`` as written; the pointer carries its SHA-256.

    Notes
    -----
    The pointer ``reports/latest.json`` (``run_id``, ``manifest_sha256``, ``published_at``)
    is one small object replaced in one write, so a reader sees the previous report or this
    one, never a mix; a run killed before it leaves the previous report as latest, and the
    next run, finding the latest report's inputs differ from its own, makes it again.

    On a local store ``reports/latest`` is also a symbolic link to the run folder, replaced
    atomically (a new link renamed over the old), for people browsing the folder. A
    ``reports/latest/`` folder of copies left by an older version is moved aside to
    ``reports/latest-until-<run_id>/`` (never deleted). S3 has no atomic way to replace a
    set of objects, so there the pointer alone says which run is latest.
    """
    import os

    pointer = {"run_id": run_id, "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
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


def last_comparison_key(storage: Storage) -> str | None:
    """The comparison key of the latest published report (``reports/latest.json``), if any."""
    run_id = latest_run(storage)
    if run_id is None:
        return None
    return json.loads(storage.read_bytes(f"reports/{run_id}/provenance.json")).get("comparison_key")


def compare_sites(analyses: list[SiteAnalysis], study: Study, sites: list[Site]) -> Comparison:
    """Pool every effect across sites, fit the IPD models, assess replication."""
    from lacrima.ipd import ipd_from_moments
    from lacrima.pooling import pool_details, pool_estimates
    from lacrima.replication import replication_table

    per_site = pd.concat([a.results for a in analyses], ignore_index=True)
    details = pool_details(per_site, study)
    parts = [per_site, pool_estimates(per_site, study, details)]
    if len(analyses) > 1:
        # From each site's sums: the sites' rows are never stacked here.
        parts.append(ipd_from_moments(pd.concat([a.ipd_moments(study) for a in analyses],
                                                ignore_index=True), study))
    results = pd.concat([p.reindex(columns=list(RESULTS_COLUMNS)) for p in parts if len(p)],
                        ignore_index=True)
    analysed = set(per_site["site"].unique())
    present = [s for s in sites if s.code in analysed]
    return Comparison(results, replication_table(per_site, study, present), details)


def needs_report(storage: Storage, input_keys: Mapping[str, str], study: Study) -> bool:
    """False when the latest report was made from exactly these inputs: nothing new to say."""
    return bool(input_keys) and comparison_key(input_keys, study) != last_comparison_key(storage)


def new_run_id(now: datetime | None = None) -> str:
    """A run id from the clock (UTC, seconds): sorts in time order."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    """CSV at full precision; text cells that a spreadsheet would run as a formula are escaped."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(_escape_formula, na_action="ignore")
    buf = io.StringIO()
    out.to_csv(buf, index=False, float_format="%.17g")
    return buf.getvalue().encode()


def _escape_formula(value):
    return escape_formula(value)        # the rule intake flags by (lacrima.formula)


def provenance(run_id: str, analyses: list[SiteAnalysis], study: Study, sites: list[Site],
               seeds: dict | None = None) -> dict:
    """Input hashes, codebook and plan hashes, package versions, git commit, seeds."""
    import importlib.metadata as md
    import platform
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=study.path.parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    pkgs = ("lacrima", "pandas", "numpy", "scipy", "statsmodels", "great-expectations", "prefect",
            "pyreadstat", "openpyxl", "matplotlib", "jinja2", "boto3")
    versions = {}
    for p in pkgs:
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    return {
        "run_id": run_id,
        "comparison_key": comparison_key({a.site: a.input_key for a in analyses}, study),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": {"path": study.path.name, "sha256": study.sha256},
        "sites": {s.code: {"role": s.role, "site_sha256": s.sha256,
                           # the file's hash, as Codebook.sha256 holds it, without parsing
                           "codebook_sha256": sha256_file(s.codebook_path)} for s in sites},
        "inputs": {a.site: {"batches": list(a.batches), "input_key": a.input_key,
                            "reused": a.reused} for a in analyses},
        "packages": versions,
        "python": platform.python_version(),
        "git_commit": commit,
        "seeds": seeds or {},
    }


PROGRESS_LOGGER = "lacrima.progress"


def progress(stage: str, done: int | None = None, total: int | None = None) -> None:
    """Tell whoever listens (the command line's progress display) where a run is.

    A log record on ``lacrima.progress`` with ``stage`` and, when known, sites ``done`` of
    ``total``: the library stays free of any display, and a run without a listener only
    writes the line to its log.
    """
    logging.getLogger(PROGRESS_LOGGER).info(
        "%s%s", stage, f": {done} of {total} site(s)" if total is not None else "",
        extra={"stage": stage, "done": done, "total": total})


class StageClock:
    """Wall-clock seconds per named stage of a run (``with clock("intake"): ...``).

    Reported in the run summary so an operator sees where a run spent its time; entering a
    stage is reported to ``progress``.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        progress(stage)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0)
                                        + time.perf_counter() - start, 4)


@dataclass(frozen=True)
class RunContext:
    """What every step of one run needs: the store, the plan, the sites and the pseudonym key.

    Pickles as its storage location, sites root, site codes and demo flag: a Dask worker
    reopens the store (an S3 client cannot be pickled) and reads the pseudonym key from its own
    environment, so the secret never travels with a task.
    """

    storage: Storage
    study: Study
    sites: tuple[Site, ...]
    key: bytes = field(repr=False)
    demo: bool = False

    def __reduce__(self):
        stamp = hashlib.sha256("".join(s.sha256 for s in self.sites).encode()).hexdigest()
        return (_reopen_run, (self.storage.location, str(self.study.path.parent),
                              tuple(s.code for s in self.sites), self.demo, self.study.sha256, stamp))


@lru_cache(maxsize=4)
def _reopen_run(location: str, root: str, codes: tuple[str, ...], demo: bool,
                plan_sha: str = "", sites_stamp: str = "") -> RunContext:
    # Memoised per worker process: every task of a run carries the same context, and reading
    # a thousand site files per task would make the work grow with sites squared. The plan
    # hash and the sites' stamp are part of the memo key, so an edited site file is re-read.
    from pathlib import Path

    from lacrima.privacy import pseudonym_key
    from lacrima.storage import open_storage
    from lacrima.study import load_site, load_study

    return RunContext(open_storage(location), load_study(Path(root)),
                      tuple(load_site(c, Path(root)) for c in codes), pseudonym_key(demo=demo), demo)


def prepare_run(storage_location: str | None = None, demo: bool = False,
                site_codes: list[str] | None = None) -> RunContext:
    """Open the store, read the plan and the sites, get the pseudonym key and check it fits
    the store (``catalog.KeyCustodyError`` otherwise)."""
    from lacrima.privacy import pseudonym_key
    from lacrima.storage import open_storage
    from lacrima.study import load_site, load_sites, load_study

    from lacrima.catalog import check_key

    sites = (tuple(load_site(c) for c in site_codes) if site_codes else load_sites())
    storage, key = open_storage(storage_location), pseudonym_key(demo=demo)
    check_key(storage, key)        # another key, or demo and real data: refuse before any drop
    return RunContext(storage, load_study(), sites, key, demo)


def drop_outcomes(intakes, location: str = "") -> list[dict]:
    """One object per drop a run processed: what happened to it and where to read why.

    Parameters
    ----------
    intakes : sequence of IntakeResult
    location : str, optional
        The store's location, to give the quarantine report's full path.

    Returns
    -------
    list of dict
        ``site``, ``file`` (its own name), ``batch`` (SHA-256), ``outcome`` (``accepted`` or
        ``quarantined``), ``rows``, ``errors`` / ``warnings`` (counts), ``checks`` (the
        failed checks), ``new`` / ``already_held`` / ``changed`` (record counts when intake
        gives them, else None) and ``report`` (the quarantine report's path, or None). No
        participant value: names of checks and counts only.
    """
    out = []
    for result in intakes:
        quarantined = set(result.quarantined)
        counts_of = getattr(result, "record_counts", None) or {}
        for rep in result.reports:
            bad = rep.sha256 in quarantined
            # A quarantined drop's records were not taken: no counts to report for it.
            counts = {} if rep.sha256 in quarantined else counts_of.get(rep.sha256, {})
            prefix = f"quarantine/{result.site}/{rep.sha256}/report.html"
            out.append({
                "site": result.site, "file": rep.file_name, "batch": rep.sha256,
                "outcome": "quarantined" if bad else "accepted", "rows": rep.n_rows,
                "errors": len(rep.errors),
                "warnings": sum(1 for f in rep.findings if f.severity == "warning"),
                "checks": sorted({f.check for f in rep.errors}),
                "new": counts.get("new"), "already_held": counts.get("already_held"),
                "changed": counts.get("changed"),
                "report": (f"{location.rstrip('/')}/{prefix}" if location else prefix) if bad
                else None,
            })
    return out


def summarise(run_id: str, plans: list[SitePlan], intakes, analyses: list[SiteAnalysis], outputs,
              unchanged: list[str] = (), location: str = "") -> dict:
    """The one-line JSON summary of a run (``lacrima run --json``).

    ``plans`` cover every site; ``intakes`` only the sites that had pending drops (the others'
    landing objects all count as already processed). ``unchanged`` names sites whose results
    stand without being loaded, because nothing at all changed since the latest report.
    """
    ingested = {i.site for i in intakes}
    reused = [a.site for a in analyses if a.reused] + list(unchanged)
    return {
        "run_id": run_id,
        "drops_seen": sum(p.landed for p in plans),
        "accepted": sum(len(i.accepted) for i in intakes),
        "quarantined": sum(len(i.quarantined) for i in intakes),
        "skipped_duplicates": (sum(i.skipped_duplicates for i in intakes)
                               + sum(p.landed for p in plans if p.site not in ingested)),
        # records, not files: what the accepted drops brought, and what they held already
        "records_new": sum(getattr(i, "records_new", 0) for i in intakes),
        "records_held": sum(getattr(i, "records_held", 0) for i in intakes),
        "sites_analysed": [a.site for a in analyses],
        "sites_recomputed": [a.site for a in analyses if not a.reused],
        "sites_reused": sorted(reused),
        "report": outputs.location if outputs else None,
        "nothing_new": outputs is None and bool(reused),
        "drops": drop_outcomes(intakes, location),
    }
