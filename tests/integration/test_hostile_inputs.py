"""A hostile corpus through the real flow (Prefect + external Dask cluster), once.

Every image file must come back as exactly one row, ``ok`` or ``error``/``skipped`` with a reason a
person can read; nothing may crash a shard or the run, nothing may be written outside the output,
and the inputs must come out of the run exactly as they went in.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llie.batch import archive, storage
from llie.batch.imageio import DecodeLimits, decode_image
from llie.batch.spec import RunSpec
from tests.conftest import run_archive

pytestmark = pytest.mark.usefixtures("prefect_harness")

MAX_PIXELS = 20_000  # the decompression-bomb limit of this run: 200x150 is over it, 3x900 is not
RUN_ID = "hostile"


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _dark(width: int = 32, height: int = 24, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1)
    arr = np.clip(0.25 * base + rng.normal(0, 0.01, base.shape), 0, 1)
    return Image.fromarray((arr * 255 + 0.5).astype(np.uint8))


def _bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A real 1x1 PNG (a few dozen bytes) whose header claims ``width`` x ``height``."""
    data = bytearray(_save(Image.new("1", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 32x24, shown rotated 90 degrees: 24x32
    return _save(_dark(32, 24, seed=7), "JPEG", exif=exif.tobytes(), quality=95)


BAD_NAME = os.fsdecode(b"names/bad\xffbyte.png")  # not valid UTF-8: legal on POSIX all the same
WINDOWS_ABSOLUTE = "C:\\evil.png"  # a legal POSIX name that looks like an absolute Windows path

TOO_LARGE = "decode: image too large: {} pixels > limit %d (raise --max-pixels)" % MAX_PIXELS  # noqa: UP031 ({} is filled later)

# rel path -> (status, exact reason or None). The names are the listing's contract.
EXPECTED: dict[str, tuple[str, str | None]] = {
    "broken/empty.jpg": ("error", "decode: empty file"),
    "broken/text.jpg": ("error", "decode: not an image (text/unknown format)"),
    "broken/truncated.jpg": ("error", "decode: truncated JPEG"),
    "broken/truncated.png": ("error", "decode: truncated PNG"),
    "bomb.png": ("skipped", TOO_LARGE.format(60000 * 60000)),
    "sizes/200x150.png": ("skipped", TOO_LARGE.format(200 * 150)),
    WINDOWS_ABSOLUTE: ("error", "read: ValueError: not a relative path: 'C:\\\\evil.png'"),
    "modes/gray16.png": ("ok", None),
    "modes/palette.png": ("ok", None),
    "modes/rgba.png": ("ok", None),
    "modes/gray.png": ("ok", None),
    "modes/cmyk.jpg": ("ok", None),
    "sizes/1x1.png": ("ok", None),
    "sizes/3x900.png": ("ok", None),
    "anim.gif": ("ok", None),
    "rotated.jpg": ("ok", None),
    "names/with space.png": ("ok", None),
    "names/ünïcødé фото 日本.jpg": ("ok", None),
    "names/UPPER.PNG": ("ok", None),
    "names/x..y.jpeg": ("ok", None),
    "names/photo [1] #2 %20?.png": ("ok", None),
    BAD_NAME: ("ok", None),
    "a/b/c/d/e/deep.TIF": ("ok", None),
    "folder.png/inner.webp": ("ok", None),
    "photo.bmp": ("ok", None),
    "link-in.png": ("ok", None),  # a symlink that stays inside the input root
}
# Files that are not images, or not to be touched: no row, no output.
NOT_IMAGES = [
    ".hidden.png",
    ".cache/x.png",
    "names/._resource.jpg",
    "notes.txt",
    "data.json",
    "noext",
    "names/image.png.bak",
    "pipe.jpg",
    "link-out.png",
    "linkdir/x.png",
]


def _build_corpus(inp: Path, outside: Path) -> None:
    rgb = _dark()
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 90, (24, 32, 3), dtype=np.uint8))
    png, jpg = _save(noise, "PNG"), _save(noise, "JPEG", quality=90)
    gray16 = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
    frames = [Image.new("RGB", (32, 24), c) for c in ((40, 10, 10), (10, 40, 10), (10, 10, 40))]
    files = {
        "broken/empty.jpg": b"",
        "broken/text.jpg": b"plain text, not a picture\n" * 10,
        "broken/truncated.jpg": jpg[: len(jpg) * 6 // 10],
        "broken/truncated.png": png[: len(png) // 2],
        "bomb.png": _bomb(),
        "sizes/200x150.png": _save(_dark(200, 150), "PNG"),
        WINDOWS_ABSOLUTE: _save(rgb, "PNG"),
        "modes/gray16.png": _save(Image.fromarray(gray16), "PNG"),
        "modes/palette.png": _save(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "modes/rgba.png": _save(rgb.convert("RGBA"), "PNG"),
        "modes/gray.png": _save(rgb.convert("L"), "PNG"),
        "modes/cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
        "sizes/1x1.png": _save(Image.new("RGB", (1, 1), (20, 30, 40)), "PNG"),
        "sizes/3x900.png": _save(_dark(3, 900), "PNG"),
        "anim.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "rotated.jpg": _rotated_jpeg(),
        "names/with space.png": _save(_dark(seed=1), "PNG"),
        "names/ünïcødé фото 日本.jpg": _save(_dark(seed=2), "JPEG"),
        "names/UPPER.PNG": _save(_dark(seed=3), "PNG"),
        "names/x..y.jpeg": _save(_dark(seed=4), "JPEG"),
        "names/photo [1] #2 %20?.png": _save(_dark(seed=5), "PNG"),
        BAD_NAME: _save(_dark(seed=6), "PNG"),
        "a/b/c/d/e/deep.TIF": _save(rgb, "TIFF"),
        "folder.png/inner.webp": _save(rgb, "WEBP"),
        "photo.bmp": _save(rgb, "BMP"),
        # hidden files and folders, and files that are not images (some of them image bytes)
        ".hidden.png": _save(rgb, "PNG"),
        ".cache/x.png": _save(rgb, "PNG"),
        "names/._resource.jpg": b"\0" * 64,
        "notes.txt": b"not an image\n",
        "data.json": b"{}",
        "noext": _save(rgb, "PNG"),
        "names/image.png.bak": _save(rgb, "PNG"),
    }
    for rel, data in files.items():
        path = inp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.mkfifo(inp / "pipe.jpg")  # reading it would block forever
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.png").write_bytes(_save(rgb, "PNG"))
    (outside / "dir" / "x.png").write_bytes(_save(rgb, "PNG"))
    os.symlink(outside / "secret.png", inp / "link-out.png")
    os.symlink(outside / "dir", inp / "linkdir")
    os.symlink(inp / "modes" / "rgba.png", inp / "link-in.png")


def _snapshot(root: Path, hash_under: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): mode, size, mtime, ctime, and for files under
    ``hash_under`` the content hash (elsewhere, any write shows in size, mtime and ctime)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = None
            if stat.S_ISREG(st.st_mode) and Path(path).is_relative_to(hash_under):
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(path)
            found[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)
    return found


@dataclass
class HostileRun:
    root: Path  # what the snapshots cover: pytest's whole temporary tree
    inp: Path
    out: Path
    summary: dict
    rows: dict[str, dict]
    tmp_before: dict[str, tuple]
    tmp_after: dict[str, tuple]
    out_rel: str  # the output folder relative to the snapshot root


@pytest.fixture(scope="module")
def hostile_run(prefect_harness, dask_address, tmp_path_factory, bundle_path) -> HostileRun:
    base = tmp_path_factory.mktemp("hostile")
    inp, out, outside = base / "in", base / "out", base / "outside"
    _build_corpus(inp, outside)
    snapshot_root = tmp_path_factory.getbasetemp()
    before = _snapshot(snapshot_root, base)

    summary = run_archive(
        str(inp),
        str(out),
        shard_size=8,
        dask_address=dask_address,
        run_id=RUN_ID,
        model=bundle_path,
        max_pixels=MAX_PIXELS,
        retries=0,  # a crashing shard would fail the run instead of hiding in a retry
    )
    after = _snapshot(snapshot_root, base)
    table = archive.read_metrics(str(out), RUN_ID)
    rel_paths = table.column("rel_path").to_pylist()
    assert len(rel_paths) == len(set(rel_paths)), "an image has more than one row"
    return HostileRun(
        snapshot_root,
        inp,
        out,
        summary,
        {r["rel_path"]: r for r in table.to_pylist()},
        before,
        after,
        str(out.relative_to(snapshot_root)),
    )


def test_the_run_completes_with_one_row_per_image_file(hostile_run):
    summary = hostile_run.summary
    assert summary["failed_shards"] == []
    assert summary["images"] == len(EXPECTED)
    statuses = [status for status, _ in EXPECTED.values()]
    assert (summary["ok"], summary["errors"], summary["skipped"]) == (
        statuses.count("ok"),
        statuses.count("error"),
        statuses.count("skipped"),
    )
    # Exactly the image files: hidden files, non-images, a FIFO and links out of the root have none.
    assert sorted(hostile_run.rows) == sorted(archive.printable(rel) for rel in EXPECTED)
    for rel in NOT_IMAGES:
        assert rel not in hostile_run.rows
        assert not os.path.lexists(hostile_run.out / rel)


def test_every_row_has_the_expected_status_and_a_readable_reason(hostile_run):
    for rel, (status, reason) in EXPECTED.items():
        row = hostile_run.rows[archive.printable(rel)]
        assert (row["status"], row["error"]) == (status, reason), rel
        assert row["model_version"] and row["worker"] and row["finished_at"] is not None
        if status != "ok":
            assert row["output_path"] is None and row["bytes_out"] is None
            assert not os.path.lexists(hostile_run.out / rel)
            assert len(row["error"]) < 200 and row["error"].isprintable() and "Traceback" not in row["error"]
    # The file name that is not UTF-8 is recorded with its odd byte escaped, and processed.
    assert hostile_run.rows["names/bad\\xffbyte.png"]["input_path"] == f"{hostile_run.inp}/names/bad\\xffbyte.png"


def test_ok_images_are_written_the_way_they_came_in(hostile_run):
    out = hostile_run.out
    for rel, (status, _) in EXPECTED.items():
        if status != "ok":
            continue
        row = hostile_run.rows[archive.printable(rel)]
        src = decode_image((hostile_run.inp / rel).read_bytes(), DecodeLimits())
        written = (out / rel).read_bytes()
        dst = decode_image(written, DecodeLimits())
        assert (row["width"], row["height"]) == (src.width, src.height) == (dst.width, dst.height), rel
        assert row["format"] == src.format == dst.format, rel
        assert row["bytes_out"] == len(written) and row["output_path"] == archive.printable(f"{out}/{rel}")
        assert np.isfinite(row["after_brightness"])
    assert decode_image((out / "modes/gray16.png").read_bytes()).bit_depth == 16
    assert Image.open(out / "modes/gray.png").mode == "L"
    assert Image.open(out / "modes/rgba.png").mode == "RGBA"
    assert Image.open(out / "modes/cmyk.jpg").mode == "RGB"
    rotated = Image.open(out / "rotated.jpg")
    assert rotated.size == (24, 32) and rotated.getexif()[0x0112] == 1  # turned upright once, tag reset
    assert hostile_run.rows["anim.gif"]["format"] == "GIF" and Image.open(out / "anim.gif").n_frames == 1


def test_nothing_is_written_outside_the_output(hostile_run):
    before, after = hostile_run.tmp_before, hostile_run.tmp_after
    out_rel = hostile_run.out_rel
    ancestors = {str(p) for p in Path(out_rel).parents}  # folders whose times change as out/ appears
    changed = sorted(
        k
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k)
        and not (k == out_rel or k.startswith(out_rel + os.sep))
        and not k.startswith("dask-logs")  # the session cluster's own log files
        and k not in ancestors
    )
    assert changed == []
    # Inside the output: the enhanced images and the metrics, nothing else (no temp files either),
    # apart from the run's HTML report (llie.audit.report) the flow may write next to the metrics.
    written = sorted(
        k[len(out_rel) + 1 :] for k, v in after.items() if k.startswith(out_rel + os.sep) and stat.S_ISREG(v[0])
    )
    report = f"_metrics/run_id={RUN_ID}/_report/"
    written = [k for k in written if not (k.startswith(report) and not os.path.basename(k).startswith("."))]
    shards = archive.plan_shards(list(EXPECTED), 8)
    metrics = [f"_metrics/run_id={RUN_ID}/{s.shard_id}.parquet" for s in shards] + [
        f"_metrics/run_id={RUN_ID}/_run.json"
    ]
    assert written == sorted([rel for rel, (status, _) in EXPECTED.items() if status == "ok"] + metrics)


def test_inputs_are_byte_identical_with_unchanged_times(hostile_run):
    before, after = hostile_run.tmp_before, hostile_run.tmp_after
    inp_rel = str(hostile_run.inp.relative_to(hostile_run.root))
    inputs = {k: v for k, v in before.items() if k == inp_rel or k.startswith(inp_rel + os.sep)}
    assert len(inputs) > len(EXPECTED) + len(NOT_IMAGES)  # files, links, the FIFO and folders
    for key, (mode, size, mtime, ctime, digest) in inputs.items():
        # mode, size, content and both mtime and ctime (which any write, chmod or rename would bump)
        assert after[key] == (mode, size, mtime, ctime, digest), key
    assert {k for k in after if k.startswith(inp_rel + os.sep)} == {k for k in inputs if k != inp_rel}


# --------------------------------------------------------------------------- names that look like URL syntax


def test_names_with_url_syntax_and_names_at_the_length_limit_are_plain_names(
    dask_address, tmp_path, bundle_path, s3, enhancer
):
    """``a::b.png`` is not an fsspec chain, ``?`` is not a query in an object key, and a 250-byte name
    (the limit is 255) is written although its temporary name would be longer than that."""
    from tests.conftest import encode, gradient, write_images

    inp, out = tmp_path / "in", tmp_path / "out"
    long_name = "x" * 246 + ".png"
    write_images(inp, ["a", "a.png", long_name], width=32, height=24)  # "a": what a chain would read instead
    (inp / "a::b.png").write_bytes(encode(gradient(40, 30, seed=5)))
    summary = run_archive(str(inp), str(out), dask_address=dask_address, run_id="names", model=bundle_path, retries=0)
    rows = {r["rel_path"]: r for r in archive.read_metrics(str(out), "names").to_pylist()}
    assert sorted(rows) == sorted(["a.png", "a::b.png", long_name]) and summary["ok"] == 3, rows
    assert (rows["a::b.png"]["width"], rows["a::b.png"]["height"]) == (40, 30)  # its own pixels
    assert decode_image((out / "a::b.png").read_bytes()).width == 40
    assert (out / long_name).is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    keys = ["q?x.png", "a::b.png", "sub/what?#.png"]
    for i, key in enumerate(keys):
        storage.write_bytes_atomic(s3.url(f"in/{key}"), encode(gradient(36 + i, 24, seed=i)))
    listed = storage.list_images(s3.url("in"))
    assert listed == sorted(keys)
    [shard] = archive.plan_shards(listed, 8)
    for row in archive.process_shard(RunSpec(s3.url("in"), s3.url("out")), shard, enhancer):
        assert row["status"] == "ok", row
        assert row["output_path"] == s3.url(f"out/{row['rel_path']}")  # stored under its own name, unmangled
        assert row["width"] == 36 + keys.index(row["rel_path"])
    assert storage.list_images(s3.url("out")) == sorted(keys)
