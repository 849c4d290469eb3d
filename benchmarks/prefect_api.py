"""A temporary Prefect API for the flow benchmark: Prefect's own ephemeral server subprocess.

It keeps its SQLite database under the throwaway PREFECT_HOME that ``benchmarks.run`` sets, so
nothing lands in ``~/.prefect``. Starting it takes seconds (imports, migrations); quick runs start
it in a background thread at the beginning, so that time overlaps the other sections.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryPrefectAPI:
    def __init__(self) -> None:
        self.server = None
        self.start_seconds: float | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, background: bool = False, timeout: int = 120) -> TemporaryPrefectAPI:
        from prefect.server.api.server import SubprocessASGIServer

        self.server = SubprocessASGIServer(port=_free_port())

        def boot() -> None:
            t = time.perf_counter()
            try:
                self.server.start(timeout=timeout)
            except BaseException as exc:  # re-raised by wait()
                self._error = exc
            self.start_seconds = time.perf_counter() - t

        if background:
            self._thread = threading.Thread(target=boot, name="prefect-api-start", daemon=True)
            self._thread.start()
        else:
            boot()
        return self

    def wait(self) -> str:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"temporary Prefect API did not start: {self._error}") from self._error
        return self.server.api_url

    @contextmanager
    def settings(self) -> Iterator[str]:
        """Point this process (and, through the flow, its Dask workers) at the temporary API."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        url = self.wait()
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
            self._drain()

    @staticmethod
    def _drain() -> None:
        """Flush queued logs and events while the API is still up (as prefect_test_harness does)."""
        import inspect

        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        from prefect.utilities.asyncutils import run_coro_as_sync

        async def drain() -> None:
            try:
                result = APILogWorker.instance().drain()
                if inspect.isawaitable(result):
                    await result
            except RuntimeError:
                pass
            result = EventsWorker.drain_all()
            if inspect.isawaitable(result):
                await result

        try:
            run_coro_as_sync(drain())
        except Exception:
            pass

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.server is not None:
            self.server.stop()
