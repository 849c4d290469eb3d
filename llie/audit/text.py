"""The audit as plain text: ``llie audit``'s tables for one run, a comparison and the run list."""

from __future__ import annotations

import functools

from llie.audit.comparison import DELTA_METRICS, Comparison
from llie.audit.numbers import number
from llie.audit.summary import NEUTRAL_BELOW, NR_SHOWN, RunInfo, RunSummary
from llie.audit.table import Table
from llie.batch import archive


def no_reference_rows(s: RunSummary, missing: str) -> list[list[str]]:
    """Per no-reference statistic shown: its name, mean before and after, the change, median before and after."""
    rows = []
    for name in NR_SHOWN:
        b, a = s.no_reference[name]["before"], s.no_reference[name]["after"]
        rows.append(
            [
                name,
                number(b.mean if b else None, 4, missing=missing),
                number(a.mean if a else None, 4, missing=missing),
                number(a.mean - b.mean if a and b else None, 4, signed=True, missing=missing),
                number(b.median if b else None, 4, missing=missing),
                number(a.median if a else None, 4, missing=missing),
            ]
        )
    return rows


# audit texts show a missing number as "-"
_f = functools.partial(number, missing="-")
_signed = functools.partial(number, signed=True, missing="-")


def _table(header: list[str], rows: list[list[str]], left: set[int] | None = None) -> list[str]:
    """An aligned text table, indented under its title; numbers (columns not in ``left``) right-aligned."""
    return Table.of(header, rows, left={0} if left is None else left).text(indent="  ")


DIGITS = {"psnr": 2, "ssim": 4}
UNITS = {"psnr": " dB", "ssim": ""}


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def format_summary(s: RunSummary, max_reasons: int = 5) -> str:
    out = [f"run {s.run_id}"]
    models = ", ".join(s.model_versions) or "-"
    out.append(
        f"  model {models}; {s.workers} worker(s); finished {s.first_finished or '-'} .. {s.last_finished or '-'}"
    )
    if s.duplicates:
        out.append(f"  note: {s.duplicates} duplicate row(s) ignored (latest row per image kept)")
    out += _count_lines(s, max_reasons)
    out += _quality_lines(s)
    out += _throughput_lines(s)
    out += _ranked_lines(s)
    return "\n".join(out)


def _count_lines(s: RunSummary, max_reasons: int) -> list[str]:
    """Images per status, the most common problems and warnings."""
    out = ["", *s.overview().table().text(indent="  ")]
    if s.missing:
        out.append(f"incomplete: {s.images} of {s.planned} planned images have a row (resume the run to finish it)")
    if s.unchanged:
        out.append(f"  {s.unchanged} of the ok images left as they were (copied byte for byte)")
    if s.neutral_exposure:
        out.append(
            f"  {s.neutral_exposure} of the ok images brightened mostly toward the model's neutral brightness "
            f"(capture gate: exposure_kept below {NEUTRAL_BELOW:g})"
        )
    if s.problems:
        out += ["", "most common problems:"]
        out += _table(
            ["status", "count", "reason"],
            [[st, str(c), reason] for st, reason, c in s.problems[:max_reasons]],
            left={0, 2},
        )
        if len(s.problems) > max_reasons:
            out.append(f"  ... and {len(s.problems) - max_reasons} other reason(s)")
    if s.warnings:
        out.append("warnings (ok images): " + "; ".join(f"{w} x{c}" for w, c in s.warnings[:max_reasons]))
    return out


def _quality_lines(s: RunSummary) -> list[str]:
    """Reference quality (PSNR, SSIM) and the no-reference statistics before and after."""
    out = ["", f"reference quality ({s.references} of {s.ok} ok images have a reference):"]
    rows = []
    for name, st in (("PSNR (dB)", s.psnr), ("SSIM", s.ssim)):
        d = 2 if name.startswith("PSNR") else 4
        rows.append(
            [name, str(st.n) if st else "0"]
            + [_f(getattr(st, k) if st else None, d) for k in ("mean", "median", "p5", "p95")]
        )
    out += _table(["metric", "n", "mean", "median", "p5", "p95"], rows)
    if s.psnr and s.psnr.infinite:
        out.append(f"  ({s.psnr.infinite} image(s) identical to their reference: PSNR inf, not in the stats)")

    out += ["", "no-reference statistics, ok images (mean / median):"]
    rows = no_reference_rows(s, missing="-")
    out += _table(["stat", "before", "after", "change", "median before", "median after"], rows)
    return out


def _throughput_lines(s: RunSummary) -> list[str]:
    out = ["", "throughput (wall clock: first image start to last finish):"]
    out.append(
        f"  {_f(s.images_per_busy_second, 2)} images/s per busy worker; {_bytes(s.bytes_in)} read, "
        f"{_bytes(s.bytes_out)} written; {_f(s.busy_seconds, 1)} s busy in total"
    )
    out += _table(
        ["stage", "seconds", "share"],
        [[st, _f(s.stage_seconds[st], 2), f"{100 * s.stage_share[st]:5.1f}%"] for st in archive.STAGES],
    )
    return out


def _ranked_lines(s: RunSummary) -> list[str]:
    """The worst and best images by the rank metric."""
    if not (s.worst or s.best):
        return ["", f"no images ranked: no ok image has a {s.rank_by} (no references?)"]
    out: list[str] = []
    d, unit = DIGITS[s.rank_by], UNITS[s.rank_by]
    for title, items in (
        (f"worst {len(s.worst)} by {s.rank_by}", s.worst),
        (f"best {len(s.best)} by {s.rank_by}", s.best),
    ):
        out += ["", title + ":"]
        out += _table(
            ["image", s.rank_by + unit, "brightness before", "after"],
            [[i.rel_path, _f(i.value, d), _f(i.before_brightness, 3), _f(i.after_brightness, 3)] for i in items],
        )
    return out


def format_comparison(c: Comparison, limit: int = 10) -> str:
    out = [f"compare run {c.run_id} with baseline {c.base_run_id} (deltas are run - baseline)"]
    out.append(f"  models: {', '.join(c.base_model_versions) or '-'} -> {', '.join(c.model_versions) or '-'}")
    out.append(
        f"  {c.common} image(s) in both; {len(c.only_in_run)} only in {c.run_id}; "
        f"{len(c.only_in_base)} only in {c.base_run_id}"
    )
    unscored = f"; {c.unscored} without a score in both runs" if c.unscored else ""
    out.append(
        f"  by {c.metric} (tolerance {c.tolerance:g}): {c.improved} better, {c.unchanged} unchanged, "
        f"{c.worse_count} worse{unscored}"
    )
    nothing = c.nothing_compared()
    if nothing:
        out.append(f"  nothing compared by {c.metric}: {nothing}")
    out += ["", "per-image deltas (an interval that holds 0: these images do not show a change of the mean):"]
    out += _table(["metric", "n", "mean", "mean 95% interval", "median", "p5", "p95"], _delta_rows(c))
    if c.status_changes:
        out += ["", "status changes:"]
        out += _table(["image", "baseline", "run"], [[p, b, a] for p, b, a in c.status_changes[:limit]], left={0, 1, 2})
        if len(c.status_changes) > limit:
            out.append(f"  ... and {len(c.status_changes) - limit} more")
    if not c.worse:  # "no image got worse" only where images were compared
        out += ["", f"nothing compared by {c.metric}: {nothing}" if nothing else "no image got worse"]
    else:
        out += _worse_lines(c, limit)
    return "\n".join(out)


def _delta_rows(c: Comparison) -> list[list[str]]:
    """Per delta metric: n, mean, its 95% interval, median, p5, p95."""
    rows = []
    for m in DELTA_METRICS:
        st, ci = c.deltas[m], c.delta_intervals[m]
        dd = DIGITS.get(m, 4)
        rows.append(
            [
                m,
                str(st.n) if st else "0",
                _signed(st.mean if st else None, dd),
                f"{_signed(ci[0], dd)} to {_signed(ci[1], dd)}" if ci else "-",
                _signed(st.median if st else None, dd),
                _signed(st.p5 if st else None, dd),
                _signed(st.p95 if st else None, dd),
            ]
        )
    return rows


def _worse_lines(c: Comparison, limit: int) -> list[str]:
    d = DIGITS[c.metric]
    out = ["", f"images that got worse ({c.worse_count}):"]
    out += _table(
        ["image", f"baseline {c.metric}", f"run {c.metric}", "delta", "status"],
        [
            [
                w.rel_path,
                _f(w.base_value, d),
                _f(w.value, d),
                _signed(w.delta, d),
                w.status if w.status == w.base_status else f"{w.base_status} -> {w.status}",
            ]
            for w in c.worse[:limit]
        ],
    )
    if c.worse_count > limit:
        out.append(f"  ... and {c.worse_count - limit} more (--json has every image)")
    return out


def format_runs(runs: list[RunInfo]) -> str:
    if not runs:
        return "no runs"
    return "\n".join(
        Table.of(
            ["run", "images", "ok", "error", "skipped", "mean PSNR", "last finished", "model"],
            [
                [
                    r.run_id,
                    str(r.images),
                    str(r.ok),
                    str(r.error),
                    str(r.skipped),
                    _f(r.mean_psnr, 2),
                    r.last_finished or "-",
                    ", ".join(r.model_versions) or "-",
                ]
                for r in runs
            ],
            left={0, 6, 7},
        ).text()
    )
