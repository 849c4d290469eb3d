"""Per-stage quality of a bundle on a paired set, with the plain protocol (8-bit output, no GT-mean)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from llie.audit.table import Table
from llie.method.pipeline import Enhancer
from llie.metrics import psnr, quantize8, ssim
from llie.stats import bootstrap_interval, paired_difference
from llie.training.data import Pair, load_rgb

CONFIDENCE = 0.95


def score(output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM of the 8-bit image a user would get, against the reference."""
    out8 = quantize8(output) / 255.0
    return {"psnr": psnr(out8, reference), "ssim": ssim(out8, reference)}


def evaluate_pairs(bundle: str | Path | None, pairs: list[Pair], device: str = "auto", progress: bool = True) -> dict:
    """Rows per pair with input, stage-3 and stage-4 scores, and their means."""
    enhancer = Enhancer.load(bundle, device=device)
    rows = []
    for pair in tqdm(pairs, desc="evaluate", disable=not progress):
        low, high = load_rgb(pair.low), load_rgb(pair.high)
        if low.shape != high.shape:
            raise ValueError(
                f"pair {pair.name}: the low image is {low.shape[1]}x{low.shape[0]}, "
                f"the high one {high.shape[1]}x{high.shape[0]}"
            )
        hist = enhancer.enhance(low, stages="hist").image
        row = {"name": pair.name}
        for stage, image in (("input", low), ("stage3", hist)):
            row.update({f"{stage}_{k}": v for k, v in score(image, high).items()})
        if enhancer.bundle.refiner is not None:
            full = enhancer.enhance(low, stages="full").image
            row.update({f"stage4_{k}": v for k, v in score(full, high).items()})
        rows.append(row)
    keys = [k for k in rows[0] if k != "name"] if rows else []
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return {
        "rows": rows,
        "mean": mean,
        "interval": _intervals(rows, keys),
        "confidence": CONFIDENCE,
        "model_version": enhancer.model_version,
    }


def _intervals(rows: list[dict], keys: list[str]) -> dict[str, list[float]]:
    out = {}
    for k in keys:
        values = [r[k] for r in rows]
        if np.all(np.isfinite(values)):  # an image identical to its reference has an infinite PSNR
            out[k] = list(bootstrap_interval(values, CONFIDENCE))
    return out


def compare_reports(report: dict, baseline: dict) -> dict:
    """Per-metric mean of (report - baseline) over the same pairs, with its paired bootstrap interval.

    An interval that contains 0 means this set of images does not show which model is better."""
    names, base_names = [r["name"] for r in report["rows"]], [r["name"] for r in baseline["rows"]]
    if names != base_names:
        raise ValueError("the two reports were not made on the same pairs in the same order")
    keys = [k for k in report["mean"] if k in baseline["mean"] and not k.startswith("input_")]
    out = {}
    for k in keys:
        diffs = np.array([r[k] - b[k] for r, b in zip(report["rows"], baseline["rows"])])
        if not np.all(np.isfinite(diffs)):  # an image identical to its reference in either report
            continue
        out[k] = paired_difference(diffs, CONFIDENCE)
    return {
        "model_version": report["model_version"],
        "baseline_version": baseline["model_version"],
        "confidence": CONFIDENCE,
        "metrics": out,
    }


def format_table(report: dict) -> str:
    rows, mean = report["rows"], report["mean"]
    keys = list(mean)
    fmt = lambda k, v: f"{v:.3f}" if "ssim" in k else f"{v:.2f}"
    body = [[r["name"], *(fmt(k, r[k]) for k in keys)] for r in rows]
    body.append(["**mean**", *(f"**{fmt(k, mean[k])}**" for k in keys)])
    intervals = report.get("interval", {})
    if intervals:
        label = f"{round(100 * report.get('confidence', CONFIDENCE))}% interval of the mean"
        cells = (f"{fmt(k, intervals[k][0])} to {fmt(k, intervals[k][1])}" if k in intervals else "n/a" for k in keys)
        body.append([label, *cells])
    return "\n".join(Table.of(["image", *keys], body).markdown())


def format_comparison(comparison: dict) -> str:
    """Markdown table of ``compare_reports``: difference, interval, and images better / worse."""
    pct = round(100 * comparison["confidence"])
    header = ["metric", "mean difference", f"{pct}% interval (paired)", "images better / worse", "shown by this set"]
    rows = []
    for k, c in comparison["metrics"].items():
        low, high = c["interval"]
        fmt = (lambda v: f"{v:+.4f}") if "ssim" in k else (lambda v: f"{v:+.2f}")
        verdict = "better" if low > 0 else "worse" if high < 0 else "no"
        rows.append([k, fmt(c["difference"]), f"{fmt(low)} to {fmt(high)}", f"{c['better']} / {c['worse']}", verdict])
    title = f"{comparison['model_version']} minus {comparison['baseline_version']}, same pairs"
    return "\n".join([title, "", *Table.of(header, rows).markdown()])
