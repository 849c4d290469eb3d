"""Reference scores are of what the user gets: the enhanced image as its file stores it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from llie.batch.imageio import DecodeLimits, as_stored, decode_image, encode_image
from llie.batch.scoring import reference_scores
from llie.metrics import psnr, ssim


def _file(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")  # uint8 HxWx3: RGB, HxW: L; uint16: I;16
    return buf.getvalue()


def _photo(mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return _file(rng.integers(0, 65536, (20, 30), dtype=np.uint16))
    shape = (20, 30, 3) if mode == "RGB" else (20, 30)
    return _file(rng.integers(0, 256, shape, dtype=np.uint8))


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_scores_are_those_of_the_written_file(mode):
    like = decode_image(_photo(mode, 0))
    assert like.bit_depth == (16 if mode == "I;16" else 8)
    reference = _photo(mode, 1)
    # values between the levels of the file: rounding them is what the scores must see
    enhanced = np.random.default_rng(2).random((20, 30, 3), dtype=np.float32)
    written = decode_image(encode_image(enhanced, like)).rgb  # PNG: lossless, so exactly the stored levels
    np.testing.assert_array_equal(as_stored(enhanced, like), written)

    got_psnr, got_ssim, warning = reference_scores(enhanced, like, lambda: reference, DecodeLimits())
    ref = decode_image(reference).rgb
    assert warning is None
    assert got_psnr == pytest.approx(float(psnr(written, ref)), abs=1e-9)
    assert got_ssim == pytest.approx(float(ssim(written, ref)), abs=1e-9)
    assert got_psnr != pytest.approx(float(psnr(enhanced, ref)), abs=1e-6)  # not the float image


def test_a_missing_or_unreadable_reference_is_a_warning():
    like = decode_image(_photo("RGB", 0))
    enhanced = like.rgb

    def missing() -> bytes:
        raise FileNotFoundError("ref/a.png")

    assert reference_scores(enhanced, like, missing, DecodeLimits()) == (None, None, "no reference image")
    psnr_, ssim_, warning = reference_scores(enhanced, like, lambda: b"not an image", DecodeLimits())
    assert (psnr_, ssim_) == (None, None) and warning.startswith("reference unreadable")
