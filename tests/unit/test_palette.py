"""A photo scored as its distinct colours: the same stage-3 result and PSNR as pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_synthetic import pairs

from llie.method.bundle import load_bundle
from llie.method.exposure_offset import offset_quantiles
from llie.method.features import extract_features
from llie.method.mapping import MappingConfig, match_to_quantiles
from llie.method.policy import channel_means, map_under_policy, stage3_weight
from llie.metrics import psnr, quantize8
from llie.training.calibrate import offset_psnrs, tone_grid
from llie.training.palette import palette_of, palette_psnr, target_terms

SHIPPED_LIKE = MappingConfig(colour="bounded", max_slope=16, min_slope=0.05, slope_anchor="mean")


def _dark_photo(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 40, size=(48, 64, 1)) + rng.integers(0, 6, size=(48, 64, 3))
    base[:8, :8] = [60, 20, 5]  # a saturated patch, so the hue bound has pixels to act on
    return (base / 255.0).astype(np.float32)


def _quantiles() -> np.ndarray:
    base = np.linspace(0.02, 0.95, 21) ** 1.3
    return np.stack([base * 0.9, base, np.minimum(base * 1.1, 1.0)])


@pytest.mark.parametrize("config", [SHIPPED_LIKE, MappingConfig(), MappingConfig(colour="hue", hue_mix=0.5)])
def test_a_photo_mapped_as_its_colours_is_the_photo_mapped_pixel_by_pixel(config):
    photo = _dark_photo()
    palette = palette_of(photo)
    assert palette.colours.shape[1] < photo.shape[0] * photo.shape[1]  # repeated colours, or nothing is saved
    whole = match_to_quantiles(photo, _quantiles(), config)
    by_colour = match_to_quantiles(palette.colours, _quantiles(), config, counts=palette.counts)
    np.testing.assert_allclose(by_colour[0][palette.inverse].reshape(photo.shape), whole, atol=1e-6)


def test_the_psnr_from_colours_is_the_psnr_of_the_photo():
    photo = _dark_photo()
    palette = palette_of(photo)
    rng = np.random.default_rng(1)
    target = rng.random(photo.shape)
    out = quantize8(match_to_quantiles(palette.colours, _quantiles(), SHIPPED_LIKE, counts=palette.counts)) / 255.0
    whole = out[0][palette.inverse].reshape(photo.shape)
    assert palette_psnr(palette, out, target_terms(palette, target)) == pytest.approx(psnr(whole, target), abs=1e-9)
    assert palette_psnr(palette, out, target_terms(palette, whole)) > 100  # identical: no error left


@pytest.mark.parametrize("brightness", [1.0, 3.2])  # a dark shot, and one that stage 3 blends with itself
def test_calibration_scores_by_colour_what_it_scores_pixel_by_pixel(brightness):
    bundle = load_bundle(None, refiner=False)
    low, high = (images[0] for images in pairs(1, 40, 56, seed=3))
    low = np.round(np.clip(low * brightness, 0, 1) * 255) / 255
    weight = stage3_weight(channel_means(low), bundle.policy)
    assert weight > 0 and (weight == 1.0) == (brightness == 1.0)
    quantiles, _ = bundle.predict_quantiles(extract_features(low, None, bundle.quantile_model.config.features))
    grid = tone_grid(np.array([-1.0, 0.0, 0.5]), (0.7, 1.0, 1.4))
    targets = [high, np.clip(high * 0.7, 0, 1)]
    fast = offset_psnrs(low, quantiles, targets, bundle, grid)
    for j, (stops, gamma) in enumerate(grid):
        mapped, _ = map_under_policy(low, offset_quantiles(quantiles, stops, gamma), bundle.mapping, bundle.policy)
        out = quantize8(mapped) / 255.0
        np.testing.assert_allclose(fast[:, j], [psnr(out, target) for target in targets], atol=1e-4)
    assert np.ptp(fast[0]) > 0.1  # the settings differ, so the agreement is not one number repeated


def test_a_palette_refuses_what_does_not_fit():
    photo = _dark_photo()
    palette = palette_of(photo)
    with pytest.raises(ValueError, match="pixels"):
        target_terms(palette, photo[:10])
    with pytest.raises(ValueError, match="mask or counts"):
        match_to_quantiles(photo, _quantiles(), mask=np.ones(photo.shape[:2], bool), counts=np.ones(photo.shape[:2]))
