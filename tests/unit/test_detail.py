"""The detail rule after the refiner: how much each refined photo is smoothed or sharpened, the labels it is
fit to (the most SSIM at no cost in PSNR), and the bundle and pipeline that carry it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers_synthetic import pairs

from llie.method.black_point import hold_black_point
from llie.method.bundle import MANIFEST, Bundle, BundleError, load_bundle, manifest_version, save_bundle
from llie.method.detail import DetailRule, adjust_detail, binomial_blur, coarse_texture
from llie.method.mapping import MappingConfig
from llie.method.pipeline import Enhancer
from llie.method.policy import AfterRefiner, EnhancePolicy, refine_under_policy
from llie.method.quantiles import QuantileModel, QuantileModelConfig, augmented_rows
from llie.method.refiner import Refiner, RefinerConfig
from llie.metrics import psnr, quantize8
from llie.training.detail import AMOUNTS, MIN_PHOTOS, best_amount, fit_detail_rule


def _scene(seed: int = 0, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A clean photo: smooth shading and a few sharp-edged shapes."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    image = 0.2 + 0.4 * x[..., None] * np.array([1.0, 0.9, 0.7]) + 0.1 * y[..., None]
    for _ in range(4):
        top, left = rng.integers(0, h - 24), rng.integers(0, w - 24)
        image[top : top + 24, left : left + 24] += rng.uniform(-0.15, 0.25, 3)
    return np.clip(image, 0, 1).astype(np.float32)


def _noisy(image: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 1).astype(np.float32)


def _high_frequency(image: np.ndarray) -> float:
    return float(np.std(image - binomial_blur(image)))


def test_a_positive_amount_smooths_a_negative_one_sharpens_and_the_means_stay():
    photo = _noisy(_scene(), 0.05)
    smoother, sharper = adjust_detail(photo, 0.8), adjust_detail(photo, -0.8)
    assert _high_frequency(smoother) < 0.6 * _high_frequency(photo) < 0.6 * _high_frequency(sharper)
    for out in (smoother, sharper):
        assert out.dtype == np.float32 and out.shape == photo.shape
        np.testing.assert_allclose(out.mean(axis=(0, 1)), photo.mean(axis=(0, 1)), atol=2e-3)
    assert adjust_detail(photo, 0.0) is photo
    flat = np.full((20, 30, 3), 0.4, np.float32)
    np.testing.assert_allclose(adjust_detail(flat, 1.0), flat, atol=1e-7)
    assert adjust_detail(np.ones((1, 5, 3), np.float32), 1.0).shape == (1, 5, 3)  # too small to filter: as it is


def test_coarse_texture_sees_structure_more_than_pixel_noise():
    flat = np.full((96, 128, 3), 0.4, np.float32)
    assert coarse_texture(flat) == pytest.approx(0.0, abs=1e-7)
    scene = _scene()
    noisy = _noisy(flat, 0.05)
    # against the scene's structure, heavy pixel noise weighs far less in the 4x4-block measure
    pixel_level = _high_frequency(noisy) / _high_frequency(scene)
    coarse = coarse_texture(noisy) / coarse_texture(scene)
    assert pixel_level > 3 and coarse < 0.25 * pixel_level
    assert coarse_texture(np.zeros((5, 5, 3), np.float32)) > 0  # too small to measure: the floor, log-safe


def test_the_rule_is_linear_in_its_inputs_and_clipped():
    rule = DetailRule(bias=0.1, luma=-0.2, texture=-0.3, keep=-0.4, lowest=-0.5, highest=0.9)
    expected = 0.1 - 0.2 * np.log(0.1) - 0.3 * np.log(0.02) - 0.4 * 0.5
    assert rule.amount(0.1, 0.02, 0.5) == pytest.approx(min(expected, 0.9))
    assert rule.amount(1e-9, 1e-9, 0.0) == 0.9  # a black photo: the floor, then the clip
    assert DetailRule(bias=-5.0, lowest=-0.5).amount(0.3, 0.1, 1.0) == -0.5
    with pytest.raises(ValueError, match="within -1 to 1"):
        DetailRule(lowest=0.5, highest=0.2)
    with pytest.raises(ValueError, match="within -1 to 1"):
        DetailRule(highest=1.5)


def test_the_label_is_the_most_ssim_at_no_cost_in_psnr():
    target = _scene()
    noisy = _noisy(target, 0.06)
    blurred = binomial_blur(binomial_blur(target))
    assert best_amount(noisy, target) > 0  # noise left: smooth it
    assert best_amount(blurred, target) < 0  # detail lost: sharpen it
    for photo in (noisy, blurred):
        label = best_amount(photo, target)
        scored = [quantize8(np.clip(adjust_detail(photo, a), 0, 1)) / 255.0 for a in (0.0, label)]
        assert psnr(scored[1], target) >= psnr(scored[0], target)
    assert best_amount(target, target) == 0.0  # nothing to gain


def _training_photos(n: int) -> tuple[list, list, list, list]:
    """Dark, noisy inputs whose refined photos keep noise; bright ones whose refined photos lost detail."""
    sources, refined, targets, keeps = [], [], [], []
    for i in range(n):
        target = _scene(i)
        dark = i % 2 == 0
        sources.append((target * (0.05 if dark else 0.3)).astype(np.float32))
        refined.append(_noisy(target, 0.06, seed=i) if dark else binomial_blur(binomial_blur(target)))
        targets.append(target)
        keeps.append(1.0)
    return sources, refined, targets, keeps


def test_the_fit_learns_to_smooth_noisy_dark_photos_and_sharpen_soft_bright_ones():
    sources, refined, targets, keeps = _training_photos(12)
    rule, record = fit_detail_rule(sources, refined, targets, keeps)
    assert rule is not None and record["photos"] == 12 and record["fit"]
    assert rule.keep == 0.0  # one kind of capture: the share kept tells nothing
    assert (rule.lowest, rule.highest) == (AMOUNTS[0], AMOUNTS[-1])
    dark_noisy = rule.amount(0.05 * 0.4, coarse_texture(refined[0]), 1.0)
    bright_soft = rule.amount(0.3 * 0.4, coarse_texture(refined[1]), 1.0)
    assert dark_noisy > 0.2 and bright_soft < 0


def test_too_few_photos_give_no_rule():
    rule, record = fit_detail_rule(*_training_photos(MIN_PHOTOS - 1))
    assert rule is None and record == {"photos": MIN_PHOTOS - 1, "fit": False}


def _denoiser_that_leaves_noise(mapped: np.ndarray) -> np.ndarray:
    return mapped.copy()


def test_the_policy_applies_the_rule_before_the_black_point():
    rng = np.random.default_rng(0)
    source = np.clip(rng.normal(0.04, 0.01, (64, 80, 3)), 0, 1).astype(np.float32)
    mapped = _noisy(_scene(size=(64, 80)), 0.05)
    rule = AfterRefiner(detail=DetailRule(bias=0.7))  # smooth every photo by 0.7
    plain = refine_under_policy(source, mapped, _denoiser_that_leaves_noise, EnhancePolicy())
    smoothed = refine_under_policy(source, mapped, _denoiser_that_leaves_noise, EnhancePolicy(), after=rule)
    np.testing.assert_allclose(smoothed, adjust_detail(plain, 0.7), atol=1e-6)
    held = refine_under_policy(
        source, mapped, _denoiser_that_leaves_noise, EnhancePolicy(black_point_knee=5.0), after=rule
    )
    np.testing.assert_allclose(held, hold_black_point(mapped, adjust_detail(plain, 0.7), 5.0), atol=1e-6)
    gain_off = EnhancePolicy(gain_off=100.0, gain_full=200.0)  # no refiner for this brightening: no rule either
    assert refine_under_policy(source, mapped, _denoiser_that_leaves_noise, gain_off, after=rule) is mapped


def _bundle(detail: DetailRule | None, refiner: bool = True) -> Bundle:
    cfg = QuantileModelConfig(n_estimators=5, augmentations=2, min_child_weight=2.0, features=2)
    lows, highs = pairs(6, seed=0)
    rng = np.random.default_rng(0)
    x, y = zip(*(augmented_rows(l, h, rng, cfg.augmentations, 2) for l, h in zip(lows, highs)))
    model = QuantileModel.fit(np.concatenate(x), np.concatenate(y), cfg, n_threads=1)
    torch.manual_seed(0)
    net = Refiner(RefinerConfig(dim=16, depth=1, heads=2)).eval() if refiner else None
    return Bundle(model, MappingConfig("kde", 0.02), net, detail=detail)


def test_a_bundle_carries_its_rule_and_the_pipeline_applies_it(tmp_path):
    rule = DetailRule(bias=0.9, lowest=-1.0, highest=1.0)
    manifest = save_bundle(_bundle(rule), tmp_path / "with")
    plain = save_bundle(_bundle(None), tmp_path / "without")
    assert manifest["detail"] == {"bias": 0.9, "luma": 0.0, "texture": 0.0, "keep": 0.0, "lowest": -1.0, "highest": 1.0}
    assert plain["detail"] is None and manifest["model_version"] != plain["model_version"]
    earlier = {k: v for k, v in plain.items() if k != "detail"}  # as written before the rule existed
    assert manifest_version(earlier) == plain["model_version"]
    loaded = load_bundle(tmp_path / "with")
    assert loaded.detail == rule and load_bundle(tmp_path / "without").detail is None
    dark = pairs(6, seed=0)[0][3]
    with_rule = Enhancer(loaded, device="cpu").enhance(dark).image
    without = Enhancer(load_bundle(tmp_path / "without"), device="cpu").enhance(dark).image
    assert _high_frequency(with_rule) < 0.8 * _high_frequency(without)


def test_nonsense_rule_settings_are_refused_before_loading(tmp_path):
    written = save_bundle(_bundle(DetailRule(bias=0.1)), tmp_path)
    changes = [
        ({"bias": float("inf")}, "detail.bias"),
        ({"lowest": 0.5, "highest": 0.2}, "within -1 to 1"),
        ({"shape": 1.0}, "unknown setting 'shape'"),
    ]
    for change, why in changes:
        manifest = json.loads(json.dumps(written))
        manifest["detail"] |= change
        manifest["model_version"] = manifest_version(manifest)
        (tmp_path / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=why):
            load_bundle(tmp_path)
