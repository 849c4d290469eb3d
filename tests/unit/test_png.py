"""The fast PNG writer: every mode reads back exactly through Pillow, in one band or many, on one
thread or several; its zlib stream (checksum included) is valid; metadata reads back as Pillow's."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from llie.batch import png
from llie.batch.png import PngMetadata, adler32_combine, encode_png

SHAPES = {"L": (), "LA": (2,), "RGB": (3,), "RGBA": (4,), "I;16": ()}


def _pixels(mode: str, height: int = 37, width: int = 23, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype, top = (np.uint16, 65536) if mode == "I;16" else (np.uint8, 256)
    smooth = np.linspace(0, top - 1, width, dtype=np.float64)[None, :, None] * np.ones((height, 1, 1))
    noise = rng.integers(0, top, (height, width, 1))
    arr = np.where(rng.random((height, width, 1)) < 0.5, smooth, noise).astype(dtype)
    arr = np.repeat(arr, max(1, len(SHAPES[mode]) and SHAPES[mode][0]), axis=2)
    arr[..., -1] = rng.integers(0, top, (height, width), dtype=dtype)  # channels differ
    return arr[..., 0] if not SHAPES[mode] else arr


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(body, zlib.crc32(kind))
        out.append((kind, body))
        pos += 12 + length
    return out


@pytest.mark.parametrize("mode", sorted(SHAPES))
@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize(("band_bytes", "threads"), [(1 << 20, 1), (97, 1), (97, 3)])
def test_every_mode_reads_back_exactly(monkeypatch, mode, level, band_bytes, threads):
    monkeypatch.setattr(png, "BAND_BYTES", band_bytes)  # 97 bytes: bands of a row or two, many streams
    arr = _pixels(mode)
    data = encode_png(lambda top, bottom: arr[top:bottom], (arr.shape[1], arr.shape[0]), mode, level, threads=threads)
    image = Image.open(io.BytesIO(data))
    assert image.mode == mode and image.size == (arr.shape[1], arr.shape[0])
    np.testing.assert_array_equal(np.asarray(image), arr)
    # the IDAT chunks form one zlib stream whose Adler-32 (checked by zlib) is right
    idat = b"".join(body for kind, body in _chunks(data) if kind == b"IDAT")
    raw = zlib.decompress(idat)
    assert len(raw) == arr.shape[0] * (arr[0].nbytes + 1)


def test_rows_are_asked_for_band_by_band(monkeypatch):
    monkeypatch.setattr(png, "BAND_BYTES", 200)
    arr = _pixels("RGB", height=40)
    asked = []

    def rows(top, bottom):
        asked.append((top, bottom))
        return arr[top:bottom]

    encode_png(rows, (arr.shape[1], arr.shape[0]), "RGB", threads=1)
    assert len(asked) > 5
    # each band but the first also reads the row above it, for the Up filter
    assert asked[0][0] == 0 and all(top == prev_bottom - 1 for (top, _), (_, prev_bottom) in zip(asked[1:], asked))
    assert asked[-1][1] == arr.shape[0]


def test_adler32_combine_matches_zlib():
    rng = np.random.default_rng(1)
    for n1, n2 in [(0, 5), (5, 0), (1, 1), (1000, 70000), (65521, 3), (200000, 131071)]:
        a, b = rng.bytes(n1), rng.bytes(n2)
        assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


def test_metadata_reads_back_as_from_pillow():
    arr = _pixels("RGB")
    exif = Image.Exif()
    exif[0x010F] = "llie camera"
    exif_bytes = exif.tobytes()
    icc = b"\0" * 16 + b"RGB " + bytes(range(200))
    assert exif_bytes.startswith(b"Exif\x00\x00")  # the header Pillow strips; so does the writer
    meta = PngMetadata(icc_profile=icc, exif=exif_bytes, dpi=(300.0, 150.0))
    ours = Image.open(io.BytesIO(encode_png(lambda t, b: arr[t:b], (arr.shape[1], arr.shape[0]), "RGB", meta=meta)))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", icc_profile=icc, exif=exif_bytes, dpi=(300.0, 150.0))
    pillows = Image.open(io.BytesIO(buf.getvalue()))
    ours.load()
    pillows.load()
    for key in ("icc_profile", "exif", "dpi"):
        assert ours.info[key] == pillows.info[key], key
    assert ours.getexif()[0x010F] == "llie camera"
    assert _chunks(encode_png(lambda t, b: arr[t:b], (23, 37), "RGB", meta=meta))[1][0] == b"iCCP"  # before IDAT


def test_refuses_what_it_does_not_write():
    arr = _pixels("RGB")
    with pytest.raises(ValueError, match="levels 0 and 1"):
        encode_png(lambda t, b: arr[t:b], (23, 37), "RGB", level=6)
    with pytest.raises(ValueError, match="mode"):
        encode_png(lambda t, b: arr[t:b], (23, 37), "P")
