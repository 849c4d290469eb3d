"""The archive flow: plan the run, enhance its shards on Dask, summarise from the Parquet, report."""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import publish_run_report, summary_text
from flows.parameters import ArchiveRun, Cluster
from flows.shards import cluster_workers, enhance_shards
from llie.audit.overview import RunOverview, summarise_run
from llie.batch.plan import RunPlan, common_problems, plan_run, read_rows, remove_partial_files
from llie.method.bundle import verify_bundle


def check_model(model: str | None, dask_address: str | None) -> None:
    """Refuse a model bundle that is missing or does not match its manifest, before any work goes out.

    Otherwise every shard would fail (and be retried, with backoff) on it one by one. Workers verify it
    again when they load it. A path missing here is only left to the workers of an external cluster
    (``dask_address``), which may see file systems this process does not; local workers see ours.
    """
    if model is None:
        return
    if os.path.isdir(model):
        verify_bundle(model)
    elif not dask_address:
        raise ValueError(f"model bundle {model!r} is not a folder (no such bundle): give the folder of a bundle")


@task(name="report-run", task_run_name="report-{plan.spec.run_id}", cache_policy=NO_CACHE)
def report_run(plan: RunPlan, summary: RunOverview, rows: pa.Table | None) -> str | None:
    """The run's audit report and artifact, from the rows the flow read (see :func:`publish_run_report`)."""
    spec = plan.spec
    return publish_run_report(spec.output_url, spec.run_id, summary, spec.storage_options, rows)


@flow(name="enhance-archive")
def enhance_archive(run: ArchiveRun, cluster: Cluster = Cluster()) -> dict[str, Any]:
    """Enhance every image under ``run.input_url`` into ``run.output_url`` (same relative paths).

    Args:
        run: what to enhance and how: input, output, model, shard size, references, run id to resume.
        cluster: where the shards run (an existing Dask cluster or a local one) and their retries.
    """
    logger, spec = get_run_logger(), run.spec()
    check_model(spec.model, cluster.dask_address)
    plan = plan_run(spec, logger, workers=cluster_workers(cluster) if spec.shard_size is None else 1)
    started = time.perf_counter()
    results = enhance_shards(plan, cluster, logger)
    if stale := remove_partial_files(plan):
        logger.warning("removed %d temporary file(s) left by interrupted writers", len(stale))
    rows = read_rows(plan)  # once: the summary and the report both come from it
    summary = summarise_run(plan, results, rows, time.perf_counter() - started)
    for line in common_problems(plan, rows):
        logger.warning("%s", line)
    logger.info("%s", summary_text(summary))
    report_run(plan, summary, rows)
    if failed := summary.failed_shards:
        raise RuntimeError(
            f"{len(failed)} shard(s) failed after retries: {', '.join(failed[:10])}; "
            f"rerun with run_id={plan.spec.run_id} to resume"
        )
    return summary.to_dict()
