"""Audit an archive run from its Parquet metrics: counts, quality and speed (``llie.audit.comparison``
compares two runs).

Pure functions over the dataset the archive flow writes (see ``docs/parquet_schema.md``)::

    <output_url>/_metrics/run_id=<run_id>/<shard_id>.parquet

Nothing here knows about Prefect, Dask or matplotlib; ``llie.audit.text`` writes the tables,
``llie.audit.report`` draws the pictures and ``llie_cli.audit`` is the command line. Every URL may be local or an fsspec URL (``s3://...``);
credentials come from ``storage_options`` or the environment, never from the URL.

Conventions, so that the numbers can be reproduced with any Parquet reader:

* percentiles interpolate linearly between order statistics (numpy's default, DuckDB's
  ``quantile_cont``, pyarrow's ``quantile(interpolation="linear")``);
* quality statistics (PSNR, SSIM, no-reference statistics) use ``ok`` rows only, and only
  finite values: a PSNR of ``inf`` (output identical to its reference) is counted in
  ``infinite`` but kept out of the mean and the percentiles;
* stage times sum over every row, failed ones included (they did spend that time);
* worst/best images are ranked by one metric (PSNR by default), ties broken by ``rel_path``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llie.audit.flagged import flag_without_references
from llie.audit.overview import RunOverview
from llie.audit.rows import ImageScore, RunData, finite, floats, image_score, ok_mask, take_rows
from llie.batch import archive, storage
from llie.batch.layout import RunLayout

RANK_METRICS = ("psnr", "ssim")
NR_SHOWN = ("brightness", "contrast", "noise")
# exposure_kept below this: a photo brightened mostly toward the model's neutral brightness
NEUTRAL_BELOW = 0.5


class AuditError(ValueError):
    """The audit cannot be made: no such run, no metrics at that URL, ..."""


# --------------------------------------------------------------------------- loading


@dataclass
class RunInfo:
    run_id: str
    images: int
    ok: int
    error: int
    skipped: int
    mean_psnr: float | None
    first_finished: str | None
    last_finished: str | None
    model_versions: list[str] = field(default_factory=list)


def _fs(url: str, storage_options: storage.StorageOptions):
    fs, path = storage.filesystem(url, storage_options)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    return fs, path


def _run_folders(output_url: str, storage_options: storage.StorageOptions = None) -> list[str]:
    """run ids with a ``run_id=<id>`` folder under ``_metrics`` (finished or not)."""
    return archive.run_ids(output_url, storage_options)


def _dataset(output_url: str, storage_options: storage.StorageOptions = None):
    try:
        return archive.metrics_dataset(output_url, None, storage_options)
    except archive.MetricsFileError as exc:
        raise AuditError(str(exc)) from None


def _unreadable(url: str, exc: Exception, storage_options: storage.StorageOptions = None) -> AuditError:
    """``exc`` (pyarrow could not read the metrics under ``url``) as an error naming the bad file.

    A damaged or foreign file is a fault in the data, not in the command line. pyarrow's own
    message names the file for some faults (not Parquet at all) but not for others (a column
    of another type), and never with its URL scheme: each file is read again, alone, the same
    way, to find the first one that fails.
    """
    import pyarrow.dataset as ds

    fs, root = _fs(url, storage_options)
    for fragment in ds.dataset(root, filesystem=fs, format="parquet", schema=archive.METRICS_SCHEMA).get_fragments():
        try:
            fragment.to_table(schema=archive.METRICS_SCHEMA)
        except pa.ArrowException as file_exc:
            file_url = str(url).rstrip("/") + "/" + fragment.path[len(root.rstrip("/")) :].lstrip("/")
            return AuditError(
                f"unreadable metrics file {storage.redact_url(file_url)}: {storage.redact_url(str(file_exc))}"
            )
    return AuditError(f"unreadable metrics under {storage.redact_url(url)}: {storage.redact_url(str(exc))}")


def list_runs(output_url: str, storage_options: storage.StorageOptions = None) -> list[RunInfo]:
    """Every run under ``output_url``, oldest first (by its last finished image).

    Reads five columns of the whole dataset, never the images.
    """
    folders = _run_folders(output_url, storage_options)
    if not folders:
        return []
    try:
        table = _dataset(output_url, storage_options).to_table(
            columns=["run_id", "status", "psnr", "finished_at", "model_version"]
        )
    except pa.ArrowException as exc:
        raise _unreadable(archive.metrics_root(output_url), exc, storage_options) from None
    counts: dict[str, Counter] = {r: Counter() for r in folders}
    for row in table.group_by(["run_id", "status"]).aggregate([("status", "count")]).to_pylist():
        counts.setdefault(row["run_id"], Counter())[row["status"]] = row["status_count"]
    finite_ok = pc.and_(pc.equal(table.column("status"), "ok"), pc.is_finite(table.column("psnr")))
    means = {
        r["run_id"]: r["psnr_mean"]
        for r in table.filter(pc.fill_null(finite_ok, False))
        .group_by("run_id")
        .aggregate([("psnr", "mean")])
        .to_pylist()
    }
    spans = {
        r["run_id"]: r
        for r in table.group_by("run_id")
        .aggregate([("finished_at", "min"), ("finished_at", "max"), ("model_version", "distinct")])
        .to_pylist()
    }
    runs = []
    for run_id in sorted(counts):
        statuses, span = counts[run_id], spans.get(run_id, {})
        first, last = span.get("finished_at_min"), span.get("finished_at_max")
        runs.append(
            RunInfo(
                run_id=run_id,
                images=sum(statuses.values()),
                ok=statuses.get("ok", 0),
                error=statuses.get("error", 0),
                skipped=statuses.get("skipped", 0),
                mean_psnr=means.get(run_id),
                first_finished=first.isoformat() if first else None,
                last_finished=last.isoformat() if last else None,
                model_versions=sorted(v for v in span.get("model_version_distinct") or [] if v),
            )
        )
    # Unfinished runs (a folder, no rows yet) sort first; default run ids sort by time anyway.
    return sorted(runs, key=lambda r: (r.last_finished or "", r.run_id))


def latest_run(output_url: str, storage_options: storage.StorageOptions = None) -> str:
    runs = [r for r in list_runs(output_url, storage_options) if r.images]
    if not runs:
        raise AuditError(f"no metrics under {storage.redact_url(archive.metrics_root(output_url))}")
    return runs[-1].run_id


def load_run(output_url: str, run_id: str | None = None, storage_options: storage.StorageOptions = None) -> RunData:
    """One run's rows (the latest run when ``run_id`` is None), one row per image.

    Should an image have two rows (it cannot happen through the flow, whose shard files are
    replaced, never appended to, but files can be copied around by hand), the latest one by
    ``finished_at`` is kept and the others are counted in ``duplicates``.
    """
    if run_id is None:
        run_id = latest_run(output_url, storage_options)
    archive.validate_run_id(run_id)
    if run_id not in _run_folders(output_url, storage_options):
        known = ", ".join(_run_folders(output_url, storage_options)) or "none"
        raise AuditError(f"no run {run_id!r} under {storage.redact_url(output_url)} (runs: {known})")
    try:
        table = archive.read_metrics(output_url, run_id, storage_options)
    except archive.MetricsFileError as exc:
        raise AuditError(str(exc)) from None
    except pa.ArrowException as exc:
        raise _unreadable(RunLayout(output_url, run_id).metrics_url, exc, storage_options) from None
    return run_from_rows(output_url, run_id, table, storage_options)


def run_from_rows(
    output_url: str, run_id: str, table: pa.Table, storage_options: storage.StorageOptions = None
) -> RunData:
    """:func:`load_run` of rows already read (``archive.read_metrics``), as the flow has them at its end."""
    if table.num_rows == 0:
        raise AuditError(f"run {run_id!r} has no finished shards yet")
    table, duplicates = _latest_row_per_image(table)
    manifest = None
    try:
        manifest = archive.read_run_manifest(output_url, run_id, storage_options)
    except Exception:  # an unreadable manifest costs the reference column of the contact sheet only
        manifest = None
    return RunData(run_id=run_id, output_url=output_url, table=table, manifest=manifest, duplicates=duplicates)


def _latest_row_per_image(table: pa.Table) -> tuple[pa.Table, int]:
    order = pc.sort_indices(table, sort_keys=[("rel_path", "ascending"), ("finished_at", "ascending")])
    table = table.take(order)
    paths = table.column("rel_path").to_numpy(zero_copy_only=False)
    if paths.size < 2:
        return table, 0
    last = np.append(paths[1:] != paths[:-1], True)  # the last row of each rel_path run
    if last.all():
        return table, 0
    return table.filter(pa.array(last)), int((~last).sum())


# --------------------------------------------------------------------------- helpers


@dataclass
class Stats:
    """Distribution of one metric; percentiles by linear interpolation."""

    n: int
    mean: float
    median: float
    p5: float
    p95: float
    min: float
    max: float
    infinite: int = 0  # +inf values left out (PSNR of an output identical to its reference)

    @classmethod
    def of(cls, values: np.ndarray) -> Stats | None:
        values = np.asarray(values, dtype=np.float64)
        infinite = int(np.isinf(values).sum())
        values = finite(values)
        if values.size == 0:
            return None
        p5, median, p95 = np.percentile(values, [5, 50, 95])
        return cls(
            n=int(values.size),
            mean=float(values.mean()),
            median=float(median),
            p5=float(p5),
            p95=float(p95),
            min=float(values.min()),
            max=float(values.max()),
            infinite=infinite,
        )


def _error_reason(row: dict[str, Any]) -> str:
    """The error without the image's own path in it, so that equal causes group together."""
    reason = str(row.get("error") or "(no message)")
    for text in (row.get("input_path"), row.get("rel_path")):
        if text:
            reason = reason.replace(str(text), "<image>")
    return reason


# --------------------------------------------------------------------------- one run


@dataclass
class RunSummary:
    run_id: str
    output_url: str
    images: int
    ok: int
    error: int
    skipped: int
    unchanged: int  # ok rows of photos the method left as they were (their bytes copied)
    shards: int
    workers: int
    model_versions: list[str]
    duplicates: int
    first_finished: str | None
    last_finished: str | None
    # (status, reason, count), most common first
    problems: list[tuple[str, str, int]]
    # (warning, count) of ok rows, e.g. "no reference image"
    warnings: list[tuple[str, int]]
    references: int  # ok rows with a PSNR
    psnr: Stats | None
    ssim: Stats | None
    # name -> {"before": Stats, "after": Stats}, ok rows
    no_reference: dict[str, dict[str, Stats | None]]
    wall_seconds: float | None
    busy_seconds: float
    images_per_second: float | None
    images_per_busy_second: float | None
    bytes_in: int
    bytes_out: int
    stage_seconds: dict[str, float]
    stage_share: dict[str, float]
    rank_by: str
    worst: list[ImageScore]
    best: list[ImageScore]
    planned: int | None = None  # images in the run's plan (its manifest); None when it has none
    # when nothing is ranked (no references): llie.audit.flagged.FlaggedImage
    flagged: list[Any] = field(default_factory=list)
    # ok rows whose brightness the capture gate moved mostly to the neutral one (NEUTRAL_BELOW)
    neutral_exposure: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def overview(self) -> RunOverview:
        """The run at a glance, as the flow's summary shows it (the rows' wall clock for its time)."""
        return RunOverview(
            run_id=self.run_id,
            images=self.images,
            ok=self.ok,
            error=self.error,
            skipped=self.skipped,
            shards=self.shards,
            mean_psnr=self.psnr.mean if self.psnr else None,
            images_per_second=self.images_per_second,
            seconds=self.wall_seconds,
            output_url=self.output_url,
            metrics_url=storage.redact_url(RunLayout(self.output_url, self.run_id).metrics_url),
        )

    @property
    def missing(self) -> int:
        """Planned images without a row: an unfinished (or damaged) run, not a complete one."""
        return max(self.planned - self.images, 0) if self.planned is not None else 0


def _stage_seconds(table: pa.Table) -> dict[str, float]:
    return {s: float(np.nansum(floats(table.column(f"sec_{s}")))) for s in archive.STAGES}


def _wall_seconds(table: pa.Table, busy_per_row: np.ndarray) -> float | None:
    """From the first image's start (its finish minus its stage times) to the last finish.

    The only clock the rows carry; a run resumed later includes the pause in between.
    """
    if table.num_rows == 0:
        return None
    finished = pc.cast(table.column("finished_at"), pa.int64()).to_numpy(zero_copy_only=False) / 1e6
    start = float(np.min(finished - busy_per_row))
    return max(float(np.max(finished)) - start, 0.0)


def rank(run: RunData, metric: str = "psnr", n: int = 5) -> tuple[list[ImageScore], list[ImageScore]]:
    """(worst n, best n) ok images by ``metric`` (higher is better), ties by ``rel_path``.

    Rows without a finite value (no reference, PSNR of inf) are not ranked.
    """
    if metric not in RANK_METRICS:
        raise ValueError(f"rank metric must be one of {RANK_METRICS}, got {metric!r}")
    table = run.table
    values = run.column(metric)
    candidates = np.flatnonzero(ok_mask(table) & np.isfinite(values))
    if candidates.size == 0 or n <= 0:
        return [], []
    paths = table.column("rel_path").to_numpy(zero_copy_only=False)[candidates]
    ascending = candidates[np.lexsort((paths, values[candidates]))]
    descending = candidates[np.lexsort((paths, -values[candidates]))]

    def scores(indices: np.ndarray) -> list[ImageScore]:
        return [image_score(r, float(r[metric])) for r in take_rows(table, indices)]

    return scores(ascending[:n]), scores(descending[:n])


def summarise(run: RunData, top: int = 5, rank_by: str = "psnr") -> RunSummary:
    """Everything ``llie audit`` prints about one run."""

    table = run.table
    ok = ok_mask(table)
    statuses = Counter(table.column("status").to_pylist())

    psnr = run.column("psnr")[ok]
    no_reference = {
        name: {"before": Stats.of(run.column(f"before_{name}")[ok]), "after": Stats.of(run.column(f"after_{name}")[ok])}
        for name in NR_SHOWN
    }

    busy_per_row = np.nansum(np.stack([run.column(f"sec_{s}") for s in archive.STAGES]), axis=0)
    stage_seconds = _stage_seconds(table)
    busy = float(sum(stage_seconds.values()))
    wall = _wall_seconds(table, busy_per_row)
    worst, best = rank(run, rank_by, top)
    finished = table.column("finished_at")
    first, last = pc.min(finished).as_py(), pc.max(finished).as_py()
    return RunSummary(
        run_id=run.run_id,
        output_url=storage.redact_url(run.output_url),
        images=table.num_rows,
        ok=statuses.get("ok", 0),
        error=statuses.get("error", 0),
        skipped=statuses.get("skipped", 0),
        unchanged=int(pc.sum(pc.fill_null(table.column("unchanged"), False)).as_py() or 0),
        neutral_exposure=int(
            pc.sum(pc.fill_null(pc.less(table.column("exposure_kept"), NEUTRAL_BELOW), False)).as_py() or 0
        ),
        shards=len(set(table.column("shard_id").to_pylist())),
        workers=len(set(table.column("worker").to_pylist())),
        model_versions=sorted({v for v in table.column("model_version").to_pylist() if v}),
        duplicates=run.duplicates,
        first_finished=first.isoformat() if first else None,
        last_finished=last.isoformat() if last else None,
        problems=_problems(table, ok),
        warnings=_warnings(table, ok),
        references=int((~np.isnan(psnr)).sum()),
        psnr=Stats.of(psnr),
        ssim=Stats.of(run.column("ssim")[ok]),
        no_reference=no_reference,
        wall_seconds=wall,
        busy_seconds=busy,
        images_per_second=table.num_rows / wall if wall else None,
        images_per_busy_second=table.num_rows / busy if busy > 0 else None,
        bytes_in=int(np.nansum(run.column("bytes_in"))),
        bytes_out=int(np.nansum(run.column("bytes_out"))),
        stage_seconds=stage_seconds,
        stage_share={s: (v / busy if busy > 0 else 0.0) for s, v in stage_seconds.items()},
        rank_by=rank_by,
        worst=worst,
        best=best,
        planned=_planned_images(run.manifest),
        flagged=[] if worst or best else flag_without_references(run),
    )


def _problems(table: pa.Table, ok: np.ndarray) -> list[tuple[str, str, int]]:
    """(status, reason, count) of the rows that are not ok, most common first."""
    problems = Counter(
        (r["status"], _error_reason(r))
        for r in take_rows(table.select(["status", "error", "input_path", "rel_path"]), np.flatnonzero(~ok))
    )
    return [
        (status, reason, count) for (status, reason), count in sorted(problems.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _warnings(table: pa.Table, ok: np.ndarray) -> list[tuple[str, int]]:
    """(warning, count) of the ok rows, most common first."""
    warnings = Counter(w for w in table.filter(pa.array(ok)).column("warning").to_pylist() if w)
    return sorted(warnings.items(), key=lambda kv: (-kv[1], kv[0]))


def _planned_images(manifest: dict[str, Any] | None) -> int | None:
    planned = (manifest or {}).get("images")
    return planned if isinstance(planned, int) and not isinstance(planned, bool) and planned >= 0 else None
