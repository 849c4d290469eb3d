"""Large photos: enhance a copy at the working size, carry the result to full size.

The model was trained on 600x400 photos; its refiner sees 10x10-pixel patches, which on a 12 MP photo
are almost flat, so refining at full size gives another look (and takes seconds per photo on a CPU). A
photo whose long side exceeds ``WorkingSize.long_side`` is therefore enhanced, all stages, on an
area-averaged copy of that long side (stored at the photo's own levels, as the photo saved at that
size would be). The result comes back to full size the way a fast guided filter does it (He & Sun,
"Fast Guided Filter", 2015): in every small window of the working copy, each channel of the result
is fitted as ``a * input + b``; ``a`` and ``b`` vary smoothly, so they are upsampled bilinearly and
applied to the full-size input. Edges and texture come from the full-size photo, tone and colour from
the model at the scale it knows, and the photo shrunk after enhancement looks like the photo enhanced
after shrinking.

Photos at or below the working size never come here (``Enhancer.enhance``). Masked-out (transparent)
pixels count in the fit like the rest: near a transparent edge their colour reaches a working pixel or
two into the visible part, where at small sizes it has no effect at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import uniform_filter

if TYPE_CHECKING:
    from llie.method.pipeline import Enhancer, EnhanceResult


@dataclass(frozen=True)
class WorkingSize:
    # the training photos' size (LOL, 600x400): the paired evaluation sets (LOL 600x400, SICE 512x512)
    # stay at or below it, so their path and scores do not change, and a large photo gets the look the
    # model gives it at the size it was trained and evaluated at (the choice: benchmarks/README.md)
    long_side: int = 600
    radius: int = 1  # half-side of the fit's window, in working-size pixels
    # variance (intensity units squared) below which a window's fit flattens towards its mean: the
    # guide is the dark input, whose windows vary by a few levels, so tiny, or the fit would blur them
    eps: float = 1e-6


def working_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) of the working copy: the long side at ``long_side``, the aspect ratio kept."""
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _bounds(size: int, parts: int) -> np.ndarray:
    """Start of each of ``parts`` near-equal runs that split ``size`` items."""
    return (np.arange(parts) * size) // parts


def _pairwise_rows(rows: np.ndarray) -> np.ndarray:
    """The sum of a stack of rows as numpy's pairwise summation adds up a contiguous run of numbers
    (eight running sums, then a tree; halves beyond 128), so the result is the bit-exact sum that
    ``np.add.reduceat`` computes along an axis, one whole row per addition."""
    n = len(rows)
    if n < 8:
        total = rows[0].copy()
        for row in rows[1:]:
            total += row
        return total
    if n <= 128:
        partial = rows[:8].copy()
        end = n - n % 8
        for start in range(8, end, 8):
            partial += rows[start : start + 8]
        total = ((partial[0] + partial[1]) + (partial[2] + partial[3])) + (
            (partial[4] + partial[5]) + (partial[6] + partial[7])
        )
        for row in rows[end:]:
            total += row
        return total
    half = n // 2 - (n // 2) % 8
    return _pairwise_rows(rows[:half]) + _pairwise_rows(rows[half:])


def area_downscale(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An HxWxC (or HxW) image averaged over the block of input pixels under each output pixel (the
    blocks split the image into near-equal runs of rows and columns), as float32. Each run of rows
    is summed first, a whole row per addition: the same sums as ``np.add.reduceat`` along the rows
    (its first row plus the pairwise sum of the others), ten times faster on a full-size photo,
    whose columns reduceat walks one at a time; then the runs of columns."""
    height, width = image.shape[:2]
    rows, cols = _bounds(height, shape[0]), _bounds(width, shape[1])
    sums = np.empty((shape[0], *image.shape[1:]), np.float32)
    for i, (top, bottom) in enumerate(zip(rows, np.append(rows[1:], height))):
        sums[i] = image[top]
        if bottom - top > 1:
            sums[i] += _pairwise_rows(image[top + 1 : bottom].astype(np.float32, copy=False))
    sums = np.add.reduceat(sums, cols, axis=1)
    counts = np.outer(np.diff(rows, append=height), np.diff(cols, append=width)).astype(np.float32)
    return sums / (counts if image.ndim == 2 else counts[..., None])


def guided_coefficients(guide: np.ndarray, target: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """HxWx6 float32: per channel the window-averaged ``a`` (channels 0-2) and ``b`` (3-5) of the
    local fit ``target ~ a * guide + b`` (the guided filter's coefficients)."""
    size = 2 * radius + 1
    mean = lambda x: uniform_filter(x, size=(size, size, 1), mode="reflect")  # noqa: E731
    guide = guide.astype(np.float64)
    target = target.astype(np.float64)
    mean_i, mean_p = mean(guide), mean(target)
    var = mean(guide * guide) - mean_i * mean_i
    cov = mean(guide * target) - mean_i * mean_p
    a = cov / (np.maximum(var, 0.0) + eps)
    b = mean_p - a * mean_i
    return np.concatenate([mean(a), mean(b)], axis=2).astype(np.float32)


def _resize_width(planes: np.ndarray, width: int) -> np.ndarray:
    """hxwxC float32 -> hx``width``xC, linear interpolation along rows with half-pixel centres
    (Pillow's bilinear filter, which is exactly that when enlarging; 3x faster than a numpy gather)."""
    from PIL import Image

    height = planes.shape[0]
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(planes[..., c])).resize((width, height), Image.Resampling.BILINEAR)
            )
            for c in range(planes.shape[2])
        ],
        axis=-1,
    )


def apply_upsampled(image: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """``a * image + b`` clipped to [0, 1], with ``a`` and ``b`` (``coefficients``, hxwx6) bilinearly
    upsampled to the image's size (half-pixel centres, as ``F.interpolate(align_corners=False)``).

    The coefficients are first widened to the image's width (h x W, small), then each run of full-size
    rows between two coefficient rows is interpolated and applied in one go: no full-size copy of the
    coefficients exists, and every temporary is a few rows."""
    height, width = image.shape[:2]
    sh = coefficients.shape[0]
    wide = _resize_width(coefficients, width)
    a, b = np.ascontiguousarray(wide[..., :3]), np.ascontiguousarray(wide[..., 3:])
    step_a, step_b = np.diff(a, axis=0, append=a[-1:]), np.diff(b, axis=0, append=b[-1:])
    # source row of every output row; above the first and below the last coefficient row: clamped
    source = np.clip((np.arange(height) + 0.5) * (sh / height) - 0.5, 0.0, sh - 1)
    lower = np.minimum(source.astype(np.int64), sh - 1)
    weight = (source - lower).astype(np.float32)[:, None, None]
    out = np.empty((height, width, 3), np.float32)
    starts = np.flatnonzero(np.diff(lower, prepend=-1))
    for top, bottom in zip(starts, np.append(starts[1:], height)):
        j, w = lower[top], weight[top:bottom]
        rows = out[top:bottom]
        np.multiply(step_a[j], w, out=rows)
        rows += a[j]
        rows *= image[top:bottom]
        rows += step_b[j] * w
        rows += b[j]
        np.clip(rows, 0.0, 1.0, out=rows)
    return out


def enhance_at_working_size(
    enhancer: Enhancer, rgb: np.ndarray, stages: str, levels: int, mask: np.ndarray | None, working: WorkingSize
) -> EnhanceResult:
    """Enhance a photo larger than the working size: all stages on its working copy (stored at the
    photo's own levels, as that photo saved at the working size would be), then the result's local
    affine fit against the copy carried to the full-size photo (module docstring)."""
    t = time.perf_counter()
    shape = working_shape(*rgb.shape[:2], working.long_side)
    small = area_downscale(rgb, shape)
    if levels <= 256:
        small = np.rint(small * np.float32(levels - 1)) / np.float32(levels - 1)
    # a working pixel counts when most of the photo's pixels under it do
    small_mask = None if mask is None else area_downscale(mask, shape) >= 0.5
    seconds = {"downscale": time.perf_counter() - t}
    result = enhancer.enhance(small, stages=stages, levels=levels, mask=small_mask)
    if result.unchanged:  # the photo as it is, not its affine fit to itself
        return replace(result, image=rgb.astype(np.float32, copy=False), seconds=seconds | result.seconds)
    t = time.perf_counter()
    coefficients = guided_coefficients(small, result.image, working.radius, working.eps)
    image = apply_upsampled(rgb, coefficients)
    seconds = {**seconds, **result.seconds, "upsample": time.perf_counter() - t}
    return replace(result, image=image, seconds=seconds)
