"""Synthetic low-light degradation and pair generation on images drawn here with numpy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llie.training.synth import SynthConfig, darken, linear_to_srgb, make_pairs, srgb_to_linear


def _scene(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A well-lit picture: colour gradients, a bright disc and a dark bar, float32 in [0,1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.4 + 0.5 * x / w, 0.3 + 0.6 * y / h, 0.5 + 0.3 * np.sin(x / 7.0)], axis=-1)
    disc = (x - w * rng.uniform(0.3, 0.7)) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 4) ** 2
    img[disc] = [0.95, 0.9, 0.8]
    img[h // 5 : h // 5 + 3] = 0.1
    return np.clip(img, 0, 1).astype(np.float32)


def _read(path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img


def _write(path, rgb: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(rgb * 255).astype(np.uint8)).save(path, format=fmt)


def test_srgb_transfer_round_trip():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-5)
    assert srgb_to_linear(np.float32(0.5)) == pytest.approx(0.2140, abs=1e-4)


def test_darken_is_deterministic_for_a_seed():
    img = _scene()
    a = darken(img, np.random.default_rng(7))
    b = darken(img, np.random.default_rng(7))
    c = darken(img, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_darken_is_pure():
    img = _scene()
    before = img.copy()
    darken(img, np.random.default_rng(0))
    np.testing.assert_array_equal(img, before)


def test_darken_lowers_brightness_a_lot():
    img = _scene()
    means = [darken(img, np.random.default_rng(seed)).mean() for seed in range(20)]
    # Worst case (gain 0.25, gamma 0.9) still removes ~40%; typical draws remove far more.
    assert max(means) < 0.7 * img.mean()
    assert np.mean(means) < 0.5 * img.mean()


def test_darken_output_range_dtype_and_quantization():
    out = darken(_scene(), np.random.default_rng(1))
    assert out.shape == (48, 64, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    levels = out * 255
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)


def test_darken_without_quantization_is_continuous():
    out = darken(_scene(), np.random.default_rng(1), SynthConfig(quantize=False))
    levels = out * 255
    assert np.abs(levels - np.rint(levels)).max() > 0.01


def test_darken_adds_noise_that_grows_with_the_range():
    flat = np.full((64, 64, 3), 0.6, dtype=np.float32)
    quiet = SynthConfig(
        exposure=(0.2, 0.2), shot_noise=(1e-6, 1e-6), read_noise=(1e-4, 1e-4), quantize=False, color_shift=0
    )
    loud = SynthConfig(
        exposure=(0.2, 0.2), shot_noise=(0.02, 0.02), read_noise=(0.02, 0.02), quantize=False, color_shift=0
    )
    assert darken(flat, np.random.default_rng(0), loud).std() > 10 * darken(flat, np.random.default_rng(0), quiet).std()


def test_darken_rejects_non_rgb():
    with pytest.raises(ValueError):
        darken(np.zeros((4, 4)), np.random.default_rng(0))


@pytest.fixture
def photos(tmp_path):
    src = tmp_path / "photos"
    _write(src / "a.png", _scene(48, 64, 0), "PNG")
    _write(src / "b.JPG", _scene(30, 40, 1), "JPEG")
    _write(src / "trip" / "c.tif", _scene(20, 24, 2), "TIFF")
    _write(src / "trip" / "deep" / "d.webp", _scene(16, 16, 3), "WEBP")
    _write(src / ".cache" / "thumb.png", _scene(8, 8, 4), "PNG")  # hidden folder: skipped
    _write(src / ".hidden.png", _scene(8, 8, 5), "PNG")  # hidden file: skipped
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # skipped with a warning
    return src


def test_make_pairs_writes_matching_pairs(photos, tmp_path):
    out = tmp_path / "pairs"
    names = make_pairs(photos, out, seed=3, progress=False)
    assert names == ["a.png", "b.png", "trip/c.png", "trip/deep/d.png"]
    for name in names:
        low = _read(out / "low" / name)
        high = _read(out / "high" / name)
        assert low.format == high.format == "PNG"
        assert low.mode == high.mode == "RGB"
        assert low.size == high.size
        assert np.asarray(low).mean() < 0.7 * np.asarray(high).mean()
    assert _read(out / "high" / "a.png").size == (64, 48)
    lossless = np.asarray(_read(out / "high" / "a.png"))
    np.testing.assert_array_equal(lossless, np.asarray(_read(photos / "a.png")))
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([f"low/{n}" for n in names] + [f"high/{n}" for n in names])


def test_make_pairs_is_deterministic_and_stable_per_file(photos, tmp_path):
    first = make_pairs(photos, tmp_path / "one", seed=11, progress=False)
    _write(photos / "new.png", _scene(12, 12, 9), "PNG")
    second = make_pairs(photos, tmp_path / "two", seed=11, progress=False)
    assert set(first) < set(second)
    for name in first:
        assert (tmp_path / "one" / "low" / name).read_bytes() == (tmp_path / "two" / "low" / name).read_bytes()
    make_pairs(photos, tmp_path / "three", seed=12, progress=False)
    differs = [
        (tmp_path / "one" / "low" / n).read_bytes() != (tmp_path / "three" / "low" / n).read_bytes() for n in first
    ]
    assert all(differs)


def test_make_pairs_refuses_output_inside_input(photos):
    with pytest.raises(ValueError):
        make_pairs(photos, photos / "pairs", progress=False)
    with pytest.raises(ValueError):
        make_pairs(photos, photos, progress=False)


def test_make_pairs_refuses_name_collisions(tmp_path):
    src = tmp_path / "in"
    _write(src / "x.png", _scene(8, 8), "PNG")
    _write(src / "x.jpg", _scene(8, 8), "JPEG")
    with pytest.raises(ValueError, match="x.png"):
        make_pairs(src, tmp_path / "out", progress=False)


def test_make_pairs_with_progress_bar(photos, tmp_path, capsys):
    names = make_pairs(photos, tmp_path / "out", progress=True)
    assert len(names) == 4
