"""An enhanced photo scored against its well-lit reference, by ``llie run`` and ``llie enhance`` alike.

What is scored is what the user gets: the image as written, rounded to the levels its file stores
(8 bits, or 16 for a 16-bit grey photo), grey outputs as grey (``imageio.as_stored``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llie.batch.imageio import DecodedImage, DecodeLimits, ImageDecodeError, as_stored, decode_image
from llie.metrics import psnr, ssim


def reference_scores(
    enhanced: np.ndarray, like: DecodedImage, read: Callable[[], bytes], limits: DecodeLimits
) -> tuple[float | None, float | None, str | None]:
    """(psnr, ssim, warning) of ``enhanced``, written as ``like`` was stored, against the reference
    ``read`` returns the bytes of.

    A missing (``read`` raises FileNotFoundError), unreadable or differently sized reference never
    fails the image: the warning says why.
    """
    try:
        ref = decode_image(read(), limits)
    except FileNotFoundError:
        return None, None, "no reference image"
    except ImageDecodeError as exc:
        return None, None, f"reference unreadable: {exc}"
    if ref.rgb.shape != enhanced.shape:
        return None, None, (f"reference is {ref.width}x{ref.height}, output is {enhanced.shape[1]}x{enhanced.shape[0]}")
    stored = as_stored(enhanced, like)
    return float(psnr(stored, ref.rgb)), float(ssim(stored, ref.rgb)), None
