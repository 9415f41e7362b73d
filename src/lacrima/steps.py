"""A run's steps and decisions as plain functions: plan, ingest, analyse, compare, report.

``flows/pipeline.py`` wires these into Prefect tasks; a notebook can call them directly::

    ctx = prepare_run(demo=True)
    for s in ctx.sites: ingest_site(ctx.storage, s, ctx.study, ctx.pseudonym_key)
    analyses = [site_step(ctx.storage, s, ctx.study) for s in ctx.sites]
    comparison = compare_sites([a for a in analyses if a], ctx.study, list(ctx.sites))
    write_outputs(ctx.storage, new_run_id(), analyses, comparison, ctx.study, list(ctx.sites),
                  provenance(...))

The pieces of a run's decisions (which sites to analyse, whether a report is needed, which
task runner) are each one function here; ``lacrima.runplan.plan`` is the one caller that
puts them together, so the flow body only reads as its steps.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import pandas as pd

from lacrima import catalog
from lacrima.catalog import ACCEPTED, batches, curated_frame
from lacrima.intake import landing_counts
from lacrima.results import Comparison, RunSummary, SiteAnalysis, SitePlan
from lacrima.scoring import Flow, analysis_ready
from lacrima.privacy import pseudonym_key
from lacrima.storage import Storage, open_storage
from lacrima.study import Site, Study, load_site, load_sites, load_study, sha256_file
from lacrima.vocabulary import RESULTS_COLUMNS


def site_input_key(storage: Storage, site: Site, study: Study) -> tuple[str, tuple[str, ...]]:
    """Content key of a site's analysis: changes iff its accepted data, codebook, plan or the
    site file's fields its results show (``Site.results_sha256``) do.

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
    key = SHA-256(register hash | codebook file hash | ``Site.results_sha256`` | plan hash)
    (a site's contact, language or published N change no result), where the
    register (``catalog.register_digest``) says which record of which batch is each
    participant's current one: it changes with new or corrected records, a withdrawal or a
    rekey, and not with a re-export that brought nothing new. A store without a register
    (made before it existed) uses the accepted batch hashes, sorted, instead. Every part is
    a hash of file bytes, never of a pickled frame, so the key is stable across Python,
    pandas and platform versions. Reads only the site's ledger and register: no data file
    is opened. The batches returned are those whose records are in use (a re-export that
    brought nothing is left out).
    """
    accepted = tuple(sorted(r.sha256 for r in batches(storage, site.code)
                            if r.state == ACCEPTED and r.records_new != 0))
    register = catalog.register_digest(storage, site.code) if accepted else ""
    h = hashlib.sha256()
    # The codebook's file hash is what Codebook.sha256 holds; hashing the file skips parsing it.
    for part in ((register,) if register else accepted) + (
            sha256_file(site.codebook_path), site.results_sha256, study.sha256):
        h.update(part.encode())
    return h.hexdigest(), accepted


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
        input_key, accepted = site_input_key(storage, s, study)
        if accepted:
            out[s.code] = (input_key, accepted)
    return out


def _analyse(storage: Storage, site: Site, study: Study, input_key: str,
             accepted: tuple[str, ...]) -> tuple[SiteAnalysis, pd.DataFrame]:
    """Score, exclude and analyse the site's curated records; store the analysis and rows."""
    # The statistics (scipy, statsmodels: seconds of imports) are imported by the steps that
    # compute, so planning a run, and a run with nothing new, never pays for them.
    from lacrima.analysis import analyse_site, describe_site
    from lacrima.ipd import site_moments

    data, flow = analysis_ready(curated_frame(storage, site.code), study, site.code)
    flow = with_withdrawals(flow, catalog.withdrawn_received(storage, site.code))
    results = analyse_site(data, study, site.code).reindex(columns=list(RESULTS_COLUMNS))
    fresh = SiteAnalysis(site.code, input_key, accepted, flow, results,
                         describe_site(data, study, site.code), site_moments(data, study))
    return catalog.save_site_analysis(storage, fresh, data), data


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
              keyed: tuple[str, tuple[str, ...]] | None = None,
              outputs: bool = True) -> SiteAnalysis | None:
    """One site's whole share of a run: its analysis (computed or reused) and its own outputs;
    ``None`` when the site has no accepted data yet. The one entry point of a site's analysis.

    Results are kept under ``results/<site>/<input_key>/`` (``catalog.save_site_analysis``)
    and reused while the site's register, codebook, site file and plan are unchanged (the key
    is a SHA-256 of those, never of pickled frames). ``keyed`` is the site's
    ``site_input_key`` when the caller has it already.

    The site's page and exports (``report.site_outputs``) are written here, once per input
    key, so they are made in parallel across sites and only when the site changed; a fresh
    analysis hands them the rows it was computed from, a reused one reads them from the store
    only if its outputs are missing. ``outputs=False`` leaves them out (a notebook or a test
    that wants the analysis only).
    """
    input_key, accepted = keyed or site_input_key(storage, site, study)
    if not accepted:
        return None
    analysis = catalog.load_site_analysis(storage, site.code, input_key, accepted)
    data = None
    if analysis is None:
        analysis, data = _analyse(storage, site, study, input_key, accepted)
    if outputs:
        from lacrima.report import site_outputs     # rendering: see sites_to_analyse

        site_outputs(storage, analysis, site, study, data)
    return analysis


def sites_to_analyse(storage: Storage, sites, keys: Mapping[str, tuple[str, tuple[str, ...]]]
                     ) -> tuple[list[Site], list[Site]]:
    """Split the sites with data into those whose stored results stand and those to analyse.

    Parameters
    ----------
    storage : Storage
    sites : iterable of Site
    keys : mapping
        Site code -> ``(input_key, accepted batches)`` (:func:`site_keys`); sites without
        a key have no accepted data and are in neither list.

    Returns
    -------
    (list of Site, list of Site)
        ``reuse``: an analysis and its own outputs are stored under the site's input key
        (existence checks only, no file read); ``analyse``: the rest (:func:`site_step`).
    """
    # The report module (Jinja, the table builders and their statistics) is imported by the
    # steps that render, so planning a run, and a run with nothing new, never pays for it.
    from lacrima.report import site_outputs_ready

    reuse, analyse = [], []
    for s in sites:
        if s.code not in keys:
            continue
        input_key = keys[s.code][0]
        done = (catalog.site_analysis_stored(storage, s.code, input_key)
                and site_outputs_ready(storage, s.code, input_key))
        (reuse if done else analyse).append(s)
    return reuse, analyse


def in_site_order(sites, analyses: list[SiteAnalysis]) -> list[SiteAnalysis]:
    """``analyses`` in the order of ``sites`` (the plan's): reused and fresh ones merged."""
    by_code = {a.site: a for a in analyses}
    return [by_code[s.code] for s in sites if s.code in by_code]


def family_groups(study: Study, n: int) -> list[list[str]]:
    """The plan's family ids in at most ``n`` groups, for tasks that draw their plots.

    Examples
    --------
    >>> from lacrima.study import load_study
    >>> [len(g) for g in family_groups(load_study(), 3)]
    [3, 3, 2]
    """
    ids = [f["id"] for f in study.families]
    return [g for g in (ids[i::n] for i in range(n)) if g]


# From this many sites to analyse, the process pool: per-site work is pandas under the GIL,
# so threads do not add a core, and a few seconds of process start-up pay off.
PROCESSES_FROM_SITES = 40


def choose_runner(n_to_analyse: int, requested: str | None = None) -> str:
    """The task runner for a run: ``requested`` if given, else by the work.

    Threads for a few sites to analyse (no start-up cost), Prefect's process pool from
    ``PROCESSES_FROM_SITES`` on; Dask only when asked for (``--runner dask``).

    Examples
    --------
    >>> choose_runner(3), choose_runner(125), choose_runner(125, "thread")
    ('thread', 'process', 'thread')
    """
    if requested and requested != "auto":
        return requested
    return "process" if n_to_analyse >= PROCESSES_FROM_SITES else "thread"


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
    size = max(1, min(most, math.ceil(len(sites) / spread)))
    return [sites[i:i + size] for i in range(0, len(sites), size)]


def comparison_key(input_keys: Mapping[str, str], study: Study) -> str:
    """Content key of the cross-site step: the sites' input keys and the plan.

    ``input_keys`` maps site code to its ``site_input_key``; order does not matter.
    """
    h = hashlib.sha256(study.sha256.encode())
    for site in sorted(input_keys):
        h.update(f"{site}:{input_keys[site]}".encode())
    return h.hexdigest()


def compare_sites(analyses: list[SiteAnalysis], study: Study, sites: list[Site]) -> Comparison:
    """Pool every effect across sites, fit the IPD models, assess replication."""
    from lacrima.ipd import ipd_from_moments    # statistics: imported where computed
    from lacrima.pooling import pool_details, pool_estimates
    from lacrima.replication import replication_table

    per_site = pd.concat([a.results for a in analyses], ignore_index=True)
    details = pool_details(per_site, study)
    parts = [per_site, pool_estimates(per_site, study, details)]
    if len(analyses) > 1:
        # From each site's sums: the sites' rows are never stacked here.
        parts.append(ipd_from_moments(pd.concat([a.moments for a in analyses],
                                                ignore_index=True), study))
    results = pd.concat([p.reindex(columns=list(RESULTS_COLUMNS)) for p in parts if len(p)],
                        ignore_index=True)
    analysed = set(per_site["site"].unique())
    present = [s for s in sites if s.code in analysed]
    return Comparison(results, replication_table(per_site, study, present), details)


def needs_report(storage: Storage, input_keys: Mapping[str, str], study: Study) -> bool:
    """False when the latest report was made from exactly these inputs: nothing new to say."""
    return (bool(input_keys)
            and comparison_key(input_keys, study) != catalog.last_comparison_key(storage))


def new_run_id(now: datetime | None = None) -> str:
    """A run id from the clock (UTC, seconds): sorts in time order."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


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
    pseudonym_key: bytes = field(repr=False)
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
    return RunContext(open_storage(location), load_study(Path(root)),
                      tuple(load_site(c, Path(root)) for c in codes), pseudonym_key(demo=demo), demo)


def prepare_run(storage_location: str | Storage | None = None, demo: bool = False,
                site_codes: list[str] | None = None) -> RunContext:
    """Open the store (or take the one given), read the plan and the sites, get the
    pseudonym key and check it fits the store (``catalog.KeyCustodyError`` otherwise)."""
    sites = (tuple(load_site(c) for c in site_codes) if site_codes else load_sites())
    storage = (open_storage(storage_location) if storage_location is None
               or isinstance(storage_location, str) else storage_location)
    secret = pseudonym_key(demo=demo)
    catalog.check_key(storage, secret)  # another key, or demo and real data: refuse before a drop
    return RunContext(storage, load_study(), sites, secret, demo)


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
        failed checks), ``new`` / ``already_held`` (unchanged) / ``changed`` / ``withdrawn``
        (record counts when intake gives them, else None) and ``report`` (the quarantine report's path, or None). No
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
            prefix = f"{catalog.quarantine_prefix(result.site, rep.sha256)}/report.html"
            out.append({
                "site": result.site, "file": rep.file_name, "batch": rep.sha256,
                "outcome": "quarantined" if bad else "accepted", "rows": rep.n_rows,
                "errors": len(rep.errors),
                "warnings": sum(1 for f in rep.findings if f.severity == "warning"),
                "checks": sorted({f.check for f in rep.errors}),
                "new": counts.get("new"), "already_held": counts.get("already_held"),
                "changed": counts.get("changed"), "withdrawn": counts.get("withdrawn"),
                "report": (f"{location.rstrip('/')}/{prefix}" if location else prefix) if bad
                else None,
            })
    return out


def summarise(run_id: str, plans: tuple[SitePlan, ...], intakes, analyses: list[SiteAnalysis],
              outputs, unchanged: list[str] = (), location: str = "",
              seconds: Mapping[str, float] | None = None) -> RunSummary:
    """What a run did, as the frozen :class:`~lacrima.results.RunSummary`.

    ``plans`` cover every site (``RunPlan.drops``); ``intakes`` only the sites that had
    pending drops (the others' landing objects all count as already processed).
    ``unchanged`` names sites whose results stand without being loaded, because nothing at
    all changed since the latest report.
    """
    ingested = {i.site for i in intakes}
    reused = [a.site for a in analyses if a.reused] + list(unchanged)
    return RunSummary(
        run_id=run_id,
        drops_seen=sum(p.landed for p in plans),
        accepted=sum(len(i.accepted) for i in intakes),
        quarantined=sum(len(i.quarantined) for i in intakes),
        skipped_duplicates=(sum(i.skipped_duplicates for i in intakes)
                            + sum(p.landed for p in plans if p.site not in ingested)),
        # records, not files: what the accepted drops brought, and what they held already
        records_new=sum(i.records_new for i in intakes),
        records_held=sum(i.records_held for i in intakes),
        sites_analysed=tuple(a.site for a in analyses),
        sites_recomputed=tuple(a.site for a in analyses if not a.reused),
        sites_reused=tuple(sorted(reused)),
        report=outputs.location if outputs else None,
        nothing_new=outputs is None and bool(reused),
        drops=tuple(drop_outcomes(intakes, location)),
        seconds=dict(seconds or {}),
    )
