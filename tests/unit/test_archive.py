from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from llie.batch import archive, storage
from llie.batch.imageio import DecodeLimits, decode_image
from llie.batch.layout import RunLayout
from llie.batch.spec import RunSpec


def test_plan_shards_is_deterministic():
    paths = [f"d{i % 3}/img{i:03d}.jpg" for i in range(10)]
    shuffled = paths[:]
    random.Random(1).shuffle(shuffled)
    a = archive.plan_shards(paths, 4)
    b = archive.plan_shards(shuffled + paths[:2], 4)  # order and duplicates do not matter
    assert a == b
    assert [s.shard_id for s in a] == ["shard-00000", "shard-00001", "shard-00002"]
    assert [len(s) for s in a] == [4, 4, 2]
    assert [p for s in a for p in s.paths] == sorted(paths)
    assert len({s.fingerprint for s in a}) == 3
    # Same position, different content: a different fingerprint.
    changed = archive.plan_shards(paths[:-1] + ["d0/new.jpg"], 4)
    assert changed[0].shard_id == a[0].shard_id and changed[0].fingerprint != a[0].fingerprint
    assert archive.plan_shards([], 4) == []
    with pytest.raises(ValueError):
        archive.plan_shards(paths, 0)


def test_extend_plan_keeps_finished_shards_and_adds_new_images_after_them():
    paths = [f"img{i:02d}.png" for i in range(7)]
    first = archive.plan_shards(paths, 3)
    assert archive.extend_plan(paths, 3, {}) == first  # a fresh run: the plain plan
    finished = {s.shard_id: list(s.paths) for s in first[:2]}  # shard-00002 never finished
    grown = ["a-new.png", "img03b.png", "z-new.png"]  # sort first, in the middle, last
    plan = archive.extend_plan(paths + grown, 3, finished)
    # the finished shards are the same shards: same images, same fingerprint, so they resume
    assert plan[:2] == first[:2]
    new = plan[2:]
    assert [s.shard_id for s in new] == ["shard-00002", "shard-00003"]
    assert [p for s in new for p in s.paths] == sorted(grown + ["img06.png"])
    assert sorted(p for s in plan for p in s.paths) == sorted(paths + grown)  # each image once


def test_extend_plan_of_an_interrupted_run_over_the_same_listing_is_the_plain_plan():
    paths = [f"img{i:02d}.png" for i in range(10)]
    first = archive.plan_shards(paths, 2)
    finished = {s.shard_id: list(s.paths) for s in (first[0], first[1], first[3])}  # 2 and 4 did not finish
    assert archive.extend_plan(paths, 2, finished) == first


def test_extend_plan_redoes_only_the_shard_that_lost_an_image():
    paths = [f"img{i:02d}.png" for i in range(6)]
    first = archive.plan_shards(paths, 3)
    finished = {s.shard_id: list(s.paths) for s in first}
    plan = archive.extend_plan([p for p in paths if p != "img01.png"], 3, finished)
    assert plan[0].shard_id == "shard-00000" and plan[0].paths == ("img00.png", "img02.png")
    assert plan[0].fingerprint != first[0].fingerprint and plan[1] == first[1]
    # a finished shard whose images are all gone is no longer planned (its file is then removed)
    assert [s.shard_id for s in archive.extend_plan(paths[3:], 3, finished)] == ["shard-00001"]
    with pytest.raises(ValueError):
        archive.extend_plan(paths, 0, finished)


@pytest.mark.parametrize("good", ["20250101T000000Z-abc123", "my-run.2", "42"])
def test_run_id_accepts(good):
    assert archive.validate_run_id(good) == good


@pytest.mark.parametrize("bad", ["", "a/b", "..", "x=y", "has space", "-lead", "é", "evil\n", "ok\n"])
def test_run_id_refuses(bad):
    with pytest.raises(ValueError):
        archive.validate_run_id(bad)


def test_new_run_id_is_unique_and_valid():
    ids = {archive.new_run_id() for _ in range(20)}
    assert len(ids) == 20
    for run_id in ids:
        archive.validate_run_id(run_id)
        assert run_id.startswith(datetime.now(UTC).strftime("%Y%m%d"))


@pytest.fixture
def archive_dirs(tmp_path, make_images):
    inp, ref, out = tmp_path / "in", tmp_path / "ref", tmp_path / "out"
    names = ["a.png", "sub/b.jpg", "sub/deeper/c.PNG"]
    make_images(inp, names, peak=0.2)
    make_images(ref, names[:2], peak=0.8)  # c has no reference
    return inp, ref, out, names


def test_process_shard_rows_and_outputs(archive_dirs, enhancer):
    inp, ref, out, names = archive_dirs
    [shard] = archive.plan_shards(storage.list_images(str(inp)), 10)
    rows = archive.process_shard(RunSpec(str(inp), str(out), reference_url=str(ref), run_id="r1"), shard, enhancer)
    assert [r["rel_path"] for r in rows] == sorted(names)
    by = {r["rel_path"]: r for r in rows}
    for name in names:
        row = by[name]
        assert row["status"] == "ok", row["error"]
        assert row["error"] is None
        assert row["run_id"] == "r1" and row["shard_id"] == "shard-00000"
        assert row["input_path"] == f"{inp}/{name}"
        assert row["output_path"] == f"{out}/{name}"
        assert (row["width"], row["height"]) == (64, 48)
        assert row["model_version"] == enhancer.model_version
        assert row["bytes_in"] == (inp / name).stat().st_size
        assert row["bytes_out"] == (out / name).stat().st_size
        written = decode_image((out / name).read_bytes(), DecodeLimits())
        assert (written.width, written.height) == (64, 48)
        assert written.format == decode_image((inp / name).read_bytes(), DecodeLimits()).format
        for k in archive.NR_STATS:
            assert np.isfinite(row[f"before_{k}"]) and np.isfinite(row[f"after_{k}"])
        for stage in archive.STAGES:
            assert row[f"sec_{stage}"] is not None and row[f"sec_{stage}"] >= 0
        assert row["finished_at"].tzinfo is not None
        assert str(__import__("os").getpid()) in row["worker"]
    assert by["a.png"]["psnr"] > 0 and -1 <= by["a.png"]["ssim"] <= 1
    assert by["sub/deeper/c.PNG"]["psnr"] is None
    assert by["sub/deeper/c.PNG"]["warning"] == "no reference image"
    # The enhancer brightens a dark image.
    assert by["a.png"]["after_brightness"] > by["a.png"]["before_brightness"]


def test_broken_files_become_error_rows(tmp_path, make_images, enhancer):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, ["good1.png", "good2.jpg"])
    (inp / "empty.jpg").write_bytes(b"")
    (inp / "text.jpg").write_text("this is not a jpeg\n")
    good = (inp / "good2.jpg").read_bytes()
    (inp / "truncated.jpg").write_bytes(good[: len(good) // 3])
    paths = storage.list_images(str(inp))
    [shard] = archive.plan_shards(paths + ["vanished.png"], 10)  # listed, then deleted
    rows = archive.process_shard(RunSpec(str(inp), str(out), run_id="r"), shard, enhancer)
    by = {r["rel_path"]: r for r in rows}
    assert len(rows) == 6
    assert {k for k, r in by.items() if r["status"] == "ok"} == {"good1.png", "good2.jpg"}
    for bad in ["empty.jpg", "text.jpg", "truncated.jpg", "vanished.png"]:
        row = by[bad]
        assert row["status"] == "error"
        assert row["error"] and len(row["error"]) > 10, row["error"]
        assert row["output_path"] is None and not (out / bad).exists()
        assert row["finished_at"] is not None and row["worker"]
        assert row["model_version"] == enhancer.model_version
    assert by["vanished.png"]["error"].startswith("read: FileNotFoundError")
    assert by["empty.jpg"]["error"].startswith("decode:")
    assert by["text.jpg"]["error"].startswith("decode:")
    assert by["truncated.jpg"]["error"].startswith("decode:")
    # The error rows still fit the schema.
    assert archive.rows_to_table(rows).num_rows == 6


def test_enhancer_failure_is_an_error_row_and_shard_goes_on(tmp_path, make_images, enhancer):
    class Flaky:
        model_version = "flaky"

        def enhance(self, rgb, stages="full", mask=None):
            if rgb.shape[1] == 32:
                raise RuntimeError("boom on narrow images")
            return enhancer.enhance(rgb, stages=stages)

    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, ["a.png"], width=32)
    make_images(inp, ["b.png"])
    [shard] = archive.plan_shards(storage.list_images(str(inp)), 10)
    rows = archive.process_shard(RunSpec(str(inp), str(out), run_id="r"), shard, Flaky())
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert rows[0]["error"] == "enhance: RuntimeError: boom on narrow images"


def test_too_large_image_is_not_processed(tmp_path, make_images, enhancer):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_images(inp, ["big.png"], width=64, height=48)
    [shard] = archive.plan_shards(["big.png"], 1)
    [row] = archive.process_shard(RunSpec(str(inp), str(out), limits=DecodeLimits(max_pixels=1000)), shard, enhancer)
    assert row["status"] == "skipped"
    assert row["error"].startswith("decode: image too large")
    assert not (out / "big.png").exists()


def test_shard_rerun_is_idempotent(archive_dirs, enhancer):
    inp, ref, out, names = archive_dirs
    [shard] = archive.plan_shards(storage.list_images(str(inp)), 10)
    url = RunLayout(str(out), "r1").shard_url(shard.shard_id)
    first: dict[str, bytes] = {}
    for _ in range(2):
        rows = archive.process_shard(RunSpec(str(inp), str(out), reference_url=str(ref), run_id="r1"), shard, enhancer)
        archive.write_shard_parquet(rows, url, {"run_id": "r1", "shard_fingerprint": shard.fingerprint})
        first = first or {n: (out / n).read_bytes() for n in names}
    assert {n: (out / n).read_bytes() for n in names} == first
    table = archive.read_metrics(str(out))
    assert table.num_rows == len(names)
    assert sorted(table.column("rel_path").to_pylist()) == sorted(names)
    # Only outputs and the metrics file: no stray temp files.
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted(names + ["_metrics/run_id=r1/shard-00000.parquet"])


def test_parquet_schema_and_hive_readers(archive_dirs, enhancer):
    duckdb = pytest.importorskip("duckdb")
    inp, ref, out, names = archive_dirs
    shards = archive.plan_shards(storage.list_images(str(inp)), 2)
    run_ids = ["20250101T000000Z-aaaaaa", "42"]  # "42" would be inferred as an int by readers
    for run_id in run_ids:
        for shard in shards:
            rows = archive.process_shard(
                RunSpec(str(inp), str(out), reference_url=str(ref), run_id=run_id), shard, enhancer
            )
            url = RunLayout(str(out), run_id).shard_url(shard.shard_id)
            archive.write_shard_parquet(rows, url, {"run_id": run_id, "shard_fingerprint": shard.fingerprint})

    one = archive.read_shard_parquet(RunLayout(str(out), run_ids[0]).shard_url("shard-00000"))
    assert one.schema.equals(archive.METRICS_SCHEMA)  # the exact declared columns and types
    meta = archive.shard_metadata(one)
    assert meta["schema_version"] == str(archive.SCHEMA_VERSION)
    assert meta["run_id"] == run_ids[0] and meta["shard_fingerprint"] == shards[0].fingerprint
    assert "run_id" not in one.column_names

    metrics = out / "_metrics"
    # pyarrow with plain hive partitioning (run_id inferred) ...
    table = ds.dataset(str(metrics), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 2 * len(names)
    assert {str(v) for v in table.column("run_id").to_pylist()} == set(run_ids)
    # ... and our reader, which pins run_id to a string.
    table = archive.read_metrics(str(out))
    assert table.schema.field("run_id").type == pa.string()
    assert sorted(set(table.column("run_id").to_pylist())) == sorted(run_ids)
    assert archive.read_metrics(str(out), run_id="42").num_rows == len(names)

    con = duckdb.connect()
    got = con.execute(
        f"SELECT run_id::VARCHAR, count(*), count(psnr), min(finished_at) FROM read_parquet("
        f"'{metrics}/*/*.parquet', hive_partitioning=true) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in got] == [("20250101T000000Z-aaaaaa", 3, 2), ("42", 3, 2)]


def _comparable(rows):
    volatile = {"finished_at", "worker"} | {f"sec_{s}" for s in archive.STAGES}
    return [{k: v for k, v in r.items() if k not in volatile} for r in rows]


def test_read_ahead_gives_the_same_rows_including_failures(tmp_path, make_images, enhancer):
    inp, ref = tmp_path / "in", tmp_path / "ref"
    make_images(inp, ["a.png", "b.png", "c.jpg", "e.png", "f.png"])
    make_images(ref, ["a.png", "c.jpg"])
    make_images(ref, ["e.png"], width=32)  # a reference of the wrong size
    (inp / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (inp / "empty.png").write_bytes(b"")
    shard = archive.plan_shards(storage.list_images(str(inp)), 16)[0]

    results = {
        n: archive.process_shard(
            RunSpec(str(inp), str(tmp_path / f"out{n}"), reference_url=str(ref), run_id="r", read_ahead=n),
            shard,
            enhancer,
        )
        for n in (0, 1, 3, 10)
    }
    baseline = [{**r, "output_path": None} for r in _comparable(results[0])]
    assert [r["rel_path"] for r in baseline] == list(shard.paths)
    assert {r["rel_path"]: r["status"] for r in baseline}["d.png"] == "error"
    assert {r["rel_path"]: r["warning"] for r in baseline}["b.png"] == "no reference image"
    for n, rows in results.items():
        assert [{**r, "output_path": None} for r in _comparable(rows)] == baseline, n


def test_reads_of_the_next_image_overlap_the_current_one(tmp_path, make_images, enhancer, monkeypatch):
    import threading
    import time

    inp = tmp_path / "in"
    names = [f"img{i}.png" for i in range(4)]
    make_images(inp, names, width=96, height=64)
    events = []
    real_read = storage.read_inside

    def recording_read(root, rel, *args, **kwargs):  # a spy: the real read still happens
        events.append(("read", rel.rsplit("/", 1)[-1], threading.current_thread().name, time.perf_counter()))
        return real_read(root, rel, *args, **kwargs)

    class RecordingEnhancer:
        model_version = enhancer.model_version

        def enhance(self, rgb, stages="full", mask=None):
            result = enhancer.enhance(rgb, stages=stages)
            events.append(("enhanced", None, threading.current_thread().name, time.perf_counter()))
            return result

    monkeypatch.setattr(storage, "read_inside", recording_read)
    shard = archive.plan_shards(names, 4)[0]
    rows = archive.process_shard(RunSpec(str(inp), str(tmp_path / "out"), read_ahead=1), shard, RecordingEnhancer())
    assert [r["status"] for r in rows] == ["ok"] * 4
    reads = [e for e in events if e[0] == "read"]
    assert [e[1] for e in reads] == names
    assert all(e[2].startswith("llie-read") for e in reads)  # never on the compute thread
    enhanced = [e[3] for e in events if e[0] == "enhanced"]
    # image i+1 is being read while image i is computed, not after it
    for i in range(3):
        assert reads[i + 1][3] < enhanced[i]


class _NeverEnhances:
    """Stands in for the enhancer where every image fails before it would be enhanced."""

    model_version = "never"

    def enhance(self, rgb, stages="full", mask=None):  # pragma: no cover - reaching it is the failure
        raise AssertionError("the read should have failed")


@pytest.mark.parametrize(
    "userinfo",
    [
        "AKIALLIELEAKKEY00042:wJalrXUtnFEMIleak0123",
        # "/" and "+" as in real AWS secret keys: fsspec then takes "KEY:first-part" for the bucket.
        "AKIALLIELEAKKEY00042:wJalr/XUtn+FEMIleak0123",
    ],
)
def test_credentials_in_urls_never_reach_the_parquet(s3, tmp_path, make_images, userinfo):
    from tests.conftest import FAKE_SECRET

    key_id, secret = userinfo.split(":", 1)
    make_images(tmp_path / "src", ["a.png", "sub/b.png"])
    for rel in ["a.png", "sub/b.png"]:
        storage.write_bytes_atomic(s3.url(f"in/{rel}"), (tmp_path / "src" / rel).read_bytes())
    input_url = f"s3://{userinfo}@{s3.bucket}/in"
    [shard] = archive.plan_shards(["a.png", "sub/b.png"], 10)
    rows = archive.process_shard(
        RunSpec(input_url, str(tmp_path / "out"), reference_url=f"s3://{userinfo}@{s3.bucket}/ref", run_id="r"),
        shard,
        _NeverEnhances(),
    )
    assert [r["status"] for r in rows] == ["error", "error"]
    assert rows[0]["error"].startswith("read: ") and "***" in rows[0]["error"], rows[0]["error"]
    assert rows[0]["input_path"] == f"s3://***@{s3.bucket}/in/a.png"

    url = RunLayout(str(tmp_path / "out"), "r").shard_url(shard.shard_id)
    archive.write_shard_parquet(rows, url, {"run_id": "r", "shard_fingerprint": shard.fingerprint})
    table = pq.read_table(url)
    cells = [str(v) for column in table.to_pydict().values() for v in column]
    cells += [k.decode() + "=" + v.decode() for k, v in (table.schema.metadata or {}).items()]
    for leaked in [key_id, *secret.split("/"), FAKE_SECRET]:
        assert not [c for c in cells if leaked in c], leaked
