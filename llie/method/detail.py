"""How much fine detail the refined photo keeps, photo by photo (docs/method.md, "Detail").

The refiner denoises every photo about alike, while each needs more or less of it. A linear rule picks an
amount from the input's mean luma, the refined photo's coarse texture and the capture gate's share kept:
a positive amount smooths with a 3x3 binomial kernel, a negative one sharpens by the same detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llie.method.mapping import LUMA

_FLOOR = 1e-4  # log() of a black photo's luma or a flat photo's texture


@dataclass(frozen=True)
class DetailRule:
    """``amount = bias + luma * log(input mean luma) + texture * log(coarse_texture) + keep * share kept``,
    clipped to [lowest, highest]."""

    bias: float = 0.0
    luma: float = 0.0
    texture: float = 0.0
    keep: float = 0.0
    lowest: float = -1.0
    highest: float = 1.0

    def __post_init__(self) -> None:
        if not -1.0 <= self.lowest <= self.highest <= 1.0:
            raise ValueError(f"detail amounts from {self.lowest} to {self.highest} are not within -1 to 1")

    def amount(self, source_luma: float, texture: float, keep: float) -> float:
        log_luma, log_texture, share = rule_inputs(source_luma, texture, keep)
        raw = self.bias + self.luma * log_luma + self.texture * log_texture + self.keep * share
        return float(np.clip(raw, self.lowest, self.highest))


def rule_inputs(source_luma: float, texture: float, keep: float) -> list[float]:
    """What the rule weighs: log mean luma of the input, log coarse texture of the refined photo, the
    capture gate's share kept."""
    return [float(np.log(max(source_luma, _FLOOR))), float(np.log(max(texture, _FLOOR))), float(keep)]


def coarse_texture(rgb: np.ndarray) -> float:
    """Mean absolute step between neighbours of the luma averaged over 4x4 blocks: how much structure a
    photo holds above the scale of pixel noise."""
    h, w = (rgb.shape[0] // 4) * 4, (rgb.shape[1] // 4) * 4
    if h < 8 or w < 8:
        return _FLOOR
    blocks = (rgb[:h, :w] @ LUMA).reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
    return float(np.abs(np.diff(blocks, axis=0)).mean() + np.abs(np.diff(blocks, axis=1)).mean())


def binomial_blur(rgb: np.ndarray) -> np.ndarray:
    """The [1, 2, 1] / 4 kernel across rows and columns, edges mirrored (at least 2x2 pixels)."""
    rows = np.empty_like(rgb)
    np.add(rgb[:-2], rgb[2:], out=rows[1:-1])
    rows[1:-1] += 2 * rgb[1:-1]
    rows[0] = rgb[0] + rgb[1]  # the mirrored neighbour is the same pixel on both sides
    rows[-1] = rgb[-1] + rgb[-2]
    rows[[0, -1]] *= 2
    out = np.empty_like(rgb)
    np.add(rows[:, :-2], rows[:, 2:], out=out[:, 1:-1])
    out[:, 1:-1] += 2 * rows[:, 1:-1]
    out[:, 0] = 2 * (rows[:, 0] + rows[:, 1])
    out[:, -1] = 2 * (rows[:, -1] + rows[:, -2])
    out *= 1 / 16
    return out


def adjust_detail(refined: np.ndarray, amount: float) -> np.ndarray:
    """``refined - amount * (refined - blur(refined))``: smoother for a positive amount, sharper for a
    negative one; channel means are kept (to the mirrored edges)."""
    if amount == 0.0 or min(refined.shape[:2]) < 2:
        return refined
    change = binomial_blur(refined)
    change -= refined
    change *= np.float32(amount)
    change += refined
    return change
