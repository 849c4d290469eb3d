"""Stage 3: the KDE target histogram and histogram matching through monotone LUTs."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_synthetic import pair

from llie.method.features import PERCENTILES, channel_histograms, histogram_percentiles
from llie.method.mapping import (
    MappingConfig,
    channel_lut,
    infer_levels,
    kde_histogram,
    match_to_quantiles,
    to_levels,
)
from llie.method.quantiles import target_quantiles

INTERIOR = slice(1, -1)  # 5th..95th percentile: the extremes of a few-level dark image are not matchable


def _random_quantiles(rng: np.random.Generator, n: int = 3) -> np.ndarray:
    lo, hi = np.sort(rng.uniform(0, 1, size=(2, n)), axis=0)
    return np.sort(rng.uniform(lo[:, None], hi[:, None], size=(n, len(PERCENTILES))), axis=1)


def _source_hist(rng: np.random.Generator, levels: int = 256) -> np.ndarray:
    hist = rng.poisson(rng.gamma(0.5, 20.0, size=levels)).astype(np.float64)
    hist[rng.random(levels) < 0.3] = 0  # empty stretches, as in a dark 8-bit image
    hist[0] += 1
    return hist


@pytest.mark.parametrize("bandwidth", [0.0, 1e-5, 0.01, 0.3])
def test_kde_histogram_sums_to_one_and_is_nonnegative(bandwidth):
    rng = np.random.default_rng(0)
    cases = list(_random_quantiles(rng, 2))
    cases.append(np.full(21, 0.4))  # a flat image: all percentiles equal
    cases.append(np.linspace(0, 1, 21))  # mass right up to both ends
    cases.append(np.r_[np.zeros(10), np.ones(11)])  # two spikes at the ends
    for q in cases:
        hist = kde_histogram(q, bandwidth)
        assert hist.shape == (1024,)
        assert np.isfinite(hist).all()
        assert (hist >= 0).all()
        assert hist.sum() == pytest.approx(1.0, abs=1e-9)


def test_kde_histogram_follows_the_percentiles():
    q = np.linspace(0.2, 0.6, 21)  # uniform on [0.2, 0.6]
    hist = kde_histogram(q, 0.005)
    centres = (np.arange(1024) + 0.5) / 1024
    assert hist[(centres > 0.22) & (centres < 0.58)].sum() > 0.9
    assert hist[centres < 0.15].sum() < 0.01 and hist[centres > 0.65].sum() < 0.01


@pytest.mark.parametrize(
    "config",
    [MappingConfig("interp"), MappingConfig("kde", 0.002), MappingConfig("kde", 0.02), MappingConfig("kde", 0.2)],
)
def test_luts_are_monotone(config):
    rng = np.random.default_rng(1)
    for q in _random_quantiles(rng, 6):
        lut = channel_lut(_source_hist(rng), q, config)
        assert lut.shape == (256,)
        assert (np.diff(lut) >= 0).all()
        assert lut.min() >= 0 and lut.max() <= 1


def test_unknown_mapping_method_is_refused():
    with pytest.raises(ValueError, match="kde"):
        channel_lut(np.ones(256), np.linspace(0, 1, 21), MappingConfig("cubic"))


@pytest.mark.parametrize("config", [MappingConfig("interp"), MappingConfig("kde", 0.005)])
@pytest.mark.parametrize("seed", [0, 2])
def test_matching_reaches_the_target_percentiles(config, seed):
    low, high = pair(96, 128, seed=seed)
    q = target_quantiles(high)
    out = match_to_quantiles(low, q, config)
    assert out.shape == low.shape and out.dtype == np.float32
    before = histogram_percentiles(channel_histograms(low))
    after = histogram_percentiles(channel_histograms(out))
    err_before = np.abs(before - q)[:, INTERIOR]
    err_after = np.abs(after - q)[:, INTERIOR]
    assert err_after.mean() < 0.015, err_after.mean()
    assert err_after.max() < 0.08, err_after.max()
    assert err_after.mean() < err_before.mean() / 10


def test_matching_is_monotone_in_the_input():
    low, high = pair(64, 80, seed=3)
    out = match_to_quantiles(low, target_quantiles(high), MappingConfig("kde", 0.01))
    for c in range(3):
        order = np.argsort(low[..., c].ravel(), kind="stable")
        assert (np.diff(out[..., c].ravel()[order]) >= 0).all()


def test_16bit_path_uses_65536_levels_and_is_monotone():
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 9000, size=(40, 50, 3))  # a dark 16-bit image, mostly off the 8-bit grid
    rgb = (codes / 65535.0).astype(np.float32)
    assert infer_levels(rgb) == 65536
    assert infer_levels(np.rint(rgb * 255) / 255) == 256
    assert to_levels(rgb, 65536).dtype == np.uint16
    q = _random_quantiles(rng, 3)
    for config in (MappingConfig("kde", 0.01), MappingConfig("interp")):
        out = match_to_quantiles(rgb, q, config, levels=65536)
        assert out.shape == rgb.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1
        hist = np.bincount(to_levels(rgb, 65536)[..., 0].ravel(), minlength=65536)
        lut = channel_lut(hist, q[0], config)
        assert lut.shape == (65536,)
        assert (np.diff(lut) >= 0).all()
        for c in range(3):
            order = np.argsort(codes[..., c].ravel(), kind="stable")
            assert (np.diff(out[..., c].ravel()[order]) >= 0).all()
        # 16-bit keeps distinctions an 8-bit table would merge: more distinct output values
        out8 = match_to_quantiles(rgb, q, config, levels=256)
        assert len(np.unique(out[..., 0])) > len(np.unique(out8[..., 0]))


@pytest.mark.parametrize("seed", [0, 1])
def test_small_bandwidth_approaches_interp(seed):
    low, high = pair(96, 128, seed=seed)
    q = target_quantiles(high)
    for c in range(3):
        hist = np.bincount(to_levels(low, 256)[..., c].ravel(), minlength=256)
        used = hist > 0  # levels no pixel has never reach an output
        interp = channel_lut(hist, q[c], MappingConfig("interp"))
        gap = {
            bw: np.abs(channel_lut(hist, q[c], MappingConfig("kde", bw)) - interp)[used].max()
            for bw in (0.1, 1e-3, 1e-4, 1e-6, 0.0)
        }
        for bw in (1e-3, 1e-4, 1e-6, 0.0):
            assert gap[bw] < 0.02, (c, bw, gap)
            assert gap[bw] < gap[0.1] / 3, (c, bw, gap)


@pytest.mark.parametrize("bandwidth", [0.005, 0.02, 0.08])
def test_grid_kde_equals_scipy_gaussian_kde(bandwidth):
    """The binned KDE is scipy's gaussian_kde of the same points (with reflection), to within binning."""
    from scipy.stats import gaussian_kde

    from llie.method.mapping import inverse_cdf

    q = np.sort(np.random.default_rng(3).uniform(0.05, 0.9, 21))
    points = inverse_cdf(q, (np.arange(401) + 0.5) / 401)
    centres = (np.arange(1024) + 0.5) / 1024
    kde = gaussian_kde(points, bw_method=bandwidth / points.std())
    reference = kde(centres) + kde(-centres) + kde(2.0 - centres)
    reference /= reference.sum()
    ours = kde_histogram(q, bandwidth)
    assert np.abs(np.cumsum(ours) - np.cumsum(reference)).max() < 1e-3


def _hue(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b))


def _hue_turn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(_hue(a) - _hue(b)) % 360
    return np.minimum(d, 360 - d)


def _sunset(h: int = 64, w: int = 96) -> np.ndarray:
    """A saturated scene: an orange-to-red sky over a dark blue band, dimmed."""
    t = np.linspace(0, 1, h)[:, None, None]
    sky = np.concatenate(
        [np.full((h, w, 1), 0.95), 0.25 + 0.45 * (1 - t) * np.ones((h, w, 1)), np.full((h, w, 1), 0.05)], axis=2
    )
    sky[int(0.75 * h) :] = [0.05, 0.1, 0.35]
    return (sky * 0.3).astype(np.float32)


def test_hue_mode_keeps_the_hue_of_a_saturated_scene():
    """Per-channel targets that do not fit the photo (a grey-world histogram for an orange sky) turn its hue
    when each channel is matched alone; the hue-keeping map does not."""
    dim = _sunset()
    grey = np.tile(np.linspace(0.05, 0.9, 21), (3, 1))  # what a model trained on neutral scenes predicts
    channels = match_to_quantiles(dim, grey, MappingConfig())
    kept = match_to_quantiles(dim, grey, MappingConfig(colour="hue"))
    saturated = (dim.max(-1) - dim.min(-1)) / dim.max(-1) > 0.5
    assert np.mean(_hue_turn(dim, channels)[saturated] > 45) > 0.15  # the failure the mode exists for
    assert np.mean(_hue_turn(dim, kept)[saturated] > 45) == 0.0
    assert kept.mean() > 2 * dim.mean()  # and it still brightens


def test_hue_mode_takes_brightness_from_the_per_channel_maps():
    rng = np.random.default_rng(3)
    rgb = rng.uniform(0.02, 0.2, (40, 50, 3)).astype(np.float32)
    q = np.tile(np.linspace(0.1, 0.8, 21), (3, 1))
    channels = match_to_quantiles(rgb, q, MappingConfig())
    kept = match_to_quantiles(rgb, q, MappingConfig(colour="hue"))
    luma = np.array([0.299, 0.587, 0.114])
    assert abs((kept @ luma).mean() - (channels @ luma).mean()) < 0.02
    np.testing.assert_allclose(kept.mean((0, 1)), channels.mean((0, 1)), atol=0.02)  # the global gains


@pytest.mark.parametrize("seed", range(4))
def test_slope_bound_holds_and_keeps_the_median(seed):
    rng = np.random.default_rng(seed)
    hist = _source_hist(rng)
    q = _random_quantiles(rng, 1)[0]
    q[8:12] = q[8]  # a spike in the target: a flat stretch, then a cliff, in the plain table
    q = np.maximum.accumulate(q)
    plain = channel_lut(hist, q, MappingConfig())
    bounded = channel_lut(hist, q, MappingConfig(max_slope=3.0, min_slope=0.2))
    cdf = np.cumsum(hist) / hist.sum()
    lo, mid, hi = (int(np.searchsorted(cdf, p)) for p in (0.01, 0.5, 0.99))
    mean_step = (plain[hi] - plain[lo]) / (hi - lo)
    steps = np.diff(bounded.astype(np.float64))
    inside = (bounded[:-1] > 0) & (bounded[1:] < 1)  # clipping at black and white may flatten the ends
    assert np.all(steps >= -1e-7)
    assert steps.max() <= 3.0 * mean_step + 1e-6
    assert steps[inside].min() >= 0.2 * mean_step - 1e-6
    assert bounded[mid] == pytest.approx(plain[mid], abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_slope_bound_anchored_at_the_mean_keeps_the_mapped_mean_under_the_same_bounds(seed):
    rng = np.random.default_rng(seed)
    hist = _source_hist(rng)
    q = np.maximum.accumulate(_random_quantiles(rng, 1)[0])
    plain = channel_lut(hist, q, MappingConfig())
    by_median = channel_lut(hist, q, MappingConfig(max_slope=3.0, min_slope=0.2))
    by_mean = channel_lut(hist, q, MappingConfig(max_slope=3.0, min_slope=0.2, slope_anchor="mean"))
    weights = hist / hist.sum()
    if by_mean.min() > 0 and by_mean.max() < 1:  # nothing clipped at black or white: the mean is exact
        assert weights @ by_mean == pytest.approx(weights @ plain, abs=1e-5)
    # the same steps, shifted: only the anchor differs
    np.testing.assert_allclose(
        np.diff(by_mean)[(by_mean[:-1] > 0) & (by_mean[1:] < 1)],
        np.diff(by_median)[(by_mean[:-1] > 0) & (by_mean[1:] < 1)],
        atol=1e-6,
    )


def test_the_mean_anchor_keeps_a_night_photos_brightness_where_the_median_anchor_lifts_it():
    """Most of the photo on the lowest two levels (a night sky) and a subject above: the plain table lifts
    the sky's second level far above its first, the bound clips that step, and the median anchor (inside
    the sky) keeps the second level and lifts the first with it, so the photo comes out brighter than
    stage 2 predicted; the mean anchor keeps the predicted brightness and lifts the sky's black less."""
    hist = np.zeros(256)
    hist[0], hist[1] = 0.10, 0.45  # the median level is the sky's second
    hist[2:200] = 0.45 / 198
    q = np.concatenate([[0.02, 0.03], np.linspace(0.25, 0.30, 10), np.linspace(0.33, 0.95, 9)])
    plain = channel_lut(hist, q, MappingConfig())
    by_median = channel_lut(hist, q, MappingConfig(max_slope=16.0, min_slope=0.05))
    by_mean = channel_lut(hist, q, MappingConfig(max_slope=16.0, min_slope=0.05, slope_anchor="mean"))
    weights = hist / hist.sum()
    assert plain[1] - plain[0] > 2 * (by_median[1] - by_median[0])  # the step the bound clips
    assert by_median[1] == pytest.approx(plain[1], abs=1e-6) and by_median[0] > plain[0] + 0.1
    assert weights @ by_median > weights @ plain + 0.01
    assert weights @ by_mean == pytest.approx(weights @ plain, abs=1e-4)
    assert plain[0] < by_mean[0] < by_median[0] - 0.01


def test_mapping_settings_are_checked():
    with pytest.raises(ValueError, match="colour"):
        MappingConfig(colour="lab")
    with pytest.raises(ValueError, match="slope anchor"):
        MappingConfig(slope_anchor="black")
    with pytest.raises(ValueError, match="hue_mix"):
        MappingConfig(hue_mix=1.5)


def test_bounded_colour_keeps_small_turns_per_channel_and_bounds_large_ones():
    dim = _sunset()
    grey = np.tile(np.linspace(0.05, 0.9, 21), (3, 1))
    channels = match_to_quantiles(dim, grey, MappingConfig())
    bounded = match_to_quantiles(dim, grey, MappingConfig(colour="bounded", max_hue_turn=30))
    saturated = (dim.max(-1) - dim.min(-1)) / dim.max(-1) > 0.5
    assert np.mean(_hue_turn(dim, bounded)[saturated] > 45) == 0.0
    # a noise-level chroma (a dark, almost grey shot) has no hue to keep: the per-channel result stands
    rng = np.random.default_rng(5)
    grey_shot = (0.05 + rng.normal(0, 0.002, (30, 40, 1)) + rng.normal(0, 0.002, (30, 40, 3))).astype(np.float32)
    np.testing.assert_allclose(
        match_to_quantiles(grey_shot, grey, MappingConfig(colour="bounded")),
        match_to_quantiles(grey_shot, grey, MappingConfig()),
        atol=1e-6,
    )
    untouched = _hue_turn(dim, channels) < 30 - 15
    np.testing.assert_allclose(bounded[untouched], channels[untouched], atol=1e-6)


def _keep_hue_reference(codes, luts, levels, config):
    """stage 3's hue-keeping result as first written (numpy's reductions, gathers of the pixels that
    show a hue or pass white, both passes computed): what the faster code must equal bit for bit."""
    from llie.method.mapping import CHROMA_FLOOR, HUE_RAMP, LUMA, _per_channel_and_hue_kept, hue_turn

    per_channel, kept = _per_channel_and_hue_kept(codes, luts, levels)
    sums = [per_channel.reshape(-1, 3).sum(axis=0, dtype=np.float64), kept.reshape(-1, 3).sum(axis=0, dtype=np.float64)]
    gains = (sums[0] / np.maximum(sums[1], 1e-9)).astype(np.float32)
    per_channel, kept = _per_channel_and_hue_kept(codes, luts, levels)
    kept *= gains
    luma, peak = kept @ LUMA, kept.max(axis=-1)
    over = peak > 1.0
    if over.any():
        shrink = np.clip((1.0 - luma[over]) / np.maximum(peak[over] - luma[over], 1e-6), 0.0, 1.0)
        kept[over] = luma[over, None] + (kept[over] - luma[over, None]) * shrink[:, None]
    source = codes.astype(np.float32) / np.float32(levels - 1)
    if config.colour == "hue":
        weight = np.full(source.shape[:2] + (1,), config.hue_mix, np.float32)
    else:
        chroma = source.max(axis=-1) - source.min(axis=-1)
        weight = np.clip(chroma / CHROMA_FLOOR - 1.0, 0.0, 1.0)
        shown = weight > 0
        turn = hue_turn(source[shown], per_channel[shown])
        weight[shown] *= np.clip((turn - config.max_hue_turn) / HUE_RAMP + 1.0, 0.0, 1.0)
        weight = weight[..., None].astype(np.float32)
    return per_channel + weight * (np.clip(kept, 0.0, 1.0) - per_channel)


@pytest.mark.parametrize("colour", ["bounded", "hue"])
@pytest.mark.parametrize("scene", ["saturated and bright", "dark and almost grey"])
def test_keep_hue_shortcuts_leave_every_value_as_it_was(colour, scene):
    """(The bright scene: 99.8 % of pixels show a hue, 25 % pass white; the dark one: 0.02 % and 0.07 %.)
    The channel max/min by np.maximum/np.minimum, hue angles of all pixels when most show a hue,
    the past-white arithmetic on all pixels when many pass it, and the reuse of a one-band image's
    first pass are speed-ups only: the result equals the plain computation bit for bit, on a scene
    that takes the whole-image branches and on one that takes the gathering ones."""
    from llie.method import mapping

    rng = np.random.default_rng(11)
    if scene == "saturated and bright":
        image = np.clip(pair(64, 96, seed=3)[0] * 2.5 + rng.normal(0, 0.02, (64, 96, 3)), 0, 1)
        quantiles = np.tile(np.linspace(0.3, 1.0, 21), (3, 1)) * np.array([[1.0], [0.8], [0.6]])
    else:
        image = 0.03 + rng.normal(0, 0.004, (64, 96, 1)) + rng.normal(0, 0.003, (64, 96, 3))
        quantiles = np.tile(np.linspace(0.05, 0.9, 21), (3, 1))
    image = np.clip(image, 0, 1).astype(np.float32)
    config = MappingConfig(colour=colour, hue_mix=0.7)
    codes = to_levels(image, 256)
    luts = [
        mapping.channel_lut(np.bincount(codes[..., c].ravel(), minlength=256), quantiles[c], config) for c in range(3)
    ]
    np.testing.assert_array_equal(
        match_to_quantiles(image, quantiles, config), _keep_hue_reference(codes, luts, 256, config)
    )
    values = rng.random((50, 3), dtype=np.float32)
    values[0, 1] = np.nan
    np.testing.assert_array_equal(mapping.channel_max(values), values.max(axis=-1))
    np.testing.assert_array_equal(mapping.channel_min(values), values.min(axis=-1))
