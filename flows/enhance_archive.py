"""The archive flow: list, plan shards, enhance them on Dask, summarise from the Parquet files."""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.client.orchestration import get_client
from prefect.tasks import exponential_backoff
from prefect_dask import DaskTaskRunner

from flows import credentials
from flows.artifacts import publish_run_report, summary_text
from flows.worker_deaths import outcome_of, redo_one_by_one, worker_died
from flows.worker_env import api_unreachable_from, local_cluster_settings, tasks_report_to
from llie.batch import archive, storage
from llie.batch import storage_options as storage_options_mod
from llie.method.bundle import verify_bundle
from tasks.enhance import enhance_shard

REPORT_DIR = "_report"  # where publish_run_report writes (llie.audit.report.report_url), inside the run's metrics


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _current_api_url() -> str | None:
    """The API this flow run reports to, including a temporary one Prefect started for us."""
    with get_client(sync_client=True) as client:
        url = str(client.api_url or "")
    return url.rstrip("/") or None


def make_task_runner(dask_address: str | None, n_workers: int, api_url: str | None = None) -> DaskTaskRunner:
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    env = {}
    if api_url:
        # Workers are fresh processes: without this each would boot a temporary API server of
        # its own (slow, and its task runs would land in a different database).
        env["PREFECT_API_URL"] = api_url
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n_workers,
            # One task per process; parallelism inside a task comes from torch threads.
            "threads_per_worker": 1,
            "processes": True,
            # ":0" = any free port, so two runs (or a test suite) never fight over 8787.
            "dashboard_address": ":0",
            "env": env,
        },
    )


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


def _comparable(value: Any) -> Any:
    """A setting as a resume compares it: "photos/" and "photos" name the same folder."""
    return value.rstrip("/") or value if isinstance(value, str) else value


def _check_resume(
    output_url: str,
    run_id: str,
    plan: dict[str, Any],
    shards: list[archive.Shard],
    logger,
    opts: storage.StorageOptions = None,
) -> None:
    """Refuse to mix a resumed run's finished shards with work done under other settings."""
    manifest = archive.read_run_manifest(output_url, run_id, opts) or {}
    for key in ("shard_size", "input_url", "model"):
        if key in manifest and _comparable(manifest[key]) != _comparable(plan[key]):
            raise ValueError(
                f"run {run_id} was started with {key}={manifest[key]!r}, not {plan[key]!r}; "
                "resume it with the same settings, or start a new run_id"
            )
    planned = {s.shard_id for s in shards}
    for stale in sorted(set(archive.shard_files(output_url, run_id, opts)) - planned):
        # The archive shrank since this run started: that file describes a shard that no longer
        # exists and would otherwise show up as duplicate rows in the dataset.
        logger.warning("removing %s from run %s: not part of the current plan", stale, run_id)
        storage.remove(archive.shard_parquet_url(output_url, run_id, stale), opts)


def _summarise(
    output_url: str,
    run_id: str,
    shards: list[archive.Shard],
    results: list[Any],
    elapsed: float,
    opts: storage.StorageOptions = None,
) -> dict[str, Any]:
    failed = [s.shard_id for s, r in zip(shards, results) if isinstance(r, BaseException)]
    done = [r for r in results if isinstance(r, dict)]
    planned = {s.shard_id for s in shards}
    counts = {"ok": 0, "error": 0, "skipped": 0}
    psnrs: list[float] = []
    if archive.shard_files(output_url, run_id, opts):
        # The Parquet files, not the task return values, are the record: they also cover
        # shards finished by an earlier attempt of this run.
        table = archive.read_metrics(output_url, run_id, opts)
        for shard_id, status, value in zip(
            table.column("shard_id").to_pylist(), table.column("status").to_pylist(), table.column("psnr").to_pylist()
        ):
            if shard_id not in planned:
                continue
            counts[status] = counts.get(status, 0) + 1
            if status == "ok" and value is not None and math.isfinite(value):
                psnrs.append(value)
    processed = sum(r["processed"] for r in done)
    metrics = archive.metrics_url(output_url, run_id)
    return {
        "run_id": run_id,
        "images": sum(len(s) for s in shards),
        "ok": counts["ok"],
        "errors": counts["error"],
        "skipped": counts["skipped"],
        "mean_psnr": sum(psnrs) / len(psnrs) if psnrs else None,
        "images_per_second": processed / elapsed if processed and elapsed > 0 else 0.0,
        "processed": processed,
        "shards": len(shards),
        "shards_resumed": sum(1 for r in done if r["resumed"]),
        "failed_shards": sorted(failed),
        "seconds": round(elapsed, 3),
        "metrics_url": storage.redact_url(metrics),
        "output_url": storage.redact_url(output_url),
    }


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
        output_url: where enhanced images and ``_metrics/run_id=<run_id>/*.parquet`` go;
            must not overlap ``input_url``.
        model: model bundle path; None = the default bundle shipped with llie.
        shard_size: images per task; also the unit of retry and resume.
        reference_url: optional folder of well-lit references with the same relative paths,
            for PSNR/SSIM.
        dask_address: scheduler of an existing Dask cluster; None = a LocalCluster here.
        n_workers: LocalCluster worker processes; default one per CPU.
        run_id: pass an earlier run's id to resume it; default a new timestamped id.
        retries: attempts after the first for a shard that raises.
        retry_failed: also redo images that ended with an error/skipped row in this run.
        max_pixels: decode limit per image; default llie.batch.imageio's.
        retry_delay_seconds: first retry delay; doubles each further retry.
        torch_threads: torch threads per task; default CPUs / workers for a LocalCluster.
        device: torch device for the refiner ("auto", "cpu", "cuda").
        storage_options: fsspec options for every URL, as pandas and Dask take them (S3:
            endpoint_url, anon, profile, client_kwargs.region_name). Never credentials: Prefect
            stores and shows parameters; those come from the environment, or from
            ``llie run --storage-option``, which keeps them out of the parameters.
        png_compression, jpeg_quality: output compression; default llie.batch.imageio.EncodeOptions'.
    """
    logger = get_run_logger()
    _, given_credentials = storage_options_mod.split_credentials(storage_options)
    if given_credentials:
        raise ValueError(
            f"storage_options: {storage_options_mod.describe(given_credentials)} is a credential, and Prefect stores "
            "and shows parameters: give it through the environment (AWS_* variables, a profile) or llie run"
        )
    for url in (input_url, output_url, reference_url):
        storage.check_no_credentials(url)
    opts = storage_options_mod.merge(storage_options, credentials.current()) or None
    secrets = storage.url_secrets(input_url, output_url, reference_url) + storage_options_mod.credential_values(opts)
    storage.check_folders_apart(input_url, output_url, reference_url, opts)
    check_model(model, dask_address)
    run_id = archive.validate_run_id(run_id) if run_id else archive.new_run_id()
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")

    versions = storage.list_image_versions(input_url, opts)  # size and mtime (ETag on S3) of each image
    paths = sorted(versions)
    reserved = [p for p in paths if p.split("/", 1)[0] == archive.METRICS_DIR]
    if reserved:
        logger.warning(
            "ignoring %d image(s) under %s/: that name is reserved for metrics", len(reserved), archive.METRICS_DIR
        )
        paths = [p for p in paths if p.split("/", 1)[0] != archive.METRICS_DIR]
    previous = archive.read_run_manifest(output_url, run_id, opts) or {}
    if not paths and previous.get("images"):
        # An unmounted share or a wrong prefix lists nothing; planning nothing would drop every
        # finished shard of this run as "no longer part of the plan" and report success.
        raise ValueError(
            f"{storage.redact_url(input_url)} lists no images, but run {run_id} had {previous['images']}: "
            "refusing to drop its results (is the input mounted?)"
        )
    # A resumed run keeps the shards it finished, so images added since go into new shards and the
    # finished ones are skipped rather than re-cut (archive.extend_plan).
    finished = archive.shard_membership(output_url, run_id, opts) if previous else {}
    shards = archive.with_versions(archive.extend_plan(paths, shard_size, finished), versions)
    plan = {
        "run_id": run_id,
        "input_url": storage.redact_url(input_url),
        "output_url": storage.redact_url(output_url),
        "reference_url": storage.redact_url(reference_url) if reference_url else None,
        "model": model,
        "shard_size": shard_size,
        "shards": len(shards),
        "images": len(paths),
    }
    _check_resume(output_url, run_id, plan, shards, logger, opts)
    # A resume that changes nothing leaves the manifest (and its started_at) alone.
    if any(previous.get(k) != v for k, v in plan.items()):
        archive.write_run_manifest(output_url, run_id, {**plan, "started_at": datetime.now(UTC).isoformat()}, opts)
    logger.info(
        "run %s: %d images in %d shards from %s -> %s",
        run_id,
        len(paths),
        len(shards),
        storage.redact_url(input_url),
        storage.redact_url(output_url),
    )

    started = time.perf_counter()
    results: list[Any] = []
    if shards:
        workers = n_workers or available_cpus()
        if torch_threads is None and not dask_address:
            torch_threads = max(1, available_cpus() // workers)
        task = enhance_shard.with_options(
            retries=retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_seconds) if retries else 0,
        )
        # The runner depends on parameters (dask_address, n_workers), which a @flow decorator
        # cannot see, so the flow starts it here and maps the task onto it directly.
        api_url = _current_api_url()
        if api_unreachable_from(dask_address, api_url):
            logger.warning(
                "this run's Prefect API is %s, which Dask workers on other machines cannot reach: "
                "start a Prefect server they can reach and set PREFECT_API_URL for llie and the workers",
                api_url,
            )
        with (
            local_cluster_settings(),
            tasks_report_to(api_url),
            make_task_runner(dask_address, workers, api_url) as runner,
        ):
            parameters = {
                "input_url": input_url,
                "output_url": output_url,
                "bundle_path": model,
                "reference_url": reference_url,
                "run_id": run_id,
                "max_pixels": max_pixels,
                "threads": torch_threads,
                "device": device,
                "retry_failed": retry_failed,
                "storage_options": opts,
                "png_compression": png_compression,
                "jpeg_quality": jpeg_quality,
            }
            futures = runner.map(task, {"shard": shards, **{k: unmapped(v) for k, v in parameters.items()}})
            # One failed shard must not hide the others' results: collect, then decide.
            results = [outcome_of(f) for f in futures]
            for i, shard in enumerate(shards):
                if worker_died(results[i]):
                    results[i] = redo_one_by_one(runner, task, shard, parameters, opts, logger)

    # No task of this run writes any more: remove the temporary files of writers that were killed
    # half way (a lost Dask worker, an earlier run killed with -9) so that no partial file remains.
    metrics_dir = archive.run_metrics_rel(run_id)
    stale = storage.remove_stale_temps(
        output_url,
        paths + [f"{metrics_dir}/{s.shard_id}.parquet" for s in shards] + [f"{metrics_dir}/{archive.RUN_MANIFEST}"],
        opts,
    )
    # and those of a report whose writer was killed (the report is written last, after this cleanup)
    stale += storage.remove_stale_temps_in(storage.join(output_url, f"{metrics_dir}/{REPORT_DIR}"), opts)
    if stale:
        logger.warning("removed %d temporary file(s) left by interrupted writers", len(stale))

    for shard, result in zip(shards, results):
        if isinstance(result, BaseException):
            # The run's URLs: a library may quote their credentials without a scheme.
            reason = storage.describe_error(result, secrets)
            logger.error("%s failed after %d retries: %s", shard.shard_id, retries, reason)
    summary = _summarise(output_url, run_id, shards, results, time.perf_counter() - started, opts)
    logger.info("%s", summary_text(summary))
    publish_run_report(output_url, run_id, summary, storage_options=opts)
    if summary["failed_shards"]:
        raise RuntimeError(
            f"{len(summary['failed_shards'])} shard(s) failed after retries: "
            f"{', '.join(summary['failed_shards'][:10])}; rerun with run_id={run_id} to resume"
        )
    return summary
