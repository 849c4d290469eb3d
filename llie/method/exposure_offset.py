"""A bundle's exposure offset: stage 2's brightness moved by a number of stops for every photo.

How bright a photo should come out is partly taste: LOL shoots one view again with another exposure for
its reference, and a new capture series has its own (docs/method.md, "Calibrating to an archive"). An
archive's owner sets the offset by hand or fits it to a few pairs of their own (``llie calibrate``); it
acts where the capture gate has set stage 2's brightness, so the policy still leaves well-exposed photos
as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# an sRGB photo's mid-tones: one stop more light scales the encoded values by about 2 ** (1 / 2.2)
DISPLAY_GAMMA = 2.2
MAX_STOPS = 4.0


@dataclass(frozen=True)
class ExposureOffset:
    stops: float = 0.0  # > 0: brighter than stage 2 predicts, < 0: darker

    def __post_init__(self) -> None:
        if not (math.isfinite(self.stops) and -MAX_STOPS <= self.stops <= MAX_STOPS):
            raise ValueError(f"exposure offset {self.stops} is not a number of stops from -{MAX_STOPS} to {MAX_STOPS}")


def offset_quantiles(quantiles: np.ndarray, stops: float) -> np.ndarray:
    """Percentile values of a photo ``stops`` brighter (darker below 0), clipped to [0, 1]: scaling and
    clipping keep them monotone."""
    if stops == 0.0:
        return quantiles
    gain = np.float32(2.0 ** (stops / DISPLAY_GAMMA))
    return np.clip(quantiles * gain, 0.0, 1.0).astype(quantiles.dtype, copy=False)
