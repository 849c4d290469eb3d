"""The archive flow end to end: real Prefect (test harness API), real Dask, real moto S3."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from llie.batch import archive, storage
from llie.batch.imageio import DecodeLimits, decode_image
from llie.batch.layout import RunLayout
from tests.conftest import FAKE_KEY_ID, FAKE_SECRET, encode, gradient, run_archive

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _rows_by_path(table) -> dict[str, dict]:
    rows = table.to_pylist()
    paths = [r["rel_path"] for r in rows]
    assert len(paths) == len(set(paths)), "an image has more than one row"
    return {r["rel_path"]: r for r in rows}


def _check_ok_row(row, input_bytes: bytes, output_bytes: bytes) -> None:
    assert row["status"] == "ok", row["error"]
    assert row["error"] is None
    src = decode_image(input_bytes, DecodeLimits())
    out = decode_image(output_bytes, DecodeLimits())
    assert (row["width"], row["height"]) == (src.width, src.height) == (out.width, out.height)
    assert row["bytes_in"] == len(input_bytes) and row["bytes_out"] == len(output_bytes)
    assert row["format"] == src.format == out.format
    assert row["model_version"]
    assert row["after_brightness"] > row["before_brightness"]
    for stage in archive.STAGES:
        assert row[f"sec_{stage}"] >= 0
    assert row["finished_at"].tzinfo is not None


def _tree_mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_s3_to_s3_on_local_cluster(s3, bundle_path):
    """Default task runner (a fresh LocalCluster with 2 worker processes), s3:// in and out."""
    names = ["a.png", "b.jpg", "nested/c.png", "nested/deep/d.png", "e.JPG"]
    inputs = {}
    for i, name in enumerate(names):
        fmt = "JPEG" if name.lower().endswith(".jpg") else "PNG"
        inputs[name] = encode(gradient(64, 48, seed=i, peak=0.2), fmt)
        storage.write_bytes_atomic(s3.url(f"in/{name}"), inputs[name])
        if name != "e.JPG":  # one image without a reference
            storage.write_bytes_atomic(s3.url(f"ref/{name}"), encode(gradient(64, 48, seed=i, peak=0.7), fmt))
    storage.write_bytes_atomic(s3.url("in/notes.txt"), b"not an image")

    environ_before = dict(os.environ)
    state = run_archive(
        s3.url("in"),
        s3.url("out"),
        shard_size=2,
        reference_url=s3.url("ref"),
        n_workers=2,
        run_id="s3run",
        model=bundle_path,
        retry_delay_seconds=0.2,
        return_state=True,
    )
    summary = state.result()
    # the nanny's pre-spawn variables (OMP_NUM_THREADS=1, MALLOC_*) do not stay in the flow process
    assert dict(os.environ) == environ_before
    assert summary["images"] == 5 and summary["ok"] == 5 and summary["errors"] == 0
    assert summary["shards"] == 3 and summary["failed_shards"] == []
    assert summary["mean_psnr"] is not None and summary["images_per_second"] > 0
    assert summary["metrics_url"] == s3.url("out/_metrics/run_id=s3run")

    table = archive.read_metrics(s3.url("out"), run_id="s3run")
    rows = _rows_by_path(table)
    assert sorted(rows) == sorted(names)
    for name in names:
        row = rows[name]
        _check_ok_row(row, inputs[name], storage.read_bytes(s3.url(f"out/{name}")))
        assert row["input_path"] == s3.url(f"in/{name}")
        assert row["output_path"] == s3.url(f"out/{name}")
        assert row["run_id"] == "s3run"
        assert (row["psnr"] is None) == (name == "e.JPG")
    assert rows["e.JPG"]["warning"] == "no reference image"
    assert len({r["worker"] for r in rows.values()}) >= 1

    # The Dask workers reported their task runs to the harness API, not to servers of their own.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    # the three shards on the workers, and the report in the flow's own process
    assert sorted(t.name for t in task_runs) == [
        "enhance-shard-00000",
        "enhance-shard-00001",
        "enhance-shard-00002",
        "report-s3run",
    ]
    assert all(t.state.is_completed() for t in task_runs)

    # Credentials reach workers through the environment and never land in the outputs.
    for shard_id in archive.shard_files(s3.url("out"), "s3run"):
        blob = storage.read_bytes(RunLayout(s3.url("out"), "s3run").shard_url(shard_id))
        assert FAKE_SECRET.encode() not in blob and FAKE_KEY_ID.encode() not in blob
    manifest = storage.read_bytes(RunLayout(s3.url("out"), "s3run").manifest_url)
    assert FAKE_SECRET.encode() not in manifest and b'"shard_size": 2' in manifest


def _initial_environ() -> dict[str, str]:
    # what the process was exec'ed with: the values glibc's malloc read at start-up
    raw = Path("/proc/self/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_local_workers_start_with_a_fixed_mmap_threshold_and_quiet_background():
    import dask
    from distributed import Client, LocalCluster

    from flows.worker_env import LOCAL_CLUSTER_CONFIG, WORKER_PRE_SPAWN_ENV, local_cluster_settings

    environ_before = dict(os.environ)
    with local_cluster_settings():
        with (
            LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            (worker_env,) = client.run(_initial_environ).values()
            (worker_config,) = client.run(lambda: {k: dask.config.get(k) for k in LOCAL_CLUSTER_CONFIG}).values()
    assert worker_config == LOCAL_CLUSTER_CONFIG  # reached the worker process, not only this one
    assert dask.config.get("distributed.worker.profile.enabled") is True  # and left this process as it was
    assert WORKER_PRE_SPAWN_ENV["MALLOC_TRIM_THRESHOLD_"] != "65536"  # not Dask's default
    for key, value in WORKER_PRE_SPAWN_ENV.items():
        assert worker_env.get(key) == value
    assert dict(os.environ) == environ_before


@pytest.fixture
def archive_with_broken_files(tmp_path, make_images):
    inp = tmp_path / "in"
    good = [f"g{i}.png" for i in range(5)] + ["sub/g5.jpg"]
    make_images(inp, good)
    (inp / "broken").mkdir()
    (inp / "broken/empty.jpg").write_bytes(b"")
    (inp / "broken/text.jpg").write_text("definitely not a JPEG")
    jpeg = (inp / "sub/g5.jpg").read_bytes()
    (inp / "broken/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (inp / ".DS_Store").write_bytes(b"junk")
    bad = ["broken/empty.jpg", "broken/text.jpg", "broken/truncated.jpg"]
    return inp, good, bad


def test_external_cluster_retry_broken_files_and_resume(
    dask_address, archive_with_broken_files, tmp_path, bundle_path, inject_faults
):
    inp, good, bad = archive_with_broken_files
    out, markers = tmp_path / "out", inject_faults("r-ext")
    common = dict(
        shard_size=4, dask_address=dask_address, retries=2, retry_delay_seconds=0.2, run_id="r-ext", model=bundle_path
    )

    # Every shard's first attempt raises after writing its outputs; the retry must finish it
    # without leaving a second row for any image.
    summary = run_archive(str(inp), str(out), **common)
    shard_ids = [s.shard_id for s in archive.plan_shards(good + bad, 4)]
    assert sorted(os.listdir(markers)) == shard_ids  # each shard did fail once
    assert summary["images"] == 9 and summary["ok"] == 6 and summary["errors"] == 3
    assert summary["failed_shards"] == [] and summary["shards_resumed"] == 0

    table = pq.read_table(out / "_metrics")  # the plain-pyarrow view, hive partitioned
    assert table.num_rows == 9
    rows = _rows_by_path(archive.read_metrics(str(out), "r-ext"))
    assert sorted(rows) == sorted(good + bad)
    for name in good:
        _check_ok_row(rows[name], (inp / name).read_bytes(), (out / name).read_bytes())
        assert rows[name]["input_path"] == f"{inp}/{name}"
    reasons = {name: rows[name]["error"] for name in bad}
    assert reasons == {
        "broken/empty.jpg": "decode: empty file",
        "broken/text.jpg": "decode: not an image (text/unknown format)",
        "broken/truncated.jpg": "decode: truncated JPEG",
    }
    assert all(rows[n]["status"] == "error" and rows[n]["output_path"] is None for n in bad)
    assert not (out / "broken").exists()
    workers = {r["worker"] for r in rows.values()}
    assert all(":" in w for w in workers) and os.getpid() not in {int(w.rsplit(":", 1)[1]) for w in workers}

    # Same run_id again: nothing is redone, not even rewritten.
    before = _tree_mtimes(out)
    again = run_archive(str(inp), str(out), **common)
    assert _tree_mtimes(out) == before
    assert again["shards_resumed"] == len(shard_ids) and again["processed"] == 0
    assert (again["images"], again["ok"], again["errors"]) == (9, 6, 3)


def test_retry_failed_redoes_only_failed_images(
    dask_address, archive_with_broken_files, tmp_path, make_images, bundle_path
):
    inp, good, bad = archive_with_broken_files
    out = tmp_path / "out"
    common = dict(shard_size=4, dask_address=dask_address, run_id="r-fix", model=bundle_path)
    run_archive(str(inp), str(out), **common)
    first = _rows_by_path(archive.read_metrics(str(out), "r-fix"))
    mtimes = _tree_mtimes(out)

    # Someone repairs one broken file; only the shard holding it may change.
    make_images(inp, ["broken/text.jpg"])
    summary = run_archive(str(inp), str(out), retry_failed=True, **common)
    assert (summary["ok"], summary["errors"]) == (7, 2)
    rows = _rows_by_path(archive.read_metrics(str(out), "r-fix"))
    assert len(rows) == 9 and rows["broken/text.jpg"]["status"] == "ok"
    assert summary["processed"] == 3  # the three non-ok images, nothing else
    for name in good:
        assert rows[name]["finished_at"] == first[name]["finished_at"]
        assert _tree_mtimes(out)[name] == mtimes[name]
    after = _tree_mtimes(out)
    changed = sorted(k for k in after if after[k] != mtimes.get(k))
    shard_of_text = next(s.shard_id for s in archive.plan_shards(good + bad, 4) if "broken/text.jpg" in s.paths)
    # The repaired image and the rewritten shard files (the other still-broken images' shards are
    # redone too, since they still hold error rows).
    assert "broken/text.jpg" in changed
    assert f"_metrics/run_id=r-fix/{shard_of_text}.parquet" in changed
    assert all(k.startswith("_metrics/") or k == "broken/text.jpg" for k in changed), changed


def test_exhausted_retries_fail_the_run_then_resume_finishes_it(
    dask_address, tmp_path, make_images, bundle_path, inject_faults
):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, [f"i{n}.png" for n in range(4)])
    common = dict(shard_size=2, dask_address=dask_address, run_id="r-fail", model=bundle_path)
    inject_faults("r-fail")
    with pytest.raises(RuntimeError, match=r"2 shard\(s\) failed after retries: shard-00000, shard-00001"):
        run_archive(str(inp), str(out), retries=0, **common)
    assert archive.shard_files(str(out), "r-fail") == []  # a failed attempt leaves no Parquet

    summary = run_archive(str(inp), str(out), **common)
    assert (summary["images"], summary["ok"], summary["shards_resumed"]) == (4, 4, 0)
    assert len(archive.read_metrics(str(out), "r-fail")) == 4


def test_a_growing_archive_resumes_its_finished_shards(dask_address, tmp_path, make_images, bundle_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, [f"i{n}.png" for n in range(4)])
    common = dict(shard_size=2, dask_address=dask_address, run_id="r-grow", model=bundle_path)
    run_archive(str(inp), str(out), **common)
    before = _tree_mtimes(out)

    # a new photo that sorts first: only it is enhanced, in a shard of its own
    make_images(inp, ["a0.png"])
    summary = run_archive(str(inp) + "/", str(out), **common)  # the same folder, spelt with a "/"
    assert (summary["images"], summary["shards"], summary["shards_resumed"], summary["processed"]) == (5, 3, 2, 1)
    after = _tree_mtimes(out)
    assert all(after[k] == v for k, v in before.items() if not k.startswith("_metrics/run_id=r-grow/_"))
    rows = archive.read_metrics(str(out), "r-grow").column("rel_path").to_pylist()
    assert sorted(rows) == ["a0.png", "i0.png", "i1.png", "i2.png", "i3.png"]

    # an input that lists nothing (an unmounted share) must not wipe the run's record
    for name in ["a0.png", "i0.png", "i1.png", "i2.png", "i3.png"]:
        (inp / name).rename(tmp_path / name)
    with pytest.raises(ValueError, match="lists no images, but run r-grow had 5"):
        run_archive(str(inp), str(out), **common)
    assert len(archive.read_metrics(str(out), "r-grow")) == 5


def test_a_redone_shard_that_fails_leaves_no_stale_rows(
    dask_address, tmp_path, make_images, bundle_path, inject_faults
):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, [f"i{n}.png" for n in range(4)])
    common = dict(shard_size=2, dask_address=dask_address, run_id="r-stale", model=bundle_path)
    run_archive(str(inp), str(out), **common)
    # i1 is deleted, so shard-00000 must be redone with i0 alone, and that attempt fails
    (inp / "i1.png").unlink()
    inject_faults("r-stale")
    with pytest.raises(RuntimeError, match=r"1 shard\(s\) failed after retries: shard-00000"):
        run_archive(str(inp), str(out), retries=0, **common)
    # the old file (i0 and i1 of the old plan) is gone with it: no row for a deleted image
    assert archive.shard_files(str(out), "r-stale") == ["shard-00001"]
    assert sorted(archive.read_metrics(str(out), "r-stale").column("rel_path").to_pylist()) == ["i2.png", "i3.png"]
    summary = run_archive(str(inp), str(out), **common)
    assert (summary["images"], summary["ok"], summary["shards_resumed"]) == (3, 3, 1)


def test_refuses_output_inside_input(tmp_path, make_images):
    make_images(tmp_path / "in", ["a.png"])
    with pytest.raises(ValueError, match="overlaps input"):
        run_archive(str(tmp_path / "in"), str(tmp_path / "in" / "out"))
    with pytest.raises(ValueError, match="invalid run_id"):
        run_archive(str(tmp_path / "in"), str(tmp_path / "out"), run_id="../x")
    assert not (tmp_path / "out").exists()


def test_resume_with_other_shard_size_is_refused(dask_address, tmp_path, make_images, bundle_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, ["a.png", "b.png", "c.png"])
    run_archive(str(inp), str(out), shard_size=2, dask_address=dask_address, run_id="r-size", model=bundle_path)
    with pytest.raises(ValueError, match="shard_size=2"):
        run_archive(str(inp), str(out), shard_size=3, dask_address=dask_address, run_id="r-size")
    make_images(tmp_path / "other", ["a.png"])
    with pytest.raises(ValueError, match="input_url="):
        run_archive(
            str(tmp_path / "other"),
            str(out),
            shard_size=2,
            dask_address=dask_address,
            run_id="r-size",
            model=bundle_path,
        )


def test_cli_run_prints_summary_and_progress(dask_address, tmp_path, make_images, bundle_path):
    from click.testing import CliRunner

    from llie_cli.main import cli, main

    assert callable(main)
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, ["a.png", "b.png", "c.jpg"])
    (inp / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    args = [
        "run",
        str(inp),
        str(out),
        "--shard-size",
        "2",
        "--dask-address",
        dask_address,
        "--run-id",
        "cli-1",
        "--png-compression",
        "0",
    ]
    if bundle_path:
        args += ["--model", bundle_path]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "run cli-1\n  images                4\n" in result.output and "  shards                2\n" in result.output
    assert "ok / error / skipped  3 / 1 / 0" in result.output
    # the exact command that redoes the failed image, with the run's settings
    model = ["--model", bundle_path] if bundle_path else []
    retry = ["llie", "run", str(inp), str(out), "--run-id", "cli-1", *model, "--shard-size", "2"]
    retry += ["--png-compression", "0", "--dask-address", dask_address, "--retry-failed"]
    assert f"to retry them: {shlex.join(retry)}" in result.output
    assert f"  metrics               {out}/_metrics/run_id=cli-1\n" in result.output
    assert "4/4" in result.output and "image" in result.output  # the progress bar counted every image
    assert len(archive.read_metrics(str(out), "cli-1")) == 4
    width, height = Image.open(out / "a.png").size
    assert (out / "a.png").stat().st_size >= width * height * 3  # --png-compression 0 reached the encoder

    overlap = CliRunner().invoke(cli, ["run", str(inp), str(inp / "x")])
    assert overlap.exit_code == 2 and "overlaps input" in overlap.output
    assert "--retry-failed" in CliRunner().invoke(cli, ["run", "--help"]).output


def test_the_printed_resume_command_repeats_the_settings_a_resume_needs():
    from llie.batch.spec import RunSpec
    from llie_cli.run import resume_command

    plain = resume_command(RunSpec("photos/", "out", run_id="r-1"))
    assert plain == "llie run photos/ out --run-id r-1"
    full = resume_command(
        RunSpec(
            "s3://KEY:SECRET@b/in",
            "s3://b/out",
            run_id="r-2",
            model="my model",
            shard_size=8,
            reference_url="s3://b/ref",
        )
    )
    assert (
        full
        == "llie run 's3://***@b/in' s3://b/out --run-id r-2 --model 'my model' --shard-size 8 --reference s3://b/ref"
    )


def test_the_flow_parameters_carry_the_refiner_precision_both_ways():
    import pydantic

    from flows.parameters import ArchiveRun
    from llie.batch.spec import RunSpec
    from llie_cli.run import resume_command

    spec = RunSpec("in", "out", run_id="r-3", refiner_precision="bf16", device="cpu", threads=1)
    run = ArchiveRun.of(spec)
    assert run.refiner_precision == "bf16" and run.spec() == spec
    assert ArchiveRun.model_validate_json(run.model_dump_json()).spec() == spec  # as Prefect stores it
    assert ArchiveRun(input_url="in", output_url="out").spec().refiner_precision == "float32"
    with pytest.raises(pydantic.ValidationError, match="refiner_precision"):
        ArchiveRun(input_url="in", output_url="out", refiner_precision="fp16")
    # the flow's parameter schema (deployment forms, Prefect's validation) offers exactly the two choices
    from flows.enhance_archive import enhance_archive

    field = enhance_archive.parameters.definitions["ArchiveRun"]["properties"]["refiner_precision"]
    assert field["default"] == "float32" and field["enum"] == ["float32", "bf16"]
    assert "No effect on CUDA" in field["description"]
    # a resume must keep it (and the device it ran on)
    assert resume_command(spec) == "llie run in out --run-id r-3 --refiner-precision bf16 --device cpu"


def test_cli_run_in_bf16_enhances_in_bf16_and_records_it(dask_address, tmp_path, make_images, bundle_path):
    from click.testing import CliRunner

    from llie_cli.main import cli

    inp = tmp_path / "in"
    make_images(inp, ["a.png", "b.png"])
    pixels = {}
    for precision in ("float32", "bf16"):
        out = tmp_path / precision
        args = ["run", str(inp), str(out), "--dask-address", dask_address, "--run-id", precision, "--no-progress"]
        args += ["--refiner-precision", precision] + (["--model", bundle_path] if bundle_path else [])
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert archive.read_run_manifest(str(out), precision)["refiner_precision"] == precision
        pixels[precision] = [np.asarray(Image.open(out / name)).astype(int) for name in ("a.png", "b.png")]
    levels = np.abs(np.stack(pixels["bf16"]) - np.stack(pixels["float32"]))
    assert 0 < levels.max() <= 3  # the workers ran the refiner in bf16
    bad = CliRunner().invoke(cli, ["run", str(inp), str(tmp_path / "x"), "--refiner-precision", "half"])
    assert bad.exit_code == 2 and "'half' is not one of 'float32', 'bf16'" in bad.output


def test_retry_failed_without_a_run_id_is_a_usage_error(tmp_path, make_images):
    from click.testing import CliRunner

    from llie_cli.main import cli

    make_images(tmp_path / "in", ["a.png"])
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "in"), str(tmp_path / "out"), "--retry-failed"])
    assert result.exit_code == 2 and "give its --run-id" in result.output
    assert not (tmp_path / "out").exists()


def test_flow_parameters_hold_no_testing_hooks_and_describe_every_field():
    """Every parameter shows up in each deployment's form, with its description: faults are injected
    through the workers' environment (tests/conftest.py, inject_faults), not through the signature."""
    from flows.enhance_archive import enhance_archive

    schema = enhance_archive.parameters
    assert list(schema.properties) == ["run", "cluster"] and schema.required == ["run"]
    fields = {
        name: spec
        for model in ("ArchiveRun", "Cluster")
        for name, spec in schema.definitions[model]["properties"].items()
    }
    assert {"input_url", "output_url", "run_id", "storage_options", "n_workers", "retries"} <= set(fields)
    assert not [n for n in fields if "fault" in n or "marker" in n or "test" in n]
    assert [n for n, spec in fields.items() if not spec.get("description")] == []
