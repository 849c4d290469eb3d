"""``llie run --dask-address`` on an external cluster whose workers know no Prefect API.

What a user does after reading the README: a ``dask scheduler`` and a ``dask worker`` started by
hand, ``llie run`` with no ``PREFECT_API_URL``. The workers must report to the run's own API (no
temporary server per worker, task logs in the user's run) and nothing may be left running.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil

from llie.batch import archive
from tests.conftest import REPO, start_dask_cluster, stop_process, subprocess_env, write_images


def _env(home: Path) -> dict[str, str]:
    # Workers would send their task logs every 2 s; at 60 s only the run's own request before it ends
    # can bring them to its API in time, so a run that forgot to ask fails here every time, not by chance.
    env = subprocess_env(
        PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="INFO", PREFECT_LOGGING_TO_API_BATCH_INTERVAL="60"
    )
    env.pop("PREFECT_API_URL", None)
    return env


def _processes_with_home(home: Path) -> list[str]:
    """Command lines of live processes whose PREFECT_HOME is ``home``."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("PREFECT_HOME") == str(home):
                found.append(" ".join(proc.cmdline()))
        except (psutil.Error, OSError):
            continue
    return found


def _start_cluster(home: Path, logs: Path) -> tuple[str, list[subprocess.Popen]]:
    """The README's commands: ``dask scheduler`` and ``dask worker`` with no Prefect API."""
    return start_dask_cluster(_env(home), logs, workers=1, scheduler_cwd=logs)


def test_external_cluster_without_api_url_reports_to_the_runs_own_server(tmp_path, bundle_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    names = [f"p{i}.png" for i in range(4)]
    write_images(inp, names, width=32, height=24)
    worker_home, cli_home = tmp_path / "worker-home", tmp_path / "cli-home"
    address, cluster = _start_cluster(worker_home, tmp_path)
    try:
        command = [
            sys.executable,
            "-m",
            "llie_cli",
            "run",
            str(inp),
            str(out),
            "--shard-size",
            "2",
            "--dask-address",
            address,
            "--run-id",
            "ext",
            "--no-progress",
            *(["--model", bundle_path] if bundle_path else []),
        ]
        done = subprocess.run(command, env=_env(cli_home), cwd=REPO, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert sorted(archive.read_metrics(str(out), "ext").column("rel_path").to_pylist()) == names

        # No worker started a Prefect server of its own: none below the worker, no database in its home.
        below = [" ".join(p.cmdline()) for p in psutil.Process(cluster[1].pid).children(recursive=True)]
        assert not [c for c in below if "prefect" in c or "uvicorn" in c], below
        assert not (worker_home / "prefect.db").exists()
        # The run's temporary server is gone with it.
        assert _processes_with_home(cli_home) == []
    finally:
        for proc in reversed(cluster):
            stop_process(proc)

    # The task runs, and their logs, are in the database of the API the run used.
    with sqlite3.connect(cli_home / "prefect.db") as db:
        states = db.execute("SELECT state_type FROM task_run WHERE name LIKE 'enhance-shard-%'").fetchall()
        logs = [m for (m,) in db.execute("SELECT message FROM log WHERE task_run_id IS NOT NULL")]
    assert sorted(s for (s,) in states) == ["COMPLETED", "COMPLETED"]
    assert len([m for m in logs if " ok, " in m and "errors" in m]) == 2, logs
