"""Robust image decoding and encoding for archives full of odd and broken files.

Decoding turns *every* failure into :class:`ImageDecodeError` with a short reason a person can act
on, so a batch job can log and skip one bad file instead of dying on it. Decoded pixels are always
float32 RGB in [0, 1] (plus an optional alpha plane), upright, with enough of the original
"kind" (mode, format, bit depth, EXIF, ICC) kept for :func:`encode_image` to write the enhanced
image back the way it came in.

What ``encode_image`` writes, by input kind:

* grayscale (``L``, ``LA``, ``I;16*``, ``I``, ``F``): grayscale, as the Rec.601 luma of the result;
* 16-bit inputs (``I;16*``, ``I``, ``F``): 16-bit ``I;16`` where the format can hold it (PNG, TIFF);
  Pillow cannot write 16-bit colour, and 16-bit colour PNGs are already read as 8-bit by Pillow;
* alpha (``RGBA``, ``LA``, ``PA``, palette or ``L``/``RGB`` with a transparency key): re-attached,
  except where the format has no alpha (JPEG, BMP), where it is dropped;
* palette (``P``), ``CMYK``, ``YCbCr``, 1-bit and other odd modes: written as 8-bit RGB(A), since
  enhanced pixels no longer fit the original palette or ink model;
* GIF: only the first frame is decoded and only one frame is written;
* EXIF is kept with Orientation reset to 1 (pixels are already upright) for JPEG, PNG and WebP;
  the ICC profile is kept when its colour space matches what is written (a CMYK profile on the RGB
  output would mis-colour it, so it is dropped); the resolution (DPI) is kept for JPEG, PNG and TIFF.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from llie.batch.localfs import open_regular, read_regular
from llie.batch.png import PngMetadata, encode_png

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"})

# Formats Pillow may use to open a file. An allow-list, not Pillow's full registry: some plugins
# (EPS runs Ghostscript, for one) are not something to point at untrusted archive bytes. MPO
# (multi-picture JPEG) needs no entry: the JPEG opener returns it.
_OPEN_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF")

_GRAY_MODES = frozenset({"L", "LA", "La", "I", "F"})
# Output modes each writable format can hold; anything else is stepped down by _fit_mode.
_FORMAT_MODES = {
    "PNG": {"L", "LA", "RGB", "RGBA", "I;16"},
    "TIFF": {"L", "LA", "RGB", "RGBA", "I;16"},
    "JPEG": {"L", "RGB"},
    "BMP": {"L", "RGB"},  # Pillow writes RGBA BMPs that read back without alpha
    "WEBP": {"RGB", "RGBA"},
    "GIF": {"L", "RGB", "RGBA"},
}
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "MPO": "JPEG"}
_EXIF_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
_ICC_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})
_DPI_FORMATS = frozenset({"JPEG", "PNG", "TIFF"})
_EXIF_HEADER = b"Exif\x00\x00"
_ORIENTATION_TAG = 0x0112


class ImageDecodeError(ValueError):
    """A file could not be decoded; ``str(err)`` is a short human-readable reason."""


class ImageTooLargeError(ImageDecodeError):
    """The image is over the configured pixel limit (a decompression-bomb guard, not a broken file)."""


@dataclass(frozen=True)
class DecodeLimits:
    # Checked against the header's size before any pixel data is decoded. Pillow's own hard
    # limit (2 x Image.MAX_IMAGE_PIXELS, ~179 MP by default) still applies on top of this: it is a
    # process-wide global, and changing it for one call would change it for every thread.
    max_pixels: int = 200_000_000


@dataclass(frozen=True)
class EncodeOptions:
    """How outputs are compressed; format, mode and metadata always follow the input."""

    # zlib level of PNG outputs, 0-9: 1 writes several times faster than Pillow's default 6 for
    # slightly larger files (the README gives the figures); 0 and 1 go through llie.batch.png, a
    # faster writer than Pillow's, 2-9 through Pillow's, which picks a filter per row
    png_compression: int = 1
    jpeg_quality: int = 95  # JPEG and WebP outputs, 1-100

    def __post_init__(self) -> None:
        if not 0 <= self.png_compression <= 9:
            raise ValueError(f"png_compression must be 0-9, not {self.png_compression}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1-100, not {self.jpeg_quality}")


@dataclass
class DecodedImage:
    rgb: np.ndarray  # float32 HxWx3 in [0, 1], EXIF orientation applied
    alpha: np.ndarray | None  # float32 HxW in [0, 1]
    mode: str  # original Pillow mode
    format: str  # Pillow format name ("JPEG" also for MPO, which is a JPEG with extra frames)
    bit_depth: int  # 8 or 16
    exif: bytes | None  # raw EXIF as read; encode_image resets Orientation to 1
    icc_profile: bytes | None
    dpi: tuple[float, float] | None = None  # resolution as declared by the file, written back

    @property
    def opaque(self) -> np.ndarray | None:
        """HxW boolean mask of the pixels that show (alpha > 0), or None for an image without alpha."""
        return None if self.alpha is None else self.alpha > 0

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def is_image_name(name: str) -> bool:
    """True for names with an image extension; hidden files (``.foo.jpg``, ``._x.png``) are not.

    Hidden files are mostly macOS resource forks and editor droppings that share the extension.
    """
    base = os.path.basename(str(name).replace("\\", "/"))
    if not base or base.startswith("."):
        return False
    return os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- decoding


def decode_file(path: str | os.PathLike, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Read ``path`` (read-only) and decode it; see :func:`decode_image`."""
    return decode_image(read_regular(str(path)), limits)


def stored_pixels(path: str | os.PathLike) -> int:
    """Width x height as the file's header gives it, without decoding; 0 when the header cannot be read
    (decoding the file then says why)."""
    # no warnings.catch_warnings here: it swaps process-wide state, and this runs beside decodes in other
    # threads; Pillow warns only past its own bomb size (89 MP), which decoding reports anyway
    try:  # a FIFO would block a plain open: open_regular refuses it at once
        with open_regular(str(path)) as fh, Image.open(fh, formats=_OPEN_FORMATS) as img:
            return int(img.width) * int(img.height)
    except Exception:  # any reader's failure: an unreadable header costs nothing to plan for
        return 0


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Decode image bytes to float32 RGB in [0, 1]; any failure raises ImageDecodeError."""
    if not data:
        raise ImageDecodeError("empty file")
    data = bytes(data)
    kind = _sniff_format(data)
    # Recording (not printing) warnings keeps Pillow's per-file chatter ("Corrupt EXIF data",
    # palette transparency notes) out of batch logs; the bomb warning is checked afterwards.
    # Note: catch_warnings swaps process-wide state, so concurrent threads may see each other's
    # filters; the worst case is a lost or extra warning, never a wrong decode.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(_too_large_reason(str(exc), limits)) from None
        except UnidentifiedImageError as exc:
            raise ImageDecodeError(_open_failure_reason(data, kind)) from exc
        except Exception as exc:  # plugins raise OSError, SyntaxError, struct.error, ...
            raise ImageDecodeError(_failure_reason(exc, kind, data)) from exc
        with img:
            decoded = _decode_opened(img, data, kind, limits)
    for warning in caught:
        if issubclass(warning.category, Image.DecompressionBombWarning):
            pixels = _pixels_in_message(str(warning.message))
            if pixels is None or pixels > limits.max_pixels:
                raise ImageTooLargeError(_too_large_reason(str(warning.message), limits))
    return decoded


def _decode_opened(img: Image.Image, data: bytes, kind: str | None, limits: DecodeLimits) -> DecodedImage:
    fmt = _FORMAT_ALIASES.get(img.format or "", img.format or kind or "UNKNOWN")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"zero-size image ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(_too_large_message(width * height, limits.max_pixels))
    mode = img.mode
    try:
        # Strict: ImageFile.LOAD_TRUNCATED_IMAGES stays off, so missing data raises here instead
        # of coming back as a grey-filled picture.
        img.load()
        # Read after load (a PNG may put its eXIf chunk after the pixel data, where Pillow only finds
        # it while loading) and before exif_transpose, which strips the orientation tag from the
        # image's own copy.
        exif = img.info.get("exif") or None
        icc = img.info.get("icc_profile") or None
        dpi = _dpi(img.info.get("dpi"))
        ImageOps.exif_transpose(img, in_place=True)
        rgb, alpha, bit_depth = _to_float(img)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(_failure_reason(exc, fmt, data)) from exc
    return DecodedImage(
        rgb=rgb,
        alpha=alpha,
        mode=mode,
        format=fmt,
        bit_depth=bit_depth,
        exif=bytes(exif) if exif else None,
        icc_profile=bytes(icc) if icc else None,
        dpi=dpi,
    )


def _dpi(value) -> tuple[float, float] | None:
    """The resolution a file declares, as two positive numbers, or None."""
    try:
        x, y = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None


def _to_float(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Pixels of a loaded image as (rgb float32 HxWx3, alpha float32 HxW or None, bit depth)."""
    mode = img.mode
    has_key = "transparency" in img.info
    if mode.startswith("I;16"):
        return _gray_to_rgb(_scaled(np.asarray(img), 65535.0)), None, 16
    if mode == "I":
        # 32-bit integer images in the wild (TIFF, old Pillow 16-bit PNGs) hold 16-bit data.
        return _gray_to_rgb(_scaled(np.asarray(img), 65535.0)), None, 16
    if mode == "F":
        return _gray_to_rgb(_float_plane(np.asarray(img))), None, 16
    if mode == "1":
        return _gray_to_rgb(np.asarray(img).astype(np.float32)), None, 8
    if mode == "L" and not has_key:
        return _gray_to_rgb(_scaled(np.asarray(img), 255.0)), None, 8
    if mode in ("LA", "La") or (mode == "L" and has_key):
        arr = np.asarray(img.convert("LA"))
        return _gray_to_rgb(_scaled(arr[..., 0], 255.0)), _scaled(arr[..., 1], 255.0), 8
    if mode == "RGB" and not has_key:
        return _scaled(np.asarray(img), 255.0), None, 8
    if mode == "RGBA" or mode in ("PA", "RGBa") or (mode in ("P", "RGB") and has_key):
        arr = np.asarray(img.convert("RGBA"))
        return _scaled(arr[..., :3], 255.0), _scaled(arr[..., 3], 255.0), 8
    try:
        # P, CMYK, YCbCr, RGBX, LAB, HSV, ...: Pillow's own conversion is the reference.
        rgb = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"unsupported mode {mode!r}: {exc}") from exc
    return _scaled(np.asarray(rgb), 255.0), None, 8


def _scaled(arr: np.ndarray, full_scale: float) -> np.ndarray:
    # one pass, into a private, writable array (not Pillow's buffer); the same values as a cast then a
    # multiply. An unsigned integer plane whose largest value is the full scale cannot leave [0, 1]
    # (255 * float32(1/255) rounds to 1.0 exactly, and so for 16 bits): no clip for those
    out = np.multiply(arr, np.float32(1.0 / full_scale), dtype=np.float32)
    if not (arr.dtype.kind == "u" and np.iinfo(arr.dtype).max == full_scale):
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _float_plane(arr: np.ndarray) -> np.ndarray:
    """Float images carry no declared range: assume [0,1], else the integer range they fit."""
    out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    peak = float(out.max()) if out.size else 0.0
    # Processed [0,1] data overshoots 1.0 a little (resampling, sharpening): that is clipped, not
    # taken for integer-range data, which would turn the photo black. Beyond 2 it is integer-range.
    if peak > 2.0:
        out *= np.float32(1.0 / (255.0 if peak <= 255.0 else 65535.0 if peak <= 65535.0 else peak))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    # A real array, not a broadcast view: callers may write into rgb in place.
    out = np.empty(gray.shape + (3,), dtype=np.float32)
    out[...] = gray[..., None]
    return out


# --------------------------------------------------------------------------- failure reasons


def _sniff_format(data: bytes) -> str | None:
    """Format by magic number, so broken files get a named reason even when Pillow gives up."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _header_size(data: bytes, kind: str | None) -> tuple[int, int] | None:
    if kind == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if kind == "GIF" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


def _looks_truncated(data: bytes, kind: str | None) -> bool:
    if kind == "PNG":
        return b"IEND" not in data
    if kind == "JPEG":
        return b"\xff\xd9" not in data
    if kind == "GIF":
        return not data.rstrip(b"\x00").endswith(b";")
    if kind == "WEBP" and len(data) >= 8:
        return len(data) < struct.unpack("<I", data[4:8])[0] + 8
    return False


def _open_failure_reason(data: bytes, kind: str | None) -> str:
    if kind is None:
        return "not an image (text/unknown format)"
    size = _header_size(data, kind)
    if size is not None and 0 in size:
        return f"zero-size image ({size[0]}x{size[1]})"
    if _looks_truncated(data, kind):
        return f"truncated {kind}"
    return f"corrupt {kind} (unreadable header)"


def _failure_reason(exc: BaseException, kind: str | None, data: bytes) -> str:
    name = kind or "image"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or "truncated" in text.lower() or _looks_truncated(data, kind):
        return f"truncated {name}"
    if isinstance(exc, MemoryError):
        return f"out of memory decoding {name}"
    return f"corrupt {name}: {text[:200]}"


_PIXELS_RE = re.compile(r"\((\d+) pixels\)")


def _pixels_in_message(message: str) -> int | None:
    match = _PIXELS_RE.search(message)
    return int(match.group(1)) if match else None


def _too_large_message(pixels: int, limit: int) -> str:
    return f"image too large: {pixels} pixels > limit {limit} (raise --max-pixels)"


def _too_large_reason(pil_message: str, limits: DecodeLimits) -> str:
    pixels = _pixels_in_message(pil_message)
    if pixels is None:
        return f"image too large: {pil_message}"
    if pixels > limits.max_pixels:
        return _too_large_message(pixels, limits.max_pixels)
    hard = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return f"image too large: {pixels} pixels > Pillow's hard limit {hard}"


# --------------------------------------------------------------------------- encoding


def encode_image(
    rgb: np.ndarray, like: DecodedImage, fmt: str | None = None, options: EncodeOptions = EncodeOptions()
) -> bytes:
    """Encode enhanced float RGB (HxWx3 in [0,1]) the way ``like`` was stored; see module doc."""
    fmt = _writable_format(fmt or like.format)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise ValueError(f"expected an HxWx3 image, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    mode, alpha = _output_mode(like, fmt)
    rows = _pixel_rows(rgb, mode, alpha)
    if fmt == "PNG" and options.png_compression <= 1:  # the fast writer: llie.batch.png
        meta = PngMetadata(
            icc_profile=like.icc_profile if like.icc_profile and _icc_fits(like.icc_profile, mode) else None,
            exif=_reset_orientation(like.exif) if like.exif else None,
            dpi=like.dpi,
        )
        return encode_png(rows, (width, height), mode, options.png_compression, meta)
    image = Image.fromarray(rows(0, height))

    save: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        save["quality"] = options.jpeg_quality
    if fmt == "PNG":
        save["compress_level"] = options.png_compression
    if fmt == "TIFF":
        save["compression"] = "tiff_deflate"  # lossless, and an uncompressed 24 MP TIFF is 72 MB
    if like.exif and fmt in _EXIF_FORMATS:
        save["exif"] = _with_exif_header(_reset_orientation(like.exif))
    if like.dpi and fmt in _DPI_FORMATS:
        save["dpi"] = like.dpi
    if like.icc_profile and fmt in _ICC_FORMATS and _icc_fits(like.icc_profile, mode):
        save["icc_profile"] = like.icc_profile
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def _writable_format(fmt: str) -> str:
    name = fmt.upper().lstrip(".")
    name = _FORMAT_ALIASES.get(name, name)
    if name not in _FORMAT_MODES:
        raise ValueError(f"cannot write format {fmt!r}; supported: {sorted(_FORMAT_MODES)}")
    return name


def as_stored(rgb: np.ndarray, like: DecodedImage, fmt: str | None = None) -> np.ndarray:
    """The pixels :func:`encode_image` writes for ``rgb``, as float RGB in [0, 1]: rounded to the
    output's levels (8 or 16 bits), grey outputs as their grey; what a reader of the file gets,
    before any lossy compression."""
    mode, _ = _output_mode(like, _writable_format(fmt or like.format))
    colour = {"RGBA": "RGB", "LA": "L"}.get(mode, mode)  # the alpha band is not scored
    codes = _pixel_rows(np.asarray(rgb), colour, None)(0, rgb.shape[0])
    pixels = _scaled(codes, 65535.0 if colour == "I;16" else 255.0)  # as decode_image reads the file back
    return pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)


def _output_mode(like: DecodedImage, fmt: str) -> tuple[str, np.ndarray | None]:
    """(Pillow mode, alpha to write or None) of the output of an image stored as ``like``, in ``fmt``."""
    gray = like.mode in _GRAY_MODES or like.mode.startswith("I;16")
    sixteen = gray and like.bit_depth == 16
    alpha = like.alpha if like.alpha is not None and not sixteen else None
    wanted = (
        ("I;16" if sixteen else "LA" if alpha is not None else "L")
        if gray
        else ("RGBA" if alpha is not None else "RGB")
    )
    mode = _fit_mode(wanted, fmt)
    return mode, alpha if mode in ("RGBA", "LA") else None


def _fit_mode(mode: str, fmt: str) -> str:
    """Step ``mode`` down until ``fmt`` can hold it: 16-bit -> 8-bit, gray -> RGB, alpha dropped."""
    allowed = _FORMAT_MODES[fmt]
    fallbacks = {"I;16": ["L", "RGB"], "LA": ["RGBA", "L", "RGB"], "L": ["RGB"], "RGBA": ["RGB"]}
    for candidate in [mode, *fallbacks.get(mode, [])]:
        if candidate in allowed:
            return candidate
    return "RGB"


def _pixel_rows(rgb: np.ndarray, mode: str, alpha: np.ndarray | None):
    """``rows(top, bottom)``: those rows of the output's pixels in ``mode``, as Pillow's array for it.
    RGB(A) rows are converted when asked for (the PNG writer asks band by band, no full-size float
    copy); the grey modes, rare, are converted whole first."""
    height, width = rgb.shape[:2]
    if mode == "RGB":
        return lambda top, bottom: _rgb_codes(rgb[top:bottom])
    if mode == "RGBA":
        codes = _quantize(_fit_alpha(alpha, width, height), 255, np.uint8)
        return lambda top, bottom: np.dstack([_rgb_codes(rgb[top:bottom]), codes[top:bottom]])
    # Same Rec.601 weights Pillow uses for RGB -> L.
    luma = _clipped(rgb) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if mode == "I;16":
        arr = _quantize(luma, 65535, np.uint16)
    elif mode == "L":
        arr = _quantize(luma, 255, np.uint8)
    else:  # LA
        arr = np.stack([_quantize(p, 255, np.uint8) for p in (luma, _fit_alpha(alpha, width, height))], axis=-1)
    return lambda top, bottom: arr[top:bottom]


def _fit_alpha(alpha: np.ndarray | None, width: int, height: int) -> np.ndarray:
    if alpha is None:
        return np.ones((height, width), dtype=np.float32)
    alpha = np.asarray(alpha, dtype=np.float32)
    if alpha.shape != (height, width):
        # The enhancer may have resized the picture; follow it rather than refuse to save.
        resized = Image.fromarray(alpha).resize((width, height), Image.Resampling.BILINEAR)
        alpha = np.asarray(resized, dtype=np.float32)
    return np.clip(alpha, 0.0, 1.0)


def _clipped(rgb: np.ndarray) -> np.ndarray:
    """A float32 copy in [0, 1]: infinities clipped, NaN -> 0."""
    out = np.clip(rgb.astype(np.float32, copy=False), 0.0, 1.0)
    np.nan_to_num(out, copy=False, nan=0.0)
    return out


def _rgb_codes(rgb: np.ndarray, band_rows: int = 64) -> np.ndarray:
    """HxWx3 uint8 levels of float RGB, as ``_quantize`` of ``_clipped``, a band of rows at a time: no
    full-size float copy (288 MB on a 24 MP photo), and every pass runs in cache."""
    codes = np.empty(rgb.shape, np.uint8)
    for top in range(0, rgb.shape[0], band_rows):
        band = _clipped(rgb[top : top + band_rows])
        band *= np.float32(255)
        codes[top : top + band_rows] = np.rint(band, out=band)
    return codes


def _quantize(plane: np.ndarray, full_scale: int, dtype: type) -> np.ndarray:
    # rint, not truncation: truncation darkens every pixel by half a step on average.
    return np.rint(plane * np.float32(full_scale)).astype(dtype)


def _with_exif_header(exif: bytes) -> bytes:
    # JPEG needs the APP1 "Exif\0\0" header; Pillow strips it itself for PNG and WebP.
    return exif if exif.startswith(_EXIF_HEADER) else _EXIF_HEADER + exif


def _reset_orientation(exif: bytes) -> bytes:
    """EXIF with the IFD0 Orientation value patched to 1 in place.

    Patching the bytes (rather than re-serialising through Pillow) keeps every other tag, maker
    notes and offsets included, exactly as the camera wrote them. Unparseable EXIF comes back as is.
    """
    start = len(_EXIF_HEADER) if exif.startswith(_EXIF_HEADER) else 0
    tiff = bytearray(exif[start:])
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(tiff[:2])]
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, typ, n = struct.unpack(order + "HHI", tiff[entry : entry + 8])
            # stored inline as SHORT (the standard), or LONG / SLONG, which some writers use and
            # Pillow's exif_transpose honours as well
            value = {3: "H", 4: "I", 9: "i"}.get(typ)
            if tag == _ORIENTATION_TAG and value and 1 <= n * struct.calcsize(value) <= 4:
                tiff[entry + 8 : entry + 8 + struct.calcsize(value)] = struct.pack(order + value, 1)
                return exif[:start] + bytes(tiff)
    except (KeyError, struct.error):
        pass
    return exif


def _icc_fits(profile: bytes, mode: str) -> bool:
    """Whether the profile's colour space (header bytes 16..20) describes pixels of ``mode``."""
    space = profile[16:20]
    if mode in ("L", "LA", "I;16"):
        return space == b"GRAY"
    return space == b"RGB "
