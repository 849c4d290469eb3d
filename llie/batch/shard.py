"""One shard of a run: enhance its images, write its Parquet file, or resume it from that file.

Idempotent: outputs and the Parquet file are replaced atomically, so a retry, a resumed run, or Dask
re-running the work after losing a worker all end with one row per image.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pyarrow as pa

from llie.batch import archive, storage
from llie.batch.spec import RunSpec

# A shard of broken files should not flood the run log; the Parquet file has every row.
MAX_LOGGED_PROBLEMS = 5

# Tests only: set in a worker's environment, it names a folder; a run whose id has a sub-folder there
# fails each shard's first attempt after writing its outputs, in a way a retry can observe. Not a
# flow parameter, so it never shows up in a deployment.
FAULTS_ENV = "LLIE_TEST_FAULTS_DIR"


def shard_summary(shard_id: str, rows: list[dict[str, Any]], processed: int, seconds: float) -> dict[str, Any]:
    """What a shard task returns: its counts, and how many images it processed (0: resumed as it was)."""
    statuses = [r["status"] for r in rows]
    return {
        "shard_id": shard_id,
        "images": len(rows),
        "ok": statuses.count("ok"),
        "errors": statuses.count("error"),
        "skipped": statuses.count("skipped"),
        "resumed": processed == 0,
        "processed": processed,
        "seconds": seconds,
    }


def write_shard(spec: RunSpec, shard: archive.Shard, rows: list[dict[str, Any]], model_version: str) -> None:
    """The shard's Parquet file, with what a resume checks it against in its metadata."""
    archive.write_shard_parquet(
        rows,
        spec.layout.shard_url(shard.shard_id),
        metadata={
            "run_id": spec.run_id,
            "shard_fingerprint": shard.fingerprint,
            "model_version": model_version,
            **archive.source_versions_metadata(shard),
        },
        storage_options=spec.storage_options,
        root=spec.output_url,
    )


def _existing_rows(spec: RunSpec, shard: archive.Shard) -> pa.Table | None:
    """Rows of a finished earlier attempt at this very shard, or None if it must be (re)done."""
    url = spec.layout.shard_url(shard.shard_id)
    if not storage.exists(url, spec.storage_options):
        return None
    table = archive.read_shard_parquet(url, spec.storage_options)
    if archive.shard_metadata(table).get("shard_fingerprint") != shard.fingerprint:
        # Same shard id, different images: the archive changed since that run. Its rows describe
        # the old images; left in place until this attempt succeeds, they would count twice (or
        # stand in for images it never reached) should it fail.
        storage.remove(url, spec.storage_options)
        return None
    return table


def _inject_fault(spec: RunSpec, shard: archive.Shard) -> None:
    root = os.environ.get(FAULTS_ENV)
    if not root or not os.path.isdir(os.path.join(root, spec.run_id)):
        return
    marker = os.path.join(root, spec.run_id, shard.shard_id)
    if not os.path.exists(marker):
        with open(marker, "wb") as fh:
            fh.write(b"failed once\n")
        raise RuntimeError(f"injected failure for {shard.shard_id} (first attempt)")


def shard_rows(
    spec: RunSpec, shard: archive.Shard, enhancer: Any, memory_budget: int | None = None
) -> list[dict[str, Any]]:
    """Enhance every image of ``shard`` and return the rows, without reading or writing its Parquet."""
    rows = archive.process_shard(spec, shard, enhancer, memory_budget)
    _inject_fault(spec, shard)
    return rows


def _log_problems(rows: list[dict[str, Any]], logger: Any) -> None:
    # at info (Prefect's UI has them): the terminal gets the run's summary of them (plan.common_problems)
    problems = [r for r in rows if r["status"] != "ok"]
    for row in problems[:MAX_LOGGED_PROBLEMS]:
        # quoted: a name with a newline must not forge a line of this log
        logger.info("%s %s: %s", row["status"], storage.quote_name(row["rel_path"]), storage.one_line(row["error"]))
    if len(problems) > MAX_LOGGED_PROBLEMS:
        logger.info("... and %d more; see the Parquet file", len(problems) - MAX_LOGGED_PROBLEMS)


def _missing_outputs(spec: RunSpec, rels: list[str]) -> set[str]:
    """The images among ``rels`` whose enhanced file is not in the output (deleted since): one listing per folder."""
    by_folder: dict[str, set[str]] = {}
    for rel in rels:
        folder, _, name = rel.rpartition("/")
        by_folder.setdefault(folder, set()).add(name)
    missing: set[str] = set()
    for folder, names in sorted(by_folder.items()):
        url = storage.join(spec.output_url, folder) if folder else spec.output_url
        present = set(storage.list_files(url, spec.storage_options))
        missing.update(f"{folder}/{n}" if folder else n for n in names - present)
    return missing


def _todo(spec: RunSpec, shard: archive.Shard, previous: pa.Table, logger: Any) -> list[str]:
    """The images of a finished shard to redo: changed since, ok but with their output gone, and
    (``retry_failed``) those without an ok row."""
    changed = archive.changed_sources(shard, archive.shard_metadata(previous))
    rows = previous.to_pylist()
    failed = [r["rel_path"] for r in rows if r["status"] != "ok"] if spec.retry_failed else []
    ok = {r["rel_path"] for r in rows if r["status"] == "ok"}
    gone = _missing_outputs(spec, [p for p in shard.paths if archive.printable(p) in ok])
    todo = [p for p in shard.paths if p in changed or p in gone or archive.printable(p) in failed]
    if todo:
        logger.info(
            "%s: redoing %d image(s): %d changed since, %d with their output gone, %d failed",
            shard.shard_id,
            len(todo),
            len(changed),
            len(gone),
            len(failed),
        )
    return todo


def run_shard(
    spec: RunSpec,
    shard: archive.Shard,
    enhancer: Any,
    logger: Any = None,
    memory_budget: int | None = None,
) -> dict[str, Any]:
    """Enhance one shard and write its Parquet; skip it when an earlier attempt of the run already did.

    With ``spec.retry_failed`` a finished shard is redone for its non-ok images only; its ok rows are
    kept and the file rewritten, never appended to. Returns :func:`shard_summary`.
    """
    logger = logger or logging.getLogger(__name__)
    started = time.perf_counter()
    previous = _existing_rows(spec, shard)
    todo = list(shard.paths) if previous is None else _todo(spec, shard, previous, logger)
    if previous is not None and not todo:
        logger.info("%s already done (%d rows), skipping", shard.shard_id, previous.num_rows)
        return shard_summary(shard.shard_id, previous.to_pylist(), processed=0, seconds=0.0)
    subset = archive.Shard(shard.shard_id, tuple(todo), shard.fingerprint)
    rows = shard_rows(spec, subset, enhancer, memory_budget)
    if previous is not None:
        redone = {r["rel_path"]: r for r in rows}
        rows = [redone.get(r["rel_path"], r) for r in previous.to_pylist()]
    write_shard(spec, shard, rows, enhancer.model_version)
    summary = shard_summary(shard.shard_id, rows, processed=len(todo), seconds=time.perf_counter() - started)
    _log_problems(rows, logger)
    logger.info(
        "%s: %d ok, %d errors, %d skipped in %.1fs",
        shard.shard_id,
        summary["ok"],
        summary["errors"],
        summary["skipped"],
        summary["seconds"],
    )
    return summary
