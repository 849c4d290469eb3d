"""Stage 3: rebuild the target histogram from predicted percentiles with a KDE, then histogram-match.

The 21 predicted percentile values are first densified by monotone (PCHIP) interpolation into points of
equal probability mass; a Gaussian KDE over those points (binned, smoothed with scipy) gives a smooth target density. With a
bandwidth near zero this reduces to plain monotone interpolation of the percentiles; a well-chosen
bandwidth smooths the steps between them. Mass that the kernel would push outside [0, 1] is reflected
back, so the histogram sums to 1 without piling up at the ends.

Matching maps each input level through a lookup table: mid-rank CDF of the input level -> inverse CDF of
the target. 8-bit images use a 256-entry table, 16-bit images a 65536-entry table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter1d

from .features import PERCENTILES


@dataclass(frozen=True)
class MappingConfig:
    method: str = "kde"  # "kde" or "interp" (monotone interpolation of the percentiles, no KDE)
    bandwidth: float = 0.01  # kernel width in intensity units ([0, 1] scale)
    grid: int = 1024  # resolution of the rebuilt target histogram
    dense_points: int = 401  # equal-mass points drawn from the percentile curve before the KDE


def inverse_cdf(quantiles: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Monotone interpolation of (percentile -> value) for one channel's 21 values."""
    values = np.maximum.accumulate(np.asarray(quantiles, np.float64))
    return PchipInterpolator(PERCENTILES / 100.0, values)(np.clip(probabilities, 0.0, 1.0))


def kde_histogram(quantiles: np.ndarray, bandwidth: float, grid: int = 1024, dense_points: int = 401) -> np.ndarray:
    """Target histogram (``grid`` bins over [0, 1], sums to 1) from one channel's percentile values.

    A Gaussian KDE evaluated on a regular grid is the points' histogram convolved with the kernel, so it
    is computed that way (scipy.ndimage, O(grid) instead of O(points x grid) for scipy.stats.gaussian_kde,
    which it matches to within the 1/1024 binning; the tests check this). ``mode="reflect"`` is the
    reflection of kernel mass at 0 and 1.
    """
    points = inverse_cdf(quantiles, (np.arange(dense_points) + 0.5) / dense_points)
    density = np.histogram(points, bins=grid, range=(0.0, 1.0))[0].astype(np.float64)
    sigma_bins = bandwidth * grid
    # a kernel narrower than one bin is the plain histogram: keeps bandwidth -> 0 continuous
    if sigma_bins >= 1:
        density = gaussian_filter1d(density, sigma_bins, mode="reflect", truncate=5.0)
    return density / density.sum()


def lut_from_target_cdf(source_hist: np.ndarray, target_edges: np.ndarray, target_cdf: np.ndarray) -> np.ndarray:
    """LUT mapping each source level to the target value at the same (mid-rank) CDF position."""
    source = source_hist / max(source_hist.sum(), 1e-12)
    mid_rank = np.cumsum(source) - 0.5 * source
    return np.interp(mid_rank, target_cdf, target_edges).astype(np.float32)


def channel_lut(source_hist: np.ndarray, quantiles: np.ndarray, config: MappingConfig) -> np.ndarray:
    """Monotone LUT (one entry per source level) mapping the source histogram onto the predicted target."""
    if config.method == "interp":
        source = source_hist / max(source_hist.sum(), 1e-12)
        mid_rank = np.cumsum(source) - 0.5 * source
        return inverse_cdf(quantiles, mid_rank).astype(np.float32)
    if config.method != "kde":
        raise ValueError(f"unknown mapping method {config.method!r}: use 'kde' or 'interp'")
    hist = kde_histogram(quantiles, config.bandwidth, config.grid, config.dense_points)
    # a tiny floor keeps the CDF strictly increasing, so the inverse is well defined in empty stretches
    hist = hist + 1e-9
    cdf = np.concatenate([[0.0], np.cumsum(hist)]) / hist.sum()
    edges = np.linspace(0.0, 1.0, config.grid + 1)
    return lut_from_target_cdf(source_hist, edges, cdf)


def to_levels(rgb: np.ndarray, levels: int) -> np.ndarray:
    dtype = np.uint8 if levels <= 256 else np.uint16
    return np.clip(np.rint(rgb * (levels - 1)), 0, levels - 1).astype(dtype)


def match_to_quantiles(rgb: np.ndarray, quantiles: np.ndarray, config: MappingConfig = MappingConfig(), levels: int = 256,
                       mask: np.ndarray | None = None) -> np.ndarray:
    """Map an HxWx3 float image so that each channel follows the histogram implied by ``quantiles`` (3, 21).

    With an HxW boolean ``mask`` the source histogram counts only those pixels (a photo's opaque ones, so
    that whatever colour hides under full transparency does not move the visible part); every pixel
    goes through the same lookup table."""
    codes = to_levels(rgb, levels)
    out = np.empty(rgb.shape, np.float32)
    for c in range(3):
        hist = np.bincount((codes[..., c] if mask is None else codes[..., c][mask]).ravel(), minlength=levels)
        lut = channel_lut(hist, quantiles[c], config)
        out[..., c] = lut[codes[..., c]]
    return out


def infer_levels(rgb: np.ndarray) -> int:
    """256 when every value sits on the 8-bit grid, else 65536 (a 16-bit source)."""
    sample = rgb.reshape(-1)[:: max(1, rgb.size // 200_000)]
    return 256 if np.allclose(sample * 255.0, np.rint(sample * 255.0), atol=1e-3) else 65536
