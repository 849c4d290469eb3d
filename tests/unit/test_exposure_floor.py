"""The exposure floor: how far the distinct targets of one scene spread, and whether outputs follow them."""

import math

import numpy as np
import pytest

from llie.training.exposure_floor import exposure_floor


def test_pooled_spread_counts_each_distinct_target_once():
    # scene a: targets 0 and 1 (deviations +-0.5); scene b: targets 0, 0.3, 0.6 (deviations -0.3, 0, 0.3);
    # scene c has one target, shot three times: it says nothing about the spread within a scene
    target = [0.0, 1.0, 1.0, 0.0, 0.3, 0.6, 2.0, 2.0, 2.0]
    output = [0.1, 0.9, 0.7, 0.2, 0.2, 0.2, 1.0, 1.5, 2.0]
    scenes = list("aaabbbccc")
    ids = ["a0", "a1", "a1", "b0", "b1", "b2", "c0", "c0", "c0"]
    floor = exposure_floor(target, output, scenes, ids)
    dof = (2 - 1) + (3 - 1)
    assert floor.sd == pytest.approx(math.sqrt((0.25 + 0.25 + 0.09 + 0 + 0.09) / dof))
    assert (floor.scenes, floor.targets) == (2, 5)
    # a1's two shots are averaged (0.8): scene a's outputs follow its targets, scene b's do not move
    assert floor.within_scene_correlation > 0


def test_outputs_that_follow_the_targets_within_scenes_correlate_and_others_do_not():
    rng = np.random.default_rng(0)
    scene_level = np.repeat(rng.normal(-1.0, 0.3, 300), 3)
    target = scene_level + rng.normal(0.0, 0.2, scene_level.size)
    scenes, ids = np.repeat(np.arange(300), 3), np.arange(scene_level.size)
    blind = exposure_floor(target, scene_level + rng.normal(0.0, 0.1, scene_level.size), scenes, ids)
    seeing = exposure_floor(target, target + rng.normal(0.0, 0.05, scene_level.size), scenes, ids)
    assert blind.sd == pytest.approx(0.2, abs=0.015) and seeing.sd == blind.sd
    assert abs(blind.within_scene_correlation) < 0.1 < 0.9 < seeing.within_scene_correlation


def test_no_scene_with_two_targets_gives_no_floor_and_bad_input_is_refused():
    floor = exposure_floor([0.0, 1.0], [0.0, 1.0], ["a", "b"], ["x", "y"])
    assert math.isnan(floor.sd) and math.isnan(floor.within_scene_correlation) and floor.scenes == 0
    with pytest.raises(ValueError, match="per pair"):
        exposure_floor([0.0, 1.0], [0.0], ["a", "b"], ["x", "y"])


def test_training_record_per_set_counts_a_shared_target_once_and_writes_json_nulls():
    from pathlib import Path

    from llie.training.data import Pair
    from llie.training.exposure_floor import exposure_by_set

    def grey(level):  # a flat target of this brightness, and a stage-2 prediction of one
        return np.full((4, 4, 3), level, np.float32), np.full((3, 21), level)

    levels = {"lol/1": 0.2, "lol/2": 0.4, "lol/3": 0.4, "lol/4": 0.3, "sice/1": 0.5}
    groups = {"lol/1": "lol/s", "lol/2": "lol/s", "lol/3": "lol/s", "lol/4": "lol/t", "sice/1": "sice/u"}
    pairs = [Pair(n, Path(n), Path(n), groups[n]) for n in levels]
    highs = [grey(v)[0] for v in levels.values()]
    predicted = np.stack([grey(0.3)[1]] * len(pairs))
    record = exposure_by_set(pairs, highs, predicted)
    assert set(record) == {"lol", "sice"}
    # scene s holds two distinct targets (lol/2 and lol/3 are one): log 0.2 and log 0.4, one degree of freedom
    lol = record["lol"]
    assert lol["floor"]["scenes"] == 1 and lol["floor"]["targets"] == 2
    assert lol["floor"]["sd"] == pytest.approx(abs(np.log(0.4) - np.log(0.2)) / math.sqrt(2), abs=1e-4)
    assert lol["floor"]["within_scene_correlation"] is None  # stage 2 said 0.3 for every photo
    assert lol["error_sd"] == pytest.approx(lol["target_sd"], abs=1e-4)  # a constant prediction
    assert record["sice"]["floor"] == {"sd": None, "scenes": 0, "targets": 0, "within_scene_correlation": None}
