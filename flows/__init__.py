"""Prefect flows composed from the tasks in ``tasks``: ``flows.enhance_archive.enhance_archive``.

Nothing of Prefect is imported here, so entry points (``llie_cli``, ``flows.demo``) can adjust
Prefect's settings through the environment before Prefect is first imported. Dask's logging is
turned down here (``llie.dask_logging``), since every entry point that runs a flow (the demo,
deployments, a flow run started by a Prefect worker) imports this package; the CLI does it too.
"""

from llie.dask_logging import quiet_dask_logging

quiet_dask_logging()
