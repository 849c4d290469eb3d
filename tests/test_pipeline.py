"""The four stages in order through ``Enhancer``, on the default bundle shipped in the package."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers_synthetic import pair, scene
from llie.bundle import Bundle
from llie.features import extract_features
from llie.mapping import match_to_quantiles
from llie.pipeline import STAGES, Enhancer
from llie.refine import refine


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def default_enhancer() -> Enhancer:
    return Enhancer.load(None, device="cpu")


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    if min(h, w) < 4:
        rng = np.random.default_rng(seed)
        return (np.rint(rng.beta(1.5, 10, (h, w, 3)) * 255) / 255).astype(np.float32)
    low, _ = pair(h, w, seed=seed)
    return low


def test_default_bundle_loads_with_both_stages(default_enhancer):
    assert default_enhancer.bundle.refiner is not None
    assert len(default_enhancer.model_version) == 12
    assert default_enhancer.device.type == "cpu"


@pytest.mark.parametrize("stages", STAGES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 900), (1001, 999)])
def test_enhance_keeps_size_range_and_dtype(default_enhancer, shape, stages):
    rgb = _image(*shape)
    result = default_enhancer.enhance(rgb, stages=stages)
    assert result.image.shape == rgb.shape
    assert result.image.dtype == np.float32
    assert np.isfinite(result.image).all()
    assert result.image.min() >= 0.0 and result.image.max() <= 1.0
    assert result.quantiles.shape == (3, 21)
    assert (np.diff(result.quantiles, axis=1) >= 0).all()
    assert set(result.seconds) >= {"features", "quantiles", "mapping", "refiner"}


def test_enhance_brightens_a_dark_image(default_enhancer):
    low, high = pair(64, 80, seed=1)
    out = default_enhancer.enhance(low, stages="hist").image
    assert out.mean() > low.mean() + 0.1


def test_hist_is_stages_1_to_3_and_full_adds_the_refiner(default_enhancer):
    low, _ = pair(72, 88, seed=2)
    bundle = default_enhancer.bundle
    hist = default_enhancer.enhance(low, stages="hist")
    full = default_enhancer.enhance(low, stages="full")
    q = bundle.quantile_model.predict(extract_features(low))
    np.testing.assert_array_equal(hist.quantiles, q)
    np.testing.assert_array_equal(full.quantiles, q)
    np.testing.assert_allclose(hist.image, np.clip(match_to_quantiles(low, q, bundle.mapping, 256), 0, 1), atol=1e-7)
    expected_full = refine(bundle.refiner, hist.image, default_enhancer.device, default_enhancer.tiling)
    np.testing.assert_allclose(full.image, expected_full, atol=1e-6)


def test_full_equals_hist_without_a_refiner(default_enhancer):
    b = default_enhancer.bundle
    enhancer = Enhancer(Bundle(b.quantile_model, b.mapping, None), device="cpu")
    low, _ = pair(40, 40, seed=3)
    np.testing.assert_array_equal(enhancer.enhance(low, "full").image, enhancer.enhance(low, "hist").image)


def test_16bit_input_goes_through_the_65536_level_table(default_enhancer):
    rng = np.random.default_rng(4)
    rgb = (rng.integers(0, 12000, size=(30, 40, 3)) / 65535).astype(np.float32)
    inferred = default_enhancer.enhance(rgb, stages="hist").image
    explicit = default_enhancer.enhance(rgb, stages="hist", levels=65536).image
    np.testing.assert_array_equal(inferred, explicit)
    assert len(np.unique(inferred[..., 0])) > 256


@pytest.mark.parametrize("bad", ["Full", "stage3", "", "hist,full"])
def test_bad_stage_name_raises(default_enhancer, bad):
    with pytest.raises(ValueError, match="stages"):
        default_enhancer.enhance(scene(8, 8), stages=bad)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 4), (8, 8, 1)])
def test_non_rgb_array_raises(default_enhancer, shape):
    with pytest.raises(ValueError, match="HxWx3"):
        default_enhancer.enhance(np.zeros(shape, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixels_raise(default_enhancer, bad):
    rgb = scene(8, 8)
    rgb[3, 4, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        default_enhancer.enhance(rgb)


def test_pixels_outside_the_mask_do_not_move_the_rest(default_enhancer):
    # a photo's fully transparent pixels may hold any colour; the visible part must not depend on it
    photo = scene(30, 40, seed=3) * 0.2
    mask = np.zeros((30, 40), bool)
    mask[5:25, 8:30] = True
    outputs = []
    for fill in (0.0, 1.0):
        rgb = photo.copy()
        rgb[~mask] = fill
        outputs.append(default_enhancer.enhance(rgb, stages="hist", mask=mask).image[mask])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    unmasked = [default_enhancer.enhance(np.where(mask[..., None], photo, f), stages="hist").image[mask] for f in (0.0, 1.0)]
    assert np.abs(unmasked[0] - unmasked[1]).mean() > 0.01  # without the mask the fill does move it


def test_an_empty_or_full_mask_counts_every_pixel(default_enhancer):
    rgb = scene(16, 24, seed=4) * 0.3
    plain = default_enhancer.enhance(rgb, stages="hist").image
    for mask in (np.zeros((16, 24), bool), np.ones((16, 24), bool)):
        np.testing.assert_array_equal(default_enhancer.enhance(rgb, stages="hist", mask=mask).image, plain)
    with pytest.raises(ValueError, match="mask of shape"):
        default_enhancer.enhance(rgb, mask=np.ones((24, 16), bool))
