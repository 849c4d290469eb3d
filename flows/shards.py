"""Map the shard task onto Dask: a local cluster or an existing one, retries, workers that died."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prefect import unmapped
from prefect.client.orchestration import get_client
from prefect.tasks import exponential_backoff
from prefect_dask import DaskTaskRunner

from flows.console import mute_console_logging
from flows.parameters import Cluster
from flows.worker_deaths import outcome_of, redo_one_by_one, worker_died
from flows.worker_env import api_unreachable_from, local_cluster_settings, tasks_report_to
from llie.batch import storage
from llie.batch.plan import RunPlan
from tasks.enhance import enhance_shard
from tasks.worker_logs import send_queued_logs


def _current_api_url() -> str | None:
    """The API this flow run reports to, including a temporary one Prefect started for us."""
    with get_client(sync_client=True) as client:
        url = str(client.api_url or "")
    return url.rstrip("/") or None


def local_cluster_kwargs(n_workers: int, env: dict[str, str]) -> dict[str, Any]:
    """The LocalCluster a run starts when given no Dask address (``env``: its workers' extra variables)."""
    return {
        "n_workers": n_workers,
        # One task per process; parallelism inside a task comes from torch threads.
        "threads_per_worker": 1,
        "processes": True,
        # ":0" = any free port, so two runs (or a test suite) never fight over 8787.
        "dashboard_address": ":0",
        "env": env,
    }


def cluster_workers(cluster: Cluster) -> int:
    """Tasks the cluster runs at once: a local one's workers, or an existing one's worker threads."""
    if not cluster.dask_address:
        return cluster.workers
    from distributed import Client

    with Client(cluster.dask_address, timeout=60, set_as_default=False) as client:
        return max(1, sum(client.nthreads().values()))


def make_task_runner(dask_address: str | None, n_workers: int, api_url: str | None = None) -> DaskTaskRunner:
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    env = {}
    if api_url:
        # Workers are fresh processes: without this each would boot a temporary API server of
        # its own (slow, and its task runs would land in a different database).
        env["PREFECT_API_URL"] = api_url
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(n_workers, env))


@contextlib.contextmanager
def closed_quietly(runner: DaskTaskRunner) -> Iterator[DaskTaskRunner]:
    """The runner, its local cluster closed without "Worker process still alive after 4.0 seconds, killing".

    A worker busy flushing Prefect's queues as it exits (a busy machine) is killed by its nanny with that
    warning, once the run's work is done and written; during the run the nanny's warnings still show.
    """
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    try:
        with runner as entered:
            try:
                yield entered
            finally:
                nanny.setLevel(logging.ERROR)
    finally:
        nanny.setLevel(level)


def send_worker_logs(client: Any, logger: Any) -> None:
    """Have every worker send its queued task logs now, while this run's API still listens.

    Best effort: the shards are done by now, and a lost log line must not fail the run.
    """
    try:
        outcomes = client.run(send_queued_logs, on_error="return")
    except Exception as exc:  # the scheduler itself gone
        logger.warning("the workers' last task logs may be missing: %s", exc)
        return
    for worker, outcome in outcomes.items():
        if isinstance(outcome, BaseException):
            logger.warning("the last task logs of worker %s may be missing: %s", worker, outcome)


def mute_local_workers(client: Any) -> None:
    """A local cluster's workers print nothing more: the run's work is done and its logs sent.

    Closing the cluster races its workers' heartbeats; one that meets the closed scheduler would print
    "Failed to communicate with scheduler during heartbeat" and a traceback under a run that succeeded.
    """
    with contextlib.suppress(Exception):  # the scheduler gone already: nothing left to quiet
        client.run(mute_console_logging, on_error="ignore")


def enhance_shards(plan: RunPlan, cluster: Cluster, logger: Any) -> list[Any]:
    """Run every shard of the plan; each one's summary, or the exception it failed with after its retries.

    The runner depends on parameters (dask_address, n_workers), which a @flow decorator cannot
    see, so it is started here and the task mapped onto it directly.
    """
    if not plan.shards:
        return []
    spec = cluster.task_spec(plan.spec)
    task = enhance_shard.with_options(
        retries=cluster.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=cluster.retry_delay_seconds) if cluster.retries else 0,
    )
    api_url = _current_api_url()
    if api_unreachable_from(cluster.dask_address, api_url):
        logger.warning(
            "this run's Prefect API is %s, which Dask workers on other machines cannot reach: "
            "start a Prefect server they can reach and set PREFECT_API_URL for llie and the workers",
            api_url,
        )
    with (
        local_cluster_settings(),
        tasks_report_to(api_url),
        closed_quietly(make_task_runner(cluster.dask_address, cluster.workers, api_url)) as runner,
    ):
        futures = runner.map(task, {"shard": list(plan.shards), "spec": unmapped(spec)})
        # One failed shard must not hide the others' results: collect, then decide.
        results = [outcome_of(f) for f in futures]
        for i, shard in enumerate(plan.shards):
            if worker_died(results[i]):
                results[i] = redo_one_by_one(runner, task, shard, spec, logger)
        send_worker_logs(runner.client, logger)
        if not cluster.dask_address:  # an external cluster's workers outlive the run: theirs to print
            mute_local_workers(runner.client)
    for shard, result in zip(plan.shards, results):
        if isinstance(result, BaseException):
            # The run's URLs: a library may quote their credentials without a scheme.
            reason = storage.describe_error(result, spec.secrets())
            logger.error("%s failed after %d retries: %s", shard.shard_id, cluster.retries, reason)
    return results
