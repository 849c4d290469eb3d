"""The refiner in bfloat16 on CPU (``TilingConfig(cpu_bf16=True)``): how much faster, and what it costs
in quality, paired per image on a paired set.

Each photo goes through the full pipeline twice, float32 (the default) and bf16, and both outputs are
scored (8-bit, plain PSNR/SSIM, ``llie.training.evaluate.score``) against the reference; the report
gives the mean paired difference with its bootstrap interval, how many photos got better and worse,
and how far the outputs differ in 8-bit levels. Speed: the refiner's own seconds per photo
(``EnhanceResult.seconds``), torch on one thread as a Dask worker runs it, the two precisions taking
turns photo by photo; process CPU seconds beside wall time. About a minute for eval15; not part of
``make bench``:

    python -m benchmarks.precision [--data ../shared/datasets/LOL-v1/eval15] [--model BUNDLE] [--json F]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .common import REPO, worker_threads

EVAL15 = REPO.parent / "shared" / "datasets" / "LOL-v1" / "eval15"


def precision_report(data: Path, model: str | None = None, max_pairs: int | None = None, threads: int = 1) -> dict:
    from llie.method.pipeline import Enhancer
    from llie.method.refine import TilingConfig
    from llie.stats import paired_difference
    from llie.training.data import find_pairs, load_rgb
    from llie.training.evaluate import score

    fp32 = Enhancer.load(model)
    bf16 = Enhancer(fp32.bundle, device="cpu", tiling=TilingConfig(cpu_bf16=True))
    pairs = find_pairs(data)[:max_pairs]
    rows = []
    with worker_threads(threads):
        for pair in pairs:
            low, high = load_rgb(pair.low), load_rgb(pair.high)
            row: dict = {"name": pair.name}
            outputs = {}
            for name, enhancer in (("fp32", fp32), ("bf16", bf16)):
                enhancer.enhance(low)  # first-call costs of this size out of the timing
                t, cpu = time.perf_counter(), time.process_time()
                result = enhancer.enhance(low)
                row[f"{name}_s"] = time.perf_counter() - t
                row[f"{name}_cpu_s"] = time.process_time() - cpu
                row[f"{name}_refiner_s"] = result.seconds["refiner"]
                row.update({f"{name}_{k}": v for k, v in score(result.image, high).items()})
                outputs[name] = np.rint(result.image * 255)
            levels = np.abs(outputs["bf16"] - outputs["fp32"])
            row["max_level_difference"] = float(levels.max())
            row["share_of_values_moved"] = float(np.mean(levels > 0))
            rows.append(row)
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    return {
        "data": str(data),
        "pairs": len(rows),
        "torch_threads": threads,
        "psnr": {"fp32": mean("fp32_psnr"), "bf16": mean("bf16_psnr")},
        "ssim": {"fp32": mean("fp32_ssim"), "bf16": mean("bf16_ssim")},
        "psnr_difference": paired_difference([r["bf16_psnr"] - r["fp32_psnr"] for r in rows]),
        "ssim_difference": paired_difference([r["bf16_ssim"] - r["fp32_ssim"] for r in rows]),
        "refiner_s": {"fp32": mean("fp32_refiner_s"), "bf16": mean("bf16_refiner_s")},
        "pipeline_cpu_s": {"fp32": mean("fp32_cpu_s"), "bf16": mean("bf16_cpu_s")},
        "refiner_speedup": mean("fp32_refiner_s") / mean("bf16_refiner_s"),
        "max_level_difference": max(r["max_level_difference"] for r in rows),
        "mean_share_of_values_moved": mean("share_of_values_moved"),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=EVAL15)
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-pairs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: as a Dask worker)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with open("/proc/loadavg") as fh:
        load_before = fh.read().split()[:3]
    report = precision_report(args.data, args.model, args.max_pairs, args.threads)
    with open("/proc/loadavg") as fh:
        report["load_average"] = {"before": load_before, "after": fh.read().split()[:3]}
    d = report["psnr_difference"]
    print(
        f"{report['pairs']} pairs of {args.data}, torch threads {args.threads}, load {report['load_average']}\n"
        f"PSNR fp32 {report['psnr']['fp32']:.3f} dB, bf16 {report['psnr']['bf16']:.3f} dB; paired difference "
        f"{d['difference']:+.3f} dB (95% {d['interval'][0]:+.3f} to {d['interval'][1]:+.3f}), "
        f"{d['better']} better, {d['worse']} worse\n"
        f"SSIM fp32 {report['ssim']['fp32']:.4f}, bf16 {report['ssim']['bf16']:.4f}\n"
        f"refiner s/photo fp32 {report['refiner_s']['fp32']:.3f}, bf16 {report['refiner_s']['bf16']:.3f} "
        f"({report['refiner_speedup']:.2f}x); pipeline CPU s/photo fp32 {report['pipeline_cpu_s']['fp32']:.3f}, "
        f"bf16 {report['pipeline_cpu_s']['bf16']:.3f}\n"
        f"outputs differ by up to {report['max_level_difference']:.0f} levels, "
        f"{100 * report['mean_share_of_values_moved']:.1f} % of values moved"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
