"""``llie audit``: quality, problems and speed of archive runs, from their Parquet metrics.

Registered on the ``llie`` group by ``llie_cli.main``. Imports stay inside the command so that
``llie --help`` does not pay for pyarrow or matplotlib.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import click

from llie_cli.options import storage_option_flag

# llie.audit.summary.RANK_METRICS, spelled out so that importing the CLI does not import pyarrow.
RANK_METRICS = ("psnr", "ssim")


@click.command("audit")
@click.argument("output_url")
@click.option("--run", "run_id", default=None, metavar="RUN_ID", help="Run to audit (default: the latest one).")
@click.option(
    "--compare",
    "compare_id",
    default=None,
    metavar="RUN_ID",
    help="Baseline run over the same inputs: per-image deltas (run - baseline) and the images that got worse.",
)
@click.option(
    "--compare-output",
    default=None,
    metavar="URL",
    help="OUTPUT_URL of the baseline run when it wrote elsewhere (default: OUTPUT_URL).",
)
@click.option(
    "--report",
    "report_path",
    default=None,
    metavar="PATH",
    help="Write the report as one self-contained HTML file (PATH.html, or PATH/report.html for a folder).",
)
# min 1: the ranking's "no images ranked" line (and the report's) would blame missing references.
@click.option(
    "--top", type=click.IntRange(min=1), default=5, show_default=True, help="How many worst and best images to list."
)
@click.option(
    "--rank-by",
    type=click.Choice(RANK_METRICS),
    default="psnr",
    show_default=True,
    help="Metric that ranks images (worst/best, and 'got worse' in --compare).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=None,
    help="With --compare: changes smaller than this count as unchanged (default 0.01 dB PSNR, 0.0005 SSIM).",
)
@click.option(
    "--json",
    "json_path",
    default=None,
    metavar="FILE",
    help="Also write everything (every image's deltas with --compare) as JSON; '-' for stdout.",
)
@click.option("--runs", "list_runs", is_flag=True, help="List the runs under OUTPUT_URL and exit.")
@click.option(
    "--fail-incomplete",
    is_flag=True,
    help="Exit with status 4 if the run has fewer rows than images in its plan (unfinished, or rows lost).",
)
@storage_option_flag
@click.option(
    "--fail-on-worse",
    is_flag=True,
    help="With --compare: exit with status 3 if any image got worse, and with an error (status 1) "
    "if no image could be compared (none in both runs, or none with a score in both).",
)
def audit(output_url: str, **options: Any) -> None:
    """Audit the image quality of an archive run from the Parquet that `llie run` writes.

    \b
    OUTPUT_URL is the OUTPUT_URL given to `llie run` (a folder or s3://bucket/prefix); the rows
    are read from OUTPUT_URL/_metrics/run_id=<ID>/*.parquet. Prints, per run: ok / error /
    skipped counts and the most common error reasons; PSNR and SSIM mean, median, 5th and 95th
    percentile where references exist; brightness, contrast and noise before and after;
    throughput and the share of time per stage; the worst and best images.

    \b
    Examples:
      llie audit enhanced/ --runs
      llie audit enhanced/                                  # the latest run
      llie audit s3://archive/enhanced --run 20250101T000000Z-1a2b3c --report audit.html
      llie audit enhanced/ --run new-model --compare old-model --fail-on-worse
    """
    from llie.audit import summary as au
    from llie.audit.text import format_runs
    from llie.batch import storage, storage_options

    o = SimpleNamespace(**options)  # the options by name, as click gives them
    opts = o.storage_option or None
    try:
        if o.list_runs:
            click.echo(format_runs(au.list_runs(output_url, opts)))
            return
        found = _load(output_url, o, opts)
    except au.AuditError as exc:
        raise click.ClickException(storage.scrub(str(exc), storage_options.credential_values(opts))) from None
    except ValueError as exc:  # an invalid run id (unreadable Parquet is an AuditError)
        raise click.UsageError(str(exc)) from None
    except FileNotFoundError as exc:
        raise click.ClickException(f"not found: {storage.redact_url(str(exc))}") from None
    _show(found, o, opts)
    if o.fail_incomplete and found.summary.missing:
        s = found.summary
        click.echo(f"run {s.run_id} is incomplete: {s.images} of {s.planned} planned images have a row", err=True)
        sys.exit(4)
    comparison = found.comparison
    if o.fail_on_worse and comparison is not None:
        if comparison.worse_count:
            sys.exit(3)
        nothing = comparison.nothing_compared()
        if nothing:  # a gate that compared nothing must not pass
            raise click.ClickException(f"--fail-on-worse: nothing compared by {comparison.metric}: {nothing}")


@dataclass(frozen=True)
class _Found:
    """What an audit read: the run and its summary; with --compare, the base run, its summary, the comparison."""

    run: Any
    summary: Any
    base: Any = None
    base_summary: Any = None
    comparison: Any = None


def _load(output_url: str, o: SimpleNamespace, opts: Any) -> _Found:
    from llie.audit import summary as au
    from llie.audit.comparison import compare

    if not o.compare_id:
        _refuse_without_compare(
            compare_output=bool(o.compare_output), fail_on_worse=o.fail_on_worse, tolerance=o.tolerance is not None
        )
    run = au.load_run(output_url, o.run_id, opts)
    summary = au.summarise(run, top=o.top, rank_by=o.rank_by)
    if not o.compare_id:
        return _Found(run, summary)
    base = au.load_run(o.compare_output or output_url, o.compare_id, opts)
    base_summary = au.summarise(base, top=o.top, rank_by=o.rank_by)
    return _Found(run, summary, base, base_summary, compare(run, base, metric=o.rank_by, tolerance=o.tolerance))


def _show(found: _Found, o: SimpleNamespace, opts: Any) -> None:
    """The text on stdout (unless the JSON goes there), the report and the JSON file."""
    from llie.audit.text import format_comparison, format_summary
    from llie.batch import storage

    to_stdout = o.json_path == "-"
    if not to_stdout:
        click.echo(format_summary(found.summary))
        if found.comparison is not None:
            click.echo("")
            click.echo(format_comparison(found.comparison, limit=max(o.top, 10)))
    if o.report_path:
        from llie.audit.report import Baseline, write_report

        baseline = None
        if found.comparison is not None and found.base is not None and found.base_summary is not None:
            baseline = Baseline(found.base, found.base_summary, found.comparison)
        files = write_report(found.run, found.summary, o.report_path, baseline, storage_options=opts)
        if not to_stdout:
            click.echo(f"\nreport  {storage.redact_url(files.html_url)}  ({len(files.plots)} plots inside)")
    if o.json_path:
        comparison = found.comparison.to_dict() if found.comparison else None
        text = _json({"summary": found.summary.to_dict(), "comparison": comparison})
        if to_stdout:
            click.echo(text)
        else:
            storage.write_bytes_atomic(o.json_path, text.encode("utf-8"))


def _refuse_without_compare(**given: bool) -> None:
    """Options that mean something only with --compare, given without it: ignoring them
    silently would let a gate (--fail-on-worse) pass without having compared anything."""
    for name, value in given.items():
        if value:
            raise click.UsageError(f"--{name.replace('_', '-')} needs --compare RUN_ID")


def _json(doc) -> str:
    """JSON without NaN/Infinity (not JSON): non-finite numbers become strings."""
    import math

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(doc), indent=2, default=str)
