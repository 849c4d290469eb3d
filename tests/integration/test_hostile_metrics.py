"""``llie audit`` over metrics someone else may have written: paths it must not read, numbers at the edge
of floats, runs that did not finish. The rows come from real shards (``llie.batch.shard``), then are
changed the way a hostile or careless writer would; the audit runs as the real command, in a process.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from llie.batch import archive
from llie.batch.plan import plan_run
from llie.batch.shard import run_shard
from llie.batch.spec import RunSpec
from tests.conftest import encode, gradient, subprocess_env, write_images

NAMES = ["a.png", "b.png", "c.png", "d.png"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, enhancer) -> tuple[Path, Path]:
    """A finished run "real" of four images with references, and its output folder."""
    root = tmp_path_factory.mktemp("metrics")
    inp, ref, out = root / "in", root / "ref", root / "out"
    write_images(inp, NAMES)
    for i, name in enumerate(NAMES):
        (ref / name).parent.mkdir(parents=True, exist_ok=True)
        (ref / name).write_bytes(encode(gradient(64, 48, seed=i, peak=0.5 + 0.1 * i)))
    plan = plan_run(RunSpec(str(inp), str(out), reference_url=str(ref), run_id="real", shard_size=2))
    for shard in plan.shards:
        run_shard(plan.spec, shard, enhancer)
    return root, out


def _copy_run(out: Path, run_id: str, change, manifest: dict | None = None, source: Path | None = None) -> None:
    """Run "real" (of ``source``, default ``out``) again as ``run_id`` under ``out``, its rows passed through
    ``change``."""
    files = sorted(((source or out) / "_metrics" / "run_id=real").glob("shard-*.parquet"))
    table = change(pa.concat_tables([pq.read_table(f) for f in files]))
    folder = out / "_metrics" / f"run_id={run_id}"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "shard-00000.parquet")
    if manifest is not None:
        archive.write_run_manifest(str(out), run_id, manifest)


def _set(table: pa.Table, column: str, values: list) -> pa.Table:
    index = table.schema.get_field_index(column)
    return table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type))


def _audit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llie_cli", "audit", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
    )


class _Requests(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.seen.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _watch_fifo(path: Path, opened: list[bool], stop: threading.Event) -> None:
    """Record whether anyone ever opens the FIFO ``path`` for reading (a writer's open fails until then)."""
    while not stop.wait(0.02):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        opened.append(True)
        os.close(fd)


def test_audit_reads_only_the_runs_own_photos_by_their_names(real_run, tmp_path):
    root, out = real_run
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Requests)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    web = f"http://127.0.0.1:{server.server_address[1]}"
    outside = tmp_path / "outside.png"
    os.mkfifo(outside)  # a path outside the run: reading it would hang, and the watcher sees any open
    opened: list[bool] = []
    stop = threading.Event()
    threading.Thread(target=_watch_fifo, args=(outside, opened, stop), daemon=True).start()

    def hostile(table: pa.Table) -> pa.Table:
        n = table.num_rows
        table = _set(table, "input_path", [f"{web}/in/{i}.png" for i in range(n)])
        return _set(table, "output_path", [str(outside)] * n)

    manifest = {"run_id": "hostile", "input_url": f"{web}/in", "reference_url": str(tmp_path), "images": 4}
    _copy_run(out, "hostile", hostile, manifest)
    report = tmp_path / "report.html"
    try:
        result = _audit(str(out), "--run", "hostile", "--report", str(report))
    finally:
        stop.set()
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert _Requests.seen == [] and opened == []  # no request sent, no path outside the run opened
    assert report.is_file() and str(outside) not in report.read_text()


def test_audit_of_photos_replaced_by_fifos_does_not_hang(real_run, tmp_path):
    """The rows name the files the audit would read (output_path), and each is now a FIFO: refused at
    once, the report written without those thumbnails. (Devices are refused the same way: see
    test_hostile_outputs.py::test_open_regular_refuses_fifos_and_devices_without_blocking.)"""
    _, out = real_run
    run = tmp_path / "out"
    paths = lambda t: _set(t, "output_path", [str(run / r) for r in t.column("rel_path").to_pylist()])  # noqa: E731
    _copy_run(run, "real", paths, source=out)
    for name in NAMES:
        os.mkfifo(run / name)
    result = _audit(str(run), "--run", "real", "--report", str(tmp_path / "r.html"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.html").is_file()


def test_audit_report_with_extreme_psnr_values_and_the_worse_gate(real_run, tmp_path):
    _, out = real_run

    def extreme(table: pa.Table) -> pa.Table:
        return _set(table, "psnr", [1e308, -1e308, float("inf"), -1e308][: table.num_rows])

    _copy_run(out, "extreme", extreme)
    report = tmp_path / "extreme.html"
    result = _audit(str(out), "--run", "extreme", "--compare", "real", "--fail-on-worse", "--report", str(report))
    assert result.returncode == 3, result.stderr  # images got worse: the gate's status, not a crash's
    assert "Traceback" not in result.stderr and report.is_file()


def test_audit_says_when_a_run_is_incomplete(tmp_path, enhancer):
    from llie_cli.main import cli

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, NAMES)
    plan = plan_run(RunSpec(str(inp), str(out), run_id="half", shard_size=2))
    run_shard(plan.spec, plan.shards[0], enhancer)  # the run stopped after its first shard
    result = CliRunner().invoke(cli, ["audit", str(out)])
    assert result.exit_code == 0 and "incomplete: 2 of 4 planned images have a row" in result.output
    gated = CliRunner().invoke(cli, ["audit", str(out), "--fail-incomplete"])
    assert gated.exit_code == 4 and "run half is incomplete: 2 of 4 planned images have a row" in gated.output
    run_shard(plan.spec, plan.shards[1], enhancer)
    done = CliRunner().invoke(cli, ["audit", str(out), "--fail-incomplete"])
    assert done.exit_code == 0 and "incomplete" not in done.output


def test_a_run_id_with_a_final_newline_is_refused_by_llie_run(tmp_path):
    from llie_cli.main import cli

    write_images(tmp_path / "in", ["a.png"])
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--run-id", "evil\n"])
    assert result.exit_code == 2 and "invalid run_id 'evil\\n'" in result.output
    assert not (tmp_path / "out").exists()
