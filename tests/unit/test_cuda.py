"""The refiner on CUDA (fp16 autocast) gives what it gives on CPU. Runs only where a GPU is present: CI
has none, so this file is skipped there; it was run on an H100 when the GPU path was changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llie.method.refine import TilingConfig, refine
from llie.method.refiner import Refiner, RefinerConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _refiner(global_context: bool) -> Refiner:
    torch.manual_seed(3)
    model = Refiner(RefinerConfig(dim=32, depth=2, heads=2, global_context=global_context))
    with torch.no_grad():
        model.head.weight.normal_(0, 0.05)
        if model.context is not None:
            model.context.mlp[-1].weight.normal_(0, 0.5)
        model.detail.net[-1].weight.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("global_context", [False, True])
@pytest.mark.parametrize(
    "tiling", [TilingConfig(), TilingConfig(tile=160, overlap=80, max_side=160, batch=8)], ids=["whole", "tiles"]
)
def test_cuda_matches_cpu_within_an_8_bit_step(global_context, tiling):
    model = _refiner(global_context)
    rgb = np.random.default_rng(0).random((401, 333, 3), dtype=np.float32)
    on_cpu = refine(model.to(CPU), rgb, CPU, tiling)
    on_gpu = refine(model.to(CUDA), rgb, CUDA, tiling)
    assert on_gpu.shape == on_cpu.shape == rgb.shape
    assert np.abs(on_gpu - on_cpu).max() < 1 / 255  # fp16 autocast: well under one 8-bit level
    assert np.abs(on_cpu - rgb).max() > 1e-3  # a real refinement was compared, not the identity
