"""Between stages 3 and 4: a learned, smooth local gain (an illumination map).

Stage 3 maps every pixel of a channel through one curve, so a shadow and a highlight of the same level
come out alike wherever they sit. A small convolutional net looks at the stage-3 output shrunk to
``grid`` pixels on its long side and returns a gain per pixel of that grid; the gains are scaled so the
photo's mean luma stays where stage 2 put it (global exposure is stage 2's job), then upsampled
bilinearly to the photo and applied to all three channels, which keeps every hue. The net sees the
photo at one fixed small size, so its map does not depend on the photo's size or on how fine its noise is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llie.method.working_size import area_downscale

LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class IlluminationConfig:
    grid: int = 32  # long side, in pixels, of the copy the map is computed on
    width: int = 16  # channels at the grid's resolution (twice that at a quarter of it)
    max_log_gain: float = 2.0  # bound on the net's log gain before the mean is restored

    def __post_init__(self) -> None:
        if self.grid < 4 or self.width < 1 or self.max_log_gain <= 0:
            raise ValueError(f"illumination settings out of range: {self}")


def _conv(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.GELU())


class IlluminationNet(nn.Module):
    """(B, 3, h, w) stage-3 output at grid size -> (B, 1, h, w) gains that keep each image's mean luma."""

    def __init__(self, cfg: IlluminationConfig = IlluminationConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.encode = nn.Sequential(_conv(4, w), _conv(w, w))
        pool = nn.AvgPool2d(2, ceil_mode=True)  # a grid side of any length, odd included
        self.coarse = nn.Sequential(pool, _conv(w, 2 * w), pool, _conv(2 * w, 2 * w), _conv(2 * w, 2 * w))
        self.context = nn.Linear(2 * w, 2 * w)  # the whole image's summary, added everywhere
        self.decode = _conv(3 * w, w)
        self.head = nn.Conv2d(w, 1, 3, padding=1)
        for p in self.head.parameters():  # starts as no change at all
            nn.init.zeros_(p)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        luma = LUMA[0] * rgb[:, 0:1] + LUMA[1] * rgb[:, 1:2] + LUMA[2] * rgb[:, 2:3]
        mean = luma.mean((2, 3), keepdim=True)
        relative = torch.log((luma + 1e-3) / (mean + 1e-3))
        fine = self.encode(torch.cat([rgb, relative], 1))
        coarse = self.coarse(fine)
        coarse = coarse + self.context(coarse.mean((2, 3)))[..., None, None]
        coarse = F.interpolate(coarse, size=fine.shape[2:], mode="bilinear", align_corners=False)
        log_gain = self.head(self.decode(torch.cat([fine, coarse], 1)))
        gain = torch.exp(log_gain.clamp(-self.cfg.max_log_gain, self.cfg.max_log_gain))
        return gain * (mean + 1e-6) / ((luma * gain).mean((2, 3), keepdim=True) + 1e-6)


def grid_shape(height: int, width: int, grid: int) -> tuple[int, int]:
    """(h, w) of the copy the map is computed on: the long side at ``grid``, the aspect ratio kept."""
    scale = grid / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def gain_map(net: IlluminationNet, rgb: np.ndarray) -> np.ndarray:
    """HxW float32 gains for an HxWx3 stage-3 output in [0, 1]."""
    height, width = rgb.shape[:2]
    small = area_downscale(rgb, grid_shape(height, width, net.cfg.grid))
    with torch.inference_mode():
        gains = net(torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)[None].float())
        full = F.interpolate(gains, size=(height, width), mode="bilinear", align_corners=False)
    return full[0, 0].numpy()


def relight(net: IlluminationNet, rgb: np.ndarray) -> np.ndarray:
    """The stage-3 output with the net's smooth local gain applied to all three channels, in [0, 1]."""
    out = rgb * gain_map(net, rgb)[..., None]
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)
