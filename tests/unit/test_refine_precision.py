"""The refiner's opt-in bf16 CPU inference: off by default (float32, what the quality figures use), and
when on, within a couple of 8-bit levels of float32, on the untiled and the tiled path."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_synthetic import pair

from llie.method.pipeline import Enhancer
from llie.method.refine import TilingConfig, refine

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def refiner():
    return Enhancer.load(None, device="cpu").bundle.refiner


def test_bf16_is_off_by_default():
    assert TilingConfig().cpu_bf16 is False


@pytest.mark.parametrize("tiling", [TilingConfig(), TilingConfig(tile=160, overlap=80, max_side=160, batch=2)])
def test_bf16_stays_within_two_levels_of_float32(refiner, tiling):
    import torch

    image = pair(200, 120, seed=7)[0] * 3.0  # stage-3-like brightness
    image = np.clip(image, 0, 1).astype(np.float32)
    device = torch.device("cpu")
    fp32 = refine(refiner, image, device, tiling)
    bf16 = refine(refiner, image, device, TilingConfig(**{**tiling.__dict__, "cpu_bf16": True}))
    levels = np.abs(np.rint(fp32 * 255) - np.rint(bf16 * 255))
    assert levels.max() <= 3 and levels.mean() < 0.5
    assert not np.array_equal(fp32, bf16)  # bf16 did run
    np.testing.assert_array_equal(refine(refiner, image, device, tiling), fp32)  # float32 is deterministic
