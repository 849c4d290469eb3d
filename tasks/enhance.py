"""The shard task: enhance one shard on whichever worker Dask picks, record it, or resume it."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from llie.batch import archive, storage
from llie.batch.imageio import DecodeLimits, EncodeOptions
from llie.method.pipeline import Enhancer, set_threads

# One Enhancer per worker process and bundle: loading a bundle (XGBoost + ViT weights) costs far
# more than enhancing a small shard, and Dask reuses worker processes across tasks. Only bundle
# *paths* travel to workers; model objects are never pickled.
_ENHANCERS: dict[tuple[str | None, str], Enhancer] = {}
_ENHANCERS_LOCK = threading.Lock()
# A shard of broken files should not flood the run log; the Parquet file has every row.
_MAX_LOGGED_PROBLEMS = 5


def get_enhancer(bundle_path: str | None, device: str = "auto", threads: int | None = None) -> Enhancer:
    """The process-wide Enhancer for a bundle, loaded on first use."""
    key = (None if bundle_path is None else str(bundle_path), device)
    with _ENHANCERS_LOCK:
        if key not in _ENHANCERS:
            _ENHANCERS[key] = Enhancer.load(key[0], device=device, threads=threads)
        return _ENHANCERS[key]


def _summarise(shard: archive.Shard, rows: list[dict[str, Any]], resumed: bool, seconds: float) -> dict[str, Any]:
    statuses = [r["status"] for r in rows]
    return {
        "shard_id": shard.shard_id,
        "images": len(rows),
        "ok": statuses.count("ok"),
        "errors": statuses.count("error"),
        "skipped": statuses.count("skipped"),
        "resumed": resumed,
        "processed": 0 if resumed else len(rows),
        "seconds": seconds,
    }


def _existing_rows(url: str, shard: archive.Shard, opts: storage.StorageOptions = None) -> pa.Table | None:
    """Rows of a finished earlier attempt at this very shard, or None if it must be (re)done."""
    if not storage.exists(url, opts):
        return None
    table = archive.read_shard_parquet(url, opts)
    if archive.shard_metadata(table).get("shard_fingerprint") != shard.fingerprint:
        # Same shard id, different images: the archive changed since that run. Its rows describe
        # the old images; left in place until this attempt succeeds, they would count twice (or
        # stand in for images it never reached) should it fail.
        storage.remove(url, opts)
        return None
    return table


# Tests only: set in a worker's environment, it names a folder; a run whose id has a sub-folder there
# fails each shard's first attempt after writing its outputs, in a way a retry can observe. Not a
# flow parameter, so it never shows up in a deployment.
FAULTS_ENV = "LLIE_TEST_FAULTS_DIR"


def _inject_fault(run_id: str, shard: archive.Shard) -> None:
    root = os.environ.get(FAULTS_ENV)
    if not root or not os.path.isdir(os.path.join(root, run_id)):
        return
    marker = os.path.join(root, run_id, shard.shard_id)
    if not os.path.exists(marker):
        with open(marker, "wb") as fh:
            fh.write(b"failed once\n")
        raise RuntimeError(f"injected failure for {shard.shard_id} (first attempt)")


def worker_memory_budget(worker: Any = None) -> int | None:
    """Bytes this Dask worker may still grow by before its nanny kills it (None: no limit, or no Dask).

    The limit times the ``terminate`` fraction, less what the process holds now (the model included).
    ``worker``: the Dask worker, when not called from a task (which finds its own).
    """
    try:
        import dask
        import psutil
        from distributed import get_worker

        limit = (worker or get_worker()).memory_manager.memory_limit
        fraction = dask.config.get("distributed.worker.memory.terminate")
    except (ImportError, ValueError, AttributeError):
        return None
    if not limit or not fraction:
        return None
    return int(limit * fraction) - psutil.Process().memory_info().rss


@task(
    name="enhance-shard",
    task_run_name="enhance-{shard.shard_id}",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    # Resume is decided from the Parquet file itself, not from Prefect's result cache.
    cache_policy=None,
)
def enhance_shard(
    shard: archive.Shard,
    input_url: str,
    output_url: str,
    bundle_path: str | None,
    reference_url: str | None,
    run_id: str,
    max_pixels: int | None = None,
    threads: int | None = None,
    device: str = "auto",
    retry_failed: bool = False,
    storage_options: storage.StorageOptions = None,
    png_compression: int | None = None,
    jpeg_quality: int | None = None,
    rows_only: bool = False,
) -> dict[str, Any] | list[dict[str, Any]]:
    """Enhance one shard and write its Parquet; skip it when an earlier run already did.

    Idempotent: outputs and the Parquet file are replaced atomically, so a retry, a resumed
    run, or Dask re-running the task after losing a worker all end with one row per image.
    With ``retry_failed`` a finished shard is redone for its non-ok images only; its ok rows
    are kept and the file rewritten, never appended to.

    ``rows_only``: enhance every image and return the rows, without reading or writing the shard's
    Parquet (the flow assembles a shard it had to redo image by image, see flows.worker_deaths).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    url = archive.shard_parquet_url(output_url, run_id, shard.shard_id)
    previous_table = None if rows_only else _existing_rows(url, shard, storage_options)
    previous = None if previous_table is None else previous_table.to_pylist()
    todo = list(shard.paths)
    if previous is not None:
        changed = archive.changed_sources(shard, archive.shard_metadata(previous_table))
        failed = [r["rel_path"] for r in previous if r["status"] != "ok"] if retry_failed else []
        todo = [p for p in shard.paths if p in changed or archive.printable(p) in failed]
        if not todo:
            logger.info("%s already done (%d rows), skipping", shard.shard_id, len(previous))
            return _summarise(shard, previous, resumed=True, seconds=0.0)
        logger.info(
            "%s: redoing %d image(s): %d changed since, %d failed", shard.shard_id, len(todo), len(changed), len(failed)
        )

    if threads:
        # Every task, not only the loading one: tasks of another run may have asked for a
        # different count in this same long-lived worker.
        set_threads(threads)
    enhancer = get_enhancer(bundle_path, device, threads)
    limits = DecodeLimits() if max_pixels is None else DecodeLimits(max_pixels=max_pixels)
    defaults = EncodeOptions()
    encoding = EncodeOptions(
        defaults.png_compression if png_compression is None else png_compression,
        defaults.jpeg_quality if jpeg_quality is None else jpeg_quality,
    )
    subset = archive.Shard(shard.shard_id, tuple(todo), shard.fingerprint)
    rows = archive.process_shard(
        subset,
        input_url,
        output_url,
        enhancer,
        reference_url=reference_url,
        run_id=run_id,
        limits=limits,
        storage_options=storage_options,
        encoding=encoding,
        memory_budget=worker_memory_budget(),
    )
    _inject_fault(run_id, shard)
    if rows_only:
        return rows

    if previous is not None:
        redone = {r["rel_path"]: r for r in rows}
        rows = [redone.get(r["rel_path"], r) for r in previous]
    archive.write_shard_parquet(
        rows,
        url,
        metadata={
            "run_id": run_id,
            "shard_fingerprint": shard.fingerprint,
            "model_version": enhancer.model_version,
            **archive.source_versions_metadata(shard),
        },
        storage_options=storage_options,
    )
    summary = _summarise(shard, rows, resumed=False, seconds=time.perf_counter() - started)
    summary["processed"] = len(todo)
    problems = [r for r in rows if r["status"] != "ok"]
    for row in problems[:_MAX_LOGGED_PROBLEMS]:
        # quoted: a name with a newline must not forge a line of this log
        logger.warning("%s %s: %s", row["status"], storage.quote_name(row["rel_path"]), storage.one_line(row["error"]))
    if len(problems) > _MAX_LOGGED_PROBLEMS:
        logger.warning("... and %d more; see the Parquet file", len(problems) - _MAX_LOGGED_PROBLEMS)
    logger.info(
        "%s: %d ok, %d errors, %d skipped in %.1fs",
        shard.shard_id,
        summary["ok"],
        summary["errors"],
        summary["skipped"],
        summary["seconds"],
    )
    return summary
