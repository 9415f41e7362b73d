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
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from lacrima.intake import ACCEPTED, batches, curated_frame
from lacrima.scoring import Flow, analysis_ready
from lacrima.storage import Storage
from lacrima.study import Site, Study
from lacrima.vocabulary import RESULTS_COLUMNS


@dataclass(frozen=True)
class SiteAnalysis:
    """Everything one site contributes: its analysis-ready data, flow, estimates, descriptives."""

    site: str
    input_key: str                 # SHA-256 over accepted batches, codebook, site file and plan
    batches: tuple[str, ...]       # SHA-256 of the accepted batches used
    data: pd.DataFrame = field(repr=False)
    flow: Flow = field(repr=False)
    results: pd.DataFrame = field(repr=False)
    descriptives: pd.DataFrame = field(repr=False)
    reused: bool = False


@dataclass(frozen=True)
class Comparison:
    """Cross-site work: every estimate (per site, pooled, IPD) and the replication table."""

    results: pd.DataFrame
    replication: pd.DataFrame


def site_input_key(storage: Storage, site: Site, study: Study) -> tuple[str, tuple[str, ...]]:
    """Content key of a site's analysis: changes iff its accepted data, codebook, site file or plan do."""
    from lacrima.codebook import load_codebook

    accepted = tuple(sorted(r.sha256 for r in batches(storage, site.code) if r.state == ACCEPTED))
    h = hashlib.sha256()
    for part in (*accepted, load_codebook(site).sha256, site.sha256, study.sha256):
        h.update(part.encode())
    return h.hexdigest(), accepted


def analyse_site_data(storage: Storage, site: Site, study: Study) -> SiteAnalysis | None:
    """Score, exclude and analyse one site's curated data; ``None`` when it has none yet."""
    from lacrima.analysis import analyse_site, describe_site

    key, accepted = site_input_key(storage, site, study)
    curated = curated_frame(storage, site.code)
    if curated.empty:
        return None
    data, flow = analysis_ready(curated, study, site.code)
    results = analyse_site(data, study, site.code)
    return SiteAnalysis(site.code, key, accepted, data, flow,
                        results.reindex(columns=list(RESULTS_COLUMNS)),
                        describe_site(data, study, site.code))


def compare_sites(analyses: list[SiteAnalysis], study: Study, sites: list[Site]) -> Comparison:
    """Pool every effect across sites, fit the IPD models, assess replication."""
    from lacrima.ipd import ipd_models
    from lacrima.pooling import pool_estimates
    from lacrima.replication import replication_table

    per_site = pd.concat([a.results for a in analyses], ignore_index=True)
    stacked = pd.concat([a.data for a in analyses], ignore_index=True)
    parts = [per_site, pool_estimates(per_site, study)]
    if stacked["site"].nunique() > 1:
        parts.append(ipd_models(stacked, study))
    results = pd.concat([p.reindex(columns=list(RESULTS_COLUMNS)) for p in parts if len(p)],
                        ignore_index=True)
    present = [s for s in sites if s.code in set(per_site["site"])]
    return Comparison(results, replication_table(per_site, study, present))


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


def stacked_data(analyses: list[SiteAnalysis]) -> pd.DataFrame:
    return pd.concat([a.data for a in analyses], ignore_index=True)


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
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value


def provenance(run_id: str, analyses: list[SiteAnalysis], study: Study, sites: list[Site],
               seeds: dict | None = None) -> dict:
    """Input hashes, codebook and plan hashes, package versions, git commit, seeds."""
    import importlib.metadata as md
    import platform
    import subprocess

    from lacrima.codebook import load_codebook

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
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": {"path": study.path.name, "sha256": study.sha256},
        "sites": {s.code: {"role": s.role, "site_sha256": s.sha256,
                           "codebook_sha256": load_codebook(s).sha256} for s in sites},
        "inputs": {a.site: {"batches": list(a.batches), "input_key": a.input_key,
                            "reused": a.reused} for a in analyses},
        "packages": versions,
        "python": platform.python_version(),
        "git_commit": commit,
        "seeds": seeds or {},
    }


@dataclass(frozen=True)
class RunContext:
    """What every step of one run needs: the store, the plan, the sites and the pseudonym key."""

    storage: Storage
    study: Study
    sites: tuple[Site, ...]
    key: bytes = field(repr=False)
    demo: bool = False


def prepare_run(storage_location: str | None = None, demo: bool = False,
                site_codes: list[str] | None = None) -> RunContext:
    from lacrima.privacy import pseudonym_key
    from lacrima.storage import open_storage
    from lacrima.study import load_site, load_sites, load_study

    sites = (tuple(load_site(c) for c in site_codes) if site_codes else load_sites())
    return RunContext(open_storage(storage_location), load_study(), sites,
                      pseudonym_key(demo=demo), demo)


def summarise(run_id: str, intakes, analyses: list[SiteAnalysis], outputs) -> dict:
    """The one-line JSON summary of a run (``lacrima run --json``)."""
    return {
        "run_id": run_id,
        "drops_seen": sum(i.seen for i in intakes),
        "accepted": sum(len(i.accepted) for i in intakes),
        "quarantined": sum(len(i.quarantined) for i in intakes),
        "skipped_duplicates": sum(i.skipped_duplicates for i in intakes),
        "sites_analysed": [a.site for a in analyses],
        "sites_reused": [a.site for a in analyses if a.reused],
        "report": outputs.location if outputs else None,
    }
