"""An archive's exposure: the offset and gamma on stage 2's percentiles, the bundle that carries them, their
fit to a few pairs (out of scene), and ``llie calibrate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_synthetic import pairs, to_uint8
from PIL import Image

from llie.method.bundle import MANIFEST, BundleError, default_bundle_path, derive_bundle, load_bundle, read_manifest
from llie.method.exposure_offset import MAX_GAMMA, MAX_STOPS, MIN_GAMMA, ExposureOffset, offset_quantiles
from llie.method.features import extract_features
from llie.method.pipeline import Enhancer
from llie.method.policy import map_under_policy
from llie.training.calibrate import GAMMAS, GRID, fit_offset, grid_index, pair_at_working_size, tone_grid
from llie.training.data import Pair
from llie_cli import calibrate as calibrate_cli
from llie_cli.main import cli


def test_an_offset_scales_the_percentiles_as_stops_scale_mid_tones_and_keeps_them_monotone():
    q = np.stack([np.linspace(0.0, 0.95, 21)] * 3).astype(np.float32)
    assert offset_quantiles(q, 0.0) is q
    up, down = offset_quantiles(q, 1.0), offset_quantiles(q, -1.0)
    unclipped = q < 0.95 / 2 ** (1 / 2.2)
    np.testing.assert_allclose(up[unclipped], q[unclipped] * 2 ** (1 / 2.2), rtol=1e-6)
    np.testing.assert_allclose(down, q * 2 ** (-1 / 2.2), rtol=1e-6)
    assert up.max() == 1.0 and np.all(np.diff(up, axis=1) >= 0) and up.dtype == q.dtype
    for bad in (float("nan"), MAX_STOPS + 0.1, -MAX_STOPS - 0.1):
        with pytest.raises(ValueError, match="stops"):
            ExposureOffset(bad)
    assert calibrate_cli.MAX_STOPS == MAX_STOPS  # repeated there so that --help stays light


def test_a_gamma_bends_the_percentiles_before_the_offset_and_keeps_them_monotone():
    q = np.stack([np.linspace(0.0, 0.95, 21)] * 3).astype(np.float32)
    flat, deep = offset_quantiles(q, 0.0, 0.8), offset_quantiles(q, 0.0, 1.25)
    np.testing.assert_allclose(flat, q**0.8, rtol=1e-6)
    assert np.all(flat[:, 1:-1] > q[:, 1:-1]) and np.all(deep[:, 1:-1] < q[:, 1:-1])  # shadows lifted, deepened
    both = offset_quantiles(q, -0.5, 0.8)
    np.testing.assert_allclose(both, q**0.8 * 2 ** (-0.5 / 2.2), rtol=1e-6)
    assert np.all(np.diff(both, axis=1) >= 0) and both.dtype == q.dtype
    for bad in (float("inf"), MIN_GAMMA - 0.01, MAX_GAMMA + 0.01):
        with pytest.raises(ValueError, match="gamma"):
            ExposureOffset(0.0, bad)
    # offsets written before the gamma keep their manifest section, and so their model version
    assert ExposureOffset(0.5).section() == {"stops": 0.5}
    assert ExposureOffset(0.5, 0.8).section() == {"stops": 0.5, "gamma": 0.8}
    assert (calibrate_cli.MIN_GAMMA, calibrate_cli.MAX_GAMMA) == (MIN_GAMMA, MAX_GAMMA)


def test_a_derived_bundle_keeps_the_files_and_moves_stage_2s_brightness(tmp_path):
    source = read_manifest(default_bundle_path())
    manifest = derive_bundle(None, tmp_path / "cal", {"exposure_offset": {"stops": 0.5}}, {"calibration": {"x": 1}})
    assert manifest["previous_version"] == source["model_version"] != manifest["model_version"]
    assert manifest["files"] == source["files"] and "eval" not in manifest
    assert manifest["metrics"]["calibration"] == {"x": 1} and "capture_gate" in manifest["metrics"]
    for name in source["files"]:
        assert (tmp_path / "cal" / name).read_bytes() == (default_bundle_path() / name).read_bytes()
    base, calibrated = load_bundle(None, refiner=False), load_bundle(tmp_path / "cal", refiner=False)
    assert calibrated.exposure_offset == ExposureOffset(0.5) and base.exposure_offset is None
    assert calibrated.model_version == manifest["model_version"]
    features = extract_features(pairs(1, seed=3)[0][0], None, base.quantile_model.config.features)
    (before, keep), (after, keep_after) = base.predict_quantiles(features), calibrated.predict_quantiles(features)
    assert keep_after == keep
    np.testing.assert_allclose(after, np.clip(before * 2 ** (0.5 / 2.2), 0, 1), rtol=1e-5)
    with pytest.raises(FileExistsError):  # never over another folder's files
        derive_bundle(None, tmp_path / "cal", {"exposure_offset": {"stops": 0.2}}, {})
    (tmp_path / "empty").mkdir()  # an empty folder made for it is fine
    derive_bundle(None, tmp_path / "empty", {"exposure_offset": {"stops": 0.2}}, {})
    assert load_bundle(tmp_path / "empty", refiner=False).exposure_offset == ExposureOffset(0.2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_a_bundle_replaced_after_it_was_loaded_is_not_derived_from(tmp_path):
    import shutil

    shutil.copytree(default_bundle_path(), tmp_path / "model")
    loaded = load_bundle(tmp_path / "model", refiner=False).model_version
    derive_bundle(tmp_path / "model", tmp_path / "other", {"exposure_offset": {"stops": 1.0}}, {})
    shutil.rmtree(tmp_path / "model")
    (tmp_path / "other").rename(tmp_path / "model")  # another model in its place while the fit ran
    with pytest.raises(BundleError, match="changed since it was loaded"):
        derive_bundle(tmp_path / "model", tmp_path / "cal", {"exposure_offset": {"stops": 0.5}}, {}, loaded)
    assert not (tmp_path / "cal").exists()
    derive_bundle(
        None,
        tmp_path / "ok",
        {"exposure_offset": {"stops": 0.5}},
        {},
        read_manifest(default_bundle_path())["model_version"],
    )
    assert load_bundle(tmp_path / "ok", refiner=False).exposure_offset == ExposureOffset(0.5)


def test_a_bundle_derived_from_a_format_1_bundle_has_a_version_that_covers_its_offset(tmp_path):
    import shutil

    from llie.method.bundle import manifest_version

    shutil.copytree(default_bundle_path(), tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / MANIFEST).read_text())
    manifest["format"] = 1  # its version hashed the files only
    manifest["model_version"] = manifest_version(manifest)
    (tmp_path / "old" / MANIFEST).write_text(json.dumps(manifest))
    first = derive_bundle(tmp_path / "old", tmp_path / "a", {"exposure_offset": {"stops": 0.5}}, {})
    second = derive_bundle(tmp_path / "old", tmp_path / "b", {"exposure_offset": {"stops": -0.5}}, {})
    assert first["format"] == 2 and first["previous_version"] == manifest["model_version"]
    assert len({first["model_version"], second["model_version"], manifest["model_version"]}) == 3
    assert load_bundle(tmp_path / "b", refiner=False).exposure_offset == ExposureOffset(-0.5)


def test_an_offset_out_of_range_in_a_manifest_is_refused(tmp_path):
    derive_bundle(None, tmp_path / "cal", {"exposure_offset": {"stops": 0.5}}, {})
    path = tmp_path / "cal" / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["exposure_offset"] = {"stops": 9.0}
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="exposure_offset.stops"):
        load_bundle(tmp_path / "cal", refiner=False)
    manifest["exposure_offset"] = {"stops": 0.5, "gamma": 3.0}
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="exposure_offset.gamma"):
        load_bundle(tmp_path / "cal", refiner=False)


def test_a_derived_bundle_with_a_gamma_bends_stage_2s_percentiles(tmp_path):
    derive_bundle(None, tmp_path / "cal", {"exposure_offset": {"stops": -0.25, "gamma": 0.8}}, {})
    base, calibrated = load_bundle(None, refiner=False), load_bundle(tmp_path / "cal", refiner=False)
    assert calibrated.exposure_offset == ExposureOffset(-0.25, 0.8)
    features = extract_features(pairs(1, seed=3)[0][0], None, base.quantile_model.config.features)
    before, after = base.predict_quantiles(features)[0], calibrated.predict_quantiles(features)[0]
    np.testing.assert_allclose(after, np.clip(before, 0, 1) ** 0.8 * 2 ** (-0.25 / 2.2), rtol=1e-5)


def test_the_fit_picks_the_best_mean_and_scores_each_scene_at_the_offset_of_the_others():
    grid = np.array([[-1.0, 1.0], [0.0, 1.0], [1.0, 0.8]])
    # a and b like +1, c likes -1 so much that +1 wins only by a little: without a, the others prefer -1
    # (a scores 20 there), without b too (21); without c, +1 (c scores 19). The fit does not carry over.
    table = np.array([[20.0, 22.0, 25.0], [21.0, 22.0, 24.0], [26.0, 23.0, 19.0]])
    fit = fit_offset(table, ["a", "b", "c"], current=(0.0, 1.0), grid=grid)
    assert fit.fitted == (1.0, 0.8) and (fit.pairs, fit.scenes) == (3, 3)
    assert fit.before == pytest.approx(67 / 3)
    assert fit.after == pytest.approx(20.0)
    assert fit.written == (0.0, 1.0) and fit.interval[0] < 0  # not adopted
    consistent = table[:2].repeat(3, axis=0)  # six pairs of six scenes that all like +1
    fit = fit_offset(consistent, list("abcdef"), current=(-1.0, 1.0), grid=grid)
    assert fit.written == fit.fitted == (1.0, 0.8) and fit.interval[0] > 0 and fit.before == pytest.approx(20.5)
    with pytest.raises(ValueError, match="2 scenes"):
        fit_offset(table, ["a", "a", "a"], current=(0.0, 1.0), grid=grid)
    full = tone_grid()
    assert len(full) == len(GRID) * len(GAMMAS) and grid_index((2 / 3, 0.8), full) == grid_index((0.67, 0.8), full)
    assert tuple(full[grid_index((0.0, 1.0), full)]) == (0.0, 1.0)


def _archive(root, stops: list[float], gamma: float = 1.0):
    """Pairs whose well-lit photos are what stage 3 makes of the dark ones ``stops[i]`` brighter and bent by
    ``gamma`` (with a level of grain, so no pair is matched exactly)."""
    bundle = load_bundle(None, refiner=False)
    (root / "low").mkdir(parents=True)
    (root / "high").mkdir()
    rng = np.random.default_rng(0)
    for i, low in enumerate(pairs(len(stops), 40, 56, seed=7)[0]):
        quantiles, _ = bundle.predict_quantiles(extract_features(low, None, bundle.quantile_model.config.features))
        moved = offset_quantiles(quantiles, stops[i], gamma)
        high, _ = map_under_policy(low, moved, bundle.mapping, bundle.policy)
        high = np.clip(high + rng.normal(0, 1 / 255, high.shape), 0, 1)
        Image.fromarray(to_uint8(low)).save(root / "low" / f"p{i}.png")
        Image.fromarray(to_uint8(high)).save(root / "high" / f"p{i}.png")
    return root


def test_llie_calibrate_finds_an_archives_offset_and_writes_a_bundle_that_applies_it(tmp_path):
    data = _archive(tmp_path / "archive", [2 / 3] * 6)
    result = CliRunner().invoke(
        cli, ["calibrate", "--data", str(data), "--output", str(tmp_path / "cal"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "fit on 6 pairs of 6 scenes: +0.67 stops, gamma 1.00" in result.output
    record = read_manifest(tmp_path / "cal")["metrics"]["calibration"]
    assert record["written"] == record["fitted"] == pytest.approx([2 / 3, 1.0], abs=1e-3)
    assert record["after"] > record["before"] + 1.0
    assert record["interval"][0] > 0 and GRID[0] <= record["written"][0] <= GRID[-1]
    dark = pairs(1, 40, 56, seed=99)[0][0]
    base = Enhancer.load(None, refiner=False).enhance(dark, stages="hist").image
    brighter = Enhancer.load(tmp_path / "cal", refiner=False).enhance(dark, stages="hist").image
    assert brighter.mean() > base.mean() * 1.1


def test_llie_calibrate_finds_an_archives_contrast(tmp_path):
    data = _archive(tmp_path / "archive", [0.0] * 6, gamma=0.8)
    result = CliRunner().invoke(
        cli, ["calibrate", "--data", str(data), "--output", str(tmp_path / "cal"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "fit on 6 pairs of 6 scenes: +0.00 stops, gamma 0.80" in result.output
    assert load_bundle(tmp_path / "cal", refiner=False).exposure_offset == ExposureOffset(0.0, 0.8)
    dark = pairs(1, 40, 56, seed=99)[0][0]
    base = Enhancer.load(None, refiner=False).enhance(dark, stages="hist").image
    flatter = Enhancer.load(tmp_path / "cal", refiner=False).enhance(dark, stages="hist").image
    assert np.percentile(flatter, 10) > np.percentile(base, 10)  # shadows lifted


def test_llie_calibrate_keeps_the_models_exposure_where_the_pairs_disagree(tmp_path):
    data = _archive(tmp_path / "archive", [1.5, -1.5] * 3)
    result = CliRunner().invoke(
        cli, ["calibrate", "--data", str(data), "--output", str(tmp_path / "cal"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "so the bundle keeps +0.00 stops, gamma 1.00" in result.output
    record = read_manifest(tmp_path / "cal")["metrics"]["calibration"]
    assert record["written"] == [0.0, 1.0] != record["fitted"] and record["interval"][0] <= 0
    assert load_bundle(tmp_path / "cal", refiner=False).exposure_offset == ExposureOffset(0.0)


def test_llie_calibrate_sets_an_offset_by_hand_and_refuses_what_it_cannot_do(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["calibrate", "--exposure", "-0.5", "--output", str(tmp_path / "dark")])
    assert result.exit_code == 0, result.output
    assert load_bundle(tmp_path / "dark", refiner=False).exposure_offset == ExposureOffset(-0.5)
    assert read_manifest(tmp_path / "dark")["metrics"]["calibration"] == {"written": [-0.5, 1.0], "set_by_hand": True}
    result = runner.invoke(cli, ["calibrate", "--gamma", "0.8", "--output", str(tmp_path / "flat")])
    assert result.exit_code == 0, result.output
    assert load_bundle(tmp_path / "flat", refiner=False).exposure_offset == ExposureOffset(0.0, 0.8)
    assert "+0.00 stops, gamma 0.80" in result.output
    refused = [
        (["--output", str(tmp_path / "none")], "either --data"),
        (["--exposure", "0.5", "--data", str(tmp_path), "--output", str(tmp_path / "both")], "either --data"),
        (["--exposure", "0.5", "--output", str(tmp_path / "dark")], "already exists"),
        (["--exposure", "5", "--output", str(tmp_path / "far")], "-4.0<=x<=4.0"),
        (["--gamma", "0.3", "--output", str(tmp_path / "far")], "0.5<=x<=2.0"),
        (["--gamma", "0.8", "--data", str(tmp_path), "--output", str(tmp_path / "both")], "either --data"),
        (["--data", str(tmp_path), "--output", str(tmp_path / "nopairs")], "no low/ and high/"),
    ]
    for args, message in refused:
        result = runner.invoke(cli, ["calibrate", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not (tmp_path / "none").exists() and not (tmp_path / "far").exists()


def test_calibration_pairs_are_seen_at_the_working_size_and_must_match(tmp_path):
    big = np.full((900, 1200, 3), 40, np.uint8)
    big[:, 600:] = 200  # a left and a right half: an area average keeps the boundary's column pair
    Image.fromarray(big).save(tmp_path / "low.png")
    Image.fromarray(big).save(tmp_path / "high.png")
    low, high = pair_at_working_size(Pair("p", tmp_path / "low.png", tmp_path / "high.png", "s"))
    assert low.shape == high.shape == (450, 600, 3)
    assert low[:, :300].max() == pytest.approx(40 / 255) and low[:, 300:].min() == pytest.approx(200 / 255)
    Image.fromarray(big[:800]).save(tmp_path / "high.png")
    with pytest.raises(ValueError, match="pair p: the low image is 1200x900, the high one 1200x800"):
        pair_at_working_size(Pair("p", tmp_path / "low.png", tmp_path / "high.png", "s"))
