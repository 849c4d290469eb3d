"""Single-process throughput: each stage on its own, then the whole pipeline against two references.

Every stage is timed on its own input, precomputed by the stages before it, so one slow stage
does not blur the others. Images are synthetic (benchmarks.common) and PNG-coded in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .common import median_time, summarise_times, synthetic_pair, to_png

STAGE_NAMES = ("decode", "features", "quantiles", "mapping", "refiner", "metrics", "encode")


@dataclass(frozen=True)
class Size:
    name: str
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def _metrics(before: np.ndarray, after: np.ndarray, reference: np.ndarray) -> None:
    """What the archive records per image: no-reference stats before and after, PSNR/SSIM vs reference."""
    from llie.metrics import no_reference_stats, psnr, ssim

    no_reference_stats(before)
    no_reference_stats(after)
    psnr(after, reference)
    ssim(after, reference)


def stage_throughput(enhancer, size: Size, repeats: int, n_images: int = 1) -> dict:
    """Megapixels per second of every stage at ``size`` (median over ``repeats`` passes)."""
    from llie.batch.imageio import decode_image, encode_image
    from llie.method.features import extract_features
    from llie.method.mapping import infer_levels, match_to_quantiles
    from llie.method.refine import refine

    pairs = [synthetic_pair(size.width, size.height, seed=100 + i) for i in range(n_images)]
    pngs = [to_png(low) for low, _ in pairs]
    decoded = [decode_image(b) for b in pngs]
    feature_set = enhancer.bundle.quantile_model.config.features
    feats = [extract_features(d.rgb, feature_set=feature_set) for d in decoded]
    quants = [enhancer.bundle.predict_quantiles(f)[0] for f in feats]
    levels = [infer_levels(d.rgb) for d in decoded]
    mapping = enhancer.bundle.mapping
    mapped = [match_to_quantiles(d.rgb, q, mapping, lv) for d, q, lv in zip(decoded, quants, levels)]
    refiner = enhancer.bundle.refiner

    def _refine(m):
        return refine(refiner, m, enhancer.device, enhancer.tiling) if refiner is not None else m

    refined = [np.clip(_refine(m), 0.0, 1.0) for m in mapped]
    references = [clean for _, clean in pairs]

    work = {
        "decode": lambda i: decode_image(pngs[i]),
        "features": lambda i: extract_features(decoded[i].rgb, feature_set=feature_set),
        "quantiles": lambda i: enhancer.bundle.predict_quantiles(feats[i]),
        "mapping": lambda i: match_to_quantiles(decoded[i].rgb, quants[i], mapping, levels[i]),
        "refiner": lambda i: _refine(mapped[i]),
        "metrics": lambda i: _metrics(decoded[i].rgb, refined[i], references[i]),
        "encode": lambda i: encode_image(refined[i], like=decoded[i]),
    }
    out = {}
    for stage in STAGE_NAMES:
        fn = work[stage]
        timing = median_time(lambda: [fn(i) for i in range(n_images)], repeats=repeats, warmup=1)  # noqa: B023
        per_image = timing["median_s"] / n_images
        out[stage] = {
            "megapixels_per_s": size.megapixels / per_image,
            "ms_per_image": per_image * 1e3,
            "spread_ms": [timing["min_s"] / n_images * 1e3, timing["max_s"] / n_images * 1e3],
            "repeats": repeats,
        }
    total = sum(v["ms_per_image"] for v in out.values())
    for v in out.values():
        v["share_of_total"] = v["ms_per_image"] / total
    return {
        "size": f"{size.width}x{size.height}",
        "megapixels": size.megapixels,
        "images": n_images,
        "png_bytes_per_image": int(np.mean([len(b) for b in pngs])),
        "stages": out,
        "sum_ms_per_image": total,
    }


def _clahe_lab(rgb: np.ndarray) -> np.ndarray:
    """OpenCV CLAHE on L of LAB (clip 2, 8x8 tiles), 8-bit in and out, float [0, 1] returned."""
    import cv2

    u8 = np.rint(np.clip(rgb, 0, 1) * 255.0).astype(np.uint8)
    lab = cv2.cvtColor(u8, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    lab[..., 0] = clahe.apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB).astype(np.float32) / np.float32(255.0)


def _he_v(rgb: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of V in HSV (OpenCV), float [0, 1] returned."""
    import cv2

    u8 = np.rint(np.clip(rgb, 0, 1) * 255.0).astype(np.uint8)
    hsv = cv2.cvtColor(u8, cv2.COLOR_RGB2HSV)
    hsv[..., 2] = cv2.equalizeHist(hsv[..., 2])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32) / np.float32(255.0)


def _pillow_png(rgb: np.ndarray) -> bytes:
    """Pillow's PNG encoder at level 1 (a filter tried per row): the encode half of the issue's I/O floor."""
    import io

    from PIL import Image

    from llie.batch.imageio import _rgb_codes

    buf = io.BytesIO()
    Image.fromarray(_rgb_codes(rgb)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _bf16_twin(enhancer):
    """The same model with the refiner in bf16 on CPU (``TilingConfig.cpu_bf16``)."""
    from dataclasses import replace

    from llie.method.pipeline import Enhancer

    return Enhancer(
        enhancer.bundle,
        device=str(enhancer.device),
        tiling=replace(enhancer.tiling, cpu_bf16=True),
        working=enhancer.working,
    )


def _variants(enhancer) -> dict[str, tuple]:
    """The pipelines :func:`pipeline_throughput` times: name -> (X, encoder, threads: None = all cores)."""
    from llie.batch.imageio import encode_image

    bf16 = _bf16_twin(enhancer)
    llie_encode = lambda rgb, img: encode_image(rgb, like=img)  # noqa: E731
    pillow_encode = lambda rgb, img: _pillow_png(rgb)  # noqa: E731
    return {
        "io_floor": (lambda rgb: rgb, llie_encode, None),
        "io_floor_pillow": (lambda rgb: rgb, pillow_encode, None),
        "opencv_clahe": (_clahe_lab, llie_encode, None),
        "stages_1_3": (lambda rgb: enhancer.enhance(rgb, stages="hist").image, llie_encode, None),
        "full_pipeline": (lambda rgb: enhancer.enhance(rgb, stages="full").image, llie_encode, None),
        "full_pipeline_1_thread": (lambda rgb: enhancer.enhance(rgb, stages="full").image, llie_encode, 1),
        # opt-in, not the default: its output moves by a level or two (benchmarks/precision.py)
        "full_pipeline_1_thread_bf16": (lambda rgb: bf16.enhance(rgb, stages="full").image, llie_encode, 1),
    }


def _variant_figures(times: dict, cpu: dict, threads: dict, n_images: int, cores: int) -> dict:
    """Each variant's median pass as images/s and ms per image, against both I/O floors."""
    out = {}
    for name, ts in times.items():
        s = summarise_times(ts)
        out[name] = {
            "images_per_s": n_images / s["median_s"],
            "ms_per_image": s["median_s"] / n_images * 1e3,
            "cpu_ms_per_image": float(np.median(cpu[name])) / n_images * 1e3,
            "spread_images_per_s": [n_images / s["max_s"], n_images / s["min_s"]],
            "threads": threads[name] or cores,
        }
    floor, pillow_floor = out["io_floor"]["images_per_s"], out["io_floor_pillow"]["images_per_s"]
    for name in out:
        out[name]["fraction_of_io_floor"] = out[name]["images_per_s"] / floor
        out[name]["fraction_of_pillow_io_floor"] = out[name]["images_per_s"] / pillow_floor
    for name in ("full_pipeline_1_thread", "full_pipeline_1_thread_bf16"):
        out[name]["images_per_s_one_worker_per_core"] = out[name]["images_per_s"] * cores
    return out


def pipeline_throughput(enhancer, size: Size, n_images: int, passes: int, cores: int) -> dict:
    """Images per second of decode -> X -> encode for X in (nothing, CLAHE, stages 1-3, all stages).

    The variants run interleaved, pass after pass over the same in-memory PNGs, so drifting machine
    load hits them all alike; each variant's number is the median pass. Besides llie's own I/O floor
    (``llie.batch.imageio``, whose PNG writer is llie.batch.png) the floor the issue set its target
    against runs too: Pillow decode + Pillow's PNG encoder at level 1. The full pipeline runs on all
    cores in this process and on one thread (torch and the PNG writer), as one Dask worker per core
    runs it; ``cores`` x that is the flow's throughput if workers scale perfectly (the scaling
    section measures how near they come). Process CPU seconds per image are recorded beside wall time.
    """
    from llie.batch.imageio import decode_image

    from .common import worker_threads

    pngs = [to_png(synthetic_pair(size.width, size.height, seed=200 + i)[0]) for i in range(n_images)]
    variants = _variants(enhancer)

    def one_pass(fn, encode, threads) -> tuple[float, float]:
        with worker_threads(threads or cores):
            t, cpu = time.perf_counter(), time.process_time()
            for data in pngs:
                img = decode_image(data)
                encode(fn(img.rgb), img)
            return time.perf_counter() - t, time.process_time() - cpu

    for variant in variants.values():  # warm-up: first-call costs (allocator, torch kernels) out of the timings
        one_pass(*variant)
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(passes):
        for name, variant in variants.items():
            wall, used = one_pass(*variant)
            times[name].append(wall)
            cpu[name].append(used)
    out = _variant_figures(times, cpu, {k: v[2] for k, v in variants.items()}, n_images, cores)
    return {
        "size": f"{size.width}x{size.height}",
        "images": n_images,
        "passes": passes,
        "cores": cores,
        "variants": out,
    }
