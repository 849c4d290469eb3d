"""A temporary Prefect API server that cannot outlive the ``llie run`` that started it.

Without a configured API, Prefect starts a temporary server as a child process and stops it at exit.
A process killed with SIGKILL runs no exit code, so that server would run on as an orphan (hundreds of
MB, one more per killed run). Started here instead, the server asks the kernel (Linux ``prctl``
``PR_SET_PDEATHSIG``) to kill it when its parent dies, however the parent dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

# Runs in the server's process before it becomes the server (exec): the death signal survives exec.
_LAUNCHER = """
import ctypes, os, signal, sys
parent, command = int(sys.argv[1]), sys.argv[2:]
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
except (AttributeError, OSError):  # not Linux: as before, the parent's exit hook is all there is
    pass
if os.getppid() != parent:  # the parent died before the signal was armed
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *command])
"""


def start_if_needed() -> None:
    """Start Prefect's temporary server now, tied to this process, when Prefect would start one anyway.

    Call it from the main thread: the kernel ties the child to the thread that started it. Prefect's
    clients then find this server (it is the one instance they would have started themselves).
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or threading.current_thread() is not threading.main_thread():
        return
    if None in SubprocessASGIServer._instances:  # already started in this process
        return
    _TiedServer().start()


def _server_class():
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer


class _TiedServer(_server_class()):
    def _run_uvicorn_command(self) -> subprocess.Popen:
        import prefect
        from prefect.settings import get_current_settings

        # The command and environment of Prefect's own temporary server, behind the launcher.
        command = [
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        # A process group of its own: a terminal's Ctrl-C goes to the whole foreground group, and the
        # server must outlive it long enough for the interrupted run to record its state and stop.
        return subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(os.getpid()), *command], env=env, process_group=0)
