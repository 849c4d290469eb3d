"""Large photos are enhanced at the working size and carried back to full size (llie.method.working_size)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_synthetic import pair

from llie.method.pipeline import Enhancer
from llie.method.working_size import WorkingSize, apply_upsampled, area_downscale, guided_coefficients, working_shape
from llie.metrics import psnr

pytestmark = pytest.mark.usefixtures("torch_one_thread")

NEVER = WorkingSize(long_side=10**9)  # every photo through the plain path


@pytest.fixture(scope="module")
def shipped() -> Enhancer:
    return Enhancer.load(None, device="cpu")


def _with_working(enhancer: Enhancer, working: WorkingSize) -> Enhancer:
    return Enhancer(enhancer.bundle, device="cpu", working=working)


def _shrink(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-shrunk and stored at 8 bits, as the photo saved at that size would be."""
    return (np.rint(area_downscale(rgb, shape) * 255) / 255).astype(np.float32)


@pytest.mark.parametrize("stages", ["hist", "full"])
@pytest.mark.parametrize("shape", [(400, 600), (600, 600), (512, 512), (37, 50)])
def test_photos_up_to_the_working_size_take_the_plain_path_bit_for_bit(shipped, shape, stages):
    low, _ = pair(*shape, seed=5)
    plain = _with_working(shipped, NEVER).enhance(low, stages=stages)
    default = shipped.enhance(low, stages=stages)
    assert max(shape) <= shipped.working.long_side
    np.testing.assert_array_equal(default.image, plain.image)
    np.testing.assert_array_equal(default.quantiles, plain.quantiles)
    assert "upsample" not in default.seconds


def test_a_photo_one_pixel_over_takes_the_working_path(shipped):
    low, _ = pair(400, 601, seed=6)
    result = shipped.enhance(low)
    assert "upsample" in result.seconds and result.image.shape == low.shape
    assert not np.array_equal(result.image, _with_working(shipped, NEVER).enhance(low).image)


@pytest.mark.parametrize("stages", ["hist", "full"])
def test_a_large_photo_shrunk_looks_like_the_shrunk_photo_enhanced(shipped, stages):
    """One look at every size: enhance, then shrink, is within 30 dB PSNR of shrink, then enhance."""
    big, _ = pair(1600, 2400, seed=7)
    out = shipped.enhance(big, stages=stages).image
    small = (400, 600)
    direct = shipped.enhance(_shrink(big, small), stages=stages).image
    assert psnr(_shrink(out, small), direct) >= 30.0
    # and the full-size result keeps full-size detail: far more than the small result enlarged
    enlarged = F.interpolate(torch.from_numpy(direct).permute(2, 0, 1)[None], size=big.shape[:2], mode="bilinear")
    detail = lambda rgb: np.abs(np.diff(rgb, axis=1)).mean()  # noqa: E731
    assert detail(out) > 2 * detail(enlarged[0].permute(1, 2, 0).numpy())


def test_apply_upsampled_is_bilinear_upsampling_of_the_coefficients():
    rng = np.random.default_rng(0)
    for h, w, sh, sw in [(37, 53, 5, 7), (40, 30, 40, 30), (9, 200, 1, 3)]:
        image = rng.random((h, w, 3), dtype=np.float32)
        coefficients = rng.random((sh, sw, 6), dtype=np.float32) - 0.3
        up = (
            F.interpolate(
                torch.from_numpy(coefficients).permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False
            )[0]
            .permute(1, 2, 0)
            .numpy()
        )
        expected = np.clip(up[..., :3] * image + up[..., 3:], 0, 1)
        np.testing.assert_allclose(apply_upsampled(image, coefficients), expected, atol=2e-6)


def test_guided_fit_recovers_an_affine_map_and_applies_it_at_full_size():
    rng = np.random.default_rng(1)
    full = rng.random((60, 90, 3), dtype=np.float32) * 0.4
    small = area_downscale(full, (20, 30))
    gain, offset = np.float32([1.5, 2.0, 0.5]), np.float32([0.1, -0.05, 0.3])
    coefficients = guided_coefficients(small, small * gain + offset, radius=1, eps=1e-9)
    np.testing.assert_allclose(coefficients[..., :3], np.broadcast_to(gain, (20, 30, 3)), atol=1e-3)
    np.testing.assert_allclose(apply_upsampled(full, coefficients), np.clip(full * gain + offset, 0, 1), atol=2e-3)


def test_area_downscale_averages_blocks():
    rng = np.random.default_rng(2)
    image = rng.random((12, 18, 3), dtype=np.float32)
    np.testing.assert_allclose(area_downscale(image, (4, 6)), image.reshape(4, 3, 6, 3, 3).mean(axis=(1, 3)), atol=1e-6)
    uneven = area_downscale(image, (5, 7))  # blocks of 2 or 3 rows and columns
    np.testing.assert_allclose(uneven[0, 0], image[:2, :2].mean(axis=(0, 1)), atol=1e-6)
    np.testing.assert_allclose(uneven[-1, -1], image[-3:, -3:].mean(axis=(0, 1)), atol=1e-6)
    mask = np.zeros((12, 18), bool)
    mask[:6] = True
    np.testing.assert_array_equal(
        area_downscale(mask, (4, 6)) >= 0.5, np.repeat([[True], [True], [False], [False]], 6, 1)
    )


@pytest.mark.parametrize(
    "size, shape",
    [((61, 40), (7, 9)), ((700, 9), (2, 3)), ((300, 4), (1, 1)), ((45, 30), (45, 29)), ((2000, 6), (7, 2))],
)
def test_area_downscale_sums_rows_exactly_as_reduceat(size, shape):
    """Row runs of 1 to 1000 rows (numpy's pairwise summation: sequential, 8-way, split in halves):
    the bit-exact sums of np.add.reduceat, so large photos' outputs did not move with the faster sum."""
    rng = np.random.default_rng(5)
    image = rng.random((*size, 3), dtype=np.float32)
    mask = rng.random(size) > 0.4
    for x in (image, mask):
        rows, cols = (np.arange(n) * s // n for n, s in zip(shape, size))
        sums = np.add.reduceat(np.add.reduceat(x, rows, axis=0, dtype=np.float32), cols, axis=1)
        counts = np.outer(np.diff(rows, append=size[0]), np.diff(cols, append=size[1])).astype(np.float32)
        expected = sums / (counts if x.ndim == 2 else counts[..., None])
        np.testing.assert_array_equal(area_downscale(x, shape), expected)


@pytest.mark.parametrize(
    "shape, expected",
    [((3000, 4000), (450, 600)), ((4000, 3000), (600, 450)), ((3, 900), (2, 600)), ((1, 100000), (1, 600))],
)
def test_working_shape_keeps_the_aspect_ratio(shape, expected):
    assert working_shape(*shape, 600) == expected
