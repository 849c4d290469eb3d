"""Settings of the LocalCluster a flow starts: worker environment (set before spawn) and Dask config."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import dask

from llie import allocator

# Dask's nanny gives workers MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's dynamic thresholds and
# makes every image page-fault its arrays in again (benchmarks/README.md, Orchestration); these are the
# values those thresholds settle at. glibc reads them at process start, so they go in before the spawn;
# one set in the environment wins (Dask's rule). ``llie.allocator`` sets them where a process starts without.
WORKER_PRE_SPAWN_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD),
}


# An idle LocalCluster's stack sampling (for the dashboard's profile page) and event-loop ticks take CPU
# that busy workers pay out of their own time (benchmarks/README.md, Orchestration). Cost: no profile
# page in the dashboard, coarser detection of a blocked event loop.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    # Ctrl-C in a terminal reaches the workers too: the run stops them itself (flows.worker_signals)
    "distributed.worker.preload": ["flows.worker_signals"],
}


@contextlib.contextmanager
def local_cluster_settings() -> Iterator[None]:
    """Worker environment and Dask config for a LocalCluster started inside this block.

    Workers receive the nanny's Dask config when spawned, so LOCAL_CLUSTER_CONFIG reaches them too.

    The nanny spawns workers by writing its pre-spawn variables into this process's ``os.environ``
    and never takes them out (OMP_NUM_THREADS=1 and the malloc settings would then reach every later
    subprocess of the flow process), so the environment is restored on the way out.
    """
    saved = dict(os.environ)
    extra = {f"distributed.nanny.pre-spawn-environ.{key}": value for key, value in WORKER_PRE_SPAWN_ENV.items()}
    extra.update(LOCAL_CLUSTER_CONFIG)
    try:
        with dask.config.set(extra):
            yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url if "://" in url else "tcp://" + url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def api_unreachable_from(dask_address: str | None, api_url: str | None) -> bool:
    """True when the workers of ``dask_address`` may run on other machines than an API on loopback."""
    return bool(dask_address and api_url and _is_loopback(api_url) and not _is_loopback(dask_address))


@contextlib.contextmanager
def tasks_report_to(api_url: str | None) -> Iterator[None]:
    """Tasks submitted inside this block report to ``api_url``, the flow run's own API.

    The settings in force when a task is submitted travel with it to the Dask worker, which
    restores them for the task run (``prefect.context.serialize_context``). When this process
    found no PREFECT_API_URL and Prefect started a temporary server for it, those settings hold
    no URL, and every worker process of an external cluster without PREFECT_API_URL of its own
    would start a temporary server of its own: slow, left running, its task logs in a throwaway
    database. Naming the flow's API here sends them all to the one the user is looking at.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if not api_url or PREFECT_API_URL.value():
        yield
        return
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield
