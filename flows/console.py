"""What a person sees in a terminal: Dask's and Prefect's chatter turned down through their own settings.

Both are set as environment defaults, so every process started from here (local Dask workers,
Prefect's temporary server, flow-run subprocesses) reads them too, and a value the user set wins.
"""

from __future__ import annotations

import logging
import os
import sys

# Dask's logging config (distributed reads it when imported): the scheduler, nannies and workers
# announce every start, stop and connection at INFO.
DASK_LOGGING_ENV = {"DASK_LOGGING__DISTRIBUTED": "warning"}
# Prefect's console handler (its logging.yml, `handlers.console.level`): INFO lines still reach
# Prefect's API and UI through its API handler; only the terminal gets warnings and errors.
PREFECT_CONSOLE_ENV = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}


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


def quiet_prefect_console() -> None:
    """Prefect's console at warning; call before Prefect is first imported (it reads this once)."""
    for key, value in PREFECT_CONSOLE_ENV.items():
        os.environ.setdefault(key, value)
