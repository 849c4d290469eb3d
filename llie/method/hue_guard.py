"""The last colour rule: a visible hue of the photo that the enhancement turned too far is turned back."""

from __future__ import annotations

import numpy as np

from llie.method.mapping import HUE_RAMP, LUMA, channel_max, channel_min

VISIBLE_SATURATION = 0.3  # HSV saturation and value from which a pixel's hue shows
VISIBLE_VALUE = 0.08
# RGB -> the two opponent axes of mapping.hue_angle (a pixel's hue is their direction), and back at equal luma
_CHROMA = np.array([[2.0, -1.0, -1.0], [0.0, np.sqrt(3), -np.sqrt(3)]], np.float32).T
_FROM_CHROMA = np.linalg.inv(np.vstack([LUMA, _CHROMA.T]))[:, 1:].T.astype(np.float32)


def hold_visible_hues(
    source: np.ndarray, out: np.ndarray, start: float, ramp: float = HUE_RAMP, mask: np.ndarray | None = None
) -> np.ndarray:
    """``out`` with every visible hue of ``source`` (HSV saturation above 0.3, value above 0.08) that turned
    past ``start`` degrees turned back, in full from ``start + ramp``: the pixel keeps its brightness and
    chroma, and takes the hue of ``source`` around it (a 3x3 mean, edges repeated, so noise does not pick
    it; only over the pixels an HxW boolean ``mask`` marks, so that what hides under the rest cannot count)."""
    height, width = source.shape[:2]
    shown = _visibility(source).ravel()
    before, after = source.reshape(-1, 3) @ _CHROMA, out.reshape(-1, 3) @ _CHROMA
    dot = before[:, 0] * after[:, 0] + before[:, 1] * after[:, 1]
    cross = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0])
    # past `start` without an angle per pixel; arctan2 only where it is
    past = ((cross > np.float32(np.tan(np.radians(min(start, 89.0)))) * dot) | (dot <= 0)) & (shown > 0)
    where = np.flatnonzero(past)
    turn = np.degrees(np.arctan2(cross[where], dot[where]))
    weight = shown[where] * np.clip((turn - start) / ramp, 0.0, 1.0)
    where, weight = where[weight > 0], weight[weight > 0]  # usually few: the rest is left as it is
    if not len(where):
        return out
    # The direction of the 3x3 sum is the 3x3 mean's hue, so no counts are needed.
    weighted = before if mask is None else before * mask.reshape(-1, 1)
    around = _box_sum(weighted.reshape(height, width, 2)).reshape(-1, 2)[where]
    grey = np.einsum("ij,ij->i", around, around) < 1e-12  # no hue around (all grey or hidden): the pixel's own
    around[grey] = before[where[grey]]
    now = after[where]
    length = np.hypot(now[:, 0], now[:, 1]) / np.maximum(np.hypot(around[:, 0], around[:, 1]), 1e-12)
    flat = out.reshape(-1, 3)
    turned = np.clip(flat[where] + (around * length[:, None] - now) @ _FROM_CHROMA, 0.0, 1.0)
    result = out.copy()
    result.reshape(-1, 3)[where] += weight[:, None] * (turned - flat[where])
    return result


def _visibility(rgb: np.ndarray) -> np.ndarray:
    """HxW weight in [0, 1] of how visible each pixel's hue is; soft edges so that a pixel near the
    thresholds does not flip between two looks."""
    top, bottom = channel_max(rgb), channel_min(rgb)
    shown = np.clip(((top - bottom) / np.maximum(top, 1e-6) - VISIBLE_SATURATION) / 0.05 + 1.0, 0.0, 1.0)
    shown *= np.clip((top - VISIBLE_VALUE) / 0.02 + 1.0, 0.0, 1.0)
    return shown


def _box_sum(values: np.ndarray) -> np.ndarray:
    """The 3x3 sums of an HxWxC array, its edges repeated."""
    padded = np.pad(values, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = padded[:-2] + padded[1:-1] + padded[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
