"""A run's plan: list the archive, cut it into shards, check a resume against what it started with,
record the plan in the run's manifest; and, once the shards are done, read their rows and name their problems
(the run's overview: ``llie.audit.overview``)."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from llie.batch import archive, storage
from llie.batch.layout import METRICS_DIR, new_run_id, validate_run_id
from llie.batch.spec import RunSpec, auto_shard_size
from llie.method.refine import check_precision

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """What a run will do: its spec (with its run id) and its shards, in order."""

    spec: RunSpec
    shards: tuple[archive.Shard, ...]
    paths: tuple[str, ...]  # every listed image

    @property
    def images(self) -> int:
        return len(self.paths)

    def manifest(self) -> dict[str, Any]:
        """The plan as the run's manifest records it (URLs redacted)."""
        spec = self.spec
        return {
            "run_id": spec.run_id,
            "input_url": storage.redact_url(spec.input_url),
            "output_url": storage.redact_url(spec.output_url),
            "reference_url": storage.redact_url(spec.reference_url) if spec.reference_url else None,
            "model": spec.model,
            # the model_version of each row names the weights, not the arithmetic they ran in
            "refiner_precision": spec.refiner_precision,
            "shard_size": spec.shard_size,
            "shards": len(self.shards),
            "images": self.images,
        }


class SettingMismatch(ValueError):
    """A resumed run given a setting other than the one it was started with (``key``)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def check_spec(spec: RunSpec) -> RunSpec:
    """Refuse what no run may do, before anything is listed; returns the spec with its run id."""
    for url in (spec.input_url, spec.output_url, spec.reference_url):
        storage.check_no_credentials(url)
    storage.check_folders_apart(spec.input_url, spec.output_url, spec.reference_url, spec.storage_options)
    run_id = validate_run_id(spec.run_id) if spec.run_id else new_run_id()
    if spec.shard_size is not None and spec.shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    check_precision(spec.refiner_precision, "refiner_precision")  # the run parameter's name
    return dataclasses.replace(spec, run_id=run_id)


def _list_images(spec: RunSpec, logger: Any) -> dict[str, str]:
    """Each image under the input and its version (size and mtime, ETag on S3), the reserved folder left out."""
    unreadable: list[str] = []
    versions = storage.list_image_versions(spec.input_url, spec.storage_options, unreadable=unreadable)
    for folder in unreadable:  # the rest of the archive runs; the folder is named, its images left out
        logger.warning("cannot read folder %s of the input: its images are left out", storage.one_line(folder))
    reserved = [p for p in versions if p.split("/", 1)[0] == METRICS_DIR]
    if reserved:
        logger.warning("ignoring %d image(s) under %s/: that name is reserved for metrics", len(reserved), METRICS_DIR)
    return {p: v for p, v in versions.items() if p.split("/", 1)[0] != METRICS_DIR}


def _comparable(value: Any) -> Any:
    """A setting as a resume compares it: "photos/" and "photos" name the same folder."""
    return value.rstrip("/") or value if isinstance(value, str) else value


def _check_resume(plan: RunPlan, previous: dict[str, Any], logger: Any) -> None:
    """Refuse to mix a resumed run's finished shards with work done under other settings."""
    spec, manifest = plan.spec, plan.manifest()
    if previous:  # runs from before the manifest recorded the precision ran in float32
        previous = {"refiner_precision": "float32", **previous}
    for key in ("shard_size", "input_url", "model", "refiner_precision"):
        if key in previous and _comparable(previous[key]) != _comparable(manifest[key]):
            raise SettingMismatch(
                key,
                f"run {spec.run_id} was started with {key}={previous[key]!r}, not {manifest[key]!r}; "
                "resume it with the same settings, or start a new run_id",
            )
    planned = {s.shard_id for s in plan.shards}
    for stale in sorted(set(archive.shard_files(spec.output_url, spec.run_id, spec.storage_options)) - planned):
        # The archive shrank since this run started: that file describes a shard that no longer
        # exists and would otherwise show up as duplicate rows in the dataset.
        logger.warning("removing %s from run %s: not part of the current plan", stale, spec.run_id)
        storage.remove(spec.layout.shard_url(stale), spec.storage_options)


def plan_run(spec: RunSpec, logger: Any = None, workers: int = 1) -> RunPlan:
    """List the archive, cut it into shards (keeping a resumed run's finished ones), write the manifest.

    Without a ``spec.shard_size``, a resumed run keeps its own, and a new one gets :func:`auto_shard_size`
    for its images on ``workers``.
    """
    logger = logger or _log
    spec = check_spec(spec)
    versions = _list_images(spec, logger)
    paths = sorted(versions)
    previous = archive.read_run_manifest(spec.output_url, spec.run_id, spec.storage_options) or {}
    if spec.shard_size is None:
        size = previous.get("shard_size") or auto_shard_size(len(paths), workers)
        spec = dataclasses.replace(spec, shard_size=int(size))
    assert spec.shard_size is not None
    if not paths and previous.get("images"):
        # An unmounted share or a wrong prefix lists nothing; planning nothing would drop every
        # finished shard of this run as "no longer part of the plan" and report success.
        raise ValueError(
            f"{storage.redact_url(spec.input_url)} lists no images, but run {spec.run_id} had {previous['images']}: "
            "refusing to drop its results (is the input mounted?)"
        )
    # A resumed run keeps the shards it finished, so images added since go into new shards and the
    # finished ones are skipped rather than re-cut (archive.extend_plan).
    finished = archive.shard_membership(spec.output_url, spec.run_id, spec.storage_options) if previous else {}
    shards = archive.with_versions(archive.extend_plan(paths, spec.shard_size, finished), versions)
    plan = RunPlan(spec, tuple(shards), tuple(paths))
    _check_resume(plan, previous, logger)
    manifest = plan.manifest()
    # A resume that changes nothing leaves the manifest (and its started_at) alone.
    if any(previous.get(k) != v for k, v in manifest.items()):
        started = {**manifest, "started_at": datetime.now(UTC).isoformat()}
        archive.write_run_manifest(spec.output_url, spec.run_id, started, spec.storage_options)
    logger.info(
        "run %s: %d images in %d shards from %s -> %s",
        spec.run_id,
        plan.images,
        len(shards),
        manifest["input_url"],
        manifest["output_url"],
    )
    return plan


def remove_partial_files(plan: RunPlan) -> list[str]:
    """Temporary files of writers killed half way (a lost worker, a run killed with -9), once no task writes.

    The report is written after this, so its folder's leftovers can only be from a writer that was killed.
    """
    spec, layout = plan.spec, plan.spec.layout
    written = [*plan.paths, *(layout.shard_rel(s.shard_id) for s in plan.shards), layout.manifest_rel]
    stale = storage.remove_stale_temps(spec.output_url, written, spec.storage_options)
    return stale + storage.remove_stale_temps_in(layout.report_dir_url, spec.storage_options)


def read_rows(plan: RunPlan) -> pa.Table | None:
    """Every row of the run's shard files (None before any is written): the run's record, read once."""
    spec = plan.spec
    if not archive.shard_files(spec.output_url, spec.run_id, spec.storage_options):
        return None
    return archive.read_metrics(spec.output_url, spec.run_id, spec.storage_options)


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def common_problems(plan: RunPlan, rows: pa.Table | None, limit: int = 5) -> list[str]:
    """The run's problems as a few lines, one per kind (its numbers aside), most common first, with an
    example: ten thousand skipped photos are one line of the run's log, not one (or six) per shard."""
    if rows is None:
        return []
    planned = {s.shard_id for s in plan.shards}
    kinds: Counter[tuple[str, str]] = Counter()
    example: dict[tuple[str, str], tuple[str, str]] = {}
    columns = (rows.column(name).to_pylist() for name in ("shard_id", "status", "error", "rel_path"))
    for shard_id, status, error, rel in zip(*columns):
        if shard_id in planned and status != "ok":
            kind = (status, _NUMBER.sub("N", storage.one_line(error or "")))
            kinds[kind] += 1
            example.setdefault(kind, (rel, storage.one_line(error or "")))
    lines = [
        f"{count} image(s) {status}, e.g. {storage.quote_name(example[(status, k)][0])}: {example[(status, k)][1]}"
        for (status, k), count in kinds.most_common(limit)
    ]
    if len(kinds) > limit:
        lines.append(f"... and {len(kinds) - limit} other kind(s) of problem: llie audit lists them")
    return lines
