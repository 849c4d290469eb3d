"""A bundle's exposure offset: stage 2's brightness moved by a number of stops, and its tone curve bent by
a gamma, for every photo.

How bright a photo should come out, and how deep its shadows, is partly taste: LOL shoots one view again
with another exposure for its reference, and a new capture series has its own (docs/method.md,
"Calibrating to an archive"). An archive's owner sets the offset and gamma by hand or fits them to a few
pairs of their own (``llie calibrate``); they act where the capture gate has set stage 2's brightness, so
the policy still leaves well-exposed photos as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# an sRGB photo's mid-tones: one stop more light scales the encoded values by about 2 ** (1 / 2.2)
DISPLAY_GAMMA = 2.2
MAX_STOPS = 4.0
MIN_GAMMA, MAX_GAMMA = 0.5, 2.0


@dataclass(frozen=True)
class ExposureOffset:
    stops: float = 0.0  # > 0: brighter than stage 2 predicts, < 0: darker
    gamma: float = 1.0  # the percentile values raised to it: < 1 lifts the shadows (flatter), > 1 deepens them

    def __post_init__(self) -> None:
        if not (math.isfinite(self.stops) and -MAX_STOPS <= self.stops <= MAX_STOPS):
            raise ValueError(f"exposure offset {self.stops} is not a number of stops from -{MAX_STOPS} to {MAX_STOPS}")
        if not (math.isfinite(self.gamma) and MIN_GAMMA <= self.gamma <= MAX_GAMMA):
            raise ValueError(f"exposure gamma {self.gamma} is not a number from {MIN_GAMMA} to {MAX_GAMMA}")

    def section(self) -> dict[str, float]:
        """The manifest section: gamma only where it bends, so offsets written before it keep their versions."""
        return {"stops": self.stops} | ({"gamma": self.gamma} if self.gamma != 1.0 else {})


def offset_quantiles(quantiles: np.ndarray, stops: float, gamma: float = 1.0) -> np.ndarray:
    """Percentile values raised to ``gamma``, then made ``stops`` brighter (darker below 0), clipped to
    [0, 1]: a power, a scale and a clip keep them monotone."""
    if stops == 0.0 and gamma == 1.0:
        return quantiles
    bent = np.clip(quantiles, 0.0, 1.0) ** np.float32(gamma) if gamma != 1.0 else quantiles
    gain = np.float32(2.0 ** (stops / DISPLAY_GAMMA))
    return np.clip(bent * gain, 0.0, 1.0).astype(quantiles.dtype, copy=False)
