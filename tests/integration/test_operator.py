"""``llie run`` as an operator meets it in a terminal, on the README's default route (no PREFECT_API_URL: a
temporary Prefect server; a local Dask cluster) and a user's plain environment: Ctrl-C to the whole process
group, a clean run's output, and one line for each error that stops a run before it starts."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llie.batch import archive
from tests.conftest import REPO, free_port, group_gone, kill_group, subprocess_env, write_images

# What the Makefile and tests/conftest.py set that a user's shell does not.
_NOT_A_USERS = (
    "PREFECT_API_URL",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "PREFECT_LOGGING_LEVEL",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
    "DASK_LOGGING__DISTRIBUTED",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
)


def _users_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = subprocess_env(PREFECT_HOME=str(tmp_path / "prefect-home"), **extra)
    for key in _NOT_A_USERS:
        if key not in extra:
            env.pop(key, None)
    return env


def _llie(args: list[str], env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llie_cli", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _problem_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(r"\b(ERROR|WARNING|Traceback)\b", line)]


def _model(bundle_path: str | None) -> list[str]:
    return ["--model", bundle_path] if bundle_path else []


def test_a_clean_run_on_the_default_route_prints_no_error_or_warning(tmp_path, bundle_path):
    """No telemetry ERROR from the temporary server, no EventsWorker WARNING, from the CLI or its workers."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, [f"p{i}.png" for i in range(4)], width=32, height=24)
    done = _llie(
        ["run", str(inp), str(out), "--workers", "2", "--no-progress", *_model(bundle_path)], _users_env(tmp_path)
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert _problem_lines(text) == [], text[-3000:]
    assert "ok / error / skipped  4 / 0 / 0" in done.stdout


def test_prefect_event_queue_warnings_are_quiet_wherever_a_task_runs():
    """Every process that runs a task imports ``tasks``; its EventsWorker then warns no more."""
    code = "import tasks, logging; print(logging.getLogger('EventsWorker').getEffectiveLevel())"
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == str(40), done.stderr[-2000:]


def _wait_for_a_shard(proc: subprocess.Popen, metrics: Path, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (metrics.is_dir() and any(p.suffix == ".parquet" for p in metrics.rglob("shard-*"))):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.05)


def test_ctrl_c_to_the_process_group_stops_a_default_run_in_seconds_with_its_resume_command(
    tmp_path, bundle_path, prefect_harness
):
    """What a terminal does on ^C: SIGINT to every process of the foreground group (the CLI, the temporary
    Prefect server, the local Dask workers). The run stops within seconds, says so in a line with its run id,
    prints the command that resumes it, and that command finishes the run."""
    inp, out = tmp_path / "in", tmp_path / "out"
    images = [f"p{i:02d}.png" for i in range(8)]
    write_images(inp, images, width=32, height=24)
    command = [sys.executable, "-m", "llie_cli", "run", str(inp), str(out), "--shard-size", "1", "--workers", "2"]
    command += ["--run-id", "ctrl-c", "--no-progress", *_model(bundle_path)]
    log = tmp_path / "run.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            command, cwd=REPO, env=_users_env(tmp_path), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_a_shard(proc, out / "_metrics" / "run_id=ctrl-c", log)
        os.killpg(proc.pid, signal.SIGINT)
        stopped = time.monotonic()
        assert proc.wait(timeout=30) == 128 + signal.SIGINT, log.read_text()[-3000:]
        took = time.monotonic() - stopped
        assert group_gone(proc.pid, 20), "a process of the stopped run is still running"
    finally:
        kill_group(proc)
    text = log.read_text()
    assert took < 20, (took, text[-3000:])
    assert "Traceback" not in text and "ConnectError" not in text, text[-3000:]
    assert "run ctrl-c stopped (SIGINT)" in text, text[-3000:]
    [resume] = re.findall(r"^resume it with: (.*)$", text, flags=re.M)
    assert shlex.split(resume)[:2] == ["llie", "run"] and "--run-id ctrl-c" in resume and "--shard-size 1" in resume

    # the printed command, as printed, finishes the run (here against the session's API, to save a server start)
    env = _users_env(tmp_path, PREFECT_API_URL=prefect_harness)
    done = _llie([*shlex.split(resume)[1:], "--no-progress"], env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert sorted(archive.read_metrics(str(out), "ctrl-c").column("rel_path").to_pylist()) == images


# --------------------------------------------------------------------------- one line, before anything starts


@pytest.fixture
def users_env(tmp_path):
    return _users_env(tmp_path)


def _one_line(done: subprocess.CompletedProcess) -> str:
    text = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, text[-3000:]
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text[-3000:]
    return text


def test_a_missing_input_folder_is_one_line(users_env, tmp_path):
    text = _one_line(_llie(["run", str(tmp_path / "nowhere"), str(tmp_path / "out")], users_env))
    assert text == f"Error: input {tmp_path / 'nowhere'} not found: no such folder"
    assert not (tmp_path / "out").exists()


def test_a_wrong_bucket_is_one_line_without_resume_advice(s3, tmp_path, make_images):
    env = subprocess_env(AWS_ENDPOINT_URL=s3.endpoint)
    env.pop("PREFECT_API_URL", None)
    text = _one_line(_llie(["run", "s3://no-such-bucket-llie/raw", str(tmp_path / "out")], env))
    assert text.startswith("Error: input s3://no-such-bucket-llie/raw not found"), text
    make_images(tmp_path / "in", ["a.png"])
    text = _one_line(_llie(["run", str(tmp_path / "in"), "s3://no-such-bucket-llie/out"], env))
    assert text == "Error: output s3://no-such-bucket-llie/out: no such bucket"


def test_an_unreachable_prefect_api_is_one_line(tmp_path, make_images):
    make_images(tmp_path / "in", ["a.png"])
    api = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = _users_env(tmp_path, PREFECT_API_URL=api)
    text = _one_line(_llie(["run", str(tmp_path / "in"), str(tmp_path / "out")], env, timeout=120))
    assert text.startswith(f"Error: cannot reach the Prefect API at {api} (PREFECT_API_URL): ConnectError"), text


def test_audit_of_an_unreachable_store_is_one_line_and_debug_shows_the_traceback(users_env):
    endpoint = f"http://127.0.0.1:{free_port()}"
    args = ["audit", "s3://archive/enhanced", "--storage-option", f"endpoint_url={endpoint}"]
    args += ["--storage-option", "key=AKIAUNREACHABLE0001", "--storage-option", "secret=unreachable-secret-0123"]
    text = _one_line(_llie(args, users_env, timeout=120))
    assert text.startswith("Error: cannot reach the storage: EndpointConnectionError"), text
    assert "unreachable-secret-0123" not in text
    debug = _llie(["--debug", *args], users_env, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


# --------------------------------------------------------------------------- shard sizes and the resume command


def test_auto_shard_size():
    from llie.batch.spec import DEFAULT_SHARD_SIZE, MIN_SHARD_SIZE, auto_shard_size

    assert auto_shard_size(11, 2) == MIN_SHARD_SIZE == 2  # 6 shards for 2 workers, not one of 11
    assert auto_shard_size(100, 2) == 13  # about 4 per worker
    assert auto_shard_size(100_000, 8) == DEFAULT_SHARD_SIZE
    assert auto_shard_size(0, 4) == MIN_SHARD_SIZE


def test_shards_are_sized_for_the_workers_and_a_resume_keeps_its_size_and_prints_it(
    prefect_harness, dask_address, tmp_path, make_images, bundle_path
):
    """11 photos on an external cluster of 2 workers: shards of 2, both workers busy. A resume keeps the size
    without being told; one refused for another size prints the command with the run's own size, which works."""
    from click.testing import CliRunner

    from llie_cli.main import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, [f"p{i:02d}.png" for i in range(11)], width=32, height=24)
    common = ["--dask-address", dask_address, "--no-progress", *_model(bundle_path)]
    first = CliRunner().invoke(cli, ["run", str(inp), str(out), "--run-id", "sized", *common])
    assert first.exit_code == 0, first.output
    manifest = archive.read_run_manifest(str(out), "sized")
    assert (manifest["shard_size"], manifest["shards"]) == (2, 6)
    assert len(set(archive.read_metrics(str(out), "sized").column("worker").to_pylist())) == 2

    make_images(inp, ["q1.png", "q2.png"], width=32, height=24)
    refused = CliRunner().invoke(cli, ["run", str(inp), str(out), "--run-id", "sized", "--shard-size", "5", *common])
    assert refused.exit_code == 1 and "started with shard_size=2, not 5" in refused.output, refused.output
    [resume] = re.findall(r"^resume it with: (.*)$", refused.output, flags=re.M)
    assert f"--run-id sized --shard-size 2 --dask-address {dask_address}" in resume, resume
    resumed = CliRunner().invoke(cli, [*shlex.split(resume)[1:], "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert (
        "images                13\n  ok / error / skipped  13 / 0 / 0\n  shards                7 (6 resumed)\n"
        in resumed.output
    )

    # a resume without --shard-size keeps the run's own, whatever the workers now
    again = CliRunner().invoke(cli, ["run", str(inp), str(out), "--run-id", "sized", *common])
    assert again.exit_code == 0 and "shards                7 (7 resumed)\n" in again.output, again.output


# --------------------------------------------------------------------------- photos left as they were


def _bright_jpeg(seed: int = 0) -> bytes:
    import numpy as np

    from tests.conftest import encode

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:64]
    img = 150 + 40 * np.sin(x / 7.0)[..., None] * np.array([1.0, 0.8, 0.6]) + rng.normal(0, 4, (48, 64, 3))
    return encode(np.clip(img + y[..., None] * 0.5, 0, 255).astype(np.uint8), "JPEG")


def test_a_photo_the_method_leaves_as_it_is_is_copied_byte_for_byte_and_counted(
    prefect_harness, dask_address, tmp_path, make_images, bundle_path, enhancer
):
    from click.testing import CliRunner

    from llie_cli.main import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, ["dark.jpg"])
    (inp / "bright.jpg").write_bytes(_bright_jpeg())
    args = ["run", str(inp), str(out), "--dask-address", dask_address, "--run-id", "copy", "--no-progress"]
    result = CliRunner().invoke(cli, [*args, *_model(bundle_path)])
    assert result.exit_code == 0, result.output
    assert (out / "bright.jpg").read_bytes() == (inp / "bright.jpg").read_bytes()  # not encoded again
    assert (out / "dark.jpg").read_bytes() != (inp / "dark.jpg").read_bytes()
    rows = {r["rel_path"]: r for r in archive.read_metrics(str(out), "copy").to_pylist()}
    assert rows["bright.jpg"]["unchanged"] is True and rows["bright.jpg"]["status"] == "ok"
    assert rows["bright.jpg"]["bytes_out"] == rows["bright.jpg"]["bytes_in"]
    assert rows["dark.jpg"]["unchanged"] is False
    # the capture gate's share kept, as the enhancer finds it for the photo; none for a photo left as it was
    from llie.batch.imageio import decode_image

    dark = decode_image((inp / "dark.jpg").read_bytes())
    kept = enhancer.enhance(dark.rgb, mask=dark.opaque).exposure_kept
    assert rows["dark.jpg"]["exposure_kept"] == pytest.approx(kept) and 0 <= kept <= 1
    assert rows["bright.jpg"]["exposure_kept"] is None
    audit = CliRunner().invoke(cli, ["audit", str(out)])
    assert audit.exit_code == 0 and "1 of the ok images left as they were (copied byte for byte)" in audit.output

    # no references: the run's report shows before/after photos picked by no-reference statistics
    from llie.audit import summary as au

    flagged = {f.reason: f.image.rel_path for f in au.summarise(au.load_run(str(out), "copy")).flagged}
    assert flagged["largest change"] == "dark.jpg" and flagged["darkest result"] == "dark.jpg"
    assert flagged["brightest result"] == "bright.jpg" and "most noise left" in flagged
    page = (out / "_metrics" / "run_id=copy" / "_report" / "report.html").read_text()
    assert '<figure id="contact_flagged"' in page and "largest change" in page and "No image ranked" not in page

    # llie enhance does the same
    folder = tmp_path / "enhanced"
    done = CliRunner().invoke(cli, ["enhance", "--input", str(inp), "--output", str(folder), *_model(bundle_path)])
    assert done.exit_code == 0, done.output
    assert (folder / "bright.jpg").read_bytes() == (inp / "bright.jpg").read_bytes()


@pytest.mark.parametrize("column", sorted(archive.ADDED_COLUMNS))
def test_shard_files_from_before_an_added_column_still_read(tmp_path, make_images, enhancer, column):
    import pyarrow.parquet as pq

    from llie.batch.shard import run_shard
    from llie.batch.spec import RunSpec

    make_images(tmp_path / "in", ["a.png"])
    spec = RunSpec(str(tmp_path / "in"), str(tmp_path / "out"), run_id="old", shard_size=4, stages="hist")
    run_shard(spec, archive.plan_shards(["a.png"], 4)[0], enhancer)
    path = tmp_path / "out" / "_metrics" / "run_id=old" / "shard-00000.parquet"
    table = pq.read_table(path)
    assert table.column(column).null_count == 0  # written by this llie
    pq.write_table(table.drop([column]), path)  # as an older llie wrote it
    [row] = archive.read_metrics(str(tmp_path / "out"), "old").to_pylist()
    assert row["rel_path"] == "a.png" and row[column] is None


# --------------------------------------------------------------------------- one vocabulary in --help


def test_the_commands_share_one_vocabulary():
    """An option that several commands have means the same thing in each, in the same words."""
    from deployments.serve import main as serve
    from llie_cli.main import cli
    from llie_cli.run import run_command

    commands = {"enhance": cli.commands["enhance"], "run": run_command, "serve": serve}
    helps = {name: {o: p.help for p in c.params for o in p.opts} for name, c in commands.items()}
    for option in ("--model", "--reference", "--device", "--max-pixels"):
        assert helps["enhance"][option] == helps["run"][option] == helps["serve"].get(option, helps["run"][option])
    for option in ("--shard-size", "--retries", "--dask-address", "--workers", "--max-pixels", "--model"):
        assert helps["run"][option] == helps["serve"][option], option
    assert helps["enhance"]["--max-pixels"].startswith("Skip ")
    assert all(h["--workers"].startswith("Photos enhanced at a time") for h in helps.values())
    assert all(p.help for p in serve.params), [p.name for p in serve.params if not p.help]
    # serve takes the words of llie enhance (the -url names of earlier versions too)
    assert {"--input", "--output", "--reference", "--input-url"} <= set(helps["serve"])
    assert "never from the URL" not in run_command.help and "--storage-option" in run_command.help


def test_enhance_skips_a_photo_over_max_pixels_as_run_does(tmp_path, make_images, bundle_path):
    from click.testing import CliRunner

    from llie_cli.main import cli

    make_images(tmp_path / "in", ["small.png"], width=16, height=12)
    make_images(tmp_path / "in", ["big.png"], width=64, height=48)
    args = ["enhance", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--stages", "hist"]
    done = CliRunner().invoke(cli, [*args, "--max-pixels", "1000", *_model(bundle_path)])
    assert done.exit_code == 0, done.output
    assert (
        "skipped: big.png: " in done.output and "enhanced 1 of 2 images" in done.output and ", 1 skipped" in done.output
    )
    assert (tmp_path / "out" / "small.png").is_file() and not (tmp_path / "out" / "big.png").exists()
