"""Stage 2: the XGBoost quantile model, monotone by construction, saved without pickle."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json

import numpy as np
import pytest
import xgboost as xgb
from helpers_synthetic import pairs
from safetensors.numpy import load_file, save_file

from llie.method.features import extract_features, feature_size
from llie.method.quantiles import (
    N_CHANNELS,
    N_QUANTILES,
    Member,
    QuantileModel,
    QuantileModelConfig,
    augmented_rows,
    isotonic,
    target_quantiles,
)

SMALL = QuantileModelConfig(n_estimators=30, augmentations=4, min_child_weight=2.0, colsample_bytree=0.5)


def _rows(lows, highs, cfg, seed):
    rng = np.random.default_rng(seed)
    x, y = zip(*(augmented_rows(l, h, rng, cfg.augmentations) for l, h in zip(lows, highs)))
    return np.concatenate(x), np.concatenate(y)


@pytest.fixture(scope="module")
def fitted():
    lows, highs = pairs(20, seed=1)
    x, y = _rows(lows, highs, SMALL, seed=0)
    model = QuantileModel.fit(x, y, SMALL, n_threads=1)
    return model, y


# --------------------------------------------------------------------------- isotonic


def _pava_minmax(y: np.ndarray) -> np.ndarray:
    """Isotonic least squares by the min-max formula: f_i = max_{j<=i} min_{k>=i} mean(y[j..k])."""
    n = len(y)
    return np.array([max(min(y[j : k + 1].mean() for k in range(i, n)) for j in range(i + 1)) for i in range(n)])


def _brute_force(y: np.ndarray) -> np.ndarray:
    """Best non-decreasing fit among all ways to cut ``y`` into constant runs (each run at its mean)."""
    n, best, best_err = len(y), None, np.inf
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        fit = np.concatenate([np.full(b - a, y[a:b].mean()) for a, b in zip(bounds, bounds[1:])])
        if (np.diff(fit) >= -1e-12).all():
            err = ((fit - y) ** 2).sum()
            if err < best_err - 1e-12:
                best, best_err = fit, err
    return best


@pytest.mark.parametrize("seed", range(6))
def test_isotonic_equals_brute_force_least_squares(seed):
    rng = np.random.default_rng(seed)
    for n in (1, 2, 3, 5, 7):
        y = rng.normal(size=n)
        got = isotonic(y[None])[0]
        np.testing.assert_allclose(got, _brute_force(y), atol=1e-12)
        np.testing.assert_allclose(got, _pava_minmax(y), atol=1e-12)


def test_isotonic_properties_on_batches():
    rng = np.random.default_rng(7)
    y = rng.normal(size=(4, 3, 21)) * 3
    fit = isotonic(y)
    assert fit.shape == y.shape
    assert (np.diff(fit, axis=-1) >= -1e-12).all()
    np.testing.assert_allclose(fit.mean(axis=-1), y.mean(axis=-1), atol=1e-12)  # PAVA keeps the mean
    np.testing.assert_allclose(isotonic(fit), fit, atol=1e-12)  # idempotent
    already = np.sort(y, axis=-1)
    np.testing.assert_array_equal(isotonic(already), already)
    # no other monotone curve is closer: compare with random monotone candidates
    for _ in range(50):
        candidate = np.sort(rng.normal(size=y.shape) * 3, axis=-1)
        assert (((candidate - y) ** 2).sum(axis=-1) >= ((fit - y) ** 2).sum(axis=-1) - 1e-9).all()


# --------------------------------------------------------------------------- predictions


def _assert_valid(q: np.ndarray) -> None:
    assert q.shape[-2:] == (N_CHANNELS, N_QUANTILES)
    assert np.isfinite(q).all()
    assert (np.diff(q, axis=-1) >= 0).all(), "predicted percentiles must be non-decreasing"
    assert q.min() >= 0.0 and q.max() <= 1.0


def test_predictions_monotone_and_in_range_for_adversarial_features(fitted):
    model, _ = fitted
    rng = np.random.default_rng(0)
    n = feature_size()
    adversarial = np.concatenate(
        [
            rng.normal(size=(50, n)),
            rng.normal(scale=1e6, size=(20, n)),
            rng.uniform(-1e30, 1e30, size=(20, n)),
            np.zeros((1, n)),
            np.ones((1, n)),
            np.full((1, n), -1e38),
            np.full((1, n), 1e38),
            np.full((1, n), np.nan),  # XGBoost treats NaN as missing
        ]
    ).astype(np.float32)
    _assert_valid(model.predict(adversarial))
    _assert_valid(model.predict(adversarial[0]))
    assert model.predict(adversarial[0]).shape == (N_CHANNELS, N_QUANTILES)


def test_monotone_by_construction_whatever_the_booster_says(fitted):
    """Random, huge PCA components make the raw curves wildly non-monotone: the output is still valid."""
    model, _ = fitted
    rng = np.random.default_rng(1)
    member = model.members[0]
    k = member.components.shape[0]
    wild_member = Member(
        member.booster,
        rng.normal(scale=5.0, size=N_CHANNELS * N_QUANTILES).astype(np.float32),
        rng.normal(scale=100.0, size=(k, N_CHANNELS * N_QUANTILES)).astype(np.float32),
    )
    wild = QuantileModel([wild_member], model.config)
    raw = member.booster.predict(xgb.DMatrix(rng.normal(size=(40, feature_size())).astype(np.float32)))
    flat = raw @ wild_member.components + wild_member.mean
    assert (np.diff(flat.reshape(-1, N_CHANNELS, N_QUANTILES), axis=-1) < 0).any()  # the raw curves are bad
    _assert_valid(wild.predict(rng.normal(size=(40, feature_size())).astype(np.float32)))


def test_fit_beats_predicting_the_training_mean(fitted):
    model, y_train = fitted
    lows, highs = pairs(8, seed=2)  # unseen scenes and exposures
    pred = model.predict(np.stack([extract_features(l) for l in lows]))
    truth = np.stack([target_quantiles(h) for h in highs])
    baseline = y_train.mean(axis=0).reshape(N_CHANNELS, N_QUANTILES)
    model_mse = float(((pred - truth) ** 2).mean())
    mean_mse = float(((baseline - truth) ** 2).mean())
    assert model_mse < 0.8 * mean_mse, (model_mse, mean_mse)


# --------------------------------------------------------------------------- persistence


def test_save_load_round_trip_gives_identical_predictions(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path)
    loaded = QuantileModel.load(tmp_path, n_threads=1)
    assert loaded.config == model.config
    x = np.random.default_rng(2).normal(size=(10, feature_size())).astype(np.float32)
    lows, _ = pairs(3, seed=5)
    x = np.concatenate([x, np.stack([extract_features(l) for l in lows])])
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_saved_files_contain_no_pickle(fitted, tmp_path):
    model, _ = fitted
    paths = model.save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert (
        names == sorted(p.name for p in paths) == ["quantiles-0.ubj.gz", "quantiles.json", "quantiles_pca.safetensors"]
    )
    for p in paths:
        head = p.read_bytes()[:4]
        assert not head.startswith(b"\x80"), f"{p.name} looks like a pickle"
        assert not head.startswith(b"PK"), f"{p.name} looks like a zip (torch.save) archive"
    ubj = gzip.decompress((tmp_path / "quantiles-0.ubj.gz").read_bytes())
    assert ubj[:1] == b"{", "the booster must be stored as UBJSON (an object marker first)"
    assert len(ubj) > 2 * (tmp_path / "quantiles-0.ubj.gz").stat().st_size  # compression earns its keep
    booster = xgb.Booster()
    booster.load_model(bytearray(ubj))
    assert booster.num_boosted_rounds() == model.config.n_estimators
    assert set(load_file(tmp_path / "quantiles_pca.safetensors")) == {"mean_0", "components_0"}
    assert json.loads((tmp_path / "quantiles.json").read_text())["n_estimators"] == model.config.n_estimators


def test_a_model_saved_before_error_weighting_loads_as_unweighted(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path)
    saved = json.loads((tmp_path / "quantiles.json").read_text())
    del saved["error_weighting"]
    (tmp_path / "quantiles.json").write_text(json.dumps(saved))
    assert QuantileModel.load(tmp_path, n_threads=1).config.error_weighting is False


def test_a_model_saved_before_bagging_loads_with_one_member(fitted, tmp_path):
    """The layout of bundles before bagging: plain quantiles.ubj, PCA arrays named mean and components."""
    model, _ = fitted
    member = model.members[0]
    member.booster.save_model(tmp_path / "quantiles.ubj")
    save_file({"mean": member.mean, "components": member.components}, tmp_path / "quantiles_pca.safetensors")
    old = {k: v for k, v in dataclasses.asdict(model.config).items() if k != "bag"}
    (tmp_path / "quantiles.json").write_text(json.dumps(old))
    loaded = QuantileModel.load(tmp_path, n_threads=1)
    assert loaded.config.bag == 1 and len(loaded.members) == 1
    x = np.random.default_rng(3).normal(size=(6, feature_size())).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


# --------------------------------------------------------------------------- bagging


@pytest.fixture(scope="module")
def bag(fitted):
    """The fitted model and a second member on other rows, with other trees, combined."""
    model, _ = fitted
    lows, highs = pairs(20, seed=1)
    x, y = _rows(lows, highs, SMALL, seed=7)
    other = QuantileModel.fit(x, y, SMALL.member(1), n_threads=1)
    return QuantileModel.combine([model, other], SMALL), model, other


def test_a_bag_averages_its_members_and_stays_monotone(bag):
    combined, first, second = bag
    assert combined.config.bag == 2 and len(combined.members) == 2
    assert SMALL.member(1).seed != SMALL.seed
    x = np.random.default_rng(4).normal(size=(30, feature_size())).astype(np.float32)
    a, b = first.predict(x), second.predict(x)
    assert np.abs(a - b).max() > 1e-3  # the members differ, so the average is not trivially either
    np.testing.assert_allclose(combined.predict(x), (a + b) / 2, atol=1e-12)
    _assert_valid(combined.predict(x))
    np.testing.assert_allclose(combined.predict(x[0]), combined.predict(x[:1])[0], atol=1e-12)


def test_a_bag_round_trips_and_saves_the_same_bytes_every_time(bag, tmp_path):
    combined, _, _ = bag
    first = combined.save(tmp_path / "a")
    combined.save(tmp_path / "b")
    assert sorted(p.name for p in first) == [
        "quantiles-0.ubj.gz",
        "quantiles-1.ubj.gz",
        "quantiles.json",
        "quantiles_pca.safetensors",
    ]
    for p in first:  # gzip without a timestamp: the same trees give the same model_version
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), p.name
    loaded = QuantileModel.load(tmp_path / "a", n_threads=1)
    assert loaded.config == combined.config
    x = np.random.default_rng(5).normal(size=(12, feature_size())).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), combined.predict(x))


def test_a_model_needs_a_member():
    with pytest.raises(ValueError, match="at least one member"):
        QuantileModel([], SMALL)


# --------------------------------------------------------------------------- row weights


def test_row_weights_pull_the_fit_toward_the_heavier_rows():
    """Rows with the same features but two different targets: the fit lands near the weighted mean."""
    rng = np.random.default_rng(0)
    x = np.repeat(rng.random((1, feature_size()), dtype=np.float32), 200, axis=0)
    dark, bright = np.linspace(0.0, 0.4, 63), np.linspace(0.3, 1.0, 63)
    targets = np.concatenate([np.tile(dark, (100, 1)), np.tile(bright, (100, 1))])
    cfg = QuantileModelConfig(
        n_components=4, n_estimators=60, learning_rate=0.3, subsample=1.0, colsample_bytree=1.0, min_child_weight=1.0
    )
    level = lambda w: QuantileModel.fit(x, targets, cfg, n_threads=1, sample_weight=w).predict(x[0]).mean()
    unweighted, toward_bright = level(None), level(np.r_[np.ones(100), 9 * np.ones(100)])
    expected = lambda a: np.clip(isotonic((a * dark + (1 - a) * bright).reshape(3, 21)), 0, 1).mean()
    assert unweighted == pytest.approx(expected(0.5), abs=0.01)
    assert toward_bright == pytest.approx(expected(0.1), abs=0.01)


@pytest.mark.parametrize("shape", [(1, 2), (2, 1), (1, 1), (2, 300)])
def test_augmented_rows_of_tiny_images_are_finite(shape):
    rng = np.random.default_rng(0)
    low = rng.random(shape + (3,), dtype=np.float32) * 0.2
    x, y = augmented_rows(low, low * 4, rng, 12)
    assert x.shape[0] == y.shape[0] == 12
    assert np.isfinite(x).all() and np.isfinite(y).all()
