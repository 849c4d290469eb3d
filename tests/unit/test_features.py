"""Stage 1: per-channel histograms, their percentiles, and the feature vector."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_synthetic import pair, scene

from llie.method.features import (
    N_BINS,
    PERCENTILES,
    channel_histograms,
    channel_means_sequential,
    coarse_noise_features,
    extract_features,
    feature_size,
    histogram_percentiles,
    noise_features,
)


def _random_image(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    """8-bit-grid float images with dense histograms of different shapes."""
    if kind == "uniform":
        x = rng.random((h, w, 3))
    elif kind == "dark":  # low-light: mass piled up in the first few dozen levels
        x = rng.beta(1.5, 12.0, (h, w, 3))
    else:  # "normal"
        x = rng.normal(0.5, 0.15, (h, w, 3))
    return (np.rint(np.clip(x, 0, 1) * 255) / 255).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 1), (3, 900), (37, 53)])
def test_histograms_sum_to_one_per_channel(shape):
    rng = np.random.default_rng(sum(shape))
    rgb = rng.random(shape + (3,)).astype(np.float32)
    hist = channel_histograms(rgb)
    assert hist.shape == (3, N_BINS)
    assert (hist >= 0).all()
    np.testing.assert_allclose(hist.sum(axis=1), 1.0, atol=1e-12)


def test_histogram_counts_each_channel_separately():
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[..., 1] = 1.0
    rgb[0, 0, 2] = 128 / 255
    hist = channel_histograms(rgb)
    assert hist[0, 0] == 1.0
    assert hist[1, 255] == 1.0
    assert hist[2, 0] == 0.75 and hist[2, 128] == 0.25


@pytest.mark.parametrize("kind", ["uniform", "dark", "normal"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_percentiles_match_numpy(kind, seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(30, 80)), int(rng.integers(30, 80))
    rgb = _random_image(rng, h, w, kind)
    got = histogram_percentiles(channel_histograms(rgb))
    assert got.shape == (3, len(PERCENTILES))
    for c in range(3):
        expected = np.percentile(rgb[..., c].astype(np.float64), PERCENTILES)
        np.testing.assert_allclose(got[c], expected, atol=1 / 255, err_msg=f"{kind} channel {c}")


def test_histogram_percentiles_are_monotone_and_in_range():
    rng = np.random.default_rng(3)
    hist = rng.random((5, N_BINS)) * (rng.random((5, N_BINS)) < 0.2)  # sparse, with empty stretches
    hist[:, 0] = 0
    pct = histogram_percentiles(hist)
    assert (np.diff(pct, axis=1) >= 0).all()
    assert pct.min() >= 0 and pct.max() <= 1


@pytest.mark.parametrize("seed", [0, 1])
def test_features_identical_for_8bit_and_exact_16bit(seed):
    rng = np.random.default_rng(seed)
    codes8 = rng.integers(0, 256, size=(41, 29, 3), dtype=np.uint16)
    as8 = codes8.astype(np.float32) / 255.0
    as16 = (codes8 * 257).astype(np.float32) / 65535.0  # the exact 16-bit rendering of the same picture
    np.testing.assert_array_equal(channel_histograms(as8), channel_histograms(as16))
    np.testing.assert_array_equal(extract_features(as8), extract_features(as16))
    np.testing.assert_array_equal(extract_features(as8, feature_set=2), extract_features(as16, feature_set=2))


@pytest.mark.parametrize("shape", [(1, 1), (3, 900), (48, 64), (101, 7)])
def test_feature_length_is_fixed(shape):
    rgb = scene(*shape, seed=1) if min(shape) > 1 else np.full(shape + (3,), 0.2, np.float32)
    f = extract_features(rgb)
    assert f.dtype == np.float32
    assert f.shape == (feature_size(),)
    assert np.isfinite(f).all()


def test_feature_size_is_stable_for_extreme_images():
    for value in (0.0, 1.0):
        f = extract_features(np.full((5, 5, 3), value, np.float32))
        assert f.shape == (feature_size(),) and np.isfinite(f).all()


def test_features_distinguish_exposures():
    low, high = pair(48, 64, seed=4)
    assert not np.allclose(extract_features(low), extract_features(high))


def test_masked_histograms_count_only_the_masked_pixels():
    from llie.method.features import channel_histograms

    rng = np.random.default_rng(5)
    rgb = rng.random((37, 29, 3), dtype=np.float32)
    mask = rng.random((37, 29)) < 0.3
    hist = channel_histograms(rgb, mask)
    for c in range(3):
        expected = np.bincount(np.rint(rgb[..., c][mask] * 255).astype(int), minlength=256) / mask.sum()
        np.testing.assert_allclose(hist[c], expected)
    np.testing.assert_array_equal(channel_histograms(rgb, np.ones((37, 29), bool)), channel_histograms(rgb))


def test_noise_features_with_a_full_mask_match_the_plain_ones():
    from llie.method.features import noise_features

    rng = np.random.default_rng(6)
    rgb = np.clip(0.2 + 0.05 * rng.standard_normal((40, 50, 3)), 0, 1).astype(np.float32)
    np.testing.assert_allclose(noise_features(rgb, np.ones((40, 50), bool)), noise_features(rgb), rtol=1e-5)


def test_noise_feature_shortcuts_are_numpys_own_reductions():
    """channel_means_sequential is reshape(-1, 3).mean(axis=0) bit for bit (numpy sums rows one after
    the other, then divides by an intp count); the grey of the subsampled image is mean(axis=2)."""
    rng = np.random.default_rng(3)
    for shape in [(1, 1, 3), (3, 5, 3), (97, 61, 3), (400, 600, 3), (1024, 1024, 3)]:
        values = (rng.random(shape, dtype=np.float32) ** 3).astype(np.float32)
        np.testing.assert_array_equal(channel_means_sequential(values), values.reshape(-1, 3).mean(axis=0))
    levels = np.rint(rng.random((61, 97, 3), dtype=np.float32) * 255).astype(np.float32) / 255
    sub = levels[::2, ::2]
    np.testing.assert_array_equal(
        (sub[..., 0] + sub[..., 1] + sub[..., 2]) / np.float32(3), levels.mean(axis=2)[::2, ::2]
    )


def _resampled(rgb: np.ndarray, factor: int) -> np.ndarray:
    """The photo enlarged bicubically, then averaged back to its size: the working copy of a large,
    resampled copy of it."""
    from PIL import Image

    from llie.method.working_size import area_downscale

    h, w = rgb.shape[:2]
    big = Image.fromarray((rgb * 255).round().astype(np.uint8)).resize(
        (w * factor, h * factor), Image.Resampling.BICUBIC
    )
    return area_downscale(np.asarray(big, np.float32) / np.float32(255), (h, w))


def test_feature_set_2_keeps_the_histograms_and_replaces_pixel_noise():
    low, _ = pair(seed=3)
    one, two = extract_features(low), extract_features(low, feature_set=2)
    assert one.shape == (feature_size(1),) and two.shape == (feature_size(2),)
    histograms = feature_size(1) - len(noise_features(low))
    assert np.array_equal(one[:histograms], two[:histograms])
    assert np.array_equal(two[histograms:], coarse_noise_features(low))
    with pytest.raises(ValueError, match="feature set"):
        extract_features(low, feature_set=3)


def test_a_resampled_copy_moves_coarse_noise_far_less_than_pixel_noise():
    low, _ = pair(seed=1)
    noisy = np.clip(low + np.random.default_rng(0).normal(0, 0.02, low.shape), 0, 1).astype(np.float32)
    copy = _resampled(noisy, 4)
    fine = np.abs(noise_features(copy)[3:6] - noise_features(noisy)[3:6]).mean()  # log sigma per channel
    moved = np.abs(coarse_noise_features(copy) - coarse_noise_features(noisy))
    assert fine > 0.3  # pixel noise sees the smoothing: why set 2 exists
    assert moved[3:6].mean() < fine / 2  # the same measure at half size
    assert moved[11:14].mean() < fine / 5  # and at a quarter


def test_coarse_noise_ignores_masked_pixels_and_tiny_photos_stay_finite():
    low, _ = pair(seed=2)
    mask = np.ones(low.shape[:2], bool)
    mask[:, :10] = False
    painted = low.copy()
    painted[:, :10] = [1.0, 0.0, 1.0]
    assert np.allclose(coarse_noise_features(painted, mask), coarse_noise_features(low, mask), atol=1e-5)
    for shape in [(1, 1), (2, 3), (5, 400)]:
        rgb = np.random.default_rng(0).random(shape + (3,)).astype(np.float32)
        assert np.isfinite(extract_features(rgb, feature_set=2)).all()
