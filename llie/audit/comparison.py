"""Two audited runs over the same inputs, compared image by image (``llie audit --compare``).

Deltas are ``run - baseline``, matched by ``rel_path``; quality values count for ``ok`` rows only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llie.audit.summary import RANK_METRICS, RunData, Stats
from llie.stats import mean_interval

# Metrics a comparison reports deltas for; "higher is better" only matters for the rank metric.
DELTA_METRICS = ("psnr", "ssim", "after_brightness", "after_contrast", "after_noise")
# Changes smaller than this are "unchanged" (thread-count nondeterminism in torch and XGBoost
# moves PSNR by far less than 0.01 dB).
DEFAULT_TOLERANCE = {"psnr": 0.01, "ssim": 0.0005}


@dataclass
class ImageDelta:
    rel_path: str
    base_status: str
    status: str
    base_value: float | None  # the rank metric in the baseline run
    value: float | None  # ... and in the audited run
    delta: float | None  # value - base_value
    input_path: str
    output_path: str | None
    base_output_path: str | None


@dataclass
class Comparison:
    """What changed from ``base_run_id`` (the baseline, ``--compare``) to ``run_id``.

    Deltas are ``run - baseline``: a positive PSNR delta means the audited run is better.
    """

    run_id: str
    base_run_id: str
    metric: str
    tolerance: float
    model_versions: list[str]
    base_model_versions: list[str]
    common: int
    only_in_run: list[str]
    only_in_base: list[str]
    # (rel_path, baseline status, status) where they differ
    status_changes: list[tuple[str, str, str]]
    # metric -> Stats of the per-image delta over images with a value in both runs
    deltas: dict[str, Stats | None]
    # metric -> 95% interval of the mean delta (llie.stats.mean_interval): whether the change is real
    delta_intervals: dict[str, list[float] | None]
    improved: int
    unchanged: int
    worse_count: int
    # images in both runs whose metric is missing (no reference, failed, inf) in one run or both,
    # and whose status did not go from ok to not ok or back: neither better, unchanged nor worse
    unscored: int
    # images with the metric in both runs: 0 means no score was compared at all
    scored: int
    # images that got worse: ok -> error/skipped first, then the largest metric drops
    worse: list[ImageDelta]
    # every common image: rel_path -> {metric: delta}
    per_image: dict[str, dict[str, float | None]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def nothing_compared(self) -> str | None:
        """Why no image could be compared by the metric, or None when some could.

        "0 worse" then means nothing: a gate (``--fail-on-worse``) must not pass on it.
        """
        if self.common == 0:
            return "no image is in both runs"
        if self.scored == 0:
            return f"no image has a {self.metric} in both runs"
        return None


def compare(run: RunData, base: RunData, metric: str = "psnr", tolerance: float | None = None) -> Comparison:
    """Per-image changes between two runs over the same inputs, matched by ``rel_path``."""
    if metric not in RANK_METRICS:
        raise ValueError(f"compare metric must be one of {RANK_METRICS}, got {metric!r}")
    tol = DEFAULT_TOLERANCE[metric] if tolerance is None else float(tolerance)
    now, then = _rows_by_path(run), _rows_by_path(base)
    common = sorted(now.keys() & then.keys())
    per_image: dict[str, dict[str, float | None]] = {}
    deltas: dict[str, list[float]] = {m: [] for m in DELTA_METRICS}
    status_changes, worse = [], []
    improved = unchanged = unscored = 0
    for rel in common:
        a, b = now[rel], then[rel]
        entry = per_image[rel] = _image_deltas(a, b)
        for m, delta in entry.items():
            if delta is not None:
                deltas[m].append(delta)
        if a["status"] != b["status"]:
            status_changes.append((rel, b["status"], a["status"]))
        d = entry[metric]
        regressed = b["status"] == "ok" and a["status"] != "ok"
        fixed = b["status"] != "ok" and a["status"] == "ok"
        if regressed or (d is not None and d < -tol):
            worse.append(_image_delta(rel, a, b, metric, d))
        elif fixed or (d is not None and d > tol):
            improved += 1
        elif d is None:  # no score to compare: "unchanged" would be a guess
            unscored += 1
        else:
            unchanged += 1
    # Status regressions first (delta None), then by how much worse, then by name.
    worse.sort(key=lambda w: (w.delta is not None, w.delta if w.delta is not None else 0.0, w.rel_path))
    return Comparison(
        run_id=run.run_id,
        base_run_id=base.run_id,
        metric=metric,
        tolerance=tol,
        model_versions=_model_versions(run),
        base_model_versions=_model_versions(base),
        common=len(common),
        only_in_run=sorted(now.keys() - then.keys()),
        only_in_base=sorted(then.keys() - now.keys()),
        status_changes=status_changes,
        deltas={m: Stats.of(np.array(v)) for m, v in deltas.items()},
        delta_intervals={m: list(mean_interval(v)) if len(v) > 1 else None for m, v in deltas.items()},
        improved=improved,
        unchanged=unchanged,
        worse_count=len(worse),
        unscored=unscored,
        scored=len(deltas[metric]),
        worse=worse,
        per_image=per_image,
    )


def _rows_by_path(run: RunData) -> dict[str, dict[str, Any]]:
    cols = ["rel_path", "status", "input_path", "output_path", *DELTA_METRICS]
    return {r["rel_path"]: r for r in run.table.select(cols).to_pylist()}


def _model_versions(run: RunData) -> list[str]:
    return sorted({v for v in run.table.column("model_version").to_pylist() if v})


def _value(row: dict[str, Any], name: str) -> float | None:
    """The row's finite value of ``name``, for ok rows only."""
    v = row[name] if row["status"] == "ok" else None
    return float(v) if v is not None and math.isfinite(v) else None


def _image_deltas(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    """metric -> a's value minus b's, None where either has none."""
    entry: dict[str, float | None] = {}
    for m in DELTA_METRICS:
        va, vb = _value(a, m), _value(b, m)
        entry[m] = None if va is None or vb is None else va - vb
    return entry


def _image_delta(rel: str, a: dict[str, Any], b: dict[str, Any], metric: str, delta: float | None) -> ImageDelta:
    return ImageDelta(
        rel_path=rel,
        base_status=b["status"],
        status=a["status"],
        base_value=_value(b, metric),
        value=_value(a, metric),
        delta=delta,
        input_path=a["input_path"],
        output_path=a["output_path"],
        base_output_path=b["output_path"],
    )
