"""Send the task logs a Dask worker still holds to the Prefect API, before that API goes away."""

from __future__ import annotations

import inspect

from prefect.logging.handlers import APILogWorker


async def send_queued_logs(timeout: float = 30.0) -> None:
    """Send every task log this worker process has queued; run on the worker's event loop (``Client.run``).

    A worker sends its task logs in batches, every few seconds. A run that ends sooner would stop its
    API (a temporary one dies with ``llie run``) with the last shards' logs still queued on the
    workers of an external cluster, which outlive it.
    """
    drained = APILogWorker.drain_all(timeout=timeout)
    if inspect.isawaitable(drained):  # always, on an event loop; the type does not say so
        await drained
