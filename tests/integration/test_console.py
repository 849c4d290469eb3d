"""What ``llie run`` prints in a terminal: a bar over images, no Dask or Prefect INFO chatter, the
summary once and readable, and one clear line when the storage cannot be reached."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from flows.artifacts import summary_text
from tests.conftest import REPO, free_port, subprocess_env, write_images


def _llie(args: list[str], **env: str) -> subprocess.CompletedProcess:
    child = subprocess_env(PREFECT_LOGGING_LEVEL="INFO", **env)
    # as a user's shell has it: the settings under test are the CLI's own defaults
    for key in ("DASK_LOGGING__DISTRIBUTED", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"):
        child.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "llie_cli", *args], env=child, cwd=REPO, capture_output=True, text=True, timeout=400
    )


def test_run_prints_a_bar_over_images_and_one_readable_summary(prefect_harness, tmp_path, bundle_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, [f"p{i}.png" for i in range(5)], width=32, height=24)
    done = _llie(
        [
            "run",
            str(inp),
            str(out),
            "--workers",
            "1",
            "--shard-size",
            "2",
            "--run-id",
            "quiet",
            *(["--model", bundle_path] if bundle_path else []),
        ]
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert not re.search(r"distributed\.[\w.]+ - INFO", text), text[-3000:]
    assert "| INFO" not in text, text[-3000:]
    # the bar counts images (5, in shards of 2), not shards
    assert re.search(r"run quiet: 100%.*\b5/5\b", done.stderr), done.stderr[-2000:]
    assert text.count("\nrun quiet\n  images                5\n") == 1 and "  shards                3\n" in done.stdout
    assert "{'run_id'" not in text and "mean PSNR" in done.stdout


def test_unreachable_storage_is_one_clear_line(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = _llie(
        [
            "run",
            "s3://archive/raw",
            str(tmp_path / "out"),
            "--no-progress",
            "--storage-option",
            f"endpoint_url={endpoint}",
            "--storage-option",
            "key=AKIAUNREACHABLE0001",
            "--storage-option",
            "secret=unreachable-secret-0123",
            "--storage-option",
            "client_kwargs.region_name=us-east-1",
        ],
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
    )
    text = (done.stdout + done.stderr).strip()
    assert done.returncode == 1
    assert text.splitlines()[0].startswith("Error: cannot reach s3://archive/raw: EndpointConnectionError"), text
    assert len(text.splitlines()) == 1 and "Traceback" not in text
    assert "unreachable-secret-0123" not in text
    assert not (tmp_path / "out").exists()


def test_summary_text_is_lines_not_a_dict():
    summary = {
        "run_id": "r",
        "images": 3,
        "shards": 2,
        "shards_resumed": 1,
        "ok": 2,
        "errors": 1,
        "skipped": 0,
        "mean_psnr": None,
        "images_per_second": 1.5,
        "processed": 2,
        "seconds": 1.3,
        "output_url": "out",
        "metrics_url": "out/_metrics/run_id=r",
        "failed_shards": [],
    }
    text = summary_text(summary)
    assert text.splitlines()[:4] == [
        "run r",
        "  images                3",
        "  ok / error / skipped  2 / 1 / 0",
        "  shards                2 (1 resumed)",
    ]
    assert "n/a (no references)" in text and "--retry-failed" in text and "{" not in text


@pytest.mark.parametrize("entry", ["llie_cli.main", "deployments.serve"])  # flows.demo: as llie_cli
def test_every_entry_point_quiets_dask_through_its_config(entry):
    """Importing any entry point sets Dask's logging config, for its own loggers and its children."""
    code = (
        f"import {entry}, logging, os, dask; "
        "print(os.environ.get('DASK_LOGGING__DISTRIBUTED'), dask.config.get('logging.distributed'), "
        "logging.getLogger('distributed').getEffectiveLevel() >= logging.WARNING)"
    )
    env = subprocess_env()
    env.pop("DASK_LOGGING__DISTRIBUTED", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["warning", "warning", "True"], done.stderr[-2000:]
