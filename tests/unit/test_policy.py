"""The refine policy: the refiner's weight follows stage 3's brightening, and anchoring keeps stage 3's means."""

from __future__ import annotations

import numpy as np
import pytest

from llie.method.policy import (
    EnhancePolicy,
    apply_policy,
    blend,
    brightening,
    channel_means,
    refiner_weight,
    stage3_weight,
)

POLICY = EnhancePolicy(anchor_exposure=True, gain_off=1.2, gain_full=1.6)


@pytest.mark.parametrize("gain, weight", [(0.8, 0.0), (1.2, 0.0), (1.4, 0.5), (1.6, 1.0), (9.0, 1.0), (np.inf, 1.0)])
def test_weight_follows_the_brightening(gain, weight):
    assert refiner_weight(gain, POLICY) == pytest.approx(weight)


def test_a_policy_without_gains_always_refines():
    assert refiner_weight(1.0, EnhancePolicy()) == 1.0
    with pytest.raises(ValueError):
        EnhancePolicy(gain_off=2.0, gain_full=1.5)


def test_brightening_is_the_luma_ratio():
    dark, bright = np.full((4, 4, 3), 0.1, np.float32), np.full((4, 4, 3), 0.4, np.float32)
    assert brightening(channel_means(dark), channel_means(bright)) == pytest.approx(4.0)
    assert brightening(channel_means(dark * 0), channel_means(bright)) == np.inf


def test_anchoring_keeps_stage3_means_and_weight_blends():
    rng = np.random.default_rng(0)
    mapped = rng.uniform(0.2, 0.6, (20, 30, 3)).astype(np.float32)
    refined = np.clip(mapped * 1.3 + 0.05, 0, 1).astype(np.float32)  # a refiner that also moved exposure
    out = apply_policy(mapped, refined.copy(), 1.0, POLICY)
    np.testing.assert_allclose(out.mean((0, 1)), mapped.mean((0, 1)), atol=1e-5)
    assert np.abs(out - mapped).max() > 0.01  # local changes stay
    half = apply_policy(mapped, refined.copy(), 0.5, EnhancePolicy())
    np.testing.assert_allclose(half, (mapped + refined) / 2, atol=1e-6)
    mask = np.zeros(mapped.shape[:2], bool)
    mask[:10] = True
    masked = apply_policy(mapped, refined.copy(), 1.0, POLICY, mask)
    np.testing.assert_allclose(masked[mask].mean(0), mapped[mask].mean(0), atol=1e-5)


@pytest.mark.parametrize("luma, weight", [(0.1, 1.0), (0.28, 1.0), (0.34, 0.5), (0.40, 0.0), (0.7, 0.0)])
def test_stage3_weight_follows_the_input_exposure(luma, weight):
    policy = EnhancePolicy(exposure_full=0.28, exposure_off=0.40)
    assert stage3_weight(np.full(3, luma), policy) == pytest.approx(weight)
    assert stage3_weight(np.full(3, luma), EnhancePolicy()) == 1.0  # bundles without the rule
    with pytest.raises(ValueError):
        EnhancePolicy(exposure_full=0.5, exposure_off=0.4)


def test_blend_moves_toward_the_source():
    source = np.zeros((2, 2, 3), np.float32)
    changed = np.ones((2, 2, 3), np.float32)
    np.testing.assert_allclose(blend(source, changed.copy(), 0.25), 0.25)
    np.testing.assert_allclose(blend(source, changed.copy(), 1.0), 1.0)
