"""A run's summary as a Prefect markdown artifact, so that it shows in the Prefect UI.

``publish_run_report`` is the flow's hook: at the end of ``enhance_archive`` it audits the run
from its Parquet (``llie.audit.summary``), writes the HTML report next to the metrics
(``_metrics/run_id=<id>/_report/report.html``, see ``llie.audit.report.report_url``) and publishes the
summary with a link to that report. It never raises: a report must not fail a finished run.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any
from uuid import UUID

from llie.batch import archive, storage

_MAX_LISTED = 5


def artifact_key(run_id: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "llie-run-" + (re.sub(r"[^a-z0-9-]+", "-", str(run_id).lower()).strip("-") or "unnamed")


def _cell(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _num(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):.{digits}f}{suffix}"
    except (TypeError, ValueError):
        return str(value)


def _stats(stats: dict | None, digits: int, suffix: str = "") -> str:
    if not stats:
        return "no references"
    return (
        f"mean {_num(stats['mean'], digits, suffix)}, median {_num(stats['median'], digits)}, "
        f"p5 {_num(stats['p5'], digits)}, p95 {_num(stats['p95'], digits)} (n={stats['n']})"
    )


def _link(url: str) -> str:
    href = url if "://" in url else "file://" + os.path.abspath(url)
    return f"[{_cell(url.rsplit('/', 1)[-1] or url)}]({href.replace(' ', '%20').replace(')', '%29')}) (`{_cell(url)}`)"


def summary_text(summary: dict[str, Any]) -> str:
    """The flow's summary (what ``enhance_archive`` returns) as a few lines a person reads."""
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
        lines.append(f"  to retry them: llie run ... --run-id {summary['run_id']} --retry-failed")
    return "\n".join(lines)


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
    problems = summary.get("problems") or []
    if problems:
        rows.append(
            (
                "most common problems",
                "; ".join(f"{_cell(reason)} ×{count}" for _, reason, count in problems[:_MAX_LISTED]),
            )
        )
    if "psnr" in summary or "ssim" in summary:
        rows.append(("PSNR (dB)", _stats(summary.get("psnr"), 2)))
        rows.append(("SSIM", _stats(summary.get("ssim"), 4)))
    elif get("mean_psnr") is not None:
        rows.append(("mean PSNR", _num(get("mean_psnr"), 2, " dB")))
    for name, nr in (summary.get("no_reference") or {}).items():
        before, after = (nr or {}).get("before"), (nr or {}).get("after")
        if before and after:
            rows.append((f"{name} before → after", f"{_num(before['mean'], 4)} → {_num(after['mean'], 4)}"))
    if flow.get("images_per_second") is not None:
        rows.append(
            (
                "throughput (this flow run)",
                f"{_num(flow['images_per_second'])} images/s, {flow.get('processed', '–')} processed in "
                f"{_num(flow.get('seconds'), 1)} s",
            )
        )
    if summary.get("images_per_second") is not None:
        rows.append(("throughput (from the rows)", f"{_num(summary['images_per_second'])} images/s"))
    share = summary.get("stage_share") or {}
    if share:
        top = sorted(share.items(), key=lambda kv: -kv[1])[:4]
        rows.append(("time per stage", ", ".join(f"{stage} {100 * v:.0f}%" for stage, v in top)))
    if get("shards") is not None or flow.get("failed_shards"):
        text = _cell(get("shards", "?"))
        if flow.get("shards_resumed"):
            text += f" ({flow['shards_resumed']} resumed)"
        if flow.get("failed_shards"):
            text += f"; **failed: {_cell(', '.join(flow['failed_shards'][:10]))}**"
        rows.append(("shards", text))
    for key, title in (("worst", "worst"), ("best", "best")):
        items = summary.get(key) or []
        if items:
            metric = summary.get("rank_by", "psnr")
            rows.append(
                (
                    f"{title} by {metric}",
                    ", ".join(
                        f"`{_cell(i['rel_path'])}` {_num(i['value'], 2 if metric == 'psnr' else 4)}"
                        for i in items[:_MAX_LISTED]
                    ),
                )
            )
    if summary.get("model_versions"):
        rows.append(("model", _cell(", ".join(summary["model_versions"]))))
    metrics_url = get("metrics_url") or (
        storage.redact_url(archive.metrics_url(summary["output_url"], summary["run_id"]))
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
    report: bool | None = None,
    top: int = 5,
    storage_options: storage.StorageOptions = None,
) -> str | None:
    """Audit the run, write its HTML report, publish the artifact; returns the report URL.

    Meant to be called at the end of the flow (inside its run, so the artifact is attached to
    it). ``report=None`` writes the report unless the environment has ``LLIE_RUN_REPORT=0``. A
    resume that processed nothing (``flow_summary["processed"] == 0``) keeps the existing report
    file instead of rewriting it: a no-op rerun leaves the output tree untouched.

    Any failure is logged as a warning and the rest still happens (no rows yet: the artifact
    carries the flow's summary alone; no API: the report is still written).
    """
    from llie.audit import report as report_mod
    from llie.audit import summary as audit

    if report is None:
        report = os.environ.get("LLIE_RUN_REPORT", "1").strip().lower() not in ("0", "false", "no", "off")
    logger = _logger()
    summary: dict[str, Any] = {"run_id": run_id}
    url = None
    try:
        run = audit.load_run(output_url, run_id, storage_options)
        run_summary = audit.summarise(run, top=top)
        summary = run_summary.to_dict()
        target = report_mod.report_url(output_url, run_id)
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
