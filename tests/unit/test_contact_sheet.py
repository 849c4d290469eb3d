"""The contact sheet of photos without references: the peer, the hue measure, the sheet itself."""

from __future__ import annotations

import numpy as np
from PIL import Image

from benchmarks.contact_sheet import THUMB, auto_gamma, contact_sheet, hue_turned_share, photos
from llie.method.mapping import LUMA


def test_the_gamma_peer_brings_the_mean_luma_near_its_target():
    dark = np.random.default_rng(0).uniform(0.02, 0.2, (40, 60, 3)).astype(np.float32)
    assert abs(float((auto_gamma(dark) @ LUMA).mean()) - 0.45) < 0.05


def test_hue_turned_share_counts_saturated_pixels_that_turn():
    rgb = np.zeros((10, 10, 3), np.float32)
    rgb[:5] = [0.6, 0.1, 0.1]  # saturated red
    rgb[5:] = [0.3, 0.3, 0.3]  # grey: has no hue to turn
    assert hue_turned_share(rgb, rgb) == 0.0
    turned = rgb.copy()
    turned[:5] = [0.1, 0.6, 0.1]  # red to green: 120 degrees
    turned[5:] = [0.1, 0.1, 0.6]  # grey pixels do not count
    assert hue_turned_share(rgb, turned) == 1.0
    assert hue_turned_share(rgb, rgb * 1.5) == 0.0  # brighter, same hue


def test_the_sheet_has_a_row_per_photo_and_a_column_per_output(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a photo")
    paths = photos(tmp_path)
    sheet, figures = contact_sheet(paths, {"llie": None})
    assert [p.name for p in paths] == ["a.png", "b.jpg"]
    cell = THUMB + 4
    assert sheet.size == (3 * cell, 18 + 2 * cell)  # columns: input, gamma, llie; a row per photo
    assert set(figures["summary"]) == {"gamma", "llie"}
    assert all(0.0 <= v <= 1.0 for s in figures["per_photo"].values() for v in s.values())


def test_an_enlarged_and_a_stretched_copy_come_back_close_to_the_photo():
    from helpers_synthetic import pair

    from benchmarks.upsized import agreement
    from llie.method.pipeline import Enhancer
    from llie.metrics import psnr, quantize8

    low, _ = pair(120, 180, seed=4)
    enhancer = Enhancer.load(None, device="cpu")
    figures = agreement(enhancer, low, {"enlarged": (900, 600), "stretched": (900, 720)})
    assert figures["mean_level"] > 60  # a dark shot, brightened
    enhancing = psnr(quantize8(enhancer.enhance(low).image) / 255.0, quantize8(low) / 255.0)
    for name in ("enlarged", "stretched"):
        # another size moves the result far less than enhancing moves the photo (10 dB: a tenth of the error)
        assert figures[name]["psnr_db"] > enhancing + 10
        assert abs(figures[name]["mean_level"] - figures["mean_level"]) < 8
