"""Dask's logging turned down through its own config, for every entry point (the CLI, the flows, deployments).

Set as an environment default before Dask is imported (its config reads the environment once), so local
Dask workers and other processes started from here read it too, and a value the user set wins. Importing
this module imports neither Dask nor the flows: ``llie enhance`` starts without them.
"""

from __future__ import annotations

import logging
import os
import sys

# distributed reads this when imported: the scheduler, nannies and workers announce every start,
# stop and connection at INFO.
DASK_LOGGING_ENV = {"DASK_LOGGING__DISTRIBUTED": "warning"}


def quiet_dask_logging() -> None:
    """Dask's own loggers at warning, here and in processes started from here."""
    for key, value in DASK_LOGGING_ENV.items():
        os.environ.setdefault(key, value)
    if "dask" in sys.modules:  # imported already: its config read the environment before this
        import dask

        dask.config.set({"logging.distributed": os.environ["DASK_LOGGING__DISTRIBUTED"]})
    if "distributed" in sys.modules:  # and distributed configured its loggers from that config
        import dask

        for name, level in dask.config.get("logging", {}).items():
            if isinstance(level, str):
                logging.getLogger(name).setLevel(level.upper())
