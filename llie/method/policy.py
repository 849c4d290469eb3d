"""How far stages 3 and 4 may change a photo: the "do no harm" rules of a bundle.

An exposure gate on stage 3, a refiner weight that follows stage 3's brightening, and the refined
photo's exposure anchored to stage 3's (docs/method.md, "Inside each stage").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llie.method.black_point import hold_black_point
from llie.method.detail import DetailRule, adjust_detail, coarse_texture
from llie.method.hue_guard import hold_visible_hues
from llie.method.mapping import LUMA, MappingConfig, match_to_quantiles


@dataclass(frozen=True)
class EnhancePolicy:
    exposure_full: float = 1.0  # input mean luma up to which stage 3's change is kept in full
    exposure_off: float = 1.0  # ... from which the photo is left as it is
    anchor_exposure: bool = False
    gain_off: float = 0.0  # stage-3 brightening at or below which the refiner is left out
    gain_full: float = 0.0  # ... at or above which it applies in full
    # degrees a visible hue of the photo may turn in the output before it is turned back (0: no bound)
    hue_guard: float = 0.0
    # percentile of the refined luma below which its tones are pulled back to stage 3's black point, for
    # scene-exposed captures (llie.method.black_point; 0: never)
    black_point_knee: float = 0.0

    def __post_init__(self) -> None:
        if self.gain_full < self.gain_off:
            raise ValueError(f"gain_full {self.gain_full} is below gain_off {self.gain_off}")
        if self.exposure_off < self.exposure_full:
            raise ValueError(f"exposure_off {self.exposure_off} is below exposure_full {self.exposure_full}")
        if not 0.0 <= self.hue_guard < 180.0:
            raise ValueError(f"hue_guard {self.hue_guard} is not a number of degrees from 0 to 180")
        if not 0.0 <= self.black_point_knee < 100.0:
            raise ValueError(f"black_point_knee {self.black_point_knee} is not a percentile from 0 to 100")


def channel_means(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(3,) float64 channel means over the pixels ``mask`` marks (all without one)."""
    pixels = rgb.reshape(-1, 3) if mask is None else rgb[mask]
    if not len(pixels):
        return np.zeros(3)
    # one sum per channel: numpy's reduction over rows of three values is ten times slower
    return np.array([pixels[:, c].sum(dtype=np.float64) for c in range(3)]) / len(pixels)


def brightening(source_means: np.ndarray, mapped_means: np.ndarray) -> float:
    """Stage 3's gain: mean luma after over before (a black photo counts as brightened without bound)."""
    before, after = mean_luma(source_means), mean_luma(mapped_means)
    return after / before if before > 1e-6 else np.inf


def mean_luma(means: np.ndarray) -> float:
    return float(means @ LUMA)


def stage3_weight(source_means: np.ndarray, policy: EnhancePolicy) -> float:
    """Share of stage 3's change kept, from the input's exposure (its mean luma)."""
    luma = mean_luma(source_means)
    if luma <= policy.exposure_full:
        return 1.0
    if luma >= policy.exposure_off:
        return 0.0
    return (policy.exposure_off - luma) / (policy.exposure_off - policy.exposure_full)


def blend(source: np.ndarray, changed: np.ndarray, weight: float) -> np.ndarray:
    """``source + weight * (changed - source)``, in place in ``changed``."""
    if weight < 1.0:
        changed -= source
        changed *= np.float32(weight)
        changed += source
    return changed


def refiner_weight(gain: float, policy: EnhancePolicy) -> float:
    """Share of the refiner's change kept, from stage 3's brightening ``gain``."""
    if policy.gain_full <= 0:
        return 1.0
    if gain >= policy.gain_full:
        return 1.0
    if gain <= policy.gain_off or policy.gain_full == policy.gain_off:
        return 0.0
    return (gain - policy.gain_off) / (policy.gain_full - policy.gain_off)


def apply_policy(
    mapped: np.ndarray, refined: np.ndarray, weight: float, policy: EnhancePolicy, mask: np.ndarray | None = None
) -> np.ndarray:
    """Stage 3's ``mapped`` plus ``weight`` of the refiner's change, anchored to stage 3's means if asked;
    ``refined`` is modified in place and returned."""
    if policy.anchor_exposure:
        refined += (channel_means(mapped, mask) - channel_means(refined, mask)).astype(np.float32)
    return blend(mapped, refined, weight)


def map_under_policy(
    rgb: np.ndarray,
    quantiles: np.ndarray,
    mapping: MappingConfig,
    policy: EnhancePolicy,
    levels: int = 256,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Stage 3 behind the exposure gate: (the mapped photo, the share of stage 3's change kept). A photo
    brighter than any dark shot the model knows comes back as it is (share 0)."""
    weight = stage3_weight(channel_means(rgb, mask), policy)
    if weight == 0:
        return rgb.astype(np.float32), 0.0
    return blend(rgb, match_to_quantiles(rgb, quantiles, mapping, levels, mask), weight), weight


@dataclass(frozen=True)
class AfterRefiner:
    """What acts on one refined photo after the policy's anchoring: the bundle's detail rule (None: none)
    and the capture gate's share of stage 2's brightness kept for the photo (1: a scene-exposed capture,
    whose black point the policy may hold)."""

    keep: float = 1.0
    detail: DetailRule | None = None


def refine_under_policy(
    source: np.ndarray,
    mapped: np.ndarray,
    refine: Callable[[np.ndarray], np.ndarray],
    policy: EnhancePolicy,
    mask: np.ndarray | None = None,
    after: AfterRefiner = AfterRefiner(),
) -> np.ndarray:
    """Stage 4 on stage 3's ``mapped`` (made from ``source``): ``refine(mapped)`` kept in the share the
    brightening allows, anchored as the policy says, its fine detail set by ``after.detail``, its black
    point held at stage 3's for a scene-exposed capture if the policy asks; ``mapped`` itself where that
    share is 0."""
    source_means = channel_means(source, mask)
    weight = refiner_weight(brightening(source_means, channel_means(mapped, mask)), policy)
    if weight == 0:
        return mapped
    refined = apply_policy(mapped, refine(mapped), weight, policy, mask)
    if after.detail is not None:
        amount = after.detail.amount(mean_luma(source_means), coarse_texture(refined), after.keep)
        refined = adjust_detail(refined, amount)
    if policy.black_point_knee > 0 and after.keep >= 1.0:
        refined = hold_black_point(mapped, refined, policy.black_point_knee, mask)
    return refined


def finish_under_policy(
    source: np.ndarray, result: np.ndarray, policy: EnhancePolicy, mask: np.ndarray | None = None
) -> np.ndarray:
    """The policy's last colour rule on a changed photo's ``result`` (in [0, 1]): visible hues of ``source``
    that turned past ``policy.hue_guard`` degrees are turned back (``hue_guard.hold_visible_hues``)."""
    if policy.hue_guard <= 0:
        return result
    return hold_visible_hues(source, result, policy.hue_guard, mask=mask)
