"""Paired data: scenes are grouped so that validation never sees a scene training saw."""

from __future__ import annotations

import numpy as np
from helpers_synthetic import scene, to_uint8
from PIL import Image

from llie.training.data import find_pairs, group_folds, split_by_group


def _write(root, name: str, high: np.ndarray) -> None:
    for side in ("low", "high"):
        (root / side).mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(high * 0.1)).save(root / "low" / name)
    Image.fromarray(to_uint8(high)).save(root / "high" / name)


def test_same_target_and_reshot_scene_share_a_group(tmp_path):
    base = scene(80, 120, seed=1)
    rng = np.random.default_rng(0)
    _write(tmp_path, "a.png", base)
    _write(tmp_path, "b.png", base)  # byte-identical target
    # the same view shot again: another exposure and fresh noise, so other bytes
    _write(tmp_path, "c.png", np.clip(base * 0.6 + rng.normal(0, 0.02, base.shape), 0, 1))
    for i, name in enumerate(["d.png", "e.png", "f.png"]):
        _write(tmp_path, name, scene(80, 120, seed=100 + i))

    pairs = find_pairs(tmp_path)
    group = {p.name: p.group for p in pairs}
    assert [p.name for p in pairs] == ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]
    assert group["a.png"] == group["b.png"] == group["c.png"]
    assert len({group["a.png"], group["d.png"], group["e.png"], group["f.png"]}) == 4


def test_split_and_folds_keep_a_scene_on_one_side(tmp_path):
    for s in range(8):
        base = scene(60, 90, seed=200 + s)
        for shot, gain in enumerate((1.0, 0.7)):
            _write(tmp_path, f"s{s}_{shot}.png", base * gain)
    pairs = find_pairs(tmp_path)
    assert len({p.group for p in pairs}) == 8

    for seed in range(5):
        train, val = split_by_group(pairs, 0.25, seed)
        assert len(train) + len(val) == len(pairs) and val
        assert not {p.group for p in train} & {p.group for p in val}

    folds = group_folds(pairs, 3, seed=0)
    for g in {p.group for p in pairs}:
        assert len({int(f) for f, p in zip(folds, pairs) if p.group == g}) == 1


def _write_named(root, name: str, high: np.ndarray, fmt: str) -> None:
    for side in ("low", "high"):
        (root / side).mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(high * 0.1)).save(root / "low" / name, format=fmt)
    Image.fromarray(to_uint8(high)).save(root / "high" / name, format=fmt)


def test_named_scenes_group_jpeg_pairs_and_thumbnails_only_join(tmp_path):
    """pairs.json's scenes group pairs (SICE-pairs' layout); two different views never split one."""
    import json

    views = [scene(64, 64, seed=300 + k) for k in range(3)]
    _write_named(tmp_path, "s1_a.jpg", views[0], "JPEG")
    _write_named(tmp_path, "s1_b.jpg", views[1], "JPEG")  # another view, same named scene
    _write_named(tmp_path, "s2_a.jpg", views[2], "JPEG")
    (tmp_path / "pairs.json").write_text(
        json.dumps(
            {
                "pairs": [
                    {"name": "s1_a.jpg", "scene": 1},
                    {"name": "s1_b.jpg", "scene": 1},
                    {"name": "s2_a.jpg", "scene": 2},
                ]
            }
        )
    )
    group = {p.name: p.group for p in find_pairs(tmp_path)}
    assert group["s1_a.jpg"] == group["s1_b.jpg"] != group["s2_a.jpg"]


def test_several_sets_keep_names_and_scenes_apart(tmp_path):
    from llie.training.data import resolve_training_sets

    lol, sice = tmp_path / "LOL", tmp_path / "SICE"
    same = scene(64, 64, seed=400)  # byte-identical targets in both sets: still two scenes, two names
    _write_named(lol, "x.png", same, "PNG")
    _write_named(sice, "x.png", same, "PNG")
    _write_named(sice, "y.jpg", scene(64, 64, seed=401), "JPEG")
    train, held = resolve_training_sets([lol, sice])
    assert [p.name for p in train] == ["LOL/x.png", "SICE/x.png", "SICE/y.jpg"]
    assert len({p.group for p in train}) == 3 and held == []
    assert resolve_training_sets(lol)[0][0].name == "x.png"  # one set: names as they are
