"""Settings of the LocalCluster a flow starts: worker environment (set before spawn) and Dask config."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import dask

from llie import allocator

# Dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536 (distributed.nanny.pre-spawn-environ).
# Setting any MALLOC_*_ variable turns off glibc's dynamic mmap threshold, so every temporary array
# above 128 KiB is mmap'ed, page-faulted and unmapped again, and a 64 KiB trim threshold hands the heap
# top back to the OS after every image: 2 M minor page faults and 2.5x the time for 24 images of
# 600x400 here (benchmarks/README.md). These are the values glibc's own dynamic thresholds settle at on
# 64-bit (mmap 32 MiB, trim twice that): a worker then runs like a plain process (65 k faults), and
# free memory beyond 64 MiB still goes back to the OS. glibc reads them once at process start, so they
# must be in place before the workers are spawned. A value set in the environment wins (Dask's rule).
# ``llie.allocator`` sets the same values at run time in processes that start without them (the CLI).
WORKER_PRE_SPAWN_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD),
}


# Background work of an idle LocalCluster: every worker samples its threads' stacks every 10 ms for the
# dashboard's profile page, and every server checks its event loop every 20 ms. Measured here with two
# idle workers: 1.8 CPU-seconds per 10 s (0.5 per worker, 0.75 in the scheduler and nannies), which
# two busy workers on two cores pay out of their own time; with these settings, 0.3. Cost: no profile
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
