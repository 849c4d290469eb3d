"""A photo as its distinct 8-bit colours, to score many stage-3 maps of it exactly and fast.

Stage 3 maps a pixel by its colour and the photo's totals alone (``match_to_quantiles`` with ``counts``),
so the squared error of a map against a target sums over the distinct colours: for colour u held by
n_u pixels whose targets sum to S_u, ``sum |out - t|^2 = sum_u n_u |out_u|^2 - 2 out_u . S_u + sum t^2``.
A dark shot has ten to thirty times fewer distinct colours than pixels (``llie calibrate`` scores 200
maps of each pair).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llie.method.mapping import to_levels


@dataclass(frozen=True)
class Palette:
    """A photo's distinct colours, how many pixels hold each, and which each pixel holds."""

    colours: np.ndarray  # (1, n, 3) float32: each distinct 8-bit colour, as an image of one row
    counts: np.ndarray  # (1, n) float64: how many pixels hold it
    inverse: np.ndarray  # (pixels,) each pixel's colour

    @property
    def pixels(self) -> int:
        return len(self.inverse)


@dataclass(frozen=True)
class TargetTerms:
    """What the squared error against one target needs from it: per colour, its pixels' target sums."""

    sums: np.ndarray  # (n, 3) float64
    squares: float  # the sum of every target value squared


def palette_of(rgb: np.ndarray) -> Palette:
    """The distinct 8-bit colours of an HxWx3 float photo (values rounded to the 8-bit grid, as stage 3 reads them)."""
    codes = to_levels(rgb, 256).reshape(-1, 3).astype(np.int32)
    keys = (codes[:, 0] << 16) | (codes[:, 1] << 8) | codes[:, 2]
    distinct, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    colours = np.stack([distinct >> 16, (distinct >> 8) & 255, distinct & 255], axis=-1)
    return Palette((colours / np.float32(255)).astype(np.float32)[None], counts[None].astype(np.float64), inverse)


def target_terms(palette: Palette, target: np.ndarray) -> TargetTerms:
    """``target`` (HxWx3, the photo's shape) summed per colour of ``palette``."""
    flat = np.asarray(target, np.float64).reshape(-1, 3)
    if len(flat) != palette.pixels:
        raise ValueError(f"the target has {len(flat)} pixels, the photo {palette.pixels}")
    n = palette.colours.shape[1]
    sums = np.stack([np.bincount(palette.inverse, flat[:, c], minlength=n) for c in range(3)], axis=-1)
    return TargetTerms(sums, float(np.vdot(flat, flat)))


def palette_psnr(palette: Palette, out: np.ndarray, terms: TargetTerms) -> float:
    """PSNR (data range 1) of the photo whose colours map to ``out`` (1, n, 3) against the target of ``terms``."""
    out = np.asarray(out, np.float64).reshape(-1, 3)
    squared = float(palette.counts[0] @ (out * out).sum(axis=1)) - 2.0 * float(np.vdot(out, terms.sums)) + terms.squares
    mse = max(squared, 0.0) / (3 * palette.pixels)
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)
