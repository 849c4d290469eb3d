"""Stage 2's exposure, gated by the kind of capture: stage 2's own brightness where the photo looks like the
captures whose well-lit brightness follows the scene, a neutral brightness where it does not.

Out of fold, stage 2's mean brightness explains a third of the targets' spread on LOL (the well-lit shots
are the same scenes at longer exposures) and none of it on SICE (whose references are each scene's best
exposure, all near one mean luma): there a neutral exposure scores 0.6 dB above stage 2's. An XGBoost
classifier on stage 1's features tells the two kinds of capture apart, and the predicted percentiles are
scaled toward the neutral mean luma as far as it is unsure (docs/method.md, "The capture gate").
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb

from llie.method.mapping import LUMA

GATE_FILE = "capture_gate.ubj.gz"


@dataclass(frozen=True)
class GateSettings:
    neutral_luma: float = 0.46  # mean luma of a neutral exposure (the neutral captures' targets, geometric mean)
    # probability of a scene-exposed capture from which stage 2's brightness is kept in full; below it the
    # brightness moves toward the neutral one in proportion
    ramp: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.neutral_luma < 1.0:
            raise ValueError(f"neutral_luma {self.neutral_luma} is not a mean luma between 0 and 1")
        if not 0.0 < self.ramp <= 1.0:
            raise ValueError(f"ramp {self.ramp} is not a probability above 0")


def implied_luma(quantiles: np.ndarray) -> float:
    """Mean luma of the image whose (3, 21) percentile values these are (each channel's mean by the
    trapezoid rule over its percentiles)."""
    channel_means = ((quantiles[:, 1:] + quantiles[:, :-1]) / 2).mean(axis=1)
    return float(channel_means @ LUMA)


def toward_luma(quantiles: np.ndarray, keep: float, luma: float) -> np.ndarray:
    """Percentile values scaled so their mean luma moves from its own toward ``luma``: the geometric
    mix ``own ** keep * luma ** (1 - keep)``, clipped to [0, 1]."""
    own = implied_luma(quantiles)
    if keep >= 1.0 or own <= 1e-6:
        return quantiles
    gain = (luma / own) ** (1.0 - keep)
    return np.clip(quantiles * np.float32(gain), 0.0, 1.0).astype(quantiles.dtype, copy=False)


class CaptureGate:
    """An XGBoost classifier of stage 1's features: how likely a photo is a scene-exposed capture."""

    def __init__(self, booster: xgb.Booster, settings: GateSettings = GateSettings()):
        self.booster = booster
        self.settings = settings
        self.booster.set_param({"nthread": 1})  # one row per photo: a thread pool costs more than the trees

    @classmethod
    def fit(cls, features: np.ndarray, scene_exposed: np.ndarray, settings: GateSettings, seed: int = 0) -> CaptureGate:
        """Fit on (N, F) features labelled 1 where the pair's target brightness follows its scene."""
        params = {
            "objective": "binary:logistic",
            "tree_method": "hist",
            "max_depth": 3,
            "eta": 0.05,
            "subsample": 0.8,
            "min_child_weight": 2,
            "seed": seed,
            "nthread": 0,
        }
        booster = xgb.train(params, xgb.DMatrix(features, label=scene_exposed.astype(np.float32)), 200)
        return cls(booster, settings)

    def keep(self, features: np.ndarray) -> float:
        """Share of stage 2's own brightness kept for one photo's (F,) features, in [0, 1]."""
        p = float(self.booster.inplace_predict(np.atleast_2d(features).astype(np.float32))[0])
        return min(1.0, p / self.settings.ramp)

    def apply(self, features: np.ndarray, quantiles: np.ndarray) -> tuple[np.ndarray, float]:
        """Stage 2's (3, 21) percentile values with their brightness gated, and the share of it kept."""
        keep = self.keep(features)
        return toward_luma(quantiles, keep, self.settings.neutral_luma), keep

    def save(self, directory: Path) -> Path:
        path = Path(directory) / GATE_FILE
        # UBJSON, never pickle; mtime 0 so the same trees give the same bytes (and model_version)
        path.write_bytes(gzip.compress(bytes(self.booster.save_raw(raw_format="ubj")), mtime=0))
        return path

    @classmethod
    def load(cls, path: Path, settings: GateSettings) -> CaptureGate:
        booster = xgb.Booster()
        booster.load_model(bytearray(gzip.decompress(Path(path).read_bytes())))
        return cls(booster, settings)
