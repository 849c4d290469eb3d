"""Synthetic data for the method tests: well-lit scenes drawn with numpy, darkened by ``llie.training.synth``.

Nothing here reads files outside the test's own temporary folders, so the suite runs on a fresh clone.
Scenes mix what real photos have and what the stages must cope with: smooth gradients (long tonal
ramps), flat shapes (histogram spikes), and textures (high-frequency detail the refiner must keep).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from llie.training.synth import SynthConfig, darken

# A narrower exposure range than the default keeps the darkening learnable from a dozen pairs.
TEST_SYNTH = SynthConfig(exposure=(0.08, 0.2))


def scene(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A well-lit picture, float32 HxWx3 on the 8-bit grid (values k/255)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = y / max(h - 1, 1), x / max(w - 1, 1)
    # gradient background with a random direction, tint and brightness
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xn + np.sin(angle) * yn + 1.5) / 3.0
    base = rng.uniform(0.25, 0.7)
    tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    img = (base + rng.uniform(0.2, 0.5) * (ramp[..., None] - 0.5)) * tint
    # shapes: discs and rectangles of random colours
    for _ in range(int(rng.integers(2, 5))):
        colour = rng.uniform(0.05, 1.0, size=3).astype(np.float32)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if rng.random() < 0.5:
            r = rng.uniform(0.1, 0.35) * min(h, w)
            mask = (y - cy) ** 2 + (x - cx) ** 2 < r * r
        else:
            hh, hw = rng.uniform(0.1, 0.4) * h, rng.uniform(0.1, 0.4) * w
            mask = (np.abs(y - cy) < hh) & (np.abs(x - cx) < hw)
        img[mask] = colour
    # textures: a sinusoidal grating and a checkerboard patch, plus fine grain
    freq = rng.uniform(0.3, 1.2)
    img += 0.08 * np.sin(freq * x + rng.uniform(0, 6))[..., None] * np.cos(freq * 0.7 * y)[..., None]
    cell = int(rng.integers(2, 6))
    checker = ((y // cell + x // cell) % 2).astype(np.float32)
    patch = (yn > 0.6) & (xn < 0.4)
    img[patch] += 0.15 * (checker[patch, None] - 0.5)
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return (np.rint(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


def pair(h: int = 48, w: int = 64, seed: int = 0, config: SynthConfig = TEST_SYNTH) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) float32 HxWx3 images; ``low`` is ``darken(high)`` (8-bit quantised)."""
    high = scene(h, w, seed)
    low = darken(high, np.random.default_rng(10_000 + seed), config)
    return low, high


def pairs(n: int, h: int = 48, w: int = 64, seed: int = 0, config: SynthConfig = TEST_SYNTH):
    """``n`` pairs with distinct scenes: (list of lows, list of highs)."""
    made = [pair(h, w, seed * 1000 + i, config) for i in range(n)]
    return [m[0] for m in made], [m[1] for m in made]


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def write_lol(root: str | Path, n: int, h: int = 96, w: int = 112, seed: int = 0) -> Path:
    """``n`` pairs as ``root/low/pair_XX.png`` and ``root/high/pair_XX.png`` (LOL layout)."""
    root = Path(root)
    (root / "low").mkdir(parents=True, exist_ok=True)
    (root / "high").mkdir(parents=True, exist_ok=True)
    lows, highs = pairs(n, h, w, seed)
    for i, (low, high) in enumerate(zip(lows, highs)):
        Image.fromarray(to_uint8(low)).save(root / "low" / f"pair_{i:02d}.png")
        Image.fromarray(to_uint8(high)).save(root / "high" / f"pair_{i:02d}.png")
    return root
