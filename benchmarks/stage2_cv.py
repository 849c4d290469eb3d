"""Stage 2 with and without error weighting, in scene-grouped cross-validation on LOL-v1 our485.

Mean and median stage-3 PSNR of out-of-fold predictions over every pair, for a few seeds (each seed
draws its own folds, augmentation rows and trees). The weighted fit is what ``llie train`` does: an
unweighted out-of-fold pass measures each pair's error, then the folds are refit with weights 1 / error.
A few minutes on two cores; not part of ``make bench``:

    python -m benchmarks.stage2_cv [--data ../shared/datasets/LOL-v1] [--seeds 3] [--folds 5]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .common import REPO


def cross_validate(data: Path, seeds: int, folds: int, threads: int | None) -> dict:
    from llie.data import load_pairs, resolve_training_sets
    from llie.quantiles import QuantileModelConfig
    from llie.train import TrainConfig, inverse_errors, out_of_fold_quantiles, pair_rows

    pairs, _ = resolve_training_sets(data)
    lows, highs = load_pairs(pairs)
    results = {"unweighted": [], "weighted": []}
    for seed in tqdm(range(seeds), desc="seeds"):
        cfg = TrainConfig(data=str(data), output="", seed=seed, oof_folds=folds, threads=threads,
                          quantile=QuantileModelConfig(seed=seed))
        rows = pair_rows(pairs, lows, highs, cfg.quantile, seed, progress=False)
        plain = out_of_fold_quantiles(pairs, rows, cfg, None, progress=False)
        plain_errors = inverse_errors(lows, highs, plain)  # the weights, and the unweighted score
        weighted = out_of_fold_quantiles(pairs, rows, cfg, plain_errors, progress=False)
        for name, errors in (("unweighted", plain_errors), ("weighted", inverse_errors(lows, highs, weighted))):
            p = 10 * np.log10(errors)  # stage-3 PSNR per pair: inverse_errors is 1 / MSE, data range 1
            results[name].append({"seed": seed, "mean": float(p.mean()), "median": float(np.median(p))})
    return {"data": str(data), "pairs": len(pairs), "scenes": len({p.group for p in pairs}), "folds": folds,
            "results": results}


def table(report: dict) -> str:
    lines = [f"{report['pairs']} pairs, {report['scenes']} scenes, {report['folds']} scene-grouped folds; "
             "out-of-fold stage-3 PSNR (dB)", "", "| stage 2 | seed | mean | median |", "|---|---|---|---|"]
    for name, runs in report["results"].items():
        for r in runs:
            lines.append(f"| {name} | {r['seed']} | {r['mean']:.2f} | {r['median']:.2f} |")
        lines.append(f"| **{name}, mean over seeds** | | **{np.mean([r['mean'] for r in runs]):.2f}** | "
                     f"**{np.mean([r['median'] for r in runs]):.2f}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "LOL-v1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    report = cross_validate(args.data, args.seeds, args.folds, args.threads)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
