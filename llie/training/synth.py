"""Synthetic low-light training pairs from well-lit images.

The degradation follows a camera, not a curve: undo the sRGB tone curve, cut the exposure in
linear light with a slight per-channel colour cast, add signal-dependent sensor noise there
(Poisson-Gaussian, approximated by a heteroscedastic Gaussian), re-apply the tone curve with some
jitter, and store 8 bits. Noise added after gamma would be far too weak in the shadows.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm import tqdm

from llie import atomic
from llie.batch.imageio import ImageDecodeError, decode_file, is_image_name
from llie.batch.storage import check_output_not_inside_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthConfig:
    exposure: tuple[float, float] = (0.05, 0.25)  # linear-light gain range (after undoing sRGB gamma)
    gamma: tuple[float, float] = (0.9, 1.15)  # extra tone curve exponent jitter
    shot_noise: tuple[float, float] = (0.002, 0.02)  # Poisson-Gaussian: variance = a*x + b
    read_noise: tuple[float, float] = (0.002, 0.02)  # std; b = read_noise**2
    color_shift: float = 0.08  # per-channel gain jitter (colour cast)
    quantize: bool = True  # the result is what an 8-bit camera would store


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB decoding; float32 in, float32 out."""
    x = np.asarray(x, dtype=np.float32)
    curve = ((x + np.float32(0.055)) / np.float32(1.055)) ** np.float32(2.4)
    return np.where(x <= 0.04045, x / np.float32(12.92), curve)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB encoding; float32 in, float32 out. Expects x >= 0."""
    x = np.asarray(x, dtype=np.float32)
    curve = np.float32(1.055) * x ** np.float32(1 / 2.4) - np.float32(0.055)
    return np.where(x <= 0.0031308, x * np.float32(12.92), curve)


def darken(rgb: np.ndarray, rng: np.random.Generator, config: SynthConfig = SynthConfig()) -> np.ndarray:
    """A low-light, noisy version of a well-lit float [0,1] HxWx3 image (float32 HxWx3 in [0,1]).

    Deterministic given ``rng``'s state. All random parameters are drawn before the noise field,
    so the per-image settings do not depend on the image size.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {rgb.shape}")
    gain = rng.uniform(*config.exposure)
    cast = 1.0 + rng.uniform(-config.color_shift, config.color_shift, size=3)
    shot = rng.uniform(*config.shot_noise)
    read = rng.uniform(*config.read_noise)
    exponent = rng.uniform(*config.gamma)

    linear = srgb_to_linear(np.clip(rgb, 0.0, 1.0))
    linear *= (gain * cast).astype(np.float32)
    np.clip(linear, 0.0, 1.0, out=linear)
    # Poisson-Gaussian sensor noise: variance grows with the signal (shot) on top of a floor (read).
    sigma = np.sqrt(np.float32(shot) * linear + np.float32(read * read))
    linear += sigma * rng.standard_normal(linear.shape, dtype=np.float32)
    np.clip(linear, 0.0, 1.0, out=linear)

    low = linear_to_srgb(linear)
    np.power(low, np.float32(exponent), out=low)
    if config.quantize:
        low *= np.float32(255.0)
        np.rint(low, out=low)
        low /= np.float32(255.0)
    return np.clip(low, 0.0, 1.0, out=low)


def make_pairs(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: SynthConfig = SynthConfig(),
    seed: int = 0,
    progress: bool = True,
) -> list[str]:
    """Write ``output_dir/low/<rel>.png`` and ``output_dir/high/<rel>.png`` for every image.

    ``<rel>`` is the image's path under ``input_dir`` with its suffix replaced by ``.png``; the
    return value lists those names, sorted. ``high`` is the input stored as 8-bit RGB (upright,
    alpha dropped) and ``low`` is :func:`darken` of exactly that stored image. Each image's noise
    is seeded from ``seed`` and its relative path only, so adding or removing files does not change
    the others. Files that fail to decode are logged and skipped.
    """
    src = Path(input_dir).resolve()
    dst = Path(output_dir).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"input folder {src} does not exist")
    try:
        # Inside the input, the next run would pick up its own output; around it (--input pairs/low
        # --output pairs) this run would write over the photos it reads.
        check_output_not_inside_input(str(src), str(dst))
    except ValueError:
        raise ValueError(f"output folder {dst} must not be the input folder {src}, inside it or contain it") from None

    jobs = _plan(src)
    written = []
    for rel, out_rel in tqdm(jobs, desc="synth pairs", unit="img", disable=not progress):
        try:
            decoded = decode_file(src / rel)
        except (ImageDecodeError, OSError) as exc:
            log.warning("skipping %s: %s", rel, exc)
            continue
        high = np.rint(np.clip(decoded.rgb, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
        rng = np.random.default_rng([int(seed), _path_key(rel)])
        low = darken(high.astype(np.float32) / np.float32(255.0), rng, config)
        low8 = np.rint(low * np.float32(255.0)).astype(np.uint8)
        _write_png(dst / "low" / out_rel, low8)
        _write_png(dst / "high" / out_rel, high)
        written.append(out_rel)
    return written


def _plan(src: Path) -> list[tuple[str, str]]:
    """(input relative path, output relative name) for each image, refusing name collisions."""
    jobs: dict[str, str] = {}
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        # Hidden folders (.git, .thumbnails, .Trash) hold copies and caches, not data.
        if any(part.startswith(".") for part in rel.parts[:-1]) or not is_image_name(rel.name):
            continue
        if not path.is_file():
            continue
        rel_posix = rel.as_posix()
        out_rel = str(PurePosixPath(rel_posix).with_suffix(".png"))
        if out_rel in jobs:
            # a.jpg and a.png would overwrite each other; picking one silently would lose data.
            raise ValueError(f"{jobs[out_rel]} and {rel_posix} would both be written as {out_rel}")
        jobs[out_rel] = rel_posix
    return [(jobs[out_rel], out_rel) for out_rel in sorted(jobs)]


def _path_key(rel: str) -> int:
    # Python's hash() is salted per process; a digest is the same on every machine and run.
    return int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "little")


def _write_png(path: Path, rgb8: np.ndarray) -> None:
    atomic.write_file(path, lambda f: Image.fromarray(rgb8).save(f, format="PNG"))
