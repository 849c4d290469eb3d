"""What a person sees in a terminal: Prefect's chatter turned down through its own settings (Dask's:
``llie.dask_logging``).

Set as environment defaults, so every process started from here (local Dask workers,
Prefect's temporary server, flow-run subprocesses) reads them too, and a value the user set wins.
"""

from __future__ import annotations

import logging
import os

# Prefect's console handler (its logging.yml, `handlers.console.level`): INFO lines still reach
# Prefect's API and UI through its API handler; only the terminal gets warnings and errors.
PREFECT_CONSOLE_ENV = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
# A temporary Prefect server started from here would report usage to Prefect, and log an ERROR on every
# run where it cannot (no internet, a proxy).
PREFECT_SERVER_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def no_server_analytics() -> None:
    """A temporary Prefect server started by this process reports nothing to Prefect (a value set wins)."""
    for key, value in PREFECT_SERVER_ENV.items():
        os.environ.setdefault(key, value)


def quiet_prefect_console() -> None:
    """Prefect's console at warning; call before Prefect is first imported (it reads this once)."""
    for key, value in PREFECT_CONSOLE_ENV.items():
        os.environ.setdefault(key, value)
    no_server_analytics()


def mute_console_logging() -> None:
    """No more log lines on the terminal from this process (a stopping run's teardown: Prefect's crash
    report, Dask closing its workers); handlers that send records elsewhere (Prefect's API, files) go on."""
    for handler in _console_handlers():
        handler.setLevel(logging.CRITICAL + 1)


def _console_handlers() -> list[logging.Handler]:
    """The handlers of this process that write to a stream (the terminal), not to a file or an API."""
    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    return [
        handler
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]


class _WithoutTraceback(logging.Formatter):
    """A console formatter's lines without the traceback: other handlers (Prefect's API) still get it."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def console_without_tracebacks() -> None:
    """Log lines on the terminal without their tracebacks; call once Prefect has set up its logging."""
    for handler in _console_handlers():
        if not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter))
