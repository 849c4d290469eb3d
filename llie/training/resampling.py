"""Resampled copies of a training photo: the same scene as a larger copy's working copy shows it, with
smoother noise (docs/method.md, "One look at every size")."""

from __future__ import annotations

import numpy as np

from llie.method.working_size import area_downscale
from llie.metrics import quantize8


def resampled_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An HxWx3 float image enlarged 1-4x (bicubic, each side on its own), then area-averaged to 0.4-1.2
    of its size per side, as float32."""
    from PIL import Image

    h, w = image.shape[:2]
    big = (max(1, round(w * rng.uniform(1.0, 4.0))), max(1, round(h * rng.uniform(1.0, 4.0))))
    levels = Image.fromarray(quantize8(image))
    enlarged = np.asarray(levels.resize(big, Image.Resampling.BICUBIC), np.float32) / np.float32(255)
    shape = (
        max(1, min(big[1], round(h * rng.uniform(0.4, 1.2)))),
        max(1, min(big[0], round(w * rng.uniform(0.4, 1.2)))),
    )
    return area_downscale(enlarged, shape)
