"""Prefect UI artifacts of a run: the verdict summary (markdown) and a link to the report.

The text is made by plain functions (``verdict_markdown``, ``run_markdown``, ``report_link``,
``artifact_key``), callable and testable without a Prefect server; the task only hands it on.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lacrima.results import RunSummary
from lacrima.study import Study
from lacrima.tables import effect_label, replication_summary


def verdict_markdown(replication: pd.DataFrame, study: Study | None = None) -> str:
    """The verdict summary as Markdown (for the Prefect UI's markdown artifact).

    Parameters
    ----------
    replication : DataFrame
        ``vocabulary.REPLICATION_COLUMNS`` rows.
    study : Study, optional
        When given, effects are named by the plan's labels; otherwise by variable names.

    Returns
    -------
    str
        A count of verdicts per original side for the headline replication side (see
        :func:`replication_summary`), then one table row per effect with its verdict
        against each original side. Every pair of sides is in ``replication.csv``.

    Examples
    --------
    >>> rep = pd.DataFrame({"effect": ["H2"], "x": ["a"], "y": ["b"], "covariates": [""],
    ...                     "original_site": ["it"], "replication_site": ["us"],
    ...                     "verdict": ["replicated"]})
    >>> print(verdict_markdown(rep))  # doctest: +NORMALIZE_WHITESPACE
    ## Replication verdicts (us against it)
    <BLANKLINE>
    - **us vs it**: 1 replicated
    <BLANKLINE>
    | Family | Effect | us vs it |
    |---|---|---|
    | H2 | a × b | replicated |
    """
    head, counts, pairs = replication_summary(replication)
    if head is None:
        return "## Replication verdicts\n\nNo replication assessment in this run.\n"
    mine = replication[replication["replication_site"].astype(str) == head]
    originals = list(dict.fromkeys(mine["original_site"].astype(str)))
    labels = [label for _, label, _ in counts]
    head_name = labels[0].split(" vs ")[0]
    lines = [f"## Replication verdicts ({head_name} against "
             f"{', '.join(label.split(' vs ', 1)[1] for label in labels)})", ""]
    lines += [f"- **{label}**: {text}" for _, label, text in counts]
    if pairs:
        lines.append(f"- {pairs}")
    lines += ["", "| Family | Effect | " + " | ".join(labels) + " |",
              "|---|---|" + "---|" * len(originals)]
    cov = mine["covariates"].astype(str)
    for (fam, x, y, c), grp in mine.groupby([mine["effect"], mine["x"], mine["y"], cov],
                                            sort=False):
        name = (effect_label(study, x, y, c) if study is not None
                else f"{x} \u00d7 {y}" + (f" | {c}" if c else ""))
        verdicts = dict(zip(grp["original_site"].astype(str), grp["verdict"].astype(str)))
        cells = " | ".join(verdicts.get(o, "") for o in originals)
        lines.append(f"| {fam} | {name.replace('|', '/')} | {cells} |")
    return "\n".join(lines) + "\n"


def run_markdown(summary: RunSummary, replication_md: str) -> str:
    """The Prefect UI's run summary: the run's counts, then the verdict Markdown.

    Parameters
    ----------
    summary : RunSummary
        ``steps.summarise`` of the run.
    replication_md : str
        :func:`verdict_markdown` of the run's replication table.

    Returns
    -------
    str
    """
    head = [f"# lacrima run {summary.run_id}", "",
            f"- drops accepted: {summary.accepted}, quarantined: {summary.quarantined}, "
            f"skipped as duplicates: {summary.skipped_duplicates}",
            f"- sites analysed: {', '.join(summary.sites_analysed) or 'none'}"]
    if summary.report:
        head.append(f"- report: `{summary.report}`")
    return "\n".join(head) + "\n\n" + replication_md


def report_link(location: str) -> str:
    """A URL for a report location: URLs (``s3://``, ``https://``) kept, a path as ``file://``."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", location):
        return location
    return Path(location).resolve().as_uri()


def artifact_key(text: str) -> str:
    """``text`` in Prefect's artifact-key form: lowercase letters, digits and dashes.

    Examples
    --------
    >>> artifact_key("Lacrima Verdicts_us")
    'lacrima-verdicts-us'
    """
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not key:
        raise ValueError(f"{text!r} has no letter or digit to make an artifact key from")
    return key


# Constant keys: every run adds a new version under the same key, so the UI keeps the history.
VERDICTS_KEY = artifact_key("lacrima-verdicts")
REPORT_KEY = artifact_key("lacrima-report")


@task(name="publish-artifacts", cache_policy=NO_CACHE, timeout_seconds=120,
      retries=3, retry_delay_seconds=[2, 8, 30])
def publish_artifacts(summary: RunSummary, replication_md: str, report_location: str) -> dict:
    """Create the markdown artifact (run counts and verdicts) and the link artifact (report).

    Returns the two artifact ids as strings, keyed ``markdown`` and ``link``.
    """
    md_id = create_markdown_artifact(
        markdown=run_markdown(summary, replication_md), key=VERDICTS_KEY,
        description=f"Replication verdicts of run {summary.run_id}")
    link_id = create_link_artifact(
        link=report_link(report_location), key=REPORT_KEY,
        link_text=f"Comparison report, run {summary.run_id}",
        description="Self-contained HTML report (open the folder it is in)")
    return {"markdown": str(md_id), "link": str(link_id)}
