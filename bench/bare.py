"""lacrima's own kernels: the plan's statistics and REML pooling in one plain process.

``python -m bench.bare READY --sites ROOT`` reads every site's analysis-ready data
(``READY/<site>.parquet``, written by :func:`write_ready`) and computes what a run's
results.csv holds: each site's estimates and descriptives, the pooled estimates (the plan's
estimator, REML), the IPD models and the replication table, with nothing else: no store,
no validation, no Prefect, no report. The benchmark times this command, start-up included,
on the same data as ``lacrima run``: the ratio is the platform's overhead over its own
kernels, a line of its own. The yardstick of the targets is the independent floor
(``../shared/bench/floor.py``), which uses no lacrima code: a slow kernel slows this
command too, never the floor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from lacrima.analysis import analyse_site, describe_site
from lacrima.ipd import ipd_models
from lacrima.pooling import pool_details, pool_estimates
from lacrima.replication import replication_table
from lacrima.study import load_sites, load_study
from lacrima.vocabulary import RESULTS_COLUMNS


def write_ready(storage, study, sites, folder: Path) -> Path:
    """Write each site's analysis-ready data (curated, scored, exclusions applied) as Parquet.

    Parameters
    ----------
    storage : lacrima.storage.Storage
        A store a run has ingested (read only).
    study, sites
        The plan and the sites.
    folder : Path
        Created; gets ``<site>.parquet`` for every site with data.

    Returns
    -------
    Path
        ``folder``.
    """
    from lacrima.catalog import curated_frame
    from lacrima.scoring import analysis_ready

    folder.mkdir(parents=True, exist_ok=True)
    for s in sites:
        frame = curated_frame(storage, s.code)
        if len(frame):
            analysis_ready(frame, study, s.code)[0].to_parquet(folder / f"{s.code}.parquet")
    return folder


def bare_statistics(ready: dict[str, pd.DataFrame], study, sites) -> tuple[pd.DataFrame, ...]:
    """Every statistic of a run from the sites' analysis-ready frames, in one plain call.

    Returns
    -------
    (results, descriptives, replication)
        ``results``: per-site, pooled and IPD rows (``RESULTS_COLUMNS``), as in results.csv
        without its ``run_id``; ``descriptives`` of every site; the replication table.
    """
    per_site = pd.concat([analyse_site(d, study, c) for c, d in ready.items()], ignore_index=True)
    descriptives = pd.concat([describe_site(d, study, c) for c, d in ready.items()],
                             ignore_index=True)
    parts = [per_site, pool_estimates(per_site, study, pool_details(per_site, study))]
    if len(ready) > 1:
        parts.append(ipd_models(pd.concat([d.assign(site=c) for c, d in ready.items()],
                                          ignore_index=True), study))
    results = pd.concat([p.reindex(columns=list(RESULTS_COLUMNS)) for p in parts if len(p)],
                        ignore_index=True)
    present = [s for s in sites if s.code in ready]
    return results, descriptives, replication_table(per_site, study, present)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__.splitlines()[0])
    ap.add_argument("ready", type=Path, help="folder of <site>.parquet analysis-ready files")
    ap.add_argument("--sites", type=Path, help="sites root (default: LACRIMA_SITES or ./sites)")
    args = ap.parse_args(argv)
    study, sites = load_study(args.sites), load_sites(args.sites)
    ready = {p.stem: pd.read_parquet(p) for p in sorted(args.ready.glob("*.parquet"))}
    if not ready:
        print(f"{args.ready}: no <site>.parquet files", file=sys.stderr)
        return 2
    results, _, _ = bare_statistics(ready, study, sites)
    print(f"{len(ready)} sites, {len(results)} estimates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
