"""The refined photo's black point held where stage 3 put it.

Out of fold, stage 3 puts the output's 1st-percentile luma where LOL's targets have it; the refiner's
denoising narrows the darkest tones' spread and, its mean anchored, lifts them (+0.025 on held-out LOL
pairs: night scenes look hazy). A toe pulls them back down. SICE's refined outputs already sit at their
references' black point, and the same toe pushes them below it, so the pipeline applies it only to the
captures the capture gate calls scene-exposed (docs/method.md, "Black point").
"""

from __future__ import annotations

import numpy as np

from llie.method.mapping import LUMA


def _percentiles(luma: np.ndarray, mask: np.ndarray | None, q: list[float]) -> np.ndarray:
    values = luma[mask] if mask is not None else luma.ravel()
    return np.percentile(values, q)


def hold_black_point(
    mapped: np.ndarray, refined: np.ndarray, knee_percentile: float, mask: np.ndarray | None = None
) -> np.ndarray:
    """``refined`` with the tones below its ``knee_percentile`` luma pulled down linearly, so that its
    1st-percentile luma returns to stage 3's ``mapped``; all three channels scaled alike (hues kept), tones
    above the knee unchanged. ``refined`` as it is where the refiner did not lift the black point."""
    refined_luma = refined @ LUMA
    (floor,) = _percentiles(mapped @ LUMA, mask, [1])
    lifted, knee = _percentiles(refined_luma, mask, [1, knee_percentile])
    if lifted <= floor or knee <= lifted:
        return refined
    slope = np.float32((knee - floor) / (knee - lifted))
    toe = refined_luma < knee
    target = np.maximum(knee - (knee - refined_luma[toe]) * slope, 0.0)
    gain = np.ones_like(refined_luma)
    gain[toe] = target / np.maximum(refined_luma[toe], 1e-6)
    return np.clip(refined * gain[..., None], 0.0, 1.0)
