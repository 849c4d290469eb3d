"""What ``llie calibrate`` gains on an archive's other photos, out of fold: the evidence for its rule.

Stage 2 is fit in folds of scenes (with the bundle's stage-2 settings and, where the bundle has one, its
capture gate fit in each fold on the others), and every pair's stage-3 output is scored on the offsets of
``llie.training.calibrate.GRID`` (with gamma 1, or with each of ``--gammas``), against its target as it is,
re-exposed by each ``--taste`` (stops: an owner who wants the set darker or brighter than its references)
and re-toned by each ``--tone`` (a gamma on the references: lighter or deeper shadows, as a new capture
series' references differ). Then, per set and taste, many times over: ``n`` whole scenes are drawn as the
calibration pairs, a setting is fit to them, and its gain is measured on the set's other scenes, for the
fit written always and for ``fit_offset``'s rule (written where the interval of its out-of-scene gain lies
above 0). Also the mean gain the command would print against the gain realised, and how often its
interval held it.

For LOL our485 and SICE-pairs (658 pairs) and five tastes it takes about 7 minutes on two idle cores with
gamma 1 alone, 18 with the eight of ``GAMMAS`` that ``llie calibrate`` fits; not part of ``make bench``:

    python -m benchmarks.calibration --taste -0.5 --taste 0.5 --scenes 5 10 20
    python -m benchmarks.calibration --gammas 0.6 0.7 0.8 0.9 1 1.1 1.25 1.4 --tone 0.8 --tone 1.25
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .common import REPO


@dataclass(frozen=True)
class CalibrationStudy:
    data: list[Path]
    tastes: tuple[float, ...] = (-0.5, 0.5)  # stops by which the references are re-exposed, besides 0
    tones: tuple[float, ...] = ()  # gammas the references are raised to, besides 1
    scenes: tuple[int, ...] = (5, 10, 20)  # calibration scenes per draw
    gammas: tuple[float, ...] = (1.0,)  # gammas tried with each offset
    draws: int = 200
    folds: int = 5
    seed: int = 0
    model: Path | None = None
    threads: int | None = None
    progress: bool = True

    @property
    def targets(self) -> tuple[tuple[float, float], ...]:
        """The tastes scored, as (stops, gamma) on the references: as they are, each of ``tastes``, each of
        ``tones``."""
        return ((0.0, 1.0), *((t, 1.0) for t in self.tastes), *((0.0, g) for g in self.tones))


def taste_label(stops: float, gamma: float) -> str:
    """A taste as the report names it: its stops, or its gamma where it re-tones."""
    return f"{stops:+.2f}" if gamma == 1.0 else f"gamma {gamma:.2f}"


def psnr_tables(lows, highs, predictions, bundle, grid: np.ndarray, study: CalibrationStudy) -> np.ndarray:
    """(tastes, pairs, settings) stage-3 PSNR of every pair on the calibration ``grid``, against its target
    re-exposed or re-toned by each of the study's tastes (the first: as it is)."""
    from llie.method.exposure_offset import DISPLAY_GAMMA
    from llie.training.calibrate import offset_psnrs

    tables = np.empty((len(study.targets), len(lows), len(grid)))
    for i in tqdm(range(len(lows)), desc="grid", disable=not study.progress):
        targets = [
            np.rint(np.clip(highs[i] ** g * 2 ** (t / DISPLAY_GAMMA), 0, 1) * 255) / 255 for t, g in study.targets
        ]
        tables[:, i] = offset_psnrs(lows[i], predictions[i], targets, bundle, grid)
    return tables


def draw_gains(table: np.ndarray, groups: np.ndarray, grid: np.ndarray, n: int, seed: int, draws: int) -> dict:
    """Out-of-scene gains of a calibration on ``n`` drawn scenes: the fit written always, the shipped rule,
    the gain the rule's fit promised and how often its interval held what the other scenes got."""
    from llie.training.calibrate import fit_offset, grid_index

    rng = np.random.default_rng(seed)
    scenes = np.unique(groups)
    neutral = (0.0, 1.0)
    zero = grid_index(neutral, grid)
    always, rule, adopted, promised, held = [], [], [], [], []
    for _ in range(draws):
        chosen = np.isin(groups, rng.choice(scenes, size=n, replace=False))
        fit = fit_offset(table[chosen], list(groups[chosen]), neutral, grid)
        rest = table[~chosen]
        always.append(rest[:, grid_index(fit.fitted, grid)].mean() - rest[:, zero].mean())
        rule.append(rest[:, grid_index(fit.written, grid)].mean() - rest[:, zero].mean())
        adopted.append(fit.written != neutral)
        promised.append(fit.after - fit.before)
        held.append(fit.interval[0] <= always[-1] <= fit.interval[1])
    return {
        "scenes": n,
        "always": float(np.mean(always)),
        "rule": float(np.mean(rule)),
        "adopted": float(np.mean(adopted)),
        "promised": float(np.mean(promised)),
        "realised": float(np.mean(always)),
        "interval_held": float(np.mean(held)),
    }


def run(study: CalibrationStudy) -> dict:
    from llie.method.bundle import load_bundle
    from llie.training.calibrate import GRID, tone_grid
    from llie.training.data import load_pairs, resolve_training_sets
    from llie.training.stage2 import OutOfFold

    from .quality_cv import gated_predictions, out_of_fold_predictions, set_names, stage2_settings

    bundle = load_bundle(study.model, refiner=False)
    quantile_cfg = stage2_settings(bundle, study.seed)
    pairs, _ = resolve_training_sets(study.data)
    lows, highs = load_pairs(pairs)
    oof = OutOfFold(quantile_cfg, study.folds, study.seed, study.threads)
    predictions = out_of_fold_predictions(pairs, lows, highs, oof, study.progress)
    if bundle.capture_gate is not None:
        predictions = gated_predictions(pairs, lows, highs, predictions, oof)
    gammas = tuple(sorted({1.0, *study.gammas}))  # gamma 1 always: the offset alone, and the bundle as it is
    grid = tone_grid(GRID, gammas)
    tables = psnr_tables(lows, highs, predictions[0], bundle, grid, study)
    groups = np.array([p.group for p in pairs])
    sets = set_names(pairs, study.data)
    report: dict = {
        "data": [str(d) for d in study.data],
        "gammas": list(gammas),
        "draws": study.draws,
        "folds": study.folds,
        "sets": {},
    }
    for name in sorted(set(sets)):
        sel = sets == name
        n_scenes = len(set(groups[sel]))
        report["sets"][name] = {
            taste_label(*taste): [
                draw_gains(tables[k][sel], groups[sel], grid, n, study.seed, study.draws)
                for n in study.scenes
                if n < n_scenes
            ]
            for k, taste in enumerate(study.targets)
        }
    return report


def table(report: dict) -> str:
    lines = []
    for name, by_taste in report["sets"].items():
        lines += [
            f"**{name}**: gain on the other scenes, dB (references re-exposed by the taste in stops, or re-toned "
            "by its gamma)",
            "",
            "| taste | scenes | fit always written | shipped rule | adopted | promised / realised | interval held |",
            "|---|---|---|---|---|---|---|",
        ]
        for taste, rows in by_taste.items():
            for r in rows:
                lines.append(
                    f"| {taste} | {r['scenes']} | {r['always']:+.2f} | {r['rule']:+.2f} | {r['adopted']:.0%} | "
                    f"{r['promised']:+.2f} / {r['realised']:+.2f} | {r['interval_held']:.0%} |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets = REPO.parent / "shared" / "datasets"
    parser.add_argument(
        "--data", type=Path, action="append", help="a paired set, repeatable (default: LOL-v1, SICE-pairs)"
    )
    parser.add_argument(
        "--taste", type=float, action="append", help="stops the references are re-exposed by, repeatable"
    )
    parser.add_argument(
        "--tone", type=float, action="append", default=[], help="a gamma the references are raised to, repeatable"
    )
    parser.add_argument("--scenes", type=int, nargs="+", default=[5, 10, 20], help="calibration scenes per draw")
    parser.add_argument("--gammas", type=float, nargs="+", default=[1.0], help="gammas tried with each offset")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None, help="bundle directory (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    study = CalibrationStudy(
        data=args.data or [datasets / "LOL-v1", datasets / "SICE-pairs"],
        tastes=tuple(args.taste if args.taste is not None else (-0.5, 0.5)),
        tones=tuple(args.tone),
        scenes=tuple(args.scenes),
        gammas=tuple(args.gammas),
        draws=args.draws,
        folds=args.folds,
        seed=args.seed,
        model=args.model,
        threads=args.threads,
    )
    report = run(study)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
