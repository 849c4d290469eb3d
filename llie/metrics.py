"""Image quality metrics: full-reference (PSNR, SSIM) and no-reference statistics.

Scoring protocol: the official numbers are taken on the 8-bit image a user actually gets, i.e.
``psnr(quantize8(pred), quantize8(ref), 255)``. That equals the float metric on
``quantize8(x) / 255`` with ``data_range=1`` (both metrics are invariant to a common rescale of the
pixels and the range), so either form may be used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter

# Rec.601 luma weights, the ones Pillow and most LLIE papers use for "brightness".
_REC601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Work on ~1 MP row bands so full-resolution statistics never hold full-size temporaries.
_BAND_PIXELS = 1 << 20
_SKIMAGE_WIN = 7
_SSIM_BAND_PIXELS = 1 << 18  # SSIM holds ~12 float64 temporaries per band pixel


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_pair(pred, ref)
    # float64 per band: accurate like skimage's (which casts whole images to float64) but without
    # two full-size float64 copies of a 24 MP pair.
    squared = 0.0
    rows = _band_rows(pred)
    for top in range(0, pred.shape[0], rows):
        diff = pred[top : top + rows].astype(np.float64) - ref[top : top + rows]
        squared += float(np.vdot(diff, diff))
    mse = squared / pred.size
    if mse == 0.0:
        return math.inf
    return float(10.0 * math.log10(float(data_range) ** 2 / mse))


def ssim(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM, the same as ``skimage.metrics.structural_similarity`` (channel_axis=2 for colour).

    skimage filters whole images and keeps a dozen full-size float copies (about 1 GB on a 24 MP
    pair); here each channel is filtered in row bands with a halo of half a window, which gives the
    same SSIM map, since skimage drops that border anyway. Images smaller than skimage's 7x7
    window (which it refuses) use the largest odd window that fits; below 3 pixels SSIM is
    undefined and this raises ValueError.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_pair(pred, ref)
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected HxW or HxWxC images, got shape {pred.shape}")
    side = min(pred.shape[:2])
    win = _SKIMAGE_WIN if side >= _SKIMAGE_WIN else side - (1 - side % 2)
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {pred.shape[:2]}")
    if pred.ndim == 2:
        pred, ref = pred[..., None], ref[..., None]
    height, width, channels = pred.shape
    half = win // 2
    rows = _band_rows(pred, _SSIM_BAND_PIXELS)
    total = 0.0
    for c in range(channels):
        for top in range(half, height - half, rows):
            bottom = min(height - half, top + rows)
            x = pred[top - half : bottom + half, :, c].astype(np.float64)
            y = ref[top - half : bottom + half, :, c].astype(np.float64)
            total += float(_ssim_map(x, y, win, float(data_range))[half:-half, half : width - half].sum())
    return total / (channels * (height - 2 * half) * (width - 2 * half))


def _ssim_map(x: np.ndarray, y: np.ndarray, win: int, data_range: float) -> np.ndarray:
    return ssim_map(x, y, lambda a: uniform_filter(a, win), win, data_range)


def ssim_map(x: Any, y: Any, window_mean: Callable[[Any], Any], win: int, data_range: float = 1.0) -> Any:
    """skimage's SSIM map (Gaussian-free: uniform window, sample covariance, K1=0.01, K2=0.03), from
    ``window_mean``, the mean over each ``win`` x ``win`` window: numpy arrays or torch tensors alike."""
    cov_norm = win * win / (win * win - 1.0)
    ux, uy = window_mean(x), window_mean(y)
    vx = cov_norm * (window_mean(x * x) - ux * ux)
    vy = cov_norm * (window_mean(y * y) - uy * uy)
    vxy = cov_norm * (window_mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def quantize8(rgb: np.ndarray) -> np.ndarray:
    """Float [0,1] -> uint8 the way an encoder stores it: clip, scale, round half to even."""
    out = np.nan_to_num(np.asarray(rgb, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    out *= np.float32(255.0)
    np.rint(out, out=out)
    return out.astype(np.uint8)


@dataclass
class NoReferenceStats:
    brightness: float  # mean Rec.601 luma in [0, 1]
    contrast: float  # standard deviation of luma
    entropy: float  # Shannon entropy (bits) of the 256-bin 8-bit luma histogram
    noise: float  # noise sigma in [0, 1] units (Immerkaer 1996)
    clipped: float  # fraction of pixels whose 8-bit luma is 0, 1, 254 or 255

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{name}": float(value) for name, value in asdict(self).items()}


def no_reference_stats(rgb: np.ndarray) -> NoReferenceStats:
    """Brightness, contrast, entropy, noise and clipping of one image (HxWx3 or HxW, float [0,1]).

    Everything is accumulated over row bands of float32 luma, so a 24 MP image costs a few MB of
    temporaries on top of the input.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim not in (2, 3) or (rgb.ndim == 3 and rgb.shape[2] != 3):
        raise ValueError(f"expected an HxWx3 or HxW image, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    total = height * width
    if total == 0:
        raise ValueError("no_reference_stats of an empty image")

    hist = np.zeros(256, dtype=np.int64)
    band_counts, band_means, band_m2 = [], [], []
    laplacian_abs = 0.0
    rows = _band_rows(rgb)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        # Two extra rows let the 3x3 kernel centre on every interior row exactly once over all
        # bands: band [top, bottom) + 2 yields centres top+1 .. bottom.
        luma = _luma(rgb[top : min(height, bottom + 2)])
        own = luma[: bottom - top]

        mean = float(own.mean(dtype=np.float64))
        centred = own - np.float32(mean)
        np.square(centred, out=centred)
        band_counts.append(own.size)
        band_means.append(mean)
        band_m2.append(float(centred.sum(dtype=np.float64)))

        levels = own * np.float32(255.0)
        np.rint(levels, out=levels)
        np.clip(levels, 0, 255, out=levels)
        hist += np.bincount(levels.astype(np.uint8).ravel(), minlength=256)

        if luma.shape[0] >= 3 and width >= 3:
            laplacian_abs += abs_laplacian_sum(luma)

    counts = np.array(band_counts, dtype=np.float64)
    means = np.array(band_means)
    brightness = float(np.dot(counts, means) / total)
    # Chan et al.'s pairwise combination of per-band variances: no second pass over the image.
    m2 = float(np.sum(band_m2) + np.dot(counts, (means - brightness) ** 2))
    p = hist[hist > 0] / total
    if height >= 3 and width >= 3:
        noise = math.sqrt(math.pi / 2.0) * laplacian_abs / (6.0 * (width - 2) * (height - 2))
    else:
        noise = 0.0  # the 3x3 estimator has no interior pixel to centre on
    return NoReferenceStats(
        brightness=brightness,
        contrast=math.sqrt(max(m2, 0.0) / total),
        entropy=float(-(p * np.log2(p)).sum()) + 0.0,  # + 0.0 turns -0.0 into 0.0
        noise=float(noise),
        clipped=float(hist[[0, 1, 254, 255]].sum() / total),
    )


def abs_laplacian_sum(luma: np.ndarray) -> float:
    """Sum of |luma * N| over valid pixels, N = [[1,-2,1],[-2,4,-2],[1,-2,1]] (Immerkaer).

    N is the outer product of [1,-2,1] with itself, so two 1-D second differences compute it
    with slicing, and the kernel cancels any locally planar image content.
    """
    vertical = luma[:-2] + luma[2:]
    vertical -= 2.0 * luma[1:-1]
    both = vertical[:, :-2] + vertical[:, 2:]
    both -= 2.0 * vertical[:, 1:-1]
    np.abs(both, out=both)
    return float(both.sum(dtype=np.float64))


def _luma(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 2:
        return _as_unit_float(rgb)
    if np.issubdtype(rgb.dtype, np.integer):
        rgb = _as_unit_float(rgb)
    return np.matmul(rgb.astype(np.float32, copy=False), _REC601)


def _as_unit_float(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    return arr.astype(np.float32, copy=False)


def _band_rows(arr: np.ndarray, band_pixels: int | None = None) -> int:
    per_row = max(1, int(np.prod(arr.shape[1:2])))
    return max(1, (band_pixels or _BAND_PIXELS) // per_row)


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {ref.shape}")
    if pred.size == 0:
        raise ValueError("empty images")
