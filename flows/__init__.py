"""Prefect flows composed from the tasks in ``tasks``: ``flows.enhance_archive.enhance_archive``.

Nothing of Prefect is imported here, so entry points (``llie_cli``, ``flows.demo``) can adjust
Prefect's settings through the environment before Prefect is first imported. Dask's logging is
turned down here, since every entry point (the CLI, the demo, deployments, a flow run started by
a Prefect worker) imports this package.
"""

from flows.console import quiet_dask_logging

quiet_dask_logging()
