"""Prefect UI artifacts of a run: the verdict summary (markdown) and a link to the report.

Wiring only: the Markdown and the link are built by plain ``lacrima.report`` functions.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lacrima import report

# Constant keys: every run adds a new version under the same key, so the UI keeps the history.
VERDICTS_KEY = report.artifact_key("lacrima-verdicts")
REPORT_KEY = report.artifact_key("lacrima-report")


@task(name="publish-artifacts", cache_policy=NO_CACHE, timeout_seconds=120,
      retries=3, retry_delay_seconds=[2, 8, 30])
def publish_artifacts(summary: dict, replication_md: str, report_location: str) -> dict:
    """Create the markdown artifact (run counts and verdicts) and the link artifact (report).

    Returns the two artifact ids as strings, keyed ``markdown`` and ``link``.
    """
    md_id = create_markdown_artifact(
        markdown=report.run_markdown(summary, replication_md), key=VERDICTS_KEY,
        description=f"Replication verdicts of run {summary.get('run_id', '')}")
    link_id = create_link_artifact(
        link=report.report_link(report_location), key=REPORT_KEY,
        link_text=f"Comparison report, run {summary.get('run_id', '')}",
        description="Self-contained HTML report (open the folder it is in)")
    return {"markdown": str(md_id), "link": str(link_id)}
