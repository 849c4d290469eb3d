"""Decoding a hostile corpus and round-tripping every image kind through encode_image."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from llie.batch.imageio import (
    IMAGE_EXTENSIONS,
    DecodedImage,
    DecodeLimits,
    ImageDecodeError,
    ImageTooLargeError,
    decode_file,
    decode_image,
    encode_image,
    is_image_name,
    stored_pixels,
)


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _noise_rgb(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    # Incompressible pixels make the compressed stream long, so a cut lands inside pixel data.
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gradient_rgb(h: int = 24, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1).astype(np.uint8)


def _png_with_header_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims another size (CRC fixed, so only the size is a lie)."""
    data = bytearray(_save(Image.new("1", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _check_pixels(decoded: DecodedImage, height: int, width: int) -> None:
    assert decoded.rgb.shape == (height, width, 3)
    assert decoded.rgb.dtype == np.float32
    assert 0.0 <= decoded.rgb.min() and decoded.rgb.max() <= 1.0
    assert (decoded.width, decoded.height) == (width, height)
    if decoded.alpha is not None:
        assert decoded.alpha.shape == (height, width)
        assert decoded.alpha.dtype == np.float32


# --------------------------------------------------------------------------- hostile corpus


@pytest.fixture
def broken(tmp_path):
    """Files that must be refused, each with the words its reason has to contain."""
    png = _save(Image.fromarray(_noise_rgb()), "PNG")
    jpeg = _save(Image.fromarray(_noise_rgb()), "JPEG", quality=90)
    webp = _save(Image.fromarray(_noise_rgb()), "WEBP")
    corpus = {
        "empty.png": (b"", ["empty"]),
        "truncated.png": (png[: len(png) // 2], ["truncated", "PNG"]),
        "truncated_header.png": (png[:20], ["truncated", "PNG"]),
        "truncated.jpg": (jpeg[: len(jpeg) * 6 // 10], ["truncated", "JPEG"]),
        "truncated_header.jpg": (jpeg[:20], ["truncated", "JPEG"]),
        "truncated.webp": (webp[: len(webp) // 2], ["truncated", "WEBP"]),
        "text.jpg": (b"this is not a picture\n" * 20, ["not an image"]),
        "binary.png": (bytes(range(256)) * 4, ["not an image"]),
        "zero.png": (_png_with_header_size(0, 0), ["zero-size"]),
        "bomb.png": (_png_with_header_size(60000, 60000), ["too large", "3600000000"]),
    }
    for name, (data, _) in corpus.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path, corpus


def test_broken_files_raise_decode_errors_with_reasons(broken):
    root, corpus = broken
    for name, (_, words) in corpus.items():
        with pytest.raises(ImageDecodeError) as info:
            decode_file(root / name)
        reason = str(info.value)
        for word in words:
            assert word in reason, f"{name}: {reason!r} lacks {word!r}"
        assert len(reason) < 300


def test_decode_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)


def test_stored_pixels_reads_the_header_only(tmp_path):
    for fmt, name in (("PNG", "a.png"), ("JPEG", "b.jpg")):
        Image.new("RGB", (37, 21)).save(tmp_path / name, format=fmt)
        assert stored_pixels(tmp_path / name) == 37 * 21
    (tmp_path / "c.png").write_bytes(b"not an image")
    assert stored_pixels(tmp_path / "c.png") == 0 and stored_pixels(tmp_path / "missing.png") == 0


def test_pixel_limit_is_checked_from_header_before_decoding():
    # 5000x5000 claimed by a 1x1 file: only the header can have been looked at.
    with pytest.raises(
        ImageTooLargeError, match=r"image too large: 25000000 pixels > limit 1000000 \(raise --max-pixels\)"
    ):
        decode_image(_png_with_header_size(5000, 5000), DecodeLimits(max_pixels=1_000_000))


def test_pillow_bomb_warning_becomes_error_under_a_lower_limit():
    # 100 MP is above Pillow's warning threshold (~89 MP) but below its hard error.
    with pytest.raises(ImageTooLargeError, match="too large"):
        decode_image(_png_with_header_size(10000, 10000), DecodeLimits(max_pixels=50_000_000))


def test_a_raised_limit_is_honoured_above_pillows_warning_threshold():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak out either
        with pytest.raises(ImageDecodeError) as info:
            decode_image(_png_with_header_size(10000, 10000))  # 100 MP < default 200 MP
    # It got past the size checks and failed on the missing pixel data instead.
    assert "truncated" in str(info.value)


def test_pillows_hard_limit_still_applies():
    with pytest.raises(ImageDecodeError, match="Pillow's hard limit"):
        decode_image(_png_with_header_size(14000, 14000), DecodeLimits(max_pixels=10**9))


def test_pillow_global_limit_untouched(broken):
    before = Image.MAX_IMAGE_PIXELS
    root, _ = broken
    with pytest.raises(ImageDecodeError):
        decode_file(root / "bomb.png")
    assert Image.MAX_IMAGE_PIXELS == before


def test_truncated_images_are_not_loaded_silently():
    from PIL import ImageFile

    jpeg = _save(Image.fromarray(_noise_rgb()), "JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(jpeg[: len(jpeg) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


# --------------------------------------------------------------------------- modes and formats


def test_rgb_png_exact():
    arr = _gradient_rgb()
    decoded = decode_image(_save(Image.fromarray(arr), "PNG"))
    _check_pixels(decoded, 24, 32)
    assert (decoded.mode, decoded.format, decoded.bit_depth, decoded.alpha) == ("RGB", "PNG", 8, None)
    np.testing.assert_array_equal(np.rint(decoded.rgb * 255).astype(np.uint8), arr)


def test_16bit_grayscale_png_scaled_by_65535():
    arr = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 541).astype(np.uint16)
    decoded = decode_image(_save(Image.fromarray(arr), "PNG"))
    _check_pixels(decoded, 12, 10)
    assert decoded.mode.startswith("I;16") and decoded.bit_depth == 16
    np.testing.assert_allclose(decoded.rgb[..., 1], arr / 65535.0, atol=1e-6)
    assert np.array_equal(decoded.rgb[..., 0], decoded.rgb[..., 2])


def test_16bit_big_endian_tiff():
    arr = np.array([[0, 256, 65535], [1000, 2000, 30000]], dtype=">u2")
    img = Image.frombytes("I;16B", (3, 2), arr.tobytes())
    decoded = decode_image(_save(img, "TIFF"))
    assert decoded.mode == "I;16B" and decoded.bit_depth == 16 and decoded.format == "TIFF"
    np.testing.assert_allclose(decoded.rgb[..., 0], arr.astype(np.float64) / 65535.0, atol=1e-6)


@pytest.mark.parametrize(
    "mode, fmt, alpha, bit_depth",
    [
        ("L", "PNG", False, 8),
        ("LA", "PNG", True, 8),
        ("RGBA", "PNG", True, 8),
        ("CMYK", "JPEG", False, 8),
        ("CMYK", "TIFF", False, 8),
        ("YCbCr", "TIFF", False, 8),
        ("1", "PNG", False, 8),
        ("1", "BMP", False, 8),
        ("I", "TIFF", False, 16),
        ("F", "TIFF", False, 16),
        ("P", "GIF", False, 8),
        ("RGB", "WEBP", False, 8),
        ("RGB", "BMP", False, 8),
    ],
)
def test_modes_decode(mode, fmt, alpha, bit_depth):
    base = Image.fromarray(_gradient_rgb())
    if mode == "I":  # 32-bit integer images are read as holding 16-bit data
        img = Image.fromarray(np.asarray(base.convert("L")).astype(np.int32) * 257)
    else:
        img = base.convert(mode) if mode != "F" else base.convert("L").convert(mode)
    decoded = decode_image(_save(img, fmt))
    _check_pixels(decoded, 24, 32)
    assert decoded.mode == mode
    assert decoded.format == fmt
    assert decoded.bit_depth == bit_depth
    assert (decoded.alpha is not None) == alpha
    assert decoded.rgb.std() > 0.05  # real content came through, not a blank


def test_float_tiff_in_unit_range_kept():
    arr = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    decoded = decode_image(_save(Image.fromarray(arr), "TIFF"))
    np.testing.assert_allclose(decoded.rgb[..., 0], arr, atol=1e-7)


@pytest.mark.parametrize("overshoot", [1.0000001, 1.02, 1.5])
def test_float_tiff_overshooting_one_is_clipped_not_rescaled(overshoot):
    # processed [0,1] data overshoots 1.0 a little; it must not be read as 0-255 data (a black photo)
    arr = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    arr[0, 0] = overshoot
    decoded = decode_image(_save(Image.fromarray(arr), "TIFF"))
    np.testing.assert_allclose(decoded.rgb[..., 0].ravel()[1:], arr.ravel()[1:], atol=1e-7)
    assert decoded.rgb[0, 0, 0] == 1.0


def test_float_tiff_in_integer_range_rescaled():
    arr = np.linspace(0, 255, 20, dtype=np.float32).reshape(4, 5)
    decoded = decode_image(_save(Image.fromarray(arr), "TIFF"))
    np.testing.assert_allclose(decoded.rgb[..., 0], arr / 255, atol=1e-6)


def test_palette_png_with_transparency():
    img = Image.fromarray(_gradient_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    decoded = decode_image(_save(img, "PNG", transparency=0))
    _check_pixels(decoded, 24, 32)
    assert decoded.mode == "P" and decoded.alpha is not None
    transparent = np.asarray(img) == 0
    assert transparent.any()
    np.testing.assert_array_equal(decoded.alpha == 0.0, transparent)


def test_palette_png_without_transparency():
    img = Image.fromarray(_gradient_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    decoded = decode_image(_save(img, "PNG"))
    assert decoded.mode == "P" and decoded.alpha is None
    np.testing.assert_allclose(decoded.rgb * 255, np.asarray(img.convert("RGB")), atol=1e-3)


def test_grayscale_is_replicated_to_three_channels():
    arr = _gradient_rgb()[..., 0]
    decoded = decode_image(_save(Image.fromarray(arr), "PNG"))
    assert decoded.mode == "L"
    np.testing.assert_array_equal(decoded.rgb[..., 0], decoded.rgb[..., 1])
    np.testing.assert_allclose(decoded.rgb[..., 2] * 255, arr, atol=1e-3)
    decoded.rgb[0, 0, 0] = 0.5  # a real array, not a read-only broadcast view


@pytest.mark.parametrize("size", [(1, 1), (3, 900), (900, 3)])
def test_tiny_and_thin_images(size):
    width, height = size
    arr = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    decoded = decode_image(_save(Image.fromarray(arr), "PNG"))
    _check_pixels(decoded, height, width)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 8), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    decoded = decode_image(data)
    assert decoded.format == "GIF"
    _check_pixels(decoded, 8, 16)
    np.testing.assert_allclose(decoded.rgb[4, 4], [1.0, 0.0, 0.0], atol=1 / 255)


def _rotated_jpeg(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "llie-test-camera"  # Make: any other tag must survive
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255  # left half white, so the rotation direction is checkable
    return _save(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_applied_and_reset_on_encode():
    decoded = decode_image(_rotated_jpeg(6))
    # Stored 40 wide x 20 high; orientation 6 means "rotate 90 degrees clockwise to view".
    _check_pixels(decoded, 40, 20)
    assert decoded.rgb[:20].mean() > 0.9 and decoded.rgb[20:].mean() < 0.1
    assert decoded.exif is not None

    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
    assert out.size == (20, 40)
    exif = out.getexif()
    assert exif[0x0112] == 1
    assert exif[0x010F] == "llie-test-camera"
    # Decoding our own output must not rotate it again.
    again = decode_image(encode_image(decoded.rgb, decoded))
    assert again.rgb.shape == decoded.rgb.shape
    assert np.abs(again.rgb - decoded.rgb).mean() < 0.02


def test_exif_kept_when_writing_png():
    decoded = decode_image(_rotated_jpeg(6))
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded, fmt="PNG")))
    assert out.format == "PNG"
    assert out.getexif()[0x0112] == 1


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_png_exif_after_the_pixel_data_is_kept():
    # the PNG spec lets eXIf follow IDAT; Pillow only sees it once the image is loaded
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "llie-test-camera"
    tiff = exif.tobytes().removeprefix(b"Exif\x00\x00")
    data = _save(Image.fromarray(np.zeros((2, 4, 3), np.uint8)), "PNG")
    end = data.rindex(b"IEND") - 4
    decoded = decode_image(data[:end] + _png_chunk(b"eXIf", tiff) + data[end:])
    assert decoded.rgb.shape == (4, 2, 3)  # turned upright
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
    assert out.getexif()[0x010F] == "llie-test-camera"
    assert out.getexif()[0x0112] == 1


@pytest.mark.parametrize("kind, fmt", [(3, "H"), (4, "I")])
def test_orientation_reset_whatever_its_integer_type(kind, fmt):
    # some writers store Orientation as LONG; Pillow turns the pixels for it, so it must be reset too
    entry = struct.pack("<HHI", 0x0112, kind, 1) + struct.pack("<" + fmt, 6).ljust(4, b"\x00")
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + b"\x00" * 4
    decoded = decode_image(_save(Image.fromarray(np.zeros((4, 6, 3), np.uint8)), "JPEG", exif=exif))
    assert decoded.rgb.shape == (6, 4, 3)
    again = decode_image(encode_image(decoded.rgb, decoded))
    assert again.rgb.shape == (6, 4, 3)  # not turned a second time
    assert Image.open(io.BytesIO(encode_image(decoded.rgb, decoded))).getexif()[0x0112] == 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_resolution_kept(fmt):
    decoded = decode_image(_save(Image.fromarray(_gradient_rgb()), fmt, dpi=(300, 300)))
    assert decoded.dpi == pytest.approx((300, 300), abs=0.01)
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
    assert out.info["dpi"] == pytest.approx((300, 300), abs=0.01)


def test_icc_profile_round_trip():
    icc = _srgb_icc()
    data = _save(Image.fromarray(_gradient_rgb()), "JPEG", icc_profile=icc)
    decoded = decode_image(data)
    assert decoded.icc_profile == icc
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
    assert out.format == "JPEG" and out.info.get("icc_profile") == icc


def test_cmyk_jpeg_written_as_rgb_without_cmyk_profile():
    decoded = decode_image(_save(Image.fromarray(_gradient_rgb()).convert("CMYK"), "JPEG"))
    fake_cmyk_icc = bytes(16) + b"CMYK" + bytes(108)
    decoded.icc_profile = fake_cmyk_icc
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
    assert out.mode == "RGB" and out.format == "JPEG"
    assert "icc_profile" not in out.info


# --------------------------------------------------------------------------- encode round trips


def test_encode_rgb_png_lossless():
    arr = _noise_rgb(17, 23)
    decoded = decode_image(_save(Image.fromarray(arr), "PNG"))
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
    assert out.format == "PNG" and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_encode_rounds_instead_of_truncating():
    decoded = decode_image(_save(Image.new("RGB", (2, 2)), "PNG"))
    rgb = np.full((2, 2, 3), 0.999 * 10 / 255, dtype=np.float32)  # 9.99 levels
    out = np.asarray(Image.open(io.BytesIO(encode_image(rgb, decoded))))
    assert (out == 10).all()


def test_encode_16bit_stays_16bit():
    arr = (np.arange(8 * 9, dtype=np.uint16).reshape(8, 9) * 907).astype(np.uint16)
    for fmt in ("PNG", "TIFF"):
        decoded = decode_image(_save(Image.fromarray(arr), fmt))
        out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
        assert out.format == fmt and out.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(out), arr)


def test_encode_16bit_to_jpeg_falls_back_to_8bit_gray():
    arr = (np.arange(8 * 9, dtype=np.uint16).reshape(8, 9) * 907).astype(np.uint16)
    decoded = decode_image(_save(Image.fromarray(arr), "PNG"))
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded, fmt="jpg")))
    assert out.format == "JPEG" and out.mode == "L"


def test_encode_grayscale_stays_gray_as_luma():
    decoded = decode_image(_save(Image.fromarray(_gradient_rgb()[..., 1]), "PNG"))
    rgb = np.zeros((24, 32, 3), dtype=np.float32)
    rgb[..., 1] = 1.0  # pure green: luma 0.587
    out = Image.open(io.BytesIO(encode_image(rgb, decoded)))
    assert out.mode == "L"
    assert (np.asarray(out) == round(0.587 * 255)).all()


def test_encode_rgba_keeps_alpha():
    arr = np.dstack([_noise_rgb(10, 12), np.tile(np.arange(12, dtype=np.uint8) * 20, (10, 1))])
    decoded = decode_image(_save(Image.fromarray(arr), "PNG"))
    assert decoded.mode == "RGBA"
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out), arr)


def test_encode_la_keeps_alpha_and_gray():
    gray = _gradient_rgb()[..., 0]
    alpha = np.full_like(gray, 128)
    decoded = decode_image(_save(Image.fromarray(np.dstack([gray, alpha])), "PNG"))
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
    assert out.mode == "LA"
    np.testing.assert_array_equal(np.asarray(out)[..., 1], alpha)


def test_encode_palette_with_transparency_as_rgba():
    img = Image.fromarray(_gradient_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    decoded = decode_image(_save(img, "PNG", transparency=0))
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out)[..., 3] == 0, np.asarray(img) == 0)


def test_encode_alpha_follows_a_resized_image():
    arr = np.dstack([_noise_rgb(10, 12), np.full((10, 12), 200, np.uint8)])
    decoded = decode_image(_save(Image.fromarray(arr), "PNG"))
    out = Image.open(io.BytesIO(encode_image(np.zeros((20, 24, 3), np.float32), decoded)))
    assert out.size == (24, 20) and out.mode == "RGBA"
    assert (np.asarray(out)[..., 3] == 200).all()


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("WEBP", "RGB"), ("BMP", "RGB"), ("GIF", "P"), ("TIFF", "RGB")])
def test_encode_other_formats(fmt, mode):
    decoded = decode_image(_save(Image.fromarray(_gradient_rgb()), fmt))
    assert decoded.format == fmt
    out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
    assert out.format == fmt and out.mode == mode and out.size == (32, 24)


def test_encode_cmyk_and_1bit_written_as_rgb():
    for mode, fmt in (("CMYK", "TIFF"), ("1", "PNG")):
        decoded = decode_image(_save(Image.fromarray(_gradient_rgb()).convert(mode), fmt))
        out = Image.open(io.BytesIO(encode_image(decoded.rgb, decoded)))
        assert out.mode == "RGB", mode


def test_encode_rejects_bad_input():
    decoded = decode_image(_save(Image.new("RGB", (2, 2)), "PNG"))
    with pytest.raises(ValueError):
        encode_image(np.zeros((2, 2)), decoded)
    with pytest.raises(ValueError):
        encode_image(np.zeros((2, 2, 3)), decoded, fmt="PSD")


def test_encode_clips_out_of_range_and_nan():
    decoded = decode_image(_save(Image.new("RGB", (2, 2)), "PNG"))
    rgb = np.array([[[-1, 2, np.nan]] * 2] * 2, dtype=np.float32)
    out = np.asarray(Image.open(io.BytesIO(encode_image(rgb, decoded))))
    assert (out[..., 0] == 0).all() and (out[..., 1] == 255).all() and (out[..., 2] == 0).all()


# --------------------------------------------------------------------------- names


def test_image_extensions():
    assert IMAGE_EXTENSIONS == frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"})


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.png", True),
        ("A.JPG", True),
        ("dir/sub/photo.JpEg", True),
        ("x.tif", True),
        ("x.TIFF", True),
        ("scan.bmp", True),
        ("x.webp", True),
        ("anim.gif", True),
        (".hidden.png", False),
        ("dir/._resource.jpg", False),
        ("notes.txt", False),
        ("png", False),
        ("archive.png.zip", False),
        ("", False),
        ("s3://bucket/key/photo.PNG", True),
    ],
)
def test_is_image_name(name, expected):
    assert is_image_name(name) is expected
