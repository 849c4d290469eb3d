"""Prefect tasks: thin wrappers that give llie's library functions retries, logging and caching."""

import logging

from tasks.enhance import enhance_shard

# Prefect's event queue warns "Still processing items" whenever it is still sending events as it stops
# (at the end of every run, and of every task's settings context on a Dask worker): they are sent all the
# same. Set here because every process that runs a task imports this package, Dask workers included.
logging.getLogger("EventsWorker").setLevel(logging.ERROR)

__all__ = ["enhance_shard"]
