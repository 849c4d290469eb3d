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
from llie.batch import storage
from llie.batch.layout import RunLayout

if TYPE_CHECKING:
    import pyarrow as pa

_MAX_LISTED = 5


def artifact_key(run_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "llie-run-" + (re.sub(r"[^a-z0-9-]+", "-", str(run_id).lower()).strip("-") or "unnamed")


def _cell(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _stats(stats: dict | None, digits: int, suffix: str = "") -> str:
    if not stats:
        return "no references"
    return (
        f"mean {number(stats['mean'], digits, suffix)}, median {number(stats['median'], digits)}, "
        f"p5 {number(stats['p5'], digits)}, p95 {number(stats['p95'], digits)} (n={stats['n']})"
    )


def _link(url: str) -> str:
    href = url if "://" in url else "file://" + os.path.abspath(url)
    return f"[{_cell(url.rsplit('/', 1)[-1] or url)}]({href.replace(' ', '%20').replace(')', '%29')}) (`{_cell(url)}`)"


def summary_text(summary: dict[str, Any], retry_command: str | None = None) -> str:
    """The flow's summary (what ``enhance_archive`` returns) as a few lines a person reads; ``retry_command``:
    the exact command that redoes its failed images, where the caller knows it."""
    psnr = summary.get("mean_psnr")
    lines = [
        f"run {summary['run_id']}: {summary['images']} images in {summary['shards']} shards "
        f"({summary['shards_resumed']} resumed)",
        f"  ok {summary['ok']}   errors {summary['errors']}   skipped {summary['skipped']}",
        f"  mean PSNR     {'n/a (no references)' if psnr is None else f'{psnr:.2f} dB'}",
        f"  throughput    {summary['images_per_second']:.2f} images/s "
        f"({summary['processed']} processed in {summary['seconds']:.1f} s)",
        f"  images        {summary['output_url']}",
        f"  metrics       {summary['metrics_url']}",
    ]
    if summary.get("failed_shards"):
        lines.append(f"  failed shards {', '.join(summary['failed_shards'][:10])}")
    if summary["errors"] or summary["skipped"]:
        retry = retry_command or f"llie run ... --run-id {summary['run_id']} --retry-failed"
        lines.append(f"  to retry them: {retry}")
    return "\n".join(lines)


def _audited_rows(summary: dict[str, Any], flow: dict[str, Any]) -> list[tuple[str, str]]:
    """What the audit of the rows found: problems, quality, before and after."""
    rows: list[tuple[str, str]] = []
    problems = summary.get("problems") or []
    if problems:
        listed = "; ".join(f"{_cell(reason)} ×{count}" for _, reason, count in problems[:_MAX_LISTED])
        rows.append(("most common problems", listed))
    if "psnr" in summary or "ssim" in summary:
        rows.append(("PSNR (dB)", _stats(summary.get("psnr"), 2)))
        rows.append(("SSIM", _stats(summary.get("ssim"), 4)))
    elif summary.get("mean_psnr", flow.get("mean_psnr")) is not None:
        rows.append(("mean PSNR", number(summary.get("mean_psnr", flow.get("mean_psnr")), 2, " dB")))
    for name, nr in (summary.get("no_reference") or {}).items():
        before, after = (nr or {}).get("before"), (nr or {}).get("after")
        if before and after:
            rows.append((f"{name} before → after", f"{number(before['mean'], 4)} → {number(after['mean'], 4)}"))
    return rows


def _speed_rows(summary: dict[str, Any], flow: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if flow.get("images_per_second") is not None:
        rows.append(
            (
                "throughput (this flow run)",
                f"{number(flow['images_per_second'])} images/s, {flow.get('processed', '–')} processed in "
                f"{number(flow.get('seconds'), 1)} s",
            )
        )
    if summary.get("images_per_second") is not None:
        rows.append(("throughput (from the rows)", f"{number(summary['images_per_second'])} images/s"))
    share = summary.get("stage_share") or {}
    if share:
        top = sorted(share.items(), key=lambda kv: -kv[1])[:4]
        rows.append(("time per stage", ", ".join(f"{stage} {100 * v:.0f}%" for stage, v in top)))
    return rows


def _shard_and_image_rows(summary: dict[str, Any], flow: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    shards = summary.get("shards", flow.get("shards"))
    if shards is not None or flow.get("failed_shards"):
        text = _cell("?" if shards is None else shards)
        if flow.get("shards_resumed"):
            text += f" ({flow['shards_resumed']} resumed)"
        if flow.get("failed_shards"):
            text += f"; **failed: {_cell(', '.join(flow['failed_shards'][:10]))}**"
        rows.append(("shards", text))
    metric = summary.get("rank_by", "psnr")
    for key in ("worst", "best"):
        items = summary.get(key) or []
        if items:
            digits = 2 if metric == "psnr" else 4
            listed = ", ".join(f"`{_cell(i['rel_path'])}` {number(i['value'], digits)}" for i in items[:_MAX_LISTED])
            rows.append((f"{key} by {metric}", listed))
    if summary.get("model_versions"):
        rows.append(("model", _cell(", ".join(summary["model_versions"]))))
    return rows


def run_markdown(summary: dict[str, Any], report_url: str | None = None) -> str:
    """A markdown table of a run summary.

    ``summary`` is either ``llie.audit.summary.RunSummary.to_dict()`` (optionally with the flow's own
    summary under ``"flow"``) or the dict the flow returns; missing entries are left out.
    """
    flow = summary.get("flow") or {}
    if not flow and "processed" in summary and "stage_share" not in summary:
        flow, summary = summary, {}  # the flow's own summary, nothing audited
    get = lambda key, default=None: summary.get(key, flow.get(key, default))  # noqa: E731
    rows: list[tuple[str, str]] = [("images", _cell(get("images", "–")))]
    errors = get("error", get("errors", 0))
    rows.append(("ok / error / skipped", f"{get('ok', 0)} / {errors} / {get('skipped', 0)}"))
    rows += _audited_rows(summary, flow) + _speed_rows(summary, flow) + _shard_and_image_rows(summary, flow)
    metrics_url = get("metrics_url") or (
        storage.redact_url(RunLayout(summary["output_url"], summary["run_id"]).metrics_url)
        if summary.get("output_url") and summary.get("run_id")
        else None
    )
    if metrics_url:
        rows.append(("metrics", f"`{_cell(metrics_url)}`"))
    rows.append(("report", _link(report_url) if report_url else "not written"))

    lines = [f"## llie run `{_cell(get('run_id', '?'))}`", "", "| | |", "|---|---|"]
    # Values are markdown already, their free text escaped where it was put in.
    lines += [f"| {_cell(k)} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def publish_run_artifact(summary: dict[str, Any], report_url: str | None = None) -> UUID:
    """Create the run's markdown artifact (key ``llie-run-<run id>``); returns its id.

    Inside a flow run the artifact is attached to it; a resumed run adds a new version under
    the same key.
    """
    from prefect.artifacts import create_markdown_artifact

    run_id = summary.get("run_id") or (summary.get("flow") or {}).get("run_id") or "unnamed"
    return create_markdown_artifact(
        markdown=run_markdown(summary, report_url),
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
    flow_summary: dict[str, Any] | None = None,
    storage_options: storage.StorageOptions = None,
    rows: pa.Table | None = None,
) -> str | None:
    """Audit the run, write its HTML report, publish the artifact; returns the report URL.

    Meant to be called at the end of the flow (inside its run, so the artifact is attached to
    it), with the ``rows`` it has read already (None: read them here). The report is written unless
    the environment has ``LLIE_RUN_REPORT=0``. A resume that processed nothing
    (``flow_summary["processed"] == 0``) keeps the existing report file instead of rewriting it: a
    no-op rerun leaves the output tree untouched.

    Any failure is logged as a warning and the rest still happens (no rows yet: the artifact
    carries the flow's summary alone; no API: the report is still written).
    """
    from llie.audit import report as report_mod
    from llie.audit import summary as audit

    report = os.environ.get("LLIE_RUN_REPORT", "1").strip().lower() not in ("0", "false", "no", "off")
    logger = _logger()
    summary: dict[str, Any] = {"run_id": run_id}
    url = None
    try:
        if rows is None:
            run = audit.load_run(output_url, run_id, storage_options)
        else:
            run = audit.run_from_rows(output_url, run_id, rows, storage_options)
        run_summary = audit.summarise(run)
        summary = run_summary.to_dict()
        target = RunLayout(output_url, run_id).report_url
        if report and (flow_summary or {}).get("processed") == 0 and storage.exists(target, storage_options):
            url = target  # nothing changed since it was written
        elif report:
            url = report_mod.write_report(run, run_summary, target, storage_options=storage_options).html_url
            logger.info("report: %s", storage.redact_url(url))
    except Exception as exc:
        reason = storage.describe_error(exc, storage.url_secrets(output_url))
        logger.warning("no audit report for run %s: %s", run_id, reason)
    if flow_summary:
        summary["flow"] = flow_summary
    try:
        publish_run_artifact(summary, storage.redact_url(url) if url else None)
    except Exception as exc:
        logger.warning("could not publish the run artifact: %s", storage.describe_error(exc))
    return url
