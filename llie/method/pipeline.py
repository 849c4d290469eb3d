"""The four stages in order, from a model bundle: what every front end (CLI, tasks) calls."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from llie.method.bundle import Bundle, load_bundle
from llie.method.features import extract_features
from llie.method.mapping import infer_levels
from llie.method.policy import AfterRefiner, finish_under_policy, map_under_policy, refine_under_policy
from llie.method.refine import TilingConfig, cpu_has_native_bf16, refine, resolve_device, tiling_for_precision
from llie.method.working_size import WorkingSize, carry_to_full_size, working_copy

STAGES = ("hist", "full")

_log = logging.getLogger(__name__)


@dataclass
class EnhanceResult:
    image: np.ndarray  # float32 HxWx3 in [0, 1]
    quantiles: np.ndarray  # (3, 21) predicted percentile values of the well-lit image
    seconds: dict[str, float] = field(default_factory=dict)
    unchanged: bool = False  # no stage changed a pixel: ``image`` is the input, which a writer may copy as it is
    # share of stage 2's predicted brightness the capture gate kept (1: the photo's own; 1 without a gate)
    exposure_kept: float = 1.0


def set_threads(n: int) -> None:
    """Cap torch's intra-op threads and numpy's BLAS threads so several workers on one machine do not
    oversubscribe its cores."""
    import torch

    torch.set_num_threads(max(1, int(n)))
    cap_blas_threads(n)


def cap_blas_threads(n: int) -> None:
    """Cap the threads of numpy's BLAS (its matrix products over a photo's pixels). Photos enhanced side
    by side would otherwise each wake a BLAS pool as large as the machine, whose spinning threads take
    the cores from the other photos' work."""
    threadpool_limits(max(1, int(n)), user_api="blas")


class Enhancer:
    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        tiling: TilingConfig = TilingConfig(),
        working: WorkingSize = WorkingSize(),
    ):
        self.bundle = bundle
        # without a refiner there is nothing for torch to run: stages 1-3 alone never import it
        self.device = resolve_device(device) if bundle.refiner is not None else None
        self.tiling = tiling
        self.working = working
        if bundle.refiner is not None:
            bundle.refiner.to(self.device).eval()
            if tiling.cpu_bf16 and self.device.type == "cpu" and not cpu_has_native_bf16():
                _log.warning(
                    "refiner precision bf16: this CPU has no native bf16 support (AVX-512 BF16 or AMX), so the "
                    "refiner runs emulated bf16, slower than float32 rather than faster (float32 is the better choice here)"
                )

    @classmethod
    def load(
        cls,
        bundle: str | Path | None = None,
        device: str = "auto",
        threads: int | None = None,
        refiner: bool = True,
        precision: str = "float32",
    ) -> Enhancer:
        """Load a bundle directory (None: the default model shipped in the package); ``refiner=False``
        leaves stage 4 out (every file is still checked), for stages 1-3 without torch. ``precision``:
        the refiner's arithmetic on CPU (``llie.method.refine.REFINER_PRECISIONS``); CUDA always uses fp16."""
        tiling = tiling_for_precision(precision)
        if threads is not None:
            (set_threads if refiner else cap_blas_threads)(threads)
        return cls(load_bundle(bundle, n_threads=threads, refiner=refiner), device=device, tiling=tiling)

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    def enhance(
        self, rgb: np.ndarray, stages: str = "full", levels: int | None = None, mask: np.ndarray | None = None
    ) -> EnhanceResult:
        """Enhance an HxWx3 float image in [0, 1].

        ``stages="hist"`` stops after histogram mapping (stages 1-3); ``"full"`` adds the refiner.
        ``levels`` is the input's number of code values (256 or 65536); None infers it.
        ``mask``, HxW boolean, marks the pixels whose histogram stages 1-3 follow (a photo's opaque ones,
        ``DecodedImage.opaque``); None, or a mask with no pixel set, counts them all.
        """
        if stages not in STAGES:
            raise ValueError(f"stages must be one of {STAGES}, not {stages!r}")
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got shape {rgb.shape}")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != rgb.shape[:2]:
                raise ValueError(f"mask of shape {mask.shape} does not fit an image of {rgb.shape[:2]}")
            mask = mask if mask.any() else None
        # NaN would be cast to level 0 and poison the features; a sum finds one without a 24 MP mask
        if not np.isfinite(np.sum(rgb, dtype=np.float64)):
            raise ValueError("the image holds NaN or infinite values")
        if max(rgb.shape[:2]) > self.working.long_side:  # enhanced at the working size: llie.method.working_size
            return self._enhance_at_working_size(rgb, stages, levels or infer_levels(rgb), mask)
        seconds = {}
        t = time.perf_counter()
        features = extract_features(rgb, mask, self.bundle.quantile_model.config.features)
        seconds["features"] = time.perf_counter() - t

        t = time.perf_counter()
        quantiles, keep = self.bundle.predict_quantiles(features)
        seconds["quantiles"] = time.perf_counter() - t

        t = time.perf_counter()
        policy = self.bundle.policy
        mapped, share = map_under_policy(rgb, quantiles, self.bundle.mapping, policy, levels or infer_levels(rgb), mask)
        unchanged = share == 0
        seconds["mapping"] = time.perf_counter() - t

        t = time.perf_counter()
        if stages == "full" and self.bundle.refiner is not None:
            after = AfterRefiner(keep, self.bundle.detail)
            refined = refine_under_policy(rgb, mapped, self.refine_mapped, policy, mask, after)
            unchanged = unchanged and refined is mapped  # the policy left the refiner out too
            mapped = refined
        image = np.clip(mapped, 0.0, 1.0)
        if not unchanged:  # the guard's turned-back pixels stay in [0, 1]: one clip serves both
            image = finish_under_policy(rgb, image, policy, mask)
        seconds["refiner"] = time.perf_counter() - t
        return EnhanceResult(image, quantiles, seconds, unchanged, float(keep))

    def refine_mapped(self, mapped: np.ndarray) -> np.ndarray:
        """Stage 4: the bundle's local gain (if it has one, on the CPU: it is tiny), then the refiner."""
        if self.bundle.illumination is not None:
            from llie.method.illumination import relight  # torch, as the refiner: not for stages 1-3

            mapped = relight(self.bundle.illumination, mapped)
        return refine(self.bundle.refiner, mapped, self.device, self.tiling)

    def _enhance_at_working_size(
        self, rgb: np.ndarray, stages: str, levels: int, mask: np.ndarray | None
    ) -> EnhanceResult:
        """All stages on the photo's working copy, the result carried back to full size (llie.method.working_size)."""
        t = time.perf_counter()
        small, small_mask = working_copy(rgb, levels, mask, self.working)
        seconds = {"downscale": time.perf_counter() - t}
        result = self.enhance(small, stages=stages, levels=levels, mask=small_mask)
        if result.unchanged:  # the photo as it is, not its affine fit to itself
            return replace(result, image=rgb.astype(np.float32, copy=False), seconds=seconds | result.seconds)
        t = time.perf_counter()
        image = carry_to_full_size(rgb, small, result.image, self.working)
        seconds = {**seconds, **result.seconds, "upsample": time.perf_counter() - t}
        return replace(result, image=image, seconds=seconds)
