"""Fitting stage 2 for training and for the benchmarks: augmented rows per pair, bagged and weighted fits,
out-of-fold predictions, the KDE bandwidth. Imports no torch."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from llie.method.mapping import MappingConfig, match_to_quantiles
from llie.method.quantiles import QuantileModel, QuantileModelConfig, augmented_rows, harmless_rows
from llie.metrics import psnr, quantize8
from llie.training.data import Pair, group_folds

BANDWIDTHS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.08)


@dataclass(frozen=True)
class OutOfFold:
    """How stage 2 is fit fold by fold, each fold of scenes predicted by a fit that never saw it."""

    quantile: QuantileModelConfig
    folds: int
    seed: int  # draws the folds
    threads: int | None = None


def pair_rows(pairs: list[Pair], lows, highs, cfg: QuantileModelConfig, seed: int, progress: bool):
    """Augmented (features, targets) rows of each pair, drawn once: every stage-2 fit of a run (folds,
    final model, refit) reuses them. Each pair draws from its own stream, keyed by its name, so its rows do
    not depend on which other pairs share the set."""
    rows = []
    for pair, low, high in tqdm(
        list(zip(pairs, lows, highs)), desc="histogram rows", disable=not progress, leave=False
    ):
        rng = np.random.default_rng([seed, zlib.crc32(pair.name.encode())])
        feats, targets = augmented_rows(low, high, rng, cfg.augmentations, cfg.features)
        if cfg.harmless:
            more = harmless_rows(high, rng, cfg.harmless, cfg.features)
            feats, targets = np.concatenate([feats, more[0]]), np.concatenate([targets, more[1]])
        rows.append((feats, targets))
    return rows


def bag_rows(pairs: list[Pair], lows, highs, cfg: QuantileModelConfig, seed: int, progress: bool):
    """Rows for each member of a stage-2 bag: member k draws its own, from seed + 1000 k, so a bag of one
    has exactly the rows a single model had."""
    return [pair_rows(pairs, lows, highs, cfg, seed + 1000 * k, progress) for k in range(cfg.bag)]


def fit_quantiles(row_sets, cfg: QuantileModelConfig, weights: np.ndarray | None, threads: int | None) -> QuantileModel:
    """Stage 2 on the rows of several pairs, one member per set of rows (``bag_rows``); ``weights`` (one
    per pair) are scaled to mean 1 over the rows, so min_child_weight keeps its meaning."""
    members = []
    for k, rows in enumerate(row_sets):
        x, y = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
        w = None
        if weights is not None:
            w = np.concatenate([np.full(len(r[0]), wi) for r, wi in zip(rows, weights)])
            w = w / w.mean()
        members.append(QuantileModel.fit(x, y, cfg.member(k), n_threads=threads, sample_weight=w))
    return QuantileModel.combine(members, cfg)


def full_image_features(rows) -> np.ndarray:
    return np.stack([r[0][0] for r in rows])  # augmented_rows puts the whole, unjittered image first


def inverse_errors(lows, highs, quantiles, mapping: MappingConfig = MappingConfig()) -> np.ndarray:
    """1 / MSE of each pair's stage-3 output: the weight that makes a squared-error fit take one
    Gauss-Newton step on the sum of log errors, i.e. on the mean PSNR."""
    mse = [
        np.mean((quantize8(match_to_quantiles(l, q, mapping)) / 255.0 - h) ** 2)
        for l, h, q in zip(lows, highs, quantiles)
    ]
    return 1.0 / np.maximum(np.array(mse), 1e-6)


def mean_psnr(outputs, highs) -> float:
    return float(np.mean([psnr(quantize8(o) / 255.0, h) for o, h in zip(outputs, highs)]))


def tune_mapping(
    lows, highs, quantiles, bandwidths, base: MappingConfig = MappingConfig()
) -> tuple[MappingConfig, dict[str, float]]:
    """Best KDE bandwidth on validation, other settings as in ``base``; the scores of every candidate and
    of plain interpolation."""
    interp = replace(base, method="interp")
    scores = {"interp": mean_psnr([match_to_quantiles(l, q, interp) for l, q in zip(lows, quantiles)], highs)}
    for bw in bandwidths:
        cfg = replace(base, method="kde", bandwidth=bw)
        scores[f"kde_{bw:g}"] = mean_psnr([match_to_quantiles(l, q, cfg) for l, q in zip(lows, quantiles)], highs)
    best = max(bandwidths, key=lambda bw: scores[f"kde_{bw:g}"])
    return replace(base, method="kde", bandwidth=best), scores


def out_of_fold_predictions(
    pairs: list[Pair],
    row_sets,
    oof: OutOfFold,
    weights: np.ndarray | None,
    features: Sequence[np.ndarray],
    progress: bool,
) -> list[np.ndarray]:
    """For each array of per-pair features in ``features`` ((N, F) each), every pair's stage-2 prediction
    from a model (a bag of ``len(row_sets)``) fit without its scene."""
    folds = group_folds(pairs, oof.folds, oof.seed)
    out = [np.zeros((len(pairs), 3, 21)) for _ in features]
    for k in tqdm(range(oof.folds), desc="out-of-fold stage 2", disable=not progress, leave=False):
        fit_idx, held = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        w = None if weights is None else weights[fit_idx]
        model = fit_quantiles([[rows[i] for i in fit_idx] for rows in row_sets], oof.quantile, w, oof.threads)
        for predicted, f in zip(out, features):
            predicted[held] = model.predict(f[held])
    return out


def out_of_fold_quantiles(
    pairs: list[Pair], row_sets, oof: OutOfFold, weights: np.ndarray | None, progress: bool
) -> np.ndarray:
    """Each pair's stage-2 prediction for its dark shot from a model (a bag of ``len(row_sets)``) fit
    without its scene."""
    (dark,) = out_of_fold_predictions(pairs, row_sets, oof, weights, [full_image_features(row_sets[0])], progress)
    return dark


def fit_stage2(pairs: list[Pair], lows, highs, row_sets, oof: OutOfFold, progress: bool):
    """(model, out-of-fold quantiles, pair weights, metrics) of stage 2 on the training split.

    With error weighting the out-of-fold fits run twice: unweighted, with the bag's first member alone, to
    measure each pair's error, then weighted and bagged, so the refiner trains on the errors of models fit
    the way the final one is."""
    first_pass = row_sets[:1] if oof.quantile.error_weighting else row_sets
    predicted = out_of_fold_quantiles(pairs, first_pass, oof, None, progress)
    metrics: dict = {}
    weights = None
    if oof.quantile.error_weighting:
        weights = inverse_errors(lows, highs, predicted)
        metrics["train_oof_stage3_psnr_unweighted"] = float(np.mean(10 * np.log10(weights)))  # 1 / MSE -> dB
        metrics["pair_weight_range"] = [float(weights.min() / weights.mean()), float(weights.max() / weights.mean())]
        predicted = out_of_fold_quantiles(pairs, row_sets, oof, weights, progress)
    return fit_quantiles(row_sets, oof.quantile, weights, oof.threads), predicted, weights, metrics
