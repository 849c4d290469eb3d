"""The archive flow: plan the run, enhance its shards on Dask, summarise from the Parquet, report."""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import credentials
from flows.artifacts import publish_run_report, summary_text
from flows.shards import Cluster, enhance_shards
from llie.batch import storage_options as storage_options_mod
from llie.batch.plan import RunPlan, plan_run, read_rows, remove_partial_files, summarise_run
from llie.batch.spec import RunSpec, decode_limits, encode_options
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


def run_spec(parameters: dict[str, Any]) -> RunSpec:
    """The flow's parameters as a RunSpec, with the credentials of ``flows.credentials`` added.

    Credentials themselves are refused as parameters: Prefect stores and shows them.
    """
    given = parameters["storage_options"]
    _, given_credentials = storage_options_mod.split_credentials(given)
    if given_credentials:
        raise ValueError(
            f"storage_options: {storage_options_mod.describe(given_credentials)} is a credential, and Prefect stores "
            "and shows parameters: give it through the environment (AWS_* variables, a profile) or llie run"
        )
    return RunSpec(
        input_url=parameters["input_url"],
        output_url=parameters["output_url"],
        run_id=parameters["run_id"] or "",
        model=parameters["model"],
        reference_url=parameters["reference_url"],
        shard_size=parameters["shard_size"],
        storage_options=storage_options_mod.merge(given, credentials.current()) or None,
        retry_failed=parameters["retry_failed"],
        limits=decode_limits(parameters["max_pixels"]),
        encoding=encode_options(parameters["png_compression"], parameters["jpeg_quality"]),
        device=parameters["device"],
        threads=parameters["torch_threads"],
    )


_CLUSTER_PARAMETERS = ("dask_address", "n_workers", "retries", "retry_delay_seconds")


def cluster_of(parameters: dict[str, Any]) -> Cluster:
    return Cluster(**{name: parameters[name] for name in _CLUSTER_PARAMETERS})


def flow_parameters(spec: RunSpec, cluster: Cluster) -> dict[str, Any]:
    """The flow's parameters for a RunSpec (the inverse of :func:`run_spec`), its credentials left out.

    Those reach the flow through ``flows.credentials``: Prefect stores and shows parameters.
    """
    settings, _ = storage_options_mod.split_credentials(spec.storage_options)
    return {
        "input_url": spec.input_url,
        "output_url": spec.output_url,
        "model": spec.model,
        "shard_size": spec.shard_size,
        "reference_url": spec.reference_url,
        "run_id": spec.run_id or None,
        "retry_failed": spec.retry_failed,
        "max_pixels": spec.limits.max_pixels,
        "torch_threads": spec.threads,
        "device": spec.device,
        "storage_options": settings or None,
        "png_compression": spec.encoding.png_compression,
        "jpeg_quality": spec.encoding.jpeg_quality,
        **{name: getattr(cluster, name) for name in _CLUSTER_PARAMETERS},
    }


@task(name="report-run", task_run_name="report-{plan.spec.run_id}", cache_policy=NO_CACHE)
def report_run(plan: RunPlan, summary: dict[str, Any], rows: pa.Table | None) -> str | None:
    """The run's audit report and artifact, from the rows the flow read (see :func:`publish_run_report`)."""
    spec = plan.spec
    return publish_run_report(spec.output_url, spec.run_id, summary, spec.storage_options, rows)


@flow(name="enhance-archive")
def enhance_archive(
    input_url: str,
    output_url: str,
    model: str | None = None,
    shard_size: int = 64,
    reference_url: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    run_id: str | None = None,
    retries: int = 2,
    retry_failed: bool = False,
    max_pixels: int | None = None,
    retry_delay_seconds: float = 10.0,
    torch_threads: int | None = None,
    device: str = "auto",
    storage_options: dict[str, Any] | None = None,
    png_compression: int | None = None,
    jpeg_quality: int | None = None,
) -> dict[str, Any]:
    """Enhance every image under ``input_url`` into ``output_url`` (same relative paths).

    Args:
        input_url: folder or object-store prefix with the originals (read only).
        output_url: where enhanced images and ``_metrics/run_id=<run_id>/*.parquet`` go; must not overlap the input.
        model: model bundle path; None = the default bundle shipped with llie.
        shard_size: images per task; also the unit of retry and resume.
        reference_url: optional folder of well-lit references with the same relative paths, for PSNR/SSIM.
        dask_address: scheduler of an existing Dask cluster; None = a LocalCluster here.
        n_workers: LocalCluster worker processes; default one per CPU.
        run_id: pass an earlier run's id to resume it; default a new timestamped id.
        retries: attempts after the first for a shard that raises.
        retry_failed: also redo images that ended with an error/skipped row in this run.
        max_pixels: decode limit per image; default llie.batch.imageio's.
        retry_delay_seconds: first retry delay; doubles each further retry.
        torch_threads: torch threads per task; default CPUs / workers for a LocalCluster.
        device: torch device for the refiner ("auto", "cpu", "cuda").
        storage_options: fsspec options for every URL, as pandas and Dask take them (S3: endpoint_url, anon,
            profile, client_kwargs.region_name). Never credentials: Prefect stores and shows parameters;
            those come from the environment, or from ``llie run --storage-option``.
        png_compression, jpeg_quality: output compression; default llie.batch.imageio.EncodeOptions'.
    """
    parameters, logger = dict(locals()), get_run_logger()
    spec, cluster = run_spec(parameters), cluster_of(parameters)
    check_model(spec.model, cluster.dask_address)
    plan = plan_run(spec, logger)
    started = time.perf_counter()
    results = enhance_shards(plan, cluster, logger)
    if stale := remove_partial_files(plan):
        logger.warning("removed %d temporary file(s) left by interrupted writers", len(stale))
    rows = read_rows(plan)  # once: the summary and the report both come from it
    summary = summarise_run(plan, results, rows, time.perf_counter() - started)
    logger.info("%s", summary_text(summary))
    report_run(plan, summary, rows)
    if failed := summary["failed_shards"]:
        raise RuntimeError(
            f"{len(failed)} shard(s) failed after retries: {', '.join(failed[:10])}; "
            f"rerun with run_id={plan.spec.run_id} to resume"
        )
    return summary
