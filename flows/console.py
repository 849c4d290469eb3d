"""What a person sees in a terminal: Prefect's chatter turned down through its own settings (Dask's:
``llie.dask_logging``).

Set as environment defaults, so every process started from here (local Dask workers,
Prefect's temporary server, flow-run subprocesses) reads them too, and a value the user set wins.
"""

from __future__ import annotations

import os

# Prefect's console handler (its logging.yml, `handlers.console.level`): INFO lines still reach
# Prefect's API and UI through its API handler; only the terminal gets warnings and errors.
PREFECT_CONSOLE_ENV = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}


def quiet_prefect_console() -> None:
    """Prefect's console at warning; call before Prefect is first imported (it reads this once)."""
    for key, value in PREFECT_CONSOLE_ENV.items():
        os.environ.setdefault(key, value)
