"""Bootstrap intervals of a mean, and the paired comparison of two evaluation reports."""

import numpy as np
import pytest

from llie.stats import (
    BOOTSTRAP_MAX_VALUES,
    bootstrap_interval,
    clustered_difference,
    mean_interval,
    paired_difference,
)
from llie.training.evaluate import compare_reports, format_comparison, format_table


def test_interval_brackets_the_mean_inside_the_range():
    values = np.random.default_rng(1).normal(20.0, 3.0, size=15)
    low, high = bootstrap_interval(values)
    assert values.min() < low < values.mean() < high < values.max()


def test_constant_values_give_a_point():
    assert bootstrap_interval([21.5] * 9) == pytest.approx((21.5, 21.5))


def test_same_values_same_interval_and_seed_matters_only_slightly():
    values = np.random.default_rng(2).normal(0.0, 1.0, size=40)
    assert bootstrap_interval(values) == bootstrap_interval(values)
    a, b = bootstrap_interval(values, seed=0), bootstrap_interval(values, seed=1)
    assert a != b and abs(a[0] - b[0]) < 0.05 and abs(a[1] - b[1]) < 0.05


def test_more_images_narrow_the_interval():
    rng = np.random.default_rng(3)
    few, many = rng.normal(20.0, 3.0, size=15), rng.normal(20.0, 3.0, size=240)
    width = lambda v: np.subtract(*bootstrap_interval(v)[::-1])
    assert width(many) < 0.4 * width(few)


def test_higher_confidence_is_wider():
    values = np.random.default_rng(4).normal(0.0, 1.0, size=30)
    l90, h90 = bootstrap_interval(values, confidence=0.90)
    l99, h99 = bootstrap_interval(values, confidence=0.99)
    assert l99 < l90 and h99 > h90


def test_coverage_of_the_true_mean_is_near_the_confidence():
    rng = np.random.default_rng(5)
    hits = 0
    for i in range(200):
        low, high = bootstrap_interval(rng.normal(10.0, 2.0, size=30), resamples=2000, seed=i)
        hits += low <= 10.0 <= high
    assert 0.88 <= hits / 200 <= 0.99  # percentile bootstrap runs a little narrow at n=30


@pytest.mark.parametrize(
    "values, confidence, message",
    [
        ([], 0.95, "at least one"),
        ([1.0, 2.0], 1.0, "confidence"),
        ([1.0, 2.0], 0.0, "confidence"),
        ([1.0, np.inf], 0.95, "finite"),
        ([1.0, np.nan], 0.95, "finite"),
    ],
)
def test_bad_input_is_refused(values, confidence, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(values, confidence=confidence)


def test_zero_resamples_is_refused():
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval([1.0, 2.0], resamples=0)


def _report(version, psnrs, ssims):
    rows = [{"name": f"{i}.png", "stage3_psnr": p, "stage3_ssim": s} for i, (p, s) in enumerate(zip(psnrs, ssims))]
    return {
        "rows": rows,
        "mean": {"stage3_psnr": float(np.mean(psnrs)), "stage3_ssim": float(np.mean(ssims))},
        "model_version": version,
    }


def test_pairing_resolves_a_small_uniform_gain_that_the_spread_hides():
    rng = np.random.default_rng(6)
    base_psnr = rng.normal(19.0, 3.5, size=15)  # per-image difficulty, as on eval15
    base_ssim = rng.uniform(0.5, 0.7, size=15)
    new_psnr = base_psnr + 0.3 + rng.normal(0.0, 0.1, size=15)
    new_ssim = base_ssim + rng.normal(0.0, 0.01, size=15)
    # each model's own interval overlaps the other's mean...
    low, high = bootstrap_interval(base_psnr)
    assert low < new_psnr.mean() < high
    # ...but the paired difference is clearly positive
    c = compare_reports(_report("new", new_psnr, new_ssim), _report("old", base_psnr, base_ssim))
    psnr = c["metrics"]["stage3_psnr"]
    assert psnr["difference"] == pytest.approx(np.mean(new_psnr - base_psnr))
    assert 0.0 < psnr["interval"][0] < psnr["difference"] < psnr["interval"][1] < 0.6
    assert psnr["better"] == int(np.sum(new_psnr > base_psnr)) and psnr["better"] + psnr["worse"] == 15
    ssim = c["metrics"]["stage3_ssim"]
    assert ssim["interval"][0] < 0.0 < ssim["interval"][1]
    table = format_comparison(c)
    assert "new minus old" in table
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| stage3")}
    assert lines["stage3_psnr"].endswith("| better |") and lines["stage3_ssim"].endswith("| no |")


def test_comparison_needs_the_same_pairs():
    a = _report("a", [20.0, 21.0], [0.5, 0.6])
    b = _report("b", [20.0, 21.0], [0.5, 0.6])
    b["rows"] = b["rows"][::-1]
    with pytest.raises(ValueError, match="same pairs"):
        compare_reports(a, b)


def test_table_prints_the_interval_row():
    report = _report("m", [18.0, 20.0, 22.0, 19.0], [0.5, 0.6, 0.7, 0.55])
    report["interval"] = {"stage3_psnr": [18.5, 21.25], "stage3_ssim": [0.52, 0.66]}
    last = format_table(report).splitlines()[-1]
    assert last.startswith("| 95% interval of the mean |")
    assert "18.50 to 21.25" in last and "0.520 to 0.660" in last


def test_mean_interval_is_the_bootstrap_for_few_values():
    values = np.random.default_rng(7).normal(0.0, 1.0, size=BOOTSTRAP_MAX_VALUES)
    assert mean_interval(values) == bootstrap_interval(values)


def test_mean_interval_of_many_values_agrees_with_the_bootstrap():
    # skewed on purpose: the normal approximation must hold where the bootstrap is still affordable
    values = np.random.default_rng(8).exponential(2.0, size=BOOTSTRAP_MAX_VALUES + 1)
    (nl, nh), (bl, bh) = mean_interval(values), bootstrap_interval(values)
    assert nl < values.mean() < nh
    assert abs(nl - bl) < 0.1 * (bh - bl) and abs(nh - bh) < 0.1 * (bh - bl)


def test_mean_interval_of_an_archive_is_quick_and_narrow():
    values = np.random.default_rng(9).normal(0.3, 2.0, size=1_000_000)
    low, high = mean_interval(values)
    assert low < 0.3 < high and high - low < 0.02


@pytest.mark.parametrize(
    "values, confidence, message",
    [
        (np.r_[np.zeros(BOOTSTRAP_MAX_VALUES), np.inf], 0.95, "finite"),
        (np.zeros(BOOTSTRAP_MAX_VALUES + 1), 1.5, "confidence"),
    ],
)
def test_mean_interval_refuses_bad_input_for_many_values(values, confidence, message):
    with pytest.raises(ValueError, match=message):
        mean_interval(values, confidence=confidence)


def test_paired_difference_counts_and_brackets_the_mean_difference():
    d = np.array([0.5, 0.2, -0.1, 0.4, 0.0, 0.3])
    out = paired_difference(d)
    assert out["difference"] == pytest.approx(d.mean())
    assert out["better"] == 4 and out["worse"] == 1  # the 0.0 is neither
    low, high = out["interval"]
    assert low <= out["difference"] <= high and low < high
    with pytest.raises(ValueError, match="finite"):
        paired_difference([0.1, np.inf])


def test_clustered_difference_counts_a_cluster_of_copies_as_one_piece_of_evidence():
    """Ten copies of each of 8 scene-level differences: resampling items would see 80 values and shrink the
    interval about three-fold; resampling scenes gives the interval of the 8 scenes themselves."""
    rng = np.random.default_rng(3)
    per_scene = rng.normal(0.3, 1.0, 8)
    d, scenes = np.repeat(per_scene, 10), np.repeat(np.arange(8), 10)
    out = clustered_difference(d, scenes)
    assert out["difference"] == pytest.approx(per_scene.mean()) and out["clusters"] == 8
    clustered = out["interval"][1] - out["interval"][0]
    scene_level = np.subtract(*bootstrap_interval(per_scene)[::-1])
    naive = np.subtract(*bootstrap_interval(d)[::-1])
    assert clustered == pytest.approx(scene_level, rel=0.15)
    assert clustered > 2 * naive
    assert out["better"] == 10 * int((per_scene > 0).sum())


def test_clustered_difference_weighs_items_not_clusters_and_checks_its_labels():
    d, scenes = np.array([1.0, 1.0, 1.0, -1.0]), np.array(["a", "a", "a", "b"])
    out = clustered_difference(d, scenes)
    assert out["difference"] == pytest.approx(0.5)  # the mean of the four pairs, not of the two scenes
    assert out["interval"][0] == pytest.approx(-1.0) and out["interval"][1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cluster labels"):
        clustered_difference(d, scenes[:3])
