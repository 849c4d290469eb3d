"""Injected faults with real processes: a Dask worker killed mid-shard, the S3 server stopped and
started again during a run, ``llie run`` killed half way and resumed, a finished run started again.

Each scenario is one flow run (plus what it takes to interrupt and resume it). Nothing is mocked:
the worker dies by SIGKILL, the S3 server closes its socket, the CLI's process group is killed.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from llie.batch import archive, storage
from llie.batch.imageio import decode_image
from llie.batch.spec import RunSpec
from tests.conftest import (
    FAKE_KEY_ID,
    FAKE_SECRET,
    REPO,
    encode,
    free_port,
    gradient,
    group_gone,
    kill_group,
    mounted,
    run_archive,
    subprocess_env,
    write_images,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _files(root: Path) -> dict[str, int]:
    """Every plain file under ``root`` (hidden ones included) with its mtime."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _without_report(names) -> list[str]:
    """The names minus the run's HTML report (``_metrics/run_id=<id>/_report/``, see llie.audit.report),
    which the flow may write at its end; a hidden or temporary file there would still show."""
    return sorted(n for n in names if not ("/_report/" in n and not Path(n).name.startswith(".")))


def _expected_files(images: list[str], run_id: str, shard_size: int) -> list[str]:
    metrics = f"_metrics/run_id={run_id}"
    shards = archive.plan_shards(images, shard_size)
    return sorted(images + [f"{metrics}/{s.shard_id}.parquet" for s in shards] + [f"{metrics}/_run.json"])


def _one_row_per_image(output_url: str, run_id: str, images: list[str]) -> dict[str, dict]:
    rows = archive.read_metrics(output_url, run_id).to_pylist()
    assert sorted(r["rel_path"] for r in rows) == sorted(images)  # each image once, none twice
    return {r["rel_path"]: r for r in rows}


def _task_runs(flow_run_id):
    """The shard task runs of a flow run (its report task left out)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [t for t in runs if t.name.startswith("enhance-")]


# --------------------------------------------------------------------------- a worker killed mid-shard


def _kill_plugin(target: str, marker: str):
    """A worker plugin that SIGKILLs its own worker process while it writes ``target``.

    It strikes inside ``os.replace`` of the atomic write: the temporary file is complete, the
    rename has not happened, which is the worst moment to die. ``marker`` makes it strike once
    (the plugin is installed again in the worker the nanny starts as a replacement). Defined
    in a function so that cloudpickle ships the class by value to the workers.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class KillWhileWriting(WorkerPlugin):
        def __init__(self, target: str, marker: str):
            self.target, self.marker = target, marker

        def setup(self, worker):
            import os as _os
            import signal as _signal

            original = self.original = _os.replace
            target, marker = self.target, self.marker

            def replace(src, dst, *args, **kwargs):
                if _os.fspath(dst) == target and not _os.path.exists(marker):
                    with open(marker, "w") as fh:
                        fh.write(f"{_os.getpid()}\n{_os.fspath(src)}\n")
                    _os.kill(_os.getpid(), _signal.SIGKILL)
                return original(src, dst, *args, **kwargs)

            _os.replace = replace

        def teardown(self, worker):
            import os as _os

            _os.replace = self.original

    return KillWhileWriting(target, marker)


def test_worker_killed_mid_shard_run_completes_with_one_row_per_image(dask_address, tmp_path, make_images, bundle_path):
    from distributed import Client

    inp, out, marker = tmp_path / "in", tmp_path / "out", tmp_path / "killed"
    images = [f"img-{i}.png" for i in range(9)]
    make_images(inp, images, width=32, height=24)
    shard = archive.plan_shards(images, 3)[1]
    target = out / shard.paths[1]  # the second image of shard-00001: one output of it is already written

    client = Client(dask_address, timeout=30)
    client.register_plugin(_kill_plugin(str(target), str(marker)), name="llie-test-kill")
    try:
        # retries=0: the run can only complete because Dask re-runs the lost task, not by a Prefect retry.
        summary = run_archive(
            str(inp), str(out), shard_size=3, dask_address=dask_address, run_id="killed", model=bundle_path, retries=0
        )
    finally:
        client.unregister_worker_plugin("llie-test-kill")
        client.wait_for_workers(2, timeout=120)  # the nanny's replacement, for the tests that follow
        client.close()

    pid, temp = marker.read_text().split("\n")[:2]
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)  # that worker process really is gone
    assert Path(temp).parent == target.parent and not os.path.exists(temp)  # its half-written file too

    assert (summary["images"], summary["ok"], summary["failed_shards"]) == (9, 9, [])
    rows = _one_row_per_image(str(out), "killed", images)
    assert all(r["status"] == "ok" for r in rows.values())
    assert not rows[shard.paths[1]]["worker"].endswith(f":{pid}")  # redone by another process
    # Exactly the outputs and the metrics: no temporary or partial file anywhere.
    assert _without_report(_files(out)) == _expected_files(images, "killed", 3)
    for name in images:
        decode_image((out / name).read_bytes())


# --------------------------------------------------------------------------- S3 stopped and started again


class RestartableS3:
    """A moto S3 server on a fixed port that can be stopped and started again.

    moto keeps its buckets in this process, so a restarted server still has every object, like a
    real S3 (or MinIO) coming back after an outage.
    """

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = f"llie-outage-{uuid.uuid4().hex[:8]}"  # moto's state is per process, not per server
        self.server = None

    def start(self):
        self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def restartable_s3(monkeypatch):
    import boto3
    import s3fs

    s3 = RestartableS3()
    s3.start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
        # Fail fast inside one attempt (2 tries instead of botocore's 5) so that an outage of a few
        # seconds reaches the shard task and its Prefect retries; a longer outage needs more retries.
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        s3.stop()
        s3fs.S3FileSystem.clear_instance_cache()


def test_unreachable_storage_fails_the_shard_instead_of_recording_broken_images(
    restartable_s3, enhancer, tmp_path, make_images
):
    """The deterministic half of the outage test: a store that cannot be reached is not a broken image."""
    s3, bucket = restartable_s3, restartable_s3.bucket
    make_images(tmp_path / "in", ["a.png"], width=32, height=24)
    storage.write_bytes_atomic(f"s3://{bucket}/in/a.png", (tmp_path / "in" / "a.png").read_bytes())
    [shard] = archive.plan_shards(["a.png"], 1)
    cases = {
        "read": (f"s3://{bucket}/in", str(tmp_path / "out")),
        "write": (str(tmp_path / "in"), f"s3://{bucket}/out"),
    }
    s3.stop()
    for step, (input_url, output_url) in cases.items():
        with pytest.raises(Exception) as info:  # noqa: B017 - whatever the client raises, it must propagate
            archive.process_shard(RunSpec(input_url, output_url), shard, enhancer)
        assert storage.is_unreachable(info.value), (step, info.value)
    s3.start()
    for step, (input_url, output_url) in cases.items():
        [row] = archive.process_shard(RunSpec(input_url, output_url), shard, enhancer)
        assert row["status"] == "ok", (step, row["error"])


def test_s3_stopped_and_started_again_loses_nothing(restartable_s3, bundle_path):
    import boto3

    s3, bucket = restartable_s3, restartable_s3.bucket
    images = [f"photo-{i}.jpg" if i % 2 else f"photo-{i}.png" for i in range(6)]
    for i, name in enumerate(images):
        data = encode(gradient(32, 24, seed=i), "JPEG" if i % 2 else "PNG")
        storage.write_bytes_atomic(f"s3://{bucket}/in/{name}", data)

    events: dict[str, float] = {}
    finished = threading.Event()

    def outage():
        client = boto3.client("s3", endpoint_url=s3.endpoint)
        try:
            while not finished.is_set():
                listed = client.list_objects_v2(Bucket=bucket, Prefix="out/_metrics/").get("Contents", [])
                if any(o["Key"].endswith(".parquet") for o in listed):
                    s3.stop()  # one shard is done, the others are on their way: pull the plug
                    events["stopped"] = time.monotonic()
                    time.sleep(4)
                    return
                time.sleep(0.05)
        finally:
            if s3.server is None:
                s3.start()
                events["started"] = time.monotonic()

    controller = threading.Thread(target=outage, name="s3-outage", daemon=True)
    controller.start()
    try:
        state = run_archive(
            f"s3://{bucket}/in",
            f"s3://{bucket}/out",
            shard_size=1,
            n_workers=1,
            run_id="outage",
            model=bundle_path,
            retries=4,
            retry_delay_seconds=1.0,
            return_state=True,
        )
    finally:
        finished.set()
        controller.join(timeout=30)
    ended = time.monotonic()
    summary = state.result()
    assert events["stopped"] < events["started"] < ended  # the outage happened during the run

    assert (summary["images"], summary["ok"], summary["errors"], summary["failed_shards"]) == (6, 6, 0, [])
    rows = _one_row_per_image(f"s3://{bucket}/out", "outage", images)
    assert all(r["status"] == "ok" for r in rows.values())
    # The shards that hit the outage failed and were retried by Prefect, not recorded as broken images.
    run_counts = sorted(t.run_count for t in _task_runs(state.state_details.flow_run_id))
    assert len(run_counts) == 6 and run_counts[-1] >= 2, run_counts

    listed = boto3.client("s3", endpoint_url=s3.endpoint).list_objects_v2(Bucket=bucket, Prefix="out/")
    keys = _without_report(o["Key"][len("out/") :] for o in listed["Contents"])
    assert keys == _expected_files(images, "outage", 1)  # nothing partial, nothing temporary
    for name in images:
        decode_image(storage.read_bytes(f"s3://{bucket}/out/{name}"))


# --------------------------------------------------------------------------- a run killed half way, resumed


VOLATILE = {"worker", "finished_at", "run_id", "output_path"} | {f"sec_{s}" for s in archive.STAGES}


def _comparable(output_url: str, run_id: str) -> list[dict]:
    rows = archive.read_metrics(output_url, run_id).to_pylist()
    for row in rows:
        assert row["output_path"] == f"{output_url}/{row['rel_path']}"
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in rows), key=lambda r: r["rel_path"])


def _wait_until_idle(dask_address: str, quiet_for: float = 1.5, timeout: float = 120) -> None:
    """Until no task runs or waits anywhere in the cluster (tasks of a dead client finish on their own)."""
    from distributed import Client

    def busy_worker(dask_worker):
        state = dask_worker.state
        return len(state.executing) + len(state.long_running) + len(state.ready) + len(state.constrained)

    def busy_scheduler(dask_scheduler):
        return len(dask_scheduler.tasks)

    deadline, quiet_since = time.monotonic() + timeout, None
    with Client(dask_address, timeout=30) as client:
        while time.monotonic() < deadline:
            busy = sum(client.run(busy_worker).values()) + client.run_on_scheduler(busy_scheduler)
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_for:
                return
            time.sleep(0.1)
    raise TimeoutError("the cluster did not go idle")


def _cli(args: list[str], bundle_path) -> str:
    from click.testing import CliRunner

    from llie_cli.main import cli

    if bundle_path:
        args = args + ["--model", bundle_path]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _start_run(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``llie run`` as a subprocess in its own session, so that everything it starts can be found and killed."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for_a_shard(proc: subprocess.Popen, metrics: Path, log_path: Path, timeout: float = 180) -> None:
    """Until the run has finished a shard (its Parquet file is there)."""
    deadline = time.monotonic() + timeout
    while not (metrics.is_dir() and any(p.suffix == ".parquet" for p in metrics.iterdir())):
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def resumed_run(prefect_harness, dask_address, tmp_path_factory, bundle_path):
    """``llie run`` as a subprocess, SIGKILLed with its process group once a shard has finished,
    then started again with the same run_id (in this process, through the same CLI)."""
    base = tmp_path_factory.mktemp("resume")
    inp, out = base / "in", base / "out"
    images = [f"p{i:02d}.png" for i in range(16)]
    write_images(inp, images, width=32, height=24)
    args = [
        "run",
        str(inp),
        str(out),
        "--shard-size",
        "2",
        "--dask-address",
        dask_address,
        "--run-id",
        "half",
        "--no-progress",
    ]
    metrics = out / "_metrics" / "run_id=half"
    log_path = base / "killed-run.log"
    command = [sys.executable, "-m", "llie_cli", *args, *(["--model", bundle_path] if bundle_path else [])]
    proc = _start_run(command, subprocess_env(), log_path)
    try:
        _wait_for_a_shard(proc, metrics, log_path)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    _wait_until_idle(dask_address)  # shards already running when their client died finish on their own
    done = set(archive.shard_files(str(out), "half"))
    before = _files(out)
    output = _cli(args, bundle_path)
    return dict(
        inp=inp,
        out=out,
        images=images,
        args=args,
        done=done,
        before=before,
        output=output,
        after=_files(out),
        base=base,
    )


def test_killed_run_resumes_only_the_remaining_shards_and_equals_an_uninterrupted_run(
    resumed_run, dask_address, bundle_path
):
    inp, out, images, done = resumed_run["inp"], resumed_run["out"], resumed_run["images"], resumed_run["done"]
    shards = archive.plan_shards(images, 2)
    assert 0 < len(done) < len(shards), f"the kill did not land half way: {sorted(done)}"
    before, after = resumed_run["before"], resumed_run["after"]
    assert not [k for k in before if Path(k).name.startswith(".")], "a partial file survived the kill"

    remaining = [s for s in shards if s.shard_id not in done]
    assert "run half\n  images                16\n" in resumed_run["output"]
    assert f"  shards                8 ({len(done)} resumed)\n" in resumed_run["output"]
    assert f"({sum(len(s) for s in remaining)} processed in" in resumed_run["output"]
    for name, mtime in before.items():  # finished shards were not redone, not even rewritten
        assert after[name] == mtime, name
    assert _without_report(after) == _expected_files(images, "half", 2)

    # The same archive in one uninterrupted run: the same dataset, row for row, value for value.
    whole = resumed_run["base"] / "whole"
    run_archive(str(inp), str(whole), shard_size=2, dask_address=dask_address, run_id="whole", model=bundle_path)
    assert _comparable(str(out), "half") == _comparable(str(whole), "whole")
    for name in images:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name


def test_completed_run_started_again_is_a_noop(resumed_run, bundle_path):
    out = resumed_run["out"]
    assert _without_report(resumed_run["after"]) == _expected_files(resumed_run["images"], "half", 2)  # complete
    output = _cli(resumed_run["args"], bundle_path)
    assert "run half\n  images                16\n" in output and "  shards                8 (8 resumed)\n" in output
    assert "(0 processed in" in output and "ok / error / skipped  16 / 0 / 0" in output
    assert _files(out) == resumed_run["after"]  # not a file written, replaced or touched


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_ends_the_run_and_the_prefect_server_it_started(dask_address, tmp_path, bundle_path):
    """What timeout, systemd and cron wrappers send: the run must stop like after Ctrl-C, taking the
    temporary Prefect server it started down with it, not leave it running as an orphan."""
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, [f"p{i:02d}.png" for i in range(24)], width=32, height=24)
    env = subprocess_env()
    env.pop("PREFECT_API_URL", None)  # no API configured: the CLI starts a temporary server of its own
    command = [
        sys.executable,
        "-m",
        "llie_cli",
        "run",
        str(inp),
        str(out),
        "--shard-size",
        "1",
        "--dask-address",
        dask_address,
        "--run-id",
        "term",
        "--no-progress",
        *(["--model", bundle_path] if bundle_path else []),
    ]
    metrics = out / "_metrics" / "run_id=term"
    log_path = tmp_path / "run.log"
    proc = _start_run(command, env, log_path)
    try:
        _wait_for_a_shard(proc, metrics, log_path)
        session = subprocess.run(
            ["ps", "-ww", "-s", str(proc.pid), "-o", "args="], capture_output=True, text=True
        ).stdout
        assert "prefect.server" in session, session  # the temporary server this is about is running
        proc.send_signal(signal.SIGTERM)  # to the CLI alone, as `timeout` does
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM, log_path.read_text()[-3000:]
        text = log_path.read_text()
        assert "run term stopped (SIGTERM)" in text and "Traceback" not in text, text[-3000:]
        assert "resume it with: llie run " in text and "--run-id term --shard-size 1 --dask-address" in text
        # Everything it started lived in its session: nothing of it may outlive it.
        assert group_gone(proc.pid, 30), "a process of the killed run is still running"
    finally:
        kill_group(proc)


# --------------------------------------------------------------------------- the output disk full or read-only


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; returns the filler file."""
    filler = folder / ".filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_output_disk_fails_the_run_and_the_printed_resume_command_completes_it(
    prefect_harness, dask_address, tmp_path, make_images, bundle_path
):
    """No space on the output is an outage, not four broken photos: the shards fail (Prefect retries
    them), the run exits non-zero with the command that resumes it, and that command, once there is
    space again, completes the run."""
    from click.testing import CliRunner

    from llie_cli.main import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    images = [f"photos/p{i}.png" for i in range(4)]
    make_images(inp, images, width=32, height=24)
    extra = ["--dask-address", dask_address, "--no-progress"]
    args = [
        "run",
        str(inp),
        str(out),
        "--shard-size",
        "2",
        "--run-id",
        "full",
        "--retries",
        "0",
        *(["--model", bundle_path] if bundle_path else []),
    ]
    # The images' folder is a small file system of its own, full; the metrics beside it have room.
    with mounted(out / "photos", "-t", "tmpfs", "-o", "size=256k", "tmpfs") as photos:
        filler = _fill(photos)
        failed = CliRunner().invoke(cli, args + extra)
        assert failed.exit_code == 1, failed.output
        assert "2 shard(s) failed" in failed.output, failed.output
        resume = failed.output.split("resume it with: ", 1)[1].splitlines()[0]
        assert archive.shard_files(str(out), "full") == []  # no shard recorded its photos as broken
        assert not [p for p in photos.iterdir() if p != filler]  # and no partial or temporary file stayed

        filler.unlink()  # space again
        command = shlex.split(resume)
        assert command[:2] == ["llie", "run"]
        resumed = CliRunner().invoke(cli, command[1:] + extra)
        assert resumed.exit_code == 0, resumed.output
        assert "ok / error / skipped  4 / 0 / 0" in resumed.output
        rows = _one_row_per_image(str(out), "full", images)
        assert all(r["status"] == "ok" for r in rows.values())
        for name in images:
            decode_image((out / name).read_bytes())


def test_a_read_only_output_fails_the_shard_instead_of_recording_broken_photos(tmp_path, make_images, enhancer):
    """Read-only (a bind mount remounted ro) and permission errors on the output are outages too."""
    make_images(tmp_path / "in", ["a.png"], width=32, height=24)
    [shard] = archive.plan_shards(["a.png"], 1)
    (tmp_path / "target").mkdir()
    with mounted(tmp_path / "out", "--bind", "-o", "ro", str(tmp_path / "target")):
        with pytest.raises(OSError) as info:
            archive.process_shard(RunSpec(str(tmp_path / "in"), str(tmp_path / "out")), shard, enhancer)
        assert info.value.errno == errno.EROFS and storage.is_write_outage(info.value)
    assert storage.is_write_outage(PermissionError(errno.EACCES, "Permission denied"))
    assert not storage.is_write_outage(IsADirectoryError(errno.EISDIR, "Is a directory"))


# --------------------------------------------------------------------------- foreign files in the metrics folder


def test_foreign_files_in_the_metrics_folder_are_not_read_and_a_bad_one_is_named(
    dask_address, tmp_path, make_images, bundle_path
):
    """A note, a backup copy of a shard file: neither breaks a resume or an audit, nor is counted. A file
    named like a shard but of another schema, or a truncated run manifest, stops both with its name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llie.audit import summary as audit

    inp, out = tmp_path / "in", tmp_path / "out"
    images = [f"p{i}.png" for i in range(4)]
    make_images(inp, images, width=32, height=24)
    common = dict(shard_size=2, dask_address=dask_address, run_id="foreign", model=bundle_path, retries=0)
    run_archive(str(inp), str(out), **common)
    metrics = out / "_metrics" / "run_id=foreign"
    (metrics / "notes.txt").write_text("checked by Ann\n")
    (out / "_metrics" / "notes.txt").write_text("runs of March\n")
    (out / "_metrics" / "backups").mkdir()
    (metrics / "backup-copy.parquet").write_bytes((metrics / "shard-00000.parquet").read_bytes())

    summary = run_archive(str(inp), str(out), **common)  # the resume
    assert (summary["images"], summary["ok"], summary["shards_resumed"]) == (4, 4, 2)
    run = audit.load_run(str(out), "foreign")
    assert run.table.num_rows == 4 and run.duplicates == 0
    assert [(r.run_id, r.images, r.ok) for r in audit.list_runs(str(out))] == [("foreign", 4, 4)]
    assert archive.read_metrics(str(out)).num_rows == 4

    pq.write_table(pa.table({"rel_path": ["x.png"], "score": [1.0]}), metrics / "shard-00007.parquet")
    bad = f"unreadable metrics file {metrics}/shard-00007.parquet: not a shard file of this schema"
    with pytest.raises(ValueError, match=re.escape(bad)):
        run_archive(str(inp), str(out), **common)
    with pytest.raises(audit.AuditError, match=re.escape(bad)):
        audit.load_run(str(out), "foreign")
    (metrics / "shard-00007.parquet").unlink()

    manifest = metrics / archive.RUN_MANIFEST
    manifest.write_bytes(manifest.read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match=re.escape(f"unreadable run manifest {manifest}: ")):
        run_archive(str(inp), str(out), **common)


# --------------------------------------------------------------------------- a photo replaced under the same name


def test_a_photo_changed_under_the_same_name_is_enhanced_again_on_resume(
    dask_address, tmp_path, make_images, bundle_path
):
    """The plan records each photo's size and mtime (the ETag on S3): a resume redoes the changed photo, and
    only it; its shard's other photo and the other shard are not even rewritten."""
    from tests.conftest import encode, gradient

    inp, out = tmp_path / "in", tmp_path / "out"
    images = ["p0.png", "p1.png", "p2.png", "p3.png"]
    make_images(inp, images, width=32, height=24)
    common = dict(shard_size=2, dask_address=dask_address, run_id="changed", model=bundle_path, retries=0)
    run_archive(str(inp), str(out), **common)
    before = _files(out)
    old_output = (out / "p1.png").read_bytes()

    (inp / "p1.png").write_bytes(encode(gradient(40, 30, seed=7, peak=0.1)))  # another photo, same name
    summary = run_archive(str(inp), str(out), **common)
    assert (summary["processed"], summary["ok"], summary["shards_resumed"]) == (1, 4, 1)
    after = _files(out)
    assert (out / "p1.png").read_bytes() != old_output
    assert decode_image((out / "p1.png").read_bytes()).width == 40  # made from the new photo
    rows = _one_row_per_image(str(out), "changed", images)
    assert (rows["p1.png"]["width"], rows["p1.png"]["bytes_in"]) == (40, (inp / "p1.png").stat().st_size)
    metrics = "_metrics/run_id=changed"
    for name in ("p0.png", "p2.png", "p3.png", f"{metrics}/shard-00001.parquet"):
        assert after[name] == before[name], name  # untouched
    assert after[f"{metrics}/shard-00000.parquet"] != before[f"{metrics}/shard-00000.parquet"]


# --------------------------------------------------------------------------- kill -9 of the main process only


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has died
    except FileNotFoundError:
        return False


def test_kill_9_of_llie_run_alone_takes_its_prefect_server_along_and_a_resume_cleans_the_report(
    dask_address, tmp_path, bundle_path
):
    """SIGKILL runs no exit hook: the temporary Prefect server must die with its parent anyway. And a
    report whose writer was killed leaves a temporary file that the resume removes."""
    inp, out = tmp_path / "in", tmp_path / "out"
    images = [f"p{i:02d}.png" for i in range(6)]
    write_images(inp, images, width=32, height=24)
    env = subprocess_env()
    env.pop("PREFECT_API_URL", None)  # no API configured: the CLI starts a temporary server of its own
    args = [
        "run",
        str(inp),
        str(out),
        "--shard-size",
        "1",
        "--dask-address",
        dask_address,
        "--run-id",
        "kill9",
        "--no-progress",
        *(["--model", bundle_path] if bundle_path else []),
    ]
    metrics = out / "_metrics" / "run_id=kill9"
    log_path = tmp_path / "run.log"
    proc = _start_run([sys.executable, "-m", "llie_cli", *args], env, log_path)
    server = None
    try:
        _wait_for_a_shard(proc, metrics, log_path)
        listing = subprocess.run(
            ["ps", "-ww", "-s", str(proc.pid), "-o", "pid=,args="], capture_output=True, text=True
        ).stdout
        [server] = [int(line.split()[0]) for line in listing.splitlines() if "prefect.server.api.server" in line]
        os.kill(proc.pid, signal.SIGKILL)  # the CLI alone, not its process group
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(server):
            assert time.monotonic() < deadline, f"the temporary Prefect server {server} outlived its parent"
            time.sleep(0.2)
    finally:
        kill_group(proc)
    _wait_until_idle(dask_address)

    report = metrics / "_report"
    report.mkdir(exist_ok=True)
    left = report / ".report.html.k9x2ab7q.tmp"  # what a writer killed between write and rename leaves
    left.write_text("<html>half")
    output = _cli(args[:-2] if bundle_path else args, bundle_path)
    assert "ok / error / skipped  6 / 0 / 0" in output
    assert not left.exists()
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- a photo that kills its worker


def _kill_always_plugin(target: str):
    """Like ``_kill_plugin``, but strikes every time that output is written: a photo that always runs its
    worker out of memory (the kernel's OOM killer, or the nanny's memory limit, also use SIGKILL)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class KillOnEveryWrite(WorkerPlugin):
        def __init__(self, target: str):
            self.target = target

        def setup(self, worker):
            import os as _os
            import signal as _signal

            original = self.original = _os.replace
            target = self.target

            def replace(src, dst, *args, **kwargs):
                if _os.fspath(dst) == target:
                    _os.kill(_os.getpid(), _signal.SIGKILL)
                return original(src, dst, *args, **kwargs)

            _os.replace = replace

        def teardown(self, worker):
            import os as _os

            _os.replace = self.original

    return KillOnEveryWrite(target)


def test_a_photo_that_kills_its_worker_costs_only_its_own_row(dask_address, tmp_path, make_images, bundle_path):
    """KilledWorker no longer sinks the shard or escapes the flow: the shard is redone one image per task,
    the culprit gets an error row naming the likely cause, the others are enhanced, the run ends with a
    summary."""
    from distributed import Client

    inp, out = tmp_path / "in", tmp_path / "out"
    images = [f"p{i}.png" for i in range(5)]
    make_images(inp, images, width=32, height=24)
    client = Client(dask_address, timeout=30)
    allowed = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
    # Give up on a task after its first death (Dask's default tries 3 more workers): a shorter test.
    client.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 0))
    client.register_plugin(_kill_always_plugin(str(out / "p1.png")), name="llie-test-oom")
    try:
        summary = run_archive(
            str(inp), str(out), shard_size=4, dask_address=dask_address, run_id="oom", model=bundle_path, retries=0
        )
    finally:
        client.unregister_worker_plugin("llie-test-oom")
        client.run_on_scheduler(lambda dask_scheduler, n=allowed: setattr(dask_scheduler, "allowed_failures", n))
        client.wait_for_workers(2, timeout=120)
        client.close()

    assert (summary["images"], summary["ok"], summary["errors"], summary["failed_shards"]) == (5, 4, 1, [])
    rows = _one_row_per_image(str(out), "oom", images)
    assert (rows["p1.png"]["status"], rows["p1.png"]["error"]) == ("error", "worker died: out of memory?")
    assert all(rows[n]["status"] == "ok" for n in images if n != "p1.png")
    assert sorted(archive.shard_files(str(out), "oom")) == ["shard-00000", "shard-00001"]
    files = _without_report(_files(out))
    assert "p1.png" not in files and not [n for n in files if n.endswith(".tmp")]
    for name in images:
        if name != "p1.png":
            decode_image((out / name).read_bytes())


def test_a_photo_too_big_for_the_worker_memory_is_skipped_before_the_work(
    dask_address, tmp_path, make_images, enhancer
):
    """Each photo's peak memory is estimated from its header and checked against what the worker may still
    use (its Dask memory limit times the terminate fraction, less what it holds): one that does not fit is
    ``skipped`` with the reason, before a pixel is decoded; the others are enhanced."""
    from distributed import Client

    from tasks.enhance import worker_memory_budget

    make_images(tmp_path / "in", ["big.png"], width=400, height=300)
    make_images(tmp_path / "in", ["small.png"], width=40, height=30)
    shard = archive.plan_shards(["big.png", "small.png"], 2)[0]
    budget = archive.memory_needed(40 * 30 * 10)
    rows = {
        r["rel_path"]: r
        for r in archive.process_shard(
            RunSpec(str(tmp_path / "in"), str(tmp_path / "out")), shard, enhancer, memory_budget=budget
        )
    }
    assert rows["small.png"]["status"] == "ok"
    assert rows["big.png"]["status"] == "skipped"
    assert rows["big.png"]["error"].startswith("not enough worker memory: 400x300 needs about ")
    assert rows["big.png"]["sec_decode"] is None or rows["big.png"]["width"] is None  # never decoded
    assert not (tmp_path / "out" / "big.png").exists()

    with Client(dask_address, timeout=30) as client:  # what a real worker reports
        budgets = list(client.run(lambda dask_worker: worker_memory_budget(dask_worker)).values())
    assert budgets and all(isinstance(b, int) and 0 < b < 2**50 for b in budgets), budgets
