"""What a run's steps hand each other: a site's plan and analysis, the comparison, the outputs.

Frozen dataclasses of tidy frames. None of them carries a site's rows: those stay in the store
(``catalog.site_data``), read by key where a step needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

from lacrima.scoring import Flow


@dataclass(frozen=True)
class SitePlan:
    """What a run has to do for one site, from listings only (no data file is read)."""

    site: str
    landed: int        # objects in the site's landing zone
    pending: int       # of which new or changed since the last run

    def to_frame(self) -> pd.DataFrame:
        """One row: ``site``, ``landed``, ``pending``."""
        return pd.DataFrame([vars(self)], columns=["site", "landed", "pending"])


@dataclass(frozen=True)
class SiteAnalysis:
    """Everything one site contributes to the comparison: flow, estimates, descriptives, IPD sums.

    ``input_key`` names the stored entry (``catalog.site_results_prefix``) that holds these
    frames and the site's analysis-ready rows.
    """

    site: str
    input_key: str                 # SHA-256 over the register, codebook, site file and plan
    batches: tuple[str, ...]       # SHA-256 of the accepted batches used
    flow: Flow = field(repr=False)
    results: pd.DataFrame = field(repr=False)        # vocabulary.RESULTS_COLUMNS
    descriptives: pd.DataFrame = field(repr=False)   # analysis.describe_site
    moments: pd.DataFrame = field(repr=False)        # ipd.site_moments
    reused: bool = False           # read back from the store, not computed in this run


@dataclass(frozen=True)
class Comparison:
    """Cross-site work: every estimate (per site, pooled, IPD) and the replication table."""

    results: pd.DataFrame
    replication: pd.DataFrame
    # pooling.pool_details of the per-site rows (random and fixed effects on the pooling
    # scale): the report shows them; None when not kept (the report then pools again).
    details: pd.DataFrame | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RunOutputs:
    """Where a run's outputs went.

    ``files`` are the run-relative names of every file written (the manifest's list);
    ``site_pages`` maps a site code to its page's run-relative name.
    """

    run_id: str
    prefix: str            # storage key prefix of the run's folder
    report_key: str
    location: str          # human location of report.html (a path or s3:// URL)
    files: tuple[str, ...] = ()
    site_pages: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSummary:
    """What a run did (``steps.summarise``): the line ``lacrima run`` prints, ``--json`` writes
    (:meth:`to_dict`), the flow returns and the Prefect artifacts quote.

    Counts are of drops (files) except ``records_new`` / ``records_held`` (records);
    ``drops`` is one object per drop processed (``steps.drop_outcomes``); ``seconds`` the
    wall-clock seconds per stage; ``busy`` the holder's message when another run held the
    store and this one changed nothing; ``log`` the run's log file (the command line's).
    """

    run_id: str
    drops_seen: int = 0
    accepted: int = 0
    quarantined: int = 0
    skipped_duplicates: int = 0
    records_new: int = 0
    records_held: int = 0
    sites_analysed: tuple[str, ...] = ()
    sites_recomputed: tuple[str, ...] = ()
    sites_reused: tuple[str, ...] = ()
    report: str | None = None
    nothing_new: bool = False
    drops: tuple[Mapping, ...] = ()
    seconds: Mapping[str, float] = field(default_factory=dict)
    busy: str = ""
    log: str = ""

    def to_dict(self) -> dict:
        """JSON-ready: tuples as lists, every field by name."""
        return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping)
                    else v) for k, v in vars(self).items()}
