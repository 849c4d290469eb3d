"""The four stages in order through ``Enhancer``, on the default bundle shipped in the package."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_synthetic import pair, scene

from llie.method.black_point import hold_black_point
from llie.method.bundle import Bundle
from llie.method.capture_gate import toward_luma
from llie.method.detail import adjust_detail, coarse_texture
from llie.method.features import extract_features
from llie.method.hue_guard import hold_visible_hues
from llie.method.illumination import relight
from llie.method.mapping import match_to_quantiles
from llie.method.pipeline import STAGES, Enhancer
from llie.method.policy import apply_policy, brightening, channel_means, mean_luma, refiner_weight
from llie.method.refine import refine

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
    features = extract_features(low, feature_set=bundle.quantile_model.config.features)
    q, keep = bundle.quantile_model.predict(features), 1.0
    if bundle.capture_gate is not None:  # stage 2's brightness, gated by the kind of capture
        keep = bundle.capture_gate.keep(features)
        q = toward_luma(q, keep, bundle.capture_gate.settings.neutral_luma)
    np.testing.assert_array_equal(hist.quantiles, q)
    np.testing.assert_array_equal(full.quantiles, q)
    # the policy's last colour rule, if the bundle sets one, closes both
    guard = bundle.policy.hue_guard
    guarded = (lambda image: hold_visible_hues(low, image, guard)) if guard else (lambda image: image)
    stage3 = np.clip(match_to_quantiles(low, q, bundle.mapping, 256), 0, 1)
    np.testing.assert_allclose(hist.image, guarded(stage3), atol=1e-7)
    # stage 4: the bundle's local gain, if it has one, then the refiner
    relit = stage3 if bundle.illumination is None else relight(bundle.illumination, stage3)
    refined = refine(bundle.refiner, relit, default_enhancer.device, default_enhancer.tiling)
    weight = refiner_weight(brightening(channel_means(low), channel_means(stage3)), bundle.policy)
    assert weight == 1.0  # a dark shot: the refiner applies in full, anchored to stage 3's means
    anchored = apply_policy(stage3, refined.copy(), weight, bundle.policy)
    if bundle.detail is not None:  # then smoothed or sharpened by the bundle's detail rule
        amount = bundle.detail.amount(mean_luma(channel_means(low)), coarse_texture(anchored), keep)
        anchored = adjust_detail(anchored, amount)
    if bundle.policy.black_point_knee and keep >= 1.0:  # a scene-exposed capture: its black point held
        anchored = hold_black_point(stage3, anchored, bundle.policy.black_point_knee)
    anchored = np.clip(anchored, 0, 1)
    np.testing.assert_allclose(full.image, guarded(anchored), atol=1e-6)
    np.testing.assert_allclose(anchored.mean((0, 1)), stage3.mean((0, 1)), atol=0.01)


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
    unmasked = [
        default_enhancer.enhance(np.where(mask[..., None], photo, f), stages="hist").image[mask] for f in (0.0, 1.0)
    ]
    assert np.abs(unmasked[0] - unmasked[1]).mean() > 0.01  # without the mask the fill does move it


def test_an_empty_or_full_mask_counts_every_pixel(default_enhancer):
    rgb = scene(16, 24, seed=4) * 0.3
    plain = default_enhancer.enhance(rgb, stages="hist").image
    for mask in (np.zeros((16, 24), bool), np.ones((16, 24), bool)):
        np.testing.assert_array_equal(default_enhancer.enhance(rgb, stages="hist", mask=mask).image, plain)
    with pytest.raises(ValueError, match="mask of shape"):
        default_enhancer.enhance(rgb, mask=np.ones((24, 16), bool))


def _sample_highs():
    from pathlib import Path

    from PIL import Image

    folder = Path(__file__).resolve().parents[2] / "llie" / "assets" / "samples" / "high"
    for path in sorted(folder.iterdir()):
        with Image.open(path) as im:
            yield path.name, np.asarray(im.convert("RGB"), np.float32) / 255.0


def test_well_exposed_photos_pass_nearly_unchanged(default_enhancer):
    """Do no harm: the shipped sample photos as they were taken (well exposed) come back within 28 dB, and a
    mid-dark photo (luma in the gate's ramp) is changed less than a dark one."""
    from llie.metrics import psnr, quantize8

    for name, photo in _sample_highs():
        if name == "rocket.jpg":  # a night launch: as dark as a dark shot (model card, failure modes)
            continue
        out = default_enhancer.enhance(photo).image
        assert psnr(quantize8(out) / 255.0, quantize8(photo) / 255.0) >= 28.0, name
    _, photo = next(_sample_highs())
    change = lambda x: np.abs(default_enhancer.enhance(x, stages="hist").image - x).mean()
    assert change(photo * 0.15) > change(photo * 0.6) > change(photo)


def test_a_saturated_dark_scene_keeps_its_hues(default_enhancer):
    """A dim orange-and-blue scene is brightened without its hues turning (the sunset that came out cyan)."""
    from llie.method.mapping import hue_turn

    h, w = 96, 128
    t = np.linspace(0, 1, h)[:, None]
    sky = np.stack([np.full((h, w), 0.95), 0.3 + 0.4 * (1 - t) * np.ones((h, w)), np.full((h, w), 0.06)], -1)
    sky[int(0.7 * h) :] = [0.08, 0.12, 0.45]
    rng = np.random.default_rng(0)
    dim = np.clip(np.rint((sky * 0.18 + rng.normal(0, 0.004, sky.shape)) * 255) / 255, 0, 1).astype(np.float32)
    shown = (dim.max(-1) - dim.min(-1)) > 8 / 255
    for stages in STAGES:
        out = default_enhancer.enhance(dim, stages=stages).image
        assert out.mean() > 2 * dim.mean(), stages
        assert np.mean(hue_turn(dim, out)[shown] > 45) < 0.01, stages  # per-channel stage 3 alone turned 4 %


def test_threads_cap_numpy_blas_too():
    """Photos side by side each on one thread: numpy's BLAS must not wake a pool per photo as well."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from llie.method.pipeline import Enhancer, set_threads

    blas = lambda: {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}  # noqa: E731
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores this process's BLAS threads afterwards
        try:
            np.ones((4, 3)) @ np.ones(3)  # BLAS loaded
            threadpool_limits(2, user_api="blas")
            set_threads(1)
            assert blas() == {1}
            threadpool_limits(2, user_api="blas")
            Enhancer.load(threads=1, refiner=False)  # stages 1-3 alone cap it too, without torch
            assert blas() == {1}
        finally:
            torch.set_num_threads(before)
