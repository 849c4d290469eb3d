"""PSNR/SSIM of the shipped model per stage on LOL-v1 eval15, next to classic baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import REPO
from .stages import _clahe_lab, _he_v

EVAL15 = REPO.parent / "shared" / "datasets" / "LOL-v1" / "eval15"


def quality(model: str | None = None, data: Path = EVAL15, max_pairs: int | None = None) -> dict:
    if not (data / "low").is_dir() or not (data / "high").is_dir():
        return {"skipped": True, "note": f"{data} not found: quality section skipped"}
    from llie.stats import bootstrap_interval
    from llie.training.data import find_pairs, load_rgb
    from llie.training.evaluate import evaluate_pairs, score

    pairs = find_pairs(data)[:max_pairs]
    report = evaluate_pairs(model, pairs, progress=False)
    baselines = {"opencv_clahe_L": _clahe_lab, "he_V": _he_v}
    sums = {name: {"psnr": [], "ssim": []} for name in baselines}
    for pair in pairs:
        low, high = load_rgb(pair.low), load_rgb(pair.high)
        for name, fn in baselines.items():
            s = score(fn(low), high)
            sums[name]["psnr"].append(s["psnr"])
            sums[name]["ssim"].append(s["ssim"])
    mean = report["mean"]
    methods = {"input (unchanged)": ("input_psnr", "input_ssim"), "llie stages 1-3": ("stage3_psnr", "stage3_ssim")}
    if "stage4_psnr" in mean:
        methods["llie full (stage 4)"] = ("stage4_psnr", "stage4_ssim")
    # 95% bootstrap interval of each mean PSNR: on 15 images it is about +-2 dB, which the table should show
    rows = {
        name: {"psnr": mean[p], "ssim": mean[s], "psnr_interval": report["interval"].get(p)}
        for name, (p, s) in methods.items()
    }
    for name, vals in sums.items():
        rows[name] = {
            "psnr": float(np.mean(vals["psnr"])),
            "ssim": float(np.mean(vals["ssim"])),
            "psnr_interval": list(bootstrap_interval(vals["psnr"])),
        }
    return {
        "skipped": False,
        "data": str(data.relative_to(REPO.parent)) if data.is_relative_to(REPO.parent) else str(data),
        "pairs": len(pairs),
        "protocol": "8-bit output, plain PSNR/SSIM (no GT-mean), llie.training.evaluate.score",
        "model_version": report["model_version"],
        "methods": rows,
    }
