"""Links, FIFOs, unreadable folders and odd names met by a run, and the files other runs share with it.

Real files, links, FIFOs and processes; the shard code of the flow (``llie.batch.plan``, ``llie.batch.shard``)
and, where the command itself is the point, ``llie enhance`` and ``llie run``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from llie.batch import archive, localfs, storage
from llie.batch.plan import plan_run, remove_partial_files
from llie.batch.shard import run_shard
from llie.batch.spec import RunSpec
from tests.conftest import run_archive, subprocess_env, write_images


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run_all(spec: RunSpec, enhancer) -> list[dict]:
    plan = plan_run(spec)
    return [run_shard(plan.spec, shard, enhancer) for shard in plan.shards]


def _rows(out: Path, run_id: str) -> dict[str, dict]:
    return {r["rel_path"]: r for r in pq.read_table(out / "_metrics" / f"run_id={run_id}").to_pylist()}


# --------------------------------------------------------------------------- 1. links in the output


def test_a_folder_link_in_the_output_never_writes_over_the_originals_llie_enhance(tmp_path, bundle_path):
    from llie_cli.main import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["sub/a.png", "b.png"])
    out.mkdir()
    os.symlink("../in/sub", out / "sub")  # out/sub is in/sub
    before = _snapshot(inp)
    args = ["enhance", "--input", str(inp), "--output", str(out), "--stages", "hist", "--workers", "1"]
    result = CliRunner().invoke(cli, args + (["--model", bundle_path] if bundle_path else []))
    assert _snapshot(inp) == before  # no original overwritten, nothing added beside them
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "sub/a.png: a link leads out of the output folder" in result.output
    assert (out / "b.png").is_file()


def test_a_folder_link_in_the_output_never_writes_over_the_originals_llie_run(
    prefect_harness, dask_address, tmp_path, bundle_path
):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["sub/a.png", "sub/deeper/c.png", "b.png"])
    out.mkdir()
    os.symlink(inp / "sub", out / "sub")
    before = _snapshot(inp)
    summary = run_archive(
        str(inp), str(out), run_id="link-out", dask_address=dask_address, model=bundle_path, retries=0
    )
    assert _snapshot(inp) == before
    assert (summary["ok"], summary["errors"], summary["failed_shards"]) == (1, 2, [])
    rows = _rows(out, "link-out")
    for rel in ("sub/a.png", "sub/deeper/c.png"):
        assert (
            rows[rel]["error"]
            == "write: OutsideRootError: a link leads out of the output folder: not written through it"
        )


def test_a_folder_swapped_for_a_link_after_the_listing_reads_nothing_outside_the_input(tmp_path, enhancer):
    inp, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    write_images(inp, ["sub/a.png", "b.png"])
    write_images(outside, ["a.png"], peak=0.9)  # a file the run was never pointed at
    spec = RunSpec(str(inp), str(out), run_id="swap", shard_size=10)
    plan = plan_run(spec)
    shutil.rmtree(inp / "sub")
    os.symlink(outside, inp / "sub")  # between the listing and the read
    run_shard(plan.spec, plan.shards[0], enhancer)
    rows = _rows(out, "swap")
    assert rows["sub/a.png"]["status"] == "error"
    assert rows["sub/a.png"]["error"] == "read: OutsideRootError: a link leads out of its folder: not read"
    assert not (out / "sub" / "a.png").exists() and rows["b.png"]["status"] == "ok"


def test_the_runs_record_is_never_written_through_a_link_out_of_the_output(tmp_path, enhancer):
    inp, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    write_images(inp, ["a.png"])
    elsewhere.mkdir()
    out.mkdir()
    os.symlink(elsewhere, out / "_metrics")
    with pytest.raises(localfs.OutsideRootError):
        plan_run(RunSpec(str(inp), str(out), run_id="record"))
    assert list(elsewhere.iterdir()) == []


# --------------------------------------------------------------------------- 6. FIFOs


def test_a_photo_replaced_by_a_fifo_after_the_listing_does_not_hang_the_shard(tmp_path, enhancer):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png", "b.png", "c.png"])
    spec = RunSpec(str(inp), str(out), run_id="fifo", shard_size=10)
    plan = plan_run(spec)
    (inp / "b.png").unlink()
    os.mkfifo(inp / "b.png")
    done = threading.Event()
    worker = threading.Thread(target=lambda: (run_shard(plan.spec, plan.shards[0], enhancer), done.set()), daemon=True)
    worker.start()
    finished = done.wait(60)
    if not finished:  # the old behaviour: blocked in open(); a writer's open lets it go, for a clean exit
        fd = os.open(inp / "b.png", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(30)
    assert finished, "the shard hung on a FIFO"
    rows = _rows(out, "fifo")
    assert rows["b.png"]["error"] == "read: NotRegularFileError: a FIFO, not a regular file: not read"
    assert [rows[n]["status"] for n in ("a.png", "c.png")] == ["ok", "ok"]


def test_open_regular_refuses_fifos_and_devices_without_blocking(tmp_path):
    from llie.batch.imageio import stored_pixels

    os.mkfifo(tmp_path / "f.png")
    started = time.monotonic()
    for path, kind in ((tmp_path / "f.png", "a FIFO"), (Path("/dev/zero"), "a device"), (tmp_path, "a folder")):
        with pytest.raises(localfs.NotRegularFileError, match=kind):
            localfs.read_regular(str(path))
    assert stored_pixels(tmp_path / "f.png") == 0  # llie enhance plans memory from it
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- 3. temporary files of other runs


def test_the_cleanup_of_one_run_leaves_the_temporary_file_another_run_is_writing(tmp_path, enhancer):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png", "b.png"])
    spec = RunSpec(str(inp), str(out), run_id="cleanup-a", shard_size=10)
    plan = plan_run(spec)
    run_shard(plan.spec, plan.shards[0], enhancer)
    writing = out / f"{localfs.temp_prefix('a.png', str(out))}abcd1234.tmp"  # another run's writer, mid-write
    abandoned = out / f"{localfs.temp_prefix('b.png', str(out))}efgh5678.tmp"  # a killed writer's
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, b'half')\nprint('locked', flush=True)\ntime.sleep(60)\n",
            str(writing),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        abandoned.write_bytes(b"half")
        old = time.time() - 60  # both older than any grace period: only the lock tells them apart
        for path in (writing, abandoned):
            os.utime(path, (old, old))
        removed = remove_partial_files(plan)
        assert removed == [abandoned.name] and writing.read_bytes() == b"half" and not abandoned.exists()
    finally:
        holder.kill()
        holder.wait()
    assert remove_partial_files(plan) == [writing.name]  # its writer gone, it is abandoned too


def test_an_atomic_write_holds_its_temporary_file_locked(tmp_path, monkeypatch):
    """What the cleanup relies on: a live writer's temporary file cannot be locked by anyone else."""
    seen: list[bool] = []
    real_write = os.write

    def write(fd, data):  # a spy on the temporary file while it is written: try to take its lock
        other = os.open(os.readlink(f"/proc/self/fd/{fd}"), os.O_RDONLY)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(False)
        except BlockingIOError:
            seen.append(True)
        finally:
            os.close(other)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    storage.write_bytes_atomic(str(tmp_path / "x.png"), b"data")
    monkeypatch.undo()
    assert seen == [True] and (tmp_path / "x.png").read_bytes() == b"data"


# --------------------------------------------------------------------------- 4. unreadable folders


def _without_read_override() -> list[str]:
    """As root a mode of 000 reads anyway: drop the capabilities that let it (what a non-root user lacks)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to read as root without CAP_DAC_OVERRIDE")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_an_unreadable_folder_is_a_warning_and_the_rest_runs(tmp_path, bundle_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png", "lost+found/x.png", "sub/b.png"])
    (inp / "lost+found").chmod(0)
    prefix = _without_read_override()
    try:
        model = ["--model", bundle_path] if bundle_path else []
        enhance = subprocess.run(
            [*prefix, sys.executable, "-m", "llie_cli", "enhance", "--input", str(inp), "--output", str(out / "e")]
            + ["--stages", "hist", "--workers", "1", *model],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=300,
        )
        planned = subprocess.run(
            [*prefix, sys.executable, "-c", _PLAN_SCRIPT, str(inp), str(out / "r")],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=300,
        )
    finally:
        (inp / "lost+found").chmod(0o755)
    assert enhance.returncode == 0, enhance.stderr
    assert "Traceback" not in enhance.stderr
    assert "warning: cannot read folder lost+found (Permission denied): its photos are left out" in enhance.stderr
    assert "enhanced 2 of 2 images" in enhance.stdout
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.split() == ["a.png", "sub/b.png"]
    assert "cannot read folder lost+found (Permission denied) of the input: its images are left out" in planned.stderr


_PLAN_SCRIPT = """
import logging, sys
from llie.batch.plan import plan_run
from llie.batch.spec import RunSpec
logging.basicConfig(level=logging.WARNING)
plan = plan_run(RunSpec(sys.argv[1], sys.argv[2]))
print(*plan.paths)
"""


# --------------------------------------------------------------------------- 5. outputs deleted since


def test_a_resume_redoes_an_ok_row_whose_output_is_gone(tmp_path, enhancer):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png", "sub/b.png", "c.png"])
    spec = RunSpec(str(inp), str(out), run_id="gone", shard_size=2)
    _run_all(spec, enhancer)
    written = (out / "sub" / "b.png").read_bytes()
    (out / "sub" / "b.png").unlink()
    shard_file = out / "_metrics" / "run_id=gone" / "shard-00000.parquet"  # a.png, c.png
    untouched = shard_file.stat().st_mtime_ns
    results = _run_all(spec, enhancer)
    assert [r["processed"] for r in results] == [0, 1]  # only the image whose output is gone
    assert (out / "sub" / "b.png").read_bytes() == written
    assert shard_file.stat().st_mtime_ns == untouched
    assert len(_rows(out, "gone")) == 3


# --------------------------------------------------------------------------- 8, 9. names


def test_names_that_are_not_utf8_are_recorded_losslessly_and_resume_as_done(tmp_path, enhancer):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png"])
    raw = os.fsdecode(b"b\xff.png")  # one byte that is not UTF-8
    literal = "b\\xff.png"  # the four characters its escape would spell
    for name in (raw, literal):
        (inp / name).write_bytes((inp / "a.png").read_bytes())
    spec = RunSpec(str(inp), str(out), run_id="bytes", shard_size=2)
    first = _run_all(spec, enhancer)
    rows = _rows(out, "bytes")
    assert len(rows) == 3 and {archive.from_printable(r) for r in rows} == {"a.png", raw, literal}
    assert all(r["status"] == "ok" for r in rows.values())
    shards = sorted(os.listdir(out / "_metrics" / "run_id=bytes"))
    again = _run_all(spec, enhancer)
    assert [r["processed"] for r in again] == [0] * len(first)  # a resume has nothing to do
    assert sorted(os.listdir(out / "_metrics" / "run_id=bytes")) == shards  # and adds no shard file


def test_a_top_level_folder_named_like_a_drive_is_a_folder(tmp_path, enhancer, s3):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["C:/a.png", "D:x.png"])
    _run_all(RunSpec(str(inp), str(out), run_id="drive"), enhancer)
    assert {r: v["status"] for r, v in _rows(out, "drive").items()} == {"C:/a.png": "ok", "D:x.png": "ok"}
    assert (out / "C:" / "a.png").is_file()
    storage.write_bytes_atomic(s3.url("in/C:/a.png"), (inp / "C:" / "a.png").read_bytes())
    results = _run_all(RunSpec(s3.url("in"), s3.url("out"), run_id="drive"), enhancer)
    assert results[0]["ok"] == 1 and storage.exists(s3.url("out/C:/a.png"))
    with pytest.raises(ValueError, match="not a relative path"):
        storage.join(s3.url("in"), "C:\\a.png")


# --------------------------------------------------------------------------- papercuts


def test_repeated_problems_are_one_line_of_the_run_not_lines_per_shard(tmp_path, enhancer, caplog):
    import logging

    from llie.batch.plan import common_problems, read_rows

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for i in range(12):
        (inp / f"e{i:02d}.png").write_bytes(b"")
    (inp / "t.jpg").write_bytes(b"\xff\xd8\xff")
    plan = plan_run(RunSpec(str(inp), str(out), run_id="quiet", shard_size=2))
    with caplog.at_level(logging.INFO):
        for shard in plan.shards:
            run_shard(plan.spec, shard, enhancer)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []  # shards tell the UI, at info
    assert common_problems(plan, read_rows(plan)) == [
        "12 image(s) error, e.g. 'e00.png': decode: empty file",
        "1 image(s) error, e.g. 't.jpg': decode: truncated JPEG",
    ]


def test_the_resume_command_of_an_input_named_like_an_option_parses_back():
    import shlex

    from llie_cli.run import resume_command, run_command

    command = resume_command(RunSpec("-photos", "out", run_id="r-1", shard_size=8))
    assert command == "llie run --run-id r-1 --shard-size 8 -- -photos out"
    ctx = run_command.make_context("run", shlex.split(command)[2:])
    assert (ctx.params["input_url"], ctx.params["output_url"], ctx.params["run_id"]) == ("-photos", "out", "r-1")
    assert resume_command(RunSpec("photos", "out", run_id="r-1")) == "llie run photos out --run-id r-1"


def test_no_resume_command_where_a_resume_cannot_help_and_the_run_id_without_a_bar(prefect_harness, tmp_path):
    from llie_cli.main import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png"])
    archive.write_run_manifest(str(out), "elsewhere", {"run_id": "elsewhere", "input_url": str(tmp_path / "other")})
    result = CliRunner().invoke(cli, ["run", str(inp), str(out), "--run-id", "elsewhere", "--no-progress"])
    assert result.exit_code == 1
    assert result.output.startswith("run elsewhere\n")  # named before anything can stop it
    assert "did not complete" in result.output and "was started with input_url" in result.output
    assert "resume it with: llie run" not in result.output  # the same command would fail the same way
