"""PSNR/SSIM against known values and skimage; no-reference statistics on constructed images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from llie.metrics import NoReferenceStats, no_reference_stats, psnr, quantize8, ssim


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    ref = rng.random((40, 50, 3)).astype(np.float32)
    pred = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1).astype(np.float32)
    return pred, ref


def test_psnr_constant_offset_is_20db():
    ref = np.full((8, 9, 3), 0.25)
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0, abs=1e-9)
    assert psnr(ref * 255 + 25.5, ref * 255, data_range=255) == pytest.approx(20.0, abs=1e-9)


def test_psnr_identical_is_inf():
    ref = np.random.default_rng(1).random((5, 6, 3))
    assert psnr(ref, ref.copy()) == math.inf


def test_psnr_matches_skimage(pair):
    pred, ref = pair
    expected = peak_signal_noise_ratio(ref, pred, data_range=1.0)
    assert psnr(pred, ref) == pytest.approx(expected, rel=1e-6)


def test_psnr_over_many_bands_matches_one_pass(monkeypatch):
    import llie.metrics as metrics

    rng = np.random.default_rng(2)
    ref = rng.random((37, 11, 3))
    pred = rng.random((37, 11, 3))
    whole = psnr(pred, ref)
    monkeypatch.setattr(metrics, "_BAND_PIXELS", 20)  # 1-row bands
    assert psnr(pred, ref) == pytest.approx(whole, rel=1e-12)


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError):
        psnr(np.zeros((2, 2, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(ValueError):
        ssim(np.zeros((9, 9, 3)), np.zeros((9, 8, 3)))


def test_ssim_identical_is_one(pair):
    _, ref = pair
    assert ssim(ref, ref.copy()) == pytest.approx(1.0)


def test_ssim_equals_skimage(pair):
    pred, ref = pair
    # skimage filters float32 input in float32, llie always in float64: equal to rounding
    expected = structural_similarity(pred, ref, data_range=1.0, channel_axis=2)
    assert ssim(pred, ref) == pytest.approx(expected, abs=1e-6)
    p64, r64 = pred.astype(np.float64), ref.astype(np.float64)
    assert ssim(p64, r64) == pytest.approx(structural_similarity(p64, r64, data_range=1.0, channel_axis=2), abs=1e-12)
    expected_grey = structural_similarity(p64[..., 0], r64[..., 0], data_range=1.0)
    assert ssim(p64[..., 0], r64[..., 0]) == pytest.approx(expected_grey, abs=1e-12)


@pytest.mark.parametrize("band_pixels", [1, 50, 1 << 18])
def test_ssim_in_bands_equals_skimage_on_the_whole_image(monkeypatch, band_pixels):
    import llie.metrics as metrics

    # 1-row bands, bands that do not divide the height, and one band: the halo must make them equal
    rng = np.random.default_rng(5)
    ref = rng.random((61, 47, 3))
    pred = np.clip(ref + rng.normal(0, 0.1, ref.shape), 0, 1)
    monkeypatch.setattr(metrics, "_SSIM_BAND_PIXELS", band_pixels)
    expected = structural_similarity(pred, ref, data_range=1.0, channel_axis=2)
    assert ssim(pred, ref) == pytest.approx(expected, abs=1e-12)


def test_ssim_memory_stays_bounded_on_a_large_image():
    import tracemalloc

    rng = np.random.default_rng(6)
    ref = rng.random((2000, 1500, 3)).astype(np.float32)  # 36 MB per image
    pred = ref * np.float32(0.9)
    tracemalloc.start()
    ssim(pred, ref)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # skimage would hold a dozen full-size float copies (> 250 MB here); bands need a few MB each
    assert peak < 64 * 2**20


def test_ssim_on_images_smaller_than_the_window():
    rng = np.random.default_rng(3)
    a, b = rng.random((5, 40, 3)), rng.random((5, 40, 3))
    assert -1.0 <= ssim(a, b) <= 1.0
    assert ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ssim(rng.random((2, 40, 3)), rng.random((2, 40, 3)))


def test_quantize8_rounds_and_clips():
    x = np.array([-0.5, 0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 0.5, 1.0, 1.7, np.nan], dtype=np.float32)
    np.testing.assert_array_equal(quantize8(x), [0, 0, 0, 1, 128, 255, 255, 0])
    assert quantize8(x).dtype == np.uint8


def test_quantize8_round_trip():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(quantize8(levels.astype(np.float32) / 255), levels)
    np.testing.assert_array_equal(quantize8(levels / 255.0), levels)


def test_8bit_protocol_equals_float_on_quantized(pair):
    pred, ref = pair
    qp, qr = quantize8(pred), quantize8(ref)
    assert psnr(qp, qr, data_range=255) == pytest.approx(psnr(qp / 255.0, qr / 255.0, data_range=1.0), rel=1e-9)
    assert ssim(qp, qr, data_range=255) == pytest.approx(ssim(qp / 255.0, qr / 255.0, data_range=1.0), abs=1e-6)


def test_noise_estimate_of_flat_image_plus_gaussian():
    rng = np.random.default_rng(4)
    noise = rng.normal(0, 0.05, (256, 256, 1)).astype(np.float32)
    img = np.full((256, 256, 3), 0.5, dtype=np.float32) + noise
    stats = no_reference_stats(img)
    assert stats.noise == pytest.approx(0.05, rel=0.15)
    assert stats.brightness == pytest.approx(0.5, abs=0.01)
    assert stats.contrast == pytest.approx(0.05, rel=0.05)


def test_noise_of_a_smooth_ramp_is_near_zero():
    y, x = np.mgrid[0:64, 0:80].astype(np.float32)
    ramp = (0.2 + 0.003 * x + 0.004 * y)[..., None].repeat(3, axis=2)
    assert no_reference_stats(ramp).noise < 1e-4


def test_entropy_of_two_level_image_is_one_bit():
    img = np.zeros((10, 20, 3), dtype=np.float32)
    img[:, 10:] = 1.0
    stats = no_reference_stats(img)
    assert stats.entropy == pytest.approx(1.0)
    assert stats.brightness == pytest.approx(0.5, abs=1e-6)
    assert stats.contrast == pytest.approx(0.5, abs=1e-6)
    assert stats.clipped == 1.0


def test_entropy_of_constant_is_zero_and_not_clipped():
    stats = no_reference_stats(np.full((7, 7, 3), 0.4, dtype=np.float32))
    assert stats.entropy == 0.0 and stats.contrast == pytest.approx(0.0, abs=1e-7)
    assert stats.clipped == 0.0 and stats.noise == pytest.approx(0.0, abs=1e-7)


def test_clipped_fraction():
    img = np.full((4, 10, 3), 0.5, dtype=np.float32)
    img[0] = 0.0  # 10 black
    img[1, :5] = 1 / 255  # 5 at the clip threshold
    img[2, :3] = 254 / 255  # 3 near white
    img[3, :1] = 2 / 255  # not clipped
    assert no_reference_stats(img).clipped == pytest.approx(18 / 40)


@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 900, 3), (900, 3, 3), (2, 2, 3), (1, 50, 3), (5, 5)])
def test_stats_on_tiny_and_thin_images(shape):
    img = np.random.default_rng(5).random(shape).astype(np.float32)
    stats = no_reference_stats(img)
    values = stats.as_dict()
    assert all(math.isfinite(v) for v in values.values())
    assert 0.0 <= stats.brightness <= 1.0 and 0.0 <= stats.clipped <= 1.0
    if min(shape[:2]) < 3:
        assert stats.noise == 0.0


def test_banded_stats_match_single_band(monkeypatch):
    import llie.metrics as metrics

    img = np.random.default_rng(6).random((53, 31, 3)).astype(np.float32)
    whole = no_reference_stats(img)
    monkeypatch.setattr(metrics, "_BAND_PIXELS", 31 * 4)  # 4-row bands
    banded = no_reference_stats(img)
    for key, value in whole.as_dict().items():
        assert banded.as_dict()[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_stats_match_a_plain_numpy_reference():
    from scipy.ndimage import convolve

    img = np.random.default_rng(7).random((30, 40, 3))
    luma = img @ [0.299, 0.587, 0.114]
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    lap = convolve(luma, kernel)[1:-1, 1:-1]
    expected_noise = math.sqrt(math.pi / 2) * np.abs(lap).sum() / (6 * 38 * 28)
    stats = no_reference_stats(img.astype(np.float32))
    assert stats.brightness == pytest.approx(luma.mean(), rel=1e-5)
    assert stats.contrast == pytest.approx(luma.std(), rel=1e-5)
    assert stats.noise == pytest.approx(expected_noise, rel=1e-5)


def test_as_dict_prefix():
    stats = NoReferenceStats(brightness=0.1, contrast=0.2, entropy=3.0, noise=0.01, clipped=0.0)
    assert stats.as_dict("low_") == {
        "low_brightness": 0.1,
        "low_contrast": 0.2,
        "low_entropy": 3.0,
        "low_noise": 0.01,
        "low_clipped": 0.0,
    }
    assert list(stats.as_dict()) == ["brightness", "contrast", "entropy", "noise", "clipped"]


def test_uint8_input_accepted():
    img = np.full((4, 4, 3), 255, dtype=np.uint8)
    assert no_reference_stats(img).brightness == pytest.approx(1.0, abs=1e-6)


def test_bad_shapes_rejected():
    with pytest.raises(ValueError):
        no_reference_stats(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError):
        no_reference_stats(np.zeros((0, 4, 3)))
