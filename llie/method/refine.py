"""Running the refiner over images of any size with bounded memory.

Mirror padding, overlapping tiles blended with linear ramps above ``max_side``, one whole-image
context for all tiles, and an optional self-ensemble over flips and rotations.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a refiner runs: stages 1-3 alone never load it
    import torch

    from llie.method.refiner import Refiner


@dataclass(frozen=True)
class TilingConfig:
    tile: int = 640  # pixels per tile side (multiple of the refiner's 80)
    overlap: int = 80  # pixels shared by neighbouring tiles, blended
    max_side: int = 1280  # images whose padded sides both fit go through untiled
    batch: int = 4  # tiles per forward pass
    # CPU inference under bfloat16 autocast: faster, but its output moves by a level or two, so it is
    # off unless asked for (speed and paired quality: docs/benchmarks.md)
    cpu_bf16: bool = False


# what a user asks for (``llie enhance/run --refiner-precision``): float32, or bf16 autocast on CPU
REFINER_PRECISIONS = ("float32", "bf16")


def check_precision(precision: str, name: str = "refiner precision") -> str:
    """``precision`` when it is one of ``REFINER_PRECISIONS``; else a ValueError that calls it ``name``."""
    if precision not in REFINER_PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(REFINER_PRECISIONS)}, not {precision!r}")
    return precision


def tiling_for_precision(precision: str, tiling: TilingConfig = TilingConfig()) -> TilingConfig:
    """``tiling`` with the refiner's CPU arithmetic set to ``precision`` (one of ``REFINER_PRECISIONS``)."""
    return replace(tiling, cpu_bf16=check_precision(precision) == "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 BF16, AMX); without them bf16 is emulated, slower
    than float32."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: a torch without it gives no answer, so no promise
        return False


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pad_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    # symmetric padding copes with pads larger than the image (a 1x1 input), unlike reflect
    return np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="symmetric") if ph or pw else rgb


@contextmanager
def _inference(device: torch.device, cpu_bf16: bool = False):
    """No autograd; fp16 autocast on CUDA (within an 8-bit level of CPU, see tests/unit/test_cuda.py),
    bf16 autocast on CPU when asked for (``TilingConfig.cpu_bf16``)."""
    import torch

    if device.type == "cuda":
        autocast = torch.autocast("cuda", dtype=torch.float16)
    else:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16)
    with torch.inference_mode(), autocast:
        yield


def _forward(
    model: Refiner,
    batch: np.ndarray,
    device: torch.device,
    context: torch.Tensor | None = None,
    bf16: bool = False,
    keep: tuple[int, int] | None = None,
) -> np.ndarray:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(device)
    if context is not None:
        context = context.expand(len(batch), -1)
    with _inference(device, bf16):
        return model(x, context, keep).float().clamp_(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def _whole_image_context(
    model: Refiner, padded: np.ndarray, device: torch.device, max_side: int, bf16: bool = False
) -> torch.Tensor:
    """The context of a photo too large for one pass, from a copy box-averaged to at most ``max_side``."""
    import torch

    factor = -(-max(padded.shape[:2]) // max_side)
    h, w = padded.shape[0] // factor * factor, padded.shape[1] // factor * factor
    band = factor * 64  # averaged band by band: a reshape of a cropped view copies, and a 24 MP copy is 288 MB
    small = np.concatenate(
        [
            padded[y : min(y + band, h), :w]
            .reshape(-1, factor, w // factor, factor, 3)
            .mean(axis=(1, 3), dtype=np.float32)
            for y in range(0, h, band)
        ]
    )
    small = _pad_to_multiple(small, model.cfg.multiple)
    x = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1)[None])).to(device)
    with _inference(device, bf16):
        return model.image_context(x).float()


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def _ramp(tile: int, overlap: int) -> np.ndarray:
    ramp = np.ones(tile, np.float32)
    if overlap:
        edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        ramp[:overlap], ramp[-overlap:] = edge, edge[::-1]
    return ramp


# Copies averaged for each ensemble size: flips first, which keep a landscape photo landscape (same
# tiling, same padding cost), then the two rotations by 90 degrees and their flips.
ENSEMBLE_TRANSFORMS = {1: (0,), 2: (0, 4), 4: (0, 4, 2, 6), 8: (0, 4, 2, 6, 1, 5, 3, 7)}


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """The k-th (0-7) of the eight rotations and flips of an HxWxC array, as a view; k=0 is ``a``."""
    a = np.rot90(a, k % 4)
    return a[:, ::-1] if k >= 4 else a


def undo_dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """Inverse of ``dihedral``: ``undo_dihedral(dihedral(a, k), k)`` is ``a``."""
    a = a[:, ::-1] if k >= 4 else a
    return np.rot90(a, -(k % 4))


def refine(
    model: Refiner, rgb: np.ndarray, device: torch.device, tiling: TilingConfig = TilingConfig(), ensemble: int = 1
) -> np.ndarray:
    """Refine an HxWx3 float image in [0, 1]; returns float32 of the same size.

    ``ensemble`` (1, 2, 4 or 8): number of flipped/rotated copies whose refinements are averaged."""
    if ensemble not in ENSEMBLE_TRANSFORMS:
        raise ValueError(f"ensemble must be one of {sorted(ENSEMBLE_TRANSFORMS)}, not {ensemble!r}")
    if ensemble == 1:
        return _refine_once(model, rgb, device, tiling)
    out = np.zeros(rgb.shape[:2] + (3,), np.float32)
    for k in ENSEMBLE_TRANSFORMS[ensemble]:
        out += undo_dihedral(_refine_once(model, dihedral(rgb, k), device, tiling), k)  # one accumulator
    out /= ensemble
    return out


def _refine_once(model: Refiner, rgb: np.ndarray, device: torch.device, tiling: TilingConfig) -> np.ndarray:
    h, w = rgb.shape[:2]
    padded = _pad_to_multiple(rgb.astype(np.float32, copy=False), model.cfg.multiple)
    ph, pw = padded.shape[:2]
    if ph <= tiling.max_side and pw <= tiling.max_side:
        return _forward(model, padded[None], device, bf16=tiling.cpu_bf16, keep=(h, w))[0]

    tile, step = tiling.tile, tiling.tile - tiling.overlap
    padded = _pad_to_multiple(padded, tile) if min(ph, pw) < tile else padded
    ph, pw = padded.shape[:2]
    context = (
        _whole_image_context(model, padded, device, tiling.max_side, tiling.cpu_bf16)
        if model.cfg.global_context
        else None
    )
    out = np.zeros((ph, pw, 3), np.float32)
    weight = np.zeros((ph, pw, 1), np.float32)
    ramp = _ramp(tile, tiling.overlap)
    window = (ramp[:, None] * ramp[None, :])[..., None]
    corners = [(y, x) for y in _starts(ph, tile, step) for x in _starts(pw, tile, step)]
    for i in range(0, len(corners), tiling.batch):
        group = corners[i : i + tiling.batch]
        tiles = np.stack([padded[y : y + tile, x : x + tile] for y, x in group])
        refined = _forward(model, tiles, device, context, tiling.cpu_bf16)
        for (y, x), patch in zip(group, refined):
            out[y : y + tile, x : x + tile] += patch * window
            weight[y : y + tile, x : x + tile] += window
    out /= weight
    return out[:h, :w]
