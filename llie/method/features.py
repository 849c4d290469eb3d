"""Stage 1: the feature vector of a low-light image, built from its per-channel histograms.

Most features derive from 256-bin histograms. A few measure noise and texture: the noise level
relative to the signal tells how far the camera had to amplify, which the histogram alone cannot, and
it raised validation PSNR after stage 3 by 0.14 dB. Everything is computed on 8-bit levels, so a 16-bit
image gives the same features as its 8-bit rendering.
"""

from __future__ import annotations

import numpy as np

from llie.method.working_size import area_downscale
from llie.metrics import abs_laplacian_sum

PERCENTILES = np.arange(0, 101, 5, dtype=np.float64)  # 0, 5, ..., 100: the 21 points stage 2 predicts
N_BINS = 256
COARSE_BINS = 32
NOISE_SAMPLE = 1024  # side of the central crop noise is measured on: bounded cost on 24 MP photos
COARSE_SAMPLE = 1024  # long side set 2's noise is measured from: bounded cost on 24 MP photos
COARSE_MIN_SIDE = 12


def channel_histograms(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(3, 256) normalised histograms of an HxWx3 float image in [0, 1], over the pixels where the HxW
    boolean ``mask`` is set (all pixels without one)."""
    h, w = rgb.shape[:2]
    counts = np.zeros((3, N_BINS), np.int64)
    rows = max(1, (1 << 20) // max(w, 1))  # ~1 MP bands: small temporaries on a 24 MP photo
    for top in range(0, h, rows):
        levels = np.rint(rgb[top : top + rows] * np.float32(N_BINS - 1))
        np.clip(levels, 0, N_BINS - 1, out=levels)
        levels = levels.astype(np.uint8)
        for c in range(3):
            values = levels[..., c] if mask is None else levels[..., c][mask[top : top + rows]]
            counts[c] += np.bincount(values.ravel(), minlength=N_BINS)
    return counts / max(int(counts[0].sum()), 1)


def histogram_percentiles(hist: np.ndarray, percentiles: np.ndarray = PERCENTILES) -> np.ndarray:
    """Percentile values (in [0, 1]) of each row of a (C, 256) histogram.

    Each bin's mass is spread uniformly over the bin's width, so the result varies smoothly with the
    image and does not stick to the 256 level values.
    """
    cdf = np.cumsum(hist, axis=1)
    cdf /= np.maximum(cdf[:, -1:], 1e-12)
    edges = (np.arange(N_BINS + 1) - 0.5) / (N_BINS - 1)
    p = np.asarray(percentiles, np.float64) / 100.0
    out = np.empty((hist.shape[0], len(p)))
    for c in range(hist.shape[0]):
        cdf_edges = np.concatenate([[0.0], cdf[c]])
        # first edge where the CDF reaches p (for p=0: first edge past an empty prefix), so empty bins
        # at either end never stretch the range
        i = np.where(p <= 0, np.searchsorted(cdf_edges, p, "right"), np.searchsorted(cdf_edges, p, "left"))
        i = np.clip(i, 1, N_BINS)
        lo, hi = cdf_edges[i - 1], cdf_edges[i]
        frac = np.where(hi > lo, (p - lo) / np.maximum(hi - lo, 1e-12), 0.0)
        out[c] = edges[i - 1] + np.clip(frac, 0, 1) * (edges[i] - edges[i - 1])
    return np.clip(out, 0.0, 1.0)


def features_from_histograms(hist: np.ndarray) -> np.ndarray:
    """Feature vector from (3, 256) histograms: what the quantile model sees."""
    coarse = hist.reshape(3, COARSE_BINS, -1).sum(axis=2)
    # dark images keep almost all mass in the first bins: a log-spaced view resolves them
    log_edges = np.unique(np.round(np.geomspace(1, N_BINS, 17)).astype(int)) - 1
    log_hist = np.add.reduceat(hist, log_edges, axis=1)
    cumulative = np.cumsum(coarse, axis=1)
    pct = histogram_percentiles(hist)
    centres = np.arange(N_BINS) / (N_BINS - 1)
    mean = hist @ centres
    std = np.sqrt(np.maximum(hist @ centres**2 - mean**2, 0.0))
    luma_pct = 0.299 * pct[0] + 0.587 * pct[1] + 0.114 * pct[2]
    # colour balance: channel means relative to the grey mean, a cue for the cast to undo
    balance = mean / max(mean.mean(), 1e-6)
    # saturation proxy from the spread between channels at matching percentiles
    chroma = pct.max(axis=0) - pct.min(axis=0)
    return np.concatenate(
        [
            coarse.ravel(),
            log_hist.ravel(),
            cumulative.ravel(),
            pct.ravel(),
            np.log(pct.ravel() + 1.0 / 255),
            mean,
            std,
            balance,
            luma_pct,
            chroma,
        ]
    ).astype(np.float32)


def channel_means_sequential(rgb: np.ndarray) -> np.ndarray:
    """``rgb.reshape(-1, 3).mean(axis=0)`` of float32 values, bit for bit: numpy sums over the first
    axis one row after the other, as a cumulative sum does, which runs four times faster than the
    reduction over rows of three."""
    rows = rgb.reshape(-1, 3)
    # divided as np.mean divides: by an intp count, in float64, then stored as float32
    return (np.cumsum(rows, axis=0)[-1] / np.intp(len(rows))).astype(np.float32)


def noise_features(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-channel noise (Immerkaer), its ratio to the signal, and texture (mean gradient), as logs;
    with an HxW boolean ``mask``, measured where the mask is set only."""
    h, w = rgb.shape[:2]
    top, left = max(0, (h - NOISE_SAMPLE) // 2), max(0, (w - NOISE_SAMPLE) // 2)
    crop = rgb[top : top + NOISE_SAMPLE, left : left + NOISE_SAMPLE]
    levels = np.clip(np.rint(crop * 255.0), 0, 255).astype(np.float32) / 255.0
    if mask is not None:
        sigma, means, gradient = _masked_noise(levels, mask[top : top + NOISE_SAMPLE, left : left + NOISE_SAMPLE])
    else:
        means = channel_means_sequential(levels) + 1.0 / 255
        ch, cw = levels.shape[:2]
        sigma = np.zeros(3)
        if ch >= 3 and cw >= 3:
            for c in range(3):
                sigma[c] = np.sqrt(np.pi / 2) * abs_laplacian_sum(levels[..., c]) / (6.0 * (ch - 2) * (cw - 2))
        # subsampled, so the gradient sees structure more than noise; the channels' mean taken after
        # subsampling and as a sum over three (``mean(axis=2)`` per pixel, 30x faster)
        sub = levels[::2, ::2]
        grey = (sub[..., 0] + sub[..., 1] + sub[..., 2]) / np.float32(3)
        gradient = 0.0
        if grey.shape[0] >= 2:
            gradient += float(np.abs(np.diff(grey, axis=0)).mean())
        if grey.shape[1] >= 2:
            gradient += float(np.abs(np.diff(grey, axis=1)).mean())
    return np.concatenate(
        [
            sigma,
            np.log(sigma + 1e-4),
            np.log((sigma + 1e-4) / means),
            [np.log(gradient + 1e-4), np.log((gradient + 1e-4) / means.mean())],
        ]
    ).astype(np.float32)


def _masked_noise(levels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """noise_features' measurements over the masked pixels: the Laplacian only where its whole 3x3
    window is inside the mask, gradients only between two masked pixels, so the colour under the
    rest cannot leak in."""
    means = (levels[mask].mean(axis=0) if mask.any() else np.zeros(3)) + 1.0 / 255
    sigma = np.zeros(3)
    if min(mask.shape) >= 3:
        inside = np.ones((mask.shape[0] - 2, mask.shape[1] - 2), bool)
        for dy in range(3):
            for dx in range(3):
                inside &= mask[dy : dy + inside.shape[0], dx : dx + inside.shape[1]]
        if inside.any():
            for c in range(3):
                plane = levels[..., c]
                vertical = plane[:-2] + plane[2:] - 2.0 * plane[1:-1]
                laplacian = np.abs(vertical[:, :-2] + vertical[:, 2:] - 2.0 * vertical[:, 1:-1])
                sigma[c] = np.sqrt(np.pi / 2) * laplacian[inside].sum(dtype=np.float64) / (6.0 * inside.sum())
    grey, sub = levels.mean(axis=2)[::2, ::2], mask[::2, ::2]
    gradient = 0.0
    for axis in (0, 1):
        if grey.shape[axis] >= 2:
            both = np.diff(sub.astype(np.int8), axis=axis) == 0
            both &= sub[1:] if axis == 0 else sub[:, 1:]
            if both.any():
                gradient += float(np.abs(np.diff(grey, axis=axis))[both].mean())
    return sigma, means, gradient


FEATURE_SETS = (1, 2)


def _halved(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return area_downscale(image, (max(3, h // 2), max(3, w // 2)))


def coarse_noise_features(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-channel noise (Immerkaer) and mean gradient on copies averaged 2x and 4x, as logs, also relative
    to the signal. A resized or smoothed copy of a photo measures nearly as the photo does there, where
    pixel-level noise changes with every resampling. Pixels outside ``mask`` take the mean colour of those
    inside, so what hides there cannot count."""
    rgb = np.rint(np.clip(rgb, 0.0, 1.0) * np.float32(255)) / np.float32(255)  # 8-bit levels, as the rest
    if mask is not None:
        rgb = np.where(mask[..., None], rgb, rgb[mask].mean(axis=0) if mask.any() else np.float32(0))
    if min(rgb.shape[:2]) < COARSE_MIN_SIDE:  # tiny photos: edge-padded so every copy keeps a 3x3
        pad = [(0, max(0, COARSE_MIN_SIDE - rgb.shape[0])), (0, max(0, COARSE_MIN_SIDE - rgb.shape[1])), (0, 0)]
        rgb = np.pad(rgb, pad, mode="edge")
    if max(rgb.shape[:2]) > COARSE_SAMPLE:
        scale = COARSE_SAMPLE / max(rgb.shape[:2])
        rgb = area_downscale(rgb, (max(3, round(rgb.shape[0] * scale)), max(3, round(rgb.shape[1] * scale))))
    half = _halved(rgb)
    means = half.reshape(-1, 3).mean(axis=0) + np.float32(1.0 / 255)
    out: list[float] = []
    for small in (half, _halved(half)):
        h, w = small.shape[:2]
        sigma = (
            np.array([abs_laplacian_sum(small[..., c]) for c in range(3)])
            * np.sqrt(np.pi / 2)
            / (6.0 * (h - 2) * (w - 2))
        )
        grey = small @ np.array([0.299, 0.587, 0.114], np.float32)
        gradient = float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())
        out += [*np.log(sigma + 1e-4), *np.log((sigma + 1e-4) / means)]
        out += [np.log(gradient + 1e-4), np.log((gradient + 1e-4) / means.mean())]
    return np.asarray(out, np.float32)


def extract_features(rgb: np.ndarray, mask: np.ndarray | None = None, feature_set: int = 1) -> np.ndarray:
    """Feature vector of an HxWx3 float image in [0, 1]. With an HxW boolean ``mask`` (a photo's opaque
    pixels) the histograms, noise and texture count only those. Set 1 measures noise pixel by pixel, set 2
    on coarser copies (``coarse_noise_features``), so a photo's size does not move its exposure."""
    histograms = features_from_histograms(channel_histograms(rgb, mask))
    if feature_set == 1:
        return np.concatenate([histograms, noise_features(rgb, mask)])
    if feature_set == 2:
        return np.concatenate([histograms, coarse_noise_features(rgb, mask)])
    raise ValueError(f"unknown feature set {feature_set!r}: expected one of {FEATURE_SETS}")


def feature_size(feature_set: int = 1) -> int:
    return int(extract_features(np.zeros((8, 8, 3), np.float32), feature_set=feature_set).shape[0])
