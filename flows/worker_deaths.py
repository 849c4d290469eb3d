"""A shard whose Dask worker died (``KilledWorker``): redo it one image per task, so that only the image
that kills a worker (almost always by running it out of memory) is lost, with a row that says so.

A worker that dies takes every task running on it down, and Dask gives up on a task after a few such
deaths; without this, one huge photo sank its whole shard, with no row naming it, at every resume.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import unmapped

from llie.batch import archive
from llie.batch.shard import shard_summary, write_shard
from llie.batch.spec import RunSpec

WORKER_DIED = "worker died: out of memory?"


def worker_died(outcome: Any) -> bool:
    from distributed.scheduler import KilledWorker

    return isinstance(outcome, KilledWorker)


def outcome_of(future: Any) -> Any:
    """A task's result, or the exception it ended with: a worker's death escapes ``raise_on_failure``."""
    try:
        return future.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 - KilledWorker and the like: recorded, decided on by the caller
        return exc


def redo_one_by_one(runner: Any, task: Any, shard: archive.Shard, spec: RunSpec, logger: Any) -> Any:
    """Redo ``shard`` as one task per image, then write its Parquet from their rows.

    An image whose task dies again is tried once more on its own (a task that merely shared a dying
    worker with the culprit then succeeds) and, should it die once more, gets an ``error`` row
    ``worker died: out of memory?``. Returns the shard's summary, or the exception of a task that
    failed otherwise (the shard then fails as any other: retry, resume).
    """
    started = time.perf_counter()
    versions = shard.versions or ("",) * len(shard)
    singles = [
        archive.Shard(shard.shard_id, (p,), shard.fingerprint, (v,) if shard.versions else ())
        for p, v in zip(shard.paths, versions)
    ]
    logger.warning("%s: a worker died running it; redoing its %d image(s) one per task", shard.shard_id, len(singles))
    common = {"spec": spec, "rows_only": True}
    futures = runner.map(task, {"shard": singles, **{k: unmapped(v) for k, v in common.items()}})
    outcomes = [outcome_of(f) for f in futures]
    for k, outcome in enumerate(outcomes):
        if worker_died(outcome):  # alone this time: nothing else runs when it goes
            outcomes[k] = outcome_of(runner.submit(task, parameters={"shard": singles[k], **common}))
    rows: list[dict[str, Any]] = []
    for single, outcome in zip(singles, outcomes):
        if isinstance(outcome, list):
            rows.extend(outcome)
        elif worker_died(outcome):
            name = repr(archive.printable(single.paths[0]))
            logger.error("%s: %s killed its worker every time: %s", shard.shard_id, name, WORKER_DIED)
            rows.append(archive.error_row(spec, single, single.paths[0], WORKER_DIED))
        else:
            return outcome
    model_version = next((r["model_version"] for r in rows if r.get("model_version")), None)
    for row in rows:
        row["model_version"] = row.get("model_version") or model_version
    write_shard(spec, shard, rows, model_version or "")
    return shard_summary(shard.shard_id, rows, processed=len(rows), seconds=time.perf_counter() - started)
