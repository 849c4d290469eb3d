"""Fit the capture gate (llie.method.capture_gate): which training sets' target brightness follows the
scene, and a classifier that tells their captures from the others'."""

from __future__ import annotations

import zlib

import numpy as np

from llie.method.capture_gate import CaptureGate, GateSettings, implied_luma
from llie.method.features import extract_features
from llie.method.policy import channel_means, mean_luma
from llie.training.data import Pair
from llie.training.resampling import resampled_copy

# resampled copies of each dark shot the classifier also learns from, labelled as the shot: without them a
# photo's kind followed how smooth its noise looked, and a large copy's working copy could change it
RESAMPLED_COPIES = 2


def set_name(pair: Pair) -> str:
    """The training set a pair came from (several sets prefix their groups with the set's folder)."""
    return pair.group.split("/")[0] if "/" in pair.group else ""


def log_lumas(highs) -> np.ndarray:
    return np.log([max(mean_luma(channel_means(h)), 1e-6) for h in highs])


def scene_exposed_sets(pairs: list[Pair], highs, oof_quantiles: np.ndarray) -> dict[str, bool]:
    """Per training set: does stage 2's out-of-fold brightness (log mean luma) come closer to the targets'
    than the set's own typical brightness does? Where not, its targets are each scene's best exposure,
    whatever the scene: a neutral brightness serves them better."""
    names = np.array([set_name(p) for p in pairs])
    truth = log_lumas(highs)
    predicted = np.log([max(implied_luma(q), 1e-6) for q in oof_quantiles])
    kinds = {}
    for name in sorted(set(names)):
        sel = names == name
        model_error = np.mean((predicted[sel] - truth[sel]) ** 2)
        constant_error = np.var(truth[sel])
        kinds[str(name)] = bool(model_error < constant_error)
    return kinds


def fit_capture_gate(
    pairs: list[Pair], lows, highs, oof_quantiles: np.ndarray, feature_set: int, seed: int = 0
) -> tuple[CaptureGate | None, dict]:
    """The gate and what it was fit on; no gate (None) when the sets are all of one kind."""
    kinds = scene_exposed_sets(pairs, highs, oof_quantiles)
    record: dict = {"scene_exposed_sets": kinds}
    if len(set(kinds.values())) < 2:
        return None, record
    names = [set_name(p) for p in pairs]
    labels = np.array([kinds[n] for n in names], np.float32)
    neutral = log_lumas([h for h, n in zip(highs, names) if not kinds[n]])
    settings = GateSettings(neutral_luma=round(float(np.exp(neutral.mean())), 4))
    features = np.stack([extract_features(low, feature_set=feature_set) for low in lows])
    copies = [_copies_features(pair, low, feature_set, seed) for pair, low in zip(pairs, lows)]
    features = np.concatenate([features, *np.swapaxes(np.stack(copies), 0, 1)])
    record["pairs"] = {"scene_exposed": int(labels.sum()), "neutral": int(len(labels) - labels.sum())}
    record["resampled_copies"] = RESAMPLED_COPIES
    return CaptureGate.fit(features, np.tile(labels, RESAMPLED_COPIES + 1), settings, seed), record


def _copies_features(pair: Pair, low: np.ndarray, feature_set: int, seed: int) -> np.ndarray:
    """Features of the dark shot's resampled copies, drawn from a stream of the pair's own (as stage 2's
    rows), so they do not depend on which other pairs share the fit."""
    rng = np.random.default_rng([seed, zlib.crc32(pair.name.encode())])
    return np.stack(
        [extract_features(resampled_copy(low, rng), feature_set=feature_set) for _ in range(RESAMPLED_COPIES)]
    )
