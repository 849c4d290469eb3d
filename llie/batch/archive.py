"""Archive runs as shards: plan them, enhance one, record what happened in Parquet.

Nothing here knows about Prefect or Dask; the orchestration layers call these functions.

Metrics dataset layout (hive partitioned, one file per shard; every path in :mod:`llie.batch.layout`)::

    <output_url>/_metrics/run_id=<run_id>/<shard_id>.parquet

``run_id`` lives only in the folder name, never as a column inside the files: when a value
is stored twice, readers infer the folder value's type ("42" becomes an integer) and then
refuse to merge it with the string column. Readers get it back as a column through hive
partitioning (see :func:`read_metrics`); each file also carries it in its schema metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llie.batch import storage
from llie.batch.imageio import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    encode_image,
)
from llie.batch.layout import (  # noqa: F401 - METRICS_DIR, RUN_MANIFEST, new_run_id: part of this module's API
    METRICS_DIR,
    RUN_MANIFEST,
    RunLayout,
    is_run_id,
    metrics_root,
    new_run_id,
    validate_run_id,
)
from llie.batch.names import from_printable, printable  # noqa: F401 - archive.printable: part of its API
from llie.batch.scoring import reference_scores
from llie.batch.spec import RunSpec
from llie.metrics import no_reference_stats

SCHEMA_VERSION = 1
NR_STATS = ("brightness", "contrast", "entropy", "noise", "clipped")
PIPELINE_STAGES = ("features", "quantiles", "mapping", "refiner")
STAGES = ("read", "decode", *PIPELINE_STAGES, "metrics", "encode", "write")
STATUSES = ("ok", "error", "skipped")

_SHARD_FILE = re.compile(r"^shard-[0-9]{5,}\.parquet$")  # the names plan_shards gives, and only those


def _fields() -> list[pa.Field]:
    fields = [
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("rel_path", pa.string(), nullable=False),
        pa.field("input_path", pa.string(), nullable=False),
        pa.field("output_path", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("warning", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("psnr", pa.float64()),
        pa.field("ssim", pa.float64()),
    ]
    fields += [pa.field(f"before_{k}", pa.float64()) for k in NR_STATS]
    fields += [pa.field(f"after_{k}", pa.float64()) for k in NR_STATS]
    fields += [pa.field(f"sec_{s}", pa.float64()) for s in STAGES]
    fields += [
        pa.field("bytes_in", pa.int64()),
        pa.field("bytes_out", pa.int64()),
        # True: the method left the photo as it was, and its output is the input's bytes, copied
        pa.field("unchanged", pa.bool_()),
        # the share of stage 2's brightness the capture gate kept; null where the photo passed unchanged
        pa.field("exposure_kept", pa.float64()),
        pa.field("worker", pa.string(), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
    return fields


# Columns added since the first shard files: an older file without one reads as nulls (pyarrow's dataset).
ADDED_COLUMNS = frozenset({"unchanged", "exposure_kept"})

METRICS_SCHEMA: pa.Schema = pa.schema(_fields(), metadata={b"llie.schema_version": str(SCHEMA_VERSION).encode()})


@dataclass(frozen=True)
class Shard:
    """A fixed batch of relative image paths; the unit of work, retry and resume.

    ``versions``, when known, says which content of each path the plan saw (see
    :func:`llie.batch.storage.list_image_versions`), in the order of ``paths``: a resume redoes an image
    whose version changed since its row was written.
    """

    shard_id: str
    paths: tuple[str, ...]
    fingerprint: str
    versions: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)


def fingerprint_paths(paths: Iterable[str]) -> str:
    """Content fingerprint of a shard: if the archive changes, a stale shard file is detectable."""
    h = hashlib.sha256()
    for p in paths:
        # surrogateescape: a file name that is not valid UTF-8 must not crash the plan.
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def plan_shards(paths: Iterable[str], shard_size: int) -> list[Shard]:
    """Split paths into shards of at most ``shard_size``, the same way for the same listing.

    Paths are sorted and de-duplicated first, so the plan does not depend on listing order.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ordered = sorted(set(paths))
    shards = []
    for n, start in enumerate(range(0, len(ordered), shard_size)):
        chunk = tuple(ordered[start : start + shard_size])
        shards.append(Shard(f"shard-{n:05d}", chunk, fingerprint_paths(chunk)))
    return shards


def extend_plan(paths: Iterable[str], shard_size: int, finished: Mapping[str, Iterable[str]]) -> list[Shard]:
    """The plan of a resumed run over a listing that may have changed since it started.

    ``finished`` maps each shard id that already has a Parquet file to the images it holds. Such a
    shard keeps those of its images that are still listed, so an unchanged shard keeps its
    fingerprint and is skipped, and one that lost an image is redone without it. Every other image
    (new, or in a shard that never finished) goes into new shards numbered after the last finished
    one, in sorted order, at most ``shard_size`` each. Cutting the whole listing afresh instead
    would shift every shard after the first new image, and a nightly run would redo them all.
    Where that fresh cut (:func:`plan_shards`) leaves every finished shard as it is (nothing
    finished yet, or a run interrupted over an unchanged listing), it is the plan: the run then
    ends with the shards an uninterrupted run would have.
    """
    fresh = plan_shards(paths, shard_size)
    cut = {s.shard_id: set(s.paths) for s in fresh}
    if all(cut.get(shard_id) == set(images) for shard_id, images in finished.items()):
        return fresh
    listed, placed, shards = set(paths), set(), []
    for shard_id in sorted(finished):
        chunk = tuple(sorted((set(finished[shard_id]) & listed) - placed))
        if chunk:
            shards.append(Shard(shard_id, chunk, fingerprint_paths(chunk)))
            placed.update(chunk)
    first = 1 + max((int(s.rsplit("-", 1)[1]) for s in finished), default=-1)
    rest = sorted(listed - placed)
    for n, start in enumerate(range(0, len(rest), shard_size)):
        chunk = tuple(rest[start : start + shard_size])
        shards.append(Shard(f"shard-{first + n:05d}", chunk, fingerprint_paths(chunk)))
    return shards


def with_versions(shards: list[Shard], versions: dict[str, str]) -> list[Shard]:
    """The plan with the listed version of every image recorded in its shard."""
    return [dataclasses.replace(s, versions=tuple(versions.get(p, "") for p in s.paths)) for s in shards]


def source_versions_metadata(shard: Shard) -> dict[str, str]:
    """What a shard file records of the images it was made from (image -> version), as file metadata."""
    if not shard.versions:
        return {}
    return {
        "source_versions": json.dumps({printable(p): v for p, v in zip(shard.paths, shard.versions)}, sort_keys=True)
    }


def changed_sources(shard: Shard, metadata: dict[str, str]) -> set[str]:
    """The images of ``shard`` whose version differs from the one its shard file recorded.

    A file without the record (written before versions were kept) is taken as unchanged: redoing a
    whole archive on an upgrade would be worse than missing an edit made before it.
    """
    if not shard.versions or "source_versions" not in metadata:
        return set()
    recorded = json.loads(metadata["source_versions"])
    return {p for p, v in zip(shard.paths, shard.versions) if recorded.get(printable(p)) != v}


def write_run_manifest(
    output_url: str, run_id: str, manifest: dict[str, Any], storage_options: storage.StorageOptions = None
) -> None:
    """What a run was asked to do: lets a resume check its plan and a progress bar its total."""
    data = json.dumps({"schema_version": SCHEMA_VERSION, **manifest}, indent=2, sort_keys=True, default=str)
    url = RunLayout(output_url, run_id).manifest_url
    storage.write_bytes_atomic(url, data.encode(), storage_options, root=output_url)


def read_run_manifest(
    output_url: str, run_id: str, storage_options: storage.StorageOptions = None
) -> dict[str, Any] | None:
    url = RunLayout(output_url, run_id).manifest_url
    if not storage.exists(url, storage_options):
        return None
    try:
        manifest = json.loads(storage.read_bytes(url, storage_options))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise MetricsFileError(f"unreadable run manifest {storage.redact_url(url)}: {exc}") from None
    if not isinstance(manifest, dict):
        raise MetricsFileError(f"unreadable run manifest {storage.redact_url(url)}: not a JSON object")
    return manifest


def shard_files(output_url: str, run_id: str, storage_options: storage.StorageOptions = None) -> list[str]:
    """shard ids that have a Parquet file in this run (finished, or resumed from before)."""
    names = storage.list_files(RunLayout(output_url, run_id).metrics_url, storage_options)
    return [n[: -len(".parquet")] for n in names if _SHARD_FILE.match(n)]


def shard_membership(
    output_url: str, run_id: str, storage_options: storage.StorageOptions = None
) -> dict[str, list[str]]:
    """shard id -> the images its Parquet file holds, for every shard file of the run."""
    table = metrics_dataset(output_url, run_id, storage_options).to_table(columns=["shard_id", "rel_path"])
    membership: dict[str, list[str]] = {}
    for shard_id, rel in zip(table.column("shard_id").to_pylist(), table.column("rel_path").to_pylist()):
        membership.setdefault(shard_id, []).append(from_printable(rel))  # as the listing names it
    return membership


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _base_row(spec: RunSpec, shard: Shard, rel: str) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in METRICS_SCHEMA.names}
    try:
        input_path = spec.image_input_url(rel)
    except ValueError:  # recorded as given; reading it fails below with the reason, in the row
        input_path = str(spec.input_url).rstrip("/") + "/" + str(rel)
    row.update(
        run_id=spec.run_id,
        shard_id=shard.shard_id,
        rel_path=printable(rel),
        input_path=printable(storage.redact_url(input_path)),
        status="error",
    )
    return row


# Peak memory of enhancing one image, beyond what the process holds already: measured on CPU at 3 and
# 12 MP (205 and 485 MiB above the loaded model; decode, four stages, encode, metrics), rounded up.
MEMORY_FIXED_BYTES = 100 * 2**20
MEMORY_BYTES_PER_PIXEL = 40


class _Skipped(Exception):
    """The row is already filled in as ``skipped``: stop processing the image."""


def memory_needed(pixels: int) -> int:
    """About how much memory enhancing an image of ``pixels`` pixels takes at its peak."""
    return MEMORY_FIXED_BYTES + MEMORY_BYTES_PER_PIXEL * int(pixels)


def memory_shortfall(data: bytes, budget: int | None) -> str | None:
    """Why ``data`` must not be enhanced in ``budget`` bytes (read from its header), or None if it fits."""
    if budget is None:
        return None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as probe:  # the header only: no pixel is decoded
            width, height = probe.size
    except Exception:  # not an image PIL knows: decoding says why, in its own words
        return None
    needed = memory_needed(width * height)
    if needed <= budget:
        return None
    gib = 2**30
    return (
        f"not enough worker memory: {width}x{height} needs about {needed / gib:.1f} GiB, the worker has "
        f"{max(budget, 0) / gib:.1f} GiB left (give workers more memory, or lower --max-pixels)"
    )


def error_row(spec: RunSpec, shard: Shard, rel: str, error: str) -> dict[str, Any]:
    """The row of an image that could not be processed at all (its worker died), made outside a worker."""
    row = _base_row(spec, shard, rel)
    row.update(error=storage.one_line(error), worker="", finished_at=datetime.now(UTC))
    return row


Prefetched = tuple[Future, Future | None]  # the reads of an image's bytes and of its reference's


@dataclass
class _Image:
    """One image on its way through: the step it is at (named in its error) and the seconds of each stage."""

    rel: str
    row: dict[str, Any]
    prefetched: Prefetched | None = None
    step: str = "read"
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time ``name``; an exception leaves its time out, as the stage did not finish."""
        self.step = name
        started = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def _read(spec: RunSpec, image: _Image, reference: bool = False) -> bytes:
    if image.prefetched is not None:
        future = image.prefetched[1 if reference else 0]
        assert future is not None
        return future.result()  # the time spent waiting for it, not the whole read
    root = spec.reference_url if reference else spec.input_url
    assert root is not None
    return storage.read_inside(root, image.rel, spec.storage_options)


def _enhance(spec: RunSpec, enhancer: Any, image: _Image, memory_budget: int | None) -> None:
    """Read, decode, enhance, encode, write and score one image, filling in its row."""
    row = image.row
    with image.stage("read"):
        data = _read(spec, image)
    row["bytes_in"] = len(data)
    with image.stage("decode"):
        too_big = memory_shortfall(data, memory_budget)
        if too_big:
            row["status"], row["error"] = "skipped", too_big
            raise _Skipped
        img = decode_image(data, spec.limits)
    row.update(width=int(img.width), height=int(img.height), format=img.format)
    with image.stage("metrics"):
        before = no_reference_stats(img.rgb).as_dict("before_")
    image.step = "enhance"
    result = enhancer.enhance(img.rgb, stages=spec.stages, mask=img.opaque)
    for stage in PIPELINE_STAGES:
        image.seconds[stage] = float(result.seconds.get(stage, 0.0))
    with image.stage("encode"):
        # a photo left as it was is copied, not encoded again (generation loss, a bigger file)
        encoded = data if result.unchanged else encode_image(result.image, like=img, options=spec.encoding)
    row["unchanged"] = bool(result.unchanged)
    row["exposure_kept"] = None if result.unchanged else float(result.exposure_kept)
    out_url = spec.layout.image_url(image.rel)
    with image.stage("write"):
        # never through a link that leads out of the output (onto the originals, say)
        storage.write_bytes_atomic(out_url, encoded, spec.storage_options, root=spec.output_url)
    row.update(output_path=printable(storage.redact_url(out_url)), bytes_out=len(encoded))
    with image.stage("metrics"):
        after = no_reference_stats(result.image).as_dict("after_")
        for k in NR_STATS:
            row[f"before_{k}"] = float(before[f"before_{k}"])
            row[f"after_{k}"] = float(after[f"after_{k}"])
        if spec.reference_url is not None:
            image.step = "reference"
            read_reference = functools.partial(_read, spec, image, reference=True)
            row["psnr"], row["ssim"], row["warning"] = reference_scores(result.image, img, read_reference, spec.limits)
    row["status"] = "ok"


def process_image(
    spec: RunSpec,
    shard: Shard,
    rel: str,
    enhancer: Any,
    prefetched: Prefetched | None = None,
    memory_budget: int | None = None,
) -> dict[str, Any]:
    """Enhance one image and return its metrics row; failures become an ``error`` row.

    ``prefetched``: reads of the input's and the reference's bytes already under way (see
    :func:`process_shard`); they raise, when awaited, what a read here would have raised.
    """
    image = _Image(rel, _base_row(spec, shard, rel), prefetched)
    row = image.row
    # On every row, errors included: "which model saw this file" matters when a run is resumed.
    row["model_version"] = enhancer.model_version
    try:
        _enhance(spec, enhancer, image, memory_budget)
    except _Skipped:
        pass
    except ImageDecodeError as exc:
        # Over the pixel limit is a choice the caller made (--max-pixels), not a broken file.
        if isinstance(exc, ImageTooLargeError):
            row["status"] = "skipped"
        row["error"] = f"{image.step}: {storage.redact_url(str(exc))}"
    except Exception as exc:  # one bad image must not sink the shard
        if storage.is_unreachable(exc) or (image.step == "write" and storage.is_write_outage(exc)):
            # The store, not this image: fail the shard so that it is retried as a whole, instead
            # of recording every image it could not reach (or write: a full disk) as broken.
            raise
        row["error"] = f"{image.step}: {storage.describe_error(exc)}"
    # Every free text of the row, whichever branch wrote it: a library may quote the run's URL
    # credentials without a scheme ("KEY:SECRET@bucket"), which only the exact strings can catch.
    for key in ("error", "warning"):
        if row[key] is not None:
            row[key] = storage.scrub(row[key], spec.url_secrets())
    for stage in STAGES:
        row[f"sec_{stage}"] = image.seconds.get(stage)
    row["worker"] = worker_name()
    row["finished_at"] = datetime.now(UTC)
    return row


def process_shard(
    spec: RunSpec, shard: Shard, enhancer: Any, memory_budget: int | None = None, progress: bool = False
) -> list[dict[str, Any]]:
    """Enhance every image of a shard; one row per image, in shard order.

    Outputs are written atomically at the input's relative path, so running a shard twice
    (a retry, or Dask re-running work from a lost worker) just rewrites the same files.

    The bytes of the next ``spec.read_ahead`` images (and their references) are fetched on a
    background thread while the current one is computed: on an object store each read is a round
    trip, which then overlaps with the work instead of adding to it. Decoding and encoding stay on
    this thread: they are CPU work, and a worker has one core.
    """
    paths: Iterable[str] = shard.paths
    if progress:
        from tqdm.auto import tqdm

        paths = tqdm(paths, desc=shard.shard_id, unit="img")
    process = functools.partial(process_image, spec, shard, enhancer=enhancer, memory_budget=memory_budget)
    if spec.read_ahead < 1:
        return [process(rel) for rel in paths]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="llie-read") as pool:
        return _process_reading_ahead(spec, paths, pool, process)


def _process_reading_ahead(
    spec: RunSpec, paths: Iterable[str], pool: ThreadPoolExecutor, process: Callable[..., dict[str, Any]]
) -> list[dict[str, Any]]:
    def read(root: str, rel: str) -> bytes:
        # joined on the reader too, so that a path it refuses becomes this image's error row
        return storage.read_inside(root, rel, spec.storage_options)

    def fetch(rel: str) -> tuple[str, Prefetched]:
        image = pool.submit(read, spec.input_url, rel)  # first: it is needed first
        reference = pool.submit(read, spec.reference_url, rel) if spec.reference_url is not None else None
        return rel, (image, reference)

    rows: list[dict[str, Any]] = []
    queue: deque[tuple[str, Prefetched]] = deque()
    try:
        for rel in paths:
            queue.append(fetch(rel))
            if len(queue) > spec.read_ahead:
                rel_now, prefetched = queue.popleft()
                rows.append(process(rel_now, prefetched=prefetched))
        while queue:
            rel_now, prefetched = queue.popleft()
            rows.append(process(rel_now, prefetched=prefetched))
    finally:
        for _, (image, reference) in queue:  # a failed shard leaves nothing to wait for
            image.cancel()
            if reference is not None:
                reference.cancel()
    return rows


def rows_to_table(rows: Sequence[dict[str, Any]], metadata: dict[str, str] | None = None) -> pa.Table:
    """Rows (extra keys such as run_id ignored) as a table with exactly METRICS_SCHEMA."""
    columns = {name: [row.get(name) for row in rows] for name in METRICS_SCHEMA.names}
    table = pa.Table.from_pydict(columns, schema=METRICS_SCHEMA)
    if metadata:
        merged = dict(METRICS_SCHEMA.metadata or {})
        merged.update({f"llie.{k}".encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    return table


def write_shard_parquet(
    rows: Sequence[dict[str, Any]],
    url: str,
    metadata: dict[str, str] | None = None,
    storage_options: storage.StorageOptions = None,
    root: str | None = None,
) -> None:
    """Write one shard's rows atomically: a reader never sees half a file, a rerun replaces it; with
    ``root`` (the run's output), never through a link that leads out of it."""
    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows, metadata), buf, compression="zstd")
    storage.write_bytes_atomic(url, buf.getvalue(), storage_options, root=root)


def read_shard_parquet(url: str, storage_options: storage.StorageOptions = None) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(url, storage_options)))


def shard_metadata(table: pa.Table) -> dict[str, str]:
    """The ``llie.*`` key-value metadata of a shard file, without the prefix."""
    meta = table.schema.metadata or {}
    return {k.decode()[5:]: v.decode() for k, v in meta.items() if k.startswith(b"llie.")}


class MetricsFileError(ValueError):
    """A file where a run keeps its record that is not what the run wrote (foreign, damaged, truncated)."""


def run_ids(output_url: str, storage_options: storage.StorageOptions = None) -> list[str]:
    """The runs with a ``run_id=<id>`` folder under ``_metrics`` (finished or not); other folders are not runs."""
    names = storage.list_folders(metrics_root(output_url), storage_options)
    return sorted(n[len("run_id=") :] for n in names if n.startswith("run_id=") and is_run_id(n[len("run_id=") :]))


def _check_shard_file(fragment: Any, url: str) -> None:
    """Raise :class:`MetricsFileError` naming ``url`` unless the file holds every column of the schema."""
    try:
        physical = fragment.physical_schema
    except (pa.ArrowException, OSError) as exc:
        raise MetricsFileError(f"unreadable metrics file {storage.redact_url(url)}: {exc}") from None
    problems = []
    for expected in METRICS_SCHEMA:
        index = physical.get_field_index(expected.name)
        if index < 0:
            if expected.name not in ADDED_COLUMNS:
                problems.append(f"no column {expected.name}")
        elif not physical.field(index).type.equals(expected.type):
            problems.append(f"{expected.name} is {physical.field(index).type}, not {expected.type}")
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise MetricsFileError(
            f"unreadable metrics file {storage.redact_url(url)}: not a shard file of this schema: {shown}"
        )


def metrics_dataset(output_url: str, run_id: str | None = None, storage_options: storage.StorageOptions = None) -> Any:
    """The shard files of one run (or of every run) as a pyarrow dataset with a ``run_id`` column.

    Only the files the flow writes are read, by name (``run_id=<id>/shard-NNNNN.parquet``): a note,
    a backup copy or a report beside them is not part of the record. Each one is checked against the
    schema first, and a file that does not match is named in a :class:`MetricsFileError`.
    """
    import pyarrow.dataset as ds

    root_url = metrics_root(output_url)
    fs, root = storage.filesystem(root_url, storage_options)
    runs = [validate_run_id(run_id)] if run_id else run_ids(output_url, storage_options)
    names = [f"run_id={r}/{s}.parquet" for r in runs for s in shard_files(output_url, r, storage_options)]
    base = root.rstrip("/")
    partitioning = ds.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive")
    dataset = ds.dataset(
        [f"{base}/{n}" for n in names],
        filesystem=fs,
        format="parquet",
        schema=METRICS_SCHEMA.append(pa.field("run_id", pa.string())),
        partitioning=partitioning,
        partition_base_dir=base,
    )
    fragments = list(dataset.get_fragments())
    urls = [f"{root_url}/{f.path[len(base) + 1 :]}" for f in fragments]
    with ThreadPoolExecutor(max_workers=8) as pool:  # one footer read each: overlap the round trips
        list(pool.map(_check_shard_file, fragments, urls))
    return dataset


def read_metrics(
    output_url: str, run_id: str | None = None, storage_options: storage.StorageOptions = None
) -> pa.Table:
    """All metrics rows under ``output_url`` (or one run), with ``run_id`` as a string column."""
    return metrics_dataset(output_url, run_id, storage_options).to_table()
