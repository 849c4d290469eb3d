"""Training both learned stages, resumable, and writing a model bundle (the steps: docs/training.md).

Stage 2 is fit on the training split (llie.training.stage2), the refiner on stage-3 outputs made with
out-of-fold stage-2 predictions (llie.training.refiner_training); then stage 2 is refit on all pairs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llie import atomic
from llie.method.bundle import Bundle, BundleError, save_bundle
from llie.method.features import extract_features
from llie.method.mapping import MappingConfig, match_to_quantiles
from llie.method.quantiles import QuantileModel, target_quantiles
from llie.method.refine import resolve_device
from llie.method.refiner import Refiner
from llie.training.config import RefinerTrainConfig, TrainConfig, TrainingSetupError
from llie.training.data import Pair, load_pairs, resolve_training_sets, split_by_group
from llie.training.exposure_floor import exposure_by_set
from llie.training.refiner_training import RefinerRun, check_crop, check_freeze, initial_refiner, train_refiner
from llie.training.stage2 import bag_rows, fit_quantiles, fit_stage2, inverse_errors, mean_psnr, tune_mapping

# the command line imports the settings and the error from here
__all__ = ["RefinerTrainConfig", "TrainConfig", "TrainingSetupError", "train"]


def check_cached_split(saved, train_pairs: list[Pair], val_pairs: list[Pair], run_dir: Path) -> None:
    """--resume reuses stage 2's predictions pair by pair: they must belong to the same pairs in the same
    order, or every refiner input would be matched with another photo's prediction."""
    if "train_names" not in saved.files:  # run directories from before the names were kept
        return
    same = list(saved["train_names"]) == [p.name for p in train_pairs] and list(saved["val_names"]) == [
        p.name for p in val_pairs
    ]
    if not same:
        raise TrainingSetupError(
            f"{run_dir} holds stage 2 of another training split (different --data, --seed or "
            "--max-pairs): resume with the settings it was started with, or use a new --output"
        )


def check_setup(cfg: TrainConfig, train_pairs: list[Pair], train_lows) -> None:
    """Settings that would otherwise fail only after stage 2 has been fit, minutes in."""
    rt = cfg.refiner_train
    check_crop(cfg)
    scenes = len({p.group for p in train_pairs})
    if scenes < cfg.oof_folds:
        raise TrainingSetupError(
            f"the training split holds {scenes} scene(s); out-of-fold stage 2 needs at least "
            f"{cfg.oof_folds} (pairs whose targets match or look alike count as one scene)"
        )
    if rt.steps > 0 and train_lows:
        side = min(min(low.shape[:2]) for low in train_lows)
        if side < rt.crop:
            raise TrainingSetupError(
                f"refiner crops of {rt.crop} px do not fit the smallest training image ({side} px "
                f"on its short side): choose a smaller crop, a multiple of {cfg.refiner.multiple}"
            )


@dataclass(frozen=True)
class Split:
    """The pairs of a run, split by scene, and their images."""

    pairs: list[Pair]  # all of them (after --max-pairs)
    eval_pairs: list[Pair]  # a set's own evaluation pairs, scored once the bundle is written
    train: list[Pair]
    val: list[Pair]
    lows: list[np.ndarray]
    highs: list[np.ndarray]
    val_lows: list[np.ndarray]
    val_highs: list[np.ndarray]


def load_split(cfg: TrainConfig) -> Split:
    pairs, eval_pairs = resolve_training_sets(cfg.data)
    if cfg.max_pairs:
        pairs = pairs[: cfg.max_pairs]
    train_pairs, val_pairs = split_by_group(pairs, cfg.val_fraction, cfg.seed)
    lows, highs = load_pairs(train_pairs)
    val_lows, val_highs = load_pairs(val_pairs)
    return Split(pairs, eval_pairs, train_pairs, val_pairs, lows, highs, val_lows, val_highs)


@dataclass(frozen=True)
class Stage2:
    """Stage 2 fit on the training split: the model, its out-of-fold and validation predictions, the
    mapping tuned on validation, and what it measured."""

    model: QuantileModel
    oof: np.ndarray
    val_q: np.ndarray
    weights: np.ndarray | None
    mapping: MappingConfig
    metrics: dict
    row_sets: list | None  # the histogram rows it was fit on; None when resumed from the run directory


def _stage2_files(run_dir: Path) -> tuple[Path, Path, Path]:
    # the metrics file is written last and stands for the whole set, so a crash mid-write refits instead
    return run_dir / "stage2", run_dir / "stage3_inputs.npz", run_dir / "stage2_metrics.json"


def _resume_stage2(cfg: TrainConfig, split: Split, run_dir: Path) -> Stage2:
    stage2_dir, cache, done = _stage2_files(run_dir)
    model = QuantileModel.load(stage2_dir, n_threads=cfg.threads)
    saved = np.load(cache, allow_pickle=False)
    check_cached_split(saved, split.train, split.val, run_dir)
    weights = saved["weights"] if "weights" in saved.files else None
    metrics = json.loads(done.read_text())
    return Stage2(model, saved["oof"], saved["val"], weights, MappingConfig(**metrics["mapping"]), metrics, None)


def _fit_stage2(cfg: TrainConfig, split: Split, progress: bool) -> Stage2:
    """Stage 2 on the training split, the KDE bandwidth chosen on validation."""
    row_sets = bag_rows(split.train, split.lows, split.highs, cfg.quantile, cfg.seed, progress)
    model, oof, weights, metrics = fit_stage2(split.train, split.lows, split.highs, row_sets, cfg.out_of_fold, progress)
    val_q = np.zeros((0, 3, 21))
    mapping = cfg.mapping
    if split.val:
        val_q = model.predict(
            np.stack([extract_features(l, feature_set=model.config.features) for l in split.val_lows])
        )
        mapping, scores = tune_mapping(split.val_lows, split.val_highs, val_q, cfg.bandwidths, cfg.mapping)
        oracle = [match_to_quantiles(l, target_quantiles(h), mapping) for l, h in zip(split.val_lows, split.val_highs)]
        metrics.update(
            {"val_stage3_psnr_by_mapping": scores, "val_oracle_quantiles_psnr": mean_psnr(oracle, split.val_highs)}
        )
    metrics["mapping"] = asdict(mapping)
    return Stage2(model, oof, val_q, weights, mapping, metrics, row_sets)


def _save_stage2(stage2: Stage2, split: Split, run_dir: Path) -> None:
    """Stage 2's results, for --resume."""
    stage2_dir, cache, done = _stage2_files(run_dir)
    stage2.model.save(stage2_dir)
    arrays = {
        "oof": stage2.oof,
        "val": stage2.val_q,
        "train_names": np.array([p.name for p in split.train]),
        "val_names": np.array([p.name for p in split.val]),
        **({} if stage2.weights is None else {"weights": stage2.weights}),
    }
    atomic.write_file(cache, lambda f: np.savez(f, **arrays))
    atomic.write_file(done, lambda f: f.write(json.dumps(stage2.metrics, indent=2).encode()))


def stage2_for_run(cfg: TrainConfig, split: Split, run_dir: Path, resume: bool, progress: bool) -> Stage2:
    """Stage 2 from the run directory when a complete one is there to resume, else fit and saved there."""
    stage2_dir, cache, done = _stage2_files(run_dir)
    if resume and (stage2_dir / "quantiles.json").exists() and cache.exists() and done.exists():
        return _resume_stage2(cfg, split, run_dir)
    done.unlink(missing_ok=True)  # until the new stage 2 is complete, nothing here is to be resumed
    stage2 = _fit_stage2(cfg, split, progress)
    _save_stage2(stage2, split, run_dir)
    return stage2


def refit_on_all_pairs(cfg: TrainConfig, split: Split, stage2: Stage2, progress: bool) -> QuantileModel:
    """Stage 2 refit on the training and validation pairs together, once its settings are chosen."""
    row_sets = stage2.row_sets
    if row_sets is None:  # resumed: the rows are drawn again, identically
        row_sets = bag_rows(split.train, split.lows, split.highs, cfg.quantile, cfg.seed, progress)
    val_sets = bag_rows(split.val, split.val_lows, split.val_highs, cfg.quantile, cfg.seed, progress)
    row_sets = [rows + val_rows for rows, val_rows in zip(row_sets, val_sets)]
    all_weights = None
    if cfg.quantile.error_weighting:
        weights = stage2.weights
        if weights is None:  # a run directory from before error weighting: its out-of-fold errors serve
            weights = inverse_errors(split.lows, split.highs, stage2.oof)
        # the validation pairs' errors come from the train-split model, which never saw them
        all_weights = np.concatenate([weights, inverse_errors(split.val_lows, split.val_highs, stage2.val_q)])
    return fit_quantiles(row_sets, cfg.quantile, all_weights, cfg.threads)


def _training_record(cfg: TrainConfig, split: Split, init_version: str | None, state: dict, seconds: dict) -> dict:
    """The manifest's account of the run: data, settings, devices and times."""
    return {
        "data": [Path(d).name for d in ([cfg.data] if isinstance(cfg.data, str) else cfg.data)],
        "pairs": len(split.pairs),
        "target_groups": len({p.group for p in split.pairs}),  # scenes: see data.group_scenes
        "validation_pairs": len(split.val),
        "stage2_refit_on_all_pairs": bool(cfg.refit_all and split.val),
        "refiner_initialized_from": init_version,
        "seed": cfg.seed,
        "device": str(resolve_device(cfg.device)),
        "refiner_trained_on": state["devices"],  # every device a resumed run trained on
        # refiner (and so total) count its training time over every resumed session, not only this one
        "seconds": seconds,
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
    }


def _starting_refiner(cfg: TrainConfig) -> tuple[Refiner | None, str | None]:
    # checked before any work: a wrong starting bundle or setting should not cost a stage-2 fit to find out
    try:
        init, init_version = initial_refiner(cfg.init_refiner, cfg.refiner) if cfg.init_refiner else (None, None)
    except BundleError as exc:
        raise TrainingSetupError(str(exc)) from None
    check_freeze(cfg, init is not None)
    return init, init_version


def _train_illumination(cfg: TrainConfig, inputs: tuple[list, list], split: Split, progress: bool):
    """The local gain, on every pair's stage-3 output from a stage 2 that never saw it (None with 0 steps)."""
    if cfg.illumination.steps == 0:
        return None
    from llie.method.illumination import IlluminationConfig
    from llie.training.illumination import grid_pairs, train_illumination

    pairs = grid_pairs(inputs[0] + inputs[1], split.highs + split.val_highs, IlluminationConfig().grid)
    return train_illumination(pairs, cfg.illumination, progress=progress)


def _fit_capture_gate(cfg: TrainConfig, split: Split, stage2: Stage2, metrics: dict):
    """The capture gate, on every pair's stage-2 prediction from a model that never saw it."""
    if not cfg.capture_gate:
        return None
    from llie.training.capture_gate import fit_capture_gate

    gate, metrics["capture_gate"] = fit_capture_gate(
        split.train + split.val,
        split.lows + split.val_lows,
        split.highs + split.val_highs,
        _unseen_quantiles(split, stage2),
        cfg.quantile.features,
        cfg.seed,
    )
    return gate


def _unseen_quantiles(split: Split, stage2: Stage2) -> np.ndarray:
    """Stage 2's prediction for every pair, training then validation, each from a fit that never saw it."""
    return np.concatenate([stage2.oof, stage2.val_q]) if split.val else stage2.oof


def _fit_detail(cfg: TrainConfig, split: Split, stage2: Stage2, bundle: Bundle, metrics: dict, progress: bool):
    """The detail rule, on the validation pairs refined as the bundle refines a photo, from stage 2's
    predictions for them (made without them)."""
    if not cfg.detail or not split.val or bundle.refiner is None:
        return None
    from llie.method.pipeline import Enhancer
    from llie.training.detail import fit_detail_rule, refined_before_detail

    stage4 = Enhancer(bundle, device=cfg.device).refine_mapped
    refined, keeps = [], []
    for low, quantiles in tqdm(
        list(zip(split.val_lows, stage2.val_q)), desc="detail rule", disable=not progress, leave=False
    ):
        keep = 1.0
        if bundle.capture_gate is not None:
            quantiles, keep = bundle.capture_gate.apply(extract_features(low, None, cfg.quantile.features), quantiles)
        out = refined_before_detail(low, quantiles, keep, bundle.mapping, bundle.policy, stage4)
        refined.append(np.clip(out, 0.0, 1.0))
        keeps.append(keep)
    rule, metrics["detail"] = fit_detail_rule(split.val_lows, refined, split.val_highs, keeps, progress)
    return rule


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train both stages on ``cfg.data`` and write the bundle to ``cfg.output``; returns the manifest."""
    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    init, init_version = _starting_refiner(cfg)
    out = Path(cfg.output)
    run_dir = out / "_training"
    run_dir.mkdir(parents=True, exist_ok=True)
    split = load_split(cfg)
    check_setup(cfg, split.train, split.lows)
    stage2 = stage2_for_run(cfg, split, run_dir, resume, progress)
    metrics = stage2.metrics
    # how far stage 2's brightness misses, against what no model could know (llie.training.exposure_floor)
    metrics["exposure"] = exposure_by_set(
        split.train + split.val, split.highs + split.val_highs, _unseen_quantiles(split, stage2)
    )
    train_inputs = [match_to_quantiles(l, q, stage2.mapping) for l, q in zip(split.lows, stage2.oof)]
    val_inputs = [match_to_quantiles(l, q, stage2.mapping) for l, q in zip(split.val_lows, stage2.val_q)]
    metrics["train_oof_stage3_psnr"] = mean_psnr(train_inputs, split.highs)
    if split.val:
        metrics["val_stage3_psnr"] = mean_psnr(val_inputs, split.val_highs)
    stage2_seconds = time.time() - started

    t = time.time()
    run = RefinerRun(cfg, run_dir, resume, progress, init)
    refiner, state = train_refiner((train_inputs, split.highs), (val_inputs, split.val_highs), run)
    refiner_wall = time.time() - t
    metrics["refiner_history"] = state["history"]
    if split.val:
        metrics["val_stage4_psnr"] = state["best_psnr"]

    illumination = _train_illumination(cfg, (train_inputs, val_inputs), split, progress)
    model = refit_on_all_pairs(cfg, split, stage2, progress) if cfg.refit_all and split.val else stage2.model
    gate = _fit_capture_gate(cfg, split, stage2, metrics)
    bundle = Bundle(model, stage2.mapping, refiner, policy=cfg.policy, illumination=illumination, capture_gate=gate)
    bundle.detail = _fit_detail(cfg, split, stage2, bundle, metrics, progress)
    seconds = {
        "stage2": round(stage2_seconds, 1),
        "refiner": round(state["seconds"], 1),
        "total": round(time.time() - started - refiner_wall + state["seconds"], 1),
    }
    extra = {"training": _training_record(cfg, split, init_version, state, seconds), "metrics": metrics}
    manifest = save_bundle(bundle, out, extra)
    if split.eval_pairs:
        from llie.training.evaluate import evaluate_pairs

        report = evaluate_pairs(out, split.eval_pairs, progress=progress)
        manifest = save_bundle(bundle, out, {**extra, "eval": {"set": "eval15", **report["mean"]}})
    return manifest
