"""The shard task: enhance one shard on whichever worker Dask picks, record it, or resume it."""

from __future__ import annotations

import threading
from typing import Any

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from llie.batch import archive
from llie.batch.shard import FAULTS_ENV, run_shard, shard_rows
from llie.batch.spec import RunSpec
from llie.method.pipeline import Enhancer, set_threads

__all__ = ["FAULTS_ENV", "enhance_shard", "get_enhancer", "worker_memory_budget"]

# One Enhancer per worker process and bundle: loading a bundle (XGBoost + ViT weights) costs far
# more than enhancing a small shard, and Dask reuses worker processes across tasks. Only bundle
# *paths* travel to workers; model objects are never pickled.
_ENHANCERS: dict[tuple[str | None, str, str], Enhancer] = {}
_ENHANCERS_LOCK = threading.Lock()


def get_enhancer(
    bundle_path: str | None, device: str = "auto", threads: int | None = None, precision: str = "float32"
) -> Enhancer:
    """The process-wide Enhancer for a bundle, device and refiner precision, loaded on first use."""
    key = (None if bundle_path is None else str(bundle_path), device, precision)
    with _ENHANCERS_LOCK:
        if key not in _ENHANCERS:
            _ENHANCERS[key] = Enhancer.load(key[0], device=device, threads=threads, precision=precision)
        return _ENHANCERS[key]


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
    shard: archive.Shard, spec: RunSpec, rows_only: bool = False
) -> dict[str, Any] | list[dict[str, Any]]:
    """Enhance one shard and write its Parquet, or skip it when an earlier attempt did (llie.batch.shard).

    ``rows_only``: enhance every image and return the rows, without reading or writing the shard's
    Parquet (the flow assembles a shard it had to redo image by image, see flows.worker_deaths).
    """
    if spec.threads:
        # Every task, not only the loading one: tasks of another run may have asked for a
        # different count in this same long-lived worker.
        set_threads(spec.threads)
    enhancer = get_enhancer(spec.model, spec.device, spec.threads, spec.refiner_precision)
    if rows_only:
        return shard_rows(spec, shard, enhancer, worker_memory_budget())
    return run_shard(spec, shard, enhancer, get_run_logger(), worker_memory_budget())
