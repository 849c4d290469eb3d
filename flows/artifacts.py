"""A run's summary as a Prefect markdown artifact, so that it shows in the Prefect UI.

``publish_run_report`` is the flow's report (its task ``flows.enhance_archive.report_run``): at the end
of ``enhance_archive`` it audits the run from the rows the flow read (``llie.audit.summary``), writes the HTML report next to the metrics
(``_metrics/run_id=<id>/_report/report.html``, see ``llie.audit.report.report_url``) and publishes the
summary with a link to that report. It never raises: a report must not fail a finished run.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING, Any
from uuid import UUID

from llie.audit.numbers import number
from llie.audit.overview import RunOverview
from llie.audit.table import Table, markdown_cell
from llie.batch import storage
from llie.batch.layout import RunLayout

if TYPE_CHECKING:
    import pyarrow as pa

    from llie.audit.summary import RunSummary, Stats

_MAX_LISTED = 5


def artifact_key(run_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "llie-run-" + (re.sub(r"[^a-z0-9-]+", "-", str(run_id).lower()).strip("-") or "unnamed")


def _stats(stats: Stats | None, digits: int) -> str:
    if not stats:
        return "no references"
    return (
        f"mean {number(stats.mean, digits)}, median {number(stats.median, digits)}, "
        f"p5 {number(stats.p5, digits)}, p95 {number(stats.p95, digits)} (n={stats.n})"
    )


def _link(url: str) -> str:
    href = url if "://" in url else "file://" + os.path.abspath(url)
    return f"[{url.rsplit('/', 1)[-1] or url}]({href.replace(' ', '%20').replace(')', '%29')}) (`{url}`)"


def overview_of(summary: RunOverview | dict[str, Any]) -> RunOverview:
    """The flow's summary as the model, whether it comes as one or as the dict the flow returns."""
    return summary if isinstance(summary, RunOverview) else RunOverview.from_dict(summary)


def summary_text(summary: RunOverview | dict[str, Any], retry_command: str | None = None) -> str:
    """The flow's summary as a few lines a person reads; ``retry_command``: the exact command that redoes
    its failed images, where the caller knows it."""
    overview = overview_of(summary)
    lines = [f"run {overview.run_id}", *overview.table().text(indent="  ")]
    if overview.error or overview.skipped:
        retry = retry_command or f"llie run ... --run-id {overview.run_id} --retry-failed"
        lines.append(f"  to retry them: {retry}")
    return "\n".join(lines)


def _audited_rows(audit: RunSummary) -> list[tuple[str, str]]:
    """What the audit of the rows adds: problems, quality, before and after, time per stage, ranked images."""
    rows: list[tuple[str, str]] = []
    if audit.problems:
        listed = "; ".join(f"{reason} ×{count}" for _, reason, count in audit.problems[:_MAX_LISTED])
        rows.append(("most common problems", listed))
    rows += [("PSNR (dB)", _stats(audit.psnr, 2)), ("SSIM", _stats(audit.ssim, 4))]
    for name, nr in audit.no_reference.items():
        before, after = nr.get("before"), nr.get("after")
        if before and after:
            rows.append((f"{name} before → after", f"{number(before.mean, 4)} → {number(after.mean, 4)}"))
    if audit.busy_seconds > 0:
        top = sorted(audit.stage_share.items(), key=lambda kv: -kv[1])[:4]
        rows.append(("time per stage", ", ".join(f"{stage} {100 * v:.0f}%" for stage, v in top)))
    digits = 2 if audit.rank_by == "psnr" else 4
    for key, items in (("worst", audit.worst), ("best", audit.best)):
        if items:
            listed = ", ".join(f"`{i.rel_path}` {number(i.value, digits)}" for i in items[:_MAX_LISTED])
            rows.append((f"{key} by {audit.rank_by}", listed))
    if audit.model_versions:
        rows.append(("model", ", ".join(audit.model_versions)))
    return rows


def run_markdown(
    summary: RunOverview | dict[str, Any] | None, audit: RunSummary | None = None, report_url: str | None = None
) -> str:
    """The run as a markdown table: its overview (the flow's ``summary``, else the audit's), what the
    ``audit`` of its rows adds, and the link to its report."""
    overview = overview_of(summary) if summary else audit.overview() if audit else RunOverview("?", 0)
    rows = overview.rows() + (_audited_rows(audit) if audit else [])
    # The cells are escaped by Table.markdown; the link is markdown on purpose.
    rows.append(("report", _link(report_url) if report_url else "not written"))
    return "\n".join([f"## llie run `{markdown_cell(overview.run_id)}`", "", *Table.pairs(rows).markdown()]) + "\n"


def publish_run_artifact(
    summary: RunOverview | dict[str, Any] | None, report_url: str | None = None, audit: RunSummary | None = None
) -> UUID:
    """Create the run's markdown artifact (key ``llie-run-<run id>``); returns its id.

    Inside a flow run the artifact is attached to it; a resumed run adds a new version under
    the same key.
    """
    from prefect.artifacts import create_markdown_artifact

    run_id = overview_of(summary).run_id if summary else audit.run_id if audit else "unnamed"
    return create_markdown_artifact(
        markdown=run_markdown(summary, audit, report_url),
        key=artifact_key(run_id),
        description=f"llie archive run {run_id}: counts, quality, speed",
    )


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow or task run
        return logging.getLogger(__name__)


def publish_run_report(
    output_url: str,
    run_id: str,
    flow_summary: RunOverview | dict[str, Any] | None = None,
    storage_options: storage.StorageOptions = None,
    rows: pa.Table | None = None,
) -> str | None:
    """Audit the run, write its HTML report, publish the artifact; returns the report URL.

    Meant to be called at the end of the flow (inside its run, so the artifact is attached to
    it), with the ``rows`` it has read already (None: read them here). The report is written unless
    the environment has ``LLIE_RUN_REPORT=0``. A resume that processed nothing
    (``flow_summary`` with ``processed`` 0) keeps the existing report file instead of rewriting it: a
    no-op rerun leaves the output tree untouched.

    Any failure is logged as a warning and the rest still happens (no rows yet: the artifact
    carries the flow's summary alone; no API: the report is still written).
    """
    from llie.audit import report as report_mod
    from llie.audit import summary as audit

    report = os.environ.get("LLIE_RUN_REPORT", "1").strip().lower() not in ("0", "false", "no", "off")
    logger = _logger()
    overview = overview_of(flow_summary) if flow_summary else None
    run_summary, url = None, None
    try:
        if rows is None:
            run = audit.load_run(output_url, run_id, storage_options)
        else:
            run = audit.run_from_rows(output_url, run_id, rows, storage_options)
        run_summary = audit.summarise(run)
        target = RunLayout(output_url, run_id).report_url
        if report and overview and overview.processed == 0 and storage.exists(target, storage_options):
            url = target  # nothing changed since it was written
        elif report:
            url = report_mod.write_report(run, run_summary, target, storage_options=storage_options).html_url
            logger.info("report: %s", storage.redact_url(url))
    except Exception as exc:
        reason = storage.describe_error(exc, storage.url_secrets(output_url))
        logger.warning("no audit report for run %s: %s", run_id, reason)
    if overview is None and run_summary is None:
        overview = RunOverview(run_id, 0)
    try:
        publish_run_artifact(overview, storage.redact_url(url) if url else None, run_summary)
    except Exception as exc:
        logger.warning("could not publish the run artifact: %s", storage.describe_error(exc))
    return url
