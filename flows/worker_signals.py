"""A Dask preload (``distributed.worker.preload``) for the workers of a local cluster: Ctrl-C stops their
terminal output, not them.

A terminal sends Ctrl-C to every process of its foreground group, local workers included. The run
they work for stops them itself (it closes its cluster); dying on their own first, each would print
a traceback, and closing, each would log its cancelled tasks.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from flows.console import mute_console_logging


def _on_interrupt(signum: int, frame: Any) -> None:
    mute_console_logging()


def dask_setup(worker: Any) -> None:
    if threading.current_thread() is threading.main_thread():  # signals can be set from there only
        signal.signal(signal.SIGINT, _on_interrupt)
