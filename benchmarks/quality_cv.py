"""How the method's choices carry over to scenes it never saw: scene-grouped cross-validation over one or
several paired sets, with figures per set and paired intervals that resample scenes.

Stage 2 is fit once per fold of scenes, with a model bundle's stage-2 settings (the shipped model's by
default), and each pair's dark shot and well-exposed target are predicted by the fit that never saw their
scene. On those out-of-fold predictions, per set:

* **dark shots**: stage-3 PSNR and SSIM against the target, with the bundle's mapping and do-no-harm policy;
* **well-exposed photos**: the target itself fed in, stages 1-3 under the policy (and the refiner, where the
  policy lets it act, with ``--refiner``): PSNR of the output against the photo, its mean and minimum, and
  how many photos fall below 22 and 28 dB;
* **exposure**: the dark shot's error in log mean luma (its mean size, bias and spread), its PSNR with the
  output scaled to the target's mean (GT-mean), the set's PSNR with one brightness factor fitted to the
  whole set, and its **floor** (``llie.training.exposure_floor``): how far the distinct targets of one scene
  spread in log mean luma, whether the outputs follow them within a scene, and the PSNR if every output's
  error shrank to that spread (the best a model that sees only the scene could do);
* **variants**: each ``--variant key=value,...`` (fields of the mapping or of the policy) and each
  ``--stage2-variant key=value,...`` (fields of stage 2's settings: stage 2 is refit for it) scored the same
  way, with its paired difference to the bundle's own settings and a 95% interval resampling scenes;
  ``--capture-gate`` adds the capture gate (``llie.method.capture_gate``) fit in each fold on the others.

The refiner's figures on dark shots belong to pairs it never trained on: ``llie evaluate`` on held-out
pairs, and the validation split in the bundle's manifest. For LOL our485 and SICE-pairs (658 pairs) it
takes about 20 minutes on two idle cores, plus 10 per stage-2 variant; not part of ``make bench``:

    python -m benchmarks.quality_cv --data ../shared/datasets/LOL-v1 --data ../shared/datasets/SICE-pairs \\
        --variant colour=channels --variant exposure_full=0.2,exposure_off=0.26 --stage2-variant harmless=6
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llie.method.mapping import MappingConfig
from llie.method.policy import EnhancePolicy

from .common import REPO

WELL_EXPOSED_FLOORS = (22.0, 28.0)  # dB: a well-exposed photo that comes back below these was changed visibly
PSNR_CAP = 60.0  # an unchanged photo has an infinite PSNR; capped so that means stay finite


@dataclass(frozen=True)
class Settings:
    """What stages 1-3 do with a stage-2 prediction: the mapping and the policy of a bundle, or a variant."""

    mapping: MappingConfig
    policy: EnhancePolicy


def parse_variant(text: str, base: Settings) -> Settings:
    """``"colour=channels,exposure_full=0.2"`` applied to ``base``: each key a field of the mapping or the
    policy, each value parsed as that field's type."""
    mapping, policy = _assignments(text, {"mapping": base.mapping, "policy": base.policy})
    return Settings(replace(base.mapping, **mapping), replace(base.policy, **policy))


def parse_stage2_variant(text: str, base):
    """``"harmless=6"`` applied to a ``QuantileModelConfig``."""
    (changes,) = _assignments(text, {"stage 2": base})
    return replace(base, **changes)


def _assignments(text: str, targets: dict[str, Any]) -> list[dict]:
    """Split ``KEY=VALUE,...`` among the dataclasses of ``targets``, each value parsed as its field's type."""
    known = {f.name: where for where, obj in targets.items() for f in fields(obj)}
    out: dict[str, dict] = {where: {} for where in targets}
    for item in filter(None, text.split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in known:
            raise ValueError(f"variant {text!r}: {item!r} is not KEY=VALUE with KEY one of {sorted(known)}")
        out[known[key]][key] = _parse_value(value, getattr(targets[known[key]], key))
    return list(out.values())


def _parse_value(value: str, like):
    if isinstance(like, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() == "true"
    return type(like)(value) if isinstance(like, (int, float)) else value


def out_of_fold_predictions(pairs, lows, highs, oof, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(dark, well-exposed) stage-2 predictions, (N, 3, 21) each, every pair from a fit without its scene;
    ``oof``: ``llie.training.stage2.OutOfFold``."""
    from llie.method.features import extract_features
    from llie.training.stage2 import bag_rows, full_image_features
    from llie.training.stage2 import out_of_fold_predictions as predict

    row_sets = bag_rows(pairs, lows, highs, oof.quantile, oof.seed, progress)
    target_features = np.stack([extract_features(h, feature_set=oof.quantile.features) for h in highs])
    dark, exposed = predict(pairs, row_sets, oof, None, [full_image_features(row_sets[0]), target_features], progress)
    return dark, exposed


def gated_predictions(pairs, lows, highs, predictions, oof):
    """The (dark, well-exposed) predictions with a capture gate applied, each fold's from a gate fit on the
    other folds (their sets' kinds judged on their own out-of-fold predictions); ``oof``: the folds'
    ``llie.training.stage2.OutOfFold``."""
    from llie.method.features import extract_features
    from llie.training.capture_gate import fit_capture_gate
    from llie.training.data import group_folds

    folds, seed, feature_set = oof.folds, oof.seed, oof.quantile.features
    fold = group_folds(pairs, folds, seed)
    dark, exposed = (p.copy() for p in predictions)
    for k in range(folds):
        fit, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        subset = [pairs[i] for i in fit], [lows[i] for i in fit], [highs[i] for i in fit]
        gate, _ = fit_capture_gate(*subset, predictions[0][fit], feature_set, seed)
        for i in held if gate is not None else ():
            dark[i], _ = gate.apply(extract_features(lows[i], feature_set=feature_set), dark[i])
            exposed[i], _ = gate.apply(extract_features(highs[i], feature_set=feature_set), exposed[i])
    return dark, exposed


# brightness factors over which the one-factor figure is searched (about +-50 % in steps of 5 %)
FACTORS = np.exp(np.arange(-0.7, 0.71, 0.05))
# shares of each output's log-luma error taken away (0: as it is, 1: GT-mean) for the floor's PSNR
SHRINKS = np.linspace(0.0, 1.0, 11)


def exposure_scores(out: np.ndarray, high: np.ndarray) -> dict[str, Any]:
    """One output's log mean-luma error, its target's log mean luma, GT-mean PSNR, PSNR at each of
    ``FACTORS`` and with each of ``SHRINKS`` of its error taken away."""
    from llie.method.policy import channel_means, mean_luma
    from llie.metrics import psnr

    own, target = (np.log(max(mean_luma(channel_means(a)), 1e-6)) for a in (out, high))
    return {
        "dark_log_luma_error": own - target,
        "target_log_luma": target,
        "dark_gt_mean_psnr": psnr(np.clip(out * np.exp(target - own), 0.0, 1.0), high),
        "dark_scaled_psnr": np.array([psnr(np.clip(out * f, 0.0, 1.0), high) for f in FACTORS]),
        "dark_shrunk_psnr": np.array(
            [psnr(np.clip(out * np.exp(s * (target - own)), 0.0, 1.0), high) for s in SHRINKS]
        ),
    }


def score_pairs(lows, highs, predictions, settings: Settings, refiner, progress: bool) -> dict[str, np.ndarray]:
    """Per pair: dark shot's stage-3 PSNR/SSIM and exposure scores, the well-exposed photo's PSNR after the
    pipeline; ``predictions`` are the (dark, well-exposed) out-of-fold stage-2 predictions."""
    from llie.method.policy import finish_under_policy, map_under_policy, refine_under_policy
    from llie.method.refine import refine, resolve_device
    from llie.metrics import psnr, quantize8, ssim

    dark_q, exposed_q = predictions
    mapping, policy = settings.mapping, settings.policy
    device = resolve_device("cpu")
    names = ("dark_psnr", "dark_ssim", "dark_log_luma_error", "target_log_luma", "dark_gt_mean_psnr")
    out = {k: np.zeros(len(lows)) for k in (*names, "exposed_psnr", "exposed_gate")}
    out["dark_scaled_psnr"] = np.zeros((len(lows), len(FACTORS)))
    out["dark_shrunk_psnr"] = np.zeros((len(lows), len(SHRINKS)))
    for i in tqdm(range(len(lows)), desc="score", disable=not progress, leave=False):
        mapped, _ = map_under_policy(lows[i], dark_q[i], mapping, policy)
        out8 = quantize8(finish_under_policy(lows[i], np.clip(mapped, 0.0, 1.0), policy)) / 255.0
        out["dark_psnr"][i], out["dark_ssim"][i] = psnr(out8, highs[i]), ssim(out8, highs[i])
        for name, value in exposure_scores(out8, highs[i]).items():
            out[name][i] = value
        kept, out["exposed_gate"][i] = map_under_policy(highs[i], exposed_q[i], mapping, policy)
        if refiner is not None:
            kept = refine_under_policy(highs[i], kept, lambda x: refine(refiner, x, device), policy)
        kept = finish_under_policy(highs[i], np.clip(kept, 0.0, 1.0), policy)  # a no-op where nothing turned
        out["exposed_psnr"][i] = min(psnr(quantize8(kept) / 255.0, highs[i]), PSNR_CAP)
    return out


def summary(scores: dict[str, np.ndarray], floor_sd: float) -> dict:
    """One settings' figures on one set, whose exposure floor is ``floor_sd`` (nan: unknown)."""
    exposed, error = scores["exposed_psnr"], scores["dark_log_luma_error"]
    # the floor's PSNR: each error shrunk by the share that brings their spread down to the floor
    shrink = float(np.clip(1.0 - floor_sd / max(float(error.std()), 1e-9), 0.0, 1.0))
    at_floor = np.interp(shrink, SHRINKS, scores["dark_shrunk_psnr"].mean(axis=0)) if np.isfinite(shrink) else np.nan
    return {
        "pairs": len(exposed),
        "dark_psnr": float(scores["dark_psnr"].mean()),
        "dark_ssim": float(scores["dark_ssim"].mean()),
        "dark_luma_error": float(np.abs(error).mean()),
        "dark_luma_bias": float(error.mean()),
        "dark_luma_error_sd": float(error.std()),
        "dark_gt_mean_psnr": float(scores["dark_gt_mean_psnr"].mean()),
        "dark_one_factor_psnr": float(scores["dark_scaled_psnr"].mean(axis=0).max()),
        "dark_floor_psnr": float(at_floor),
        "exposed_mean_psnr": float(exposed.mean()),
        "exposed_min_psnr": float(exposed.min()),
        **{f"exposed_below_{floor:g}": int((exposed < floor).sum()) for floor in WELL_EXPOSED_FLOORS},
        "exposed_changed": int((scores["exposed_gate"] > 0).sum()),
    }


@dataclass(frozen=True)
class Study:
    """What to cross-validate: the paired sets, the variants, and how."""

    data: list[Path]
    variants: list[str]
    stage2_variants: tuple[str, ...] | list[str] = ()  # each refits stage 2
    folds: int = 5
    seed: int = 0  # draws the folds and stage 2's rows and trees
    model: Path | None = None  # bundle directory; None: the shipped model
    refiner: bool = False  # also run the refiner on well-exposed photos
    capture_gate: bool = False  # also score the capture gate, fit in each fold on the others
    threads: int | None = None
    progress: bool = True


def stage2_settings(bundle, seed: int):
    """The bundle's stage-2 settings as the cross-validations fit them: one model, unweighted, ``seed``."""
    from llie.method.quantiles import QuantileModelConfig

    trained = bundle.manifest.get("training", {}).get("config", {}).get("quantile", {})
    return replace(QuantileModelConfig(**trained), bag=1, error_weighting=False, seed=seed)


def set_names(pairs, data: list[Path]) -> np.ndarray:
    """The set each pair came from: its group's prefix with several sets, the folder's name with one."""
    return np.array([p.group.split("/")[0] if len(data) > 1 else Path(data[0]).name for p in pairs])


def cross_validate(study: Study) -> dict:
    """Per-set figures of the bundle's settings and of each variant, and the variants' paired differences."""
    from llie.method.bundle import load_bundle
    from llie.training.data import load_pairs, resolve_training_sets
    from llie.training.exposure_floor import target_ids
    from llie.training.stage2 import OutOfFold

    bundle = load_bundle(study.model, refiner=study.refiner)
    quantile_cfg = stage2_settings(bundle, study.seed)
    pairs, _ = resolve_training_sets(study.data)
    lows, highs = load_pairs(pairs)
    stage2 = {"model": quantile_cfg} | {v: parse_stage2_variant(v, quantile_cfg) for v in study.stage2_variants}
    predictions = {
        name: out_of_fold_predictions(
            pairs, lows, highs, OutOfFold(cfg, study.folds, study.seed, study.threads), study.progress
        )
        for name, cfg in stage2.items()
    }
    if study.capture_gate:
        oof = OutOfFold(quantile_cfg, study.folds, study.seed, study.threads)
        predictions["capture gate"] = gated_predictions(pairs, lows, highs, predictions["model"], oof)
    base = Settings(bundle.mapping, bundle.policy)
    runs = {"model": (base, "model")} | {v: (parse_variant(v, base), "model") for v in study.variants}
    runs |= {"capture gate": (base, "capture gate")} if study.capture_gate else {}
    runs |= {f"stage 2 {v}": (base, v) for v in study.stage2_variants}
    scores = {
        name: score_pairs(lows, highs, predictions[fit], s, bundle.refiner, study.progress)
        for name, (s, fit) in runs.items()
    }
    groups = np.array([p.group for p in pairs])
    targets = target_ids(highs)
    report: dict[str, Any] = {
        "data": [str(d) for d in study.data],
        "pairs": len(pairs),
        "scenes": len(set(groups)),
        "folds": study.folds,
        "seed": study.seed,
        "stage2": asdict(quantile_cfg),
        "refiner_on_well_exposed": study.refiner,
        "settings": {
            name: {
                "mapping": asdict(s.mapping),
                "policy": asdict(s.policy),
                "stage2": asdict(stage2.get(fit, quantile_cfg)),
            }
            | ({"capture_gate": True} if fit == "capture gate" else {})
            for name, (s, fit) in runs.items()
        },
    }
    sets = set_names(pairs, study.data)
    report["sets"] = {name: per_set(scores, sets == name, groups, targets) for name in sorted(set(sets))}
    return report


def per_set(scores: dict[str, dict[str, np.ndarray]], sel: np.ndarray, groups: np.ndarray, targets) -> dict:
    """One set's figures (the pairs ``sel`` marks) per settings, its exposure floor with the model's own
    outputs (``targets``: each pair's target id), and each variant's paired difference to the model's own
    settings with an interval that resamples scenes."""
    from llie.stats import clustered_difference
    from llie.training.exposure_floor import exposure_floor

    differences = {
        v: {
            metric: clustered_difference(scores[v][metric][sel] - scores["model"][metric][sel], groups[sel])
            for metric in ("dark_psnr", "dark_ssim", "exposed_psnr")
        }
        for v in scores
        if v != "model"
    }
    model = scores["model"]
    target = model["target_log_luma"][sel]
    floor = exposure_floor(target, target + model["dark_log_luma_error"][sel], groups[sel], targets[sel])
    figures = {v: summary({k: a[sel] for k, a in s.items()}, floor.sd) for v, s in scores.items()}
    return {"scenes": len(set(groups[sel])), "figures": figures, "floor": asdict(floor), "differences": differences}


def table(report: dict) -> str:
    lines = [
        f"{report['pairs']} pairs, {report['scenes']} scenes, {report['folds']} scene-grouped folds, "
        "out-of-fold stage 2; stages 1-3 with the policy"
        + (", and the refiner on well-exposed photos" if report["refiner_on_well_exposed"] else ""),
    ]
    floors = " | ".join(f"< {f:g} dB" for f in WELL_EXPOSED_FLOORS)
    for name, s in report["sets"].items():
        lines += [
            "",
            f"**{name}** ({s['figures']['model']['pairs']} pairs, {s['scenes']} scenes)",
            "",
            f"| settings | dark PSNR | dark SSIM | well-exposed mean PSNR | min | {floors} | changed |",
            "|---|---|---|---|---|" + "---|" * len(WELL_EXPOSED_FLOORS) + "---|",
        ]
        for v, f in s["figures"].items():
            below = " | ".join(str(f[f"exposed_below_{x:g}"]) for x in WELL_EXPOSED_FLOORS)
            lines.append(
                f"| {v} | {f['dark_psnr']:.2f} | {f['dark_ssim']:.3f} | {f['exposed_mean_psnr']:.1f} | "
                f"{f['exposed_min_psnr']:.1f} | {below} | {f['exposed_changed']} |"
            )
        lines += [
            "",
            "| settings | dark: mean log-luma error | its bias | its spread | GT-mean PSNR | one-factor PSNR "
            "| PSNR at the floor |",
            "|---|---|---|---|---|---|---|",
        ]
        for v, f in s["figures"].items():
            lines.append(
                f"| {v} | {f['dark_luma_error']:.3f} | {f['dark_luma_bias']:+.3f} | {f['dark_luma_error_sd']:.3f} | "
                f"{f['dark_gt_mean_psnr']:.2f} | {f['dark_one_factor_psnr']:.2f} | {f['dark_floor_psnr']:.2f} |"
            )
        lines += ["", floor_line(s["floor"])]
        if s["differences"]:
            lines += [
                "",
                "| variant minus model | dark PSNR dB | dark SSIM | well-exposed PSNR dB |",
                "|---|---|---|---|",
            ]
            for v, d in s["differences"].items():
                cells = [
                    _difference(d[m], 3 if m == "dark_ssim" else 2) for m in ("dark_psnr", "dark_ssim", "exposed_psnr")
                ]
                lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def floor_line(floor: dict) -> str:
    if not floor["scenes"]:
        return "Exposure floor: unknown (no scene has more than one distinct target)."
    return (
        f"Exposure floor: the distinct targets of one scene spread {floor['sd']:.3f} in log mean luma "
        f"({floor['targets']} targets in {floor['scenes']} scenes); within a scene the model's outputs follow "
        f"them with correlation {floor['within_scene_correlation']:+.2f}."
    )


def _difference(d: dict, digits: int) -> str:
    low, high = d["interval"]
    return f"{d['difference']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets = REPO.parent / "shared" / "datasets"
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        help="a paired set, repeatable (default: LOL-v1 and SICE-pairs under ../shared/datasets)",
    )
    parser.add_argument("--variant", action="append", default=[], help="KEY=VALUE,... of the mapping or policy")
    parser.add_argument(
        "--stage2-variant", action="append", default=[], help="KEY=VALUE,... of stage 2's settings (refits it)"
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="draws the folds and stage 2's rows and trees")
    parser.add_argument("--model", type=Path, default=None, help="bundle directory (default: the shipped model)")
    parser.add_argument("--refiner", action="store_true", help="also run the refiner on well-exposed photos")
    parser.add_argument(
        "--capture-gate", action="store_true", help="also score the capture gate, fit in each fold on the others"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    data = args.data or [datasets / "LOL-v1", datasets / "SICE-pairs"]
    study = Study(
        data,
        args.variant,
        args.stage2_variant,
        folds=args.folds,
        seed=args.seed,
        model=args.model,
        refiner=args.refiner,
        capture_gate=args.capture_gate,
        threads=args.threads,
    )
    report = cross_validate(study)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
