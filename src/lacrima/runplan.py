"""The run plan: what a run has to do, decided once, from the store as it is.

Every command that asks "what is there to do?" calls :func:`plan`: ``lacrima run`` (to answer
"nothing new" without starting Prefect, and to choose the task runner), the pipeline flow
(again under the store's lease: the store may have changed since, and the plan made under the
lease is the one that counts), the landing sweep (to start a run only for new drops) and
``lacrima status``. The flow body only executes a plan; when its ingest changed the store it
plans again, it never patches the old plan. Listings, ledgers and registers only: no data
file is read and no pseudonym key is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from lacrima import steps
from lacrima.results import SitePlan
from lacrima.storage import Storage
from lacrima.study import Site, Study


@dataclass(frozen=True)
class RunPlan:
    """What a run does, site by site; every field a decision made by :func:`plan`.

    Attributes
    ----------
    drops : tuple of SitePlan
        Every site, in plan order: its landing objects and how many are pending (new or
        changed since the last run).
    ingest : tuple of str
        Sites with a pending drop, to ingest.
    input_keys : tuple of (str, str, tuple of str)
        ``(site, input key, accepted batches)`` of every site with accepted data
        (``steps.site_input_key``), in plan order.
    analyse, reuse : tuple of str
        Sites whose stored analysis and outputs do not stand (to analyse), and those whose
        do (read back). Empty when there is nothing to ingest and no report is due.
    report : bool
        A report is due: the store's inputs differ from those of the latest report.
    runner : str
        The task runner for the work (``steps.choose_runner``).
    """

    drops: tuple[SitePlan, ...]
    ingest: tuple[str, ...]
    input_keys: tuple[tuple[str, str, tuple[str, ...]], ...]
    analyse: tuple[str, ...]
    reuse: tuple[str, ...]
    report: bool
    runner: str

    @property
    def keys(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Site -> ``(input key, accepted batches)``, as ``steps.site_keys`` gives them."""
        return {site: (key, batches) for site, key, batches in self.input_keys}

    @property
    def pending(self) -> int:
        """Drops waiting for a run, over all sites."""
        return sum(p.pending for p in self.drops)

    @property
    def nothing_new(self) -> bool:
        """No drop to ingest and no report due: a run would change nothing."""
        return not self.ingest and not self.report

    def describe(self) -> str:
        """One line for a person: what the next run would do.

        Examples
        --------
        >>> RunPlan((SitePlan("us", 2, 1), SitePlan("it", 1, 0)), ("us",), (), (), ("it",),
        ...         False, "thread").describe()
        'ingest 1 drop(s) (us), then analyse what it brings'
        >>> RunPlan((), (), (("us", "k", ("b",)),), ("us",), (), True, "thread").describe()
        'analyse 1 site(s) (us), reuse 0, write a report'
        >>> RunPlan((), (), (), (), (), False, "thread").describe()
        'nothing new since the latest report'
        """
        if self.nothing_new:
            return "nothing new since the latest report"
        if self.ingest:
            return (f"ingest {self.pending} drop(s) ({', '.join(self.ingest)}), then analyse "
                    "what it brings")
        return (f"analyse {len(self.analyse)} site(s) ({', '.join(self.analyse)}), reuse "
                f"{len(self.reuse)}, write a report")

    def sites(self, sites, codes) -> list[Site]:
        """The ``sites`` (Site objects, in their order) named in ``codes``."""
        wanted = set(codes)
        return [s for s in sites if s.code in wanted]


def plan(storage: Storage, sites, study: Study, runner: str | None = None) -> RunPlan:
    """What a run on ``storage`` has to do now: the one place that decides it.

    Parameters
    ----------
    storage : Storage
    sites : sequence of Site
    study : Study
    runner : str, optional
        A task runner asked for (``--runner``); ``None`` or ``"auto"``: chosen by the work.

    Returns
    -------
    RunPlan

    Notes
    -----
    One listing per site (``steps.plan_site``), the ledgers and registers for the input keys,
    the latest report's comparison key, and existence checks of stored analyses. Which sites
    to analyse is only looked up when there is something to ingest or a report is due, so a
    plan with nothing new never imports the report's modules.
    """
    drops = tuple(steps.plan_site(storage, s) for s in sites)
    ingest = tuple(p.site for p in drops if p.pending)
    keys = steps.site_keys(storage, sites, study)
    report = steps.needs_report(storage, {c: k for c, (k, _) in keys.items()}, study)
    reuse, analyse = (steps.sites_to_analyse(storage, sites, keys) if ingest or report
                      else ([], []))
    return RunPlan(drops, ingest, tuple((c, k, b) for c, (k, b) in keys.items()),
                   tuple(s.code for s in analyse), tuple(s.code for s in reuse), report,
                   steps.choose_runner(len(set(ingest) | {s.code for s in analyse}), runner))
