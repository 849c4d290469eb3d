"""Stage 2 with and without error weighting, and bagged, in scene-grouped cross-validation on LOL-v1 our485.

Mean and median stage-3 PSNR of out-of-fold predictions over every pair, for a few seeds (each seed
draws its own folds, augmentation rows and trees). The weighted fit is what ``llie train`` does: an
unweighted out-of-fold pass measures each pair's error, then the folds are refit with weights 1 / error.
With ``--bag N`` (N > 1) the weighted folds are also fit as a bag of N members, each on its own rows and
trees, and the paired difference to one model gets a 95% bootstrap interval. ``--stage4`` also puts the
weighted predictions through a bundle's refiner (the shipped one by default) and splits the stage-4
difference into the pairs that refiner was validated on and those it was trained on. About 12 minutes
on two cores with one model, 4 more per extra member, 2 more per seed for stage 4; not part of
``make bench``:

    python -m benchmarks.stage2_cv [--data ../shared/datasets/LOL-v1] [--seeds 3] [--folds 5] [--bag 4] [--stage4]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .common import REPO


def _paired(differences: np.ndarray) -> dict:
    from llie.stats import paired_difference

    return {"pairs": len(differences), **paired_difference(differences)}


def _stage4_psnr(bundle, lows, highs, quantiles) -> np.ndarray:
    """Per-pair PSNR after the bundle's mapping and refiner, on the given stage-2 predictions."""
    import torch

    from llie.method.mapping import match_to_quantiles
    from llie.method.refine import refine
    from llie.metrics import psnr, quantize8

    out = []
    for low, high, q in zip(lows, highs, quantiles):
        refined = refine(bundle.refiner, match_to_quantiles(low, q, bundle.mapping), torch.device("cpu"))
        out.append(psnr(quantize8(refined) / 255.0, high))
    return np.array(out)


@dataclass(frozen=True)
class Study:
    """Which stage-2 fits to compare, on which set, how often."""

    data: Path
    seeds: int  # each draws its own folds, augmentation rows and trees
    folds: int
    threads: int | None
    bag: int = 1  # also score a bag of this many members (1: not)
    stage4: bool = False  # also score stage 4 through ``refiner_bundle``'s refiner
    refiner_bundle: Path | None = None  # None: the shipped model


def _seed_predictions(pairs, lows, highs, study: Study, seed: int) -> dict[str, np.ndarray]:
    """Out-of-fold stage-2 predictions of each variant (unweighted, weighted, bagged) for one seed."""
    from llie.method.quantiles import QuantileModelConfig
    from llie.training.stage2 import OutOfFold, bag_rows, inverse_errors, out_of_fold_quantiles

    oof = OutOfFold(QuantileModelConfig(seed=seed, bag=study.bag), study.folds, seed, study.threads)
    row_sets = bag_rows(pairs, lows, highs, oof.quantile, seed, progress=False)
    plain = out_of_fold_quantiles(pairs, row_sets[:1], oof, None, progress=False)
    weights = inverse_errors(lows, highs, plain)  # 1 / MSE of the unweighted fit
    predictions = {
        "unweighted": plain,
        "weighted": out_of_fold_quantiles(pairs, row_sets[:1], oof, weights, progress=False),
    }
    if study.bag > 1:
        predictions[_bagged(study)] = out_of_fold_quantiles(pairs, row_sets, oof, weights, progress=False)
    return predictions


def _bagged(study: Study) -> str:
    return f"weighted, bag of {study.bag}"


def cross_validate(study: Study) -> dict:
    """Out-of-fold stage-3 PSNR of each variant; with ``stage4`` also stage 4 through the refiner of
    ``refiner_bundle`` (default: the shipped model), split into the pairs its training held out for
    validation and those it trained on."""
    from llie.method.bundle import load_bundle
    from llie.training.data import load_pairs, resolve_training_sets
    from llie.training.stage2 import inverse_errors

    pairs, _ = resolve_training_sets(study.data)
    lows, highs = load_pairs(pairs)
    bundle = load_bundle(study.refiner_bundle, n_threads=study.threads) if study.stage4 else None
    results: dict[str, list] = {"unweighted": [], "weighted": [], **({_bagged(study): []} if study.bag > 1 else {})}
    per_pair: dict[tuple[str, int], list[np.ndarray]] = {}
    for seed in tqdm(range(study.seeds), desc="seeds"):
        for name, quantiles in _seed_predictions(pairs, lows, highs, study, seed).items():
            p = 10 * np.log10(inverse_errors(lows, highs, quantiles))  # stage-3 PSNR per pair, data range 1
            results[name].append({"seed": seed, "mean": float(p.mean()), "median": float(np.median(p))})
            per_pair.setdefault((name, 3), []).append(p)
            if bundle is not None and bundle.refiner is not None and name != "unweighted":
                p4 = _stage4_psnr(bundle, lows, highs, quantiles)
                results[name][-1]["stage4_mean"] = float(p4.mean())
                per_pair.setdefault((name, 4), []).append(p4)
    report = {
        "data": str(study.data),
        "pairs": len(pairs),
        "scenes": len({p.group for p in pairs}),
        "folds": study.folds,
        "results": results,
    }
    if study.bag > 1:
        report["bag_gain"] = _bag_gain(per_pair, _bagged(study), pairs, bundle)
    return report


def _bag_gain(per_pair: dict, bagged: str, pairs, bundle) -> list[dict]:
    """The bag's paired gain over one model, per pair averaged over seeds (the seeds share the pairs, not the
    folds): over all pairs at stage 3; with stage 4, on each side of the refiner's own validation split."""
    from llie.training.data import split_by_group

    gain = lambda stage: np.mean(per_pair[(bagged, stage)], axis=0) - np.mean(per_pair[("weighted", stage)], axis=0)
    gains = [{"stage": 3, "subset": "all pairs", **_paired(gain(3))}]
    if (bagged, 4) not in per_pair:
        return gains
    from llie.training.config import TrainConfig

    training = bundle.manifest.get("training", {}).get("config", {})
    defaults = TrainConfig(data="", output="")
    _, held_out = split_by_group(
        pairs, training.get("val_fraction", defaults.val_fraction), training.get("seed", defaults.seed)
    )
    held_names = {h.name for h in held_out}
    held = np.array([p.name in held_names for p in pairs])
    for stage in (3, 4):
        d = gain(stage)
        gains += [
            {"stage": stage, "subset": "the refiner's validation pairs", **_paired(d[held])},
            {"stage": stage, "subset": "the refiner's training pairs", **_paired(d[~held])},
        ]
    return gains


def table(report: dict) -> str:
    stage4 = any("stage4_mean" in r for runs in report["results"].values() for r in runs)
    lines = [
        f"{report['pairs']} pairs, {report['scenes']} scenes, {report['folds']} scene-grouped folds; "
        "out-of-fold PSNR (dB)",
        "",
        "| stage 2 | seed | stage 3 mean | stage 3 median |" + (" stage 4 mean |" if stage4 else ""),
        "|---|---|---|---|" + ("---|" if stage4 else ""),
    ]
    for name, runs in report["results"].items():
        for r in runs:
            extra = (f" {r['stage4_mean']:.2f} |" if "stage4_mean" in r else " |") if stage4 else ""
            lines.append(f"| {name} | {r['seed']} | {r['mean']:.2f} | {r['median']:.2f} |{extra}")
        s4 = [r["stage4_mean"] for r in runs if "stage4_mean" in r]
        extra = (f" **{np.mean(s4):.2f}** |" if s4 else " |") if stage4 else ""
        lines.append(
            f"| **{name}, mean over seeds** | | **{np.mean([r['mean'] for r in runs]):.2f}** | "
            f"**{np.mean([r['median'] for r in runs]):.2f}** |{extra}"
        )
    if "bag_gain" in report:
        lines += [
            "",
            "bag minus one model, per pair averaged over the seeds:",
            "",
            "| stage | pairs | mean difference dB | 95% interval | better / worse |",
            "|---|---|---|---|---|",
        ]
        for g in report["bag_gain"]:
            lines.append(
                f"| {g['stage']} | {g['subset']} ({g['pairs']}) | {g['difference']:+.3f} | "
                f"{g['interval'][0]:+.3f} to {g['interval'][1]:+.3f} | {g['better']} / {g['worse']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "LOL-v1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bag", type=int, default=1, help="Also score a bag of this many members (default: off).")
    parser.add_argument(
        "--stage4",
        nargs="?",
        const="default",
        default=None,
        metavar="BUNDLE",
        help="Also score stage 4 through this bundle's refiner (default: the shipped model).",
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    bundle = None if args.stage4 in (None, "default") else Path(args.stage4)
    study = Study(args.data, args.seeds, args.folds, args.threads, args.bag, args.stage4 is not None, bundle)
    report = cross_validate(study)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
