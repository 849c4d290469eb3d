"""Stage 2: XGBoost predicts the well-lit image's value at percentiles 0, 5, ..., 100 per channel.

Regressed through the targets' leading principal components, made monotone by an isotonic projection,
optionally weighted per row and bagged; stored as gzip-compressed UBJSON (docs/method.md, "Inside each stage").
"""

from __future__ import annotations

import gzip
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import xgboost as xgb
from safetensors.numpy import load_file, save_file

from llie.method.features import PERCENTILES, channel_histograms, extract_features, histogram_percentiles

N_CHANNELS = 3
N_QUANTILES = len(PERCENTILES)
# Batches smaller than this are predicted on one thread: an image's one row takes well under a
# millisecond of tree walking, while waking XGBoost's thread pool, whose threads wait for a core on a
# busy machine (and spin against torch's), costs tens of milliseconds per call.
ONE_THREAD_ROWS = 256


@dataclass(frozen=True)
class QuantileModelConfig:
    # chosen on the validation split (val PSNR after stage 3, and a shipped model of a few MB)
    n_components: int = 12
    n_estimators: int = 200
    max_depth: int = 4
    learning_rate: float = 0.08
    subsample: float = 0.8
    colsample_bytree: float = 0.2
    min_child_weight: float = 20.0
    reg_lambda: float = 1.0
    augmentations: int = 24  # histogram rows drawn per training pair
    seed: int = 0
    # weight each pair by 1 / its out-of-fold MSE after stage 3, so the fit serves the mean PSNR
    error_weighting: bool = True
    # members averaged, each on its own rows and trees (docs/method.md, "A bag of four stage-2 models")
    bag: int = 4
    # rows per pair that teach "do no harm" (harmless_rows): the well-exposed target as its own input;
    # 0 in models from before them
    harmless: int = 0
    features: int = 1  # stage 1's feature set (llie.method.features.FEATURE_SETS); 1 in earlier models

    def member(self, k: int) -> QuantileModelConfig:
        """Settings of the k-th member of a bag: its own seed, for its rows and its trees."""
        return replace(self, seed=self.seed + 1000 * k)


def isotonic(values: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of the last axis (pool adjacent violators)."""
    flat = np.asarray(values, np.float64).reshape(-1, values.shape[-1])
    out = np.empty_like(flat)
    for r, row in enumerate(flat):
        means, sizes = [], []
        for v in row:
            means.append(v)
            sizes.append(1)
            while len(means) > 1 and means[-2] > means[-1]:
                m, s = means.pop(), sizes.pop()
                means[-1] = (means[-1] * sizes[-1] + m * s) / (sizes[-1] + s)
                sizes[-1] += s
        out[r] = np.repeat(means, sizes)
    return out.reshape(values.shape)


def target_quantiles(high: np.ndarray) -> np.ndarray:
    """(3, 21) percentile values of a well-lit image: what stage 2 learns to predict."""
    return histogram_percentiles(channel_histograms(high))


def augmented_rows(
    low: np.ndarray, high: np.ndarray, rng: np.random.Generator, n: int, feature_set: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (features, targets) rows from one pair: the full image plus random crops with exposure jitter.

    Flips are pointless here (a histogram does not see them); crops change both histograms consistently,
    and exposure jitter of the input alone teaches that the well-lit result does not depend on how dark
    the shot was, which is how LOL pairs several exposures with one target.
    """
    h, w = low.shape[:2]
    feats, targets = [], []
    for i in range(n):
        if i == 0:
            lo, hi = low, high
        else:
            # at least one pixel: a crop of a 1- or 2-pixel side would otherwise be empty (NaN features)
            ch, cw = max(1, int(h * rng.uniform(0.35, 1.0))), max(1, int(w * rng.uniform(0.35, 1.0)))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            lo, hi = low[y : y + ch, x : x + cw], high[y : y + ch, x : x + cw]
            gain = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
            lo = np.clip(np.rint(lo * gain * 255.0), 0, 255) / 255.0
        feats.append(extract_features(lo, feature_set=feature_set))
        targets.append(target_quantiles(hi).ravel())
    return np.stack(feats), np.stack(targets)


def _random_crop(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = max(1, int(h * rng.uniform(0.35, 1.0))), max(1, int(w * rng.uniform(0.35, 1.0)))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return image[y : y + ch, x : x + cw]


def harmless_rows(
    high: np.ndarray, rng: np.random.Generator, n: int, feature_set: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows whose input is the well-exposed target itself (whole, then random crops) and whose target
    is its own histogram. An archive holds mostly well-exposed photos; these rows teach stage 2 to leave
    them be. (Darkened copies of the target mapped back to it were tried too: they contradict these rows
    for dim but well-exposed targets and cost the identity its accuracy, docs/model-card.md.)"""
    feats, targets = [], []
    for i in range(n):
        image = high if i == 0 else _random_crop(rng, high)
        feats.append(extract_features(image, feature_set=feature_set))
        targets.append(target_quantiles(image).ravel())
    return np.stack(feats), np.stack(targets)


@dataclass
class Member:
    """One booster and the principal components of the targets it regresses."""

    booster: xgb.Booster
    mean: np.ndarray  # (63,) mean target
    components: np.ndarray  # (n_components, 63)
    threads: int = 0  # XGBoost threads for large batches (0: all cores)
    _threads_set: int | None = field(default=None, repr=False, compare=False)
    # predictions may run on several threads at once (`llie enhance`); XGBoost's predictions are
    # thread-safe, a parameter change is not
    _param_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N, 3, 21) monotone percentile values in [0, 1] for (N, F) features."""
        threads = 1 if len(features) < ONE_THREAD_ROWS else self.threads
        with self._param_lock:
            if threads != self._threads_set:  # a parameter change costs more than a small prediction
                self.booster.set_param({"nthread": threads})
                self._threads_set = threads
        # in-place: a DMatrix per call costs more than the trees for the one row an image gives
        scores = self.booster.inplace_predict(features).reshape(len(features), -1)
        flat = scores @ self.components + self.mean
        return np.clip(isotonic(flat.reshape(-1, N_CHANNELS, N_QUANTILES)), 0.0, 1.0)


class QuantileModel:
    """Features -> (3, 21) monotone percentile values of the well-lit image, averaged over its members."""

    def __init__(self, members: list[Member], config: QuantileModelConfig):
        if not members:
            raise ValueError("a quantile model needs at least one member")
        self.members = members
        self.config = replace(config, bag=len(members))  # what this model is, whatever training asked for

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        targets: np.ndarray,
        config: QuantileModelConfig = QuantileModelConfig(),
        eval_set: tuple[np.ndarray, np.ndarray] | None = None,
        n_threads: int | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> QuantileModel:
        """One member fit on (N, F) features and (N, 63) targets; ``sample_weight`` (N,) weighs rows in
        the loss. ``combine`` joins such fits into a bag."""
        mean = targets.mean(axis=0)
        _, _, vt = np.linalg.svd(targets - mean, full_matrices=False)
        components = vt[: config.n_components]
        scores = (targets - mean) @ components.T
        params = {
            "objective": "reg:squarederror",
            "tree_method": "hist",
            "max_depth": config.max_depth,
            "eta": config.learning_rate,
            "subsample": config.subsample,
            "colsample_bytree": config.colsample_bytree,
            "min_child_weight": config.min_child_weight,
            "lambda": config.reg_lambda,
            "seed": config.seed,
            "nthread": n_threads or 0,
        }
        dtrain = xgb.DMatrix(features, label=scores, weight=sample_weight)
        evals = [(dtrain, "train")]
        if eval_set is not None:
            evals.append((xgb.DMatrix(eval_set[0], label=(eval_set[1] - mean) @ components.T), "val"))
        booster = xgb.train(params, dtrain, num_boost_round=config.n_estimators, evals=evals, verbose_eval=False)
        return cls([Member(booster, mean.astype(np.float32), components.astype(np.float32), n_threads or 0)], config)

    @classmethod
    def combine(cls, models: list[QuantileModel], config: QuantileModelConfig) -> QuantileModel:
        """One model averaging the members of ``models``."""
        return cls([m for model in models for m in model.members], config)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N, 3, 21) for (N, F) features, or (3, 21) for one feature vector."""
        batch = np.atleast_2d(features)
        quantiles = np.mean([m.predict(batch) for m in self.members], axis=0)
        return quantiles[0] if features.ndim == 1 else quantiles

    def save(self, directory: str | Path) -> list[Path]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths, arrays = [], {}
        for k, member in enumerate(self.members):
            path = directory / f"quantiles-{k}.ubj.gz"
            # UBJSON, never pickle; mtime 0 so the same trees always give the same bytes (and model_version)
            path.write_bytes(gzip.compress(bytes(member.booster.save_raw(raw_format="ubj")), mtime=0))
            paths.append(path)
            arrays[f"mean_{k}"], arrays[f"components_{k}"] = member.mean, member.components
        paths.append(directory / "quantiles_pca.safetensors")
        save_file(arrays, paths[-1])
        paths.append(directory / "quantiles.json")
        paths[-1].write_text(json.dumps(asdict(self.config), indent=2, sort_keys=True))
        return paths

    @classmethod
    def load(cls, directory: str | Path, n_threads: int | None = None) -> QuantileModel:
        directory = Path(directory)
        saved = json.loads((directory / "quantiles.json").read_text())
        saved.setdefault("error_weighting", False)  # models from before the option were fit unweighted
        saved.setdefault("bag", 1)  # and models from before bagging had one member
        config = QuantileModelConfig(**saved)
        arrays = load_file(directory / "quantiles_pca.safetensors")
        if "mean" in arrays:  # the one-member layout of bundles before bagging: plain quantiles.ubj
            raw = [(directory / "quantiles.ubj").read_bytes()]
            arrays = {"mean_0": arrays["mean"], "components_0": arrays["components"]}
        else:
            raw = [directory / f"quantiles-{k}.ubj.gz" for k in range(config.bag)]

        def member(k: int) -> Member:
            data = raw[k] if isinstance(raw[k], bytes) else gzip.decompress(raw[k].read_bytes())
            booster = xgb.Booster(params={"nthread": n_threads or 0})
            booster.load_model(bytearray(data))
            return Member(booster, arrays[f"mean_{k}"], arrays[f"components_{k}"], n_threads or 0)

        # zlib and XGBoost's parser release the GIL: the members load side by side, which is most of
        # the command line's start-up after imports
        with ThreadPoolExecutor(min(len(raw), os.cpu_count() or 1)) as pool:
            members = list(pool.map(member, range(len(raw))))
        return cls(members, config)
