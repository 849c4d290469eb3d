"""Per-stage quality of a bundle on a paired set, with the plain protocol (8-bit output, no GT-mean)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .data import Pair, load_rgb
from .metrics import psnr, quantize8, ssim
from .pipeline import Enhancer


def score(output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM of the 8-bit image a user would get, against the reference."""
    out8 = quantize8(output) / 255.0
    return {"psnr": psnr(out8, reference), "ssim": ssim(out8, reference)}


def evaluate_pairs(bundle: str | Path | None, pairs: list[Pair], device: str = "auto", progress: bool = True) -> dict:
    """Rows per pair with input, stage-3 and stage-4 scores, and their means."""
    enhancer = Enhancer.load(bundle, device=device)
    rows = []
    for pair in tqdm(pairs, desc="evaluate", disable=not progress):
        low, high = load_rgb(pair.low), load_rgb(pair.high)
        hist = enhancer.enhance(low, stages="hist").image
        row = {"name": pair.name}
        for stage, image in (("input", low), ("stage3", hist)):
            row.update({f"{stage}_{k}": v for k, v in score(image, high).items()})
        if enhancer.bundle.refiner is not None:
            full = enhancer.enhance(low, stages="full").image
            row.update({f"stage4_{k}": v for k, v in score(full, high).items()})
        rows.append(row)
    keys = [k for k in rows[0] if k != "name"] if rows else []
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return {"rows": rows, "mean": mean, "model_version": enhancer.model_version}


def format_table(report: dict) -> str:
    rows, mean = report["rows"], report["mean"]
    keys = list(mean)
    lines = ["| image | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    fmt = lambda k, v: f"{v:.3f}" if "ssim" in k else f"{v:.2f}"
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(fmt(k, r[k]) for k in keys) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{fmt(k, mean[k])}**" for k in keys) + " |")
    return "\n".join(lines)
