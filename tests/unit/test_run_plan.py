"""One run description: RunSpec, RunLayout, plan_run, run_shard and the run's summary, on local folders."""

from __future__ import annotations

import json
import logging

import pytest

from llie.audit.numbers import number
from llie.audit.overview import summarise_run
from llie.batch import archive
from llie.batch.imageio import DecodeLimits, EncodeOptions
from llie.batch.layout import RunLayout
from llie.batch.plan import plan_run, read_rows, remove_partial_files
from llie.batch.shard import run_shard
from llie.batch.spec import RunSpec, decode_limits, encode_options


def test_layout_owns_every_path_of_a_run():
    layout = RunLayout("s3://b/out/", "r-1")
    assert layout.metrics_url == "s3://b/out/_metrics/run_id=r-1"
    assert layout.shard_url("shard-00003") == "s3://b/out/_metrics/run_id=r-1/shard-00003.parquet"
    assert layout.manifest_url == "s3://b/out/_metrics/run_id=r-1/_run.json"
    assert layout.report_url == "s3://b/out/_metrics/run_id=r-1/_report/report.html"
    assert layout.image_url("a/b.png") == "s3://b/out/a/b.png"
    assert layout.shard_rel("shard-00000") == "_metrics/run_id=r-1/shard-00000.parquet"
    with pytest.raises(ValueError, match="invalid run_id"):
        RunLayout("out", "../x").shard_url("shard-00000")
    assert RunLayout("out", "").image_url("a.png") == "out/a.png"  # a photo's path needs no run id


def test_spec_keeps_storage_options_out_of_its_repr_and_builds_its_settings():
    spec = RunSpec("in", "out", storage_options={"key": "AKIA", "secret": "s3cr3t"})
    assert "s3cr3t" not in repr(spec) and "AKIA" not in repr(spec)
    assert "s3cr3t" in spec.secrets()
    assert decode_limits(None) == DecodeLimits() and decode_limits(10).max_pixels == 10
    assert encode_options(None, 80) == EncodeOptions(png_compression=EncodeOptions().png_compression, jpeg_quality=80)


def test_plan_run_cuts_shards_writes_the_manifest_and_refuses_a_changed_resume(tmp_path, make_images, caplog):
    make_images(tmp_path / "in", ["a.png", "b.png", "sub/c.png", "_metrics/d.png"])
    spec = RunSpec(str(tmp_path / "in"), str(tmp_path / "out"), run_id="p1", shard_size=2)
    with caplog.at_level(logging.WARNING):
        plan = plan_run(spec)
    assert "reserved for metrics" in caplog.text  # _metrics/d.png is left out
    assert plan.paths == ("a.png", "b.png", "sub/c.png")
    assert [s.paths for s in plan.shards] == [("a.png", "b.png"), ("sub/c.png",)]
    manifest = json.loads((tmp_path / "out/_metrics/run_id=p1/_run.json").read_text())
    assert (manifest["images"], manifest["shards"], manifest["shard_size"]) == (3, 2, 2)
    with pytest.raises(ValueError, match="started with shard_size=2"):
        plan_run(RunSpec(spec.input_url, spec.output_url, run_id="p1", shard_size=3))
    assert plan_run(RunSpec(str(tmp_path / "in"), str(tmp_path / "out2"))).spec.run_id  # a new id is given


def test_the_manifest_records_the_refiner_precision_and_a_resume_must_keep_it(tmp_path, make_images):
    make_images(tmp_path / "in", ["a.png"])
    spec = RunSpec(str(tmp_path / "in"), str(tmp_path / "out"), run_id="bf", refiner_precision="bf16")
    plan_run(spec)
    manifest = json.loads((tmp_path / "out/_metrics/run_id=bf/_run.json").read_text())
    assert manifest["refiner_precision"] == "bf16"
    with pytest.raises(ValueError, match="started with refiner_precision='bf16'"):
        plan_run(RunSpec(spec.input_url, spec.output_url, run_id="bf"))
    with pytest.raises(ValueError, match="refiner_precision must be one of float32, bf16"):
        plan_run(RunSpec(spec.input_url, str(tmp_path / "out2"), refiner_precision="fp16"))
    assert not (tmp_path / "out2").exists()


def test_plan_run_refuses_an_input_that_lists_nothing_after_it_had_images(tmp_path, make_images):
    make_images(tmp_path / "in", ["a.png"])
    spec = RunSpec(str(tmp_path / "in"), str(tmp_path / "out"), run_id="gone")
    plan_run(spec)
    (tmp_path / "in" / "a.png").unlink()
    with pytest.raises(ValueError, match="lists no images"):
        plan_run(spec)


def test_run_shard_writes_then_resumes_and_the_summary_reads_the_rows(tmp_path, make_images, enhancer):
    make_images(tmp_path / "in", ["a.png", "b.png"])
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    plan = plan_run(RunSpec(str(tmp_path / "in"), str(tmp_path / "out"), run_id="s1", stages="hist", shard_size=64))
    [shard] = plan.shards
    first = run_shard(plan.spec, shard, enhancer)
    assert (first["ok"], first["errors"], first["processed"], first["resumed"]) == (2, 1, 3, False)
    again = run_shard(plan.spec, shard, enhancer)
    assert (again["processed"], again["resumed"]) == (0, True)
    (tmp_path / "out" / ".a.png.abcd1234.tmp").write_bytes(b"half")  # a writer killed half way
    (tmp_path / "out" / "notes.tmp").write_bytes(b"")  # not one of ours: left alone
    assert remove_partial_files(plan) == [".a.png.abcd1234.tmp"]
    assert (tmp_path / "out" / "notes.tmp").exists()
    rows = read_rows(plan)
    summary = summarise_run(plan, [first], rows, seconds=2.0).to_dict()
    assert (summary["images"], summary["ok"], summary["errors"], summary["processed"]) == (3, 2, 1, 3)
    assert summary["images_per_second"] == 1.5 and summary["metrics_url"] == plan.spec.layout.metrics_url
    assert archive.read_shard_parquet(plan.spec.layout.shard_url(shard.shard_id)).num_rows == 3


def test_one_number_format():
    assert number(None) == "–" and number(float("nan"), missing="-") == "-"
    assert number(1.23456, 3, " dB") == "1.235 dB" and number(0.5, 1, signed=True) == "+0.5"
    assert number("n/a") == "n/a"
