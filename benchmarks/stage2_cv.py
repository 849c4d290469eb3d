"""Stage 2 with and without error weighting, and bagged, in scene-grouped cross-validation on LOL-v1 our485.

Mean and median stage-3 PSNR of out-of-fold predictions over every pair, for a few seeds (each seed
draws its own folds, augmentation rows and trees). The weighted fit is what ``llie train`` does: an
unweighted out-of-fold pass measures each pair's error, then the folds are refit with weights 1 / error.
With ``--bag N`` (N > 1) the weighted folds are also fit as a bag of N members, each on its own rows and
trees, and the paired difference to one model gets a 95% bootstrap interval. About 12 minutes on two
cores with one model, 4 more per extra member; not part of ``make bench``:

    python -m benchmarks.stage2_cv [--data ../shared/datasets/LOL-v1] [--seeds 3] [--folds 5] [--bag 4]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .common import REPO


def cross_validate(data: Path, seeds: int, folds: int, threads: int | None, bag: int = 1) -> dict:
    from llie.data import load_pairs, resolve_training_sets
    from llie.quantiles import QuantileModelConfig
    from llie.stats import bootstrap_interval
    from llie.train import TrainConfig, bag_rows, inverse_errors, out_of_fold_quantiles

    pairs, _ = resolve_training_sets(data)
    lows, highs = load_pairs(pairs)
    bagged = f"weighted, bag of {bag}"
    results = {"unweighted": [], "weighted": [], **({bagged: []} if bag > 1 else {})}
    gains = []
    for seed in tqdm(range(seeds), desc="seeds"):
        cfg = TrainConfig(data=str(data), output="", seed=seed, oof_folds=folds, threads=threads,
                          quantile=QuantileModelConfig(seed=seed, bag=bag))
        row_sets = bag_rows(pairs, lows, highs, cfg.quantile, seed, progress=False)
        plain = out_of_fold_quantiles(pairs, row_sets[:1], cfg, None, progress=False)
        plain_errors = inverse_errors(lows, highs, plain)  # the weights, and the unweighted score
        scores = {"unweighted": plain_errors,
                  "weighted": inverse_errors(lows, highs, out_of_fold_quantiles(pairs, row_sets[:1], cfg, plain_errors,
                                                                                 progress=False))}
        if bag > 1:
            scores[bagged] = inverse_errors(lows, highs, out_of_fold_quantiles(pairs, row_sets, cfg, plain_errors,
                                                                               progress=False))
            gains.append(10 * np.log10(scores[bagged] / scores["weighted"]))
        for name, errors in scores.items():
            p = 10 * np.log10(errors)  # stage-3 PSNR per pair: inverse_errors is 1 / MSE, data range 1
            results[name].append({"seed": seed, "mean": float(p.mean()), "median": float(np.median(p))})
    report = {"data": str(data), "pairs": len(pairs), "scenes": len({p.group for p in pairs}), "folds": folds,
              "results": results}
    if gains:  # per pair, averaged over seeds: the seeds share the pairs, not the folds
        gain = np.mean(gains, axis=0)
        report["bag_gain"] = {"mean": float(gain.mean()), "interval": list(bootstrap_interval(gain)),
                              "better": int((gain > 0).sum()), "worse": int((gain < 0).sum())}
    return report


def table(report: dict) -> str:
    lines = [f"{report['pairs']} pairs, {report['scenes']} scenes, {report['folds']} scene-grouped folds; "
             "out-of-fold stage-3 PSNR (dB)", "", "| stage 2 | seed | mean | median |", "|---|---|---|---|"]
    for name, runs in report["results"].items():
        for r in runs:
            lines.append(f"| {name} | {r['seed']} | {r['mean']:.2f} | {r['median']:.2f} |")
        lines.append(f"| **{name}, mean over seeds** | | **{np.mean([r['mean'] for r in runs]):.2f}** | "
                     f"**{np.mean([r['median'] for r in runs]):.2f}** |")
    if "bag_gain" in report:
        g = report["bag_gain"]
        lines += ["", f"bag minus one model, per pair over the seeds: {g['mean']:+.3f} dB, 95% interval "
                      f"{g['interval'][0]:+.3f} to {g['interval'][1]:+.3f}; {g['better']} pairs better, {g['worse']} worse"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "LOL-v1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bag", type=int, default=1, help="Also score a bag of this many members (default: off).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    report = cross_validate(args.data, args.seeds, args.folds, args.threads, args.bag)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
