"""The audit as pictures: PNG plots and one self-contained HTML report.

``write_report`` writes one file, ``report.html``: every plot embedded as a
``data:image/png;base64`` URI, no script, no stylesheet or font from the network, so it opens
offline and can be mailed as it is (a browser saves any plot with "Save image as").
Destinations may be local paths or fsspec URLs (``s3://...``).

Plots: PSNR and SSIM histograms, no-reference brightness / contrast / noise before and after,
time per stage, and before/after contact sheets of the worst and best images (thumbnails read by
each row's ``rel_path`` under the run's own folders, ``llie.audit.sources``). With a comparison, which then comes first: the mean change
per metric with its 95% interval (as ``llie audit --compare`` prints it) and the per-image PSNR
(or SSIM) of both runs against each other.

matplotlib is used through its object API with the Agg canvas only: no pyplot state, no display,
safe in a worker thread or a flow.
"""

from __future__ import annotations

import base64
import html
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from llie.audit.comparison import DELTA_METRICS, Comparison
from llie.audit.contact_sheet import Sheet, contact_sheet, flagged_sheet
from llie.audit.figures import Plot, figure, png_bytes
from llie.audit.numbers import number
from llie.audit.sources import PhotoRoots
from llie.audit.summary import (
    NR_SHOWN,
    ImageScore,
    RunData,
    RunSummary,
    Stats,
    finite,
    ok_mask,
)
from llie.audit.table import Table
from llie.audit.text import DIGITS, no_reference_rows
from llie.batch import archive, storage
from llie.batch.layout import RunLayout

FULL_WIDTH = 10.5  # inches: at figures.DPI, the page's text width, so that plots are shown at their own size
RUN_COLOR, BASE_COLOR, BEFORE_COLOR, AFTER_COLOR, WORSE_COLOR = "#1f77b4", "#aaaaaa", "#7f7f7f", "#ff7f0e", "#d62728"


@dataclass(frozen=True)
class Baseline:
    """The run a report compares with: its rows, its summary, and the comparison of the audited run with it."""

    run: RunData
    summary: RunSummary
    comparison: Comparison


@dataclass
class ReportFiles:
    html_url: str
    plots: tuple[str, ...] = ()  # names of the plots embedded in it


# --------------------------------------------------------------------------- figures


def _ok_values(run: RunData, column: str) -> np.ndarray:
    return finite(run.column(column)[ok_mask(run.table)])


def _bins(*arrays: np.ndarray, n: int = 30) -> np.ndarray:
    values = np.concatenate([a for a in arrays if a.size]) if any(a.size for a in arrays) else np.zeros(1)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5 * max(abs(lo) * 0.01, 1e-3), hi + 0.5 * max(abs(hi) * 0.01, 1e-3)
    t = np.linspace(0.0, 1.0, n + 1)
    return lo * (1 - t) + hi * t  # not linspace(lo, hi): hi - lo overflows for values near ±1e308


def metric_histogram(run: RunData, metric: str, stats: Stats | None, base: RunData | None = None) -> Plot | None:
    values = _ok_values(run, metric)
    base_values = _ok_values(base, metric) if base is not None else np.zeros(0)
    if values.size == 0 and base_values.size == 0:
        return None
    label = "PSNR (dB)" if metric == "psnr" else "SSIM"
    fig = figure(FULL_WIDTH, 3.6)
    ax = fig.add_subplot()
    bins = _bins(values, base_values)
    if base_values.size:
        ax.hist(
            base_values, bins=bins, color=BASE_COLOR, alpha=0.6, label=f"baseline {base.run_id} (n={base_values.size})"
        )
    # A step outline over the filled baseline: both stay visible where they coincide.
    ax.hist(
        values,
        bins=bins,
        color=RUN_COLOR,
        alpha=0.75,
        label=f"run {run.run_id} (n={values.size})",
        histtype="step" if base_values.size else "bar",
        linewidth=2,
    )
    ax.yaxis.get_major_locator().set_params(integer=True)
    if stats is not None:
        for x, style, name in ((stats.mean, "-", "mean"), (stats.p5, ":", "p5"), (stats.p95, ":", "p95")):
            ax.axvline(x, color="black", linestyle=style, linewidth=1)
            ax.annotate(name, (x, 1), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel(label)
    ax.set_ylabel("images")
    ax.legend(fontsize=8, loc="best")
    caption = (
        ""
        if stats is None
        else (
            f"mean {stats.mean:.{DIGITS[metric]}f}, median {stats.median:.{DIGITS[metric]}f}, "
            f"p5 {stats.p5:.{DIGITS[metric]}f}, p95 {stats.p95:.{DIGITS[metric]}f} over {stats.n} images"
        )
    )
    return Plot(f"{metric}_hist", f"{label} histogram", png_bytes(fig), caption)


def before_after_plot(run: RunData) -> Plot | None:
    columns = {name: (_ok_values(run, f"before_{name}"), _ok_values(run, f"after_{name}")) for name in NR_SHOWN}
    if not any(b.size or a.size for b, a in columns.values()):
        return None
    fig = figure(FULL_WIDTH, 3.4)
    axes = fig.subplots(1, len(NR_SHOWN))
    for ax, (name, (before, after)) in zip(axes, columns.items()):
        bins = _bins(before, after, n=25)
        ax.hist(before, bins=bins, color=BEFORE_COLOR, alpha=0.7, label="before (input)")
        ax.hist(after, bins=bins, color=AFTER_COLOR, alpha=0.7, label="after (output)")
        ax.set_title(name)
        ax.set_xlabel(name + (" (mean luma, 0-1)" if name == "brightness" else ""))
        ax.set_ylabel("images")
        ax.yaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    return Plot(
        "before_after",
        "Brightness, contrast and noise before / after",
        png_bytes(fig),
        "no-reference statistics of the input and of the enhanced output, ok images",
    )


def stage_plot(summary: RunSummary, base_summary: RunSummary | None = None) -> Plot:
    stages = list(archive.STAGES)
    per_image = [summary.stage_seconds[s] / max(summary.images, 1) for s in stages]
    fig = figure(FULL_WIDTH, 3.8)
    ax = fig.add_subplot()
    y = np.arange(len(stages))
    height = 0.4 if base_summary else 0.7
    if base_summary:
        base = [base_summary.stage_seconds[s] / max(base_summary.images, 1) for s in stages]
        ax.barh(y + height / 2, base, height=height, color=BASE_COLOR, label=f"baseline {base_summary.run_id}")
    bars = ax.barh(
        y - (height / 2 if base_summary else 0),
        per_image,
        height=height,
        color=RUN_COLOR,
        label=f"run {summary.run_id}",
    )
    for bar, stage in zip(bars, stages):
        ax.annotate(
            f" {100 * summary.stage_share[stage]:.1f}%",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=8,
        )
    ax.set_yticks(y, stages)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per image (mean); label: share of the run's busy time")
    ax.margins(x=0.15)
    if base_summary:
        ax.legend(fontsize=8, loc="lower right")
    return Plot(
        "stage_times",
        "Time per stage",
        png_bytes(fig),
        f"{summary.busy_seconds:.1f} s busy over {summary.images} images",
    )


def comparison_plot(comparison: Comparison, run: RunData, base: RunData) -> Plot | None:
    metric = comparison.metric
    now = dict(zip(run.table.column("rel_path").to_pylist(), run.column(metric)))
    then = dict(zip(base.table.column("rel_path").to_pylist(), base.column(metric)))
    pairs = [(then[p], now[p], p) for p, d in comparison.per_image.items() if d.get(metric) is not None]
    if not pairs:
        return None
    worse = {w.rel_path for w in comparison.worse}
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    bad = np.array([p[2] in worse for p in pairs])
    fig = figure(5.2, 5.0)
    ax = fig.add_subplot()
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", linewidth=0.8)
    ax.scatter(x[~bad], y[~bad], s=14, color=RUN_COLOR, label="same or better")
    if bad.any():
        ax.scatter(x[bad], y[bad], s=18, color=WORSE_COLOR, label="worse")
    unit = " (dB)" if metric == "psnr" else ""
    ax.set_xlabel(f"baseline {comparison.base_run_id}: {metric}{unit}")
    ax.set_ylabel(f"run {comparison.run_id}: {metric}{unit}")
    ax.legend(fontsize=8)
    return Plot(
        f"compare_{metric}",
        f"{metric.upper()} per image: run against baseline",
        png_bytes(fig),
        "above the diagonal: better in the audited run",
    )


# --------------------------------------------------------------------------- HTML


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f5f5f5; } td.l, th.l { text-align: left; }
figure { margin: 1em 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
figure.natural img { width: auto; max-width: 100%; }
figcaption { font-size: 0.85em; color: #555; } .muted { color: #777; } .bad { color: #b00; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _html_table(header: list[str], rows: list[list[str]], left: set[int] = frozenset({0})) -> str:
    """Cells are escaped here; pass plain text."""
    return Table.of(header, rows, left=left).html()


def _figure_html(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    caption = _e(plot.title) + (": " + _e(plot.caption) if plot.caption else "")
    # Contact sheets keep their pixel size (thumbnails blown up would only blur), and so does the square
    # scatter of a comparison; the other plots fill the width.
    css = ' class="natural"' if plot.name.startswith(("contact_", "compare_")) else ""
    return (
        f'<figure id="{_e(plot.name)}"{css}><img src="data:image/png;base64,{data}" alt="{_e(plot.title)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _summary_html(s: RunSummary) -> str:
    details = [("with reference", str(s.references)), ("workers", str(s.workers))]
    details.append(("model", ", ".join(s.model_versions) or "–"))
    parts = [Table.pairs(s.overview().rows() + details).html()]
    if s.duplicates:
        parts.append(f'<p class="bad">{s.duplicates} duplicate row(s) ignored (latest row per image kept).</p>')
    if s.problems:
        parts.append("<h3>Most common problems</h3>")
        parts.append(
            _html_table(["status", "count", "reason"], [[st, str(c), r] for st, r, c in s.problems[:10]], left={0, 2})
        )
    if s.warnings:
        parts.append("<h3>Warnings on ok images</h3>")
        parts.append(_html_table(["warning", "count"], [[w, str(c)] for w, c in s.warnings[:10]]))
    return "".join(parts)


def _quality_html(s: RunSummary) -> str:
    rows = []
    for label, st, d in (("PSNR (dB)", s.psnr, 2), ("SSIM", s.ssim, 4)):
        rows.append(
            [label, str(st.n if st else 0)]
            + [number(getattr(st, k) if st else None, d) for k in ("mean", "median", "p5", "p95", "min", "max")]
        )
    out = _html_table(["metric", "n", "mean", "median", "p5", "p95", "min", "max"], rows)
    if s.psnr and s.psnr.infinite:
        out += f'<p class="muted">{s.psnr.infinite} image(s) identical to their reference (PSNR ∞) are left out.</p>'
    if not s.references:
        out += '<p class="muted">No ok image has a reference: run with --reference for PSNR/SSIM.</p>'
    return out


def _nr_html(s: RunSummary) -> str:
    rows = no_reference_rows(s, missing="–")
    return _html_table(["statistic", "mean before", "mean after", "change", "median before", "median after"], rows)


def _speed_html(s: RunSummary) -> str:
    info = (
        f"<p>{number(s.images_per_second)} images/s over {number(s.wall_seconds, 1)} s of wall clock (first image "
        f"start to last finish), {number(s.images_per_busy_second)} images/s per busy worker; "
        f"{s.bytes_in:,} bytes read, {s.bytes_out:,} bytes written.</p>"
    )
    rows = [
        [
            st,
            number(s.stage_seconds[st], 3),
            number(s.stage_seconds[st] / max(s.images, 1), 4),
            f"{100 * s.stage_share[st]:.1f}%",
        ]
        for st in archive.STAGES
    ]
    return info + _html_table(["stage", "seconds", "per image", "share"], rows)


def _ranked_html(s: RunSummary, items: list[ImageScore]) -> str:
    # The ranking metric is one of these columns already (its name is in the section title).
    return _html_table(
        ["image", "psnr", "ssim", "brightness before", "brightness after"],
        [
            [
                i.rel_path,
                number(i.psnr, 2),
                number(i.ssim, 4),
                number(i.before_brightness, 3),
                number(i.after_brightness, 3),
            ]
            for i in items
        ],
    )


def _delta_row(c: Comparison, metric: str) -> list[str]:
    st, ci, d = c.deltas[metric], c.delta_intervals.get(metric), DIGITS.get(metric, 4)
    value = lambda key: number(getattr(st, key) if st else None, d, signed=True)  # noqa: E731
    interval = f"{number(ci[0], d, signed=True)} to {number(ci[1], d, signed=True)}" if ci else "–"
    return [metric, str(st.n if st else 0), value("mean"), interval, value("median"), value("p5"), value("p95")]


def _comparison_html(c: Comparison, limit: int = 100) -> str:
    d = DIGITS[c.metric]
    parts = [
        f"<p>Deltas are <b>run {_e(c.run_id)}</b> minus <b>baseline {_e(c.base_run_id)}</b>; models "
        f"{_e(', '.join(c.base_model_versions) or '–')} → {_e(', '.join(c.model_versions) or '–')}. "
        f"{c.common} image(s) in both runs, {len(c.only_in_run)} only in the run, {len(c.only_in_base)} only in "
        f"the baseline. By {_e(c.metric)} (tolerance {c.tolerance:g}): {c.improved} better, {c.unchanged} "
        f'unchanged, <span class="bad">{c.worse_count} worse</span>'
        + (f", {c.unscored} without a score in both runs" if c.unscored else "")
        + (f". Nothing compared: {_e(c.nothing_compared())}" if c.nothing_compared() else "")
        + ".</p>",
        _html_table(
            ["metric", "n", "mean delta", "mean 95% interval", "median", "p5", "p95"],
            [_delta_row(c, m) for m in DELTA_METRICS],
        ),
        '<p class="muted">An interval that holds 0: these images do not show a change of the mean.</p>',
    ]
    if c.worse:
        parts.append(f"<h3>Images that got worse ({c.worse_count})</h3>")
        parts.append(
            _html_table(
                ["image", f"baseline {c.metric}", f"run {c.metric}", "delta", "status"],
                [
                    [
                        w.rel_path,
                        number(w.base_value, d),
                        number(w.value, d),
                        number(w.delta, d, signed=True),
                        w.status if w.status == w.base_status else f"{w.base_status} → {w.status}",
                    ]
                    for w in c.worse[:limit]
                ],
            )
        )
        if c.worse_count > limit:
            parts.append(
                f'<p class="muted">… and {c.worse_count - limit} more (llie audit --json has every image).</p>'
            )
    return "".join(parts)


def build_plots(
    run: RunData,
    summary: RunSummary,
    baseline: Baseline | None = None,
    storage_options: storage.StorageOptions = None,
) -> list[Plot]:
    roots, rank = PhotoRoots.of_run(run.output_url, run.manifest), summary.rank_by
    base = baseline.run if baseline else None
    plots = [
        _drawn(metric_histogram, run, "psnr", summary.psnr, base),
        _drawn(metric_histogram, run, "ssim", summary.ssim, base),
        _drawn(before_after_plot, run),
        _drawn(stage_plot, summary, baseline.summary if baseline else None),
        _drawn(flagged_sheet, summary.flagged, roots, storage_options),
    ]
    for name, items in (("worst", summary.worst), ("best", summary.best)):
        title = f"{name.capitalize()} {len(items)} by {rank}"
        plots.append(_drawn(contact_sheet, items, Sheet(title, f"contact_{name}", rank), roots, storage_options))
    if baseline is not None:
        plots.append(_drawn(comparison_plot, baseline.comparison, run, baseline.run))
    return [p for p in plots if p is not None]


def _drawn(build: Any, *args: Any) -> Plot | None:
    """``build(*args)``, or no plot where its numbers cannot be drawn (a row's PSNR of 1e308 overflows
    matplotlib's transforms): the rest of the report stands, and the tables still show the numbers."""
    try:
        return build(*args)
    except (ValueError, ArithmeticError):  # numpy's LinAlgError is a ValueError
        return None


def render_html(summary: RunSummary, plots: list[Plot], comparison: Comparison | None = None) -> str:
    by_name = {p.name: p for p in plots}

    def fig(name: str) -> str:
        return _figure_html(by_name[name]) if name in by_name else ""

    s = summary
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>llie audit: run {_e(s.run_id)}</h1>",
        f'<p class="muted">{_e(s.output_url)} · images finished {_e(s.first_finished)} … {_e(s.last_finished)} · '
        f"report generated {generated}</p>",
    ]
    if comparison is not None:  # what a comparison is made for comes first
        body += [
            f"<h2>Compared with run {_e(comparison.base_run_id)}</h2>",
            _comparison_html(comparison),
            fig(f"compare_{comparison.metric}"),
        ]
    body += [
        "<h2>Images</h2>",
        _summary_html(s),
        "<h2>Quality against references</h2>",
        _quality_html(s),
        fig("psnr_hist"),
        fig("ssim_hist"),
        "<h2>No-reference statistics</h2>",
        _nr_html(s),
        fig("before_after"),
        "<h2>Throughput and time per stage</h2>",
        _speed_html(s),
        fig("stage_times"),
    ]
    body += _images_html(s, fig)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>llie audit {_e(s.run_id)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(b for b in body if b)
        + "</body></html>\n"
    )


def _images_html(s: RunSummary, fig: Callable[[str], str]) -> list[str]:
    """The worst and best images, or (no references) the flagged ones, with their contact sheets."""
    out: list[str] = []
    if s.worst or s.best:
        out += [
            f"<h2>Worst {len(s.worst)} by {_e(s.rank_by)}</h2>",
            _ranked_html(s, s.worst),
            fig("contact_worst"),
            f"<h2>Best {len(s.best)} by {_e(s.rank_by)}</h2>",
            _ranked_html(s, s.best),
            fig("contact_best"),
        ]
    elif s.flagged:
        out += [
            "<h2>Photos to look at</h2>",
            f'<p class="muted">No image has a {_e(s.rank_by)} value (no references): these are picked by '
            "no-reference statistics.</p>",
            _html_table(
                ["why", "image", "value", "brightness before", "brightness after"],
                [
                    [f.reason, f.image.rel_path, number(f.image.value, 3)]
                    + [number(f.image.before_brightness, 3), number(f.image.after_brightness, 3)]
                    for f in s.flagged
                ],
                left={0, 1},
            ),
            fig("contact_flagged"),
        ]
    else:
        out.append(f'<p class="muted">No image ranked: no ok image has a {_e(s.rank_by)} value.</p>')
    return out


def _split_destination(dest: str) -> tuple[str, str]:
    """(folder, html file name) of a ``--report`` argument: a .html file, or a folder."""
    dest = str(dest).rstrip("/")
    if dest.lower().endswith((".html", ".htm")):
        folder, name = posixpath.split(dest) if "/" in dest else (".", dest)
        return folder or "/", name
    return dest, "report.html"


def report_url(output_url: str, run_id: str) -> str:
    """Where the flow puts a run's report: inside its metrics folder, in ``_report/`` (llie.batch.layout)."""
    return RunLayout(output_url, run_id).report_url


def write_report(
    run: RunData,
    summary: RunSummary,
    dest: str,
    baseline: Baseline | None = None,
    storage_options: storage.StorageOptions = None,
) -> ReportFiles:
    """Write the one-file HTML report; ``dest`` is ``.../name.html`` or a folder (``report.html``)."""
    folder, name = _split_destination(dest)
    plots = build_plots(run, summary, baseline, storage_options)
    files = ReportFiles(html_url=storage.join(folder, name), plots=tuple(p.name for p in plots))
    page = render_html(summary, plots, baseline.comparison if baseline else None)
    storage.write_bytes_atomic(files.html_url, page.encode("utf-8"), storage_options)
    return files
