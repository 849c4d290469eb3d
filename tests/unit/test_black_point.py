"""The black point after the refiner: a toe brings the refined photo's 1st-percentile luma back to stage 3's,
only where the refiner lifted it, only for scene-exposed captures, hues and the tones above the knee kept."""

from __future__ import annotations

import numpy as np
import pytest

from llie.method.black_point import hold_black_point
from llie.method.mapping import LUMA
from llie.method.policy import AfterRefiner, EnhancePolicy, refine_under_policy


def _mapped(seed: int = 0) -> np.ndarray:
    """A stage-3 output: noisy, with deep shadows and a tinted scene."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:120, 0:160] / 160.0
    base = (0.05 + 0.6 * x[..., None] * y[..., None] * 2) * np.array([1.0, 0.85, 0.7])
    return np.clip(base + rng.normal(0, 0.04, (120, 160, 3)), 0, 1).astype(np.float32)


def _denoised(mapped: np.ndarray) -> np.ndarray:
    """What a denoiser with its mean anchored does to the darkest tones: narrows their spread, lifting them."""
    return np.clip(0.6 * mapped + 0.4 * mapped.mean(axis=(0, 1)), 0, 1).astype(np.float32)


def _p1(image: np.ndarray) -> float:
    return float(np.percentile(image @ LUMA, 1))


def test_the_toe_returns_the_black_point_to_stage_3s_and_keeps_the_rest():
    mapped = _mapped()
    refined = _denoised(mapped)
    assert _p1(refined) > _p1(mapped) + 0.02  # the refiner lifted it
    held = hold_black_point(mapped, refined, 5.0)
    assert _p1(held) == pytest.approx(_p1(mapped), abs=0.005)
    luma = refined @ LUMA
    above = luma >= np.percentile(luma, 5)
    np.testing.assert_allclose(held[above], refined[above], atol=1e-6)  # tones above the knee untouched
    below = ~above & (luma > 0.01)
    ratios = held[below] / refined[below]  # hues kept: the three channels scaled alike
    np.testing.assert_allclose(ratios[:, 0], ratios[:, 2], rtol=1e-4)
    assert held.min() >= 0 and held.max() <= 1 and held.dtype == np.float32


def test_nothing_changes_where_the_refiner_did_not_lift_the_black_point():
    mapped = _mapped(1)
    darker = np.clip(mapped * 0.9, 0, 1)
    assert hold_black_point(mapped, darker, 5.0) is darker


def test_a_mask_leaves_out_what_it_marks_as_not_the_photo():
    mapped, refined = _mapped(2), _denoised(_mapped(2))
    mask = np.ones(mapped.shape[:2], bool)
    mask[:, :40] = False
    mapped_masked = mapped.copy()
    mapped_masked[:, :40] = 0.0  # black padding outside the mask must not set the black point
    held = hold_black_point(mapped_masked, refined, 5.0, mask)
    assert float(np.percentile((held @ LUMA)[mask], 1)) == pytest.approx(
        float(np.percentile((mapped @ LUMA)[mask], 1)), abs=0.006
    )


def test_the_policy_holds_the_black_point_only_for_scene_exposed_captures():
    mapped = _mapped(3)
    source = (mapped * 0.1).astype(np.float32)  # a dark shot: stage 3 brightened it tenfold
    policy = EnhancePolicy(anchor_exposure=True, black_point_knee=5.0)
    held = refine_under_policy(source, mapped, _denoised, policy, after=AfterRefiner(keep=1.0))
    kept = refine_under_policy(source, mapped, _denoised, policy, after=AfterRefiner(keep=0.0))
    off = refine_under_policy(
        source, mapped, _denoised, EnhancePolicy(anchor_exposure=True), after=AfterRefiner(keep=1.0)
    )
    np.testing.assert_array_equal(kept, off)
    assert _p1(held) < _p1(kept) - 0.02
    assert _p1(held) == pytest.approx(_p1(mapped), abs=0.005)


def test_a_knee_outside_0_to_100_is_refused():
    with pytest.raises(ValueError, match="black_point_knee"):
        EnhancePolicy(black_point_knee=100.0)
