"""`make bench` smoke test: the quick run produces every section with sane, positive numbers.

Deliberately no wall-clock thresholds: this checks that the benchmark runs and reports, not how
fast this machine is.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("stages", "pipeline", "large", "quality", "memory", "scaling", "orchestration")


def _positive(value, what: str) -> None:
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{what} = {value!r}"


def test_quick_benchmark_writes_every_section(tmp_path):
    # A clean Prefect environment: the run starts its own temporary API, never the suite's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = json.loads((tmp_path / "results.json").read_text())
    markdown = (tmp_path / "results.md").read_text()
    assert results["quick"] is True
    for section in SECTIONS:
        assert section in results, section
    for heading in (
        "## Targets",
        "## Per stage",
        "## Pipeline",
        "## Large photos",
        "## Orchestration",
        "## Scaling",
        "## Peak RSS",
        "## Quality",
    ):
        assert heading in markdown, heading

    machine = results["machine"]
    _positive(machine["cores"], "cores")
    assert machine["cpu_model"] and machine["versions"]["torch"]
    _positive(results["threads"]["single_process_sections"], "torch threads")

    for name, size in results["stages"]["sizes"].items():
        for stage, row in size["stages"].items():
            _positive(row["megapixels_per_s"], f"stages.{name}.{stage}")
            _positive(row["ms_per_image"], f"stages.{name}.{stage} ms")
    assert set(results["stages"]["sizes"][next(iter(results["stages"]["sizes"]))]["stages"]) == {
        "decode",
        "features",
        "quantiles",
        "mapping",
        "refiner",
        "metrics",
        "encode",
    }

    variants = results["pipeline"]["variants"]
    assert set(variants) == {
        "io_floor",
        "io_floor_pillow",
        "opencv_clahe",
        "stages_1_3",
        "full_pipeline",
        "full_pipeline_1_thread",
        "full_pipeline_1_thread_bf16",
    }
    for name, row in variants.items():
        _positive(row["images_per_s"], f"pipeline.{name}")
        _positive(row["fraction_of_io_floor"], f"pipeline.{name} ratio")
        _positive(row["fraction_of_pillow_io_floor"], f"pipeline.{name} ratio to Pillow's floor")
        _positive(row["cpu_ms_per_image"], f"pipeline.{name} CPU")
    _positive(variants["full_pipeline_1_thread"]["images_per_s_one_worker_per_core"], "pipeline one worker per core")
    command = results["pipeline"]["command_line"]
    for setting in ("default", "workers_1"):
        _positive(command[setting]["images_per_s"], f"llie enhance, {setting}")

    large = results["large"]
    for name, row in large["sizes"].items():
        _positive(row["io_floor_s"], f"large.{name}.io_floor_s")
        _positive(row["photos_per_hour_per_core"], f"large.{name}.photos_per_hour_per_core")
        for key in ("hist_threads_1", "full_threads_1"):
            _positive(row[key]["seconds"], f"large.{name}.{key}")
    consistency = large["scale_consistency"]
    for key in ("working_size_hist", "working_size_full", "plain_hist", "plain_full"):
        _positive(consistency[key]["psnr_db"], f"large.scale_consistency.{key}")
    _positive(large["startup"]["enhance_hist_s"], "large.startup.enhance_hist_s")
    assert large["startup"]["imports_torch"] is False
    assert large["gpu"]["note"]
    for stages in ("hist", "full"):  # each stage's time inside `llie enhance`, as a user runs it
        _positive(large["cli_stage_ms"][stages]["quantiles"], f"large.cli_stage_ms.{stages}.quantiles")
    _positive(large["cli_stage_ms"]["full"]["refiner"], "large.cli_stage_ms.full.refiner")

    orch = results["orchestration"]
    for key in ("n_s", "k_n_s", "per_image_s"):
        _positive(orch["loop"][key], f"orchestration.loop.{key}")
    flow = orch["flow"]["n"]  # quick runs skip the kN flow run (start-up dominated anyway)
    _positive(flow["wall_s"], "orchestration.flow.n")
    assert flow["images"] == orch["images"] and flow["shards"] == 1
    assert math.isfinite(orch["overhead_pct"])  # a ratio minus 1: sign not asserted
    assert "malloc_trim_threshold_effect" in orch  # measured in full runs only
    scaling = results["scaling"]
    assert set(scaling["workers"]) == {"1", "2"}
    for k, row in scaling["workers"].items():
        _positive(row["images_per_s"], f"scaling.{k}")
        assert row["worker_torch_threads"] == [1]
    _positive(scaling["speedup"], "scaling.speedup")

    memory = results["memory"]["pipeline"]
    _positive(memory["baseline_rss_bytes"], "baseline rss")
    assert memory["peak_rss_bytes"] >= memory["baseline_rss_bytes"] > 0

    quality = results["quality"]
    if quality["skipped"]:
        assert quality["note"]
    else:
        for method, row in quality["methods"].items():
            _positive(row["psnr"], f"quality.{method}.psnr")
            _positive(row["ssim"], f"quality.{method}.ssim")

    targets = results["targets"]
    assert len(targets) == 8
    assert all(t["passed"] in (True, False) and t["measured"] is not None for t in targets)


def test_stage2_cross_validation_reports_every_variant_per_seed(tmp_path):
    """benchmarks/stage2_cv.py on a small synthetic set: one row per variant and seed, finite PSNRs, and the
    bag's paired gain over one model at stage 3 and, through the shipped refiner, at stage 4."""
    from helpers_synthetic import write_lol

    from benchmarks.stage2_cv import Study, cross_validate, table

    data = write_lol(tmp_path / "lol", 8, 64, 80, seed=3)
    report = cross_validate(Study(data, seeds=2, folds=2, threads=1, bag=2, stage4=True))
    assert report["pairs"] == 8 and report["folds"] == 2
    bagged = "weighted, bag of 2"
    for name in ("unweighted", "weighted", bagged):
        runs = report["results"][name]
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert math.isfinite(r["mean"]) and 5 < r["mean"] < 60 and math.isfinite(r["median"])
            assert ("stage4_mean" in r) is (name != "unweighted")
    # the variants are different fits, not one number printed thrice
    assert report["results"]["unweighted"] != report["results"]["weighted"] != report["results"][bagged]
    gains = {(g["stage"], g["subset"]): g for g in report["bag_gain"]}
    assert gains[(3, "all pairs")]["pairs"] == 8
    assert len(report["bag_gain"]) == 5  # stage 3 on all pairs, then stages 3 and 4 on each side of the split
    held, trained = gains[(4, "the refiner's validation pairs")], gains[(4, "the refiner's training pairs")]
    assert held["pairs"] + trained["pairs"] == 8 and held["pairs"] >= 1
    for g in report["bag_gain"]:
        low, high = g["interval"]
        assert low <= g["difference"] <= high and g["better"] + g["worse"] <= g["pairs"]
    for stage, key in ((3, "mean"), (4, "stage4_mean")):  # over all pairs, the paired gain is the gap in means
        gap = np.mean([b[key] - w[key] for b, w in zip(report["results"][bagged], report["results"]["weighted"])])
        if stage == 3:
            assert gains[(3, "all pairs")]["difference"] == pytest.approx(gap, abs=1e-9)
        else:
            pooled = (held["difference"] * held["pairs"] + trained["difference"] * trained["pairs"]) / 8
            assert pooled == pytest.approx(gap, abs=1e-9)
    text = table(report)
    assert "**weighted, mean over seeds**" in text and text.count("| unweighted |") == 2
    assert "bag minus one model" in text and "the refiner's validation pairs" in text


def test_orientation_report_scores_eight_orientations_and_the_ensembles(tmp_path):
    """benchmarks/orientation.py on a small synthetic set with the shipped model: the upright orientation
    is exactly what the pipeline gives, and the ensembles are averages of the eight passes, not new ones."""
    from helpers_synthetic import write_lol

    from benchmarks.orientation import orientation_report, table
    from llie.training.data import find_pairs
    from llie.training.evaluate import evaluate_pairs

    data = write_lol(tmp_path / "lol", 3, 56, 72, seed=4)
    report = orientation_report(data, progress=False)
    assert report["pairs"] == 3 and len(report["orientations"]) == 8
    plain = evaluate_pairs(None, find_pairs(data), progress=False)
    upright = report["per_image_psnr"]
    assert [upright[r["name"]][0] for r in plain["rows"]] == pytest.approx([r["stage4_psnr"] for r in plain["rows"]])
    assert [e["copies"] for e in report["ensembles"]] == [2, 4, 8]
    means = [o["psnr"] for o in report["orientations"]]
    assert report["spread_psnr"] == pytest.approx(max(means) - min(means))
    assert report["largest_swing"]["psnr"] >= report["mean_swing_psnr"] >= 0
    assert all(5 < e["psnr"] < 60 and 0 < e["ssim"] <= 1 for e in report["ensembles"])
    text = table(report)
    assert "| rotated 270, mirrored |" in text and "| average of 8 orientations |" in text


def test_quality_section_reports_an_interval_around_every_mean(tmp_path):
    from helpers_synthetic import write_lol

    from benchmarks.quality import quality
    from benchmarks.report import render_markdown

    data = write_lol(tmp_path / "lol", 4, 48, 56, seed=11)
    q = quality(None, data=data)
    assert not q["skipped"] and q["pairs"] == 4
    assert {"llie stages 1-3", "llie full (stage 4)", "he_V"} <= set(q["methods"])
    for name, row in q["methods"].items():
        low, high = row["psnr_interval"]
        assert low <= row["psnr"] <= high, name
    table = render_markdown({"quality": q})
    assert "PSNR 95% interval" in table
    stage3 = q["methods"]["llie stages 1-3"]["psnr_interval"]
    assert f"{stage3[0]:.2f} to {stage3[1]:.2f}" in table


def test_quality_cross_validation_reports_each_set_and_the_paired_cost_of_a_variant(tmp_path):
    """benchmarks/quality_cv.py on two tiny synthetic sets: figures per set, out of fold, and a variant that
    turns the exposure gate off changes every well-exposed photo the model's own policy leaves alone."""
    from helpers_synthetic import write_lol

    from benchmarks.quality_cv import Study, cross_validate, floor_line, parse_variant, table

    data = [write_lol(tmp_path / "indoor", 6, 48, 64, seed=5), write_lol(tmp_path / "outdoor", 6, 48, 64, seed=6)]
    # the outdoor set names two scenes of three distinct targets each (as SICE's pairs.json does)
    scenes = [{"name": f"pair_{i:02d}.png", "scene": i // 3} for i in range(6)]
    (data[1] / "pairs.json").write_text(json.dumps({"pairs": scenes}))
    gate_off = "exposure_full=1.0,exposure_off=1.0"
    study = Study(data, [gate_off], ["harmless=0"], folds=2, capture_gate=True, threads=1, progress=False)
    report = cross_validate(study)
    assert report["pairs"] == 12 and set(report["sets"]) == {"indoor", "outdoor"}
    # the exposure floor: the indoor set has no scene with two targets, the outdoor set two such scenes
    indoor, outdoor = report["sets"]["indoor"], report["sets"]["outdoor"]
    assert indoor["floor"]["scenes"] == 0 and np.isnan(indoor["figures"]["model"]["dark_floor_psnr"])
    assert (outdoor["floor"]["scenes"], outdoor["floor"]["targets"]) == (2, 6) and outdoor["floor"]["sd"] > 0
    at_floor, model = outdoor["figures"]["model"]["dark_floor_psnr"], outdoor["figures"]["model"]
    assert math.isfinite(at_floor) and at_floor != model["dark_psnr"]
    for s in report["sets"].values():
        model, variant = s["figures"]["model"], s["figures"][gate_off]
        assert model["pairs"] == variant["pairs"] == 6
        assert 5 < model["dark_psnr"] < 60 and 0 < model["dark_ssim"] <= 1
        # exposure: the best single factor includes 1 (no change), the error's size bounds its bias
        assert model["dark_one_factor_psnr"] >= model["dark_psnr"] - 1e-6
        assert model["dark_luma_error"] >= abs(model["dark_luma_bias"])
        assert 5 < model["dark_gt_mean_psnr"] < 60
        assert model["dark_luma_error_sd"] >= 0
        assert s["figures"]["capture gate"]["pairs"] == 6
        # most well-lit synthetic targets sit above the gate: the model returns them as they were
        assert model["exposed_changed"] < variant["exposed_changed"] == 6
        assert variant["exposed_mean_psnr"] < model["exposed_mean_psnr"] <= 60.0
        cost = s["differences"][gate_off]["exposed_psnr"]
        assert cost["difference"] < 0 and cost["interval"][0] <= cost["difference"] <= cost["interval"][1]
        assert s["differences"][gate_off]["dark_psnr"]["difference"] >= 0.0  # dark shots are enhanced in full
        # a stage-2 variant is a refit: it moves the dark shots' figures, under the model's own policy
        refit = s["figures"]["stage 2 harmless=0"]
        assert refit["dark_psnr"] != model["dark_psnr"] and refit["pairs"] == 6
    assert report["settings"]["stage 2 harmless=0"]["stage2"]["harmless"] == 0
    assert report["settings"]["model"]["stage2"]["harmless"] == 3  # the shipped model's
    assert report["settings"]["capture gate"]["capture_gate"] is True
    assert "**indoor**" in table(report) and f"| {gate_off} |" in table(report)
    assert "| capture gate |" in table(report) and "one-factor PSNR" in table(report)
    assert "Exposure floor" in table(report) and "PSNR at the floor" in table(report)
    line = floor_line({"sd": 0.171, "scenes": 85, "targets": 226, "within_scene_correlation": -0.004})
    assert "spread 0.171" in line and "226 targets in 85 scenes" in line and "-0.00" in line
    base = parse_variant("", parse_variant("colour=channels", parse_variant("max_slope=4", _settings())))
    assert base.mapping.colour == "channels" and base.mapping.max_slope == 4.0
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_variant("no_such_field=1", base)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_variant("harmless=6", base)  # a stage-2 setting is not a mapping or policy one


def _settings():
    from benchmarks.quality_cv import Settings
    from llie.method.mapping import MappingConfig
    from llie.method.policy import EnhancePolicy

    return Settings(MappingConfig(), EnhancePolicy())


def test_calibration_study_measures_the_gain_on_the_other_scenes(tmp_path):
    """benchmarks/calibration.py on two tiny synthetic sets: references re-exposed half a stop darker, or
    re-toned by a gamma of 0.6, make the fit pay on the other scenes, where references as they are leave it
    far less to gain."""
    from helpers_synthetic import write_lol

    from benchmarks.calibration import CalibrationStudy, run, table

    data = [write_lol(tmp_path / "indoor", 8, 48, 64, seed=5), write_lol(tmp_path / "outdoor", 8, 48, 64, seed=6)]
    study = CalibrationStudy(
        data, tastes=(-0.5,), tones=(0.6,), scenes=(4,), gammas=(0.6,), draws=6, folds=2, threads=1, progress=False
    )
    report = run(study)
    assert set(report["sets"]) == {"indoor", "outdoor"} and report["gammas"] == [0.6, 1.0]
    for by_taste in report["sets"].values():
        (same,), (darker,), (lighter_shadows,) = by_taste["+0.00"], by_taste["-0.50"], by_taste["gamma 0.60"]
        assert same["scenes"] == darker["scenes"] == lighter_shadows["scenes"] == 4
        assert darker["always"] > same["always"] + 0.5 and darker["always"] > 0
        assert lighter_shadows["always"] > same["always"] + 0.5 and lighter_shadows["always"] > 0
        for row in (same, darker, lighter_shadows):
            assert 0 <= row["adopted"] <= 1 and 0 <= row["interval_held"] <= 1
            assert row["realised"] == row["always"]
            assert row["adopted"] > 0 or row["rule"] == 0.0  # nothing written: no change on the other scenes
    assert "| -0.50 | 4 |" in table(report) and "| gamma 0.60 | 4 |" in table(report) and "**indoor**" in table(report)
