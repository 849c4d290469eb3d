"""The capture gate after stage 2: which training sets' brightness follows the scene, a classifier of the two
kinds of capture, the percentiles moved toward a neutral brightness, and the bundle that carries it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_synthetic import pairs

from llie.method.bundle import MANIFEST, Bundle, BundleError, load_bundle, manifest_version, save_bundle
from llie.method.capture_gate import GATE_FILE, CaptureGate, GateSettings, implied_luma, toward_luma
from llie.method.features import extract_features
from llie.method.mapping import LUMA, MappingConfig
from llie.method.pipeline import Enhancer
from llie.method.quantiles import QuantileModel, QuantileModelConfig, augmented_rows, target_quantiles
from llie.training.capture_gate import fit_capture_gate, scene_exposed_sets
from llie.training.data import Pair
from llie.training.resampling import resampled_copy


def _quantiles(scale: float = 1.0) -> np.ndarray:
    ramp = np.linspace(0.02, 0.9, 21)
    return (np.stack([ramp, ramp**1.2, ramp**1.5]) * scale).astype(np.float32)


def test_implied_luma_is_the_mean_luma_of_an_image_with_those_percentiles():
    rng = np.random.default_rng(0)
    image = np.clip(rng.gamma(2.0, 0.15, (200, 300, 3)) * np.array([1.0, 0.8, 0.6]), 0, 1).astype(np.float32)
    assert implied_luma(target_quantiles(image)) == pytest.approx(float((image @ LUMA).mean()), abs=0.01)


def test_toward_luma_mixes_the_brightness_geometrically():
    q = _quantiles(0.5)
    own = implied_luma(q)
    assert np.array_equal(toward_luma(q, 1.0, 0.46), q)  # kept in full
    assert implied_luma(toward_luma(q, 0.0, 0.3)) == pytest.approx(0.3, rel=1e-5)  # all the way
    half = implied_luma(toward_luma(q, 0.5, 0.3))
    assert half == pytest.approx(np.sqrt(own * 0.3), rel=1e-5)
    moved = toward_luma(q, 0.0, 0.6)  # brighter than the top percentile allows: clipped at 1, still monotone
    assert moved.max() <= 1.0 and np.all(np.diff(moved, axis=1) >= 0)


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="neutral_luma"):
        GateSettings(neutral_luma=1.5)
    with pytest.raises(ValueError, match="ramp"):
        GateSettings(ramp=0.0)


def _two_kinds(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features whose first column tells the kinds apart (with some overlap), labels 1 for the first kind."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.float32)
    features = rng.normal(0, 1, (n, 5)).astype(np.float32)
    features[:, 0] += 3 * labels
    return features, labels


def test_the_gate_keeps_stage_2s_brightness_for_the_scene_exposed_kind_only(tmp_path):
    features, labels = _two_kinds()
    gate = CaptureGate.fit(features, labels, GateSettings(neutral_luma=0.4, ramp=0.1))
    keep = np.array([gate.keep(f) for f in features])
    assert keep[labels == 1].mean() > 0.9 and keep[labels == 0].mean() < 0.6
    assert np.all((keep >= 0) & (keep <= 1))
    q = _quantiles(0.3)
    neutral_like = features[np.argmin(keep)]
    expected = implied_luma(q) ** keep.min() * 0.4 ** (1 - keep.min())
    gated, kept = gate.apply(neutral_like, q)
    assert kept == keep.min() and implied_luma(gated) == pytest.approx(expected, rel=1e-4)
    assert implied_luma(gate.apply(features[np.argmax(keep)], q)[0]) == pytest.approx(implied_luma(q))
    # saved as UBJSON and loaded back: the same decisions, and the same bytes when saved again
    path = gate.save(tmp_path)
    loaded = CaptureGate.load(path, gate.settings)
    assert [loaded.keep(f) for f in features] == pytest.approx(list(keep), abs=1e-6)
    (tmp_path / "again").mkdir()
    assert loaded.save(tmp_path / "again").read_bytes() == path.read_bytes()


def test_training_sets_are_told_apart_by_whether_stage_2_predicts_their_brightness():
    """Set "scene": targets whose brightness the out-of-fold prediction follows; set "best": targets all of one
    brightness that the prediction misses at random."""
    rng = np.random.default_rng(1)
    pairs_, highs, predicted = [], [], []
    for i in range(30):
        scene = i % 2 == 0
        level = rng.uniform(0.2, 0.7) if scene else 0.45 * np.exp(rng.normal(0, 0.02))
        highs.append(np.full((8, 8, 3), level, np.float32))
        guess = level * np.exp(rng.normal(0, 0.05)) if scene else 0.45 * np.exp(rng.normal(0, 0.3))
        predicted.append(np.full((3, 21), guess, np.float32))
        name = "scene" if scene else "best"
        pairs_.append(Pair(f"{name}/{i}", None, None, f"{name}/{i}"))
    assert scene_exposed_sets(pairs_, highs, np.stack(predicted)) == {"best": False, "scene": True}


def test_no_gate_is_fit_when_the_sets_are_all_of_one_kind():
    lows, highs = pairs(4, seed=3)
    one_set = [Pair(f"p{i}", None, None, f"s{i}") for i in range(4)]
    predicted = np.stack([target_quantiles(h) for h in highs])  # a perfect stage 2
    gate, record = fit_capture_gate(one_set, lows, highs, predicted, feature_set=2)
    assert gate is None and record["scene_exposed_sets"] == {"": True}


def _bundle(gate: CaptureGate | None) -> Bundle:
    cfg = QuantileModelConfig(n_estimators=5, augmentations=2, min_child_weight=2.0, features=2)
    lows, highs = pairs(6, seed=0)
    rng = np.random.default_rng(0)
    x, y = zip(*(augmented_rows(l, h, rng, cfg.augmentations, 2) for l, h in zip(lows, highs)))
    model = QuantileModel.fit(np.concatenate(x), np.concatenate(y), cfg, n_threads=1)
    return Bundle(model, MappingConfig("kde", 0.02), None, capture_gate=gate)


def _neutral_gate() -> CaptureGate:
    """A gate that finds every photo unlike the scene-exposed kind: all labels 0 but one."""
    lows, _ = pairs(6, seed=0)
    features = np.stack([extract_features(l, feature_set=2) for l in lows])
    labels = np.zeros(len(lows), np.float32)
    labels[0] = 1
    return CaptureGate.fit(np.concatenate([features] * 40), np.tile(labels, 40), GateSettings(neutral_luma=0.6))


def test_a_bundle_carries_its_gate_and_the_pipeline_applies_it(tmp_path):
    gate = _neutral_gate()
    manifest = save_bundle(_bundle(gate), tmp_path / "with")
    plain = save_bundle(_bundle(None), tmp_path / "without")
    assert GATE_FILE in manifest["files"] and manifest["capture_gate"] == {"neutral_luma": 0.6, "ramp": 0.1}
    assert GATE_FILE not in plain["files"] and plain["capture_gate"] is None
    assert manifest["model_version"] != plain["model_version"]
    lows, _ = pairs(6, seed=0)
    dark = lows[3]
    with_gate = Enhancer(load_bundle(tmp_path / "with"), device="cpu").enhance(dark, stages="hist")
    without = Enhancer(load_bundle(tmp_path / "without"), device="cpu").enhance(dark, stages="hist")
    own, gated = implied_luma(without.quantiles), implied_luma(with_gate.quantiles)
    keep = gate.keep(extract_features(dark, feature_set=2))
    assert keep < 0.9 and own < 0.5
    assert with_gate.exposure_kept == pytest.approx(keep) and without.exposure_kept == 1.0  # what the rows record
    # stage 2's prediction moved toward the neutral brightness, as far as the gate keeps it
    assert np.allclose(with_gate.quantiles, toward_luma(without.quantiles, keep, 0.6), atol=1e-6)
    assert gated > own + 0.05
    assert float((with_gate.image @ LUMA).mean()) > float((without.image @ LUMA).mean()) + 0.03


def test_bundles_from_before_the_gate_keep_their_version(tmp_path):
    plain = save_bundle(_bundle(None), tmp_path)
    earlier = {k: v for k, v in plain.items() if k != "capture_gate"}  # as written before the gate existed
    assert manifest_version(earlier) == manifest_version(plain) == plain["model_version"]
    assert load_bundle(tmp_path).capture_gate is None


def test_an_unlisted_or_altered_gate_file_is_refused(tmp_path):
    save_bundle(_bundle(_neutral_gate()), tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    del manifest["files"][GATE_FILE]
    manifest["model_version"] = manifest_version(manifest)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"{GATE_FILE} is needed"):
        load_bundle(tmp_path)
    save_bundle(_bundle(_neutral_gate()), tmp_path / "b")
    (tmp_path / "b" / GATE_FILE).write_bytes(b"not trees")
    with pytest.raises(BundleError, match="hash"):
        load_bundle(tmp_path / "b")


def test_nonsense_gate_settings_are_refused_before_loading(tmp_path):
    save_bundle(_bundle(_neutral_gate()), tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["capture_gate"]["neutral_luma"] = float("nan")
    manifest["model_version"] = manifest_version(manifest)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="capture_gate.neutral_luma"):
        load_bundle(tmp_path)


def test_the_gate_calls_a_resampled_copy_of_a_photo_what_it_calls_the_photo():
    """Two sets told apart by their noise, and less well by their colour cast: a smoother copy of a noisy
    set's photo (a large photo's working copy) must not pass for the clean set's kind. Fit on the photos
    alone (each counted three times), the gate let 15-40 % of such copies pass on these seeds."""
    rng = np.random.default_rng(2)
    ramp = np.linspace(0.03, 0.12, 64, dtype=np.float32)[None, :, None] * np.ones((48, 1, 3), np.float32)
    pairs_, lows, highs, predicted = [], [], [], []
    for i in range(40):
        scene = i % 2 == 0
        cast, sigma = (rng.uniform(1.1, 1.6), 0.02) if scene else (rng.uniform(0.9, 1.3), 0.006)
        low = ramp * np.array([cast, 1.0, 1 / cast], np.float32) + rng.normal(0, sigma, ramp.shape)
        if scene:  # targets whose brightness follows the scene, and a stage 2 that predicts it
            high = np.full((48, 64, 3), rng.uniform(0.2, 0.7), np.float32)
            guess = target_quantiles(high)
        else:  # targets of one brightness that stage 2 misses
            high = np.full((48, 64, 3), 0.45, np.float32)
            guess = target_quantiles(high) * np.exp(rng.normal(0, 0.3))
        name = "scene" if scene else "best"
        pairs_.append(Pair(f"{name}/{i}", None, None, f"{name}/{i}"))
        lows.append(np.clip(low, 0, 1).astype(np.float32))
        highs.append(high)
        predicted.append(guess)
    gate, record = fit_capture_gate(pairs_, lows, highs, np.stack(predicted), feature_set=2)
    assert gate is not None and record["resampled_copies"] == 2
    copies = [resampled_copy(low, np.random.default_rng(100 + i)) for i, low in enumerate(lows[::2])]
    assert np.mean([gate.keep(extract_features(c, feature_set=2)) > 0.5 for c in copies]) >= 0.95
    assert np.mean([gate.keep(extract_features(low, feature_set=2)) < 0.5 for low in lows[1::2]]) >= 0.8
